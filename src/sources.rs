//! Where policy data comes from: the built-in catalog and policy files, merged in order, then
//! compiled. Each load either yields a whole new policy or an error naming what is wrong.

use std::collections::HashMap;
use std::path::Path;

use crate::config::{Config, SourceConfig};
use crate::policy::document::Entry;
use crate::policy::{BindingDefaults, CompiledPolicy, Format, PolicyDocument, builtin};

/// Why a load failed: the source, and the document path or I/O error inside it.
#[derive(Debug, thiserror::Error)]
#[error("policy source {source_name}: {message}")]
pub struct LoadError {
    pub source_name: String,
    pub message: String,
}

/// Reads every configured source and compiles the merged document.
pub fn load(config: &Config) -> Result<CompiledPolicy, LoadError> {
    let mut merged = PolicyDocument::default();
    // Which source each entry finally came from, so a compile error can name the file.
    let mut origin: HashMap<Entry, String> = HashMap::new();
    // The revision identifies the exact inputs, so replicas that read the same data agree.
    let mut revision = Fnv64::default();
    for source in &config.policy.sources {
        let (name, doc) = match source {
            SourceConfig::Builtin { .. } => {
                revision.update(b"builtin:");
                revision.update(env!("CARGO_PKG_VERSION").as_bytes());
                ("builtin".to_string(), builtin::builtin_document())
            }
            SourceConfig::File { file } => {
                let text = read_file(file)?;
                revision.update(text.as_bytes());
                let doc = PolicyDocument::parse(&text, Format::from_path(file)).map_err(|e| {
                    LoadError {
                        source_name: file.display().to_string(),
                        message: e.to_string(),
                    }
                })?;
                (file.display().to_string(), doc)
            }
            SourceConfig::BundleUrl { bundle_url } => {
                return Err(LoadError {
                    source_name: bundle_url.clone(),
                    message: "bundle_url sources are not supported by this build yet".into(),
                });
            }
        };
        tracing::debug!(source = %name, "policy source read");
        origin.extend(doc.entries().map(|entry| (entry, name.clone())));
        merged.merge(doc);
    }
    let defaults = BindingDefaults {
        bootstrap_bindings: config.auth.bootstrap_bindings,
        default_workspace: config.auth.default_workspace.clone(),
        admin_email: config.auth.admin_email.clone(),
    };
    revision.update(format!("{defaults:?}").as_bytes());
    CompiledPolicy::build(merged, &defaults, format!("{:016x}", revision.0)).map_err(|e| {
        let source_name = match e.entry.as_ref().and_then(|entry| origin.get(entry)) {
            Some(name) => name.clone(),
            None if e.path.starts_with("auth.") => "configuration".into(),
            None => "(merged sources)".into(),
        };
        LoadError {
            source_name,
            message: e.to_string(),
        }
    })
}

fn read_file(path: &Path) -> Result<String, LoadError> {
    std::fs::read_to_string(path).map_err(|e| LoadError {
        source_name: path.display().to_string(),
        message: format!("cannot read: {e}"),
    })
}

/// FNV-1a: a stable, dependency-free fingerprint for revision labels (not for security).
struct Fnv64(u64);

impl Default for Fnv64 {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv64 {
    fn update(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}
