//! The wall clock of the times the operator writes into its Lease (`acquireTime`,
//! `renewTime`): the shared clock of [`wxpush_api::clock`], which `WXPUSH_CLOCK_OFFSET` moves in
//! debug builds, so that an end-to-end test can run two operators whose clocks disagree. Leader
//! election never compares these times with a local clock (`leader.rs`).

pub use wxpush_api::clock::now;
