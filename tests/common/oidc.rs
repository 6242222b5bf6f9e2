//! A real OpenID provider for the tests: `tests/oidc/provider.mjs` (the `oidc-provider` npm
//! package) run by node as a child process on 127.0.0.1, and a small blocking HTTP/1.1 client
//! for its discovery, JWKS and token endpoints.
//!
//! ```ignore
//! let keys = KeyDir::new();
//! let provider = Provider::start(&[keys.rsa("k1"), keys.ec("e1")], Options::default());
//! let token = provider.token("alice", "platform:read", API_RESOURCE);
//! assert_eq!(jwt_claims(&token)["sub"], "alice");
//! ```
//!
//! Everything here blocks (std::net and std::process); from an async test, call it directly
//! (a call takes milliseconds, a start about half a second) or through `spawn_blocking`.
//! Clients, resources and scopes that the provider knows are listed in tests/oidc/README.md.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;

/// How long a provider may take to print `READY`.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a provider may take to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Connect, read and write timeout of one HTTP request to the provider.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// Every client's secret (sent with `client_secret_post`).
pub const CLIENT_SECRET: &str = "secret";
/// RS256 tokens with audience `urn:nmp:api`.
pub const API_RESOURCE: &str = "urn:nmp:api";
/// ES256 tokens with audience `urn:nmp:api` (the provider needs an EC key).
pub const ES256_RESOURCE: &str = "urn:nmp:es256";
/// RS256 tokens with audience `urn:other`.
pub const OTHER_RESOURCE: &str = "urn:other";
/// The audience of tokens for [`API_RESOURCE`] and [`ES256_RESOURCE`].
pub const API_AUDIENCE: &str = "urn:nmp:api";

fn oidc_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oidc")
}

// ---- keys ----

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    /// RSA 2048 (RS256 tokens).
    Rsa,
    /// EC P-256 (ES256 tokens).
    Ec,
}

/// A file holding one private JWK. The provider creates it (with a random `kid`) when it starts
/// and the file does not exist yet; later starts reuse it, so the same key can be published
/// again, e.g. after a rotation.
#[derive(Clone, Debug)]
pub struct Key {
    pub path: PathBuf,
    pub kind: KeyKind,
}

impl Key {
    pub fn rsa(path: impl Into<PathBuf>) -> Key {
        Key {
            path: path.into(),
            kind: KeyKind::Rsa,
        }
    }

    pub fn ec(path: impl Into<PathBuf>) -> Key {
        Key {
            path: path.into(),
            kind: KeyKind::Ec,
        }
    }

    /// The `--keys` entry for this key.
    fn spec(&self) -> String {
        let kind = match self.kind {
            KeyKind::Rsa => "rsa",
            KeyKind::Ec => "ec",
        };
        format!("{}:{kind}", self.path.display())
    }

    /// The private JWK in the file (it exists once a provider has started with this key).
    pub fn jwk(&self) -> Value {
        let text = std::fs::read_to_string(&self.path).unwrap_or_else(|e| {
            panic!(
                "key file {} cannot be read ({e}); a provider creates it when it starts",
                self.path.display()
            )
        });
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("key file {} is not JSON: {e}", self.path.display()))
    }

    /// The key's `kid` (the file exists once a provider has started with this key).
    pub fn kid(&self) -> String {
        let jwk = self.jwk();
        jwk["kid"]
            .as_str()
            .unwrap_or_else(|| panic!("key file {} has no kid", self.path.display()))
            .to_string()
    }
}

/// A temporary directory for key files, removed on drop.
pub struct KeyDir(tempfile::TempDir);

impl KeyDir {
    pub fn new() -> KeyDir {
        KeyDir(tempfile::tempdir().expect("create a temporary directory for keys"))
    }

    pub fn path(&self) -> &Path {
        self.0.path()
    }

    /// An RSA key in `<dir>/<name>.json`.
    pub fn rsa(&self, name: &str) -> Key {
        Key::rsa(self.path().join(format!("{name}.json")))
    }

    /// An EC P-256 key in `<dir>/<name>.json`.
    pub fn ec(&self, name: &str) -> Key {
        Key::ec(self.path().join(format!("{name}.json")))
    }
}

impl Default for KeyDir {
    fn default() -> Self {
        Self::new()
    }
}

// ---- the provider process ----

/// How the provider runs, besides its keys.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Seconds added to the provider's clock: `-3600` issues tokens as if it were an hour ago
    /// (so with the default TTL they are already expired).
    pub clock_offset_secs: i64,
    /// Access token lifetime in seconds; the provider's default is 600.
    pub ttl_secs: Option<u64>,
    /// The `iss` to claim instead of the provider's own URL (an impostor of another issuer).
    pub issuer: Option<String>,
}

impl Options {
    /// The provider's clock is `secs` seconds off (negative: in the past).
    pub fn clock_offset(secs: i64) -> Options {
        Options {
            clock_offset_secs: secs,
            ..Options::default()
        }
    }

    /// Tokens live `secs` seconds.
    pub fn ttl(secs: u64) -> Options {
        Options {
            ttl_secs: Some(secs),
            ..Options::default()
        }
    }
}

/// A running `tests/oidc/provider.mjs`. Killed on drop.
pub struct Provider {
    child: Option<Child>,
    port: u16,
    issuer: String,
    keys: Vec<Key>,
    options: Options,
    /// Everything the process printed, one `stdout: ` / `stderr: ` line each.
    log: Arc<Mutex<String>>,
    token_endpoint: OnceLock<String>,
}

/// Why a launch failed; a port taken meanwhile is worth another try on another port.
enum LaunchError {
    PortTaken(String),
    Other(String),
}

impl Provider {
    /// Starts a provider with `keys` (the first key of each algorithm signs; all are published)
    /// on a free loopback port, and waits until it listens. Panics with the provider's output
    /// when it does not come up within [`START_TIMEOUT`].
    pub fn start(keys: &[Key], options: Options) -> Provider {
        Self::try_start(keys, options).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Provider::start`], with the failure as an error.
    pub fn try_start(keys: &[Key], options: Options) -> Result<Provider, String> {
        check_installed()?;
        let mut last = String::new();
        // The port is free when we look but could be taken before node binds it: try again.
        for _ in 0..3 {
            let port = super::process::free_port();
            let mut provider = Provider {
                child: None,
                port,
                issuer: options
                    .issuer
                    .clone()
                    .unwrap_or_else(|| format!("http://127.0.0.1:{port}")),
                keys: keys.to_vec(),
                options: options.clone(),
                log: Arc::default(),
                token_endpoint: OnceLock::new(),
            };
            match provider.launch() {
                Ok(()) => return Ok(provider),
                Err(LaunchError::PortTaken(e)) => last = e,
                Err(LaunchError::Other(e)) => return Err(e),
            }
        }
        Err(last)
    }

    /// `http://127.0.0.1:PORT`, the `iss` of its tokens.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The keys it was (last) started with, in order.
    pub fn keys(&self) -> &[Key] {
        &self.keys
    }

    /// Everything the provider process printed so far.
    pub fn output(&self) -> String {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Whether the process is running (false after [`Provider::stop`] or if it died).
    /// Freezes (`SIGSTOP`) or thaws (`SIGCONT`) the provider: a frozen one accepts
    /// connections (the kernel does) and answers nothing, like a hung identity provider.
    pub fn freeze(&self, frozen: bool) {
        let pid = self
            .child
            .as_ref()
            .expect("provider running")
            .id()
            .to_string();
        let signal = if frozen { "-STOP" } else { "-CONT" };
        let status = Command::new("kill").args([signal, &pid]).status();
        assert!(status.is_ok_and(|s| s.success()), "kill {signal} {pid}");
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Sends SIGTERM and waits for the exit (killing it after 10 s). Returns the exit status,
    /// or None when it was not running.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let pid = child.id().to_string();
        let signalled = Command::new("kill")
            .args(["-TERM", &pid])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if signalled && let Some(status) = wait_timeout(&mut child, STOP_TIMEOUT) {
            return Some(status);
        }
        let _ = child.kill();
        child.wait().ok()
    }

    /// Stops the provider and starts it again with `keys` on the same port (so with the same
    /// issuer and JWKS URL) and the same options. Keys given before are not published any more
    /// unless they are in `keys` again.
    pub fn restart(&mut self, keys: &[Key]) {
        let options = self.options.clone();
        self.restart_with(keys, options);
    }

    /// [`Provider::restart`] with other options too.
    pub fn restart_with(&mut self, keys: &[Key], options: Options) {
        self.stop();
        self.keys = keys.to_vec();
        self.options = options;
        if let Err(LaunchError::PortTaken(e) | LaunchError::Other(e)) = self.launch() {
            panic!("restart: {e}");
        }
    }

    /// Spawns node and waits for `READY <issuer>`.
    fn launch(&mut self) -> Result<(), LaunchError> {
        let script = oidc_dir().join("provider.mjs");
        let keys: Vec<String> = self.keys.iter().map(Key::spec).collect();
        let mut command = Command::new("node");
        command
            .arg(&script)
            .args(["--port", &self.port.to_string()])
            .args(["--issuer", &self.issuer])
            .args(["--keys", &keys.join(",")])
            .args([
                "--clock-offset",
                &self.options.clock_offset_secs.to_string(),
            ]);
        if let Some(ttl) = self.options.ttl_secs {
            command.args(["--ttl", &ttl.to_string()]);
        }
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().map_err(|e| {
            LaunchError::Other(if e.kind() == std::io::ErrorKind::NotFound {
                "`node` was not found on PATH: the OIDC tests need Node.js \
                 (./scripts/test.sh checks for it)"
                    .to_string()
            } else {
                format!("cannot run node {}: {e}", script.display())
            })
        })?;

        let log = Arc::new(Mutex::new(String::new()));
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        let (lines, ready) = mpsc::channel();
        let out_thread = copy_lines(stdout, "stdout", log.clone(), Some(lines));
        let err_thread = copy_lines(stderr, "stderr", log.clone(), None);

        let expected = format!("READY {}", self.issuer);
        let started = Instant::now();
        let outcome = loop {
            let left = START_TIMEOUT.saturating_sub(started.elapsed());
            match ready.recv_timeout(left) {
                Ok(line) if line == expected => break Ok(()),
                Ok(_) => continue,
                Err(RecvTimeoutError::Timeout) => {
                    break Err(format!(
                        "the OIDC provider did not print `{expected}` within {}s",
                        START_TIMEOUT.as_secs()
                    ));
                }
                Err(RecvTimeoutError::Disconnected) => {
                    break Err(format!(
                        "the OIDC provider exited before printing `{expected}`"
                    ));
                }
            }
        };

        match outcome {
            Ok(()) => {
                self.child = Some(child);
                self.log = log;
                Ok(())
            }
            Err(why) => {
                let _ = child.kill();
                let status = child.wait();
                let _ = out_thread.join();
                let _ = err_thread.join();
                let output = log.lock().map(|l| l.clone()).unwrap_or_default();
                let message = format!(
                    "{why} (exit: {status:?}; port {}; keys {keys:?})\n--- its output ---\n{output}",
                    self.port
                );
                if output.contains("EADDRINUSE") {
                    Err(LaunchError::PortTaken(message))
                } else {
                    Err(LaunchError::Other(message))
                }
            }
        }
    }

    // ---- endpoints ----

    /// `GET /.well-known/openid-configuration`.
    pub fn discovery(&self) -> Value {
        let url = format!("{}/.well-known/openid-configuration", self.base_url());
        self.get_json(&url)
    }

    /// Where the provider listens (its issuer unless it claims another one).
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The `jwks_uri` from discovery.
    pub fn jwks_uri(&self) -> String {
        self.discovery()["jwks_uri"]
            .as_str()
            .expect("discovery has a jwks_uri")
            .to_string()
    }

    /// The published JWKS (public keys only).
    pub fn jwks(&self) -> Value {
        self.get_json(&self.jwks_uri().replacen(&self.issuer, &self.base_url(), 1))
    }

    /// The `kid`s in the published JWKS, in order.
    pub fn jwks_kids(&self) -> Vec<String> {
        self.jwks()["keys"]
            .as_array()
            .expect("the JWKS has keys")
            .iter()
            .filter_map(|k| k["kid"].as_str().map(str::to_string))
            .collect()
    }

    /// The `token_endpoint` from discovery.
    pub fn token_endpoint(&self) -> String {
        self.token_endpoint
            .get_or_init(|| {
                // Endpoints are advertised under the issuer URL, which an impostor does not
                // serve: ask the provider itself.
                self.discovery()["token_endpoint"]
                    .as_str()
                    .expect("discovery has a token_endpoint")
                    .replacen(&self.issuer, &self.base_url(), 1)
            })
            .clone()
    }

    /// An access token (a signed JWT) from the client_credentials grant for `client` with
    /// `scope` (space-separated) on `resource` (empty: the default, [`API_RESOURCE`]). Panics
    /// when the provider refuses.
    pub fn token(&self, client: &str, scope: &str, resource: &str) -> String {
        let (status, body) = self.token_response(client, CLIENT_SECRET, scope, resource);
        match body["access_token"].as_str() {
            Some(token) if status == 200 => token.to_string(),
            _ => panic!(
                "token request for {client:?} (scope {scope:?}, resource {resource:?}) got \
                 {status}: {body}\n--- provider output ---\n{}",
                self.output()
            ),
        }
    }

    /// The token endpoint's raw answer (status and JSON body) to a client_credentials request,
    /// for requests that are meant to fail. Empty `scope` or `resource` is left out.
    pub fn token_response(
        &self,
        client: &str,
        secret: &str,
        scope: &str,
        resource: &str,
    ) -> (u16, Value) {
        let mut form = vec![
            ("grant_type", "client_credentials"),
            ("client_id", client),
            ("client_secret", secret),
        ];
        if !scope.is_empty() {
            form.push(("scope", scope));
        }
        if !resource.is_empty() {
            form.push(("resource", resource));
        }
        let body = form
            .iter()
            .map(|(k, v)| format!("{}={}", form_encode(k), form_encode(v)))
            .collect::<Vec<_>>()
            .join("&");
        let url = self.token_endpoint();
        let response = http_request("POST", &url, Some(&body)).unwrap_or_else(|e| {
            panic!(
                "POST {url}: {e}\n--- provider output ---\n{}",
                self.output()
            )
        });
        let json = serde_json::from_str(&response.body).unwrap_or_else(|e| {
            panic!(
                "POST {url}: {} with a body that is not JSON ({e}): {:?}",
                response.status, response.body
            )
        });
        (response.status, json)
    }

    fn get_json(&self, url: &str) -> Value {
        let response = http_request("GET", url, None).unwrap_or_else(|e| {
            panic!("GET {url}: {e}\n--- provider output ---\n{}", self.output())
        });
        assert_eq!(
            response.status,
            200,
            "GET {url}: {}\n--- provider output ---\n{}",
            response.body,
            self.output()
        );
        serde_json::from_str(&response.body)
            .unwrap_or_else(|e| panic!("GET {url}: not JSON ({e}): {:?}", response.body))
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn check_installed() -> Result<(), String> {
    let dir = oidc_dir();
    if !dir
        .join("node_modules/oidc-provider/package.json")
        .is_file()
    {
        return Err(format!(
            "{} is missing: run ./scripts/test.sh, which installs it \
             (or `npm ci --prefix tests/oidc`)",
            dir.join("node_modules").display()
        ));
    }
    Ok(())
}

/// Copies `stream` line by line into `log` (and to `lines` while someone listens) until EOF.
fn copy_lines(
    stream: impl Read + Send + 'static,
    name: &'static str,
    log: Arc<Mutex<String>>,
    lines: Option<mpsc::Sender<String>>,
) -> JoinHandle<()> {
    thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if let Ok(mut log) = log.lock() {
                log.push_str(name);
                log.push_str(": ");
                log.push_str(&line);
                log.push('\n');
            }
            if let Some(lines) = &lines {
                let _ = lines.send(line);
            }
        }
    })
}

/// Waits up to `timeout` for `child` to exit.
fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
            _ => return None,
        }
    }
}

// ---- JWT helpers ----

/// Seconds since the Unix epoch, by this machine's clock.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs() as i64
}

fn jwt_part(token: &str, index: usize, what: &str) -> Value {
    let part = token
        .split('.')
        .nth(index)
        .unwrap_or_else(|| panic!("the token has no {what}: {token:?}"));
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .unwrap_or_else(|e| panic!("the token's {what} is not base64url ({e}): {token:?}"));
    serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("the token's {what} is not JSON ({e}): {token:?}"))
}

/// The decoded JOSE header of a JWT (`alg`, `typ`, `kid`), unverified.
pub fn jwt_header(token: &str) -> Value {
    jwt_part(token, 0, "header")
}

/// The decoded claims of a JWT, unverified.
pub fn jwt_claims(token: &str) -> Value {
    jwt_part(token, 1, "claims")
}

// ---- a minimal HTTP/1.1 client ----

/// A response's status and body.
pub struct HttpResponse {
    pub status: u16,
    pub body: String,
}

/// `application/x-www-form-urlencoded` for one name or value.
fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// One blocking request to an `http://host:port/path` URL, with `Connection: close`; a body is
/// sent as a form.
pub fn http_request(method: &str, url: &str, form: Option<&str>) -> Result<HttpResponse, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("not an http:// URL: {url}"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr = authority
        .to_socket_addrs()
        .map_err(|e| format!("resolve {authority}: {e}"))?
        .next()
        .ok_or_else(|| format!("no address for {authority}"))?;
    let mut stream = TcpStream::connect_timeout(&addr, HTTP_TIMEOUT)
        .map_err(|e| format!("connect to {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(HTTP_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(HTTP_TIMEOUT)))
        .map_err(|e| format!("socket timeouts: {e}"))?;

    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {authority}\r\nAccept: application/json\r\n\
         Connection: close\r\n"
    );
    if let Some(form) = form {
        request.push_str(&format!(
            "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{form}",
            form.len()
        ));
    } else {
        request.push_str("\r\n");
    }
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("send: {e}"))?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .map_err(|e| format!("read: {e}"))?;
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> Result<HttpResponse, String> {
    let head_end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("the response has no end of headers")?;
    let head = std::str::from_utf8(&raw[..head_end]).map_err(|_| "headers are not UTF-8")?;
    let mut body = &raw[head_end + 4..];
    let mut head_lines = head.split("\r\n");
    let status_line = head_lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let mut chunked = false;
    for line in head_lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.eq_ignore_ascii_case("chunked");
        } else if name.eq_ignore_ascii_case("content-length") {
            let length: usize = value
                .parse()
                .map_err(|_| format!("bad content-length {value:?}"))?;
            body = body
                .get(..length)
                .ok_or("the body is shorter than its length")?;
        }
    }
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_vec()
    };
    let body = String::from_utf8(body).map_err(|_| "the body is not UTF-8")?;
    Ok(HttpResponse { status, body })
}

/// Decodes a `Transfer-Encoding: chunked` body.
fn dechunk(mut raw: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let line_end = raw
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("a chunk has no size line")?;
        let size_line = std::str::from_utf8(&raw[..line_end]).map_err(|_| "bad chunk size")?;
        let size_hex = size_line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_hex, 16)
            .map_err(|_| format!("bad chunk size {size_hex:?}"))?;
        raw = &raw[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        out.extend_from_slice(raw.get(..size).ok_or("a chunk is cut short")?);
        raw = raw.get(size + 2..).ok_or("a chunk has no end")?;
    }
}
