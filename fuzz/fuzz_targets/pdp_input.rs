//! `cargo fuzz run pdp_input`: see `nmp_authz_fuzz::pdp_input` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nmp_authz_fuzz::pdp_input(data));
