//! Fuzz target `message`: see `wxpush_pusher::fuzzing::message`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wxpush_pusher::fuzzing::message(data));
