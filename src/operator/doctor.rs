//! `nmp-authz doctor`: the production-hardening checklist as checks against a configuration,
//! its policy, and optionally a running deployment. Each check passes, warns or fails with a
//! short reason; any failure makes the command exit non-zero.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use crate::config::{Config, SourceConfig};
use crate::fetch::HttpClient;
use crate::policy::CompiledPolicy;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Also probe a running deployment at this base URL (nmp-authz's HTTP port or the
    /// gateway), e.g. http://127.0.0.1:8000: discovery must say auth is enabled, and a
    /// request without identity must be refused with 401.
    #[arg(long)]
    url: Option<String>,
    /// JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    Warn,
    Fail,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    pub check: &'static str,
    pub status: Status,
    pub detail: String,
}

fn check(check: &'static str, status: Status, detail: impl Into<String>) -> Check {
    Check {
        check,
        status,
        detail: detail.into(),
    }
}

/// Local parts of addresses that name a team or role mailbox rather than a person: whoever
/// reads it holds PlatformAdmin.
const SHARED_MAILBOXES: [&str; 16] = [
    "admin",
    "administrator",
    "root",
    "info",
    "support",
    "team",
    "ops",
    "devops",
    "it",
    "platform",
    "security",
    "sysadmin",
    "helpdesk",
    "noreply",
    "no-reply",
    "postmaster",
];

/// `config` is the load result: a load error is itself the first (failed) check.
pub fn run(
    args: &Args,
    config_path: Option<&Path>,
    config: Result<Config, String>,
) -> Result<(), String> {
    let checks = match config {
        Ok(config) => {
            let mut checks = config_checks(&config);
            checks.push(environment_check());
            checks.extend(policy_checks(&config));
            checks.extend(file_checks(config_path, &config));
            if let Some(url) = &args.url {
                checks.extend(live_checks(url)?);
            }
            checks
        }
        Err(e) => {
            let hint = if e.contains(crate::config::ENV_PREFIX) {
                " (every NMP_AUTH_* variable must name a key under auth:, e.g. \
                 NMP_AUTH_OIDC__ISSUER; unset the ones that do not)"
            } else {
                ""
            };
            vec![
                check("config loads", Status::Fail, format!("{e}{hint}")),
                environment_check(),
            ]
        }
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&checks).map_err(|e| e.to_string())?
        );
    } else {
        for c in &checks {
            let label = match c.status {
                Status::Pass => "pass",
                Status::Warn => "WARN",
                Status::Fail => "FAIL",
            };
            println!("{label}  {:<28} {}", c.check, c.detail);
        }
    }
    let count = |s: Status| checks.iter().filter(|c| c.status == s).count();
    let (failed, warned) = (count(Status::Fail), count(Status::Warn));
    if !args.json {
        println!(
            "{} checks: {} passed, {warned} warnings, {failed} failed",
            checks.len(),
            checks.len() - failed - warned
        );
    }
    if failed > 0 {
        return Err(format!(
            "doctor: {failed} of {} checks failed",
            checks.len()
        ));
    }
    Ok(())
}

/// Variables named like nmp-authz's own that it does not read: most likely a typo, and then
/// the setting meant is not in force.
fn environment_check() -> Check {
    let warnings = crate::config::process_env_warnings();
    if warnings.is_empty() {
        check(
            "environment",
            Status::Pass,
            "no unknown NMP_AUTH* variables",
        )
    } else {
        check("environment", Status::Warn, warnings.join("; "))
    }
}

fn config_checks(config: &Config) -> Vec<Check> {
    use Status::{Fail, Pass, Warn};
    let auth = &config.auth;
    let oidc = &auth.oidc;
    let mut checks = vec![if auth.enabled {
        check("auth enabled", Pass, "auth.enabled is true")
    } else {
        check(
            "auth enabled",
            Fail,
            "auth.enabled is false: every request is allowed without checks",
        )
    }];
    checks.push(match (&oidc.issuer, oidc.enabled) {
        (Some(issuer), true) if issuer.starts_with("https://") => {
            check("OIDC configured", Pass, format!("issuer {issuer}"))
        }
        (Some(issuer), true) => check(
            "OIDC configured",
            Warn,
            format!("issuer {issuer} is not https: its keys can be tampered with in transit"),
        ),
        _ => check(
            "OIDC configured",
            Fail,
            "auth.oidc.enabled is false: no signed token is accepted",
        ),
    });
    checks.push(if auth.allow_unsigned_jwt {
        check(
            "unsigned tokens off",
            Fail,
            "auth.allow_unsigned_jwt is true: anyone can claim any identity",
        )
    } else {
        check(
            "unsigned tokens off",
            Pass,
            "auth.allow_unsigned_jwt is false",
        )
    });
    checks.push(match &oidc.audience {
        Some(audience) if !audience.is_empty() => {
            check("audience set", Pass, format!("auth.oidc.audience {audience}"))
        }
        _ => check(
            "audience set",
            Warn,
            "auth.oidc.audience is unset: tokens the issuer minted for any other client are accepted",
        ),
    });
    checks.push(
        match auth.admin_email.as_deref().filter(|e| !e.is_empty()) {
            None => check(
                "admin_email",
                Warn,
                "auth.admin_email is unset: PlatformAdmin comes only from policy data",
            ),
            Some(email) => {
                let local = email
                    .split('@')
                    .next()
                    .unwrap_or_default()
                    .to_ascii_lowercase();
                if SHARED_MAILBOXES.contains(&local.as_str()) {
                    check(
                        "admin_email",
                        Warn,
                        format!("{email} looks like a shared mailbox; name one accountable person"),
                    )
                } else {
                    check("admin_email", Pass, email.to_string())
                }
            }
        },
    );
    checks.push(if oidc.additional_issuers.is_empty() {
        check("additional issuers", Pass, "none")
    } else {
        check(
            "additional issuers",
            Warn,
            format!(
                "review: each can mint tokens for any principal: {}",
                oidc.additional_issuers.join(", ")
            ),
        )
    });
    checks.push(if config.identity.trust_principal_headers {
        check(
            "principal headers",
            Warn,
            "identity.trust_principal_headers is true: safe only when the gateway strips \
             inbound x-nmp-* headers first",
        )
    } else {
        check(
            "principal headers",
            Pass,
            "x-nmp-principal-* headers are not trusted",
        )
    });
    checks.push(pdp_listener_check(config));
    let refresh = auth.policy_data_refresh_interval;
    let staleness = config.policy.max_staleness_seconds;
    checks.push(if (5..=300).contains(&refresh) {
        check("refresh interval", Pass, format!("{refresh} s"))
    } else {
        check(
            "refresh interval",
            Warn,
            format!(
                "auth.policy_data_refresh_interval {refresh} s: below 5 s loads the sources \
                 needlessly, above 300 s revocations take long to apply"
            ),
        )
    });
    checks.push(if staleness >= 2 * refresh && staleness <= 3600 {
        check(
            "staleness bound",
            Pass,
            format!(
                "{staleness} s ({} refresh intervals)",
                staleness / refresh.max(1)
            ),
        )
    } else {
        check(
            "staleness bound",
            Warn,
            format!(
                "policy.max_staleness_seconds {staleness} s: below two refresh intervals \
                     ({refresh} s) one missed poll fails every request with 503; above 3600 s \
                     revoked bindings keep working that long"
            ),
        )
    });
    if config.traces.enabled {
        checks.push(if config.traces.record_principal {
            check(
                "identities in traces",
                Warn,
                "traces.record_principal is true: every traced request's principal id goes                  to the trace backend (personal data where ids are emails)",
            )
        } else {
            check(
                "identities in traces",
                Pass,
                "spans carry the principal's kind, not its id",
            )
        });
    }
    checks
}

/// The PDP listener believes `X-NMP-Principal-Id` from whoever connects, so who can connect
/// is what matters; and NMP's services can only start against it if something answers them
/// before NMP's bundle exists (`policy.bootstrap`).
fn pdp_listener_check(config: &Config) -> Check {
    use Status::{Pass, Warn};
    const NAME: &str = "PDP listener";
    let pdp = &config.pdp;
    if pdp.addr.is_none() && pdp.unix_socket.is_none() {
        return check(NAME, Pass, "off");
    }
    let follows_bundle = config
        .policy
        .sources
        .iter()
        .any(|s| matches!(s, crate::config::SourceConfig::BundleUrl { .. }));
    if follows_bundle && config.policy.bootstrap.is_empty() {
        return check(
            NAME,
            Warn,
            "policy.bootstrap is empty: NMP's services that use this PDP cannot start (NMP's \
            bundle, which nmp-authz waits for, is built through them); add `- builtin: true`",
        );
    }
    match pdp.addr {
        Some(addr) if !addr.ip().is_loopback() => check(
            NAME,
            Warn,
            format!(
                "pdp.addr {addr} is not loopback: it believes any `X-NMP-Principal-Id: service:*` \
                header, so only NMP's services may reach it (a NetworkPolicy)"
            ),
        ),
        _ => check(
            NAME,
            Pass,
            match (&pdp.addr, &pdp.unix_socket) {
                (Some(addr), None) => format!("{addr}"),
                (None, Some(path)) => format!("{} (mode {})", path.display(), pdp.unix_socket_mode),
                (Some(addr), Some(path)) => format!(
                    "{addr} and {} (mode {})",
                    path.display(),
                    pdp.unix_socket_mode
                ),
                (None, None) => unreachable!("returned above"),
            },
        ),
    }
}

/// Checks on the policy the server would serve: admins and wildcard bindings.
fn policy_checks(config: &Config) -> Vec<Check> {
    use Status::{Fail, Pass, Warn};
    let policy = match crate::sources::load(config) {
        Ok(policy) => policy,
        Err(e) => return vec![check("policy loads", Fail, e.to_string())],
    };
    let mut checks = vec![check(
        "policy loads",
        Pass,
        format!(
            "revision {}, {} endpoint patterns",
            policy.revision(),
            policy.endpoint_count()
        ),
    )];
    let admins: Vec<String> = admins(&policy);
    checks.push(match admins.len() {
        1 => check("one PlatformAdmin", Pass, admins[0].clone()),
        0 => check(
            "one PlatformAdmin",
            Fail,
            "no principal holds PlatformAdmin in system",
        ),
        _ => check(
            "one PlatformAdmin",
            Fail,
            format!(
                "{} principals hold PlatformAdmin in system: {}",
                admins.len(),
                admins.join(", ")
            ),
        ),
    });
    let wildcard = policy.bindings_of("*");
    let text = |items: &[(String, Vec<String>)]| {
        items
            .iter()
            .map(|(ws, roles)| format!("* -> {} in {ws}", roles.join("+")))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let broad: Vec<(String, Vec<String>)> = wildcard
        .iter()
        .filter(|(_, roles)| roles.iter().any(|r| r == "Editor" || r.contains("Admin")))
        .cloned()
        .collect();
    checks.push(if wildcard.is_empty() {
        check("wildcard bindings", Pass, "none")
    } else if broad.is_empty() {
        check("wildcard bindings", Pass, text(&wildcard))
    } else {
        check(
            "wildcard bindings",
            Warn,
            format!(
                "every authenticated caller gets {} (all: {}); auth.bootstrap_bindings: false \
                 drops the bootstrap ones",
                text(&broad),
                text(&wildcard)
            ),
        )
    });
    checks
}

/// Principals bound to PlatformAdmin in `system`.
fn admins(policy: &CompiledPolicy) -> Vec<String> {
    policy
        .members("system")
        .members
        .into_iter()
        .filter(|m| m.roles.iter().any(|r| r == "PlatformAdmin"))
        .map(|m| m.principal)
        .collect()
}

/// The config file and policy files must not be writable by others; readable by others is
/// flagged (the policy names every principal and their roles).
fn file_checks(config_path: Option<&Path>, config: &Config) -> Vec<Check> {
    let mut files: Vec<PathBuf> = config_path.map(Path::to_path_buf).into_iter().collect();
    for source in &config.policy.sources {
        if let SourceConfig::File { file } = source {
            files.push(file.clone());
        }
    }
    if files.is_empty() {
        return vec![check(
            "file permissions",
            Status::Pass,
            "no files (embedded configuration)",
        )];
    }
    files.iter().map(|f| file_mode_check(f)).collect()
}

#[cfg(unix)]
fn file_mode_check(path: &Path) -> Check {
    use std::os::unix::fs::PermissionsExt;
    let shown = path.display();
    match std::fs::metadata(path) {
        Err(e) => check("file permissions", Status::Fail, format!("{shown}: {e}")),
        Ok(meta) => {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o002 != 0 {
                check(
                    "file permissions",
                    Status::Fail,
                    format!("{shown} is writable by others (mode {mode:o})"),
                )
            } else if mode & 0o004 != 0 {
                check(
                    "file permissions",
                    Status::Warn,
                    format!("{shown} is readable by others (mode {mode:o})"),
                )
            } else {
                check(
                    "file permissions",
                    Status::Pass,
                    format!("{shown} (mode {mode:o})"),
                )
            }
        }
    }
}

#[cfg(not(unix))]
fn file_mode_check(path: &Path) -> Check {
    check(
        "file permissions",
        Status::Warn,
        format!("{}: not checked on this platform", path.display()),
    )
}

/// A running deployment: discovery says auth is on; a request without identity is a 401.
fn live_checks(url: &str) -> Result<Vec<Check>, String> {
    use Status::{Fail, Pass};
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(format!("--url {url:?} must be an http(s) URL"));
    }
    let base = url.trim_end_matches('/');
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let client = HttpClient::default();
    const LIMIT: usize = 64 * 1024;
    const TIMEOUT: Duration = Duration::from_secs(5);
    let discovery = runtime.block_on(client.send(
        hyper::Method::GET,
        &format!("{base}/apis/auth/discovery"),
        &[],
        LIMIT,
        TIMEOUT,
    ));
    let discovery = match discovery {
        Err(e) => check("live: discovery", Fail, e.to_string()),
        Ok(r) if !r.status.is_success() => {
            check("live: discovery", Fail, format!("HTTP {}", r.status))
        }
        Ok(r) => match serde_json::from_slice::<serde_json::Value>(&r.body)
            .ok()
            .and_then(|v| v["auth_enabled"].as_bool())
        {
            Some(true) => check("live: discovery", Pass, "auth_enabled: true"),
            Some(false) => check(
                "live: discovery",
                Fail,
                "auth_enabled: false: the deployment allows every request",
            ),
            None => check(
                "live: discovery",
                Fail,
                "the answer has no boolean auth_enabled",
            ),
        },
    };
    // NMP's PDP entrypoint answers 401 before reading a body when the caller is nobody; through
    // the gateway, ext_authz does the same for an unauthenticated request.
    let probe = format!("{base}/apis/auth/v2/authz/allow");
    let unauthenticated =
        match runtime.block_on(client.send(hyper::Method::POST, &probe, &[], LIMIT, TIMEOUT)) {
            Err(e) => check("live: unauthenticated", Fail, e.to_string()),
            Ok(r) if r.status == hyper::StatusCode::UNAUTHORIZED => check(
                "live: unauthenticated",
                Pass,
                format!("POST {probe} without identity: 401"),
            ),
            Ok(r) => check(
                "live: unauthenticated",
                Fail,
                format!(
                    "POST {probe} without identity: HTTP {} (expected 401)",
                    r.status.as_u16()
                ),
            ),
        };
    Ok(vec![discovery, unauthenticated])
}
