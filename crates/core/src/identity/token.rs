//! Bearer tokens: the `Authorization` header's token split and decoded (refusing duplicate JSON
//! keys), unsigned quickstart tokens, time claims, and the accepted-token record a host
//! remembers. Signature verification is the host's ([`super::TokenVerification`]): it needs the
//! issuers' keys.

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use serde_json::map::Entry;
use serde_json::{Map, Value as Json};

use super::claims::{Claim, Claims, map_claims, subject, wrong_type};
use super::credentials::Credentials;
use super::{
    DUPLICATE_KEYS, INVALID_TOKEN, IdentityError, IdentitySettings, MAX_LEEWAY_SECONDS,
    MAX_TOKEN_BYTES, NO_SUBJECT, Rejection, TokenVerification, unauthenticated,
};
use crate::policy::Principal;

/// Header parameters that offer a key, demand extensions or announce a nested token: never
/// honoured, always refused.
const REFUSED_HEADERS: [&str; 6] = ["jku", "x5u", "jwk", "x5c", "crit", "cty"];

/// Why a token's header is refused whatever its signature: it offers its own key, demands
/// extensions (`crit`), or says its payload is another token (`cty`, RFC 7519 §5.2 nested
/// JWTs: the outer signature would vouch for an inner token nobody verified).
pub fn refused_header(header: &Map<String, Json>) -> Option<&'static str> {
    let refused = REFUSED_HEADERS.iter().find(|h| header.contains_key(**h))?;
    Some(match *refused {
        "crit" => "Token requires unsupported extensions (crit)",
        "cty" => "Nested tokens are not accepted (cty)",
        _ => "Token offers its own key; keys come only from the issuer",
    })
}

/// The signature algorithms accepted for signed tokens (DESIGN: RS256 and ES256 only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SigningAlgorithm {
    Rs256,
    Es256,
}

/// The refusal of a signed token whose issuer is not one of the trusted ones.
pub const UNTRUSTED_ISSUER: &str = "Token issuer is not trusted";

/// What every verifier checks in a signed token's header before looking for a key: no key,
/// extension or nesting of its own ([`refused_header`]), and RS256 or ES256.
pub fn signing_algorithm(header: &Map<String, Json>) -> Result<SigningAlgorithm, Rejection> {
    if let Some(detail) = refused_header(header) {
        return Err(Rejection::Invalid(detail));
    }
    match header.get("alg").and_then(Json::as_str) {
        Some("RS256") => Ok(SigningAlgorithm::Rs256),
        Some("ES256") => Ok(SigningAlgorithm::Es256),
        _ => Err(Rejection::Invalid(
            "Token algorithm is not accepted (RS256 or ES256 only)",
        )),
    }
}

/// base64url as JWTs use it; padded input is accepted too, since some encoders emit it.
const B64URL: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// A JWT split and decoded, but not verified.
pub(crate) struct RawJwt<'a> {
    pub(crate) header: Map<String, Json>,
    pub(crate) claims: Map<String, Json>,
    pub(crate) signature: &'a str,
}

/// The token of an `Authorization: Bearer` header: `None` without the header, an error for
/// another scheme, an empty token, or one over [`MAX_TOKEN_BYTES`] (refused before any work).
pub(crate) fn bearer_token<'a>(
    headers: &Credentials<'a>,
) -> Result<Option<&'a str>, IdentityError> {
    let Some(value) = headers.get("authorization") else {
        return Ok(None);
    };
    // A credential is printable ASCII (with spaces or tabs around the token). A control
    // character or a non-ASCII byte is no part of any token; trimming it away would accept a
    // value that another hop reads differently.
    if !is_credential_text(value) {
        return Err(unauthenticated("Invalid authentication credentials"));
    }
    let value = value.trim();
    let (scheme, token) = value.split_once(char::is_whitespace).unwrap_or((value, ""));
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(unauthenticated("Invalid authentication credentials"));
    }
    if token.len() > MAX_TOKEN_BYTES {
        return Err(unauthenticated(INVALID_TOKEN));
    }
    Ok(Some(token))
}

/// Printable ASCII, spaces and tabs only. No early exit, so that the compiler checks many bytes
/// at once: a token is hundreds of bytes, read on every request (byte by byte this was ~1.5% of
/// the instructions of a first RS256 sight, and more of a remembered one).
fn is_credential_text(value: &str) -> bool {
    value
        .bytes()
        .fold(true, |ok, b| ok & (matches!(b, b' '..=b'~') | (b == b'\t')))
}

/// Why a token could not be split and decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JwtError {
    /// Not three base64url segments whose first two are JSON objects.
    Malformed,
    /// A JSON object in the header or claims names a key twice. JSON parsers disagree about
    /// which copy counts (serde_json keeps the last, others the first), so such a token means
    /// different things to different readers: refused, whoever signed it.
    DuplicateKey,
}

fn decode_segment(segment: &str) -> Result<Map<String, Json>, JwtError> {
    let bytes = B64URL.decode(segment).map_err(|_| JwtError::Malformed)?;
    match serde_json::from_slice::<UniqueKeys>(&bytes) {
        Ok(UniqueKeys(Json::Object(map))) => Ok(map),
        Ok(_) => Err(JwtError::Malformed),
        Err(e) if e.to_string().starts_with(DUPLICATE_KEY) => Err(JwtError::DuplicateKey),
        Err(_) => Err(JwtError::Malformed),
    }
}

pub(crate) fn parse_jwt(token: &str) -> Result<RawJwt<'_>, JwtError> {
    let mut parts = token.split('.');
    let (Some(header), Some(claims), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed);
    };
    Ok(RawJwt {
        header: decode_segment(header)?,
        claims: decode_segment(claims)?,
        signature,
    })
}

/// An unsigned (`alg: none`) token carrying `claims`, as the quickstart accepts them.
pub fn unsigned_token(claims: &Map<String, Json>) -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let claims = URL_SAFE_NO_PAD.encode(Json::Object(claims.clone()).to_string());
    format!("{header}.{claims}.")
}

/// A token's `alg` and claims, decoded without any verification: for offline explanations
/// only, never for a decision. `None` when it is not a JWT.
pub fn decode_unverified(token: &str) -> Option<(Option<String>, Map<String, Json>)> {
    let jwt = parse_jwt(token).ok()?;
    let alg = jwt
        .header
        .get("alg")
        .and_then(Json::as_str)
        .map(str::to_owned);
    Some((alg, jwt.claims))
}

const DUPLICATE_KEY: &str = "duplicate JSON key";

/// A JSON value read like `serde_json::Value`, except that an object naming a key twice, at
/// any depth, is an error (starting with [`DUPLICATE_KEY`]).
struct UniqueKeys(Json);

impl<'de> serde::Deserialize<'de> for UniqueKeys {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(UniqueKeysVisitor).map(UniqueKeys)
    }
}

struct UniqueKeysVisitor;

impl<'de> serde::de::Visitor<'de> for UniqueKeysVisitor {
    type Value = Json;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Json, E> {
        Ok(Json::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Json, E> {
        Ok(Json::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Json, E> {
        Ok(Json::from(v))
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Json, E> {
        serde_json::Number::from_f64(v)
            .map(Json::Number)
            .ok_or_else(|| E::custom("number out of range"))
    }
    fn visit_str<E>(self, v: &str) -> Result<Json, E> {
        Ok(Json::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Json, E> {
        Ok(Json::String(v))
    }
    fn visit_unit<E>(self) -> Result<Json, E> {
        Ok(Json::Null)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Json, A::Error> {
        let mut items = Vec::new();
        while let Some(UniqueKeys(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Json::Array(items))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Json, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            // One search of the map for both the duplicate check and the insert.
            match object.entry(key) {
                Entry::Occupied(taken) => {
                    let message = format!("{DUPLICATE_KEY} {:?}", taken.key());
                    return Err(serde::de::Error::custom(message));
                }
                Entry::Vacant(slot) => {
                    let UniqueKeys(value) = map.next_value()?;
                    slot.insert(value);
                }
            }
        }
        Ok(Json::Object(object))
    }
}

/// The subject a bearer token claims, read without verification: used only to detect a
/// conflict with the metadata identity, which can only ever turn an allow into a denial.
/// A token with duplicate JSON keys is refused here too: Envoy and we might read different
/// subjects out of it.
pub(crate) fn bearer_subject_unverified(
    settings: &IdentitySettings,
    headers: &Credentials<'_>,
) -> Result<Option<String>, IdentityError> {
    let Ok(Some(token)) = bearer_token(headers) else {
        return Ok(None);
    };
    match parse_jwt(token) {
        Ok(jwt) => Ok(subject(settings, &jwt.claims)
            .ok()
            .and_then(|(_, id)| id.map(str::to_owned))),
        Err(JwtError::DuplicateKey) => Err(unauthenticated(DUPLICATE_KEYS)),
        Err(JwtError::Malformed) => Ok(None),
    }
}

/// A bearer token accepted once (signature or, in quickstart, `alg: none`; subject; principal
/// format), remembered by the verifier until it expires so that later requests with it skip
/// decoding, verifying and mapping. Its time claims are checked again on every use.
#[derive(Debug)]
pub struct AcceptedToken {
    pub(crate) principal: Arc<Principal>,
    pub(crate) dropped_groups: usize,
    times: TokenTimes,
    /// Accepted as `alg: none` (quickstart): never good where unsigned tokens are not allowed,
    /// even if the same verifier's memory is consulted under other settings.
    unsigned: bool,
}

impl AcceptedToken {
    /// Unix seconds after which the token is no use to anyone (leeway included).
    pub fn expires_at(&self) -> u64 {
        (self.times.exp.max(0.0) as u64).saturating_add(MAX_LEEWAY_SECONDS)
    }
}

pub(crate) fn bearer_principal(
    settings: &IdentitySettings,
    verifier: &impl TokenVerification,
    headers: &Credentials<'_>,
    now_unix: u64,
) -> Result<Option<Arc<AcceptedToken>>, IdentityError> {
    if !settings.verify_bearer {
        return Ok(None);
    }
    let Some(token) = bearer_token(headers)? else {
        return Ok(None);
    };
    let key = verifier.token_key(token);
    if let Some(known) = verifier.remembered(&key) {
        if known.unsigned && !settings.allow_unsigned_jwt {
            return Err(unauthenticated(INVALID_TOKEN));
        }
        known.times.check(settings.leeway_seconds, now_unix)?;
        return Ok(Some(known));
    }
    let jwt = parse_jwt(token).map_err(|e| match e {
        JwtError::DuplicateKey => unauthenticated(DUPLICATE_KEYS),
        JwtError::Malformed => unauthenticated(INVALID_TOKEN),
    })?;

    let unsigned = jwt.header.get("alg").and_then(Json::as_str) == Some("none");
    let claims = if unsigned {
        if !settings.allow_unsigned_jwt || !jwt.signature.is_empty() {
            return Err(unauthenticated(INVALID_TOKEN));
        }
        // The header rules of signed tokens hold for unsigned ones too (no nested tokens,
        // no `crit`, no keys of their own).
        if let Some(detail) = refused_header(&jwt.header) {
            return Err(unauthenticated(detail));
        }
        jwt.claims
    } else {
        match verifier.verify(token, &jwt.header, &jwt.claims) {
            Ok(()) => jwt.claims,
            Err(Rejection::Invalid(detail)) => return Err(unauthenticated(detail)),
            Err(Rejection::UnknownKey { issuer }) => {
                return Err(IdentityError::UnknownSigningKey { issuer });
            }
        }
    };
    let times = TokenTimes::read(&claims)?;
    times.check(settings.leeway_seconds, now_unix)?;

    // Required as NMP's PyJWT requires it: present and not null (an empty `sub` is fine when
    // the subject comes from another claim).
    match claims.claim("sub") {
        Claim::Str(_) => {}
        Claim::Missing | Claim::Null => return Err(unauthenticated(NO_SUBJECT)),
        Claim::List(_) | Claim::Wrong => return Err(wrong_type("sub", "a string")),
    }
    let mapped = map_claims(settings, &claims)?;
    let accepted = Arc::new(AcceptedToken {
        principal: Arc::new(mapped.principal),
        dropped_groups: mapped.dropped_groups,
        times,
        unsigned,
    });
    verifier.remember(key, accepted.clone());
    Ok(Some(accepted))
}

/// A token's time claims: `exp` and `iat` are required numbers, `nbf` optional.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TokenTimes {
    exp: f64,
    iat: f64,
    nbf: Option<f64>,
}

impl TokenTimes {
    fn read(claims: &Map<String, Json>) -> Result<Self, IdentityError> {
        // Missing: `None`; present but not a number: `Some(None)`, refused like a missing
        // `exp` or `iat`.
        let number = |name: &str| claims.get(name).map(Json::as_f64);
        match (number("exp"), number("iat"), number("nbf")) {
            (Some(Some(exp)), Some(Some(iat)), nbf @ (None | Some(Some(_)))) => Ok(Self {
                exp,
                iat,
                nbf: nbf.flatten(),
            }),
            _ => Err(unauthenticated(INVALID_TOKEN)),
        }
    }

    /// `exp`, `nbf` and `iat` enforced with bounded leeway.
    fn check(&self, leeway_seconds: u64, now_unix: u64) -> Result<(), IdentityError> {
        let now = now_unix as f64;
        let leeway = leeway_seconds.min(MAX_LEEWAY_SECONDS) as f64;
        let not_yet_valid = self.nbf.is_some_and(|nbf| now + leeway < nbf);
        // A token issued in the future (beyond the clock-skew leeway) was not issued honestly.
        let issued_in_future = now + leeway < self.iat;
        if now > self.exp + leeway || not_yet_valid || issued_in_future {
            return Err(unauthenticated(INVALID_TOKEN));
        }
        Ok(())
    }
}
