#![no_main]
//! `fngate::fuzzing::plugin_decision` under libFuzzer.

libfuzzer_sys::fuzz_target!(|data: &[u8]| fngate::fuzzing::plugin_decision(data));
