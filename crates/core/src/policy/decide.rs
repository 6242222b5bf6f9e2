//! NMP's decision semantics over a [`CompiledPolicy`]: `allow`, `has_permissions` and
//! `has_role`. Pure functions: no I/O, no clock, nothing parsed from policy data.

use super::Principal;
use super::compile::{
    CompiledMethod, CompiledPolicy, Endpoint, PermId, RequiredPermission, RoleId,
};

/// Told by the evaluation what each rule examined. Every method defaults to doing nothing.
pub(crate) trait Recorder {
    /// The request facts every rule reads, once, before any rule runs.
    fn facts(&mut self, _facts: &Facts<'_, '_>) {}
    /// `principal` holds PlatformAdmin in `system`.
    fn platform_admin(&mut self, _principal: &str) {}
    /// The scope check against the endpoint's `required` scopes.
    fn scope(&mut self, _required: &[Box<str>], _check: ScopeCheck<'_>) {}
    /// One required permission looked up for `principal` in `workspace`.
    fn permission(
        &mut self,
        _principal: &str,
        _workspace: &str,
        _permission: Option<PermId>,
        _grant: Option<Grant<'_>>,
    ) {
    }
}

/// The decision path: nothing recorded.
impl Recorder for () {}

/// How the scope check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ScopeCheck<'a> {
    /// The caller has no platform scope (none containing `:`): passes.
    NoPlatformScopes,
    /// The endpoint lists no scopes: passes.
    NoneRequired,
    /// This token scope is one of the endpoint's: passes.
    Matched(&'a str),
    Missing,
}

/// The binding that granted a permission: `principal` is the applicable principal or `*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Grant<'a> {
    pub principal: &'a str,
    pub role: RoleId,
}

/// Paths NMP always allows, matched against the full path as sent (query included).
pub const HEALTH_PATHS: [&str; 4] = ["/health/live", "/health/ready", "/status", "/metrics"];
/// The OPA bundle download, readable only with `iam.bundle.read` in `system`.
pub const BUNDLE_PATH: &str = "/apis/auth/v2/iam/opa-bundle.tar.gz";
pub(crate) const SYSTEM: &str = "system";
const ALL_WORKSPACES: &str = "-";

crate::table_enum! {
    /// Why a request was allowed or denied; the name is stable (metrics, logs, metadata).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub enum Reason: Rule {
        HealthPath = ("health_path", Rule::Allow, "health path"),
        PlatformAdmin = ("platform_admin", Rule::Allow, "PlatformAdmin in system"),
        ServiceUnknownPath = (
            "service_unknown_path",
            Rule::Allow,
            "service principal on a path no endpoint matches"
        ),
        WorkspacePermission = (
            "workspace_permission",
            Rule::Allow,
            "required permissions held in the workspace"
        ),
        ServiceAllWorkspacesWrite = (
            "service_all_workspaces_write",
            Rule::Allow,
            "service principal holds the permissions across all workspaces"
        ),
        SystemPermission = ("system_permission", Rule::Allow, "required permissions held in system"),
        PermissionlessRead = (
            "permissionless_read",
            Rule::Allow,
            "read of an endpoint that requires no permission"
        ),
        AllWorkspacesRead = ("all_workspaces_read", Rule::Allow, "read across all workspaces"),
        PermissionlessEndpoint = (
            "permissionless_endpoint",
            Rule::Allow,
            "endpoint requires no permission"
        ),
        NoEndpointsLoaded = ("no_endpoints_loaded", Rule::Deny, "no endpoints are loaded"),
        EndpointDenied = ("endpoint_denied", Rule::Deny, "endpoint is denied"),
        DeniedPluginPrefix = (
            "denied_plugin_prefix",
            Rule::Deny,
            "path is under a denied plugin prefix"
        ),
        SecretAccessNotService = (
            "secret_access_not_service",
            Rule::Deny,
            "secret values are readable by service principals only"
        ),
        BundleAccess = (
            "bundle_access",
            Rule::Deny,
            "policy bundle requires iam.bundle.read in system"
        ),
        NestedEntitiesInternal = (
            "nested_entities_internal",
            Rule::Deny,
            "nested entities APIs are for service principals and platform admins"
        ),
        ServiceOnlyRoute = ("service_only_route", Rule::Deny, "route is for service principals only"),
        PrincipalOnlyRoute = (
            "principal_only_route",
            Rule::Deny,
            "route is not for service principals"
        ),
        NoIdentity = ("no_identity", Rule::NoAllow, "no identity"),
        ScopeMismatch = (
            "scope_mismatch",
            Rule::NoAllow,
            "token scopes do not cover this endpoint"
        ),
        NotPermitted = ("not_permitted", Rule::NoAllow, "required permissions not held"),
    }
}

/// What kind of rule a [`Reason`] names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// An allow rule applied.
    Allow,
    /// A deny rule applied: it overrides every allow rule.
    Deny,
    /// No allow rule applied.
    NoAllow,
}

impl Reason {
    /// True for the reasons that allow.
    pub fn allows(self) -> bool {
        self.kind() == Rule::Allow
    }

    /// True for the deny rules that override every allow rule (as opposed to an allow rule,
    /// or no allow rule applying).
    pub(crate) fn is_deny_rule(self) -> bool {
        self.kind() == Rule::Deny
    }
}

/// The outcome of `allow` and the facts behind it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision<'p> {
    pub allowed: bool,
    pub reason: Reason,
    /// The endpoint pattern matched, if any.
    pub endpoint: Option<&'p str>,
    /// The workspace the request addresses, if its endpoint has one (`-` is all workspaces).
    pub workspace: Option<String>,
}

/// Everything `allow` derives from the request once, shared by the rules.
pub(crate) struct Facts<'p, 'r> {
    pub method: &'r str,
    pub base_path: &'r str,
    pub endpoint: Option<&'p Endpoint>,
    pub entry: Option<&'p CompiledMethod>,
    pub workspace: Option<&'r str>,
    pub principal: Option<&'r Principal>,
    /// id, email and groups, empty strings dropped.
    pub applicable: Vec<&'r str>,
}

impl CompiledPolicy {
    /// NMP's `allow`: `principal` is `None` when the caller presented no identity.
    pub fn allow<'p>(
        &'p self,
        principal: Option<&Principal>,
        method: &str,
        path: &str,
    ) -> Decision<'p> {
        self.evaluate(principal, method, path, &mut ())
    }

    /// The one evaluation behind [`Self::allow`] and [`Self::explain`]: `rec` is told what each
    /// rule looked at. With `()` it records nothing and compiles to the plain decision.
    pub(crate) fn evaluate<'p, R: Recorder>(
        &'p self,
        principal: Option<&Principal>,
        method: &str,
        path: &str,
        rec: &mut R,
    ) -> Decision<'p> {
        let base_path = path.split('?').next().unwrap_or_default();
        let found = self.matcher.best_match(base_path);
        let endpoint = found.map(|m| &self.endpoints[m.pattern]);
        let entry = endpoint.and_then(|e| method_slot(method).and_then(|m| e.methods[m].as_ref()));
        let workspace = found
            .and_then(|m| m.workspace_segment)
            .and_then(|i| base_path.split('/').nth(i));
        let facts = Facts {
            method,
            base_path,
            endpoint,
            entry,
            workspace,
            principal,
            applicable: principal.map(applicable_principals).unwrap_or_default(),
        };
        rec.facts(&facts);
        let (allowed, reason) = match self.deny_rule(&facts, path, rec) {
            Some(reason) => (false, reason),
            None => self.allow_rule(&facts, path, rec),
        };
        Decision {
            allowed,
            reason,
            endpoint: endpoint.map(|e| &*e.pattern),
            workspace: workspace.map(str::to_string),
        }
    }

    /// The first deny rule that applies. Deny rules override every allow rule.
    fn deny_rule<R: Recorder>(&self, f: &Facts<'_, '_>, path: &str, rec: &mut R) -> Option<Reason> {
        if self.endpoints.is_empty() && !HEALTH_PATHS.contains(&path) {
            return Some(Reason::NoEndpointsLoaded);
        }
        if f.entry.is_some_and(|e| e.deny) {
            return Some(Reason::EndpointDenied);
        }
        if self
            .denied_prefixes
            .iter()
            .any(|p| under_prefix(f.base_path, p))
        {
            return Some(Reason::DeniedPluginPrefix);
        }
        // The rules below single out callers that are not `service:` principals. A caller
        // with no id at all (possible only in PDP input) is not a service either.
        let service = f.principal.is_some_and(Principal::is_service);
        let human = !f.applicable.is_empty() && !service;
        if human && is_secret_access_path(f.base_path) {
            return Some(Reason::SecretAccessNotService);
        }
        if f.base_path == BUNDLE_PATH {
            let ok = !f.applicable.is_empty()
                && self.scope_check(f, rec)
                && f.applicable
                    .iter()
                    .any(|p| self.holds_all_named(f, p, SYSTEM, &["iam.bundle.read"], rec));
            if !ok {
                return Some(Reason::BundleAccess);
            }
        }
        let admin = self.platform_admin_among(&f.applicable).is_some();
        if human
            && !admin
            && f.base_path.starts_with("/apis/entities/v2/")
            && !is_entities_workspace_object_path(f.base_path, f.method)
        {
            return Some(Reason::NestedEntitiesInternal);
        }
        if let Some(callers) = f.entry.and_then(|e| e.callers) {
            if callers.service_principal && !callers.principal && human && !admin {
                return Some(Reason::ServiceOnlyRoute);
            }
            if callers.principal && !callers.service_principal && service {
                return Some(Reason::PrincipalOnlyRoute);
            }
        }
        None
    }

    /// The first allow rule that applies, or why none did.
    fn allow_rule<R: Recorder>(
        &self,
        f: &Facts<'_, '_>,
        path: &str,
        rec: &mut R,
    ) -> (bool, Reason) {
        if HEALTH_PATHS.contains(&path) {
            return (true, Reason::HealthPath);
        }
        if f.applicable.is_empty() {
            return (false, Reason::NoIdentity);
        }
        if let Some(admin) = self.platform_admin_among(&f.applicable) {
            rec.platform_admin(admin);
            return (true, Reason::PlatformAdmin);
        }
        let service_id = f
            .principal
            .filter(|p| p.is_service())
            .and_then(|p| p.id.as_deref());
        if service_id.is_some() && f.endpoint.is_none() {
            return (true, Reason::ServiceUnknownPath);
        }
        // Every rule below also needs the scope check.
        if !self.scope_check(f, rec) {
            return (false, Reason::ScopeMismatch);
        }
        let required = f.entry.and_then(|e| e.permissions.as_deref());
        let read = matches!(f.method, "GET" | "HEAD");
        if let Some(required) = required.filter(|r| !r.is_empty()) {
            let rule = match f.workspace {
                Some(ALL_WORKSPACES) => {
                    let write = matches!(f.method, "POST" | "PUT" | "PATCH" | "DELETE");
                    (write
                        && service_id
                            .is_some_and(|id| self.holds_all(f, id, ALL_WORKSPACES, required, rec)))
                    .then_some(Reason::ServiceAllWorkspacesWrite)
                }
                Some(ws) => f
                    .applicable
                    .iter()
                    .any(|p| self.holds_all(f, p, ws, required, rec))
                    .then_some(Reason::WorkspacePermission),
                None => f
                    .applicable
                    .iter()
                    .any(|p| self.holds_all(f, p, SYSTEM, required, rec))
                    .then_some(Reason::SystemPermission),
            };
            if let Some(reason) = rule {
                return (true, reason);
            }
        }
        if read
            && f.endpoint.is_some()
            && f.workspace.is_none()
            && required.is_none_or(<[_]>::is_empty)
        {
            return (true, Reason::PermissionlessRead);
        }
        if read && f.workspace == Some(ALL_WORKSPACES) {
            return (true, Reason::AllWorkspacesRead);
        }
        if required.is_some_and(<[_]>::is_empty) {
            return (true, Reason::PermissionlessEndpoint);
        }
        (false, Reason::NotPermitted)
    }

    /// NMP's optional scope check: callers without platform scopes (none containing `:`)
    /// pass; otherwise one of the endpoint's scopes must be among them.
    fn scope_check<R: Recorder>(&self, f: &Facts<'_, '_>, rec: &mut R) -> bool {
        let required = f.entry.map(|e| &*e.scopes).unwrap_or_default();
        let check = match f.principal {
            None => ScopeCheck::NoPlatformScopes,
            Some(principal) => {
                let mut platform = principal
                    .scopes
                    .iter()
                    .filter(|s| s.contains(':'))
                    .peekable();
                if platform.peek().is_none() {
                    ScopeCheck::NoPlatformScopes
                } else if required.is_empty() {
                    ScopeCheck::NoneRequired
                } else {
                    platform
                        .find(|s| required.iter().any(|r| **r == ***s))
                        .map_or(ScopeCheck::Missing, |s| ScopeCheck::Matched(s.as_str()))
                }
            }
        };
        rec.scope(required, check);
        !matches!(check, ScopeCheck::Missing)
    }

    /// The first applicable principal bound to PlatformAdmin in `system`.
    fn platform_admin_among<'a>(&self, applicable: &[&'a str]) -> Option<&'a str> {
        applicable.iter().copied().find(|p| {
            self.platform_admins
                .binary_search_by(|a| (**a).cmp(p))
                .is_ok()
        })
    }

    /// Roles bound to `principal` in `workspace` by the document.
    pub(crate) fn explicit_roles(&self, principal: &str, workspace: &str) -> &[RoleId] {
        self.bindings.roles(principal, workspace)
    }

    /// The roles `principal` holds in `workspace`: explicit bindings, or `ServiceSystem` for
    /// the caller's own `service:` id when it has none there.
    pub(crate) fn effective_roles<'a>(
        &'a self,
        f: &Facts<'_, '_>,
        principal: &str,
        workspace: &str,
    ) -> &'a [RoleId] {
        let explicit = self.explicit_roles(principal, workspace);
        let is_service_id = principal.starts_with("service:")
            && f.principal.and_then(|p| p.id.as_deref()) == Some(principal);
        match (explicit.is_empty() && is_service_id, &self.service_system) {
            (true, Some(service_system)) => std::slice::from_ref(service_system),
            (true, None) => &[],
            (false, _) => explicit,
        }
    }

    /// The first role of `roles` that grants `permission`.
    fn granting_role(&self, roles: &[RoleId], permission: Option<PermId>) -> Option<RoleId> {
        roles
            .iter()
            .copied()
            .find(|r| self.roles[*r as usize].permissions.grants(permission))
    }

    /// One principal holds every required permission (each in its own workspace when written
    /// `ws/perm`); the `*` principal's bindings count for unprefixed permissions.
    fn holds_all<'a, R: Recorder>(
        &'a self,
        f: &Facts<'_, '_>,
        principal: &'a str,
        workspace: &'a str,
        required: &'a [RequiredPermission],
        rec: &mut R,
    ) -> bool {
        required.iter().all(|r| {
            let (workspace, wildcard) = match r.workspace.as_deref() {
                Some(target) => (target, false),
                None => (workspace, true),
            };
            let grant = self
                .granting_role(self.effective_roles(f, principal, workspace), r.permission)
                .map(|role| Grant { principal, role })
                .or_else(|| {
                    wildcard
                        .then(|| {
                            self.granting_role(self.explicit_roles("*", workspace), r.permission)
                        })
                        .flatten()
                        .map(|role| Grant {
                            principal: "*",
                            role,
                        })
                });
            rec.permission(principal, workspace, r.permission, grant);
            grant.is_some()
        })
    }

    /// [`Self::holds_all`] for permissions given as text (PDP input, built-in rules).
    fn holds_all_named<R: Recorder>(
        &self,
        f: &Facts<'_, '_>,
        principal: &str,
        workspace: &str,
        required: &[&str],
        rec: &mut R,
    ) -> bool {
        required.iter().all(|text| match self.parse_required(text) {
            Some(r) => self.holds_all(f, principal, workspace, std::slice::from_ref(&r), rec),
            None => false,
        })
    }

    /// A permission as NMP reads one: `ws/perm` must have exactly one `/`.
    fn parse_required(&self, text: &str) -> Option<RequiredPermission> {
        let (workspace, perm) = match text.split_once('/') {
            Some((_, perm)) if perm.contains('/') => return None,
            Some((ws, perm)) => (Some(ws.into()), perm),
            None => (None, text),
        };
        Some(RequiredPermission {
            workspace,
            permission: self.permission_ids.get(perm).copied(),
        })
    }

    /// NMP's `has_permissions`: PlatformAdmin holds everything; otherwise one applicable
    /// principal must hold all of `permissions` in `workspace`.
    pub fn has_permissions(
        &self,
        principal: &Principal,
        workspace: &str,
        permissions: &[impl AsRef<str>],
    ) -> bool {
        let f = self.bare_facts(principal);
        if f.applicable.is_empty() {
            return false;
        }
        if self.platform_admin_among(&f.applicable).is_some() {
            return true;
        }
        let required: Vec<&str> = permissions.iter().map(AsRef::as_ref).collect();
        f.applicable
            .iter()
            .any(|p| self.holds_all_named(&f, p, workspace, &required, &mut ()))
    }

    /// True when an applicable principal holds PlatformAdmin in `system`.
    pub(crate) fn is_platform_admin(&self, principal: &Principal) -> bool {
        self.platform_admin_among(&applicable_principals(principal))
            .is_some()
    }

    /// NMP's `has_role`: the role is bound in `workspace` to an applicable principal (its id,
    /// email or a group), or is `ServiceSystem` for a `service:` id without bindings there.
    /// A `*` binding does not count, as in NMP: services poll this (`wait_role`) to see a
    /// binding of that principal appear or go, and a revoked member's role must read as gone
    /// even where `*` holds the same role.
    pub fn has_role(&self, principal: &Principal, workspace: &str, role: &str) -> bool {
        let f = self.bare_facts(principal);
        let Some(&role) = self.role_ids.get(role) else {
            return false;
        };
        f.applicable
            .iter()
            .any(|p| self.effective_roles(&f, p, workspace).contains(&role))
    }

    pub(crate) fn bare_facts<'r>(&self, principal: &'r Principal) -> Facts<'_, 'r> {
        Facts {
            method: "",
            base_path: "",
            endpoint: None,
            entry: None,
            workspace: None,
            principal: Some(principal),
            applicable: applicable_principals(principal),
        }
    }
}

/// Principal id, email and each group, empty strings dropped. As in NMP, a principal without
/// an id has none: an email or groups alone identify nobody.
fn applicable_principals(p: &Principal) -> Vec<&str> {
    if p.id.is_none() {
        return Vec::new();
    }
    let mut all: Vec<&str> =
        p.id.iter()
            .chain(p.email.iter())
            .chain(p.groups.iter())
            .map(String::as_str)
            .filter(|s| !s.is_empty())
            .collect();
    all.sort_unstable();
    all.dedup();
    all
}

/// Slot of an HTTP method in an endpoint's method table (NMP compares lower-cased).
fn method_slot(method: &str) -> Option<usize> {
    super::compile::METHODS
        .iter()
        .position(|m| m.eq_ignore_ascii_case(method))
}

/// Under a denied prefix: the prefix itself, or the prefix followed by `/`.
fn under_prefix(path: &str, prefix: &str) -> bool {
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// `/<a>/<b>/<c>/workspaces/<ws>/secrets/<name>/access`, as NMP's deny rule shapes it.
fn is_secret_access_path(path: &str) -> bool {
    // Checked on every request by a human caller: walk the segments, collect nothing.
    let mut parts = path.split('/');
    let mut segment = |i: usize| parts.nth(i);
    segment(4) == Some("workspaces")
        && segment(1) == Some("secrets")
        && segment(1) == Some("access")
        && segment(0).is_none()
}

/// The Entities API paths open to every caller: workspace list/create, single-workspace
/// get/put/delete, and the members/projects/entities sub-resources of a real workspace.
fn is_entities_workspace_object_path(path: &str, method: &str) -> bool {
    let parts: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    if parts.len() < 4 || parts[..4] != ["apis", "entities", "v2", "workspaces"] {
        return false;
    }
    let method = method.to_ascii_lowercase();
    let method_in = |allowed: &[&str]| allowed.contains(&method.as_str());
    match parts.len() {
        4 => method_in(&["get", "post"]),
        5 => method_in(&["get", "put", "delete"]),
        _ => {
            parts[4] != "-"
                && matches!(parts[5], "members" | "projects" | "entities")
                && method_in(&["get", "post", "put", "patch", "delete", "head"])
        }
    }
}
