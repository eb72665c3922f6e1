//! wxpush's Kubernetes operator: turns a `PushChannel` into a running, autoscaled pusher.
//!
//! - [`crd`]: the `PushChannel` resource and the generated CRD.

pub mod crd;
