//! Traces: one span per authorization request (gRPC Check, HTTP authorization endpoint) that
//! continues the trace the request carries (W3C `traceparent`/`tracestate`, else B3), with the
//! decision's facts, exported over OTLP (gRPC or HTTP/protobuf) in batches from a thread of the
//! OpenTelemetry SDK's own. Sampling is parent-based: a request's sampled flag is followed, and
//! a request with no trace context starts one with `traces.sample_ratio`. Off by default; off,
//! `State::traces` is `None` and a request pays one branch.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::http;
use nmp_authz_core::verdict::{Status, Verdict};
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, TraceContextExt, TraceFlags, TraceId, TraceState,
    Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider,
};

use crate::config::{OtlpProtocol, TracesConfig};

/// How often finished spans are sent (or sooner, by the batch).
const EXPORT_EVERY: Duration = Duration::from_secs(1);
/// Bound on one export request.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Traces {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    record_principal: bool,
    propagator: TraceContextPropagator,
}

impl std::fmt::Debug for Traces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Traces").finish_non_exhaustive()
    }
}

/// Where a request's trace context is: Envoy's gRPC call metadata (the ext_authz client span,
/// when Envoy traces), then the request's own headers (the client's context).
#[derive(Debug, Clone, Copy, Default)]
pub enum Carrier<'a> {
    #[default]
    None,
    /// The CheckRequest's headers (lower-case names), and the gRPC call's metadata.
    Check(
        &'a [crate::server::check_request::Header],
        Option<&'a tonic::metadata::MetadataMap>,
    ),
    /// The HTTP authorization request's headers.
    Http(&'a hyper::HeaderMap),
}

/// The CheckRequest's headers (Envoy sends lower-case names).
struct MapHeaders<'a>(&'a [crate::server::check_request::Header]);

impl Extractor for MapHeaders<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        let header = self.0.iter().rev().find(|h| h.name == key)?;
        Some(&header.value)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|h| h.name.as_str()).collect()
    }
}

struct Metadata<'a>(&'a tonic::metadata::MetadataMap);

impl Extractor for Metadata<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key)?.to_str().ok()
    }

    fn keys(&self) -> Vec<&str> {
        Vec::new()
    }
}

struct Headers<'a>(&'a hyper::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key)?.to_str().ok()
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

impl Traces {
    /// Builds the exporter and the tracer. Inside the server's runtime: the gRPC exporter's
    /// channel and the HTTP exporter's client run on it.
    pub fn start(config: &TracesConfig) -> anyhow::Result<Self> {
        if tokio::runtime::Handle::try_current().is_err() {
            anyhow::bail!("the OTLP exporter needs the server's runtime");
        }
        let exporter = match config.protocol {
            OtlpProtocol::Grpc => opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(config.endpoint.clone())
                .with_timeout(EXPORT_TIMEOUT)
                .build()?,
            OtlpProtocol::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_http_client(RuntimeHttpClient::new())
                .with_endpoint(config.endpoint.clone())
                .with_timeout(EXPORT_TIMEOUT)
                .build()?,
        };
        let processor = BatchSpanProcessor::builder(exporter)
            .with_batch_config(
                BatchConfigBuilder::default()
                    .with_scheduled_delay(EXPORT_EVERY)
                    .build(),
            )
            .build();
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name(config.service_name.clone())
            .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                config.sample_ratio,
            ))))
            .with_resource(resource)
            .build();
        let tracer = provider.tracer("nmp-authz");
        tracing::info!(
            endpoint = %config.endpoint,
            protocol = config.protocol.as_str(),
            sample_ratio = config.sample_ratio,
            "traces exported over OTLP"
        );
        Ok(Self {
            provider,
            tracer,
            record_principal: config.record_principal,
            propagator: TraceContextPropagator::new(),
        })
    }

    /// The span of one authorization request, started now as a child of the context
    /// `carrier` holds.
    pub(crate) fn start_span(&self, carrier: &Carrier<'_>) -> RequestSpan {
        self.start_named("authorize", carrier)
    }

    /// The span of one PDP call (NMP's `allow`, `has_permissions`, `has_role`).
    pub(crate) fn start_pdp_span(&self, carrier: &Carrier<'_>) -> RequestSpan {
        self.start_named("pdp", carrier)
    }

    fn start_named(&self, name: &'static str, carrier: &Carrier<'_>) -> RequestSpan {
        let parent = match carrier {
            Carrier::None => None,
            Carrier::Check(headers, metadata) => metadata
                .and_then(|m| self.parent(&Metadata(m)))
                .or_else(|| self.parent(&MapHeaders(headers))),
            Carrier::Http(headers) => self.parent(&Headers(headers)),
        }
        .unwrap_or_default();
        let span = self
            .tracer
            .span_builder(name)
            .with_kind(SpanKind::Server)
            .start_with_context(&self.tracer, &parent);
        RequestSpan {
            span,
            record_principal: self.record_principal,
        }
    }

    /// The remote parent in `carrier`: W3C trace context, else B3 (single or multiple headers).
    fn parent(&self, carrier: &dyn Extractor) -> Option<Context> {
        if carrier.get("traceparent").is_some() {
            let cx = self.propagator.extract(carrier);
            if cx.span().span_context().is_valid() {
                return Some(cx);
            }
        }
        let b3 = b3_context(carrier)?;
        Some(Context::new().with_remote_span_context(b3))
    }

    /// Sends what is still queued (at shutdown; blocks, so off the runtime's threads).
    pub fn shutdown(&self) {
        if let Err(e) = self.provider.shutdown_with_timeout(Duration::from_secs(2)) {
            tracing::warn!(error = %e, "traces: shutdown");
        }
    }
}

/// A B3 parent: `b3: {trace}-{span}[-{sampled}[-{parent}]]`, or `x-b3-traceid`,
/// `x-b3-spanid`, `x-b3-sampled` (`x-b3-flags: 1` is debug: sampled).
fn b3_context(carrier: &dyn Extractor) -> Option<SpanContext> {
    let (trace, span, sampled) = match carrier.get("b3") {
        Some(single) => {
            let mut parts = single.split('-');
            let trace = parts.next()?;
            let span = parts.next()?;
            (trace, span, parts.next())
        }
        None => (
            carrier.get("x-b3-traceid")?,
            carrier.get("x-b3-spanid")?,
            carrier
                .get("x-b3-flags")
                .filter(|f| *f == "1")
                .or_else(|| carrier.get("x-b3-sampled")),
        ),
    };
    // A 64-bit trace id is the low half of a 128-bit one.
    let trace = if trace.len() == 16 {
        TraceId::from_hex(&format!("{trace:0>32}")).ok()?
    } else if trace.len() == 32 {
        TraceId::from_hex(trace).ok()?
    } else {
        return None;
    };
    let span = (span.len() == 16).then(|| SpanId::from_hex(span).ok())??;
    let flags = match sampled {
        Some("1" | "d" | "true") => TraceFlags::SAMPLED,
        _ => TraceFlags::default(),
    };
    let context = SpanContext::new(trace, span, flags, true, TraceState::default());
    context.is_valid().then_some(context)
}

/// One request's span: ended with the verdict's facts.
pub(crate) struct RequestSpan {
    span: opentelemetry_sdk::trace::Span,
    record_principal: bool,
}

impl RequestSpan {
    /// Records `verdict` and ends the span (sent with the next batch, if sampled).
    pub(crate) fn finish(mut self, method: &str, path: &str, verdict: &Verdict<'_>) {
        if !self.span.is_recording() {
            return;
        }
        let principal = verdict.principal.as_deref();
        let kind = match principal.and_then(|p| p.id.as_deref()) {
            None if principal.is_none() => "none",
            Some(id) if id.starts_with("service:") => "service",
            _ => "user",
        };
        let mut attributes = vec![
            KeyValue::new(
                "nmp_authz.decision",
                if verdict.allowed() { "allow" } else { "deny" },
            ),
            KeyValue::new("nmp_authz.reason", verdict.outcome.as_str()),
            KeyValue::new(
                "http.response.status_code",
                i64::from(verdict.status.http()),
            ),
            KeyValue::new("nmp_authz.principal.kind", kind),
            KeyValue::new("http.request.method", method.to_string()),
            KeyValue::new(
                "url.path",
                path.split('?').next().unwrap_or_default().to_string(),
            ),
        ];
        if let Some(policy) = verdict.policy {
            attributes.push(KeyValue::new(
                "nmp_authz.policy.revision",
                policy.revision().to_string(),
            ));
        }
        if self.record_principal
            && let Some(id) = principal.and_then(|p| p.id.clone())
        {
            attributes.push(KeyValue::new("nmp_authz.principal.id", id));
        }
        self.span.set_attributes(attributes);
        if verdict.status == Status::Unavailable {
            self.span.set_status(opentelemetry::trace::Status::error(
                verdict.detail.to_string(),
            ));
        }
        self.span.end();
    }
}

impl RequestSpan {
    /// Records a PDP call's entrypoint and answer status (HTTP, or the one gRPC's code
    /// stands for) and ends the span.
    pub(crate) fn finish_pdp(mut self, entrypoint: &str, status: u16) {
        if !self.span.is_recording() {
            return;
        }
        self.span.set_attributes([
            KeyValue::new("nmp_authz.pdp.entrypoint", entrypoint.to_string()),
            KeyValue::new("http.response.status_code", i64::from(status)),
        ]);
        if status >= 500 {
            self.span
                .set_status(opentelemetry::trace::Status::error("PDP unavailable"));
        }
        self.span.end();
    }
}

/// The OTLP HTTP exporter's client: the SDK's export thread asks, the server's runtime sends
/// (hyper, rustls: http and https endpoints).
#[derive(Clone)]
struct RuntimeHttpClient {
    runtime: tokio::runtime::Handle,
    client: hyper_util::client::legacy::Client<
        hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
        Full<Bytes>,
    >,
}

impl std::fmt::Debug for RuntimeHttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RuntimeHttpClient")
    }
}

impl RuntimeHttpClient {
    fn new() -> Self {
        Self {
            runtime: tokio::runtime::Handle::current(),
            client: hyper_util::client::legacy::Client::builder(
                hyper_util::rt::TokioExecutor::new(),
            )
            .build(crate::fetch::https_connector()),
        }
    }
}

/// Bound on an OTLP answer read back (it is a small protobuf message).
const MAX_ANSWER_BYTES: usize = 64 * 1024;

impl opentelemetry_http::HttpClient for RuntimeHttpClient {
    fn send_bytes<'a, 'b>(
        &'a self,
        request: http::Request<Bytes>,
    ) -> Pin<
        Box<
            dyn Future<Output = Result<http::Response<Bytes>, opentelemetry_http::HttpError>>
                + Send
                + 'b,
        >,
    >
    where
        'a: 'b,
        Self: 'b,
    {
        let client = self.client.clone();
        let sent = self.runtime.spawn(async move {
            let (parts, body) = request.into_parts();
            let request = http::Request::from_parts(parts, Full::new(body));
            let response = client.request(request).await?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, MAX_ANSWER_BYTES)
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            Ok::<_, opentelemetry_http::HttpError>(http::Response::from_parts(parts, body))
        });
        Box::pin(async move { sent.await? })
    }
}
