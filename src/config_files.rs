//! The configuration as the server reads it: the file given (or the embedded quickstart) and
//! the process environment. What the keys mean, their parsing and validation are the core's
//! ([`nmp_authz_core::config`]), shared with the in-Envoy module.

use std::path::Path;

use nmp_authz_core::config::{Config, ConfigError, env_overrides, parse, unknown_env_warnings};

/// The embedded quickstart configuration: what `serve` runs without `--config`. Development only:
/// it accepts unsigned tokens.
pub(crate) const QUICKSTART_YAML: &str = include_str!("quickstart.yaml");

/// Name used for the quickstart configuration in error messages.
pub(crate) const QUICKSTART_SOURCE: &str = "<embedded quickstart config>";

/// Load the configuration from `path` (or the embedded quickstart when `None`), apply the
/// `NMP_AUTH_*` overrides found in `env` and validate the result.
pub fn load(
    path: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Config, ConfigError> {
    match path {
        None => parse(QUICKSTART_YAML, QUICKSTART_SOURCE, env),
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
                path: path.to_owned(),
                reason: e.to_string(),
            })?;
            parse(&text, &path.display().to_string(), env)
        }
    }
}

/// [`load`] with the process environment. A non-UTF-8 `NMP_AUTH_*` value is an error.
pub fn load_from_process_env(path: Option<&Path>) -> Result<Config, ConfigError> {
    load(path, env_overrides(std::env::vars_os())?)
}

/// [`unknown_env_warnings`] for the process environment.
pub fn process_env_warnings() -> Vec<String> {
    let names: Vec<String> = std::env::vars_os()
        .map(|(name, _)| name.to_string_lossy().into_owned())
        .collect();
    unknown_env_warnings(names.iter().map(String::as_str))
}

#[cfg(test)]
mod tests {
    use nmp_authz_core::config::SourceConfig;

    use super::*;

    fn err(r: Result<Config, ConfigError>) -> String {
        let msg = r.expect_err("expected a config error").to_string();
        assert!(!msg.contains('\n'), "error must be one line: {msg}");
        msg
    }

    #[test]
    fn an_empty_file_gives_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty.yaml");
        std::fs::write(&path, "").unwrap();
        assert_eq!(load(Some(&path), []).unwrap(), Config::default());
    }

    #[test]
    fn quickstart_values() {
        let c = load(None, []).unwrap();
        assert!(c.auth.enabled);
        assert!(c.auth.allow_unsigned_jwt);
        assert!(c.auth.bootstrap_bindings);
        assert!(!c.auth.oidc.enabled);
        assert_eq!(
            c.policy.sources,
            vec![SourceConfig::Builtin { builtin: true }]
        );
        assert_eq!(c.server.grpc_addr.to_string(), "127.0.0.1:9191");
        assert_eq!(c.server.http_addr.to_string(), "127.0.0.1:8000");
    }

    #[test]
    fn file_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("broken.yaml");
        std::fs::write(&path, "auth:\n  enabled: true\n   oidc: [\n").unwrap();
        let msg = err(load(Some(&path), []));
        assert!(
            msg.contains("broken.yaml") && msg.contains("invalid YAML"),
            "{msg}"
        );

        let missing = dir.path().join("missing.yaml");
        let msg = err(load(Some(&missing), []));
        assert!(msg.contains("missing.yaml"), "{msg}");
    }
}
