//! The built-in catalog of NMP's roles and endpoints: what the quickstart default serves when no
//! policy source is configured. It is the catalog of one NMP release, [`NMP_RELEASE`]: the
//! endpoints, methods, permissions, scopes and roles of that release's `static-authz.yaml`
//! (`tests/nmp_compat.rs` compares them with the installed package's file).
//!
//! The catalog is not stored as a document. It is a compact specification from which the
//! document is generated:
//!
//! * **Endpoints** are listed per service as resources: a path below the service's base, the
//!   permission prefix that guards it, its [`Shape`] and the HTTP methods it serves. The shape
//!   turns each method into a permission verb (`get` lists a collection and reads an item,
//!   `post` creates, `put`/`patch` update, `delete` deletes, a proxy executes); a method written
//!   `method=verb` names its verb itself (`get=read` on a collection, `post=cancel`, ...).
//!   Scopes follow from the service's area: a read (any `get`/`head`, or a `read`/`list` verb)
//!   needs `<area>:read` or `platform:read`, everything else `<area>:write` or `platform:write`.
//! * **Roles** follow rules over the generated endpoints: `Viewer` holds every permission some
//!   `GET`/`HEAD` needs, `Editor` adds every permission a writing method needs, `Admin` adds IAM
//!   and membership management. Permissions reserved for platform roles or for services are
//!   taken out of that ladder and granted by name.

use std::collections::{BTreeMap, BTreeSet};

use crate::policy::document::{AuthzData, MethodDef, PolicyConfig, PolicyDocument, RoleDef};

/// The NeMo Platform release whose catalog this generates (shown by `--version`, the
/// `nmp_authz_build_info` metric and readiness).
pub const NMP_RELEASE: &str = "0.3.0";

/// How a resource's methods map to permission verbs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// A list of things: `get` → `list`, `post` → `create`.
    Collection,
    /// One thing (or a view of one): `get`/`head` → `read`, `post` → `create`,
    /// `put`/`patch` → `update`, `delete` → `delete`.
    Item,
    /// A pass-through to a backend: every method → `exec`.
    Proxy,
    /// Open to every authenticated caller: no permission, no scope (`permissions: []`).
    Open,
}

use Shape::{Collection, Item, Open, Proxy};

/// `(path below the service base, permission prefix, shape, methods)`.
type Resource = (&'static str, &'static str, Shape, &'static str);

struct Service {
    base: &'static str,
    /// The scope area: `<area>:read` / `<area>:write`.
    area: &'static str,
    resources: &'static [Resource],
}

/// Every method a proxy route forwards.
const ANY: &str = "get post put patch delete";

const SERVICES: &[Service] = &[
    Service {
        base: "/apis/auth",
        area: "auth",
        resources: &[
            ("/discovery", "", Open, "get"),
            // Workload identity: the token exchange checks the subject token itself.
            ("/jwks", "", Open, "get"),
            ("/token", "", Open, "post"),
            ("/v2/iam/opa-bundle.tar.gz", "iam.bundle", Item, "get"),
            ("/v2/iam/role-bindings", "iam", Collection, "get post"),
            ("/v2/iam/role-bindings/{name}", "iam", Item, "get delete"),
        ],
    },
    Service {
        base: "/apis/entities/v2",
        area: "entities",
        resources: &[
            ("/entities/{id}", "entities", Item, "get"),
            ("/workspaces", "workspaces", Collection, "get post"),
            ("/workspaces/{name}", "workspaces", Item, "get put delete"),
            (
                "/workspaces/{workspace}/entities/{entity_type}",
                "entities",
                Collection,
                "get=read post",
            ),
            (
                "/workspaces/{workspace}/entities/{entity_type}/{name}",
                "entities",
                Item,
                "get put delete",
            ),
            (
                "/workspaces/{workspace}/members",
                "workspaces.members",
                Collection,
                "get post",
            ),
            (
                "/workspaces/{workspace}/members/{principal_id}",
                "workspaces.members",
                Item,
                "put delete",
            ),
            (
                "/workspaces/{workspace}/projects",
                "projects",
                Collection,
                "get post",
            ),
            (
                "/workspaces/{workspace}/projects/{name}",
                "projects",
                Item,
                "get put delete",
            ),
        ],
    },
    Service {
        base: "/apis/files/v2/workspaces/{workspace}",
        area: "files",
        resources: &[
            ("/filesets", "filesets", Collection, "get post"),
            ("/filesets/{name}", "filesets", Item, "get patch delete"),
            (
                "/filesets/{name}/-/{path}",
                "filesets",
                Item,
                "get head put delete",
            ),
            ("/filesets/{name}/files", "filesets", Item, "get"),
            // Job containers ship their logs here; only the job runner may write them.
            ("/filesets/{name}/otlp/v1/logs", "jobs.logs", Item, "post"),
            (
                "/filesets/{name}/otlp/v1/logs/query",
                "filesets",
                Item,
                "post=read",
            ),
        ],
    },
    Service {
        base: "/apis/guardrails/v2/workspaces/{workspace}",
        area: "guardrails",
        resources: &[
            ("/checks", "guardrails.checks", Collection, "post=exec"),
            ("/configs", "guardrails.configs", Collection, "get post"),
            (
                "/configs/{name}",
                "guardrails.configs",
                Item,
                "get patch delete",
            ),
        ],
    },
    Service {
        base: "/apis/inference-gateway/v2/workspaces/{workspace}",
        area: "inference",
        resources: &[
            (
                "/model/{name}/-/{trailing_uri}",
                "inference.gateway.model",
                Proxy,
                ANY,
            ),
            (
                "/openai/-/v1/models",
                "inference.gateway.openai",
                Proxy,
                "get",
            ),
            (
                "/openai/-/v1/models/{name}",
                "inference.gateway.openai",
                Proxy,
                "get",
            ),
            (
                "/openai/-/{trailing_uri}",
                "inference.gateway.openai",
                Proxy,
                ANY,
            ),
            (
                "/provider/{name}/-/{trailing_uri}",
                "inference.gateway.provider",
                Proxy,
                ANY,
            ),
            ("/provider/{name}/ready", "inference.providers", Item, "get"),
            (
                "/virtual-models",
                "inference.virtual-models",
                Collection,
                "get post",
            ),
            (
                "/virtual-models/{name}",
                "inference.virtual-models",
                Item,
                "get patch delete",
            ),
        ],
    },
    Service {
        base: "/apis/intake/v2/workspaces/{workspace}",
        area: "intake",
        resources: &[
            ("/annotations", "intake.annotations", Collection, "get post"),
            (
                "/annotations/{annotation_id}",
                "intake.annotations",
                Item,
                "get delete",
            ),
            (
                "/evaluations",
                "intake.evaluations",
                Collection,
                "get=read post",
            ),
            (
                "/evaluations/{name}",
                "intake.evaluations",
                Item,
                "get put patch delete",
            ),
            (
                "/evaluations/{name}/pin",
                "intake.evaluations",
                Item,
                "post=update delete=update",
            ),
            (
                "/evaluations/{name}/sessions",
                "intake.evaluations",
                Item,
                "get",
            ),
            (
                "/evaluator-results",
                "intake.evaluator-results",
                Collection,
                "get post",
            ),
            (
                "/evaluator-results/{evaluator_result_id}",
                "intake.evaluator-results",
                Item,
                "get",
            ),
            (
                "/experiment-groups",
                "intake.experiment-groups",
                Collection,
                "get=read post",
            ),
            (
                "/experiment-groups/{name}",
                "intake.experiment-groups",
                Item,
                "get put delete",
            ),
            ("/ingest/atif", "intake.ingest", Collection, "post"),
            (
                "/ingest/chat-completions",
                "intake.ingest",
                Collection,
                "post",
            ),
            (
                "/ingest/otlp/v1/traces",
                "intake.ingest",
                Collection,
                "post",
            ),
            ("/sessions/{id}", "intake.sessions", Item, "get"),
            ("/spans", "intake.spans", Collection, "get"),
            ("/spans/groups", "intake.spans", Item, "get"),
            ("/spans/{span_id}", "intake.spans", Item, "get"),
            (
                "/spans/{span_id}/evaluator-results",
                "intake.evaluator-results",
                Collection,
                "get",
            ),
            ("/traces", "intake.traces", Collection, "get=read"),
            ("/traces/{id}", "intake.traces", Item, "get"),
        ],
    },
    Service {
        base: "/apis/jobs/v2",
        area: "jobs",
        resources: &[
            ("/execution-profiles", "jobs", Collection, "get"),
            (
                "/workspaces/{workspace}/jobs",
                "jobs",
                Collection,
                "get post",
            ),
            (
                "/workspaces/{workspace}/jobs/{name}",
                "jobs",
                Item,
                "get delete",
            ),
            (
                "/workspaces/{workspace}/jobs/{name}/cancel",
                "jobs",
                Item,
                "post=cancel",
            ),
            (
                "/workspaces/{workspace}/jobs/{name}/logs",
                "jobs",
                Item,
                "get",
            ),
            (
                "/workspaces/{workspace}/jobs/{name}/pause",
                "jobs",
                Item,
                "post=update",
            ),
            (
                "/workspaces/{workspace}/jobs/{name}/resume",
                "jobs",
                Item,
                "post=update",
            ),
            (
                "/workspaces/{workspace}/jobs/{name}/results",
                "jobs",
                Item,
                "get",
            ),
            (
                "/workspaces/{workspace}/jobs/{name}/status",
                "jobs",
                Item,
                "get",
            ),
            (
                "/workspaces/{workspace}/jobs/{name}/status-details",
                "jobs",
                Item,
                "patch",
            ),
            (
                "/workspaces/{workspace}/jobs/{name}/steps",
                "jobs",
                Item,
                "get",
            ),
            (
                "/workspaces/{workspace}/jobs/{job}/results/{name}",
                "jobs",
                Item,
                "get post",
            ),
            (
                "/workspaces/{workspace}/jobs/{job}/results/{name}/download",
                "jobs",
                Item,
                "get",
            ),
            (
                "/workspaces/{workspace}/jobs/{job}/steps/{name}",
                "jobs",
                Item,
                "get",
            ),
            (
                "/workspaces/{workspace}/jobs/{job}/steps/{name}/status",
                "jobs",
                Item,
                "patch",
            ),
            (
                "/workspaces/{workspace}/jobs/{job}/steps/{name}/tasks",
                "jobs",
                Item,
                "get",
            ),
            (
                "/workspaces/{workspace}/jobs/{job}/steps/{step}/tasks/{name}",
                "jobs",
                Item,
                "get put",
            ),
        ],
    },
    Service {
        base: "/apis/models/v2/workspaces/{workspace}",
        area: "models",
        resources: &[
            ("/models", "models", Collection, "get post"),
            ("/models/{name}", "models", Item, "get patch delete"),
            (
                "/models/{model_name}/adapters",
                "models.adapters",
                Collection,
                "post",
            ),
            (
                "/models/{model_name}/adapters/{adapter}",
                "models.adapters",
                Item,
                "patch delete",
            ),
            ("/adapters", "models.adapters", Collection, "get post"),
            (
                "/adapters/{name}",
                "models.adapters",
                Item,
                "get patch delete",
            ),
            ("/prompts", "models.prompts", Collection, "get=read post"),
            ("/prompts/{name}", "models.prompts", Item, "get put delete"),
            // Inference resources managed through the models service.
            ("/providers", "inference.providers", Collection, "get post"),
            (
                "/providers/{name}",
                "inference.providers",
                Item,
                "get put delete",
            ),
            (
                "/providers/{name}/status",
                "inference.providers",
                Item,
                "put",
            ),
            (
                "/deployment-configs",
                "inference.deployment-configs",
                Collection,
                "get post",
            ),
            (
                "/deployment-configs/{name}",
                "inference.deployment-configs",
                Item,
                "get post delete",
            ),
            (
                "/deployment-configs/{name}/versions",
                "inference.deployment-configs",
                Item,
                "get",
            ),
            (
                "/deployment-configs/{config}/versions/{name}",
                "inference.deployment-configs",
                Item,
                "get delete",
            ),
            (
                "/deployments",
                "inference.deployments",
                Collection,
                "get post",
            ),
            (
                "/deployments/{name}",
                "inference.deployments",
                Item,
                "get post delete",
            ),
            (
                "/deployments/{name}/models",
                "inference.deployments",
                Item,
                "get",
            ),
            (
                "/deployments/{name}/status",
                "inference.deployments",
                Item,
                "post=update",
            ),
            (
                "/deployments/{name}/versions",
                "inference.deployments",
                Item,
                "get",
            ),
            (
                "/deployments/{deployment}/versions/{name}",
                "inference.deployments",
                Item,
                "get delete",
            ),
        ],
    },
    Service {
        base: "/apis/secrets/v2",
        area: "secrets",
        resources: &[
            (
                "/rotate-encryption-keys",
                "secrets",
                Collection,
                "post=rotate",
            ),
            (
                "/workspaces/{workspace}/secrets",
                "secrets",
                Collection,
                "get post",
            ),
            (
                "/workspaces/{workspace}/secrets/{name}",
                "secrets",
                Item,
                "get patch delete",
            ),
            // The secret's value: for services only (see [`SERVICE_ONLY`]).
            (
                "/workspaces/{workspace}/secrets/{name}/access",
                "secrets",
                Item,
                "get=access",
            ),
        ],
    },
];

/// Permissions checked by services in their own code, on no endpoint of the catalog.
const SETTINGS: &[&str] = &[
    "models.tool-call-plugin.set",
    "models.trust-remote-code.set",
];

/// Permissions (or prefixes ending in `.`) that no human role holds: only `ServiceSystem`'s
/// `*` grants them.
const SERVICE_ONLY: &[&str] = &["entities.", "secrets.access"];

/// Roles granted by name. Their permissions are taken out of the Viewer/Editor ladder.
const NAMED_ROLES: &[(&str, &str, &[&str])] = &[
    (
        "WorkspaceCreator",
        "May create new workspaces.",
        &["workspaces.create"],
    ),
    (
        "PlatformAdmin",
        "Operates the platform: the policy bundle, key rotation and model runtime settings.",
        &[
            "iam.bundle.read",
            "secrets.rotate",
            "models.tool-call-plugin.set",
            "models.trust-remote-code.set",
        ],
    ),
    (
        "JobRunner",
        "Identity of running jobs: may ship job logs.",
        &["jobs.logs.create"],
    ),
];

/// Prefixes whose endpoint permissions make up `Admin` (besides [`SETTINGS`]), except those a
/// named role holds.
const ADMIN_PREFIXES: &[&str] = &["iam.", "workspaces.members."];

/// The built-in NMP policy document: roles and endpoints, no principals (the server adds the
/// bindings), no permission registry.
pub fn builtin_document() -> PolicyDocument {
    let endpoints = endpoints();
    let roles = roles(&endpoints);
    PolicyDocument {
        authz: AuthzData {
            roles,
            endpoints,
            principals: BTreeMap::new(),
            config: PolicyConfig::default(),
            permissions: serde_json::Value::Null,
            workspaces: serde_json::Value::Null,
        },
    }
}

fn endpoints() -> BTreeMap<String, BTreeMap<String, MethodDef>> {
    let mut out: BTreeMap<String, BTreeMap<String, MethodDef>> = BTreeMap::new();
    for service in SERVICES {
        for &(path, prefix, shape, methods) in service.resources {
            let entry = out.entry(format!("{}{path}", service.base)).or_default();
            for token in methods.split_whitespace() {
                let (method, verb) = match token.split_once('=') {
                    Some((method, verb)) => (method, Some(verb)),
                    None => (token, None),
                };
                let def = method_def(service.area, prefix, shape, method, verb);
                let previous = entry.insert(method.to_string(), def);
                debug_assert!(
                    previous.is_none(),
                    "{}{path} {method} listed twice",
                    service.base
                );
            }
        }
    }
    out
}

fn method_def(
    area: &str,
    prefix: &str,
    shape: Shape,
    method: &str,
    verb: Option<&str>,
) -> MethodDef {
    if shape == Open {
        return MethodDef {
            permissions: Some(Vec::new()),
            scopes: Some(Vec::new()),
            ..MethodDef::default()
        };
    }
    let reads = matches!(method, "get" | "head");
    let verb = verb.unwrap_or(match (shape, method) {
        (Proxy, _) => "exec",
        (Collection, "get" | "head") => "list",
        (_, "get" | "head") => "read",
        (_, "post") => "create",
        (_, "put" | "patch") => "update",
        (_, "delete") => "delete",
        (_, other) => panic!("built-in catalog: no verb for method {other}"),
    });
    let access = if reads || matches!(verb, "read" | "list") {
        "read"
    } else {
        "write"
    };
    MethodDef {
        permissions: Some(vec![format!("{prefix}.{verb}")]),
        scopes: Some(vec![
            format!("{area}:{access}"),
            format!("platform:{access}"),
        ]),
        ..MethodDef::default()
    }
}

fn roles(endpoints: &BTreeMap<String, BTreeMap<String, MethodDef>>) -> BTreeMap<String, RoleDef> {
    // Permissions by the kind of method that needs them.
    let mut on_reads = BTreeSet::new();
    let mut on_writes = BTreeSet::new();
    for methods in endpoints.values() {
        for (method, def) in methods {
            let into = if matches!(method.as_str(), "get" | "head") {
                &mut on_reads
            } else {
                &mut on_writes
            };
            into.extend(def.permissions.iter().flatten().cloned());
        }
    }

    let named: BTreeSet<&str> = NAMED_ROLES
        .iter()
        .flat_map(|(_, _, perms)| perms.iter().copied())
        .collect();
    let service_only = |p: &str| {
        SERVICE_ONLY.iter().any(|s| {
            if s.ends_with('.') {
                p.starts_with(s)
            } else {
                p == *s
            }
        })
    };
    let admin_only = |p: &str| ADMIN_PREFIXES.iter().any(|s| p.starts_with(s));
    let ladder = |p: &String| !named.contains(p.as_str()) && !service_only(p) && !admin_only(p);

    let viewer: BTreeSet<String> = on_reads.iter().filter(|p| ladder(p)).cloned().collect();
    let editor: BTreeSet<String> = on_writes
        .iter()
        .filter(|p| ladder(p) && !viewer.contains(*p))
        .cloned()
        .collect();
    let admin: BTreeSet<String> = on_reads
        .iter()
        .chain(&on_writes)
        .filter(|p| admin_only(p) && !named.contains(p.as_str()))
        .cloned()
        .chain(SETTINGS.iter().map(|s| s.to_string()))
        .collect();

    let role = |description: &str, includes: &[&str], permissions: Vec<String>| RoleDef {
        description: Some(description.to_string()),
        includes: includes.iter().map(|s| s.to_string()).collect(),
        permissions,
    };
    let mut roles = BTreeMap::new();
    roles.insert(
        "Viewer".to_string(),
        role(
            "Reads a workspace's resources and calls its inference routes.",
            &[],
            viewer.into_iter().collect(),
        ),
    );
    roles.insert(
        "Editor".to_string(),
        role(
            "Viewer, plus creating, changing and deleting a workspace's resources.",
            &["Viewer"],
            editor.into_iter().collect(),
        ),
    );
    roles.insert(
        "Admin".to_string(),
        role(
            "Editor, plus a workspace's members and role bindings.",
            &["Editor"],
            admin.into_iter().collect(),
        ),
    );
    for (name, description, perms) in NAMED_ROLES {
        roles.insert(
            name.to_string(),
            role(
                description,
                &[],
                perms.iter().map(|s| s.to_string()).collect(),
            ),
        );
    }
    roles.insert(
        "ServiceSystem".to_string(),
        role(
            "Platform services acting for themselves: every permission.",
            &[],
            vec!["*".to_string()],
        ),
    );
    roles
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_names_are_well_formed() {
        let permission =
            regex::Regex::new(r"^[a-z0-9]+(-[a-z0-9]+)*(\.[a-z0-9]+(-[a-z0-9]+)*)+$").unwrap();
        let scope = regex::Regex::new(r"^[a-z0-9]+(-[a-z0-9]+)*:[a-z0-9]+(-[a-z0-9]+)*$").unwrap();
        let doc = builtin_document().authz;
        assert!(!doc.endpoints.is_empty());
        for (path, methods) in &doc.endpoints {
            assert!(path.starts_with("/apis/"), "{path}");
            for (method, def) in methods {
                for p in def.permissions.iter().flatten() {
                    assert!(permission.is_match(p), "{method} {path}: permission {p}");
                }
                for s in def.scopes.iter().flatten() {
                    assert!(scope.is_match(s), "{method} {path}: scope {s}");
                }
                assert!(def.extensions.is_empty());
            }
        }
        for (name, role) in &doc.roles {
            assert!(!role.permissions.is_empty(), "role {name} is empty");
            for p in &role.permissions {
                assert!(
                    p == "*" || permission.is_match(p),
                    "role {name}: permission {p}"
                );
            }
            for r in &role.includes {
                assert!(
                    doc.roles.contains_key(r),
                    "role {name} includes unknown {r}"
                );
            }
        }
        assert!(doc.principals.is_empty());
        assert!(doc.permissions.is_null());
    }

    #[test]
    fn open_endpoint_keeps_an_explicitly_empty_permission_list() {
        let doc = builtin_document().authz;
        let discovery = &doc.endpoints["/apis/auth/discovery"]["get"];
        assert_eq!(discovery.permissions, Some(vec![]));
    }
}
