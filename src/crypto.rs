//! The server's one cryptography library, aws-lc-rs: TLS for outbound fetches (rustls, below)
//! and the signatures of bearer tokens ([`nmp_authz_tokens`], RS256 and ES256 only, each key
//! parsed once when the keys are fetched). Why aws-lc-rs, with figures: BENCHMARKS.md, "Which
//! crypto library".

/// rustls's provider for outbound HTTPS (keys, bundles).
pub fn tls() -> rustls::crypto::CryptoProvider {
    rustls::crypto::aws_lc_rs::default_provider()
}
