//! Who is calling: the principal of a Check request, from (in this order) the claims Envoy's
//! `jwt_authn` filter verified, a bearer token, or gateway-set `x-nmp-principal-*` headers.
//!
//! Pure: no I/O and no clock; the caller passes the current time in unix seconds.
//! Identities from different sources that disagree are denied, never merged.

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use envoy_types::pb::envoy::service::auth::v3::AttributeContext;
use envoy_types::pb::google::protobuf::{ListValue, Struct, Value, value::Kind};
use serde_json::{Map, Value as Json};

use crate::policy::Principal;

pub mod jwks;
pub mod signed;

use signed::{Rejection, TokenVerifier};

/// The `filter_metadata` namespace Envoy's `jwt_authn` filter writes verified claims under.
pub const JWT_AUTHN_NAMESPACE: &str = "envoy.filters.http.jwt_authn";
/// Upper bound on clock-skew leeway, whatever the configuration says: a large leeway would
/// quietly turn expired tokens back into valid ones.
pub const MAX_LEEWAY_SECONDS: u64 = 300;
/// Bearer tokens longer than this are rejected before any decoding work.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

const HEADER_ID: &str = "x-nmp-principal-id";
const HEADER_EMAIL: &str = "x-nmp-principal-email";
const HEADER_GROUPS: &str = "x-nmp-principal-groups";
const HEADER_SCOPES: &str = "x-nmp-scopes";

/// The request headers identity reads, picked out of the request in one pass (no copies).
/// Names match case-insensitively; a credential header present twice (under two spellings, or
/// repeated in an HTTP request) is refused: whichever copy we read, a later hop might read the
/// other.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Credentials<'a> {
    values: [Option<&'a str>; CREDENTIAL_HEADERS.len()],
}

const CREDENTIAL_HEADERS: [&str; 5] = [
    "authorization",
    HEADER_ID,
    HEADER_EMAIL,
    HEADER_GROUPS,
    HEADER_SCOPES,
];

impl<'a> Credentials<'a> {
    pub fn from_headers(
        headers: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, IdentityError> {
        let mut found = Self::default();
        for (name, value) in headers {
            if let Some(slot) = CREDENTIAL_HEADERS
                .iter()
                .position(|known| name.eq_ignore_ascii_case(known))
                && found.values[slot].replace(value).is_some()
            {
                return Err(unauthenticated("Repeated credential header"));
            }
        }
        Ok(found)
    }

    fn get(&self, name: &str) -> Option<&'a str> {
        let slot = CREDENTIAL_HEADERS.iter().position(|known| *known == name)?;
        self.values[slot]
    }
}

const INVALID_TOKEN: &str = "Invalid or expired token";
const DUPLICATE_KEYS: &str = "Token has duplicate JSON keys";
const NO_SUBJECT: &str = "Token has no subject";

/// Where the principal comes from (DESIGN `identity:` and `auth.oidc` keys).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentitySettings {
    /// Key under the `jwt_authn` metadata namespace holding the verified claims.
    pub jwt_authn_metadata_key: String,
    /// Read `Authorization: Bearer` when Envoy supplied no verified claims.
    pub verify_bearer: bool,
    /// Accept `x-nmp-principal-*` headers (only safe when the gateway strips inbound ones).
    pub trust_principal_headers: bool,
    /// Accept `alg: none` tokens (quickstart only).
    pub allow_unsigned_jwt: bool,
    pub subject_claim: String,
    pub email_claim: String,
    pub groups_claim: String,
    /// Stripped from each scope that starts with it, e.g. `api://client-id/`.
    pub scope_prefix: Option<String>,
    /// Clock-skew allowance for `exp`/`nbf`/`iat`; capped at [`MAX_LEEWAY_SECONDS`].
    pub leeway_seconds: u64,
}

impl Default for IdentitySettings {
    fn default() -> Self {
        Self {
            jwt_authn_metadata_key: "jwt_payload".into(),
            verify_bearer: true,
            trust_principal_headers: false,
            allow_unsigned_jwt: false,
            subject_claim: "sub".into(),
            email_claim: "email".into(),
            groups_claim: "groups".into(),
            scope_prefix: None,
            leeway_seconds: 60,
        }
    }
}

/// Which input the principal was taken from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    JwtAuthnMetadata,
    BearerToken,
    TrustedHeaders,
}

/// An authenticated, validated caller. `principal.id` is always `Some`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub principal: Arc<Principal>,
    pub source: Source,
    /// Groups of the token that `x-nmp-principal-groups` cannot carry, left out of the
    /// principal (README "Identity").
    pub dropped_groups: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// 401: no usable identity, a bad or expired token, or conflicting identities.
    #[error("unauthenticated: {detail}")]
    Unauthenticated { detail: String },
    /// 400: a principal, claim or scope in the wrong format.
    #[error("invalid principal: {detail}")]
    InvalidPrincipal { detail: String },
    /// 401 unless the issuer's keys, fetched again, name the token's key.
    #[error("unauthenticated: token signing key unknown to {issuer}")]
    UnknownSigningKey { issuer: String },
}

impl IdentityError {
    /// The HTTP status the denial carries.
    pub fn status(&self) -> u16 {
        match self {
            Self::Unauthenticated { .. } | Self::UnknownSigningKey { .. } => 401,
            Self::InvalidPrincipal { .. } => 400,
        }
    }

    /// The client-facing message for the `{"detail": ...}` body.
    pub fn detail(&self) -> &str {
        match self {
            Self::Unauthenticated { detail } | Self::InvalidPrincipal { detail } => detail,
            Self::UnknownSigningKey { .. } => "Token signing key is not known for its issuer",
        }
    }
}

fn unauthenticated(detail: &str) -> IdentityError {
    IdentityError::Unauthenticated {
        detail: detail.into(),
    }
}

fn invalid(detail: String) -> IdentityError {
    IdentityError::InvalidPrincipal { detail }
}

/// The claims Envoy's `jwt_authn` filter put in the request's dynamic metadata, if any.
pub fn jwt_authn_metadata(attrs: &AttributeContext) -> Option<&Struct> {
    attrs
        .metadata_context
        .as_ref()?
        .filter_metadata
        .get(JWT_AUTHN_NAMESPACE)
}

/// A JSON object as a protobuf `Struct`, the form Envoy's `jwt_authn` filter hands claims over
/// in (load tests and benchmarks build metadata with it).
pub fn struct_from_json(object: &Map<String, Json>) -> Struct {
    fn value(json: &Json) -> Value {
        let kind = match json {
            Json::Null => Kind::NullValue(0),
            Json::Bool(b) => Kind::BoolValue(*b),
            Json::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(f64::NAN)),
            Json::String(s) => Kind::StringValue(s.clone()),
            Json::Array(items) => Kind::ListValue(ListValue {
                values: items.iter().map(value).collect(),
            }),
            Json::Object(object) => Kind::StructValue(struct_from_json(object)),
        };
        Value { kind: Some(kind) }
    }
    Struct {
        fields: object.iter().map(|(k, v)| (k.clone(), value(v))).collect(),
    }
}

/// Establishes the caller from the request's `credentials` and `metadata`, the `jwt_authn`
/// namespace ([`jwt_authn_metadata`]). `Ok(None)`: no source named anyone.
pub fn identify(
    settings: &IdentitySettings,
    verifier: &TokenVerifier,
    headers: &Credentials<'_>,
    metadata: Option<&Struct>,
    now_unix: u64,
) -> Result<Option<Identity>, IdentityError> {
    let identity = if let Some(mapped) = metadata_principal(settings, metadata)? {
        // Usually the same token Envoy verified; if it names someone else, the request
        // carries two identities and picking either would be a guess.
        if settings.verify_bearer
            && let Some(subject) = bearer_subject_unverified(settings, headers)?
            && mapped.principal.id.as_deref() != Some(subject.as_str())
        {
            return Err(unauthenticated("Conflicting identities"));
        }
        Identity {
            principal: Arc::new(mapped.principal),
            source: Source::JwtAuthnMetadata,
            dropped_groups: mapped.dropped_groups,
        }
    } else if let Some(token) = bearer_principal(settings, verifier, headers, now_unix)? {
        Identity {
            principal: token.principal.clone(),
            source: Source::BearerToken,
            dropped_groups: token.dropped_groups,
        }
    } else if settings.trust_principal_headers {
        match header_principal(settings, headers)? {
            Some(principal) => Identity {
                principal: Arc::new(principal),
                source: Source::TrustedHeaders,
                dropped_groups: 0,
            },
            None => return Ok(None),
        }
    } else {
        return Ok(None);
    };

    // Trusted headers that name a different principal than the token are a conflict too.
    if settings.trust_principal_headers
        && identity.source != Source::TrustedHeaders
        && let Some(header_id) = header_value(headers, HEADER_ID)
        && identity.principal.id.as_deref() != Some(header_id)
    {
        return Err(unauthenticated("Conflicting identities"));
    }
    if identity.dropped_groups > 0 {
        tracing::debug!(
            principal = identity.principal.id.as_deref().unwrap_or_default(),
            dropped_groups = identity.dropped_groups,
            "groups that x-nmp-principal-groups cannot carry were left out of the decision"
        );
    }
    Ok(Some(identity))
}

// ---- claim mapping, shared by metadata and bearer tokens ----
//
// As NMP 0.3.0's `JWTValidator._extract_token_claims` (nmp/common/auth/jwt.py) maps claims,
// then made fit for the `x-nmp-*` headers NMP's services parse (`Principal.from_headers`): a
// group those headers cannot carry is dropped, anything else they cannot carry is a 400. The
// deliberate differences are listed in README "Identity".

/// A claim, told apart as NMP's mapping tells its cases apart; anything else is `Wrong`.
enum Claim<'a> {
    /// Not in the claims at all: NMP then falls back (`sub`, `cognito:groups`).
    Missing,
    /// Present as JSON `null`: no value, and no fallback either.
    Null,
    Str(&'a str),
    List(Vec<&'a str>),
    Wrong,
}

impl Claim<'_> {
    /// Python's truthiness, as in NMP's `claims.get("scope") or claims.get("scp")`.
    fn is_falsy(&self) -> bool {
        match self {
            Self::Missing | Self::Null => true,
            Self::Str(s) => s.is_empty(),
            Self::List(items) => items.is_empty(),
            Self::Wrong => false,
        }
    }
}

/// Read access to a claim set, whether a protobuf `Struct` (metadata) or JSON (a token).
trait Claims {
    fn claim(&self, name: &str) -> Claim<'_>;

    /// `name`'s claim, or `fallback`'s when `name` is missing; with the name read.
    fn claim_or<'a>(&'a self, name: &'a str, fallback: &'a str) -> (&'a str, Claim<'a>) {
        match self.claim(name) {
            Claim::Missing => (fallback, self.claim(fallback)),
            claim => (name, claim),
        }
    }
}

impl Claims for Struct {
    fn claim(&self, name: &str) -> Claim<'_> {
        match self.fields.get(name).map(|v| v.kind.as_ref()) {
            None => Claim::Missing,
            Some(None | Some(Kind::NullValue(_))) => Claim::Null,
            Some(Some(Kind::StringValue(s))) => Claim::Str(s),
            Some(Some(Kind::ListValue(list))) => list
                .values
                .iter()
                .map(|v| match &v.kind {
                    Some(Kind::StringValue(s)) => Some(s.as_str()),
                    _ => None,
                })
                .collect::<Option<Vec<_>>>()
                .map_or(Claim::Wrong, Claim::List),
            Some(Some(_)) => Claim::Wrong,
        }
    }
}

impl Claims for Map<String, Json> {
    fn claim(&self, name: &str) -> Claim<'_> {
        match self.get(name) {
            None => Claim::Missing,
            Some(Json::Null) => Claim::Null,
            Some(Json::String(s)) => Claim::Str(s),
            Some(Json::Array(items)) => items
                .iter()
                .map(Json::as_str)
                .collect::<Option<Vec<_>>>()
                .map_or(Claim::Wrong, Claim::List),
            Some(_) => Claim::Wrong,
        }
    }
}

fn wrong_type(name: &str, expected: &str) -> IdentityError {
    invalid(format!("Invalid token claim '{name}': expected {expected}"))
}

const COGNITO_GROUPS: &str = "cognito:groups";

/// Python's `str.isspace()`, which the `str.split()` and `str.strip()` in NMP's mapping and
/// header parsing use: Unicode white space and also U+001C..U+001F.
fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's `s.strip()`.
fn py_strip(s: &str) -> &str {
    s.trim_matches(is_py_space)
}

/// Python's `s.split()`: the non-empty runs between white space.
fn py_split(s: &str) -> impl Iterator<Item = &str> {
    s.split(is_py_space).filter(|part| !part.is_empty())
}

/// NMP's `claims.get(subject_claim, claims.get("sub"))`: `sub` only when the configured claim
/// is missing. `None`: no subject (missing, `null` or empty). With the claim's name.
fn subject<'a>(
    settings: &'a IdentitySettings,
    claims: &'a impl Claims,
) -> Result<(&'a str, Option<&'a str>), IdentityError> {
    match claims.claim_or(&settings.subject_claim, "sub") {
        (name, Claim::Missing | Claim::Null) => Ok((name, None)),
        (name, Claim::Str(s)) => Ok((name, Some(s).filter(|s| !s.is_empty()))),
        (name, Claim::List(_) | Claim::Wrong) => Err(wrong_type(name, "a string")),
    }
}

/// Claims mapped onto a principal, validated, and how many groups were dropped.
struct Mapped {
    principal: Principal,
    dropped_groups: usize,
}

/// Maps claims onto a principal: 401 without a subject, 400 for a claim of the wrong type or a
/// principal the headers cannot carry.
fn map_claims(settings: &IdentitySettings, claims: &impl Claims) -> Result<Mapped, IdentityError> {
    let (subject_name, id) = subject(settings, claims)?;
    let email = match claims.claim(&settings.email_claim) {
        Claim::Missing | Claim::Null => None,
        Claim::Str(s) => Some(s).filter(|s| !s.is_empty()).map(str::to_owned),
        Claim::List(_) | Claim::Wrong => return Err(wrong_type(&settings.email_claim, "a string")),
    };
    let (groups, dropped_groups) = map_groups(settings, claims)?;
    let scopes = map_scopes(settings, claims)?;
    let Some(id) = id else {
        return Err(unauthenticated(NO_SUBJECT));
    };
    if !is_carriable_id(id) {
        return Err(invalid(format!(
            "Invalid principal ID format: the token's '{subject_name}' claim cannot be sent in \
             x-nmp-principal-id (at most {MAX_ID_CHARS} of: letters, digits, @ . _ - : + /); \
             auth.oidc.subject_claim can name a claim that can"
        )));
    }
    let principal = Principal {
        id: Some(id.to_owned()),
        email,
        groups,
        scopes,
    };
    validate_principal(&principal)?;
    Ok(Mapped {
        principal,
        dropped_groups,
    })
}

/// NMP's groups: the first of `groups_claim` and `cognito:groups` that is present (a present
/// `null` is no groups); a string is split on commas and each part stripped. Empty groups are
/// left out (they name nobody, and NMP's header parser drops them too); a group the
/// `x-nmp-principal-groups` header cannot carry is dropped and counted (README "Identity").
fn map_groups(
    settings: &IdentitySettings,
    claims: &impl Claims,
) -> Result<(Vec<String>, usize), IdentityError> {
    let mut kept = Vec::new();
    let mut dropped = 0;
    let mut take = |group: &str| {
        // A control character is kept for validation to refuse (400): a forged header, not a
        // group name to drop quietly.
        if is_carriable_group(group) || group.chars().any(char::is_control) {
            kept.push(group.to_owned());
        } else if !group.is_empty() {
            dropped += 1;
        }
    };
    match claims.claim_or(&settings.groups_claim, COGNITO_GROUPS) {
        (_, Claim::Missing | Claim::Null) => {}
        (_, Claim::Str(s)) => s.split(',').map(py_strip).for_each(&mut take),
        (_, Claim::List(items)) => items.into_iter().for_each(&mut take),
        (name, Claim::Wrong) => return Err(wrong_type(name, "a list of strings or a string")),
    }
    Ok((kept, dropped))
}

/// NMP's scopes: `scope or scp` (Python truthiness: an empty `scope` defers to `scp`); a string
/// is split on white space, a list taken as it is; `scope_prefix` is stripped from each. Empty
/// scopes are left out (they decide nothing).
fn map_scopes(
    settings: &IdentitySettings,
    claims: &impl Claims,
) -> Result<Vec<String>, IdentityError> {
    let (name, claim) = match claims.claim("scope") {
        claim if claim.is_falsy() => ("scp", claims.claim("scp")),
        claim => ("scope", claim),
    };
    match claim {
        Claim::Missing | Claim::Null => Ok(Vec::new()),
        Claim::Str(s) => Ok(kept_scopes(settings, py_split(s))),
        Claim::List(items) => Ok(kept_scopes(settings, items.into_iter())),
        Claim::Wrong => Err(wrong_type(name, "a string or a list of strings")),
    }
}

/// `scope_prefix` stripped from each scope; the empty ones left out.
fn kept_scopes<'a>(
    settings: &IdentitySettings,
    scopes: impl Iterator<Item = &'a str>,
) -> Vec<String> {
    let prefix = settings.scope_prefix.as_deref().unwrap_or("");
    scopes
        .map(|s| s.strip_prefix(prefix).unwrap_or(s))
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

// ---- (a) jwt_authn metadata ----

fn metadata_principal(
    settings: &IdentitySettings,
    metadata: Option<&Struct>,
) -> Result<Option<Mapped>, IdentityError> {
    // No entry under the key: jwt_authn verified nothing (e.g. `allow_missing`), so fall through.
    let Some(kind) = metadata
        .and_then(|m| m.fields.get(&settings.jwt_authn_metadata_key))
        .and_then(|v| v.kind.as_ref())
    else {
        return Ok(None);
    };
    let Kind::StructValue(claims) = kind else {
        // Not what jwt_authn writes: something is misconfigured, so fail closed.
        return Err(unauthenticated(INVALID_TOKEN));
    };
    map_claims(settings, claims).map(Some)
}

// ---- (b) bearer token ----

/// base64url as JWTs use it; padded input is accepted too, since some encoders emit it.
const B64URL: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// A JWT split and decoded, but not verified.
struct RawJwt<'a> {
    header: Map<String, Json>,
    claims: Map<String, Json>,
    signature: &'a str,
}

/// The token of an `Authorization: Bearer` header: `None` without the header, an error for
/// another scheme, an empty token, or one over [`MAX_TOKEN_BYTES`] (refused before any work).
fn bearer_token<'a>(headers: &Credentials<'a>) -> Result<Option<&'a str>, IdentityError> {
    let Some(value) = headers.get("authorization") else {
        return Ok(None);
    };
    // A credential is printable ASCII (with spaces or tabs around the token). A control
    // character or a non-ASCII byte is no part of any token; trimming it away would accept a
    // value that another hop reads differently.
    if value
        .bytes()
        .any(|b| !(b.is_ascii_graphic() || b == b' ' || b == b'\t'))
    {
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

/// Why a token could not be split and decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum JwtError {
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

fn parse_jwt(token: &str) -> Result<RawJwt<'_>, JwtError> {
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
            if object.contains_key(&key) {
                return Err(serde::de::Error::custom(format!("{DUPLICATE_KEY} {key:?}")));
            }
            let UniqueKeys(value) = map.next_value()?;
            object.insert(key, value);
        }
        Ok(Json::Object(object))
    }
}

/// The subject a bearer token claims, read without verification: used only to detect a
/// conflict with the metadata identity, which can only ever turn an allow into a denial.
/// A token with duplicate JSON keys is refused here too: Envoy and we might read different
/// subjects out of it.
fn bearer_subject_unverified(
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
    principal: Arc<Principal>,
    dropped_groups: usize,
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

fn bearer_principal(
    settings: &IdentitySettings,
    verifier: &TokenVerifier,
    headers: &Credentials<'_>,
    now_unix: u64,
) -> Result<Option<Arc<AcceptedToken>>, IdentityError> {
    if !settings.verify_bearer {
        return Ok(None);
    }
    let Some(token) = bearer_token(headers)? else {
        return Ok(None);
    };
    let digest = signed::token_digest(token);
    if let Some(known) = verifier.remembered(&digest) {
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
        if let Some(detail) = signed::refused_header(&jwt.header) {
            return Err(unauthenticated(detail));
        }
        jwt.claims
    } else {
        match verifier.verify(token, &jwt.header, &jwt.claims) {
            Ok(claims) => claims,
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
    verifier.remember(digest, accepted.clone());
    Ok(Some(accepted))
}

/// Wall-clock unix seconds: what callers pass to [`identify`] as "now".
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A token's time claims: `exp` and `iat` are required numbers, `nbf` optional.
#[derive(Debug, Clone, Copy)]
struct TokenTimes {
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

// ---- (c) trusted headers ----

/// A header's value as NMP's `from_headers` reads it: stripped, `None` when empty.
fn header_value<'a>(headers: &Credentials<'a>, name: &str) -> Option<&'a str> {
    headers.get(name).map(py_strip).filter(|v| !v.is_empty())
}

/// The principal gateway-set headers describe, parsed as NMP's `Principal.from_headers` and
/// its middleware's scope parsing read them, and refused (400) where NMP's would refuse.
fn header_principal(
    settings: &IdentitySettings,
    headers: &Credentials<'_>,
) -> Result<Option<Principal>, IdentityError> {
    // NMP's services decode header bytes as Latin-1, so a non-ASCII value means something
    // else to them than to us (and their white space is not ours); a control character is
    // a forged or cut header. Refused, not guessed at.
    let printable = |v: &str| v.bytes().all(|b| b == b' ' || b.is_ascii_graphic());
    if [HEADER_ID, HEADER_EMAIL, HEADER_GROUPS, HEADER_SCOPES]
        .iter()
        .any(|name| headers.get(name).is_some_and(|v| !printable(v)))
    {
        return Err(invalid(
            "Invalid principal header: x-nmp-* values must be printable ASCII".into(),
        ));
    }
    let scopes = header_value(headers, HEADER_SCOPES)
        .map_or_else(Vec::new, |v| kept_scopes(settings, py_split(v)));
    let Some(id) = header_value(headers, HEADER_ID) else {
        // NMP's middleware refuses bad scopes even without an id.
        validate_principal(&Principal {
            scopes,
            ..Principal::default()
        })?;
        // Attributes without an id do not make an identity, and must not pass silently.
        return match [HEADER_EMAIL, HEADER_GROUPS, HEADER_SCOPES].map(|h| header_value(headers, h))
        {
            [None, None, None] => Ok(None),
            _ => Err(unauthenticated("Not authenticated")),
        };
    };
    let groups = header_value(headers, HEADER_GROUPS).map_or_else(Vec::new, |v| {
        v.split(',')
            .map(py_strip)
            .filter(|g| !g.is_empty())
            .map(str::to_owned)
            .collect()
    });
    let principal = Principal {
        id: Some(id.to_owned()),
        email: header_value(headers, HEADER_EMAIL).map(str::to_owned),
        groups,
        scopes,
    };
    validate_principal(&principal)?;
    Ok(Some(principal))
}

// ---- validation ----

// NMP's formats, as byte checks rather than regular expressions: they run on every request,
// and a shared `regex` matcher is slow to reach from more than one worker thread. The tests
// hold each to NMP's expression.

/// `^[a-zA-Z0-9@._\-:+/]+$` (all ASCII, so its length in bytes is its length in characters).
pub(crate) fn is_principal_id(id: &str) -> bool {
    !id.is_empty()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"@._-:+/".contains(&b))
}

/// `^[^@\s]+@[^@\s]+$`: one `@` with something on each side, no white space anywhere.
fn is_email(email: &str) -> bool {
    email.split_once('@').is_some_and(|(local, domain)| {
        !local.is_empty() && !domain.is_empty() && !domain.contains('@')
    }) && !email.chars().any(char::is_whitespace)
}

const MAX_ID_CHARS: usize = 256;
const MAX_EMAIL_CHARS: usize = 320;
const MAX_GROUPS: usize = 100;
const MAX_GROUP_CHARS: usize = 256;

/// An id `x-nmp-principal-id` carries: NMP's id pattern, at most 256 characters.
fn is_carriable_id(id: &str) -> bool {
    id.len() <= MAX_ID_CHARS && is_principal_id(id)
}

/// A group the comma-separated `x-nmp-principal-groups` carries as itself: NMP holds each to
/// the id pattern (so no comma, space or non-ASCII letter), at most 256 characters.
fn is_carriable_group(group: &str) -> bool {
    group.len() <= MAX_GROUP_CHARS && is_principal_id(group)
}

/// A scope the space-separated `x-nmp-scopes` carries as itself: printable ASCII, no space
/// (NMP's services split the header on any white space, Latin-1 `\xa0` and `\x85` included).
fn is_carriable_scope(scope: &str) -> bool {
    scope.bytes().all(|b| b.is_ascii_graphic())
}

/// NMP's principal format rules as its header parser applies them (all 400), so that every
/// principal decided on is one the `x-nmp-*` headers carry exactly: ids and groups in NMP's id
/// pattern, emails in its email pattern and ASCII (NMP reads header bytes as Latin-1), scopes
/// printable ASCII. A scope written like a permission (`models.read`) is refused as NMP refuses
/// it: a permission passed by mistake, which would never match a scope. Beyond NMP's rules,
/// no email, group or scope may hold a control character: a CR, LF or NUL in a header could
/// forge or cut one.
pub fn validate_principal(p: &Principal) -> Result<(), IdentityError> {
    let control = |s: &String| s.chars().any(char::is_control);
    if let Some(id) = &p.id
        && !is_carriable_id(id)
    {
        return Err(invalid("Invalid principal ID format".into()));
    }
    if let Some(email) = &p.email {
        if !email.is_ascii() {
            return Err(invalid(
                "Invalid email format: x-nmp-principal-email carries only ASCII".into(),
            ));
        }
        if email.len() > MAX_EMAIL_CHARS || !is_email(email) || control(email) {
            return Err(invalid("Invalid email format".into()));
        }
    }
    if p.groups.iter().any(control) {
        return Err(invalid("Invalid group name (control character)".into()));
    }
    if p.scopes.iter().any(control) {
        return Err(invalid("Invalid scope format (control character)".into()));
    }
    if p.groups.len() > MAX_GROUPS {
        return Err(invalid(format!("Too many groups (at most {MAX_GROUPS})")));
    }
    if p.groups.iter().any(|g| g.chars().count() > MAX_GROUP_CHARS) {
        return Err(invalid(format!(
            "Group name too long (at most {MAX_GROUP_CHARS} characters)"
        )));
    }
    if !p.groups.iter().all(|g| g.is_empty() || is_principal_id(g)) {
        return Err(invalid(
            "Invalid group name: x-nmp-principal-groups carries only letters, digits and @ . _ - : + /"
                .into(),
        ));
    }
    if !p.scopes.iter().all(|s| is_carriable_scope(s)) {
        return Err(invalid(
            "Invalid scope format: x-nmp-scopes carries only printable ASCII without spaces".into(),
        ));
    }
    if let Some(scope) = p
        .scopes
        .iter()
        .find(|s| crate::policy::syntax::is_permission(s))
    {
        return Err(invalid(format!("Invalid scope format: {scope}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::{URL_SAFE, URL_SAFE_NO_PAD};
    use envoy_types::pb::envoy::config::core::v3::Metadata;
    use serde_json::json;
    use std::collections::HashMap;
    use std::sync::Arc;

    const NOW: u64 = 1_700_000_000;

    fn to_struct(j: &Json) -> Struct {
        struct_from_json(j.as_object().unwrap())
    }

    /// The jwt_authn namespace struct with `claims` under the default payload key.
    fn meta(claims: Json) -> Struct {
        to_struct(&json!({ "jwt_payload": claims }))
    }

    fn enc(j: &Json) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(j).unwrap())
    }

    fn jwt(header: Json, claims: Json, signature: &str) -> String {
        format!("{}.{}.{signature}", enc(&header), enc(&claims))
    }

    fn unsigned(claims: Json) -> String {
        jwt(json!({"alg": "none"}), claims, "")
    }

    fn valid_claims(sub: &str) -> Json {
        json!({"sub": sub, "iat": NOW - 10, "exp": NOW + 3600})
    }

    fn bearer(token: &str) -> HashMap<String, String> {
        headers(&[("authorization", &format!("Bearer {token}"))])
    }

    fn headers(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn unsigned_ok() -> IdentitySettings {
        IdentitySettings {
            allow_unsigned_jwt: true,
            ..IdentitySettings::default()
        }
    }

    fn trusting() -> IdentitySettings {
        IdentitySettings {
            trust_principal_headers: true,
            allow_unsigned_jwt: true,
            ..IdentitySettings::default()
        }
    }

    fn run(
        s: &IdentitySettings,
        h: &HashMap<String, String>,
        m: Option<&Struct>,
    ) -> Result<Option<Identity>, IdentityError> {
        identify(s, &TokenVerifier::none(), &credentials(h), m, NOW)
    }

    fn credentials(h: &HashMap<String, String>) -> Credentials<'_> {
        Credentials::from_headers(h.iter().map(|(k, v)| (k.as_str(), v.as_str()))).unwrap()
    }

    fn ok(r: Result<Option<Identity>, IdentityError>) -> Identity {
        r.expect("expected success").expect("expected an identity")
    }

    fn err_401(r: Result<Option<Identity>, IdentityError>, detail: &str) {
        assert_eq!(
            r,
            Err(IdentityError::Unauthenticated {
                detail: detail.into()
            })
        );
    }

    fn err_400(r: Result<Option<Identity>, IdentityError>, needle: &str) {
        match r {
            Err(e @ IdentityError::InvalidPrincipal { .. }) => {
                assert!(e.detail().contains(needle), "{e:?} lacks {needle:?}");
                assert_eq!(e.status(), 400);
            }
            other => panic!("expected 400, got {other:?}"),
        }
    }

    fn bearer_result(claims: Json) -> Result<Option<Identity>, IdentityError> {
        run(&unsigned_ok(), &bearer(&unsigned(claims)), None)
    }

    // ---- metadata mapping ----

    #[test]
    fn metadata_default_claims() {
        let m = meta(json!({
            "sub": "alice", "email": "alice@example.com",
            "groups": ["eng", " ops ", ""], "scope": "openid  models:read",
        }));
        let id = ok(run(&IdentitySettings::default(), &HashMap::new(), Some(&m)));
        assert_eq!(id.source, Source::JwtAuthnMetadata);
        // A list's groups are taken as they are (NMP strips only a string's): " ops " cannot
        // be carried, so it is dropped; "" names nobody.
        assert_eq!(id.dropped_groups, 1);
        assert_eq!(
            *id.principal,
            Principal {
                id: Some("alice".into()),
                email: Some("alice@example.com".into()),
                groups: vec!["eng".into()],
                scopes: vec!["openid".into(), "models:read".into()],
            }
        );
    }

    #[test]
    fn metadata_custom_claim_names_and_key() {
        let s = IdentitySettings {
            jwt_authn_metadata_key: "claims".into(),
            subject_claim: "oid".into(),
            email_claim: "upn".into(),
            groups_claim: "roles".into(),
            ..IdentitySettings::default()
        };
        let m = to_struct(&json!({"claims": {
            "sub": "ignored", "oid": "u-1", "upn": "u@x.io", "roles": "a, b,,c ",
            "email": "other@x.io", "groups": ["ignored"],
        }}));
        let p = ok(run(&s, &HashMap::new(), Some(&m))).principal;
        assert_eq!(p.id.as_deref(), Some("u-1"));
        assert_eq!(p.email.as_deref(), Some("u@x.io"));
        assert_eq!(p.groups, ["a", "b", "c"]);
    }

    #[test]
    fn metadata_cognito_groups_only_when_groups_claim_absent() {
        let s = IdentitySettings::default();
        let m = meta(json!({"sub": "a", "cognito:groups": ["admins"]}));
        assert_eq!(
            ok(run(&s, &HashMap::new(), Some(&m))).principal.groups,
            ["admins"]
        );
        let m = meta(json!({"sub": "a", "groups": "g1", "cognito:groups": ["admins"]}));
        assert_eq!(
            ok(run(&s, &HashMap::new(), Some(&m))).principal.groups,
            ["g1"]
        );
        let m = meta(json!({"sub": "a", "cognito:groups": 5}));
        err_400(run(&s, &HashMap::new(), Some(&m)), "cognito:groups");
        // A present `null` is no groups, and no reason to look further (as in NMP).
        let m = meta(json!({"sub": "a", "groups": null, "cognito:groups": ["admins"]}));
        assert!(
            ok(run(&s, &HashMap::new(), Some(&m)))
                .principal
                .groups
                .is_empty()
        );
    }

    #[test]
    fn groups_that_cannot_be_carried_are_dropped_and_counted() {
        let s = IdentitySettings::default();
        let mapped = |groups: Json| {
            ok(run(
                &s,
                &HashMap::new(),
                Some(&meta(json!({"sub": "a", "groups": groups}))),
            ))
        };
        let id = mapped(json!([
            "Data Science",
            "cn=ml-team,ou=groups",
            "ml-team,admins",
            "émigrés",
            "g".repeat(257),
            "/ml-team",
            "sales+eu@x.io",
            "",
        ]));
        assert_eq!(id.principal.groups, ["/ml-team", "sales+eu@x.io"]);
        assert_eq!(id.dropped_groups, 5);
        // A string is split on commas and each part stripped as Python strips (U+001C too).
        let id = mapped(json!(" ml-team ,\u{1c}admins\u{a0}, Data Science,,"));
        assert_eq!(id.principal.groups, ["ml-team", "admins"]);
        assert_eq!(id.dropped_groups, 1);
        // Control characters are refused, not dropped: they are a forged header, not a name.
        err_400(
            run(
                &s,
                &HashMap::new(),
                Some(&meta(json!({"sub": "a", "groups": ["ok", "a\u{0}b"]}))),
            ),
            "control character",
        );
        // The limit counts the groups that are carried.
        let many = |n: usize, prefix: &str| {
            (0..n)
                .map(|i| json!(format!("{prefix}{i}")))
                .collect::<Vec<_>>()
        };
        let mut groups = many(100, "g-");
        groups.extend(many(50, "team "));
        let id = mapped(Json::Array(groups));
        assert_eq!((id.principal.groups.len(), id.dropped_groups), (100, 50));
        err_400(
            run(
                &s,
                &HashMap::new(),
                Some(&meta(json!({"sub": "a", "groups": many(101, "g-")}))),
            ),
            "Too many groups",
        );
    }

    #[test]
    fn principals_the_headers_cannot_carry_are_400() {
        let s = IdentitySettings::default();
        let cases = [
            (json!({"sub": "auth0|abc123"}), "auth.oidc.subject_claim"),
            (
                json!({"sub": "a", "email": "jürgen@example.com"}),
                "only ASCII",
            ),
            (
                json!({"sub": "a", "scp": ["models:read openid"]}),
                "printable ASCII",
            ),
            (
                json!({"sub": "a", "scope": "modèles:lire"}),
                "printable ASCII",
            ),
        ];
        for (claims, needle) in cases {
            err_400(run(&s, &HashMap::new(), Some(&meta(claims))), needle);
        }
    }

    #[test]
    fn metadata_scp_list_or_string_and_scope_precedence() {
        let s = IdentitySettings::default();
        let scopes = |claims: Json| {
            ok(run(&s, &HashMap::new(), Some(&meta(claims))))
                .principal
                .scopes
                .clone()
        };
        assert_eq!(
            scopes(json!({"sub": "a", "scp": ["x:read", "y:write"]})),
            ["x:read", "y:write"]
        );
        assert_eq!(
            scopes(json!({"sub": "a", "scp": "x:read y:write"})),
            ["x:read", "y:write"]
        );
        assert_eq!(
            scopes(json!({"sub": "a", "scope": "s:r", "scp": ["x:read"]})),
            ["s:r"]
        );
        // `scope or scp`, with Python's truthiness: an empty `scope` defers to `scp` (issue 14:
        // taking no scopes there skipped the scope check), any other does not.
        for empty in [json!(""), json!([]), json!(null)] {
            assert_eq!(
                scopes(json!({"sub": "a", "scope": empty, "scp": ["x:read"]})),
                ["x:read"]
            );
        }
        for not_empty in [json!(" "), json!([""])] {
            assert!(scopes(json!({"sub": "a", "scope": not_empty, "scp": ["x:read"]})).is_empty());
        }
        assert_eq!(
            scopes(json!({"sub": "a", "scope": ["x:read", "y:write"]})),
            ["x:read", "y:write"]
        );
        // Split on Python's white space, which includes U+001C..U+001F.
        assert_eq!(
            scopes(json!({"sub": "a", "scope": "x:read\u{1f}y:write\u{2003}z:read"})),
            ["x:read", "y:write", "z:read"]
        );
        assert!(scopes(json!({"sub": "a"})).is_empty());
    }

    #[test]
    fn metadata_scope_prefix_stripped() {
        let s = IdentitySettings {
            scope_prefix: Some("api://client/".into()),
            ..IdentitySettings::default()
        };
        let m = meta(json!({"sub": "a", "scope": "api://client/models:read openid api://client/"}));
        assert_eq!(
            ok(run(&s, &HashMap::new(), Some(&m))).principal.scopes,
            ["models:read", "openid"]
        );
        let m = meta(json!({"sub": "a", "scp": ["api://client/x:read"]}));
        assert_eq!(
            ok(run(&s, &HashMap::new(), Some(&m))).principal.scopes,
            ["x:read"]
        );
    }

    #[test]
    fn metadata_wrong_claim_types_are_400_naming_the_claim() {
        let s = IdentitySettings::default();
        let cases = [
            (json!({"sub": 42}), "'sub'"),
            (json!({"sub": ["a"]}), "'sub'"),
            (json!({"sub": "a", "email": ["a@b"]}), "'email'"),
            (json!({"sub": "a", "groups": {"x": 1}}), "'groups'"),
            (json!({"sub": "a", "groups": ["ok", 3]}), "'groups'"),
            (json!({"sub": "a", "scope": [1]}), "'scope'"),
            (
                json!({"sub": "a", "scope": false, "scp": "x:read"}),
                "'scope'",
            ),
            (json!({"sub": "a", "scp": 7}), "'scp'"),
            (json!({"sub": "a", "scp": [true]}), "'scp'"),
        ];
        for (claims, name) in cases {
            err_400(run(&s, &HashMap::new(), Some(&meta(claims))), name);
        }
    }

    #[test]
    fn metadata_without_subject_is_401() {
        let s = IdentitySettings::default();
        for claims in [
            json!({"email": "a@b.c"}),
            json!({"sub": ""}),
            json!({"sub": null}),
        ] {
            err_401(run(&s, &HashMap::new(), Some(&meta(claims))), NO_SUBJECT);
        }
    }

    #[test]
    fn metadata_missing_key_falls_through_and_non_struct_is_401() {
        let s = IdentitySettings::default();
        let other_key = to_struct(&json!({"other": {"sub": "a"}}));
        assert_eq!(run(&s, &HashMap::new(), Some(&other_key)), Ok(None));
        assert_eq!(run(&s, &HashMap::new(), None), Ok(None));
        let not_struct = to_struct(&json!({"jwt_payload": "a.b.c"}));
        err_401(run(&s, &HashMap::new(), Some(&not_struct)), INVALID_TOKEN);
    }

    #[test]
    fn jwt_authn_metadata_reads_the_namespace() {
        let mut attrs = AttributeContext::default();
        assert!(jwt_authn_metadata(&attrs).is_none());
        let ns = meta(json!({"sub": "a"}));
        attrs.metadata_context = Some(Metadata {
            filter_metadata: [(JWT_AUTHN_NAMESPACE.to_string(), ns.clone())].into(),
            ..Metadata::default()
        });
        assert_eq!(jwt_authn_metadata(&attrs), Some(&ns));
    }

    // ---- precedence, trust, conflicts ----

    #[test]
    fn metadata_beats_bearer_beats_headers() {
        let s = trusting();
        let m = meta(json!({"sub": "alice", "email": "meta@x.io"}));
        let mut h = bearer(&unsigned(valid_claims("alice")));
        h.insert(HEADER_ID.into(), "alice".into());
        let id = ok(run(&s, &h, Some(&m)));
        assert_eq!(id.source, Source::JwtAuthnMetadata);
        assert_eq!(id.principal.email.as_deref(), Some("meta@x.io"));

        let id = ok(run(&s, &h, None));
        assert_eq!(id.source, Source::BearerToken);

        h.remove("authorization");
        assert_eq!(ok(run(&s, &h, None)).source, Source::TrustedHeaders);
    }

    #[test]
    fn trust_off_ignores_headers_entirely() {
        let s = IdentitySettings::default();
        let h = headers(&[(HEADER_ID, "mallory"), (HEADER_EMAIL, "m@x.io")]);
        assert_eq!(run(&s, &h, None), Ok(None));
        // Not even a conflict: the headers are simply not an input.
        let m = meta(json!({"sub": "alice"}));
        assert_eq!(
            ok(run(&s, &h, Some(&m))).principal.id.as_deref(),
            Some("alice")
        );
        let h = headers(&[(HEADER_EMAIL, "m@x.io")]);
        assert_eq!(run(&s, &h, None), Ok(None));
    }

    #[test]
    fn conflicting_identities_are_denied() {
        let s = trusting();
        let m = meta(json!({"sub": "alice"}));
        let h = headers(&[(HEADER_ID, "mallory")]);
        err_401(run(&s, &h, Some(&m)), "Conflicting identities");

        // A signed token is read unverified only to detect the conflict.
        let signed = jwt(json!({"alg": "RS256"}), valid_claims("mallory"), "sig");
        err_401(
            run(&s, &bearer(&signed), Some(&m)),
            "Conflicting identities",
        );
        let same = jwt(json!({"alg": "RS256"}), valid_claims("alice"), "sig");
        assert_eq!(
            ok(run(&s, &bearer(&same), Some(&m))).source,
            Source::JwtAuthnMetadata
        );

        let mut h = bearer(&unsigned(valid_claims("alice")));
        h.insert(HEADER_ID.into(), "mallory".into());
        err_401(run(&s, &h, None), "Conflicting identities");
    }

    #[test]
    fn verify_bearer_off_ignores_authorization() {
        let s = IdentitySettings {
            verify_bearer: false,
            ..unsigned_ok()
        };
        let h = bearer(&unsigned(valid_claims("alice")));
        assert_eq!(run(&s, &h, None), Ok(None));
        let m = meta(json!({"sub": "bob"}));
        assert_eq!(
            ok(run(&s, &h, Some(&m))).principal.id.as_deref(),
            Some("bob")
        );
    }

    // ---- trusted headers ----

    #[test]
    fn trusted_headers_mapping() {
        let s = IdentitySettings {
            scope_prefix: Some("api://c/".into()),
            ..trusting()
        };
        let h = headers(&[
            (HEADER_ID, "service:jobs"),
            (HEADER_EMAIL, "jobs@x.io"),
            (HEADER_GROUPS, "a, b,,"),
            (
                HEADER_SCOPES,
                "api://c/x:read  openid y:write a:read,b:read",
            ),
        ]);
        let id = ok(run(&s, &h, None));
        assert_eq!(id.source, Source::TrustedHeaders);
        // As NMP's middleware reads x-nmp-scopes: split on white space only.
        assert_eq!(
            *id.principal,
            Principal {
                id: Some("service:jobs".into()),
                email: Some("jobs@x.io".into()),
                groups: vec!["a".into(), "b".into()],
                scopes: vec![
                    "x:read".into(),
                    "openid".into(),
                    "y:write".into(),
                    "a:read,b:read".into()
                ],
            }
        );
    }

    #[test]
    fn trusted_headers_are_read_as_nmp_reads_them_or_refused() {
        let s = trusting();
        // Stripped as `from_headers` strips them.
        let h = headers(&[(HEADER_ID, " alice  "), (HEADER_EMAIL, " a@x.io ")]);
        let p = ok(run(&s, &h, None)).principal;
        assert_eq!(
            (p.id.as_deref(), p.email.as_deref()),
            (Some("alice"), Some("a@x.io"))
        );
        // NMP refuses a header it cannot parse, and so do we: no group is dropped here.
        for (name, value) in [
            (HEADER_GROUPS, "Data Science"),
            (HEADER_GROUPS, "ok,émigrés"),
            (HEADER_EMAIL, "jürgen@example.com"),
            (HEADER_SCOPES, "x:read\u{a0}y:read"),
            (HEADER_ID, "alice\u{a0}"),
        ] {
            err_400(
                run(&s, &headers(&[(HEADER_ID, "alice"), (name, value)]), None),
                "",
            );
        }
        // An id of white space only is no id.
        err_401(
            run(
                &s,
                &headers(&[(HEADER_ID, " "), (HEADER_GROUPS, "g")]),
                None,
            ),
            "Not authenticated",
        );
    }

    #[test]
    fn trusted_headers_need_an_id() {
        let s = trusting();
        err_401(
            run(&s, &headers(&[(HEADER_EMAIL, "a@b.c")]), None),
            "Not authenticated",
        );
        err_401(
            run(&s, &headers(&[(HEADER_ID, ""), (HEADER_GROUPS, "g")]), None),
            "Not authenticated",
        );
        assert_eq!(run(&s, &HashMap::new(), None), Ok(None));
    }

    // ---- bearer tokens ----

    #[test]
    fn unsigned_token_accepted_and_mapped() {
        let claims = json!({
            "sub": "alice", "iat": NOW, "exp": NOW + 60, "email": "alice@x.io",
            "groups": "g1,g2", "scp": ["x:read"],
        });
        let id = ok(bearer_result(claims));
        assert_eq!(id.source, Source::BearerToken);
        assert_eq!(
            *id.principal,
            Principal {
                id: Some("alice".into()),
                email: Some("alice@x.io".into()),
                groups: vec!["g1".into(), "g2".into()],
                scopes: vec!["x:read".into()],
            }
        );
    }

    #[test]
    fn bearer_scheme_is_case_insensitive_and_others_are_401() {
        let token = unsigned(valid_claims("alice"));
        let h = headers(&[("authorization", &format!("bEaReR {token}"))]);
        assert_eq!(
            ok(run(&unsigned_ok(), &h, None)).source,
            Source::BearerToken
        );
        for value in [
            "Basic YWxpY2U6cHc=",
            "Bearer",
            "Bearer   ",
            token.as_str(),
            "",
        ] {
            let h = headers(&[("authorization", value)]);
            err_401(
                run(&unsigned_ok(), &h, None),
                "Invalid authentication credentials",
            );
        }
    }

    #[test]
    fn padded_base64_accepted() {
        let header = URL_SAFE.encode(br#"{"alg":"none"}"#);
        let claims = URL_SAFE.encode(serde_json::to_vec(&valid_claims("alice")).unwrap());
        assert!(header.ends_with('=') || claims.ends_with('='));
        let h = bearer(&format!("{header}.{claims}."));
        assert_eq!(
            ok(run(&unsigned_ok(), &h, None)).principal.id.as_deref(),
            Some("alice")
        );
    }

    #[test]
    fn expiry_and_not_before_with_leeway() {
        let at = |exp: u64, nbf: Option<u64>| {
            let mut c = json!({"sub": "a", "iat": NOW - 100, "exp": exp});
            if let Some(nbf) = nbf {
                c["nbf"] = json!(nbf);
            }
            bearer_result(c)
        };
        assert!(at(NOW - 60, None).is_ok()); // exactly at the leeway edge
        err_401(at(NOW - 61, None), INVALID_TOKEN);
        assert!(at(NOW + 3600, Some(NOW + 60)).is_ok());
        err_401(at(NOW + 3600, Some(NOW + 61)), INVALID_TOKEN);
        err_401(
            bearer_result(json!({"sub": "a", "iat": NOW, "exp": NOW + 10, "nbf": "soon"})),
            INVALID_TOKEN,
        );
        // Issued in the future: fine within the leeway, refused beyond it.
        let issued = |iat: u64| bearer_result(json!({"sub": "a", "iat": iat, "exp": NOW + 3600}));
        assert!(issued(NOW + 60).is_ok());
        err_401(issued(NOW + 61), INVALID_TOKEN);
    }

    #[test]
    fn leeway_is_capped() {
        let s = IdentitySettings {
            leeway_seconds: 1_000_000,
            ..unsigned_ok()
        };
        let claims = json!({"sub": "a", "iat": NOW - 1000, "exp": NOW - MAX_LEEWAY_SECONDS - 1});
        err_401(run(&s, &bearer(&unsigned(claims)), None), INVALID_TOKEN);
    }

    #[test]
    fn required_claims() {
        err_401(
            bearer_result(json!({"iat": NOW, "exp": NOW + 10})),
            NO_SUBJECT,
        );
        err_401(
            bearer_result(json!({"sub": "", "iat": NOW, "exp": NOW + 10})),
            NO_SUBJECT,
        );
        err_400(
            bearer_result(json!({"sub": 5, "iat": NOW, "exp": NOW + 10})),
            "'sub'",
        );
        err_401(
            bearer_result(json!({"sub": "a", "iat": NOW})),
            INVALID_TOKEN,
        );
        err_401(
            bearer_result(json!({"sub": "a", "exp": NOW + 10})),
            INVALID_TOKEN,
        );
        err_401(
            bearer_result(json!({"sub": "a", "iat": NOW, "exp": "later"})),
            INVALID_TOKEN,
        );
        // With a custom subject claim, `sub` is still required and the id comes from the other.
        let s = IdentitySettings {
            subject_claim: "oid".into(),
            ..unsigned_ok()
        };
        let t = unsigned(json!({"sub": "a", "oid": "o-1", "iat": NOW, "exp": NOW + 10}));
        assert_eq!(
            ok(run(&s, &bearer(&t), None)).principal.id.as_deref(),
            Some("o-1")
        );
        // Without the configured claim, the subject is `sub` (as NMP maps it); with it, `sub`
        // only has to be there.
        let t = unsigned(json!({"sub": "a", "iat": NOW, "exp": NOW + 10}));
        assert_eq!(
            ok(run(&s, &bearer(&t), None)).principal.id.as_deref(),
            Some("a")
        );
        let t = unsigned(json!({"sub": "", "oid": "o-1", "iat": NOW, "exp": NOW + 10}));
        assert_eq!(
            ok(run(&s, &bearer(&t), None)).principal.id.as_deref(),
            Some("o-1")
        );
        let t = unsigned(json!({"sub": "a", "oid": null, "iat": NOW, "exp": NOW + 10}));
        err_401(run(&s, &bearer(&t), None), NO_SUBJECT);
        let t = unsigned(json!({"oid": "o-1", "iat": NOW, "exp": NOW + 10}));
        err_401(run(&s, &bearer(&t), None), NO_SUBJECT);
    }

    #[test]
    fn rejected_tokens() {
        let c = valid_claims("alice");
        let s = unsigned_ok();
        let rejected = [
            jwt(json!({"alg": "none"}), c.clone(), "sig"),
            jwt(json!({"alg": "RS256"}), c.clone(), "c2ln"),
            jwt(json!({"alg": "ES256"}), c.clone(), "c2ln"),
            jwt(json!({"alg": "HS256"}), c.clone(), "c2ln"),
            jwt(json!({"alg": "HS256"}), c.clone(), ""),
            jwt(json!({"alg": "None"}), c.clone(), ""),
            jwt(json!({"typ": "JWT"}), c.clone(), ""),
            format!("{}.{}", enc(&json!({"alg": "none"})), enc(&c)),
            format!("{}..", unsigned(c.clone())),
            format!("{}.!!!.", enc(&json!({"alg": "none"}))),
            format!(
                "{}.{}.",
                enc(&json!({"alg": "none"})),
                URL_SAFE_NO_PAD.encode("{not json")
            ),
            format!(
                "{}.{}.",
                enc(&json!({"alg": "none"})),
                enc(&json!(["array"]))
            ),
            format!("{}.{}.", URL_SAFE_NO_PAD.encode("nope"), enc(&c)),
        ];
        // Unsigned-token failures say "Invalid or expired token"; signed ones (no issuer is
        // trusted here) say why they were refused. All are 401.
        for token in rejected {
            let result = run(&s, &bearer(&token), None);
            assert!(
                matches!(result, Err(IdentityError::Unauthenticated { .. })),
                "{token}: {result:?}"
            );
        }
        // alg none is refused unless explicitly allowed.
        let t = unsigned(c);
        err_401(
            run(&IdentitySettings::default(), &bearer(&t), None),
            INVALID_TOKEN,
        );
    }

    #[test]
    fn token_size_limit() {
        let with_pad = |pad: usize| {
            let mut c = valid_claims("alice");
            c["pad"] = json!("x".repeat(pad));
            unsigned(c)
        };
        // base64 makes 3 bytes into 4 characters: start just below the target and step up.
        let sized = |len: usize| {
            let start = (len - with_pad(0).len()) * 3 / 4 - 4;
            (start..start + 16)
                .map(with_pad)
                .find(|t| t.len() == len)
                .expect("a token of that length")
        };
        let s = unsigned_ok();
        assert!(run(&s, &bearer(&sized(MAX_TOKEN_BYTES)), None).is_ok());
        err_401(
            run(&s, &bearer(&sized(MAX_TOKEN_BYTES + 1)), None),
            INVALID_TOKEN,
        );
    }

    // ---- validation ----

    fn with(f: impl FnOnce(&mut Principal)) -> Result<(), IdentityError> {
        let mut p = Principal::with_id("alice");
        f(&mut p);
        validate_principal(&p)
    }

    fn is_400(r: Result<(), IdentityError>, detail: &str) {
        assert_eq!(r, Err(invalid(detail.into())));
    }

    #[test]
    fn principal_id_rules() {
        assert!(with(|p| p.id = Some("service:a/b+c@d.e_f-g".into())).is_ok());
        assert!(with(|p| p.id = Some("a".repeat(256))).is_ok());
        is_400(
            with(|p| p.id = Some("a".repeat(257))),
            "Invalid principal ID format",
        );
        for bad in ["a b", "a;b", "é", "a\n"] {
            is_400(
                with(|p| p.id = Some(bad.into())),
                "Invalid principal ID format",
            );
        }
        // Reaches identify as a 400, not a 401.
        let m = meta(json!({"sub": "bad id"}));
        err_400(
            run(&IdentitySettings::default(), &HashMap::new(), Some(&m)),
            "Invalid principal ID format",
        );
    }

    #[test]
    fn email_rules() {
        let email = |len: usize| format!("{}@example.com", "a".repeat(len - 12));
        assert!(with(|p| p.email = Some(email(320))).is_ok());
        is_400(with(|p| p.email = Some(email(321))), "Invalid email format");
        for bad in ["alice", "a@b@c", "a b@c", "@c", "a@"] {
            is_400(with(|p| p.email = Some(bad.into())), "Invalid email format");
        }
    }

    #[test]
    fn group_rules() {
        assert!(with(|p| p.groups = vec!["g".into(); 100]).is_ok());
        is_400(
            with(|p| p.groups = vec!["g".into(); 101]),
            "Too many groups (at most 100)",
        );
        assert!(with(|p| p.groups = vec!["g".repeat(256)]).is_ok());
        is_400(
            with(|p| p.groups = vec!["g".repeat(257)]),
            "Group name too long (at most 256 characters)",
        );
    }

    #[test]
    fn scope_rules() {
        for fine in [
            "openid",
            "api://x/y",
            "models:read",
            "Models.Read",
            "a.",
            ".a",
            "a..b",
        ] {
            assert!(with(|p| p.scopes = vec![fine.into()]).is_ok(), "{fine}");
        }
        for bad in ["models.read", "a-b.c-d.e", "x1.y2"] {
            is_400(
                with(|p| p.scopes = vec![bad.into()]),
                &format!("Invalid scope format: {bad}"),
            );
        }
        let m = meta(json!({"sub": "a", "scope": "openid models.read"}));
        err_400(
            run(&IdentitySettings::default(), &HashMap::new(), Some(&m)),
            "Invalid scope format: models.read",
        );
    }

    #[test]
    fn error_status_and_detail() {
        let e = unauthenticated("Not authenticated");
        assert_eq!((e.status(), e.detail()), (401, "Not authenticated"));
    }

    const FIXTURE_ISSUER: &str = "https://idp.example.com";

    /// The fixture keys, trusted for FIXTURE_ISSUER.
    fn fixture_keys() -> (Arc<signed::IssuerKeys>, TokenVerifier) {
        let jwks = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/keys/jwks.json");
        let keyring = Arc::new(signed::IssuerKeys::new(FIXTURE_ISSUER, None));
        let jwks = serde_json::from_slice(&std::fs::read(jwks).unwrap()).unwrap();
        keyring.replace(signed::usable_keys(&jwks));
        let verifier = TokenVerifier::new(vec![keyring.clone()], None, 60);
        (keyring, verifier)
    }

    /// An RS256 token signed with the fixture key `rsa.pem`, published as `kid`.
    fn sign(kid: &str, claims: Json) -> String {
        use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
        let pem = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/keys/rsa.pem");
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(kid.into());
        let key = EncodingKey::from_rsa_pem(&std::fs::read(pem).unwrap()).unwrap();
        encode(&header, &claims, &key).unwrap()
    }

    #[test]
    fn signed_tokens_are_verified_then_time_checked_and_mapped() {
        let issuer = FIXTURE_ISSUER;
        let (_, verifier) = fixture_keys();
        let s = IdentitySettings::default();
        let run = |token: &str| identify(&s, &verifier, &credentials(&bearer(token)), None, NOW);

        let claims = json!({"iss": issuer, "sub": "alice", "email": "alice@example.com",
            "scope": "openid models:read", "iat": NOW, "exp": NOW + 600});
        let who = ok(run(&sign("rsa-1", claims)));
        assert_eq!(who.source, Source::BearerToken);
        assert_eq!(who.principal.id.as_deref(), Some("alice"));
        assert_eq!(who.principal.scopes, vec!["openid", "models:read"]);

        let expired = json!({"iss": issuer, "sub": "alice", "iat": NOW - 7200, "exp": NOW - 3600});
        err_401(run(&sign("rsa-1", expired)), INVALID_TOKEN);
        let no_subject = json!({"iss": issuer, "iat": NOW, "exp": NOW + 600});
        err_401(run(&sign("rsa-1", no_subject)), NO_SUBJECT);
        let unknown = json!({"iss": issuer, "sub": "alice", "iat": NOW, "exp": NOW + 600});
        assert_eq!(
            run(&sign("rsa-9", unknown)),
            Err(IdentityError::UnknownSigningKey {
                issuer: issuer.into()
            })
        );
    }

    #[test]
    fn accepted_tokens_are_remembered_until_keys_are_withdrawn_and_time_checked_on_every_use() {
        let (keyring, verifier) = fixture_keys();
        let claims = json!({"iss": FIXTURE_ISSUER, "sub": "alice", "iat": NOW, "exp": NOW + 600});
        let token = sign("rsa-1", claims);
        let s = IdentitySettings::default();
        let at = |now: u64| identify(&s, &verifier, &credentials(&bearer(&token)), None, now);

        assert!(ok(at(NOW)).principal.id.as_deref() == Some("alice"));
        // With no keys at all, only the memory of the accepted token can vouch for it...
        assert!(keyring.replace(Vec::new()), "a key was withdrawn");
        assert!(ok(at(NOW + 1)).principal.id.as_deref() == Some("alice"));
        // ...and never past its expiry (600 s + 60 s leeway).
        err_401(at(NOW + 661), INVALID_TOKEN);
        verifier.forget_verified();
        assert_eq!(
            at(NOW + 2),
            Err(IdentityError::UnknownSigningKey {
                issuer: FIXTURE_ISSUER.into()
            })
        );

        // An expiry far beyond any clock is accepted, and accepted again from memory.
        for exp in [1e19, 1e300] {
            let far = unsigned(json!({"sub": "a", "iat": NOW, "exp": exp}));
            let run = || {
                identify(
                    &unsigned_ok(),
                    &verifier,
                    &credentials(&bearer(&far)),
                    None,
                    NOW,
                )
            };
            assert!(ok(run()).principal.id.as_deref() == Some("a"));
            assert!(ok(run()).principal.id.as_deref() == Some("a"));
        }

        // A token refused for its principal is refused again, not remembered as good.
        let bad_scope =
            unsigned(json!({"sub": "a", "scope": "models.read", "iat": NOW, "exp": NOW + 60}));
        for _ in 0..2 {
            err_400(
                identify(
                    &unsigned_ok(),
                    &verifier,
                    &credentials(&bearer(&bad_scope)),
                    None,
                    NOW,
                ),
                "Invalid scope format",
            );
        }
    }

    /// Found by the token fuzz target (fuzz/corpus/token/seed-2 run twice): an unsigned token
    /// remembered under quickstart settings was accepted from memory by the same verifier
    /// under settings that refuse unsigned tokens.
    #[test]
    fn a_remembered_unsigned_token_needs_unsigned_tokens_allowed() {
        let verifier = TokenVerifier::none();
        let token = unsigned(valid_claims("alice"));
        let with =
            |s: &IdentitySettings| identify(s, &verifier, &credentials(&bearer(&token)), None, NOW);
        assert!(ok(with(&unsigned_ok())).principal.id.as_deref() == Some("alice"));
        err_401(with(&IdentitySettings::default()), INVALID_TOKEN);
        assert!(ok(with(&unsigned_ok())).principal.id.as_deref() == Some("alice"));
    }

    #[test]
    fn credential_headers_match_any_case_and_may_not_repeat() {
        let found =
            Credentials::from_headers([("Authorization", "Bearer x"), ("accept", "*/*")]).unwrap();
        assert_eq!(found.get("authorization"), Some("Bearer x"));
        for repeated in [
            [("authorization", "Bearer a"), ("Authorization", "Bearer b")],
            [(HEADER_ID, "alice"), ("X-NMP-Principal-Id", "mallory")],
        ] {
            err_401(
                Credentials::from_headers(repeated).map(|_| None),
                "Repeated credential header",
            );
        }
    }

    /// Every string over an alphabet that reaches each branch, up to a length: the byte checks
    /// agree with NMP's expressions on all of them.
    #[test]
    fn id_and_email_checks_agree_with_nmp_expressions() {
        let id = regex::Regex::new(r"^[a-zA-Z0-9@._\-:+/]+$").unwrap();
        let email = regex::Regex::new(r"^[^@\s]+@[^@\s]+$").unwrap();
        let alphabet = [
            'a', 'Z', '5', '@', '.', '/', ' ', '\t', '\u{a0}', '#', 'é', '\n',
        ];
        let strings = crate::policy::syntax::tests::strings_over(&alphabet, 5);
        let (mut ids, mut emails) = (0, 0);
        for s in &strings {
            assert_eq!(is_principal_id(s), id.is_match(s), "id {s:?}");
            assert_eq!(is_email(s), email.is_match(s), "email {s:?}");
            ids += usize::from(is_principal_id(s));
            emails += usize::from(is_email(s));
        }
        assert!(ids > 1000 && emails > 1000, "{ids} {emails}");
    }
}
