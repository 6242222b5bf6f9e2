//! nmp-authz: an Envoy ext_authz server for the NeMo Platform API.
//!
//! Modules name the domain: [`identity`] (who is calling), [`policy`] (what is allowed: the pure
//! decision core), [`sources`] (where policy data comes from), [`server`] (the gRPC and HTTP
//! faces), [`telemetry`] (logs and metrics), and [`config`].

pub mod config;
pub mod fetch;
pub mod identity;
pub mod loadtest;
pub mod operator;
pub mod policy;
pub mod server;
pub mod sources;
pub mod telemetry;
pub mod yaml;

/// The project's own PDP service, generated from `proto/nmp_authz/v1/pdp.proto`.
pub mod pdp_proto {
    tonic::include_proto!("nmp_authz.v1");
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/pdp_descriptor.bin"));
}
