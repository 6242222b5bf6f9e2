//! The server's faces: ext_authz and PDP over gRPC, health and metrics over HTTP, and the
//! policy reload loop that feeds them.

pub mod check;
pub mod grpc;
pub mod http;
pub mod http_authz;
pub mod pdp;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use envoy_types::pb::google::protobuf::Struct;
use tokio::sync::watch;

use crate::config::{Config, HttpAuthzConfig};
use crate::identity::jwks::KeyFetcher;
use crate::identity::signed::{IssuerKeys, TokenVerifier};
use crate::identity::{self, Identity, IdentityError, IdentitySettings};
use crate::policy::CompiledPolicy;
use crate::sources::{self, Refresh, SourceStatus, Sources};
use crate::telemetry::{DecisionLog, Metrics};

/// How long a request waits for an issuer's keys to be refetched when its token names a key
/// they lack (a rotation). Envoy's ext_authz timeout must be longer (the companion config's is).
const UNKNOWN_KEY_WAIT: Duration = Duration::from_secs(1);
/// How long file events are left to settle before the files are read again.
const FILE_EVENT_SETTLE: Duration = Duration::from_millis(200);

/// What every request handler shares. The policy is swapped whole; readers never wait.
#[derive(Debug)]
pub struct State {
    pub policy: ArcSwapOption<CompiledPolicy>,
    pub auth_enabled: bool,
    pub identity: IdentitySettings,
    /// Trusted issuers' keys and the verified-token cache.
    pub keys: Arc<KeyFetcher>,
    pub metrics: Arc<Metrics>,
    /// The `GET /apis/auth/discovery` body.
    pub discovery: String,
    /// Set when a policy source has failed for longer than `max_staleness_seconds` (or has
    /// never loaded).
    pub stale: AtomicBool,
    /// Set while a policy source has never loaded: the policy in use, if any, is compiled from
    /// the others. Checks are 503 meanwhile (the data is also `stale`); the PDP answers only
    /// questions about `service:` principals from it (see `pdp::current_policy`).
    pub bootstrapping: AtomicBool,
    /// Unix time of the last policy installed.
    pub policy_loaded_at: AtomicU64,
    /// Set on SIGTERM: readiness goes false before the listeners close.
    pub shutting_down: AtomicBool,
    pub decision_log: DecisionLog,
    /// How each policy source is doing, as of the last refresh.
    pub source_status: ArcSwap<Vec<SourceStatus>>,
    /// The HTTP authorization endpoint's settings.
    pub http_authz: HttpAuthzConfig,
}

impl State {
    pub fn new(config: &Config, policy: Option<CompiledPolicy>) -> Self {
        let oidc = &config.auth.oidc;
        let metrics = Arc::new(Metrics::default());
        let verifier = if oidc.enabled {
            let primary = oidc
                .issuer
                .iter()
                .map(|issuer| Arc::new(IssuerKeys::new(issuer.clone(), oidc.jwks_uri.clone())));
            let additional = oidc
                .additional_issuers
                .iter()
                .map(|issuer| Arc::new(IssuerKeys::new(issuer.clone(), None)));
            TokenVerifier::new(
                primary.chain(additional).collect(),
                oidc.audience.clone(),
                oidc.leeway_seconds,
            )
        } else {
            TokenVerifier::none()
        };
        let keys = KeyFetcher::new(
            Arc::new(verifier),
            Duration::from_secs(oidc.discovery_cache_ttl),
            metrics.clone(),
        );
        let discovery = serde_json::json!({
            "auth_enabled": config.auth.enabled,
            "oidc": oidc.enabled.then(|| serde_json::json!({
                "issuer": oidc.issuer,
                "client_id": oidc.client_id,
                "audience": oidc.audience,
                "additional_issuers": oidc.additional_issuers,
            })),
        });
        Self {
            policy: ArcSwapOption::from(policy.map(Arc::new)),
            auth_enabled: config.auth.enabled,
            identity: IdentitySettings {
                jwt_authn_metadata_key: config.identity.jwt_authn_metadata_key.clone(),
                verify_bearer: config.identity.verify_bearer,
                trust_principal_headers: config.identity.trust_principal_headers,
                allow_unsigned_jwt: config.auth.allow_unsigned_jwt,
                subject_claim: oidc.subject_claim.clone(),
                email_claim: oidc.email_claim.clone(),
                groups_claim: oidc.groups_claim.clone(),
                scope_prefix: oidc.scope_prefix.clone(),
                leeway_seconds: oidc.leeway_seconds,
            },
            keys: Arc::new(keys),
            metrics,
            discovery: discovery.to_string(),
            stale: AtomicBool::new(false),
            bootstrapping: AtomicBool::new(false),
            policy_loaded_at: AtomicU64::new(0),
            shutting_down: AtomicBool::new(false),
            decision_log: DecisionLog::from_env(),
            source_status: ArcSwap::default(),
            http_authz: config.http_authz.clone(),
        }
    }

    /// Swaps in a newly compiled policy; Checks in flight keep the one they started with.
    /// `took`: reading, parsing and compiling it (off the request path).
    pub fn install(&self, policy: CompiledPolicy, took: Duration) {
        tracing::info!(
            revision = policy.revision(),
            endpoints = policy.endpoint_count(),
            roles = policy.role_count(),
            bindings = policy.binding_count(),
            load_ms = took.as_millis() as u64,
            "policy loaded"
        );
        self.policy.store(Some(Arc::new(policy)));
        self.policy_loaded_at
            .store(identity::unix_now(), Ordering::Relaxed);
        self.metrics.policy_loaded(took);
    }

    /// Who is calling. A token signed with a key its issuer does not publish yet triggers
    /// one (rate-limited, shared) refetch of that issuer's keys before it is refused.
    pub async fn identify(
        &self,
        credentials: &identity::Credentials<'_>,
        metadata: Option<&Struct>,
    ) -> Result<Option<Identity>, IdentityError> {
        let verifier = self.keys.verifier();
        match identity::identify(
            &self.identity,
            verifier,
            credentials,
            metadata,
            identity::unix_now(),
        ) {
            Err(IdentityError::UnknownSigningKey { issuer }) => {
                let refreshed = tokio::time::timeout(
                    UNKNOWN_KEY_WAIT,
                    self.keys.refetch_for_unknown_key(&issuer),
                )
                .await
                .unwrap_or(false);
                if !refreshed {
                    return Err(IdentityError::UnknownSigningKey { issuer });
                }
                identity::identify(
                    &self.identity,
                    verifier,
                    credentials,
                    metadata,
                    identity::unix_now(),
                )
            }
            other => other,
        }
    }

    /// Takes in how the sources are doing after a refresh: their status, staleness, and
    /// whether one has never loaded.
    fn observe(&self, sources: &Sources, max_staleness: Duration) {
        self.source_status.store(Arc::new(sources.status()));
        self.bootstrapping
            .store(sources.bootstrapping(), Ordering::Relaxed);
        let stale = sources.stale(max_staleness);
        if stale != self.stale.swap(stale, Ordering::Relaxed) {
            if stale {
                tracing::error!(
                    max_staleness_seconds = max_staleness.as_secs(),
                    "policy data is stale or incomplete: denying every Check with 503 until every source has loaded"
                );
            } else {
                tracing::info!("policy data is current again");
            }
        }
    }

    /// Ready when a current policy with endpoints is loaded (or authorization is off), and
    /// not shutting down.
    pub fn ready(&self) -> bool {
        if self.shutting_down.load(Ordering::Relaxed) {
            return false;
        }
        !self.auth_enabled
            || !self.stale.load(Ordering::Relaxed)
                && self
                    .policy
                    .load()
                    .as_ref()
                    .is_some_and(|p| p.endpoint_count() > 0)
    }
}

/// Runs both listeners until SIGINT/SIGTERM. Files and the built-in catalog must load at
/// start-up (a broken one is a configuration error); a bundle may come later.
pub async fn run(config: Config) -> anyhow::Result<()> {
    // Installed before the listeners exist, so a SIGTERM that arrives as soon as the server
    // says it is listening is a graceful shutdown, not a kill.
    let shutdown_requested = shutdown_signal()?;
    let state = Arc::new(State::new(&config, None));
    let mut sources = Sources::new(&config, state.metrics.clone());
    let first = sources.refresh().await;
    // A file or the built-in catalog failing at start-up is a configuration error; a bundle
    // that cannot be fetched yet is not: the server starts unready (503) and keeps polling.
    if let Some(failed) = sources
        .status()
        .into_iter()
        .find(|s| s.last_error.is_some() && !s.remote)
    {
        anyhow::bail!(sources::LoadError {
            source_name: failed.name,
            message: failed.last_error.unwrap_or_default(),
        });
    }
    match first {
        Refresh::Compiled(policy, took) => state.install(*policy, took),
        Refresh::Failed(e) => return Err(e.into()),
        Refresh::Unchanged => tracing::warn!("no policy data yet: answering 503 until it loads"),
    }
    let max_staleness = Duration::from_secs(config.policy.max_staleness_seconds);
    // Before the first Check: a policy compiled without a source that never loaded must not
    // decide one.
    state.observe(&sources, max_staleness);
    let (shutdown_tx, shutdown_rx) = watch::channel(false);

    let grpc_listener = tokio::net::TcpListener::bind(config.server.grpc_addr).await?;
    let http_listener = tokio::net::TcpListener::bind(config.server.http_addr).await?;
    let pdp_tcp = match config.pdp.addr {
        Some(addr) => Some(tokio::net::TcpListener::bind(addr).await?),
        None => None,
    };
    let pdp_socket = match &config.pdp.unix_socket {
        Some(path) => Some(bind_unix_socket(
            path,
            config.pdp.socket_mode().unwrap_or(0o660),
        )?),
        None => None,
    };
    if let Some(listener) = &pdp_tcp {
        tracing::info!(pdp = %listener.local_addr()?, "PDP listening");
    }
    if let Some(path) = &config.pdp.unix_socket {
        tracing::info!(pdp_socket = %path.display(), "PDP listening");
    }
    tracing::info!(
        grpc = %grpc_listener.local_addr()?,
        http = %http_listener.local_addr()?,
        "listening"
    );

    let reload = tokio::spawn(reload_loop(
        config.clone(),
        sources,
        state.clone(),
        shutdown_rx.clone(),
    ));
    let keys = tokio::spawn(state.keys.clone().run(shutdown_rx.clone()));
    let grpc = tokio::spawn(grpc::serve(
        grpc_listener,
        state.clone(),
        shutdown_rx.clone(),
    ));
    let pdp_tcp = pdp_tcp.map(|listener| spawn_pdp(listener, &state, &shutdown_rx));
    let pdp_socket = pdp_socket.map(|listener| spawn_pdp(listener, &state, &shutdown_rx));
    let http = tokio::spawn(http::serve(
        http_listener,
        state.clone(),
        shutdown_rx,
        http::Face::Main,
    ));

    shutdown_requested.await;
    tracing::info!("shutting down: not ready any more; finishing in-flight requests");
    state.shutting_down.store(true, Ordering::Relaxed);
    let _ = shutdown_tx.send(true);
    grpc.await??;
    http.await??;
    for pdp in pdp_tcp.into_iter().chain(pdp_socket) {
        pdp.await??;
    }
    if let Some(path) = &config.pdp.unix_socket {
        let _ = std::fs::remove_file(path);
    }
    reload.abort();
    keys.abort();
    Ok(())
}

/// Serves the PDP listener's face on `listener` until shutdown.
fn spawn_pdp<L: http::Listener>(
    listener: L,
    state: &Arc<State>,
    shutdown: &watch::Receiver<bool>,
) -> tokio::task::JoinHandle<anyhow::Result<()>> {
    tokio::spawn(http::serve(
        listener,
        state.clone(),
        shutdown.clone(),
        http::Face::Pdp,
    ))
}

/// Binds the PDP's Unix socket at `path` with `mode`. The socket is made under a temporary
/// name, given its mode, then renamed into place, so nobody can connect while it still has the
/// umask's permissions. A socket file left by a process that is gone is replaced; one that
/// still answers is an error.
fn bind_unix_socket(path: &std::path::Path, mode: u32) -> anyhow::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let context = |what: &str| format!("pdp.unix_socket {}: {what}", path.display());
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            anyhow::bail!(context("exists and is not a socket"));
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            anyhow::bail!(context("another process is serving it"));
        }
    }
    let staging = path.with_file_name(format!(
        ".{}.{}",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("pdp.sock"),
        std::process::id()
    ));
    let _ = std::fs::remove_file(&staging);
    let listener = tokio::net::UnixListener::bind(&staging)
        .map_err(|e| anyhow::anyhow!(context(&format!("cannot bind: {e}"))))?;
    std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(mode))
        .and_then(|()| std::fs::rename(&staging, path))
        .map_err(|e| {
            let _ = std::fs::remove_file(&staging);
            anyhow::anyhow!(context(&e.to_string()))
        })?;
    Ok(listener)
}

/// Refreshes the sources every refresh interval, and soon after a policy file changes (a
/// ConfigMap's symlink swap included). What compiles is swapped in whole; a failure keeps the
/// last good policy, says why, and after `max_staleness_seconds` turns Checks into 503s until
/// a good load.
async fn reload_loop(
    config: Config,
    mut sources: Sources,
    state: Arc<State>,
    mut shutdown: watch::Receiver<bool>,
) {
    let interval = Duration::from_secs(config.auth.policy_data_refresh_interval.max(1));
    let max_staleness = Duration::from_secs(config.policy.max_staleness_seconds);
    let changed = Arc::new(tokio::sync::Notify::new());
    let _watcher = sources::watch_files(&sources.files(), changed.clone());
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = changed.notified() => {
                // Let a burst of file events (an editor's save, a symlink swap) settle.
                tokio::time::sleep(FILE_EVENT_SETTLE).await;
            }
            _ = shutdown.changed() => return,
        }
        match sources.refresh().await {
            Refresh::Compiled(policy, took) => state.install(*policy, took),
            Refresh::Unchanged => {}
            Refresh::Failed(e) => {
                tracing::error!(error = %e, "policy reload failed; keeping the last good policy");
                state.metrics.policy_load_failed();
            }
        }
        state.observe(&sources, max_staleness);
    }
}

/// Resolves on the first SIGINT or SIGTERM; the handlers are in place when this returns.
fn shutdown_signal() -> std::io::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    })
}

/// NMP's error body, `{"detail": "..."}`, written without building a JSON tree.
pub(crate) fn detail_body(detail: &str) -> String {
    #[derive(serde::Serialize)]
    struct Body<'a> {
        detail: &'a str,
    }
    serde_json::to_string(&Body { detail }).expect("a string field always serializes")
}
