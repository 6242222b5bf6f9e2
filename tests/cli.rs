//! The `nmp-authz` binary as an operator uses it: help, `validate` on good and bad
//! configuration and policy data, and `serve` end to end (addresses learned from the log, HTTP
//! health and metrics over a plain TCP stream, SIGTERM for a clean exit).

use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use nmp_authz_core::policy::builtin::NMP_RELEASE;

mod common;
use common::process::{PROCESS_DEADLINE, Server, describe, http_get, nmp_authz, text};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/cli");

fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = nmp_authz();
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run nmp-authz")
}

/// Asserts a non-zero exit whose stderr mentions every one of `needles`; returns stderr.
fn assert_fails(out: &Output, needles: &[&str]) -> String {
    assert!(!out.status.success(), "expected failure\n{}", describe(out));
    let stderr = text(&out.stderr);
    for needle in needles {
        assert!(
            stderr.contains(needle),
            "stderr should mention {needle:?}\n{}",
            describe(out)
        );
    }
    stderr
}

/// [`assert_fails`], and the reason is a single line.
fn assert_fails_one_line(out: &Output, needles: &[&str]) {
    let stderr = assert_fails(out, needles);
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "the reason should be one line\n{}",
        describe(out)
    );
}

/// A temporary directory holding `config.yaml` (and whatever else a test writes there).
struct Workdir {
    dir: tempfile::TempDir,
}

impl Workdir {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.path(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("create dir");
        }
        std::fs::write(&path, contents).expect("write file");
        path
    }

    fn config(&self, contents: &str) -> String {
        self.write("config.yaml", contents)
            .to_str()
            .expect("utf-8 path")
            .to_owned()
    }

    /// `config.yaml` with one policy file source, `policy.yaml` beside it holding `policy`.
    fn with_policy(&self, policy: &str) -> String {
        self.write("policy.yaml", policy);
        self.config("policy:\n  sources:\n    - file: policy.yaml\n")
    }
}

fn fixture(name: &str) -> String {
    std::fs::read_to_string(Path::new(FIXTURES).join(name)).expect("read fixture")
}

// --- help and subcommands -------------------------------------------------------------------

#[test]
fn help_exits_zero() {
    for args in [
        &["--help"][..],
        &["serve", "--help"],
        &["validate", "--help"],
        &["help"],
    ] {
        let out = run(args, &[]);
        assert!(out.status.success(), "{args:?}\n{}", describe(&out));
        assert!(
            text(&out.stdout).contains("Usage"),
            "{args:?}\n{}",
            describe(&out)
        );
    }
    let out = run(&["serve", "--help"], &[]);
    let help = text(&out.stdout);
    for flag in ["--config", "--grpc-addr", "--http-addr"] {
        assert!(help.contains(flag), "serve --help lacks {flag}\n{help}");
    }
}

#[test]
fn bad_command_line_exits_non_zero() {
    assert_fails(&run(&["frobnicate"], &[]), &["frobnicate"]);
    assert_fails(&run(&[], &[]), &["Usage"]);
    assert_fails(
        &run(&["serve", "--grpc-addr", "nope"], &[]),
        &["--grpc-addr"],
    );
    assert_fails(
        &run(
            &["validate", "--config", "/nonexistent/nmp-authz.yaml"],
            &[],
        ),
        &["/nonexistent/nmp-authz.yaml"],
    );
}

// --- validate: configuration ----------------------------------------------------------------

#[test]
fn validate_quickstart_is_ok() {
    let out = run(&["validate"], &[]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(text(&out.stdout).contains("ok"), "{}", describe(&out));
}

#[test]
fn validate_empty_config_file_uses_defaults() {
    let w = Workdir::new();
    let out = run(&["validate", "--config", &w.config("")], &[]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(text(&out.stdout).contains("ok"), "{}", describe(&out));
}

#[test]
fn config_errors_are_one_line_naming_the_key() {
    let cases: &[(&str, &[&str])] = &[
        ("surver:\n  grpc_addr: 0.0.0.0:1\n", &["surver"]),
        (
            "auth:\n  oidc:\n    isuer: https://idp.example.com\n",
            &["auth.oidc.isuer"],
        ),
        ("auth:\n  enabled: maybe\n", &["auth.enabled"]),
        ("server:\n  grpc_addr: nope\n", &["server.grpc_addr"]),
        (
            "auth:\n  oidc:\n    leeway_seconds: 900\n",
            &["auth.oidc.leeway_seconds", "900"],
        ),
        (
            "policy:\n  sources: [{fiel: x.yaml}]\n",
            &["policy.sources[0]"],
        ),
    ];
    for (yaml, needles) in cases {
        let w = Workdir::new();
        let out = run(&["validate", "--config", &w.config(yaml)], &[]);
        assert_fails_one_line(&out, needles);
        // The same configuration stops `serve` before it binds anything.
        let out = run(
            &[
                "serve",
                "--config",
                &w.config(yaml),
                "--grpc-addr",
                "127.0.0.1:0",
                "--http-addr",
                "127.0.0.1:0",
            ],
            &[],
        );
        assert_fails(&out, needles);
    }
}

#[test]
fn config_syntax_error_names_the_file() {
    let w = Workdir::new();
    let config = w.config("auth:\n  enabled: true\n   oidc: [\n");
    assert_fails_one_line(
        &run(&["validate", "--config", &config], &[]),
        &["config.yaml"],
    );
}

#[test]
fn env_override_errors_name_the_variable() {
    let out = run(&["validate"], &[("NMP_AUTH_OIDC__ISUER", "x")]);
    assert_fails_one_line(&out, &["NMP_AUTH_OIDC__ISUER"]);
    let out = run(&["validate"], &[("NMP_AUTH_ENABLED", "perhaps")]);
    assert_fails_one_line(&out, &["NMP_AUTH_ENABLED", "perhaps"]);
    // Overrides apply on top of a config file too, and valid ones are accepted.
    let w = Workdir::new();
    let config = w.config("auth:\n  enabled: true\n");
    let out = run(
        &["validate", "--config", &config],
        &[("NMP_AUTH_OIDC__LEEWAY_SECONDS", "900")],
    );
    assert_fails_one_line(&out, &["leeway_seconds"]);
    let out = run(
        &["validate", "--config", &config],
        &[
            ("NMP_AUTH_ENABLED", "false"),
            ("NMP_AUTH_ADMIN_EMAIL", "ops@example.com"),
        ],
    );
    assert!(out.status.success(), "{}", describe(&out));
}

/// A variable named like nmp-authz's own that it does not read is a warning naming it and the
/// name most likely meant, from every command that reads the configuration, and the run goes
/// on: never silently ignored.
#[test]
fn unknown_nmp_authz_variables_are_named() {
    let typo = [("NMP_AUTHZ_ENABLED", "false")];
    let warning = "unknown variable NMP_AUTHZ_ENABLED (did you mean NMP_AUTH_ENABLED?)";
    for args in [
        &["validate"][..],
        &["members", "list", "--workspace", "default"],
    ] {
        let out = run(args, &typo);
        assert!(out.status.success(), "{args:?}\n{}", describe(&out));
        assert_eq!(
            text(&out.stderr),
            format!("nmp-authz: warning: {warning}\n"),
            "{args:?}"
        );
    }
    // The variables the server does read are not unknown.
    let read = [
        ("NMP_AUTHZ_LOG_FORMAT", "json"),
        ("NMP_AUTHZ_DECISION_LOG_SAMPLE", "1"),
    ];
    let out = run(&["validate"], &read);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(text(&out.stderr), "", "{}", describe(&out));

    let out = run(&["doctor", "--json"], &typo);
    let checks: serde_json::Value = serde_json::from_slice(&out.stdout).expect("doctor JSON");
    let environment = checks
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"] == "environment")
        .unwrap_or_else(|| panic!("no environment check: {checks}"));
    assert_eq!(environment["status"], "warn", "{environment}");
    assert_eq!(environment["detail"], warning, "{environment}");

    let mut server = Server::start_with_env(&EPHEMERAL, &typo);
    server.addresses();
    assert!(server.output().contains(warning), "{}", server.output());
    assert!(server.terminate().success(), "{}", server.output());
}

// --- validate: policy data ------------------------------------------------------------------

/// A valid base policy with one extra block appended under `authz:`.
fn policy_with(extra: &str) -> String {
    format!("{}{extra}", fixture("policy.yaml"))
}

/// Bad policy documents: (name, document, what the error must mention besides the file).
fn bad_policies() -> Vec<(&'static str, String, Vec<&'static str>)> {
    vec![
        (
            "unknown role in a binding",
            policy_with("    bob:\n      workspaces:\n        ws2: [Viewer, Ghost]\n"),
            vec![r#"authz.principals["bob"].workspaces["ws2"][1]"#, "Ghost"],
        ),
        (
            "includes cycle",
            "authz:\n  roles:\n    A: {includes: [B], permissions: [a.read]}\n    B: {includes: [A]}\n  endpoints:\n    /a: {get: {permissions: [a.read]}}\n".to_string(),
            vec!["authz.roles.", "includes cycle", "A -> B -> A"],
        ),
        (
            "malformed endpoint pattern",
            "authz:\n  endpoints:\n    \"/a/{x\":\n      get: {permissions: [models.read]}\n"
                .to_string(),
            vec![r#"authz.endpoints["/a/{x"]"#],
        ),
        (
            "unknown method key",
            "authz:\n  endpoints:\n    /apis/x:\n      GETT: {permissions: [models.read]}\n"
                .to_string(),
            vec![r#"authz.endpoints["/apis/x"].GETT"#, "GETT"],
        ),
        (
            "invalid endpoint permission",
            "authz:\n  endpoints:\n    /apis/x:\n      get: {permissions: [models.read, Models_Read]}\n"
                .to_string(),
            vec![r#"authz.endpoints["/apis/x"].get.permissions[1]"#, "Models_Read"],
        ),
        (
            "invalid role permission",
            "authz:\n  roles:\n    Viewer: {permissions: [read-everything]}\n  endpoints:\n    /apis/x: {get: {permissions: []}}\n"
                .to_string(),
            vec!["authz.roles.Viewer.permissions[0]", "read-everything"],
        ),
        (
            "invalid endpoint scope",
            "authz:\n  endpoints:\n    /apis/x:\n      get: {permissions: [models.read], scopes: [models.read]}\n"
                .to_string(),
            vec![r#"authz.endpoints["/apis/x"].get.scopes[0]"#],
        ),
        (
            "unknown key in a method entry",
            "authz:\n  endpoints:\n    /apis/x:\n      get: {permissions: [models.read], owner: team-a}\n"
                .to_string(),
            vec![r#"authz.endpoints["/apis/x"].get.owner"#],
        ),
    ]
}

/// Parse-stage errors: the document path and the file are both named.
#[test]
fn policy_parse_errors_name_the_file_and_path() {
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "unknown key in a role",
            "authz:\n  roles:\n    Viewer:\n      permisions: [models.read]\n",
            &["authz.roles.Viewer", "permisions"],
        ),
        (
            "unknown top-level key",
            "authz:\n  endponts: {}\n",
            &["endponts"],
        ),
        (
            "invalid YAML",
            "authz:\n  endpoints: {/a: [\n",
            &["invalid YAML"],
        ),
    ];
    for (_name, policy, needles) in cases {
        let w = Workdir::new();
        let config = w.with_policy(policy);
        let out = run(&["validate", "--config", &config], &[]);
        let policy_path = w.path("policy.yaml");
        let mut all = needles.to_vec();
        all.push(policy_path.to_str().unwrap());
        assert_fails(&out, &all);
    }
}

#[test]
fn policy_errors_name_the_document_path() {
    for (name, policy, needles) in bad_policies() {
        let w = Workdir::new();
        let out = run(&["validate", "--config", &w.with_policy(&policy)], &[]);
        assert!(
            !out.status.success(),
            "{name}: expected failure\n{}",
            describe(&out)
        );
        let stderr = text(&out.stderr);
        for needle in needles {
            assert!(
                stderr.contains(needle),
                "{name}: stderr should mention {needle:?}\n{}",
                describe(&out)
            );
        }
    }
}

/// Errors found when compiling the merged document must still say which file they came from.
#[test]
fn policy_compile_errors_name_the_file() {
    let mut failures = Vec::new();
    for (name, policy, _) in bad_policies() {
        let w = Workdir::new();
        let out = run(&["validate", "--config", &w.with_policy(&policy)], &[]);
        let stderr = text(&out.stderr);
        let file = w.path("policy.yaml");
        if out.status.success() || !stderr.contains(file.to_str().unwrap()) {
            failures.push(format!("{name}: {}", stderr.trim_end()));
        }
    }
    assert!(
        failures.is_empty(),
        "policy errors that do not name policy.yaml:\n{}",
        failures.join("\n")
    );
}

/// DESIGN §1: every subcommand exits non-zero with a one-line reason on bad input.
#[test]
fn policy_errors_are_one_line() {
    let mut cases: Vec<(String, String)> = bad_policies()
        .into_iter()
        .map(|(name, policy, _)| (name.to_string(), policy))
        .collect();
    cases.push((
        "invalid YAML".into(),
        "authz:\n  endpoints: {/a: [\n".into(),
    ));
    cases.push((
        "unknown key".into(),
        "authz:\n  roles:\n    Viewer:\n      permisions: [models.read]\n".into(),
    ));
    let mut failures = Vec::new();
    for (name, policy) in cases {
        let w = Workdir::new();
        let out = run(&["validate", "--config", &w.with_policy(&policy)], &[]);
        let stderr = text(&out.stderr);
        if out.status.success() || stderr.trim_end().lines().count() != 1 {
            failures.push(format!("{name}:\n{stderr}"));
        }
    }
    assert!(
        failures.is_empty(),
        "multi-line policy errors:\n{}",
        failures.join("\n")
    );
}

#[test]
fn missing_policy_file_is_named() {
    let w = Workdir::new();
    let config = w.config("policy:\n  sources:\n    - file: not-there.yaml\n");
    let missing = w.path("not-there.yaml");
    assert_fails_one_line(
        &run(&["validate", "--config", &config], &[]),
        &[missing.to_str().unwrap()],
    );
}

#[test]
fn valid_policy_file_passes_and_extensions_are_accepted() {
    let w = Workdir::new();
    let config = w.with_policy(&fixture("policy.yaml"));
    let out = run(&["validate", "--config", &config], &[]);
    assert!(out.status.success(), "{}", describe(&out));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("ok"), "{stdout}");
    assert!(stdout.contains("3 endpoint patterns"), "{stdout}");
}

#[test]
fn relative_policy_paths_resolve_next_to_the_config_file() {
    let w = Workdir::new();
    w.write("etc/policies/main.yaml", &fixture("policy.yaml"));
    w.write(
        "etc/config.yaml",
        "policy:\n  sources:\n    - file: policies/main.yaml\n",
    );
    // Started from elsewhere, with an absolute --config.
    let out = nmp_authz()
        .args(["validate", "--config"])
        .arg(w.path("etc/config.yaml"))
        .current_dir("/")
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", describe(&out));
    // Started from the tempdir, with a relative --config.
    let out = nmp_authz()
        .args(["validate", "--config", "etc/config.yaml"])
        .current_dir(w.dir.path())
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", describe(&out));
    // The policy is not looked up in the working directory.
    w.write("policies/main.yaml", &fixture("policy.yaml"));
    w.write(
        "other/config.yaml",
        "policy:\n  sources:\n    - file: policies/main.yaml\n",
    );
    let out = nmp_authz()
        .args(["validate", "--config", "other/config.yaml"])
        .current_dir(w.dir.path())
        .output()
        .expect("run");
    assert_fails(&out, &["other/policies/main.yaml"]);
    // Absolute paths are used as given.
    let absolute = w.path("etc/policies/main.yaml");
    let config = w.config(&format!(
        "policy:\n  sources:\n    - file: {}\n",
        absolute.display()
    ));
    let out = run(&["validate", "--config", &config], &[]);
    assert!(out.status.success(), "{}", describe(&out));
}

#[test]
fn validate_loads_nmp_static_document() {
    let Some(shared) = common::nmp::shared_catalog() else {
        return;
    };
    let shared = shared.display();
    let w = Workdir::new();
    let config = w.config(&format!(
        "auth:\n  admin_email: admin@example.com\npolicy:\n  sources:\n    - file: {shared}\n"
    ));
    let out = run(&["validate", "--config", &config], &[]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(
        text(&out.stdout).contains("96 endpoint patterns"),
        "{}",
        describe(&out)
    );
}

/// README "Which NMP's catalog": the Python that prints where an NMP install keeps its catalog.
const CATALOG_PATH_PROGRAM: &str = r#"import importlib.resources as r; print(r.files("nmp.core.auth") / "assets/static-authz.yaml")"#;

/// The README's one line, run with the installed NMP's Python, names that NMP's catalog, and
/// the server loads it as a `file:` source.
#[test]
fn the_catalog_of_the_installed_nmp_is_one_line_away() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    assert!(
        readme.contains(&format!("python -c '{CATALOG_PATH_PROGRAM}'")),
        "README.md lacks the one-liner"
    );
    let out = Command::new(common::nmp::python())
        .args(["-c", CATALOG_PATH_PROGRAM])
        .output()
        .expect("run NMP's python");
    assert!(out.status.success(), "{}", describe(&out));
    let printed = PathBuf::from(text(&out.stdout).trim());
    let released = common::nmp::released_catalog();
    assert_eq!(
        printed.canonicalize().unwrap(),
        released.canonicalize().unwrap()
    );

    let w = Workdir::new();
    let config = w.config(&format!(
        "policy:\n  sources:\n    - file: {}\n",
        printed.display()
    ));
    let out = run(&["validate", "--config", &config], &[]);
    assert!(out.status.success(), "{}", describe(&out));
    let patterns = nmp_authz_core::policy::PolicyDocument::parse(
        &std::fs::read_to_string(&released).unwrap(),
        nmp_authz_core::policy::Format::Yaml,
    )
    .expect("the released catalog parses")
    .authz
    .endpoints
    .len();
    assert!(
        text(&out.stdout).contains(&format!(" {patterns} endpoint patterns")),
        "{}",
        describe(&out)
    );
}

#[test]
fn version_names_the_nmp_release_of_the_builtin_catalog() {
    let out = run(&["--version"], &[]);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(
        text(&out.stdout),
        format!(
            "nmp-authz {} (built-in catalog: NeMo Platform {NMP_RELEASE})\n",
            env!("CARGO_PKG_VERSION")
        )
    );
}

// --- serve ----------------------------------------------------------------------------------

const EPHEMERAL: [&str; 4] = ["--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"];

#[test]
fn serve_end_to_end_with_config() {
    let w = Workdir::new();
    w.write("policy.yaml", &fixture("policy.yaml"));
    let config = w.config(&fixture("config.yaml"));
    let mut args = vec!["--config", config.as_str()];
    args.extend(EPHEMERAL);
    let mut server = Server::start(&args);
    let (grpc, http) = server.addresses();
    // The command line overrides server: from the file (which names port 1).
    assert_ne!(grpc.port(), 1, "{}", server.output());
    assert_ne!(http.port(), 1, "{}", server.output());
    assert!(
        !server.output().contains("DEVELOPMENT"),
        "a config file is not development mode:\n{}",
        server.output()
    );

    assert_eq!(http_get(http, "/health/live").0, 200);
    let (status, body) = http_get(http, "/health/ready");
    assert_eq!(status, 200, "{body}");
    // Only a file source here: readiness names no built-in catalog.
    assert!(!body.contains("builtin_catalog"), "{body}");
    let (status, metrics) = http_get(http, "/metrics");
    assert_eq!(status, 200);
    assert!(
        metrics.lines().any(|l| l.trim() == "nmp_authz_ready 1"),
        "{metrics}"
    );
    assert!(metrics.contains(&build_info()), "{metrics}");
    let (status, body) = http_get(http, "/no/such/path");
    assert_eq!(status, 404, "{body}");
    TcpStream::connect_timeout(&grpc, Duration::from_secs(10)).expect("gRPC port accepts");

    let status = server.terminate();
    assert!(
        status.success(),
        "exit after SIGTERM: {status:?}\n{}",
        server.output()
    );
}

#[test]
fn serve_quickstart_says_development() {
    let mut server = Server::start(&EPHEMERAL);
    let (_, http) = server.addresses();
    assert!(
        server.output().contains("DEVELOPMENT"),
        "quickstart must say it is a development mode:\n{}",
        server.output()
    );
    let (status, body) = http_get(http, "/health/ready");
    assert_eq!(status, 200, "{body}");
    let ready: serde_json::Value = serde_json::from_str(&body).expect("readiness is JSON");
    assert_eq!(ready["builtin_catalog"], NMP_RELEASE, "{body}");
    assert!(http_get(http, "/metrics").1.contains(&build_info()));
    let status = server.terminate();
    assert!(status.success(), "{status:?}\n{}", server.output());
}

/// The `/metrics` line naming this build and its built-in catalog's NMP release.
fn build_info() -> String {
    format!(
        "\nnmp_authz_build_info{{version=\"{}\",builtin_catalog=\"{NMP_RELEASE}\"}} 1\n",
        env!("CARGO_PKG_VERSION")
    )
}

/// Once `listening` is logged, SIGTERM must mean a graceful exit 0.
#[test]
fn sigterm_right_after_listening_exits_cleanly() {
    let w = Workdir::new();
    w.write("policy.yaml", &fixture("policy.yaml"));
    let config = w.config(&fixture("config.yaml"));
    let mut args = vec!["--config", config.as_str()];
    args.extend(EPHEMERAL);
    let mut failures = Vec::new();
    for attempt in 1..=10 {
        let mut server = Server::start(&args);
        // A shell armed before the server is ready, so SIGTERM follows the log line at once.
        let mut trigger = Command::new("sh")
            .args([
                "-c",
                "read _ && kill -TERM \"$0\"",
                &server.child.id().to_string(),
            ])
            .stdin(Stdio::piped())
            .spawn()
            .expect("spawn sh");
        server.addresses();
        let mut stdin = trigger.stdin.take().expect("piped stdin");
        stdin.write_all(b"go\n").expect("arm trigger");
        drop(stdin);
        assert!(trigger.wait().expect("wait sh").success(), "kill failed");
        let status = server
            .wait(PROCESS_DEADLINE)
            .unwrap_or_else(|| panic!("server did not exit:\n{}", server.output()));
        if !status.success() {
            failures.push(format!(
                "attempt {attempt}: {status:?}\n{}",
                server.output()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "SIGTERM right after `listening` did not exit 0:\n{}",
        failures.join("\n")
    );
}

/// A client that opened a connection and never answers (no reads, no PING acknowledgement)
/// cannot hold shutdown open: after `server.shutdown_grace_seconds` the server closes what is
/// left, says so, and exits 0.
#[test]
fn sigterm_closes_connections_left_open_after_the_grace_period() {
    let w = Workdir::new();
    w.write("policy.yaml", &fixture("policy.yaml"));
    let config = w.config(
        &fixture("config.yaml").replace("server:\n", "server:\n  shutdown_grace_seconds: 1\n"),
    );
    let mut args = vec!["--config", config.as_str()];
    args.extend(EPHEMERAL);
    let mut server = Server::start(&args);
    let (grpc, http) = server.addresses();
    let mut silent = Vec::new();
    for port in [grpc, http] {
        let mut stream = TcpStream::connect_timeout(&port, Duration::from_secs(10)).unwrap();
        // The HTTP/2 preface and an empty SETTINGS frame (an HTTP/1 server reads it as a bad
        // request line and answers; either way the client then goes silent).
        stream
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
            .unwrap();
        silent.push(stream);
    }
    let started = Instant::now();
    let status = server.terminate();
    assert!(status.success(), "{status:?}\n{}", server.output());
    assert!(
        server
            .output()
            .contains("closing the connections still open"),
        "{}",
        server.output()
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "exit took {:?}",
        started.elapsed()
    );
}

#[test]
fn serve_with_bad_policy_does_not_start() {
    let w = Workdir::new();
    let config = w.with_policy("authz:\n  roles:\n    A: {includes: [A]}\n");
    let mut args = vec!["--config", config.as_str()];
    args.extend(EPHEMERAL);
    let mut server = Server::start(&args);
    let status = server.wait(PROCESS_DEADLINE);
    let output = server.output();
    let status = status.unwrap_or_else(|| panic!("serve kept running:\n{output}"));
    assert!(!status.success(), "{output}");
    assert!(!output.contains("listening"), "{output}");
    assert!(output.contains("includes cycle"), "{output}");

    let w = Workdir::new();
    let config = w.config("policy:\n  sources:\n    - file: missing.yaml\n");
    let mut args = vec!["--config", config.as_str()];
    args.extend(EPHEMERAL);
    let mut server = Server::start(&args);
    let status = server.wait(PROCESS_DEADLINE);
    let output = server.output();
    let status = status.unwrap_or_else(|| panic!("serve kept running:\n{output}"));
    assert!(!status.success(), "{output}");
    assert!(output.contains("missing.yaml"), "{output}");
}

/// gRPC reflection answers grpcurl (which speaks v1alpha) with the PDP and health services.
#[test]
fn grpc_reflection_lists_the_services() {
    let grpcurl = common::process::venv_tool("grpcurl");
    let mut server = Server::start(&EPHEMERAL);
    let (grpc, _) = server.addresses();
    let out = std::process::Command::new(grpcurl)
        .args(["-plaintext", &grpc.to_string(), "list"])
        .output()
        .expect("run grpcurl");
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for service in ["nmp_authz.v1.PolicyDecision", "grpc.health.v1.Health"] {
        assert!(listed.contains(service), "{service} not in {listed}");
    }
    assert_eq!(server.terminate().code(), Some(0));
}

// --- README ---------------------------------------------------------------------------------

/// README's offline examples are real: each `$ target/release/nmp-authz ...` line of a
/// `console` block (one line, no pipe, variable or redirection) is run from a directory holding
/// `examples/` (mode 600, as the README's `chmod` makes it), and prints exactly the lines that
/// follow it, stdout then stderr.
#[test]
fn readme_examples_are_real() {
    use std::os::unix::fs::PermissionsExt;
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("read README.md");
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("examples")).expect("mkdir");
    for file in ["config.yaml", "policy.yaml"] {
        let copy = dir.path().join("examples").join(file);
        std::fs::copy(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("examples")
                .join(file),
            &copy,
        )
        .expect("copy example");
        std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }
    let examples = readme_examples(&readme);
    assert!(
        examples.len() >= 9,
        "only {} runnable examples found in README.md",
        examples.len()
    );
    for (args, expected) in examples {
        let out = nmp_authz()
            .args(shell_words(&args))
            .current_dir(dir.path())
            .output()
            .expect("run nmp-authz");
        let printed = text(&out.stdout) + &text(&out.stderr);
        assert_eq!(
            printed.trim_end(),
            expected,
            "README.md: $ target/release/nmp-authz {args}"
        );
    }
}

/// `(arguments, expected output)` of each runnable `$ target/release/nmp-authz` example.
fn readme_examples(readme: &str) -> Vec<(String, String)> {
    let mut examples: Vec<(String, Vec<&str>)> = Vec::new();
    let (mut in_console, mut collecting) = (false, false);
    for line in readme.lines() {
        if !in_console {
            in_console = line == "```console";
            continue;
        }
        if line.starts_with("```") {
            (in_console, collecting) = (false, false);
        } else if let Some(command) = line.strip_prefix("$ ") {
            let args = command.strip_prefix("target/release/nmp-authz ");
            collecting =
                args.is_some_and(|a| !a.contains(['|', '$', '>', '<', ';', '&', '`', '\\']));
            if collecting {
                examples.push((args.unwrap_or_default().to_owned(), Vec::new()));
            }
        } else if collecting {
            examples.last_mut().expect("a command").1.push(line);
        }
    }
    examples
        .into_iter()
        .map(|(args, lines)| (args, lines.join("\n")))
        .collect()
}

/// Words as a POSIX shell splits a line without expansions: on blanks, quotes grouping.
fn shell_words(line: &str) -> Vec<String> {
    let (mut words, mut word, mut quote, mut started) = (Vec::new(), String::new(), None, false);
    for c in line.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => word.push(c),
            (None, '\'' | '"') => (quote, started) = (Some(c), true),
            (None, c) if c.is_whitespace() => {
                if started {
                    words.push(std::mem::take(&mut word));
                }
                started = false;
            }
            (None, c) => {
                word.push(c);
                started = true;
            }
        }
    }
    if started {
        words.push(word);
    }
    words
}
