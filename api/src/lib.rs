//! wxpush's API types: what users write and what the parts agree on, with no I/O.
//!
//! - [`policy`]: the policy sections (timeouts, pool, retry, breaker, rate limit, queue,
//!   callbacks) shared by the `PushChannel` spec and the pusher's config file, defined once.
//! - [`config`]: the pusher's config file (`wxpush-pusher serve --config FILE`): its types,
//!   parsing, environment overrides and validation. Reading files is the pusher's job.
//! - [`crd`]: the `PushChannel` custom resource, from which `crdgen` writes the CRD.
//! - [`credential_check`]: the one access_token request that checks a channel's credentials,
//!   and what its answer means (for `check-config --online` and the operator).
//! - [`images`]: the published image names, set once.
//! - [`clock`]: the wall clock the pusher and the operator decide by, which the tests can move.
//!
//! The operator depends on this crate alone, so it never compiles the pusher's store, HTTP
//! client or the WeChat sandbox.

pub mod clock;
pub mod config;
pub mod crd;
pub mod credential_check;
pub mod images;
pub mod policy;
