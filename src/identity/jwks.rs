//! Fetching issuers' signing keys: `jwks_uri`, or the one named by the issuer's OpenID
//! discovery document, over HTTP(S) (rustls, the system's roots). Keys are refreshed every
//! `discovery_cache_ttl`; a token with an unknown `kid` triggers at most one refetch per issuer
//! at a time and at most one per [`REFETCH_INTERVAL`]. While a provider is unreachable the
//! keys already fetched keep working; failures are logged and counted.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use nmp_authz_tokens::fetching::{
    FETCH_TIMEOUT, MAX_BODY_BYTES, REFETCH_INTERVAL, discovery_url, jwks_uri_from_discovery,
    keys_from_jwks, next_refresh,
};
use tokio::sync::{Mutex, watch};

use super::signed::{IssuerKeys, TokenVerifier};
use crate::fetch::{FetchError, HttpClient};
use crate::telemetry::Metrics;

/// An issuer's fetch history.
#[derive(Debug, Clone, Copy, Default)]
struct FetchLog {
    /// When the last fetch (of any kind) finished, and whether it succeeded.
    last: Option<(Instant, bool)>,
    /// When an unknown `kid` last caused a fetch.
    last_for_unknown_key: Option<Instant>,
}

/// Keeps every trusted issuer's keys fresh.
pub struct KeyFetcher {
    verifier: Arc<TokenVerifier>,
    client: HttpClient,
    /// One lock per issuer: holding it is being the one fetch in flight.
    fetch_log: HashMap<String, Arc<Mutex<FetchLog>>>,
    cache_ttl: Duration,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for KeyFetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyFetcher")
            .field("verifier", &self.verifier)
            .finish_non_exhaustive()
    }
}

impl KeyFetcher {
    pub fn new(verifier: Arc<TokenVerifier>, cache_ttl: Duration, metrics: Arc<Metrics>) -> Self {
        let fetch_log = verifier
            .issuers()
            .map(|i| (i.issuer.clone(), Arc::default()))
            .collect();
        Self {
            verifier,
            client: HttpClient::default(),
            fetch_log,
            cache_ttl,
            metrics,
        }
    }

    pub fn verifier(&self) -> &Arc<TokenVerifier> {
        &self.verifier
    }

    /// Fetches every issuer's keys now, then keeps them fresh until `shutdown`. An issuer's
    /// loop that panics makes this panic too, for the server's supervision to see.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let issuers: Vec<String> = self.fetch_log.keys().cloned().collect();
        let mut refreshers = tokio::task::JoinSet::new();
        for issuer in issuers {
            let fetcher = self.clone();
            let mut shutdown = shutdown.clone();
            refreshers.spawn(async move {
                loop {
                    let ok = fetcher.fetch_serialized(&issuer, false).await;
                    let wait = next_refresh(ok, fetcher.cache_ttl);
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = shutdown.wait_for(|stop| *stop) => return,
                    }
                }
            });
        }
        loop {
            tokio::select! {
                _ = shutdown.wait_for(|stop| *stop) => return,
                Some(Err(ended)) = refreshers.join_next() => {
                    if ended.is_panic() {
                        std::panic::resume_unwind(ended.into_panic());
                    }
                }
            }
        }
    }

    /// Called when a token names a key `issuer` does not publish: refetches unless a fetch
    /// ran within [`REFETCH_INTERVAL`], joining one already in flight. True when the issuer's
    /// keys are fresh from a successful fetch, so the token is worth checking again.
    pub(crate) async fn refetch_for_unknown_key(self: &Arc<Self>, issuer: &str) -> bool {
        let fetcher = self.clone();
        let issuer = issuer.to_string();
        // The fetch runs in its own task, so a caller that stops waiting cannot cancel it
        // halfway for the callers behind it.
        let task = tokio::spawn(async move { fetcher.fetch_serialized(&issuer, true).await });
        task.await.unwrap_or(false)
    }

    /// Fetches `issuer`'s keys. A caller that finds a fetch in flight waits for it and takes
    /// its outcome instead of fetching again; `for_unknown_key` fetches also skip the fetch
    /// (reporting the last outcome) when one ran for that reason within [`REFETCH_INTERVAL`].
    async fn fetch_serialized(&self, issuer: &str, for_unknown_key: bool) -> bool {
        let (Some(lock), Some(keys)) = (self.fetch_log.get(issuer), self.verifier.issuer(issuer))
        else {
            return false;
        };
        let asked = Instant::now();
        let mut log = lock.lock().await;
        if let Some((at, ok)) = log.last
            && at >= asked
        {
            return ok;
        }
        if for_unknown_key {
            if let (Some(prev), Some((_, ok))) = (log.last_for_unknown_key, log.last)
                && prev.elapsed() < REFETCH_INTERVAL
            {
                return ok;
            }
            log.last_for_unknown_key = Some(asked);
        }
        let result = self.fetch(keys).await;
        let ok = result.is_ok();
        log.last = Some((Instant::now(), ok));
        self.metrics.jwks_fetched(issuer, ok);
        match result {
            Ok(count) => tracing::info!(issuer, keys = count, "signing keys fetched"),
            Err(e) => {
                tracing::warn!(issuer, error = %e, "signing keys fetch failed; keeping the keys already fetched")
            }
        }
        ok
    }

    async fn fetch(&self, issuer: &IssuerKeys) -> Result<usize, FetchError> {
        let jwks_uri = match &issuer.jwks_uri {
            Some(uri) => uri.clone(),
            None => self.discover_jwks_uri(&issuer.issuer).await?,
        };
        let keys = keys_from_jwks(&self.get(&jwks_uri).await?).map_err(|reason| FetchError {
            url: jwks_uri.clone(),
            reason,
        })?;
        let count = keys.len();
        if issuer.replace(keys) {
            // A key was withdrawn: tokens it signed must not live on in the cache.
            self.verifier.forget_verified();
        }
        Ok(count)
    }

    async fn discover_jwks_uri(&self, issuer: &str) -> Result<String, FetchError> {
        let url = discovery_url(issuer);
        let body = self.get(&url).await?;
        jwks_uri_from_discovery(issuer, &body).map_err(|reason| FetchError { url, reason })
    }

    async fn get(&self, url: &str) -> Result<Bytes, FetchError> {
        Ok(self
            .client
            .get(url, &[], MAX_BODY_BYTES, FETCH_TIMEOUT)
            .await?
            .body)
    }
}
