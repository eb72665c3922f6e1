//! WeCom counters, the `wecom` section of `GET /__stats`: answers by errcode, token fetches per
//! app, deliveries, duplicates, unreached recipients, recalls, robots and callback events.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use wxcrypto::errcode::wecom::WeComCode;

/// Per-app counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppCounts {
    /// `gettoken` calls answered with a token.
    pub token_fetches: u64,
    /// Of those, the calls that created a new token.
    pub tokens_issued: u64,
    /// Messages delivered (errcode 0, not a duplicate).
    pub delivered_unique: u64,
    /// Checked sends answered with an earlier send's msgid.
    pub duplicates_suppressed: u64,
}

/// Per-robot-key counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RobotCounts {
    /// Requests with this key.
    pub requests: u64,
    /// Messages delivered.
    pub delivered: u64,
    /// Requests answered 45009.
    pub refused_45009: u64,
    /// The most requests seen in one sliding window (refused ones included).
    pub peak_per_window: u64,
    /// Delivered messages whose body this key had already delivered: a sender's re-send,
    /// which a real group shows twice (a robot has no duplicate check).
    pub repeated: u64,
}

/// Recipients that were not reached, by kind, over every delivered message.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnreachedCounts {
    /// In `invaliduser`.
    pub users: u64,
    /// In `invalidparty`.
    pub parties: u64,
    /// In `invalidtag`.
    pub tags: u64,
    /// In `unlicenseduser`.
    pub unlicensed_users: u64,
}

/// Callback counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallbackCounts {
    /// URL verifications tried.
    pub verifications: u64,
    /// Of those, answered with the right echostr.
    pub verified: u64,
    /// Events generated.
    pub events: u64,
    /// HTTP attempts, retries included.
    pub attempts: u64,
    /// Events the server acknowledged with a 2xx.
    pub acknowledged: u64,
    /// Events given up after every retry.
    pub failed: u64,
}

/// The `wecom` section of `GET /__stats`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WeComSnapshot {
    /// Answers of the WeCom routes by errcode (string key, `"0"` included).
    pub errcodes: BTreeMap<String, u64>,
    /// Injected errcodes by code.
    pub injected: BTreeMap<String, u64>,
    /// Application messages delivered (errcode 0, not a duplicate).
    pub delivered_unique: u64,
    /// Checked sends answered with an earlier send's msgid, not delivered again.
    pub duplicates_suppressed: u64,
    /// Unreached recipients of delivered messages.
    pub unreached: UnreachedCounts,
    /// Sends answered 81013 (no valid recipient).
    pub all_invalid: u64,
    /// Unique deliveries per user id (`@all` counts as one id).
    pub per_user: BTreeMap<String, u64>,
    /// Per app (by agentid).
    pub apps: BTreeMap<String, AppCounts>,
    /// Messages recalled (a repeated recall of one message counts once).
    pub recalls: u64,
    /// Recalls refused (unknown msgid or past the window).
    pub recalls_refused: u64,
    /// Per robot key.
    pub robots: BTreeMap<String, RobotCounts>,
    /// Robot requests answered 45009, all keys.
    pub robot_45009: u64,
    /// The callback URL.
    pub callback: CallbackCounts,
}

fn add(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

fn read(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

/// Live WeCom counters.
#[derive(Debug)]
pub struct WeComStats {
    errcodes: [AtomicU64; WeComCode::ALL.len()],
    injected: [AtomicU64; WeComCode::ALL.len()],
    delivered: AtomicU64,
    duplicates: AtomicU64,
    all_invalid: AtomicU64,
    recalls: AtomicU64,
    recalls_refused: AtomicU64,
    robot_45009: AtomicU64,
    maps: Mutex<Maps>,
}

#[derive(Debug, Default)]
struct Maps {
    unreached: UnreachedCounts,
    per_user: BTreeMap<String, u64>,
    apps: BTreeMap<u64, AppCounts>,
    robots: BTreeMap<String, RobotCounts>,
    /// The bodies each robot key delivered, to count repeats.
    robot_bodies: HashMap<String, HashSet<Vec<u8>>>,
    callback: CallbackCounts,
}

impl Default for WeComStats {
    fn default() -> Self {
        Self {
            errcodes: std::array::from_fn(|_| AtomicU64::new(0)),
            injected: std::array::from_fn(|_| AtomicU64::new(0)),
            delivered: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            all_invalid: AtomicU64::new(0),
            recalls: AtomicU64::new(0),
            recalls_refused: AtomicU64::new(0),
            robot_45009: AtomicU64::new(0),
            maps: Mutex::new(Maps::default()),
        }
    }
}

impl WeComStats {
    /// Counts an answer's errcode.
    pub fn errcode(&self, code: WeComCode) {
        add(&self.errcodes[code.index()]);
        if code == WeComCode::AllRecipientsInvalid {
            add(&self.all_invalid);
        }
    }

    /// Counts an injected errcode.
    pub fn injected(&self, code: WeComCode) {
        add(&self.injected[code.index()]);
    }

    /// Counts a `gettoken` call that answered a token.
    pub fn token_fetch(&self, agentid: u64, new: bool) {
        let mut m = self.maps.lock();
        let app = m.apps.entry(agentid).or_default();
        app.token_fetches += 1;
        if new {
            app.tokens_issued += 1;
        }
    }

    /// Counts a delivered message: its recipients and the ones not reached (users, parties,
    /// tags, unlicensed users).
    pub fn delivered(&self, agentid: u64, users: &[String], unreached: [u64; 4]) {
        add(&self.delivered);
        let mut m = self.maps.lock();
        m.apps.entry(agentid).or_default().delivered_unique += 1;
        for u in users.iter().filter(|u| !u.contains(':')) {
            *m.per_user.entry(u.clone()).or_default() += 1;
        }
        let [users, parties, tags, unlicensed] = unreached;
        m.unreached.users += users;
        m.unreached.parties += parties;
        m.unreached.tags += tags;
        m.unreached.unlicensed_users += unlicensed;
    }

    /// Counts a suppressed duplicate.
    pub fn duplicate(&self, agentid: u64) {
        add(&self.duplicates);
        self.maps
            .lock()
            .apps
            .entry(agentid)
            .or_default()
            .duplicates_suppressed += 1;
    }

    /// Counts a recall: done (`true`, first time only) or refused (`false`).
    pub fn recall(&self, first_time: bool, refused: bool) {
        if refused {
            add(&self.recalls_refused);
        } else if first_time {
            add(&self.recalls);
        }
    }

    /// Counts a robot request with its body, its result and the key's requests in the current
    /// window.
    pub fn robot(
        &self,
        key: &str,
        body: &[u8],
        delivered: bool,
        refused_45009: bool,
        in_window: u64,
    ) {
        if refused_45009 {
            add(&self.robot_45009);
        }
        let mut m = self.maps.lock();
        let repeated = delivered
            && !m
                .robot_bodies
                .entry(key.to_string())
                .or_default()
                .insert(body.to_vec());
        let r = m.robots.entry(key.to_string()).or_default();
        r.repeated += u64::from(repeated);
        r.requests += 1;
        r.delivered += u64::from(delivered);
        r.refused_45009 += u64::from(refused_45009);
        r.peak_per_window = r.peak_per_window.max(in_window);
    }

    /// Counts a URL verification.
    pub fn verification(&self, verified: bool) {
        let mut m = self.maps.lock();
        m.callback.verifications += 1;
        m.callback.verified += u64::from(verified);
    }

    /// Counts a generated event.
    pub fn event(&self) {
        self.maps.lock().callback.events += 1;
    }

    /// Counts an event HTTP attempt.
    pub fn event_attempt(&self) {
        self.maps.lock().callback.attempts += 1;
    }

    /// Counts an event's final outcome.
    pub fn event_done(&self, acknowledged: bool) {
        let mut m = self.maps.lock();
        if acknowledged {
            m.callback.acknowledged += 1;
        } else {
            m.callback.failed += 1;
        }
    }

    /// The JSON-ready view.
    pub fn snapshot(&self) -> WeComSnapshot {
        let nonzero = |arr: &[AtomicU64]| {
            WeComCode::ALL
                .iter()
                .zip(arr)
                .filter(|(_, c)| read(c) > 0)
                .map(|(code, c)| (code.code().to_string(), read(c)))
                .collect::<BTreeMap<_, _>>()
        };
        let m = self.maps.lock();
        WeComSnapshot {
            errcodes: nonzero(&self.errcodes),
            injected: nonzero(&self.injected),
            delivered_unique: read(&self.delivered),
            duplicates_suppressed: read(&self.duplicates),
            unreached: m.unreached,
            all_invalid: read(&self.all_invalid),
            per_user: m.per_user.clone(),
            apps: m.apps.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            recalls: read(&self.recalls),
            recalls_refused: read(&self.recalls_refused),
            robots: m.robots.clone(),
            robot_45009: read(&self.robot_45009),
            callback: m.callback,
        }
    }

    /// Zeroes every counter.
    pub fn reset(&self) {
        for c in self.errcodes.iter().chain(&self.injected).chain([
            &self.delivered,
            &self.duplicates,
            &self.all_invalid,
            &self.recalls,
            &self.recalls_refused,
            &self.robot_45009,
        ]) {
            c.store(0, Ordering::Relaxed);
        }
        *self.maps.lock() = Maps::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_and_reset() {
        let s = WeComStats::default();
        s.errcode(WeComCode::Ok);
        s.errcode(WeComCode::AllRecipientsInvalid);
        s.injected(WeComCode::SystemBusy);
        s.token_fetch(7, true);
        s.token_fetch(7, false);
        s.delivered(7, &["u1".to_string(), "party:2".to_string()], [1, 0, 2, 0]);
        s.duplicate(7);
        s.recall(true, false);
        s.recall(false, false);
        s.recall(false, true);
        s.robot("k", b"a", true, false, 1);
        s.robot("k", b"a", false, true, 5);
        s.robot("k", b"b", true, false, 2);
        s.robot("k", b"a", true, false, 2);
        let snap = s.snapshot();
        assert_eq!(snap.errcodes["0"], 1);
        assert_eq!(snap.all_invalid, 1);
        assert_eq!(snap.injected["-1"], 1);
        assert_eq!(
            snap.apps["7"],
            AppCounts {
                token_fetches: 2,
                tokens_issued: 1,
                delivered_unique: 1,
                duplicates_suppressed: 1
            }
        );
        assert_eq!(snap.per_user.len(), 1);
        assert_eq!((snap.unreached.users, snap.unreached.tags), (1, 2));
        assert_eq!((snap.recalls, snap.recalls_refused), (1, 1));
        assert_eq!(snap.robots["k"].peak_per_window, 5);
        assert_eq!(snap.robots["k"].delivered, 3);
        assert_eq!(snap.robots["k"].repeated, 1, "the body a, delivered twice");
        assert_eq!(snap.robot_45009, 1);
        s.reset();
        assert_eq!(s.snapshot(), WeComSnapshot::default());
    }
}
