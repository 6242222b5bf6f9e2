//! `nmp-authz-loadtest` against a real in-process server: denials counted as denials by
//! status, bounds and rate honoured, loopback enforced, a dead target reported without hanging.

use std::io::Read;
use std::net::SocketAddr;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nmp_authz::config::Config;
use nmp_authz::server::{State, grpc};
use serde_json::Value;
use tokio::sync::watch;

/// Upper bound for any one loadtest run in these tests.
const RUN_DEADLINE: Duration = Duration::from_secs(60);

/// The real server (quickstart-like: unsigned tokens, built-in catalog, bootstrap bindings) on
/// a loopback port, on its own runtime; stopped on drop.
struct Server {
    addr: SocketAddr,
    _stop: watch::Sender<bool>,
    _runtime: tokio::runtime::Runtime,
}

impl Server {
    fn start() -> Self {
        let mut config = Config::default();
        config.auth.allow_unsigned_jwt = true;
        // Builds its own runtime: before entering ours.
        let policy = nmp_authz::sources::load(&config).expect("built-in policy loads");
        let state = Arc::new(State::new(&config, Some(policy)));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = watch::channel(false);
        runtime.spawn(grpc::serve(listener, state, stopped));
        Self {
            addr,
            _stop: stop,
            _runtime: runtime,
        }
    }
}

/// Runs `nmp-authz-loadtest ARGS`, killed if it outlives [`RUN_DEADLINE`].
fn loadtest(args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_nmp-authz-loadtest"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn nmp-authz-loadtest");
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        stdout.read_to_end(&mut buf).unwrap();
        buf
    });
    let err_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        stderr.read_to_end(&mut buf).unwrap();
        buf
    });
    let deadline = Instant::now() + RUN_DEADLINE;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("loadtest {args:?} did not finish within {RUN_DEADLINE:?}");
        }
        // Poll interval while the child runs.
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: out_reader.join().unwrap(),
        stderr: err_reader.join().unwrap(),
    }
}

fn describe(out: &Output) -> String {
    format!(
        "status: {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn report(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("JSON report ({e}):\n{}", describe(out)))
}

fn count(value: &Value, key: &str) -> u64 {
    value[key].as_u64().unwrap_or(0)
}

fn sum(map: &Value) -> u64 {
    map.as_object()
        .map_or(0, |m| m.values().map(|v| v.as_u64().unwrap()).sum())
}

#[test]
fn counts_denials_by_status_and_add_up_to_the_bound() {
    let server = Server::start();
    let target = server.addr.to_string();
    let out = loadtest(&[
        "--target",
        &target,
        "--json",
        "--requests",
        "1000",
        "--connections",
        "2",
        "--concurrency",
        "8",
    ]);
    assert!(out.status.success(), "{}", describe(&out));
    let r = report(&out);
    assert_eq!(count(&r, "requests"), 1000, "{r}");
    assert_eq!(
        count(&r, "allowed") + sum(&r["denied"]) + sum(&r["errors"]),
        1000,
        "{r}"
    );
    // The default mix, round robin over 4: allowed, 403, 401, allowed (health).
    assert_eq!(count(&r, "allowed"), 500, "{r}");
    assert_eq!(r["denied"]["403"], 250, "{r}");
    assert_eq!(r["denied"]["401"], 250, "{r}");
    assert_eq!(sum(&r["errors"]), 0, "{r}");
    let latency = &r["latency_us"];
    for key in ["p50", "p90", "p99", "p99_9", "max"] {
        assert!(latency[key].as_u64().is_some_and(|v| v > 0), "{key}: {r}");
    }
    assert!(latency["p50"].as_u64() <= latency["max"].as_u64(), "{r}");
    assert!(r["throughput_rps"].as_f64().unwrap() > 0.0, "{r}");
}

#[test]
fn text_report_and_requests_file() {
    let server = Server::start();
    let target = server.addr.to_string();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mix.json");
    std::fs::write(
        &file,
        r#"[
            {"method": "GET", "path": "/apis/models/v2/workspaces/default/models/m1", "subject": "bob"},
            {"method": "GET", "path": "/apis/models/v2/workspaces/system/models", "headers": {"X-Unused": "1"}, "subject": "bob"},
            {"method": "GET", "path": "/apis/models/v2/workspaces/system/models"},
            {"method": "POST", "path": "/apis/models/v2/workspaces/default/models",
             "jwt_authn": {"sub": "carol", "scope": "openid platform:write"}},
            {"method": "POST", "path": "/apis/models/v2/workspaces/default/models",
             "jwt_authn": {"sub": "carol", "scope": "models:nothing"}}
        ]"#,
    )
    .unwrap();
    let file = file.to_str().unwrap();
    let out = loadtest(&[
        "--target",
        &target,
        "--requests-file",
        file,
        "--requests",
        "50",
        "--json",
    ]);
    assert!(out.status.success(), "{}", describe(&out));
    let r = report(&out);
    assert_eq!(count(&r, "requests"), 50, "{r}");
    assert_eq!(count(&r, "allowed"), 30, "{r}");
    assert_eq!(r["denied"]["401"], 10, "{r}");
    // Claims sent as jwt_authn metadata are who the server sees: the same caller is allowed
    // with a write scope and refused without one.
    assert_eq!(r["denied"]["403"], 10, "{r}");

    let out = loadtest(&["--target", &target, "--requests", "8"]);
    assert!(out.status.success(), "{}", describe(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "requests    8 in",
        "allowed     4",
        "denied      4 (401: 2, 403: 2)",
        "p99.9",
    ] {
        assert!(text.contains(needle), "{needle:?} in:\n{text}");
    }

    // Every route of the built-in catalog, answered by the policy: some allowed, some not.
    let out = loadtest(&[
        "--target",
        &target,
        "--catalog",
        "--requests",
        "600",
        "--json",
    ]);
    assert!(out.status.success(), "{}", describe(&out));
    let r = report(&out);
    assert_eq!(count(&r, "allowed") + sum(&r["denied"]), 600, "{r}");
    assert!(count(&r, "allowed") > 0 && sum(&r["denied"]) > 0, "{r}");
    assert_eq!(sum(&r["errors"]), 0, "{r}");

    std::fs::write(dir.path().join("bad.json"), r#"[{"method": "GET"}]"#).unwrap();
    let bad = dir.path().join("bad.json");
    let out = loadtest(&[
        "--target",
        &target,
        "--requests-file",
        bad.to_str().unwrap(),
    ]);
    assert!(!out.status.success(), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("--requests-file"), "{stderr}");
}

#[test]
fn fixed_rate_and_duration_are_honoured() {
    let server = Server::start();
    let target = server.addr.to_string();
    let out = loadtest(&[
        "--target",
        &target,
        "--json",
        "--rate",
        "200",
        "--duration",
        "2",
    ]);
    assert!(out.status.success(), "{}", describe(&out));
    let r = report(&out);
    let requests = count(&r, "requests");
    assert!((300..=440).contains(&requests), "{r}");
    assert_eq!(
        count(&r, "allowed") + sum(&r["denied"]) + sum(&r["errors"]),
        requests,
        "{r}"
    );
    let seconds = r["duration_seconds"].as_f64().unwrap();
    assert!((1.5..10.0).contains(&seconds), "{r}");

    // Both bounds: the count comes first.
    let out = loadtest(&[
        "--target",
        &target,
        "--json",
        "--rate",
        "100",
        "--duration",
        "30",
        "--requests",
        "50",
    ]);
    assert!(out.status.success(), "{}", describe(&out));
    let r = report(&out);
    assert_eq!(count(&r, "requests"), 50, "{r}");
    assert!(r["duration_seconds"].as_f64().unwrap() < 10.0, "{r}");
}

#[test]
fn refuses_remote_targets_and_bad_input() {
    for (args, needle) in [
        (&["--target", "192.0.2.1:9191"][..], "not a loopback"),
        (&["--target", "[2001:db8::1]:9191"][..], "not a loopback"),
        (&["--duration", "3601"][..], "--duration"),
        (&["--requests", "0"][..], "--requests"),
        (&["--rate", "0"][..], "--rate"),
        (&["--connections", "0"][..], "--connections"),
        (&["--target", "no-port"][..], "--target"),
    ] {
        let out = loadtest(args);
        assert!(!out.status.success(), "{args:?}: {}", describe(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.trim().lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?}: {}", describe(&out));
    }
    let help = loadtest(&["--help"]);
    let help = String::from_utf8_lossy(&help.stdout);
    for needle in [
        "--allow-remote",
        "--requests-file",
        "--rate",
        "\"subject\"",
        "p99_9",
    ] {
        assert!(help.contains(needle), "{needle:?} in --help");
    }
}

#[test]
fn dead_target_counts_errors_without_hanging() {
    // A port nobody listens on: bound, then released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let target = format!("127.0.0.1:{port}");
    let started = Instant::now();
    let out = loadtest(&[
        "--target",
        &target,
        "--json",
        "--requests",
        "20",
        "--timeout",
        "5",
    ]);
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
    assert!(!out.status.success(), "{}", describe(&out));
    let r = report(&out);
    assert_eq!(count(&r, "requests"), 20, "{r}");
    assert_eq!(sum(&r["errors"]), 20, "{r}");
    assert_eq!(count(&r, "allowed"), 0, "{r}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("failed with gRPC errors"), "{stderr}");
}
