//! The bodies of the fuzz targets, as plain functions over bytes. `cargo fuzz` runs them from
//! `fuzz/fuzz_targets/*.rs`; `cargo test` runs them over the checked-in corpus in
//! `fuzz/corpus/<target>/` and the generated [`seeds`] (`tests/fuzz_regressions.rs` includes
//! this file by path), so every input that once failed stays tested without cargo-fuzz.
//!
//! Each body panics on a wrong outcome, not only on a crash: those are the oracles.
//!
//! This file may use only crates that nmp-authz itself depends on.

use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest, CheckResponse};
use nmp_authz::config::Config;
use nmp_authz::identity::signed::{IssuerKeys, TokenVerifier, install_jwt_provider, usable_keys};
use nmp_authz::identity::{self, Credentials, IdentitySettings, Source};
use nmp_authz::server::State;
use nmp_authz::server::check_request::CheckRequest as WireRequest;
use nmp_authz_core::policy::decide::HEALTH_PATHS;
use nmp_authz_core::policy::pdp::{self, Answer, Entrypoint};
use nmp_authz_core::policy::{
    BindingDefaults, CompiledPolicy, Format, PolicyDocument, Principal, Reason, SourceDocument,
    builtin,
};
use nmp_authz_envoy::gate::{Action, Gate};
use nmp_authz_envoy::policy::PolicyCell;
use prost::Message as _;
use serde_json::{Value, json};

/// A fuzz target's body: panics on a crash or a wrong outcome.
pub type Body = fn(&[u8]);

/// The fuzz targets, named as in `fuzz/fuzz_targets/` and `fuzz/corpus/`.
pub const TARGETS: [(&str, Body); 6] = [
    ("matching", matching),
    ("token", token),
    ("check_request", check_request),
    ("policy_load", policy_load),
    ("pdp_input", pdp_input),
    ("module_request", module_request),
];

/// The repository root (this file is compiled from the root package's tests and from `fuzz/`).
pub fn repo_root() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    match dir.file_name() {
        Some(name) if name == "fuzz" => dir.parent().unwrap_or(dir).to_path_buf(),
        _ => dir.to_path_buf(),
    }
}

/// Reads fuzz input as a sequence of choices; past the end every read is zero or empty.
struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn byte(&mut self) -> u8 {
        let (first, rest) = self.0.split_first().map_or((0, &[][..]), |(b, r)| (*b, r));
        self.0 = rest;
        first
    }
    fn pick<'t, T>(&mut self, items: &'t [T]) -> &'t T {
        &items[usize::from(self.byte()) % items.len()]
    }
    /// Bytes up to the next 0xFF (consumed) or the end.
    fn chunk(&mut self) -> &'a [u8] {
        let end = self
            .0
            .iter()
            .position(|b| *b == 0xFF)
            .unwrap_or(self.0.len());
        let chunk = &self.0[..end];
        self.0 = &self.0[(end + 1).min(self.0.len())..];
        chunk
    }
    fn text(&mut self) -> String {
        String::from_utf8_lossy(self.chunk()).into_owned()
    }
    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.0)
    }
}

fn is_health(path: &str) -> bool {
    HEALTH_PATHS.contains(&path)
}

// ---- matching: allow() over the built-in and NMP catalogs ----

struct Catalog {
    policy: CompiledPolicy,
    patterns: Vec<String>,
}

/// The built-in catalog and, when `../shared` has it, NMP's own document, each with the
/// bootstrap bindings, `admin@example.com` as admin, and bindings for the callers below.
static CATALOGS: LazyLock<Vec<Catalog>> = LazyLock::new(|| {
    let mut docs = vec![builtin::builtin_document()];
    let nmp = repo_root().join("../shared/nmp/static-authz.yaml");
    if let Ok(text) = std::fs::read_to_string(nmp) {
        docs.push(PolicyDocument::parse(&text, Format::Yaml).expect("NMP's document parses"));
    }
    docs.into_iter()
        .map(|mut doc| {
            doc.bind("alice", "ws1", &["Editor"]);
            doc.bind("eng", "ws2", &["Viewer"]);
            doc.bind("service:jobs", "ws1", &["Viewer"]);
            let patterns = doc.authz.endpoints.keys().cloned().collect();
            let defaults = BindingDefaults {
                admin_email: Some("admin@example.com".into()),
                ..BindingDefaults::default()
            };
            let policy = CompiledPolicy::build(doc, &defaults, "fuzz").expect("catalog compiles");
            Catalog { policy, patterns }
        })
        .collect()
});

fn callers() -> Vec<Option<Principal>> {
    let with = |id: &str, email: Option<&str>, groups: &[&str]| Principal {
        id: Some(id.into()),
        email: email.map(Into::into),
        groups: groups.iter().map(|g| g.to_string()).collect(),
        scopes: Vec::new(),
    };
    vec![
        None,
        Some(with("alice", Some("alice@example.com"), &[])),
        Some(with("bob", None, &["eng"])),
        Some(with("root", Some("admin@example.com"), &[])),
        Some(with("service:jobs", None, &[])),
        Some(with("service:eval", None, &[])),
        Some(Principal {
            id: None,
            email: Some("admin@example.com".into()),
            ..Principal::default()
        }),
    ]
}

const METHODS: [&str; 10] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "get", "", "CONNECT",
];

/// Deny reasons that apply to PlatformAdmin (DESIGN: deny overrides allow, even PlatformAdmin
/// unless stated).
const ADMIN_DENIALS: [Reason; 6] = [
    Reason::NoEndpointsLoaded,
    Reason::EndpointDenied,
    Reason::DeniedPluginPrefix,
    Reason::SecretAccessNotService,
    Reason::BundleAccess,
    Reason::PrincipalOnlyRoute,
];

/// Arbitrary method and path against a real catalog: never panics; the same input decides the
/// same twice; a query never changes the decision (outside the health paths, which NMP
/// compares with their query); nobody is allowed outside the health paths; PlatformAdmin is
/// denied only by a deny rule that applies to it.
pub fn matching(data: &[u8]) {
    let mut input = Input(data);
    let catalog = input.pick(&CATALOGS);
    let callers = callers();
    let who = input.pick(&callers).clone();
    let method = match input.byte() % 4 {
        0 => input.text(),
        _ => input.pick(&METHODS).to_string(),
    };
    // Either a raw path, or a catalog pattern with its placeholders replaced by fuzz text.
    let path = match input.byte() % 3 {
        0 => input.text(),
        _ => {
            let pattern = input.pick(&catalog.patterns).clone();
            let mut filled = String::new();
            for (i, segment) in pattern.split('/').enumerate() {
                if i > 0 {
                    filled.push('/');
                }
                if segment.starts_with('{') {
                    filled.push_str(&input.text());
                } else {
                    filled.push_str(segment);
                }
            }
            filled.push_str(&input.text());
            filled
        }
    };
    let query = input.text();
    let policy = &catalog.policy;

    let decision = policy.allow(who.as_ref(), &method, &path);
    assert_eq!(
        decision,
        policy.allow(who.as_ref(), &method, &path),
        "not deterministic"
    );
    if who.is_none() || who.as_ref().is_some_and(|p| p.id.is_none()) {
        assert!(
            !decision.allowed || is_health(&path),
            "{method} {path:?} allowed with no identity: {decision:?}"
        );
    }
    let base = path.split('?').next().unwrap_or_default();
    if !is_health(base) {
        let plain = policy.allow(who.as_ref(), &method, base);
        let with_query = format!("{base}?{query}");
        assert_eq!(decision, plain, "{method} {path:?} vs {base:?}");
        assert_eq!(
            plain,
            policy.allow(who.as_ref(), &method, &with_query),
            "{method} {base:?} vs {with_query:?}"
        );
    }
    if let Some(ws) = &decision.workspace {
        assert!(
            base.split('/').any(|s| s == ws),
            "workspace {ws:?} is not a segment of {base:?}"
        );
    }
    let admin = Principal {
        email: Some("admin@example.com".into()),
        ..Principal::with_id(if method.len() % 2 == 0 {
            "root"
        } else {
            "service:root"
        })
    };
    let d = policy.allow(Some(&admin), &method, &path);
    assert!(
        d.allowed || ADMIN_DENIALS.contains(&d.reason),
        "{method} {path:?} denied to PlatformAdmin: {d:?}"
    );
}

// ---- token: the bearer token path of identify() ----

const ISSUER: &str = "https://idp.example.com/realms/nmp";
/// The time every token body runs at (seeds expire ten minutes later).
pub const NOW: u64 = 1_800_000_000;

struct Tokens {
    verifier: TokenVerifier,
    /// Tokens the fixture keys signed for `alice`: the only ones a strict identify may accept.
    signed: Vec<String>,
}

static TOKENS: LazyLock<Tokens> = LazyLock::new(|| {
    use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
    let keys = repo_root().join("tests/fixtures/keys");
    let read = |name: &str| std::fs::read(keys.join(name)).expect("fixture key");
    let jwks = serde_json::from_slice(&read("jwks.json")).expect("fixture JWKS");
    let issuer = Arc::new(IssuerKeys::new(ISSUER, None));
    issuer.replace(usable_keys(&jwks));
    let verifier = TokenVerifier::new(vec![issuer], None);
    // Signing below goes through jsonwebtoken's provider (verifying does not).
    install_jwt_provider();
    let claims = json!({"iss": ISSUER, "sub": "alice", "email": "alice@example.com",
        "groups": ["eng"], "scope": "openid models:read", "iat": NOW - 10, "exp": NOW + 600});
    let header = |alg, kid: &str| Header {
        kid: Some(kid.into()),
        ..Header::new(alg)
    };
    let rsa = EncodingKey::from_rsa_pem(&read("rsa.pem")).expect("rsa.pem");
    let ec = EncodingKey::from_ec_pem(&read("ec.pem")).expect("ec.pem");
    let signed = vec![
        encode(&header(Algorithm::RS256, "rsa-1"), &claims, &rsa).expect("sign"),
        encode(&header(Algorithm::ES256, "ec-1"), &claims, &ec).expect("sign"),
    ];
    Tokens { verifier, signed }
});

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The token part of an `Authorization` value as identify reads it.
fn bearer_part(value: &str) -> &str {
    let value = value.trim();
    value
        .split_once(char::is_whitespace)
        .map_or("", |(_, t)| t.trim())
}

/// Arbitrary `Authorization` values (raw, mutated signed tokens, or built from fuzzed JSON):
/// identify never panics; with OIDC only, nothing but the exact tokens the fixture keys
/// signed is an identity; in quickstart an accepted token that is not one of them is an
/// `alg: none` token with an empty signature, and its principal passes validation.
pub fn token(data: &[u8]) {
    let tokens = &*TOKENS;
    let mut input = Input(data);
    let value = match input.byte() % 4 {
        0 => input.text(),
        1 => {
            let mut bytes = input.pick(&tokens.signed).clone().into_bytes();
            // Edits: (position, byte) pairs; 0xFE as the byte truncates there.
            while let [at, b, ..] = *input.0 {
                input.0 = &input.0[2..];
                let at = usize::from(at) * 7 % bytes.len().max(1);
                match b {
                    0xFE => bytes.truncate(at),
                    _ if at < bytes.len() => bytes[at] = b,
                    _ => bytes.push(b),
                }
            }
            format!("Bearer {}", String::from_utf8_lossy(&bytes))
        }
        2 => {
            let header = input.chunk();
            let claims = input.chunk();
            let signature = input.text();
            format!("Bearer {}.{}.{signature}", b64(header), b64(claims))
        }
        _ => {
            // A real header and signature around fuzzed claims.
            let seed = input.pick(&tokens.signed);
            let mut parts = seed.split('.');
            let (header, _, signature) = (parts.next(), parts.next(), parts.next());
            let claims = input.rest();
            format!(
                "Bearer {}.{}.{}",
                header.unwrap_or_default(),
                b64(claims),
                signature.unwrap_or_default()
            )
        }
    };
    let credentials = match Credentials::from_headers([("authorization", value.as_str())]) {
        Ok(c) => c,
        Err(_) => return,
    };
    let strict = IdentitySettings::default();
    if let Ok(Some(who)) = identity::identify(&strict, &tokens.verifier, &credentials, None, NOW) {
        let token = bearer_part(&value);
        assert!(
            tokens.signed.iter().any(|t| t == token),
            "accepted a token the fixture keys did not sign: {value:?} as {who:?}"
        );
        assert_eq!(who.principal.id.as_deref(), Some("alice"));
    }
    let quickstart = IdentitySettings {
        allow_unsigned_jwt: true,
        ..IdentitySettings::default()
    };
    if let Ok(Some(who)) =
        identity::identify(&quickstart, &tokens.verifier, &credentials, None, NOW)
    {
        assert_eq!(who.source, Source::BearerToken);
        assert!(who.principal.id.as_deref().is_some_and(|id| !id.is_empty()));
        identity::validate_principal(&who.principal).expect("accepted principal is valid");
        let token = bearer_part(&value);
        if !tokens.signed.iter().any(|t| t == token) {
            let mut parts = token.split('.');
            let header = parts.next().and_then(|h| {
                URL_SAFE_NO_PAD
                    .decode(h)
                    .ok()
                    .or_else(|| base64::engine::general_purpose::URL_SAFE.decode(h).ok())
            });
            let header: Option<Value> = header.and_then(|h| serde_json::from_slice(&h).ok());
            assert_eq!(
                header.as_ref().and_then(|h| h.get("alg")),
                Some(&json!("none")),
                "accepted a signed-looking token that is not a fixture token: {value:?}"
            );
            assert_eq!(parts.nth(1), Some(""), "unsigned token with a signature");
        }
    }
}

// ---- check_request: the whole Check over decoded or built CheckRequests ----

struct Checks {
    runtime: tokio::runtime::Runtime,
    /// Quickstart-like; trusting principal headers; authorization off; no policy loaded.
    states: Vec<State>,
    /// The configuration of each state.
    configs: Vec<Config>,
}

static CHECKS: LazyLock<Checks> = LazyLock::new(|| {
    let builtin = || {
        let defaults = BindingDefaults {
            admin_email: Some("admin@example.com".into()),
            ..BindingDefaults::default()
        };
        CompiledPolicy::build(builtin::builtin_document(), &defaults, "fuzz").expect("builtin")
    };
    let mut quickstart = Config::default();
    quickstart.auth.allow_unsigned_jwt = true;
    let mut trusting = quickstart.clone();
    trusting.identity.trust_principal_headers = true;
    let mut off = quickstart.clone();
    off.auth.enabled = false;
    let configs = vec![quickstart.clone(), trusting, off, quickstart];
    let states = configs
        .iter()
        .enumerate()
        .map(|(i, config)| State::new(config, (i < 3).then(builtin)))
        .collect();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    Checks {
        runtime,
        states,
        configs,
    }
});

/// A CheckRequest from fuzz bytes: method, path, headers (name/value chunks) and optional
/// jwt_authn claims (a JSON object chunk).
fn built_request(input: &mut Input<'_>) -> CheckRequest {
    let method = input.pick(&METHODS).to_string();
    let path = input.text();
    let mut headers = std::collections::HashMap::new();
    for _ in 0..input.byte() % 5 {
        let names = [
            "authorization",
            "x-nmp-principal-id",
            "x-nmp-principal-email",
            "x-nmp-principal-groups",
            "x-nmp-scopes",
            "x-nmp-authorized",
            "Authorization",
            "x-nmp-other",
        ];
        let name = input.pick(&names).to_string();
        let value = input.text();
        headers.insert(name, value);
    }
    let metadata_context = serde_json::from_slice::<Value>(input.chunk())
        .ok()
        .and_then(|v| v.as_object().cloned())
        .map(|claims| {
            let namespace = identity::struct_from_json(
                json!({"jwt_payload": Value::Object(claims)})
                    .as_object()
                    .expect("an object"),
            );
            envoy_types::pb::envoy::config::core::v3::Metadata {
                filter_metadata: [(identity::JWT_AUTHN_NAMESPACE.to_string(), namespace)].into(),
                ..Default::default()
            }
        });
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                http: Some(HttpRequest {
                    method,
                    path,
                    headers,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            metadata_context,
            ..Default::default()
        }),
    }
}

/// Arbitrary CheckRequests (protobuf bytes, or built from fuzz choices) through `check`:
/// never panics; a request without a method or a `/` path is a 400; with authorization on,
/// an allow outside the health paths names a principal; nothing is allowed without policy
/// data; an allow's headers never carry a control character and are never also removed; a
/// denial is a 400/401/403/503 with a JSON `detail`.
pub fn check_request(data: &[u8]) {
    let checks = &*CHECKS;
    let mut input = Input(data);
    let which = usize::from(input.byte()) % checks.states.len();
    let state = &checks.states[which];
    let request = if input.byte() % 2 == 0 {
        let bytes = input.rest();
        // The gRPC face reads Envoy's bytes with a decoder of its own (only the fields it
        // needs): it must accept whatever envoy-types' message accepts.
        let wire = WireRequest::decode(bytes).ok();
        match CheckRequest::decode(bytes) {
            Ok(r) => {
                assert!(
                    wire.is_some(),
                    "envoy-types decodes what the gRPC face refuses"
                );
                r
            }
            Err(_) => {
                // What only the face's decoder accepts (a bad field it skips) is still
                // answered, and never allowed without a method and a path.
                if let Some(wire) = wire {
                    let (_, answered) =
                        checks
                            .runtime
                            .block_on(nmp_authz::server::check::check_with_metadata(
                                state, &wire, None,
                            ));
                    let http = wire.http();
                    if http.is_none_or(|h| h.method.is_empty() || !h.path.starts_with('/')) {
                        assert_eq!(answered.status.http(), 400, "{answered:?}");
                    }
                }
                return;
            }
        }
    } else {
        built_request(&mut input)
    };
    let (encoded, answered) = checks
        .runtime
        .block_on(nmp_authz::server::check::check(state, &request));
    // As Envoy reads it: whatever was written must decode.
    let response = CheckResponse::decode(encoded.as_bytes()).expect("a CheckResponse decodes");
    let status = answered.status.http();
    let http = request
        .attributes
        .as_ref()
        .and_then(|a| a.request.as_ref())
        .and_then(|r| r.http.as_ref());
    let malformed = http.is_none_or(|h| h.method.is_empty() || !h.path.starts_with('/'));
    let path = http.map_or("", |h| h.path.as_str());
    verify_response(&response, status, &request);
    if malformed {
        assert_eq!(status, 400, "malformed request answered {answered:?}");
    }
    if status == 200 && state.auth_enabled {
        assert!(
            state.policy.load().is_some(),
            "allowed without policy data: {request:?}"
        );
        assert!(
            is_health(path) || principal_header(&response).is_some(),
            "allowed {path:?} without naming a principal: {answered:?}"
        );
    }
}

fn principal_header(response: &CheckResponse) -> Option<&str> {
    let Some(HttpResponse::OkResponse(ok)) = &response.http_response else {
        return None;
    };
    ok.headers
        .iter()
        .filter_map(|h| h.header.as_ref())
        .find(|h| h.key == "x-nmp-principal-id")
        .map(|h| h.value.as_str())
}

fn verify_response(response: &CheckResponse, status: u16, request: &CheckRequest) {
    match &response.http_response {
        Some(HttpResponse::OkResponse(ok)) => {
            assert_eq!(status, 200);
            for h in ok.headers.iter().filter_map(|h| h.header.as_ref()) {
                assert!(
                    !h.value.chars().any(char::is_control),
                    "header {}: {:?} carries a control character ({request:?})",
                    h.key,
                    h.value
                );
                assert!(
                    !ok.headers_to_remove.contains(&h.key),
                    "{} both set and removed",
                    h.key
                );
            }
        }
        Some(HttpResponse::DeniedResponse(denied)) => {
            let code = denied.status.as_ref().map_or(0, |s| s.code);
            assert!(
                [400, 401, 403, 503].contains(&code) && i32::from(status) == code,
                "denied with {code} / {status}"
            );
            let body: Value = serde_json::from_str(&denied.body).expect("JSON body");
            assert!(body["detail"].is_string(), "no detail in {body}");
        }
        other => panic!("neither allowed nor denied: {other:?}"),
    }
}

// ---- module_request: the Envoy module's request entry ----

/// The module's gates over the same configurations and policies as [`CHECKS`]' states.
static GATES: LazyLock<Vec<Gate>> = LazyLock::new(|| {
    let checks = &*CHECKS;
    checks
        .configs
        .iter()
        .zip(&checks.states)
        .map(|(config, state)| {
            let cell = PolicyCell::default();
            cell.policy.store(state.policy.load_full());
            Gate::new(config, Arc::new(cell))
        })
        .collect()
});

/// The Envoy module's request entry (`Gate::decide`) over headers as Envoy hands them over
/// (bytes, `:method` and `:path` among them): never panics; an allow's headers carry no control
/// character, are never also removed, and every other inbound `x-nmp-*` is removed; a denial
/// is a 400/401/403/503 with a JSON `detail`; a request without a method or a `/` path is a
/// 400; and whenever a CheckRequest can carry the same request (UTF-8, each name once), the
/// answer is the gRPC Check's: status, headers set and removed, a denial's body.
pub fn module_request(data: &[u8]) {
    let checks = &*CHECKS;
    let mut input = Input(data);
    let which = usize::from(input.byte()) % checks.states.len();
    let (state, gate) = (&checks.states[which], &GATES[which]);
    let names: [&[u8]; 9] = [
        b"authorization",
        b"x-nmp-principal-id",
        b"x-nmp-principal-email",
        b"x-nmp-principal-groups",
        b"x-nmp-scopes",
        b"x-nmp-authorized",
        b"X-NMP-Other",
        b":path",
        b"accept",
    ];
    let method = input.chunk();
    let path = input.chunk();
    let mut headers: Vec<(&[u8], &[u8])> = vec![(&b":method"[..], method), (&b":path"[..], path)];
    for _ in 0..input.byte() % 6 {
        let name = *input.pick(&names);
        headers.push((name, input.chunk()));
    }
    let answer = gate.decide(&headers, identity::unix_now());
    let inbound: Vec<String> = headers
        .iter()
        .map(|(k, _)| String::from_utf8_lossy(k).to_ascii_lowercase())
        .collect();
    match &answer.action {
        Action::Continue { set, remove } => {
            assert_eq!(answer.status.http(), 200);
            for (name, value) in set {
                assert!(!value.chars().any(char::is_control), "{name}: {value:?}");
                assert!(!remove.iter().any(|r| r == name), "{name} set and removed");
            }
            for name in inbound.iter().filter(|n| n.starts_with("x-nmp-")) {
                assert!(
                    set.iter().any(|(k, _)| k == name) || remove.contains(name),
                    "inbound {name} neither set nor removed"
                );
            }
        }
        Action::Respond {
            status,
            headers,
            body,
        } => {
            assert!([400, 401, 403, 503].contains(status), "{status}");
            assert!(headers.contains(&("content-type", "application/json".into())));
            let body: Value = serde_json::from_str(body).expect("JSON body");
            assert!(body["detail"].is_string(), "{body}");
        }
    }
    let text = |b: &[u8]| std::str::from_utf8(b).ok().map(str::to_owned);
    let pseudo = |name: &[u8]| {
        let mut values = headers.iter().filter(|(k, _)| *k == name);
        match (values.next(), values.next()) {
            (Some((_, v)), None) => Some(*v),
            _ => None,
        }
    };
    let (Some(method), Some(path)) = (pseudo(b":method"), pseudo(b":path")) else {
        assert_eq!(answer.status.http(), 400, "no single :method and :path");
        return;
    };
    let mut map = std::collections::HashMap::new();
    for (name, value) in headers.iter().filter(|(k, _)| !k.starts_with(b":")) {
        let (Some(name), Some(value)) = (text(name), text(value)) else {
            return;
        };
        if map.insert(name.to_ascii_lowercase(), value).is_some() {
            return;
        }
    }
    let (Some(method), Some(path)) = (text(method), text(path)) else {
        return;
    };
    let request = CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                http: Some(HttpRequest {
                    method,
                    path,
                    headers: map,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    };
    let (encoded, answered) = checks
        .runtime
        .block_on(nmp_authz::server::check::check(state, &request));
    let response = CheckResponse::decode(encoded.as_bytes()).expect("a CheckResponse decodes");
    assert_eq!(
        answer.status, answered.status,
        "module {answer:?}, Check {response:?}"
    );
    assert_eq!(answer.outcome, answered.outcome);
    match (&answer.action, &response.http_response) {
        (Action::Continue { set, remove }, Some(HttpResponse::OkResponse(ok))) => {
            let check_set: Vec<(String, String)> = ok
                .headers
                .iter()
                .filter_map(|h| h.header.as_ref())
                .map(|h| (h.key.clone(), h.value.clone()))
                .collect();
            let module_set: Vec<(String, String)> = set
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect();
            assert_eq!(module_set, check_set);
            assert_eq!(remove, &ok.headers_to_remove);
        }
        (Action::Respond { body, .. }, Some(HttpResponse::DeniedResponse(denied))) => {
            assert_eq!(body, &denied.body);
        }
        (module, check) => panic!("module {module:?}, Check {check:?}"),
    }
}

// ---- policy_load: documents and bundles ----

/// A gzip tar holding `data.json` (and `.manifest`), as NMP's bundle endpoint serves it.
pub fn bundle_with(data_json: &[u8]) -> Vec<u8> {
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    for (name, bytes) in [
        (".manifest", &br#"{"revision":"fuzz"}"#[..]),
        ("data.json", data_json),
    ] {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder
            .append_data(&mut header, name, bytes)
            .expect("in-memory tar");
    }
    builder
        .into_inner()
        .and_then(|gz| gz.finish())
        .expect("in-memory gzip")
}

/// Arbitrary YAML, JSON, bundle bytes, or JSON wrapped into a real bundle: parsing and
/// compiling return a document or a clean error, never panic; a document read straight into
/// its compact form loads as the generic reading loads it (the same error, or the same
/// bindings); what compiles then decides (every endpoint pattern, literally, for a few
/// callers) without panicking, and with no endpoints denies everything but the health paths.
pub fn policy_load(data: &[u8]) {
    let mut input = Input(data);
    let mode = input.byte() % 4;
    let bytes = input.rest();
    let defaults = BindingDefaults {
        bootstrap_bindings: false,
        default_workspace: "default".into(),
        admin_email: None,
    };
    let parsed = match mode {
        0 | 1 => {
            let format = [Format::Yaml, Format::Json][usize::from(mode)];
            let text = String::from_utf8_lossy(bytes);
            let direct = SourceDocument::parse(&text, format).map_err(|e| e.to_string());
            let generic = PolicyDocument::parse(&text, format).map_err(|e| e.to_string());
            same_load(&direct, &generic.map(SourceDocument::from), &defaults);
            direct
        }
        2 => nmp_authz::sources::parse_bundle(bytes),
        _ => nmp_authz::sources::parse_bundle(&bundle_with(bytes)),
    };
    let Ok(doc) = parsed else { return };
    let patterns: Vec<String> = doc.document.authz.endpoints.keys().cloned().collect();
    let Ok(policy) = CompiledPolicy::build_layers(&[&doc], &defaults, "fuzz") else {
        return;
    };
    let callers = callers();
    for pattern in patterns.iter().take(64) {
        for who in &callers {
            for method in ["GET", "POST"] {
                let d = policy.allow(who.as_ref(), method, pattern);
                assert!(!d.allowed || who.is_some() || is_health(pattern));
                if let Some(p) = who {
                    let _ = policy.has_permissions(p, "ws1", &["a.read"]);
                    let _ = policy.has_role(p, "ws1", "Editor");
                }
            }
        }
    }
    if patterns.is_empty() {
        let d = policy.allow(callers[1].as_ref(), "GET", "/apis/x");
        assert_eq!(d.reason, Reason::NoEndpointsLoaded);
    }
}

/// Two readings of one text load alike: the same error, or policies with the same bindings.
fn same_load(
    a: &Result<SourceDocument, String>,
    b: &Result<SourceDocument, String>,
    defaults: &BindingDefaults,
) {
    let (a, b) = match (a, b) {
        (Ok(a), Ok(b)) => (a, b),
        (a, b) => {
            assert_eq!(a.as_ref().err(), b.as_ref().err());
            return;
        }
    };
    assert_eq!(a.document, b.document);
    let compile = |doc| CompiledPolicy::build_layers(&[doc], defaults, "fuzz");
    let (a, b) = match (compile(a), compile(b)) {
        (Ok(a), Ok(b)) => (a, b),
        (a, b) => {
            assert_eq!(a.err(), b.err());
            return;
        }
    };
    assert_eq!(a.binding_count(), b.binding_count());
    for workspace in ["ws1", "ws2", "system", "default", "-"] {
        assert_eq!(a.members(workspace), b.members(workspace));
    }
}

// ---- pdp_input: NMP's PDP entrypoints over arbitrary input documents ----

/// The facts a PDP input states, each in NMP's direct form or in Envoy's `attributes` form.
#[derive(Debug, Default)]
struct PdpFacts {
    id: Option<String>,
    email: Option<String>,
    groups: Vec<String>,
    scopes: Vec<String>,
    method: String,
    path: String,
    workspace: String,
    permissions: Vec<String>,
    role: String,
}

const PDP_PRINCIPALS: [&str; 7] = [
    "alice",
    "bob",
    "root",
    "service:jobs",
    "service:eval",
    "",
    "auth0|abc123",
];
const PDP_WORDS: [&str; 12] = [
    "ws1",
    "ws2",
    "system",
    "default",
    "-",
    "eng",
    "admin@example.com",
    "models.read",
    "Editor",
    "PlatformAdmin",
    "platform:read",
    "openid",
];

impl PdpFacts {
    fn build(input: &mut Input<'_>, catalog: &Catalog) -> Self {
        let word = |input: &mut Input<'_>, from: &[&str]| match input.byte() % 4 {
            0 => input.text(),
            _ => input.pick(from).to_string(),
        };
        let id = (!input.byte().is_multiple_of(5)).then(|| word(input, &PDP_PRINCIPALS));
        let email = input
            .byte()
            .is_multiple_of(2)
            .then(|| word(input, &PDP_WORDS));
        let groups = (0..input.byte() % 3)
            .map(|_| word(input, &PDP_WORDS))
            .collect();
        let scopes = (0..input.byte() % 3)
            .map(|_| word(input, &PDP_WORDS))
            .collect();
        let method = input.pick(&METHODS).to_string();
        // A catalog pattern with its placeholders filled, or any text.
        let path = match input.byte() % 3 {
            0 => input.text(),
            _ => {
                let pattern = input.pick(&catalog.patterns).clone();
                let fill = word(input, &PDP_WORDS);
                pattern
                    .split('/')
                    .map(|segment| {
                        if segment.starts_with('{') {
                            fill.as_str()
                        } else {
                            segment
                        }
                    })
                    .collect::<Vec<_>>()
                    .join("/")
            }
        };
        let workspace = word(input, &PDP_WORDS);
        let permissions = (0..input.byte() % 3)
            .map(|_| word(input, &PDP_WORDS))
            .collect();
        let role = word(input, &PDP_WORDS);
        PdpFacts {
            id,
            email,
            groups,
            scopes,
            method,
            path,
            workspace,
            permissions,
            role,
        }
    }

    /// NMP's direct form: `principal_id`, `method`, `path`, ... at the top.
    fn direct(&self) -> serde_json::Map<String, Value> {
        let mut input = self.entrypoint_fields();
        if let Some(id) = &self.id {
            input.insert("principal_id".into(), json!(id));
        }
        if let Some(email) = &self.email {
            input.insert("principal_email".into(), json!(email));
        }
        input.insert("principal_groups".into(), json!(self.groups));
        input.insert("scopes".into(), json!(self.scopes));
        input.insert("method".into(), json!(self.method));
        input.insert("path".into(), json!(self.path));
        input
    }

    /// Envoy's form: the request under `attributes.request.http`, the principal in the
    /// headers the gateway sets (lower-case or NMP's spelling).
    fn envoy(&self, mixed_case: bool) -> serde_json::Map<String, Value> {
        let name = |lower: &str, mixed: &str| if mixed_case { mixed } else { lower }.to_string();
        let mut headers = serde_json::Map::new();
        if let Some(id) = &self.id {
            headers.insert(name("x-nmp-principal-id", "X-NMP-Principal-Id"), json!(id));
        }
        if let Some(email) = &self.email {
            headers.insert(
                name("x-nmp-principal-email", "X-NMP-Principal-Email"),
                json!(email),
            );
        }
        if !self.groups.is_empty() {
            headers.insert(
                name("x-nmp-principal-groups", "X-NMP-Principal-Groups"),
                json!(self.groups.join(",")),
            );
        }
        if !self.scopes.is_empty() {
            headers.insert(
                name("x-nmp-scopes", "X-NMP-Scopes"),
                json!(self.scopes.join(" ")),
            );
        }
        let mut input = self.entrypoint_fields();
        input.insert(
            "attributes".into(),
            json!({"request": {"http": {"method": self.method, "path": self.path, "headers": headers}}}),
        );
        input
    }

    fn entrypoint_fields(&self) -> serde_json::Map<String, Value> {
        let mut input = serde_json::Map::new();
        input.insert("workspace".into(), json!(self.workspace));
        input.insert("permissions".into(), json!(self.permissions));
        input.insert("role".into(), json!(self.role));
        input
    }

    /// True when the header form carries the same groups and scopes as the lists (a comma in
    /// a group or a space in a scope splits it there).
    fn headers_carry_lists(&self) -> bool {
        self.groups.iter().all(|g| !g.contains(',')) && self.scopes.iter().all(|s| !s.contains(' '))
    }

    /// What each entrypoint must answer, from the policy's own calls on these facts.
    fn expected(&self, policy: &CompiledPolicy, entrypoint: Entrypoint) -> Answer {
        let principal = |with_scopes: bool| {
            self.id.clone().map(|id| Principal {
                id: Some(id),
                email: self.email.clone().filter(|e| !e.is_empty()),
                groups: self.groups.clone(),
                scopes: if with_scopes {
                    self.scopes.clone()
                } else {
                    Vec::new()
                },
            })
        };
        match entrypoint {
            Entrypoint::Allow => Answer::Allow(
                policy
                    .allow(principal(true).as_ref(), &self.method, &self.path)
                    .allowed,
            ),
            Entrypoint::HasPermissions => {
                Answer::HasPermissions(principal(false).is_some_and(|p| {
                    policy.has_permissions(&p, &self.workspace, &self.permissions)
                }))
            }
            Entrypoint::HasRole => Answer::HasRole(
                principal(false).is_some_and(|p| policy.has_role(&p, &self.workspace, &self.role)),
            ),
        }
    }
}

/// NMP's PDP input (any JSON object, or facts built from fuzz choices) through the three
/// entrypoints over the catalogs: never panics, and answers the same twice. For built facts:
/// the direct form answers what the policy's own `allow`, `has_permissions` and `has_role`
/// answer for them; Envoy's form (either header spelling) answers the same as the direct form;
/// and any read field of a JSON type NMP's clients never send makes the answer a denial.
pub fn pdp_input(data: &[u8]) {
    let mut input = Input(data);
    let catalog = input.pick(&CATALOGS);
    let policy = &catalog.policy;
    if input.byte() % 2 == 0 {
        let Ok(Value::Object(document)) = serde_json::from_slice::<Value>(input.rest()) else {
            return;
        };
        for entrypoint in Entrypoint::ALL {
            let answer = pdp::answer(policy, entrypoint, &document);
            assert_eq!(answer, pdp::answer(policy, entrypoint, &document));
        }
        return;
    }
    let facts = PdpFacts::build(&mut input, catalog);
    let wrong_field = *input.pick(&[
        None,
        None,
        Some("principal_id"),
        Some("principal_email"),
        Some("principal_groups"),
        Some("method"),
        Some("path"),
        Some("workspace"),
        Some("permissions"),
        Some("role"),
    ]);
    let wrong_values = [json!(1), json!(null), json!({}), json!([1]), json!(true)];
    let wrong_value = input.pick(&wrong_values);
    for entrypoint in Entrypoint::ALL {
        let expected = facts.expected(policy, entrypoint);
        let direct = facts.direct();
        assert_eq!(
            pdp::answer(policy, entrypoint, &direct),
            expected,
            "direct form of {facts:?}"
        );
        if facts.headers_carry_lists() {
            for mixed_case in [false, true] {
                assert_eq!(
                    pdp::answer(policy, entrypoint, &facts.envoy(mixed_case)),
                    expected,
                    "Envoy form (mixed case {mixed_case}) of {facts:?}"
                );
            }
        }
        if let Some(field) = wrong_field {
            let mut wrong = direct.clone();
            wrong.insert(field.into(), wrong_value.clone());
            let reads = match entrypoint {
                Entrypoint::Allow => !matches!(field, "workspace" | "permissions" | "role"),
                Entrypoint::HasPermissions => !matches!(field, "method" | "path" | "role"),
                Entrypoint::HasRole => !matches!(field, "method" | "path" | "permissions"),
            };
            // `true` is a value of the wrong type too; only `false` reads as absent.
            if reads && facts.id.is_some() {
                assert!(
                    !pdp::answer(policy, entrypoint, &wrong).granted(),
                    "{field} = {wrong_value} granted {entrypoint:?} for {facts:?}"
                );
            }
        }
    }
}

// ---- seeds ----

/// Generated seed inputs for a target: valid requests, tokens and documents to start from.
/// They are checked in as `fuzz/corpus/<target>/seed-N` (`tests/fuzz_regressions.rs` makes
/// sure of it), so cargo-fuzz starts from them.
pub fn seeds(target: &str) -> Vec<Vec<u8>> {
    // Raw choice bytes, then text chunks separated by 0xFF (see `Input`).
    let seed = |prefix: &[u8], chunks: &[&[u8]]| [prefix, &chunks.join(&0xFF)].concat();
    match target {
        "matching" => vec![
            seed(
                &[0, 1, 1, 0, 0],
                &[b"/apis/models/v2/workspaces/ws1/models", b"x=1"],
            ),
            seed(&[0, 3, 1, 0, 1, 0], &[b"ws1", b"", b"", b"x=1"]),
            seed(&[1, 4, 1, 2, 2, 5], &[b"-", b"a", b"b", b"c"]),
            seed(&[0, 0, 1, 0, 0], &[b"/health/live"]),
            seed(
                &[0, 2, 0],
                &[
                    b"post",
                    b"\0/apis/secrets/v2/workspaces/ws1/secrets/s/access",
                ],
            ),
        ],
        "token" => {
            let claims = json!({"sub": "bob", "iat": NOW, "exp": NOW + 60}).to_string();
            let claims = claims.as_bytes();
            vec![
                seed(&[1, 0, 5, b'A'], &[]),
                seed(&[1, 1, 200, 0xFE], &[]),
                seed(&[2], &[br#"{"alg":"none"}"#, claims, b""]),
                seed(
                    &[2],
                    &[br#"{"alg":"RS256","kid":"rsa-1"}"#, claims, b"c2ln"],
                ),
                seed(&[3, 0], &[claims]),
                seed(&[0], &[b"Bearer a.b.c"]),
            ]
        }
        "check_request" => {
            // Check reads the clock: issued in 2023, expiring in 2096, so the seeds stay fixed.
            let claims =
                json!({"sub": "alice", "iat": 1_700_000_000, "exp": 4_000_000_000u64}).to_string();
            let unsigned = format!(
                "Bearer {}.{}.",
                b64(br#"{"alg":"none"}"#),
                b64(claims.as_bytes())
            );
            let request = |method: &str, path: &str, headers: &[(&str, &str)]| {
                CheckRequest {
                    attributes: Some(AttributeContext {
                        request: Some(Request {
                            http: Some(HttpRequest {
                                method: method.into(),
                                path: path.into(),
                                headers: headers
                                    .iter()
                                    .map(|(k, v)| (k.to_string(), v.to_string()))
                                    .collect(),
                                ..Default::default()
                            }),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                }
                .encode_to_vec()
            };
            let models = "/apis/models/v2/workspaces/default/models";
            vec![
                seed(
                    &[0, 0],
                    &[&request("GET", models, &[("authorization", &unsigned)])],
                ),
                seed(
                    &[1, 0],
                    &[&request(
                        "POST",
                        "/apis/entities/v2/workspaces",
                        // One header per seed: a map's encoding order is not fixed.
                        &[("x-nmp-principal-id", "alice")],
                    )],
                ),
                seed(
                    &[2, 0],
                    &[&request("GET", "/health/live", &[("x-nmp-other", "1")])],
                ),
                seed(&[3, 0], &[&request("GET", "/status", &[])]),
                seed(
                    &[1, 1, 0],
                    &[
                        b"/apis/models/v2/workspaces/ws1/models?x=1",
                        b"\x01\x01alice",
                        br#"{"sub":"alice","groups":["eng"],"scope":"openid"}"#,
                    ],
                ),
                // Allowed requests whose principal attributes are one mutation away from a
                // control character (the header-injection oracle).
                seed(
                    &[1, 1, 0],
                    &[models.as_bytes(), b"\x02\x01alice", b"\x03eng, ops", b""],
                ),
                seed(
                    &[0, 1, 0],
                    &[
                        models.as_bytes(),
                        &[
                            &b"\x00"[..],
                            br#"{"sub":"alice","email":"alice@example.com","groups":["eng"],"scope":"openid models:read"}"#,
                        ]
                        .concat(),
                    ],
                ),
                seed(
                    &[0, 1, 3],
                    &[
                        b"/apis/entities/v2/workspaces/ws1/x/y",
                        &[b"\x01\x00", unsigned.as_bytes()].concat(),
                        b"",
                    ],
                ),
            ]
        }
        "module_request" => {
            let claims =
                json!({"sub": "alice", "iat": 1_700_000_000, "exp": 4_000_000_000u64}).to_string();
            let unsigned = format!(
                "Bearer {}.{}.",
                b64(br#"{"alg":"none"}"#),
                b64(claims.as_bytes())
            );
            let models: &[u8] = b"/apis/models/v2/workspaces/default/models";
            // After method and path: a count, then for each header a name choice and its
            // value (one chunk).
            let with = |choices: &[u8], value: &[u8]| [choices, value].concat();
            vec![
                seed(
                    &[0],
                    &[
                        b"GET",
                        models,
                        &with(&[2, 0], unsigned.as_bytes()),
                        &with(&[6], b"x"),
                    ],
                ),
                seed(
                    &[1],
                    &[
                        b"POST",
                        b"/apis/entities/v2/workspaces",
                        &with(&[1, 1], b"alice"),
                    ],
                ),
                seed(&[2], &[b"GET", b"/health/live", &with(&[1, 6], b"1")]),
                seed(&[3], &[b"GET", models, &[0]]),
                seed(&[0], &[b"get", b"/apis/x/../y", &[0]]),
            ]
        }
        "policy_load" => {
            let yaml = std::fs::read(repo_root().join("tests/fixtures/decision/policy.yaml"))
                .unwrap_or_default();
            let json: &[u8] = br#"{"authz":{"roles":{"R":{"permissions":["a.read"]}},"endpoints":{"/apis/a/v2/workspaces/{workspace}/x":{"get":{"permissions":["a.read"],"scopes":["a:read"]}}},"principals":{"*":{"workspaces":{"ws1":["R"]}}}}}"#;
            vec![
                seed(&[0], &[&yaml]),
                seed(&[1], &[json]),
                seed(&[2], &[&bundle_with(json)]),
                seed(&[3], &[json]),
                seed(
                    &[0],
                    &[b"authz:\n  roles: {A: {includes: [B]}, B: {includes: [A]}}\n"],
                ),
            ]
        }
        "pdp_input" => {
            let json_input = json!({"principal_id": "alice", "method": "GET",
                "path": "/apis/models/v2/workspaces/ws1/models", "scopes": ["platform:read"]});
            vec![
                [&[0u8, 0][..], json_input.to_string().as_bytes()].concat(),
                // Built facts: alice, no email, one group, no scopes, GET, a catalog path.
                seed(&[0, 1, 1, 0, 1, 1, 5, 0, 0, 1, 0, 0], &[]),
                seed(
                    &[0, 1, 1, 3, 1, 0, 2, 2, 0, 1],
                    &[b"/apis/entities/v2/workspaces"],
                ),
                seed(&[1, 1, 4, 4], &[b"auth0|abc123"]),
            ]
        }
        _ => Vec::new(),
    }
}
