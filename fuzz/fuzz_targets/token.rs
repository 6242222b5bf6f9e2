//! `cargo fuzz run token`: see `nmp_authz_fuzz::token` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nmp_authz_fuzz::token(data));
