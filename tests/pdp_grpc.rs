//! The project's PDP service (`nmp_authz.v1.PolicyDecision`) over loopback gRPC: NMP's
//! `allow`, `has_permissions` and `has_role`, callable by `service:` principals only.

mod common;

use std::sync::Arc;

use nmp_authz::config::Config;
use nmp_authz::pdp_proto::policy_decision_client::PolicyDecisionClient;
use nmp_authz::pdp_proto::{AllowRequest, HasPermissionsRequest, HasRoleRequest, PrincipalInput};
use nmp_authz::server::{State, grpc};
use tokio::sync::watch;
use tonic::transport::Channel;

/// An unsigned quickstart token, built by the tests (not by the server).
fn unsigned_token(sub: &str) -> String {
    common::gateway::unsigned_token(sub, &[])
}

struct Pdp {
    client: PolicyDecisionClient<Channel>,
    _stop: watch::Sender<bool>,
}

async fn start(auth_enabled: bool) -> Pdp {
    start_with(auth_enabled, |_| ()).await
}

/// [`start`] with the server's state adjusted first (staleness, bootstrapping).
async fn start_with(auth_enabled: bool, adjust: impl FnOnce(&State)) -> Pdp {
    let mut config = Config::default();
    config.auth.enabled = auth_enabled;
    config.auth.allow_unsigned_jwt = true;
    let state = State::new(&config, Some(common::policy(common::DECISION_POLICY)));
    adjust(&state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = watch::channel(false);
    tokio::spawn(grpc::serve(listener, Arc::new(state), stopped));
    let client = PolicyDecisionClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    Pdp {
        client,
        _stop: stop,
    }
}

fn as_caller<T>(message: T, caller: Option<&str>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(sub) = caller {
        let value = format!("Bearer {}", unsigned_token(sub)).parse().unwrap();
        request.metadata_mut().insert("authorization", value);
    }
    request
}

fn input(id: &str) -> Option<PrincipalInput> {
    Some(PrincipalInput {
        principal_id: Some(id.into()),
        ..Default::default()
    })
}

fn allow_request(id: &str, method: &str, path: &str) -> AllowRequest {
    AllowRequest {
        principal: input(id),
        method: method.into(),
        path: path.into(),
        scopes: vec![],
    }
}

const MODELS: &str = "/apis/models/v2/workspaces/ws1/models";

#[tokio::test]
async fn allow_answers_as_nmp() {
    let mut pdp = start(true).await;
    let caller = Some("service:evaluator");
    let yes = pdp
        .client
        .allow(as_caller(allow_request("alice", "POST", MODELS), caller))
        .await
        .unwrap()
        .into_inner();
    assert!(yes.allowed);
    assert_eq!(yes.headers["X-NMP-Authorized"], "true");

    let no = pdp
        .client
        .allow(as_caller(allow_request("viv", "POST", MODELS), caller))
        .await
        .unwrap()
        .into_inner();
    assert!(!no.allowed);
    assert_eq!(no.headers["X-NMP-Authorized"], "false");

    // Scopes narrow: Editor alice with a read-only platform scope cannot write.
    let mut scoped = allow_request("alice", "POST", MODELS);
    scoped.scopes = vec!["platform:read".into()];
    let scoped = pdp
        .client
        .allow(as_caller(scoped, caller))
        .await
        .unwrap()
        .into_inner();
    assert!(!scoped.allowed);
}

#[tokio::test]
async fn has_permissions_and_has_role() {
    let mut pdp = start(true).await;
    let caller = Some("service:evaluator");
    let perms = |id: &str, ws: &str, perms: &[&str]| HasPermissionsRequest {
        principal: input(id),
        workspace: ws.into(),
        permissions: perms.iter().map(|p| p.to_string()).collect(),
    };
    let held = pdp
        .client
        .has_permissions(as_caller(
            perms("alice", "ws1", &["models.read", "models.write"]),
            caller,
        ))
        .await
        .unwrap();
    assert!(held.into_inner().allowed);
    let not_held = pdp
        .client
        .has_permissions(as_caller(perms("alice", "ws1", &["models.delete"]), caller))
        .await
        .unwrap();
    assert!(!not_held.into_inner().allowed);
    let elsewhere = pdp
        .client
        .has_permissions(as_caller(perms("alice", "ws2", &["models.read"]), caller))
        .await
        .unwrap();
    assert!(!elsewhere.into_inner().allowed);

    let role = |id: &str, ws: &str, role: &str| HasRoleRequest {
        principal: input(id),
        workspace: ws.into(),
        role: role.into(),
    };
    let editor = pdp
        .client
        .has_role(as_caller(role("alice", "ws1", "Editor"), caller))
        .await
        .unwrap();
    assert!(editor.into_inner().has_role);
    // Roles are bound, not inherited: Editor includes Viewer, but alice is not bound Viewer.
    let viewer = pdp
        .client
        .has_role(as_caller(role("alice", "ws1", "Viewer"), caller))
        .await
        .unwrap();
    assert!(!viewer.into_inner().has_role);
    // A service id without bindings in a workspace holds ServiceSystem there.
    let service = pdp
        .client
        .has_role(as_caller(
            role("service:jobs", "ws7", "ServiceSystem"),
            caller,
        ))
        .await
        .unwrap();
    assert!(service.into_inner().has_role);
}

#[tokio::test]
async fn only_service_principals_may_call() {
    let mut pdp = start(true).await;
    let request = || allow_request("alice", "GET", MODELS);
    let anonymous = pdp
        .client
        .allow(as_caller(request(), None))
        .await
        .unwrap_err();
    assert_eq!(anonymous.code(), tonic::Code::Unauthenticated);
    let human = pdp
        .client
        .allow(as_caller(request(), Some("alice")))
        .await
        .unwrap_err();
    assert_eq!(human.code(), tonic::Code::PermissionDenied);
    let service = pdp
        .client
        .allow(as_caller(request(), Some("service:evaluator")))
        .await;
    assert!(service.is_ok());
}

/// NMP's PDP evaluates whatever principal it is given (DESIGN §1): an id NMP's header parser
/// would refuse, or an empty one, is an ordinary input, never an error.
#[tokio::test]
async fn input_principals_are_evaluated_not_validated() {
    let mut pdp = start(true).await;
    let caller = Some("service:evaluator");
    for odd in ["bad id!", "auth0|abc123", ""] {
        let answer = pdp
            .client
            .allow(as_caller(allow_request(odd, "GET", MODELS), caller))
            .await
            .unwrap_or_else(|e| panic!("{odd:?}: {e}"))
            .into_inner();
        assert!(!answer.allowed, "{odd:?} is bound nowhere");
    }
    // A scope written like a permission is no platform scope (no `:`): the check passes, as in
    // NMP's policy (NMP's client refuses to send one; its PDP does not refuse to decide).
    let mut scoped = allow_request("alice", "GET", MODELS);
    scoped.scopes = vec!["models.read".into()];
    let answer = pdp.client.allow(as_caller(scoped, caller)).await.unwrap();
    assert!(answer.into_inner().allowed);
}

/// Stale policy data fails closed on the PDP as on Check (it answered from stale data before);
/// while a source has never loaded, only questions about service principals are answered.
#[tokio::test]
async fn stale_data_fails_closed_and_bootstrap_answers_services_only() {
    use std::sync::atomic::Ordering;
    let caller = Some("service:evaluator");
    let mut stale = start_with(true, |s| s.stale.store(true, Ordering::Relaxed)).await;
    let refused = stale
        .client
        .allow(as_caller(allow_request("alice", "POST", MODELS), caller))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable);
    assert!(refused.message().contains("stale"), "{refused:?}");
    let mut booting = start_with(true, |s| {
        s.stale.store(true, Ordering::Relaxed);
        s.bootstrapping.store(true, Ordering::Relaxed);
    })
    .await;
    let service = booting
        .client
        .allow(as_caller(
            allow_request("service:auth", "GET", MODELS),
            caller,
        ))
        .await
        .unwrap();
    assert!(service.into_inner().allowed);
    let human = booting
        .client
        .allow(as_caller(allow_request("alice", "POST", MODELS), caller))
        .await
        .unwrap_err();
    assert_eq!(human.code(), tonic::Code::Unavailable);
}

#[tokio::test]
async fn with_auth_disabled_anyone_may_call() {
    let mut pdp = start(false).await;
    let answer = pdp
        .client
        .allow(as_caller(allow_request("alice", "GET", MODELS), None))
        .await
        .unwrap()
        .into_inner();
    assert!(answer.allowed);
}

/// `grpc.health.v1` follows readiness: NOT_SERVING without policy data, SERVING with it.
#[tokio::test]
async fn grpc_health_follows_readiness() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let status_of = |policy: Option<nmp_authz_core::policy::CompiledPolicy>| async move {
        let state = State::new(&Config::default(), policy);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (_stop, stopped) = watch::channel(false);
        tokio::spawn(grpc::serve(listener, Arc::new(state), stopped));
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut client = HealthClient::new(channel);
        let service = "envoy.service.auth.v3.Authorization";
        // The reporter publishes at start; ask until it has (bounded).
        for _ in 0..100 {
            let answer = client
                .check(HealthCheckRequest {
                    service: service.into(),
                })
                .await;
            if let Ok(answer) = answer {
                return answer.into_inner().status();
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        panic!("no health status for {service}");
    };
    assert_eq!(status_of(None).await, ServingStatus::NotServing);
    let policy = common::policy(common::DECISION_POLICY);
    assert_eq!(status_of(Some(policy)).await, ServingStatus::Serving);
}

/// NMP's PDP over HTTP: `POST /apis/auth/v2/authz/{entrypoint}` with `{"input": ...}`.
mod http_face {
    use super::*;
    use std::io::{Read, Write};

    /// The HTTP face on loopback; it serves until the returned sender is dropped.
    async fn start() -> (std::net::SocketAddr, watch::Sender<bool>) {
        let mut config = Config::default();
        config.auth.allow_unsigned_jwt = true;
        let state = State::new(&config, Some(common::policy(common::DECISION_POLICY)));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = watch::channel(false);
        tokio::spawn(nmp_authz::server::http::serve(
            listener,
            Arc::new(state),
            stopped,
            nmp_authz::server::http::Face::Main,
        ));
        (addr, stop)
    }

    /// (status, JSON body) of one request, over a plain TCP stream.
    async fn call(
        addr: std::net::SocketAddr,
        method: &str,
        path: &str,
        caller: Option<&str>,
        body: &str,
    ) -> (u16, serde_json::Value) {
        let authorization = caller
            .map(|sub| format!("Authorization: Bearer {}\r\n", unsigned_token(sub)))
            .unwrap_or_default();
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{authorization}\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        tokio::task::spawn_blocking(move || {
            let mut stream = std::net::TcpStream::connect(addr).unwrap();
            stream.write_all(request.as_bytes()).unwrap();
            let mut response = String::new();
            stream.read_to_string(&mut response).unwrap();
            let status = response.split_whitespace().nth(1).unwrap().parse().unwrap();
            let body = response.split_once("\r\n\r\n").unwrap().1;
            (
                status,
                serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
            )
        })
        .await
        .unwrap()
    }

    const ALLOW: &str = "/apis/auth/v2/authz/allow";
    const SERVICE: Option<&str> = Some("service:evaluator");

    #[tokio::test]
    async fn entrypoints_answer_as_nmp() {
        let (addr, _stop) = start().await;
        let input = |i: serde_json::Value| serde_json::json!({ "input": i }).to_string();
        let allow = input(serde_json::json!({
            "principal_id": "alice", "method": "POST", "path": MODELS
        }));
        assert_eq!(
            call(addr, "POST", ALLOW, SERVICE, &allow).await,
            (
                200,
                serde_json::json!({"result": {"allowed": true, "headers": {"X-NMP-Authorized": "true"}}})
            )
        );
        let viewer =
            input(serde_json::json!({"principal_id": "viv", "method": "POST", "path": MODELS}));
        let (_, denied) = call(addr, "POST", ALLOW, SERVICE, &viewer).await;
        assert_eq!(denied["result"]["allowed"], false);
        assert_eq!(denied["result"]["headers"]["X-NMP-Authorized"], "false");

        let perms = input(serde_json::json!({
            "principal_id": "alice", "workspace": "ws1", "permissions": ["models.read", "models.write"]
        }));
        let path = "/apis/auth/v2/authz/has_permissions";
        assert_eq!(
            call(addr, "POST", path, SERVICE, &perms).await,
            (200, serde_json::json!({"result": {"allowed": true}}))
        );
        let role = input(
            serde_json::json!({"principal_id": "alice", "workspace": "ws1", "role": "Owner"}),
        );
        let path = "/apis/auth/v2/authz/has_role";
        assert_eq!(
            call(addr, "POST", path, SERVICE, &role).await,
            (200, serde_json::json!({"result": {"has_role": false}}))
        );
    }

    #[tokio::test]
    async fn callers_and_bad_requests_are_refused() {
        let (addr, _stop) = start().await;
        let body = r#"{"input": {"principal_id": "alice", "method": "GET", "path": "/"}}"#;
        assert_eq!(call(addr, "POST", ALLOW, None, body).await.0, 401);
        assert_eq!(call(addr, "POST", ALLOW, Some("alice"), body).await.0, 403);
        assert_eq!(
            call(addr, "POST", "/apis/auth/v2/authz/nope", SERVICE, body)
                .await
                .0,
            400
        );
        assert_eq!(call(addr, "POST", ALLOW, SERVICE, "{not json").await.0, 400);
        let bad_id = r#"{"input": {"principal_id": "bad id!", "method": "GET", "path": "/"}}"#;
        let (status, answer) = call(addr, "POST", ALLOW, SERVICE, bad_id).await;
        assert_eq!((status, &answer["result"]["allowed"]), (200, &false.into()));
        assert_eq!(
            call(addr, "POST", ALLOW, SERVICE, r#"{"input": []}"#)
                .await
                .0,
            400
        );
        assert_eq!(call(addr, "GET", ALLOW, SERVICE, "").await.0, 405);
    }
}
