#![no_main]
//! `fngate::fuzzing::http_trigger` under libFuzzer.

libfuzzer_sys::fuzz_target!(|data: &[u8]| fngate::fuzzing::http_trigger(data));
