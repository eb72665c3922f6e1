//! Reconcile as a pipeline: *dereference* (the Secrets the PushChannel points to) →
//! *validate* (pure) → *check credentials* (one token request per credential change) → *build*
//! (pure) → *apply* (server-side apply) → *status* (+ Events).

pub mod apply;
pub mod build;
mod context;
pub mod credentials;
pub mod dereference;
mod error;
mod pipeline;
pub mod status;
pub mod validate;

pub use context::{
    Context, DEFAULT_BACKOFF_BASE, DEFAULT_BACKOFF_MAX, DEFAULT_REQUEUE, DEFAULT_REQUEUE_WAITING,
    Settings,
};
pub use error::Error;
pub use pipeline::{error_policy, reconcile};
