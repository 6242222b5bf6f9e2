//! The NMP authorization document (`authz:` root) as NMP's auth service builds it: the shape
//! of `static-authz.yaml` and of the OPA bundle's `data.json`. Parsing is strict: unknown keys
//! are errors that name their path, so a typo never silently weakens a policy.

use std::collections::BTreeMap;

use serde::Deserialize;

/// Root of a policy document: `{"authz": {...}}`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PolicyDocument {
    pub authz: AuthzData,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AuthzData {
    #[serde(default)]
    pub roles: BTreeMap<String, RoleDef>,
    #[serde(default)]
    pub endpoints: BTreeMap<String, BTreeMap<String, MethodDef>>,
    #[serde(default)]
    pub principals: BTreeMap<String, PrincipalDef>,
    #[serde(default)]
    pub config: PolicyConfig,
    /// Permission registry: accepted for validation and documentation, not used to decide.
    #[serde(default)]
    pub permissions: serde_json::Value,
    /// Workspace registry: accepted, not used to decide.
    #[serde(default)]
    pub workspaces: serde_json::Value,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RoleDef {
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub includes: Vec<String>,
    #[serde(default)]
    pub permissions: Vec<String>,
}

/// One method of one endpoint pattern. `permissions` and `scopes` keep the difference between
/// absent and empty: NMP allows `permissions: []` to any authenticated caller, while an absent
/// list only means "nothing required" for the permissionless-read rule.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct MethodDef {
    #[serde(default)]
    pub permissions: Option<Vec<String>>,
    #[serde(default)]
    pub scopes: Option<Vec<String>>,
    #[serde(default)]
    pub callers: Option<Vec<String>>,
    #[serde(default)]
    pub deny: Option<bool>,
    /// Everything else. Only `x-` extension keys are allowed here (checked on validation).
    #[serde(flatten)]
    pub extensions: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PrincipalDef {
    #[serde(default)]
    pub workspaces: BTreeMap<String, Vec<String>>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    #[serde(default)]
    pub denied_plugin_prefixes: Vec<String>,
}

/// A load error that names where in the document it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct DocumentError {
    pub path: String,
    pub message: String,
    /// The top-level entry the error is in, so a merge of several sources can say which
    /// source that entry came from.
    pub entry: Option<Entry>,
}

/// A named top-level entry of the `authz` document; merging replaces whole entries.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Entry {
    Role(String),
    Endpoint(String),
    Principal(String),
}

impl DocumentError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
            entry: None,
        }
    }

    pub(crate) fn in_entry(mut self, entry: Entry) -> Self {
        self.entry = Some(entry);
        self
    }
}

/// The syntax of a document as it was given to [`PolicyDocument::parse`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Yaml,
    Json,
}

impl Format {
    /// JSON by `.json` extension; everything else is read as YAML.
    pub fn from_path(path: &std::path::Path) -> Self {
        match path.extension().and_then(|e| e.to_str()) {
            Some(ext) if ext.eq_ignore_ascii_case("json") => Format::Json,
            _ => Format::Yaml,
        }
    }
}

impl PolicyDocument {
    /// Parses a document. Errors name the key path (`authz.roles.Editor.includs`).
    pub fn parse(text: &str, format: Format) -> Result<Self, DocumentError> {
        let value: serde_json::Value = match format {
            Format::Json => serde_json::from_str(text)
                .map_err(|e| DocumentError::new("(document)", format!("invalid JSON: {e}")))?,
            Format::Yaml => crate::yaml::to_value(text)
                .map_err(|e| DocumentError::new("(document)", format!("invalid YAML: {e}")))?,
        };
        Self::from_value(value)
    }

    pub fn from_value(value: serde_json::Value) -> Result<Self, DocumentError> {
        serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            DocumentError::new(
                if path == "." {
                    "(document)".into()
                } else {
                    path
                },
                e.into_inner().to_string(),
            )
        })
    }

    /// Merges `later` over `self`: later roles, endpoints and principals replace earlier ones of
    /// the same name; denied plugin prefixes and the registries accumulate.
    pub fn merge(&mut self, later: PolicyDocument) {
        let (a, b) = (&mut self.authz, later.authz);
        a.roles.extend(b.roles);
        a.endpoints.extend(b.endpoints);
        a.principals.extend(b.principals);
        for prefix in b.config.denied_plugin_prefixes {
            if !a.config.denied_plugin_prefixes.contains(&prefix) {
                a.config.denied_plugin_prefixes.push(prefix);
            }
        }
        merge_objects(&mut a.permissions, b.permissions);
        merge_objects(&mut a.workspaces, b.workspaces);
    }

    /// Adds `roles` to `principal`'s bindings in `workspace`, keeping existing ones.
    pub fn bind(&mut self, principal: &str, workspace: &str, roles: &[&str]) {
        let bound = self
            .authz
            .principals
            .entry(principal.to_string())
            .or_default()
            .workspaces
            .entry(workspace.to_string())
            .or_default();
        for role in roles {
            if !bound.iter().any(|r| r == role) {
                bound.push((*role).to_string());
            }
        }
    }
}

fn merge_objects(into: &mut serde_json::Value, from: serde_json::Value) {
    match (into, from) {
        (serde_json::Value::Object(a), serde_json::Value::Object(b)) => a.extend(b),
        (_, serde_json::Value::Null) => {}
        (slot, other) => *slot = other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_key_is_named_with_its_path() {
        let err = PolicyDocument::parse(
            "authz:\n  roles:\n    Viewer:\n      permisions: [a.b]\n",
            Format::Yaml,
        )
        .unwrap_err();
        assert!(err.path.contains("roles.Viewer"), "{err}");
        assert!(err.message.contains("permisions"), "{err}");
    }

    #[test]
    fn json_and_yaml_give_the_same_document() {
        let y = PolicyDocument::parse(
            "authz:\n  endpoints:\n    /a:\n      get: {permissions: [], x-note: 1}\n",
            Format::Yaml,
        )
        .unwrap();
        let j = PolicyDocument::parse(
            r#"{"authz":{"endpoints":{"/a":{"get":{"permissions":[],"x-note":1}}}}}"#,
            Format::Json,
        )
        .unwrap();
        assert_eq!(y, j);
        assert_eq!(y.authz.endpoints["/a"]["get"].permissions, Some(vec![]));
    }

    #[test]
    fn merge_replaces_by_name_and_accumulates_prefixes() {
        let mut a = PolicyDocument::parse(
            "authz:\n  roles: {R: {permissions: [a.b]}, S: {permissions: [c.d]}}\n  config: {denied_plugin_prefixes: [/apis/x]}\n",
            Format::Yaml,
        )
        .unwrap();
        let b = PolicyDocument::parse(
            "authz:\n  roles: {R: {permissions: [e.f]}}\n  config: {denied_plugin_prefixes: [/apis/y, /apis/x]}\n",
            Format::Yaml,
        )
        .unwrap();
        a.merge(b);
        assert_eq!(a.authz.roles["R"].permissions, vec!["e.f"]);
        assert_eq!(a.authz.roles["S"].permissions, vec!["c.d"]);
        assert_eq!(
            a.authz.config.denied_plugin_prefixes,
            vec!["/apis/x", "/apis/y"]
        );
    }
}
