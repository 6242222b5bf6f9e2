//! Who is calling, as the server finds it: the decision core's identity rules
//! ([`nmp_authz_core::identity`]) fed with what Envoy's `jwt_authn` filter verified (a
//! protobuf `Struct` in the request's dynamic metadata), the wall clock, and signed-token
//! verification against the issuers' keys ([`signed`], fetched by [`jwks`]).

use envoy_types::pb::envoy::service::auth::v3::AttributeContext;
use envoy_types::pb::google::protobuf::{ListValue, Struct, Value, value::Kind};
use serde_json::{Map, Value as Json};

pub mod jwks;
pub mod signed;

use crate::server::check_request as wire;
use nmp_authz_core::identity::{self as rules, Verified};
pub use nmp_authz_core::identity::{
    AcceptedToken, Claim, Claims, Credentials, Identity, IdentityError, IdentitySettings,
    MAX_LEEWAY_SECONDS, MAX_TOKEN_BYTES, Source, decode_unverified, is_carriable_id,
    unsigned_token, validate_principal,
};
use signed::TokenVerifier;

/// The `filter_metadata` namespace Envoy's `jwt_authn` filter writes verified claims under.
pub const JWT_AUTHN_NAMESPACE: &str = "envoy.filters.http.jwt_authn";

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
/// namespace ([`jwt_authn_metadata`]), at `now_unix`. `Ok(None)`: no source named anyone.
pub fn identify(
    settings: &IdentitySettings,
    verifier: &TokenVerifier,
    headers: &Credentials<'_>,
    metadata: Option<&wire::Struct>,
    now_unix: u64,
) -> Result<Option<Identity>, IdentityError> {
    // No entry under the key: jwt_authn verified nothing (e.g. `allow_missing`).
    let found = metadata
        .and_then(|m| m.get(&settings.jwt_authn_metadata_key))
        .map(|v| v.kind.as_ref());
    let claims;
    let verified = match found {
        None | Some(None) => Verified::Nothing,
        Some(Some(wire::Kind::Struct(found))) => {
            claims = StructClaims(found);
            Verified::Claims(&claims)
        }
        Some(Some(_)) => Verified::Malformed,
    };
    let identity = rules::identify(settings, verifier, headers, verified, now_unix)?;
    if let Some(identity) = identity.as_ref().filter(|i| i.dropped_groups > 0) {
        tracing::debug!(
            principal = identity.principal.id.as_deref().unwrap_or_default(),
            dropped_groups = identity.dropped_groups,
            "groups that x-nmp-principal-groups cannot carry were left out of the decision"
        );
    }
    Ok(identity)
}

/// Claims as `jwt_authn` hands them over: a protobuf `Struct`, read in place.
struct StructClaims<'a>(&'a wire::Struct);

impl Claims for StructClaims<'_> {
    fn claim(&self, name: &str) -> Claim<'_> {
        match self.0.get(name).map(|v| v.kind.as_ref()) {
            None => Claim::Missing,
            Some(None | Some(wire::Kind::Null(_))) => Claim::Null,
            Some(Some(wire::Kind::String(s))) => Claim::Str(s),
            Some(Some(wire::Kind::List(list))) => list
                .values
                .iter()
                .map(|v| match &v.kind {
                    Some(wire::Kind::String(s)) => Some(s.as_str()),
                    _ => None,
                })
                .collect::<Option<Vec<_>>>()
                .map_or(Claim::Wrong, Claim::List),
            Some(Some(_)) => Claim::Wrong,
        }
    }
}

/// Wall-clock unix seconds: what callers pass to [`identify`] as "now".
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Principal;
    use base64::Engine as _;

    // The core's details, as a client reads them.
    const INVALID_TOKEN: &str = "Invalid or expired token";
    const NO_SUBJECT: &str = "Token has no subject";
    const HEADER_ID: &str = "x-nmp-principal-id";
    const HEADER_EMAIL: &str = "x-nmp-principal-email";
    const HEADER_GROUPS: &str = "x-nmp-principal-groups";
    const HEADER_SCOPES: &str = "x-nmp-scopes";
    use base64::engine::general_purpose::{URL_SAFE, URL_SAFE_NO_PAD};
    use envoy_types::pb::envoy::config::core::v3::Metadata;
    use serde_json::json;
    use std::collections::HashMap;
    use std::sync::Arc;

    const NOW: u64 = 1_700_000_000;

    fn to_struct(j: &Json) -> wire::Struct {
        wire::Struct::from_json(j.as_object().unwrap())
    }

    /// The jwt_authn namespace struct with `claims` under the default payload key.
    fn meta(claims: Json) -> wire::Struct {
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
        m: Option<&wire::Struct>,
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
        let ns = struct_from_json(json!({"jwt_payload": {"sub": "a"}}).as_object().unwrap());
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

    const FIXTURE_ISSUER: &str = "https://idp.example.com";

    /// The fixture keys, trusted for FIXTURE_ISSUER.
    fn fixture_keys() -> (Arc<signed::IssuerKeys>, TokenVerifier) {
        let jwks = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/keys/jwks.json");
        let keyring = Arc::new(signed::IssuerKeys::new(FIXTURE_ISSUER, None));
        let jwks = serde_json::from_slice(&std::fs::read(jwks).unwrap()).unwrap();
        keyring.replace(signed::usable_keys(&jwks));
        let verifier = TokenVerifier::new(vec![keyring.clone()], None);
        (keyring, verifier)
    }

    /// An RS256 token signed with the fixture key `rsa.pem`, published as `kid`.
    fn sign(kid: &str, claims: Json) -> String {
        use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
        let pem = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/keys/rsa.pem");
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(kid.into());
        let key = EncodingKey::from_rsa_pem(&std::fs::read(pem).unwrap()).unwrap();
        signed::install_jwt_provider();
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
}
