//! nmp-authz's Envoy dynamic module under test: the library built by cargo (as the suite's own
//! build does), the companion module configs (envoy/*-module.yaml) rendered for loopback with
//! an nmp-authz configuration of the test's, and Envoy started with the library on its search
//! path.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use super::gateway::{Envoy, Idp, http_authority, remove_block, substitute, token};

/// The production module config (jwt_authn with claim_to_headers, then the module).
pub const MODULE: &str = "envoy/envoy-module.yaml";
/// The quickstart module config (the module verifies unsigned tokens itself).
pub const QUICKSTART_MODULE: &str = "envoy/quickstart-module.yaml";

/// Marks the nmp-authz configuration inside a module config's filter_config (YAML comments to
/// nmp-authz, so the markers may stay in the configuration).
const CONFIG_BEGIN: &str = "# nmp-authz-config: begin";
const CONFIG_END: &str = "# nmp-authz-config: end";

/// The directory holding `libnmp_authz_envoy.so`, built for this test profile. `cargo test
/// --workspace` has built it already (it is a workspace member); a test run on its own builds
/// it here, once per test process. Cargo names the file it built (`--message-format json`), so
/// no target directory layout is assumed.
pub fn library_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| build_library(&[]))
}

/// The directory holding a `libnmp_authz_envoy.so` built with the `test-panic` feature (a
/// header that makes the request hook panic), in a target directory of its own
/// (`target/module-test-panic`): the library the other tests load is never replaced by it.
/// Without debuginfo, which it does not need, to keep its build short.
pub fn test_panic_library_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/module-test-panic");
        let target = target.to_str().expect("a UTF-8 path");
        build_library(&[
            ("--features", "test-panic"),
            ("--target-dir", target),
            ("--config", "profile.dev.debug=false"),
            ("--config", "profile.release.debug=false"),
        ])
    })
}

/// Builds the module's library with `args` (option, value) and returns its directory. Cargo
/// names the file it built (`--message-format json`), so no target directory layout is
/// assumed.
fn build_library(args: &[(&str, &str)]) -> PathBuf {
    {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut command = Command::new(cargo);
        command.current_dir(env!("CARGO_MANIFEST_DIR")).args([
            "build",
            "--locked",
            "-p",
            "nmp-authz-envoy-module",
            "--lib",
            "--message-format",
            "json",
        ]);
        for (option, value) in args {
            command.args([option, value]);
        }
        if !cfg!(debug_assertions) {
            command.arg("--release");
        }
        let output = command
            .output()
            .unwrap_or_else(|e| panic!("run cargo build for the module: {e}"));
        assert!(
            output.status.success(),
            "cargo build -p nmp-authz-envoy-module failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let library = String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter(|m| {
                m["reason"] == "compiler-artifact" && m["target"]["name"] == "nmp_authz_envoy"
            })
            .flat_map(|m| {
                m["filenames"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|f| f.as_str().map(PathBuf::from))
            })
            .find(|f| f.extension().is_some_and(|e| e == "so"))
            .expect("cargo built no libnmp_authz_envoy.so");
        library.parent().expect("a directory").to_path_buf()
    }
}

/// The environment Envoy needs to find the module.
pub fn module_env() -> [(&'static str, &'static OsStr); 1] {
    [(
        "ENVOY_DYNAMIC_MODULES_SEARCH_PATH",
        library_dir().as_os_str(),
    )]
}

/// Envoy running `config` with the module on its search path.
pub fn start_envoy(config: &str) -> Envoy {
    Envoy::start_with_env(config, &module_env())
}

/// Envoy running `config` with the module in `library` on its search path, `env` set and
/// the module's log lines at info level (Envoy's own at warning), for its decision records.
pub fn start_envoy_logging(config: &str, library: &Path, env: &[(&str, &OsStr)]) -> Envoy {
    let mut all = vec![("ENVOY_DYNAMIC_MODULES_SEARCH_PATH", library.as_os_str())];
    all.extend_from_slice(env);
    Envoy::start_with_env_args(
        config,
        &all,
        &["--component-log-level", "dynamic_modules:info"],
    )
}

/// A module config rendered for loopback: the listener on 127.0.0.1, ports 0, the API at
/// `api`, the identity provider (production config only), and `authz_config` (nmp-authz's
/// YAML) as the module's configuration.
pub fn render(
    template: &str,
    api: std::net::SocketAddr,
    idp: Option<&Idp>,
    authz_config: &str,
) -> String {
    let mut pairs = vec![
        (token::LISTEN_ADDRESS, "address: 127.0.0.1".to_string()),
        (token::LISTEN_PORT, "port_value: 0".to_string()),
        (token::ADMIN_PORT, "port_value: 0".to_string()),
        (token::API_HOST, format!("address: {}", api.ip())),
        (token::API_PORT, format!("port_value: {}", api.port())),
    ];
    let mut text = template.to_string();
    if let Some(idp) = idp {
        let (host, port) = http_authority(&idp.jwks_uri);
        pairs.extend([
            (token::IDP_ISSUER, format!("issuer: {}", idp.issuer)),
            (token::IDP_JWKS_URI, format!("uri: {}", idp.jwks_uri)),
            (token::IDP_HOST, format!("address: {host}")),
            (token::IDP_PORT, format!("port_value: {port}")),
            (
                token::AUDIENCE,
                format!("audiences: [\"{}\"]", idp.audience),
            ),
        ]);
        text = remove_block(&text, token::IDP_TLS_BEGIN, token::IDP_TLS_END)
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let text = substitute(&text, &pairs).unwrap_or_else(|e| panic!("{e}"));
    with_authz_config(&text, authz_config)
}

/// `config` with the nmp-authz configuration between the markers replaced by `authz_config`,
/// indented as the markers are.
pub fn with_authz_config(config: &str, authz_config: &str) -> String {
    let begin = config
        .lines()
        .find(|l| l.trim() == CONFIG_BEGIN)
        .unwrap_or_else(|| panic!("no `{CONFIG_BEGIN}` line"));
    let indent = &begin[..begin.len() - begin.trim_start().len()];
    let mut block = format!("{indent}{CONFIG_BEGIN}\n");
    for line in authz_config.lines() {
        block.push_str(&format!("{indent}{line}\n"));
    }
    let removed = remove_block(config, CONFIG_BEGIN, CONFIG_END).unwrap_or_else(|e| panic!("{e}"));
    // remove_block left the text around the block: put the new block where the old one was.
    let at = config.find(begin).expect("marker line");
    let mut out = String::with_capacity(config.len() + block.len());
    out.push_str(&removed[..at]);
    out.push_str(&block);
    out.push_str(&format!("{indent}{CONFIG_END}\n"));
    out.push_str(&removed[at..]);
    out
}
