//! The signatures of bearer tokens, checked with aws-lc-rs (the project's one cryptography
//! library, TLS included): each published key is parsed once, when the keys are fetched, into
//! a [`VerifyingKey`] for RS256 or ES256, the only two algorithms. ring, used before, rebuilt
//! an RSA key's Montgomery constants on every verification (it cannot keep a parsed key).
//! Why aws-lc-rs, with figures: BENCHMARKS.md, "Which crypto library".

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    self as lc, EcdsaKeyPair, ParsedPublicKey, RsaKeyPair, RsaPublicKeyComponents,
};
use jsonwebtoken::crypto::{CryptoProvider, JwtSigner, JwtVerifier, KeyUtils};
use jsonwebtoken::errors::{ErrorKind, Result};
use jsonwebtoken::signature;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, DecodingKeyKind, EncodingKey};

/// One issuer's public key, parsed for the one algorithm it may verify. A key aws-lc-rs will not
/// parse is kept, verifying nothing: such a token is refused as invalid, as before, rather than
/// sent to fetch the keys again as one with an unknown `kid` would be.
#[derive(Clone)]
pub(crate) struct VerifyingKey(Option<ParsedPublicKey>);

impl VerifyingKey {
    /// `key` as jsonwebtoken decoded it from the JWK: RSA `n` and `e` for RS256 (RSA keys of
    /// 2048 to 8192 bits; a shorter or longer one is kept but verifies nothing), an uncompressed
    /// P-256 point (`0x04 || x || y`, as `DecodingKey::from_jwk` builds it) for ES256.
    pub(crate) fn new(algorithm: Algorithm, key: &DecodingKey) -> Self {
        let parsed = match (algorithm, key.kind()) {
            // aws-lc-rs takes n and e without leading zero bytes; some JWKS publish n with one.
            (Algorithm::RS256, DecodingKeyKind::RsaModulusExponent { n, e }) => {
                RsaPublicKeyComponents {
                    n: without_leading_zeros(n),
                    e: without_leading_zeros(e),
                }
                .to_parsed_public_key(&lc::RSA_PKCS1_2048_8192_SHA256)
                .ok()
            }
            // JWS ES256 signatures are r || s, not DER.
            (Algorithm::ES256, DecodingKeyKind::SecretOrDer(point)) => {
                ParsedPublicKey::new(&lc::ECDSA_P256_SHA256_FIXED, point).ok()
            }
            _ => None,
        };
        Self(parsed)
    }

    /// Whether `signature` is this key's over `message`. The key size range (RSA) is checked
    /// here, by aws-lc-rs.
    pub(crate) fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        self.0
            .as_ref()
            .is_some_and(|key| key.verify_sig(message, signature).is_ok())
    }
}

fn without_leading_zeros(bytes: &[u8]) -> &[u8] {
    let first = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
    &bytes[first..]
}

/// The SHA-256 of `bytes`.
pub(crate) fn sha256(bytes: &[u8]) -> [u8; 32] {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes)
        .as_ref()
        .try_into()
        .expect("a SHA-256 digest is 32 bytes")
}

/// jsonwebtoken's provider, for what still goes through jsonwebtoken's crypto: signing the
/// fixture tokens of tests, benchmarks and the fuzz target (RS256 and ES256). Verification is
/// [`VerifyingKey`]'s, so this provider verifies nothing.
static JWT: CryptoProvider = CryptoProvider {
    signer_factory: signer,
    verifier_factory: verifier,
    // JWK thumbprints and public keys from private ones: never used here.
    key_utils: KeyUtils::new_unimplemented(),
};

/// Makes [`JWT`] jsonwebtoken's process-wide provider; idempotent. Only code that signs tokens
/// with jsonwebtoken (tests, benchmarks, fuzzing) needs it: without it jsonwebtoken has none (no
/// backend feature is enabled) and panics. Panics if another provider got there first.
pub fn install_jwt_provider() {
    if let Err(other) = JWT.install_default()
        && !std::ptr::eq(other, &JWT)
    {
        panic!(
            "jsonwebtoken already has another crypto provider: \
             nmp_authz_tokens::crypto::install_jwt_provider must run before any token is signed"
        );
    }
}

fn verifier(_: &Algorithm, _: &DecodingKey) -> Result<Box<dyn JwtVerifier>> {
    Err(ErrorKind::InvalidAlgorithm.into())
}

fn signer(algorithm: &Algorithm, key: &EncodingKey) -> Result<Box<dyn JwtSigner>> {
    let key = match (algorithm, key.family()) {
        (Algorithm::RS256, AlgorithmFamily::Rsa) => SigningKey::Rsa(
            RsaKeyPair::from_der(key.as_bytes())
                .map_err(|e| ErrorKind::InvalidRsaKey(e.to_string()))?,
        ),
        (Algorithm::ES256, AlgorithmFamily::Ec) => SigningKey::Ec(
            EcdsaKeyPair::from_pkcs8(&lc::ECDSA_P256_SHA256_FIXED_SIGNING, key.as_bytes())
                .map_err(|_| ErrorKind::InvalidEcdsaKey)?,
        ),
        _ => return Err(ErrorKind::InvalidAlgorithm.into()),
    };
    Ok(Box::new(key))
}

enum SigningKey {
    Rsa(RsaKeyPair),
    Ec(EcdsaKeyPair),
}

impl signature::Signer<Vec<u8>> for SigningKey {
    fn try_sign(&self, message: &[u8]) -> std::result::Result<Vec<u8>, signature::Error> {
        let rng = SystemRandom::new();
        match self {
            SigningKey::Rsa(pair) => {
                let mut signature = vec![0; pair.public_modulus_len()];
                pair.sign(&lc::RSA_PKCS1_SHA256, &rng, message, &mut signature)
                    .map(|()| signature)
            }
            SigningKey::Ec(pair) => pair.sign(&rng, message).map(|s| s.as_ref().to_vec()),
        }
        .map_err(|_| signature::Error::new())
    }
}

impl JwtSigner for SigningKey {
    fn algorithm(&self) -> Algorithm {
        match self {
            SigningKey::Rsa(_) => Algorithm::RS256,
            SigningKey::Ec(_) => Algorithm::ES256,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_provider_signs_rs256_and_es256_only_and_verifies_nothing() {
        install_jwt_provider();
        install_jwt_provider(); // idempotent
        let keys = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/keys/");
        let read = |name: &str| std::fs::read(format!("{keys}{name}")).unwrap();
        let rsa = EncodingKey::from_rsa_pem(&read("rsa.pem")).unwrap();
        let ec = EncodingKey::from_ec_pem(&read("ec.pem")).unwrap();
        assert!(signer(&Algorithm::RS256, &rsa).is_ok());
        assert!(signer(&Algorithm::ES256, &ec).is_ok());
        for (algorithm, key) in [
            (Algorithm::RS256, &ec),
            (Algorithm::ES256, &rsa),
            (Algorithm::RS384, &rsa),
            (Algorithm::PS256, &rsa),
            (Algorithm::ES384, &ec),
            (Algorithm::HS256, &EncodingKey::from_secret(b"secret")),
        ] {
            assert!(signer(&algorithm, key).is_err(), "{algorithm:?}");
        }
        for algorithm in [Algorithm::RS256, Algorithm::ES256, Algorithm::HS256] {
            let key = DecodingKey::from_rsa_raw_components(&[0xc5; 256], &[1, 0, 1]);
            assert!(verifier(&algorithm, &key).is_err(), "{algorithm:?}");
        }
    }

    #[test]
    fn a_key_parses_for_its_own_algorithm_only() {
        let rsa = DecodingKey::from_rsa_raw_components(&[0xc5; 256], &[1, 0, 1]);
        let ec = DecodingKey::from_ec_der(&[4; 65]);
        assert!(VerifyingKey::new(Algorithm::RS256, &rsa).0.is_some());
        assert!(VerifyingKey::new(Algorithm::ES256, &rsa).0.is_none());
        assert!(VerifyingKey::new(Algorithm::RS256, &ec).0.is_none());
        assert!(!VerifyingKey::new(Algorithm::RS256, &ec).verifies(b"m", &[0; 256]));
    }
}
