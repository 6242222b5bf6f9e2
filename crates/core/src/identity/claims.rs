//! Claims mapped onto a principal as NMP 0.3.0's own `jwt.py` maps them, for verified
//! `jwt_authn` claims and bearer tokens alike.

use serde_json::{Map, Value as Json};

use super::principal::{MAX_ID_CHARS, is_carriable_group, is_carriable_id, validate_principal};
use super::{IdentityError, IdentitySettings, NO_SUBJECT, invalid, unauthenticated};
use crate::policy::Principal;

// As NMP 0.3.0's `JWTValidator._extract_token_claims` (nmp/common/auth/jwt.py) maps claims,
// then made fit for the `x-nmp-*` headers NMP's services parse (`Principal.from_headers`): a
// group those headers cannot carry is dropped, anything else they cannot carry is a 400. The
// deliberate differences are listed in README "Identity".

/// A claim, told apart as NMP's mapping tells its cases apart; anything else is `Wrong`.
#[derive(Debug)]
pub enum Claim<'a> {
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
pub trait Claims {
    fn claim(&self, name: &str) -> Claim<'_>;

    /// `name`'s claim, or `fallback`'s when `name` is missing; with the name read.
    fn claim_or<'a>(&'a self, name: &'a str, fallback: &'a str) -> (&'a str, Claim<'a>) {
        match self.claim(name) {
            Claim::Missing => (fallback, self.claim(fallback)),
            claim => (name, claim),
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

pub(crate) fn wrong_type(name: &str, expected: &str) -> IdentityError {
    invalid(format!("Invalid token claim '{name}': expected {expected}"))
}

const COGNITO_GROUPS: &str = "cognito:groups";

/// Python's `str.isspace()`, which the `str.split()` and `str.strip()` in NMP's mapping and
/// header parsing use: Unicode white space and also U+001C..U+001F.
pub(crate) fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's `s.strip()`.
pub(crate) fn py_strip(s: &str) -> &str {
    s.trim_matches(is_py_space)
}

/// Python's `s.split()`: the non-empty runs between white space.
pub(crate) fn py_split(s: &str) -> impl Iterator<Item = &str> {
    s.split(is_py_space).filter(|part| !part.is_empty())
}

/// NMP's `claims.get(subject_claim, claims.get("sub"))`: `sub` only when the configured claim
/// is missing. `None`: no subject (missing, `null` or empty). With the claim's name.
pub(crate) fn subject<'a>(
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
pub(crate) struct Mapped {
    pub(crate) principal: Principal,
    pub(crate) dropped_groups: usize,
}

/// Maps claims onto a principal: 401 without a subject, 400 for a claim of the wrong type or a
/// principal the headers cannot carry.
pub(crate) fn map_claims(
    settings: &IdentitySettings,
    claims: &impl Claims,
) -> Result<Mapped, IdentityError> {
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
pub(crate) fn kept_scopes<'a>(
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
