//! The request headers identity reads, picked out of a request in one pass.

use super::{IdentityError, unauthenticated};

pub(crate) const HEADER_ID: &str = "x-nmp-principal-id";
pub(crate) const HEADER_EMAIL: &str = "x-nmp-principal-email";
pub(crate) const HEADER_GROUPS: &str = "x-nmp-principal-groups";
pub(crate) const HEADER_SCOPES: &str = "x-nmp-scopes";

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

    pub(crate) fn get(&self, name: &str) -> Option<&'a str> {
        let slot = CREDENTIAL_HEADERS.iter().position(|known| *known == name)?;
        self.values[slot]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_headers_match_any_case_and_may_not_repeat() {
        let found =
            Credentials::from_headers([("Authorization", "Bearer x"), ("accept", "*/*")]).unwrap();
        assert_eq!(found.get("authorization"), Some("Bearer x"));
        for repeated in [
            [("authorization", "Bearer a"), ("Authorization", "Bearer b")],
            [(HEADER_ID, "alice"), ("X-NMP-Principal-Id", "mallory")],
        ] {
            assert_eq!(
                Credentials::from_headers(repeated),
                Err(unauthenticated("Repeated credential header"))
            );
        }
    }
}
