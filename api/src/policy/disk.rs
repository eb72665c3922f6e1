//! The embedded store's disk budget: sizes written as Kubernetes quantities, the share of a
//! volume the store may fill, and the space a message takes (measured; docs/reliability.md).

use std::time::Duration;

/// The share of the volume (or file system) the store may fill, in percent. The rest is
/// headroom: redb grows its file in steps and needs free pages to commit.
pub const BUDGET_PERCENT: u64 = 80;

/// Bytes one message takes in the embedded store: the largest of the measurements with the
/// test template message (the record, its schedule and index entries, redb's pages), rounded
/// up. docs/reliability.md gives them. Messages with large `data` take more (about 2.8 KB).
pub const BYTES_PER_MESSAGE: u64 = 1_400;

/// Bytes of a Kubernetes quantity (`1Gi`, `800Mi`, `1.5G`, `1000000`); `None` when it is not
/// one.
pub fn quantity_bytes(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let scale: u64 = match suffix {
        "" => 1,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        _ => return None,
    };
    let value: f64 = number.parse().ok()?;
    if !value.is_finite() || value < 0.0 {
        return None;
    }
    let bytes = value * scale as f64;
    (bytes <= u64::MAX as f64).then_some(bytes as u64)
}

/// The budget for a volume of `volume` bytes.
pub fn budget_of(volume: u64) -> u64 {
    volume / 100 * BUDGET_PERCENT
}

/// Messages the store may hold at once: up to `max_messages` pending, plus the finished ones
/// kept for `retention`, of which there are at most a day's `daily_quota` per started day (or,
/// without a quota, `per_second` for the whole retention).
pub fn messages_held(
    max_messages: u64,
    retention: Duration,
    daily_quota: u64,
    per_second: u32,
) -> u64 {
    const DAY: u64 = 24 * 3600;
    let secs = retention.as_secs();
    let finished = if daily_quota > 0 {
        daily_quota.saturating_mul(secs.div_ceil(DAY).max(1))
    } else {
        u64::from(per_second).saturating_mul(secs)
    };
    max_messages.saturating_add(finished)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_parse() {
        assert_eq!(quantity_bytes("1Gi"), Some(1 << 30));
        assert_eq!(quantity_bytes("800Mi"), Some(800 << 20));
        assert_eq!(quantity_bytes("1.5G"), Some(1_500_000_000));
        assert_eq!(quantity_bytes("4096"), Some(4096));
        assert_eq!(quantity_bytes("1Gb"), None);
        assert_eq!(quantity_bytes("Gi"), None);
    }

    #[test]
    fn the_default_queue_fits_the_default_volume() {
        let q = super::super::EmbeddedQueue::default();
        let r = super::super::RateLimit::default();
        let held = messages_held(
            q.max_messages,
            q.retention.get(),
            r.daily_quota,
            r.per_second,
        );
        let volume = quantity_bytes(&q.volume_size).expect("quantity");
        assert!(
            held * BYTES_PER_MESSAGE <= budget_of(volume),
            "{held} messages"
        );
    }
}
