//! Fuzz target `duration`: see `wxpush_pusher::fuzzing::duration`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wxpush_pusher::fuzzing::duration(data));
