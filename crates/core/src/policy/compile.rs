//! Turns a validated [`PolicyDocument`] into an immutable [`CompiledPolicy`]: permissions
//! interned as bit positions, role permissions expanded through `includes` once, bindings
//! indexed by principal then workspace, and endpoint patterns in a segment trie. Nothing here
//! runs per request.

use std::collections::{BTreeMap, HashMap};

use foldhash::HashMapExt;

use super::bindings::{AddedBinding, Bindings};
use super::decide::SYSTEM;
use super::document::{DocumentError, Entry, MethodDef, PolicyDocument, RoleDef};
use super::matcher::{Matcher, Pattern};
use super::source::SourceDocument;
use super::{FastMap, syntax};

/// NMP evaluates `includes` breadth-first to four levels below a role and ignores anything
/// deeper; a deeper chain is refused at load rather than evaluated differently from NMP.
const MAX_INCLUDE_DEPTH: usize = 4;

/// The HTTP methods an endpoint may list, lower-case as NMP writes them.
pub const METHODS: [&str; 9] = [
    "get", "head", "post", "put", "patch", "delete", "options", "trace", "connect",
];

pub(crate) type RoleId = u32;
pub(crate) type PermId = u32;

/// How the bootstrap and admin bindings of `auth:` are added to every loaded document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindingDefaults {
    pub bootstrap_bindings: bool,
    pub default_workspace: String,
    pub admin_email: Option<String>,
}

impl Default for BindingDefaults {
    fn default() -> Self {
        Self {
            bootstrap_bindings: true,
            default_workspace: "default".into(),
            admin_email: None,
        }
    }
}

impl BindingDefaults {
    /// NMP's bootstrap: `default:*` Editor, `system:*` Viewer and WorkspaceCreator, and the
    /// admin email as PlatformAdmin in `system`, added to what is bound. A role these need
    /// and the document lacks is an error naming the setting, not a binding nobody wrote.
    fn added<'a>(
        &'a self,
        role_ids: &FastMap<Box<str>, RoleId>,
    ) -> Result<Vec<AddedBinding<'a>>, DocumentError> {
        let mut added = Vec::new();
        let mut bind = |setting: &str, principal: &'a str, workspace: &'a str, roles: &[&str]| {
            let roles = roles
                .iter()
                .map(|role| {
                    role_ids.get(*role).copied().ok_or_else(|| {
                        DocumentError::new(
                            setting,
                            format!(
                                "binds {principal:?} to {role} in {workspace:?}, but the policy data defines no role {role:?}"
                            ),
                        )
                    })
                })
                .collect::<Result<_, _>>()?;
            added.push(AddedBinding {
                principal,
                workspace,
                roles,
            });
            Ok(())
        };
        if self.bootstrap_bindings {
            bind(
                "auth.bootstrap_bindings",
                "*",
                &self.default_workspace,
                &["Editor"],
            )?;
            bind(
                "auth.bootstrap_bindings",
                "*",
                "system",
                &["Viewer", "WorkspaceCreator"],
            )?;
        }
        if let Some(admin) = self.admin_email.as_deref().filter(|a| !a.is_empty()) {
            bind("auth.admin_email", admin, "system", &["PlatformAdmin"])?;
        }
        Ok(added)
    }
}

/// A set of permissions held by a role, as bits over the policy's interned permissions.
#[derive(Debug, Clone, Default)]
pub(crate) struct PermSet {
    /// The role holds `*`: every permission, including ones no document names.
    pub all: bool,
    bits: Vec<u64>,
}

impl PermSet {
    fn insert(&mut self, id: PermId) {
        let (word, bit) = (id as usize / 64, id % 64);
        if self.bits.len() <= word {
            self.bits.resize(word + 1, 0);
        }
        self.bits[word] |= 1 << bit;
    }

    fn union(&mut self, other: &PermSet) {
        self.all |= other.all;
        if self.bits.len() < other.bits.len() {
            self.bits.resize(other.bits.len(), 0);
        }
        for (a, b) in self.bits.iter_mut().zip(&other.bits) {
            *a |= b;
        }
    }

    /// `perm` is `None` for a permission no document names: only `*` grants it.
    pub fn grants(&self, perm: Option<PermId>) -> bool {
        self.all
            || perm.is_some_and(|id| {
                self.bits
                    .get(id as usize / 64)
                    .is_some_and(|w| w & (1 << (id % 64)) != 0)
            })
    }
}

#[derive(Debug)]
pub(crate) struct CompiledRole {
    pub name: Box<str>,
    pub permissions: PermSet,
}

/// A permission an endpoint requires, `ws/perm` split into its workspace and permission.
#[derive(Debug, Clone)]
pub(crate) struct RequiredPermission {
    pub workspace: Option<Box<str>>,
    pub permission: Option<PermId>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Callers {
    pub principal: bool,
    pub service_principal: bool,
}

#[derive(Debug, Clone)]
pub(crate) struct CompiledMethod {
    /// `None` when the document has no `permissions` key (differs from `Some([])`).
    pub permissions: Option<Box<[RequiredPermission]>>,
    /// Empty when absent: no scope required.
    pub scopes: Box<[Box<str>]>,
    pub callers: Option<Callers>,
    pub deny: bool,
}

#[derive(Debug)]
pub(crate) struct Endpoint {
    pub pattern: Box<str>,
    pub methods: [Option<CompiledMethod>; METHODS.len()],
}

/// A policy ready to decide: immutable, shared across requests, swapped whole on reload.
#[derive(Debug)]
pub struct CompiledPolicy {
    pub(crate) revision: String,
    pub(crate) roles: Vec<CompiledRole>,
    pub(crate) role_ids: FastMap<Box<str>, RoleId>,
    pub(crate) permission_ids: FastMap<Box<str>, PermId>,
    /// Permission names by id, for explanations.
    pub(crate) permission_names: Box<[Box<str>]>,
    pub(crate) bindings: Bindings,
    pub(crate) endpoints: Vec<Endpoint>,
    pub(crate) matcher: Matcher,
    pub(crate) denied_prefixes: Box<[Box<str>]>,
    pub(crate) platform_admin: Option<RoleId>,
    /// Principals bound to PlatformAdmin in `system`, sorted: every decision asks whether a
    /// caller is one, and a platform has a handful.
    pub(crate) platform_admins: Box<[Box<str>]>,
    pub(crate) service_system: Option<RoleId>,
}

impl CompiledPolicy {
    /// Validates and compiles `doc` after adding the `defaults` bindings. Every error names the
    /// document path it is about.
    pub fn build(
        doc: PolicyDocument,
        defaults: &BindingDefaults,
        revision: impl Into<String>,
    ) -> Result<Self, DocumentError> {
        Self::build_layers(&[&SourceDocument::from(doc)], defaults, revision)
    }

    /// [`Self::build`] for documents merged in order (see [`PolicyDocument::merge`]).
    pub fn build_layers(
        layers: &[&SourceDocument],
        defaults: &BindingDefaults,
        revision: impl Into<String>,
    ) -> Result<Self, DocumentError> {
        let doc = match layers {
            [layer] => layer.document.clone(),
            _ => {
                let mut merged = PolicyDocument::default();
                for layer in layers {
                    merged.merge(layer.document.clone());
                }
                merged
            }
        };
        let authz = &doc.authz;
        let mut permission_ids: FastMap<Box<str>, PermId> = FastMap::new();
        let mut intern = |perm: &str| -> PermId {
            let next = permission_ids.len() as PermId;
            *permission_ids.entry(perm.into()).or_insert(next)
        };

        // Roles: syntax, known includes, no cycles, bounded depth; then expand once.
        let role_ids: FastMap<Box<str>, RoleId> = authz
            .roles
            .keys()
            .enumerate()
            .map(|(i, name)| (name.as_str().into(), i as RoleId))
            .collect();
        let mut own = Vec::with_capacity(authz.roles.len());
        for (name, role) in &authz.roles {
            let set = own_permissions(&doc, name, role, &mut intern)
                .map_err(|e| e.in_entry(Entry::Role(name.clone())))?;
            own.push(set);
        }
        check_include_cycles(&doc)?;
        let mut roles = Vec::with_capacity(own.len());
        for name in authz.roles.keys() {
            let reachable =
                included_roles(&doc, name).map_err(|e| e.in_entry(Entry::Role(name.clone())))?;
            let mut permissions = PermSet::default();
            for r in reachable {
                permissions.union(&own[role_ids[r] as usize]);
            }
            roles.push(CompiledRole {
                name: name.as_str().into(),
                permissions,
            });
        }

        let mut endpoints = Vec::with_capacity(authz.endpoints.len());
        let mut patterns = Vec::with_capacity(authz.endpoints.len());
        for (pattern_text, methods) in &authz.endpoints {
            let (endpoint, pattern) = compile_endpoint(pattern_text, methods, &mut intern)
                .map_err(|e| e.in_entry(Entry::Endpoint(pattern_text.clone())))?;
            endpoints.push(endpoint);
            patterns.push(pattern);
        }
        let matcher = Matcher::new(patterns);

        // The bootstrap bindings join after the document's own entries are checked, so an
        // error in the document is reported as itself.
        let added = defaults.added(&role_ids)?;
        let documents: Vec<_> = layers.iter().map(|layer| &layer.bindings).collect();
        let bindings = Bindings::compile(&documents, &role_ids, &added)?;

        for (i, prefix) in authz.config.denied_plugin_prefixes.iter().enumerate() {
            if !prefix.starts_with('/') {
                return Err(DocumentError::new(
                    format!("authz.config.denied_plugin_prefixes[{i}]"),
                    format!("{prefix:?} must be a path starting with /"),
                ));
            }
        }

        let platform_admin = role_ids.get("PlatformAdmin").copied();
        let mut platform_admins: Vec<Box<str>> = platform_admin
            .map(|admin| {
                bindings
                    .in_workspace(SYSTEM)
                    .filter(|(_, roles)| roles.contains(&admin))
                    .map(|(principal, _)| principal.into())
                    .collect()
            })
            .unwrap_or_default();
        platform_admins.sort_unstable();

        let mut permission_names = vec![Box::<str>::from(""); permission_ids.len()];
        for (name, id) in &permission_ids {
            permission_names[*id as usize] = name.clone();
        }
        Ok(Self {
            revision: revision.into(),
            permission_names: permission_names.into(),
            platform_admin,
            platform_admins: platform_admins.into(),
            service_system: role_ids.get("ServiceSystem").copied(),
            roles,
            role_ids,
            permission_ids,
            bindings,
            endpoints,
            matcher,
            denied_prefixes: authz
                .config
                .denied_plugin_prefixes
                .iter()
                .map(|p| p.as_str().into())
                .collect(),
        })
    }

    pub fn revision(&self) -> &str {
        &self.revision
    }

    pub fn endpoint_count(&self) -> usize {
        self.endpoints.len()
    }

    pub fn role_count(&self) -> usize {
        self.roles.len()
    }

    /// Number of (principal, workspace) binding entries.
    pub fn binding_count(&self) -> usize {
        self.bindings.len()
    }
}

/// A role's own permissions (before `includes`), checking its syntax and its includes.
fn own_permissions(
    doc: &PolicyDocument,
    name: &str,
    role: &RoleDef,
    intern: &mut impl FnMut(&str) -> PermId,
) -> Result<PermSet, DocumentError> {
    let mut set = PermSet::default();
    for (i, perm) in role.permissions.iter().enumerate() {
        if perm == "*" {
            set.all = true;
        } else if syntax::is_permission(perm) {
            set.insert(intern(perm));
        } else {
            return Err(DocumentError::new(
                format!("authz.roles.{name}.permissions[{i}]"),
                format!("{perm:?} is not a permission (expected e.g. models.read, or *)"),
            ));
        }
    }
    for (i, included) in role.includes.iter().enumerate() {
        if !doc.authz.roles.contains_key(included) {
            return Err(DocumentError::new(
                format!("authz.roles.{name}.includes[{i}]"),
                format!("unknown role {included:?}"),
            ));
        }
    }
    Ok(set)
}

fn compile_endpoint(
    pattern_text: &str,
    methods: &BTreeMap<String, MethodDef>,
    intern: &mut impl FnMut(&str) -> PermId,
) -> Result<(Endpoint, Pattern), DocumentError> {
    let at = format!("authz.endpoints[{pattern_text:?}]");
    let pattern = Pattern::parse(pattern_text).map_err(|m| DocumentError::new(&at, m))?;
    let mut compiled: [Option<CompiledMethod>; METHODS.len()] = Default::default();
    for (method, def) in methods {
        let Some(slot) = METHODS.iter().position(|m| m == method) else {
            return Err(DocumentError::new(
                format!("{at}.{method}"),
                format!(
                    "unknown method key {method:?} (expected lower-case: {})",
                    METHODS.join(", ")
                ),
            ));
        };
        compiled[slot] = Some(compile_method(&format!("{at}.{method}"), def, intern)?);
    }
    let endpoint = Endpoint {
        pattern: pattern_text.into(),
        methods: compiled,
    };
    Ok((endpoint, pattern))
}

/// Fails naming the cycle when `includes` loops back on itself.
fn check_include_cycles(doc: &PolicyDocument) -> Result<(), DocumentError> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    fn visit<'d>(
        doc: &'d PolicyDocument,
        name: &'d str,
        chain: &mut Vec<&'d str>,
        marks: &mut HashMap<&'d str, Mark>,
    ) -> Result<(), DocumentError> {
        match marks.get(name) {
            Some(Mark::Done) => return Ok(()),
            Some(Mark::Open) => {
                let start = chain.iter().position(|r| *r == name).unwrap_or(0);
                let mut cycle = chain[start..].to_vec();
                cycle.push(name);
                let role = chain[chain.len() - 1];
                return Err(DocumentError::new(
                    format!("authz.roles.{role}.includes"),
                    format!("includes cycle: {}", cycle.join(" -> ")),
                )
                .in_entry(Entry::Role(role.to_string())));
            }
            None => {}
        }
        marks.insert(name, Mark::Open);
        chain.push(name);
        for included in &doc.authz.roles[name].includes {
            visit(doc, included, chain, marks)?;
        }
        chain.pop();
        marks.insert(name, Mark::Done);
        Ok(())
    }
    let mut marks = HashMap::new();
    for name in doc.authz.roles.keys() {
        visit(doc, name, &mut Vec::new(), &mut marks)?;
    }
    Ok(())
}

/// The roles whose permissions `role` holds: itself and what it includes, level by level as
/// NMP walks them. Assumes includes are acyclic and name known roles.
fn included_roles<'d>(
    doc: &'d PolicyDocument,
    role: &'d str,
) -> Result<Vec<&'d str>, DocumentError> {
    let mut reached = vec![role];
    let mut level = vec![role];
    for depth in 1.. {
        let next: Vec<&str> = level
            .iter()
            .flat_map(|r| doc.authz.roles[*r].includes.iter().map(String::as_str))
            .filter(|r| !reached.contains(r))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        if next.is_empty() {
            break;
        }
        if depth > MAX_INCLUDE_DEPTH {
            return Err(DocumentError::new(
                format!("authz.roles.{role}.includes"),
                format!(
                    "role {:?} is {depth} levels of includes below {role:?}; NMP evaluates at most {MAX_INCLUDE_DEPTH}",
                    next[0]
                ),
            ));
        }
        reached.extend(&next);
        level = next;
    }
    Ok(reached)
}

fn compile_method(
    at: &str,
    def: &MethodDef,
    intern: &mut impl FnMut(&str) -> PermId,
) -> Result<CompiledMethod, DocumentError> {
    if let Some(key) = def.extensions.keys().find(|k| !k.starts_with("x-")) {
        return Err(DocumentError::new(
            format!("{at}.{key}"),
            "unknown key (expected permissions, scopes, callers, deny, or an x- extension)",
        ));
    }
    let permissions = match &def.permissions {
        None => None,
        Some(list) => Some(
            list.iter()
                .enumerate()
                .map(|(i, text)| {
                    let (workspace, perm) = match text.split_once('/') {
                        Some((ws, perm)) if !ws.is_empty() => (Some(ws), perm),
                        Some(_) => (None, ""),
                        None => (None, text.as_str()),
                    };
                    if !syntax::is_permission(perm) {
                        return Err(DocumentError::new(
                            format!("{at}.permissions[{i}]"),
                            format!(
                                "{text:?} is not a permission (expected e.g. models.read or <workspace>/models.read)"
                            ),
                        ));
                    }
                    Ok(RequiredPermission {
                        workspace: workspace.map(Into::into),
                        permission: Some(intern(perm)),
                    })
                })
                .collect::<Result<Box<[_]>, _>>()?,
        ),
    };
    let scopes = def.scopes.as_deref().unwrap_or_default();
    if let Some((i, bad)) = scopes
        .iter()
        .enumerate()
        .find(|(_, s)| !syntax::is_scope(s))
    {
        return Err(DocumentError::new(
            format!("{at}.scopes[{i}]"),
            format!("{bad:?} is not a scope (expected area:verb, e.g. models:read)"),
        ));
    }
    let callers = match &def.callers {
        None => None,
        Some(list) => {
            let mut callers = Callers::default();
            for (i, caller) in list.iter().enumerate() {
                match caller.as_str() {
                    "principal" => callers.principal = true,
                    "service_principal" => callers.service_principal = true,
                    other => {
                        return Err(DocumentError::new(
                            format!("{at}.callers[{i}]"),
                            format!(
                                "unknown caller kind {other:?} (expected principal or service_principal)"
                            ),
                        ));
                    }
                }
            }
            Some(callers)
        }
    };
    Ok(CompiledMethod {
        permissions,
        scopes: scopes.iter().map(|s| s.as_str().into()).collect(),
        callers,
        deny: def.deny == Some(true),
    })
}
