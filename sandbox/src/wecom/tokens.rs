//! WeCom access_tokens: one per (corp, app). `gettoken` returns the app's current token while
//! it is valid (repeated fetches do not invalidate it) and a new one after it expired or was
//! revoked. Validation: missing → 41001; unknown, revoked or not shaped like a token → 40014;
//! past `expires_in` → 42001.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::RwLock;
use rand::Rng as _;
use rand::distr::Alphanumeric;
use wxcrypto::errcode::wecom::WeComCode;

use crate::tokens::well_formed;

/// WeCom's tokens are long; this length is only the sandbox's choice.
const TOKEN_LEN: usize = 96;
/// Prune the token table when it grows past this many entries.
const PRUNE_AT: usize = 4096;

#[derive(Debug, Clone, Copy)]
struct TokenInfo {
    agentid: u64,
    expires_at: Instant,
    revoked: bool,
}

/// A token handed out by `gettoken`.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The access_token.
    pub token: Arc<str>,
    /// Seconds it has left, rounded up.
    pub expires_in: u64,
    /// Whether this call created it (false: the app's current token was returned).
    pub new: bool,
}

#[derive(Debug, Default)]
struct Inner {
    tokens: HashMap<Arc<str>, TokenInfo>,
    current: HashMap<u64, Arc<str>>,
}

/// Every app's tokens.
#[derive(Debug)]
pub struct WeComTokens {
    inner: RwLock<Inner>,
    lifetime: Duration,
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

impl WeComTokens {
    /// No tokens yet; each lives `lifetime`.
    pub fn new(lifetime: Duration) -> Self {
        Self {
            inner: RwLock::new(Inner::default()),
            lifetime,
        }
    }

    /// `gettoken` for an app: its current token while valid, else a new one.
    pub fn issue(&self, agentid: u64, now: Instant) -> Issued {
        let mut inner = self.inner.write();
        if let Some(current) = inner.current.get(&agentid)
            && let Some(info) = inner.tokens.get(current)
            && !info.revoked
            && now < info.expires_at
        {
            return Issued {
                token: current.clone(),
                expires_in: ceil_secs(info.expires_at - now),
                new: false,
            };
        }
        if inner.tokens.len() >= PRUNE_AT {
            // Expired tokens stay a while so they still answer 42001 rather than 40014.
            let keep = self.lifetime.max(Duration::from_secs(600));
            inner.tokens.retain(|_, t| now < t.expires_at + keep);
        }
        let text: String = rand::rng()
            .sample_iter(Alphanumeric)
            .take(TOKEN_LEN)
            .map(char::from)
            .collect();
        let token: Arc<str> = Arc::from(text);
        inner.tokens.insert(
            token.clone(),
            TokenInfo {
                agentid,
                expires_at: now + self.lifetime,
                revoked: false,
            },
        );
        inner.current.insert(agentid, token.clone());
        Issued {
            token,
            expires_in: ceil_secs(self.lifetime),
            new: true,
        }
    }

    /// Checks an access_token; the agentid of its app.
    pub fn validate(&self, token: Option<&str>, now: Instant) -> Result<u64, WeComCode> {
        let token = match token {
            None | Some("") => return Err(WeComCode::AccessTokenMissing),
            Some(t) => t,
        };
        if !well_formed(token) {
            return Err(WeComCode::InvalidAccessToken);
        }
        let inner = self.inner.read();
        let info = inner
            .tokens
            .get(token)
            .ok_or(WeComCode::InvalidAccessToken)?;
        if info.revoked {
            return Err(WeComCode::InvalidAccessToken);
        }
        if now >= info.expires_at {
            return Err(WeComCode::AccessTokenExpired);
        }
        Ok(info.agentid)
    }

    /// Revokes every token now (the forced-invalidation fault); returns how many were live.
    pub fn revoke_all(&self, now: Instant) -> usize {
        let mut inner = self.inner.write();
        inner.current.clear();
        let mut live = 0;
        for info in inner.tokens.values_mut() {
            if !info.revoked && now < info.expires_at {
                live += 1;
            }
            info.revoked = true;
        }
        live
    }

    /// Forgets every token.
    pub fn reset(&self) {
        *self.inner.write() = Inner::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_token_while_valid_per_app_then_new() {
        let t = WeComTokens::new(Duration::from_secs(100));
        let t0 = Instant::now();
        let a = t.issue(1, t0);
        assert!(a.new);
        assert_eq!(a.expires_in, 100);
        let again = t.issue(1, t0 + Duration::from_millis(40_500));
        assert_eq!(again.token, a.token);
        assert!(!again.new);
        assert_eq!(again.expires_in, 60, "the time left, rounded up");
        let other = t.issue(2, t0);
        assert_ne!(other.token, a.token, "one token per app");
        assert_eq!(t.validate(Some(&a.token), t0), Ok(1));
        assert_eq!(t.validate(Some(&other.token), t0), Ok(2));
        let later = t0 + Duration::from_secs(100);
        assert_eq!(
            t.validate(Some(&a.token), later),
            Err(WeComCode::AccessTokenExpired)
        );
        let renewed = t.issue(1, later);
        assert!(renewed.new);
        assert_ne!(renewed.token, a.token);
    }

    #[test]
    fn validation_codes_and_revocation() {
        let t = WeComTokens::new(Duration::from_secs(100));
        let now = Instant::now();
        assert_eq!(t.validate(None, now), Err(WeComCode::AccessTokenMissing));
        assert_eq!(
            t.validate(Some("a b"), now),
            Err(WeComCode::InvalidAccessToken)
        );
        assert_eq!(
            t.validate(Some(&"x".repeat(96)), now),
            Err(WeComCode::InvalidAccessToken)
        );
        let a = t.issue(1, now);
        assert_eq!(t.revoke_all(now), 1);
        assert_eq!(
            t.validate(Some(&a.token), now),
            Err(WeComCode::InvalidAccessToken)
        );
        let b = t.issue(1, now);
        assert!(b.new && b.token != a.token);
        assert_eq!(t.validate(Some(&b.token), now), Ok(1));
    }
}
