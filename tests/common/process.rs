//! The `nmp-authz` binary as a process: started with `serve`, its addresses learned from the
//! `listening` log line (no fixed waits), stopped with SIGTERM; plus a plain HTTP/1.1 GET.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

/// Upper bound for a server to start or stop; generous for a loaded CI machine.
pub const PROCESS_DEADLINE: Duration = Duration::from_secs(30);

/// The binary with a clean environment for what it reads: no inherited `NMP_AUTH_*` overrides,
/// plain-text logs at `info`, no colours.
pub fn nmp_authz() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_nmp-authz"));
    for (key, _) in std::env::vars_os() {
        if key.to_str().is_some_and(|k| k.starts_with("NMP_AUTH")) {
            cmd.env_remove(key);
        }
    }
    cmd.env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null());
    cmd
}

/// A tool the test command installs into `.venv` (or found on PATH); panics saying how to get
/// it when it is in neither.
pub fn venv_tool(name: &str) -> std::path::PathBuf {
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    });
    let in_venv = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(".venv/bin")
        .join(name);
    on_path
        .or_else(|| in_venv.is_file().then_some(in_venv))
        .unwrap_or_else(|| {
            panic!(
                "`{name}` is not on PATH nor in .venv/bin: run ./scripts/test.sh, which installs \
                 it from tests/requirements.txt"
            )
        })
}

/// Open file descriptors of process `pid` (entries of /proc/PID/fd).
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/fd: {e}"))
        .count()
}

/// Resident set size of process `pid` in KiB (`VmRSS` in /proc/PID/status).
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status"))
}

/// Threads of process `pid` (`Threads` in /proc/PID/status).
pub fn thread_count(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|line| line.strip_prefix("Threads:"))
        .and_then(|rest| rest.trim().parse().ok())
        .unwrap_or_else(|| panic!("no Threads in /proc/{pid}/status"))
}

/// CPU time process `pid` has used, user and system (`utime` + `stime` in /proc/PID/stat).
pub fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/stat: {e}"));
    // Fields after the command name (which may hold spaces), from the third on.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: u64 = [11, 12]
        .iter()
        .map(|&i| fields.get(i).and_then(|f| f.parse::<u64>().ok()))
        .sum::<Option<u64>>()
        .unwrap_or_else(|| panic!("no utime/stime in /proc/{pid}/stat: {stat}"));
    // USER_HZ is 100 on Linux.
    Duration::from_millis(ticks * 10)
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `n` distinct loopback ports nothing listens on right now, for a process that must be told
/// its port before it starts (nginx, `nmp services run`, `demo.sh`). They are bound together,
/// then released: another process could take one in between, which on a test machine's
/// loopback does not happen in practice.
pub fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("a bound address").port())
        .collect()
}

/// One port of [`free_ports`].
pub fn free_port() -> u16 {
    free_ports(1)[0]
}

/// A finished command's status and output, for assertion messages.
pub fn describe(out: &std::process::Output) -> String {
    format!(
        "status: {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    )
}

/// Removes terminal colour sequences (`ESC [ ... letter`) from a log line.
pub fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// A running `serve`: its stderr lines arrive on a channel from a reader thread, so the pipe
/// never fills. Killed on drop if the test did not stop it.
pub struct Server {
    pub child: Child,
    lines: Receiver<String>,
    log: Vec<String>,
}

impl Server {
    pub fn start(args: &[&str]) -> Self {
        Self::start_with_env(args, &[])
    }

    /// `serve --config CONFIG` on ephemeral loopback ports (see [`Server::addresses`]).
    pub fn start_with_config(config: &std::path::Path) -> Self {
        Self::start(&[
            "--config",
            config.to_str().expect("a UTF-8 path"),
            "--grpc-addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
        ])
    }

    /// [`Server::start`] with extra environment variables.
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut child = nmp_authz()
            .arg("serve")
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn nmp-authz serve");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stderr);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let line = strip_ansi(String::from_utf8_lossy(&buf).trim_end());
                        if tx.send(line).is_err() {
                            break;
                        }
                    }
                }
            }
        });
        Self {
            child,
            lines,
            log: Vec::new(),
        }
    }

    pub fn output(&self) -> String {
        self.log.join("\n")
    }

    /// Waits (bounded) for the `listening grpc=ADDR http=ADDR` log line.
    pub fn addresses(&mut self) -> (SocketAddr, SocketAddr) {
        let deadline = Instant::now() + PROCESS_DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let found = parse_listening(&line);
                    self.log.push(line);
                    if let Some(addrs) = found {
                        return addrs;
                    }
                }
                Err(RecvTimeoutError::Timeout) => panic!(
                    "no `listening` log line within {PROCESS_DEADLINE:?}; stderr so far:\n{}",
                    self.output()
                ),
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.wait(PROCESS_DEADLINE);
                    panic!(
                        "server exited ({status:?}) before listening; stderr:\n{}",
                        self.output()
                    )
                }
            }
        }
    }

    /// Waits up to `limit` for the process to exit, collecting the rest of its stderr.
    pub fn wait(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            while let Ok(line) = self.lines.try_recv() {
                self.log.push(line);
            }
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                // Drain what the reader thread still holds.
                while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(2)) {
                    self.log.push(line);
                }
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            // Poll interval while the process shuts down, not a fixed wait.
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn terminate(&mut self) -> ExitStatus {
        let pid = self.child.id().to_string();
        let kill = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("run kill");
        assert!(kill.success(), "kill -TERM {pid} failed");
        match self.wait(PROCESS_DEADLINE) {
            Some(status) => status,
            None => panic!(
                "server did not exit within {PROCESS_DEADLINE:?} of SIGTERM; stderr:\n{}",
                self.output()
            ),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `... listening grpc=127.0.0.1:1234 http=127.0.0.1:5678` → both addresses.
pub fn parse_listening(line: &str) -> Option<(SocketAddr, SocketAddr)> {
    // JSON logs (`NMP_AUTHZ_LOG_FORMAT=json`): the addresses are fields of the record.
    if let Ok(record) = serde_json::from_str::<serde_json::Value>(line) {
        let fields = &record["fields"];
        if fields["message"] != "listening" {
            return None;
        }
        let addr = |name: &str| fields[name].as_str()?.parse::<SocketAddr>().ok();
        return Some((addr("grpc")?, addr("http")?));
    }
    if !line.contains("listening") {
        return None;
    }
    let field = |name: &str| {
        line.split_whitespace()
            .find_map(|token| token.strip_prefix(name))
            .and_then(|v| v.trim_matches('"').parse::<SocketAddr>().ok())
    };
    Some((field("grpc=")?, field("http=")?))
}

/// One HTTP/1.1 GET over a plain TCP stream: (status code, body).
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream =
        TcpStream::connect_timeout(&addr, Duration::from_secs(10)).expect("connect http");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
        .set_write_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .expect("write request");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).expect("read response");
    let response = text(&response);
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {response:?}"));
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}
