#![no_main]
//! `fngate::fuzzing::http1_framing` under libFuzzer.

libfuzzer_sys::fuzz_target!(|data: &[u8]| fngate::fuzzing::http1_framing(data));
