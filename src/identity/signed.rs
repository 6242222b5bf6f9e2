//! Signed bearer tokens: the verifier the server shares with the Envoy module
//! ([`nmp_authz_tokens`]), under the path the server's code, tests and benchmarks use. The keys
//! it checks against are fetched by [`super::jwks`].

/// For code that signs fixture tokens with jsonwebtoken (tests, benchmarks, fuzzing): verifying
/// needs no provider.
pub use nmp_authz_tokens::crypto::install_jwt_provider;
pub use nmp_authz_tokens::{IssuerKeys, SigningKey, TokenVerifier, usable_keys};
