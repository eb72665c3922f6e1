//! Fuzz target `batch`: see `wxpush_pusher::fuzzing::batch`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wxpush_pusher::fuzzing::batch(data));
