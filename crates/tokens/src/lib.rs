//! Signed bearer tokens: RS256 and ES256 only, checked against the keys each configured issuer
//! publishes, with a bounded cache of tokens already accepted. One implementation for both
//! hosts, the server and the Envoy module. No I/O here: each host fetches the keys its own way
//! (the server on its async runtime, the module on a thread of its own) and swaps them in
//! whole with [`IssuerKeys::replace`]; the caller passes the time.

pub mod crypto;
pub mod fetching;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use jsonwebtoken::jwk::{
    AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm, PublicKeyUse,
};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::{Map, Value as Json};

use nmp_authz_core::config::OidcConfig;
use nmp_authz_core::identity::{
    AcceptedToken, Rejection, SigningAlgorithm, TokenVerification, UNTRUSTED_ISSUER,
    signing_algorithm,
};

/// How many verified tokens are remembered; each entry lives until its token expires.
const CACHE_CAPACITY: u64 = 50_000;

const INVALID_TOKEN: &str = "Invalid or expired token";
const WRONG_AUDIENCE: &str = "Token audience is not accepted";

/// Header parameters that jsonwebtoken's `Header` reads as strings: its `decode`, which read
/// every token here before, refused any other value but null. Still refused (see
/// [`TokenVerifier::verify`]). The other parameters it types we refuse whatever their value
/// (`jku`, `jwk`, `x5u`, `x5c`, `crit`, `cty`: [`nmp_authz_core::identity::refused_header`])
/// or check on their own (`alg`, `kid`).
const STRING_HEADER_PARAMETERS: [&str; 7] =
    ["typ", "x5t", "x5t#S256", "enc", "zip", "url", "nonce"];

/// One public key an issuer signs with, parsed once (here, when the keys are fetched) rather
/// than on every verification.
#[derive(Clone)]
pub struct SigningKey {
    pub kid: Option<String>,
    pub algorithm: Algorithm,
    key: crypto::VerifyingKey,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey({:?}, {:?})", self.kid, self.algorithm)
    }
}

/// The usable keys of a JWKS: RSA keys for RS256 and P-256 keys for ES256, for signing (or
/// unspecified use). Symmetric keys and every other kind are ignored.
pub fn usable_keys(set: &JwkSet) -> Vec<SigningKey> {
    set.keys.iter().filter_map(usable_key).collect()
}

fn usable_key(jwk: &Jwk) -> Option<SigningKey> {
    if matches!(&jwk.common.public_key_use, Some(u) if *u != PublicKeyUse::Signature) {
        return None;
    }
    let algorithm = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => {
            Algorithm::ES256
        }
        _ => return None,
    };
    // A key that names an algorithm is used for that one only.
    let named = match jwk.common.key_algorithm {
        None => None,
        Some(KeyAlgorithm::RS256) => Some(Algorithm::RS256),
        Some(KeyAlgorithm::ES256) => Some(Algorithm::ES256),
        Some(_) => return None,
    };
    if named.is_some_and(|named| named != algorithm) {
        return None;
    }
    Some(SigningKey {
        kid: jwk.common.key_id.clone(),
        algorithm,
        key: crypto::VerifyingKey::new(algorithm, &DecodingKey::from_jwk(jwk).ok()?),
    })
}

/// The keys of one trusted issuer, replaced whole when they are fetched again.
#[derive(Debug)]
pub struct IssuerKeys {
    pub issuer: String,
    /// Where the keys are: configured, or found through the issuer's discovery document.
    pub jwks_uri: Option<String>,
    keys: ArcSwap<Vec<SigningKey>>,
}

impl IssuerKeys {
    pub fn new(issuer: impl Into<String>, jwks_uri: Option<String>) -> Self {
        Self {
            issuer: issuer.into(),
            jwks_uri,
            keys: ArcSwap::from_pointee(Vec::new()),
        }
    }

    pub fn keys(&self) -> Arc<Vec<SigningKey>> {
        self.keys.load_full()
    }

    /// Installs a new key set; returns whether a key that was there is gone.
    pub fn replace(&self, keys: Vec<SigningKey>) -> bool {
        let old = self.keys.swap(Arc::new(keys));
        let new = self.keys.load();
        old.iter().any(|o| {
            !new.iter()
                .any(|n| n.kid == o.kid && n.algorithm == o.algorithm)
        })
    }
}

/// Verifies signed tokens for the configured issuers and audience.
pub struct TokenVerifier {
    issuers: HashMap<String, Arc<IssuerKeys>>,
    audience: Option<String>,
    accepted: moka::sync::Cache<[u8; 32], Arc<AcceptedToken>>,
}

impl std::fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenVerifier")
            .field("issuers", &self.issuers.keys().collect::<Vec<_>>())
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

/// Entries leave the cache when their token expires (they are re-checked against the time on
/// every hit as well).
struct UntilExpiry;

impl moka::Expiry<[u8; 32], Arc<AcceptedToken>> for UntilExpiry {
    fn expire_after_create(
        &self,
        _key: &[u8; 32],
        value: &Arc<AcceptedToken>,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        // At most a day: a token with an `exp` far in the future is checked afresh daily
        // rather than remembered for ever.
        let now = unix_now();
        Some(Duration::from_secs(
            value.expires_at().saturating_sub(now).clamp(1, 24 * 3600),
        ))
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The key a token is remembered under: its SHA-256, so the cache holds no credentials.
fn token_digest(token: &str) -> [u8; 32] {
    crypto::sha256(token.as_bytes())
}

impl TokenVerifier {
    /// `issuers` are trusted issuers with their keys; `audience`, when set, must be in `aud`.
    /// Time claims (and their leeway) are the caller's.
    pub fn new(issuers: Vec<Arc<IssuerKeys>>, audience: Option<String>) -> Self {
        Self {
            issuers: issuers.into_iter().map(|i| (i.issuer.clone(), i)).collect(),
            audience,
            accepted: moka::sync::Cache::builder()
                .max_capacity(CACHE_CAPACITY)
                .expire_after(UntilExpiry)
                .build(),
        }
    }

    /// A verifier that trusts nobody: every signed token is refused.
    pub fn none() -> Self {
        Self::new(Vec::new(), None)
    }

    /// The verifier `auth.oidc` describes: `issuer` (its keys at `jwks_uri` when configured,
    /// else through discovery) and each of `additional_issuers` (through discovery); one that
    /// trusts nobody when OIDC is off.
    pub fn for_config(oidc: &OidcConfig) -> Self {
        if !oidc.enabled {
            return Self::none();
        }
        let primary = oidc
            .issuer
            .iter()
            .map(|issuer| Arc::new(IssuerKeys::new(issuer.clone(), oidc.jwks_uri.clone())));
        let additional = oidc
            .additional_issuers
            .iter()
            .map(|issuer| Arc::new(IssuerKeys::new(issuer.clone(), None)));
        Self::new(primary.chain(additional).collect(), oidc.audience.clone())
    }

    pub fn issuer(&self, issuer: &str) -> Option<&Arc<IssuerKeys>> {
        self.issuers.get(issuer)
    }

    pub fn issuers(&self) -> impl Iterator<Item = &Arc<IssuerKeys>> {
        self.issuers.values()
    }

    /// Forgets every accepted token, e.g. after an issuer stopped publishing a key.
    pub fn forget_verified(&self) {
        self.accepted.invalidate_all();
    }

    /// Verifies `token`, already split and decoded into `header` and unverified `claims`: the
    /// signature over the token's text, the header, issuer, key and audience from the maps,
    /// which must be this token's own (the core's parse of it). Time claims are the caller's.
    pub fn verify(
        &self,
        token: &str,
        header: &Map<String, Json>,
        claims: &Map<String, Json>,
    ) -> Result<(), Rejection> {
        let algorithm = match signing_algorithm(header)? {
            SigningAlgorithm::Rs256 => Algorithm::RS256,
            SigningAlgorithm::Es256 => Algorithm::ES256,
        };
        let Some(issuer) = claims
            .get("iss")
            .and_then(Json::as_str)
            .and_then(|iss| self.issuers.get(iss))
        else {
            return Err(Rejection::Invalid(UNTRUSTED_ISSUER));
        };
        let keys = issuer.keys();
        let kid = match header.get("kid") {
            None => None,
            Some(Json::String(kid)) => Some(kid.as_str()),
            Some(_) => return Err(Rejection::Invalid(INVALID_TOKEN)),
        };
        let mut candidates = keys
            .iter()
            .filter(|k| k.algorithm == algorithm && (kid.is_none() || k.kid.as_deref() == kid));
        let key = match (candidates.next(), candidates.next(), kid) {
            (Some(key), None, _) | (Some(key), Some(_), Some(_)) => key,
            (Some(_), Some(_), None) => return Err(Rejection::Invalid("Token has no key id")),
            (None, _, _) => {
                return Err(Rejection::UnknownKey {
                    issuer: issuer.issuer.clone(),
                });
            }
        };

        // What jsonwebtoken's `decode` refused when it read every token here: refused still.
        // Its base64url allows no padding (the core's does, for unsigned tokens), and `=` is
        // nothing but padding in base64url.
        if token.contains('=')
            || STRING_HEADER_PARAMETERS
                .iter()
                .any(|p| !matches!(header.get(*p), None | Some(Json::Null | Json::String(_))))
        {
            return Err(Rejection::Invalid(INVALID_TOKEN));
        }
        // The signature alone, with the key parsed when it was fetched (crate::crypto):
        // jsonwebtoken's `decode` would decode and parse header and claims again, 8% of the
        // instructions of a first RS256 sight.
        let (message, signature) = token
            .rsplit_once('.')
            .ok_or(Rejection::Invalid(INVALID_TOKEN))?;
        let signature =
            base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, signature)
                .map_err(|_| Rejection::Invalid(INVALID_TOKEN))?;
        if key.key.verifies(message.as_bytes(), &signature) {
            self.check_audience(claims)
        } else {
            Err(Rejection::Invalid(INVALID_TOKEN))
        }
    }

    /// `aud` as NMP's PyJWT checks it: with an audience configured, `aud` must be there, a
    /// string or a list of strings, and name it; without one, `aud` is not looked at.
    fn check_audience(&self, claims: &Map<String, Json>) -> Result<(), Rejection> {
        let Some(audience) = &self.audience else {
            return Ok(());
        };
        let named = match claims.get("aud") {
            Some(Json::String(aud)) => aud == audience,
            Some(Json::Array(auds)) => {
                auds.iter().all(Json::is_string)
                    && auds.iter().any(|aud| aud.as_str() == Some(audience))
            }
            _ => false,
        };
        if named {
            Ok(())
        } else {
            Err(Rejection::Invalid(WRONG_AUDIENCE))
        }
    }
}

impl TokenVerification for TokenVerifier {
    type TokenKey = [u8; 32];

    fn token_key(&self, token: &str) -> [u8; 32] {
        token_digest(token)
    }

    fn remembered(&self, key: &[u8; 32]) -> Option<Arc<AcceptedToken>> {
        self.accepted.get(key)
    }

    fn remember(&self, key: [u8; 32], accepted: Arc<AcceptedToken>) {
        self.accepted.insert(key, accepted);
    }

    fn verify(
        &self,
        token: &str,
        header: &Map<String, Json>,
        claims: &Map<String, Json>,
    ) -> Result<(), Rejection> {
        TokenVerifier::verify(self, token, header, claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::json;

    // The server's fixture keys (the repository's tests/fixtures/keys).
    const KEYS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/keys/");
    const ISSUER: &str = "https://idp.example.com/realms/nmp";
    const NOW: u64 = 1_800_000_000;

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(format!("{KEYS}{name}")).unwrap()
    }

    fn jwks() -> JwkSet {
        serde_json::from_slice(&fixture("jwks.json")).unwrap()
    }

    /// A verifier trusting ISSUER with the fixture keys (and, optionally, an audience).
    fn verifier(audience: Option<&str>) -> TokenVerifier {
        let issuer = Arc::new(IssuerKeys::new(ISSUER, None));
        issuer.replace(usable_keys(&jwks()));
        TokenVerifier::new(vec![issuer], audience.map(str::to_string))
    }

    fn claims() -> Json {
        json!({"iss": ISSUER, "sub": "alice", "aud": "nmp-api", "iat": NOW, "exp": NOW + 600})
    }

    fn header(alg: Algorithm, kid: Option<&str>) -> Header {
        let mut h = Header::new(alg);
        h.kid = kid.map(str::to_string);
        h
    }

    // Signing, like verifying, needs the crypto provider installed first.
    fn rs256(kid: Option<&str>, claims: &Json) -> String {
        crate::crypto::install_jwt_provider();
        let key = EncodingKey::from_rsa_pem(&fixture("rsa.pem")).unwrap();
        encode(&header(Algorithm::RS256, kid), claims, &key).unwrap()
    }

    fn es256(kid: Option<&str>, claims: &Json) -> String {
        crate::crypto::install_jwt_provider();
        let key = EncodingKey::from_ec_pem(&fixture("ec.pem")).unwrap();
        encode(&header(Algorithm::ES256, kid), claims, &key).unwrap()
    }

    /// Header and claims as the core decodes them (padding accepted).
    fn parts(token: &str) -> (Map<String, Json>, Map<String, Json>) {
        let decode = |s: &str| {
            use base64::Engine as _;
            let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(s.trim_end_matches('='))
                .unwrap();
            serde_json::from_slice::<Map<String, Json>>(&bytes).unwrap()
        };
        let mut it = token.split('.');
        (decode(it.next().unwrap()), decode(it.next().unwrap()))
    }

    fn check(v: &TokenVerifier, token: &str) -> Result<String, Rejection> {
        let (h, c) = parts(token);
        v.verify(token, &h, &c)
            .map(|()| c["sub"].as_str().unwrap().to_string())
    }

    #[test]
    fn rs256_and_es256_from_the_issuer_are_accepted() {
        let v = verifier(Some("nmp-api"));
        assert_eq!(
            check(&v, &rs256(Some("rsa-1"), &claims())).unwrap(),
            "alice"
        );
        assert_eq!(check(&v, &es256(Some("ec-1"), &claims())).unwrap(), "alice");
    }

    #[test]
    fn audience_is_checked_only_when_configured() {
        let mut other = claims();
        other["aud"] = json!("someone-else");
        let token = rs256(Some("rsa-1"), &other);
        assert_eq!(
            check(&verifier(Some("nmp-api")), &token),
            Err(Rejection::Invalid("Token audience is not accepted"))
        );
        assert!(check(&verifier(None), &token).is_ok());
        let mut listed = claims();
        listed["aud"] = json!(["a", "nmp-api"]);
        assert!(check(&verifier(Some("nmp-api")), &rs256(Some("rsa-1"), &listed)).is_ok());
    }

    #[test]
    fn a_configured_audience_needs_an_aud_naming_it() {
        let refused = Err(Rejection::Invalid("Token audience is not accepted"));
        let with_aud = |aud: Option<Json>| {
            let mut c = claims();
            match aud {
                Some(aud) => c["aud"] = aud,
                None => {
                    c.as_object_mut().unwrap().remove("aud");
                }
            }
            rs256(Some("rsa-1"), &c)
        };
        let configured = verifier(Some("nmp-api"));
        let unconfigured = verifier(None);
        for (aud, accepted) in [
            (Some(json!("nmp-api")), true),
            (Some(json!(["nmp-api"])), true),
            (Some(json!(["a", "nmp-api", "a"])), true),
            (Some(json!("NMP-API")), false),
            (Some(json!(["a", "b"])), false),
            (Some(json!([])), false),
            (None, false),
            (Some(Json::Null), false),
            // Of the wrong type: no audience at all, whatever else it holds.
            (Some(json!(5)), false),
            (Some(json!({"nmp-api": true})), false),
            (Some(json!(["nmp-api", 5])), false),
            (Some(json!([["nmp-api"]])), false),
        ] {
            let token = with_aud(aud.clone());
            let expected = if accepted {
                Ok("alice".to_string())
            } else {
                refused.clone()
            };
            assert_eq!(check(&configured, &token), expected, "{aud:?}");
            // No audience configured: `aud` is not looked at.
            assert!(check(&unconfigured, &token).is_ok(), "{aud:?}");
        }
    }

    #[test]
    fn untrusted_issuer_is_refused() {
        let mut c = claims();
        c["iss"] = json!("https://evil.example.com");
        assert_eq!(
            check(&verifier(None), &rs256(Some("rsa-1"), &c)),
            Err(Rejection::Invalid("Token issuer is not trusted"))
        );
        c.as_object_mut().unwrap().remove("iss");
        assert_eq!(
            check(&verifier(None), &rs256(Some("rsa-1"), &c)),
            Err(Rejection::Invalid("Token issuer is not trusted"))
        );
    }

    #[test]
    fn tampered_tokens_are_refused() {
        let v = verifier(None);
        let token = rs256(Some("rsa-1"), &claims());
        let mut pieces: Vec<String> = token.split('.').map(str::to_string).collect();
        // Same header and signature, claims changed to another subject.
        let (_, mut c) = parts(&token);
        c.insert("sub".into(), json!("mallory"));
        use base64::Engine as _;
        pieces[1] = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(serde_json::to_vec(&c).unwrap());
        let forged = pieces.join(".");
        assert_eq!(
            check(&v, &forged),
            Err(Rejection::Invalid("Invalid or expired token"))
        );
        // A signature from another key under a published kid.
        let other = EncodingKey::from_rsa_pem(&fixture("rsa2.pem")).unwrap();
        let wrong_key =
            encode(&header(Algorithm::RS256, Some("rsa-1")), &claims(), &other).unwrap();
        assert_eq!(
            check(&v, &wrong_key),
            Err(Rejection::Invalid("Invalid or expired token"))
        );
    }

    #[test]
    fn a_modulus_published_with_a_leading_zero_byte_still_verifies() {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let mut set = serde_json::to_value(jwks()).unwrap();
        let mut n = vec![0];
        n.extend(b64.decode(set["keys"][0]["n"].as_str().unwrap()).unwrap());
        set["keys"][0]["n"] = json!(b64.encode(n));
        let issuer = Arc::new(IssuerKeys::new(ISSUER, None));
        issuer.replace(usable_keys(&serde_json::from_value(set).unwrap()));
        let v = TokenVerifier::new(vec![issuer], None);
        assert_eq!(
            check(&v, &rs256(Some("rsa-1"), &claims())).unwrap(),
            "alice"
        );
    }

    fn set_n(jwks: &[u8]) -> String {
        let set: Json = serde_json::from_slice(jwks).unwrap();
        set["keys"][0]["n"].as_str().unwrap().to_string()
    }

    #[test]
    fn an_rsa_key_below_2048_bits_verifies_nothing() {
        // Valid signature, published key: refused as invalid (not an unknown key to refetch).
        let issuer = Arc::new(IssuerKeys::new(ISSUER, None));
        let set = serde_json::from_slice(&fixture("rsa1024.jwks.json")).unwrap();
        issuer.replace(usable_keys(&set));
        assert_eq!(issuer.keys().len(), 1);
        let v = TokenVerifier::new(vec![issuer], None);
        let token = String::from_utf8(fixture("rsa1024.token")).unwrap();
        let token = token.trim_end();
        // The control: the signature is good for a verifier that takes 1024-bit keys.
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let n = b64.decode(set_n(&fixture("rsa1024.jwks.json"))).unwrap();
        let (message, signature) = token.rsplit_once('.').unwrap();
        let legacy = &aws_lc_rs::signature::RSA_PKCS1_1024_8192_SHA256_FOR_LEGACY_USE_ONLY;
        let components = aws_lc_rs::signature::RsaPublicKeyComponents {
            n,
            e: vec![1, 0, 1],
        };
        let signature = b64.decode(signature).unwrap();
        assert!(
            components
                .verify(legacy, message.as_bytes(), &signature)
                .is_ok()
        );
        assert_eq!(
            check(&v, token),
            Err(Rejection::Invalid("Invalid or expired token"))
        );
    }

    #[test]
    fn unknown_kid_asks_for_a_refetch() {
        assert_eq!(
            check(&verifier(None), &rs256(Some("rsa-9"), &claims())),
            Err(Rejection::UnknownKey {
                issuer: ISSUER.into()
            })
        );
        // A kid of the wrong algorithm is no key for this token either.
        assert_eq!(
            check(&verifier(None), &rs256(Some("ec-1"), &claims())),
            Err(Rejection::UnknownKey {
                issuer: ISSUER.into()
            })
        );
    }

    #[test]
    fn missing_kid_needs_a_single_candidate() {
        // Two RSA keys are published: without a kid, which one is meant is a guess.
        assert_eq!(
            check(&verifier(None), &rs256(None, &claims())),
            Err(Rejection::Invalid("Token has no key id"))
        );
        // One EC key: unambiguous.
        assert!(check(&verifier(None), &es256(None, &claims())).is_ok());
    }

    /// `header.claims.signature` for any `alg`, the signature made by `sign` over the first two
    /// parts: for the algorithms the provider will not sign (it knows RS256 and ES256 only).
    fn token_as(alg: &str, claims: &Json, sign: impl FnOnce(&[u8]) -> Vec<u8>) -> String {
        let header = json!({"alg": alg, "kid": "rsa-1", "typ": "JWT"});
        token_with(
            &header,
            claims,
            sign,
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        )
    }

    /// `header.claims.signature` with any header, each part encoded by `b64`.
    fn token_with(
        header: &Json,
        claims: &Json,
        sign: impl FnOnce(&[u8]) -> Vec<u8>,
        b64: &impl base64::Engine,
    ) -> String {
        let message = format!(
            "{}.{}",
            b64.encode(header.to_string()),
            b64.encode(claims.to_string())
        );
        let signature = sign(message.as_bytes());
        format!("{message}.{}", b64.encode(signature))
    }

    fn hmac(algorithm: aws_lc_rs::hmac::Algorithm, secret: &[u8]) -> impl FnOnce(&[u8]) -> Vec<u8> {
        let key = aws_lc_rs::hmac::Key::new(algorithm, secret);
        move |message| aws_lc_rs::hmac::sign(&key, message).as_ref().to_vec()
    }

    /// A valid signature by the fixture key `rsa-1` in another RSA scheme.
    fn rsa(
        padding: &'static dyn aws_lc_rs::signature::RsaEncoding,
    ) -> impl FnOnce(&[u8]) -> Vec<u8> {
        let der = EncodingKey::from_rsa_pem(&fixture("rsa.pem")).unwrap();
        let pair = aws_lc_rs::signature::RsaKeyPair::from_der(der.as_bytes()).unwrap();
        move |message| {
            let mut signature = vec![0; pair.public_modulus_len()];
            let rng = aws_lc_rs::rand::SystemRandom::new();
            pair.sign(padding, &rng, message, &mut signature).unwrap();
            signature
        }
    }

    #[test]
    fn only_rs256_and_es256() {
        use aws_lc_rs::{hmac, signature as sig};
        let v = verifier(None);
        let secret = b"shared secret";
        for (alg, hmac_alg) in [
            ("HS256", hmac::HMAC_SHA256),
            ("HS384", hmac::HMAC_SHA384),
            ("HS512", hmac::HMAC_SHA512),
        ] {
            assert_eq!(
                check(&v, &token_as(alg, &claims(), hmac(hmac_alg, secret))),
                Err(Rejection::Invalid(
                    "Token algorithm is not accepted (RS256 or ES256 only)"
                ))
            );
        }
        for (alg, padding) in [
            (
                "RS384",
                &sig::RSA_PKCS1_SHA384 as &'static dyn sig::RsaEncoding,
            ),
            ("RS512", &sig::RSA_PKCS1_SHA512),
            ("PS256", &sig::RSA_PSS_SHA256),
        ] {
            let token = token_as(alg, &claims(), rsa(padding));
            assert!(
                matches!(check(&v, &token), Err(Rejection::Invalid(_))),
                "{alg}"
            );
        }
    }

    /// jsonwebtoken's `decode` read every signed token before the verifier checked only its
    /// signature: what that decode refused beyond our own rules is refused still.
    #[test]
    fn what_jsonwebtokens_decode_refused_is_still_refused() {
        use base64::Engine as _;
        use base64::engine::general_purpose::{URL_SAFE, URL_SAFE_NO_PAD};
        let v = verifier(None);
        let rs256 = || rsa(&aws_lc_rs::signature::RSA_PKCS1_SHA256);
        let invalid = Err(Rejection::Invalid("Invalid or expired token"));
        // Header parameters its `Header` reads as strings, with another type (null it took
        // for absent); unknown parameters of any type it kept aside.
        for (name, value, accepted) in [
            ("typ", json!(1), false),
            ("typ", Json::Null, true),
            ("x5t", json!(["a"]), false),
            ("x5t#S256", json!(true), false),
            ("enc", json!({}), false),
            ("zip", json!(1), false),
            ("url", json!(1), false),
            ("nonce", json!(1), false),
            ("nonce", json!("n"), true),
            ("custom", json!({"a": [1]}), true),
        ] {
            let mut header = json!({"alg": "RS256", "kid": "rsa-1"});
            header[name] = value.clone();
            let token = token_with(&header, &claims(), rs256(), &URL_SAFE_NO_PAD);
            let expected = if accepted {
                Ok("alice".into())
            } else {
                invalid.clone()
            };
            assert_eq!(check(&v, &token), expected, "{name}: {value}");
        }
        // Padded base64url (the core accepts it, for unsigned tokens; jsonwebtoken did not).
        let header = json!({"alg": "RS256", "kid": "rsa-1"});
        let padded = token_with(&header, &claims(), rs256(), &URL_SAFE);
        assert!(padded.split('.').next().unwrap().ends_with('='));
        assert_eq!(check(&v, &padded), invalid);
        let unpadded = token_with(&header, &claims(), rs256(), &URL_SAFE_NO_PAD);
        assert_eq!(check(&v, &unpadded), Ok("alice".into()));
        let (message, signature) = unpadded.rsplit_once('.').unwrap();
        let signature = URL_SAFE.encode(URL_SAFE_NO_PAD.decode(signature).unwrap());
        assert!(signature.ends_with('='));
        assert_eq!(check(&v, &format!("{message}.{signature}")), invalid);
    }

    #[test]
    fn alg_confusion_with_the_public_key_as_hmac_secret_is_refused() {
        // The classic attack: sign HS256 with the issuer's *public* key as the shared secret.
        let public_pem = fixture("rsa.pub.pem");
        let token = token_as(
            "HS256",
            &claims(),
            hmac(aws_lc_rs::hmac::HMAC_SHA256, &public_pem),
        );
        assert!(matches!(
            check(&verifier(None), &token),
            Err(Rejection::Invalid(_))
        ));
    }

    #[test]
    fn keys_offered_by_the_token_and_crit_are_refused() {
        let v = verifier(None);
        let valid = rs256(Some("rsa-1"), &claims());
        let (clean_header, c) = parts(&valid);
        for (name, value) in [
            ("jku", json!("https://evil.example.com/jwks")),
            ("x5u", json!("https://evil.example.com/cert")),
            ("jwk", json!({"kty": "RSA", "n": "AQAB", "e": "AQAB"})),
            ("x5c", json!(["MIIB"])),
            ("crit", json!(["exp"])),
        ] {
            let mut h = clean_header.clone();
            h.insert(name.into(), value);
            // The signature is irrelevant: the header alone is grounds for refusal.
            assert!(
                matches!(v.verify(&valid, &h, &c), Err(Rejection::Invalid(_))),
                "{name}"
            );
        }
    }

    #[test]
    fn only_signing_keys_of_the_two_algorithms_are_usable() {
        let set: JwkSet = serde_json::from_value(json!({"keys": [
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
            {"kty": "RSA", "kid": "enc", "use": "enc", "n": "AQAB", "e": "AQAB"},
            {"kty": "RSA", "kid": "rs512", "alg": "RS512", "n": "AQAB", "e": "AQAB"},
            {"kty": "EC", "kid": "p384", "crv": "P-384",
             "x": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
             "y": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"},
        ]}))
        .unwrap();
        assert!(usable_keys(&set).is_empty());
        let kids: Vec<_> = usable_keys(&jwks())
            .into_iter()
            .map(|k| (k.kid.unwrap(), k.algorithm))
            .collect();
        assert_eq!(
            kids,
            vec![
                ("rsa-1".to_string(), Algorithm::RS256),
                ("ec-1".to_string(), Algorithm::ES256),
                ("rsa-2".to_string(), Algorithm::RS256)
            ]
        );
    }
}
