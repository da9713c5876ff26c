#![no_main]
//! `fngate::fuzzing::config` under libFuzzer.

libfuzzer_sys::fuzz_target!(|data: &[u8]| fngate::fuzzing::config(data));
