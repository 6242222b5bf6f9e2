//! nmp-authz's PDP against NMP's own: thousands of generated PDP inputs, each answered by
//! nmp-authz's `allow` / `has_permissions` / `has_role` and by NMP 0.3.0's embedded PDP (its
//! compiled Rego policy, `policy.wasm`, run by NMP's own engine from `.venv-nmp`, unmodified),
//! over the document NMP's auth service builds (its released catalog with the installed
//! plugins' routes) plus this test's role bindings.
//!
//! Every disagreement must be one of the deliberate differences README "PDP API" lists, and in
//! each of those nmp-authz is the one that refuses:
//! - `wrong_type`: a field of a JSON type NMP's clients never send (null, a number, an
//!   object, ...) makes nmp-authz's answer a denial; NMP's engine applies Rego's type rules.
//! - `service_not_id`: an email or group spelled `service:...` makes no caller a service in
//!   nmp-authz (DESIGN: `service:` is judged on the principal id only); NMP gives such a
//!   group the ServiceSystem role.
//! Cases where NMP's engine fails (a tie between two endpoint patterns is an evaluation error
//! there) are counted and must stay rare; nmp-authz answers them deterministically.

mod common;

use std::collections::BTreeMap;

use nmp_authz::policy::pdp::{self, Entrypoint};
use nmp_authz::policy::{BindingDefaults, CompiledPolicy, PolicyDocument};
use serde_json::{Map, Value as Json, json};

const CASES: usize = 6000;

/// The role bindings added to NMP's document: ids, emails, groups (some named like service
/// principals, some with characters NMP's header parser refuses), `*`, service principals with
/// explicit bindings, PlatformAdmin by email and by group, and a binding in workspace `-`.
fn bindings() -> Json {
    json!({
        "alice@example.com": {"workspaces": {"ws1": ["Editor"]}},
        "bob": {"workspaces": {"ws1": ["Viewer"], "ws2": ["Admin"]}},
        "team-ml": {"workspaces": {"ws2": ["Editor"], "ws3": ["Viewer"]}},
        "carol@example.com": {"workspaces": {"system": ["PlatformAdmin"]}},
        "platform-ops": {"workspaces": {"system": ["PlatformAdmin"]}},
        "ops": {"workspaces": {"system": ["Admin", "WorkspaceCreator"]}},
        "service:limited": {"workspaces": {"ws1": ["Viewer"]}},
        "service:writer": {"workspaces": {"-": ["Editor"]}},
        "service:groupy": {"workspaces": {"ws3": ["Admin"]}},
        "auth0|abc123": {"workspaces": {"ws1": ["Editor"], "system": ["Viewer"]}},
        "Data Science": {"workspaces": {"ws2": ["Viewer"]}},
        "émigrés": {"workspaces": {"ws1": ["Admin"]}},
        "runner": {"workspaces": {"ws1": ["JobRunner"]}},
        "*": {"workspaces": {"default": ["Editor"], "system": ["Viewer", "WorkspaceCreator"], "shared": ["Viewer"]}},
    })
}

/// SplitMix64: a fixed seed gives the same cases on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

const WORKSPACES: &[&str] = &[
    "ws1", "ws2", "ws3", "default", "system", "shared", "-", "other",
];
const IDS: &[&str] = &[
    "alice@example.com",
    "bob",
    "carol@example.com",
    "dave",
    "ops",
    "runner",
    "service:evaluator",
    "service:limited",
    "service:writer",
    "service:groupy",
    "auth0|abc123",
    "bad id!",
    "*",
    "",
    "service:",
    "SERVICE:x",
    "émigrés",
];
const EMAILS: &[&str] = &[
    "",
    "alice@example.com",
    "carol@example.com",
    "x@y",
    "service:x@example.com",
];
const GROUPS: &[&[&str]] = &[
    &[],
    &["team-ml"],
    &["platform-ops"],
    &["", "team-ml"],
    &["service:groupy"],
    &["émigrés"],
    &["Data Science", "x"],
    &["a", "b", "c"],
    &["*"],
];
const METHODS: &[&str] = &[
    "GET", "GET", "GET", "HEAD", "POST", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "get",
    "Post", "",
];
const ROLES: &[&str] = &[
    "Viewer",
    "Editor",
    "Admin",
    "PlatformAdmin",
    "ServiceSystem",
    "WorkspaceCreator",
    "JobRunner",
    "Nope",
];
const SPECIAL_PATHS: &[&str] = &[
    "/health/live",
    "/health/ready",
    "/health/ready?x=1",
    "/status",
    "/metrics",
    "/cluster-info",
    "/",
    "",
    "/apis/auth/v2/iam/opa-bundle.tar.gz",
    "/apis/auth/v2/iam/opa-bundle.tar.gz?x",
    "/apis/secrets/v2/workspaces/ws1/secrets/db/access",
    "/apis/secrets/v2/workspaces/-/secrets/db/access",
    "/apis/entities/v2/workspaces",
    "/apis/entities/v2/workspaces/ws1",
    "/apis/entities/v2/workspaces/ws1/members",
    "/apis/entities/v2/workspaces/ws1/members/alice",
    "/apis/entities/v2/workspaces/-/members",
    "/apis/entities/v2/workspaces/ws1/other/x",
    "/apis/entities/v2/things",
    "/apis/evaluator/v2/workspaces/ws1/jobs",
    "/apis/evaluator",
    "/apis/evaluatorx/v2",
    "/v1/legacy/thing",
    "/apis/nowhere/v2/workspaces/ws1/x",
];

/// A path: one of an endpoint pattern's instances (sometimes altered), or a special one.
fn path(rng: &mut Rng, patterns: &[String], scopes_seen: &mut Vec<String>) -> String {
    let _ = scopes_seen;
    if rng.chance(15) {
        return rng.pick(SPECIAL_PATHS).to_string();
    }
    let pattern = rng.pick(patterns);
    let mut segments: Vec<String> = pattern
        .split('/')
        .map(|segment| {
            if segment == "{workspace}" || segment == "{workspace_id}" {
                rng.pick(WORKSPACES).to_string()
            } else if segment.starts_with('{') && segment.ends_with('}') {
                if segment.contains(":path") || segment == "{trailing_uri}" {
                    ["v1/models", "v1/chat/completions", "x", "a/b/c"][rng.below(4)].to_string()
                } else {
                    rng.pick(&["x", "m1", "abc-1", "-", "ws1", "access"])
                        .to_string()
                }
            } else {
                segment.to_string()
            }
        })
        .collect();
    match rng.below(12) {
        0 => segments.push("extra".into()),
        1 if segments.len() > 2 => {
            segments.pop();
        }
        2 => segments.push(String::new()),
        3 => {
            let last = segments.len() - 1;
            segments[last].push_str("?q=1&r=/apis/x");
        }
        4 if segments.len() > 3 => {
            let i = 1 + rng.below(segments.len() - 1);
            segments[i] = "zzz".into();
        }
        _ => {}
    }
    segments.join("/")
}

fn scopes(rng: &mut Rng, endpoint_scopes: &[String]) -> Json {
    let mut chosen: Vec<Json> = Vec::new();
    for _ in 0..rng.below(3) {
        chosen.push(match rng.below(5) {
            0 => "openid".into(),
            1 => "profile".into(),
            2 => "platform:read".into(),
            _ => rng.pick(endpoint_scopes).clone().into(),
        });
    }
    Json::Array(chosen)
}

/// A value NMP's clients never send where a string or a list of strings belongs.
fn wrong_type(rng: &mut Rng) -> Json {
    rng.pick(&[
        Json::Null,
        json!(5),
        json!(true),
        json!({"a": "b"}),
        json!(["ok", 1]),
        json!("a string"),
    ])
    .clone()
}

#[derive(Debug, Default)]
struct Case {
    entrypoint: &'static str,
    input: Map<String, Json>,
    /// A field was given a wrong JSON type on purpose.
    wrong_type: bool,
}

fn generate(
    rng: &mut Rng,
    patterns: &[String],
    endpoint_scopes: &[String],
    permissions: &[String],
) -> Case {
    let entrypoint = *rng.pick(&["allow", "allow", "allow", "has_permissions", "has_role"]);
    let mut input = Map::new();
    if !rng.chance(8) {
        input.insert("principal_id".into(), rng.pick(IDS).to_string().into());
    }
    if rng.chance(40) {
        input.insert(
            "principal_email".into(),
            rng.pick(EMAILS).to_string().into(),
        );
    }
    if rng.chance(40) {
        input.insert("principal_groups".into(), json!(rng.pick(GROUPS)));
    }
    match entrypoint {
        "allow" => {
            input.insert("method".into(), rng.pick(METHODS).to_string().into());
            input.insert("path".into(), path(rng, patterns, &mut Vec::new()).into());
            if rng.chance(50) {
                input.insert("scopes".into(), scopes(rng, endpoint_scopes));
            }
        }
        "has_permissions" => {
            if !rng.chance(5) {
                input.insert("workspace".into(), rng.pick(WORKSPACES).to_string().into());
            }
            if !rng.chance(5) {
                let mut wanted: Vec<Json> = Vec::new();
                for _ in 0..rng.below(3) {
                    wanted.push(match rng.below(8) {
                        0 => format!("{}/{}", rng.pick(WORKSPACES), rng.pick(permissions)).into(),
                        1 => "*".into(),
                        2 => "a/b/c".into(),
                        _ => rng.pick(permissions).clone().into(),
                    });
                }
                input.insert("permissions".into(), Json::Array(wanted));
            }
        }
        _ => {
            if !rng.chance(5) {
                input.insert("workspace".into(), rng.pick(WORKSPACES).to_string().into());
            }
            if !rng.chance(5) {
                input.insert("role".into(), rng.pick(ROLES).to_string().into());
            }
        }
    }
    let mut case = Case {
        entrypoint,
        input,
        wrong_type: false,
    };
    // Envoy's form (`attributes.request.http`), which NMP's policy reads when the direct field
    // is absent (or `false`).
    if entrypoint == "allow" && rng.chance(8) {
        let mut headers = Map::new();
        if let Some(id) = case.input.remove("principal_id") {
            headers.insert("x-nmp-principal-id".into(), id);
        }
        if let Some(Json::Array(groups)) = case.input.remove("principal_groups") {
            let joined: Vec<&str> = groups.iter().filter_map(Json::as_str).collect();
            headers.insert("X-NMP-Principal-Groups".into(), joined.join(",").into());
        }
        let mut http = Map::new();
        for key in ["method", "path"] {
            if let Some(v) = case.input.remove(key) {
                http.insert(key.into(), v);
            }
        }
        http.insert("headers".into(), Json::Object(headers));
        case.input.insert(
            "attributes".into(),
            json!({"request": {"http": Json::Object(http)}}),
        );
    }
    if rng.chance(6) {
        let keys: Vec<String> = case.input.keys().cloned().collect();
        if !keys.is_empty() {
            let key = rng.pick(&keys).clone();
            if key != "attributes" {
                case.input.insert(key, wrong_type(rng));
                case.wrong_type = true;
            }
        }
    }
    if rng.chance(3) {
        // `false` is "not given" to NMP's policy (it then reads Envoy's form).
        case.input.insert("principal_id".into(), false.into());
        case.wrong_type = true;
    }
    case
}

/// An email or group of the input spelled like a service principal.
fn service_not_id(input: &Map<String, Json>) -> bool {
    let email = input.get("principal_email").and_then(Json::as_str);
    let groups = input
        .get("principal_groups")
        .and_then(Json::as_array)
        .into_iter()
        .flatten()
        .filter_map(Json::as_str);
    email
        .into_iter()
        .chain(groups)
        .any(|v| v.starts_with("service:"))
}

fn oracle_env() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(
        dir.path().join("config.yaml"),
        "auth:\n  on_invalid_plugin: deny_route\n",
    )
    .expect("write NMP config");
    dir
}

#[test]
fn pdp_answers_like_nmps_own_pdp() {
    let env = oracle_env();
    let config = env.path().join("config.yaml");
    let data_dir = env.path().join("data");
    let with_env = |args: &[&str], input: &Json| {
        common::nmp::run_json_with_env(
            "pdp_oracle.py",
            args,
            input,
            &[
                ("NMP_CONFIG_FILE_PATH", config.to_str().unwrap()),
                ("NMP_DATA_DIR", data_dir.to_str().unwrap()),
            ],
        )
    };
    let built = with_env(&["document"], &json!({ "principals": bindings() }));
    let document = built["document"].clone();
    let endpoints = document["authz"]["endpoints"]
        .as_object()
        .expect("NMP's document has endpoints");
    assert!(endpoints.len() >= 94, "NMP's catalog and plugin routes");
    let patterns: Vec<String> = endpoints.keys().cloned().collect();
    let endpoint_scopes: Vec<String> = endpoints
        .values()
        .flat_map(|methods| methods.as_object().into_iter().flatten())
        .flat_map(|(_, m)| m["scopes"].as_array().into_iter().flatten())
        .filter_map(|s| s.as_str().map(str::to_owned))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let permissions: Vec<String> = document["authz"]["roles"]
        .as_object()
        .expect("roles")
        .values()
        .flat_map(|r| r["permissions"].as_array().into_iter().flatten())
        .filter_map(|p| p.as_str().map(str::to_owned))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();

    let policy = CompiledPolicy::build(
        PolicyDocument::from_value(document.clone()).expect("nmp-authz reads NMP's document"),
        &BindingDefaults {
            bootstrap_bindings: false,
            default_workspace: "default".into(),
            admin_email: None,
        },
        "nmp",
    )
    .expect("NMP's document compiles");

    let mut rng = Rng(0x5eed_0014);
    let cases: Vec<Case> = (0..CASES)
        .map(|_| generate(&mut rng, &patterns, &endpoint_scopes, &permissions))
        .collect();
    let request = json!({
        "document": document,
        "cases": cases.iter().map(|c| json!({"entrypoint": c.entrypoint, "input": c.input})).collect::<Vec<_>>(),
    });
    let answered = with_env(&["evaluate"], &request);
    let results = answered["results"].as_array().expect("results");
    assert_eq!(results.len(), cases.len());

    let mut agreed = 0;
    let mut tally: BTreeMap<&str, usize> = BTreeMap::new();
    let mut wrong = Vec::new();
    let mut granted = 0;
    for (case, nmp) in cases.iter().zip(results) {
        let entrypoint = Entrypoint::parse(case.entrypoint).unwrap();
        let ours = pdp::answer(&policy, entrypoint, &case.input);
        let Some(theirs) = nmp.get("result") else {
            *tally.entry("nmp_error").or_default() += 1;
            continue;
        };
        if ours.to_json() == *theirs {
            agreed += 1;
            granted += usize::from(ours.granted());
            continue;
        }
        // A deliberate difference: nmp-authz refuses what NMP grants, for a listed reason.
        let class = if case.wrong_type {
            Some("wrong_type")
        } else if service_not_id(&case.input) {
            Some("service_not_id")
        } else {
            None
        };
        match class {
            Some(class) if !ours.granted() => *tally.entry(class).or_default() += 1,
            _ => wrong.push(format!(
                "{} {}: nmp-authz {} NMP {}",
                case.entrypoint,
                Json::Object(case.input.clone()),
                ours.to_json(),
                theirs
            )),
        }
    }
    eprintln!(
        "{} cases: {agreed} agreed ({granted} granted), deliberate differences and NMP errors: {tally:?}",
        cases.len()
    );
    assert!(
        wrong.is_empty(),
        "{} of {} answers differ from NMP's PDP outside the listed differences:\n{}",
        wrong.len(),
        cases.len(),
        wrong
            .iter()
            .take(40)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    // The cases must exercise both answers, and the listed differences must stay exceptions.
    assert!(granted > cases.len() / 10, "too few grants: {granted}");
    assert!(
        agreed > cases.len() * 9 / 10,
        "too few agreements: {agreed}"
    );
    assert!(tally.get("nmp_error").copied().unwrap_or(0) < cases.len() / 50);
}
