//! access_token issuance and validation, classic and stable, as WeChat does them.
//!
//! - Classic (`GET /cgi-bin/token`): every call issues a new token; the tokens issued before it
//!   keep working for `classic_grace`, then answer 40001.
//! - Stable (`POST /cgi-bin/stable_token`): the same token while it has more than
//!   `stable_renew_before` left (reporting the remaining `expires_in`); a new one after that, the
//!   old one still valid to its own expiry. `force_refresh: true` rotates at once (the old token
//!   answers 40001), at most `force_refresh_daily_limit` times a day (then 45009) and
//!   `force_refresh_interval` apart (else 45011). The two APIs never affect each other.
//! - Validation: missing → 41001; not shaped like a token → 40014; unknown, superseded past
//!   grace, rotated, or revoked by a forced invalidation → 40001; past `expires_in` → 42001.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::RwLock;
use rand::Rng as _;
use rand::distr::Alphanumeric;

use super::config::SandboxConfig;
use wxcrypto::errcode::WxCode;

/// Tokens are this long; anything of another shape is "invalid access_token" (40014).
const TOKEN_LEN: usize = 64;
/// Prune the token table when it grows past this many entries.
const PRUNE_AT: usize = 4096;

/// Which API issued a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenApi {
    /// `GET /cgi-bin/token`.
    Classic,
    /// `POST /cgi-bin/stable_token`.
    Stable,
}

#[derive(Debug, Clone, Copy)]
struct TokenInfo {
    expires_at: Instant,
    /// Valid only before this instant (set when superseded, rotated or revoked).
    valid_until: Option<Instant>,
}

#[derive(Debug, Default)]
struct Inner {
    tokens: HashMap<Arc<str>, TokenInfo>,
    classic_current: Option<Arc<str>>,
    stable_current: Option<Arc<str>>,
    force_day: u64,
    force_count: u32,
    force_last: Option<Instant>,
}

/// A token handed out: the text and the `expires_in` to report.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The access_token.
    pub token: Arc<str>,
    /// Seconds left, rounded up.
    pub expires_in: u64,
    /// Whether this call created it (false when the stable API returned the current one).
    pub new: bool,
}

/// All tokens of the sandbox's one account.
#[derive(Debug)]
pub struct TokenStore {
    inner: RwLock<Inner>,
    expires_in: Duration,
    classic_grace: Duration,
    renew_before: Duration,
    force_daily_limit: u32,
    force_interval: Duration,
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

fn new_token_text() -> Arc<str> {
    let text: String = rand::rng()
        .sample_iter(Alphanumeric)
        .take(TOKEN_LEN)
        .map(char::from)
        .collect();
    Arc::from(text)
}

/// Whether `token` is shaped like a token this sandbox (or WeChat) hands out.
pub fn well_formed(token: &str) -> bool {
    (16..=512).contains(&token.len())
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl TokenStore {
    /// A store with no tokens, using the config's timings and limits.
    pub fn new(cfg: &SandboxConfig) -> Self {
        Self {
            inner: RwLock::new(Inner::default()),
            expires_in: cfg.token_expires_in,
            classic_grace: cfg.classic_grace,
            renew_before: cfg.stable_renew_before.min(cfg.token_expires_in / 2),
            force_daily_limit: cfg.force_refresh_daily_limit,
            force_interval: cfg.force_refresh_interval,
        }
    }

    fn insert(&self, inner: &mut Inner, now: Instant) -> Arc<str> {
        if inner.tokens.len() >= PRUNE_AT {
            // Keep expired tokens for a while so they still answer 42001, not 40001.
            let keep = self.expires_in.max(Duration::from_secs(600));
            inner.tokens.retain(|_, t| {
                let end = t.valid_until.map_or(t.expires_at, |v| v.min(t.expires_at));
                now < end + keep
            });
        }
        let token = new_token_text();
        let info = TokenInfo {
            expires_at: now + self.expires_in,
            valid_until: None,
        };
        inner.tokens.insert(token.clone(), info);
        token
    }

    fn cut(inner: &mut Inner, token: Option<&Arc<str>>, until: Instant) {
        if let Some(info) = token.and_then(|t| inner.tokens.get_mut(t)) {
            info.valid_until = Some(info.valid_until.map_or(until, |v| v.min(until)));
        }
    }

    /// A classic call: always a new token; the previous current one gets the grace period.
    pub fn issue_classic(&self, now: Instant) -> Issued {
        let mut inner = self.inner.write();
        let previous = inner.classic_current.take();
        Self::cut(&mut inner, previous.as_ref(), now + self.classic_grace);
        let token = self.insert(&mut inner, now);
        inner.classic_current = Some(token.clone());
        Issued {
            token,
            expires_in: ceil_secs(self.expires_in),
            new: true,
        }
    }

    /// A stable call. `day` is the Beijing day, for the force_refresh daily limit.
    pub fn issue_stable(&self, now: Instant, force: bool, day: u64) -> Result<Issued, WxCode> {
        let mut inner = self.inner.write();
        if force {
            if inner.force_day != day {
                inner.force_day = day;
                inner.force_count = 0;
            }
            if inner.force_count >= self.force_daily_limit {
                return Err(WxCode::DailyQuota);
            }
            if inner
                .force_last
                .is_some_and(|t| now < t + self.force_interval)
            {
                return Err(WxCode::MinuteQuota);
            }
            inner.force_count += 1;
            inner.force_last = Some(now);
            let old = inner.stable_current.take();
            Self::cut(&mut inner, old.as_ref(), now);
        } else if let Some(current) = inner.stable_current.clone()
            && let Some(info) = inner.tokens.get(&current)
            && info.valid_until.is_none()
            && now + self.renew_before < info.expires_at
        {
            let left = info.expires_at - now;
            return Ok(Issued {
                token: current,
                expires_in: ceil_secs(left),
                new: false,
            });
        }
        let token = self.insert(&mut inner, now);
        inner.stable_current = Some(token.clone());
        Ok(Issued {
            token,
            expires_in: ceil_secs(self.expires_in),
            new: true,
        })
    }

    /// Revokes every token now (the forced-invalidation fault); returns how many were live.
    pub fn revoke_all(&self, now: Instant) -> usize {
        let mut inner = self.inner.write();
        inner.classic_current = None;
        inner.stable_current = None;
        let mut live = 0;
        for info in inner.tokens.values_mut() {
            if info.valid_until.is_none_or(|v| now < v) && now < info.expires_at {
                live += 1;
            }
            info.valid_until = Some(info.valid_until.map_or(now, |v| v.min(now)));
        }
        live
    }

    /// Checks a send's access_token.
    pub fn validate(&self, token: Option<&str>, now: Instant) -> Result<(), WxCode> {
        let token = match token {
            None | Some("") => return Err(WxCode::AccessTokenMissing),
            Some(t) => t,
        };
        if !well_formed(token) {
            return Err(WxCode::InvalidAccessToken);
        }
        let inner = self.inner.read();
        let info = inner.tokens.get(token).ok_or(WxCode::InvalidCredential)?;
        if info.valid_until.is_some_and(|v| now >= v) {
            return Err(WxCode::InvalidCredential);
        }
        if now >= info.expires_at {
            return Err(WxCode::AccessTokenExpired);
        }
        Ok(())
    }

    /// Forgets every token and the force_refresh history.
    pub fn reset(&self) {
        *self.inner.write() = Inner::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> TokenStore {
        TokenStore::new(&SandboxConfig {
            token_expires_in: Duration::from_secs(100),
            classic_grace: Duration::from_secs(10),
            stable_renew_before: Duration::from_secs(20),
            force_refresh_daily_limit: 2,
            force_refresh_interval: Duration::from_secs(30),
            ..SandboxConfig::default()
        })
    }

    #[test]
    fn classic_grace_then_40001_and_expiry_42001() {
        let s = store();
        let t0 = Instant::now();
        let a = s.issue_classic(t0);
        let b = s.issue_classic(t0 + Duration::from_secs(1));
        assert_ne!(a.token, b.token);
        assert_eq!(
            s.validate(Some(&a.token), t0 + Duration::from_secs(10)),
            Ok(())
        );
        let late = t0 + Duration::from_secs(11);
        assert_eq!(
            s.validate(Some(&a.token), late),
            Err(WxCode::InvalidCredential)
        );
        assert_eq!(s.validate(Some(&b.token), late), Ok(()));
        let expired = t0 + Duration::from_secs(101);
        assert_eq!(
            s.validate(Some(&b.token), expired),
            Err(WxCode::AccessTokenExpired)
        );
    }

    #[test]
    fn validation_codes_for_missing_and_malformed() {
        let s = store();
        let now = Instant::now();
        assert_eq!(s.validate(None, now), Err(WxCode::AccessTokenMissing));
        assert_eq!(
            s.validate(Some("a b"), now),
            Err(WxCode::InvalidAccessToken)
        );
        assert_eq!(
            s.validate(Some(&"x".repeat(64)), now),
            Err(WxCode::InvalidCredential)
        );
    }

    #[test]
    fn stable_reuses_renews_and_limits_force_refresh() {
        let s = store();
        let t0 = Instant::now();
        let a = s.issue_stable(t0, false, 1).expect("first stable call");
        let same = s
            .issue_stable(t0 + Duration::from_secs(50), false, 1)
            .expect("reuse");
        assert_eq!(a.token, same.token);
        assert_eq!(same.expires_in, 50);
        assert!(!same.new);
        // Inside the renew window: a new token, the old one valid to its own expiry.
        let renewed = s
            .issue_stable(t0 + Duration::from_secs(85), false, 1)
            .expect("renew");
        assert_ne!(renewed.token, a.token);
        assert_eq!(
            s.validate(Some(&a.token), t0 + Duration::from_secs(99)),
            Ok(())
        );
        // force_refresh rotates at once, 30 s apart, twice a day.
        let t1 = t0 + Duration::from_secs(86);
        let forced = s.issue_stable(t1, true, 1).expect("force");
        assert_eq!(
            s.validate(Some(&renewed.token), t1),
            Err(WxCode::InvalidCredential)
        );
        assert_eq!(s.issue_stable(t1, true, 1).err(), Some(WxCode::MinuteQuota));
        let t2 = t1 + Duration::from_secs(30);
        s.issue_stable(t2, true, 1).expect("second force");
        let t3 = t2 + Duration::from_secs(30);
        assert_eq!(s.issue_stable(t3, true, 1).err(), Some(WxCode::DailyQuota));
        assert!(
            s.issue_stable(t3, true, 2).is_ok(),
            "a new day resets the limit"
        );
        assert_eq!(
            s.validate(Some(&forced.token), t3),
            Err(WxCode::InvalidCredential)
        );
    }

    #[test]
    fn revoke_all_hits_both_apis() {
        let s = store();
        let now = Instant::now();
        let c = s.issue_classic(now);
        let st = s.issue_stable(now, false, 1).expect("stable");
        assert_eq!(s.revoke_all(now), 2);
        assert_eq!(
            s.validate(Some(&c.token), now),
            Err(WxCode::InvalidCredential)
        );
        assert_eq!(
            s.validate(Some(&st.token), now),
            Err(WxCode::InvalidCredential)
        );
        let again = s.issue_stable(now, false, 1).expect("stable after revoke");
        assert!(again.new);
    }
}
