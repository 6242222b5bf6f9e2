//! Logs and metrics. Counters are plain atomics in a map fixed at start-up, so recording a
//! decision takes no lock.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::policy::builtin::NMP_RELEASE;
use nmp_authz_core::verdict::{Outcome, Status};

/// The HTTP statuses a Check can end in.
/// Upper bounds (seconds) of the Check latency histogram's buckets.
const LATENCY_BUCKETS: [f64; 12] = [
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.01, 0.1, 1.0, 2.5,
];

#[derive(Debug)]
pub struct Metrics {
    /// Answers by outcome ([`Outcome::index`]) and status (in [`Status::ALL`] order).
    decisions: Box<[[AtomicU64; Status::ALL.len()]; Outcome::COUNT]>,
    policy_loads: AtomicU64,
    /// How long the last successful load took (read, parse, compile), in nanoseconds.
    policy_load_nanos: AtomicU64,
    policy_load_failures: AtomicU64,
    /// Check latency: counts per bucket (not cumulative), total nanoseconds, count.
    latency_buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    latency_nanos: AtomicU64,
    latency_count: AtomicU64,
    /// (issuer, succeeded) -> count. Fetches are rare: a lock is fine here.
    jwks_fetches: Mutex<BTreeMap<(String, bool), u64>>,
    /// (policy source, succeeded) -> reads.
    source_reads: Mutex<BTreeMap<(String, bool), u64>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            decisions: Box::new(std::array::from_fn(|_| Default::default())),
            policy_loads: AtomicU64::new(0),
            policy_load_nanos: AtomicU64::new(0),
            policy_load_failures: AtomicU64::new(0),
            latency_buckets: Default::default(),
            latency_nanos: AtomicU64::new(0),
            latency_count: AtomicU64::new(0),
            jwks_fetches: Mutex::default(),
            source_reads: Mutex::default(),
        }
    }
}

impl Metrics {
    pub fn record_check(&self, outcome: Outcome, status: Status, took: Duration) {
        let seconds = took.as_secs_f64();
        let bucket = LATENCY_BUCKETS
            .iter()
            .position(|le| seconds <= *le)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.latency_buckets[bucket].fetch_add(1, Relaxed);
        self.latency_nanos
            .fetch_add(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX), Relaxed);
        self.latency_count.fetch_add(1, Relaxed);
        self.decisions[outcome.index()][status as usize].fetch_add(1, Relaxed);
    }

    pub fn jwks_fetched(&self, issuer: &str, ok: bool) {
        count(&self.jwks_fetches, issuer, ok);
    }

    pub fn source_read(&self, source: &str, ok: bool) {
        count(&self.source_reads, source, ok);
    }

    pub fn policy_loaded(&self, took: Duration) {
        self.policy_loads.fetch_add(1, Relaxed);
        self.policy_load_nanos
            .store(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX), Relaxed);
    }

    pub fn policy_load_failed(&self) {
        self.policy_load_failures.fetch_add(1, Relaxed);
    }

    /// Prometheus text exposition.
    /// `policy_age_seconds`: since the policy in use was installed; `stale`: a source has
    /// failed for longer than allowed.
    pub fn render(
        &self,
        revision: Option<&str>,
        policy_age_seconds: Option<u64>,
        stale: bool,
        ready: bool,
    ) -> String {
        let mut out = String::new();
        header(
            &mut out,
            "nmp_authz_build_info",
            "gauge",
            "This build: its version and the NMP release of its built-in catalog.",
        );
        let _ = writeln!(
            out,
            "nmp_authz_build_info{{version=\"{}\",builtin_catalog=\"{NMP_RELEASE}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        header(
            &mut out,
            "nmp_authz_decisions_total",
            "counter",
            "Check decisions by HTTP status and reason.",
        );
        let mut outcomes: Vec<Outcome> = Outcome::all().collect();
        outcomes.sort_by_key(|o| o.as_str());
        for outcome in outcomes {
            let reason = outcome.as_str();
            for (status, counter) in Status::ALL.iter().zip(&self.decisions[outcome.index()]) {
                let n = counter.load(Relaxed);
                if n > 0 {
                    let result = if *status == Status::Ok {
                        "allow"
                    } else {
                        "deny"
                    };
                    let status = status.http();
                    let _ = writeln!(
                        out,
                        "nmp_authz_decisions_total{{result=\"{result}\",status=\"{status}\",reason=\"{reason}\"}} {n}"
                    );
                }
            }
        }
        header(
            &mut out,
            "nmp_authz_check_duration_seconds",
            "histogram",
            "Time to answer a Check, in the server.",
        );
        let mut cumulative = 0;
        for (i, counter) in self.latency_buckets.iter().enumerate() {
            cumulative += counter.load(Relaxed);
            let le = LATENCY_BUCKETS
                .get(i)
                .map_or_else(|| "+Inf".to_string(), |le| le.to_string());
            let _ = writeln!(
                out,
                "nmp_authz_check_duration_seconds_bucket{{le=\"{le}\"}} {cumulative}"
            );
        }
        let seconds = self.latency_nanos.load(Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "nmp_authz_check_duration_seconds_sum {seconds}");
        let count = self.latency_count.load(Relaxed);
        let _ = writeln!(out, "nmp_authz_check_duration_seconds_count {count}");
        let loads = self.policy_loads.load(Relaxed);
        header(
            &mut out,
            "nmp_authz_policy_loads_total",
            "counter",
            "Successful policy loads.",
        );
        let _ = writeln!(out, "nmp_authz_policy_loads_total {loads}");
        header(
            &mut out,
            "nmp_authz_policy_load_duration_seconds",
            "gauge",
            "Reading, parsing and compiling the policy in use (off the request path).",
        );
        let took = self.policy_load_nanos.load(Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "nmp_authz_policy_load_duration_seconds {took}");
        let failures = self.policy_load_failures.load(Relaxed);
        header(
            &mut out,
            "nmp_authz_policy_load_failures_total",
            "counter",
            "Failed policy loads.",
        );
        let _ = writeln!(out, "nmp_authz_policy_load_failures_total {failures}");
        header(
            &mut out,
            "nmp_authz_policy_info",
            "gauge",
            "The policy revision in use.",
        );
        if let Some(revision) = revision {
            let _ = writeln!(out, "nmp_authz_policy_info{{revision=\"{revision}\"}} 1");
        }
        header(
            &mut out,
            "nmp_authz_jwks_fetches_total",
            "counter",
            "Signing key fetches by issuer and result.",
        );
        labelled(
            &mut out,
            "nmp_authz_jwks_fetches_total",
            "issuer",
            &self.jwks_fetches,
        );
        header(
            &mut out,
            "nmp_authz_policy_source_reads_total",
            "counter",
            "Policy source reads by source and result.",
        );
        labelled(
            &mut out,
            "nmp_authz_policy_source_reads_total",
            "source",
            &self.source_reads,
        );
        header(
            &mut out,
            "nmp_authz_policy_age_seconds",
            "gauge",
            "Seconds since the policy in use was loaded.",
        );
        if let Some(age) = policy_age_seconds {
            let _ = writeln!(out, "nmp_authz_policy_age_seconds {age}");
        }
        header(
            &mut out,
            "nmp_authz_policy_stale",
            "gauge",
            "1 when a policy source has failed for longer than max_staleness_seconds.",
        );
        let _ = writeln!(out, "nmp_authz_policy_stale {}", u8::from(stale));
        header(
            &mut out,
            "nmp_authz_ready",
            "gauge",
            "1 when the server has valid policy data.",
        );
        let _ = writeln!(out, "nmp_authz_ready {}", u8::from(ready));
        out
    }
}

fn count(counts: &Mutex<BTreeMap<(String, bool), u64>>, label: &str, ok: bool) {
    let mut counts = counts.lock().unwrap_or_else(|e| e.into_inner());
    *counts.entry((label.to_string(), ok)).or_default() += 1;
}

/// One series per (label, result) of a counter kept by [`count`].
fn labelled(
    out: &mut String,
    name: &str,
    label: &str,
    counts: &Mutex<BTreeMap<(String, bool), u64>>,
) {
    let counts = counts.lock().unwrap_or_else(|e| e.into_inner());
    for ((value, ok), n) in counts.iter() {
        let result = if *ok { "success" } else { "failure" };
        let value = value.replace(['"', '\\', '\n'], "_");
        let _ = writeln!(out, "{name}{{{label}=\"{value}\",result=\"{result}\"}} {n}");
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Which decisions are logged: every denial, and one allow in `allow_every` (1: all; 0: none).
/// Set with `NMP_AUTHZ_DECISION_LOG_SAMPLE`, the fraction of allows to log (default 1).
#[derive(Debug)]
pub struct DecisionLog {
    allow_every: u64,
    allows: AtomicU64,
}

impl DecisionLog {
    pub fn new(allow_fraction: f64) -> Self {
        let allow_every = if allow_fraction <= 0.0 || allow_fraction.is_nan() {
            0
        } else {
            (1.0 / allow_fraction.min(1.0)).round() as u64
        };
        Self {
            allow_every,
            allows: AtomicU64::new(0),
        }
    }

    /// From `NMP_AUTHZ_DECISION_LOG_SAMPLE`; an unreadable value logs every allow (and says so).
    pub fn from_env() -> Self {
        let fraction = match std::env::var("NMP_AUTHZ_DECISION_LOG_SAMPLE") {
            Err(_) => 1.0,
            Ok(text) => text.trim().parse::<f64>().unwrap_or_else(|_| {
                tracing::warn!(value = %text, "NMP_AUTHZ_DECISION_LOG_SAMPLE is not a number; logging every decision");
                1.0
            }),
        };
        Self::new(fraction)
    }

    pub fn should_log(&self, status: u16) -> bool {
        status != 200
            || self.allow_every > 0
                && self
                    .allows
                    .fetch_add(1, Relaxed)
                    .is_multiple_of(self.allow_every)
    }
}

/// One structured decision record. Redacted by construction: no header value, no token, no
/// query string (it can carry credentials) is ever logged; only the decision's facts.
///
/// Written straight into the log buffer, in the shape the rest of the log has (text or JSON),
/// rather than through the generic formatter, which cost several microseconds per record: on
/// a Check path of about twenty, that was most of what separated nmp-authz from a do-nothing
/// server (BENCHMARKS.md). `RUST_LOG` still decides whether records are written.
/// What a decision record says, as the face that answered knows it.
#[derive(Debug)]
pub struct DecisionFacts<'a> {
    pub allowed: bool,
    pub status: u16,
    pub reason: &'a str,
    pub method: &'a str,
    /// Without its query.
    pub path: &'a str,
    pub principal_id: &'a str,
    pub workspace: &'a str,
    pub endpoint: &'a str,
    pub policy_revision: &'a str,
}

pub fn log_decision(facts: &DecisionFacts<'_>, took: Duration) {
    let Some(output) = DECISION_OUTPUT.get() else {
        return;
    };
    if !tracing::enabled!(target: DECISION_TARGET, tracing::Level::INFO) {
        return;
    }
    let record = DecisionRecord {
        message: "decision",
        allowed: facts.allowed,
        status: facts.status,
        reason: facts.reason,
        method: facts.method,
        path: facts.path,
        principal_id: facts.principal_id,
        workspace: facts.workspace,
        endpoint: facts.endpoint,
        policy_revision: facts.policy_revision,
        micros: u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
    };
    thread_local! {
        static LINE: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    LINE.with_borrow_mut(|line| {
        line.clear();
        record.write(line, output.json);
        output.output.append(line);
    });
}

const DECISION_TARGET: &str = "nmp_authz::decision";

/// Where decision records go, once [`init_logging`] has run (never in library tests).
static DECISION_OUTPUT: std::sync::OnceLock<DecisionOutput> = std::sync::OnceLock::new();

struct DecisionOutput {
    output: LogOutput,
    json: bool,
}

#[derive(serde::Serialize)]
struct DecisionRecord<'a> {
    message: &'static str,
    allowed: bool,
    status: u16,
    reason: &'a str,
    method: &'a str,
    path: &'a str,
    principal_id: &'a str,
    workspace: &'a str,
    endpoint: &'a str,
    policy_revision: &'a str,
    micros: u64,
}

impl DecisionRecord<'_> {
    /// One line as the subscriber's formatter writes events: JSON with the fields under
    /// `fields`, or text with strings quoted and escaped.
    fn write(&self, line: &mut Vec<u8>, json: bool) {
        let now = timestamp_now();
        // Only ASCII digits and punctuation.
        let timestamp = std::str::from_utf8(&now).unwrap_or_default();
        if json {
            #[derive(serde::Serialize)]
            struct Line<'a> {
                timestamp: &'a str,
                level: &'static str,
                fields: &'a DecisionRecord<'a>,
                target: &'static str,
            }
            let event = Line {
                timestamp,
                level: "INFO",
                fields: self,
                target: DECISION_TARGET,
            };
            // Serializing borrowed strings and numbers into a Vec cannot fail.
            let _ = serde_json::to_writer(&mut *line, &event);
        } else {
            // The fields one by one rather than through `write!`: its formatting machinery was
            // most of a record's cost.
            line.extend_from_slice(timestamp.as_bytes());
            line.extend_from_slice(b"  INFO ");
            line.extend_from_slice(DECISION_TARGET.as_bytes());
            line.extend_from_slice(b": ");
            line.extend_from_slice(self.message.as_bytes());
            let mut number = itoa::Buffer::new();
            line.extend_from_slice(if self.allowed {
                b" allowed=true"
            } else {
                b" allowed=false"
            });
            line.extend_from_slice(b" status=");
            line.extend_from_slice(number.format(self.status).as_bytes());
            for (key, value) in [
                (&b" reason="[..], self.reason),
                (b" method=", self.method),
                (b" path=", self.path),
                (b" principal_id=", self.principal_id),
                (b" workspace=", self.workspace),
                (b" endpoint=", self.endpoint),
                (b" policy_revision=", self.policy_revision),
            ] {
                line.extend_from_slice(key);
                push_quoted(line, value);
            }
            line.extend_from_slice(b" micros=");
            line.extend_from_slice(number.format(self.micros).as_bytes());
        }
        line.push(b'\n');
    }
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

/// `value` as `{:?}` writes it (quoted, escaped), without the formatting machinery in the
/// usual case of nothing to escape.
fn push_quoted(line: &mut Vec<u8>, value: &str) {
    if value
        .bytes()
        .all(|b| (b' '..=b'~').contains(&b) && b != b'"' && b != b'\\')
    {
        line.push(b'"');
        line.extend_from_slice(value.as_bytes());
        line.push(b'"');
    } else {
        let _ = write!(line, "{value:?}");
    }
}

/// Logs to stderr; `RUST_LOG` filters (default `info`), `NMP_AUTHZ_LOG_FORMAT=json` for JSON.
/// Keep the returned guard alive: dropping it writes out what is still buffered.
pub fn init_logging() -> LogFlush {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let terminal = std::io::stderr().is_terminal();
    let output = LogOutput::new(terminal);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(terminal)
        .with_writer(output.clone());
    let json = std::env::var("NMP_AUTHZ_LOG_FORMAT").is_ok_and(|f| f == "json");
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
    let _ = DECISION_OUTPUT.set(DecisionOutput {
        output: output.clone(),
        json,
    });
    LogFlush(output)
}

/// How long a log record may wait in the buffer.
const LOG_FLUSH_EVERY: Duration = Duration::from_millis(50);
/// A buffer this full is written out by the thread that filled it.
const LOG_BUFFER_BYTES: usize = 64 * 1024;

/// Where log records go: a buffer in front of stderr, written out when it fills and at least
/// every [`LOG_FLUSH_EVERY`] by a flusher thread. Under load many records share one write
/// system call, no thread is woken per record (a Check logs its decision on the worker thread
/// that answered it), and nobody appending waits on a write in progress. On a terminal every
/// record is written at once.
#[derive(Clone, Debug)]
struct LogOutput {
    buffer: Arc<Mutex<Vec<u8>>>,
    immediate: bool,
}

impl LogOutput {
    fn new(immediate: bool) -> Self {
        let output = Self {
            buffer: Arc::new(Mutex::new(Vec::with_capacity(LOG_BUFFER_BYTES))),
            immediate,
        };
        if !immediate {
            let buffer = Arc::downgrade(&output.buffer);
            std::thread::Builder::new()
                .name("nmp-authz-log".into())
                .spawn(move || {
                    while let Some(buffer) = buffer.upgrade() {
                        write_out(lock(&buffer));
                        drop(buffer);
                        std::thread::sleep(LOG_FLUSH_EVERY);
                    }
                })
                .expect("start the log flusher thread");
        }
        output
    }

    /// Appends one whole record.
    fn append(&self, record: &[u8]) {
        use tracing_subscriber::fmt::MakeWriter;
        let _ = self.make_writer().write_all(record);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Writes the buffered records to stderr. Stderr's lock is taken before the buffer's is
/// released, so chunks leave in the order they were buffered while appending goes on.
fn write_out(mut buffer: std::sync::MutexGuard<'_, Vec<u8>>) {
    if buffer.is_empty() {
        return;
    }
    let records = std::mem::replace(&mut *buffer, Vec::with_capacity(LOG_BUFFER_BYTES));
    let mut stderr = std::io::stderr().lock();
    drop(buffer);
    // Nowhere to report a failed write to stderr.
    let _ = stderr.write_all(&records);
}

/// One record being written: the formatter hands over each record whole in one `write_all`.
#[derive(Debug)]
pub struct LogRecord<'a> {
    buffer: Option<std::sync::MutexGuard<'a, Vec<u8>>>,
    immediate: bool,
}

impl Write for LogRecord<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        if let Some(buffer) = &mut self.buffer {
            buffer.extend_from_slice(bytes);
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LogRecord<'_> {
    fn drop(&mut self) {
        if let Some(buffer) = self.buffer.take()
            && (self.immediate || buffer.len() >= LOG_BUFFER_BYTES)
        {
            write_out(buffer);
        }
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogOutput {
    type Writer = LogRecord<'a>;

    fn make_writer(&'a self) -> LogRecord<'a> {
        LogRecord {
            buffer: Some(lock(&self.buffer)),
            immediate: self.immediate,
        }
    }
}

/// Writes out buffered log records when dropped (at the end of `serve`).
#[derive(Debug)]
pub struct LogFlush(LogOutput);

impl Drop for LogFlush {
    fn drop(&mut self) {
        write_out(lock(&self.0.buffer));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Reason;

    #[test]
    fn decision_records_are_one_line_each_in_both_formats() {
        let record = DecisionRecord {
            message: "decision",
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
        record.write(&mut line, true);
        let text = String::from_utf8(line.clone()).unwrap();
        assert_eq!(text.matches('\n').count(), 1, "{text}");
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(json["target"], "nmp_authz::decision");
        assert_eq!(json["level"], "INFO");
        assert_eq!(json["fields"]["message"], "decision");
        assert_eq!(json["fields"]["status"], 403);
        assert_eq!(json["fields"]["path"], "/a\"b\nc");
        line.clear();
        record.write(&mut line, false);
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
    fn quoted_values_are_written_as_debug_formatting_writes_them() {
        for value in [
            "",
            "plain /apis/x?y=1",
            "quote\"",
            "back\\slash",
            "tab\t",
            "nl\n",
            "nul\0",
            "é",
            "\u{7f}",
            "\u{200b}",
            "~ and space",
        ] {
            let mut line = Vec::new();
            push_quoted(&mut line, value);
            assert_eq!(String::from_utf8(line).unwrap(), format!("{value:?}"));
        }
    }

    #[test]
    fn decision_log_sampling() {
        let count =
            |log: &DecisionLog, status: u16| (0..100).filter(|_| log.should_log(status)).count();
        assert_eq!(count(&DecisionLog::new(1.0), 200), 100);
        assert_eq!(count(&DecisionLog::new(0.1), 200), 10);
        assert_eq!(count(&DecisionLog::new(0.0), 200), 0);
        // Denials are always logged.
        assert_eq!(count(&DecisionLog::new(0.0), 403), 100);
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
        metrics.source_read("policy.yaml", false);
        let text = metrics.render(Some("abc"), Some(7), false, true);
        assert!(text.contains("nmp_authz_policy_age_seconds 7\n"));
        assert!(text.contains("nmp_authz_policy_loads_total 0\n"));
        metrics.policy_loaded(Duration::from_millis(1500));
        metrics.policy_load_failed();
        let text = metrics.render(Some("abc"), Some(7), false, true);
        assert!(text.contains("nmp_authz_policy_loads_total 1\n"));
        assert!(text.contains("nmp_authz_policy_load_duration_seconds 1.5\n"));
        assert!(text.contains("nmp_authz_policy_load_failures_total 1\n"));
        assert!(text.contains("nmp_authz_check_duration_seconds_bucket{le=\"0.00001\"} 0\n"));
        assert!(text.contains("nmp_authz_check_duration_seconds_bucket{le=\"0.000025\"} 3\n"));
        assert!(text.contains("nmp_authz_check_duration_seconds_bucket{le=\"2.5\"} 3\n"));
        assert!(text.contains("nmp_authz_check_duration_seconds_bucket{le=\"+Inf\"} 4\n"));
        assert!(text.contains("nmp_authz_check_duration_seconds_count 4\n"));
        assert!(text.contains("nmp_authz_policy_stale 0\n"));
        assert!(text.contains(
            "nmp_authz_policy_source_reads_total{source=\"policy.yaml\",result=\"failure\"} 1\n"
        ));
        assert!(text.contains(
            "nmp_authz_jwks_fetches_total{issuer=\"https://idp.example.com\",result=\"failure\"} 2\n"
        ));
        assert!(text.contains(
            "nmp_authz_decisions_total{result=\"deny\",status=\"403\",reason=\"not_permitted\"} 2\n"
        ));
        assert!(text.contains(
            "nmp_authz_decisions_total{result=\"allow\",status=\"200\",reason=\"workspace_permission\"} 1\n"
        ));
        assert!(text.contains("reason=\"invalid_identity\"} 1\n"));
        assert!(text.contains("nmp_authz_policy_info{revision=\"abc\"} 1\n"));
        assert!(text.contains("nmp_authz_ready 1\n"));
        assert!(!text.contains("status=\"503\""), "no zero-valued series");
    }
}
