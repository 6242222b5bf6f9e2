//! HTTP: liveness, readiness, Prometheus metrics and the auth discovery document.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode, header};
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::sync::watch;

use super::State;
use crate::identity;

pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<State>,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => accepted?,
            _ = shutdown.wait_for(|stop| *stop) => break,
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        let service = hyper::service::service_fn(move |req| {
            let state = state.clone();
            async move { Ok::<_, Infallible>(route(&state, &req)) }
        });
        let connection = hyper::server::conn::http1::Builder::new()
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

fn route(state: &State, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return json(
            StatusCode::METHOD_NOT_ALLOWED,
            r#"{"detail":"Method not allowed"}"#.into(),
        );
    }
    match req.uri().path() {
        "/health/live" | "/healthz" => json(StatusCode::OK, r#"{"status":"ok"}"#.into()),
        "/apis/auth/discovery" => json(StatusCode::OK, state.discovery.clone()),
        "/health/ready" | "/readyz" => {
            if state.ready() {
                json(StatusCode::OK, r#"{"status":"ready"}"#.into())
            } else {
                json(
                    StatusCode::SERVICE_UNAVAILABLE,
                    r#"{"status":"not ready","detail":"no valid policy data"}"#.into(),
                )
            }
        }
        "/metrics" => {
            let policy = state.policy.load();
            let loaded_at = state.policy_loaded_at.load(Ordering::Relaxed);
            let age = (loaded_at > 0).then(|| identity::unix_now().saturating_sub(loaded_at));
            let body = state.metrics.render(
                policy.as_ref().map(|p| p.revision()),
                age,
                state.stale.load(Ordering::Relaxed),
                state.ready(),
            );
            let mut response = Response::new(Full::new(Bytes::from(body)));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            response
        }
        _ => json(StatusCode::NOT_FOUND, r#"{"detail":"Not found"}"#.into()),
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
