//! NMP's principal format rules, as its services' header parser applies them: what the
//! `x-nmp-*` headers can carry exactly.

use super::{IdentityError, invalid};
use crate::policy::Principal;

// NMP's formats, as byte checks rather than regular expressions: they run on every request,
// and a shared `regex` matcher is slow to reach from more than one worker thread. The tests
// hold each to NMP's expression.

/// `^[a-zA-Z0-9@._\-:+/]+$` (all ASCII, so its length in bytes is its length in characters).
pub fn is_principal_id(id: &str) -> bool {
    !id.is_empty()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"@._-:+/".contains(&b))
}

/// `^[^@\s]+@[^@\s]+$`: one `@` with something on each side, no white space anywhere.
pub(crate) fn is_email(email: &str) -> bool {
    email.split_once('@').is_some_and(|(local, domain)| {
        !local.is_empty() && !domain.is_empty() && !domain.contains('@')
    }) && !email.chars().any(char::is_whitespace)
}

pub(crate) const MAX_ID_CHARS: usize = 256;
pub(crate) const MAX_EMAIL_CHARS: usize = 320;
pub(crate) const MAX_GROUPS: usize = 100;
pub(crate) const MAX_GROUP_CHARS: usize = 256;

/// An id `x-nmp-principal-id` carries: NMP's id pattern, at most 256 characters.
pub fn is_carriable_id(id: &str) -> bool {
    id.len() <= MAX_ID_CHARS && is_principal_id(id)
}

/// A group the comma-separated `x-nmp-principal-groups` carries as itself: NMP holds each to
/// the id pattern (so no comma, space or non-ASCII letter), at most 256 characters.
pub(crate) fn is_carriable_group(group: &str) -> bool {
    group.len() <= MAX_GROUP_CHARS && is_principal_id(group)
}

/// A scope the space-separated `x-nmp-scopes` carries as itself: printable ASCII, no space
/// (NMP's services split the header on any white space, Latin-1 `\xa0` and `\x85` included).
pub(crate) fn is_carriable_scope(scope: &str) -> bool {
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
    use crate::identity::unauthenticated;

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
    }

    #[test]
    fn error_status_and_detail() {
        let e = unauthenticated("Not authenticated");
        assert_eq!((e.status(), e.detail()), (401, "Not authenticated"));
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
