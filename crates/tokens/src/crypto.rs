//! The signatures of bearer tokens, checked with ring (the project's one cryptography library,
//! TLS included): jsonwebtoken's [`CryptoProvider`] below knows RS256 and ES256 only. Why
//! ring, with figures: BENCHMARKS.md, "Which crypto library".

use jsonwebtoken::crypto::{CryptoProvider, JwtSigner, JwtVerifier, KeyUtils};
use jsonwebtoken::errors::{ErrorKind, Result};
use jsonwebtoken::signature;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, DecodingKeyKind, EncodingKey};
use ring::rand::SystemRandom;
use ring::signature::{self as ring_sig, EcdsaKeyPair, RsaKeyPair, RsaPublicKeyComponents};

/// jsonwebtoken's provider: verifies RS256 and ES256 and nothing else, whatever a caller's
/// `Validation` says; signs the same two (the tests' and benchmarks' fixture tokens).
static JWT: CryptoProvider = CryptoProvider {
    signer_factory: signer,
    verifier_factory: verifier,
    // JWK thumbprints and public keys from private ones: never used here.
    key_utils: KeyUtils::new_unimplemented(),
};

/// Makes [`JWT`] jsonwebtoken's process-wide provider; idempotent. Without it jsonwebtoken
/// has none (no backend feature is enabled) and panics on the first token, so every
/// [`TokenVerifier`](crate::TokenVerifier) calls this when it is made. Panics if
/// another provider got there first: tokens would then be checked by code we did not choose.
pub fn install_jwt_provider() {
    if let Err(other) = JWT.install_default()
        && !std::ptr::eq(other, &JWT)
    {
        panic!(
            "jsonwebtoken already has another crypto provider: \
             nmp_authz_tokens::crypto::install_jwt_provider must run before any token is signed or verified"
        );
    }
}

fn verifier(algorithm: &Algorithm, key: &DecodingKey) -> Result<Box<dyn JwtVerifier>> {
    match (algorithm, key.family()) {
        (Algorithm::RS256, AlgorithmFamily::Rsa) | (Algorithm::ES256, AlgorithmFamily::Ec) => {
            Ok(Box::new(Verifier {
                algorithm: *algorithm,
                key: key.clone(),
            }))
        }
        _ => Err(ErrorKind::InvalidAlgorithm.into()),
    }
}

struct Verifier {
    algorithm: Algorithm,
    key: DecodingKey,
}

impl signature::Verifier<Vec<u8>> for Verifier {
    fn verify(
        &self,
        message: &[u8],
        signature: &Vec<u8>,
    ) -> std::result::Result<(), signature::Error> {
        let checked = match (self.algorithm, self.key.kind()) {
            // ring takes n and e without leading zero bytes; some JWKS publish n with one.
            (Algorithm::RS256, DecodingKeyKind::RsaModulusExponent { n, e }) => {
                RsaPublicKeyComponents {
                    n: without_leading_zeros(n),
                    e: without_leading_zeros(e),
                }
                .verify(&ring_sig::RSA_PKCS1_2048_8192_SHA256, message, signature)
            }
            // An uncompressed P-256 point (0x04 || x || y), as DecodingKey::from_jwk builds it.
            (Algorithm::ES256, DecodingKeyKind::SecretOrDer(point)) => {
                ring_sig::UnparsedPublicKey::new(&ring_sig::ECDSA_P256_SHA256_FIXED, point)
                    .verify(message, signature)
            }
            _ => Err(ring::error::Unspecified),
        };
        checked.map_err(|_| signature::Error::new())
    }
}

impl JwtVerifier for Verifier {
    fn algorithm(&self) -> Algorithm {
        self.algorithm
    }
}

fn without_leading_zeros(bytes: &[u8]) -> &[u8] {
    let first = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
    &bytes[first..]
}

fn signer(algorithm: &Algorithm, key: &EncodingKey) -> Result<Box<dyn JwtSigner>> {
    let key = match (algorithm, key.family()) {
        (Algorithm::RS256, AlgorithmFamily::Rsa) => SigningKey::Rsa(
            RsaKeyPair::from_der(key.as_bytes())
                .map_err(|e| ErrorKind::InvalidRsaKey(e.to_string()))?,
        ),
        (Algorithm::ES256, AlgorithmFamily::Ec) => SigningKey::Ec(
            EcdsaKeyPair::from_pkcs8(
                &ring_sig::ECDSA_P256_SHA256_FIXED_SIGNING,
                key.as_bytes(),
                &SystemRandom::new(),
            )
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
                let mut signature = vec![0; pair.public().modulus_len()];
                pair.sign(&ring_sig::RSA_PKCS1_SHA256, &rng, message, &mut signature)
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

    fn rsa_key() -> DecodingKey {
        DecodingKey::from_rsa_raw_components(&[0xc5; 256], &[1, 0, 1])
    }

    fn ec_key() -> DecodingKey {
        DecodingKey::from_ec_der(&[4; 65])
    }

    #[test]
    fn only_rs256_with_rsa_keys_and_es256_with_ec_keys_get_a_verifier() {
        install_jwt_provider();
        install_jwt_provider(); // idempotent
        assert!(verifier(&Algorithm::RS256, &rsa_key()).is_ok());
        assert!(verifier(&Algorithm::ES256, &ec_key()).is_ok());
        let secret = DecodingKey::from_secret(b"secret");
        for (algorithm, key) in [
            (Algorithm::RS256, ec_key()),
            (Algorithm::ES256, rsa_key()),
            (Algorithm::HS256, secret.clone()),
            (Algorithm::HS256, rsa_key()),
            (Algorithm::RS384, rsa_key()),
            (Algorithm::RS512, rsa_key()),
            (Algorithm::PS256, rsa_key()),
            (Algorithm::ES384, ec_key()),
            (Algorithm::EdDSA, DecodingKey::from_ed_der(&[0; 32])),
        ] {
            assert!(verifier(&algorithm, &key).is_err(), "{algorithm:?}");
        }
    }
}
