//! Gateway-set `x-nmp-principal-*` and `x-nmp-scopes` headers, read as NMP reads them (only
//! with `identity.trust_principal_headers`).

use super::claims::{kept_scopes, py_split, py_strip};
use super::credentials::{Credentials, HEADER_EMAIL, HEADER_GROUPS, HEADER_ID, HEADER_SCOPES};
use super::principal::validate_principal;
use super::{IdentityError, IdentitySettings, invalid, unauthenticated};
use crate::policy::Principal;

/// A header's value as NMP's `from_headers` reads it: stripped, `None` when empty.
pub(crate) fn header_value<'a>(headers: &Credentials<'a>, name: &str) -> Option<&'a str> {
    headers.get(name).map(py_strip).filter(|v| !v.is_empty())
}

/// The principal gateway-set headers describe, parsed as NMP's `Principal.from_headers` and
/// its middleware's scope parsing read them, and refused (400) where NMP's would refuse.
pub(crate) fn header_principal(
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
