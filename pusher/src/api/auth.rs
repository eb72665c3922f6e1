//! Bearer-token authentication of the `/v1` routes.
//!
//! The expected token comes from the config (`auth.token` inline, `auth.tokenFile`, or the
//! `WXPUSH_AUTH_TOKEN` environment variable), trimmed of surrounding whitespace whatever its
//! source. A token file is re-read when its content changes ([`crate::secrets`]), so a rotated
//! Kubernetes Secret takes effect without a restart. Tokens are compared
//! as SHA-256 digests with a constant-time comparison, so neither their content nor their
//! length leaks through timing.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::policy::{LocalSecret, SecretError};
use crate::secrets::WatchedSecret;

/// The expected bearer token.
#[derive(Debug)]
pub struct AuthToken {
    token: WatchedSecret,
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl AuthToken {
    /// Reads the token now; fails when it cannot be read or is empty.
    pub fn new(source: LocalSecret) -> Result<Self, SecretError> {
        Ok(Self {
            token: WatchedSecret::new("auth.token", source)?,
        })
    }

    /// Whether an `Authorization` header value (`Bearer <token>`) carries the right token.
    pub fn check(&self, header: Option<&str>) -> bool {
        let Some(presented) = header.and_then(|h| {
            h.strip_prefix("Bearer ")
                .or_else(|| h.strip_prefix("bearer "))
        }) else {
            return false;
        };
        let presented = digest(presented.trim());
        let expected = digest(&self.token.get());
        presented.ct_eq(&expected).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_with_a_trailing_newline_is_trimmed_like_a_file_token() {
        let t = AuthToken::new(LocalSecret::Inline("from-the-env-token\n".into())).expect("reads");
        assert!(t.check(Some("Bearer from-the-env-token")));
    }

    #[test]
    fn checks_inline_and_rotated_file_tokens() {
        let t = AuthToken::new(LocalSecret::Inline("secret-token-123".into())).expect("reads");
        assert!(t.check(Some("Bearer secret-token-123")));
        assert!(!t.check(Some("Bearer secret-token-12")));
        assert!(!t.check(Some("secret-token-123")));
        assert!(!t.check(None));

        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("token");
        std::fs::write(&path, "first-token\n").expect("write");
        let t = AuthToken::new(LocalSecret::File { file: path.clone() }).expect("reads");
        assert!(t.check(Some("Bearer first-token")));
        std::fs::write(&path, "second-token").expect("write");
        let deadline = std::time::Instant::now() + crate::secrets::RELOAD_PERIOD * 3;
        while !t.check(Some("Bearer second-token")) {
            assert!(
                std::time::Instant::now() < deadline,
                "rotation not picked up"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        assert!(t.check(Some("Bearer second-token")));
        assert!(!t.check(Some("Bearer first-token")));
    }
}
