//! The pusher's config file: its types live in [`wxpush_api::config`] (the operator writes the
//! same file); this module adds what needs I/O: reading the file and reading secret values.

use std::path::Path;

pub use wxpush_api::config::*;

use crate::policy::{LocalSecret, SecretError};

/// Reads `path`, applies the environment overrides and validates the result, reporting every
/// problem of the file at once.
pub fn load(path: &Path) -> Result<PusherConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|reason| ConfigError::Read {
        path: path.to_path_buf(),
        reason,
    })?;
    PusherConfig::from_yaml_with_env(&text, &|k| std::env::var(k).ok())
}

/// Reading a [`LocalSecret`]'s value, which the API crate only describes.
pub trait ReadSecret {
    /// Reads the value now, trimmed of surrounding whitespace whatever its source (a file or a
    /// variable made by `kubectl create secret --from-file` ends in a newline).
    fn read(&self) -> Result<String, SecretError>;
}

impl ReadSecret for LocalSecret {
    fn read(&self) -> Result<String, SecretError> {
        let (value, from) = match self {
            Self::Inline(v) => (v.trim().to_string(), "inline value".to_string()),
            Self::File { file } => {
                let v = std::fs::read_to_string(file).map_err(|source| SecretError::File {
                    path: file.clone(),
                    source,
                })?;
                (v.trim().to_string(), file.display().to_string())
            }
            Self::Env { env } => {
                let v = std::env::var(env).map_err(|_| SecretError::Env(env.clone()))?;
                (v.trim().to_string(), format!("${env}"))
            }
        };
        if value.is_empty() {
            return Err(SecretError::Empty(from));
        }
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::LocalSecret;

    #[test]
    fn three_forms_parse_and_debug_hides_inline_values() {
        let s: LocalSecret = serde_json::from_str(r#""hunter2""#).expect("inline");
        assert_eq!(s.read().expect("inline reads"), "hunter2");
        assert!(!format!("{s:?}").contains("hunter2"));
        let f: LocalSecret = serde_json::from_str(r#"{"file": "/nonexistent/x"}"#).expect("file");
        assert!(matches!(f.read(), Err(SecretError::File { .. })));
        let e: LocalSecret =
            serde_json::from_str(r#"{"env": "WXPUSH_TEST_UNSET_VAR"}"#).expect("env");
        assert!(matches!(e.read(), Err(SecretError::Env(_))));
    }

    #[test]
    fn file_values_are_trimmed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("token");
        std::fs::write(&path, "abc\n").expect("write");
        let s = LocalSecret::File { file: path };
        assert_eq!(s.read().expect("reads"), "abc");
    }
}
