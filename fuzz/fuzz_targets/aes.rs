//! Fuzz target `aes`: see `wxpush_pusher::fuzzing::aes`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wxpush_pusher::fuzzing::aes(data));
