//! What is allowed: NMP's authorization document, compiled once per load into an immutable
//! [`CompiledPolicy`], and the pure decision functions over it (no I/O, no clock).

pub mod bindings;
pub mod builtin;
pub mod compile;
pub mod decide;
pub mod document;
pub mod explain;
pub mod matcher;
pub mod members;
pub mod pdp;
pub mod source;
pub mod syntax;

pub use compile::{BindingDefaults, CompiledPolicy};

/// The maps a decision looks up. Their keys come from policy data, never from a request, so a
/// fast hasher without flooding resistance is safe here; SipHash was a tenth of a decision.
pub(crate) type FastMap<K, V> = foldhash::HashMap<K, V>;
pub use decide::{Decision, Reason};
pub use document::{DocumentError, Format, PolicyDocument};
pub use explain::Explanation;
pub use source::SourceDocument;

/// The caller as the decision core sees it: already authenticated and validated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Principal {
    /// The principal id (token subject). `None` when the caller gave none: deny rules that
    /// single out non-service callers need an id to fire, as in NMP.
    pub id: Option<String>,
    pub email: Option<String>,
    pub groups: Vec<String>,
    /// Token scopes, after any configured prefix is stripped.
    pub scopes: Vec<String>,
}

impl Principal {
    /// A principal with an id and nothing else.
    pub fn with_id(id: impl Into<String>) -> Self {
        Self {
            id: Some(id.into()),
            ..Self::default()
        }
    }

    /// True when the principal id names a platform service (`service:*`).
    pub fn is_service(&self) -> bool {
        self.id
            .as_deref()
            .is_some_and(|id| id.starts_with("service:"))
    }
}
