//! Shared helpers for the integration tests: test policies, principals, an in-process gRPC
//! server with a tonic client, Check requests as Envoy sends them, and response checks.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::{
    HeaderValueOption, Metadata, header_value_option::HeaderAppendAction,
};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{
    AttributeContext, CheckRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse,
};
use envoy_types::pb::google::protobuf::{BoolValue, ListValue, Struct, Value, value::Kind};
use nmp_authz::config::Config;
use nmp_authz::server::{State, grpc};
use nmp_authz_core::policy::{BindingDefaults, CompiledPolicy, Format, PolicyDocument, Principal};
use tokio::sync::watch;
use tonic::transport::Channel;

/// The decision-table policy (roles, endpoints, bindings written for the tests).
pub const DECISION_POLICY: &str = include_str!("../fixtures/decision/policy.yaml");
/// Roles and bindings but no endpoints at all.
pub const NO_ENDPOINTS_POLICY: &str = include_str!("../fixtures/decision/no-endpoints.yaml");

/// Compiles a YAML policy with no bootstrap bindings and no admin email.
pub fn policy(yaml: &str) -> CompiledPolicy {
    let doc = PolicyDocument::parse(yaml, Format::Yaml).expect("test policy parses");
    let defaults = BindingDefaults {
        bootstrap_bindings: false,
        default_workspace: "default".into(),
        admin_email: None,
    };
    CompiledPolicy::build(doc, &defaults, "test-rev").expect("test policy compiles")
}

// ---- generated cases ----

/// SplitMix64: a fixed seed gives the same generated cases on every run and machine.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

// ---- principals ----

/// A principal with an id and nothing else.
pub fn who(id: &str) -> Principal {
    Principal::with_id(id)
}

/// A principal without an id (add an email or groups to it).
pub fn no_id() -> Principal {
    Principal::default()
}

/// Builder methods for test principals.
pub trait PrincipalExt {
    fn email(self, email: &str) -> Principal;
    fn groups(self, groups: &[&str]) -> Principal;
    /// Space-separated, as in a token's `scope` claim.
    fn scopes(self, scopes: &str) -> Principal;
}

impl PrincipalExt for Principal {
    fn email(mut self, email: &str) -> Principal {
        self.email = Some(email.into());
        self
    }
    fn groups(mut self, groups: &[&str]) -> Principal {
        self.groups = groups.iter().map(|g| g.to_string()).collect();
        self
    }
    fn scopes(mut self, scopes: &str) -> Principal {
        self.scopes = scopes.split_whitespace().map(str::to_string).collect();
        self
    }
}

/// The principal's id when it has a non-empty one: only those can be sent through Check
/// (Envoy's `jwt_authn` payload needs a subject).
pub fn sendable(principal: Option<&Principal>) -> Option<&Principal> {
    principal.filter(|p| p.id.as_deref().is_some_and(|id| !id.is_empty()))
}

// ---- the in-process gRPC server ----

/// A `State` over `policy` with `Config::default()` and `auth.enabled` as given.
pub fn state(policy: Option<CompiledPolicy>, auth_enabled: bool) -> State {
    let mut config = Config::default();
    config.auth.enabled = auth_enabled;
    State::new(&config, policy)
}

/// `grpc::serve` on a loopback port, with a connected client. Stops on drop.
pub struct TestServer {
    pub client: AuthorizationClient<Channel>,
    stop: watch::Sender<bool>,
}

impl TestServer {
    pub async fn start(state: State) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let (stop, stopped) = watch::channel(false);
        tokio::spawn(async move {
            grpc::serve(listener, Arc::new(state), stopped)
                .await
                .expect("gRPC server runs");
        });
        let client = AuthorizationClient::connect(format!("http://{addr}"))
            .await
            .expect("connect to the gRPC server");
        Self { client, stop }
    }

    pub async fn check(&mut self, request: CheckRequest) -> CheckResponse {
        self.client
            .check(request)
            .await
            .expect("a Check is answered with a CheckResponse, never a gRPC error")
            .into_inner()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

// ---- Check requests ----

fn text(s: &str) -> Value {
    Value {
        kind: Some(Kind::StringValue(s.into())),
    }
}

/// The claims Envoy's `jwt_authn` filter puts under `jwt_payload` for `principal`.
pub fn jwt_payload(principal: &Principal) -> Struct {
    let mut fields = HashMap::new();
    if let Some(id) = &principal.id {
        fields.insert("sub".to_string(), text(id));
    }
    if let Some(email) = &principal.email {
        fields.insert("email".to_string(), text(email));
    }
    if !principal.groups.is_empty() {
        let values = principal.groups.iter().map(|g| text(g)).collect();
        fields.insert(
            "groups".to_string(),
            Value {
                kind: Some(Kind::ListValue(ListValue { values })),
            },
        );
    }
    if !principal.scopes.is_empty() {
        fields.insert("scope".to_string(), text(&principal.scopes.join(" ")));
    }
    Struct { fields }
}

/// A Check request as Envoy sends it: method, path, headers, and the `jwt_authn` metadata for
/// `principal` when there is one.
pub fn check_request(
    method: &str,
    path: &str,
    principal: Option<&Principal>,
    headers: &[(&str, &str)],
) -> CheckRequest {
    let metadata_context = principal.map(|p| {
        let payload = Value {
            kind: Some(Kind::StructValue(jwt_payload(p))),
        };
        let namespace = Struct {
            fields: HashMap::from([("jwt_payload".to_string(), payload)]),
        };
        Metadata {
            filter_metadata: HashMap::from([(
                "envoy.filters.http.jwt_authn".to_string(),
                namespace,
            )]),
            ..Default::default()
        }
    });
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
            metadata_context,
            ..Default::default()
        }),
    }
}

// ---- Check responses ----

/// The value of header `name` (case-insensitive) among `headers`.
pub fn header<'a>(headers: &'a [HeaderValueOption], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .filter_map(|h| h.header.as_ref())
        .find(|h| h.key.eq_ignore_ascii_case(name))
        .map(|h| h.value.as_str())
}

/// A string field of the response's dynamic metadata.
/// The HTTP status Envoy answers a client with for `response`: 200 for an allow, the denial's
/// status, 0 for neither.
pub fn http_status(response: &CheckResponse) -> i32 {
    match &response.http_response {
        Some(HttpResponse::OkResponse(_)) => 200,
        Some(HttpResponse::DeniedResponse(d)) => d.status.as_ref().map_or(0, |s| s.code),
        _ => 0,
    }
}

pub fn metadata<'a>(response: &'a CheckResponse, key: &str) -> Option<&'a str> {
    match response
        .dynamic_metadata
        .as_ref()?
        .fields
        .get(key)?
        .kind
        .as_ref()?
    {
        Kind::StringValue(s) => Some(s),
        _ => None,
    }
}

/// The response allows; every header it sets overwrites (`append: false` and
/// `OVERWRITE_IF_EXISTS_OR_ADD`), `x-nmp-authorized: true` and `x-nmp-principal-id` is the
/// caller's id (absent without one). Returns the OkHttpResponse for further checks.
#[allow(deprecated)]
pub fn expect_ok<'a>(
    response: &'a CheckResponse,
    principal_id: Option<&str>,
    context: &str,
) -> Result<&'a OkHttpResponse, String> {
    let Some(HttpResponse::OkResponse(ok)) = &response.http_response else {
        return Err(format!("{context}: expected OkResponse, got {response:?}"));
    };
    for h in &ok.headers {
        if h.append != Some(BoolValue { value: false })
            || h.append_action != HeaderAppendAction::OverwriteIfExistsOrAdd as i32
        {
            return Err(format!(
                "{context}: header without overwrite semantics: {h:?}"
            ));
        }
    }
    if header(&ok.headers, "x-nmp-authorized") != Some("true") {
        return Err(format!("{context}: no `x-nmp-authorized: true` in {ok:?}"));
    }
    if header(&ok.headers, "x-nmp-principal-id") != principal_id {
        return Err(format!(
            "{context}: x-nmp-principal-id should be {principal_id:?} in {ok:?}"
        ));
    }
    Ok(ok)
}

/// The response denies with `status`, an NMP-style JSON body `{"detail": "..."}`,
/// `content-type: application/json`, and `www-authenticate: Bearer ...` on 401 only.
pub fn expect_denied<'a>(
    response: &'a CheckResponse,
    status: i32,
    context: &str,
) -> Result<&'a DeniedHttpResponse, String> {
    let Some(HttpResponse::DeniedResponse(denied)) = &response.http_response else {
        return Err(format!(
            "{context}: expected DeniedResponse, got {response:?}"
        ));
    };
    let got = denied.status.as_ref().map(|s| s.code);
    if got != Some(status) {
        return Err(format!("{context}: status {got:?}, expected {status}"));
    }
    let body: serde_json::Value = serde_json::from_str(&denied.body)
        .map_err(|e| format!("{context}: body is not JSON ({e}): {:?}", denied.body))?;
    if !body.get("detail").is_some_and(serde_json::Value::is_string) {
        return Err(format!("{context}: body has no `detail` string: {body}"));
    }
    if header(&denied.headers, "content-type") != Some("application/json") {
        return Err(format!("{context}: content-type is not application/json"));
    }
    let challenge = header(&denied.headers, "www-authenticate");
    match (status, challenge) {
        (401, Some(c)) if c.starts_with("Bearer") => {}
        (401, other) => {
            return Err(format!(
                "{context}: 401 needs `www-authenticate: Bearer ...`, got {other:?}"
            ));
        }
        (_, Some(c)) => return Err(format!("{context}: www-authenticate {c:?} on {status}")),
        (_, None) => {}
    }
    Ok(denied)
}

/// `x-nmp-principal-email`, `x-nmp-principal-groups` (comma-joined) and `x-nmp-scopes`
/// (space-joined) are set when the principal has them, and absent otherwise.
pub fn expect_principal_headers(
    ok: &OkHttpResponse,
    principal: Option<&Principal>,
    context: &str,
) -> Result<(), String> {
    let p = principal.cloned().unwrap_or_default();
    let groups: Vec<&str> = p
        .groups
        .iter()
        .map(String::as_str)
        .filter(|g| !g.is_empty())
        .collect();
    let expected = [
        ("x-nmp-principal-email", p.email.clone().unwrap_or_default()),
        ("x-nmp-principal-groups", groups.join(",")),
        ("x-nmp-scopes", p.scopes.join(" ")),
    ];
    for (name, value) in expected {
        let value = Some(value.as_str()).filter(|v| !v.is_empty());
        if header(&ok.headers, name) != value {
            return Err(format!("{context}: {name} should be {value:?} in {ok:?}"));
        }
    }
    Ok(())
}
pub mod bundle;
pub mod bypass;
pub mod gateway;
pub mod module;
pub mod nginx;
pub mod nmp;
pub mod oidc;
pub mod process;
