//! Who is calling: the principal of a request, from (in this order) the claims a gateway
//! verified (Envoy's `jwt_authn`), a bearer token, or gateway-set `x-nmp-principal-*` headers.
//!
//! Pure: no I/O and no clock. The host passes the current time in unix seconds, the verified
//! claims it found, and what verifies signed tokens ([`TokenVerification`]: the issuers' keys
//! are fetched by the host). Identities from different sources that disagree are denied,
//! never merged.

mod claims;
mod credentials;
mod headers;
mod principal;
mod token;

use std::sync::Arc;

use serde_json::{Map, Value as Json};

use crate::policy::Principal;

pub use claims::{Claim, Claims};
pub use credentials::Credentials;
pub use principal::{is_carriable_id, is_principal_id, validate_principal};
pub use token::{
    AcceptedToken, SigningAlgorithm, UNTRUSTED_ISSUER, decode_unverified, refused_header,
    signing_algorithm, unsigned_token,
};

use claims::{Mapped, map_claims};
use credentials::HEADER_ID;
use headers::{header_principal, header_value};
use token::{bearer_principal, bearer_subject_unverified};

/// Upper bound on clock-skew leeway, whatever the configuration says: a large leeway would
/// quietly turn expired tokens back into valid ones.
pub const MAX_LEEWAY_SECONDS: u64 = 300;
/// Bearer tokens longer than this are rejected before any decoding work.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

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

/// Why a signed token was not verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// 401 with this detail.
    Invalid(&'static str),
    /// The issuer is trusted but does not (yet) publish the token's key: worth one refetch.
    UnknownKey { issuer: String },
}

/// What the host gives [`identify`] for bearer tokens: signature verification against its
/// trusted issuers' keys, and a memory of tokens already accepted (so a repeated token costs
/// no decoding, verification or mapping; its time claims are checked on every use).
pub trait TokenVerification {
    /// What an accepted token is remembered under (a digest: never the credential itself).
    type TokenKey;
    /// `token`'s key, made once per request for both the lookup and the insert.
    fn token_key(&self, token: &str) -> Self::TokenKey;
    /// A token accepted before and not forgotten since.
    fn remembered(&self, key: &Self::TokenKey) -> Option<Arc<AcceptedToken>>;
    /// Remembers an accepted token.
    fn remember(&self, key: Self::TokenKey, accepted: Arc<AcceptedToken>);
    /// Verifies `token`, already split and decoded into `header` and unverified `claims` (its
    /// own, decoded once: a verifier checks them and the signature over the token's text, and
    /// does not decode the token again). Time claims are checked by [`identify`].
    fn verify(
        &self,
        token: &str,
        header: &Map<String, Json>,
        claims: &Map<String, Json>,
    ) -> Result<(), Rejection>;
}

/// What a gateway verified for the request (Envoy's `jwt_authn` payload), as the host found it.
#[derive(Debug, Clone, Copy)]
pub enum Verified<'a, C> {
    /// Nothing (no entry under the configured key): identity falls through to the token.
    Nothing,
    /// The verified claims.
    Claims(&'a C),
    /// An entry that is not a claim set: something is misconfigured, so fail closed (401).
    Malformed,
}

/// Establishes the caller from the request's `headers` and what a gateway `verified`.
/// `Ok(None)`: no source named anyone.
pub fn identify<C: Claims>(
    settings: &IdentitySettings,
    verifier: &impl TokenVerification,
    headers: &Credentials<'_>,
    verified: Verified<'_, C>,
    now_unix: u64,
) -> Result<Option<Identity>, IdentityError> {
    let identity = if let Some(mapped) = verified_principal(settings, verified)? {
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
    Ok(Some(identity))
}

fn verified_principal<C: Claims>(
    settings: &IdentitySettings,
    verified: Verified<'_, C>,
) -> Result<Option<Mapped>, IdentityError> {
    match verified {
        Verified::Nothing => Ok(None),
        Verified::Claims(claims) => map_claims(settings, claims).map(Some),
        Verified::Malformed => Err(unauthenticated(INVALID_TOKEN)),
    }
}
