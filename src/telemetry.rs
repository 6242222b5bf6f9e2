//! Logs and metrics. Metrics are kept and written out (Prometheus text format 0.0.4) by the
//! `prometheus-client` library. A Check's counters are resolved once at start-up, so recording
//! one is an atomic add: no lock, no label set built, nothing formatted.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering::Acquire, Ordering::Release};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

use crate::policy::builtin::NMP_RELEASE;
use nmp_authz_core::record::{
    self, DENIALS_PER_SECOND, DecisionRecord, SAMPLE_VARIABLE, Sampler, push_quoted,
};
use nmp_authz_core::verdict::{Outcome, Status};

/// The `Content-Type` of what [`Metrics::render`] writes.
pub use prometheus_client::encoding::prometheus_text::CONTENT_TYPE as METRICS_CONTENT_TYPE;

/// Upper bounds (seconds) of the Check latency histogram's buckets.
const LATENCY_BUCKETS: [f64; 12] = [
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.01, 0.1, 1.0, 2.5,
];

/// `nmp_authz_decisions_total`'s labels: result, status, reason (all static strings).
type DecisionLabels = [(&'static str, &'static str); 3];
/// A counter by a name (issuer, policy source) and result.
type ResultLabels = [(&'static str, String); 2];
/// `nmp_authz_shadow_disagreements_total`'s labels: what the enforced and the shadow policy said.
type DisagreementLabels = [(&'static str, &'static str); 2];

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Each reachable (outcome, status) pair's counter, resolved at start-up
    /// (index: [`Outcome::index`], then the status in [`Status::ALL`] order).
    decision_counters: Box<[[Option<Counter>; Status::ALL.len()]; Outcome::COUNT]>,
    /// The family they belong to, for a pair not resolved up front (none is expected).
    decisions: Family<DecisionLabels, Counter>,
    latency: Arc<CheckLatency>,
    policy_loads: Counter,
    /// How long the last successful load took (read, parse, compile).
    policy_load_seconds: Gauge<f64, AtomicU64>,
    policy_load_failures: Counter,
    /// Rare (key and policy fetches): looked up by label when counted.
    jwks_fetches: Family<ResultLabels, Counter>,
    source_reads: Family<ResultLabels, Counter>,
    /// `[enforced allowed][shadow allowed]` (see `server::shadow`).
    shadow_disagreements: Family<DisagreementLabels, Counter>,
    groups_dropped: Counter,
    /// What only the server's state knows, set by each scrape.
    scrape: Arc<ScrapeState>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        // The library adds the help text's full stop, and `_total` to a counter's name.
        let build_info = Family::<[(&'static str, &'static str); 2], Gauge>::default();
        build_info
            .get_or_create(&[
                ("version", env!("CARGO_PKG_VERSION")),
                ("builtin_catalog", NMP_RELEASE),
            ])
            .set(1);
        registry.register(
            "nmp_authz_build_info",
            "This build: its version and the NMP release of its built-in catalog",
            build_info,
        );
        let decisions = Family::<DecisionLabels, Counter>::default();
        let decision_counters = Box::new(std::array::from_fn(|index| {
            let outcome = Outcome::all().nth(index).expect("Outcome::index is dense");
            debug_assert_eq!(outcome.index(), index);
            std::array::from_fn(|s| {
                let status = Status::ALL[s];
                debug_assert_eq!(status as usize, s);
                reachable(outcome, status)
                    .then(|| decisions.get_or_create_owned(&decision_labels(outcome, status)))
            })
        }));
        registry.register(
            "nmp_authz_decisions",
            "Check decisions by HTTP status and reason",
            decisions.clone(),
        );
        let latency = Arc::new(CheckLatency::default());
        registry.register(
            "nmp_authz_check_duration_seconds",
            "Time to answer a Check, in the server",
            SharedLatency(latency.clone()),
        );
        let policy_loads = Counter::default();
        registry.register(
            "nmp_authz_policy_loads",
            "Successful policy loads",
            policy_loads.clone(),
        );
        let policy_load_seconds = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "nmp_authz_policy_load_duration_seconds",
            "Reading, parsing and compiling the policy in use (off the request path)",
            policy_load_seconds.clone(),
        );
        let policy_load_failures = Counter::default();
        registry.register(
            "nmp_authz_policy_load_failures",
            "Failed policy loads",
            policy_load_failures.clone(),
        );
        let jwks_fetches = Family::default();
        registry.register(
            "nmp_authz_jwks_fetches",
            "Signing key fetches by issuer and result",
            jwks_fetches.clone(),
        );
        let source_reads = Family::default();
        registry.register(
            "nmp_authz_policy_source_reads",
            "Policy source reads by source and result",
            source_reads.clone(),
        );
        let shadow_disagreements = Family::default();
        registry.register(
            "nmp_authz_shadow_disagreements",
            "Checks the shadow policy would have answered otherwise, by what each said",
            shadow_disagreements.clone(),
        );
        let groups_dropped = Counter::default();
        registry.register(
            "nmp_authz_principal_groups_dropped",
            "Groups named by callers' claims that x-nmp-principal-groups cannot carry, left out \
             of their decisions",
            groups_dropped.clone(),
        );
        let scrape = Arc::new(ScrapeState::default());
        registry.register_collector(Box::new(scrape.clone()));
        Self {
            registry,
            decision_counters,
            decisions,
            latency,
            policy_loads,
            policy_load_seconds,
            policy_load_failures,
            jwks_fetches,
            source_reads,
            shadow_disagreements,
            groups_dropped,
            scrape,
        }
    }
}

/// Whether a Check can end in `outcome` with `status`: those series exist from the start
/// (at 0), so that `rate()` and alerts see a series before its first increment.
fn reachable(outcome: Outcome, status: Status) -> bool {
    outcome.status(true) == status || outcome.status(false) == status
}

fn decision_labels(outcome: Outcome, status: Status) -> DecisionLabels {
    let result = if status == Status::Ok {
        "allow"
    } else {
        "deny"
    };
    [
        ("result", result),
        ("status", status.http_label()),
        ("reason", outcome.as_str()),
    ]
}

fn result_label(ok: bool) -> &'static str {
    if ok { "success" } else { "failure" }
}

impl Metrics {
    pub(crate) fn record_check(&self, outcome: Outcome, status: Status, took: Duration) {
        self.latency.observe(took);
        // `Status` is declared in `Status::ALL` order.
        match &self.decision_counters[outcome.index()][status as usize] {
            Some(counter) => {
                counter.inc();
            }
            // Not reachable by `Outcome::status`; counted all the same, through the family.
            None => {
                self.decisions
                    .get_or_create(&decision_labels(outcome, status))
                    .inc();
            }
        }
    }

    pub(crate) fn jwks_fetched(&self, issuer: &str, ok: bool) {
        let labels = [
            ("issuer", issuer.to_string()),
            ("result", result_label(ok).into()),
        ];
        self.jwks_fetches.get_or_create(&labels).inc();
    }

    pub(crate) fn source_read(&self, source: &str, ok: bool) {
        let labels = [
            ("source", source.to_string()),
            ("result", result_label(ok).into()),
        ];
        self.source_reads.get_or_create(&labels).inc();
    }

    pub(crate) fn policy_loaded(&self, took: Duration) {
        self.policy_loads.inc();
        self.policy_load_seconds.set(took.as_secs_f64());
    }

    pub(crate) fn policy_load_failed(&self) {
        self.policy_load_failures.inc();
    }

    /// The shadow disagreement counters, `[enforced allowed][shadow allowed]`, resolved once
    /// (when a shadow policy is configured: only then are the series written, from 0). Two
    /// allows cannot disagree (both are a 200), so that cell is a counter no series shows.
    pub(crate) fn shadow_counters(&self) -> [[Counter; 2]; 2] {
        let result = |allowed: bool| if allowed { "allow" } else { "deny" };
        std::array::from_fn(|enforced| {
            std::array::from_fn(|shadow| {
                if enforced == 1 && shadow == 1 {
                    return Counter::default();
                }
                let labels = [
                    ("enforced", result(enforced == 1)),
                    ("shadow", result(shadow == 1)),
                ];
                self.shadow_disagreements.get_or_create_owned(&labels)
            })
        })
    }

    pub(crate) fn groups_dropped(&self, count: usize) {
        self.groups_dropped.inc_by(count as u64);
    }

    pub(crate) fn shadow_policy_loaded(&self) {
        self.scrape.shadow_loads.fetch_add(1, Relaxed);
    }

    pub(crate) fn shadow_policy_load_failed(&self) {
        self.scrape.shadow_load_failures.fetch_add(1, Relaxed);
    }

    /// Prometheus text exposition (format 0.0.4, [`METRICS_CONTENT_TYPE`]).
    pub fn render(&self, scrape: Scrape) -> String {
        *lock(&self.scrape.current) = scrape;
        let mut out = String::with_capacity(8 * 1024);
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry);
        out
    }
}

/// What a scrape reports from the server's state rather than from counters.
#[derive(Debug, Clone, Default)]
pub struct Scrape {
    /// The policy revision in use.
    pub revision: Option<String>,
    /// Seconds since the policy in use was installed.
    pub policy_age_seconds: Option<u64>,
    /// A policy source has failed for longer than allowed.
    pub stale: bool,
    pub ready: bool,
    /// The shadow policy's revision and age, when a shadow policy is configured.
    pub shadow_revision: Option<String>,
    pub shadow_policy_age_seconds: Option<u64>,
    /// A shadow policy is configured: its metrics are written.
    pub shadow_configured: bool,
}

/// The [`Scrape`] being written, read by the library when it encodes the registry.
#[derive(Debug, Default)]
struct ScrapeState {
    current: Mutex<Scrape>,
    /// Shadow policy load counts (kept here so that they are written only when a shadow
    /// policy is configured).
    shadow_loads: AtomicU64,
    shadow_load_failures: AtomicU64,
}

impl Collector for ScrapeState {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let scrape = lock(&self.current).clone();
        if let Some(revision) = &scrape.revision {
            info(
                &mut encoder,
                "nmp_authz_policy_info",
                "The policy revision in use.",
                revision,
            )?;
        }
        if let Some(age) = scrape.policy_age_seconds {
            let age = i64::try_from(age).unwrap_or(i64::MAX);
            gauge(
                &mut encoder,
                "nmp_authz_policy_age_seconds",
                "Seconds since the policy in use was loaded.",
                age,
            )?;
        }
        gauge(
            &mut encoder,
            "nmp_authz_policy_stale",
            "1 when a policy source has failed for longer than max_staleness_seconds.",
            i64::from(scrape.stale),
        )?;
        gauge(
            &mut encoder,
            "nmp_authz_ready",
            "1 when the server has valid policy data.",
            i64::from(scrape.ready),
        )?;
        let dropped = ConstCounter::new(log_records_dropped());
        dropped.encode(encoder.encode_descriptor(
            "nmp_authz_log_records_dropped",
            "Log records dropped because stderr did not take them as fast as they came.",
            None,
            MetricType::Counter,
        )?)?;
        if scrape.shadow_configured {
            if let Some(revision) = &scrape.shadow_revision {
                info(
                    &mut encoder,
                    "nmp_authz_shadow_policy_info",
                    "The shadow (dry-run) policy revision in use.",
                    revision,
                )?;
            }
            if let Some(age) = scrape.shadow_policy_age_seconds {
                gauge(
                    &mut encoder,
                    "nmp_authz_shadow_policy_age_seconds",
                    "Seconds since the shadow policy in use was loaded.",
                    i64::try_from(age).unwrap_or(i64::MAX),
                )?;
            }
            for (name, help, value) in [
                (
                    "nmp_authz_shadow_policy_loads",
                    "Successful shadow policy loads.",
                    &self.shadow_loads,
                ),
                (
                    "nmp_authz_shadow_policy_load_failures",
                    "Failed shadow policy loads.",
                    &self.shadow_load_failures,
                ),
            ] {
                let counter = ConstCounter::new(value.load(Relaxed));
                counter.encode(encoder.encode_descriptor(
                    name,
                    help,
                    None,
                    MetricType::Counter,
                )?)?;
            }
        }
        Ok(())
    }
}

/// A gauge written once, with no labels.
fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: i64,
) -> Result<(), std::fmt::Error> {
    let metric = ConstGauge::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, MetricType::Gauge)?)
}

/// A gauge at 1 whose labels say what is in use (`revision`).
fn info(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    revision: &str,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    let labels = [("revision", revision)];
    ConstGauge::new(1i64).encode(metric.encode_family(&labels)?)
}

/// The Check latency histogram: atomics (counts per bucket, not cumulative; total
/// nanoseconds), so that recording takes no lock. (The library's histogram takes a
/// lock per observation.) The library writes it out.
#[derive(Debug, Default)]
struct CheckLatency {
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    nanos: AtomicU64,
}

impl CheckLatency {
    fn observe(&self, took: Duration) {
        let seconds = took.as_secs_f64();
        let bucket = LATENCY_BUCKETS
            .iter()
            .position(|le| seconds <= *le)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[bucket].fetch_add(1, Relaxed);
        self.nanos
            .fetch_add(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX), Relaxed);
    }
}

/// [`CheckLatency`] as registered: the registry owns its metrics, the server records into it.
#[derive(Debug)]
struct SharedLatency(Arc<CheckLatency>);

impl TypedMetric for SharedLatency {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for SharedLatency {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let latency = &self.0;
        let buckets: Vec<(f64, u64)> = LATENCY_BUCKETS
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(&latency.buckets)
            .map(|(le, n)| (le, n.load(Relaxed)))
            .collect();
        // The count is the buckets' sum, read in the same pass: a Check recorded while this
        // is written cannot make the +Inf bucket disagree with the count.
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum = latency.nanos.load(Relaxed) as f64 / 1e9;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// Which decisions are logged: the core's [`Sampler`] (a fraction of allows, set with
/// `NMP_AUTHZ_DECISION_LOG_SAMPLE`, default 1; up to [`DENIALS_PER_SECOND`] denials a second
/// for each reason, what is left out counted and logged with the reason's next record after the
/// second, and at shutdown) on the server's clock.
#[derive(Debug)]
pub struct DecisionLog {
    sampler: Sampler,
    started: std::time::Instant,
    /// Keeps the shadow policy's disagreement records (keyed by the shadow's outcome), not
    /// decision records: said so when what was left out is reported.
    shadow: bool,
}

impl DecisionLog {
    pub fn new(allow_fraction: f64) -> Self {
        Self {
            sampler: Sampler::new(allow_fraction),
            started: std::time::Instant::now(),
            shadow: false,
        }
    }

    /// The budget of the shadow policy's disagreement records: [`DENIALS_PER_SECOND`] a
    /// second for each outcome the shadow policy gave.
    pub(crate) fn for_shadow() -> Self {
        Self {
            shadow: true,
            ..Self::new(0.0)
        }
    }

    /// From `NMP_AUTHZ_DECISION_LOG_SAMPLE`; an unreadable value logs every allow (and says so).
    pub(crate) fn from_env() -> Self {
        let fraction = match std::env::var(SAMPLE_VARIABLE) {
            Err(_) => 1.0,
            Ok(text) => Sampler::parse_fraction(&text).unwrap_or_else(|| {
                tracing::warn!(value = %text, "NMP_AUTHZ_DECISION_LOG_SAMPLE is not a number; logging every decision");
                1.0
            }),
        };
        Self::new(fraction)
    }

    /// Whether to log an answer: `allowed`, or a denial for `outcome`.
    pub(crate) fn should_log(&self, allowed: bool, outcome: Outcome) -> bool {
        if allowed {
            return self.sampler.allow();
        }
        let denial = self
            .sampler
            .denial(outcome, self.started.elapsed().as_secs());
        if denial.suppressed > 0 {
            report_suppressed(outcome, denial.suppressed, self.shadow);
        }
        denial.write
    }

    /// Logs the counts of denial records left out and not reported yet (at shutdown).
    pub(crate) fn report_suppressed(&self) {
        for (outcome, suppressed) in self.sampler.take_suppressed() {
            report_suppressed(outcome, suppressed, self.shadow);
        }
    }
}

fn report_suppressed(outcome: Outcome, suppressed: u64, shadow: bool) {
    if shadow {
        tracing::info!(
            target: SHADOW_TARGET,
            shadow_reason = outcome.as_str(),
            suppressed,
            per_second = DENIALS_PER_SECOND,
            "shadow disagreement records left out over the per-reason budget"
        );
    } else {
        tracing::info!(
            target: DECISION_TARGET,
            reason = outcome.as_str(),
            suppressed,
            per_second = DENIALS_PER_SECOND,
            "{}",
            record::SUPPRESSED_MESSAGE
        );
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Queues one decision record (the core's [`DecisionRecord`]: redacted by construction).
///
/// Written straight into the log buffer, in the shape the rest of the log has (text or JSON),
/// rather than through the generic formatter, which cost several microseconds per record: on
/// a Check path of about twenty, that was most of what separated nmp-authz from a do-nothing
/// server (BENCHMARKS.md). `RUST_LOG` still decides whether records are written.
pub(crate) fn log_decision(record: &DecisionRecord<'_>) {
    let Some(output) = LOG_OUTPUT.get() else {
        return;
    };
    if !tracing::enabled!(target: DECISION_TARGET, tracing::Level::INFO) {
        return;
    }
    let mut line = Vec::with_capacity(DECISION_RECORD_BYTES);
    write_decision(&mut line, record, output.json);
    output.send(line);
}

/// What a shadow disagreement record says: the request, and each policy's answer.
#[derive(Debug, serde::Serialize)]
pub(crate) struct ShadowFacts<'a> {
    pub method: &'a str,
    /// Without its query.
    pub path: &'a str,
    pub principal_id: &'a str,
    pub workspace: &'a str,
    pub enforced_status: u16,
    pub enforced_reason: &'a str,
    pub enforced_endpoint: &'a str,
    pub policy_revision: &'a str,
    pub shadow_status: u16,
    pub shadow_reason: &'a str,
    pub shadow_endpoint: &'a str,
    pub shadow_revision: &'a str,
}

/// Queues one shadow disagreement record (never waits on the log's writer; see
/// [`LogOutput`]). Redacted as decision records are: the decision's facts only.
pub(crate) fn log_shadow(facts: &ShadowFacts<'_>) {
    let Some(output) = LOG_OUTPUT.get() else {
        return;
    };
    if !tracing::enabled!(target: SHADOW_TARGET, tracing::Level::INFO) {
        return;
    }
    let mut line = Vec::with_capacity(DECISION_RECORD_BYTES);
    write_shadow(&mut line, facts, output.json);
    output.send(line);
}

const SHADOW_MESSAGE: &str = "shadow policy disagrees";

fn write_shadow(line: &mut Vec<u8>, facts: &ShadowFacts<'_>, json: bool) {
    #[derive(serde::Serialize)]
    struct Fields<'a> {
        message: &'static str,
        #[serde(flatten)]
        facts: &'a ShadowFacts<'a>,
    }
    if json {
        let fields = Fields {
            message: SHADOW_MESSAGE,
            facts,
        };
        write_json_event(line, "INFO", SHADOW_TARGET, &fields);
    } else {
        write_text_start(line, "INFO", SHADOW_TARGET, SHADOW_MESSAGE);
        let mut number = itoa::Buffer::new();
        for (key, value) in [
            (&b" method="[..], facts.method),
            (b" path=", facts.path),
            (b" principal_id=", facts.principal_id),
            (b" workspace=", facts.workspace),
        ] {
            line.extend_from_slice(key);
            push_quoted(line, value);
        }
        for (prefix, status, reason, endpoint, revision) in [
            (
                &b" enforced"[..],
                facts.enforced_status,
                facts.enforced_reason,
                facts.enforced_endpoint,
                facts.policy_revision,
            ),
            (
                b" shadow",
                facts.shadow_status,
                facts.shadow_reason,
                facts.shadow_endpoint,
                facts.shadow_revision,
            ),
        ] {
            line.extend_from_slice(prefix);
            line.extend_from_slice(b"_status=");
            line.extend_from_slice(number.format(status).as_bytes());
            line.extend_from_slice(prefix);
            line.extend_from_slice(b"_reason=");
            push_quoted(line, reason);
            line.extend_from_slice(prefix);
            line.extend_from_slice(b"_endpoint=");
            push_quoted(line, endpoint);
            line.extend_from_slice(if prefix == b" enforced" {
                b" policy_revision="
            } else {
                b" shadow_revision="
            });
            push_quoted(line, revision);
        }
    }
    line.push(b'\n');
}

const SHADOW_TARGET: &str = "nmp_authz::shadow";
const DECISION_TARGET: &str = "nmp_authz::decision";
/// Room for a typical decision record, so that writing one allocates once.
const DECISION_RECORD_BYTES: usize = 384;

/// Where log records go, once [`init_logging`] has run (never in library tests).
static LOG_OUTPUT: std::sync::OnceLock<LogOutput> = std::sync::OnceLock::new();

/// One line as the subscriber's formatter writes events: JSON with the fields under
/// `fields`, or text with strings quoted and escaped.
fn write_decision(line: &mut Vec<u8>, record: &DecisionRecord<'_>, json: bool) {
    if json {
        write_json_event(line, "INFO", DECISION_TARGET, record);
    } else {
        write_text_start(line, "INFO", DECISION_TARGET, record.message);
        record.write_fields(line);
    }
    line.push(b'\n');
}

/// A note the log writer adds when records were dropped: how many since the last note, and
/// since start.
#[derive(serde::Serialize)]
struct DroppedNote {
    message: &'static str,
    dropped: u64,
    total: u64,
}

impl DroppedNote {
    /// One line in the shape the subscriber's formatter gives a WARN event.
    fn write(&self, line: &mut Vec<u8>, json: bool) {
        const TARGET: &str = "nmp_authz::log";
        if json {
            write_json_event(line, "WARN", TARGET, self);
        } else {
            write_text_start(line, "WARN", TARGET, self.message);
            let mut number = itoa::Buffer::new();
            line.extend_from_slice(b" dropped=");
            line.extend_from_slice(number.format(self.dropped).as_bytes());
            line.extend_from_slice(b" total=");
            line.extend_from_slice(number.format(self.total).as_bytes());
        }
        line.push(b'\n');
    }
}

/// An event as the subscriber's JSON formatter writes it (without the newline).
fn write_json_event(line: &mut Vec<u8>, level: &str, target: &str, fields: &impl serde::Serialize) {
    #[derive(serde::Serialize)]
    struct Event<'a, F> {
        timestamp: &'a str,
        level: &'a str,
        fields: &'a F,
        target: &'a str,
    }
    let now = timestamp_now();
    let event = Event {
        // Only ASCII digits and punctuation.
        timestamp: std::str::from_utf8(&now).unwrap_or_default(),
        level,
        fields,
        target,
    };
    // Serializing borrowed strings and numbers into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *line, &event);
}

/// The start of an event as the subscriber's text formatter writes it:
/// `2026-12-01T15:31:15.123456Z  INFO target: message`; the fields follow.
fn write_text_start(line: &mut Vec<u8>, level: &str, target: &str, message: &str) {
    line.extend_from_slice(&timestamp_now());
    // The level right-aligned in five columns, as the formatter pads it.
    line.extend_from_slice(&b"      "[..6 - level.len().min(5)]);
    line.extend_from_slice(level.as_bytes());
    line.push(b' ');
    line.extend_from_slice(target.as_bytes());
    line.extend_from_slice(b": ");
    line.extend_from_slice(message.as_bytes());
}

/// The time now as RFC 3339 with microseconds (`2026-12-01T15:31:15.123456Z`), as the rest
/// of the log writes it. The date and time of day are formatted once a second per thread and
/// only the microseconds per record.
fn timestamp_now() -> [u8; 27] {
    use std::time::{SystemTime, UNIX_EPOCH};
    thread_local! {
        static SECOND: std::cell::Cell<(u64, [u8; 20])> =
            const { std::cell::Cell::new((u64::MAX, [0; 20])) };
    }
    let now = SystemTime::now();
    let since_epoch = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let (second, mut prefix) = SECOND.get();
    if second != since_epoch.as_secs() {
        // `2026-12-01T15:31:15Z`: keep the first 19 bytes, then the decimal point.
        let seconds = humantime::format_rfc3339_seconds(now).to_string();
        prefix[..19].copy_from_slice(&seconds.as_bytes()[..19]);
        prefix[19] = b'.';
        SECOND.set((since_epoch.as_secs(), prefix));
    }
    let mut out = [b'Z'; 27];
    out[..20].copy_from_slice(&prefix);
    let mut micros = since_epoch.subsec_micros();
    for digit in out[20..26].iter_mut().rev() {
        *digit = b'0' + (micros % 10) as u8;
        micros /= 10;
    }
    out
}

/// Logs to stderr; `RUST_LOG` filters (default `info`), `NMP_AUTHZ_LOG_FORMAT=json` for JSON.
/// Keep the returned guard alive: dropping it writes out what is still queued.
pub fn init_logging() -> LogFlush {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let json = std::env::var("NMP_AUTHZ_LOG_FORMAT").is_ok_and(|f| f == "json");
    let (output, flush) = LogOutput::start(std::io::stderr(), json);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(output.clone());
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
    let _ = LOG_OUTPUT.set(output);
    flush
}

/// Log records dropped because the writer could not keep up (stderr blocked or slow), since
/// start; 0 before [`init_logging`].
pub fn log_records_dropped() -> u64 {
    LOG_OUTPUT
        .get()
        .map_or(0, |output| output.dropped.load(Relaxed))
}

/// Records waiting for the writer thread; a record that finds the queue full is dropped.
/// At ~300 bytes a record, a few MiB at most; at the rates two cores answer Checks, several
/// hundred milliseconds of log output.
const LOG_QUEUE_RECORDS: usize = 16 * 1024;
/// How long the writer sleeps when there was little to write: how long a record may wait.
const LOG_FLUSH_EVERY: Duration = Duration::from_millis(50);
/// Bytes the writer gathers into one write.
const LOG_WRITE_BYTES: usize = 256 * 1024;
/// Dropped records are noted in the log at most this often (and once more at shutdown).
const LOG_DROP_NOTE_EVERY: Duration = Duration::from_secs(1);
/// How long shutdown waits for queued records to be written: a stderr nobody reads must not
/// hold the exit up for ever.
const LOG_FINAL_FLUSH: Duration = Duration::from_secs(2);

/// Where log records go: a bounded queue (std's `sync_channel`) in front of a writer thread
/// that writes them to stderr. Nothing that logs, a Check answering on a runtime worker
/// least of all, writes to stderr or waits for the writer: a record that finds the queue full
/// is dropped and counted (`nmp_authz_log_records_dropped_total`, and a note in the log when
/// the writer catches up). No thread is woken per record: the writer sleeps
/// [`LOG_FLUSH_EVERY`] when there was little to write (a channel receiver blocked in `recv`
/// cost a futex wake-up per record, BENCHMARKS.md §2) and goes round again at once when there
/// was a lot, and many records leave in one write.
#[derive(Clone, Debug)]
struct LogOutput {
    queue: std::sync::mpsc::SyncSender<Vec<u8>>,
    dropped: Arc<AtomicU64>,
    json: bool,
}

impl LogOutput {
    /// The queue, and the guard whose drop writes out what is queued. The writer thread
    /// writes to `sink` (stderr; something else in tests).
    fn start(sink: impl Write + Send + 'static, json: bool) -> (Self, LogFlush) {
        let (queue, records) = std::sync::mpsc::sync_channel(LOG_QUEUE_RECORDS);
        let output = Self {
            queue,
            dropped: Arc::default(),
            json,
        };
        let stop = Arc::new(AtomicBool::new(false));
        // Dropped by the writer thread as it ends: what the guard waits for.
        let (finished, done) = std::sync::mpsc::channel::<()>();
        let writer = {
            let (dropped, stop) = (output.dropped.clone(), stop.clone());
            std::thread::Builder::new()
                .name("nmp-authz-log".into())
                .spawn(move || {
                    // The queue is closed by the time the guard hears the writer is done.
                    write_records(records, sink, &dropped, &stop, json);
                    drop(finished);
                })
                .expect("start the log writer thread")
        };
        let flush = LogFlush {
            stop,
            writer: writer.thread().clone(),
            done,
        };
        (output, flush)
    }

    /// Queues one whole record, or drops it if the queue is full.
    fn send(&self, record: Vec<u8>) {
        if self.queue.try_send(record).is_err() {
            self.dropped.fetch_add(1, Relaxed);
        }
    }
}

/// The writer thread: takes what is queued, writes it, notes dropped records; until `stop`,
/// when it writes out what is queued and ends.
fn write_records(
    records: std::sync::mpsc::Receiver<Vec<u8>>,
    mut sink: impl Write,
    dropped: &AtomicU64,
    stop: &AtomicBool,
    json: bool,
) {
    let mut batch = Vec::with_capacity(LOG_WRITE_BYTES);
    let (mut noted, mut last_note) = (0, None::<std::time::Instant>);
    loop {
        // Read before taking: what was queued before shutdown began is taken below.
        let stopping = stop.load(Acquire);
        let mut taken = 0;
        // At most a queue's worth, so that notes and `stop` are looked at under any load.
        while taken < LOG_QUEUE_RECORDS
            && let Ok(record) = records.try_recv()
        {
            batch.extend_from_slice(&record);
            taken += 1;
            if batch.len() >= LOG_WRITE_BYTES {
                write_batch(&mut sink, &mut batch);
            }
        }
        let total = dropped.load(Relaxed);
        if total > noted
            && (stopping || last_note.is_none_or(|at| at.elapsed() >= LOG_DROP_NOTE_EVERY))
        {
            DroppedNote {
                message: "log records dropped: stderr did not take them as fast as they came",
                dropped: total - noted,
                total,
            }
            .write(&mut batch, json);
            (noted, last_note) = (total, Some(std::time::Instant::now()));
        }
        write_batch(&mut sink, &mut batch);
        if stopping {
            return;
        }
        if taken < LOG_QUEUE_RECORDS / 4 {
            std::thread::park_timeout(LOG_FLUSH_EVERY);
        }
    }
}

fn write_batch(sink: &mut impl Write, batch: &mut Vec<u8>) {
    if !batch.is_empty() {
        // Nowhere to report a failed write to stderr.
        let _ = sink.write_all(batch).and_then(|()| sink.flush());
        batch.clear();
    }
}

/// One record being written: the formatter hands each record over whole, and it is queued
/// when the formatter is done with it.
#[derive(Debug)]
pub(crate) struct LogRecord<'a> {
    output: &'a LogOutput,
    record: Vec<u8>,
}

impl Write for LogRecord<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.record.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LogRecord<'_> {
    fn drop(&mut self) {
        if !self.record.is_empty() {
            self.output.send(std::mem::take(&mut self.record));
        }
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogOutput {
    type Writer = LogRecord<'a>;

    fn make_writer(&'a self) -> LogRecord<'a> {
        LogRecord {
            output: self,
            record: Vec::new(),
        }
    }
}

/// Writes out the queued log records when dropped (at the end of `serve`), waiting at most
/// [`LOG_FINAL_FLUSH`].
#[derive(Debug)]
pub struct LogFlush {
    stop: Arc<AtomicBool>,
    writer: std::thread::Thread,
    done: std::sync::mpsc::Receiver<()>,
}

impl Drop for LogFlush {
    fn drop(&mut self) {
        self.stop.store(true, Release);
        self.writer.unpark();
        let _ = self.done.recv_timeout(LOG_FINAL_FLUSH);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Reason;

    #[test]
    fn decision_records_are_one_line_each_in_both_formats() {
        let record = DecisionRecord {
            message: record::DECISION_MESSAGE,
            allowed: false,
            status: 403,
            reason: "not_permitted",
            method: "GET",
            path: "/a\"b\nc",
            principal_id: "alice",
            workspace: "ws",
            endpoint: "/a/{x}",
            policy_revision: "r1",
            micros: 12,
        };
        let mut line = Vec::new();
        write_decision(&mut line, &record, true);
        let text = String::from_utf8(line.clone()).unwrap();
        assert_eq!(text.matches('\n').count(), 1, "{text}");
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(json["target"], "nmp_authz::decision");
        assert_eq!(json["level"], "INFO");
        assert_eq!(json["fields"]["message"], "decision");
        assert_eq!(json["fields"]["status"], 403);
        assert_eq!(json["fields"]["path"], "/a\"b\nc");
        line.clear();
        write_decision(&mut line, &record, false);
        let text = String::from_utf8(line).unwrap();
        assert_eq!(text.matches('\n').count(), 1, "{text}");
        assert!(
            text.contains(
                " INFO nmp_authz::decision: decision allowed=false status=403 \
                 reason=\"not_permitted\" method=\"GET\" path=\"/a\\\"b\\nc\" principal_id=\"alice\" \
                 workspace=\"ws\" endpoint=\"/a/{x}\" policy_revision=\"r1\" micros=12\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn timestamps_are_rfc3339_with_microseconds_like_humantime() {
        for _ in 0..3 {
            let before = std::time::SystemTime::now();
            let ours = timestamp_now();
            let ours = std::str::from_utf8(&ours).unwrap();
            let parsed = humantime::parse_rfc3339(ours).unwrap();
            let after = std::time::SystemTime::now();
            // Microsecond precision: truncation may put it up to 1 µs before `before`.
            assert!(
                parsed + std::time::Duration::from_micros(1) >= before,
                "{ours}"
            );
            assert!(parsed <= after, "{ours}");
            assert_eq!(
                ours.len(),
                humantime::format_rfc3339_micros(after).to_string().len()
            );
        }
    }

    #[test]
    fn allows_are_sampled() {
        let allowed = Outcome::Decided(Reason::WorkspacePermission);
        let count = |log: &DecisionLog| (0..100).filter(|_| log.should_log(true, allowed)).count();
        assert_eq!(count(&DecisionLog::new(1.0)), 100);
        assert_eq!(count(&DecisionLog::new(0.1)), 10);
        assert_eq!(count(&DecisionLog::new(0.0)), 0);
    }

    // The denial budget itself is the core's (nmp_authz_core::record, tested with explicit
    // seconds); the server's end of it is tests/observability.rs.

    /// A sink whose first write blocks until the test releases it, as a stderr nobody reads
    /// does; it says when the writer is stuck in it.
    struct BlockedSink {
        written: Arc<Mutex<Vec<u8>>>,
        stuck: std::sync::mpsc::Sender<()>,
        release: Option<std::sync::mpsc::Receiver<()>>,
    }

    impl Write for BlockedSink {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            if let Some(release) = self.release.take() {
                let _ = self.stuck.send(());
                let _ = release.recv();
            }
            lock(&self.written).extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_blocked_sink_never_holds_up_a_record_and_what_is_dropped_is_counted_and_noted() {
        let written = Arc::default();
        let (stuck_tx, stuck) = std::sync::mpsc::channel();
        let (release, release_rx) = std::sync::mpsc::channel();
        let sink = BlockedSink {
            written: Arc::clone(&written),
            stuck: stuck_tx,
            release: Some(release_rx),
        };
        let (output, flush) = LogOutput::start(sink, false);
        let record = |i: usize| format!("record {i}\n").into_bytes();
        output.send(record(0));
        stuck
            .recv_timeout(Duration::from_secs(10))
            .expect("the writer takes the first record and is stuck writing it");
        // The queue fills and the rest are dropped: sending never waits on the sink.
        let extra = 100;
        for i in 1..=LOG_QUEUE_RECORDS + extra {
            output.send(record(i));
        }
        assert_eq!(output.dropped.load(Relaxed), extra as u64);
        release.send(()).unwrap();
        // Shutdown writes out what was queued, then notes the drops.
        drop(flush);
        let written = String::from_utf8(lock(&written).clone()).unwrap();
        let lines: Vec<&str> = written.lines().collect();
        let kept: Vec<String> = (0..=LOG_QUEUE_RECORDS)
            .map(|i| format!("record {i}"))
            .collect();
        assert_eq!(lines[..kept.len()], kept, "every queued record, in order");
        assert_eq!(lines.len(), kept.len() + 1, "then one note");
        let note = lines[kept.len()];
        assert!(
            note.contains("  WARN nmp_authz::log: log records dropped")
                && note.ends_with(&format!(" dropped={extra} total={extra}")),
            "{note}"
        );
        // The writer has ended: a record now is dropped, not waited on.
        output.send(record(0));
        assert_eq!(output.dropped.load(Relaxed), extra as u64 + 1);
    }

    #[test]
    fn shutdown_gives_up_on_a_sink_that_stays_blocked() {
        let (stuck_tx, stuck) = std::sync::mpsc::channel();
        // Held to the end of the test: the sink stays blocked until then.
        let (_release, release_rx) = std::sync::mpsc::channel();
        let sink = BlockedSink {
            written: Arc::default(),
            stuck: stuck_tx,
            release: Some(release_rx),
        };
        let (output, flush) = LogOutput::start(sink, false);
        output.send(b"record\n".to_vec());
        stuck.recv_timeout(Duration::from_secs(10)).unwrap();
        let (done_tx, done) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            drop(flush);
            let _ = done_tx.send(());
        });
        done.recv_timeout(LOG_FINAL_FLUSH + Duration::from_secs(10))
            .expect("dropping the guard returns though the writer is stuck");
    }

    #[test]
    fn the_dropped_note_is_one_line_in_both_formats() {
        let note = DroppedNote {
            message: "log records dropped",
            dropped: 3,
            total: 10,
        };
        let mut line = Vec::new();
        note.write(&mut line, true);
        let text = String::from_utf8(line).unwrap();
        assert_eq!(text.matches('\n').count(), 1, "{text}");
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(json["level"], "WARN");
        assert_eq!(json["target"], "nmp_authz::log");
        assert_eq!(json["fields"]["dropped"], 3);
        assert_eq!(json["fields"]["total"], 10);
        humantime::parse_rfc3339(json["timestamp"].as_str().unwrap()).unwrap();
    }

    fn scrape(revision: &str, age: u64) -> Scrape {
        Scrape {
            revision: Some(revision.into()),
            policy_age_seconds: Some(age),
            ready: true,
            ..Scrape::default()
        }
    }

    #[test]
    fn decisions_are_counted_by_result_status_and_reason() {
        let metrics = Metrics::default();
        let fast = Duration::from_micros(20);
        let decided = |r| Outcome::Decided(r);
        metrics.record_check(decided(Reason::NotPermitted), Status::Forbidden, fast);
        metrics.record_check(decided(Reason::NotPermitted), Status::Forbidden, fast);
        metrics.record_check(decided(Reason::WorkspacePermission), Status::Ok, fast);
        let refused = Outcome::Early(nmp_authz_core::verdict::Early::InvalidIdentity);
        metrics.record_check(refused, Status::Unauthorized, Duration::from_secs(5));
        metrics.jwks_fetched("https://idp.example.com", true);
        metrics.jwks_fetched("https://idp.example.com", false);
        metrics.jwks_fetched("https://idp.example.com", false);
        metrics.source_read("policy \"a\".yaml", false);
        let text = metrics.render(scrape("abc", 7));
        assert!(
            text.contains("\nnmp_authz_policy_age_seconds 7\n"),
            "{text}"
        );
        assert!(text.contains("\nnmp_authz_policy_loads_total 0\n"));
        metrics.policy_loaded(Duration::from_millis(1500));
        metrics.policy_load_failed();
        let text = metrics.render(scrape("abc", 7));
        for line in [
            "# HELP nmp_authz_decisions_total Check decisions by HTTP status and reason.",
            "# TYPE nmp_authz_decisions_total counter",
            "nmp_authz_policy_loads_total 1",
            "nmp_authz_policy_load_duration_seconds 1.5",
            "nmp_authz_policy_load_failures_total 1",
            "# TYPE nmp_authz_check_duration_seconds histogram",
            "nmp_authz_check_duration_seconds_bucket{le=\"1e-05\"} 0",
            "nmp_authz_check_duration_seconds_bucket{le=\"2.5e-05\"} 3",
            "nmp_authz_check_duration_seconds_bucket{le=\"2.5\"} 3",
            "nmp_authz_check_duration_seconds_bucket{le=\"+Inf\"} 4",
            "nmp_authz_check_duration_seconds_count 4",
            "nmp_authz_check_duration_seconds_sum 5.00006",
            "nmp_authz_policy_stale 0",
            "nmp_authz_policy_source_reads_total{source=\"policy \\\"a\\\".yaml\",result=\"failure\"} 1",
            "nmp_authz_jwks_fetches_total{issuer=\"https://idp.example.com\",result=\"failure\"} 2",
            "nmp_authz_jwks_fetches_total{issuer=\"https://idp.example.com\",result=\"success\"} 1",
            "nmp_authz_decisions_total{result=\"deny\",status=\"403\",reason=\"not_permitted\"} 2",
            "nmp_authz_decisions_total{result=\"allow\",status=\"200\",reason=\"workspace_permission\"} 1",
            "nmp_authz_decisions_total{result=\"deny\",status=\"401\",reason=\"invalid_identity\"} 1",
            // Reachable and not seen yet: there, at 0.
            "nmp_authz_decisions_total{result=\"deny\",status=\"503\",reason=\"policy_stale\"} 0",
            "nmp_authz_decisions_total{result=\"deny\",status=\"401\",reason=\"not_permitted\"} 0",
            "nmp_authz_policy_info{revision=\"abc\"} 1",
            "nmp_authz_ready 1",
            "nmp_authz_log_records_dropped_total 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line}\n{text}");
        }
        // Statuses an outcome never answers with are not written.
        assert!(!text.contains("status=\"503\",reason=\"not_permitted\""));
        assert!(!text.contains("status=\"200\",reason=\"not_permitted\""));
        // No shadow policy: no shadow series.
        assert!(!text.contains("shadow"), "{text}");
    }

    #[test]
    fn every_reachable_decision_series_is_resolved_up_front() {
        let metrics = Metrics::default();
        for outcome in Outcome::all() {
            for identified in [true, false] {
                let status = outcome.status(identified);
                let slot = Status::ALL.iter().position(|s| *s == status).unwrap();
                assert!(
                    metrics.decision_counters[outcome.index()][slot].is_some(),
                    "{outcome:?} {status:?}"
                );
            }
        }
    }
}
