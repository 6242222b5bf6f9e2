//! Property tests of the decision core's invariants (issue 7), over random policy documents,
//! principals and requests. Terms, following DESIGN.md §1 "Decision semantics":
//!
//! - **Request**: an HTTP method and a path (maybe with a query). Paths are drawn from the
//!   generated endpoint patterns with their placeholders filled (workspaces include `-` and
//!   `system`), plus near misses (a segment more or less, a query) and the health paths.
//! - **Allowed**: `CompiledPolicy::allow(..).allowed`.
//! - **Deny rule**: one of DESIGN's "Deny overrides allow" rules, i.e. a decision whose reason
//!   is one of [`DENY_RULES`]: `deny: true` on the matched endpoint method, a
//!   `denied_plugin_prefixes` entry, the secret-value path for non-`service:` callers, the
//!   bundle path without `iam.bundle.read` in `system`, nested Entities paths for callers that
//!   are neither `service:` nor PlatformAdmin, `callers:` restrictions, no endpoints at all.
//! - **Applicable principals**: the caller's id, email and groups with empty strings dropped;
//!   a caller without an id has none (README "Decision semantics").
//! - **PlatformAdmin**: a caller whose id, email or group is bound to the role `PlatformAdmin`
//!   in workspace `system` (the `*` principal does not make anyone an admin).
//!
//! Every property runs [`CASES`] random documents, each with [`REQUESTS`] requests. The stated
//! exceptions are the ones DESIGN itself makes; each is written next to its property.

use std::collections::{BTreeMap, BTreeSet};

use nmp_authz_core::policy::decide::{BUNDLE_PATH, HEALTH_PATHS};
use nmp_authz_core::policy::document::{AuthzData, MethodDef, PolicyConfig, PrincipalDef, RoleDef};
use nmp_authz_core::policy::{BindingDefaults, CompiledPolicy, PolicyDocument, Principal, Reason};
use proptest::prelude::*;
use proptest::sample::{select, subsequence};

/// Random documents per property. Each builds 1-3 small policies and decides
/// `REQUESTS` x 2-3 requests: the whole file runs in a few seconds in a debug build.
const CASES: u32 = 512;
const REQUESTS: usize = 12;

/// Reasons of the deny rules (DESIGN "Deny overrides allow").
const DENY_RULES: [Reason; 8] = [
    Reason::NoEndpointsLoaded,
    Reason::EndpointDenied,
    Reason::DeniedPluginPrefix,
    Reason::SecretAccessNotService,
    Reason::BundleAccess,
    Reason::NestedEntitiesInternal,
    Reason::ServiceOnlyRoute,
    Reason::PrincipalOnlyRoute,
];

const PERMS: [&str; 6] = [
    "a.read",
    "a.write",
    "b.read",
    "b.write",
    "iam.bundle.read",
    "c.run",
];
const ROLES: [&str; 5] = ["R0", "R1", "R2", "R3", "R4"];
const WORKSPACES: [&str; 6] = ["ws1", "ws2", "system", "-", "shared", "default"];
const BINDING_KEYS: [&str; 10] = [
    "alice",
    "bob",
    "alice@x.io",
    "eng",
    "ops",
    "*",
    "service:jobs",
    "service:eval",
    "root",
    "admins",
];
const SCOPES: [&str; 4] = ["a:read", "a:write", "p:read", "p:write"];
const METHOD_KEYS: [&str; 6] = ["get", "head", "post", "put", "patch", "delete"];
const METHODS: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "get",
];
const PATTERNS: [&str; 14] = [
    "/apis/a/v2/workspaces/{workspace}/items",
    "/apis/a/v2/workspaces/{workspace}/items/{name}",
    "/apis/a/v2/workspaces/{workspace}/items/special",
    "/apis/a/v2/catalog",
    "/apis/b/v1/ws/{workspace_id}/things",
    "/apis/b/v1/workspaces/{ws}/jobs",
    "/apis/gw/v2/workspaces/{workspace}/openai/-/{rest}",
    "/apis/gw/v2/workspaces/{workspace}/openai/-/v1/models",
    "/apis/secrets/v2/workspaces/{workspace}/secrets/{name}/access",
    "/apis/entities/v2/workspaces/{workspace}",
    "/apis/entities/v2/workspaces/{workspace}/entities/{id}",
    "/apis/entities/v2/workspaces/{workspace}/other/{id}",
    "/apis/auth/v2/iam/opa-bundle.tar.gz",
    "/apis/c/v2/{x}/y",
];
const FILLS: [&str; 12] = [
    "ws1", "ws2", "system", "-", "shared", "default", "n1", "special", "v1", "models", "access",
    "members",
];
const DENIED_PREFIXES: [&str; 3] = ["/apis/c", "/apis/a/v2/workspaces/ws2", "/apis/gw/v2"];

// ---- generators ----

/// A policy document with the settings it is compiled with.
#[derive(Debug, Clone)]
struct Spec {
    doc: PolicyDocument,
    admin_email: Option<String>,
}

impl Spec {
    fn compile(&self) -> CompiledPolicy {
        let defaults = BindingDefaults {
            bootstrap_bindings: false,
            default_workspace: "default".into(),
            admin_email: self.admin_email.clone(),
        };
        CompiledPolicy::build(self.doc.clone(), &defaults, "prop")
            .expect("generated documents are valid")
    }

    /// The roles bound to `key` in `workspace` (the admin email's binding included).
    fn bound(&self, key: &str, workspace: &str) -> Vec<String> {
        let mut roles = self
            .doc
            .authz
            .principals
            .get(key)
            .and_then(|p| p.workspaces.get(workspace))
            .cloned()
            .unwrap_or_default();
        if self.admin_email.as_deref() == Some(key) && workspace == "system" {
            roles.push("PlatformAdmin".into());
        }
        roles
    }

    /// The permissions a role holds along `includes` (`*` as itself).
    fn role_permissions(&self, role: &str) -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut todo = vec![role.to_string()];
        let mut perms = BTreeSet::new();
        while let Some(r) = todo.pop() {
            if !seen.insert(r.clone()) {
                continue;
            }
            if let Some(def) = self.doc.authz.roles.get(&r) {
                perms.extend(def.permissions.iter().cloned());
                todo.extend(def.includes.iter().cloned());
            }
        }
        perms
    }

    fn entry(&self, pattern: &str, method: &str) -> Option<&MethodDef> {
        self.doc
            .authz
            .endpoints
            .get(pattern)?
            .get(&method.to_ascii_lowercase())
    }
}

fn perm_list() -> impl Strategy<Value = Vec<String>> {
    let perm = (
        select(&PERMS[..]),
        select(&["", "", "", "system/", "shared/", "ws1/"][..]),
    )
        .prop_map(|(p, ws)| format!("{ws}{p}"));
    prop::collection::vec(perm, 0..3)
}

fn method_def() -> impl Strategy<Value = MethodDef> {
    (
        prop_oneof![2 => Just(None), 1 => Just(Some(Vec::new())), 4 => perm_list().prop_map(Some)],
        prop::option::of(subsequence(&SCOPES[..], 0..=2)),
        prop::option::weighted(
            0.2,
            subsequence(&["principal", "service_principal"][..], 1..=2),
        ),
        prop::option::weighted(0.3, prop::bool::weighted(0.5)),
    )
        .prop_map(|(permissions, scopes, callers, deny)| MethodDef {
            permissions,
            scopes: scopes.map(|s| s.iter().map(|s| s.to_string()).collect()),
            callers: callers.map(|c| c.iter().map(|c| c.to_string()).collect()),
            deny,
            extensions: BTreeMap::new(),
        })
}

fn role_def(index: usize) -> impl Strategy<Value = RoleDef> {
    (
        subsequence(&PERMS[..], 0..=3),
        prop::bool::weighted(0.08),
        subsequence(&ROLES[..index], 0..=index.min(2)),
    )
        .prop_map(|(perms, star, includes)| RoleDef {
            description: None,
            includes: includes.iter().map(|r| r.to_string()).collect(),
            permissions: perms
                .iter()
                .map(|p| p.to_string())
                .chain(star.then(|| "*".to_string()))
                .collect(),
        })
}

fn spec() -> impl Strategy<Value = Spec> {
    let roles = (
        [
            prop::option::weighted(0.9, role_def(0)),
            prop::option::weighted(0.9, role_def(1)),
            prop::option::weighted(0.9, role_def(2)),
            prop::option::weighted(0.9, role_def(3)),
            prop::option::weighted(0.9, role_def(4)),
        ],
        subsequence(&PERMS[..], 0..=2),
        // NMP's ServiceSystem holds `*`; sometimes it is absent or narrower.
        prop::option::weighted(
            0.7,
            prop_oneof![Just(vec!["*"]), subsequence(&PERMS[..], 0..=2),],
        ),
    );
    let endpoints = prop::collection::btree_map(
        select(&PATTERNS[..]),
        prop::collection::btree_map(select(&METHOD_KEYS[..]), method_def(), 1..4),
        0..14,
    );
    let bindings = prop::collection::vec(
        (
            select(&BINDING_KEYS[..]),
            select(&WORKSPACES[..]),
            subsequence(&[0usize, 1, 2, 3, 4, 5, 6][..], 0..=2),
        ),
        0..10,
    );
    (
        roles,
        endpoints,
        bindings,
        subsequence(&DENIED_PREFIXES[..], 0..=1),
        prop::bool::weighted(0.3),
    )
        .prop_map(
            |((regular, admin_perms, service), endpoints, bindings, prefixes, admin_email)| {
                let mut roles = BTreeMap::new();
                for (name, def) in ROLES.iter().zip(regular) {
                    if let Some(def) = def {
                        roles.insert(name.to_string(), def);
                    }
                }
                // Includes may only name roles that made it into the document.
                let present: BTreeSet<String> = roles.keys().cloned().collect();
                for def in roles.values_mut() {
                    def.includes.retain(|r| present.contains(r));
                }
                roles.insert(
                    "PlatformAdmin".into(),
                    RoleDef {
                        permissions: admin_perms.iter().map(|p| p.to_string()).collect(),
                        ..RoleDef::default()
                    },
                );
                if let Some(perms) = service {
                    roles.insert(
                        "ServiceSystem".into(),
                        RoleDef {
                            permissions: perms.iter().map(|p| p.to_string()).collect(),
                            ..RoleDef::default()
                        },
                    );
                }
                let names: Vec<String> = roles.keys().cloned().collect();
                let mut principals: BTreeMap<String, PrincipalDef> = BTreeMap::new();
                for (key, workspace, picks) in bindings {
                    let bound = principals
                        .entry(key.to_string())
                        .or_default()
                        .workspaces
                        .entry(workspace.to_string())
                        .or_default();
                    for pick in picks {
                        let role = &names[pick % names.len()];
                        if !bound.contains(role) {
                            bound.push(role.clone());
                        }
                    }
                }
                let endpoints = endpoints
                    .into_iter()
                    .map(|(p, methods)| {
                        let methods = methods
                            .into_iter()
                            .map(|(m, def)| (m.to_string(), def))
                            .collect();
                        (p.to_string(), methods)
                    })
                    .collect();
                Spec {
                    doc: PolicyDocument {
                        authz: AuthzData {
                            roles,
                            endpoints,
                            principals,
                            config: PolicyConfig {
                                denied_plugin_prefixes: prefixes
                                    .iter()
                                    .map(|p| p.to_string())
                                    .collect(),
                            },
                            ..AuthzData::default()
                        },
                    },
                    admin_email: admin_email.then(|| "admin@x.io".to_string()),
                }
            },
        )
}

/// A pattern with its placeholders filled, maybe bent into a near miss.
fn path() -> impl Strategy<Value = String> {
    let filled = (
        select(&PATTERNS[..]),
        prop::collection::vec(select(&WORKSPACES[..]), 2),
        prop::collection::vec(select(&FILLS[..]), 8),
        0..2usize,
        0..12u8,
    )
        .prop_map(|(pattern, workspaces, fills, extra_tail, variant)| {
            let mut workspaces = workspaces.into_iter();
            let mut fills = fills.into_iter();
            let mut segments: Vec<String> = pattern
                .split('/')
                .map(|s| match s {
                    "{workspace}" | "{workspace_id}" | "{ws}" => {
                        workspaces.next().unwrap_or("ws1").to_string()
                    }
                    _ if s.starts_with('{') => fills.next().unwrap_or("x").to_string(),
                    _ => s.to_string(),
                })
                .collect();
            if pattern.ends_with("{rest}") {
                for _ in 0..extra_tail {
                    segments.push(fills.next().unwrap_or("x").to_string());
                }
            }
            match variant {
                0 => segments.push("extra".into()),
                1 => {
                    segments.pop();
                }
                2 => segments.push(String::new()),
                _ => {}
            }
            let mut path = segments.join("/");
            if variant == 3 {
                path.push_str("?q=1&workspace=system");
            }
            if path.is_empty() {
                path.push('/');
            }
            path
        });
    prop_oneof![
        12 => filled,
        1 => select(&HEALTH_PATHS[..]).prop_map(str::to_string),
        1 => select(&[
            "/apis/entities/v2/workspaces",
            "/apis/entities/v2/workspaces/ws1/members",
            "/apis/entities/v2/workspaces/-/members",
            "/apis/entities/v2/other",
            "/metrics?x=1",
            "/apis/auth/v2/iam/opa-bundle.tar.gz?x",
            "/unknown/path",
        ][..])
        .prop_map(str::to_string),
    ]
}

fn request() -> impl Strategy<Value = (String, String)> {
    (select(&METHODS[..]).prop_map(str::to_string), path())
}

fn requests() -> impl Strategy<Value = Vec<(String, String)>> {
    prop::collection::vec(request(), REQUESTS)
}

fn scopes() -> impl Strategy<Value = Vec<String>> {
    subsequence(
        &["openid", "a:read", "a:write", "p:read", "profile"][..],
        0..=3,
    )
    .prop_map(|s| s.iter().map(|s| s.to_string()).collect())
}

/// Any caller, with or without an identity.
fn principal() -> impl Strategy<Value = Option<Principal>> {
    let some = (
        select(
            &[
                None,
                Some(""),
                Some("alice"),
                Some("bob"),
                Some("carol"),
                Some("root"),
                Some("service:jobs"),
                Some("service:eval"),
            ][..],
        ),
        select(&[None, Some(""), Some("alice@x.io"), Some("admin@x.io")][..]),
        subsequence(&["eng", "ops", "admins", ""][..], 0..=2),
        scopes(),
    )
        .prop_map(|(id, email, groups, scopes)| Principal {
            id: id.map(str::to_string),
            email: email.map(str::to_string),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            scopes,
        });
    prop_oneof![1 => Just(None), 8 => some.prop_map(Some)]
}

// ---- helpers ----

fn applicable(p: &Principal) -> Vec<&str> {
    if p.id.is_none() {
        return Vec::new();
    }
    p.id.iter()
        .chain(p.email.iter())
        .chain(p.groups.iter())
        .map(String::as_str)
        .filter(|s| !s.is_empty())
        .collect()
}

fn base(path: &str) -> &str {
    path.split('?').next().unwrap_or_default()
}

fn with_binding(spec: &Spec, key: &str, workspace: &str, role: &str) -> Spec {
    let mut s = spec.clone();
    s.doc.bind(key, workspace, &[role]);
    s
}

/// The document without `role`: gone from roles, from every `includes`, from every binding.
/// Without PlatformAdmin there is no admin email binding either.
fn without_role(spec: &Spec, role: &str) -> Spec {
    let mut s = spec.clone();
    s.doc.authz.roles.remove(role);
    for def in s.doc.authz.roles.values_mut() {
        def.includes.retain(|r| r != role);
    }
    for def in s.doc.authz.principals.values_mut() {
        for bound in def.workspaces.values_mut() {
            bound.retain(|r| r != role);
        }
    }
    if role == "PlatformAdmin" {
        s.admin_email = None;
    }
    s
}

fn decide(policy: &CompiledPolicy, who: Option<&Principal>, method: &str, path: &str) -> bool {
    policy.allow(who, method, path).allowed
}

/// `PROPTEST_CASES=N` runs more (SECURITY.md records a deeper run).
fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(CASES);
    ProptestConfig {
        cases,
        // A failure is printed with its minimal input; it becomes an explicit regression test
        // rather than a seed file in the source tree.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    /// A deny rule always wins over every allow. Three ways:
    /// (1) setting `deny: true` on the endpoint method a request matched denies it, for the
    ///     caller and for a PlatformAdmin;
    /// (2) adding a denied plugin prefix of a request's path denies it, for both;
    /// (3) a request denied by a deny rule stays denied by that rule when the caller is given
    ///     every role in every workspace, except where DESIGN exempts: nested Entities paths
    ///     and `callers: [service_principal]` routes exempt PlatformAdmin, and the bundle rule
    ///     is lifted by `iam.bundle.read` in `system` (its own condition). Those three are
    ///     checked with every role but PlatformAdmin instead (bundle: not checked, as any role
    ///     may hold `iam.bundle.read`).
    #[test]
    fn deny_rules_win(spec in spec(), who in principal(), reqs in requests()) {
        let policy = spec.compile();
        let admin = Principal { scopes: who.as_ref().map(|p| p.scopes.clone()).unwrap_or_default(),
            ..Principal::with_id("root") };
        let every_role = |s: &Spec, key: &str, but: Option<&str>| {
            let mut s = s.clone();
            let roles: Vec<String> = s.doc.authz.roles.keys().filter(|r| Some(r.as_str()) != but).cloned().collect();
            let roles: Vec<&str> = roles.iter().map(String::as_str).collect();
            for ws in WORKSPACES {
                s.doc.bind(key, ws, &roles);
            }
            s
        };
        for (method, path) in &reqs {
            let d = policy.allow(who.as_ref(), method, path);
            // (1)
            if let Some(pattern) = d.endpoint
                && spec.entry(pattern, method).is_some()
            {
                let mut denied = spec.clone();
                let entry = denied.doc.authz.endpoints.get_mut(pattern).unwrap()
                    .get_mut(&method.to_ascii_lowercase()).unwrap();
                entry.deny = Some(true);
                let denied = with_binding(&denied, "root", "system", "PlatformAdmin");
                let p = denied.compile();
                for caller in [who.as_ref(), Some(&admin)] {
                    let d2 = p.allow(caller, method, path);
                    prop_assert!(!d2.allowed && d2.reason == Reason::EndpointDenied,
                        "{method} {path} by {caller:?} after deny: true on {pattern}: {d2:?}");
                }
            }
            // (2)
            let segments: Vec<&str> = base(path).split('/').filter(|s| !s.is_empty()).collect();
            if !segments.is_empty() {
                let prefix = format!("/{}", segments[..segments.len().div_ceil(2)].join("/"));
                let mut denied = with_binding(&spec, "root", "system", "PlatformAdmin");
                denied.doc.authz.config.denied_plugin_prefixes.push(prefix.clone());
                let p = denied.compile();
                for caller in [who.as_ref(), Some(&admin)] {
                    let d2 = p.allow(caller, method, path);
                    prop_assert!(!d2.allowed && matches!(d2.reason, Reason::NoEndpointsLoaded | Reason::EndpointDenied | Reason::DeniedPluginPrefix),
                        "{method} {path} by {caller:?} under denied prefix {prefix}: {d2:?}");
                }
            }
            // (3)
            let id = who.as_ref().and_then(|p| p.id.as_deref()).filter(|id| !id.is_empty());
            if let (false, Some(id)) = (d.allowed, id)
                && DENY_RULES.contains(&d.reason)
            {
                let exempt = matches!(d.reason, Reason::NestedEntitiesInternal | Reason::ServiceOnlyRoute | Reason::BundleAccess);
                if !exempt {
                    let p = every_role(&spec, id, None).compile();
                    let d2 = p.allow(who.as_ref(), method, path);
                    prop_assert!(!d2.allowed && d2.reason == d.reason,
                        "{method} {path}: {:?} lifted by every role: {d2:?}", d.reason);
                } else if d.reason != Reason::BundleAccess {
                    let p = every_role(&spec, id, Some("PlatformAdmin")).compile();
                    let d2 = p.allow(who.as_ref(), method, path);
                    prop_assert!(!d2.allowed && d2.reason == d.reason,
                        "{method} {path}: {:?} lifted by every role but PlatformAdmin: {d2:?}", d.reason);
                }
            }
        }
    }

    /// Adding a binding never removes access. Exception (DESIGN "Roles"): a `service:`
    /// principal with no explicit binding in a workspace holds `ServiceSystem` there; a first
    /// explicit binding of the caller's own `service:` id in a workspace replaces that implicit
    /// role. In exactly that case the binding checked is one of `ServiceSystem` itself.
    #[test]
    fn adding_a_binding_never_removes_access(
        spec in spec(),
        who in principal(),
        key in select(&BINDING_KEYS[..]),
        workspace in select(&WORKSPACES[..]),
        role_pick in 0..7usize,
        reqs in requests(),
    ) {
        let names: Vec<String> = spec.doc.authz.roles.keys().cloned().collect();
        let role = names[role_pick % names.len()].clone();
        // Bind the caller itself half of the time, so the binding matters.
        let key = match (&who, role_pick % 2) {
            (Some(Principal { id: Some(id), .. }), 0) if !id.is_empty() => id.clone(),
            _ => key.to_string(),
        };
        let replaces_service_system = key.starts_with("service:")
            && who.as_ref().and_then(|p| p.id.as_deref()) == Some(key.as_str())
            && spec.bound(&key, workspace).is_empty()
            && spec.doc.authz.roles.contains_key("ServiceSystem");
        // The exception: only an explicit ServiceSystem binding is checked there.
        let role = if replaces_service_system { "ServiceSystem".to_string() } else { role };
        let before = spec.compile();
        let after = with_binding(&spec, &key, workspace, &role).compile();
        for (method, path) in &reqs {
            if decide(&before, who.as_ref(), method, path) {
                let d = after.allow(who.as_ref(), method, path);
                prop_assert!(d.allowed, "{method} {path} by {who:?}: lost by binding {key} to {role} in {workspace}: {d:?}");
            }
        }
    }

    /// Removing a role (from roles, includes and bindings) never adds access. Exception
    /// (DESIGN "Roles", as above): when the removal leaves the caller's own `service:` id with
    /// no role in a workspace where it had some, the implicit `ServiceSystem` applies there.
    #[test]
    fn removing_a_role_never_adds_access(
        spec in spec(),
        who in principal(),
        role_pick in 0..7usize,
        reqs in requests(),
    ) {
        // Half of the time, a role bound to the caller itself, so the removal matters.
        let own: Vec<String> = who.as_ref().and_then(|p| p.id.as_deref()).map_or_else(Vec::new, |id| {
            WORKSPACES.iter().flat_map(|ws| spec.bound(id, ws)).collect()
        });
        let names: Vec<String> = match role_pick % 2 {
            0 if !own.is_empty() => own,
            _ => spec.doc.authz.roles.keys().cloned().collect(),
        };
        let role = names[role_pick % names.len()].clone();
        let removed = without_role(&spec, &role);
        let service_id = who.as_ref().and_then(|p| p.id.as_deref()).filter(|id| id.starts_with("service:"));
        let empties_service_binding = service_id.is_some_and(|id| {
            WORKSPACES.iter().any(|ws| !spec.bound(id, ws).is_empty() && removed.bound(id, ws).is_empty())
        }) && spec.doc.authz.roles.contains_key("ServiceSystem") && role != "ServiceSystem";
        if empties_service_binding {
            // The exception (not a rejection, so the case count stays what it says).
            return Ok(());
        }
        let before = spec.compile();
        let after = removed.compile();
        for (method, path) in &reqs {
            if decide(&after, who.as_ref(), method, path) {
                let d = before.allow(who.as_ref(), method, path);
                prop_assert!(d.allowed, "{method} {path} by {who:?}: gained by removing {role}: {d:?}");
            }
        }
    }

    /// A caller with no applicable principal (no identity; no id; or an empty id with no
    /// non-empty email or group) is never allowed, except on the health paths (compared with
    /// the full path, query included). Bindings to `*` and every other key are in play.
    #[test]
    fn no_applicable_principal_is_never_allowed(
        spec in spec(),
        nobody in prop_oneof![
            Just(None),
            (select(&[None, Some("alice@x.io"), Some("admin@x.io")][..]), subsequence(&["eng", "admins", ""][..], 0..=2))
                .prop_map(|(email, groups)| Some(Principal {
                    id: None,
                    email: email.map(str::to_string),
                    groups: groups.iter().map(|g| g.to_string()).collect(),
                    scopes: Vec::new(),
                })),
            (select(&[None, Some("")][..]), subsequence(&[""][..], 0..=1), scopes())
                .prop_map(|(email, groups, scopes)| Some(Principal {
                    id: Some(String::new()),
                    email: email.map(str::to_string),
                    groups: groups.iter().map(|g| g.to_string()).collect(),
                    scopes,
                })),
        ],
        reqs in requests(),
    ) {
        prop_assert!(nobody.as_ref().is_none_or(|p| applicable(p).is_empty()));
        // `*` bound to every role in every workspace: still nobody.
        let mut spec = spec;
        let roles: Vec<String> = spec.doc.authz.roles.keys().cloned().collect();
        let roles: Vec<&str> = roles.iter().map(String::as_str).collect();
        for ws in WORKSPACES {
            spec.doc.bind("*", ws, &roles);
        }
        let policy = spec.compile();
        for (method, path) in &reqs {
            let d = policy.allow(nobody.as_ref(), method, path);
            prop_assert!(!d.allowed || HEALTH_PATHS.contains(&path.as_str()),
                "{method} {path} allowed to {nobody:?}: {d:?}");
        }
    }

    /// Scopes can only narrow: a caller allowed with some scopes is allowed with none; scopes
    /// of which none contains `:` decide exactly as no scopes.
    #[test]
    fn scopes_only_narrow(spec in spec(), who in principal(), reqs in requests()) {
        let Some(with) = who else { return Ok(()); };
        let without = Principal { scopes: Vec::new(), ..with.clone() };
        let unscoped = Principal {
            scopes: with.scopes.iter().filter(|s| !s.contains(':')).cloned().collect(),
            ..with.clone()
        };
        let policy = spec.compile();
        for (method, path) in &reqs {
            let scoped = policy.allow(Some(&with), method, path);
            let none = policy.allow(Some(&without), method, path);
            if scoped.allowed {
                prop_assert!(none.allowed, "{method} {path}: allowed with {:?} but not without: {none:?}", with.scopes);
            }
            prop_assert_eq!(policy.allow(Some(&unscoped), method, path), none);
        }
    }

    /// PlatformAdmin (bound by id, by group, or through `auth.admin_email`) is allowed
    /// everywhere except where a deny rule that applies to it says no: `deny: true`, a denied
    /// plugin prefix, the secret-value path (humans), the bundle path without `iam.bundle.read`
    /// in `system` or with scopes that miss the bundle endpoint's, `callers: [principal]`
    /// (service admins), no endpoints. Each such denial is checked against its condition.
    #[test]
    fn platform_admin_is_allowed_except_by_deny_rules_that_apply_to_it(
        spec in spec(),
        how in 0..4usize,
        scopes in scopes(),
        reqs in requests(),
    ) {
        let (spec, admin) = match how {
            0 => (with_binding(&spec, "root", "system", "PlatformAdmin"), Principal::with_id("root")),
            1 => (with_binding(&spec, "admins", "system", "PlatformAdmin"),
                  Principal { groups: vec!["admins".into()], ..Principal::with_id("carol") }),
            2 => (Spec { admin_email: Some("admin@x.io".into()), ..spec },
                  Principal { email: Some("admin@x.io".into()), ..Principal::with_id("dave") }),
            _ => (with_binding(&spec, "service:root", "system", "PlatformAdmin"), Principal::with_id("service:root")),
        };
        let admin = Principal { scopes, ..admin };
        let service = admin.is_service();
        let policy = spec.compile();
        let keys = applicable(&admin);
        for (method, path) in &reqs {
            let d = policy.allow(Some(&admin), method, path);
            if d.allowed {
                continue;
            }
            let base = base(path);
            let entry = d.endpoint.and_then(|e| spec.entry(e, method));
            let holds_condition = match d.reason {
                Reason::NoEndpointsLoaded => spec.doc.authz.endpoints.is_empty(),
                Reason::EndpointDenied => entry.is_some_and(|e| e.deny == Some(true)),
                Reason::DeniedPluginPrefix => spec.doc.authz.config.denied_plugin_prefixes.iter()
                    .any(|p| base == p || base.starts_with(&format!("{p}/"))),
                Reason::SecretAccessNotService => {
                    let parts: Vec<&str> = base.split('/').collect();
                    !service && parts.len() == 9 && parts[4] == "workspaces" && parts[6] == "secrets" && parts[8] == "access"
                }
                Reason::BundleAccess => {
                    let holds = keys.iter().any(|k| {
                        spec.bound(k, "system").iter().chain(spec.bound("*", "system").iter())
                            .any(|r| { let p = spec.role_permissions(r); p.contains("iam.bundle.read") || p.contains("*") })
                    });
                    let platform: Vec<&String> = admin.scopes.iter().filter(|s| s.contains(':')).collect();
                    let required = entry.and_then(|e| e.scopes.clone()).unwrap_or_default();
                    let scope_ok = platform.is_empty() || required.is_empty() || platform.iter().any(|s| required.contains(s));
                    base == BUNDLE_PATH && !(holds && scope_ok)
                }
                Reason::PrincipalOnlyRoute => service && entry.and_then(|e| e.callers.as_ref())
                    .is_some_and(|c| c.iter().all(|c| c == "principal")),
                _ => false,
            };
            prop_assert!(holds_condition, "{method} {path} denied to PlatformAdmin {admin:?}: {d:?}");
        }
    }
}
