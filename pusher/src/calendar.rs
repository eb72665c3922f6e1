//! WeChat's calendar: its daily quotas count per day in Beijing time (UTC+8, no daylight saving)
//! and reset at Beijing midnight. Pure functions of the time given, used by the errcode table,
//! the local rate limiter and the Redis-shared quota.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Beijing time is UTC+8 all year (no daylight saving).
const BEIJING_OFFSET_SECS: u64 = 8 * 3600;
const DAY_SECS: u64 = 86_400;

/// The day number (days since 1970-01-01, Beijing time) that `now` falls on.
pub fn beijing_day(now: SystemTime) -> u64 {
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    (secs + BEIJING_OFFSET_SECS) / DAY_SECS
}

/// The next midnight in Beijing after `now` (strictly later), when WeChat's daily quotas reset.
pub fn next_beijing_midnight(now: SystemTime) -> SystemTime {
    let next_day = beijing_day(now) + 1;
    UNIX_EPOCH + Duration::from_secs(next_day * DAY_SECS - BEIJING_OFFSET_SECS)
}
