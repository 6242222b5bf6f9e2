//! The real NeMo Platform (PyPI `nemo-platform==0.3.0`, installed into `.venv-nmp` by
//! `./scripts/test.sh`): its Python, the files of its released package, and the harness scripts
//! under `tests/nmp/` that run NMP's own code on inputs a test gives them.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The interpreter of `.venv-nmp`; panics saying how to install it when it is missing.
pub fn python() -> PathBuf {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv-nmp/bin/python");
    assert!(
        python.is_file(),
        "{} is missing: run ./scripts/test.sh, which installs NMP 0.3.0 from \
         tests/nmp/requirements.txt into .venv-nmp",
        python.display()
    );
    python
}

/// The directory of NMP's `nmp` package inside `.venv-nmp` (site-packages/nmp).
pub fn package_dir() -> PathBuf {
    let lib = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv-nmp/lib");
    std::fs::read_dir(&lib)
        .unwrap_or_else(|e| panic!("{}: {e} (run ./scripts/test.sh)", lib.display()))
        .filter_map(Result::ok)
        .map(|entry| entry.path().join("site-packages/nmp"))
        .find(|dir| dir.is_dir())
        .unwrap_or_else(|| panic!("no site-packages/nmp under {}", lib.display()))
}

/// NMP's development-commit catalog the project leads provide (`../shared/nmp/static-authz.yaml`,
/// never copied into the repository), or `None` after a notice when it is missing outside CI
/// (with `CI=true` a missing file fails the test).
pub fn shared_catalog() -> Option<PathBuf> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/nmp/static-authz.yaml");
    if path.is_file() {
        return Some(path);
    }
    assert_ne!(
        std::env::var("CI").as_deref(),
        Ok("true"),
        "{} is required when CI=true",
        path.display()
    );
    eprintln!("SKIPPED: {} not found", path.display());
    None
}

/// NMP 0.3.0's released endpoint catalog (`nmp/core/auth/assets/static-authz.yaml`).
pub fn released_catalog() -> PathBuf {
    let path = package_dir().join("core/auth/assets/static-authz.yaml");
    assert!(path.is_file(), "{} is missing", path.display());
    path
}

/// A harness script under `tests/nmp/`.
pub fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/nmp")
        .join(name)
}

/// Runs `tests/nmp/<name>` with NMP's Python, `input` on its stdin, and returns its stdout
/// parsed as JSON. Panics with its stderr when it fails.
pub fn run_json(name: &str, args: &[&str], input: &serde_json::Value) -> serde_json::Value {
    run_json_with_env(name, args, input, &[])
}

/// [`run_json`] with environment variables set for the script.
pub fn run_json_with_env(
    name: &str,
    args: &[&str],
    input: &serde_json::Value,
    env: &[(&str, &str)],
) -> serde_json::Value {
    let mut child = Command::new(python())
        .arg(script(name))
        .args(args)
        .envs(env.iter().copied())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start {name}: {e}"));
    let body = serde_json::to_vec(input).expect("input serializes");
    let mut stdin = child.stdin.take().expect("stdin is piped");
    // Written from a thread: a large input must not deadlock against a full stdout pipe.
    let writer = std::thread::spawn(move || stdin.write_all(&body));
    let out = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("wait for {name}: {e}"));
    writer
        .join()
        .expect("writer thread")
        .unwrap_or_else(|e| panic!("write to {name}: {e}"));
    assert!(
        out.status.success(),
        "{name} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{name} printed no JSON ({e}):\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// `tests/nmp/service_app.py`: a FastAPI app behind NMP's own `AuthorizationMiddleware`, with
/// the `auth:` config given. Killed on drop.
pub struct ServiceApp {
    child: std::process::Child,
    _dir: tempfile::TempDir,
    pub addr: std::net::SocketAddr,
}

impl ServiceApp {
    pub fn start(auth_config_yaml: &str) -> ServiceApp {
        use std::io::BufRead;
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("config.yaml");
        std::fs::write(&config, auth_config_yaml).expect("write the app's config");
        let mut child = Command::new(python())
            .arg(script("service_app.py"))
            .env("NMP_CONFIG_FILE_PATH", &config)
            .env("NMP_DATA_DIR", dir.path().join("data"))
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env_remove("NMP_AUTH_POLICY_DECISION_POINT_BASE_URL")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.path().join("app.log")).expect("app log"))
            .spawn()
            .expect("start service_app.py");
        let stdout = child.stdout.take().expect("stdout is piped");
        // The first line comes once the socket accepts (bounded by the child exiting).
        let mut line = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read service_app.py's port");
        let port: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| {
            let log = std::fs::read_to_string(dir.path().join("app.log")).unwrap_or_default();
            panic!("service_app.py said {line:?} ({e}):\n{log}")
        });
        let port = port["port"].as_u64().expect("a port") as u16;
        ServiceApp {
            child,
            _dir: dir,
            addr: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }
}

impl ServiceApp {
    /// What the app logged (NMP's middleware logs why it refused).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("app.log")).unwrap_or_default()
    }
}

impl Drop for ServiceApp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An unsigned (`alg: none`) token made by NMP's own helper (`generate_unsigned_jwt`, what
/// `nmp auth login --unsigned-token` uses) for `claims` (`principal_id`, `email`, `groups`,
/// `scopes`, `extra_claims`).
pub fn unsigned_token(claims: &serde_json::Value) -> String {
    run_json("unsigned_token.py", &[], claims)["token"]
        .as_str()
        .expect("a token")
        .to_string()
}

/// NMP's own services, run as NMP runs them locally (`nmp services run`), with auth on and a
/// PDP of the test's choosing. SQLite under a temporary `NMP_DATA_DIR`. Killed on drop.
pub struct Platform {
    child: std::process::Child,
    dir: tempfile::TempDir,
    pub addr: std::net::SocketAddr,
}

impl Platform {
    /// Starts `services` (e.g. `auth,entities,models`) on `port`, NMP's `auth:` config
    /// `auth_yaml`, PDP at `pdp_base_url`, and waits (bounded) until `/health/ready` is 200.
    pub fn start(services: &str, port: u16, auth_yaml: &str, pdp_base_url: &str) -> Platform {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("platform.yaml");
        std::fs::write(&config, auth_yaml).expect("write NMP's config");
        let log = std::fs::File::create(dir.path().join("platform.log")).expect("log file");
        let nmp = python().with_file_name("nmp");
        let child = Command::new(nmp)
            .args(["services", "run", "--config"])
            .arg(&config)
            .args(["--services", services, "--host", "127.0.0.1", "--port"])
            .arg(port.to_string())
            .envs(Self::env(&dir, &config))
            // `nmp services run` points its services' PDP at itself unless this is set (the
            // config file's `auth.policy_decision_point_base_url` alone is overridden).
            .env("NMP_AUTH_POLICY_DECISION_POINT_BASE_URL", pdp_base_url)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .expect("start nmp services run");
        let platform = Platform {
            child,
            dir,
            addr: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        };
        let ready = super::gateway::poll_until(std::time::Duration::from_secs(120), || {
            match super::gateway::try_request(platform.addr, "GET", "/health/ready", &[]) {
                Ok(r) if r.status == 200 => Ok(()),
                other => Err(format!("{other:?}")),
            }
        });
        if let Err(e) = ready {
            panic!("NMP not ready: {e}\n{}", platform.log());
        }
        platform
    }

    fn env(dir: &tempfile::TempDir, config: &Path) -> Vec<(String, String)> {
        vec![
            (
                "NMP_DATA_DIR".into(),
                dir.path().join("data").display().to_string(),
            ),
            ("NMP_CONFIG_FILE_PATH".into(), config.display().to_string()),
            ("HOME".into(), dir.path().display().to_string()),
            ("PYTHONDONTWRITEBYTECODE".into(), "1".into()),
        ]
    }

    /// Seeds NMP's bootstrap bindings (`*` and the admin) as NMP's own seeding task does, and
    /// returns what it printed. NMP's sample-model and guardrail seeds need parts not installed
    /// here and fail; the test waits for the bindings' effect instead of trusting the output.
    pub fn seed(&self) -> String {
        let config = self.dir.path().join("platform.yaml");
        let out = Command::new(python())
            .args(["-m", "nmp.platform_seed"])
            .envs(Self::env(&self.dir, &config))
            .env("NMP_BASE_URL", format!("http://{}", self.addr))
            .stdin(Stdio::null())
            .output()
            .expect("run nmp.platform_seed");
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("platform.log")).unwrap_or_default()
    }
}

impl Drop for Platform {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// NMP's CLI (`nmp`), logged in to `base_url` as the unsigned-token user `email`
/// (`nmp auth login --unsigned-token`), with a home directory of its own.
pub struct Cli {
    home: tempfile::TempDir,
}

/// What a CLI command did.
#[derive(Debug)]
pub struct CliRun {
    pub success: bool,
    pub output: String,
    pub seconds: f64,
}

impl Cli {
    pub fn login(base_url: &str, email: &str) -> Cli {
        let cli = Cli {
            home: tempfile::tempdir().expect("temp home"),
        };
        let login = cli.run(&[
            "auth",
            "login",
            "--unsigned-token",
            "--email",
            email,
            "--base-url",
            base_url,
        ]);
        assert!(login.success, "nmp auth login: {}", login.output);
        cli
    }

    pub fn run(&self, args: &[&str]) -> CliRun {
        let started = std::time::Instant::now();
        let out = Command::new(python().with_file_name("nmp"))
            .args(args)
            .env("HOME", self.home.path())
            .env("NO_COLOR", "1")
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(Stdio::null())
            .output()
            .expect("run nmp");
        CliRun {
            success: out.status.success(),
            output: String::from_utf8_lossy(&out.stdout).to_string()
                + &String::from_utf8_lossy(&out.stderr),
            seconds: started.elapsed().as_secs_f64(),
        }
    }

    /// The token `nmp auth login` saved (for raw requests beside the CLI's).
    pub fn token(&self) -> String {
        let config = std::fs::read_to_string(self.home.path().join(".config/nmp/config.yaml"))
            .expect("the CLI's config");
        config
            .lines()
            .find_map(|l| l.trim().strip_prefix("token: "))
            .expect("a token in the CLI's config")
            .trim()
            .to_string()
    }
}
