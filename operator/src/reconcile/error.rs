//! Why a reconcile fails.

use super::build::BuildError;

/// Why a reconcile failed. An invalid spec or a missing Secret is not an error: it is
/// reported in status and waits.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading a referenced Secret failed (not: it does not exist).
    #[error("cannot read Secret {name}: {source}")]
    ReadSecret {
        /// The Secret.
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// Applying a child failed.
    #[error("cannot apply {kind} {name}: {source}")]
    Apply {
        /// Its kind.
        kind: String,
        /// Its name.
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// Deleting an autoscaler that is no longer wanted failed.
    #[error("cannot delete {kind} {name}: {source}")]
    Delete {
        /// Its kind.
        kind: String,
        /// Its name.
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// Writing the status failed.
    #[error("cannot write the PushChannel's status: {source}")]
    Status {
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// The objects could not be built.
    #[error(transparent)]
    Build(#[from] BuildError),
}

impl Error {
    /// Short label for `wxpush_operator_reconcile_errors_total{kind}`.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::ReadSecret { .. } => "read_secret",
            Self::Apply { .. } => "apply",
            Self::Delete { .. } => "delete",
            Self::Status { .. } => "status",
            Self::Build(_) => "build",
        }
    }
}
