#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| msys_milter::fuzz::config(data));
