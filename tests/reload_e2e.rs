//! Live policy through the real server: a bundle change flips decisions within the refresh
//! interval, a failing source turns into 503 + not ready after `max_staleness_seconds` and
//! recovers by itself, and a policy file change is picked up by the file watch.

mod common;

use std::time::{Duration, Instant};

use common::bundle::{BundleServer, Serve, THINGS, bundle, document};
use common::check_request;
use common::process::{Server, http_get};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;

/// Bound on waiting for a change to show (several refresh intervals).
const CHANGE_DEADLINE: Duration = Duration::from_secs(15);

/// An unsigned quickstart token, built by the tests (not by the server).
fn unsigned_token(sub: &str) -> String {
    common::gateway::unsigned_token(sub, &[])
}

struct Running {
    server: Server,
    http: std::net::SocketAddr,
    client: AuthorizationClient<tonic::transport::Channel>,
    runtime: tokio::runtime::Runtime,
}

impl Running {
    fn start(config_yaml: &str, dir: &std::path::Path) -> Running {
        let config = dir.join("config.yaml");
        std::fs::write(&config, config_yaml).unwrap();
        let mut server = Server::start_with_config(&config);
        let (grpc, http) = server.addresses();
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let client = runtime
            .block_on(AuthorizationClient::connect(format!("http://{grpc}")))
            .unwrap();
        Running {
            server,
            http,
            client,
            runtime,
        }
    }

    /// The HTTP status Envoy would return for alice reading THINGS.
    fn alice_reads(&mut self) -> i32 {
        let authorization = format!("Bearer {}", unsigned_token("alice"));
        let request = check_request("GET", THINGS, None, &[("authorization", &authorization)]);
        let response = self
            .runtime
            .block_on(self.client.check(request))
            .unwrap()
            .into_inner();
        common::http_status(&response)
    }

    /// Asks until alice's request gets `status`, within [`CHANGE_DEADLINE`].
    fn until(&mut self, status: i32, what: &str) -> Duration {
        let start = Instant::now();
        loop {
            let got = self.alice_reads();
            if got == status {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < CHANGE_DEADLINE,
                "{what}: still {got} after {CHANGE_DEADLINE:?}; server log:\n{}",
                self.server.output()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[test]
fn bundle_changes_and_staleness_through_the_server() {
    let bundles = BundleServer::start(Serve::Bundle {
        body: bundle(&document("alice"), "r1"),
        etag: "\"r1\"".into(),
    });
    let dir = tempfile::tempdir().unwrap();
    let mut running = Running::start(
        &format!(
            "auth:\n  allow_unsigned_jwt: true\n  bootstrap_bindings: false\n  \
             policy_data_refresh_interval: 1\npolicy:\n  max_staleness_seconds: 2\n  \
             sources:\n    - bundle_url: {}\n",
            bundles.url
        ),
        dir.path(),
    );
    assert_eq!(running.alice_reads(), 200);

    bundles.set(Serve::Bundle {
        body: bundle(&document(""), "r2"),
        etag: "\"r2\"".into(),
    });
    // Within `until`'s deadline: the poll (1 s interval) saw the new bundle.
    running.until(403, "binding removed");

    // The source breaks: the last good policy serves until max_staleness, then 503.
    bundles.set(Serve::Raw(b"not a bundle".to_vec()));
    running.until(503, "stale after the source failed");
    let (status, body) = http_get(running.http, "/health/ready");
    assert_eq!(status, 503);
    let ready: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ready["stale"], true);
    assert!(
        ready["sources"][0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("gzip")),
        "readiness names the failing source's error: {ready}"
    );
    let (_, metrics) = http_get(running.http, "/metrics");
    assert!(metrics.contains("nmp_authz_policy_stale 1"), "{metrics}");
    assert!(
        metrics.contains("nmp_authz_policy_source_reads_total{source=")
            && metrics.contains("result=\"failure\"}"),
        "{metrics}"
    );

    // The source is back: allowed and ready again, no restart.
    bundles.set(Serve::Bundle {
        body: bundle(&document("alice"), "r3"),
        etag: "\"r3\"".into(),
    });
    running.until(200, "recovered");
    assert_eq!(http_get(running.http, "/health/ready").0, 200);
    assert_eq!(running.server.terminate().code(), Some(0));
}

/// A bundle source that accepts the connection and never answers: Checks go on being
/// answered from the last good policy without waiting on the fetch, and once
/// `max_staleness_seconds` pass without a good load the server fails closed (503, unready)
/// while the fetch is still hanging, not only when it gives up.
#[test]
fn a_hanging_bundle_source_neither_stalls_checks_nor_postpones_staleness() {
    let bundles = BundleServer::start(Serve::Bundle {
        body: bundle(&document("alice"), "r1"),
        etag: "\"r1\"".into(),
    });
    let dir = tempfile::tempdir().unwrap();
    let mut running = Running::start(
        &format!(
            "auth:\n  allow_unsigned_jwt: true\n  bootstrap_bindings: false\n  \
             policy_data_refresh_interval: 1\npolicy:\n  max_staleness_seconds: 4\n  \
             sources:\n    - bundle_url: {}\n",
            bundles.url
        ),
        dir.path(),
    );
    assert_eq!(running.alice_reads(), 200);
    bundles.set(Serve::Hang);
    let hung_at = Instant::now();
    // Until staleness, every Check is answered at once, from the last good policy.
    let mut slowest = Duration::ZERO;
    let mut answered = 0;
    let stale_after = loop {
        let started = Instant::now();
        let status = running.alice_reads();
        slowest = slowest.max(started.elapsed());
        if status == 503 {
            break hung_at.elapsed();
        }
        assert_eq!(
            status,
            200,
            "before staleness, after {:?}",
            hung_at.elapsed()
        );
        answered += 1;
        assert!(
            hung_at.elapsed() < CHANGE_DEADLINE,
            "never stale; server log:\n{}",
            running.server.output()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(answered > 10, "{answered} Checks before staleness");
    // A Check that waited on the hanging fetch would take seconds (the fetch's 20 s limit).
    assert!(slowest < Duration::from_secs(2), "a Check took {slowest:?}");
    // Not before the staleness bound (4 s, less a refresh interval), and well before the
    // bundle fetch's own 20 s time limit would have ended the hanging request (a loaded
    // machine may add seconds: the upper bound only has to tell the two apart).
    assert!(
        stale_after >= Duration::from_secs(3) && stale_after < CHANGE_DEADLINE,
        "stale after {stale_after:?}"
    );
    assert_eq!(http_get(running.http, "/health/ready").0, 503);
    eprintln!(
        "hanging source: {answered} Checks answered (slowest {slowest:?}), stale after {stale_after:?}"
    );

    // The source answers again: a later poll loads it and the server recovers by itself.
    bundles.set(Serve::Bundle {
        body: bundle(&document("alice"), "r2"),
        etag: "\"r2\"".into(),
    });
    running.until(200, "recovered after the hang");
    assert_eq!(http_get(running.http, "/health/ready").0, 200);
    assert_eq!(running.server.terminate().code(), Some(0));
}

/// A Kubernetes ConfigMap volume: `policy.json -> ..data/policy.json`, `..data -> <timestamped
/// dir>`; an update writes a new directory and swaps the `..data` symlink by rename.
#[test]
fn a_configmap_symlink_swap_is_picked_up() {
    use std::os::unix::fs::symlink;
    let dir = tempfile::tempdir().unwrap();
    let mount = dir.path().join("policy");
    std::fs::create_dir(&mount).unwrap();
    let version = |name: &str, principal: &str| {
        let data = mount.join(name);
        std::fs::create_dir(&data).unwrap();
        std::fs::write(data.join("policy.json"), document(principal)).unwrap();
    };
    version("..2026_11_23_v1", "alice");
    symlink("..2026_11_23_v1", mount.join("..data")).unwrap();
    symlink("..data/policy.json", mount.join("policy.json")).unwrap();
    let mut running = Running::start(
        "auth:\n  allow_unsigned_jwt: true\n  bootstrap_bindings: false\n  \
         policy_data_refresh_interval: 3600\npolicy:\n  max_staleness_seconds: 3600\n  \
         sources:\n    - file: policy/policy.json\n",
        dir.path(),
    );
    assert_eq!(running.alice_reads(), 200);
    version("..2026_11_23_v2", "");
    symlink("..2026_11_23_v2", mount.join("..data_tmp")).unwrap();
    std::fs::rename(mount.join("..data_tmp"), mount.join("..data")).unwrap();
    // The interval is an hour: only the watch can explain a change within `until`'s deadline.
    running.until(403, "ConfigMap updated");
}

#[test]
fn a_policy_file_change_is_picked_up_without_waiting_for_the_interval() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.json");
    std::fs::write(&policy, document("alice")).unwrap();
    // A refresh interval far longer than the test: only the file watch can explain a change.
    let mut running = Running::start(
        "auth:\n  allow_unsigned_jwt: true\n  bootstrap_bindings: false\n  \
         policy_data_refresh_interval: 3600\npolicy:\n  max_staleness_seconds: 3600\n  \
         sources:\n    - file: policy.json\n",
        dir.path(),
    );
    assert_eq!(running.alice_reads(), 200);
    // As a ConfigMap update does it: a new file renamed over the old one.
    let next = dir.path().join("policy.json.next");
    std::fs::write(&next, document("")).unwrap();
    std::fs::rename(&next, &policy).unwrap();
    running.until(403, "file changed");
}

/// Decision logs are structured JSON with the decision's facts, and never carry a token, a
/// header value or a query string.
#[test]
fn decision_logs_are_json_and_redacted() {
    let mut server = Server::start_with_env(
        &["--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"],
        &[("NMP_AUTHZ_LOG_FORMAT", "json")],
    );
    let (grpc, _) = server.addresses();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut client = runtime
        .block_on(AuthorizationClient::connect(format!("http://{grpc}")))
        .unwrap();
    let token = unsigned_token("alice");
    let secrets = [
        format!("Bearer {token}"),
        "Bearer not.a.jwt-SECRET-TOKEN".to_string(),
    ];
    for authorization in &secrets {
        let request = check_request(
            "GET",
            "/apis/models/v2/workspaces/default/models?access_token=QUERY-SECRET",
            None,
            &[
                ("authorization", authorization),
                ("cookie", "session=COOKIE-SECRET"),
            ],
        );
        runtime.block_on(client.check(request)).unwrap();
    }
    assert_eq!(server.terminate().code(), Some(0));
    let log = server.output();
    let decisions: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .filter(|v: &serde_json::Value| v["fields"]["message"] == "decision")
        .collect();
    assert_eq!(decisions.len(), 2, "one record per Check:\n{log}");
    assert_eq!(decisions[0]["fields"]["status"], 200);
    assert_eq!(decisions[0]["fields"]["principal_id"], "alice");
    assert_eq!(
        decisions[0]["fields"]["path"],
        "/apis/models/v2/workspaces/default/models"
    );
    assert_eq!(decisions[1]["fields"]["status"], 401);
    for secret in [
        token.as_str(),
        "SECRET-TOKEN",
        "QUERY-SECRET",
        "COOKIE-SECRET",
    ] {
        assert!(
            !log.contains(secret),
            "{secret:?} leaked into the log:\n{log}"
        );
    }
}

/// Many reloads while a client sends Checks without pause: no Check fails, and every answer
/// matches the policy revision it reports (a half-applied policy would show as a mismatch).
#[test]
fn checks_never_fail_or_mix_revisions_during_reloads() {
    use nmp_authz_core::policy::{BindingDefaults, CompiledPolicy, Format, PolicyDocument};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// Revision `rev-allow-N` lets alice read; `rev-deny-N` does not. 5k other bindings make
    /// each compile take real time.
    fn policy(generation: usize) -> CompiledPolicy {
        let allow = generation.is_multiple_of(2);
        let mut doc: serde_json::Value =
            serde_json::from_str(&document(if allow { "alice" } else { "" })).unwrap();
        let principals = doc["authz"]["principals"].as_object_mut().unwrap();
        for n in 0..5_000 {
            principals.insert(
                format!("user-{n}@example.com"),
                serde_json::json!({"workspaces": {format!("ws{}", n % 50): ["Viewer"]}}),
            );
        }
        let doc = PolicyDocument::parse(&doc.to_string(), Format::Json).unwrap();
        let kind = if allow { "allow" } else { "deny" };
        let defaults = BindingDefaults {
            bootstrap_bindings: false,
            ..BindingDefaults::default()
        };
        CompiledPolicy::build(doc, &defaults, format!("rev-{kind}-{generation}")).unwrap()
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut config = nmp_authz::config::Config::default();
    config.auth.allow_unsigned_jwt = true;
    let state = Arc::new(nmp_authz::server::State::new(&config, Some(policy(0))));
    let (checks, reloads) = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (_stop, stopped) = tokio::sync::watch::channel(false);
        tokio::spawn(nmp_authz::server::grpc::serve(
            listener,
            state.clone(),
            stopped,
        ));
        let mut client = AuthorizationClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        let done = Arc::new(AtomicBool::new(false));
        let reloader = {
            let (state, done) = (state.clone(), done.clone());
            tokio::spawn(async move {
                for generation in 1..=20 {
                    let compiled = tokio::task::spawn_blocking(move || policy(generation))
                        .await
                        .unwrap();
                    state.install(compiled, Duration::ZERO);
                }
                done.store(true, Ordering::Relaxed);
            })
        };
        let authorization = format!("Bearer {}", unsigned_token("alice"));
        let mut checks = Vec::new();
        while !done.load(Ordering::Relaxed) {
            let request = check_request("GET", THINGS, None, &[("authorization", &authorization)]);
            let started = Instant::now();
            let response = client
                .check(request)
                .await
                .expect("no Check fails during reloads")
                .into_inner();
            checks.push((response, started.elapsed()));
        }
        reloader.await.unwrap();
        (checks, 20)
    });

    let mut revisions = std::collections::BTreeSet::new();
    let mut slowest = Duration::ZERO;
    for (response, took) in &checks {
        let revision = common::metadata(response, "policy_revision")
            .unwrap()
            .to_string();
        let allowed = matches!(response.http_response, Some(HttpResponse::OkResponse(_)));
        assert_eq!(
            allowed,
            revision.starts_with("rev-allow-"),
            "decision and revision disagree: {revision} allowed={allowed}"
        );
        revisions.insert(revision);
        slowest = slowest.max(*took);
    }
    assert!(
        revisions.len() >= 5,
        "Checks should span many of the {reloads} reloads, saw {revisions:?}"
    );
    eprintln!(
        "{} Checks across {} revisions during {reloads} reloads; slowest Check {slowest:?}",
        checks.len(),
        revisions.len()
    );
}
