#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| trellis_server::fuzzing::net_in(data));
