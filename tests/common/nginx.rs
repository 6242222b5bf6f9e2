//! nginx (the Debian package's binary) running `deploy/nginx/nginx.conf` rendered for loopback:
//! its listener on a free loopback port, nmp-authz and the upstream at the given addresses, its
//! pid and error log in a temporary directory. One process (`master_process off`), so killing
//! it on drop leaves no worker behind. Readiness is learnt by polling the port.
//!
//! ```ignore
//! let nginx = Nginx::start(&render_nginx(&template(NGINX), authz.http, upstream.addr(), port));
//! ```

use std::fs::{self, File};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::gateway::{DEADLINE, substitute};

/// The committed config, relative to the crate.
pub const NGINX: &str = "deploy/nginx/nginx.conf";

/// Environment-specific text in deploy/nginx/nginx.conf ([`render_nginx`] replaces each).
pub mod token {
    pub const LISTEN: &str = "listen 8080;";
    pub const AUTHZ: &str = "server nmp-authz:8000;";
    pub const API: &str = "server nmp-api:8081;";
    pub const PID: &str = "pid /run/nginx.pid;";
    pub const ERROR_LOG: &str = "error_log /var/log/nginx/error.log warn;";
}

/// The nginx binary: `nginx` on PATH, else /usr/sbin/nginx (Debian's). Panics saying how to
/// install it (./scripts/test.sh does).
pub fn nginx_binary() -> PathBuf {
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("nginx"))
            .find(|candidate| candidate.is_file())
    });
    let debian = PathBuf::from("/usr/sbin/nginx");
    on_path
        .or_else(|| debian.is_file().then_some(debian))
        .unwrap_or_else(|| {
            panic!("`nginx` is not installed: run ./scripts/test.sh (apt-get install -y nginx)")
        })
}

/// `template` for loopback: listening on 127.0.0.1:`port`, nmp-authz's HTTP port at `authz`,
/// the API at `api`, pid and error log under `dir`.
pub fn render_nginx(
    template: &str,
    authz: SocketAddr,
    api: SocketAddr,
    port: u16,
    dir: &std::path::Path,
) -> String {
    let pairs = [
        (token::LISTEN, format!("listen 127.0.0.1:{port};")),
        (token::AUTHZ, format!("server {authz};")),
        (token::API, format!("server {api};")),
        (
            token::PID,
            format!("pid {};", dir.join("nginx.pid").display()),
        ),
        (
            token::ERROR_LOG,
            format!("error_log {} warn;", dir.join("error.log").display()),
        ),
    ];
    substitute(template, &pairs).unwrap_or_else(|e| panic!("{e}"))
}

/// `nginx -t` on `config` (rendered with [`render_nginx`] into `dir`): Ok, or Err with nginx's
/// output.
pub fn nginx_test(config: &str, dir: &std::path::Path) -> Result<(), String> {
    let path = dir.join("nginx.conf");
    fs::write(&path, config).expect("write the nginx config");
    let output = Command::new(nginx_binary())
        .arg("-t")
        .arg("-p")
        .arg(dir)
        .arg("-e")
        .arg(dir.join("error.log"))
        .arg("-c")
        .arg(&path)
        .output()
        .unwrap_or_else(|e| panic!("run nginx: {e}"));
    if output.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

/// A running nginx. Killed on drop.
pub struct Nginx {
    child: Child,
    dir: PathBuf,
    addr: SocketAddr,
}

impl Nginx {
    /// Writes `config` (rendered for `port` and `dir`) and starts nginx in the foreground;
    /// returns once `127.0.0.1:port` accepts connections (polled, bounded by [`DEADLINE`]).
    pub fn start(config: &str, port: u16, dir: &std::path::Path) -> Nginx {
        let path = dir.join("nginx.conf");
        fs::write(&path, config).expect("write the nginx config");
        let log = File::create(dir.join("nginx.out")).expect("create nginx.out");
        let child = Command::new(nginx_binary())
            .arg("-p")
            .arg(dir)
            .arg("-e")
            .arg(dir.join("error.log"))
            .arg("-c")
            .arg(&path)
            .args(["-g", "daemon off; master_process off;"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start nginx: {e}"));
        let mut nginx = Nginx {
            child,
            dir: dir.to_path_buf(),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        };
        let deadline = Instant::now() + DEADLINE;
        loop {
            if TcpStream::connect_timeout(&nginx.addr, Duration::from_secs(1)).is_ok() {
                return nginx;
            }
            if let Ok(Some(status)) = nginx.child.try_wait() {
                panic!("nginx exited ({status}) before listening:\n{}", nginx.log());
            }
            if Instant::now() > deadline {
                panic!("nginx: not listening within {DEADLINE:?}:\n{}", nginx.log());
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// What nginx printed and logged.
    pub fn log(&self) -> String {
        let read = |name: &str| fs::read_to_string(self.dir.join(name)).unwrap_or_default();
        format!("{}{}", read("nginx.out"), read("error.log"))
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
