//! Where policy data comes from: the built-in catalog, policy files and NMP's OPA bundles,
//! merged in configuration order and compiled into one policy. A refresh re-reads every source,
//! parses only what changed, and compiles only when something did; a source that fails keeps
//! its last good document, and the error is kept for readiness and metrics.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::{Config, SourceConfig};
use crate::fetch::HttpClient;
use crate::policy::{BindingDefaults, CompiledPolicy, Format, SourceDocument, builtin};
use crate::telemetry::Metrics;

/// Bound on a bundle download (compressed).
const MAX_BUNDLE_BYTES: usize = 32 * 1024 * 1024;
/// Bound on one bundle request.
const BUNDLE_TIMEOUT: Duration = Duration::from_secs(20);

/// Why a load failed: the source, and the document path or I/O error inside it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("policy source {source_name}: {message}")]
pub struct LoadError {
    pub source_name: String,
    pub message: String,
}

impl LoadError {
    fn new(source_name: &str, message: impl Into<String>) -> Self {
        Self {
            source_name: source_name.to_string(),
            message: message.into(),
        }
    }
}

/// One source's last good document and how its loads have gone.
#[derive(Debug)]
struct Source {
    config: SourceConfig,
    name: String,
    /// The last document read successfully, with a fingerprint of its bytes.
    current: Option<(Arc<SourceDocument>, u64)>,
    /// Bundles: the ETag of the last good download, for `If-None-Match`.
    etag: Option<String>,
    last_success: Option<Instant>,
    /// Set while the source fails; cleared by its next good read.
    failing_since: Option<Instant>,
    last_error: Option<String>,
    /// A `policy.bootstrap` source: used only while a main source has never loaded.
    bootstrap: bool,
}

/// What a refresh produced.
#[derive(Debug)]
pub enum Refresh {
    /// Nothing changed since the last compile (or a source is still missing).
    Unchanged,
    /// A new policy, compiled from the current documents, and how long reading, parsing and
    /// compiling took.
    Compiled(Box<CompiledPolicy>, Duration),
    /// The current documents do not compile together; the policy in use stays.
    Failed(LoadError),
}

/// The state of a source, for readiness and metrics.
#[derive(Debug, Clone)]
pub struct SourceStatus {
    pub name: String,
    /// Fetched over the network (a bundle), as opposed to read locally.
    pub remote: bool,
    pub loaded: bool,
    pub failing_for: Option<Duration>,
    pub last_error: Option<String>,
    /// A `policy.bootstrap` source.
    pub bootstrap: bool,
    /// The built-in catalog.
    pub builtin: bool,
}

/// All configured sources and what was last compiled from them.
#[derive(Debug)]
pub struct Sources {
    sources: Vec<Source>,
    defaults: BindingDefaults,
    client: HttpClient,
    /// Fingerprint of the documents behind the last compile attempt.
    compiled: Option<u64>,
    /// When the documents last compiled, and since when they have not (with why).
    last_compiled: Option<Instant>,
    compile_failure: Option<(Instant, LoadError)>,
    /// `policy.max_staleness_seconds`: a read that would outlast it is given up (see `refresh`).
    max_staleness: Duration,
    metrics: Arc<Metrics>,
}

impl Sources {
    pub fn new(config: &Config, metrics: Arc<Metrics>) -> Self {
        Self::of(
            config,
            &config.policy.sources,
            &config.policy.bootstrap,
            "",
            metrics,
        )
    }

    /// The dry-run policy's sources (`policy.shadow.sources`), if configured. Their names
    /// (in metrics and logs) end in ` (shadow)`.
    pub fn shadow(config: &Config, metrics: Arc<Metrics>) -> Option<Self> {
        let shadow = config.policy.shadow.as_ref()?;
        Some(Self::of(config, &shadow.sources, &[], " (shadow)", metrics))
    }

    fn of(
        config: &Config,
        main: &[SourceConfig],
        bootstrap: &[SourceConfig],
        suffix: &str,
        metrics: Arc<Metrics>,
    ) -> Self {
        let main = main.iter().map(|c| (c, false));
        let bootstrap = bootstrap.iter().map(|c| (c, true));
        let sources = main
            .chain(bootstrap)
            .map(|(config, bootstrap)| Source {
                name: match config {
                    SourceConfig::Builtin { .. } => "builtin".into(),
                    SourceConfig::File { file } => file.display().to_string(),
                    SourceConfig::BundleUrl { bundle_url, .. } => bundle_url.clone(),
                } + if bootstrap { " (bootstrap)" } else { suffix },
                config: config.clone(),
                current: None,
                etag: None,
                last_success: None,
                failing_since: None,
                last_error: None,
                bootstrap,
            })
            .collect();
        Self {
            sources,
            defaults: config.binding_defaults(),
            client: HttpClient::default(),
            compiled: None,
            last_compiled: None,
            compile_failure: None,
            max_staleness: Duration::from_secs(config.policy.max_staleness_seconds),
            metrics,
        }
    }

    /// The policy files, for watching.
    pub fn files(&self) -> Vec<PathBuf> {
        self.sources
            .iter()
            .filter_map(|s| match &s.config {
                SourceConfig::File { file } => Some(file.clone()),
                _ => None,
            })
            .collect()
    }

    /// Re-reads every source and compiles when the documents changed. Reading, fingerprinting,
    /// parsing and compiling run on blocking threads, so request handling never waits on them.
    pub async fn refresh(&mut self) -> Refresh {
        let started = Instant::now();
        for index in 0..self.sources.len() {
            // A source that answers nothing (a bundle server that accepts and hangs) must not
            // hold off staleness until its fetch's own time limit: the read is given up when
            // the source's data would go stale, so the failure counts toward staleness then.
            let result = match self.time_until_stale(index) {
                Some(left) => tokio::time::timeout(left, self.read(index))
                    .await
                    .unwrap_or_else(|_| {
                        Err(format!(
                            "no answer within {left:?}, when its data went stale"
                        ))
                    }),
                None => self.read(index).await,
            };
            let source = &mut self.sources[index];
            self.metrics.source_read(&source.name, result.is_ok());
            match result {
                Ok(Some(read)) => {
                    source.current = Some(read);
                    source.mark_success();
                }
                Ok(None) => source.mark_success(),
                Err(message) => {
                    tracing::error!(source = %source.name, error = %message, "policy source failed; keeping its last good data");
                    source.failing_since.get_or_insert_with(Instant::now);
                    source.last_error = Some(message);
                }
            }
        }
        // Every main source, or while one has never loaded, the bootstrap sources (if any).
        let bootstrapping = self.bootstrapping();
        let Some(documents) = self
            .sources
            .iter()
            .filter(|s| s.bootstrap == bootstrapping)
            .map(|s| Some((s.name.clone(), s.current.clone()?)))
            .collect::<Option<Vec<_>>>()
            .filter(|documents| !documents.is_empty())
        else {
            return Refresh::Unchanged;
        };
        let (names, documents): (Vec<String>, Vec<_>) = documents.into_iter().unzip();
        let mut fingerprint = Fnv64::default();
        fingerprint.update(&[u8::from(bootstrapping)]);
        for (_, print) in &documents {
            fingerprint.update(&print.to_le_bytes());
        }
        fingerprint.update(format!("{:?}", self.defaults).as_bytes());
        if self.compiled == Some(fingerprint.0) {
            return Refresh::Unchanged;
        }
        self.compiled = Some(fingerprint.0);
        let defaults = self.defaults.clone();
        let revision = format!("{:016x}", fingerprint.0);
        let compiled =
            on_own_thread(move || compile(&names, &documents, &defaults, revision)).await;
        let failure = match compiled {
            Ok(Ok(policy)) => {
                self.last_compiled = Some(Instant::now());
                self.compile_failure = None;
                return Refresh::Compiled(Box::new(policy), started.elapsed());
            }
            Ok(Err(e)) => e,
            Err(e) => LoadError::new("(compile)", e),
        };
        // Documents that do not compile are a failed load: they count toward staleness until
        // the sources change into something that compiles.
        let since = self
            .compile_failure
            .as_ref()
            .map_or_else(Instant::now, |(t, _)| *t);
        self.compile_failure = Some((since, failure.clone()));
        Refresh::Failed(failure)
    }

    /// A source's new document, `None` when it has not changed, or why it could not be read.
    /// How long source `index` may take to answer before its data is older than
    /// `max_staleness_seconds` (at least a second); `None` before its first good read.
    fn time_until_stale(&self, index: usize) -> Option<Duration> {
        let since = self.sources[index].last_success?.elapsed();
        Some(
            self.max_staleness
                .saturating_sub(since)
                .max(Duration::from_secs(1)),
        )
    }

    async fn read(&mut self, index: usize) -> Result<Option<(Arc<SourceDocument>, u64)>, String> {
        let source = &self.sources[index];
        let current = source.current.as_ref().map(|(_, print)| *print);
        match source.config.clone() {
            SourceConfig::Builtin { .. } => {
                if source.current.is_some() {
                    return Ok(None);
                }
                // The catalog changes with the NMP release it follows, not only with our version.
                let print = format!(
                    "builtin:{}:{}",
                    env!("CARGO_PKG_VERSION"),
                    builtin::NMP_RELEASE
                );
                let print = Fnv64::of(print.as_bytes());
                let document = SourceDocument::from(builtin::builtin_document());
                Ok(Some((Arc::new(document), print)))
            }
            SourceConfig::File { file } => {
                off_runtime(move || {
                    let bytes = std::fs::read(&file).map_err(|e| format!("cannot read: {e}"))?;
                    parse_if_changed(&bytes, current, |bytes| parse_file(&file, bytes))
                })
                .await
            }
            SourceConfig::BundleUrl {
                bundle_url,
                principal_id,
                bearer_token_file,
            } => {
                let mut headers = off_runtime(move || {
                    bundle_credential_headers(principal_id.as_deref(), bearer_token_file.as_deref())
                })
                .await?;
                if let Some(etag) = source.current.as_ref().and(source.etag.as_deref()) {
                    // An ETag NMP sent is a quoted hex digest; anything else is not sent back.
                    if let Ok(value) = hyper::header::HeaderValue::from_str(etag) {
                        headers.push((hyper::header::IF_NONE_MATCH, value));
                    }
                }
                let fetched = self
                    .client
                    .get(&bundle_url, &headers, MAX_BUNDLE_BYTES, BUNDLE_TIMEOUT)
                    .await
                    .map_err(|e| e.reason)?;
                if fetched.status == hyper::StatusCode::NOT_MODIFIED {
                    // Nothing to parse: the bundle is as we have it.
                    return Ok(None);
                }
                let body = fetched.body;
                let read =
                    off_runtime(move || parse_if_changed(&body, current, parse_bundle)).await?;
                self.sources[index].etag = fetched.etag;
                Ok(read)
            }
        }
    }

    /// True when a source has been failing and its last good read is older than `max` (or it
    /// never had one): the policy can no longer be trusted to be current.
    pub fn stale(&self, max: Duration) -> bool {
        let too_old = |last: Option<Instant>| last.is_none_or(|at| at.elapsed() > max);
        self.sources
            .iter()
            .any(|s| !s.bootstrap && s.failing_since.is_some() && too_old(s.last_success))
            || self.compile_failure.is_some() && too_old(self.last_compiled)
    }

    /// True while a main source has never loaded: the policy in use, if any, is the bootstrap
    /// sources'.
    pub fn bootstrapping(&self) -> bool {
        self.sources
            .iter()
            .any(|s| !s.bootstrap && s.current.is_none())
    }

    /// Why the current documents do not compile, if they do not.
    pub fn compile_error(&self) -> Option<&LoadError> {
        self.compile_failure.as_ref().map(|(_, e)| e)
    }

    pub fn status(&self) -> Vec<SourceStatus> {
        self.sources
            .iter()
            .map(|s| SourceStatus {
                name: s.name.clone(),
                remote: matches!(s.config, SourceConfig::BundleUrl { .. }),
                loaded: s.current.is_some(),
                failing_for: s.failing_since.map(|t| t.elapsed()),
                last_error: s.last_error.clone(),
                bootstrap: s.bootstrap,
                builtin: matches!(s.config, SourceConfig::Builtin { .. }),
            })
            .collect()
    }
}

impl Source {
    fn mark_success(&mut self) {
        self.last_success = Some(Instant::now());
        self.failing_since = None;
        self.last_error = None;
    }
}

/// Watches the directories of `files` (a Kubernetes ConfigMap replaces a file by swapping a
/// symlink in its directory, which a watch on the file itself would miss) and wakes `changed`
/// on any event there. `None` (logged) when watching is not possible: polling still runs.
pub(crate) fn watch_files(
    files: &[PathBuf],
    changed: Arc<tokio::sync::Notify>,
) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher as _;
    if files.is_empty() {
        return None;
    }
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok() {
            changed.notify_one();
        }
    })
    .map_err(|e| tracing::warn!(error = %e, "cannot watch policy files; polling only"))
    .ok()?;
    let mut dirs: Vec<&Path> = files
        .iter()
        .map(|f| {
            f.parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."))
        })
        .collect();
    dirs.sort();
    dirs.dedup();
    for dir in dirs {
        if let Err(e) = watcher.watch(dir, notify::RecursiveMode::NonRecursive) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot watch; polling only");
        }
    }
    Some(watcher)
}

/// Reads every configured source once and compiles them (for `validate` and start-up checks).
pub fn load(config: &Config) -> Result<CompiledPolicy, LoadError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| LoadError::new("(runtime)", e.to_string()))?;
    runtime.block_on(async {
        let mut sources = Sources::new(config, Arc::default());
        let outcome = sources.refresh().await;
        if let Some(failed) = sources
            .status()
            .into_iter()
            .find(|s| s.last_error.is_some())
        {
            return Err(LoadError::new(
                &failed.name,
                failed.last_error.unwrap_or_default(),
            ));
        }
        match outcome {
            Refresh::Compiled(policy, _) => Ok(*policy),
            Refresh::Failed(e) => Err(e),
            Refresh::Unchanged => Err(LoadError::new("(sources)", "no policy data loaded")),
        }
    })
}

/// The headers that identify a bundle request (see `SourceConfig::BundleUrl`).
fn bundle_credential_headers(
    principal_id: Option<&str>,
    bearer_token_file: Option<&Path>,
) -> Result<Vec<(hyper::header::HeaderName, hyper::header::HeaderValue)>, String> {
    use hyper::header::{AUTHORIZATION, HeaderName, HeaderValue};
    let mut headers = Vec::new();
    if let Some(id) = principal_id {
        let value = HeaderValue::from_str(id).map_err(|_| "principal_id is not a header value")?;
        headers.push((HeaderName::from_static("x-nmp-principal-id"), value));
    }
    if let Some(file) = bearer_token_file {
        let token = std::fs::read_to_string(file)
            .map_err(|e| format!("bearer_token_file {}: {e}", file.display()))?;
        let mut value = HeaderValue::from_str(&format!("Bearer {}", token.trim()))
            .map_err(|_| format!("bearer_token_file {}: not a header value", file.display()))?;
        value.set_sensitive(true);
        headers.push((AUTHORIZATION, value));
    }
    Ok(headers)
}

/// Runs `work` off the runtime (see [`on_own_thread`]).
async fn off_runtime<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    on_own_thread(work).await?
}

/// Runs `work` on a thread of its own that ends with it. Reading a file, fingerprinting a
/// bundle of up to 32 MiB byte by byte, parsing and compiling would otherwise hold a runtime
/// worker, and the Checks queued on it, for as long as they take. A pooled blocking thread
/// would do too, but mimalloc keeps the pages a thread freed with that thread until it
/// allocates again: an idle pooled thread kept ~45 MiB after each reload of 100,000 bindings,
/// while a thread that ends hands them back (BENCHMARKS.md, "Scaling").
async fn on_own_thread<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    let (done, result) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("policy-load".into())
        .spawn(move || {
            // The receiver is gone only when the refresh was given up (its time ran out).
            let _ = done.send(work());
        })
        .map_err(|e| format!("cannot start a thread: {e}"))?;
    result
        .await
        .map_err(|_| "the policy load thread panicked".to_string())
}

/// A source's document from its bytes, with their fingerprint; `None` when the fingerprint is
/// `current`'s (nothing to parse).
fn parse_if_changed(
    bytes: &[u8],
    current: Option<u64>,
    parse: impl FnOnce(&[u8]) -> Result<SourceDocument, String>,
) -> Result<Option<(Arc<SourceDocument>, u64)>, String> {
    let print = Fnv64::of(bytes);
    if current == Some(print) {
        return Ok(None);
    }
    Ok(Some((Arc::new(parse(bytes)?), print)))
}

fn parse_file(path: &Path, bytes: &[u8]) -> Result<SourceDocument, String> {
    let text = std::str::from_utf8(bytes).map_err(|e| format!("not UTF-8: {e}"))?;
    SourceDocument::parse(text, Format::from_path(path)).map_err(|e| e.to_string())
}

/// NMP's `opa-bundle.tar.gz` (the core's reading, shared with the Envoy module).
pub use nmp_authz_core::policy::source::parse_bundle;

/// Merges the documents in order and compiles them; an error names the source its entry
/// came from.
fn compile(
    names: &[String],
    documents: &[(Arc<SourceDocument>, u64)],
    defaults: &BindingDefaults,
    revision: String,
) -> Result<CompiledPolicy, LoadError> {
    let layers: Vec<&SourceDocument> = documents.iter().map(|(doc, _)| &**doc).collect();
    CompiledPolicy::build_layers(&layers, defaults, revision).map_err(|e| {
        // The source the entry finally came from: the last that has it.
        let origin = e
            .entry
            .as_ref()
            .and_then(|entry| layers.iter().rposition(|layer| layer.defines(entry)));
        let source_name = match origin {
            Some(index) => names[index].clone(),
            None if e.path.starts_with("auth.") => "configuration".into(),
            None => "(merged sources)".into(),
        };
        LoadError {
            source_name,
            message: e.to_string(),
        }
    })
}

/// FNV-1a: a stable, dependency-free fingerprint for change detection and revision labels
/// (not for security).
#[derive(Debug, Clone, Copy)]
struct Fnv64(u64);

impl Default for Fnv64 {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv64 {
    fn of(bytes: &[u8]) -> u64 {
        let mut f = Self::default();
        f.update(bytes);
        f.0
    }

    fn update(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}
