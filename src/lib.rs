//! nmp-authz: an Envoy ext_authz server for the NeMo Platform API.
//!
//! The decision itself is the `nmp-authz-core` crate (what is allowed, the request-path rule);
//! this crate hosts it. Modules name the domain: [`identity`] (who is calling), [`sources`]
//! (where policy data comes from), [`server`] (the gRPC and HTTP faces), [`telemetry`] (logs
//! and metrics), and [`config`].

// The core's modules under their own names, so that `crate::policy` reads as it always has.
use nmp_authz_core::policy;

/// The configuration: its keys, parsing and validation (the core's, shared with the in-Envoy
/// module), read from the file and environment the server was given.
pub mod config {
    pub use crate::config_files::*;
    pub use nmp_authz_core::config::*;
}
mod config_files;
pub mod crypto;
pub mod fetch;
pub mod identity;
pub mod operator;
pub mod requests;
pub mod server;
pub mod sources;
pub mod telemetry;
pub mod traces;

/// The project's own PDP service, generated from `proto/nmp_authz/v1/pdp.proto`.
pub mod pdp_proto {
    tonic::include_proto!("nmp_authz.v1");
    pub(crate) const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/pdp_descriptor.bin"));
}
