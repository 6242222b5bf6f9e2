//! HTTP: liveness, readiness, Prometheus metrics, the auth discovery document, NMP's PDP API
//! for platform services, and the HTTP authorization endpoint (http_authz.rs).

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode, header};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::sync::watch;

use super::{State, http_authz, pdp};

/// The routes a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Face {
    /// The HTTP port: health, metrics, discovery, the PDP API for callers with a token, and
    /// the HTTP authorization endpoint.
    Main,
    /// The PDP listener (`pdp:` config): NMP's PDP API for platform services, which identify
    /// with `X-NMP-Principal-Id` only, plus health.
    Pdp,
}

/// Where connections come from: a TCP port or a Unix socket.
pub trait Listener: Send + 'static {
    type Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static;
    fn accept_io(&self) -> impl Future<Output = std::io::Result<Self::Io>> + Send;
}

impl Listener for tokio::net::TcpListener {
    type Io = tokio::net::TcpStream;
    async fn accept_io(&self) -> std::io::Result<Self::Io> {
        let (stream, _) = self.accept().await?;
        // Small request/response exchanges: without TCP_NODELAY each one can wait on a
        // delayed ACK.
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }
}

impl Listener for tokio::net::UnixListener {
    type Io = tokio::net::UnixStream;
    async fn accept_io(&self) -> std::io::Result<Self::Io> {
        Ok(self.accept().await?.0)
    }
}

/// Serves `face` on `listener` until `shutdown`, then lets in-flight requests finish.
pub async fn serve<L: Listener>(
    listener: L,
    state: Arc<State>,
    mut shutdown: watch::Receiver<bool>,
    face: Face,
) -> anyhow::Result<()> {
    let graceful = GracefulShutdown::new();
    loop {
        let stream = tokio::select! {
            stream = accept(&listener, "http") => stream,
            _ = shutdown.wait_for(|stop| *stop) => break,
        };
        let state = state.clone();
        let service = hyper::service::service_fn(move |req| {
            let state = state.clone();
            async move {
                Ok::<_, Infallible>(match face {
                    Face::Main => route(&state, req).await,
                    Face::Pdp => route_pdp(&state, req).await,
                })
            }
        });
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "http connection ended with an error");
            }
        });
    }
    graceful.shutdown().await;
    Ok(())
}

/// The next connection on `listener`. A failed accept is logged and retried after
/// [`ACCEPT_RETRY`]: out of file descriptors (EMFILE, ENFILE) or a connection reset before it
/// was accepted are passing conditions, so giving up would close the port for good, and
/// retrying at once would spin (the listener stays readable while connections wait).
pub(super) async fn accept<L: Listener>(listener: &L, face: &str) -> L::Io {
    loop {
        match listener.accept_io().await {
            Ok(stream) => return stream,
            Err(e) => {
                tracing::warn!(face, error = %e, "accept failed; retrying");
                tokio::time::sleep(ACCEPT_RETRY).await;
            }
        }
    }
}

/// A connection that has not sent a request's headers within this is closed: idle or
/// trickling clients cannot hold descriptors for ever. (hyper enforces none without a timer.)
const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Wait before accepting again after a failed accept (out of descriptors: let some close).
const ACCEPT_RETRY: std::time::Duration = std::time::Duration::from_millis(100);

/// Bound on a PDP request body.
const MAX_PDP_BODY: usize = 64 * 1024;

async fn route(state: &State, req: Request<Incoming>) -> Response<Full<Bytes>> {
    // Any method: the authorization request carries the original request's (Envoy form).
    if let Some(rest) = http_authz::under_prefix(state, req.uri().path()) {
        return http_authz::answer(
            state,
            req.method().as_str(),
            rest,
            req.uri().query(),
            req.headers(),
        )
        .await;
    }
    if pdp::entrypoint_of(req.uri().path()).is_some() {
        return pdp_answer(state, req, Face::Main).await;
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return method_not_allowed();
    }
    match req.uri().path() {
        "/apis/auth/discovery" => json(StatusCode::OK, state.discovery.clone()),
        "/metrics" => {
            let body = state.metrics.render(state.scrape());
            let mut response = Response::new(Full::new(Bytes::from(body)));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static(crate::telemetry::METRICS_CONTENT_TYPE),
            );
            response
        }
        path => health(state, path),
    }
}

/// The PDP listener's routes: NMP's PDP API and health.
async fn route_pdp(state: &State, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if pdp::entrypoint_of(req.uri().path()).is_some() {
        return pdp_answer(state, req, Face::Pdp).await;
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return method_not_allowed();
    }
    health(state, req.uri().path())
}

fn method_not_allowed() -> Response<Full<Bytes>> {
    json(
        StatusCode::METHOD_NOT_ALLOWED,
        r#"{"detail":"Method not allowed"}"#.into(),
    )
}

/// Liveness and readiness (both listeners), else 404.
fn health(state: &State, path: &str) -> Response<Full<Bytes>> {
    match path {
        "/health/live" | "/healthz" => json(StatusCode::OK, r#"{"status":"ok"}"#.into()),
        "/health/ready" | "/readyz" => {
            // The body says what a failing source is doing, even while the last good policy
            // still serves (ready) and before staleness makes it unready.
            let sources: Vec<_> = state
                .source_status
                .load()
                .iter()
                .map(|s| {
                    serde_json::json!({
                        "source": s.name,
                        "loaded": s.loaded,
                        "failing_for_seconds": s.failing_for.map(|d| d.as_secs()),
                        "error": s.last_error,
                        "bootstrap": s.bootstrap,
                    })
                })
                .collect();
            let ready = state.ready();
            let mut body = serde_json::json!({
                "status": if ready { "ready" } else { "not ready" },
                "policy_revision": state.policy.load().as_ref().map(|p| p.revision().to_string()),
                "stale": state.stale.load(Ordering::Relaxed),
                "bootstrapping": state.bootstrapping.load(Ordering::Relaxed),
                "sources": sources,
            });
            // Which NMP release the built-in catalog is, when it is one of the sources.
            if state.source_status.load().iter().any(|s| s.builtin) {
                body["builtin_catalog"] = crate::policy::builtin::NMP_RELEASE.into();
            }
            let status = if ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            json(status, body.to_string())
        }
        _ => json(StatusCode::NOT_FOUND, r#"{"detail":"Not found"}"#.into()),
    }
}

/// NMP's PDP over HTTP: `POST` to either PDP path (`pdp::PATH_PREFIXES`).
async fn pdp_answer(state: &State, req: Request<Incoming>, face: Face) -> Response<Full<Bytes>> {
    let span = state.traces.as_ref().map(|traces| {
        let span = traces.start_pdp_span(&crate::traces::Carrier::Http(req.headers()));
        let name = pdp::entrypoint_of(req.uri().path())
            .unwrap_or("")
            .to_string();
        (span, name)
    });
    let answered = async {
        if req.method() != Method::POST {
            return Err(pdp::Refused::new(405, "Method not allowed"));
        }
        // The body is read first, refusal or not: answered with its body unread, a connection
        // may be closed after the answer, and a pooling client (NMP's services) that sends its
        // next call on it then gets none (httpx's RemoteProtocolError; NMP's middleware: 500).
        let (parts, body) = req.into_parts();
        let body = Limited::new(body, MAX_PDP_BODY)
            .collect()
            .await
            .map_err(|e| pdp::Refused::new(400, format!("Invalid request body: {e}")))?
            .to_bytes();
        let policy = match face {
            Face::Main => pdp::authorize_caller(state, &parts.headers).await?,
            Face::Pdp => pdp::authorize_service_header(state, &parts.headers)?,
        };
        let entrypoint = pdp::entrypoint(pdp::entrypoint_of(parts.uri.path()).unwrap_or(""))?;
        pdp::answer(&policy, entrypoint, &body)
    };
    let answered = answered.await;
    if let Some((span, entrypoint)) = span {
        let status = answered.as_ref().map_or_else(|r| r.status, |_| 200);
        span.finish_pdp(&entrypoint, status);
    }
    match answered {
        Ok(result) => json(StatusCode::OK, result.to_string()),
        Err(refused) => {
            let status = StatusCode::from_u16(refused.status).unwrap_or(StatusCode::BAD_REQUEST);
            let mut response = json(status, super::detail_body(&refused.detail));
            if refused.status == 401 {
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    header::HeaderValue::from_static("Bearer realm=\"nmp\""),
                );
            }
            response
        }
    }
}

fn json(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}
