use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::LazyLock;

use clap::{Parser, Subcommand};

use nmp_authz::config::{self, Config, SourceConfig};
use nmp_authz::{operator, server, sources, telemetry};
use nmp_authz_core::policy::builtin::NMP_RELEASE;

/// A Check allocates a few dozen small, short-lived objects (decoded request, principal,
/// response); mimalloc serves them from per-thread free lists. BENCHMARKS.md has the figure.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `--version`: which NMP release the built-in catalog is, beside the server's own version.
static VERSION: LazyLock<String> = LazyLock::new(|| {
    format!(
        "{} (built-in catalog: NeMo Platform {NMP_RELEASE})",
        env!("CARGO_PKG_VERSION")
    )
});

/// Envoy ext_authz server for the NeMo Platform API: workspace-scoped RBAC and token scopes.
#[derive(Parser, Debug)]
#[command(name = "nmp-authz", version = VERSION.as_str(), about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the server (gRPC ext_authz + PDP, HTTP health and metrics).
    Serve {
        #[command(flatten)]
        config: ConfigArgs,
        /// gRPC listen address; overrides server.grpc_addr.
        #[arg(long)]
        grpc_addr: Option<SocketAddr>,
        /// HTTP listen address; overrides server.http_addr.
        #[arg(long)]
        http_addr: Option<SocketAddr>,
    },
    /// Load the configuration and every policy source, report what would be served, and exit
    /// (non-zero with the reason on the first error).
    Validate {
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Explain a decision offline: the status Envoy would return, the endpoint and workspace,
    /// the scope check, the roles that granted or the permission that was missing, and the
    /// deny rule that fired.
    #[command(alias = "check")]
    Explain {
        #[command(flatten)]
        config: ConfigArgs,
        #[command(flatten)]
        args: operator::explain::Args,
    },
    /// Check a configuration (and optionally a running deployment) against the production
    /// hardening checklist: pass/warn/fail per item, non-zero exit on any failure.
    Doctor {
        #[command(flatten)]
        config: ConfigArgs,
        #[command(flatten)]
        args: operator::doctor::Args,
    },
    /// Print an unsigned quickstart token for curl; refused unless the configuration accepts
    /// unsigned tokens (auth.allow_unsigned_jwt).
    Token {
        #[command(flatten)]
        config: ConfigArgs,
        #[command(flatten)]
        args: operator::token::Args,
    },
    /// Who holds which role in a workspace, from the configured policy sources.
    Members {
        #[command(flatten)]
        config: ConfigArgs,
        #[command(subcommand)]
        command: operator::members::Command,
    },
}

#[derive(clap::Args, Debug)]
struct ConfigArgs {
    /// Configuration file (YAML). Without it, the embedded quickstart default applies
    /// (development only: unsigned tokens accepted).
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
}

impl ConfigArgs {
    fn load(&self) -> Result<Config, String> {
        let mut config =
            config::load_from_process_env(self.config.as_deref()).map_err(|e| e.to_string())?;
        if let Some(dir) = self.config.as_deref().and_then(Path::parent) {
            resolve_relative_sources(&mut config, dir);
        }
        Ok(config)
    }
}

/// Files a configuration names with a relative path (policy files of every source list, a
/// bundle's `bearer_token_file`) are read from beside the config file, wherever the server is
/// started from.
fn resolve_relative_sources(config: &mut Config, dir: &Path) {
    let policy = &mut config.policy;
    let shadow = policy.shadow.iter_mut().flat_map(|s| &mut s.sources);
    let sources = policy.sources.iter_mut().chain(&mut policy.bootstrap);
    for source in sources.chain(shadow) {
        let file = match source {
            SourceConfig::File { file } => file,
            SourceConfig::BundleUrl {
                bearer_token_file: Some(file),
                ..
            } => file,
            _ => continue,
        };
        if file.is_relative() {
            *file = dir.join(&*file);
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("nmp-authz: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<(), String> {
    // Unknown `NMP_AUTH*` variables: `serve` logs them, `doctor` reports them as a check, the
    // other commands that read the configuration say so on stderr (stdout is their output).
    if matches!(
        cli.command,
        Command::Validate { .. }
            | Command::Explain { .. }
            | Command::Token { .. }
            | Command::Members { .. }
    ) {
        for warning in config::process_env_warnings() {
            eprintln!("nmp-authz: warning: {warning}");
        }
    }
    match cli.command {
        Command::Serve {
            config,
            grpc_addr,
            http_addr,
        } => {
            let quickstart = config.config.is_none();
            let mut config = config.load()?;
            config.server.grpc_addr = grpc_addr.unwrap_or(config.server.grpc_addr);
            config.server.http_addr = http_addr.unwrap_or(config.server.http_addr);
            let _log_writer = telemetry::init_logging();
            for warning in config::process_env_warnings() {
                tracing::warn!("{warning}");
            }
            if quickstart {
                tracing::warn!(
                    "DEVELOPMENT MODE: no --config given, running the embedded quickstart \
                     default (unsigned tokens accepted, built-in catalog, bootstrap bindings); \
                     do not expose this server"
                );
            }
            if !quickstart && config.auth.enabled && config.auth.allow_unsigned_jwt {
                tracing::warn!(
                    "auth.allow_unsigned_jwt is true: anyone can claim any identity with an \
                     unsigned token; development only"
                );
            }
            if !config.auth.enabled {
                tracing::warn!("auth.enabled is false: every request is allowed without checks");
            }
            let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
            runtime
                .block_on(server::run(config))
                .map_err(|e| format!("{e:#}"))
        }
        Command::Validate { config } => {
            let config = config.load()?;
            let policy = sources::load(&config).map_err(|e| e.to_string())?;
            println!(
                "ok: policy revision {}, {} endpoint patterns, {} roles, {} bindings; auth {}",
                policy.revision(),
                policy.endpoint_count(),
                policy.role_count(),
                policy.binding_count(),
                if config.auth.enabled {
                    "enabled"
                } else {
                    "DISABLED"
                },
            );
            Ok(())
        }
        Command::Explain { config, args } => operator::explain::run(&args, &config.load()?),
        Command::Doctor { config, args } => {
            operator::doctor::run(&args, config.config.as_deref(), config.load())
        }
        Command::Token { config, args } => operator::token::run(&args, &config.load()?),
        Command::Members { config, command } => operator::members::run(&command, &config.load()?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_a_config_names_relatively_is_read_from_beside_it() {
        let text = "policy:
  sources:
    - file: policy.yaml
    - file: /etc/nmp/absolute.yaml
    - bundle_url: http://auth:8000/bundle.tar.gz
      bearer_token_file: secrets/token
    - builtin: true
  bootstrap: [{file: bootstrap.yaml}]
  shadow: {sources: [{file: ../candidate.yaml}]}
";
        let mut config = nmp_authz_core::config::parse(text, "test", []).unwrap();
        resolve_relative_sources(&mut config, Path::new("/srv/nmp-authz"));
        let file = |path: &str| SourceConfig::File { file: path.into() };
        assert_eq!(
            config.policy.sources,
            [
                file("/srv/nmp-authz/policy.yaml"),
                file("/etc/nmp/absolute.yaml"),
                SourceConfig::BundleUrl {
                    bundle_url: "http://auth:8000/bundle.tar.gz".into(),
                    principal_id: None,
                    bearer_token_file: Some("/srv/nmp-authz/secrets/token".into()),
                },
                SourceConfig::Builtin { builtin: true },
            ]
        );
        assert_eq!(
            config.policy.bootstrap,
            [file("/srv/nmp-authz/bootstrap.yaml")]
        );
        assert_eq!(
            config.policy.shadow.unwrap().sources,
            [file("/srv/nmp-authz/../candidate.yaml")]
        );
    }
}
