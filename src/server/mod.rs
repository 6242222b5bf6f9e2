//! The server's faces: ext_authz and PDP over gRPC, health and metrics over HTTP, and the
//! policy reload loop that feeds them.

pub mod check;
pub mod check_request;
pub mod check_response;
pub mod grpc;
pub mod http;
pub mod http_authz;
pub mod pdp;
pub mod shadow;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use tokio::sync::watch;

use crate::config::{Config, HttpAuthzConfig};
use crate::identity::jwks::KeyFetcher;
use crate::identity::signed::TokenVerifier;
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
    /// The dry-run policy (`policy.shadow`), when configured.
    pub shadow: Option<shadow::Shadow>,
    /// Span export (`traces.enabled`).
    pub traces: Option<crate::traces::Traces>,
}

impl State {
    pub fn new(config: &Config, policy: Option<CompiledPolicy>) -> Self {
        let oidc = &config.auth.oidc;
        let metrics = Arc::new(Metrics::default());
        let verifier = TokenVerifier::for_config(oidc);
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
            identity: config.identity_settings(),
            keys: Arc::new(keys),
            discovery: discovery.to_string(),
            stale: AtomicBool::new(false),
            bootstrapping: AtomicBool::new(false),
            policy_loaded_at: AtomicU64::new(0),
            shutting_down: AtomicBool::new(false),
            decision_log: DecisionLog::from_env(),
            source_status: ArcSwap::default(),
            http_authz: config.http_authz.clone(),
            // Started inside the server's runtime (its exporter runs there); a failure to start
            // is logged and leaves traces off, never the server down.
            traces: config.traces.enabled.then(|| {
                crate::traces::Traces::start(&config.traces)
                    .map_err(|e| tracing::error!(error = %e, "traces: cannot start the OTLP exporter; traces are off"))
                    .ok()
            }).flatten(),
            shadow: config
                .policy
                .shadow
                .as_ref()
                .map(|_| shadow::Shadow::new(&metrics)),
            metrics,
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
        metadata: Option<&check_request::Struct>,
    ) -> Result<Option<Identity>, IdentityError> {
        let identity = self
            .identify_once_more_on_unknown_key(credentials, metadata)
            .await;
        if let Ok(Some(identity)) = &identity
            && identity.dropped_groups > 0
        {
            self.metrics.groups_dropped(identity.dropped_groups);
        }
        identity
    }

    async fn identify_once_more_on_unknown_key(
        &self,
        credentials: &identity::Credentials<'_>,
        metadata: Option<&check_request::Struct>,
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

    /// What `/metrics` reports from the state (rather than from counters).
    pub fn scrape(&self) -> crate::telemetry::Scrape {
        let age = |loaded_at: u64| {
            (loaded_at > 0).then(|| identity::unix_now().saturating_sub(loaded_at))
        };
        crate::telemetry::Scrape {
            revision: self
                .policy
                .load()
                .as_ref()
                .map(|p| p.revision().to_string()),
            policy_age_seconds: age(self.policy_loaded_at.load(Ordering::Relaxed)),
            stale: self.stale.load(Ordering::Relaxed),
            ready: self.ready(),
            shadow_configured: self.shadow.is_some(),
            shadow_revision: self.shadow.as_ref().and_then(|shadow| {
                let policy = shadow.policy.load();
                policy.as_ref().map(|p| p.revision().to_string())
            }),
            shadow_policy_age_seconds: self
                .shadow
                .as_ref()
                .and_then(|shadow| age(shadow.loaded_at.load(Ordering::Relaxed))),
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

/// Runs the server until SIGINT/SIGTERM, or until one of its tasks ends (see [`Tasks`]): then
/// the server is not ready, finishes in-flight requests, and returns the reason.
pub async fn run(config: Config) -> anyhow::Result<()> {
    // Installed before the listeners exist, so a SIGTERM that arrives as soon as the server
    // says it is listening is a graceful shutdown, not a kill.
    let shutdown_requested = shutdown_signal()?;
    Running::start(config)
        .await?
        .serve(shutdown_requested)
        .await
}

/// A started server: its policy loaded, its listeners bound, its tasks running.
#[derive(Debug)]
struct Running {
    state: Arc<State>,
    tasks: Tasks,
    shutdown: watch::Sender<bool>,
    grpc_addr: std::net::SocketAddr,
    http_addr: std::net::SocketAddr,
    unix_socket: Option<std::path::PathBuf>,
    shutdown_grace: Duration,
}

impl Running {
    /// Loads the policy and starts every listener. Files and the built-in catalog must load
    /// (a broken one is a configuration error); a bundle may come later.
    async fn start(config: Config) -> anyhow::Result<Self> {
        let state = Arc::new(State::new(&config, None));
        let mut sources = Sources::new(&config, state.metrics.clone());
        let first = sources.refresh().await;
        // A file or the built-in catalog failing at start-up is a configuration error; a
        // bundle that cannot be fetched yet is not: the server starts unready (503) and keeps
        // polling.
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
            Refresh::Unchanged => {
                tracing::warn!("no policy data yet: answering 503 until it loads")
            }
        }
        // The dry run's policy: its failure is logged and counted, never fatal (it answers
        // nothing), and the reload loop keeps trying.
        let mut shadow_sources = Sources::shadow(&config, state.metrics.clone());
        if let (Some(sources), Some(shadow)) = (&mut shadow_sources, &state.shadow) {
            refresh_shadow(sources, shadow, &state.metrics).await;
        }
        let max_staleness = Duration::from_secs(config.policy.max_staleness_seconds);
        // Before the first Check: a policy compiled without a source that never loaded must
        // not decide one.
        state.observe(&sources, max_staleness);
        let (shutdown, shutdown_rx) = watch::channel(false);

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
        let (grpc_addr, http_addr) = (grpc_listener.local_addr()?, http_listener.local_addr()?);

        let mut tasks = Tasks::default();
        tasks.spawn(
            "policy reload",
            TaskKind::Background,
            reload_loop(config.clone(), sources, state.clone(), shutdown_rx.clone()),
        );
        if let Some(shadow_sources) = shadow_sources {
            // A loop of its own: a shadow source that hangs must not hold up the enforced
            // policy's reloads.
            tasks.spawn(
                "shadow policy reload",
                TaskKind::Background,
                shadow_reload_loop(
                    config.clone(),
                    shadow_sources,
                    state.clone(),
                    shutdown_rx.clone(),
                ),
            );
        }
        let keys = state.keys.clone().run(shutdown_rx.clone());
        tasks.spawn("signing keys refresh", TaskKind::Background, async move {
            keys.await;
            Ok(())
        });
        tasks.spawn(
            "gRPC listener",
            TaskKind::Listener,
            grpc::serve(grpc_listener, state.clone(), shutdown_rx.clone()),
        );
        if let Some(listener) = pdp_tcp {
            let face = pdp(listener, &state, &shutdown_rx);
            tasks.spawn("PDP listener", TaskKind::Listener, face);
        }
        if let Some(listener) = pdp_socket {
            let face = pdp(listener, &state, &shutdown_rx);
            tasks.spawn("PDP socket listener", TaskKind::Listener, face);
        }
        tasks.spawn(
            "HTTP listener",
            TaskKind::Listener,
            http::serve(http_listener, state.clone(), shutdown_rx, http::Face::Main),
        );
        Ok(Self {
            state,
            tasks,
            shutdown,
            grpc_addr,
            http_addr,
            unix_socket: config.pdp.unix_socket.clone(),
            shutdown_grace: Duration::from_secs(config.server.shutdown_grace_seconds),
        })
    }

    /// Serves until `shutdown_requested` or until a task ends, whichever comes first; then
    /// turns not ready and shuts down gracefully. A task that ended is the error returned.
    async fn serve(mut self, shutdown_requested: impl Future<Output = ()>) -> anyhow::Result<()> {
        tracing::info!(grpc = %self.grpc_addr, http = %self.http_addr, "listening");
        let failure = tokio::select! {
            () = shutdown_requested => {
                tracing::info!("shutting down: not ready any more; finishing in-flight requests");
                None
            }
            failure = self.tasks.first_to_end() => {
                tracing::error!(
                    error = %failure,
                    "a server task ended: not ready any more; finishing in-flight requests and exiting"
                );
                Some(failure)
            }
        };
        self.state.shutting_down.store(true, Ordering::Relaxed);
        let _ = self.shutdown.send(true);
        let drained = tokio::time::timeout(self.shutdown_grace, self.tasks.drain()).await;
        let drained = match drained {
            Ok(drained) => drained,
            Err(_) => {
                tracing::warn!(
                    grace_seconds = self.shutdown_grace.as_secs(),
                    "shutdown grace period over: closing the connections still open"
                );
                self.tasks.set.shutdown().await;
                Ok(())
            }
        };
        if let Some(path) = &self.unix_socket {
            let _ = std::fs::remove_file(path);
        }
        self.state.decision_log.report_suppressed();
        if let Some(shadow) = &self.state.shadow {
            shadow.report_suppressed();
        }
        if self.state.traces.is_some() {
            // The last spans sent (bounded): blocking, so off the runtime's threads.
            let state = self.state.clone();
            let flushed = tokio::task::spawn_blocking(move || {
                if let Some(traces) = &state.traces {
                    traces.shutdown();
                }
            });
            let _ = flushed.await;
        }
        match failure {
            Some(failure) => Err(failure),
            None => drained,
        }
    }
}

/// What a task is to shutdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TaskKind {
    /// Serves a port: shutdown waits for its in-flight requests.
    Listener,
    /// A loop that keeps the server's data current: ended once the listeners are done.
    Background,
}

/// The tasks a server runs for as long as it runs, supervised. One that ends before shutdown
/// (an error, a panic, cancelled) leaves the server unable to do part of its job: a port no
/// longer answered, or a policy that is never reloaded and so never goes stale while
/// readiness stays green. The server then turns not ready and exits non-zero, for what runs
/// it (Kubernetes, systemd) to start a fresh process; restarting the task in place was not
/// chosen, because a panic may have left the state it shares half-updated, and a task that
/// failed once would likely fail again unseen.
#[derive(Debug, Default)]
struct Tasks {
    set: tokio::task::JoinSet<anyhow::Result<()>>,
    /// The tasks still running: a handle, a name, and what the task is to shutdown.
    running: Vec<(tokio::task::AbortHandle, &'static str, TaskKind)>,
}

impl Tasks {
    fn spawn(
        &mut self,
        name: &'static str,
        kind: TaskKind,
        task: impl Future<Output = anyhow::Result<()>> + Send + 'static,
    ) {
        let handle = self.set.spawn(task);
        self.running.push((handle, name, kind));
    }

    /// Waits for a task to end, and says which and how. Before shutdown any ending is a
    /// failure: every task runs until it is told to stop.
    async fn first_to_end(&mut self) -> anyhow::Error {
        let Some(joined) = self.set.join_next_with_id().await else {
            return anyhow::anyhow!("the server has no tasks");
        };
        let (name, how) = self.ended(joined);
        let how = how.err().unwrap_or_else(|| "stopped".into());
        anyhow::anyhow!("the {name} task {how}")
    }

    /// After shutdown was signalled: waits for the listeners to finish their in-flight
    /// requests, then ends the background tasks. The first task that failed meanwhile, if any.
    async fn drain(&mut self) -> anyhow::Result<()> {
        let mut result = Ok(());
        while self
            .running
            .iter()
            .any(|(_, _, kind)| *kind == TaskKind::Listener)
            && let Some(joined) = self.set.join_next_with_id().await
        {
            if let (name, Err(how)) = self.ended(joined)
                && result.is_ok()
            {
                result = Err(anyhow::anyhow!("the {name} task {how}"));
            }
        }
        self.set.shutdown().await;
        result
    }

    /// Which task ended, and how, if not with `Ok`.
    fn ended(
        &mut self,
        joined: Result<(tokio::task::Id, anyhow::Result<()>), tokio::task::JoinError>,
    ) -> (&'static str, Result<(), String>) {
        let (id, how) = match joined {
            Ok((id, result)) => (id, result.map_err(|e| format!("failed: {e:#}"))),
            Err(e) if e.is_panic() => {
                let id = e.id();
                let payload = e.into_panic();
                let message = payload
                    .downcast_ref::<&str>()
                    .copied()
                    .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
                    .unwrap_or("(no message)");
                (id, Err(format!("panicked: {message}")))
            }
            Err(e) => (e.id(), Err("was cancelled".into())),
        };
        let index = self
            .running
            .iter()
            .position(|(handle, ..)| handle.id() == id);
        let name = index.map_or("(unknown)", |i| self.running.swap_remove(i).1);
        (name, how)
    }
}

/// The PDP listener's face on `listener`, until shutdown.
fn pdp<L: http::Listener>(
    listener: L,
    state: &Arc<State>,
    shutdown: &watch::Receiver<bool>,
) -> impl Future<Output = anyhow::Result<()>> + use<L> {
    http::serve(listener, state.clone(), shutdown.clone(), http::Face::Pdp)
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
) -> anyhow::Result<()> {
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
            _ = shutdown.changed() => return Ok(()),
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

/// The dry-run policy's reload loop: [`reload_loop`]'s schedule (the refresh interval, and
/// soon after a shadow policy file changes), without staleness: the shadow answers nothing.
async fn shadow_reload_loop(
    config: Config,
    mut sources: Sources,
    state: Arc<State>,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let Some(shadow) = &state.shadow else {
        return Ok(());
    };
    let interval = Duration::from_secs(config.auth.policy_data_refresh_interval.max(1));
    let changed = Arc::new(tokio::sync::Notify::new());
    let _watcher = sources::watch_files(&sources.files(), changed.clone());
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = changed.notified() => tokio::time::sleep(FILE_EVENT_SETTLE).await,
            _ = shutdown.changed() => return Ok(()),
        }
        refresh_shadow(&mut sources, shadow, &state.metrics).await;
    }
}

/// Refreshes the dry-run policy's sources and installs what compiles. A failure keeps the
/// last good shadow policy (or none): it is logged and counted, and changes no answer.
async fn refresh_shadow(sources: &mut Sources, shadow: &shadow::Shadow, metrics: &Metrics) {
    match sources.refresh().await {
        Refresh::Compiled(policy, _) => shadow.install(*policy, metrics),
        Refresh::Unchanged => {}
        Refresh::Failed(e) => {
            tracing::error!(error = %e, "shadow policy load failed; keeping the last good shadow policy");
            metrics.shadow_policy_load_failed();
        }
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

pub(crate) use nmp_authz_core::answer::detail_body;

#[cfg(test)]
mod tests {
    use super::*;

    impl Tasks {
        /// Cancels the task called `name`, as an abort or a runtime would end it.
        fn kill(&self, name: &str) {
            let (handle, ..) = self.running.iter().find(|(_, n, _)| *n == name).unwrap();
            handle.abort();
        }
    }

    /// The quickstart server on free ports, with the PDP listener too.
    async fn start() -> Running {
        let mut config = crate::config::load(None, []).unwrap();
        config.server.grpc_addr = "127.0.0.1:0".parse().unwrap();
        config.server.http_addr = "127.0.0.1:0".parse().unwrap();
        config.pdp.addr = Some("127.0.0.1:0".parse().unwrap());
        Running::start(config).await.unwrap()
    }

    async fn ready_status(http: std::net::SocketAddr) -> Result<u16, String> {
        let url = format!("http://{http}/health/ready");
        crate::fetch::HttpClient::default()
            .get(&url, &[], 1024, Duration::from_secs(10))
            .await
            .map(|fetched| fetched.status.as_u16())
            .map_err(|e| e.reason)
    }

    /// Serves until a task ends (never on a signal): the error, bounded.
    async fn serve_until_a_task_ends(running: Running) -> anyhow::Error {
        let served = tokio::time::timeout(
            Duration::from_secs(30),
            running.serve(std::future::pending()),
        );
        served
            .await
            .expect("serve returns once a task has ended")
            .expect_err("a task that ended is an error")
    }

    /// Whichever task is killed (the policy reload, the key refresh, a listener), the server
    /// turns not ready, closes its ports and returns an error naming the task, which `main`
    /// turns into a non-zero exit.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_killed_task_turns_the_server_not_ready_and_ends_it() {
        for task in [
            "policy reload",
            "signing keys refresh",
            "gRPC listener",
            "HTTP listener",
            "PDP listener",
        ] {
            let running = start().await;
            let (state, grpc, http) = (running.state.clone(), running.grpc_addr, running.http_addr);
            assert!(state.ready());
            assert_eq!(ready_status(http).await, Ok(200));
            running.tasks.kill(task);
            let error = serve_until_a_task_ends(running).await;
            assert_eq!(error.to_string(), format!("the {task} task was cancelled"));
            assert!(!state.ready(), "{task}");
            for port in [grpc, http] {
                assert!(
                    tokio::net::TcpStream::connect(port).await.is_err(),
                    "{task}: {port} still open"
                );
            }
        }
    }

    /// A task that panics or fails is reported with why.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_task_that_panics_or_fails_ends_the_server_with_the_reason() {
        let mut running = start().await;
        let state = running.state.clone();
        running
            .tasks
            .spawn("doomed", TaskKind::Background, async { panic!("boom") });
        let error = serve_until_a_task_ends(running).await;
        assert_eq!(error.to_string(), "the doomed task panicked: boom");
        assert!(!state.ready());

        let mut running = start().await;
        running.tasks.spawn("failing", TaskKind::Listener, async {
            Err(anyhow::anyhow!("port gone"))
        });
        let error = serve_until_a_task_ends(running).await;
        assert_eq!(error.to_string(), "the failing task failed: port gone");
    }

    /// A shutdown request is not a failure: every task is told to stop and none is reported.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_requested_shutdown_ends_every_task_without_error() {
        let running = start().await;
        let (state, http) = (running.state.clone(), running.http_addr);
        running.serve(std::future::ready(())).await.unwrap();
        assert!(!state.ready());
        assert!(tokio::net::TcpStream::connect(http).await.is_err());
    }
}
