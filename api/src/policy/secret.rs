//! How a policy names a secret value: by Kubernetes Secret key in the CRD, by file, environment
//! variable or (local runs only) inline in the pusher's config file.

use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A key in a Kubernetes Secret in the PushChannel's namespace. The operator mounts it into the
/// pusher; the value never appears in the resource, its status, or the pusher's ConfigMap.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub name: String,
    /// Key inside the Secret.
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub key: String,
}

/// A secret value for the pusher's config file: `{file: PATH}` (what the operator writes, with
/// the Secret mounted there), `{env: NAME}`, or a plain string inline (local runs only).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum LocalSecret {
    /// The value itself. Fine on a laptop; never in a cluster.
    Inline(String),
    /// Read from a file; surrounding whitespace is trimmed.
    File {
        /// Path of the file.
        file: PathBuf,
    },
    /// Read from an environment variable.
    Env {
        /// Name of the variable.
        env: String,
    },
}

impl std::fmt::Debug for LocalSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Inline(_) => f.write_str("LocalSecret::Inline(<redacted>)"),
            Self::File { file } => write!(f, "LocalSecret::File({})", file.display()),
            Self::Env { env } => write!(f, "LocalSecret::Env({env})"),
        }
    }
}

/// Why a secret could not be read. Never holds the value.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The file could not be read.
    #[error("cannot read secret file {path}")]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// The variable is not set (or not Unicode).
    #[error("environment variable {0} is not set")]
    Env(String),
    /// The value is empty.
    #[error("secret from {0} is empty")]
    Empty(String),
}
