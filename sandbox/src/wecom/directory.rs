//! The corp's directory as the sandbox imagines it, by fixed rules that need no setup:
//!
//! - a user id starting with `gone-` is invalid (answered in `invaliduser`);
//! - one starting with `unlicensed-` has no licence (answered in `unlicenseduser`);
//! - party ids and tag ids must be numbers below 9000 (others go to `invalidparty` /
//!   `invalidtag`);
//! - everyone else exists, and `@all` reaches the whole corp.
//!
//! Contact-change events sent through the admin route change it: a deleted, disabled or
//! departed user, a renamed user's old id and a deleted party become invalid; a created or
//! re-activated user becomes valid again.

use std::collections::HashSet;

use parking_lot::RwLock;

/// Party and tag ids from this one up are invalid.
pub const FIRST_INVALID_ID: u64 = 9000;

/// Where each recipient of a message ended up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resolved {
    /// User ids that reach someone (`@all` included).
    pub users: Vec<String>,
    /// Valid party ids.
    pub parties: Vec<String>,
    /// Valid tag ids.
    pub tags: Vec<String>,
    /// `invaliduser`.
    pub invalid_users: Vec<String>,
    /// `invalidparty`.
    pub invalid_parties: Vec<String>,
    /// `invalidtag`.
    pub invalid_tags: Vec<String>,
    /// `unlicenseduser`.
    pub unlicensed_users: Vec<String>,
}

impl Resolved {
    /// Whether the message reaches anyone.
    pub fn reaches_anyone(&self) -> bool {
        !(self.users.is_empty() && self.parties.is_empty() && self.tags.is_empty())
    }
}

/// The `|`-separated ids of a recipient field, trimmed, empty ones and repeats left out.
pub fn split_ids(field: &str) -> Vec<String> {
    let mut seen = HashSet::new();
    field
        .split('|')
        .map(str::trim)
        .filter(|s| !s.is_empty() && seen.insert(*s))
        .map(str::to_string)
        .collect()
}

fn id_valid(id: &str) -> bool {
    id.parse::<u64>().is_ok_and(|n| n < FIRST_INVALID_ID)
}

/// The rules plus what contact-change events changed.
#[derive(Debug, Default)]
pub struct Directory {
    gone_users: RwLock<HashSet<String>>,
    gone_parties: RwLock<HashSet<String>>,
}

impl Directory {
    /// Sorts each recipient of `touser`, `toparty` and `totag` (already split).
    pub fn resolve(&self, users: &[String], parties: &[String], tags: &[String]) -> Resolved {
        let mut r = Resolved::default();
        let gone = self.gone_users.read();
        for u in users {
            if u == "@all" {
                r.users.push(u.clone());
            } else if u.starts_with("gone-") || gone.contains(u) {
                r.invalid_users.push(u.clone());
            } else if u.starts_with("unlicensed-") {
                r.unlicensed_users.push(u.clone());
            } else {
                r.users.push(u.clone());
            }
        }
        drop(gone);
        let gone = self.gone_parties.read();
        for p in parties {
            if id_valid(p) && !gone.contains(p) {
                r.parties.push(p.clone());
            } else {
                r.invalid_parties.push(p.clone());
            }
        }
        for t in tags {
            if id_valid(t) {
                r.tags.push(t.clone());
            } else {
                r.invalid_tags.push(t.clone());
            }
        }
        r
    }

    /// A user left the directory (deleted, disabled, departed, or renamed away from this id).
    pub fn remove_user(&self, user: &str) {
        self.gone_users.write().insert(user.to_string());
    }

    /// A user is (again) in the directory.
    pub fn add_user(&self, user: &str) {
        self.gone_users.write().remove(user);
    }

    /// A party was deleted.
    pub fn remove_party(&self, party: &str) {
        self.gone_parties.write().insert(party.to_string());
    }

    /// Back to the fixed rules.
    pub fn reset(&self) {
        self.gone_users.write().clear();
        self.gone_parties.write().clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(s: &str) -> Vec<String> {
        split_ids(s)
    }

    #[test]
    fn rules_sort_every_recipient() {
        let d = Directory::default();
        let r = d.resolve(
            &ids("a| gone-b |unlicensed-c|a||@all"),
            &ids("1|8999|9000|x"),
            &ids("2|12000"),
        );
        assert_eq!(r.users, ["a", "@all"]);
        assert_eq!(r.invalid_users, ["gone-b"]);
        assert_eq!(r.unlicensed_users, ["unlicensed-c"]);
        assert_eq!(r.parties, ["1", "8999"]);
        assert_eq!(r.invalid_parties, ["9000", "x"]);
        assert_eq!(
            (r.tags.as_slice(), r.invalid_tags.as_slice()),
            (&["2".to_string()][..], &["12000".to_string()][..])
        );
        assert!(r.reaches_anyone());
        let none = d.resolve(&ids("gone-x|unlicensed-y"), &ids("9001"), &[]);
        assert!(!none.reaches_anyone());
    }

    #[test]
    fn contact_changes_apply_until_reset() {
        let d = Directory::default();
        d.remove_user("u1");
        d.remove_party("3");
        let r = d.resolve(&ids("u1|u2"), &ids("3|4"), &[]);
        assert_eq!((r.invalid_users, r.invalid_parties), (ids("u1"), ids("3")));
        d.add_user("u1");
        assert_eq!(d.resolve(&ids("u1"), &[], &[]).users, ["u1"]);
        d.reset();
        assert_eq!(d.resolve(&[], &ids("3"), &[]).parties, ["3"]);
    }
}
