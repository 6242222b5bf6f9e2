//! Token attacks beyond the basic list (issue 7): nested JWTs, duplicate JSON keys, odd and
//! huge numbers in time claims, non-string subjects, tokens in query strings, and header values
//! with control characters. Each is refused (or, where a behaviour is legitimate, pinned) at
//! the identity layer and, where it matters, through the Check path.
//!
//! These are unit tests of the verifier: signed tokens are made here with the fixture keys in
//! `tests/fixtures/keys` (end-to-end tests take theirs from a real OpenID provider). Raw JSON
//! is signed byte for byte, so a token can carry what no serializer would write (two `sub`s).

mod common;

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::gateway::unsigned_token;
use common::*;
use envoy_types::pb::envoy::service::auth::v3::{CheckRequest, CheckResponse};
use jsonwebtoken::{Algorithm, EncodingKey};
use nmp_authz::config::Config;
use nmp_authz::identity::signed::{IssuerKeys, TokenVerifier, install_jwt_provider, usable_keys};
use nmp_authz::identity::{Credentials, Identity, IdentityError, IdentitySettings, identify};
use nmp_authz::server::State;
use nmp_authz::server::check::Answered;
use nmp_authz::server::check_request::Struct;
use prost::Message;
use serde_json::{Map, Value, json};

const ISSUER: &str = "https://idp.example.com/realms/nmp";
const NOW: u64 = 1_800_000_000;
const KEYS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/keys/");

fn verifier() -> TokenVerifier {
    let jwks = serde_json::from_slice(&std::fs::read(format!("{KEYS}jwks.json")).unwrap()).unwrap();
    let issuer = Arc::new(IssuerKeys::new(ISSUER, None));
    issuer.replace(usable_keys(&jwks));
    TokenVerifier::new(vec![issuer], None)
}

fn b64(text: &str) -> String {
    URL_SAFE_NO_PAD.encode(text)
}

/// `header.claims.signature` over the raw JSON texts, RS256 with the fixture key `rsa-1`.
fn sign_raw(header: &str, claims: &str) -> String {
    let key = EncodingKey::from_rsa_pem(&std::fs::read(format!("{KEYS}rsa.pem")).unwrap()).unwrap();
    let message = format!("{}.{}", b64(header), b64(claims));
    install_jwt_provider();
    let signature = jsonwebtoken::crypto::sign(message.as_bytes(), &key, Algorithm::RS256).unwrap();
    format!("{message}.{signature}")
}

const RS256: &str = r#"{"alg":"RS256","kid":"rsa-1","typ":"JWT"}"#;

/// Valid claims for `sub` as JSON text, with `extra` (`"k":v,` pairs) spliced in first.
fn claims_text(extra: &str) -> String {
    format!(
        r#"{{{extra}"iss":"{ISSUER}","sub":"alice","iat":{},"exp":{}}}"#,
        NOW - 10,
        NOW + 600
    )
}

fn unsigned_raw(header: &str, claims: &str) -> String {
    format!("{}.{}.", b64(header), b64(claims))
}

fn strict() -> IdentitySettings {
    IdentitySettings::default()
}

fn quickstart() -> IdentitySettings {
    IdentitySettings {
        allow_unsigned_jwt: true,
        ..IdentitySettings::default()
    }
}

type Outcome = Result<Option<Identity>, IdentityError>;

fn with_headers(
    settings: &IdentitySettings,
    v: &TokenVerifier,
    headers: &[(&str, &str)],
    metadata: Option<&Struct>,
) -> Outcome {
    let credentials = Credentials::from_headers(headers.iter().copied())?;
    identify(settings, v, &credentials, metadata, NOW)
}

fn bearer(settings: &IdentitySettings, v: &TokenVerifier, token: &str) -> Outcome {
    with_headers(
        settings,
        v,
        &[("authorization", &format!("Bearer {token}"))],
        None,
    )
}

fn accepted_as(outcome: Outcome, id: &str, context: &str) {
    match outcome {
        Ok(Some(identity)) => assert_eq!(identity.principal.id.as_deref(), Some(id), "{context}"),
        other => panic!("{context}: expected {id} to be identified, got {other:?}"),
    }
}

fn refused(outcome: Outcome, status: u16, detail: Option<&str>, context: &str) {
    refused_with(outcome, &[status], detail, context);
}

fn refused_with(outcome: Outcome, statuses: &[u16], detail: Option<&str>, context: &str) {
    let status = statuses[0];
    match outcome {
        Err(e) => {
            assert!(statuses.contains(&e.status()), "{context}: {e:?}");
            if let Some(detail) = detail {
                assert_eq!(e.detail(), detail, "{context}");
            }
        }
        Ok(other) => panic!("{context}: expected a {status}, got {other:?}"),
    }
}

#[test]
fn the_fixture_token_is_accepted() {
    // Every attack below changes one thing in this token.
    let v = verifier();
    accepted_as(
        bearer(&strict(), &v, &sign_raw(RS256, &claims_text(""))),
        "alice",
        "baseline signed",
    );
    accepted_as(
        bearer(
            &quickstart(),
            &v,
            &unsigned_raw(r#"{"alg":"none"}"#, &claims_text("")),
        ),
        "alice",
        "baseline unsigned",
    );
}

// ---- nested JWTs ----

#[test]
fn nested_jwts_are_refused() {
    let v = verifier();
    let inner = sign_raw(RS256, &claims_text(r#""role":"inner","#));
    const NESTED: &str = "Nested tokens are not accepted (cty)";

    // RFC 7519 §5.2: `cty: JWT` says the payload is another token. Signed or not, refused.
    for cty in [r#""JWT""#, r#""jwt""#, r#""application/jwt""#, "null"] {
        let header = format!(r#"{{"alg":"RS256","kid":"rsa-1","cty":{cty}}}"#);
        refused(
            bearer(&strict(), &v, &sign_raw(&header, &claims_text(""))),
            401,
            Some(NESTED),
            &format!("signed, cty {cty}"),
        );
        let header = format!(r#"{{"alg":"none","cty":{cty}}}"#);
        refused(
            bearer(&quickstart(), &v, &unsigned_raw(&header, &claims_text(""))),
            401,
            Some(NESTED),
            &format!("unsigned, cty {cty}"),
        );
    }
    // A payload that is itself a token (not a JSON object): malformed, with or without `cty`.
    let outer = format!("{}.{}", b64(RS256), b64(&inner));
    let key = EncodingKey::from_rsa_pem(&std::fs::read(format!("{KEYS}rsa.pem")).unwrap()).unwrap();
    install_jwt_provider();
    let signature = jsonwebtoken::crypto::sign(outer.as_bytes(), &key, Algorithm::RS256).unwrap();
    refused(
        bearer(&strict(), &v, &format!("{outer}.{signature}")),
        401,
        Some("Invalid or expired token"),
        "payload is a bare token",
    );
    // ...or a JSON string holding one.
    let as_string = sign_raw(RS256, &serde_json::to_string(&inner).unwrap());
    refused(
        bearer(&strict(), &v, &as_string),
        401,
        None,
        "payload is a JSON string",
    );
    // A token inside a claim is just data: the identity is the outer token's subject.
    let carrying = sign_raw(
        RS256,
        &claims_text(&format!(
            r#""token":{},"#,
            serde_json::to_string(&inner).unwrap()
        )),
    );
    accepted_as(
        bearer(&strict(), &v, &carrying),
        "alice",
        "token in a claim",
    );
    // A JWE (five segments) or a token with extra segments is not a JWS.
    refused(
        bearer(&strict(), &v, &format!("{inner}.{inner}")),
        401,
        None,
        "two tokens joined",
    );
}

// ---- duplicate JSON keys ----

#[test]
fn duplicate_keys_in_header_or_claims_are_refused() {
    let v = verifier();
    const DUPLICATE: &str = "Token has duplicate JSON keys";
    let headers = [
        r#"{"alg":"RS256","kid":"rsa-1","alg":"RS256"}"#,
        r#"{"alg":"HS256","kid":"rsa-1","alg":"RS256"}"#,
        r#"{"alg":"RS256","kid":"rsa-2","kid":"rsa-1"}"#,
        // The same key spelled with an escape is the same key.
        r#"{"alg":"RS256","kid":"rsa-1","\u0061lg":"RS256"}"#,
    ];
    for header in headers {
        refused(
            bearer(&strict(), &v, &sign_raw(header, &claims_text(""))),
            401,
            Some(DUPLICATE),
            header,
        );
    }
    let claims = [
        r#""sub":"admin","#,
        r#""s\u0075b":"admin","#,
        r#""email":"a@x.io","email":"b@x.io","#,
        r#""scope":"openid","scope":"platform:write","#,
        r#""groups":["eng"],"groups":["admins"],"#,
        r#""iss":"https://evil.example.com","#,
        r#""exp":1,"#,
        // Nested objects too.
        r#""ctx":{"a":1,"a":2},"#,
        r#""list":[{"k":1,"k":1}],"#,
    ];
    for extra in claims {
        let text = claims_text(extra);
        refused(
            bearer(&strict(), &v, &sign_raw(RS256, &text)),
            401,
            Some(DUPLICATE),
            &text,
        );
        refused(
            bearer(&quickstart(), &v, &unsigned_raw(r#"{"alg":"none"}"#, &text)),
            401,
            Some(DUPLICATE),
            &text,
        );
    }
    // Unsigned header duplicates: `{"alg":"RS256","alg":"none"}` must not turn into alg none.
    refused(
        bearer(
            &quickstart(),
            &v,
            &unsigned_raw(r#"{"alg":"RS256","alg":"none"}"#, &claims_text("")),
        ),
        401,
        Some(DUPLICATE),
        "unsigned alg twice",
    );
    // Next to verified jwt_authn claims, a bearer token with duplicate keys is refused too:
    // Envoy and we could read different subjects out of it.
    let metadata = Struct::from_json(
        json!({"jwt_payload": {"sub": "alice"}})
            .as_object()
            .unwrap(),
    );
    let token = sign_raw(RS256, &claims_text(r#""sub":"mallory","#));
    refused(
        with_headers(
            &strict(),
            &v,
            &[("authorization", &format!("Bearer {token}"))],
            Some(&metadata),
        ),
        401,
        Some(DUPLICATE),
        "metadata with a duplicate-key bearer token",
    );
    // Distinct keys that differ only in case are distinct keys (JSON is case-sensitive).
    accepted_as(
        bearer(
            &strict(),
            &v,
            &sign_raw(RS256, &claims_text(r#""Sub":"admin","#)),
        ),
        "alice",
        "Sub and sub",
    );
}

/// Why our own check is the one that counts: the verifier checks the signature over the
/// token's text and reads header and claims only from the maps the core decoded (no second
/// decode, in jsonwebtoken or elsewhere), so duplicate keys in a signed token are refused by the
/// core's parse or not at all. Pinned so that a verifier that reads the token again shows here.
#[test]
fn the_verifier_reads_claims_only_from_the_cores_parse() {
    let v = verifier();
    // The maps our parser would have produced (it refuses earlier; these stand in for it).
    let header: Map<String, Value> = serde_json::from_str(RS256).unwrap();
    let claims: Map<String, Value> = serde_json::from_str(&claims_text("")).unwrap();
    for duplicate in [
        r#""email":"a@x.io","email":"admin@x.io","#,
        r#""sub":"admin","#,
    ] {
        let token = sign_raw(RS256, &claims_text(duplicate));
        assert_eq!(v.verify(&token, &header, &claims), Ok(()), "{duplicate}");
        refused(
            bearer(&strict(), &v, &token),
            401,
            Some("Token has duplicate JSON keys"),
            duplicate,
        );
    }
}

// ---- time claims ----

#[test]
fn huge_negative_fractional_and_non_numeric_time_claims() {
    let v = verifier();
    let with_times = |exp: &str, iat: &str, nbf: Option<&str>| {
        let nbf = nbf.map_or(String::new(), |n| format!(r#","nbf":{n}"#));
        format!(r#"{{"iss":"{ISSUER}","sub":"alice","iat":{iat},"exp":{exp}{nbf}}}"#)
    };
    let iat = (NOW - 10).to_string();
    let accepted = [
        // Far-future expiries: DESIGN asks only for an `exp` that has not passed.
        ("1e308", iat.as_str(), None),
        ("18446744073709551616", &iat, None), // 2^64: beyond u64
        ("1.8e19", &iat, None),
        ("9223372036854775807", &iat, None), // i64::MAX
        (&format!("{}.5", NOW + 60), &iat, None),
        // An `iat` in the far past, an `nbf` long gone.
        (&format!("{}", NOW + 60), "-1e308", Some("-1e308")),
        (&format!("{}", NOW + 60), "0", Some("0.5")),
    ];
    for (exp, iat, nbf) in accepted {
        let text = with_times(exp, iat, nbf);
        accepted_as(
            bearer(&strict(), &v, &sign_raw(RS256, &text)),
            "alice",
            &text,
        );
        accepted_as(
            bearer(&quickstart(), &v, &unsigned_raw(r#"{"alg":"none"}"#, &text)),
            "alice",
            &text,
        );
    }
    let future = (NOW + 600).to_string();
    let refused_cases = [
        // Out of f64 range: not JSON serde_json accepts, so a malformed token.
        ("1e400", iat.as_str(), None),
        ("-1", &iat, None),
        ("-1e308", &iat, None),
        ("0", &iat, None),
        (r#""9999999999""#, &iat, None),
        ("true", &iat, None),
        ("null", &iat, None),
        (&format!("[{future}]"), &iat, None),
        (r#"{"n":1}"#, &iat, None),
        // Issued or valid only in the far future.
        (&future, "1e308", None),
        (&future, &iat, Some("1e308")),
        (&future, &iat, Some(r#""0""#)),
        (&future, r#""0""#, None),
        (&future, "1e999", None),
    ];
    for (exp, iat, nbf) in refused_cases {
        let text = with_times(exp, iat, nbf);
        refused(
            bearer(&strict(), &v, &sign_raw(RS256, &text)),
            401,
            None,
            &text,
        );
        refused(
            bearer(&quickstart(), &v, &unsigned_raw(r#"{"alg":"none"}"#, &text)),
            401,
            None,
            &text,
        );
    }
}

// ---- non-string subjects ----

#[test]
fn non_string_subjects_are_never_an_identity() {
    let v = verifier();
    let cases: [(&str, u16); 9] = [
        ("5", 400),
        ("5.5", 400),
        ("-0", 400),
        ("true", 400),
        (r#"{"id":"alice"}"#, 400),
        (r#"["alice"]"#, 400),
        ("[]", 400),
        ("null", 401),
        (r#""""#, 401),
    ];
    for (sub, status) in cases {
        let text = format!(
            r#"{{"iss":"{ISSUER}","sub":{sub},"iat":{},"exp":{}}}"#,
            NOW - 10,
            NOW + 600
        );
        // The same answer signed or not: the verifier reads no claims of its own. (When it ran
        // jsonwebtoken's decode, that refused a list or object `sub` first with a 401.)
        refused(
            bearer(&strict(), &v, &sign_raw(RS256, &text)),
            status,
            None,
            &format!("signed sub {sub}"),
        );
        refused(
            bearer(&quickstart(), &v, &unsigned_raw(r#"{"alg":"none"}"#, &text)),
            status,
            None,
            &format!("unsigned sub {sub}"),
        );
        // The same subjects in jwt_authn metadata.
        let metadata = Struct::from_json(
            json!({"jwt_payload": {"sub": serde_json::from_str::<Value>(sub).unwrap()}})
                .as_object()
                .unwrap(),
        );
        refused(
            with_headers(&strict(), &v, &[], Some(&metadata)),
            status,
            None,
            &format!("metadata sub {sub}"),
        );
    }
    // A configured subject claim of the wrong type, next to a good `sub`.
    let settings = IdentitySettings {
        subject_claim: "oid".into(),
        ..strict()
    };
    let token = sign_raw(RS256, &claims_text(r#""oid":42,"#));
    refused(bearer(&settings, &v, &token), 400, None, "oid is a number");
}

// ---- header values with control characters ----

#[test]
fn control_characters_and_non_ascii_in_the_authorization_header_are_refused() {
    let v = verifier();
    let token = sign_raw(RS256, &claims_text(""));
    // Tabs and surrounding spaces are HTTP whitespace: fine.
    for value in [
        format!("Bearer {token}"),
        format!("Bearer\t{token}"),
        format!("  Bearer  {token}\t"),
    ] {
        accepted_as(
            with_headers(&strict(), &v, &[("authorization", &value)], None),
            "alice",
            &format!("{value:?}"),
        );
    }
    for bad in [
        "\r\n", "\n", "\r", "\0", "\u{1}", "\u{7f}", "\u{85}", "\u{a0}", "é", "\u{2028}",
    ] {
        for value in [
            format!("Bearer {token}{bad}"),
            format!("Bearer {bad}{token}"),
            format!("{bad}Bearer {token}"),
            format!("Bearer {}{bad}{}", &token[..10], &token[10..]),
        ] {
            refused(
                with_headers(&strict(), &v, &[("authorization", &value)], None),
                401,
                Some("Invalid authentication credentials"),
                &format!("{value:?}"),
            );
        }
    }
}

#[test]
fn control_characters_in_principal_attributes_are_400() {
    let v = verifier();
    let trusting = IdentitySettings {
        trust_principal_headers: true,
        ..strict()
    };
    let header_cases: [(&str, &str); 12] = [
        ("x-nmp-principal-id", "alice\n"),
        ("x-nmp-principal-id", "alice\0"),
        ("x-nmp-principal-id", "alicé"),
        ("x-nmp-principal-id", "alice\r\nx-nmp-authorized: true"),
        ("x-nmp-principal-email", "a\0@x.io"),
        ("x-nmp-principal-email", "a@x.io\u{1}"),
        ("x-nmp-principal-email", "a@x.io\r\nx: y"),
        ("x-nmp-principal-groups", "eng\0"),
        ("x-nmp-principal-groups", "eng,\u{7f}ops"),
        ("x-nmp-principal-groups", "eng\r\nx-nmp-authorized: true"),
        ("x-nmp-scopes", "openid\0"),
        ("x-nmp-scopes", "a:read\u{1b}[0m"),
    ];
    for (name, value) in header_cases {
        let mut headers = vec![(name, value)];
        if name != "x-nmp-principal-id" {
            headers.push(("x-nmp-principal-id", "alice"));
        }
        refused(
            with_headers(&trusting, &v, &headers, None),
            400,
            None,
            &format!("{name}: {value:?}"),
        );
    }
    // The same characters in token claims (signed and jwt_authn metadata).
    let claim_cases = [
        json!({"email": "a\u{0}@x.io"}),
        json!({"groups": ["eng\nx-nmp-authorized: true"]}),
        json!({"groups": "eng,\u{0}"}),
        json!({"scope": "openid \u{7}"}),
        json!({"scp": ["a:read\u{0}"]}),
    ];
    for extra in claim_cases {
        let mut claims: Map<String, Value> = serde_json::from_str(&claims_text("")).unwrap();
        claims.extend(extra.as_object().unwrap().clone());
        let text = Value::Object(claims.clone()).to_string();
        refused(
            bearer(&strict(), &v, &sign_raw(RS256, &text)),
            400,
            None,
            &text,
        );
        let metadata = Struct::from_json(
            json!({"jwt_payload": Value::Object(claims)})
                .as_object()
                .unwrap(),
        );
        refused(
            with_headers(&strict(), &v, &[], Some(&metadata)),
            400,
            None,
            &format!("metadata {text}"),
        );
    }
    // Non-ASCII letters in an email or a group: NMP's services read header bytes as Latin-1
    // (and refuse such a group), so these headers cannot mean to them what they mean to us:
    // 400 (issue 14). nmp_identity.rs holds this to NMP's own parser.
    for (name, value) in [
        ("x-nmp-principal-email", "jürgen@example.com"),
        ("x-nmp-principal-groups", "équipe"),
    ] {
        refused(
            with_headers(
                &trusting,
                &v,
                &[("x-nmp-principal-id", "alice"), (name, value)],
                None,
            ),
            400,
            None,
            &format!("{name}: {value:?}"),
        );
    }
}

// ---- through the Check path ----

/// A Check in-process, its answer decoded as Envoy reads it.
async fn check(state: &State, request: &CheckRequest) -> (CheckResponse, Answered) {
    let (encoded, answered) = nmp_authz::server::check::check(state, request).await;
    let response = CheckResponse::decode(encoded.as_bytes()).expect("a CheckResponse");
    (response, answered)
}

fn quickstart_state() -> State {
    let mut config = Config::default();
    config.auth.allow_unsigned_jwt = true;
    config.identity.trust_principal_headers = true;
    State::new(&config, Some(policy(DECISION_POLICY)))
}

const MODELS: &str = "/apis/models/v2/workspaces/ws1/models";

#[tokio::test]
async fn tokens_in_query_strings_or_other_headers_are_never_an_identity() {
    let state = quickstart_state();
    let token = unsigned_token("alice", &[]);
    // The control: alice (Editor in ws1) may list models with the token in Authorization.
    let (ok, _) = check(
        &state,
        &check_request(
            "GET",
            MODELS,
            None,
            &[("authorization", &format!("Bearer {token}"))],
        ),
    )
    .await;
    expect_ok(&ok, Some("alice"), "token in Authorization").unwrap();

    for path in [
        format!("{MODELS}?access_token={token}"),
        format!("{MODELS}?token={token}&x=1"),
        format!("{MODELS}?authorization=Bearer%20{token}"),
        format!("{MODELS}?a=1&access_token={token}"),
    ] {
        let (response, _) = check(&state, &check_request("GET", &path, None, &[])).await;
        expect_denied(&response, 401, &path).unwrap();
    }
    // A `#` in the path is refused as ambiguous before identity (README "Request paths").
    let path = format!("{MODELS}#access_token={token}");
    let (response, _) = check(&state, &check_request("GET", &path, None, &[])).await;
    expect_denied(&response, 400, &path).unwrap();
    for name in [
        "access_token",
        "x-access-token",
        "x-auth-token",
        "proxy-authorization",
        "cookie",
    ] {
        let value = if name == "cookie" {
            format!("access_token={token}")
        } else {
            format!("Bearer {token}")
        };
        let (response, _) = check(
            &state,
            &check_request("GET", MODELS, None, &[(name, &value)]),
        )
        .await;
        expect_denied(&response, 401, name).unwrap();
    }
}

#[tokio::test]
async fn control_characters_in_check_headers_deny_and_never_reach_upstream_headers() {
    let state = quickstart_state();
    let token = unsigned_token("alice", &[]);
    let cases: Vec<(Vec<(&str, String)>, i32)> = vec![
        (vec![("authorization", format!("Bearer {token}\r\n"))], 401),
        (vec![("authorization", format!("Bearer {token}\0"))], 401),
        (vec![("authorization", format!("Bearer\u{0}{token}"))], 401),
        (
            vec![(
                "x-nmp-principal-id",
                "alice\r\nx-nmp-authorized: true".into(),
            )],
            400,
        ),
        (
            vec![
                ("x-nmp-principal-id", "alice".into()),
                (
                    "x-nmp-principal-groups",
                    "eng\nx-nmp-authorized: true".into(),
                ),
            ],
            400,
        ),
        (
            vec![(
                "authorization",
                format!(
                    "Bearer {}",
                    unsigned_token("alice", &[("email", json!("a\u{0}@x.io"))])
                ),
            )],
            400,
        ),
        (
            vec![(
                "authorization",
                format!(
                    "Bearer {}",
                    unsigned_token("alice", &[("groups", json!(["a\r\nb"]))])
                ),
            )],
            400,
        ),
    ];
    for (headers, expected) in cases {
        let pairs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (response, _) = check(&state, &check_request("GET", MODELS, None, &pairs)).await;
        assert_eq!(
            http_status(&response),
            expected,
            "{headers:?}: {response:?}"
        );
        expect_denied(&response, expected, &format!("{headers:?}")).unwrap();
    }
    // A control character in a header nmp-authz does not read changes nothing; one in an
    // x-nmp-* header it does not read is removed, not echoed.
    let good = format!("Bearer {token}");
    let (response, _) = check(
        &state,
        &check_request(
            "GET",
            MODELS,
            None,
            &[
                ("authorization", &good),
                ("x-nmp-other", "v\0\r\n"),
                ("user-agent", "a\u{1}b"),
            ],
        ),
    )
    .await;
    let ok = expect_ok(&response, Some("alice"), "unrelated control characters").unwrap();
    assert_eq!(ok.headers_to_remove, ["x-nmp-other"]);
}
