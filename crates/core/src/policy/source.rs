//! A policy document as a source holds it between loads: the small parts as a
//! [`PolicyDocument`] and the bindings, which grow with the deployment, compactly
//! ([`DocumentBindings`]). Text is read straight into that form, without a value tree of the
//! whole document (with value trees and maps, 100,000 bindings from NMP's bundle held 331 MiB
//! and took 1.5 s to reload; BENCHMARKS.md 4).

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use super::bindings::DocumentBindings;
use super::document::{DocumentError, Entry, Format, PolicyDocument};

/// One source's policy data.
#[derive(Debug, Clone, Default)]
pub struct SourceDocument {
    /// Roles, endpoints, config and the registries; `authz.principals` is empty (see
    /// `bindings`).
    pub document: PolicyDocument,
    pub bindings: DocumentBindings,
}

/// Roots of NMP's bundle `data.json` besides `authz`: copies of it for NMP's Rego packages of
/// those names. Any other root is an error.
const BUNDLE_COPIES: [&str; 2] = ["envoy", "common"];

/// The keys of `authz` besides `principals`, read as [`PolicyDocument`] reads them.
const DOCUMENT_KEYS: [&str; 5] = ["roles", "endpoints", "config", "permissions", "workspaces"];

impl From<PolicyDocument> for SourceDocument {
    fn from(mut document: PolicyDocument) -> Self {
        let mut bindings = DocumentBindings::default();
        for (principal, def) in std::mem::take(&mut document.authz.principals) {
            bindings.open(&principal);
            for (workspace, roles) in &def.workspaces {
                let workspace = bindings.workspace(workspace);
                for role in roles {
                    bindings.role(role);
                }
                bindings.bind(workspace);
            }
            bindings.close();
        }
        bindings.finish();
        Self { document, bindings }
    }
}

impl SourceDocument {
    /// Parses a document (see [`PolicyDocument::parse`]). The text is read straight into the
    /// compact form; anything that reading does not take (an error, or a shape only the generic
    /// reading accepts) is read again by [`PolicyDocument::parse`], whose outcome decides: the
    /// same documents load, and errors name their key path as they always have.
    pub fn parse(text: &str, format: Format) -> Result<Self, DocumentError> {
        let direct = match format {
            Format::Json => serde_json::from_str(text).ok(),
            Format::Yaml => crate::yaml::to_value(text).ok(),
        };
        match direct {
            Some(document) => Ok(document),
            None => PolicyDocument::parse(text, format).map(Self::from),
        }
    }

    /// NMP's bundle `data.json`: the document under `authz`; its copies under `envoy` and
    /// `common` are skipped unread. Errors are `invalid JSON: ...` or the document's error.
    pub fn parse_bundle_data(text: &str) -> Result<Self, String> {
        let mut json = serde_json::Deserializer::from_str(text);
        let direct = Root { bundle: true }
            .deserialize(&mut json)
            .and_then(|document| json.end().map(|()| document));
        if let Ok(document) = direct {
            return Ok(document);
        }
        let mut roots: Map<String, Value> =
            serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}"))?;
        for copy in BUNDLE_COPIES {
            roots.remove(copy);
        }
        PolicyDocument::from_value(Value::Object(roots))
            .map(Self::from)
            .map_err(|e| e.to_string())
    }

    /// Whether this document has `entry` (to name the source of an error).
    pub fn defines(&self, entry: &Entry) -> bool {
        let authz = &self.document.authz;
        match entry {
            Entry::Role(name) => authz.roles.contains_key(name),
            Entry::Endpoint(pattern) => authz.endpoints.contains_key(pattern),
            Entry::Principal(name) => self.bindings.defines(name),
        }
    }
}

impl<'de> serde::Deserialize<'de> for SourceDocument {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Root { bundle: false }.deserialize(deserializer)
    }
}

/// What the direct reading does not take; [`SourceDocument::parse`] then reads the text again
/// the generic way, which names the error (or takes the shape).
fn not_direct<E: de::Error>() -> E {
    E::custom("read generically")
}

/// Each reader below takes exactly the JSON types [`PolicyDocument`]'s reading through a value
/// tree takes (maps through `deserialize_any`, keys as strings, role names only as strings).
macro_rules! expecting {
    ($what:literal) => {
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str($what)
        }
    };
}

/// Each reader below is its own seed, read through `deserialize_any` (the JSON type decides,
/// as it does for a value tree).
macro_rules! seeds {
    ($($reader:ty => $value:ty),* $(,)?) => {$(
        impl<'de> DeserializeSeed<'de> for $reader {
            type Value = $value;
            fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<$value, D::Error> {
                d.deserialize_any(self)
            }
        }
    )*};
}

seeds!(
    Root => SourceDocument,
    Authz => SourceDocument,
    Principals<'_> => (),
    PrincipalEntry<'_> => (),
    Workspaces<'_> => (),
    Roles<'_> => (),
    RoleName<'_> => (),
);

/// The document root: `authz`, and in a bundle its copies, skipped.
struct Root {
    bundle: bool,
}

impl<'de> Visitor<'de> for Root {
    type Value = SourceDocument;
    expecting!("a policy document");

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<SourceDocument, A::Error> {
        let mut authz = None;
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "authz" if authz.is_none() => authz = Some(map.next_value_seed(Authz)?),
                copy if self.bundle && BUNDLE_COPIES.contains(&copy) => {
                    map.next_value::<IgnoredAny>()?;
                }
                _ => return Err(not_direct()),
            }
        }
        authz.ok_or_else(not_direct)
    }
}

/// `authz`: `principals` into [`DocumentBindings`], the rest through [`PolicyDocument`].
struct Authz;

impl<'de> Visitor<'de> for Authz {
    type Value = SourceDocument;
    expecting!("the authz document");

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<SourceDocument, A::Error> {
        let mut rest = Map::new();
        let mut bindings = None;
        while let Some(key) = map.next_key::<String>()? {
            if key == "principals" && bindings.is_none() {
                let mut read = DocumentBindings::default();
                map.next_value_seed(Principals(&mut read))?;
                bindings = Some(read);
            } else if DOCUMENT_KEYS.contains(&key.as_str()) && !rest.contains_key(&key) {
                rest.insert(key, map.next_value()?);
            } else {
                return Err(not_direct());
            }
        }
        let root = Map::from_iter([("authz".to_string(), Value::Object(rest))]);
        let document = PolicyDocument::from_value(Value::Object(root)).map_err(|_| not_direct())?;
        let mut bindings = bindings.unwrap_or_default();
        bindings.finish();
        Ok(SourceDocument { document, bindings })
    }
}

/// `principals`: principal → `{workspaces: {workspace: [role, ...]}}`.
struct Principals<'b>(&'b mut DocumentBindings);

impl<'de> Visitor<'de> for Principals<'_> {
    type Value = ();
    expecting!("a map of principals");

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let bindings = self.0;
        while map
            .next_key_seed(Name(Named::Principal(&mut *bindings)))?
            .is_some()
        {
            map.next_value_seed(PrincipalEntry(&mut *bindings))?;
        }
        Ok(())
    }
}

/// One principal's entry: a map whose only key is `workspaces`.
struct PrincipalEntry<'b>(&'b mut DocumentBindings);

impl<'de> Visitor<'de> for PrincipalEntry<'_> {
    type Value = ();
    expecting!("a principal's entry");

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = false;
        while let Some(key) = map.next_key_seed(Name(Named::Key("workspaces")))? {
            if key.is_none() || seen {
                return Err(not_direct());
            }
            seen = true;
            map.next_value_seed(Workspaces(&mut *self.0))?;
        }
        self.0.close();
        Ok(())
    }
}

/// `workspaces`: workspace → role names.
struct Workspaces<'b>(&'b mut DocumentBindings);

impl<'de> Visitor<'de> for Workspaces<'_> {
    type Value = ();
    expecting!("a map of workspaces");

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let bindings = self.0;
        while let Some(workspace) = map.next_key_seed(Name(Named::Workspace(&mut *bindings)))? {
            map.next_value_seed(Roles(&mut *bindings))?;
            bindings.bind(workspace.unwrap_or_default());
        }
        Ok(())
    }
}

/// A list of role names, each only a string.
struct Roles<'b>(&'b mut DocumentBindings);

impl<'de> Visitor<'de> for Roles<'_> {
    type Value = ();
    expecting!("a list of role names");

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let bindings = self.0;
        while seq.next_element_seed(RoleName(&mut *bindings))?.is_some() {}
        Ok(())
    }
}

struct RoleName<'b>(&'b mut DocumentBindings);

impl Visitor<'_> for RoleName<'_> {
    type Value = ();
    expecting!("a role name");

    fn visit_str<E: de::Error>(self, name: &str) -> Result<(), E> {
        self.0.role(name);
        Ok(())
    }
}

/// What a map key names, read in place without an allocation.
enum Named<'b> {
    Principal(&'b mut DocumentBindings),
    Workspace(&'b mut DocumentBindings),
    /// A fixed key: `Some(0)` when the key is that one.
    Key(&'static str),
}

/// A map key, read as a string (as a value tree's keys are).
struct Name<'b>(Named<'b>);

impl<'de> DeserializeSeed<'de> for Name<'_> {
    /// The workspace id, `Some(0)` for the fixed key, `None` for another key.
    type Value = Option<u32>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Option<u32>, D::Error> {
        d.deserialize_str(self)
    }
}

impl Visitor<'_> for Name<'_> {
    type Value = Option<u32>;
    expecting!("a string key");

    fn visit_str<E: de::Error>(self, name: &str) -> Result<Option<u32>, E> {
        Ok(match self.0 {
            Named::Principal(bindings) => {
                bindings.open(name);
                Some(0)
            }
            Named::Workspace(bindings) => Some(bindings.workspace(name)),
            Named::Key(key) => (name == key).then_some(0),
        })
    }
}

/// Bound on what a bundle's `data.json` may decompress to (a gzip bomb stops here).
const MAX_BUNDLE_DATA_BYTES: u64 = 256 * 1024 * 1024;

/// NMP's `opa-bundle.tar.gz`: a gzip tar holding `data.json` (root `authz`) and `.manifest`.
pub fn parse_bundle(gzipped: &[u8]) -> Result<SourceDocument, String> {
    use std::io::Read;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(gzipped));
    let entries = archive
        .entries()
        .map_err(|e| format!("not a gzip tar: {e}"))?;
    let mut data = None;
    for entry in entries {
        let entry = entry.map_err(|e| format!("bad bundle entry: {e}"))?;
        let path = entry
            .path()
            .map_err(|e| format!("bad bundle entry path: {e}"))?
            .to_string_lossy()
            .trim_start_matches("./")
            .trim_start_matches('/')
            .to_string();
        if path == "data.json" {
            // Sized from the header up front: growing by doubling would copy it over and over
            // and peak at up to twice its size.
            let size = entry.size().min(MAX_BUNDLE_DATA_BYTES + 1);
            let mut text = String::with_capacity(usize::try_from(size).unwrap_or_default());
            entry
                .take(MAX_BUNDLE_DATA_BYTES + 1)
                .read_to_string(&mut text)
                .map_err(|e| format!("data.json: {e}"))?;
            if text.len() as u64 > MAX_BUNDLE_DATA_BYTES {
                return Err(format!(
                    "data.json is larger than {MAX_BUNDLE_DATA_BYTES} bytes"
                ));
            }
            data = Some(text);
        }
    }
    let data = data.ok_or("the bundle has no data.json")?;
    SourceDocument::parse_bundle_data(&data).map_err(|e| format!("data.json: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{BindingDefaults, CompiledPolicy};

    /// The generic reading, as [`SourceDocument::parse`] falls back to it.
    fn generic(text: &str, format: Format) -> Result<SourceDocument, DocumentError> {
        PolicyDocument::parse(text, format).map(SourceDocument::from)
    }

    /// `bindings_of`'s answer, written briefly.
    fn bound(list: &[(&str, &[&str])]) -> Vec<(String, Vec<String>)> {
        let roles = |roles: &[&str]| roles.iter().map(|r| r.to_string()).collect();
        list.iter()
            .map(|(ws, r)| (ws.to_string(), roles(r)))
            .collect()
    }

    fn direct(text: &str, format: Format) -> Option<SourceDocument> {
        match format {
            Format::Json => serde_json::from_str(text).ok(),
            Format::Yaml => crate::yaml::to_value(text).ok(),
        }
    }

    const YAML: &str = r#"
authz:
  roles: {Viewer: {permissions: [a.read]}, Editor: {includes: [Viewer], permissions: [a.write]}}
  endpoints: {"/a/{workspace}": {get: {permissions: [a.read], x-note: 1}}}
  principals:
    alice: {workspaces: {ws1: [Editor], ws2: [Viewer, Editor], ws0: []}}
    "*": {workspaces: {default: [Viewer]}}
    bob: {}
    "group-1": {workspaces: {ws1: [Viewer]}}
  config: {denied_plugin_prefixes: [/apis/x]}
  workspaces: {ws1: {}}
"#;

    /// Documents read straight into the compact form hold what the generic reading holds, in
    /// both formats, and the direct reading is the one taken.
    #[test]
    fn direct_reading_holds_what_the_generic_one_does() {
        let json = serde_json::to_string(&crate::yaml::to_value::<Value>(YAML).unwrap()).unwrap();
        for (text, format) in [(YAML, Format::Yaml), (json.as_str(), Format::Json)] {
            let read = direct(text, format).expect("read directly");
            let expected = generic(text, format).unwrap();
            assert_eq!(read.document, expected.document);
            assert_eq!(read.bindings.to_map(), expected.bindings.to_map());
            assert_eq!(read.bindings.to_map()["alice"]["ws2"], ["Viewer", "Editor"]);
            assert!(read.bindings.to_map()["bob"].is_empty());
        }
    }

    /// A principal or workspace given twice keeps its last entry, as a JSON map does.
    #[test]
    fn repeated_keys_keep_the_last_entry() {
        let text = r#"{"authz": {"principals": {
            "a": {"workspaces": {"w": ["R1"], "v": ["R2"], "w": ["R3"]}},
            "b": {"workspaces": {"w": ["R1"]}},
            "a": {"workspaces": {"x": ["R1"], "w": ["R4"], "x": ["R5"]}}}}}"#;
        let read = direct(text, Format::Json).expect("read directly");
        let expected = generic(text, Format::Json).unwrap();
        assert_eq!(read.bindings.principal_count(), 3);
        let policy_of = |doc: &SourceDocument| {
            let mut doc = doc.clone();
            for role in [
                "R1",
                "R2",
                "R3",
                "R4",
                "R5",
                "Editor",
                "Viewer",
                "WorkspaceCreator",
            ] {
                doc.document
                    .authz
                    .roles
                    .insert(role.into(), Default::default());
            }
            CompiledPolicy::build_layers(&[&doc], &BindingDefaults::default(), "r").unwrap()
        };
        let (a, b) = (policy_of(&read), policy_of(&expected));
        assert_eq!(a.bindings_of("a"), bound(&[("w", &["R4"]), ("x", &["R5"])]));
        assert_eq!(a.bindings_of("a"), b.bindings_of("a"));
        assert_eq!(a.bindings_of("b"), b.bindings_of("b"));
        assert_eq!(a.binding_count(), b.binding_count());
    }

    /// What the direct reading does not take (other types, other keys, a sequence for a
    /// principal's entry) is read generically: the same errors, or the same document.
    #[test]
    fn other_shapes_are_read_generically() {
        let cases = [
            (
                r#"{"authz": {"principals": {"a": {"workspaces": {"w": [1]}}}}}"#,
                false,
            ),
            (
                r#"{"authz": {"principals": {"a": {"workspace": {}}}}}"#,
                false,
            ),
            (r#"{"authz": {"principals": {"a": null}}}"#, false),
            (r#"{"authz": {"principals": {"a": [{"w": ["R"]}]}}}"#, true),
            (r#"{"authz": {"principal": {}}}"#, false),
            (r#"{"authz": {}, "envoy": {}}"#, false),
            (
                r#"{"authz": {"roles": {"R": {"permissions": ["x"]}}}}"#,
                true,
            ),
            (r#"{"authz": {"roles": {"R": {"permisions": []}}}}"#, false),
            ("{}", false),
            ("[]", false),
        ];
        for (text, loads) in cases {
            let parsed = SourceDocument::parse(text, Format::Json);
            let expected = generic(text, Format::Json);
            assert_eq!(parsed.is_ok(), loads, "{text}: {:?}", parsed.as_ref().err());
            match (parsed, expected) {
                (Ok(a), Ok(b)) => assert_eq!(a.bindings.to_map(), b.bindings.to_map()),
                (a, b) => assert_eq!(a.err(), b.err(), "{text}"),
            }
        }
        let yaml = "authz:\n  principals:\n    a: {workspaces: {w: [1]}}\n";
        assert!(
            direct(yaml, Format::Yaml).is_none(),
            "a number is no role name"
        );
        assert_eq!(
            SourceDocument::parse(yaml, Format::Yaml).err(),
            generic(yaml, Format::Yaml).err()
        );
    }

    /// A bundle's copies of the document under `envoy` and `common` are skipped; any other
    /// root is refused, naming it.
    #[test]
    fn bundle_data_skips_the_copies() {
        let authz = r#"{"principals": {"a": {"workspaces": {"w": ["R"]}}}}"#;
        let text = format!(r#"{{"authz": {authz}, "envoy": {authz}, "common": [1, {{"x": 2}}]}}"#);
        let parsed = SourceDocument::parse_bundle_data(&text).unwrap();
        assert_eq!(parsed.bindings.to_map()["a"]["w"], ["R"]);
        let odd = format!(r#"{{"authz": {authz}, "extra": {{}}}}"#);
        let err = SourceDocument::parse_bundle_data(&odd).unwrap_err();
        assert!(err.contains("extra"), "{err}");
        let err = SourceDocument::parse_bundle_data("{").unwrap_err();
        assert!(err.starts_with("invalid JSON: "), "{err}");
    }

    /// Later documents replace a principal's entry whole; the configured bindings join what is
    /// bound; an unknown role is reported for the first principal in name order.
    #[test]
    fn layers_merge_by_principal() {
        let base = SourceDocument::parse(YAML, Format::Yaml).unwrap();
        let later = SourceDocument::parse(
            "authz:\n  principals:\n    alice: {workspaces: {ws9: [Viewer]}}\n    \"*\": {workspaces: {system: [Viewer]}}\n",
            Format::Yaml,
        )
        .unwrap();
        let mut roles = base.clone();
        roles
            .document
            .authz
            .roles
            .insert("WorkspaceCreator".into(), Default::default());
        let defaults = BindingDefaults {
            admin_email: Some("admin@x".into()),
            ..BindingDefaults::default()
        };
        let missing = CompiledPolicy::build_layers(&[&base, &later], &defaults, "r").unwrap_err();
        assert_eq!(missing.path, "auth.bootstrap_bindings");
        let defaults = BindingDefaults {
            admin_email: None,
            ..defaults
        };
        let policy = CompiledPolicy::build_layers(&[&roles, &later], &defaults, "r").unwrap();
        assert_eq!(policy.bindings_of("alice"), bound(&[("ws9", &["Viewer"])]));
        assert_eq!(
            policy.bindings_of("*"),
            bound(&[
                ("default", &["Editor"]),
                ("system", &["Viewer", "WorkspaceCreator"])
            ])
        );
        assert_eq!(
            policy.bindings_of("group-1"),
            bound(&[("ws1", &["Viewer"])])
        );

        let bad = SourceDocument::parse(
            "authz:\n  principals:\n    zed: {workspaces: {a: [Nope]}}\n    carol: {workspaces: {b: [Viewer], a: [Nope2]}}\n",
            Format::Yaml,
        )
        .unwrap();
        let err = CompiledPolicy::build_layers(&[&roles, &bad], &defaults, "r").unwrap_err();
        assert_eq!(err.path, r#"authz.principals["carol"].workspaces["a"][0]"#);
        assert_eq!(err.message, r#"unknown role "Nope2""#);
        assert!(bad.defines(err.entry.as_ref().unwrap()));
    }

    /// The regression guard for memory (BENCHMARKS.md, "Scaling"): what 20,000 bindings across
    /// 1,000 workspaces hold, parsed and compiled, counted from the capacities of what is held.
    /// Parsed 38 and compiled 62 bytes a binding when written; the limits are about 1.5 times
    /// that, far below the maps a source and the policy held before (see BENCHMARKS.md).
    #[test]
    fn bindings_stay_compact() {
        let bindings = 20_000;
        let mut text =
            String::from(r#"{"authz": {"roles": {"Viewer": {}, "Editor": {}}, "principals": {"#);
        for n in 0..bindings {
            let comma = if n == 0 { "" } else { "," };
            text.push_str(&format!(
                r#"{comma}"user-{n}@example.com": {{"workspaces": {{"ws-{}": ["{}"]}}}}"#,
                n % 1000,
                ["Viewer", "Editor"][n % 2]
            ));
        }
        text.push_str("}}}");
        let parsed = SourceDocument::parse(&text, Format::Json).unwrap();
        let defaults = BindingDefaults {
            bootstrap_bindings: false,
            ..BindingDefaults::default()
        };
        let policy = CompiledPolicy::build_layers(&[&parsed], &defaults, "r").unwrap();
        assert_eq!(policy.binding_count(), bindings);
        let per_binding = |bytes: usize| bytes / bindings;
        let (source, compiled) = (
            per_binding(parsed.bindings.heap_bytes()),
            per_binding(policy.bindings.heap_bytes()),
        );
        println!("bytes a binding: parsed {source}, compiled {compiled}");
        assert!(source <= 60, "a parsed binding holds {source} bytes");
        assert!(compiled <= 90, "a compiled binding holds {compiled} bytes");
    }
}
