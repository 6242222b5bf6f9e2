//! One authorization request, whatever face asked (gRPC `Authorization/Check`, the HTTP
//! authorization endpoint, `explain`): the request-path rule, identity and the decision give a
//! [`Verdict`]; each face renders it (the gRPC face's `CheckResponse`: check_response.rs). Here
//! too: what every face's answer shares (the headers an allow sets, a denial's headers).

use std::time::{Duration, Instant};

use nmp_authz_core::record::DecisionRecord;
use nmp_authz_core::verdict::{self, Admission, Early, Outcome, Status, Verdict};

use crate::identity::{self, Credentials, IdentityError};

use super::State;
use super::check_request::{CheckRequest, Struct};
use super::check_response::{self, EncodedCheckResponse};

/// A request to authorize, as every face describes it.
#[derive(Debug)]
pub struct Request<'a> {
    pub method: &'a str,
    /// Path and query, as the client sent them.
    pub path: &'a str,
    /// The credential headers, or why they are refused (a credential header given twice).
    pub credentials: Result<Credentials<'a>, IdentityError>,
    /// The `jwt_authn` namespace of Envoy's dynamic metadata (gRPC only).
    pub metadata: Option<&'a Struct>,
    /// Where the request's trace context is (read only when traces are on).
    pub trace: crate::traces::Carrier<'a>,
}

/// What a face reports of an answer (metrics, logs, callers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answered {
    pub outcome: Outcome,
    pub status: Status,
}

/// Decides `request` and hands the verdict to `render` (the policy it was decided with is
/// borrowed, not cloned, for as long as `render` runs).
pub async fn decide<R>(
    state: &State,
    request: &Request<'_>,
    render: impl FnOnce(&Verdict<'_>) -> R,
) -> R {
    let path = match verdict::admit(
        request.method,
        request.path,
        state.auth_enabled,
        state.stale.load(std::sync::atomic::Ordering::Relaxed),
    ) {
        Admission::Decide(path) => path,
        Admission::Answered(verdict) => return render(&verdict),
        Admission::AuthDisabled => {
            // Authorization is off: everything is allowed; a caller we can name is still
            // named (without waiting on any key refetch for it).
            let principal = request.credentials.as_ref().ok().and_then(|credentials| {
                let verifier = state.keys.verifier();
                let now = identity::unix_now();
                identity::identify(
                    &state.identity,
                    verifier,
                    credentials,
                    request.metadata,
                    now,
                )
                .ok()
                .flatten()
                .map(|i| i.principal)
            });
            let mut verdict = Verdict::early(Early::AuthDisabled, "");
            verdict.principal = principal;
            return render(&verdict);
        }
    };
    let identity = match &request.credentials {
        Ok(credentials) => state.identify(credentials, request.metadata).await,
        Err(refused) => Err(refused.clone()),
    };
    // A guard, not a clone of the Arc: two worker threads bumping one reference count on
    // every Check would pass its cache line back and forth.
    let policy = state.policy.load();
    let verdict = verdict::conclude(policy.as_deref(), identity, request.method, path);
    if let (Some(policy), Some(path)) = (verdict.policy, verdict.path.as_deref())
        && tracing::enabled!(tracing::Level::DEBUG)
    {
        // What `nmp-authz explain` prints, evaluated again with a recorder: only when read.
        let explanation = policy.explain(verdict.principal.as_deref(), request.method, path);
        tracing::debug!(
            explanation = %serde_json::to_string(&explanation).unwrap_or_default(),
            "decision explained"
        );
    }
    render(&verdict)
}

/// [`decide`], counted in the metrics and logged as a decision record: what every face that
/// answers an authorization request calls.
pub(crate) async fn decide_recorded<R>(
    state: &State,
    request: &Request<'_>,
    render: impl FnOnce(&Verdict<'_>) -> R,
) -> R {
    let started = Instant::now();
    let span = state.traces.as_ref().map(|t| t.start_span(&request.trace));
    decide(state, request, |verdict| {
        let rendered = render(verdict);
        record(state, request, verdict, started.elapsed());
        if let Some(span) = span {
            span.finish(request.method, request.path, verdict);
        }
        rendered
    })
    .await
}

/// Counts and (sampled) logs one answer.
pub fn record(state: &State, request: &Request<'_>, verdict: &Verdict<'_>, took: Duration) {
    state
        .metrics
        .record_check(verdict.outcome, verdict.status, took);
    if let Some(shadow) = &state.shadow {
        shadow.compare(request, verdict);
    }
    if state
        .decision_log
        .should_log(verdict.allowed(), verdict.outcome)
    {
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        crate::telemetry::log_decision(&DecisionRecord::of(
            verdict,
            request.method,
            request.path,
            micros,
        ));
    }
}

// ---- the gRPC face: Envoy's CheckRequest and CheckResponse ----

/// The request a `CheckRequest` describes.
pub fn request(check: &CheckRequest) -> Request<'_> {
    let http = check.http();
    Request {
        method: http.map_or("", |h| h.method.as_str()),
        path: http.map_or("", |h| h.path.as_str()),
        credentials: Credentials::from_headers(http.into_iter().flat_map(|h| h.headers())),
        metadata: check.namespace(identity::JWT_AUTHN_NAMESPACE),
        trace: http.map_or(crate::traces::Carrier::None, |h| {
            crate::traces::Carrier::Check(&h.headers, None)
        }),
    }
}

/// Decides one Check request given as envoy-types' message (tests, benchmarks), through the
/// path Envoy's requests take: counted and logged.
pub async fn check(
    state: &State,
    check: &envoy_types::pb::envoy::service::auth::v3::CheckRequest,
) -> (EncodedCheckResponse, Answered) {
    let check = CheckRequest::from_message(check);
    check_with_metadata(state, &check, None).await
}

/// Decides one Check request as it arrived, with the gRPC call's metadata (where Envoy puts
/// its ext_authz span's trace context when it traces).
pub async fn check_with_metadata(
    state: &State,
    check: &CheckRequest,
    grpc_metadata: Option<&tonic::metadata::MetadataMap>,
) -> (EncodedCheckResponse, Answered) {
    let mut request = request(check);
    if let crate::traces::Carrier::Check(headers, _) = request.trace {
        request.trace = crate::traces::Carrier::Check(headers, grpc_metadata);
    }
    decide_recorded(state, &request, |verdict| {
        let answered = Answered {
            outcome: verdict.outcome,
            status: verdict.status,
        };
        let inbound = check
            .http()
            .into_iter()
            .flat_map(|h| h.headers().map(|(name, _)| name));
        (check_response::encode(verdict, inbound), answered)
    })
    .await
}

// ---- what every face's answer shares: the core's ----

pub use nmp_authz_core::answer::{SCOPES, headers_to_remove};
pub(crate) use nmp_authz_core::answer::{allow_headers, denial_headers};
