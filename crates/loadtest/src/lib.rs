//! `nmp-authz-loadtest`: a gRPC load tester for `envoy.service.auth.v3.Authorization/Check`.
//!
//! Generic HTTP/2 tools (h2load, oha) count a gRPC denial as a success: it is HTTP 200 with
//! `grpc-status` in the trailers. This client reads every CheckResponse and counts allowed,
//! denied (by the HTTP status Envoy would return) and gRPC errors (by code) separately, with
//! per-request latency in an HDR histogram.

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use hdrhistogram::Histogram;
use nmp_authz::requests;
use tokio::sync::Semaphore;
use tonic::transport::{Channel, Endpoint};

/// Longest run `--duration` accepts, in seconds.
pub const MAX_DURATION_SECS: u64 = 3600;
/// Request count when neither `--requests` nor `--duration` is given.
pub const DEFAULT_REQUESTS: u64 = 10_000;
/// Highest latency the histogram records (larger values are clamped), in microseconds.
const MAX_LATENCY_US: u64 = 3_600_000_000;

const AFTER_HELP: &str = "\
BOUNDS: the run stops at --requests COUNT or after --duration SECS, whichever comes first; \
with neither, --requests 10000.

RATE: --rate R issues R requests/second in total from a ticker (open loop while --concurrency \
allows: if every slot is busy, owed requests are sent as soon as one frees). Latency is \
measured from sending each request to its response. Without --rate, full speed.

REQUEST MIX: without --requests-file, a built-in mix against the built-in catalog with \
unsigned quickstart tokens (alg none; for `nmp-authz serve` without --config), sent round \
robin:
  GET  /apis/models/v2/workspaces/default/models  as alice   (200: bootstrap Editor)
  POST /apis/models/v2/workspaces/system/models   as alice   (403: Viewer only)
  GET  /apis/models/v2/workspaces/default/models  no token   (401)
  GET  /health/live                               no token   (200)

--catalog instead sends one request per endpoint pattern and method of the built-in catalog \
(about 200), as alice with an unsigned token, placeholders filled (workspace `default`, a \
`/-/` tail `a/b`, other names `item`): every route, allowed or denied as the policy says.

--requests-file FILE is a JSON array, sent round robin, of
  {\"method\": \"GET\", \"path\": \"/apis/...\", \"headers\": {\"name\": \"value\"}, \"subject\": \"alice\", \
   \"jwt_authn\": {\"sub\": \"alice\", \"scope\": \"models:read\"}}
where `headers` (lower-cased), `subject` (adds `authorization: Bearer <unsigned token for \
that subject>`) and `jwt_authn` (claims sent as Envoy's jwt_authn filter passes them on, in \
the request metadata under `jwt_payload`) are optional.

OUTPUT (text, or one JSON object with --json): requests, duration_seconds, throughput_rps, \
allowed, denied {HTTP status: count}, errors {gRPC code: count}, latency_us {p50, p90, p99, \
p99_9, max}. A denial is counted as a denial, not a success. Exit status is non-zero on bad \
input, or when every request failed with a gRPC error (the report is still printed).";

/// Drive `Authorization/Check` and report allowed, denied by status, errors and latency.
#[derive(clap::Args, Debug, Clone)]
#[command(after_help = AFTER_HELP)]
pub struct Args {
    /// gRPC server address, HOST:PORT (an `http://` prefix is accepted). Must be loopback
    /// (127.0.0.0/8, ::1) unless --allow-remote is given.
    #[arg(long, default_value = "127.0.0.1:9191")]
    pub target: String,
    /// Allow a target that is not a loopback address.
    #[arg(long)]
    pub allow_remote: bool,
    /// Number of HTTP/2 connections (channels), 1..=256.
    #[arg(long, default_value_t = 2)]
    pub connections: usize,
    /// Requests in flight in total across all connections, 1..=10000.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Stop after this many requests (default 10000 when --duration is not given either).
    #[arg(long)]
    pub requests: Option<u64>,
    /// Stop after this many seconds, 1..=3600.
    #[arg(long)]
    pub duration: Option<u64>,
    /// Requests per second in total (fixed rate); absent means full speed.
    #[arg(long)]
    pub rate: Option<f64>,
    /// JSON array of requests to send round robin (schema below) instead of the built-in mix.
    #[arg(long, conflicts_with = "catalog")]
    pub requests_file: Option<PathBuf>,
    /// Send one request per endpoint pattern and method of the built-in catalog instead of the
    /// built-in mix (see REQUEST MIX below).
    #[arg(long)]
    pub catalog: bool,
    /// Per-request deadline in seconds (a request past it counts as a gRPC error).
    #[arg(long, default_value_t = 10)]
    pub timeout: u64,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// A validated run plan.
#[derive(Debug)]
pub struct Plan {
    pub target: SocketAddr,
    pub connections: usize,
    pub concurrency: usize,
    pub requests: Option<u64>,
    pub duration: Option<Duration>,
    pub rate: Option<f64>,
    pub timeout: Duration,
    pub mix: Vec<CheckRequest>,
}

/// What a run measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    pub target: String,
    pub connections: usize,
    pub concurrency: usize,
    pub rate: Option<f64>,
    pub requests: u64,
    pub duration_seconds: f64,
    pub throughput_rps: f64,
    pub allowed: u64,
    pub denied: BTreeMap<String, u64>,
    pub errors: BTreeMap<String, u64>,
    pub latency_us: Latency,
    /// The first gRPC error seen, for the exit message.
    #[serde(skip)]
    pub first_error: Option<String>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Latency {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p99_9: u64,
    pub max: u64,
}

impl Args {
    /// Checks the arguments and builds the request mix; the error is one line.
    pub fn plan(&self) -> Result<Plan, String> {
        let target = resolve_target(&self.target, self.allow_remote)?;
        if !(1..=256).contains(&self.connections) {
            return Err(format!(
                "--connections must be 1..=256, got {}",
                self.connections
            ));
        }
        if !(1..=10_000).contains(&self.concurrency) {
            return Err(format!(
                "--concurrency must be 1..=10000, got {}",
                self.concurrency
            ));
        }
        if self.requests == Some(0) {
            return Err("--requests must be at least 1".into());
        }
        if let Some(secs) = self.duration
            && !(1..=MAX_DURATION_SECS).contains(&secs)
        {
            return Err(format!(
                "--duration must be 1..={MAX_DURATION_SECS} seconds, got {secs}"
            ));
        }
        if let Some(rate) = self.rate
            && !(rate.is_finite() && rate > 0.0 && rate <= 10_000_000.0)
        {
            return Err(format!("--rate must be > 0 and <= 10000000, got {rate}"));
        }
        if self.timeout == 0 || self.timeout > MAX_DURATION_SECS {
            return Err(format!(
                "--timeout must be 1..={MAX_DURATION_SECS} seconds, got {}",
                self.timeout
            ));
        }
        let requests = match (self.requests, self.duration) {
            (None, None) => Some(DEFAULT_REQUESTS),
            (requests, _) => requests,
        };
        let duration = self.duration.map(Duration::from_secs);
        // Tokens outlive the run.
        let token_life = self.duration.unwrap_or(0) + 3600;
        let mix = match &self.requests_file {
            Some(path) => requests::read_mix(path, token_life)?,
            None if self.catalog => requests::catalog_mix(token_life),
            None => requests::default_mix(token_life),
        };
        Ok(Plan {
            target,
            connections: self.connections,
            concurrency: self.concurrency,
            requests,
            duration,
            rate: self.rate,
            timeout: Duration::from_secs(self.timeout),
            mix,
        })
    }
}

/// Resolves `HOST:PORT` (optionally `http://HOST:PORT`) and refuses non-loopback addresses
/// unless allowed.
pub fn resolve_target(target: &str, allow_remote: bool) -> Result<SocketAddr, String> {
    let bare = target.strip_prefix("http://").unwrap_or(target);
    let bare = bare.strip_suffix('/').unwrap_or(bare);
    if bare.is_empty() || bare.contains('/') {
        return Err(format!("--target must be HOST:PORT, got {target:?}"));
    }
    let addrs: Vec<SocketAddr> = bare
        .to_socket_addrs()
        .map_err(|e| format!("--target {target:?}: {e}"))?
        .collect();
    let Some(first) = addrs.first().copied() else {
        return Err(format!("--target {target:?} resolves to no address"));
    };
    if !allow_remote && let Some(remote) = addrs.iter().find(|a| !a.ip().is_loopback()) {
        return Err(format!(
            "--target {target} ({}) is not a loopback address; pass --allow-remote to load a \
             remote server",
            remote.ip()
        ));
    }
    Ok(first)
}

/// Per-worker tallies, merged at the end.
struct Tally {
    histogram: Histogram<u64>,
    allowed: u64,
    denied: BTreeMap<String, u64>,
    errors: BTreeMap<String, u64>,
    first_error: Option<String>,
}

impl Tally {
    fn new() -> Self {
        Self {
            histogram: Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
                .expect("valid histogram bounds"),
            allowed: 0,
            denied: BTreeMap::new(),
            errors: BTreeMap::new(),
            first_error: None,
        }
    }

    fn count(&self) -> u64 {
        self.allowed + self.denied.values().sum::<u64>() + self.errors.values().sum::<u64>()
    }

    fn record(&mut self, latency: Duration, result: Result<CheckOutcome, tonic::Status>) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.histogram.saturating_record(micros.max(1));
        match result {
            Ok(response) => match classify(&response) {
                None => self.allowed += 1,
                Some(status) => *self.denied.entry(status).or_default() += 1,
            },
            Err(status) => {
                *self
                    .errors
                    .entry(format!("{:?}", status.code()))
                    .or_default() += 1;
                if self.first_error.is_none() {
                    self.first_error = Some(format!("{:?}: {}", status.code(), status.message()));
                }
            }
        }
    }

    fn merge(&mut self, other: Tally) {
        self.histogram
            .add(&other.histogram)
            .expect("same histogram bounds");
        self.allowed += other.allowed;
        for (k, v) in other.denied {
            *self.denied.entry(k).or_default() += v;
        }
        for (k, v) in other.errors {
            *self.errors.entry(k).or_default() += v;
        }
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

/// What the load tester reads of a `CheckResponse`: its outcome, not the headers and decision
/// metadata an answer carries. Decoding those into envoy-types' message cost this client ~2.4 µs
/// a request more against nmp-authz than against a do-nothing server (whose answer carries
/// none), on the cores the server under test shares with it (BENCHMARKS.md 2.4). Field numbers
/// are `envoy.service.auth.v3.CheckResponse`'s; the rest is skipped unread.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CheckOutcome {
    /// `google.rpc.Status`.
    #[prost(message, optional, tag = "1")]
    status: Option<Code>,
    #[prost(oneof = "Answer", tags = "2, 3, 5")]
    answer: Option<Answer>,
}

/// A message whose `code` is field 1: `google.rpc.Status`, `envoy.type.v3.HttpStatus`.
#[derive(Clone, PartialEq, prost::Message)]
struct Code {
    #[prost(int32, tag = "1")]
    code: i32,
}

#[derive(Clone, PartialEq, prost::Oneof)]
enum Answer {
    /// `DeniedHttpResponse`: its `status` (an `HttpStatus`) is field 1.
    #[prost(message, tag = "2")]
    Denied(Denied),
    #[prost(message, tag = "3")]
    Ok(Unread),
    #[prost(message, tag = "5")]
    Error(Unread),
}

#[derive(Clone, PartialEq, prost::Message)]
struct Denied {
    #[prost(message, optional, tag = "1")]
    status: Option<Code>,
}

/// A message of which nothing is read.
#[derive(Clone, PartialEq, prost::Message)]
struct Unread {}

/// `None` for an allow; else the denial's HTTP status (or `rpc-N` for a non-OK
/// `google.rpc.Status` without a denied response).
fn classify(response: &CheckOutcome) -> Option<String> {
    match &response.answer {
        Some(Answer::Ok(_)) => None,
        Some(Answer::Denied(denied)) => Some(
            denied
                .status
                .as_ref()
                .map_or_else(|| "403".to_string(), |s| s.code.to_string()),
        ),
        // Envoy decides on `status` alone when there is no http_response.
        Some(Answer::Error(_)) | None => {
            let code = response.status.as_ref().map_or(0, |s| s.code);
            (code != 0).then(|| format!("rpc-{code}"))
        }
    }
}

/// `Authorization/Check`, answered as a [`CheckOutcome`].
async fn check(
    client: &mut tonic::client::Grpc<Channel>,
    request: CheckRequest,
) -> Result<CheckOutcome, tonic::Status> {
    client
        .ready()
        .await
        // As tonic's generated client reports it.
        .map_err(|e| tonic::Status::unknown(format!("Service was not ready: {e}")))?;
    let codec = tonic_prost::ProstCodec::<CheckRequest, CheckOutcome>::default();
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(
        "/envoy.service.auth.v3.Authorization/Check",
    );
    let response = client
        .unary(tonic::Request::new(request), path, codec)
        .await;
    response.map(tonic::Response::into_inner)
}

/// Runs the plan and returns the report.
pub async fn execute(plan: Plan) -> Report {
    let uri = format!("http://{}", plan.target);
    let channels: Vec<Channel> = (0..plan.connections)
        .map(|_| {
            Endpoint::from_shared(uri.clone())
                .expect("a socket address is a valid URI")
                .connect_timeout(Duration::from_secs(5).min(plan.timeout))
                .timeout(plan.timeout)
                .tcp_nodelay(true)
                .connect_lazy()
        })
        .collect();
    let mix = Arc::new(plan.mix);
    let issued = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = plan.duration.map(|d| start + d);
    let limit = plan.requests.unwrap_or(u64::MAX);

    // Fixed rate: a ticker hands out permits; closing the semaphore ends the run.
    let permits = plan.rate.map(|_| Arc::new(Semaphore::new(0)));
    let ticker = match (&permits, plan.rate) {
        (Some(permits), Some(rate)) => {
            let permits = permits.clone();
            Some(tokio::spawn(async move {
                let tick = Duration::from_secs_f64((1.0 / rate).max(0.001));
                let mut granted: u64 = 0;
                let mut interval = tokio::time::interval(tick);
                interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                loop {
                    interval.tick().await;
                    let now = Instant::now();
                    if deadline.is_some_and(|d| now >= d) || granted >= limit {
                        break;
                    }
                    let owed = ((now - start).as_secs_f64() * rate) as u64 + 1;
                    let owed = owed.min(limit);
                    if owed > granted {
                        permits.add_permits(usize::try_from(owed - granted).unwrap_or(usize::MAX));
                        granted = owed;
                    }
                }
                permits.close();
            }))
        }
        _ => None,
    };

    let workers: Vec<_> = (0..plan.concurrency)
        .map(|i| {
            let mut client = tonic::client::Grpc::new(channels[i % channels.len()].clone());
            let mix = mix.clone();
            let issued = issued.clone();
            let permits = permits.clone();
            tokio::spawn(async move {
                let mut tally = Tally::new();
                loop {
                    if let Some(permits) = &permits {
                        let acquired = match deadline {
                            Some(d) => tokio::select! {
                                p = permits.acquire() => p,
                                _ = tokio::time::sleep_until(d.into()) => break,
                            },
                            None => permits.acquire().await,
                        };
                        match acquired {
                            Ok(permit) => permit.forget(),
                            // Closed: the ticker is done; take what is left, then stop.
                            Err(_) => match permits.try_acquire() {
                                Ok(permit) => permit.forget(),
                                Err(_) => break,
                            },
                        }
                    }
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        break;
                    }
                    let seq = issued.fetch_add(1, Ordering::Relaxed);
                    if seq >= limit {
                        break;
                    }
                    let request = mix[(seq % mix.len() as u64) as usize].clone();
                    let sent = Instant::now();
                    let result = check(&mut client, request).await;
                    tally.record(sent.elapsed(), result);
                }
                tally
            })
        })
        .collect();

    let mut total = Tally::new();
    for worker in workers {
        if let Ok(tally) = worker.await {
            total.merge(tally);
        }
    }
    let elapsed = start.elapsed();
    if let Some(ticker) = ticker {
        ticker.abort();
    }
    let requests = total.count();
    let h = &total.histogram;
    let pct = |q: f64| {
        if requests == 0 {
            0
        } else {
            h.value_at_quantile(q)
        }
    };
    Report {
        target: plan.target.to_string(),
        connections: plan.connections,
        concurrency: plan.concurrency,
        rate: plan.rate,
        requests,
        duration_seconds: elapsed.as_secs_f64(),
        throughput_rps: requests as f64 / elapsed.as_secs_f64().max(1e-9),
        allowed: total.allowed,
        denied: total.denied,
        errors: total.errors,
        latency_us: Latency {
            p50: pct(0.50),
            p90: pct(0.90),
            p99: pct(0.99),
            p99_9: pct(0.999),
            max: if requests == 0 { 0 } else { h.max() },
        },
        first_error: total.first_error,
    }
}

impl Report {
    /// The human-readable report.
    pub fn text(&self) -> String {
        let join = |m: &BTreeMap<String, u64>| {
            if m.is_empty() {
                return String::new();
            }
            let parts: Vec<String> = m.iter().map(|(k, v)| format!("{k}: {v}")).collect();
            format!(" ({})", parts.join(", "))
        };
        let denied: u64 = self.denied.values().sum();
        let errors: u64 = self.errors.values().sum();
        let rate = self
            .rate
            .map_or_else(|| "full speed".to_string(), |r| format!("{r} req/s"));
        let l = &self.latency_us;
        format!(
            "target      {} ({} connections, {} concurrent, {rate})\n\
             requests    {} in {:.3} s = {:.1} req/s\n\
             allowed     {}\n\
             denied      {denied}{}\n\
             errors      {errors}{}\n\
             latency µs  p50 {}  p90 {}  p99 {}  p99.9 {}  max {}\n",
            self.target,
            self.connections,
            self.concurrency,
            self.requests,
            self.duration_seconds,
            self.throughput_rps,
            self.allowed,
            join(&self.denied),
            join(&self.errors),
            l.p50,
            l.p90,
            l.p99,
            l.p99_9,
            l.max,
        )
    }
}

/// The command: validate, run on a multi-threaded runtime, print the report.
pub fn run(args: &Args) -> Result<(), String> {
    let plan = args.plan()?;
    let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    let report = runtime.block_on(execute(plan));
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&report).map_err(|e| e.to_string())?
        );
    } else {
        print!("{}", report.text());
    }
    let errors: u64 = report.errors.values().sum();
    if report.requests > 0 && errors == report.requests {
        return Err(format!(
            "all {errors} requests to {} failed with gRPC errors (first: {})",
            report.target,
            report.first_error.as_deref().unwrap_or("unknown")
        ));
    }
    Ok(())
}

#[cfg(test)]
mod outcome_tests {
    use super::*;
    use envoy_types::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption};
    use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
    use envoy_types::pb::envoy::service::auth::v3::{
        CheckResponse, DeniedHttpResponse, OkHttpResponse,
    };
    use envoy_types::pb::envoy::r#type::v3::HttpStatus;
    use envoy_types::pb::google::protobuf::Struct;
    use envoy_types::pb::google::rpc::Status;
    use prost::Message;

    fn read(response: CheckResponse) -> Option<String> {
        classify(&CheckOutcome::decode(response.encode_to_vec().as_slice()).unwrap())
    }

    #[test]
    fn the_outcome_is_read_from_a_whole_check_response() {
        let header = HeaderValueOption {
            header: Some(HeaderValue {
                key: "x-nmp-authorized".into(),
                value: "true".into(),
                ..HeaderValue::default()
            }),
            ..HeaderValueOption::default()
        };
        let metadata = Some(Struct::default());
        let allowed = CheckResponse {
            status: Some(Status::default()),
            http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
                headers: vec![header.clone()],
                ..OkHttpResponse::default()
            })),
            dynamic_metadata: metadata.clone(),
        };
        assert_eq!(read(allowed), None);
        for code in [400, 401, 403, 503] {
            let denied = CheckResponse {
                status: Some(Status {
                    code: 7,
                    ..Status::default()
                }),
                http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
                    status: Some(HttpStatus { code }),
                    headers: vec![header.clone()],
                    body: "{\"detail\":\"no\"}".into(),
                })),
                dynamic_metadata: metadata.clone(),
            };
            assert_eq!(read(denied), Some(code.to_string()));
        }
        let denied_without_status = CheckResponse {
            http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse::default())),
            ..CheckResponse::default()
        };
        assert_eq!(read(denied_without_status), Some("403".into()));
        let status_only = CheckResponse {
            status: Some(Status {
                code: 14,
                ..Status::default()
            }),
            ..CheckResponse::default()
        };
        assert_eq!(read(status_only), Some("rpc-14".into()));
        assert_eq!(read(CheckResponse::default()), None);
    }
}
