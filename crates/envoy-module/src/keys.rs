//! Signed bearer tokens in the module: the server's verifier ([`nmp_authz_tokens`]), with each
//! trusted issuer's keys fetched on a thread of the module's own (discovery, or the configured
//! `auth.oidc.jwks_uri` for `issuer`), with the server's bounds, refresh interval and retry
//! after a failure ([`nmp_authz_tokens::fetching`]).
//!
//! Request hooks never wait on I/O. A token whose key is not (yet) known is refused there and
//! then (401), and wakes the thread to refetch its issuer's keys, at most once per issuer per
//! [`REFETCH_INTERVAL`]; the server instead holds the request up to a second for that refetch.
//! Keys already fetched keep working while a provider is unreachable.

use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nmp_authz_core::config::Config;
use nmp_authz_tokens::fetching::{
    FETCH_TIMEOUT, MAX_BODY_BYTES, REFETCH_INTERVAL, discovery_url, jwks_uri_from_discovery,
    keys_from_jwks, next_refresh,
};
use nmp_authz_tokens::{IssuerKeys, TokenVerifier};

use crate::policy::{Log, Severity};

/// Unknown-key wake-ups waiting for the thread; more are dropped (the thread would coalesce
/// them anyway), so a flood of such tokens costs the hooks no allocation growth or waiting.
const WAKE_QUEUE: usize = 64;

/// A verifier and the thread that keeps its keys current. Dropping it stops the thread and
/// waits for it (Envoy may unload the module once its configurations are gone).
#[derive(Debug)]
pub struct Keys {
    verifier: Arc<TokenVerifier>,
    wake: Option<SyncSender<String>>,
    thread: Option<JoinHandle<()>>,
}

impl Keys {
    /// Fetches every issuer's keys once (on the calling thread: Envoy's main thread while it
    /// loads the configuration, each fetch bounded by [`FETCH_TIMEOUT`]), then keeps them fresh
    /// every `discovery_cache_ttl` on a thread. A provider that cannot be reached now is no
    /// configuration error, as for the server: its tokens are 401 until its keys are fetched.
    pub fn start(config: &Config, log: Log) -> Result<Self, String> {
        let verifier = Arc::new(TokenVerifier::for_config(&config.auth.oidc));
        let issuers: Vec<Arc<IssuerKeys>> = verifier.issuers().cloned().collect();
        let http = crate::http::agent(FETCH_TIMEOUT, log);
        let ttl = Duration::from_secs(config.auth.oidc.discovery_cache_ttl);
        let mut schedule = Schedule::new(issuers.len(), ttl, Instant::now());
        let fetch = {
            let verifier = verifier.clone();
            move |i: usize| fetch_logged(&http, &verifier, &issuers[i], log)
        };
        schedule.run_due(Instant::now(), &fetch);
        let (wake, woken) = mpsc::sync_channel::<String>(WAKE_QUEUE);
        let names: Vec<String> = verifier.issuers().map(|i| i.issuer.clone()).collect();
        let thread = std::thread::Builder::new()
            .name("nmp-authz-keys".into())
            .spawn(move || keep_fresh(schedule, &names, &woken, &fetch))
            .map_err(|e| format!("cannot start the signing keys thread: {e}"))?;
        Ok(Self {
            verifier,
            wake: Some(wake),
            thread: Some(thread),
        })
    }

    pub fn verifier(&self) -> &Arc<TokenVerifier> {
        &self.verifier
    }

    /// A token named a key `issuer` does not publish: asks the thread for a refetch, without
    /// waiting for it (or for room in the queue).
    pub fn unknown_key(&self, issuer: &str) {
        if let Some(wake) = &self.wake {
            // Full: wake-ups are queued already; disconnected: never (the thread outlives us).
            let _ = wake.try_send(issuer.to_owned());
        }
    }
}

impl Drop for Keys {
    fn drop(&mut self) {
        drop(self.wake.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The thread's loop: fetch what is due, then sleep until the next fetch is due or a token
/// names an unknown key; return when the [`Keys`] is dropped.
fn keep_fresh(
    mut schedule: Schedule,
    names: &[String],
    woken: &Receiver<String>,
    fetch: &dyn Fn(usize) -> bool,
) {
    loop {
        let wait = schedule
            .next_due()
            .map_or(Duration::from_secs(3600), |due| {
                due.saturating_duration_since(Instant::now())
            });
        match woken.recv_timeout(wait) {
            Ok(issuer) => {
                // Everything queued meanwhile, in one go.
                for issuer in std::iter::once(issuer).chain(woken.try_iter()) {
                    if let Some(i) = names.iter().position(|n| *n == issuer) {
                        schedule.unknown_key(i, Instant::now());
                    }
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        schedule.run_due(Instant::now(), fetch);
    }
}

/// One fetch of `issuer`'s keys, logged; a panic in it counts as a failed fetch (the keys in
/// use stay), never as the end of fetching.
fn fetch_logged(
    http: &ureq::Agent,
    verifier: &TokenVerifier,
    issuer: &IssuerKeys,
    log: Log,
) -> bool {
    let fetched = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| fetch(http, issuer)))
        .unwrap_or_else(|_| Err("the fetch panicked".into()));
    match fetched {
        Ok((count, withdrawn)) => {
            if withdrawn {
                // A key was withdrawn: tokens it signed must not live on in the cache.
                verifier.forget_verified();
            }
            log(
                Severity::Info,
                &format!(
                    "nmp-authz: signing keys of {} fetched: {count} usable",
                    issuer.issuer
                ),
            );
            true
        }
        Err(e) => {
            log(
                Severity::Error,
                &format!(
                    "nmp-authz: signing keys of {} not fetched, keeping the keys already \
                     fetched: {e}",
                    issuer.issuer
                ),
            );
            false
        }
    }
}

/// Fetches and installs `issuer`'s keys: how many are usable, and whether one in use is gone.
fn fetch(http: &ureq::Agent, issuer: &IssuerKeys) -> Result<(usize, bool), String> {
    let get = |url: &str| match crate::http::get(http, url, &[], MAX_BODY_BYTES as u64)? {
        Some(fetched) => Ok(fetched.body),
        None => Err(format!("{url}: HTTP 304 to a request without a validator")),
    };
    let jwks_uri = match &issuer.jwks_uri {
        Some(uri) => uri.clone(),
        None => {
            let url = discovery_url(&issuer.issuer);
            jwks_uri_from_discovery(&issuer.issuer, &get(&url)?)
                .map_err(|e| format!("{url}: {e}"))?
        }
    };
    let keys = keys_from_jwks(&get(&jwks_uri)?).map_err(|e| format!("{jwks_uri}: {e}"))?;
    let count = keys.len();
    Ok((count, issuer.replace(keys)))
}

/// When each issuer's keys are next fetched: every `ttl` after a success, sooner after a
/// failure, and now when a token names an unknown key (at most once per
/// [`REFETCH_INTERVAL`] per issuer). Pure: the caller passes the time.
#[derive(Debug)]
pub(crate) struct Schedule {
    ttl: Duration,
    issuers: Vec<Slot>,
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    due: Instant,
    last_for_unknown_key: Option<Instant>,
}

impl Schedule {
    /// Every issuer due at `now`.
    pub(crate) fn new(count: usize, ttl: Duration, now: Instant) -> Self {
        let slot = Slot {
            due: now,
            last_for_unknown_key: None,
        };
        Self {
            ttl,
            issuers: vec![slot; count],
        }
    }

    /// A token named a key issuer `i` does not publish: due now, unless such a fetch ran
    /// within [`REFETCH_INTERVAL`].
    pub(crate) fn unknown_key(&mut self, i: usize, now: Instant) {
        let slot = &mut self.issuers[i];
        let recent = slot
            .last_for_unknown_key
            .is_some_and(|at| now.saturating_duration_since(at) < REFETCH_INTERVAL);
        if !recent {
            slot.last_for_unknown_key = Some(now);
            slot.due = slot.due.min(now);
        }
    }

    /// The issuers due at `now`.
    pub(crate) fn due(&self, now: Instant) -> Vec<usize> {
        (0..self.issuers.len())
            .filter(|&i| self.issuers[i].due <= now)
            .collect()
    }

    /// Issuer `i` was fetched at `now`, `ok` or not.
    pub(crate) fn fetched(&mut self, i: usize, ok: bool, now: Instant) {
        self.issuers[i].due = now + next_refresh(ok, self.ttl);
    }

    /// When the next fetch is due (`None`: no issuers).
    pub(crate) fn next_due(&self) -> Option<Instant> {
        self.issuers.iter().map(|s| s.due).min()
    }

    /// Fetches every issuer due at `now` with `fetch` (true: fetched).
    fn run_due(&mut self, now: Instant, fetch: &dyn Fn(usize) -> bool) {
        for i in self.due(now) {
            let ok = fetch(i);
            self.fetched(i, ok, Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nmp_authz_tokens::fetching::RETRY_AFTER_FAILURE;

    const TTL: Duration = Duration::from_secs(300);

    #[test]
    fn everything_is_due_at_start_then_after_the_ttl_or_sooner_after_a_failure() {
        let t0 = Instant::now();
        let mut s = Schedule::new(2, TTL, t0);
        assert_eq!(s.due(t0), [0, 1]);
        s.fetched(0, true, t0);
        s.fetched(1, false, t0);
        assert!(s.due(t0).is_empty());
        assert_eq!(s.next_due(), Some(t0 + RETRY_AFTER_FAILURE));
        assert_eq!(s.due(t0 + RETRY_AFTER_FAILURE), [1]);
        s.fetched(1, true, t0 + RETRY_AFTER_FAILURE);
        assert_eq!(s.due(t0 + TTL), [0]);
        assert_eq!(Schedule::new(0, TTL, t0).next_due(), None);
    }

    #[test]
    fn an_unknown_key_makes_its_issuer_due_at_most_once_per_refetch_interval() {
        let t0 = Instant::now();
        let mut s = Schedule::new(2, TTL, t0);
        s.fetched(0, true, t0);
        s.fetched(1, true, t0);
        let t1 = t0 + Duration::from_secs(1);
        s.unknown_key(1, t1);
        assert_eq!(s.due(t1), [1], "only the issuer that was asked for");
        s.fetched(1, true, t1);
        let t2 = t1 + REFETCH_INTERVAL - Duration::from_millis(1);
        s.unknown_key(1, t2);
        assert!(s.due(t2).is_empty(), "too soon after the last such fetch");
        let t3 = t1 + REFETCH_INTERVAL;
        s.unknown_key(1, t3);
        assert_eq!(s.due(t3), [1]);
        // A wake-up never postpones a fetch already due earlier.
        let mut s = Schedule::new(1, TTL, t0);
        s.unknown_key(0, t1);
        assert_eq!(s.due(t0), [0]);
    }

    #[test]
    fn run_due_fetches_what_is_due_and_reschedules_it() {
        let t0 = Instant::now();
        let mut s = Schedule::new(2, TTL, t0);
        let calls = std::cell::RefCell::new(Vec::new());
        s.run_due(t0, &|i| {
            calls.borrow_mut().push(i);
            i == 0
        });
        assert_eq!(*calls.borrow(), [0, 1]);
        let next = s.next_due().unwrap();
        assert!(
            next >= t0 + RETRY_AFTER_FAILURE && next < t0 + TTL,
            "{next:?}"
        );
    }

    fn quiet(_: Severity, _: &str) {}

    #[test]
    fn keys_without_oidc_trust_nobody_and_the_thread_stops_when_dropped() {
        let config = nmp_authz_core::config::parse("", "test", []).unwrap();
        let keys = Keys::start(&config, quiet).unwrap();
        assert_eq!(keys.verifier().issuers().count(), 0);
        keys.unknown_key("https://idp.example.com");
        drop(keys); // joins the thread: a test that hangs here has a thread that never stops
    }

    #[test]
    fn an_unreachable_provider_is_no_configuration_error() {
        // Port 9 on loopback: nothing listens (connection refused at once).
        let config = nmp_authz_core::config::parse(
            "auth:\n  oidc: {enabled: true, issuer: \"http://127.0.0.1:9\"}\n",
            "test",
            [],
        )
        .unwrap();
        let keys = Keys::start(&config, quiet).unwrap();
        let issuer = keys.verifier().issuer("http://127.0.0.1:9").unwrap();
        assert!(issuer.keys().is_empty());
    }
}
