//! gRPC: Envoy's `envoy.service.auth.v3.Authorization`, the project's PDP service,
//! `grpc.health.v1.Health` and reflection, on one listener.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use envoy_types::pb::envoy::service::auth::v3::authorization_server::SERVICE_NAME as AUTHORIZATION;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tonic::transport::server::{Connected, TcpConnectInfo};
use tonic::{Request, Response, Status};

use crate::pdp_proto::policy_decision_server::{PolicyDecision, PolicyDecisionServer};
use crate::pdp_proto::{
    AllowRequest, AllowResponse, HasPermissionsRequest, HasPermissionsResponse, HasRoleRequest,
    HasRoleResponse, PrincipalInput,
};
use crate::policy::pdp::Entrypoint;
use serde_json::{Map, Value as Json};

use super::check_request::CheckRequest;
use super::check_response::EncodedCheckResponse;
use super::{State, check, http, pdp};

pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<State>,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let (health, health_service) = tonic_health::server::health_reporter();
    // Beside the server in this task, not spawned apart: if it failed, the task would. It is
    // done at shutdown, while the server drains on.
    let health = report_health(health, state.clone(), shutdown.clone());
    let health = async move {
        health.await;
        std::future::pending::<std::convert::Infallible>().await
    };
    // Both reflection versions: grpcurl before 1.9 speaks only v1alpha.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::pdp_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;
    // Accepted as the HTTP port accepts (TCP_NODELAY, and a pause after a failed accept):
    // tonic's own loop retries a failed accept at once, so running out of descriptors would
    // spin a worker thread for as long as it lasts.
    let incoming = futures_util::stream::unfold(listener, |listener| async move {
        let stream = WholeFrameWrites(http::accept(&listener, "grpc").await);
        Some((Ok::<_, std::io::Error>(stream), listener))
    });
    let serve = tonic::transport::Server::builder()
        .add_service(AuthorizationService(state.clone()))
        .add_service(PolicyDecisionServer::new(PdpService(state)))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .serve_with_incoming_shutdown(incoming, async move {
            let _ = shutdown.wait_for(|stop| *stop).await;
        });
    tokio::select! {
        served = serve => Ok(served?),
        never = health => match never {},
    }
}

/// An accepted gRPC connection that does not offer vectored writes. With them, h2 queues a
/// frame payload over 256 bytes as a separate buffer and holds every later frame back until
/// the next write, so a Check response (300-500 bytes with its headers and decision metadata)
/// left in two system calls, the second carrying only the gRPC trailers. Without them h2
/// copies payloads of up to 1 KiB into its buffer and a response leaves in one write.
struct WholeFrameWrites(TcpStream);

impl AsyncRead for WholeFrameWrites {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for WholeFrameWrites {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl Connected for WholeFrameWrites {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.0.connect_info()
    }
}

/// How often gRPC health follows readiness (policy loaded, current, not shutting down).
const HEALTH_POLL: Duration = Duration::from_millis(500);

/// Keeps `grpc.health.v1` (overall and for the Authorization service) equal to readiness, so
/// Envoy's gRPC health checks stop sending Checks to a replica that would answer 503.
async fn report_health(
    health: tonic_health::server::HealthReporter,
    state: Arc<State>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut reported = None;
    loop {
        let ready = state.ready();
        if reported != Some(ready) {
            let status = if ready {
                tonic_health::ServingStatus::Serving
            } else {
                tonic_health::ServingStatus::NotServing
            };
            health.set_service_status("", status).await;
            health.set_service_status(AUTHORIZATION, status).await;
            reported = Some(ready);
        }
        tokio::select! {
            _ = tokio::time::sleep(HEALTH_POLL) => {}
            _ = shutdown.wait_for(|stop| *stop) => break,
        }
    }
    health
        .set_service_status("", tonic_health::ServingStatus::NotServing)
        .await;
}

/// Envoy's `envoy.service.auth.v3.Authorization` service. Its one method, `Check`, answers
/// with a [`EncodedCheckResponse`] (the verdict written straight into the wire format) to a
/// [`CheckRequest`] read straight from it, through tonic's prost codec: envoy-types' generated
/// server would have a Check decode every field into owned strings and maps and build its
/// `CheckResponse` message (BENCHMARKS.md §2.2, §2.4).
#[derive(Debug, Clone)]
pub(crate) struct AuthorizationService(pub Arc<State>);

const CHECK: &str = "/envoy.service.auth.v3.Authorization/Check";

impl tonic::server::NamedService for AuthorizationService {
    const NAME: &'static str = AUTHORIZATION;
}

impl<B> tonic::codegen::Service<tonic::codegen::http::Request<B>> for AuthorizationService
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send + 'static,
{
    type Response = tonic::codegen::http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = tonic::codegen::BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: tonic::codegen::http::Request<B>) -> Self::Future {
        if request.uri().path() != CHECK {
            return Box::pin(async { Ok(Status::unimplemented("").into_http()) });
        }
        let method = CheckMethod(self.0.clone());
        Box::pin(async move {
            let codec = tonic_prost::ProstCodec::<EncodedCheckResponse, CheckRequest>::default();
            Ok(tonic::server::Grpc::new(codec).unary(method, request).await)
        })
    }
}

struct CheckMethod(Arc<State>);

impl tonic::server::UnaryService<CheckRequest> for CheckMethod {
    type Response = EncodedCheckResponse;
    type Future = tonic::codegen::BoxFuture<Response<EncodedCheckResponse>, Status>;

    fn call(&mut self, request: Request<CheckRequest>) -> Self::Future {
        let state = self.0.clone();
        Box::pin(async move {
            let (response, _) =
                check::check_with_metadata(&state, request.get_ref(), Some(request.metadata()))
                    .await;
            Ok(Response::new(response))
        })
    }
}

/// NMP's PDP entrypoints for platform services. Callers identify like any request (bearer
/// token, or trusted principal metadata) and must be `service:` principals.
#[derive(Debug, Clone)]
pub(crate) struct PdpService(pub Arc<State>);

impl PdpService {
    /// The call's span, when traces are on (its context from the call's metadata).
    fn span<T>(&self, request: &Request<T>) -> Option<crate::traces::RequestSpan> {
        let traces = self.0.traces.as_ref()?;
        let headers = request.metadata().clone().into_headers();
        Some(traces.start_pdp_span(&crate::traces::Carrier::Http(&headers)))
    }

    async fn authorize<T>(&self, request: &Request<T>) -> Result<pdp::Usable, Status> {
        let headers = request.metadata().clone().into_headers();
        pdp::authorize_caller(&self.0, &headers)
            .await
            .map_err(status)
    }
}

/// A PDP refusal as a gRPC status.
fn status(refused: pdp::Refused) -> Status {
    // The answers' one status table; anything else (no policy, ...) is unavailable.
    let code = nmp_authz_core::verdict::Status::from_http(refused.status)
        .map_or(tonic::Code::Unavailable, |s| s.grpc_code().into());
    Status::new(code, refused.detail)
}

/// A request as the `{"input": ...}` document NMP's HTTP PDP takes, so that both faces are one
/// evaluation. Unset strings are left out (NMP reads them as absent); lists are always given.
fn input(principal: Option<PrincipalInput>, fields: &[(&str, Json)]) -> Map<String, Json> {
    let principal = principal.unwrap_or_default();
    let mut input = Map::new();
    if let Some(id) = principal.principal_id {
        input.insert("principal_id".into(), id.into());
    }
    if !principal.principal_email.is_empty() {
        input.insert("principal_email".into(), principal.principal_email.into());
    }
    input.insert("principal_groups".into(), principal.principal_groups.into());
    for (key, value) in fields {
        if value.as_str() != Some("") {
            input.insert((*key).into(), value.clone());
        }
    }
    input
}

/// Ends a PDP call's span with the HTTP status its gRPC code stands for.
fn finish<T>(
    span: Option<crate::traces::RequestSpan>,
    entrypoint: &str,
    answered: &Result<T, Status>,
) {
    if let Some(span) = span {
        let status = match answered {
            Ok(_) => 200,
            Err(e) => nmp_authz_core::verdict::Status::ALL
                .into_iter()
                .find(|s| s.grpc_code() == e.code() as i32)
                .map_or(503, |s| s.http()),
        };
        span.finish_pdp(entrypoint, status);
    }
}

#[tonic::async_trait]
impl PolicyDecision for PdpService {
    async fn allow(
        &self,
        request: Request<AllowRequest>,
    ) -> Result<Response<AllowResponse>, Status> {
        let span = self.span(&request);
        let answered = self.allow_untraced(request).await;
        finish(span, "allow", &answered);
        answered
    }

    async fn has_permissions(
        &self,
        request: Request<HasPermissionsRequest>,
    ) -> Result<Response<HasPermissionsResponse>, Status> {
        let span = self.span(&request);
        let answered = self.has_permissions_untraced(request).await;
        finish(span, "has_permissions", &answered);
        answered
    }

    async fn has_role(
        &self,
        request: Request<HasRoleRequest>,
    ) -> Result<Response<HasRoleResponse>, Status> {
        let span = self.span(&request);
        let answered = self.has_role_untraced(request).await;
        finish(span, "has_role", &answered);
        answered
    }
}

impl PdpService {
    async fn allow_untraced(
        &self,
        request: Request<AllowRequest>,
    ) -> Result<Response<AllowResponse>, Status> {
        let policy = self.authorize(&request).await?;
        let r = request.into_inner();
        let input = input(
            r.principal,
            &[
                ("method", r.method.into()),
                ("path", r.path.into()),
                ("scopes", r.scopes.into()),
            ],
        );
        let allowed = policy
            .answer(Entrypoint::Allow, &input)
            .map_err(status)?
            .granted();
        Ok(Response::new(AllowResponse {
            allowed,
            headers: HashMap::from([("X-NMP-Authorized".to_string(), allowed.to_string())]),
        }))
    }

    async fn has_permissions_untraced(
        &self,
        request: Request<HasPermissionsRequest>,
    ) -> Result<Response<HasPermissionsResponse>, Status> {
        let policy = self.authorize(&request).await?;
        let r = request.into_inner();
        let input = input(
            r.principal,
            &[
                ("workspace", r.workspace.into()),
                ("permissions", r.permissions.into()),
            ],
        );
        Ok(Response::new(HasPermissionsResponse {
            allowed: policy
                .answer(Entrypoint::HasPermissions, &input)
                .map_err(status)?
                .granted(),
        }))
    }

    async fn has_role_untraced(
        &self,
        request: Request<HasRoleRequest>,
    ) -> Result<Response<HasRoleResponse>, Status> {
        let policy = self.authorize(&request).await?;
        let r = request.into_inner();
        let input = input(
            r.principal,
            &[("workspace", r.workspace.into()), ("role", r.role.into())],
        );
        Ok(Response::new(HasRoleResponse {
            has_role: policy
                .answer(Entrypoint::HasRole, &input)
                .map_err(status)?
                .granted(),
        }))
    }
}
