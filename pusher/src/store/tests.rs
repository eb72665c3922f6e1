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
