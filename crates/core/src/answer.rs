//! What every face's answer shares, whoever renders it (the gRPC `CheckResponse`, the HTTP
//! authorization endpoint, the in-Envoy module): the headers an allow sets and removes, a
//! denial's headers and its NMP-style JSON body.

use std::borrow::Cow;

use crate::policy::Principal;
use crate::verdict::{Status, Verdict};

pub const AUTHORIZED: &str = "x-nmp-authorized";
pub const PRINCIPAL_ID: &str = "x-nmp-principal-id";
pub const PRINCIPAL_EMAIL: &str = "x-nmp-principal-email";
pub const PRINCIPAL_GROUPS: &str = "x-nmp-principal-groups";
pub const SCOPES: &str = "x-nmp-scopes";

/// The headers an allow sets: `x-nmp-authorized` and the principal's (README "Check response").
/// Borrowed from the principal where a value is one of its strings.
pub fn allow_headers(principal: Option<&Principal>) -> Vec<(&'static str, Cow<'_, str>)> {
    let mut set = Vec::with_capacity(5);
    set.push((AUTHORIZED, Cow::Borrowed("true")));
    if let Some(p) = principal {
        if let Some(id) = p.id.as_deref().filter(|id| !id.is_empty()) {
            set.push((PRINCIPAL_ID, Cow::Borrowed(id)));
        }
        if let Some(email) = p.email.as_deref().filter(|e| !e.is_empty()) {
            set.push((PRINCIPAL_EMAIL, Cow::Borrowed(email)));
        }
        if !p.groups.is_empty() {
            set.push((PRINCIPAL_GROUPS, Cow::Owned(p.groups.join(","))));
        }
        if !p.scopes.is_empty() {
            set.push((SCOPES, Cow::Owned(p.scopes.join(" "))));
        }
    }
    set
}

/// Every inbound `x-nmp-*` header the allow does not set: the client's, not ours, so removed.
/// Envoy sends lower-case names; a hand-built request's `X-NMP-...` is caught too.
pub fn headers_to_remove<'h>(
    inbound: impl Iterator<Item = &'h str>,
    set: &[(&str, Cow<'_, str>)],
) -> Vec<String> {
    let mut remove: Vec<String> = inbound
        .filter(|k| k.get(..6).is_some_and(|p| p.eq_ignore_ascii_case("x-nmp-")))
        .map(str::to_ascii_lowercase)
        .filter(|k| !set.iter().any(|(name, _)| name == k))
        .collect();
    remove.sort();
    remove.dedup();
    remove
}

/// A denial's headers: its JSON body's type, and on a 401 the `www-authenticate` challenge.
pub fn denial_headers(verdict: &Verdict<'_>) -> Vec<(&'static str, String)> {
    let mut headers = vec![("content-type", "application/json".to_string())];
    if verdict.status == Status::Unauthorized {
        let challenge = if verdict.token_refused {
            format!(
                "Bearer realm=\"nmp\", error=\"invalid_token\", error_description=\"{}\"",
                verdict.detail.replace(['"', '\\'], "'")
            )
        } else {
            "Bearer realm=\"nmp\"".into()
        };
        headers.push(("www-authenticate", challenge));
    }
    headers
}

/// NMP's error body, `{"detail": "..."}`, written without building a JSON tree.
pub fn detail_body(detail: &str) -> String {
    #[derive(serde::Serialize)]
    struct Body<'a> {
        detail: &'a str,
    }
    serde_json::to_string(&Body { detail }).expect("a string field always serializes")
}
