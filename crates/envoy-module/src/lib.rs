//! nmp-authz inside Envoy: the decision core as an Envoy dynamic module (Envoy 1.40's
//! `envoy.filters.http.dynamic_modules`, ABI `v0.2.0`), an in-process filter beside the
//! ext_authz server. The same configuration file, policy sources, identity rules, decision,
//! headers and denials as the server's gRPC Check, without the round trip.
//!
//! - [`gate`]: the request entry in safe Rust (headers in, an [`gate::Answer`] out), fuzzed and
//!   unit-tested without Envoy;
//! - [`policy`]: the process-wide compiled policy, refreshed on a background thread;
//! - [`keys`]: signed bearer tokens, verified with the server's verifier against issuers' keys
//!   fetched on a background thread;
//! - [`record`]: decision records, as the server writes them, on a writer thread of the
//!   module's;
//! - `abi`: the C ABI Envoy calls, the crate's only `unsafe` (built with the default `envoy-abi`
//!   feature).

#[cfg(all(feature = "envoy-abi", not(test)))]
#[allow(unsafe_code)]
mod abi;
pub mod gate;
mod http;
pub mod keys;
pub mod policy;
pub mod record;
