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
//!
//! Cases where NMP's engine fails (a tie between two endpoint patterns is an evaluation error
//! there) are counted and must stay rare; nmp-authz answers them deterministically.

mod common;

use std::collections::BTreeMap;

use common::Rng;
use nmp_authz_core::policy::pdp::{self, Entrypoint};
use nmp_authz_core::policy::{BindingDefaults, CompiledPolicy, PolicyDocument};
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

// ---- NMP's own client and middleware, with nmp-authz as their PDP ----

use common::gateway::{NmpAuthz, get, poll_until, request};
use std::time::Duration;

/// The bindings the client and middleware tests decide with (over the built-in catalog).
const SITE_POLICY: &str = "authz:
  principals:
    alice@example.com: {workspaces: {ws1: [Editor]}}
    auth0|abc123: {workspaces: {ws1: [Viewer]}}
";

/// nmp-authz with the built-in catalog, `SITE_POLICY` in a file, and the PDP listener on a
/// TCP port and a Unix socket. Stale after 2 s without a good load.
struct Pdp {
    authz: NmpAuthz,
    dir: tempfile::TempDir,
}

impl Pdp {
    fn start() -> Pdp {
        let dir = tempfile::tempdir().expect("temp dir");
        let policy = dir.path().join("policy.yaml");
        std::fs::write(&policy, SITE_POLICY).expect("write the policy");
        let authz = NmpAuthz::start(&format!(
            "auth:
  bootstrap_bindings: false
  policy_data_refresh_interval: 1
policy:
  max_staleness_seconds: 2
  sources:
    - builtin: true
    - file: {}
pdp:
  addr: 127.0.0.1:0
  unix_socket: {}
",
            policy.display(),
            dir.path().join("pdp.sock").display()
        ));
        Pdp { authz, dir }
    }

    fn socket(&self) -> std::path::PathBuf {
        self.dir.path().join("pdp.sock")
    }

    /// NMP's `policy_decision_point_base_url` for the TCP listener or the socket.
    fn base_url(&self, unix: bool) -> String {
        if unix {
            format!("unix://{}", self.socket().display())
        } else {
            format!("http://{}", self.authz.pdp_addr())
        }
    }

    fn write_policy(&self, text: &str) {
        std::fs::write(self.dir.path().join("policy.yaml"), text).expect("write the policy");
    }
}

fn client_calls(base_url: &str, provider: &str, calls: Json) -> Vec<Json> {
    let answer = common::nmp::run_json(
        "auth_client.py",
        &[],
        &json!({
            "auth": {
                "enabled": true,
                "policy_decision_point_base_url": base_url,
                "policy_decision_point_provider": provider,
                "propagation_poll_interval_seconds": 0.2,
            },
            "service_name": "probe",
            "calls": calls,
        }),
    );
    answer["results"].as_array().expect("results").clone()
}

const MODELS_WS1: &str = "/apis/models/v2/workspaces/ws1/models";

/// NMP's `AuthClient`, unmodified, over both providers' paths and both kinds of listener:
/// its answers, NMP's `wait_role` following a binding as it appears, and a stale policy
/// failing its calls closed (an HTTP 503 the client raises on).
#[test]
fn nmp_auth_client_against_the_pdp_listener() {
    let pdp = Pdp::start();
    for (provider, unix) in [
        ("embedded", false),
        ("opa", false),
        ("embedded", true),
        ("opa", true),
    ] {
        let base = pdp.base_url(unix);
        let results = client_calls(
            &base,
            provider,
            json!([
                {"call": "authorize_request", "principal": {"id": "alice@example.com"}, "method": "POST", "path": MODELS_WS1},
                {"call": "authorize_request", "principal": {"id": "auth0|abc123"}, "method": "GET", "path": MODELS_WS1},
                {"call": "authorize_request", "principal": {"id": "auth0|abc123"}, "method": "POST", "path": MODELS_WS1},
                {"call": "authorize_request", "principal": {}, "method": "GET", "path": MODELS_WS1},
                {"call": "has_permissions", "principal": {"id": "alice@example.com"}, "workspace": "ws1", "permissions": ["models.create"]},
                {"call": "has_permissions", "principal": {"id": "auth0|abc123"}, "workspace": "ws1", "permissions": ["models.create"]},
                {"call": "wait_role", "principal_id": "alice@example.com", "workspace": "ws1", "role": "Editor", "timeout": 5},
                {"call": "wait_role", "principal_id": "nobody", "workspace": "ws1", "role": "Editor", "is_present": false, "timeout": 5},
            ]),
        );
        let values: Vec<&Json> = results.iter().map(|r| &r["ok"]).collect();
        assert_eq!(
            values,
            [true, true, false, false, true, false, true, true]
                .map(Json::Bool)
                .iter()
                .collect::<Vec<_>>(),
            "{provider} over {base}: {results:#?}"
        );
    }

    // A binding added to the policy file: NMP's wait_role polls until nmp-authz decides on it.
    pdp.write_policy(&format!(
        "{SITE_POLICY}    carol@example.com: {{workspaces: {{ws1: [Editor]}}}}\n"
    ));
    let waited = client_calls(
        &pdp.base_url(true),
        "embedded",
        json!([{"call": "wait_role", "principal_id": "carol@example.com", "workspace": "ws1", "role": "Editor", "timeout": 10}]),
    );
    assert_eq!(waited[0]["ok"], true, "{waited:?}");
    eprintln!(
        "wait_role saw carol's new binding after {:.2} s",
        waited[0]["seconds"].as_f64().unwrap()
    );

    // A policy that stops loading: once stale, every PDP call fails closed (503), and NMP's
    // client raises instead of answering from old data; a good load recovers it.
    pdp.write_policy("authz: {principals: [not a map]}\n");
    let (_, after) = poll_until(Duration::from_secs(15), || {
        let r = client_calls(
            &pdp.base_url(false),
            "opa",
            json!([{"call": "authorize_request", "principal": {"id": "alice@example.com"}, "method": "POST", "path": MODELS_WS1}]),
        );
        match r[0]["status"].as_u64() {
            Some(503) => Ok(()),
            _ => Err(format!("{r:?}")),
        }
    })
    .expect("stale policy: the PDP answers 503");
    eprintln!("PDP failed closed {after:?} after the policy broke (max_staleness_seconds: 2)");
    pdp.write_policy(SITE_POLICY);
    poll_until(Duration::from_secs(15), || {
        let r = client_calls(
            &pdp.base_url(false),
            "opa",
            json!([{"call": "authorize_request", "principal": {"id": "alice@example.com"}, "method": "POST", "path": MODELS_WS1}]),
        );
        (r[0]["ok"] == true).then_some(()).ok_or(format!("{r:?}"))
    })
    .expect("a good load answers again");
}

/// Who may call the PDP listener: `service:` principals by header, as NMP's middleware says.
#[test]
fn the_pdp_listener_believes_only_a_service_principal_header() {
    let pdp = Pdp::start();
    let addr = pdp.authz.pdp_addr();
    let call = |headers: &[(&str, &str)], path: &str| {
        let mut all = vec![("content-type", "application/json")];
        all.extend_from_slice(headers);
        common::gateway::request_with_body(
            addr,
            "POST",
            path,
            &all,
            r#"{"input": {"principal_id": "alice@example.com", "method": "POST", "path": "/apis/models/v2/workspaces/ws1/models"}}"#,
        )
    };
    let allow = "/apis/auth/v2/authz/allow";
    let service = call(&[("x-nmp-principal-id", "service:models")], allow);
    assert_eq!(service.status, 200, "{service:?}");
    assert_eq!(service.json()["result"]["allowed"], true);
    let opa = call(
        &[("x-nmp-principal-id", "service:models")],
        "/v1/data/authz/allow",
    );
    assert_eq!((opa.status, opa.json()), (service.status, service.json()));
    assert_eq!(call(&[], allow).status, 401);
    assert_eq!(
        call(&[("x-nmp-principal-id", "alice@example.com")], allow).status,
        403
    );
    // A token is no credential here (NMP's client never sends one): only the header counts.
    assert_eq!(
        call(&[("authorization", "Bearer service:models")], allow).status,
        401
    );
    assert_eq!(
        call(
            &[
                ("x-nmp-principal-id", "service:a"),
                ("x-nmp-principal-id", "service:b")
            ],
            allow
        )
        .status,
        400
    );
    assert_eq!(
        call(
            &[("x-nmp-principal-id", "service:models")],
            "/apis/auth/v2/authz/nope"
        )
        .status,
        400
    );
    // Nothing else is served there; the main HTTP port does not believe the header.
    assert_eq!(get(addr, "/metrics", &[]).status, 404);
    assert_eq!(get(addr, "/health/ready", &[]).status, 200);
    let main = common::gateway::request_with_body(
        pdp.authz.http,
        "POST",
        allow,
        &[("x-nmp-principal-id", "service:models")],
        r#"{"input": {}}"#,
    );
    assert_eq!(
        main.status, 401,
        "the HTTP port takes no header for an identity: {main:?}"
    );
    // The socket file is the owner's and the group's only.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(pdp.socket())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o660);
}

/// NMP's `AuthorizationMiddleware`, unmodified, in front of a service, with nmp-authz as its
/// PDP: what a service answers for each kind of caller, where it used to answer 502.
#[test]
fn nmp_middleware_with_nmp_authz_as_its_pdp() {
    let mut pdp = Pdp::start();
    let apps: Vec<(String, common::nmp::ServiceApp)> = [("embedded", false), ("opa", true)]
        .into_iter()
        .map(|(provider, unix)| {
            let base = pdp.base_url(unix);
            let app = common::nmp::ServiceApp::start(&format!(
                "auth:
  enabled: true
  allow_unsigned_jwt: true
  policy_decision_point_base_url: {base}
  policy_decision_point_provider: {provider}
"
            ));
            (format!("{provider} over {base}"), app)
        })
        .collect();
    let auth0 = common::nmp::unsigned_token(&json!({"principal_id": "auth0|abc123"}));
    let auth0 = format!("Bearer {auth0}");
    type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], u16);
    let cases: &[Case] = &[
        (
            "POST",
            MODELS_WS1,
            &[("x-nmp-principal-id", "alice@example.com")],
            200,
        ),
        (
            "POST",
            MODELS_WS1,
            &[("x-nmp-principal-id", "bob@example.com")],
            403,
        ),
        // No identity at all: NMP's PDP answers `allowed: false` for `principal_id: ""`, and
        // the service says 401 (it said 502 when nmp-authz refused that input).
        ("GET", MODELS_WS1, &[], 401),
        // A subject NMP's header parser would refuse, from a token the service verified:
        // evaluated as the ordinary id it is (it was a 502).
        ("GET", MODELS_WS1, &[("authorization", &auth0)], 200),
        ("POST", MODELS_WS1, &[("authorization", &auth0)], 403),
        ("GET", "/health/live", &[], 200),
    ];
    let run = |expect_status: Option<u16>| {
        for (name, app) in &apps {
            for (method, path, headers, status) in cases {
                let response = request(app.addr, method, path, headers);
                let want = if path.starts_with("/health") {
                    *status
                } else {
                    expect_status.unwrap_or(*status)
                };
                assert_eq!(
                    response.status,
                    want,
                    "{name}: {method} {path} {headers:?}: {response:?}\n{}",
                    app.log()
                );
                if response.status == 200 && !path.starts_with("/health") {
                    let id = response.json()["principal"]["id"].clone();
                    assert!(id == "alice@example.com" || id == "auth0|abc123", "{id}");
                }
            }
        }
    };
    run(None);
    // Stale policy: the PDP fails closed and the service answers its PDP-error status.
    pdp.write_policy("authz: {principals: [not a map]}\n");
    poll_until(Duration::from_secs(15), || {
        let r = request(
            apps[0].1.addr,
            "POST",
            MODELS_WS1,
            &[("x-nmp-principal-id", "alice@example.com")],
        );
        (r.status == 502).then_some(()).ok_or(format!("{r:?}"))
    })
    .expect("a stale PDP makes the service refuse (502), not allow");
    run(Some(502));
    // nmp-authz gone: NMP's middleware answers 503.
    pdp.authz.kill();
    run(Some(503));
}
