//! One ext_authz Check: identity, decision, and the CheckResponse Envoy acts on.

use std::collections::HashMap;

use envoy_types::pb::envoy::config::core::v3::{
    HeaderValue, HeaderValueOption, header_value_option::HeaderAppendAction,
};
use envoy_types::pb::envoy::service::auth::v3::{
    CheckRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse, check_response::HttpResponse,
};
use envoy_types::pb::envoy::r#type::v3::HttpStatus;
use envoy_types::pb::google::protobuf::{BoolValue, Struct, Value, value::Kind};
use envoy_types::pb::google::rpc::Status;

use crate::identity::{self, IdentityError};
use crate::policy::{CompiledPolicy, Principal, Reason};

use super::State;
use crate::request_path;

pub const AUTHORIZED: &str = "x-nmp-authorized";
pub const PRINCIPAL_ID: &str = "x-nmp-principal-id";
pub const PRINCIPAL_EMAIL: &str = "x-nmp-principal-email";
pub const PRINCIPAL_GROUPS: &str = "x-nmp-principal-groups";
pub const SCOPES: &str = "x-nmp-scopes";

/// The outcome of a Check in the terms the server reports (metrics, logs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// 200 on allow, else the HTTP status Envoy returns to the client.
    pub status: u16,
    /// Decision reason, or the failure that came before a decision.
    pub reason: &'static str,
}

/// [`check`], counted in the metrics and logged as a decision record: what every face that
/// answers a Check (gRPC `Authorization/Check`, the HTTP authorization endpoint) calls.
pub async fn check_recorded(state: &State, request: &CheckRequest) -> (CheckResponse, Outcome) {
    let started = std::time::Instant::now();
    let (response, outcome) = check(state, request).await;
    record(state, request, &response, &outcome, started.elapsed());
    (response, outcome)
}

/// Counts and (sampled) logs one answered Check.
pub fn record(
    state: &State,
    request: &CheckRequest,
    response: &CheckResponse,
    outcome: &Outcome,
    took: std::time::Duration,
) {
    state
        .metrics
        .record_check(outcome.status, outcome.reason, took);
    if state.decision_log.should_log(outcome.status) {
        crate::telemetry::log_decision(request, response, outcome.status, outcome.reason, took);
    }
}

/// Decides one Check request.
pub async fn check(state: &State, request: &CheckRequest) -> (CheckResponse, Outcome) {
    let attributes = request.attributes.as_ref();
    let Some(http) = attributes
        .and_then(|a| a.request.as_ref())
        .and_then(|r| r.http.as_ref())
        .filter(|h| !h.method.is_empty() && h.path.starts_with('/'))
    else {
        return deny(
            400,
            "malformed_request",
            "Malformed request: no HTTP method or path",
            None,
        );
    };
    let credentials = identity::Credentials::from_headers(
        http.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())),
    );
    let metadata = attributes.and_then(identity::jwt_authn_metadata);

    if !state.auth_enabled {
        // Authorization is off: everything is allowed; a caller we can name is still named
        // (without waiting on any key refetch for it).
        let principal = credentials.ok().and_then(|credentials| {
            let verifier = state.keys.verifier();
            let now = identity::unix_now();
            identity::identify(&state.identity, verifier, &credentials, metadata, now)
                .ok()
                .flatten()
                .map(|i| i.principal)
        });
        return allow(&http.headers, principal.as_deref(), "auth_disabled");
    }
    // Decide on the path as the upstream will read it, or refuse one it could read two ways
    // (README "Request paths"). HTTP methods are case-sensitive: `get` is not `GET`, and an
    // upstream that upper-cases it would serve what was decided as something else.
    let path = match request_path::canonical(&http.path) {
        Ok(path) if is_method_token(&http.method) => path,
        Ok(_) => {
            return deny(
                400,
                "ambiguous_request",
                "Ambiguous request: the method must be upper case",
                None,
            );
        }
        Err(refusal) => return deny(400, "ambiguous_request", refusal, None),
    };
    if state.stale.load(std::sync::atomic::Ordering::Relaxed) {
        return deny(
            503,
            "policy_stale",
            "Authorization policy data is stale",
            None,
        );
    }
    let identity = match credentials {
        Ok(credentials) => state.identify(&credentials, metadata).await,
        Err(refused) => Err(refused),
    };
    // A guard, not a clone of the Arc: two worker threads bumping one reference count on
    // every Check would pass its cache line back and forth.
    let policy = state.policy.load();
    let Some(policy) = policy.as_deref() else {
        return deny(
            503,
            "policy_unavailable",
            "Authorization policy data is not available",
            None,
        );
    };
    let principal = match identity {
        Ok(found) => found.map(|i| i.principal),
        Err(IdentityError::InvalidPrincipal { detail }) => {
            return deny(400, "invalid_principal", &detail, None);
        }
        Err(rejected) => {
            let detail = rejected.detail();
            return deny(401, "invalid_identity", detail, Some(detail));
        }
    };
    let decision = policy.allow(principal.as_deref(), &http.method, &path);
    if tracing::enabled!(tracing::Level::DEBUG) {
        // What `nmp-authz explain` prints, evaluated again with a recorder: only when read.
        let explanation = policy.explain(principal.as_deref(), &http.method, &path);
        tracing::debug!(
            explanation = %serde_json::to_string(&explanation).unwrap_or_default(),
            "decision explained"
        );
    }
    let metadata = decision_metadata(policy, principal.as_deref(), &decision);
    let (mut response, outcome) = if decision.allowed {
        allow(
            &http.headers,
            principal.as_deref(),
            decision.reason.as_str(),
        )
    } else {
        match decision.reason {
            Reason::NoEndpointsLoaded => deny(
                503,
                decision.reason.as_str(),
                "Authorization policy data has no endpoints",
                None,
            ),
            _ if principal.is_none() => {
                deny(401, decision.reason.as_str(), "Not authenticated", None)
            }
            reason => deny(
                403,
                reason.as_str(),
                &format!("Permission denied: {}", reason.describe()),
                None,
            ),
        }
    };
    response.dynamic_metadata = Some(metadata);
    (response, outcome)
}

/// An HTTP method as Envoy passes it on: an upper-case token (`GET`, `M-SEARCH`).
fn is_method_token(method: &str) -> bool {
    method
        .bytes()
        .all(|b| b.is_ascii_uppercase() || b == b'-' || b == b'_')
}

fn allow(
    inbound: &HashMap<String, String>,
    principal: Option<&Principal>,
    reason: &'static str,
) -> (CheckResponse, Outcome) {
    let mut set: Vec<(&str, String)> = vec![(AUTHORIZED, "true".into())];
    if let Some(p) = principal {
        if let Some(id) = p.id.as_deref().filter(|id| !id.is_empty()) {
            set.push((PRINCIPAL_ID, id.into()));
        }
        if let Some(email) = p.email.as_deref().filter(|e| !e.is_empty()) {
            set.push((PRINCIPAL_EMAIL, email.into()));
        }
        if !p.groups.is_empty() {
            set.push((PRINCIPAL_GROUPS, p.groups.join(",")));
        }
        if !p.scopes.is_empty() {
            set.push((SCOPES, p.scopes.join(" ")));
        }
    }
    // Every other inbound x-nmp-* header is the client's, not ours: remove it. Envoy sends
    // lower-case names; a hand-built request's `X-NMP-...` is caught too.
    let mut headers_to_remove: Vec<String> = inbound
        .keys()
        .filter(|k| k.get(..6).is_some_and(|p| p.eq_ignore_ascii_case("x-nmp-")))
        .map(|k| k.to_ascii_lowercase())
        .filter(|k| !set.iter().any(|(name, _)| name == k))
        .collect();
    headers_to_remove.sort();
    headers_to_remove.dedup();
    let response = CheckResponse {
        status: Some(Status {
            code: tonic::Code::Ok as i32,
            ..Default::default()
        }),
        http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
            headers: set.into_iter().map(|(k, v)| overwrite(k, v)).collect(),
            headers_to_remove,
            ..Default::default()
        })),
        dynamic_metadata: None,
    };
    (
        response,
        Outcome {
            status: 200,
            reason,
        },
    )
}

/// A header Envoy must set, replacing any value: `append: false` for Envoy versions that read
/// only the deprecated field, `OVERWRITE_IF_EXISTS_OR_ADD` for those that read the action.
#[allow(deprecated)]
fn overwrite(key: &str, value: String) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.into(),
            value,
            ..Default::default()
        }),
        append: Some(BoolValue { value: false }),
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        keep_empty_value: false,
    }
}

/// A denial Envoy sends to the client as is: NMP-style JSON `{"detail": ...}`.
pub(crate) fn deny(
    status: u16,
    reason: &'static str,
    detail: &str,
    token_error: Option<&str>,
) -> (CheckResponse, Outcome) {
    let mut headers = vec![overwrite("content-type", "application/json".into())];
    if status == 401 {
        let challenge = match token_error {
            Some(description) => format!(
                "Bearer realm=\"nmp\", error=\"invalid_token\", error_description=\"{}\"",
                description.replace(['"', '\\'], "'")
            ),
            None => "Bearer realm=\"nmp\"".into(),
        };
        headers.push(overwrite("www-authenticate", challenge));
    }
    let code = match status {
        400 => tonic::Code::InvalidArgument,
        401 => tonic::Code::Unauthenticated,
        503 => tonic::Code::Unavailable,
        _ => tonic::Code::PermissionDenied,
    };
    let response = CheckResponse {
        status: Some(Status {
            code: code as i32,
            message: detail.into(),
            ..Default::default()
        }),
        http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
            status: Some(HttpStatus {
                code: i32::from(status),
            }),
            headers,
            body: super::detail_body(detail),
        })),
        dynamic_metadata: None,
    };
    (response, Outcome { status, reason })
}

/// Decision facts for Envoy's dynamic metadata (access logs, later filters).
fn decision_metadata(
    policy: &CompiledPolicy,
    principal: Option<&Principal>,
    decision: &crate::policy::Decision<'_>,
) -> Struct {
    let text = |s: &str| Value {
        kind: Some(Kind::StringValue(s.into())),
    };
    // Sized for every fact up front: growing the map rehashed it on most Checks.
    let mut fields = HashMap::with_capacity(6);
    fields.insert(
        "allowed".to_string(),
        Value {
            kind: Some(Kind::BoolValue(decision.allowed)),
        },
    );
    fields.insert("reason".to_string(), text(decision.reason.as_str()));
    fields.insert("policy_revision".to_string(), text(policy.revision()));
    if let Some(id) = principal.and_then(|p| p.id.as_deref()) {
        fields.insert("principal_id".into(), text(id));
    }
    if let Some(ws) = &decision.workspace {
        fields.insert("workspace".into(), text(ws));
    }
    if let Some(endpoint) = decision.endpoint {
        fields.insert("endpoint".into(), text(endpoint));
    }
    Struct { fields }
}
