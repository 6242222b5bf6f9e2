//! The server's one cryptography library, ring: TLS for outbound fetches (rustls, below) and
//! the signatures of bearer tokens (jsonwebtoken through [`nmp_authz_tokens::crypto`]'s
//! provider, RS256 and ES256 only). Why ring, with figures: BENCHMARKS.md, "Which crypto
//! library".

pub use nmp_authz_tokens::crypto::install_jwt_provider;

/// rustls's provider for outbound HTTPS (keys, bundles).
pub fn tls() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}
