//! The module's policy: compiled from the configured sources (the built-in catalog, policy
//! files, NMP's OPA bundles over http or https) into one [`CompiledPolicy`], swapped whole (arc-swap) so that request hooks on every
//! Envoy worker read it without waiting, and refreshed on a background thread of the module's
//! own every `auth.policy_data_refresh_interval` seconds. A refresh that fails keeps the last
//! good policy; after `policy.max_staleness_seconds` without a good one, [`PolicyCell::stale`]
//! turns every decision into a 503.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use nmp_authz_core::config::{Config, SourceConfig};
use nmp_authz_core::policy::source::parse_bundle;
use nmp_authz_core::policy::{BindingDefaults, CompiledPolicy, Format, SourceDocument, builtin};

/// Bound on a bundle download (compressed), as the server's.
const MAX_BUNDLE_BYTES: u64 = 32 * 1024 * 1024;
/// Bound on one bundle request (less when the data would go stale sooner).
const BUNDLE_TIMEOUT: Duration = Duration::from_secs(20);

/// What the request hooks read: the policy in use and whether it may still be used.
#[derive(Debug, Default)]
pub struct PolicyCell {
    pub policy: ArcSwapOption<CompiledPolicy>,
    /// No good refresh for longer than `max_staleness_seconds`.
    pub stale: AtomicBool,
}

/// Where the module says what happens to its policy (Envoy's log, through the ABI).
pub type Log = fn(Severity, &str);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Info,
    Error,
}

/// The configured sources and what was last read from them.
#[derive(Debug)]
pub(crate) struct Sources {
    sources: Vec<Source>,
    /// Blocking HTTP for bundles (this runs on the refresh thread only).
    http: ureq::Agent,
    defaults: BindingDefaults,
    /// Fingerprint of the documents behind the policy in use.
    compiled: Option<u64>,
    /// The end of the last refresh in which every source was read and the documents compiled.
    last_good: Option<Instant>,
    /// The last refresh failed for a local reason: a file or the built-in catalog, or
    /// documents that do not compile (a remote bundle's failure is not one).
    failed_locally: bool,
    max_staleness: Duration,
}

#[derive(Debug)]
struct Source {
    kind: Kind,
    /// The last document read, and a fingerprint of its bytes.
    current: Option<(SourceDocument, u64)>,
}

#[derive(Debug)]
enum Kind {
    Builtin,
    File(PathBuf),
    /// NMP's `opa-bundle.tar.gz`, polled with the ETag of the last good download.
    Bundle {
        url: String,
        principal_id: Option<String>,
        bearer_token_file: Option<PathBuf>,
        etag: Option<String>,
    },
}

impl Sources {
    /// The sources of `config`. What the module does not do (bootstrap sources, the dry run) is
    /// refused here, so that a configuration naming it is rejected when Envoy loads it, not
    /// silently half-used.
    pub(crate) fn new(config: &Config, log: Log) -> Result<Self, String> {
        if !config.policy.bootstrap.is_empty() {
            return Err("policy.bootstrap is not supported by the Envoy module".into());
        }
        if config.policy.shadow.is_some() {
            return Err("policy.shadow (the dry run) is not supported by the Envoy module".into());
        }
        let mut sources = Vec::new();
        for source in &config.policy.sources {
            let kind = match source {
                SourceConfig::Builtin { .. } => Kind::Builtin,
                SourceConfig::File { file } => Kind::File(file.clone()),
                SourceConfig::BundleUrl {
                    bundle_url,
                    principal_id,
                    bearer_token_file,
                } => Kind::Bundle {
                    url: bundle_url.clone(),
                    principal_id: principal_id.clone(),
                    bearer_token_file: bearer_token_file.clone(),
                    etag: None,
                },
            };
            sources.push(Source {
                kind,
                current: None,
            });
        }
        let max_staleness = Duration::from_secs(config.policy.max_staleness_seconds);
        let http = crate::http::agent(BUNDLE_TIMEOUT.min(max_staleness), log);
        Ok(Self {
            sources,
            http,
            defaults: config.binding_defaults(),
            compiled: None,
            last_good: None,
            failed_locally: false,
            max_staleness,
        })
    }

    /// Reads every source and compiles when the documents changed: the new policy, `None` when
    /// nothing changed, or why a source or the compile failed (the policy in use stays).
    pub(crate) fn refresh(&mut self) -> Result<Option<CompiledPolicy>, String> {
        let mut failure = None;
        self.failed_locally = false;
        for source in &mut self.sources {
            if let Err(e) = source.read(&self.http) {
                self.failed_locally |= !matches!(source.kind, Kind::Bundle { .. });
                failure.get_or_insert(e);
            }
        }
        let documents: Option<Vec<&(SourceDocument, u64)>> =
            self.sources.iter().map(|s| s.current.as_ref()).collect();
        let compiled = match documents {
            None => None,
            Some(documents) => {
                let mut print = std::collections::hash_map::DefaultHasher::new();
                for (_, fingerprint) in &documents {
                    fingerprint.hash(&mut print);
                }
                format!("{:?}", self.defaults).hash(&mut print);
                let print = print.finish();
                if self.compiled == Some(print) {
                    None
                } else {
                    let layers: Vec<&SourceDocument> = documents.iter().map(|(d, _)| d).collect();
                    let revision = format!("{print:016x}");
                    match CompiledPolicy::build_layers(&layers, &self.defaults, revision) {
                        Ok(policy) => {
                            self.compiled = Some(print);
                            Some(policy)
                        }
                        Err(e) => {
                            self.failed_locally = true;
                            failure.get_or_insert(format!("policy does not compile: {e}"));
                            None
                        }
                    }
                }
            }
        };
        match failure {
            Some(e) => Err(e),
            None => {
                self.last_good = Some(Instant::now());
                Ok(compiled)
            }
        }
    }

    /// No good refresh within `max_staleness_seconds` (or never one).
    pub(crate) fn stale(&self) -> bool {
        self.last_good
            .is_none_or(|at| at.elapsed() > self.max_staleness)
    }
}

impl Source {
    fn read(&mut self, http: &ureq::Agent) -> Result<(), String> {
        match &mut self.kind {
            Kind::Builtin => {
                if self.current.is_none() {
                    let document = SourceDocument::from(builtin::builtin_document());
                    self.current = Some((document, 0));
                }
                Ok(())
            }
            Kind::File(path) => {
                let path: &Path = path;
                let context = |e: String| format!("policy file {}: {e}", path.display());
                let bytes = std::fs::read(path).map_err(|e| context(e.to_string()))?;
                let mut print = std::collections::hash_map::DefaultHasher::new();
                bytes.hash(&mut print);
                let print = print.finish();
                if self.current.as_ref().is_some_and(|(_, p)| *p == print) {
                    return Ok(());
                }
                let document = parse_file(path, &bytes).map_err(context)?;
                self.current = Some((document, print));
                Ok(())
            }
            Kind::Bundle {
                url,
                principal_id,
                bearer_token_file,
                etag,
            } => {
                let context = |e: String| format!("bundle {e}");
                let mut headers: Vec<(&str, String)> = Vec::new();
                // How the bundle request identifies itself, as the server's does.
                if let Some(id) = principal_id {
                    headers.push(("x-nmp-principal-id", id.clone()));
                }
                if let Some(file) = bearer_token_file {
                    let token = std::fs::read_to_string(&*file).map_err(|e| {
                        format!("bundle {url}: bearer_token_file {}: {e}", file.display())
                    })?;
                    headers.push(("authorization", format!("Bearer {}", token.trim())));
                }
                if let (Some(_), Some(tag)) = (&self.current, etag.as_deref()) {
                    headers.push(("if-none-match", tag.to_owned()));
                }
                let headers: Vec<(&str, &str)> =
                    headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
                let Some(crate::http::Fetched { body, etag: tag }) =
                    crate::http::get(http, url, &headers, MAX_BUNDLE_BYTES).map_err(context)?
                else {
                    return Ok(());
                };
                let mut print = std::collections::hash_map::DefaultHasher::new();
                body.hash(&mut print);
                let print = print.finish();
                if self.current.as_ref().is_none_or(|(_, p)| *p != print) {
                    let document = parse_bundle(&body).map_err(|e| format!("bundle {url}: {e}"))?;
                    self.current = Some((document, print));
                }
                *etag = tag;
                Ok(())
            }
        }
    }
}

fn parse_file(path: &Path, bytes: &[u8]) -> Result<SourceDocument, String> {
    let text = std::str::from_utf8(bytes).map_err(|e| format!("not UTF-8: {e}"))?;
    SourceDocument::parse(text, Format::from_path(path)).map_err(|e| e.to_string())
}

/// The background thread that keeps a [`PolicyCell`] current. Dropping it stops the thread
/// and waits for it (Envoy may unload the module once its configurations are gone).
#[derive(Debug)]
pub struct Refresher {
    stop: Option<mpsc::Sender<()>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Refresher {
    /// Loads the policy once, then refreshes it every `interval` on a thread. As for the
    /// server, a file or the built-in catalog that cannot be read now, or documents that do
    /// not compile, are a configuration error; a bundle that cannot be fetched yet is not:
    /// every request is a 503 until it loads.
    pub fn start(config: &Config, cell: Arc<PolicyCell>, log: Log) -> Result<Self, String> {
        let mut sources = Sources::new(config, log)?;
        match sources.refresh() {
            Ok(Some(policy)) => install(&cell, policy, log),
            Ok(None) => return Err("no policy data".into()),
            Err(e) if sources.failed_locally => return Err(e),
            Err(e) => log(
                Severity::Error,
                &format!("nmp-authz: no policy data yet, answering 503 until it loads: {e}"),
            ),
        }
        cell.stale.store(sources.stale(), Ordering::Relaxed);
        let interval = Duration::from_secs(config.auth.policy_data_refresh_interval.max(1));
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("nmp-authz-policy".into())
            .spawn(move || {
                loop {
                    match stopped.recv_timeout(interval) {
                        Err(RecvTimeoutError::Timeout) => {}
                        // Told to stop, or the configuration is gone.
                        Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
                    }
                    refresh_once(&mut sources, &cell, log);
                }
            })
            .map_err(|e| format!("cannot start the policy thread: {e}"))?;
        Ok(Self {
            stop: Some(stop),
            thread: Mutex::new(Some(thread)),
        })
    }
}

impl Drop for Refresher {
    fn drop(&mut self) {
        drop(self.stop.take());
        let thread = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }
}

/// One refresh; a panic in it counts as a failed refresh (the policy in use stays, and goes
/// stale in time), never as the end of refreshing.
pub(crate) fn refresh_once(sources: &mut Sources, cell: &PolicyCell, log: Log) {
    let refreshed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sources.refresh()))
        .unwrap_or_else(|_| Err("the policy refresh panicked".into()));
    match refreshed {
        Ok(Some(policy)) => install(cell, policy, log),
        Ok(None) => {}
        Err(e) => log(
            Severity::Error,
            &format!("nmp-authz: policy refresh failed, keeping the last good policy: {e}"),
        ),
    }
    let stale = sources.stale();
    if stale != cell.stale.swap(stale, Ordering::Relaxed) {
        let message = if stale {
            "nmp-authz: policy data is stale: denying every request with 503 until a refresh succeeds"
        } else {
            "nmp-authz: policy data is current again"
        };
        log(
            if stale {
                Severity::Error
            } else {
                Severity::Info
            },
            message,
        );
    }
}

fn install(cell: &PolicyCell, policy: CompiledPolicy, log: Log) {
    log(
        Severity::Info,
        &format!(
            "nmp-authz: policy loaded: revision {}, {} endpoints, {} roles, {} bindings",
            policy.revision(),
            policy.endpoint_count(),
            policy.role_count(),
            policy.binding_count()
        ),
    );
    cell.policy.store(Some(Arc::new(policy)));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quiet(_: Severity, _: &str) {}

    fn config(yaml: &str) -> Config {
        nmp_authz_core::config::parse(yaml, "test", []).expect("config")
    }

    #[test]
    fn a_changed_file_is_compiled_again_and_a_broken_one_keeps_the_last_good_policy() {
        let dir = std::env::temp_dir().join(format!("nmp-authz-module-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("policy.yaml");
        let policy = |principal: &str| {
            format!(
                "authz:\n  roles: {{Viewer: {{permissions: [models.read]}}}}\n  endpoints: \
                 {{\"/apis/models/v2/workspaces/{{workspace}}/models\": {{get: {{permissions: \
                 [models.read]}}}}}}\n  principals: {{{principal}: {{workspaces: {{ws: [Viewer]}}}}}}\n"
            )
        };
        std::fs::write(&file, policy("alice")).unwrap();
        let config = config(&format!(
            "auth: {{bootstrap_bindings: false}}\npolicy:\n  sources: [{{file: {}}}]\n",
            file.display()
        ));
        let mut sources = Sources::new(&config, quiet).unwrap();
        let cell = PolicyCell::default();
        refresh_once(&mut sources, &cell, quiet);
        let first = cell.policy.load_full().expect("loaded");
        refresh_once(&mut sources, &cell, quiet);
        assert!(
            Arc::ptr_eq(&first, &cell.policy.load_full().unwrap()),
            "unchanged: kept"
        );

        std::fs::write(&file, policy("bob")).unwrap();
        refresh_once(&mut sources, &cell, quiet);
        let second = cell.policy.load_full().unwrap();
        assert_ne!(first.revision(), second.revision());

        std::fs::write(&file, "authz: [").unwrap();
        refresh_once(&mut sources, &cell, quiet);
        assert!(Arc::ptr_eq(&second, &cell.policy.load_full().unwrap()));
        assert!(
            !cell.stale.load(Ordering::Relaxed),
            "not stale before max_staleness"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn https_bundles_are_accepted() {
        let config = config("policy:\n  sources: [{bundle_url: https://auth:8000/b.tar.gz}]\n");
        assert!(Sources::new(&config, quiet).is_ok());
    }
}
