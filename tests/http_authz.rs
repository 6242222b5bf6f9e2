//! The HTTP authorization mode (README "HTTP authorization mode") with real parts on loopback:
//! the nmp-authz binary, a real Envoy running envoy/envoy-http.yaml (Envoy's HTTP ext_authz
//! service), a real nginx (Debian's) running deploy/nginx/nginx.conf, and an upstream that
//! records every request.
//!
//! Covered: one table of decision cases through gRPC `Authorization/Check` and through the HTTP
//! endpoint in each of its three forms (Envoy, nginx, Traefik), with identical status, `x-nmp-*`
//! headers, challenge and body; which descriptions are trusted; the companion configs pass
//! `envoy --mode validate` / `nginx -t` as written and rendered; behind each gateway, client
//! `x-nmp-*` headers are stripped, nmp-authz's are delivered exactly once, 401/403 and
//! `/internal` never reach the upstream, what NMP serves without authorization reaches it with
//! no decision (exactly those paths: common::bypass), and nmp-authz down fails closed with 503.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;

use common::bypass::check_bypass;
use common::gateway::{
    Envoy, HTTP_MODE, Loopback, NmpAuthz, Recorded, Response, Upstream, get, render_http, request,
    template, unsigned_token, validate,
};
use common::nginx::{NGINX, Nginx, nginx_test, render_nginx};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};
use serde_json::{Value, json};

const PREFIX: &str = "/apis/auth/ext-authz";
const MODELS_DEFAULT: &str = "/apis/models/v2/workspaces/default/models";

/// Client-sent `x-nmp-*` headers that would make the caller an admin, as a client might spell
/// them, plus one with underscores.
const SPOOFED: &[(&str, &str)] = &[
    ("X-NMP-Authorized", "true"),
    ("X-NMP-Principal-Id", "admin"),
    ("X-Nmp-Principal-Email", "admin@example.com"),
    ("x-nmp-PRINCIPAL-groups", "admins"),
    ("X-NMP-Principal-On-Behalf-Of", "admin"),
    ("X-NMP-Principal-On-Behalf-Of-Email", "admin@example.com"),
    ("X-NMP-Scopes", "platform:write"),
    ("X_NMP_Principal_Id", "admin"),
];

// ---- the decision table, through gRPC and HTTP ----

/// A caller: the claims of the unsigned token it presents.
#[derive(Clone)]
struct Caller {
    sub: &'static str,
    email: Option<&'static str>,
    groups: &'static [&'static str],
    scope: Option<&'static str>,
}

fn caller(sub: &'static str) -> Caller {
    Caller {
        sub,
        email: None,
        groups: &[],
        scope: None,
    }
}

impl Caller {
    fn email(mut self, email: &'static str) -> Self {
        self.email = Some(email);
        self
    }
    fn groups(mut self, groups: &'static [&'static str]) -> Self {
        self.groups = groups;
        self
    }
    fn scope(mut self, scope: &'static str) -> Self {
        self.scope = Some(scope);
        self
    }
    fn token(&self) -> String {
        let mut extra = Vec::new();
        if let Some(email) = self.email {
            extra.push(("email", Value::from(email)));
        }
        if !self.groups.is_empty() {
            extra.push(("groups", json!(self.groups)));
        }
        if let Some(scope) = self.scope {
            extra.push(("scope", Value::from(scope)));
        }
        unsigned_token(self.sub, &extra)
    }
}

struct Case {
    name: &'static str,
    method: &'static str,
    path: &'static str,
    /// The request's headers besides the token (names as a client spells them).
    headers: Vec<(&'static str, String)>,
    status: u16,
}

fn case(
    name: &'static str,
    method: &'static str,
    path: &'static str,
    who: Option<Caller>,
    status: u16,
) -> Case {
    let headers = who
        .map(|w| vec![("Authorization", format!("Bearer {}", w.token()))])
        .unwrap_or_default();
    Case {
        name,
        method,
        path,
        headers,
        status,
    }
}

impl Case {
    fn with(mut self, name: &'static str, value: &str) -> Self {
        self.headers.push((name, value.to_string()));
        self
    }
    fn spoofing(mut self) -> Self {
        for (name, value) in SPOOFED.iter().filter(|(n, _)| !n.contains('_')) {
            self.headers.push((name, value.to_string()));
        }
        self
    }
}

/// Over tests/fixtures/decision/policy.yaml (the decision table's policy; see
/// tests/decision_table.rs for who holds what).
#[rustfmt::skip]
fn cases() -> Vec<Case> {
    let alice = || Some(caller("alice"));
    vec![
        case("health path, no identity", "GET", "/health/live", None, 200),
        case("no identity", "GET", "/apis/models/v2/workspaces/ws1/models", None, 401),
        case("spoofed principal headers are no identity", "GET", "/apis/models/v2/workspaces/ws1/models", None, 401).spoofing(),
        case("a token that does not parse", "GET", "/apis/models/v2/workspaces/ws1/models", None, 401).with("Authorization", "Bearer garbage"),
        case("held in the workspace", "GET", "/apis/models/v2/workspaces/ws1/models", alice(), 200),
        case("held, with spoofed headers removed", "POST", "/apis/models/v2/workspaces/ws1/models", alice(), 200).spoofing().with("X-Nmp-Anything-Else", "x"),
        case("not held in ws2", "POST", "/apis/models/v2/workspaces/ws2/models", alice(), 403),
        case("query stripped", "GET", "/apis/models/v2/workspaces/ws1/models?page=2&f=a/b", alice(), 200),
        case("decided on the decoded path", "GET", "/apis/models/v2/workspaces/ws%31/models", alice(), 200),
        case("binding by group", "POST", "/apis/models/v2/workspaces/ws1/models", Some(caller("carol").groups(&["other", "team-a"])), 200),
        case("binding by email", "GET", "/apis/models/v2/workspaces/ws1/models", Some(caller("bob").email("bob@example.com")), 200),
        case("matching scope", "GET", "/apis/models/v2/workspaces/ws1/models", Some(caller("alice").scope("openid models:read")), 200),
        case("scope mismatch", "GET", "/apis/models/v2/workspaces/ws1/models", Some(caller("alice").scope("models:write files:read")), 403),
        case("a permission as a scope", "GET", "/apis/models/v2/workspaces/ws1/models", Some(caller("alice").scope("models.read")), 400),
        case("an invalid principal id", "GET", "/apis/models/v2/workspaces/ws1/models", Some(caller("bad id!")), 400),
        case("service on `-`", "POST", "/apis/models/v2/workspaces/-/models", Some(caller("service:jobs")), 200),
        case("HEAD on `-`", "HEAD", "/apis/models/v2/workspaces/-/models", Some(caller("nobody")), 200),
        case("lower-case method", "get", "/apis/models/v2/workspaces/-/models", Some(caller("nobody")), 400),
        case("encoded dot segment", "GET", "/apis/models/v2/workspaces/ws2/%2e%2e/ws1/models", alice(), 400),
        case("empty segment", "GET", "/apis/models/v2/workspaces//models", alice(), 400),
        case("admin by email", "POST", "/apis/models/v2/workspaces/ws7/models", Some(caller("root").email("root@example.com").scope("files:read")), 200),
        case("deny: true beats the holder", "GET", "/apis/models/v2/workspaces/ws1/models/m1/weights", alice(), 403),
        case("human on an unmatched path", "GET", "/apis/unknown/v1/thing", alice(), 403),
        case("service on an unmatched path", "GET", "/apis/unknown/v1/thing", Some(caller("service:jobs")), 200),
    ]
}

/// What a gateway acts on, from either face: status, the headers it injects or returns
/// (`x-nmp-*`, the challenge, the content type, the headers to remove) and the body.
#[derive(Debug, PartialEq, Eq)]
struct Answer {
    status: u16,
    headers: BTreeMap<String, String>,
    body: String,
}

const HEADERS_TO_REMOVE: &str = "x-envoy-auth-headers-to-remove";

async fn grpc_answer(
    client: &mut AuthorizationClient<tonic::transport::Channel>,
    case: &Case,
) -> Answer {
    let mut headers = std::collections::HashMap::new();
    headers.insert("host".to_string(), "gateway.test".to_string());
    for (name, value) in &case.headers {
        headers.insert(name.to_ascii_lowercase(), value.clone());
    }
    let request = CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                http: Some(HttpRequest {
                    method: case.method.into(),
                    path: case.path.into(),
                    host: "gateway.test".into(),
                    headers,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    };
    let response = client
        .check(request)
        .await
        .expect("a CheckResponse")
        .into_inner();
    let pairs = |headers: &[envoy_types::pb::envoy::config::core::v3::HeaderValueOption]| {
        headers
            .iter()
            .filter_map(|h| h.header.as_ref())
            .map(|h| (h.key.to_ascii_lowercase(), h.value.clone()))
            .collect::<BTreeMap<_, _>>()
    };
    match response.http_response {
        Some(HttpResponse::OkResponse(ok)) => {
            let mut headers = pairs(&ok.headers);
            if !ok.headers_to_remove.is_empty() {
                headers.insert(HEADERS_TO_REMOVE.into(), ok.headers_to_remove.join(","));
            }
            Answer {
                status: 200,
                headers,
                body: String::new(),
            }
        }
        Some(HttpResponse::DeniedResponse(denied)) => Answer {
            status: denied.status.map(|s| s.code as u16).unwrap_or(0),
            headers: pairs(&denied.headers),
            body: denied.body,
        },
        other => panic!("{}: unexpected {other:?}", case.name),
    }
}

/// The three ways to describe a request to the HTTP endpoint.
#[derive(Clone, Copy, Debug)]
enum Form {
    Envoy,
    Nginx,
    Traefik,
}

fn http_answer(addr: SocketAddr, case: &Case, form: Form) -> (Answer, Response) {
    let mut headers: Vec<(&str, &str)> =
        case.headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
    let envoy_target = format!("{PREFIX}{}", case.path);
    let (method, target) = match form {
        Form::Envoy => (case.method, envoy_target.as_str()),
        Form::Nginx => {
            headers.extend([
                ("X-Original-Method", case.method),
                ("X-Original-URI", case.path),
            ]);
            ("GET", PREFIX)
        }
        Form::Traefik => {
            headers.extend([
                ("X-Forwarded-Method", case.method),
                ("X-Forwarded-Uri", case.path),
                ("X-Forwarded-Host", "gateway.test"),
            ]);
            ("GET", PREFIX)
        }
    };
    let response = request(addr, method, target, &headers);
    let keep = |name: &str| {
        (name.starts_with("x-nmp-") && name != "x-nmp-authz-body")
            || name == "www-authenticate"
            || name == HEADERS_TO_REMOVE
            || (name == "content-type" && response.status != 200)
    };
    let answer = Answer {
        status: response.status,
        headers: response
            .headers
            .iter()
            .filter(|(k, _)| keep(k))
            .cloned()
            .collect(),
        body: response.body.clone(),
    };
    (answer, response)
}

/// nmp-authz over the decision table's policy, unsigned tokens accepted, every form trusted.
fn table_config(policy: &str) -> String {
    let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(policy);
    format!(
        "auth:
  allow_unsigned_jwt: true
  bootstrap_bindings: false
policy:
  sources:
    - file: {}
http_authz:
  trusted_forwarded_headers: [envoy, nginx, traefik]
",
        file.display()
    )
}

fn run_table(authz: &NmpAuthz, cases: &[Case]) -> Vec<String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut client = runtime
        .block_on(AuthorizationClient::connect(format!(
            "http://{}",
            authz.grpc
        )))
        .expect("connect to nmp-authz");
    let mut failures = Vec::new();
    for case in cases {
        let grpc = runtime.block_on(grpc_answer(&mut client, case));
        if grpc.status != case.status {
            failures.push(format!(
                "{}: gRPC status {} (expected {})",
                case.name, grpc.status, case.status
            ));
        }
        for form in [Form::Envoy, Form::Nginx, Form::Traefik] {
            let (mut http, raw) = http_answer(authz.http, case, form);
            if matches!(form, Form::Envoy) && case.method == "HEAD" {
                // A HEAD answer has no body, whatever the server wrote.
                http.body = grpc.body.clone();
            }
            if http != grpc {
                failures.push(format!(
                    "{} ({form:?}): HTTP {http:?}\n    != gRPC {grpc:?}",
                    case.name
                ));
            }
            // The nginx form repeats a denial's body in a header nginx can read.
            let copy = raw.header("x-nmp-authz-body");
            match (form, grpc.status) {
                (Form::Nginx, 200) | (Form::Envoy | Form::Traefik, _) => {
                    if copy.is_some() {
                        failures.push(format!("{} ({form:?}): x-nmp-authz-body", case.name));
                    }
                }
                (Form::Nginx, _) => {
                    let same = copy
                        .and_then(|c| serde_json::from_str::<Value>(c).ok())
                        .is_some_and(|c| Some(c) == serde_json::from_str(&grpc.body).ok());
                    if !same {
                        failures.push(format!(
                            "{} (nginx): x-nmp-authz-body {copy:?} is not the body {:?}",
                            case.name, grpc.body
                        ));
                    }
                }
            }
        }
    }
    failures
}

#[test]
fn one_decision_table_through_grpc_check_and_the_http_endpoint() {
    let authz = NmpAuthz::start(&table_config("tests/fixtures/decision/policy.yaml"));
    let cases = cases();
    let mut failures = run_table(&authz, &cases);
    // No endpoints loaded: fail closed with 503 (health paths excepted), on both faces.
    let empty = NmpAuthz::start(&table_config("tests/fixtures/decision/no-endpoints.yaml"));
    let closed = [
        case(
            "no endpoints: health path",
            "GET",
            "/health/ready",
            None,
            200,
        ),
        case(
            "no endpoints: a token",
            "GET",
            "/apis/models/v2/workspaces/ws1/models",
            Some(caller("alice")),
            503,
        ),
        case(
            "no endpoints: admin",
            "GET",
            "/apis/x/v1/y",
            Some(caller("root")),
            503,
        ),
    ];
    failures.extend(run_table(&empty, &closed));
    assert!(
        failures.is_empty(),
        "{} of {} cases differ:\n{}",
        failures.len(),
        cases.len() + closed.len(),
        failures.join("\n")
    );
    // Every answer was counted once per face and form: 4 per case.
    let metrics = get(authz.http, "/metrics", &[]).body;
    let total: u64 = metrics
        .lines()
        .filter(|l| l.starts_with("nmp_authz_decisions_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert_eq!(total, 4 * cases.len() as u64, "{metrics}");
}

#[test]
fn only_trusted_descriptions_are_used() {
    // The default: only the Envoy form (the path after the prefix).
    let authz = NmpAuthz::quickstart();
    let alice = format!("Bearer {}", unsigned_token("alice@example.com", &[]));
    let nginx_form = [
        ("Authorization", alice.as_str()),
        ("X-Original-Method", "GET"),
        ("X-Original-URI", MODELS_DEFAULT),
    ];
    let expect_400 = |response: Response, says: &str, context: &str| {
        assert_eq!(response.status, 400, "{context}: {response:?}");
        assert_eq!(response.header("content-type"), Some("application/json"));
        let detail = response.json()["detail"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(detail.contains(says), "{context}: {detail}");
    };
    expect_400(
        request(authz.http, "GET", PREFIX, &nginx_form),
        "untrusted forms (nginx",
        "nginx form, not trusted",
    );
    expect_400(
        request(
            authz.http,
            "GET",
            PREFIX,
            &[
                ("Authorization", alice.as_str()),
                ("X-Forwarded-Method", "GET"),
                ("X-Forwarded-Uri", MODELS_DEFAULT),
            ],
        ),
        "untrusted forms (traefik",
        "traefik form, not trusted",
    );
    expect_400(
        request(
            authz.http,
            "GET",
            PREFIX,
            &[("Authorization", alice.as_str())],
        ),
        "nothing describes",
        "bare prefix",
    );
    // Untrusted describing headers next to a trusted description are ignored: the path after
    // the prefix is decided (team-a: alice holds nothing there).
    let response = request(
        authz.http,
        "GET",
        &format!("{PREFIX}/apis/models/v2/workspaces/team-a/models"),
        &nginx_form,
    );
    assert_eq!(response.status, 403, "{response:?}");
    // `/apis/auth/ext-authzX` is not under the prefix.
    let response = get(authz.http, &format!("{PREFIX}x{MODELS_DEFAULT}"), &[]);
    assert_eq!(response.status, 404, "{response:?}");

    // Two trusted descriptions in one request: refused, whichever was meant.
    let all = NmpAuthz::start(&table_config("tests/fixtures/decision/policy.yaml"));
    let token = format!("Bearer {}", caller("alice").token());
    expect_400(
        request(
            all.http,
            "GET",
            &format!("{PREFIX}/apis/models/v2/workspaces/ws2/models"),
            &[
                ("Authorization", token.as_str()),
                ("X-Original-Method", "GET"),
                ("X-Original-URI", "/apis/models/v2/workspaces/ws1/models"),
            ],
        ),
        "described twice",
        "envoy and nginx forms",
    );
    expect_400(
        request(
            all.http,
            "GET",
            PREFIX,
            &[
                ("Authorization", token.as_str()),
                ("X-Original-URI", "/apis/models/v2/workspaces/ws1/models"),
            ],
        ),
        "X-Original-Method is missing",
        "nginx form without a method",
    );

    // Turned off: the prefix is just an unknown path.
    let off = NmpAuthz::start("auth:\n  allow_unsigned_jwt: true\nhttp_authz:\n  enabled: false\n");
    let response = get(off.http, &format!("{PREFIX}{MODELS_DEFAULT}"), &[]);
    assert_eq!(response.status, 404, "{response:?}");
}

// ---- the companion configs ----

fn loopback(authz: SocketAddr, api: SocketAddr) -> Loopback {
    Loopback {
        authz_grpc: authz,
        authz_http: authz,
        api,
        idp: None,
    }
}

#[test]
fn companion_configs_pass_validation_as_written_and_rendered() {
    let written = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(HTTP_MODE);
    validate(&written).unwrap_or_else(|e| panic!("{e}"));
    let addr = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
    let rendered = render_http(&template(HTTP_MODE), &loopback(addr(40002), addr(40003)));
    for leftover in [
        "0.0.0.0",
        "address: nmp-",
        "uri: http://nmp-",
        "port_value: 8080",
        "port_value: 8000",
    ] {
        assert!(
            !rendered.contains(leftover),
            "{leftover:?} left in:\n{rendered}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("envoy-http.yaml");
    std::fs::write(&path, &rendered).unwrap();
    validate(&path).unwrap_or_else(|e| panic!("{e}"));

    // The HTTP service, fail closed, stripping first, the credential the only header sent.
    let config: Value = serde_saphyr::from_str(&template(HTTP_MODE)).unwrap();
    let hcm = &config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"];
    let filters = hcm["http_filters"].as_array().unwrap();
    let names: Vec<&str> = filters.iter().filter_map(|f| f["name"].as_str()).collect();
    assert_eq!(
        names,
        [
            "envoy.filters.http.header_mutation",
            "envoy.filters.http.ext_authz",
            "envoy.filters.http.router"
        ]
    );
    assert_eq!(
        filters[0]["typed_config"]["mutations"]["request_mutations"][0]["remove_on_match"]["key_matcher"],
        json!({"prefix": "x-nmp-", "ignore_case": true})
    );
    let authz = &filters[1]["typed_config"];
    assert_eq!(authz["failure_mode_allow"], false);
    assert_eq!(authz["status_on_error"]["code"], 503);
    assert_eq!(authz["http_service"]["path_prefix"], PREFIX);
    assert_eq!(
        authz["http_service"]["server_uri"]["cluster"],
        "nmp_authz_http"
    );
    assert_eq!(
        authz["allowed_headers"]["patterns"],
        json!([{"exact": "authorization", "ignore_case": true}])
    );
    assert!(authz.get("grpc_service").is_none());

    // nginx: the committed config, rendered, passes `nginx -t`.
    let dir = tempfile::tempdir().unwrap();
    let text = render_nginx(
        &template(NGINX),
        addr(40002),
        addr(40003),
        40004,
        dir.path(),
    );
    nginx_test(&text, dir.path()).unwrap_or_else(|e| panic!("{e}"));
}

// ---- behind a real gateway ----

/// The one request the upstream received, at `path`.
fn only_request(upstream: &Upstream, path: &str, context: &str) -> Recorded {
    let seen: Vec<Recorded> = upstream
        .requests()
        .into_iter()
        .filter(|r| r.path == path)
        .collect();
    assert_eq!(seen.len(), 1, "{context}: upstream saw {seen:?}");
    seen.into_iter().next().unwrap()
}

fn assert_denial(response: &Response, status: u16, detail: &str, context: &str) {
    assert_eq!(response.status, status, "{context}: {response:?}");
    assert_eq!(
        response.header("content-type"),
        Some("application/json"),
        "{context}: {response:?}"
    );
    assert_eq!(response.json(), json!({ "detail": detail }), "{context}");
    match status {
        401 => assert_eq!(
            response.header("www-authenticate"),
            Some("Bearer realm=\"nmp\""),
            "{context}: {response:?}"
        ),
        _ => assert_eq!(response.header("www-authenticate"), None, "{context}"),
    }
}

/// The same list for every gateway: spoofed headers stripped and nmp-authz's delivered
/// exactly once; 401/403 with NMP's body, never reaching the upstream; /internal 404.
fn gateway_decides(gateway: SocketAddr, upstream: &Upstream, name: &str) {
    let token = format!(
        "Bearer {}",
        unsigned_token(
            "alice@example.com",
            &[
                ("email", Value::from("alice@example.com")),
                ("groups", json!(["ml-team"])),
            ]
        )
    );
    let mut headers = vec![("Authorization", token.as_str())];
    headers.extend(SPOOFED.iter().copied());
    headers.push(("X-NMP-Principal-Id", "mallory"));
    let response = get(gateway, MODELS_DEFAULT, &headers);
    assert_eq!(response.status, 200, "{name}: {response:?}");
    assert_eq!(response.json(), json!({"upstream": true}), "{name}");
    let seen = only_request(upstream, MODELS_DEFAULT, name);
    let owned = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    assert_eq!(
        seen.nmp_headers(),
        owned(&[
            ("x-nmp-authorized", "true"),
            ("x-nmp-principal-email", "alice@example.com"),
            ("x-nmp-principal-groups", "ml-team"),
            ("x-nmp-principal-id", "alice@example.com"),
        ]),
        "{name}: the upstream's x-nmp-* headers"
    );
    assert_eq!(seen.values("authorization"), [token.as_str()], "{name}");

    let denied = [
        (MODELS_DEFAULT, None, 401, "Not authenticated"),
        (
            "/apis/models/v2/workspaces/team-a/models",
            Some(token.as_str()),
            403,
            "Permission denied: required permissions not held",
        ),
    ];
    for (path, auth, status, detail) in denied {
        let mut headers: Vec<(&str, &str)> = SPOOFED.to_vec();
        if let Some(auth) = auth {
            headers.push(("Authorization", auth));
        }
        let response = get(gateway, path, &headers);
        assert_denial(&response, status, detail, &format!("{name}: {path}"));
    }
    let ambiguous = get(
        gateway,
        "/apis/models/v2/workspaces/team-a%2fx/models",
        &[("Authorization", token.as_str())],
    );
    assert_eq!(ambiguous.status, 400, "{name}: {ambiguous:?}");

    for path in [
        "/internal",
        "/internal/x",
        "//internal/x",
        "/%69nternal/x",
        "/INTERNAL/x",
        "/a/../internal/x",
    ] {
        let response = get(gateway, path, &[("Authorization", token.as_str())]);
        assert_eq!(response.status, 404, "{name}: {path}: {response:?}");
        assert_eq!(
            response.json(),
            json!({"detail": "Not Found"}),
            "{name}: {path}"
        );
    }
    // Only the one allowed request reached the upstream.
    assert_eq!(
        upstream.requests().len(),
        1,
        "{name}: {:?}",
        upstream.requests()
    );
}

/// nmp-authz killed: every request is a 503 and none reaches the upstream.
fn gateway_fails_closed(
    gateway: SocketAddr,
    upstream: &Upstream,
    authz: &mut NmpAuthz,
    name: &str,
) {
    let before = upstream.requests().len();
    authz.kill();
    let token = format!("Bearer {}", unsigned_token("alice@example.com", &[]));
    for _ in 0..3 {
        let response = get(
            gateway,
            MODELS_DEFAULT,
            &[("Authorization", token.as_str())],
        );
        assert_eq!(response.status, 503, "{name}: {response:?}");
    }
    assert_eq!(
        upstream.requests().len(),
        before,
        "{name}: reached the upstream"
    );
}

#[test]
fn envoy_in_http_ext_authz_mode() {
    let upstream = Upstream::start();
    let mut authz = NmpAuthz::quickstart();
    let config = render_http(&template(HTTP_MODE), &loopback(authz.http, upstream.addr()));
    let envoy = Envoy::start(&config);
    gateway_decides(envoy.addr(), &upstream, "envoy (HTTP mode)");
    check_bypass(envoy.addr(), &upstream, "envoy (HTTP mode)");
    gateway_fails_closed(envoy.addr(), &upstream, &mut authz, "envoy (HTTP mode)");
}

#[test]
fn nginx_auth_request() {
    let upstream = Upstream::start();
    let mut authz = NmpAuthz::start(
        "auth:\n  allow_unsigned_jwt: true\nhttp_authz:\n  trusted_forwarded_headers: [nginx]\n",
    );
    let dir = tempfile::tempdir().unwrap();
    let port = common::process::free_port();
    let config = render_nginx(
        &template(NGINX),
        authz.http,
        upstream.addr(),
        port,
        dir.path(),
    );
    let nginx = Nginx::start(&config, port, dir.path());
    gateway_decides(nginx.addr(), &upstream, "nginx");
    check_bypass(nginx.addr(), &upstream, "nginx");

    // What nginx cannot strip: an x-nmp-* name it does not list reaches the upstream (README).
    let token = format!("Bearer {}", unsigned_token("alice@example.com", &[]));
    let path = "/apis/models/v2/workspaces/default/models?unlisted";
    let response = get(
        nginx.addr(),
        path,
        &[
            ("Authorization", token.as_str()),
            ("X-Nmp-Anything-Else", "spoofed"),
        ],
    );
    assert_eq!(response.status, 200, "{response:?}");
    let seen = only_request(&upstream, path, "nginx, unlisted x-nmp-*");
    assert_eq!(seen.values("x-nmp-anything-else"), ["spoofed"]);

    // nmp-authz's 503 (and its body) passes through nginx too.
    gateway_fails_closed(nginx.addr(), &upstream, &mut authz, "nginx");
    let response = get(
        nginx.addr(),
        MODELS_DEFAULT,
        &[("Authorization", token.as_str())],
    );
    assert_denial(
        &response,
        503,
        "Authorization service unavailable",
        "nginx, nmp-authz down",
    );
    drop(nginx);
}
