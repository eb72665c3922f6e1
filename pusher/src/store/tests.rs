//! The embedded store against the store contract ([`super::contract`]): all-or-nothing
//! accepts, idempotency, leases that die with the process, outcomes, retries, dead letters and
//! replay, retention, delivery events and outcome callbacks.

crate::store_contract!(crate::store::contract::Embedded::temp());

#[test]
fn a_due_time_rounds_up_to_its_millisecond() {
    let at = |ns: i128| jiff::Timestamp::from_nanosecond(ns).expect("in range");
    assert_eq!(super::due_millis(at(12_300_000_000)), 12_300);
    assert_eq!(super::due_millis(at(12_300_000_001)), 12_301);
    assert_eq!(super::due_millis(at(12_300_400_000)), 12_301);
    assert_eq!(super::millis(at(12_300_400_000)), 12_300);
}

#[test]
fn a_storage_error_keeps_its_source() {
    use std::error::Error as _;
    let io = std::io::Error::other("disk on fire");
    let e = super::StoreError::storage(format!("cannot write: {io}"), io);
    assert_eq!(e.to_string(), "storage: cannot write: disk on fire");
    assert_eq!(
        e.source().map(ToString::to_string).as_deref(),
        Some("disk on fire")
    );
    let bare = super::StoreError::Storage("the queue is closed".into());
    assert_eq!(bare.to_string(), "storage: the queue is closed");
    assert!(bare.source().is_none());
}
