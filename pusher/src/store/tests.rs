//! The embedded store against the store contract ([`super::contract`]): all-or-nothing
//! accepts, idempotency, leases that die with the process, outcomes, retries, dead letters and
//! replay, retention, delivery events and outcome callbacks.

crate::store_contract!(crate::store::contract::Embedded::temp());
