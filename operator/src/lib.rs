//! wxpush's Kubernetes operator: turns a `PushChannel` into a running, autoscaled pusher.
//!
//! - [`crd`]: the `PushChannel` resource and the generated CRD.
//! - [`reconcile`]: the pipeline dereference → validate → build → apply → status.
//! - [`controller`]: the watches that drive it.
//! - [`leader`]: leader election through a `coordination.k8s.io/v1` Lease.
//! - [`metrics`], [`server`]: `/metrics`, `/healthz`, `/readyz`.
//! - [`unknown_fields`]: spec fields this version does not know, named in a warning.
//! - [`clock`]: the wall clock of the times written into the Lease.

pub mod clock;
pub mod controller;
pub use wxpush_api::crd;
pub mod leader;
pub mod metrics;
pub mod reconcile;
pub mod server;
pub mod unknown_fields;
