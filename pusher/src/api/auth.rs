//! Bearer-token authentication of the `/v1` routes.
//!
//! The expected token comes from the config (`auth.token` inline, `auth.tokenFile`, or the
//! `WXPUSH_AUTH_TOKEN` environment variable). A token file is re-read when its modification time
//! changes, so a rotated Kubernetes Secret takes effect without a restart. Tokens are compared
//! as SHA-256 digests with a constant-time comparison, so neither their content nor their
//! length leaks through timing.

use std::path::PathBuf;
use std::time::SystemTime;

use parking_lot::RwLock;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::ReadSecret as _;
use crate::policy::{LocalSecret, SecretError};

/// The expected bearer token.
#[derive(Debug)]
pub struct AuthToken {
    source: LocalSecret,
    current: RwLock<Current>,
}

#[derive(Debug)]
struct Current {
    digest: [u8; 32],
    modified: Option<SystemTime>,
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn modified(path: &PathBuf) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

impl AuthToken {
    /// Reads the token now; fails when it cannot be read or is empty.
    pub fn new(source: LocalSecret) -> Result<Self, SecretError> {
        let modified = match &source {
            LocalSecret::File { file } => modified(file),
            _ => None,
        };
        let value = source.read()?;
        Ok(Self {
            source,
            current: RwLock::new(Current {
                digest: digest(&value),
                modified,
            }),
        })
    }

    fn refresh(&self) {
        let LocalSecret::File { file } = &self.source else {
            return;
        };
        let now = modified(file);
        if now.is_none() || now == self.current.read().modified {
            return;
        }
        match self.source.read() {
            Ok(value) => {
                let mut current = self.current.write();
                current.digest = digest(&value);
                current.modified = now;
                tracing::info!(file = %file.display(), "auth token re-read");
            }
            // Keep the last good token: a half-written file must not lock producers out.
            Err(e) => {
                tracing::warn!(error = %e, "cannot re-read the auth token; keeping the old one")
            }
        }
    }

    /// Whether an `Authorization` header value (`Bearer <token>`) carries the right token.
    pub fn check(&self, header: Option<&str>) -> bool {
        self.refresh();
        let Some(presented) = header.and_then(|h| {
            h.strip_prefix("Bearer ")
                .or_else(|| h.strip_prefix("bearer "))
        }) else {
            return false;
        };
        let presented = digest(presented.trim());
        let expected = self.current.read().digest;
        presented.ct_eq(&expected).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        // Make sure the modification time moves even on coarse clocks.
        let later = SystemTime::now() + std::time::Duration::from_secs(5);
        std::fs::write(&path, "second-token").expect("write");
        std::fs::File::options()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_modified(later))
            .expect("touch");
        assert!(t.check(Some("Bearer second-token")));
        assert!(!t.check(Some("Bearer first-token")));
    }
}
