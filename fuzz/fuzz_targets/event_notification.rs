#![no_main]
//! `fngate::fuzzing::event_notification` under libFuzzer.

libfuzzer_sys::fuzz_target!(|data: &[u8]| fngate::fuzzing::event_notification(data));
