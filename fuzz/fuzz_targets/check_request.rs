//! `cargo fuzz run check_request`: see `nmp_authz_fuzz::check_request` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nmp_authz_fuzz::check_request(data));
