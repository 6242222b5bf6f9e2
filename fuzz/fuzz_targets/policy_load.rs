//! `cargo fuzz run policy_load`: see `nmp_authz_fuzz::policy_load` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nmp_authz_fuzz::policy_load(data));
