//! A secret that follows its file: [`WatchedSecret`] re-reads a `{file: ...}` secret at most
//! once per [`RELOAD_PERIOD`] and swaps in the new value when the CONTENT changed.
//!
//! Comparing content, not the modification time, covers Kubernetes' update of a mounted
//! Secret: the kubelet writes the new files into a fresh folder and flips the `..data` symlink
//! to it, so the path's target changes while its times may not. A file that cannot be read (or
//! is empty) keeps the last good value and is reported once per change of the problem, not on
//! every use. Inline and environment values never change.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::config::ReadSecret as _;
use crate::policy::{LocalSecret, SecretError};

/// How often a file secret is looked at again. A rotated file takes effect within it.
pub const RELOAD_PERIOD: Duration = Duration::from_secs(1);

/// A secret value kept current with its source.
pub struct WatchedSecret {
    field: &'static str,
    source: LocalSecret,
    state: Mutex<State>,
}

struct State {
    value: Arc<str>,
    checked: Instant,
    /// The problem last reported, so that a broken file is logged once per change.
    reported: Option<String>,
}

impl std::fmt::Debug for WatchedSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchedSecret")
            .field("field", &self.field)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// A secret error with its cause (`cannot read secret file /x: No such file or directory`).
pub fn describe(e: &SecretError) -> String {
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

impl WatchedSecret {
    /// Reads the value now; fails when it cannot be read or is empty. `field` names the
    /// config field in log lines.
    pub fn new(field: &'static str, source: LocalSecret) -> Result<Self, SecretError> {
        let value = source.read()?;
        Ok(Self {
            field,
            source,
            state: Mutex::new(State {
                value: value.into(),
                checked: Instant::now(),
                reported: None,
            }),
        })
    }

    /// The current value (re-read from its file when [`RELOAD_PERIOD`] has passed).
    pub fn get(&self) -> Arc<str> {
        let LocalSecret::File { file } = &self.source else {
            return Arc::clone(&self.state.lock().value);
        };
        let mut state = self.state.lock();
        if state.checked.elapsed() < RELOAD_PERIOD {
            return Arc::clone(&state.value);
        }
        state.checked = Instant::now();
        match self.source.read() {
            Ok(value) => {
                if state.reported.take().is_some() {
                    tracing::info!(field = self.field, file = %file.display(), "secret file readable again");
                }
                if *state.value != *value {
                    state.value = value.into();
                    tracing::info!(field = self.field, file = %file.display(), "secret re-read: its content changed");
                }
            }
            // Keep the last good value: a half-written file must not lock anyone out.
            Err(e) => {
                let problem = describe(&e);
                if state.reported.as_deref() != Some(problem.as_str()) {
                    tracing::warn!(field = self.field, error = %problem, "cannot re-read a secret; keeping the last good value");
                    state.reported = Some(problem);
                }
            }
        }
        Arc::clone(&state.value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lays out a folder as the kubelet does for a mounted Secret: `KEY -> ..data/KEY`,
    /// `..data -> ..<version>`, and a new version is made visible by renaming a fresh
    /// `..data_tmp` symlink over `..data`.
    fn publish(dir: &std::path::Path, version: &str, value: &str, mtime: std::time::SystemTime) {
        let v = dir.join(format!("..{version}"));
        std::fs::create_dir(&v).expect("version dir");
        let f = v.join("token");
        std::fs::write(&f, value).expect("write");
        std::fs::File::options()
            .write(true)
            .open(&f)
            .and_then(|h| h.set_modified(mtime))
            .expect("mtime");
        let tmp = dir.join("..data_tmp");
        std::os::unix::fs::symlink(format!("..{version}"), &tmp).expect("symlink");
        std::fs::rename(&tmp, dir.join("..data")).expect("flip");
        let link = dir.join("token");
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink("..data/token", &link).expect("key link");
        }
    }

    #[test]
    fn a_kubelet_style_symlink_flip_with_the_same_mtime_is_picked_up() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mtime = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        publish(dir.path(), "v1", "first-value\n", mtime);
        let s = WatchedSecret::new(
            "auth.token",
            LocalSecret::File {
                file: dir.path().join("token"),
            },
        )
        .expect("reads");
        assert_eq!(&*s.get(), "first-value");
        publish(dir.path(), "v2", "second-value\n", mtime);
        // Within one reload period (bounded wait, not a fixed sleep).
        let deadline = Instant::now() + RELOAD_PERIOD * 3;
        while &*s.get() != "second-value" {
            assert!(
                Instant::now() < deadline,
                "not picked up within a reload period"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    #[test]
    fn a_broken_file_keeps_the_last_value() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("key");
        std::fs::write(&path, "good").expect("write");
        let s = WatchedSecret::new(
            "callbacks.signingKey",
            LocalSecret::File { file: path.clone() },
        )
        .expect("reads");
        std::fs::write(&path, "  \n").expect("write");
        s.state.lock().checked = Instant::now() - RELOAD_PERIOD;
        assert_eq!(&*s.get(), "good");
        assert!(
            s.state.lock().reported.is_some(),
            "the problem is remembered"
        );
        std::fs::write(&path, "better").expect("write");
        s.state.lock().checked = Instant::now() - RELOAD_PERIOD;
        assert_eq!(&*s.get(), "better");
        assert!(s.state.lock().reported.is_none());
    }
}
