//! Requests as Envoy's gRPC ext_authz sends them (`CheckRequest`), built for the load
//! generator, benchmarks and `explain`: quickstart tokens, `jwt_authn` metadata, the built-in
//! mixes, and request files (a JSON array; the format `nmp-authz-loadtest --requests-file` and
//! `nmp-authz explain --requests-file` read).

use std::collections::{BTreeMap, HashMap};

use envoy_types::pb::envoy::config::core::v3::Metadata;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
use serde::Deserialize;

/// One request of a `--requests-file`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestSpec {
    method: String,
    path: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    subject: Option<String>,
    /// Claims as Envoy's `jwt_authn` filter passes them on (`payload_in_metadata: jwt_payload`).
    #[serde(default)]
    jwt_authn: Option<serde_json::Map<String, serde_json::Value>>,
}

/// An unsigned (alg none) token for the quickstart server.
pub fn unsigned_token(subject: &str, lifetime_secs: u64) -> String {
    let now = crate::identity::unix_now();
    let claims = serde_json::json!({"sub": subject, "iat": now, "exp": now + lifetime_secs});
    crate::identity::unsigned_token(claims.as_object().expect("an object"))
}

/// A CheckRequest as Envoy sends one for an HTTP request (`headers` with lower-case names).
pub fn check_request(method: &str, path: &str, headers: HashMap<String, String>) -> CheckRequest {
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                http: Some(HttpRequest {
                    id: String::new(),
                    method: method.into(),
                    path: path.into(),
                    host: "nmp.local".into(),
                    scheme: "http".into(),
                    protocol: "HTTP/1.1".into(),
                    headers,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

/// Request metadata as Envoy's `jwt_authn` filter writes it, the claims under `key`
/// (`payload_in_metadata`; the companion config's is `jwt_payload`).
pub fn jwt_authn_metadata(
    key: &str,
    claims: &serde_json::Map<String, serde_json::Value>,
) -> Metadata {
    let payload = Value {
        kind: Some(Kind::StructValue(crate::identity::struct_from_json(claims))),
    };
    Metadata {
        filter_metadata: HashMap::from([(
            crate::identity::JWT_AUTHN_NAMESPACE.to_string(),
            Struct {
                fields: HashMap::from([(key.to_string(), payload)]),
            },
        )]),
        ..Default::default()
    }
}

fn bearer(subject: &str, token_life: u64) -> (String, String) {
    (
        "authorization".into(),
        format!("Bearer {}", unsigned_token(subject, token_life)),
    )
}

/// The built-in mix: allowed, 403, 401 and a health path, in that order.
pub fn default_mix(token_life: u64) -> Vec<CheckRequest> {
    let alice = || HashMap::from([bearer("alice", token_life)]);
    vec![
        check_request("GET", "/apis/models/v2/workspaces/default/models", alice()),
        check_request("POST", "/apis/models/v2/workspaces/system/models", alice()),
        check_request(
            "GET",
            "/apis/models/v2/workspaces/default/models",
            HashMap::new(),
        ),
        check_request("GET", "/health/live", HashMap::new()),
    ]
}

/// One request per endpoint pattern and method of the built-in catalog, as `alice` with an
/// unsigned token: placeholders filled with `default` for the workspace, `a/b` for a `/-/`
/// tail and `item` for other names.
pub fn catalog_mix(token_life: u64) -> Vec<CheckRequest> {
    let document = crate::policy::builtin::builtin_document();
    let mut mix = Vec::new();
    for (pattern, methods) in &document.authz.endpoints {
        let mut previous = "";
        let path: Vec<&str> = pattern
            .split('/')
            .map(|segment| {
                let filled = match segment {
                    s if !s.starts_with('{') => s,
                    "{workspace}" | "{workspace_id}" => "default",
                    _ if previous == "workspaces" => "default",
                    _ if previous == "-" => "a/b",
                    _ => "item",
                };
                previous = segment;
                filled
            })
            .collect();
        for method in methods.keys() {
            let headers = HashMap::from([bearer("alice", token_life)]);
            mix.push(check_request(
                &method.to_uppercase(),
                &path.join("/"),
                headers,
            ));
        }
    }
    mix
}

/// The requests of a request file, with quickstart tokens valid for `token_life` seconds.
pub fn read_mix(path: &std::path::Path, token_life: u64) -> Result<Vec<CheckRequest>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("--requests-file {}: {e}", path.display()))?;
    let specs: Vec<RequestSpec> = serde_json::from_str(&text)
        .map_err(|e| format!("--requests-file {}: {e}", path.display()))?;
    if specs.is_empty() {
        return Err(format!(
            "--requests-file {}: the array is empty",
            path.display()
        ));
    }
    specs
        .into_iter()
        .enumerate()
        .map(|(i, spec)| {
            if spec.method.is_empty() || !spec.path.starts_with('/') {
                return Err(format!(
                    "--requests-file {}: request {i} needs a method and a path starting with '/'",
                    path.display()
                ));
            }
            let mut headers: HashMap<String, String> = spec
                .headers
                .into_iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v))
                .collect();
            if let Some(subject) = &spec.subject {
                let (k, v) = bearer(subject, token_life);
                headers.insert(k, v);
            }
            let mut request = check_request(&spec.method, &spec.path, headers);
            if let (Some(claims), Some(attributes)) = (&spec.jwt_authn, &mut request.attributes) {
                attributes.metadata_context = Some(jwt_authn_metadata("jwt_payload", claims));
            }
            Ok(request)
        })
        .collect()
}
