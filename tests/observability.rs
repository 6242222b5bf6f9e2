//! Operating nmp-authz: its `/metrics` as written by the real server, the Prometheus alert rules
//! (deploy/prometheus/alerts.yaml) and the Grafana dashboard (deploy/grafana/nmp-authz.json),
//! checked with the tools made for them, and the dry run (a shadow policy).
//!
//! - promtool (Prometheus's own rule checker and unit tester; scripts/test.sh unpacks it from
//!   Debian's `prometheus` package into target/tools) checks the rules, lints the real
//!   `/metrics`, and evaluates every alert against series scraped from real servers driven
//!   into each condition an alert names: each fires there, and only there. The series are the
//!   servers' own, so a renamed metric or label leaves an alert silent and fails the test.
//! - The dashboard is type-checked against Grafana's own dashboard schema (npm
//!   `@grafana/schema`, with the TypeScript compiler; tests/grafana), and every panel query
//!   is evaluated by promtool against the same real series: each must return data.
//!
//! A scrape is taken per round of traffic and given to promtool as one sample a minute: the
//! rules' windows and `for:` durations are in those minutes.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::bundle::{BundleServer, Serve, THINGS, bundle, document};
use common::check_request;
use common::process::{Server, http_get};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use serde_json::{Value, json};

/// Rounds (scrapes) per scenario: enough for the longest rule (a 5-minute window, then 5
/// minutes of `for:`) with every scenario the same length, so that one evaluation time sees
/// them all.
const ROUNDS: usize = 16;
/// Bound on waiting for a server's state to change (a source read, staleness).
const DEADLINE: Duration = Duration::from_secs(20);

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// promtool: `PROMTOOL`, else target/tools/bin/promtool (scripts/test.sh puts it
/// there). Missing: a failure with CI=true, else a notice and `None`.
fn promtool() -> Option<PathBuf> {
    let path = std::env::var_os("PROMTOOL")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target/tools/bin/promtool"));
    if path.is_file() {
        return Some(path);
    }
    assert_ne!(
        std::env::var("CI").as_deref(),
        Ok("true"),
        "{} is required when CI=true (scripts/test.sh installs it)",
        path.display()
    );
    eprintln!(
        "note: {} not found (run scripts/test.sh, which unpacks it from Debian's prometheus \
         package); skipped",
        path.display()
    );
    None
}

fn run(command: &mut Command) -> (bool, String) {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("{command:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

// ---- /metrics ----

/// One sample of a scrape: metric name, labels, value.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses Prometheus text format (0.0.4) samples; comments skipped. Panics on a line it
/// cannot read: what the server writes must parse.
fn parse_metrics(text: &str) -> Vec<Sample> {
    let mut samples = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let name_end = line.find(['{', ' ']).expect(line);
        let name = line[..name_end].to_string();
        let mut labels = BTreeMap::new();
        let mut rest = &line[name_end..];
        if let Some(inner) = rest.strip_prefix('{') {
            let mut chars = inner.char_indices();
            loop {
                let (start, c) = chars.next().expect(line);
                if c == '}' {
                    rest = &inner[start + 1..];
                    break;
                }
                if c == ',' {
                    continue;
                }
                let eq = inner[start..].find('=').expect(line) + start;
                let key = inner[start..eq].to_string();
                // Skip `="`; then the value up to the unescaped quote.
                for _ in start..eq + 1 {
                    chars.next();
                }
                let mut value = String::new();
                loop {
                    match chars.next().expect(line).1 {
                        '\\' => match chars.next().expect(line).1 {
                            'n' => value.push('\n'),
                            other => value.push(other),
                        },
                        '"' => break,
                        other => value.push(other),
                    }
                }
                labels.insert(key, value);
            }
        }
        let value = rest.trim();
        let value = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("value in {line:?}")),
        };
        samples.push(Sample {
            name,
            labels,
            value,
        });
    }
    samples
}

fn scrape(http: SocketAddr) -> Vec<Sample> {
    let (status, body) = http_get(http, "/metrics");
    assert_eq!(status, 200, "{body}");
    parse_metrics(&body)
}

/// The value of the series `name` with (at least) `labels`, summed over the rest.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(v))
        })
        .map(|s| s.value)
        .sum()
}

// ---- a server under traffic ----

fn unsigned_token(sub: &str) -> String {
    common::gateway::unsigned_token(sub, &[])
}

/// A token that names a signing key its issuer does not publish: a Check with it waits (up
/// to a second) for that issuer's keys to be fetched again.
fn token_with_unknown_key(issuer: &str) -> String {
    use base64::Engine as _;
    let b64 = |v: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    format!(
        "{}.{}.c2lnbmF0dXJl",
        b64(json!({"alg": "RS256", "typ": "JWT", "kid": "not-published"})),
        b64(json!({"iss": issuer, "sub": "alice", "iat": now, "exp": now + 600})),
    )
}

struct Running {
    server: Server,
    http: SocketAddr,
    client: AuthorizationClient<tonic::transport::Channel>,
    runtime: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
}

impl Running {
    /// `nmp-authz serve` with `config_yaml` (files named in it are written first: `files`).
    fn start(config_yaml: &str, files: &[(&str, &str)]) -> Running {
        let dir = tempfile::tempdir().unwrap();
        let mut config_yaml = config_yaml.to_string();
        for (name, text) in files {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            config_yaml = config_yaml.replace(&format!("{{{name}}}"), path.to_str().unwrap());
        }
        let config = dir.path().join("config.yaml");
        std::fs::write(&config, config_yaml).unwrap();
        let mut server = Server::start_with_config(&config);
        let (grpc, http) = server.addresses();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let client = runtime
            .block_on(AuthorizationClient::connect(format!("http://{grpc}")))
            .unwrap();
        Running {
            server,
            http,
            client,
            runtime,
            _dir: dir,
        }
    }

    /// The HTTP status Envoy would answer `GET path` with, with `authorization` if given.
    fn check(&mut self, path: &str, authorization: Option<&str>) -> i32 {
        let headers: Vec<(&str, &str)> = authorization
            .map(|a| ("authorization", a))
            .into_iter()
            .collect();
        let request = check_request("GET", path, None, &headers);
        let response = self
            .runtime
            .block_on(self.client.check(request))
            .unwrap()
            .into_inner();
        common::http_status(&response)
    }

    /// Polls `/metrics` until `until` holds of it, within [`DEADLINE`].
    fn until(&self, what: &str, until: impl Fn(&[Sample]) -> bool) {
        let start = Instant::now();
        loop {
            if until(&scrape(self.http)) {
                return;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "{what}: not within {DEADLINE:?}; server log:\n{}",
                self.server.output()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for one more read of the policy source with `result` (success or failure).
    fn next_read(&self, result: &str) {
        let reads = |s: &[Sample]| {
            value(
                s,
                "nmp_authz_policy_source_reads_total",
                &[("result", result)],
            )
        };
        let before = reads(&scrape(self.http));
        self.until(&format!("a source read with result {result}"), |s| {
            reads(s) > before
        });
    }
}

/// The series a scenario's server wrote, one scrape a round.
struct Recorded {
    instance: &'static str,
    scrapes: Vec<Vec<Sample>>,
    /// The last round before the condition began (nothing may fire then).
    before_condition: usize,
}

/// Alice, Viewer in ws1 by the bundle document; bob is bound nowhere.
fn bundle_config(url: &str, max_staleness: u64) -> String {
    format!(
        "auth:\n  allow_unsigned_jwt: true\n  bootstrap_bindings: false\n  \
         policy_data_refresh_interval: 1\npolicy:\n  max_staleness_seconds: {max_staleness}\n  \
         sources:\n    - bundle_url: {url}\n"
    )
}

/// Ordinary traffic: allowed, forbidden and unauthenticated Checks on the bundle document.
fn ordinary_traffic(running: &mut Running, alice: &str, bob: &str) {
    for _ in 0..10 {
        running.check(THINGS, Some(alice));
    }
    for _ in 0..3 {
        running.check(THINGS, Some(bob));
    }
    for _ in 0..2 {
        running.check(THINGS, None);
    }
}

/// Healthy, and a dry run whose shadow policy denies what the enforced one allows: nothing
/// may fire (disagreements are what a dry run is for).
fn healthy() -> Recorded {
    let enforced = document("alice");
    let shadow = document("");
    let mut running = Running::start(
        "auth:\n  allow_unsigned_jwt: true\n  bootstrap_bindings: false\n  \
         policy_data_refresh_interval: 1\npolicy:\n  sources:\n    - file: {policy.json}\n  \
         shadow:\n    sources:\n      - file: {shadow.json}\n",
        &[("policy.json", &enforced), ("shadow.json", &shadow)],
    );
    let (alice, bob) = (
        format!("Bearer {}", unsigned_token("alice")),
        format!("Bearer {}", unsigned_token("bob")),
    );
    let mut scrapes = Vec::new();
    for _ in 0..ROUNDS {
        ordinary_traffic(&mut running, &alice, &bob);
        scrapes.push(scrape(running.http));
    }
    Recorded {
        instance: "healthy",
        scrapes,
        before_condition: ROUNDS - 1,
    }
}

/// A bundle that stops being readable: `failing` rounds of failed reads after two good ones.
/// With a long `max_staleness` the last good data serves on (the source is failing, nothing
/// else); with a short one the server goes stale: 503 to every Check, not ready.
fn source_breaks(instance: &'static str, max_staleness: u64) -> Recorded {
    let bundles = BundleServer::start(Serve::Bundle {
        body: bundle(&document("alice"), "r1"),
        etag: "\"r1\"".into(),
    });
    let mut running = Running::start(&bundle_config(&bundles.url, max_staleness), &[]);
    let (alice, bob) = (
        format!("Bearer {}", unsigned_token("alice")),
        format!("Bearer {}", unsigned_token("bob")),
    );
    let mut scrapes = Vec::new();
    let healthy_rounds = 2;
    for round in 0..ROUNDS {
        if round == healthy_rounds {
            bundles.set(Serve::Raw(b"not a bundle".to_vec()));
        }
        running.next_read(if round < healthy_rounds {
            "success"
        } else {
            "failure"
        });
        ordinary_traffic(&mut running, &alice, &bob);
        scrapes.push(scrape(running.http));
    }
    if max_staleness <= 2 {
        assert_eq!(running.check(THINGS, Some(&alice)), 503, "stale by now");
    } else {
        assert_eq!(running.check(THINGS, Some(&alice)), 200, "last good data");
    }
    Recorded {
        instance,
        scrapes,
        before_condition: healthy_rounds - 1,
    }
}

/// Slow Checks: each round one Check carries a token whose issuer's keys cannot be fetched
/// (the issuer's discovery never answers), so it waits the full second for them before its
/// 401; the other Checks are fast allows. A fresh issuer each round, so none is served from
/// the rate-limited refetch of an earlier one.
fn slow_checks() -> Recorded {
    let hang = BundleServer::start(Serve::Hang);
    let base = hang.url.split("/apis").next().unwrap().to_string();
    let issuers: Vec<String> = (0..ROUNDS).map(|i| format!("{base}/issuer{i}")).collect();
    let additional: String = issuers[1..]
        .iter()
        .map(|i| format!("\n      - {i}"))
        .collect();
    let config = format!(
        "auth:\n  allow_unsigned_jwt: true\n  policy_data_refresh_interval: 1\n  oidc:\n    \
         enabled: true\n    issuer: {}\n    additional_issuers:{additional}\n",
        issuers[0]
    );
    let mut running = Running::start(&config, &[]);
    let alice = format!("Bearer {}", unsigned_token("alice"));
    let models = "/apis/models/v2/workspaces/default/models";
    let mut scrapes = Vec::new();
    let mut waits = Vec::new();
    for issuer in &issuers {
        let slow = format!("Bearer {}", token_with_unknown_key(issuer));
        let started = Instant::now();
        assert_eq!(running.check(models, Some(&slow)), 401);
        waits.push(started.elapsed());
        for _ in 0..20 {
            assert_eq!(running.check(models, Some(&alice)), 200);
        }
        scrapes.push(scrape(running.http));
    }
    // Each waited for its issuer's keys, up to the second allowed; one may be cut short when
    // the fetch started for that issuer at start-up gives up while it waits.
    let slow = waits
        .iter()
        .filter(|w| **w >= Duration::from_millis(500))
        .count();
    assert!(
        slow >= ROUNDS - 1,
        "Checks that waited for keys: {waits:?}; log:\n{}",
        running.server.output()
    );
    Recorded {
        instance: "slow",
        scrapes,
        before_condition: 0,
    }
}

/// Runs every scenario (on threads of their own: each mostly waits) and returns them.
fn scenarios() -> Vec<Recorded> {
    std::thread::scope(|scope| {
        let runs = [
            scope.spawn(healthy),
            scope.spawn(|| source_breaks("source-failing", 3600)),
            scope.spawn(|| source_breaks("stale", 2)),
            scope.spawn(slow_checks),
        ];
        runs.map(|run| run.join().expect("scenario")).into()
    })
}

// ---- promtool's unit tests ----

const JOB: &str = "nmp-authz";

/// The scenarios' scrapes as promtool input series (`_` where a series was not written yet),
/// each with `job` and `instance` labels as Prometheus adds them.
fn input_series(recorded: &[Recorded]) -> Vec<Value> {
    let mut series = Vec::new();
    for run in recorded {
        let mut keys: BTreeSet<(String, BTreeMap<String, String>)> = BTreeSet::new();
        for scrape in &run.scrapes {
            for s in scrape {
                keys.insert((s.name.clone(), s.labels.clone()));
            }
        }
        for (name, labels) in keys {
            let values: Vec<String> = run
                .scrapes
                .iter()
                .map(|scrape| {
                    scrape
                        .iter()
                        .find(|s| s.name == name && s.labels == labels)
                        .map_or("_".into(), |s| format!("{}", s.value))
                })
                .collect();
            let mut labels = labels;
            labels.insert("job".into(), JOB.into());
            labels.insert("instance".into(), run.instance.into());
            let selector: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}={}", serde_json::to_string(v).unwrap()))
                .collect();
            series.push(json!({
                "series": format!("{name}{{{}}}", selector.join(",")),
                "values": values.join(" "),
            }));
        }
    }
    series
}

/// Label or annotation names and values.
type Pairs = BTreeMap<String, String>;

/// The rules of deploy/prometheus/alerts.yaml: (alert name, its labels, its annotations).
fn alert_rules() -> Vec<(String, Pairs, Pairs)> {
    let text = std::fs::read_to_string(repo().join("deploy/prometheus/alerts.yaml")).unwrap();
    let doc: Value = serde_saphyr::from_str(&text).unwrap();
    let mut rules = Vec::new();
    for group in doc["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            let map = |key: &str| -> Pairs {
                rule[key]
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                            .collect()
                    })
                    .unwrap_or_default()
            };
            rules.push((
                rule["alert"].as_str().unwrap().to_string(),
                map("labels"),
                map("annotations"),
            ));
        }
    }
    rules
}

/// `text` with each `{{ $labels.NAME }}` replaced by that label's value, as Prometheus renders
/// annotations (the rules use no other template).
fn render(text: &str, labels: &BTreeMap<String, String>) -> String {
    let mut out = text.to_string();
    for (k, v) in labels {
        out = out.replace(&format!("{{{{ $labels.{k} }}}}"), v);
    }
    assert!(
        !out.contains("{{"),
        "a template the test cannot render: {text}"
    );
    out
}

/// Runs `promtool test rules` on `tests` (with `rule_files`); the output when it fails.
fn promtool_test(promtool: &Path, rule_files: &[PathBuf], tests: Vec<Value>) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("test.json");
    let spec = json!({
        "rule_files": rule_files,
        "evaluation_interval": "1m",
        "tests": tests,
    });
    // JSON is YAML: no quoting of label values to get wrong.
    std::fs::write(&file, serde_json::to_string_pretty(&spec).unwrap()).unwrap();
    let (ok, out) = run(Command::new(promtool).arg("test").arg("rules").arg(&file));
    if ok { Ok(()) } else { Err(out) }
}

/// Which alerts each scenario's condition names (and so must fire at its end); every other
/// alert must stay silent there, and every alert before the condition began.
fn expected_alerts(instance: &str) -> &'static [&'static str] {
    match instance {
        "healthy" => &[],
        "source-failing" => &["NmpAuthzPolicySourceFailing"],
        // Stale data: every Check is a 503 and the server is not ready, because the source
        // has kept failing.
        "stale" => &[
            "NmpAuthzPolicyStale",
            "NmpAuthzNotReady",
            "NmpAuthzHigh5xxRate",
            "NmpAuthzPolicySourceFailing",
        ],
        "slow" => &["NmpAuthzCheckLatencyHigh"],
        other => panic!("no expectations for {other}"),
    }
}

#[test]
fn alert_rules_pass_promtool_check() {
    let Some(promtool) = promtool() else { return };
    let rules = repo().join("deploy/prometheus/alerts.yaml");
    let (ok, out) = run(Command::new(promtool).arg("check").arg("rules").arg(&rules));
    assert!(ok, "{out}");
    assert!(out.contains("SUCCESS: 5 rules found"), "{out}");
}

/// The real server's `/metrics`, linted by promtool, and parsed: the names the README,
/// rules and dashboard use, with HELP and TYPE lines.
#[test]
fn metrics_pass_promtool_lint() {
    let Some(promtool) = promtool() else { return };
    let mut running = Running::start(
        "auth:\n  allow_unsigned_jwt: true\npolicy:\n  sources:\n    - builtin: true\n  \
         shadow:\n    sources:\n      - builtin: true\n",
        &[],
    );
    running.check("/apis/models/v2/workspaces/default/models", None);
    // Two groups no `x-nmp-principal-groups` header can carry (a space, a comma), one it can.
    let groups = json!(["two words", "a,b", "carried"]);
    let token = common::gateway::unsigned_token("carol", &[("groups", groups)]);
    let status = running.check(
        "/apis/models/v2/workspaces/default/models",
        Some(&format!("Bearer {token}")),
    );
    assert_eq!(status, 200);
    let (status, body) = http_get(running.http, "/metrics");
    assert_eq!(status, 200);
    let mut lint = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    lint.stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = lint.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "{said}\n{body}"
    );
    let samples = parse_metrics(&body);
    for name in [
        "nmp_authz_build_info",
        "nmp_authz_decisions_total",
        "nmp_authz_check_duration_seconds_bucket",
        "nmp_authz_check_duration_seconds_sum",
        "nmp_authz_check_duration_seconds_count",
        "nmp_authz_policy_loads_total",
        "nmp_authz_policy_load_duration_seconds",
        "nmp_authz_policy_load_failures_total",
        "nmp_authz_policy_info",
        "nmp_authz_policy_source_reads_total",
        "nmp_authz_policy_age_seconds",
        "nmp_authz_policy_stale",
        "nmp_authz_ready",
        "nmp_authz_log_records_dropped_total",
        "nmp_authz_shadow_disagreements_total",
        "nmp_authz_shadow_policy_info",
        "nmp_authz_shadow_policy_loads_total",
        "nmp_authz_principal_groups_dropped_total",
    ] {
        assert!(samples.iter().any(|s| s.name == name), "{name}:\n{body}");
    }
    for family in ["nmp_authz_decisions_total", "nmp_authz_ready"] {
        assert!(body.contains(&format!("\n# TYPE {family} ")), "{family}");
        assert!(body.contains(&format!("\n# HELP {family} ")), "{family}");
    }
    assert_eq!(
        value(
            &samples,
            "nmp_authz_decisions_total",
            &[("status", "401"), ("reason", "no_identity")]
        ),
        1.0,
        "{body}"
    );
    assert_eq!(
        value(&samples, "nmp_authz_principal_groups_dropped_total", &[]),
        2.0,
        "{body}"
    );
}

/// Each alert fires in the condition it names and in no other, evaluated by promtool on the
/// series real servers wrote in those conditions; and every dashboard panel's query returns
/// data from the same series.
#[test]
fn alerts_fire_in_their_conditions_and_dashboard_queries_return_data() {
    let Some(promtool) = promtool() else { return };
    let recorded = scenarios();
    let series = input_series(&recorded);
    let rules = alert_rules();
    assert_eq!(rules.len(), 5);

    let mut tests = Vec::new();
    for run in &recorded {
        let expected = expected_alerts(run.instance);
        let mut checks = Vec::new();
        for (alert, labels, annotations) in &rules {
            // Before the condition: silent. At the end: exactly as expected.
            checks.push(json!({
                "eval_time": format!("{}m", run.before_condition),
                "alertname": alert,
                "exp_alerts": [],
            }));
            let mut fired = labels.clone();
            fired.insert("job".into(), JOB.into());
            fired.insert("instance".into(), run.instance.into());
            if alert == "NmpAuthzPolicySourceFailing" {
                let source = run.scrapes[0]
                    .iter()
                    .find(|s| s.name == "nmp_authz_policy_source_reads_total")
                    .and_then(|s| s.labels.get("source"))
                    .expect("a source read")
                    .clone();
                fired.insert("source".into(), source);
            }
            let exp: Vec<Value> = if expected.contains(&alert.as_str()) {
                let rendered: BTreeMap<&String, String> = annotations
                    .iter()
                    .map(|(k, v)| (k, render(v, &fired)))
                    .collect();
                vec![json!({"exp_labels": fired, "exp_annotations": rendered})]
            } else {
                vec![]
            };
            checks.push(json!({
                "eval_time": format!("{}m", ROUNDS - 1),
                "alertname": alert,
                "exp_alerts": exp,
            }));
        }
        // Only this scenario's series: an alert of another scenario's must not leak in.
        let own: Vec<Value> = series
            .iter()
            .filter(|s| {
                s["series"]
                    .as_str()
                    .unwrap()
                    .contains(&format!("instance=\"{}\"", run.instance))
            })
            .cloned()
            .collect();
        tests.push(json!({
            "interval": "1m",
            "input_series": own,
            "alert_rule_test": checks,
        }));
    }
    let rules_file = repo().join("deploy/prometheus/alerts.yaml");
    if let Err(out) = promtool_test(&promtool, &[rules_file], tests) {
        let order: Vec<&str> = recorded.iter().map(|r| r.instance).collect();
        panic!("promtool test rules (test groups in order: {order:?}):\n{out}");
    }

    // Every panel query, as an alert that fires when the query returns nothing.
    let dir = tempfile::tempdir().unwrap();
    let panel_rules = dir.path().join("panels.yaml");
    let queries = dashboard_queries();
    let rules: Vec<Value> = queries
        .iter()
        .map(|(name, expr)| json!({"alert": name, "expr": format!("absent({expr})")}))
        .collect();
    std::fs::write(
        &panel_rules,
        serde_json::to_string(&json!({"groups": [{"name": "panels", "rules": rules}]})).unwrap(),
    )
    .unwrap();
    let (ok, out) = run(Command::new(&promtool)
        .args(["check", "rules"])
        .arg(&panel_rules));
    assert!(ok, "a dashboard query does not parse:\n{out}");
    let checks: Vec<Value> = queries
        .iter()
        .map(|(name, _)| {
            json!({"eval_time": format!("{}m", ROUNDS - 1), "alertname": name, "exp_alerts": []})
        })
        .collect();
    let tests = vec![json!({"interval": "1m", "input_series": series, "alert_rule_test": checks})];
    if let Err(out) = promtool_test(&promtool, &[panel_rules], tests) {
        panic!("dashboard queries that return no data (alert name: panel, query):\n{out}");
    }
}

// ---- the Grafana dashboard ----

fn dashboard() -> Value {
    let text = std::fs::read_to_string(repo().join("deploy/grafana/nmp-authz.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Every panel (rows' panels included, rows themselves not).
fn panels(dashboard: &Value) -> Vec<Value> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        if panel["type"] == "row" {
            out.extend(panel["panels"].as_array().into_iter().flatten().cloned());
        } else {
            out.push(panel.clone());
        }
    }
    out
}

/// Each panel query, named `Panel<id><refId>`, with the dashboard's variables as Grafana
/// would fill them with everything selected.
fn dashboard_queries() -> Vec<(String, String)> {
    let mut queries = Vec::new();
    for panel in panels(&dashboard()) {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"]
                .as_str()
                .unwrap()
                .replace("$__rate_interval", "5m")
                .replace("$job", ".*")
                .replace("$instance", ".*");
            let name = format!("Panel{}{}", panel["id"], target["refId"].as_str().unwrap());
            queries.push((name, expr));
        }
    }
    assert!(queries.len() >= 15, "{queries:?}");
    queries
}

/// The dashboard, type-checked against Grafana's own schema (`@grafana/schema`): the
/// dashboard model, and each panel's options and field config against its panel plugin's.
/// Object literals, so an unknown key is an error too.
#[test]
fn dashboard_matches_grafanas_schema() {
    let tools = repo().join("tests/grafana");
    let tsc = tools.join("node_modules/typescript/bin/tsc");
    assert!(
        tsc.is_file(),
        "{} missing: run scripts/test.sh (npm ci in tests/grafana)",
        tsc.display()
    );
    let dashboard = dashboard();
    let mut panel_configs = Vec::new();
    let mut targets = Vec::new();
    for panel in panels(&dashboard) {
        panel_configs.push(json!({
            "type": panel["type"],
            "options": panel["options"],
            "custom": panel["fieldConfig"]["defaults"].get("custom").cloned().unwrap_or(json!({})),
        }));
        targets.extend(panel["targets"].as_array().unwrap().iter().cloned());
    }
    let check = |dashboard: &Value| {
        let dir = tempfile::tempdir_in(&tools).unwrap();
        let source = format!(
            "import type {{ DashboardJson, PanelJson, PrometheusTarget }} from '../schema.js';\n\
             export const dashboard: DashboardJson = {};\n\
             export const panels: PanelJson[] = {};\n\
             export const targets: PrometheusTarget[] = {};\n",
            serde_json::to_string_pretty(dashboard).unwrap(),
            serde_json::to_string_pretty(&panel_configs).unwrap(),
            serde_json::to_string_pretty(&targets).unwrap(),
        );
        std::fs::write(dir.path().join("dashboard.ts"), source).unwrap();
        std::fs::write(
            dir.path().join("tsconfig.json"),
            r#"{"extends": "../tsconfig.json", "include": ["dashboard.ts"]}"#,
        )
        .unwrap();
        run(Command::new("node")
            .arg(&tsc)
            .arg("-p")
            .arg(dir.path().join("tsconfig.json")))
    };
    let (ok, out) = check(&dashboard);
    assert!(
        ok,
        "deploy/grafana/nmp-authz.json against Grafana's schema:\n{out}"
    );
    // The check can fail: a key the schema does not have is refused.
    let mut broken = dashboard.clone();
    broken["panels"][1]["gridPos"]["width"] = json!(3);
    let (ok, out) = check(&broken);
    assert!(!ok && out.contains("width"), "{out}");
}

// ---- the dry run ----

/// A server enforcing `policy.json` (alice may read the things) with `shadow.json` (nobody
/// may) as its dry run; both files reloaded every second.
fn with_shadow_policy() -> Running {
    let dir_files = [
        ("policy.json", document("alice")),
        ("shadow.json", document("")),
    ];
    let files: Vec<(&str, &str)> = dir_files.iter().map(|(n, t)| (*n, t.as_str())).collect();
    Running::start(
        "auth:\n  allow_unsigned_jwt: true\n  bootstrap_bindings: false\n  \
         policy_data_refresh_interval: 1\npolicy:\n  sources:\n    - file: {policy.json}\n  \
         shadow:\n    sources:\n      - file: {shadow.json}\n",
        &files,
    )
}

/// A shadow policy that denies what the enforced one allows: every answer is the enforced
/// policy's, on gRPC and on the HTTP authorization endpoint, and each disagreement is counted
/// and logged; agreements are not. A change to the shadow file is picked up.
#[test]
fn a_shadow_policy_counts_and_logs_disagreements_without_changing_answers() {
    let mut running = with_shadow_policy();
    let alice = format!("Bearer {}", unsigned_token("alice"));
    let bob = format!("Bearer {}", unsigned_token("bob"));
    for _ in 0..5 {
        assert_eq!(
            running.check(THINGS, Some(&alice)),
            200,
            "the enforced answer"
        );
    }
    for _ in 0..3 {
        assert_eq!(
            running.check(THINGS, Some(&bob)),
            403,
            "both deny: no record"
        );
    }
    // The HTTP authorization endpoint (Envoy's HTTP form) decides through the same path.
    let http = common::gateway::get(
        running.http,
        &format!("/apis/auth/ext-authz{THINGS}"),
        &[("authorization", &alice)],
    );
    assert_eq!(http.status, 200);
    let samples = scrape(running.http);
    let disagreements = |s: &[Sample], enforced: &str, shadow: &str| {
        value(
            s,
            "nmp_authz_shadow_disagreements_total",
            &[("enforced", enforced), ("shadow", shadow)],
        )
    };
    assert_eq!(disagreements(&samples, "allow", "deny"), 6.0);
    assert_eq!(disagreements(&samples, "deny", "allow"), 0.0);
    assert_eq!(disagreements(&samples, "deny", "deny"), 0.0);
    let series = |enforced: &str, shadow: &str| {
        samples.iter().any(|s| {
            s.name == "nmp_authz_shadow_disagreements_total"
                && s.labels.get("enforced").map(String::as_str) == Some(enforced)
                && s.labels.get("shadow").map(String::as_str) == Some(shadow)
        })
    };
    assert!(
        series("deny", "allow") && series("deny", "deny") && !series("allow", "allow"),
        "the reachable series from 0, and no allow/allow series: two allows never disagree"
    );
    assert_eq!(
        value(&samples, "nmp_authz_shadow_policy_loads_total", &[]),
        1.0
    );
    let revision = |s: &[Sample], name: &str| {
        s.iter()
            .find(|x| x.name == name)
            .and_then(|x| x.labels.get("revision").cloned())
            .unwrap_or_else(|| panic!("{name}"))
    };
    assert_ne!(
        revision(&samples, "nmp_authz_policy_info"),
        revision(&samples, "nmp_authz_shadow_policy_info")
    );
    // The decisions counted are the answers given.
    assert_eq!(
        value(&samples, "nmp_authz_decisions_total", &[("status", "200")]),
        6.0
    );

    // Records: one per disagreement (within the budget), with both answers. A graceful
    // shutdown writes out what the log queue holds (the client closed first: shutdown waits
    // for its connection).
    let Running {
        mut server,
        client,
        runtime,
        ..
    } = running;
    drop(client);
    drop(runtime);
    assert!(server.terminate().success());
    let output = server.output();
    let records: Vec<&str> = output
        .lines()
        .filter(|l| l.contains("nmp_authz::shadow: shadow policy disagrees"))
        .collect();
    assert_eq!(records.len(), 6, "{output}");
    assert!(
        records.iter().all(|r| r.contains("enforced_status=200")
            && r.contains("enforced_reason=\"workspace_permission\"")
            && r.contains("shadow_status=403")
            && r.contains("shadow_reason=\"not_permitted\"")
            && r.contains(&format!("path=\"{THINGS}\""))
            && r.contains("principal_id=\"alice\"")
            && r.contains("workspace=\"ws1\"")),
        "{records:#?}"
    );
    assert!(!output.contains("Bearer"), "no credential in the log");
}

/// The shadow file changed to agree with the enforced policy: reloaded like the enforced one,
/// and the disagreements stop.
#[test]
fn a_changed_shadow_policy_is_reloaded() {
    let mut running = with_shadow_policy();
    let alice = format!("Bearer {}", unsigned_token("alice"));
    assert_eq!(running.check(THINGS, Some(&alice)), 200);
    let count = |s: &[Sample]| {
        value(
            s,
            "nmp_authz_shadow_disagreements_total",
            &[("enforced", "allow"), ("shadow", "deny")],
        )
    };
    assert_eq!(count(&scrape(running.http)), 1.0);
    std::fs::write(running._dir.path().join("shadow.json"), document("alice")).unwrap();
    running.until("the shadow policy reloaded", |s| {
        value(s, "nmp_authz_shadow_policy_loads_total", &[]) == 2.0
    });
    for _ in 0..3 {
        assert_eq!(running.check(THINGS, Some(&alice)), 200);
    }
    assert_eq!(count(&scrape(running.http)), 1.0, "they agree now");
}
