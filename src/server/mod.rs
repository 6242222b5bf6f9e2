//! The server's faces: ext_authz and PDP over gRPC, health and metrics over HTTP, and the
//! policy reload loop that feeds them.

pub mod check;
pub mod grpc;
pub mod http;

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use tokio::sync::watch;

use crate::config::Config;
use std::collections::HashMap;

use envoy_types::pb::google::protobuf::Struct;

use crate::identity::jwks::KeyFetcher;
use crate::identity::signed::{IssuerKeys, TokenVerifier};
use crate::identity::{self, Identity, IdentityError, IdentitySettings};
use crate::policy::CompiledPolicy;
use crate::sources;
use crate::telemetry::Metrics;

/// How long a request waits for an issuer's keys to be refetched when its token names a key
/// they lack (a rotation). Envoy's ext_authz timeout must be longer (the companion config's is).
const UNKNOWN_KEY_WAIT: Duration = Duration::from_secs(1);

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
        }
    }

    /// Who is calling. A token signed with a key its issuer does not publish yet triggers
    /// one (rate-limited, shared) refetch of that issuer's keys before it is refused.
    pub async fn identify(
        &self,
        headers: &HashMap<String, String>,
        metadata: Option<&Struct>,
    ) -> Result<Option<Identity>, IdentityError> {
        let verifier = self.keys.verifier();
        match identity::identify(
            &self.identity,
            verifier,
            headers,
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
                    headers,
                    metadata,
                    identity::unix_now(),
                )
            }
            other => other,
        }
    }

    /// Ready when a policy with endpoints is loaded (or authorization is off).
    pub fn ready(&self) -> bool {
        !self.auth_enabled
            || self
                .policy
                .load()
                .as_ref()
                .is_some_and(|p| p.endpoint_count() > 0)
    }
}

/// Runs both listeners until SIGINT/SIGTERM. The initial policy must load: a server that
/// starts without its policy would only ever answer 503.
pub async fn run(config: Config) -> anyhow::Result<()> {
    // Installed before the listeners exist, so a SIGTERM that arrives as soon as the server
    // says it is listening is a graceful shutdown, not a kill.
    let shutdown_requested = shutdown_signal()?;
    let policy = sources::load(&config)?;
    tracing::info!(
        revision = policy.revision(),
        endpoints = policy.endpoint_count(),
        roles = policy.role_count(),
        bindings = policy.binding_count(),
        "policy loaded"
    );
    let state = Arc::new(State::new(&config, Some(policy)));
    let (shutdown_tx, shutdown_rx) = watch::channel(false);

    let grpc_listener = tokio::net::TcpListener::bind(config.server.grpc_addr).await?;
    let http_listener = tokio::net::TcpListener::bind(config.server.http_addr).await?;
    tracing::info!(
        grpc = %grpc_listener.local_addr()?,
        http = %http_listener.local_addr()?,
        "listening"
    );

    let reload = tokio::spawn(reload_loop(
        config.clone(),
        state.clone(),
        shutdown_rx.clone(),
    ));
    let keys = tokio::spawn(state.keys.clone().run(shutdown_rx.clone()));
    let grpc = tokio::spawn(grpc::serve(
        grpc_listener,
        state.clone(),
        shutdown_rx.clone(),
    ));
    let http = tokio::spawn(http::serve(http_listener, state.clone(), shutdown_rx));

    shutdown_requested.await;
    tracing::info!("shutting down: finishing in-flight requests");
    let _ = shutdown_tx.send(true);
    grpc.await??;
    http.await??;
    reload.abort();
    keys.abort();
    Ok(())
}

/// Re-reads the sources every refresh interval and swaps in what compiles; a failed load
/// keeps the last good policy and says why.
async fn reload_loop(config: Config, state: Arc<State>, mut shutdown: watch::Receiver<bool>) {
    let interval = Duration::from_secs(config.auth.policy_data_refresh_interval.max(1));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.changed() => return,
        }
        let loaded = {
            let config = config.clone();
            tokio::task::spawn_blocking(move || sources::load(&config)).await
        };
        match loaded {
            Ok(Ok(policy)) => {
                let current = state.policy.load();
                if current
                    .as_ref()
                    .is_some_and(|p| p.revision() == policy.revision())
                {
                    continue;
                }
                tracing::info!(revision = policy.revision(), "policy reloaded");
                state.policy.store(Some(Arc::new(policy)));
                state.metrics.policy_loaded();
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "policy reload failed; keeping the last good policy");
                state.metrics.policy_load_failed();
            }
            Err(e) => tracing::error!(error = %e, "policy reload task failed"),
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
