//! Traces (README "Traces") from the real server to real OTLP receivers: the collector's own
//! gRPC trace service (`opentelemetry-proto`'s generated tonic server) and an OTLP/HTTP
//! endpoint decoding the same protobuf messages. A Check that carries a sampled W3C or B3
//! context gets one span, a child of the caller's span, with the decision's facts; one that
//! carries an unsampled context, or none under a ratio of 0, gets none.

mod common;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::bundle::{THINGS, document};
use common::check_request;
use common::process::Server;
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use http_body_util::{BodyExt, Full};
use nmp_authz::pdp_proto::policy_decision_client::PolicyDecisionClient;
use nmp_authz::pdp_proto::{AllowRequest, PrincipalInput};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost::Message;

/// Bound on a span's way to the receiver (the server exports every second).
const DEADLINE: Duration = Duration::from_secs(20);

/// A span as the receiver got it.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    name: String,
    kind: i32,
    attributes: BTreeMap<String, String>,
}

type Spans = Arc<Mutex<Vec<Received>>>;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn take(request: &ExportTraceServiceRequest, into: &Spans) {
    for resource in &request.resource_spans {
        let mut service = String::new();
        for kv in resource.resource.iter().flat_map(|r| &r.attributes) {
            if kv.key == "service.name"
                && let Some(AnyValue::StringValue(s)) =
                    kv.value.as_ref().and_then(|v| v.value.as_ref())
            {
                service = s.clone();
            }
        }
        for scope in &resource.scope_spans {
            for span in &scope.spans {
                let attributes = span
                    .attributes
                    .iter()
                    .map(|kv| {
                        let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                            Some(AnyValue::StringValue(s)) => s.clone(),
                            Some(AnyValue::IntValue(i)) => i.to_string(),
                            Some(AnyValue::BoolValue(b)) => b.to_string(),
                            other => format!("{other:?}"),
                        };
                        (kv.key.clone(), value)
                    })
                    .collect();
                into.lock().unwrap().push(Received {
                    service: service.clone(),
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    name: span.name.clone(),
                    kind: span.kind,
                    attributes,
                });
            }
        }
    }
}

struct GrpcReceiver(Spans);

#[tonic::async_trait]
impl TraceService for GrpcReceiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        take(request.get_ref(), &self.0);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// A receiver on a loopback port, on a runtime of its own; stops when dropped.
struct Receiver {
    spans: Spans,
    addr: SocketAddr,
    _runtime: tokio::runtime::Runtime,
}

impl Receiver {
    /// OTLP over gRPC: the collector's trace service.
    fn grpc() -> Receiver {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let spans = Spans::default();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let service = TraceServiceServer::new(GrpcReceiver(spans.clone()));
        runtime.spawn(async move {
            let incoming = futures_util::stream::unfold(listener, |listener| async move {
                let (stream, _) = listener.accept().await.ok()?;
                Some((Ok::<_, std::io::Error>(stream), listener))
            });
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming)
                .await
                .unwrap();
        });
        Receiver {
            spans,
            addr,
            _runtime: runtime,
        }
    }

    /// OTLP/HTTP with protobuf bodies: `POST /v1/traces`.
    fn http() -> Receiver {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let spans = Spans::default();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let into = spans.clone();
        runtime.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let into = into.clone();
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let into = into.clone();
                        async move {
                            let path_ok = req.uri().path() == "/v1/traces"
                                && req.method() == hyper::Method::POST
                                && req
                                    .headers()
                                    .get("content-type")
                                    .is_some_and(|v| v == "application/x-protobuf");
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            let status = match ExportTraceServiceRequest::decode(body) {
                                Ok(request) if path_ok => {
                                    take(&request, &into);
                                    200
                                }
                                _ => 400,
                            };
                            let answer = ExportTraceServiceResponse::default().encode_to_vec();
                            let mut response = hyper::Response::new(Full::new(Bytes::from(answer)));
                            *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                            response.headers_mut().insert(
                                "content-type",
                                hyper::header::HeaderValue::from_static("application/x-protobuf"),
                            );
                            Ok::<_, Infallible>(response)
                        }
                    },
                );
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
                );
            }
        });
        Receiver {
            spans,
            addr,
            _runtime: runtime,
        }
    }

    /// Waits (bounded) until spans of every trace in `traces` arrived; all spans so far.
    fn until(&self, traces: &[&str]) -> Vec<Received> {
        let start = Instant::now();
        loop {
            let spans = self.spans.lock().unwrap().clone();
            if traces
                .iter()
                .all(|t| spans.iter().any(|s| s.trace_id == *t))
            {
                return spans;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "spans of {traces:?} not received within {DEADLINE:?}; got {spans:#?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

struct Authz {
    server: Server,
    grpc: SocketAddr,
    http: SocketAddr,
    client: AuthorizationClient<tonic::transport::Channel>,
    runtime: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
}

impl Authz {
    /// nmp-authz with alice Viewer in ws1, bob bound nowhere, and `traces` as given.
    fn start(traces: &str) -> Authz {
        let dir = tempfile::tempdir().unwrap();
        let policy = dir.path().join("policy.json");
        std::fs::write(&policy, document("alice")).unwrap();
        let config = dir.path().join("config.yaml");
        std::fs::write(
            &config,
            format!(
                "auth:\n  allow_unsigned_jwt: true\n  bootstrap_bindings: false\npolicy:\n  \
                 sources:\n    - file: {}\ntraces:\n{traces}",
                policy.display()
            ),
        )
        .unwrap();
        let mut server = Server::start_with_config(&config);
        let (grpc, http) = server.addresses();
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let client = runtime
            .block_on(AuthorizationClient::connect(format!("http://{grpc}")))
            .unwrap();
        Authz {
            server,
            grpc,
            http,
            client,
            runtime,
            _dir: dir,
        }
    }

    fn check(&mut self, path: &str, who: &str, headers: &[(&str, &str)]) -> i32 {
        let authorization = format!("Bearer {}", common::gateway::unsigned_token(who, &[]));
        let mut all = vec![("authorization", authorization.as_str())];
        all.extend_from_slice(headers);
        let request = check_request("GET", path, None, &all);
        let response = self
            .runtime
            .block_on(self.client.check(request))
            .unwrap()
            .into_inner();
        common::http_status(&response)
    }
}

const T1: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const P1: &str = "00f067aa0ba902b7";
const T2: &str = "5bf92f3577b34da6a3ce929d0e0e4736";
const T3: &str = "6bf92f3577b34da6a3ce929d0e0e4736";
const P3: &str = "10f067aa0ba902b7";
const T4: &str = "7bf92f3577b34da6a3ce929d0e0e4736";
const P4: &str = "20f067aa0ba902b7";
const T6: &str = "9bf92f3577b34da6a3ce929d0e0e4736";
const P6: &str = "40f067aa0ba902b7";
const T7: &str = "abf92f3577b34da6a3ce929d0e0e4736";
const P7: &str = "50f067aa0ba902b7";

fn span_of<'a>(spans: &'a [Received], trace: &str) -> &'a Received {
    let of: Vec<&Received> = spans.iter().filter(|s| s.trace_id == trace).collect();
    assert_eq!(of.len(), 1, "one span for trace {trace}: {spans:#?}");
    of[0]
}

/// Over OTLP/gRPC with a ratio of 0: only requests whose context says sampled are traced,
/// each as a child of the caller's span, on gRPC Checks (W3C and B3), on the HTTP
/// authorization endpoint, and on PDP calls (HTTP and gRPC).
#[test]
fn sampled_contexts_are_continued_over_otlp_grpc() {
    let receiver = Receiver::grpc();
    let mut authz = Authz::start(&format!(
        "  enabled: true\n  endpoint: http://{}\n  sample_ratio: 0\n",
        receiver.addr
    ));
    // Not sampled: the caller said so, or (no context) the ratio did.
    let unsampled = format!("00-{T2}-{P1}-00");
    assert_eq!(
        authz.check(THINGS, "alice", &[("traceparent", &unsampled)]),
        200
    );
    assert_eq!(authz.check(THINGS, "alice", &[]), 200);
    // Sampled: W3C, B3 (single header), and W3C on the HTTP authorization endpoint.
    let sampled = format!("00-{T1}-{P1}-01");
    let path = format!("{THINGS}?token=secret");
    assert_eq!(
        authz.check(
            &path,
            "alice",
            &[("traceparent", &sampled), ("tracestate", "v=1")]
        ),
        200
    );
    let b3 = format!("{T3}-{P3}-1");
    assert_eq!(authz.check(THINGS, "bob", &[("b3", &b3)]), 403);
    let w3c = format!("00-{T4}-{P4}-01");
    let alice = format!("Bearer {}", common::gateway::unsigned_token("alice", &[]));
    let http = common::gateway::get(
        authz.http,
        &format!("/apis/auth/ext-authz{THINGS}"),
        &[("authorization", &alice), ("traceparent", &w3c)],
    );
    assert_eq!(http.status, 200);
    // NMP's PDP API, on the HTTP port and over gRPC, called by a service principal.
    let service = format!(
        "Bearer {}",
        common::gateway::unsigned_token("service:evaluator", &[])
    );
    let w3c = format!("00-{T6}-{P6}-01");
    let pdp = common::gateway::request_with_body(
        authz.http,
        "POST",
        "/apis/auth/v2/authz/has_role",
        &[
            ("authorization", &service),
            ("traceparent", &w3c),
            ("content-type", "application/json"),
        ],
        r#"{"input": {"principal_id": "alice", "workspace": "ws1", "role": "Viewer"}}"#,
    );
    assert_eq!(pdp.status, 200, "{pdp:?}");
    let mut grpc_pdp = authz
        .runtime
        .block_on(PolicyDecisionClient::connect(format!(
            "http://{}",
            authz.grpc
        )))
        .unwrap();
    let mut call = tonic::Request::new(AllowRequest {
        principal: Some(PrincipalInput {
            principal_id: Some("alice".into()),
            ..Default::default()
        }),
        method: "GET".into(),
        path: THINGS.into(),
        scopes: vec![],
    });
    let w3c = format!("00-{T7}-{P7}-01");
    call.metadata_mut()
        .insert("traceparent", w3c.parse().unwrap());
    call.metadata_mut()
        .insert("authorization", service.parse().unwrap());
    let allowed = authz.runtime.block_on(grpc_pdp.allow(call)).unwrap();
    assert!(allowed.get_ref().allowed);

    let spans = receiver.until(&[T1, T3, T4, T6, T7]);
    assert_eq!(spans.len(), 5, "only the sampled requests: {spans:#?}");
    for (trace, parent, entrypoint) in [(T6, P6, "has_role"), (T7, P7, "allow")] {
        let span = span_of(&spans, trace);
        assert_eq!(span.name, "pdp");
        assert_eq!(span.parent_span_id, parent);
        assert_eq!(
            span.attributes
                .get("nmp_authz.pdp.entrypoint")
                .map(String::as_str),
            Some(entrypoint)
        );
        assert_eq!(
            span.attributes
                .get("http.response.status_code")
                .map(String::as_str),
            Some("200")
        );
    }
    let allowed = span_of(&spans, T1);
    assert_eq!(allowed.parent_span_id, P1, "a child of the caller's span");
    assert_eq!(allowed.name, "authorize");
    assert_eq!(allowed.kind, 2, "SPAN_KIND_SERVER");
    assert_eq!(allowed.service, "nmp-authz");
    let attribute = |span: &Received, key: &str| span.attributes.get(key).cloned();
    assert_eq!(
        attribute(allowed, "nmp_authz.decision").as_deref(),
        Some("allow")
    );
    assert_eq!(
        attribute(allowed, "nmp_authz.reason").as_deref(),
        Some("workspace_permission")
    );
    assert_eq!(
        attribute(allowed, "http.response.status_code").as_deref(),
        Some("200")
    );
    assert_eq!(
        attribute(allowed, "nmp_authz.principal.kind").as_deref(),
        Some("user")
    );
    assert_eq!(
        attribute(allowed, "url.path").as_deref(),
        Some(THINGS),
        "no query"
    );
    assert!(attribute(allowed, "nmp_authz.policy.revision").is_some_and(|r| r.len() == 16));
    assert_eq!(
        attribute(allowed, "nmp_authz.principal.id"),
        None,
        "the identity only when configured"
    );
    let denied = span_of(&spans, T3);
    assert_eq!(denied.parent_span_id, P3);
    assert_eq!(
        attribute(denied, "nmp_authz.decision").as_deref(),
        Some("deny")
    );
    assert_eq!(
        attribute(denied, "http.response.status_code").as_deref(),
        Some("403")
    );
    assert_eq!(span_of(&spans, T4).parent_span_id, P4);
    assert!(
        !authz.server.output().contains("ERROR"),
        "{}",
        authz.server.output()
    );
}

/// Over OTLP/HTTP with a ratio of 1: a request with no context starts a trace (a root span),
/// and the principal id is recorded when configured.
#[test]
fn root_spans_are_sampled_by_ratio_over_otlp_http() {
    let receiver = Receiver::http();
    let mut authz = Authz::start(&format!(
        "  enabled: true\n  protocol: http/protobuf\n  endpoint: http://{}/v1/traces\n  \
         sample_ratio: 1\n  record_principal: true\n  service_name: authz-edge\n",
        receiver.addr
    ));
    assert_eq!(authz.check(THINGS, "alice", &[]), 200);
    let start = Instant::now();
    let span = loop {
        if let Some(span) = receiver.spans.lock().unwrap().first().cloned() {
            break span;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "no span within {DEADLINE:?}; log:\n{}",
            authz.server.output()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(span.parent_span_id, "", "a root span");
    assert_eq!(span.service, "authz-edge");
    assert_eq!(
        span.attributes
            .get("nmp_authz.principal.id")
            .map(String::as_str),
        Some("alice")
    );
}

/// Through the companion Envoy (envoy/quickstart.yaml) with Envoy's own tracing turned on
/// (its OpenTelemetry tracer, to the same receiver): a client's request yields one trace with
/// Envoy's spans and nmp-authz's span as a child of one of them.
#[test]
fn envoys_trace_contains_nmp_authzs_span_as_a_child() {
    use common::gateway::{Envoy, Loopback, NmpAuthz, QUICKSTART, Upstream, render, template};
    let receiver = Receiver::grpc();
    let quickstart = include_str!("../src/quickstart.yaml");
    let authz = NmpAuthz::start(&format!(
        "{quickstart}\ntraces:\n  enabled: true\n  endpoint: http://{}\n  sample_ratio: 0\n",
        receiver.addr
    ));
    let upstream = Upstream::start();
    let loopback = Loopback {
        authz_grpc: authz.grpc,
        authz_http: authz.http,
        api: upstream.addr(),
        idp: None,
    };
    let config = envoy_with_tracing(&render(&template(QUICKSTART), &loopback), receiver.addr);
    let envoy = Envoy::start(&config);
    const T5: &str = "8bf92f3577b34da6a3ce929d0e0e4736";
    const P5: &str = "30f067aa0ba902b7";
    let traceparent = format!("00-{T5}-{P5}-01");
    let alice = format!("Bearer {}", common::gateway::unsigned_token("alice", &[]));
    let response = common::gateway::get(
        envoy.addr(),
        "/apis/models/v2/workspaces/default/models",
        &[("authorization", &alice), ("traceparent", &traceparent)],
    );
    assert_eq!(response.status, 200, "{response:?}\n{}", envoy.log());

    // Envoy sends its spans in batches (every 5 s by default): wait for nmp-authz's and for
    // the Envoy span it names as its parent.
    let start = Instant::now();
    let (ours, parent) = loop {
        let spans = receiver.spans.lock().unwrap().clone();
        let ours = spans
            .iter()
            .find(|s| s.service == "nmp-authz" && s.trace_id == T5)
            .cloned();
        let parent = ours.as_ref().and_then(|o| {
            spans
                .iter()
                .find(|s| s.span_id == o.parent_span_id)
                .cloned()
        });
        if let (Some(ours), Some(parent)) = (ours, parent) {
            break (ours, parent);
        }
        assert!(
            start.elapsed() < DEADLINE,
            "no nmp-authz span under an Envoy span within {DEADLINE:?}: {spans:#?}\n{}",
            envoy.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    // Envoy's ext_authz call (a client span), under its ingress span, under the client's.
    assert_eq!(parent.service, "envoy-gateway", "{parent:#?}");
    assert_eq!(
        parent.name, "async envoy.service.auth.v3.Authorization.Check egress",
        "{parent:#?}"
    );
    let spans = receiver.spans.lock().unwrap().clone();
    let ingress = spans
        .iter()
        .find(|s| s.span_id == parent.parent_span_id)
        .unwrap_or_else(|| panic!("Envoy's ingress span: {spans:#?}"));
    assert_eq!(ingress.service, "envoy-gateway");
    assert_eq!(
        ingress.parent_span_id, P5,
        "Envoy continued the client's trace"
    );
    assert_eq!(parent.trace_id, T5, "one trace, the client's");
    assert_ne!(
        ours.parent_span_id, P5,
        "under Envoy's span, not the client's"
    );
    assert_eq!(
        ours.attributes
            .get("nmp_authz.decision")
            .map(String::as_str),
        Some("allow")
    );
}

/// `config` (a rendered companion config) with Envoy's tracing on: every request traced, its
/// OpenTelemetry tracer sending OTLP over gRPC to `collector`.
fn envoy_with_tracing(config: &str, collector: SocketAddr) -> String {
    let tracing = "                tracing:
                  random_sampling: { value: 100 }
                  provider:
                    name: envoy.tracers.opentelemetry
                    typed_config:
                      \"@type\": type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig
                      grpc_service:
                        envoy_grpc: { cluster_name: otel_collector }
                        timeout: 1s
                      service_name: envoy-gateway
";
    let cluster = format!(
        "    - name: otel_collector
      type: STATIC
      connect_timeout: 1s
      typed_extension_protocol_options:
        envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
          \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
          explicit_http_config:
            http2_protocol_options: {{}}
      load_assignment:
        cluster_name: otel_collector
        endpoints:
          - lb_endpoints:
              - endpoint:
                  address:
                    socket_address: {{ address: {}, port_value: {} }}
",
        collector.ip(),
        collector.port()
    );
    let stat_prefix = "                stat_prefix: nmp_gateway\n";
    assert!(config.contains(stat_prefix) && config.contains("\n  clusters:\n"));
    config
        .replacen(stat_prefix, &format!("{stat_prefix}{tracing}"), 1)
        .replacen("\n  clusters:\n", &format!("\n  clusters:\n{cluster}"), 1)
}

/// `explain` with a configuration that has traces on: an offline tool traces nothing and
/// needs no exporter (it once panicked building one outside a runtime).
#[test]
fn explain_runs_with_traces_configured() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        "auth:\n  allow_unsigned_jwt: true\npolicy:\n  sources:\n    - builtin: true\n\
         traces:\n  enabled: true\n",
    )
    .unwrap();
    let out = common::process::nmp_authz()
        .args(["explain", "--config"])
        .arg(&config)
        .args([
            "--principal-id",
            "alice",
            "GET",
            "/apis/models/v2/workspaces/default/models",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", common::process::describe(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("ALLOW 200"));
}
