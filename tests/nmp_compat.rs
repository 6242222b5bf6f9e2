//! Compatibility with NMP's own authorization catalog.
//!
//! Reads the catalog of the NMP release installed in `.venv-nmp` (`nemo-platform` 0.3.0's
//! `nmp/core/auth/assets/static-authz.yaml`, Apache-2.0, never copied into this repository) at
//! run time and checks that the built-in catalog (`builtin_document()`) is that catalog: the
//! same patterns, methods, permissions, scopes, callers and deny flags, the same roles with the
//! same expanded permissions, and the same decisions. Each decision case adds this test's own
//! bindings to both documents, compiles them exactly as the server would and decides on both.
//!
//! NMP's development catalog (`../shared/nmp/static-authz.yaml`, from a later commit) must
//! still load: it is the format newer NMPs ship.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use nmp_authz_core::policy::builtin::{NMP_RELEASE, builtin_document};
use nmp_authz_core::policy::document::{AuthzData, RoleDef};
use nmp_authz_core::policy::{
    BindingDefaults, CompiledPolicy, Decision, Format, PolicyDocument, Principal, Reason,
};

/// The released catalog of the installed NMP.
fn released_document() -> PolicyDocument {
    let path = common::nmp::released_catalog();
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    PolicyDocument::parse(&text, Format::Yaml).expect("NMP's released catalog parses")
}

/// Routes the static catalog does not have, added to both documents under test: `callers`
/// restrictions, a `ws/perm` requirement and a denied endpoint.
const EXTRA_ENDPOINTS: &str = r#"
authz:
  endpoints:
    /apis/compat/v2/workspaces/{workspace}/internal-sync:
      post:
        permissions: [models.read]
        scopes: [models:write, platform:write]
        callers: [service_principal]
    /apis/compat/v2/workspaces/{workspace}/my-profile:
      get:
        permissions: [models.read]
        scopes: [models:read, platform:read]
        callers: [principal]
    /apis/compat/v2/workspaces/{workspace}/audit:
      get:
        permissions: [system/iam.list]
    /apis/compat/v2/retired:
      get:
        permissions: []
        deny: true
"#;

/// The test's own bindings, added to both documents.
fn bind_test_principals(doc: &mut PolicyDocument) {
    doc.bind("viewer-1", "ws1", &["Viewer"]);
    doc.bind("editor-1", "ws1", &["Editor"]);
    doc.bind("admin-1", "ws1", &["Admin"]);
    doc.bind("team-ml", "ws2", &["Editor"]);
    doc.bind("carol@example.com", "ws3", &["Admin"]);
    doc.bind("ops", "system", &["Admin"]);
    doc.bind("runner", "ws1", &["JobRunner"]);
    doc.bind("platform-ops", "system", &["PlatformAdmin"]);
    // An explicit binding replaces ServiceSystem in that workspace only.
    doc.bind("service:evaluator", "ws1", &["Viewer"]);
}

fn defaults() -> BindingDefaults {
    BindingDefaults {
        bootstrap_bindings: true,
        default_workspace: "default".into(),
        admin_email: Some("admin@example.com".into()),
    }
}

/// Both policies under test, built the same way from their documents.
struct Policies {
    nmp: CompiledPolicy,
    builtin: CompiledPolicy,
}

impl Policies {
    fn load(denied_plugin_prefixes: &[&str]) -> Self {
        let build = |mut doc: PolicyDocument, name: &str| {
            doc.merge(
                PolicyDocument::parse(EXTRA_ENDPOINTS, Format::Yaml).expect("extra endpoints"),
            );
            bind_test_principals(&mut doc);
            doc.authz.config.denied_plugin_prefixes = denied_plugin_prefixes
                .iter()
                .map(|p| p.to_string())
                .collect();
            CompiledPolicy::build(doc, &defaults(), "rev")
                .unwrap_or_else(|e| panic!("{name} compiles: {e}"))
        };
        Self {
            nmp: build(released_document(), "NMP's released catalog"),
            builtin: build(builtin_document(), "built-in catalog"),
        }
    }
}

fn human(id: &str) -> Principal {
    Principal::with_id(id)
}

fn with_scopes(mut p: Principal, scopes: &[&str]) -> Principal {
    p.scopes = scopes.iter().map(|s| s.to_string()).collect();
    p
}

fn with_email(mut p: Principal, email: &str) -> Principal {
    p.email = Some(email.into());
    p
}

fn with_groups(mut p: Principal, groups: &[&str]) -> Principal {
    p.groups = groups.iter().map(|s| s.to_string()).collect();
    p
}

fn platform_admin() -> Principal {
    with_email(human("root-user"), "admin@example.com")
}

/// Runs cases against both policies and collects every mismatch, so one run shows them all.
struct Checker<'p> {
    policies: &'p Policies,
    failures: Vec<String>,
    count: usize,
}

impl<'p> Checker<'p> {
    fn new(policies: &'p Policies) -> Self {
        Self {
            policies,
            failures: Vec::new(),
            count: 0,
        }
    }

    /// Decides on both catalogs; checks the outcome on each and that they agree on the matched
    /// endpoint and workspace. Returns the NMP decision.
    fn case(
        &mut self,
        who: Option<&Principal>,
        method: &str,
        path: &str,
        allowed: bool,
        reason: Reason,
    ) -> Decision<'p> {
        self.count += 1;
        let nmp = self.policies.nmp.allow(who, method, path);
        let builtin = self.policies.builtin.allow(who, method, path);
        let who_text = who.map_or("(no identity)".to_string(), |p| format!("{p:?}"));
        let want = format!(
            "{} ({})",
            if allowed { "allow" } else { "deny" },
            reason.as_str()
        );
        for (name, d) in [("NMP 0.3.0", &nmp), ("built-in", &builtin)] {
            if d.allowed != allowed || d.reason != reason {
                self.failures.push(format!(
                    "{name}: {method} {path} as {who_text}: want {want}, got {} ({}) endpoint={:?} workspace={:?}",
                    if d.allowed { "allow" } else { "deny" },
                    d.reason.as_str(),
                    d.endpoint,
                    d.workspace,
                ));
            }
        }
        if (nmp.endpoint, &nmp.workspace) != (builtin.endpoint, &builtin.workspace) {
            self.failures.push(format!(
                "{method} {path}: catalogs disagree: NMP matched {:?} in {:?}, built-in {:?} in {:?}",
                nmp.endpoint, nmp.workspace, builtin.endpoint, builtin.workspace
            ));
        }
        nmp
    }

    fn allow(&mut self, who: &Principal, method: &str, path: &str, reason: Reason) -> Decision<'p> {
        self.case(Some(who), method, path, true, reason)
    }

    fn deny(&mut self, who: &Principal, method: &str, path: &str, reason: Reason) -> Decision<'p> {
        self.case(Some(who), method, path, false, reason)
    }

    /// Also checks which endpoint pattern matched and which workspace was read.
    fn expect_match(
        &mut self,
        decision: &Decision<'_>,
        endpoint: Option<&str>,
        workspace: Option<&str>,
    ) {
        if decision.endpoint != endpoint || decision.workspace.as_deref() != workspace {
            self.failures.push(format!(
                "want endpoint {endpoint:?} in {workspace:?}, got {:?} in {:?}",
                decision.endpoint, decision.workspace
            ));
        }
    }

    fn finish(self) {
        assert!(
            self.failures.is_empty(),
            "{} of {} cases failed:\n{}",
            self.failures.len(),
            self.count,
            self.failures.join("\n")
        );
    }
}

use Reason::*;

const MODELS_WS1: &str = "/apis/models/v2/workspaces/ws1/models";
const MODELS_DEFAULT: &str = "/apis/models/v2/workspaces/default/models";

/// All permissions a role holds, following `includes`.
fn expand(roles: &BTreeMap<String, RoleDef>, name: &str) -> BTreeSet<String> {
    let (mut out, mut seen) = (BTreeSet::new(), BTreeSet::new());
    let mut stack = vec![name];
    while let Some(role) = stack.pop() {
        if !seen.insert(role) {
            continue;
        }
        let def = roles
            .get(role)
            .unwrap_or_else(|| panic!("unknown role {role}"));
        out.extend(def.permissions.iter().cloned());
        stack.extend(def.includes.iter().map(String::as_str));
    }
    out
}

fn as_set(list: &Option<Vec<String>>) -> Option<BTreeSet<&String>> {
    list.as_ref().map(|l| l.iter().collect())
}

/// The built-in catalog is the installed release's, entry for entry. Every difference is
/// listed, so one run shows them all.
#[test]
fn builtin_catalog_is_the_released_catalog() {
    let nmp = released_document().authz;
    let ours = builtin_document().authz;
    let mut differences = Vec::new();
    let mut differ = |what: String| differences.push(what);

    let patterns = |doc: &AuthzData| doc.endpoints.keys().cloned().collect::<BTreeSet<_>>();
    let (theirs, mine) = (patterns(&nmp), patterns(&ours));
    for only in theirs.difference(&mine) {
        differ(format!("pattern missing from the built-in catalog: {only}"));
    }
    for only in mine.difference(&theirs) {
        differ(format!("pattern only in the built-in catalog: {only}"));
    }
    for (path, nmp_methods) in &nmp.endpoints {
        let Some(our_methods) = ours.endpoints.get(path) else {
            continue;
        };
        let methods = |m: &BTreeMap<String, _>| m.keys().cloned().collect::<Vec<_>>();
        if methods(nmp_methods) != methods(our_methods) {
            differ(format!(
                "methods of {path}: NMP {:?}, built-in {:?}",
                methods(nmp_methods),
                methods(our_methods)
            ));
        }
        for (method, theirs) in nmp_methods {
            let Some(mine) = our_methods.get(method) else {
                continue;
            };
            let at = format!("{method} {path}");
            if as_set(&mine.permissions) != as_set(&theirs.permissions) {
                differ(format!(
                    "permissions of {at}: NMP {:?}, built-in {:?}",
                    theirs.permissions, mine.permissions
                ));
            }
            if as_set(&mine.scopes) != as_set(&theirs.scopes) {
                differ(format!(
                    "scopes of {at}: NMP {:?}, built-in {:?}",
                    theirs.scopes, mine.scopes
                ));
            }
            if (&mine.callers, mine.deny) != (&theirs.callers, theirs.deny) {
                differ(format!(
                    "callers and deny of {at}: NMP {:?} {:?}, built-in {:?} {:?}",
                    theirs.callers, theirs.deny, mine.callers, mine.deny
                ));
            }
        }
    }

    let names = |doc: &AuthzData| doc.roles.keys().cloned().collect::<Vec<_>>();
    if names(&nmp) != names(&ours) {
        differ(format!(
            "roles: NMP {:?}, built-in {:?}",
            names(&nmp),
            names(&ours)
        ));
    }
    for name in nmp.roles.keys().filter(|r| ours.roles.contains_key(*r)) {
        let (theirs, mine) = (expand(&nmp.roles, name), expand(&ours.roles, name));
        if theirs != mine {
            differ(format!(
                "role {name}: only NMP's grants {:?}, only the built-in one grants {:?}",
                theirs.difference(&mine).collect::<Vec<_>>(),
                mine.difference(&theirs).collect::<Vec<_>>()
            ));
        }
    }
    assert!(
        differences.is_empty(),
        "the built-in catalog differs from {}:\n{}",
        common::nmp::released_catalog().display(),
        differences.join("\n")
    );
}

/// `NMP_RELEASE` (what `--version`, metrics and readiness say) names the release compared
/// above: the version of the installed `nemo-platform` distribution.
#[test]
fn builtin_release_is_the_installed_nmp() {
    let site_packages = common::nmp::package_dir();
    let site_packages = site_packages.parent().expect("site-packages");
    let installed: Vec<String> = std::fs::read_dir(site_packages)
        .expect("site-packages lists")
        .filter_map(|entry| {
            let name = entry.ok()?.file_name().into_string().ok()?;
            let version = name
                .strip_prefix("nemo_platform-")?
                .strip_suffix(".dist-info")?;
            Some(version.to_string())
        })
        .collect();
    assert_eq!(installed, [NMP_RELEASE], "in {}", site_packages.display());
}

#[test]
fn catalogs_load_with_every_endpoint() {
    let p = Policies::load(&[]);
    let extra = PolicyDocument::parse(EXTRA_ENDPOINTS, Format::Yaml).expect("extra endpoints");
    let released = released_document().authz;
    assert_eq!(
        p.nmp.endpoint_count(),
        released.endpoints.len() + extra.authz.endpoints.len()
    );
    assert_eq!(p.builtin.endpoint_count(), p.nmp.endpoint_count());
    assert_eq!(p.nmp.role_count(), released.roles.len());
    assert_eq!(p.builtin.role_count(), p.nmp.role_count());

    // NMP's development catalog (a later commit's format: `x-not-in-openapi` keys, more routes)
    // loads and compiles too.
    let Some(path) = common::nmp::shared_catalog() else {
        return;
    };
    let text = std::fs::read_to_string(&path).expect("read the development catalog");
    let development = PolicyDocument::parse(&text, Format::Yaml).expect("development catalog");
    let patterns = development.authz.endpoints.len();
    let policy = CompiledPolicy::build(development, &defaults(), "dev").expect("compiles");
    assert_eq!(policy.endpoint_count(), patterns);
}

/// Routes 0.3.0 has and the development catalog does not, and the other way round.
#[test]
fn routes_of_the_0_3_0_release() {
    let p = Policies::load(&[]);
    let mut c = Checker::new(&p);
    let stranger = human("stranger");
    // Workload identity: open to any authenticated caller (NMP's middleware does not even ask
    // its PDP for these paths).
    let d = c.allow(&stranger, "GET", "/apis/auth/jwks", PermissionlessRead);
    c.expect_match(&d, Some("/apis/auth/jwks"), None);
    let d = c.allow(
        &stranger,
        "POST",
        "/apis/auth/token",
        PermissionlessEndpoint,
    );
    c.expect_match(&d, Some("/apis/auth/token"), None);
    c.case(None, "POST", "/apis/auth/token", false, NoIdentity);
    // Evaluations can be patched by an Editor, not by a Viewer.
    let evaluation = "/apis/intake/v2/workspaces/ws1/evaluations/e1";
    let d = c.allow(&human("editor-1"), "PATCH", evaluation, WorkspacePermission);
    c.expect_match(
        &d,
        Some("/apis/intake/v2/workspaces/{workspace}/evaluations/{name}"),
        Some("ws1"),
    );
    c.deny(&human("viewer-1"), "PATCH", evaluation, NotPermitted);
    // `experiments` is no route of 0.3.0: an unknown path for a human.
    let d = c.deny(
        &human("editor-1"),
        "GET",
        "/apis/intake/v2/workspaces/ws1/experiments",
        NotPermitted,
    );
    c.expect_match(&d, None, None);
    c.finish();
}

#[test]
fn workspace_roles_viewer_editor_admin() {
    let p = Policies::load(&[]);
    let mut c = Checker::new(&p);
    let viewer = human("viewer-1");
    let editor = human("editor-1");
    let admin = human("admin-1");

    // Viewer: reads, no writes, nothing outside its workspace, no membership.
    let d = c.allow(&viewer, "GET", MODELS_WS1, WorkspacePermission);
    c.expect_match(
        &d,
        Some("/apis/models/v2/workspaces/{workspace}/models"),
        Some("ws1"),
    );
    c.allow(
        &viewer,
        "GET",
        &format!("{MODELS_WS1}?page=2&x=/y"),
        WorkspacePermission,
    );
    c.allow(
        &viewer,
        "GET",
        &format!("{MODELS_WS1}/llama"),
        WorkspacePermission,
    );
    c.allow(
        &viewer,
        "GET",
        "/apis/jobs/v2/workspaces/ws1/jobs/j1/steps/s1/tasks/t1",
        WorkspacePermission,
    );
    c.allow(
        &viewer,
        "GET",
        "/apis/secrets/v2/workspaces/ws1/secrets",
        WorkspacePermission,
    );
    c.deny(&viewer, "POST", MODELS_WS1, NotPermitted);
    c.deny(
        &viewer,
        "DELETE",
        &format!("{MODELS_WS1}/llama"),
        NotPermitted,
    );
    c.deny(
        &viewer,
        "POST",
        "/apis/jobs/v2/workspaces/ws1/jobs/j1/cancel",
        NotPermitted,
    );
    c.deny(
        &viewer,
        "GET",
        "/apis/models/v2/workspaces/ws2/models",
        NotPermitted,
    );
    c.deny(
        &viewer,
        "GET",
        "/apis/entities/v2/workspaces/ws1/members",
        NotPermitted,
    );
    c.allow(
        &viewer,
        "GET",
        "/apis/entities/v2/workspaces/ws1/projects",
        WorkspacePermission,
    );
    c.deny(
        &viewer,
        "POST",
        "/apis/entities/v2/workspaces/ws1/projects",
        NotPermitted,
    );
    // Method names are compared case-insensitively, as NMP lower-cases them.
    c.allow(&viewer, "get", MODELS_WS1, WorkspacePermission);

    // Editor: reads and writes, still no membership or IAM.
    c.allow(&editor, "GET", MODELS_WS1, WorkspacePermission);
    c.allow(&editor, "POST", MODELS_WS1, WorkspacePermission);
    c.allow(
        &editor,
        "PATCH",
        &format!("{MODELS_WS1}/llama"),
        WorkspacePermission,
    );
    c.allow(
        &editor,
        "DELETE",
        &format!("{MODELS_WS1}/llama"),
        WorkspacePermission,
    );
    c.allow(
        &editor,
        "POST",
        "/apis/jobs/v2/workspaces/ws1/jobs/j1/cancel",
        WorkspacePermission,
    );
    c.allow(
        &editor,
        "POST",
        "/apis/entities/v2/workspaces/ws1/projects",
        WorkspacePermission,
    );
    c.allow(
        &editor,
        "PUT",
        "/apis/entities/v2/workspaces/ws1",
        WorkspacePermission,
    );
    c.deny(
        &editor,
        "GET",
        "/apis/entities/v2/workspaces/ws1/members",
        NotPermitted,
    );
    c.deny(
        &editor,
        "POST",
        "/apis/entities/v2/workspaces/ws1/members",
        NotPermitted,
    );
    c.deny(
        &editor,
        "POST",
        "/apis/models/v2/workspaces/ws2/models",
        NotPermitted,
    );
    // Job logs are written by the JobRunner only.
    let logs = "/apis/files/v2/workspaces/ws1/filesets/fs/otlp/v1/logs";
    c.deny(&editor, "POST", logs, NotPermitted);
    c.allow(&human("runner"), "POST", logs, WorkspacePermission);
    c.deny(&human("runner"), "GET", MODELS_WS1, NotPermitted);
    // IAM lives in `system`: a workspace Admin elsewhere does not hold it there.
    c.deny(
        &editor,
        "GET",
        "/apis/auth/v2/iam/role-bindings",
        NotPermitted,
    );

    // Admin: membership management in its workspace.
    c.allow(
        &admin,
        "GET",
        "/apis/entities/v2/workspaces/ws1/members",
        WorkspacePermission,
    );
    c.allow(
        &admin,
        "POST",
        "/apis/entities/v2/workspaces/ws1/members",
        WorkspacePermission,
    );
    c.allow(
        &admin,
        "PUT",
        "/apis/entities/v2/workspaces/ws1/members/bob",
        WorkspacePermission,
    );
    c.allow(
        &admin,
        "DELETE",
        "/apis/entities/v2/workspaces/ws1/members/bob",
        WorkspacePermission,
    );
    c.allow(
        &admin,
        "DELETE",
        "/apis/entities/v2/workspaces/ws1",
        WorkspacePermission,
    );
    c.allow(&admin, "POST", MODELS_WS1, WorkspacePermission);
    c.deny(
        &admin,
        "POST",
        "/apis/entities/v2/workspaces/ws2/members",
        NotPermitted,
    );
    c.deny(
        &admin,
        "GET",
        "/apis/auth/v2/iam/role-bindings",
        NotPermitted,
    );
    // Entity records need entities.*, which no human role holds.
    c.deny(
        &admin,
        "GET",
        "/apis/entities/v2/workspaces/ws1/entities/model",
        NotPermitted,
    );
    // An Admin bound in `system` manages IAM (no workspace: permissions held in system).
    c.allow(
        &human("ops"),
        "GET",
        "/apis/auth/v2/iam/role-bindings",
        SystemPermission,
    );
    c.allow(
        &human("ops"),
        "POST",
        "/apis/auth/v2/iam/role-bindings",
        SystemPermission,
    );
    c.allow(
        &human("ops"),
        "DELETE",
        "/apis/auth/v2/iam/role-bindings/rb1",
        SystemPermission,
    );
    c.finish();
}

#[test]
fn bootstrap_wildcard_bindings() {
    let p = Policies::load(&[]);
    let mut c = Checker::new(&p);
    let anyone = human("nobody");

    // Every authenticated caller is Editor in `default`...
    c.allow(&anyone, "GET", MODELS_DEFAULT, WorkspacePermission);
    c.allow(&anyone, "POST", MODELS_DEFAULT, WorkspacePermission);
    c.allow(
        &anyone,
        "DELETE",
        "/apis/secrets/v2/workspaces/default/secrets/s",
        WorkspacePermission,
    );
    c.allow(
        &anyone,
        "POST",
        "/apis/guardrails/v2/workspaces/default/checks",
        WorkspacePermission,
    );
    c.deny(
        &anyone,
        "POST",
        "/apis/entities/v2/workspaces/default/members",
        NotPermitted,
    );
    // ...only Viewer in `system`...
    c.allow(
        &anyone,
        "GET",
        "/apis/models/v2/workspaces/system/models",
        WorkspacePermission,
    );
    c.deny(
        &anyone,
        "POST",
        "/apis/models/v2/workspaces/system/models",
        NotPermitted,
    );
    // ...and nothing anywhere else.
    c.deny(&anyone, "GET", MODELS_WS1, NotPermitted);
    // No-workspace endpoints are checked in `system`.
    c.allow(
        &anyone,
        "GET",
        "/apis/jobs/v2/execution-profiles",
        SystemPermission,
    );
    c.allow(
        &anyone,
        "GET",
        "/apis/entities/v2/workspaces",
        SystemPermission,
    );
    c.deny(
        &anyone,
        "GET",
        "/apis/auth/v2/iam/role-bindings",
        NotPermitted,
    );
    c.deny(
        &anyone,
        "POST",
        "/apis/secrets/v2/rotate-encryption-keys",
        NotPermitted,
    );
    // Workspace creation: WorkspaceCreator is bound to `*` in system by the bootstrap.
    let d = c.allow(
        &anyone,
        "POST",
        "/apis/entities/v2/workspaces",
        SystemPermission,
    );
    c.expect_match(&d, Some("/apis/entities/v2/workspaces"), None);
    c.finish();
}

#[test]
fn group_and_email_bindings() {
    let p = Policies::load(&[]);
    let mut c = Checker::new(&p);
    let ml = with_groups(human("dave"), &["", "team-ml", "other"]);
    c.allow(
        &ml,
        "POST",
        "/apis/guardrails/v2/workspaces/ws2/checks",
        WorkspacePermission,
    );
    c.allow(
        &ml,
        "POST",
        "/apis/models/v2/workspaces/ws2/models",
        WorkspacePermission,
    );
    c.deny(
        &ml,
        "POST",
        "/apis/entities/v2/workspaces/ws2/members",
        NotPermitted,
    );
    c.deny(
        &ml,
        "POST",
        "/apis/guardrails/v2/workspaces/ws1/checks",
        NotPermitted,
    );
    c.deny(
        &human("dave"),
        "POST",
        "/apis/models/v2/workspaces/ws2/models",
        NotPermitted,
    );

    let carol = with_email(human("carol-sub"), "carol@example.com");
    c.allow(
        &carol,
        "POST",
        "/apis/entities/v2/workspaces/ws3/members",
        WorkspacePermission,
    );
    c.allow(
        &carol,
        "DELETE",
        "/apis/models/v2/workspaces/ws3/models/m",
        WorkspacePermission,
    );
    c.deny(
        &human("carol-sub"),
        "POST",
        "/apis/entities/v2/workspaces/ws3/members",
        NotPermitted,
    );
    // Emails match case-sensitively.
    let shouting = with_email(human("carol-sub"), "Carol@Example.com");
    c.deny(
        &shouting,
        "POST",
        "/apis/entities/v2/workspaces/ws3/members",
        NotPermitted,
    );
    // As in NMP, an email without a principal id identifies nobody...
    let email_only = Principal {
        email: Some("carol@example.com".into()),
        ..Principal::default()
    };
    c.deny(
        &email_only,
        "GET",
        "/apis/models/v2/workspaces/ws3/models",
        NoIdentity,
    );
    // ...while with an (empty) id present the email's bindings apply.
    let email_with_empty_id = Principal {
        id: Some(String::new()),
        ..email_only
    };
    c.allow(
        &email_with_empty_id,
        "GET",
        "/apis/models/v2/workspaces/ws3/models",
        WorkspacePermission,
    );
    c.finish();
}

#[test]
fn platform_admin_via_admin_email() {
    let p = Policies::load(&[]);
    let mut c = Checker::new(&p);
    let root = platform_admin();
    c.allow(
        &root,
        "POST",
        "/apis/models/v2/workspaces/ws9/models",
        PlatformAdmin,
    );
    c.allow(
        &root,
        "DELETE",
        "/apis/entities/v2/workspaces/ws9/members/bob",
        PlatformAdmin,
    );
    c.allow(
        &root,
        "GET",
        "/apis/auth/v2/iam/role-bindings",
        PlatformAdmin,
    );
    c.allow(
        &root,
        "POST",
        "/apis/secrets/v2/rotate-encryption-keys",
        PlatformAdmin,
    );
    c.allow(&root, "GET", "/apis/entities/v2/entities/x", PlatformAdmin);
    c.allow(&root, "GET", "/v1/legacy", PlatformAdmin);
    // PlatformAdmin skips the scope check.
    let read_only = with_scopes(platform_admin(), &["platform:read"]);
    c.allow(
        &read_only,
        "POST",
        "/apis/models/v2/workspaces/ws9/models",
        PlatformAdmin,
    );
    let write = with_scopes(platform_admin(), &["platform:write"]);
    c.allow(
        &write,
        "DELETE",
        "/apis/models/v2/workspaces/ws9/models/m",
        PlatformAdmin,
    );
    // Deny rules still override: secret values are for services only.
    c.deny(
        &root,
        "GET",
        "/apis/secrets/v2/workspaces/ws/secrets/s/access",
        SecretAccessNotService,
    );
    c.allow(
        &root,
        "GET",
        "/apis/secrets/v2/workspaces/ws/secrets/s",
        PlatformAdmin,
    );
    // The admin email matches case-sensitively; the grant is the email's, not the id's.
    let other_case = with_email(human("root-user"), "Admin@example.com");
    c.deny(
        &other_case,
        "POST",
        "/apis/models/v2/workspaces/ws9/models",
        NotPermitted,
    );
    c.deny(
        &human("root-user"),
        "POST",
        "/apis/models/v2/workspaces/ws9/models",
        NotPermitted,
    );
    // PlatformAdmin held through a group works the same way.
    let via_group = with_groups(human("erin"), &["platform-ops"]);
    c.allow(
        &via_group,
        "POST",
        "/apis/models/v2/workspaces/ws9/models",
        PlatformAdmin,
    );
    c.deny(
        &via_group,
        "GET",
        "/apis/secrets/v2/workspaces/ws/secrets/s/access",
        SecretAccessNotService,
    );
    c.finish();

    // Without an admin_email nobody is PlatformAdmin.
    let mut doc = released_document();
    bind_test_principals(&mut doc);
    let no_admin = BindingDefaults {
        admin_email: None,
        ..defaults()
    };
    let policy = CompiledPolicy::build(doc, &no_admin, "rev").expect("compiles");
    let d = policy.allow(Some(&root), "POST", "/apis/models/v2/workspaces/ws9/models");
    assert_eq!((d.allowed, d.reason), (false, NotPermitted), "{d:?}");
}

#[test]
fn service_principals() {
    let p = Policies::load(&[]);
    let mut c = Checker::new(&p);
    let jobs = human("service:jobs");

    // Known paths: ServiceSystem (`*`) in every workspace without an explicit binding.
    c.allow(&jobs, "GET", MODELS_WS1, WorkspacePermission);
    c.allow(
        &jobs,
        "POST",
        "/apis/jobs/v2/workspaces/ws7/jobs",
        WorkspacePermission,
    );
    c.allow(
        &jobs,
        "POST",
        "/apis/files/v2/workspaces/ws1/filesets/fs/otlp/v1/logs",
        WorkspacePermission,
    );
    c.allow(
        &jobs,
        "GET",
        "/apis/secrets/v2/workspaces/ws1/secrets/s/access",
        WorkspacePermission,
    );
    c.allow(
        &jobs,
        "POST",
        "/apis/entities/v2/workspaces/ws1/members",
        WorkspacePermission,
    );
    c.allow(
        &jobs,
        "GET",
        "/apis/entities/v2/workspaces/ws1/entities/model",
        WorkspacePermission,
    );
    c.allow(
        &jobs,
        "GET",
        "/apis/auth/v2/iam/role-bindings",
        SystemPermission,
    );
    c.allow(
        &jobs,
        "POST",
        "/apis/secrets/v2/rotate-encryption-keys",
        SystemPermission,
    );
    // Unknown paths are allowed for services (and only for them), with no scope check.
    let d = c.allow(&jobs, "GET", "/v1/legacy", ServiceUnknownPath);
    c.expect_match(&d, None, None);
    c.allow(
        &jobs,
        "POST",
        "/apis/models/v2/workspaces/ws1/not-an-endpoint",
        ServiceUnknownPath,
    );
    c.allow(
        &with_scopes(human("service:jobs"), &["platform:read"]),
        "DELETE",
        "/v1/legacy",
        ServiceUnknownPath,
    );
    // A known path with a method it does not list is not an unknown path.
    c.deny(&jobs, "OPTIONS", MODELS_WS1, NotPermitted);
    // Scopes still apply on known paths.
    let jobs_read = with_scopes(human("service:jobs"), &["platform:read"]);
    c.deny(&jobs_read, "POST", MODELS_WS1, ScopeMismatch);
    c.allow(&jobs_read, "GET", MODELS_WS1, WorkspacePermission);

    // An explicit binding replaces ServiceSystem in that workspace only.
    let evaluator = human("service:evaluator");
    c.allow(&evaluator, "GET", MODELS_WS1, WorkspacePermission);
    c.deny(&evaluator, "POST", MODELS_WS1, NotPermitted);
    c.allow(
        &evaluator,
        "POST",
        "/apis/models/v2/workspaces/ws2/models",
        WorkspacePermission,
    );

    // ServiceSystem is granted for the caller's own id only: a group named like a service
    // does not bring it.
    let pretender = with_groups(human("mallory"), &["service:jobs"]);
    c.deny(&pretender, "POST", MODELS_WS1, NotPermitted);
    c.deny(&pretender, "GET", "/v1/legacy", NotPermitted);
    c.finish();
}

#[test]
fn humans_on_unknown_paths_and_methods() {
    let p = Policies::load(&[]);
    let mut c = Checker::new(&p);
    let anyone = human("nobody");
    let d = c.deny(&anyone, "GET", "/v1/legacy", NotPermitted);
    c.expect_match(&d, None, None);
    c.deny(
        &anyone,
        "GET",
        "/apis/models/v2/workspaces/default/unknown",
        NotPermitted,
    );
    c.deny(
        &anyone,
        "GET",
        "/apis/models/v2/workspaces/default/models/",
        NotPermitted,
    );
    c.deny(
        &anyone,
        "GET",
        "/apis/models/v2/workspaces//models",
        NotPermitted,
    );
    c.deny(&anyone, "OPTIONS", MODELS_DEFAULT, NotPermitted);
    // A method the endpoint does not list: no permissionless-read fallback in a workspace.
    c.deny(
        &anyone,
        "GET",
        "/apis/guardrails/v2/workspaces/default/checks",
        NotPermitted,
    );
    // No identity at all.
    c.case(None, "GET", MODELS_DEFAULT, false, NoIdentity);
    c.case(None, "GET", "/v1/legacy", false, NoIdentity);
    c.deny(&human(""), "GET", MODELS_DEFAULT, NoIdentity);
    c.deny(
        &Principal::default(),
        "GET",
        "/apis/auth/discovery",
        NoIdentity,
    );
    // Health paths need nothing.
    for path in ["/health/live", "/health/ready", "/status", "/metrics"] {
        c.case(None, "GET", path, true, HealthPath);
    }
    c.finish();
}

#[test]
fn token_scopes() {
    let p = Policies::load(&[]);
    let mut c = Checker::new(&p);
    let scoped = |scopes: &[&str]| with_scopes(human("nobody"), scopes);

    c.deny(
        &scoped(&["platform:read"]),
        "POST",
        MODELS_DEFAULT,
        ScopeMismatch,
    );
    c.allow(
        &scoped(&["platform:read"]),
        "GET",
        MODELS_DEFAULT,
        WorkspacePermission,
    );
    c.allow(
        &scoped(&["platform:write"]),
        "POST",
        MODELS_DEFAULT,
        WorkspacePermission,
    );
    c.deny(
        &scoped(&["platform:write"]),
        "GET",
        MODELS_DEFAULT,
        ScopeMismatch,
    );
    c.allow(
        &scoped(&["platform:read", "platform:write"]),
        "DELETE",
        &format!("{MODELS_DEFAULT}/m"),
        WorkspacePermission,
    );
    c.allow(
        &scoped(&["models:write"]),
        "POST",
        MODELS_DEFAULT,
        WorkspacePermission,
    );
    // Scopes without `:` (OIDC scopes) mean no platform scopes: no scope check.
    c.allow(
        &scoped(&["openid"]),
        "POST",
        MODELS_DEFAULT,
        WorkspacePermission,
    );
    c.allow(
        &scoped(&["openid", "profile", "email"]),
        "DELETE",
        &format!("{MODELS_DEFAULT}/m"),
        WorkspacePermission,
    );
    // A scope for another area does not cover files.
    let files = "/apis/files/v2/workspaces/default/filesets";
    c.deny(&scoped(&["models:read"]), "GET", files, ScopeMismatch);
    c.deny(
        &scoped(&["openid", "models:read"]),
        "GET",
        files,
        ScopeMismatch,
    );
    c.allow(
        &scoped(&["models:read", "files:read"]),
        "GET",
        files,
        WorkspacePermission,
    );
    c.allow(
        &scoped(&["files:read"]),
        "GET",
        &format!("{files}/fs/-/a/b.txt"),
        WorkspacePermission,
    );
    c.deny(
        &scoped(&["files:read"]),
        "PUT",
        &format!("{files}/fs/-/a/b.txt"),
        ScopeMismatch,
    );
    // Scopes never grant permissions.
    c.deny(
        &scoped(&["platform:write"]),
        "POST",
        MODELS_WS1,
        NotPermitted,
    );
    // An endpoint with no scopes passes any scope set.
    c.allow(
        &scoped(&["models:read"]),
        "GET",
        "/apis/auth/discovery",
        PermissionlessRead,
    );
    c.finish();
}

#[test]
fn permissionless_endpoints() {
    let p = Policies::load(&[]);
    let mut c = Checker::new(&p);
    // `permissions: []`: any authenticated caller, even one bound nowhere.
    let d = c.allow(
        &human("stranger"),
        "GET",
        "/apis/auth/discovery",
        PermissionlessRead,
    );
    c.expect_match(&d, Some("/apis/auth/discovery"), None);
    c.allow(
        &human("service:jobs"),
        "GET",
        "/apis/auth/discovery",
        PermissionlessRead,
    );
    c.case(None, "GET", "/apis/auth/discovery", false, NoIdentity);
    c.deny(
        &human("stranger"),
        "POST",
        "/apis/auth/discovery",
        NotPermitted,
    );
    // `deny: true` overrides everything, PlatformAdmin and services included.
    c.deny(
        &platform_admin(),
        "GET",
        "/apis/compat/v2/retired",
        EndpointDenied,
    );
    c.deny(
        &human("service:jobs"),
        "GET",
        "/apis/compat/v2/retired",
        EndpointDenied,
    );
    c.finish();
}

#[test]
fn dash_tails_and_the_openai_tie() {
    let p = Policies::load(&[]);
    let mut c = Checker::new(&p);
    let anyone = human("nobody");
    let viewer = human("viewer-1");
    let gw = "/apis/inference-gateway/v2/workspaces";
    let openai_models = "/apis/inference-gateway/v2/workspaces/{workspace}/openai/-/v1/models";
    let openai_model =
        "/apis/inference-gateway/v2/workspaces/{workspace}/openai/-/v1/models/{name}";
    let openai_tail = "/apis/inference-gateway/v2/workspaces/{workspace}/openai/-/{trailing_uri}";

    let d = c.allow(
        &anyone,
        "GET",
        &format!("{gw}/default/openai/-/v1/models"),
        WorkspacePermission,
    );
    c.expect_match(&d, Some(openai_models), Some("default"));
    // The tie NMP cannot decide: the spelled-out tail beats `{trailing_uri}`.
    let d = c.allow(
        &anyone,
        "GET",
        &format!("{gw}/default/openai/-/v1/models/llama-3"),
        WorkspacePermission,
    );
    c.expect_match(&d, Some(openai_model), Some("default"));
    // ...so a POST there meets an endpoint that only lists GET.
    let d = c.deny(
        &anyone,
        "POST",
        &format!("{gw}/default/openai/-/v1/models/llama-3"),
        NotPermitted,
    );
    c.expect_match(&d, Some(openai_model), Some("default"));
    let d = c.allow(
        &anyone,
        "POST",
        &format!("{gw}/default/openai/-/v1/chat/completions"),
        WorkspacePermission,
    );
    c.expect_match(&d, Some(openai_tail), Some("default"));
    let d = c.allow(
        &anyone,
        "GET",
        &format!("{gw}/default/openai/-/v1/models/a/b"),
        WorkspacePermission,
    );
    c.expect_match(&d, Some(openai_tail), Some("default"));
    // Viewers may call inference routes too.
    c.allow(
        &viewer,
        "POST",
        &format!("{gw}/ws1/openai/-/v1/chat/completions"),
        WorkspacePermission,
    );
    c.deny(
        &viewer,
        "POST",
        &format!("{gw}/ws2/openai/-/v1/chat/completions"),
        NotPermitted,
    );
    // An empty tail or a bare `-` matches nothing.
    let d = c.deny(
        &anyone,
        "POST",
        &format!("{gw}/default/openai/-/"),
        NotPermitted,
    );
    c.expect_match(&d, None, None);
    c.deny(
        &anyone,
        "POST",
        &format!("{gw}/default/openai/-"),
        NotPermitted,
    );

    let d = c.allow(
        &anyone,
        "DELETE",
        &format!("{gw}/default/model/m1/-/v1/x/y/z"),
        WorkspacePermission,
    );
    c.expect_match(
        &d,
        Some("/apis/inference-gateway/v2/workspaces/{workspace}/model/{name}/-/{trailing_uri}"),
        Some("default"),
    );
    c.allow(
        &anyone,
        "PATCH",
        &format!("{gw}/default/provider/p1/-/v1/chat/completions"),
        WorkspacePermission,
    );
    let d = c.allow(
        &anyone,
        "GET",
        &format!("{gw}/default/provider/p1/ready"),
        WorkspacePermission,
    );
    c.expect_match(
        &d,
        Some("/apis/inference-gateway/v2/workspaces/{workspace}/provider/{name}/ready"),
        Some("default"),
    );
    c.deny(
        &anyone,
        "GET",
        &format!("{gw}/ws1/model/m1/-/v1/models"),
        NotPermitted,
    );

    // Files: the `/-/` tail is a file path inside a fileset.
    let files = "/apis/files/v2/workspaces";
    let file_tail = "/apis/files/v2/workspaces/{workspace}/filesets/{name}/-/{path}";
    let d = c.allow(
        &viewer,
        "HEAD",
        &format!("{files}/ws1/filesets/fs/-/dir/file.txt"),
        WorkspacePermission,
    );
    c.expect_match(&d, Some(file_tail), Some("ws1"));
    c.deny(
        &viewer,
        "PUT",
        &format!("{files}/ws1/filesets/fs/-/dir/file.txt"),
        NotPermitted,
    );
    c.allow(
        &human("editor-1"),
        "PUT",
        &format!("{files}/ws1/filesets/fs/-/dir/file.txt"),
        WorkspacePermission,
    );
    // A tail that spells another endpoint's name is still a file path.
    let d = c.allow(
        &viewer,
        "GET",
        &format!("{files}/ws1/filesets/fs/-/files"),
        WorkspacePermission,
    );
    c.expect_match(&d, Some(file_tail), Some("ws1"));
    let d = c.allow(
        &viewer,
        "GET",
        &format!("{files}/ws1/filesets/fs/files"),
        WorkspacePermission,
    );
    c.expect_match(
        &d,
        Some("/apis/files/v2/workspaces/{workspace}/filesets/{name}/files"),
        Some("ws1"),
    );
    c.finish();
}

#[test]
fn all_workspaces_dash() {
    let p = Policies::load(&[]);
    let mut c = Checker::new(&p);
    let anyone = human("nobody");
    let d = c.allow(
        &anyone,
        "GET",
        "/apis/models/v2/workspaces/-/models",
        AllWorkspacesRead,
    );
    c.expect_match(
        &d,
        Some("/apis/models/v2/workspaces/{workspace}/models"),
        Some("-"),
    );
    c.allow(
        &anyone,
        "HEAD",
        "/apis/files/v2/workspaces/-/filesets/fs/-/x",
        AllWorkspacesRead,
    );
    c.allow(
        &anyone,
        "GET",
        "/apis/entities/v2/workspaces/-",
        AllWorkspacesRead,
    );
    c.deny(
        &anyone,
        "POST",
        "/apis/models/v2/workspaces/-/models",
        NotPermitted,
    );
    c.deny(
        &human("admin-1"),
        "DELETE",
        "/apis/models/v2/workspaces/-/models/m",
        NotPermitted,
    );
    c.deny(
        &with_scopes(human("nobody"), &["files:read"]),
        "GET",
        "/apis/models/v2/workspaces/-/models",
        ScopeMismatch,
    );
    // Services may write across all workspaces when they hold the permissions there.
    c.allow(
        &human("service:jobs"),
        "POST",
        "/apis/models/v2/workspaces/-/models",
        ServiceAllWorkspacesWrite,
    );
    c.allow(
        &human("service:jobs"),
        "DELETE",
        "/apis/models/v2/workspaces/-/models/m",
        ServiceAllWorkspacesWrite,
    );
    // Entities sub-resources of `-` are not a real workspace's: internal for humans.
    c.deny(
        &anyone,
        "GET",
        "/apis/entities/v2/workspaces/-/members",
        NestedEntitiesInternal,
    );
    c.finish();
}

#[test]
fn nested_entities_paths() {
    let p = Policies::load(&[]);
    let mut c = Checker::new(&p);
    let anyone = human("nobody");
    let admin = human("admin-1");
    let jobs = human("service:jobs");

    c.deny(
        &anyone,
        "GET",
        "/apis/entities/v2/entities/x",
        NestedEntitiesInternal,
    );
    c.deny(
        &admin,
        "GET",
        "/apis/entities/v2/entities/x",
        NestedEntitiesInternal,
    );
    c.allow(
        &jobs,
        "GET",
        "/apis/entities/v2/entities/x",
        SystemPermission,
    );
    // Unknown nested paths: internal for humans, unknown path for services.
    c.deny(
        &anyone,
        "GET",
        "/apis/entities/v2/anything/else",
        NestedEntitiesInternal,
    );
    c.deny(
        &anyone,
        "GET",
        "/apis/entities/v2/workspaces/default/secrets",
        NestedEntitiesInternal,
    );
    c.allow(
        &jobs,
        "GET",
        "/apis/entities/v2/anything/else",
        ServiceUnknownPath,
    );
    // Workspace objects and their members/projects/entities are open to the permission holder.
    c.allow(
        &admin,
        "GET",
        "/apis/entities/v2/workspaces/ws1/members",
        WorkspacePermission,
    );
    c.allow(
        &admin,
        "POST",
        "/apis/entities/v2/workspaces/ws1/projects",
        WorkspacePermission,
    );
    c.allow(
        &admin,
        "PUT",
        "/apis/entities/v2/workspaces/ws1/projects/p1",
        WorkspacePermission,
    );
    c.allow(
        &anyone,
        "GET",
        "/apis/entities/v2/workspaces/default/projects/p1",
        WorkspacePermission,
    );
    c.allow(
        &anyone,
        "GET",
        "/apis/entities/v2/workspaces/default",
        WorkspacePermission,
    );
    c.allow(
        &anyone,
        "PUT",
        "/apis/entities/v2/workspaces/default",
        WorkspacePermission,
    );
    c.deny(
        &anyone,
        "GET",
        "/apis/entities/v2/workspaces/ws1/projects",
        NotPermitted,
    );
    c.deny(
        &anyone,
        "GET",
        "/apis/entities/v2/workspaces/default/entities/model",
        NotPermitted,
    );
    c.allow(
        &jobs,
        "POST",
        "/apis/entities/v2/workspaces/default/entities/model",
        WorkspacePermission,
    );
    // Methods outside the open list on a workspace object are internal for humans.
    c.deny(
        &anyone,
        "PATCH",
        "/apis/entities/v2/workspaces/default",
        NestedEntitiesInternal,
    );
    c.deny(
        &anyone,
        "DELETE",
        "/apis/entities/v2/workspaces",
        NestedEntitiesInternal,
    );
    c.allow(
        &platform_admin(),
        "PATCH",
        "/apis/entities/v2/workspaces/default",
        PlatformAdmin,
    );
    c.finish();
}

#[test]
fn bundle_path_only_for_platform_admin() {
    let p = Policies::load(&[]);
    let mut c = Checker::new(&p);
    let bundle = "/apis/auth/v2/iam/opa-bundle.tar.gz";
    c.allow(&platform_admin(), "GET", bundle, PlatformAdmin);
    c.allow(
        &platform_admin(),
        "GET",
        &format!("{bundle}?v=1"),
        PlatformAdmin,
    );
    for who in ["nobody", "viewer-1", "editor-1", "admin-1", "ops"] {
        c.deny(&human(who), "GET", bundle, BundleAccess);
    }
    c.case(None, "GET", bundle, false, BundleAccess);
    // Services hold every permission in system through ServiceSystem, iam.bundle.read too.
    c.allow(&human("service:auth"), "GET", bundle, SystemPermission);
    c.finish();
}

#[test]
fn callers_restricted_routes() {
    let p = Policies::load(&[]);
    let mut c = Checker::new(&p);
    let sync = "/apis/compat/v2/workspaces/ws1/internal-sync";
    let profile = "/apis/compat/v2/workspaces/ws1/my-profile";
    let viewer = human("viewer-1");

    // `callers: [service_principal]`: humans denied even with the permission; admin exempt.
    c.deny(&viewer, "POST", sync, ServiceOnlyRoute);
    c.allow(&human("service:jobs"), "POST", sync, WorkspacePermission);
    c.allow(&platform_admin(), "POST", sync, PlatformAdmin);
    // `callers: [principal]`: services denied, humans decided as usual.
    c.allow(&viewer, "GET", profile, WorkspacePermission);
    c.deny(&human("nobody"), "GET", profile, NotPermitted);
    c.deny(&human("service:jobs"), "GET", profile, PrincipalOnlyRoute);
    c.allow(&platform_admin(), "GET", profile, PlatformAdmin);

    // `ws/perm` is checked in the named workspace, not the path's.
    let audit = "/apis/compat/v2/workspaces/ws1/audit";
    c.deny(&human("admin-1"), "GET", audit, NotPermitted);
    c.allow(&human("ops"), "GET", audit, WorkspacePermission);
    c.finish();
}

#[test]
fn denied_plugin_prefixes() {
    let p = Policies::load(&["/apis/guardrails", "/apis/intake/v2/workspaces/default"]);
    let mut c = Checker::new(&p);
    let configs = "/apis/guardrails/v2/workspaces/default/configs";
    c.deny(&human("nobody"), "GET", configs, DeniedPluginPrefix);
    c.deny(&human("service:jobs"), "GET", configs, DeniedPluginPrefix);
    c.deny(&platform_admin(), "GET", configs, DeniedPluginPrefix);
    c.deny(
        &human("service:jobs"),
        "GET",
        "/apis/guardrails",
        DeniedPluginPrefix,
    );
    c.deny(
        &human("nobody"),
        "GET",
        &format!("{configs}?x=1"),
        DeniedPluginPrefix,
    );
    // A prefix is a whole path segment.
    c.allow(
        &human("service:jobs"),
        "GET",
        "/apis/guardrailsx/v2/x",
        ServiceUnknownPath,
    );
    c.deny(
        &human("nobody"),
        "GET",
        "/apis/intake/v2/workspaces/defaults/traces",
        NotPermitted,
    );
    c.deny(
        &human("nobody"),
        "GET",
        "/apis/intake/v2/workspaces/default/traces",
        DeniedPluginPrefix,
    );
    // Elsewhere nothing changes.
    c.allow(&human("nobody"), "GET", MODELS_DEFAULT, WorkspacePermission);
    c.finish();
}
