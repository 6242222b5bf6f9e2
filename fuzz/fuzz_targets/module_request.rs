//! `cargo fuzz run module_request`: see `nmp_authz_fuzz::module_request` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nmp_authz_fuzz::module_request(data));
