//! `cargo fuzz run matching`: see `nmp_authz_fuzz::matching` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nmp_authz_fuzz::matching(data));
