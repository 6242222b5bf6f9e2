//! The decision table: NMP's `allow` rules (DESIGN.md §1 "Decision semantics") as one table of
//! cases over `tests/fixtures/decision/policy.yaml`, run against the pure core and again through
//! a tonic client against the in-process gRPC server ("Check response"), and through a real
//! Envoy running nmp-authz's dynamic module, whose answers must be the gRPC Check's. Every allow and deny
//! rule has a case where it applies and one where it narrowly does not. Expectations come from
//! DESIGN §1 (and the lead's interpretations: `service:` is judged on the principal id only,
//! method rules compare the method as sent, a `/-/{rest}` tail needs a non-empty remainder,
//! `has_role` does not count `*`, as in NMP 0.3.0), not from running the code.

mod common;

use common::*;
use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use nmp_authz_core::policy::{CompiledPolicy, Principal, Reason as R};

const ALLOW: bool = true;
const DENY: bool = false;
const ANON: Option<Principal> = None;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum On {
    /// `tests/fixtures/decision/policy.yaml`.
    Main,
    /// `tests/fixtures/decision/no-endpoints.yaml`.
    NoEndpoints,
}

#[derive(Debug)]
struct Case {
    name: &'static str,
    on: On,
    method: &'static str,
    path: &'static str,
    who: Option<Principal>,
    allowed: bool,
    reason: R,
    /// Expected (matched endpoint, workspace), checked when given.
    at: Option<(Option<&'static str>, Option<&'static str>)>,
    /// Check refuses the request with 400 before the core decides (README "Request paths"):
    /// the core's answer is still the table's, the gateway's is 400 `ambiguous_request`.
    refused_by_check: bool,
}

fn c(
    name: &'static str,
    method: &'static str,
    path: &'static str,
    who: impl Into<Option<Principal>>,
    allowed: bool,
    reason: R,
) -> Case {
    Case {
        name,
        on: On::Main,
        method,
        path,
        who: who.into(),
        allowed,
        reason,
        at: None,
        refused_by_check: false,
    }
}

impl Case {
    fn at(mut self, endpoint: Option<&'static str>, workspace: Option<&'static str>) -> Self {
        self.at = Some((endpoint, workspace));
        self
    }
    fn refused_by_check(mut self) -> Self {
        self.refused_by_check = true;
        self
    }
    fn no_endpoints(mut self) -> Self {
        self.on = On::NoEndpoints;
        self
    }
}

// Principals used across the table (bindings in the fixture).
fn alice() -> Principal {
    who("alice") // Editor in ws1
}
fn nobody() -> Principal {
    who("nobody") // no bindings of its own: only `*`
}
fn svc() -> Principal {
    who("service:jobs") // no bindings: ServiceSystem everywhere
}
fn limited() -> Principal {
    who("service:limited") // Viewer in ws1 and `-`
}
fn root() -> Principal {
    who("root").email("root@example.com") // PlatformAdmin in system, by email
}
fn eve() -> Principal {
    // SecretReader in ws1; `service:` in her email and group does not make her a service.
    who("eve")
        .email("service:eve@example.com")
        .groups(&["service:bots"])
}

const MODELS: &str = "/apis/models/v2/workspaces/{workspace}/models";
const MODEL: &str = "/apis/models/v2/workspaces/{workspace}/models/{name}";
const GW_REST: &str = "/apis/gw/v2/workspaces/{workspace}/openai/-/{rest}";
const GW_MODELS: &str = "/apis/gw/v2/workspaces/{workspace}/openai/-/v1/models";
const GW_MODEL: &str = "/apis/gw/v2/workspaces/{workspace}/openai/-/v1/models/{name}";
const ACCESS: &str = "/apis/secrets/v2/workspaces/ws1/secrets/s1/access";
const BUNDLE: &str = "/apis/auth/v2/iam/opa-bundle.tar.gz";

#[rustfmt::skip]
fn cases() -> Vec<Case> {
    use R::*;
    vec![
        // ---- Health paths: always allowed, matched on the full path as sent ----
        c("health live, no identity", "GET", "/health/live", ANON, ALLOW, HealthPath),
        c("health ready, no identity", "GET", "/health/ready", ANON, ALLOW, HealthPath),
        c("status, no identity", "GET", "/status", ANON, ALLOW, HealthPath),
        c("metrics by POST, no identity", "POST", "/metrics", ANON, ALLOW, HealthPath),
        c("status with a principal", "GET", "/status", alice(), ALLOW, HealthPath),
        c("health path with a query is not one", "GET", "/health/live?x=1", ANON, DENY, NoIdentity),
        c("/healthz is not a health path", "GET", "/healthz", ANON, DENY, NoIdentity),

        // ---- No endpoints loaded: fail closed (503), health paths excepted ----
        c("no endpoints: health ready", "GET", "/health/ready", ANON, ALLOW, HealthPath).no_endpoints(),
        c("no endpoints: metrics", "GET", "/metrics", ANON, ALLOW, HealthPath).no_endpoints(),
        c("no endpoints: health with query", "GET", "/health/live?x=1", ANON, DENY, NoEndpointsLoaded).no_endpoints(),
        c("no endpoints: anonymous", "GET", "/apis/models/v2/workspaces/ws1/models", ANON, DENY, NoEndpointsLoaded).no_endpoints(),
        c("no endpoints: service on any path", "GET", "/apis/x/v1/y", svc(), DENY, NoEndpointsLoaded).no_endpoints(),
        c("no endpoints: PlatformAdmin", "GET", "/apis/x/v1/y", who("root"), DENY, NoEndpointsLoaded).no_endpoints(),

        // ---- Applicable principals: id, email, each group; empty strings dropped ----
        c("no identity", "GET", "/apis/models/v2/workspaces/ws1/models/featured", ANON, DENY, NoIdentity),
        c("principal with nothing in it", "GET", "/apis/models/v2/workspaces/ws1/models/featured", no_id(), DENY, NoIdentity),
        c("empty id is dropped", "GET", "/apis/models/v2/workspaces/ws1/models/featured", who(""), DENY, NoIdentity),
        // As in NMP, an email or groups without a principal id identify nobody.
        c("binding by email, no id", "GET", "/apis/models/v2/workspaces/ws1/models", no_id().email("bob@example.com"), DENY, NoIdentity),
        c("binding by email, empty id", "GET", "/apis/models/v2/workspaces/ws1/models", who("").email("bob@example.com"), ALLOW, WorkspacePermission),
        c("binding by email", "GET", "/apis/models/v2/workspaces/ws1/models", who("bob").email("bob@example.com"), ALLOW, WorkspacePermission),
        c("same caller without the email", "GET", "/apis/models/v2/workspaces/ws1/models", who("bob"), DENY, NotPermitted),
        c("binding by the second group", "POST", "/apis/models/v2/workspaces/ws1/models", who("carol").groups(&["other", "team-a"]), ALLOW, WorkspacePermission),
        c("groups that are not it", "POST", "/apis/models/v2/workspaces/ws1/models", who("carol").groups(&["team-a2", "team"]), DENY, NotPermitted),
        c("empty email and group do not match the \"\" binding", "GET", "/apis/models/v2/workspaces/ws1/models", who("dave").email("").groups(&[""]), DENY, NotPermitted),

        // ---- Roles: includes expansion, `*` permission ----
        c("includes two levels down (Owner>Editor>Viewer)", "GET", "/apis/models/v2/workspaces/ws1/models/m1", who("olga"), ALLOW, WorkspacePermission),
        c("Owner's own permission", "DELETE", "/apis/models/v2/workspaces/ws1/models/m1", who("olga"), ALLOW, WorkspacePermission),
        c("includes do not flow upwards", "DELETE", "/apis/models/v2/workspaces/ws1/models/m1", alice(), DENY, NotPermitted),
        c("Editor's own permission", "POST", "/apis/models/v2/workspaces/ws1/models", alice(), ALLOW, WorkspacePermission),
        c("Editor via includes", "GET", "/apis/models/v2/workspaces/ws1/models", alice(), ALLOW, WorkspacePermission),
        c("Viewer cannot write", "POST", "/apis/models/v2/workspaces/ws1/models", who("viv"), DENY, NotPermitted),
        c("human holding `*` in ws1", "DELETE", "/apis/models/v2/workspaces/ws1/models/m1", who("sysop"), ALLOW, WorkspacePermission),
        c("`*` holder in another workspace", "DELETE", "/apis/models/v2/workspaces/ws2/models/m1", who("sysop"), DENY, NotPermitted),

        // ---- Permissions held in the workspace ----
        c("held in ws1, query stripped", "GET", "/apis/models/v2/workspaces/ws1/models?page=2&f=a/b", alice(), ALLOW, WorkspacePermission).at(Some(MODELS), Some("ws1")),
        c("not held in ws2", "POST", "/apis/models/v2/workspaces/ws2/models", alice(), DENY, NotPermitted).at(Some(MODELS), Some("ws2")),
        c("{workspace_id} placeholder", "GET", "/apis/legacy/v1/ws/ws1/items", alice(), ALLOW, WorkspacePermission).at(Some("/apis/legacy/v1/ws/{workspace_id}/items"), Some("ws1")),
        c("{workspace_id} other workspace", "GET", "/apis/legacy/v1/ws/ws2/items", alice(), DENY, NotPermitted),
        c("placeholder after `workspaces`", "GET", "/apis/entities/v2/workspaces/ws1", who("wendy"), ALLOW, WorkspacePermission).at(Some("/apis/entities/v2/workspaces/{name}"), Some("ws1")),

        // ---- service: principals get ServiceSystem where they have no explicit binding ----
        c("service, no bindings", "POST", "/apis/models/v2/workspaces/ws1/models", svc(), ALLOW, WorkspacePermission),
        c("service, any workspace", "DELETE", "/apis/models/v2/workspaces/ws9/models/m1", svc(), ALLOW, WorkspacePermission),
        c("service where `*` has a binding", "POST", "/apis/models/v2/workspaces/shared/models", svc(), ALLOW, WorkspacePermission),
        c("service's explicit Viewer binding", "GET", "/apis/models/v2/workspaces/ws1/models", limited(), ALLOW, WorkspacePermission),
        c("explicit binding replaces ServiceSystem", "POST", "/apis/models/v2/workspaces/ws1/models", limited(), DENY, NotPermitted),
        c("ServiceSystem where it has none", "POST", "/apis/models/v2/workspaces/ws2/models", limited(), ALLOW, WorkspacePermission),
        c("service: email/group is not a service", "POST", "/apis/models/v2/workspaces/ws2/models", eve(), DENY, NotPermitted),

        // ---- The `*` principal ----
        c("`*` binding applies to anyone", "GET", "/apis/models/v2/workspaces/shared/models", nobody(), ALLOW, WorkspacePermission),
        c("`*` binding is only Viewer", "POST", "/apis/models/v2/workspaces/shared/models", nobody(), DENY, NotPermitted),
        c("`*` binding only in shared", "GET", "/apis/models/v2/workspaces/ws1/models", nobody(), DENY, NotPermitted),
        c("`*` needs an identity", "GET", "/apis/models/v2/workspaces/shared/models", ANON, DENY, NoIdentity),
        c("own binding in shared", "POST", "/apis/models/v2/workspaces/shared/models", who("sid"), ALLOW, WorkspacePermission),

        // ---- `ws/perm`: checked in ws ----
        c("ws/perm held in its workspace", "POST", "/apis/jobs/v2/workspaces/ws1/jobs", who("jane"), ALLOW, WorkspacePermission),
        c("ws/perm held in the request workspace only", "POST", "/apis/jobs/v2/workspaces/ws1/jobs", who("jack"), DENY, NotPermitted),
        c("ws/perm held, plain one not", "POST", "/apis/jobs/v2/workspaces/ws2/jobs", who("jane"), DENY, NotPermitted),
        c("ws/perm, service", "POST", "/apis/jobs/v2/workspaces/ws1/jobs", svc(), ALLOW, WorkspacePermission),
        c("ws/perm, service with explicit binding", "POST", "/apis/jobs/v2/workspaces/ws1/jobs", limited(), DENY, NotPermitted),
        // As in NMP, `*` bindings count for permissions checked in the request's workspace,
        // not for a `ws/perm` permission (README, "Decision semantics").
        c("ws/perm not held through `*`", "GET", "/apis/catalog/v2/workspaces/ws9/mirror", nobody(), DENY, NotPermitted),
        c("ws/perm POST not held through `*`", "POST", "/apis/catalog/v2/workspaces/ws9/mirror", nobody(), DENY, NotPermitted),
        c("ws/perm held by own binding", "POST", "/apis/catalog/v2/workspaces/ws9/mirror", who("sid"), ALLOW, WorkspacePermission),

        // ---- Workspace `-`: reads for anyone, writes for services holding them ----
        c("GET on `-`", "GET", "/apis/models/v2/workspaces/-/models", nobody(), ALLOW, AllWorkspacesRead).at(Some(MODELS), Some("-")),
        c("HEAD on `-`", "HEAD", "/apis/models/v2/workspaces/-/models", nobody(), ALLOW, AllWorkspacesRead),
        c("lower-case `get` on `-`", "get", "/apis/models/v2/workspaces/-/models", nobody(), DENY, NotPermitted).refused_by_check(),
        c("GET on `-` without identity", "GET", "/apis/models/v2/workspaces/-/models", ANON, DENY, NoIdentity),
        c("GET on `-`, scope mismatch", "GET", "/apis/models/v2/workspaces/-/models", nobody().scopes("files:read"), DENY, ScopeMismatch),
        c("service POST on `-`", "POST", "/apis/models/v2/workspaces/-/models", svc(), ALLOW, ServiceAllWorkspacesWrite),
        c("service DELETE on `-`", "DELETE", "/apis/models/v2/workspaces/-/models/m1", svc(), ALLOW, ServiceAllWorkspacesWrite),
        c("service POST on `-`, scope mismatch", "POST", "/apis/models/v2/workspaces/-/models", svc().scopes("models:read"), DENY, ScopeMismatch),
        c("human POST on `-`", "POST", "/apis/models/v2/workspaces/-/models", alice(), DENY, NotPermitted),
        c("human bound in `-` POST on `-`", "POST", "/apis/models/v2/workspaces/-/models", who("dash-editor"), DENY, NotPermitted),
        c("service not holding it in `-`", "POST", "/apis/models/v2/workspaces/-/models", limited(), DENY, NotPermitted),

        // ---- No workspace: permissions checked in system ----
        c("held in system", "GET", "/apis/models/v2/catalog", who("sam"), ALLOW, SystemPermission).at(Some("/apis/models/v2/catalog"), None),
        c("held in ws1, not system", "GET", "/apis/models/v2/catalog", who("carl"), DENY, NotPermitted),
        c("method the endpoint does not list", "POST", "/apis/models/v2/catalog", who("sam"), DENY, NotPermitted),
        c("service in system", "GET", "/apis/models/v2/catalog", svc(), ALLOW, SystemPermission),
        c("held in system, scope mismatch", "GET", "/apis/models/v2/catalog", who("sam").scopes("platform:read"), DENY, ScopeMismatch),
        // DESIGN-literal: the endpoint lists no `head`, so HEAD requires no permission and the
        // permissionless-read rule allows it (an upstream that answers HEAD with its GET
        // handler then serves it without catalog.read). Kept as DESIGN words it; flagged.
        c("HEAD on a GET-only endpoint", "HEAD", "/apis/models/v2/catalog", nobody(), ALLOW, PermissionlessRead),

        // ---- GET/HEAD, matched, no workspace, no permissions required ----
        c("no permissions key, GET", "GET", "/apis/info/v2/version", nobody(), ALLOW, PermissionlessRead).at(Some("/apis/info/v2/version"), None),
        c("no permissions key, HEAD", "HEAD", "/apis/info/v2/version", nobody(), ALLOW, PermissionlessRead),
        c("no permissions key, POST", "POST", "/apis/info/v2/version", nobody(), DENY, NotPermitted),
        c("no permissions key, with a workspace", "GET", "/apis/info/v2/workspaces/ws1/status", nobody(), DENY, NotPermitted),
        c("no permissions key, matching scope", "GET", "/apis/info/v2/version", nobody().scopes("openid platform:read"), ALLOW, PermissionlessRead),
        c("no permissions key, scope mismatch", "GET", "/apis/info/v2/version", nobody().scopes("models:read"), DENY, ScopeMismatch),
        c("no permissions key, no identity", "GET", "/apis/info/v2/version", ANON, DENY, NoIdentity),
        c("unmatched path is not a permissionless read", "GET", "/apis/info/v2/nothing", nobody(), DENY, NotPermitted),

        // ---- `permissions: []` ----
        c("empty permissions, POST", "POST", "/apis/misc/v2/workspaces/ws1/feedback", nobody(), ALLOW, PermissionlessEndpoint),
        c("empty permissions, unlisted GET", "GET", "/apis/misc/v2/workspaces/ws1/feedback", nobody(), DENY, NotPermitted),
        c("empty permissions, scope mismatch", "POST", "/apis/misc/v2/workspaces/ws1/feedback", nobody().scopes("models:read"), DENY, ScopeMismatch),
        c("empty permissions, no identity", "POST", "/apis/misc/v2/workspaces/ws1/feedback", ANON, DENY, NoIdentity),

        // ---- Matching: fewest placeholders, tails, ties ----
        c("literal beats placeholder", "GET", "/apis/models/v2/workspaces/ws1/models/featured", nobody(), ALLOW, PermissionlessEndpoint).at(Some("/apis/models/v2/workspaces/{workspace}/models/featured"), Some("ws1")),
        c("placeholder for another name", "GET", "/apis/models/v2/workspaces/ws1/models/other", nobody(), DENY, NotPermitted).at(Some(MODEL), Some("ws1")),
        c("empty segment matches no placeholder", "GET", "/apis/models/v2/workspaces//models", alice(), DENY, NotPermitted).at(None, None).refused_by_check(),
        c("{rest} tail", "GET", "/apis/gw/v2/workspaces/ws1/openai/-/v1/chat/completions", who("inv"), ALLOW, WorkspacePermission).at(Some(GW_REST), Some("ws1")),
        c("{rest} tail, other workspace", "GET", "/apis/gw/v2/workspaces/ws2/openai/-/v1/chat", who("inv"), DENY, NotPermitted),
        c("`/-/` alone matches no tail", "GET", "/apis/gw/v2/workspaces/ws1/openai/-/", who("inv"), DENY, NotPermitted).at(None, None),
        c("`/-` alone matches no tail", "GET", "/apis/gw/v2/workspaces/ws1/openai/-", who("inv"), DENY, NotPermitted),
        c("`/-/` alone is an unknown path", "GET", "/apis/gw/v2/workspaces/ws1/openai/-/", svc(), ALLOW, ServiceUnknownPath),
        c("spelled-out tail beats {rest}", "GET", "/apis/gw/v2/workspaces/ws1/openai/-/v1/models", who("inv"), DENY, NotPermitted).at(Some(GW_MODELS), Some("ws1")),
        c("spelled-out tail, holder", "GET", "/apis/gw/v2/workspaces/ws1/openai/-/v1/models", who("viv"), ALLOW, WorkspacePermission),
        c("tie: spelled-out tail beats {rest}", "GET", "/apis/gw/v2/workspaces/ws1/openai/-/v1/models/llama", who("viv"), ALLOW, WorkspacePermission).at(Some(GW_MODEL), Some("ws1")),
        c("tie: spelled-out tail, not holder", "GET", "/apis/gw/v2/workspaces/ws1/openai/-/v1/models/llama", who("inv"), DENY, NotPermitted),
        c("longer remainder only {rest}", "GET", "/apis/gw/v2/workspaces/ws1/openai/-/v1/models/a/b", who("viv"), DENY, NotPermitted).at(Some(GW_REST), Some("ws1")),
        c("tie: more literals win", "POST", "/apis/tie/~v1/-/-/z", nobody(), ALLOW, PermissionlessEndpoint).at(Some("/apis/tie/~v1/{y}/-/{rest}"), None),
        c("tie: only one candidate", "POST", "/apis/tie/v3/-/z", nobody(), DENY, NotPermitted).at(Some("/apis/tie/{x}/-/{rest}"), None),
        c("tie: lexically smaller wins", "POST", "/apis/tie/v2/w/-/z", nobody(), ALLOW, PermissionlessEndpoint).at(Some("/apis/tie/v2/{a}/-/{rest}"), None),
        c("tie: lexical rival alone", "POST", "/apis/tie/v9/w/-/z", nobody(), DENY, NotPermitted).at(Some("/apis/tie/{b}/w/-/{rest}"), None),

        // ---- Scopes (on an endpoint with scopes [models:read, platform:read]) ----
        c("scopes: none", "GET", "/apis/models/v2/workspaces/ws1/models", alice(), ALLOW, WorkspacePermission),
        c("scopes: only non-platform", "GET", "/apis/models/v2/workspaces/ws1/models", alice().scopes("openid profile"), ALLOW, WorkspacePermission),
        c("scopes: one matches", "GET", "/apis/models/v2/workspaces/ws1/models", alice().scopes("openid models:read"), ALLOW, WorkspacePermission),
        c("scopes: platform scope", "GET", "/apis/models/v2/workspaces/ws1/models", alice().scopes("platform:read"), ALLOW, WorkspacePermission),
        c("scopes: none matches", "GET", "/apis/models/v2/workspaces/ws1/models", alice().scopes("models:write files:read"), DENY, ScopeMismatch),
        c("scopes: endpoint without scopes", "GET", "/apis/legacy/v1/ws/ws1/items", alice().scopes("files:read"), ALLOW, WorkspacePermission),

        // ---- PlatformAdmin in system: allows everything not denied, skips scopes ----
        c("admin by email, scope mismatch", "POST", "/apis/models/v2/workspaces/ws1/models", root().scopes("files:read"), ALLOW, PlatformAdmin),
        c("admin on an unmatched path", "GET", "/apis/unknown/v1/thing", root(), ALLOW, PlatformAdmin),
        c("admin by group", "DELETE", "/apis/models/v2/workspaces/ws7/models/m1", who("gina").groups(&["admins"]), ALLOW, PlatformAdmin),
        c("PlatformAdmin bound in ws1 only", "POST", "/apis/models/v2/workspaces/ws1/models", who("wsadmin"), DENY, NotPermitted),
        c("admin's id without the bound email", "POST", "/apis/models/v2/workspaces/ws1/models", who("root"), DENY, NotPermitted),

        // ---- service: principal on a path no endpoint matches (skips scopes) ----
        c("service, unmatched path", "GET", "/apis/unknown/v1/thing", svc(), ALLOW, ServiceUnknownPath).at(None, None),
        c("service, unmatched path, any scope", "GET", "/apis/unknown/v1/thing", svc().scopes("files:read"), ALLOW, ServiceUnknownPath),
        c("human, unmatched path", "GET", "/apis/unknown/v1/thing", alice(), DENY, NotPermitted),
        c("service: email/group, unmatched path", "GET", "/apis/unknown/v1/thing", eve(), DENY, NotPermitted),
        c("service, matched path, unlisted method", "PATCH", "/apis/models/v2/workspaces/ws1/models", svc(), DENY, NotPermitted),
        c("service, matched path, scope mismatch", "GET", "/apis/models/v2/workspaces/ws1/models", svc().scopes("files:read"), DENY, ScopeMismatch),

        // ---- Deny: `deny: true` (even PlatformAdmin) ----
        c("deny: true", "GET", "/apis/models/v2/workspaces/ws1/models/m1/weights", alice(), DENY, EndpointDenied),
        c("deny: true, admin", "GET", "/apis/models/v2/workspaces/ws1/models/m1/weights", root(), DENY, EndpointDenied),
        c("deny: true, service", "GET", "/apis/models/v2/workspaces/ws1/models/m1/weights", svc(), DENY, EndpointDenied),
        c("other method of a denied endpoint", "HEAD", "/apis/models/v2/workspaces/ws1/models/m1/weights", alice(), ALLOW, WorkspacePermission),

        // ---- Deny: denied plugin prefix (even PlatformAdmin) ----
        c("under a denied prefix", "POST", "/apis/badplugin/v1/workspaces/ws1/run", alice(), DENY, DeniedPluginPrefix),
        c("under a denied prefix, admin", "POST", "/apis/badplugin/v1/workspaces/ws1/run", root(), DENY, DeniedPluginPrefix),
        c("under a denied prefix, service, unmatched", "GET", "/apis/badplugin/v1/anything", svc(), DENY, DeniedPluginPrefix),
        c("prefix boundary: badplugin2", "POST", "/apis/badplugin2/v1/workspaces/ws1/run", alice(), ALLOW, PermissionlessEndpoint),
        c("prefix boundary: badplugin2, service", "GET", "/apis/badplugin2/v1/anything", svc(), ALLOW, ServiceUnknownPath),

        // ---- Deny: secret values for non-service callers (even PlatformAdmin) ----
        c("secret access, human holder", "GET", ACCESS, who("sara"), DENY, SecretAccessNotService),
        c("secret access, admin", "GET", ACCESS, root(), DENY, SecretAccessNotService),
        c("secret access, service: email/group", "GET", ACCESS, eve(), DENY, SecretAccessNotService),
        // An empty id is not a `service:` id: the deny applies to the email's holder.
        c("secret access, empty id, email holder", "GET", ACCESS, who("").email("sec@example.com"), DENY, SecretAccessNotService),
        c("secret access, service", "GET", ACCESS, svc(), ALLOW, WorkspacePermission),
        c("secret metadata, human holder", "GET", "/apis/secrets/v2/workspaces/ws1/secrets/s1", who("sara"), ALLOW, WorkspacePermission),

        // ---- Deny: the bundle without iam.bundle.read in system (and the scope check) ----
        c("bundle, reader in system", "GET", BUNDLE, who("bundler"), ALLOW, SystemPermission),
        c("bundle, query stripped", "GET", "/apis/auth/v2/iam/opa-bundle.tar.gz?v=2", who("bundler"), ALLOW, SystemPermission),
        c("bundle, matching scope", "GET", BUNDLE, who("bundler").scopes("platform:read"), ALLOW, SystemPermission),
        c("bundle, scope mismatch", "GET", BUNDLE, who("bundler").scopes("models:read"), DENY, BundleAccess),
        c("bundle, reader in ws1 only", "GET", BUNDLE, who("ws-bundler"), DENY, BundleAccess),
        c("bundle, no permission", "GET", BUNDLE, nobody(), DENY, BundleAccess),
        c("bundle, service", "GET", BUNDLE, svc(), ALLOW, SystemPermission),
        c("bundle, admin (role holds iam.bundle.read)", "GET", BUNDLE, root(), ALLOW, PlatformAdmin),

        // ---- Deny: nested entities paths for neither service nor PlatformAdmin ----
        c("nested entities sub-resource", "GET", "/apis/entities/v2/workspaces/ws1/settings", who("wendy"), DENY, NestedEntitiesInternal),
        c("nested entities, service", "GET", "/apis/entities/v2/workspaces/ws1/settings", svc(), ALLOW, WorkspacePermission),
        c("nested entities, admin", "GET", "/apis/entities/v2/workspaces/ws1/settings", root(), ALLOW, PlatformAdmin),
        c("members of a real workspace", "GET", "/apis/entities/v2/workspaces/ws1/members", who("wendy"), ALLOW, WorkspacePermission),
        c("members of `-`", "GET", "/apis/entities/v2/workspaces/-/members", who("wendy"), DENY, NestedEntitiesInternal),
        c("members of `-`, service", "GET", "/apis/entities/v2/workspaces/-/members", svc(), ALLOW, AllWorkspacesRead),
        c("POST on one workspace", "POST", "/apis/entities/v2/workspaces/ws1", who("wendy"), DENY, NestedEntitiesInternal),
        c("PUT on one workspace", "PUT", "/apis/entities/v2/workspaces/ws1", who("wendy"), ALLOW, WorkspacePermission),
        c("DELETE on one workspace", "DELETE", "/apis/entities/v2/workspaces/ws1", who("wendy"), ALLOW, WorkspacePermission),
        c("workspace create", "POST", "/apis/entities/v2/workspaces", who("sam"), ALLOW, SystemPermission),
        c("workspace create, not held", "POST", "/apis/entities/v2/workspaces", alice(), DENY, NotPermitted),
        c("workspace list", "GET", "/apis/entities/v2/workspaces", who("viv"), ALLOW, PermissionlessRead),
        c("nested entities, unmatched", "GET", "/apis/entities/v2/internal/reindex", alice(), DENY, NestedEntitiesInternal),
        c("nested entities, service: email/group", "GET", "/apis/entities/v2/internal/reindex", eve(), DENY, NestedEntitiesInternal),
        c("nested entities, unmatched, service", "GET", "/apis/entities/v2/internal/reindex", svc(), ALLOW, ServiceUnknownPath),

        // ---- Deny: `callers: [service_principal]` for humans (PlatformAdmin exempt) ----
        c("service-only route, human holder", "POST", "/apis/internal/v2/workspaces/ws1/sync", alice(), DENY, ServiceOnlyRoute),
        c("service-only route, service: email/group", "POST", "/apis/internal/v2/workspaces/ws1/sync", eve(), DENY, ServiceOnlyRoute),
        // As for secret access: an empty id is not a service.
        c("service-only route, empty id, group holder", "POST", "/apis/internal/v2/workspaces/ws1/sync", who("").groups(&["team-a"]), DENY, ServiceOnlyRoute),
        c("service-only route, service", "POST", "/apis/internal/v2/workspaces/ws1/sync", svc(), ALLOW, WorkspacePermission),
        c("service-only route, admin", "POST", "/apis/internal/v2/workspaces/ws1/sync", root(), ALLOW, PlatformAdmin),

        // ---- Deny: `callers: [principal]` for service: callers ----
        c("principal-only route, service", "PUT", "/apis/users/v2/workspaces/ws1/preferences", svc(), DENY, PrincipalOnlyRoute),
        c("principal-only route, human", "PUT", "/apis/users/v2/workspaces/ws1/preferences", nobody(), ALLOW, PermissionlessEndpoint),
        c("principal-only route, service: email/group", "PUT", "/apis/users/v2/workspaces/ws1/preferences", eve(), ALLOW, PermissionlessEndpoint),
        c("principal-only route, admin", "PUT", "/apis/users/v2/workspaces/ws1/preferences", root(), ALLOW, PlatformAdmin),
    ]
}

struct Policies {
    main: CompiledPolicy,
    no_endpoints: CompiledPolicy,
}

impl Policies {
    fn new() -> Self {
        Self {
            main: policy(DECISION_POLICY),
            no_endpoints: policy(NO_ENDPOINTS_POLICY),
        }
    }
    fn get(&self, on: On) -> &CompiledPolicy {
        match on {
            On::Main => &self.main,
            On::NoEndpoints => &self.no_endpoints,
        }
    }
}

/// Panics listing every failure, so one run shows them all.
fn report(run: &str, failures: Vec<String>, total: usize) {
    assert!(
        failures.is_empty(),
        "{run}: {} of {total} cases failed:\n  {}",
        failures.len(),
        failures.join("\n  ")
    );
}

#[test]
fn table_names_are_unique_and_every_rule_is_covered() {
    let cases = cases();
    let mut names: Vec<_> = cases.iter().map(|c| c.name).collect();
    names.sort_unstable();
    let before = names.len();
    names.dedup();
    assert_eq!(before, names.len(), "duplicate case names");
    for &reason in R::ALL {
        assert!(
            cases.iter().any(|c| c.reason == reason),
            "no case expects {reason:?}"
        );
    }
}

#[test]
fn decision_table_core() {
    let policies = Policies::new();
    let cases = cases();
    let mut failures = Vec::new();
    for case in &cases {
        let d = policies
            .get(case.on)
            .allow(case.who.as_ref(), case.method, case.path);
        if (d.allowed, d.reason) != (case.allowed, case.reason) {
            failures.push(format!(
                "{}: {} {} as {:?}: expected ({}, {:?}), got ({}, {:?})",
                case.name,
                case.method,
                case.path,
                case.who,
                case.allowed,
                case.reason,
                d.allowed,
                d.reason
            ));
        }
        if let Some((endpoint, workspace)) = case.at {
            let got = (d.endpoint, d.workspace.as_deref());
            if got != (endpoint, workspace) {
                failures.push(format!(
                    "{}: expected (endpoint, workspace) {:?}, got {got:?}",
                    case.name,
                    (endpoint, workspace)
                ));
            }
        }
    }
    report("core", failures, cases.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decision_table_grpc() {
    let policies = Policies::new();
    let mut main = TestServer::start(state(Some(policy(DECISION_POLICY)), true)).await;
    let mut no_endpoints = TestServer::start(state(Some(policy(NO_ENDPOINTS_POLICY)), true)).await;
    let cases = cases();
    let mut failures = Vec::new();
    for case in &cases {
        // Check needs a subject: a case whose principal has no id goes through as "no
        // identity", and its expectation is the core's decision for no principal.
        let who = sendable(case.who.as_ref());
        let (allowed, reason) = if who.is_some() || case.who.is_none() {
            (case.allowed, case.reason)
        } else {
            let d = policies.get(case.on).allow(None, case.method, case.path);
            (d.allowed, d.reason)
        };
        let server = match case.on {
            On::Main => &mut main,
            On::NoEndpoints => &mut no_endpoints,
        };
        let response = server
            .check(check_request(case.method, case.path, who, &[]))
            .await;
        let context = format!("{}: {} {} as {who:?}", case.name, case.method, case.path);
        if case.refused_by_check {
            if let Err(e) = expect_denied(&response, 400, &context) {
                failures.push(e);
            }
            if metadata(&response, "reason").is_some() {
                failures.push(format!(
                    "{context}: decided, though refused before the core"
                ));
            }
            continue;
        }
        let id = who.and_then(|p| p.id.as_deref());
        let outcome = if allowed {
            expect_ok(&response, id, &context)
                .and_then(|ok| expect_principal_headers(ok, who, &context))
        } else {
            let status = match (reason, who) {
                (R::NoEndpointsLoaded, _) => 503,
                (_, None) => 401,
                (_, Some(_)) => 403,
            };
            expect_denied(&response, status, &context).map(drop)
        };
        if let Err(e) = outcome {
            failures.push(e);
        }
        let got_reason = metadata(&response, "reason");
        if got_reason != Some(reason.as_str()) {
            failures.push(format!(
                "{context}: metadata reason {got_reason:?}, expected {:?}",
                reason.as_str()
            ));
        }
        if metadata(&response, "principal_id") != id
            || metadata(&response, "policy_revision") != Some("test-rev")
        {
            failures.push(format!(
                "{context}: metadata principal_id/policy_revision wrong: {:?}",
                response.dynamic_metadata
            ));
        }
        if let Some((endpoint, workspace)) = case.at {
            let got = (
                metadata(&response, "endpoint"),
                metadata(&response, "workspace"),
            );
            if got != (endpoint, workspace) {
                failures.push(format!(
                    "{context}: metadata (endpoint, workspace) {got:?}, expected {:?}",
                    (endpoint, workspace)
                ));
            }
        }
    }
    report("gRPC", failures, cases.len());
}

// ---- the same table through Envoy's dynamic module ----

/// An Envoy with nothing but the module in front of `upstream`: no path normalisation and no
/// bypass routes, so that the module sees each request as the gRPC Check does.
fn module_envoy_config(upstream: std::net::SocketAddr, authz_config: &str) -> String {
    let authz: String = authz_config
        .lines()
        .map(|l| format!("                          {l}\n"))
        .collect();
    format!(
        r#"admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
static_resources:
  listeners:
    - name: parity
      address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
      filter_chains:
        - filters:
            - name: envoy.filters.network.http_connection_manager
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
                stat_prefix: parity
                route_config:
                  virtual_hosts:
                    - name: all
                      domains: ["*"]
                      routes: [{{match: {{prefix: /}}, route: {{cluster: upstream}}}}]
                http_filters:
                  - name: nmp_authz
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter
                      dynamic_module_config: {{name: nmp_authz_envoy, do_not_close: true}}
                      filter_name: nmp_authz
                      filter_config:
                        "@type": type.googleapis.com/google.protobuf.StringValue
                        value: |
{authz}                  - name: envoy.filters.http.router
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
    - name: upstream
      connect_timeout: 2s
      load_assignment:
        cluster_name: upstream
        endpoints:
          - lb_endpoints:
              - endpoint: {{address: {{socket_address: {{address: {ip}, port_value: {port}}}}}}}
"#,
        ip = upstream.ip(),
        port = upstream.port(),
    )
}

/// An unsigned token for `principal` (its id, email, groups and scopes as claims): the same
/// identity reaches the module and the gRPC Check through the same `Authorization` header.
fn token_for(principal: &Principal) -> String {
    let mut extra: Vec<(&str, serde_json::Value)> = Vec::new();
    if let Some(email) = &principal.email {
        extra.push(("email", email.as_str().into()));
    }
    if !principal.groups.is_empty() {
        extra.push(("groups", principal.groups.clone().into()));
    }
    if !principal.scopes.is_empty() {
        extra.push(("scope", principal.scopes.join(" ").into()));
    }
    let id = principal.id.as_deref().expect("a sendable principal");
    common::gateway::unsigned_token(id, &extra)
}

/// Every case of the table through Envoy's dynamic module gives what the gRPC Check gives for
/// the same request (same configuration, same policy file): the status, and on allow the
/// `x-nmp-*` headers the upstream receives (exactly those the Check sets), on a denial the
/// body and challenge. Every case but one: this Envoy passes paths on unnormalised, so the
/// cases the request-path rule refuses reach the module as they reach Check; a lower-case
/// method is refused by Envoy's HTTP parser before any filter (400 too).
#[test]
fn decision_table_module_matches_grpc_check() {
    use common::gateway::{Upstream, request};
    use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/decision");
    let upstream = Upstream::start();
    let mut stacks = Vec::new();
    for (on, file) in [
        (On::Main, "policy.yaml"),
        (On::NoEndpoints, "no-endpoints.yaml"),
    ] {
        let config = format!(
            "auth:\n  allow_unsigned_jwt: true\n  bootstrap_bindings: false\npolicy:\n  sources:\n    - file: {}\n",
            fixtures.join(file).display()
        );
        let parsed = nmp_authz::config::parse(&config, "parity", []).unwrap();
        let policy = nmp_authz::sources::load(&parsed).unwrap();
        let server = runtime.block_on(TestServer::start(nmp_authz::server::State::new(
            &parsed,
            Some(policy),
        )));
        let envoy = common::module::start_envoy(&module_envoy_config(upstream.addr(), &config));
        stacks.push((on, server, envoy));
    }
    let cases = cases();
    let (mut failures, mut compared, mut refused_by_envoy) = (Vec::new(), 0usize, 0usize);
    for case in cases.iter() {
        let (_, server, envoy) = stacks.iter_mut().find(|(on, ..)| *on == case.on).unwrap();
        let who = sendable(case.who.as_ref());
        let authorization = who.map(|p| format!("Bearer {}", token_for(p)));
        let headers: Vec<(&str, &str)> = authorization
            .iter()
            .map(|a| ("authorization", a.as_str()))
            .collect();
        let context = format!("{}: {} {} as {who:?}", case.name, case.method, case.path);
        let check =
            runtime.block_on(server.check(check_request(case.method, case.path, None, &headers)));
        upstream.take_requests();
        let got = request(envoy.addr(), case.method, case.path, &headers);
        let forwarded = upstream.take_requests();
        if case.method.bytes().any(|b| b.is_ascii_lowercase()) {
            // Envoy's HTTP/1 parser refuses a lower-case method itself (400, before any
            // filter), as Check refuses it (400): both refuse, neither forwards.
            if got.status != 400 || !forwarded.is_empty() {
                failures.push(format!("{context}: Envoy answered {got:?}"));
            }
            refused_by_envoy += 1;
            continue;
        }
        compared += 1;
        match &check.http_response {
            Some(HttpResponse::OkResponse(ok)) => {
                let mut expected: Vec<(String, String)> = ok
                    .headers
                    .iter()
                    .filter_map(|h| h.header.as_ref())
                    .map(|h| (h.key.clone(), h.value.clone()))
                    .collect();
                expected.sort();
                match forwarded.as_slice() {
                    [one] if got.status == 200 && one.nmp_headers() == expected => {}
                    _ => failures.push(format!(
                        "{context}: Check allows with {expected:?}; the module answered {} and forwarded {forwarded:?}",
                        got.status
                    )),
                }
            }
            Some(HttpResponse::DeniedResponse(denied)) => {
                let status = denied.status.as_ref().map_or(0, |s| s.code);
                let challenge = header(&denied.headers, "www-authenticate");
                if i32::from(got.status) != status
                    // A reply to HEAD has no body.
                    || (case.method != "HEAD" && got.body != denied.body)
                    || got.header("content-type") != Some("application/json")
                    || got.header("www-authenticate") != challenge
                    || !forwarded.is_empty()
                {
                    failures.push(format!(
                        "{context}: Check denies {status} {:?} (challenge {challenge:?}); the module answered {got:?}, forwarded {forwarded:?}",
                        denied.body
                    ));
                }
            }
            other => failures.push(format!("{context}: Check answered {other:?}")),
        }
    }
    assert_eq!(
        (compared, refused_by_envoy),
        (cases.len() - 1, 1),
        "every case compared but the lower-case method"
    );
    report("module vs gRPC", failures, compared);
}

// ---- has_permissions and has_role ----

#[test]
fn has_permissions_table() {
    let policy = policy(DECISION_POLICY);
    #[rustfmt::skip]
    let cases: Vec<(&str, Principal, &str, &[&str], bool)> = vec![
        ("direct binding, own and included", alice(), "ws1", &["models.read", "models.write"], true),
        ("a permission the role lacks", alice(), "ws1", &["models.read", "models.delete"], false),
        ("another workspace", alice(), "ws2", &["models.read"], false),
        ("by email", who("bob").email("bob@example.com"), "ws1", &["models.list"], true),
        ("without the email", who("bob"), "ws1", &["models.list"], false),
        ("by group", who("carol").groups(&["team-a"]), "ws1", &["models.write"], true),
        ("through `*`", nobody(), "shared", &["models.read"], true),
        ("not through `*`", nobody(), "shared", &["models.write"], false),
        ("PlatformAdmin holds everything", root(), "ws9", &["never.named"], true),
        ("PlatformAdmin outside system", who("wsadmin"), "ws1", &["models.read"], false),
        ("ServiceSystem `*`", svc(), "ws1", &["never.named"], true),
        ("service with explicit binding", limited(), "ws1", &["models.write"], false),
        ("service without binding there", limited(), "ws2", &["models.write"], true),
        ("service: email/group", eve(), "ws2", &["models.read"], false),
        ("human holding `*`", who("sysop"), "ws1", &["never.named"], true),
        ("ws/perm in its workspace", who("jane"), "ws1", &["jobs.run", "quota/jobs.quota"], true),
        ("ws/perm held elsewhere", who("jack"), "ws1", &["jobs.run", "quota/jobs.quota"], false),
        // As in the allow table: `*` bindings do not count for `ws/perm`.
        ("ws/perm through `*`", nobody(), "ws9", &["shared/models.read"], false),
        ("no identity at all", no_id(), "ws1", &["models.read"], false),
    ];
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|(name, p, ws, perms, expected)| {
            let perms: Vec<String> = perms.iter().map(|s| s.to_string()).collect();
            let got = policy.has_permissions(p, ws, &perms);
            (got != *expected).then(|| format!("{name}: {p:?} {ws} {perms:?}: got {got}"))
        })
        .collect();
    report("has_permissions", failures, cases.len());
}

#[test]
fn has_role_table() {
    let policy = policy(DECISION_POLICY);
    #[rustfmt::skip]
    let cases: Vec<(&str, Principal, &str, &str, bool)> = vec![
        ("bound by id", alice(), "ws1", "Editor", true),
        ("not bound there", alice(), "ws2", "Editor", false),
        ("a role not bound", alice(), "ws1", "Owner", false),
        ("bound by email", who("bob").email("bob@example.com"), "ws1", "Viewer", true),
        ("without the email", who("bob"), "ws1", "Viewer", false),
        ("bound by group", who("carol").groups(&["x", "team-a"]), "ws1", "Editor", true),
        // As NMP 0.3.0's has_role: `*` holds it, not the caller (services poll this to see a
        // caller's own binding appear or go).
        ("`*` binding is not the caller's", nobody(), "shared", "Viewer", false),
        ("asked about `*` itself", who("*"), "shared", "Viewer", true),
        ("`*` not bound there", who("*"), "ws1", "Viewer", false),
        ("PlatformAdmin by email", root(), "system", "PlatformAdmin", true),
        ("PlatformAdmin by group", who("gina").groups(&["admins"]), "system", "PlatformAdmin", true),
        ("PlatformAdmin is not every role", root(), "ws1", "Editor", false),
        ("PlatformAdmin bound in ws1", who("wsadmin"), "ws1", "PlatformAdmin", true),
        ("PlatformAdmin not in system", who("wsadmin"), "system", "PlatformAdmin", false),
        ("ServiceSystem by default", svc(), "ws1", "ServiceSystem", true),
        ("ServiceSystem not with explicit binding", limited(), "ws1", "ServiceSystem", false),
        ("ServiceSystem where no binding", limited(), "ws2", "ServiceSystem", true),
        ("service: email/group", eve(), "ws1", "ServiceSystem", false),
        ("unknown role", alice(), "ws1", "NoSuchRole", false),
        ("no identity at all", no_id(), "shared", "Viewer", false),
    ];
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|(name, p, ws, role, expected)| {
            let got = policy.has_role(p, ws, role);
            (got != *expected).then(|| format!("{name}: {p:?} {ws} {role}: got {got}"))
        })
        .collect();
    report("has_role", failures, cases.len());
}

// ---- gRPC only ----

#[tokio::test]
async fn inbound_nmp_headers_are_removed_unless_set() {
    let mut server = TestServer::start(state(Some(policy(DECISION_POLICY)), true)).await;
    let p = alice();
    let response = server
        .check(check_request(
            "GET",
            "/apis/models/v2/workspaces/ws1/models",
            Some(&p),
            &[
                ("x-nmp-authorized", "true"),
                ("X-NMP-Principal-Id", "mallory"),
                ("x-nmp-foo", "bar"),
                ("x-nmp-principal-email", "mallory@example.com"),
                ("x-other", "kept"),
            ],
        ))
        .await;
    let ok = expect_ok(&response, Some("alice"), "strip").unwrap();
    let mut removed: Vec<String> = ok
        .headers_to_remove
        .iter()
        .map(|h| h.to_ascii_lowercase())
        .collect();
    removed.sort();
    assert_eq!(removed, ["x-nmp-foo", "x-nmp-principal-email"], "{ok:?}");
}

#[tokio::test]
async fn request_without_http_attributes_is_400() {
    let mut server = TestServer::start(state(Some(policy(DECISION_POLICY)), true)).await;
    let no_attributes = CheckRequest::default();
    expect_denied(&server.check(no_attributes).await, 400, "no attributes").unwrap();
    let mut no_http = check_request("GET", "/x", None, &[]);
    no_http
        .attributes
        .as_mut()
        .unwrap()
        .request
        .as_mut()
        .unwrap()
        .http = None;
    expect_denied(&server.check(no_http).await, 400, "no http").unwrap();
}

#[tokio::test]
async fn auth_disabled_allows_what_would_be_denied() {
    let request = || check_request("POST", "/apis/models/v2/workspaces/ws1/models", None, &[]);
    let mut on = TestServer::start(state(Some(policy(DECISION_POLICY)), true)).await;
    expect_denied(&on.check(request()).await, 401, "auth enabled").unwrap();
    let mut off = TestServer::start(state(Some(policy(DECISION_POLICY)), false)).await;
    expect_ok(&off.check(request()).await, None, "auth disabled").unwrap();
}

#[tokio::test]
async fn no_policy_is_503() {
    let mut server = TestServer::start(state(None, true)).await;
    let p = svc();
    for who in [None, Some(&p)] {
        let response = server
            .check(check_request("GET", "/apis/unknown/v1/thing", who, &[]))
            .await;
        expect_denied(&response, 503, "no policy").unwrap();
    }
}

#[tokio::test]
async fn principal_validation_is_400() {
    let mut server = TestServer::start(state(Some(policy(DECISION_POLICY)), true)).await;
    let path = "/apis/models/v2/workspaces/-/models";
    let many = |n: usize| (0..n).map(|i| format!("g{i}")).collect::<Vec<_>>();
    let cases: Vec<(&str, Principal, i32)> = vec![
        ("bad id characters", who("alice smith"), 400),
        ("id with <", who("a<b"), 400),
        ("257-char id", who(&"a".repeat(257)), 400),
        ("256-char id", who(&"a".repeat(256)), 200),
        (
            "101 groups",
            Principal {
                groups: many(101),
                ..nobody()
            },
            400,
        ),
        (
            "100 groups",
            Principal {
                groups: many(100),
                ..nobody()
            },
            200,
        ),
        ("permission as scope", nobody().scopes("models.read"), 400),
        ("platform scope", nobody().scopes("openid models:read"), 200),
    ];
    for (name, p, status) in cases {
        let response = server
            .check(check_request("GET", path, Some(&p), &[]))
            .await;
        if status == 200 {
            expect_ok(&response, p.id.as_deref(), name).unwrap();
        } else {
            expect_denied(&response, status, name).unwrap();
        }
    }
}
