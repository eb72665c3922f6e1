//! The wall clock of the dispatcher's decisions (`maxAge`, the de-duplication window): the
//! shared clock of [`wxpush_api::clock`], which `WXPUSH_CLOCK_OFFSET` moves in debug builds.

use std::time::Duration;

pub use wxpush_api::clock::now;

/// WeChat's `client_msg_id` de-duplication window: within it, a re-send with the same
/// `client_msg_id` is not delivered twice.
pub const DEDUP_WINDOW: Duration = Duration::from_secs(600);

/// Milliseconds since the Unix epoch, for schedule keys and shared state (never negative).
pub fn millis(t: jiff::Timestamp) -> u64 {
    u64::try_from(t.as_millisecond()).unwrap_or(0)
}
