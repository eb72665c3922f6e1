//! Fuzz target `events_xml`: see `wxpush_pusher::fuzzing::events_xml`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wxpush_pusher::fuzzing::events_xml(data));
