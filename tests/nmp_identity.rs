//! nmp-authz's identity against NMP 0.3.0's own code, unmodified (issue 14, items 2 and 6),
//! run by `tests/nmp/claims.py` with the real NMP in `.venv-nmp`:
//!
//! - claims map as NMP's `JWTValidator` maps them (`_extract_token_claims` for claims another
//!   hop verified, `validate_token` for an unsigned bearer token), except for the deliberate
//!   differences README "Identity" lists, each asserted as its class here;
//! - every principal nmp-authz allows is the one its `x-nmp-*` headers carry: NMP's
//!   `AuthorizationMiddleware`, fed the exact headers nmp-authz set (as UTF-8 bytes), sends its
//!   PDP that same principal and those scopes;
//! - with `identity.trust_principal_headers`, headers are read as NMP reads them, or refused.
//!
//! Every case goes through the real Check path (in-process gRPC `Authorization/Check`), by the
//! `jwt_authn` metadata and by an unsigned bearer token. Claim sets are generated from a fixed
//! seed, under four claim settings (default, Azure-, Keycloak-, Cognito-like).

mod common;

use std::collections::{BTreeMap, HashMap};

use common::nmp::run_json;
use common::*;
use envoy_types::pb::envoy::config::core::v3::Metadata;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{CheckRequest, CheckResponse};
use envoy_types::pb::google::protobuf::{Struct, Value as Proto, value::Kind};
use nmp_authz::config::Config;
use nmp_authz::identity::{struct_from_json, unsigned_token};
use nmp_authz::server::State;
use serde_json::{Map, Value, json};

/// An endpoint every identified caller may GET (`permissions: []`, no scopes): whatever
/// identity a case maps to is allowed, so its headers can be read.
const PROBE: &str = "/apis/probe/v2/open";

const POLICY: &str = r#"
authz:
  roles:
    Viewer: {permissions: [models.read, models.list]}
    Editor: {includes: [Viewer], permissions: [models.write]}
    PlatformAdmin: {permissions: ["*"]}
  endpoints:
    "/apis/probe/v2/open":
      get: {permissions: []}
    "/apis/models/v2/workspaces/{workspace}/models":
      get: {permissions: [models.list], scopes: ["models:read", "platform:read"]}
      post: {permissions: [models.write], scopes: ["models:write", "platform:write"]}
  principals:
    alice: {workspaces: {ws1: [Editor]}}
    admins: {workspaces: {system: [PlatformAdmin]}}
    # Groups no x-nmp-principal-groups header can carry (NMP's membership API accepts them),
    # and the parts a comma would split one into.
    "Data Science": {workspaces: {ws2: [Editor]}}
    "cn=ml-team,ou=groups": {workspaces: {ws2: [Editor]}}
    "ml-team,admins": {workspaces: {ws2: [Editor]}}
    "émigrés": {workspaces: {ws2: [Editor]}}
    ml-team: {workspaces: {ws2: [Editor]}}
    data-science: {workspaces: {ws3: [Editor]}}
"#;

const SEED: u64 = 14;
const CASES_PER_PROFILE: usize = 750;

// ---- claim settings ----

struct Profile {
    name: &'static str,
    subject_claim: &'static str,
    email_claim: &'static str,
    groups_claim: &'static str,
    scope_prefix: Option<&'static str>,
    /// Subjects this kind of provider issues, besides the shared pool.
    subjects: &'static [&'static str],
}

const AZURE_PREFIX: &str = "api://7d1c4f2e-0b7e-4a53-9f0e-client/";

const PROFILES: [Profile; 4] = [
    Profile {
        name: "default",
        subject_claim: "sub",
        email_claim: "email",
        groups_claim: "groups",
        scope_prefix: None,
        subjects: &["alice", "user-123"],
    },
    Profile {
        name: "azure",
        subject_claim: "oid",
        email_claim: "upn",
        groups_claim: "groups",
        scope_prefix: Some(AZURE_PREFIX),
        subjects: &["3f2504e0-4f89-11d3-9a0c-0305e82c3301"],
    },
    Profile {
        name: "keycloak",
        subject_claim: "preferred_username",
        email_claim: "email",
        groups_claim: "groups",
        scope_prefix: None,
        subjects: &["alice.smith", "service-account-jobs"],
    },
    Profile {
        name: "cognito",
        subject_claim: "username",
        email_claim: "email",
        groups_claim: "groups",
        scope_prefix: None,
        subjects: &["alice", "google_1234567890"],
    },
];

impl Profile {
    /// NMP's `auth.oidc` settings.
    fn oidc(&self) -> Value {
        json!({
            "subject_claim": self.subject_claim,
            "email_claim": self.email_claim,
            "groups_claim": self.groups_claim,
            "scope_prefix": self.scope_prefix,
        })
    }

    /// nmp-authz with the same settings, unsigned tokens allowed (quickstart).
    fn state(&self, trust_principal_headers: bool) -> State {
        let mut config = Config::default();
        config.auth.allow_unsigned_jwt = true;
        config.auth.oidc.subject_claim = self.subject_claim.into();
        config.auth.oidc.email_claim = self.email_claim.into();
        config.auth.oidc.groups_claim = self.groups_claim.into();
        config.auth.oidc.scope_prefix = self.scope_prefix.map(str::to_string);
        config.identity.trust_principal_headers = trust_principal_headers;
        State::new(&config, Some(policy(POLICY)))
    }
}

// ---- claim sets ----

/// Python's white space (asserted against NMP's Python by `facts`), and three characters
/// that only look like it.
const SPACES: &[char] = &[
    ' ', '\t', '\n', '\x0b', '\x0c', '\r', '\x1c', '\x1d', '\x1e', '\x1f', '\u{85}', '\u{a0}',
    '\u{1680}', '\u{2000}', '\u{2001}', '\u{2002}', '\u{2003}', '\u{2004}', '\u{2005}', '\u{2006}',
    '\u{2007}', '\u{2008}', '\u{2009}', '\u{200a}', '\u{2028}', '\u{2029}', '\u{202f}', '\u{205f}',
    '\u{3000}', '\u{200b}', '\u{180e}', '\u{feff}',
];

const GOOD_SUBJECTS: &[&str] = &["alice", "service:jobs", "alice@example.com", "/ml/alice"];

const ODD_SUBJECTS: &[&str] = &[
    "auth0|abc123",
    "Alice Smith",
    "émile",
    "",
    " bob ",
    "a\tb",
    "a\nb",
    "ąb",
];

const GOOD_EMAILS: &[&str] = &["alice@example.com", "a.b+c@x.io"];

const ODD_EMAILS: &[&str] = &[
    "jürgen@example.com",
    "not-an-email",
    "a@b@c",
    "",
    " a@b.c",
    "a b@c.d",
    "@x.io",
    "a@",
    "a\u{0}@x.io",
    "a@b.c\u{1c}",
    "ü@ü",
];

const GOOD_GROUPS: &[&str] = &[
    "ml-team",
    "admins",
    "/ml-team",
    "/parent/child",
    "sales+eu",
    "a:b",
    "data_science",
    "Admins@corp",
    "3f2504e0-4f89-11d3-9a0c-0305e82c3301",
];

const ODD_GROUPS: &[&str] = &[
    "Data Science",
    "cn=ml-team,ou=groups",
    "ml-team,admins",
    "émigrés",
    " ops ",
    "",
    "x y",
    "a;b",
    "a|b",
    "ÄÖ",
    "g\u{a0}",
    "\tops",
    "ops\u{1c}",
    "team\u{0}",
    "ąb",
];

const GOOD_SCOPES: &[&str] = &[
    "models:read",
    "models:write",
    "openid",
    "profile",
    "platform:read",
    "email",
    "x:y:z",
    "https://graph.microsoft.com/User.Read",
];

const ODD_SCOPES: &[&str] = &[
    "models.read",
    "api://7d1c4f2e-0b7e-4a53-9f0e-client/models:read",
    "api://7d1c4f2e-0b7e-4a53-9f0e-client/",
    "api://other/x:y",
    "modèles:lire",
    "ąmodels:write",
    "a\u{0}b",
    "",
];

fn long(n: usize) -> String {
    "g".repeat(n)
}

fn spaces(rng: &mut Rng, max: usize) -> String {
    (0..rng.below(max + 1)).map(|_| *rng.pick(SPACES)).collect()
}

/// A claim of a JSON type no mapping accepts.
fn wrong(rng: &mut Rng) -> Value {
    rng.pick(&[
        json!(5),
        json!(true),
        json!(false),
        json!(0),
        json!({"a": "b"}),
        json!(["ok", 3]),
        json!([null]),
    ])
    .clone()
}

/// A string claim: mostly one of `good`, sometimes one of `odd`, `null`, or a wrong type.
fn string_claim(rng: &mut Rng, good: &[&str], odd: &[String]) -> Value {
    match rng.below(100) {
        0..=2 => wrong(rng),
        3..=5 => Value::Null,
        6..=17 => json!(rng.pick(odd)),
        _ => json!(rng.pick(good)),
    }
}

fn group(rng: &mut Rng) -> String {
    match rng.below(20) {
        0 => long(256),
        1 => long(257),
        2..=4 => rng.pick(ODD_GROUPS).to_string(),
        _ => rng.pick(GOOD_GROUPS).to_string(),
    }
}

fn groups_claim(rng: &mut Rng) -> Option<Value> {
    Some(match rng.below(20) {
        0..=3 => return None,
        4 => Value::Null,
        5..=11 => Value::Array((0..rng.below(5)).map(|_| json!(group(rng))).collect()),
        12 => {
            // Around NMP's limit of 100, with some groups no header can carry.
            let n = *rng.pick(&[99, 100, 101, 150]);
            let mut groups: Vec<Value> = (0..n).map(|i| json!(format!("g-{i}"))).collect();
            groups.extend((0..rng.below(3)).map(|i| json!(format!("team {i}"))));
            Value::Array(groups)
        }
        13..=18 => {
            let parts: Vec<String> = (0..rng.below(4) + 1)
                .map(|_| format!("{}{}{}", spaces(rng, 1), group(rng), spaces(rng, 1)))
                .collect();
            json!(parts.join(","))
        }
        _ => wrong(rng),
    })
}

fn scope(rng: &mut Rng) -> &'static str {
    let pool = if rng.chance(20) {
        ODD_SCOPES
    } else {
        GOOD_SCOPES
    };
    pool[rng.below(pool.len())]
}

/// A scope, behind the profile's prefix half the time (as Azure AD issues them).
fn prefixed_scope(rng: &mut Rng, prefix: Option<&str>) -> String {
    match prefix {
        Some(prefix) if rng.chance(50) => format!("{prefix}{}", scope(rng)),
        _ => scope(rng).to_string(),
    }
}

fn scope_claim(rng: &mut Rng, prefix: Option<&str>) -> Option<Value> {
    Some(match rng.below(20) {
        0..=5 => return None,
        6 => Value::Null,
        7 => json!(""),
        8 => json!([]),
        9..=13 => {
            let mut text = spaces(rng, 1);
            for _ in 0..rng.below(4) + 1 {
                text.push_str(&prefixed_scope(rng, prefix));
                text.push(if rng.chance(70) {
                    ' '
                } else {
                    *rng.pick(SPACES)
                });
            }
            json!(text)
        }
        14..=18 => {
            let mut items: Vec<Value> = (0..rng.below(4))
                .map(|_| json!(prefixed_scope(rng, prefix)))
                .collect();
            if rng.chance(15) {
                items.push(json!(format!("{} {}", scope(rng), scope(rng))));
            }
            Value::Array(items)
        }
        _ => wrong(rng),
    })
}

fn claim_set(rng: &mut Rng, profile: &Profile) -> Map<String, Value> {
    let mut claims = Map::new();
    let subjects = [profile.subjects, GOOD_SUBJECTS].concat();
    let odd_subjects: Vec<String> = ODD_SUBJECTS
        .iter()
        .map(|s| s.to_string())
        .chain([long(256), long(257)])
        .collect();
    if rng.chance(85) {
        claims.insert("sub".into(), string_claim(rng, &subjects, &odd_subjects));
    }
    if profile.subject_claim != "sub" && rng.chance(80) {
        let subject = string_claim(rng, &subjects, &odd_subjects);
        claims.insert(profile.subject_claim.into(), subject);
    }
    // At NMP's limit of 320 characters, and over it.
    let odd_emails: Vec<String> = ODD_EMAILS
        .iter()
        .map(|s| s.to_string())
        .chain((308..310).map(|n| format!("{}@example.com", "a".repeat(n))))
        .collect();
    if rng.chance(70) {
        let email = string_claim(rng, GOOD_EMAILS, &odd_emails);
        claims.insert(profile.email_claim.into(), email);
    }
    if let Some(groups) = groups_claim(rng) {
        claims.insert(profile.groups_claim.into(), groups);
    }
    if (profile.name == "cognito" || rng.chance(15))
        && let Some(groups) = groups_claim(rng)
    {
        claims.insert("cognito:groups".into(), groups);
    }
    for name in ["scope", "scp"] {
        if let Some(scopes) = scope_claim(rng, profile.scope_prefix) {
            claims.insert(name.into(), scopes);
        }
    }
    with_times(claims)
}

/// `iat` and `exp` as a token has them (NMP's PyJWT and nmp-authz both require them).
fn with_times(mut claims: Map<String, Value>) -> Map<String, Value> {
    let now = common::oidc::unix_now();
    claims.insert("iat".into(), json!(now - 10));
    claims.insert("exp".into(), json!(now + 3600));
    claims
}

// ---- the Check path ----

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Path {
    /// `filter_metadata["envoy.filters.http.jwt_authn"]["jwt_payload"]`.
    Metadata,
    /// `Authorization: Bearer` with an unsigned token (quickstart).
    Bearer,
}

const PATHS: [Path; 2] = [Path::Metadata, Path::Bearer];

impl Path {
    /// Its key in claims.py's answers.
    fn key(self) -> &'static str {
        match self {
            Path::Metadata => "metadata",
            Path::Bearer => "bearer",
        }
    }

    /// The Check request Envoy sends for a request with `claims` on this path.
    fn request(self, method: &str, target: &str, claims: &Map<String, Value>) -> CheckRequest {
        if self == Path::Bearer {
            let bearer = format!("Bearer {}", unsigned_token(claims));
            return check_request(method, target, None, &[("authorization", &bearer)]);
        }
        let mut request = check_request(method, target, None, &[]);
        let payload = Proto {
            kind: Some(Kind::StructValue(struct_from_json(claims))),
        };
        let namespace = Struct {
            fields: HashMap::from([("jwt_payload".to_string(), payload)]),
        };
        request.attributes.as_mut().unwrap().metadata_context = Some(Metadata {
            filter_metadata: HashMap::from([(
                "envoy.filters.http.jwt_authn".to_string(),
                namespace,
            )]),
            ..Default::default()
        });
        request
    }
}

/// Each request sent to its server (an index into `servers`) over gRPC, some at a time; the
/// answers in order.
async fn check_all(servers: &[TestServer], requests: Vec<(usize, CheckRequest)>) -> Vec<Got> {
    let mut answers = Vec::with_capacity(requests.len());
    let mut requests = requests.into_iter().peekable();
    while requests.peek().is_some() {
        let batch: Vec<_> = requests
            .by_ref()
            .take(32)
            .map(|(server, request)| {
                let mut client = servers[server].client.clone();
                tokio::spawn(async move { client.check(request).await })
            })
            .collect();
        for answer in batch {
            let response = answer
                .await
                .unwrap()
                .expect("a CheckResponse, never a gRPC error");
            answers.push(Got::from(&response.into_inner()));
        }
    }
    answers
}

/// Header names and values, in order.
type Headers = Vec<(String, String)>;

/// What a Check answered: the headers it set, or the denial.
#[derive(Debug, Clone)]
enum Got {
    Allowed(Headers),
    Denied(i32, String),
}

impl From<&CheckResponse> for Got {
    fn from(response: &CheckResponse) -> Self {
        match &response.http_response {
            Some(HttpResponse::OkResponse(ok)) => Got::Allowed(
                ok.headers
                    .iter()
                    .filter_map(|h| h.header.as_ref())
                    .map(|h| (h.key.clone(), h.value.clone()))
                    .collect(),
            ),
            Some(HttpResponse::DeniedResponse(denied)) => {
                let body: Value = serde_json::from_str(&denied.body).unwrap_or_default();
                Got::Denied(
                    denied.status.as_ref().map_or(0, |s| s.code),
                    body["detail"].as_str().unwrap_or_default().to_string(),
                )
            }
            _ => Got::Denied(0, format!("no HTTP response: {response:?}")),
        }
    }
}

/// A principal as the `x-nmp-*` headers carry it, or as NMP maps it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Carried {
    id: String,
    email: Option<String>,
    groups: Vec<String>,
    scopes: Vec<String>,
}

impl Carried {
    /// The principal nmp-authz's allow headers describe (comma-joined groups, space-joined
    /// scopes); no header may be set empty.
    fn from_headers(headers: &[(String, String)]) -> Result<Self, String> {
        let get = |name: &str| headers.iter().find(|(k, _)| k == name).map(|(_, v)| v);
        if let Some((name, _)) = headers.iter().find(|(_, v)| v.is_empty()) {
            return Err(format!("{name} set empty"));
        }
        let list = |name: &str, separator: char| {
            get(name).map_or_else(Vec::new, |v| {
                v.split(separator).map(str::to_string).collect()
            })
        };
        Ok(Self {
            id: get("x-nmp-principal-id")
                .ok_or("no x-nmp-principal-id")?
                .clone(),
            email: get("x-nmp-principal-email").cloned(),
            groups: list("x-nmp-principal-groups", ','),
            scopes: list("x-nmp-scopes", ' '),
        })
    }

    /// The principal NMP's PDP was sent (the `input` its middleware built).
    fn from_pdp_input(input: &Value) -> Self {
        Self {
            id: input["principal_id"].as_str().unwrap().to_string(),
            email: input["principal_email"].as_str().map(str::to_string),
            groups: strings(&input["principal_groups"]),
            scopes: strings(&input["scopes"]),
        }
    }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

// ---- what to expect ----

/// A case's expected answer, and the class that explains it (README "Identity").
#[derive(Debug, Clone, PartialEq, Eq)]
enum Want {
    /// Mapped as NMP maps it, with the groups no header carries dropped.
    Principal(Carried),
    /// A deliberate difference or a refusal NMP makes too: status and class.
    Refused(i32, String),
}

fn is_str_or_null(v: &Value) -> bool {
    v.is_string() || v.is_null()
}

fn is_strings(v: &Value) -> bool {
    is_str_or_null(v) || v.as_array().is_some_and(|a| a.iter().all(Value::is_string))
}

/// Python's truthiness of a JSON value.
fn falsy(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => !b,
        Some(Value::Number(n)) => n.as_f64() == Some(0.0),
        Some(Value::String(s)) => s.is_empty(),
        Some(Value::Array(a)) => a.is_empty(),
        Some(Value::Object(o)) => o.is_empty(),
    }
}

/// The first claim NMP's mapping reads that has a JSON type nmp-authz refuses (deliberate
/// difference: 400 naming the claim), in the order nmp-authz reads them.
fn wrong_typed(profile: &Profile, claims: &Map<String, Value>) -> Option<String> {
    let read = |name: &str, fallback: &str| {
        let name = if claims.contains_key(name) {
            name
        } else {
            fallback
        };
        claims.get(name).map(|v| (name.to_string(), v))
    };
    let checks = [
        (
            read(profile.subject_claim, "sub"),
            is_str_or_null as fn(&Value) -> bool,
        ),
        (
            read(profile.email_claim, profile.email_claim),
            is_str_or_null,
        ),
        (read(profile.groups_claim, "cognito:groups"), is_strings),
        (read("scope", "scope"), is_strings),
        (
            read("scp", "scp").filter(|_| falsy(claims.get("scope"))),
            is_strings,
        ),
    ];
    checks
        .into_iter()
        .find_map(|(claim, ok)| claim.filter(|(_, v)| !ok(v)).map(|(name, _)| name))
}

/// What nmp-authz must answer on `path`, given NMP's view of the same claims (`nmp`, one
/// path's result from claims.py).
fn want(profile: &Profile, path: Path, claims: &Map<String, Value>, nmp: &Value) -> Want {
    let refused = |status, class: &str| Want::Refused(status, class.to_string());
    let outcome = nmp["outcome"].as_str().unwrap();
    if path == Path::Bearer {
        // `sub` is required as NMP's PyJWT requires it: present and not null.
        match claims.get("sub") {
            None | Some(Value::Null) => {
                assert_eq!(outcome, "no_identity", "NMP requires sub: {nmp}");
                return refused(401, "no subject");
            }
            Some(v) if !v.is_string() => return refused(400, "wrong type 'sub'"),
            Some(_) => {}
        }
    }
    if let Some(name) = wrong_typed(profile, claims) {
        return refused(400, &format!("wrong type '{name}'"));
    }
    // Only a wrong type makes NMP's mapping raise or its Principal refuse the result.
    assert!(
        ["ok", "no_identity", "scope_error"].contains(&outcome),
        "NMP failed on claims with no wrong type: {nmp}"
    );
    if outcome == "no_identity" {
        return refused(401, "no subject");
    }
    if outcome == "scope_error" {
        return refused(400, "permission as scope");
    }
    let carried = &nmp["carried"];
    let email = nmp["email"].as_str().filter(|e| !e.is_empty());
    let groups = strings(&nmp["groups"]);
    let scopes: Vec<String> = strings(&nmp["scopes"])
        .into_iter()
        .filter(|s| !s.is_empty())
        .collect();
    let control = |s: &str| s.chars().any(char::is_control);
    if email.is_some_and(control)
        || groups.iter().any(|g| control(g))
        || scopes.iter().any(|s| control(s))
    {
        return refused(400, "control character");
    }
    if carried["id"] != true {
        return refused(400, "id not carried");
    }
    if carried["email"] != true {
        return refused(400, "email not carried");
    }
    if carried["scopes"] != "same" {
        return refused(400, "scope not carried");
    }
    if carried["groups_fit"] != true {
        return refused(400, "more than 100 groups");
    }
    Want::Principal(Carried {
        id: nmp["subject"].as_str().unwrap().to_string(),
        email: email.map(str::to_string),
        groups: strings(&carried["groups"]),
        scopes,
    })
}

/// How an answer compares with `want`; `None` when it matches.
fn mismatch(want: &Want, got: &Got) -> Option<String> {
    match (want, got) {
        (Want::Principal(p), Got::Allowed(headers)) => match Carried::from_headers(headers) {
            Ok(carried) if carried == *p => None,
            Ok(carried) => Some(format!("headers carry {carried:?}")),
            Err(e) => Some(e),
        },
        (Want::Refused(status, class), Got::Denied(got, detail)) if status == got => {
            // A wrong type's 400 names the claim.
            match class.strip_prefix("wrong type ") {
                Some(name) if !detail.contains(name) => Some(format!("{detail:?} lacks {name}")),
                _ => None,
            }
        }
        _ => Some(format!("got {got:?}")),
    }
}

/// Each header set ([name, value] pairs, sent as UTF-8 bytes) through NMP's middleware: its
/// status, and the input it sent its PDP.
fn through_nmp(header_sets: &[Headers]) -> Vec<Value> {
    let sets: Vec<Value> = header_sets
        .iter()
        .map(|set| json!(set.iter().map(|(k, v)| json!([k, v])).collect::<Vec<_>>()))
        .collect();
    let out = run_json("claims.py", &[], &json!({ "headers": sets }));
    out["headers"].as_array().unwrap().clone()
}

/// Every allowed answer's headers, fed to NMP's middleware: it accepts them, and sends its PDP
/// exactly the principal nmp-authz decided on.
fn assert_nmp_reads_the_headers(allowed: &[(String, Carried, Headers)]) {
    let header_sets: Vec<_> = allowed.iter().map(|(_, _, h)| h.clone()).collect();
    let read = through_nmp(&header_sets);
    let mut failures = Vec::new();
    for ((context, decided, headers), nmp) in allowed.iter().zip(&read) {
        if nmp["status"] != 200 {
            failures.push(format!("{context}: NMP refused {headers:?}: {nmp}"));
        } else if Carried::from_pdp_input(&nmp["input"]) != *decided {
            failures.push(format!(
                "{context}: decided on {decided:?}, NMP read {headers:?} as {}",
                nmp["input"]
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} header sets read otherwise by NMP:\n{}",
        failures.len(),
        allowed.len(),
        failures[..failures.len().min(10)].join("\n")
    );
}

/// One nmp-authz per claim setting, in the order of `PROFILES`.
async fn servers() -> Vec<TestServer> {
    let mut servers = Vec::new();
    for profile in &PROFILES {
        servers.push(TestServer::start(profile.state(false)).await);
    }
    servers
}

/// Each case on each path, with NMP's view of it (claims.py's `mappings`, in case order).
fn on_both_paths<'a, C>(cases: &'a [C], nmp: &'a Value) -> Vec<(&'a C, Path, &'a Value)> {
    cases
        .iter()
        .zip(nmp["mappings"].as_array().unwrap())
        .flat_map(|(case, nmp)| PATHS.map(|path| (case, path, &nmp[path.key()])))
        .collect()
}

/// A case for claims.py: NMP's view of both paths.
fn nmp_case(profile: &Profile, claims: &Map<String, Value>) -> Value {
    json!({"oidc": profile.oidc(), "claims": claims, "token": unsigned_token(claims)})
}

// ---- generated claim sets ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_claim_sets_map_as_nmp_maps_them_and_the_headers_carry_the_decision() {
    let started = std::time::Instant::now();
    let mut rng = Rng(SEED);
    // (index into PROFILES, claims)
    let cases: Vec<(usize, Map<String, Value>)> = (0..PROFILES.len())
        .flat_map(|p| std::iter::repeat_n(p, CASES_PER_PROFILE))
        .map(|p| (p, claim_set(&mut rng, &PROFILES[p])))
        .collect();
    let request = json!({
        "mappings": cases.iter().map(|(p, c)| nmp_case(&PROFILES[*p], c)).collect::<Vec<_>>(),
        "facts": true,
    });
    let nmp = run_json("claims.py", &[], &request);

    // The white space the generator mixes in is all of Python's (str.split, str.strip).
    let isspace: Vec<char> = nmp["facts"]["isspace"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| char::from_u32(c.as_u64().unwrap() as u32).unwrap())
        .collect();
    for c in &isspace {
        assert!(
            SPACES.contains(c),
            "Python's white space {c:?} is not generated"
        );
    }
    assert_eq!(
        SPACES.len() - 3,
        isspace.len(),
        "three lookalikes, the rest white space"
    );

    let servers = servers().await;
    let runs = on_both_paths(&cases, &nmp);
    let requests = runs
        .iter()
        .map(|((profile, claims), path, _)| (*profile, path.request("GET", PROBE, claims)))
        .collect();
    let answers = check_all(&servers, requests).await;

    let mut classes: BTreeMap<(Path, String), usize> = BTreeMap::new();
    let mut failures = Vec::new();
    let mut allowed = Vec::new();
    let mut dropped = 0;
    for (((profile, claims), path, nmp), got) in runs.into_iter().zip(answers) {
        let profile = &PROFILES[*profile];
        let want = want(profile, path, claims, nmp);
        let context = || {
            format!(
                "{} {path:?} {}",
                profile.name,
                Value::Object(claims.clone())
            )
        };
        if let Some(why) = mismatch(&want, &got) {
            failures.push(format!(
                "{}\n  want {want:?}\n  {why}\n  NMP {nmp}",
                context()
            ));
            continue;
        }
        let class = match (want, got) {
            (Want::Principal(decided), Got::Allowed(headers)) => {
                let mapped = strings(&nmp["groups"])
                    .iter()
                    .filter(|g| !g.is_empty())
                    .count();
                dropped += usize::from(mapped > decided.groups.len());
                allowed.push((context(), decided, headers));
                "allowed".to_string()
            }
            (Want::Refused(status, class), _) => format!("{status} {class}"),
            (want, got) => unreachable!("{want:?} matched {got:?}"),
        };
        *classes.entry((path, class)).or_default() += 1;
    }
    assert!(
        failures.is_empty(),
        "{} of {} answers differ from NMP's mapping:\n{}",
        failures.len(),
        cases.len() * PATHS.len(),
        failures[..failures.len().min(10)].join("\n")
    );
    assert_nmp_reads_the_headers(&allowed);

    // Every class is reached on both paths, so none of the comparisons above is vacuous.
    eprintln!(
        "{} claim sets x 2 paths in {:?}: {} allowed, {dropped} of them with groups dropped; {classes:?}",
        cases.len(),
        started.elapsed(),
        allowed.len(),
    );
    for path in PATHS {
        for class in [
            "allowed",
            "401 no subject",
            "400 control character",
            "400 id not carried",
            "400 email not carried",
            "400 scope not carried",
            "400 more than 100 groups",
            "400 permission as scope",
        ] {
            let n = classes
                .get(&(path, class.to_string()))
                .copied()
                .unwrap_or(0);
            assert!(n >= 20, "{path:?} {class}: only {n} cases");
        }
        let wrong: usize = classes
            .iter()
            .filter(|((p, c), _)| *p == path && c.starts_with("400 wrong type"))
            .map(|(_, n)| n)
            .sum();
        assert!(wrong >= 100, "{path:?}: only {wrong} wrong-type cases");
    }
    assert!(
        allowed.len() >= cases.len() * 2 / 3,
        "only {} allowed",
        allowed.len()
    );
    assert!(dropped >= 200, "only {dropped} allowed with groups dropped");
}

// ---- the cases issue 14 names ----

const MODELS_WS1: &str = "/apis/models/v2/workspaces/ws1/models";
const MODELS_WS2: &str = "/apis/models/v2/workspaces/ws2/models";
const MODELS_WS3: &str = "/apis/models/v2/workspaces/ws3/models";

/// What, under which profile (index into PROFILES), which claims, which request, the status,
/// and on allow the groups the headers carry.
type IssueCase = (
    &'static str,
    usize,
    Value,
    &'static str,
    &'static str,
    i32,
    &'static [&'static str],
);

#[rustfmt::skip]
fn issue_cases() -> Vec<IssueCase> {
    const NONE: &[&str] = &[];
    vec![
        // Failed open (was 200): `scope or scp`, with Python's truthiness.
        ("scp models:read", 0, json!({"sub": "alice", "scp": ["models:read"]}), "POST", MODELS_WS1, 403, NONE),
        ("empty scope beside scp", 0, json!({"sub": "alice", "scope": "", "scp": ["models:read"]}), "POST", MODELS_WS1, 403, NONE),
        ("empty scope beside scp, control", 0, json!({"sub": "alice", "scope": "", "scp": ["models:write"]}), "POST", MODELS_WS1, 200, NONE),
        // A present `groups: null` is no groups; Cognito's are not looked at (was: admin).
        ("groups null beside cognito:groups", 0, json!({"sub": "carol", "groups": null, "cognito:groups": ["admins"]}), "POST", MODELS_WS1, 403, NONE),
        ("cognito:groups alone, control", 0, json!({"sub": "carol", "cognito:groups": ["admins"]}), "POST", MODELS_WS1, 200, &["admins"]),
        // subject_claim `oid` absent: `sub` (was 401).
        ("oid absent: sub", 1, json!({"sub": "alice"}), "POST", MODELS_WS1, 200, NONE),
        ("oid present, control", 1, json!({"sub": "alice", "oid": "bob"}), "POST", MODELS_WS1, 403, NONE),
        // `scope` as a list (was 400).
        ("scope list", 0, json!({"sub": "alice", "scope": ["models:write"]}), "POST", MODELS_WS1, 200, NONE),
        ("scope list without the scope", 0, json!({"sub": "alice", "scope": ["models:read"]}), "POST", MODELS_WS1, 403, NONE),
        // A list's group with a comma is neither one group nor two: dropped (was: decided on
        // as one, sent as two).
        ("group with a comma", 0, json!({"sub": "carol", "groups": ["ml-team,admins"]}), "POST", MODELS_WS2, 403, NONE),
        ("group with a comma, not admins", 0, json!({"sub": "carol", "groups": ["ml-team,admins"]}), "POST", MODELS_WS1, 403, NONE),
        ("group with a comma, headers", 0, json!({"sub": "carol", "groups": ["ml-team,admins"]}), "GET", PROBE, 200, NONE),
        // A string claim is split on commas, as NMP splits it.
        ("groups string with a comma", 0, json!({"sub": "carol", "groups": "ml-team, admins"}), "POST", MODELS_WS1, 200, &["ml-team", "admins"]),
        // Non-ASCII, a space, an LDAP DN: dropped, the rest kept (were sent, and every NMP
        // service answered 400).
        ("émigrés", 0, json!({"sub": "carol", "groups": ["émigrés", "data-science"]}), "POST", MODELS_WS2, 403, NONE),
        ("émigrés beside a group that fits", 0, json!({"sub": "carol", "groups": ["émigrés", "data-science"]}), "POST", MODELS_WS3, 200, &["data-science"]),
        ("Data Science", 0, json!({"sub": "carol", "groups": ["Data Science"]}), "POST", MODELS_WS2, 403, NONE),
        ("Data Science, headers", 0, json!({"sub": "carol", "groups": ["Data Science"]}), "GET", PROBE, 200, NONE),
        ("LDAP DN", 2, json!({"sub": "k-1", "preferred_username": "carol", "groups": ["cn=ml-team,ou=groups"]}), "POST", MODELS_WS2, 403, NONE),
        ("LDAP DN beside a Keycloak path", 2, json!({"sub": "k-1", "preferred_username": "carol", "groups": ["cn=ml-team,ou=groups", "/ml-team"]}), "GET", PROBE, 200, &["/ml-team"]),
        // Ids and emails the headers cannot carry stay a 400, and so do too many groups.
        ("Auth0 subject", 0, json!({"sub": "auth0|abc123"}), "GET", PROBE, 400, NONE),
        ("non-ASCII email", 0, json!({"sub": "alice", "email": "jürgen@example.com"}), "GET", PROBE, 400, NONE),
        ("101 groups", 0, json!({"sub": "alice", "groups": (0..101).map(|i| format!("g-{i}")).collect::<Vec<_>>()}), "GET", PROBE, 400, NONE),
    ]
}

#[tokio::test]
async fn the_cases_issue_14_names() {
    let cases: Vec<(IssueCase, Map<String, Value>)> = issue_cases()
        .into_iter()
        .map(|case| {
            let claims = with_times(case.2.as_object().unwrap().clone());
            (case, claims)
        })
        .collect();
    let request = json!({
        "mappings": cases.iter().map(|(c, claims)| nmp_case(&PROFILES[c.1], claims)).collect::<Vec<_>>(),
        "facts": true,
    });
    let nmp = run_json("claims.py", &[], &request);

    // NMP lets a membership or role binding name such groups, but no header carries them: only
    // NMP services that verify tokens themselves could ever match those bindings.
    let facts = &nmp["facts"];
    for name in [
        "Data Science",
        "cn=ml-team,ou=groups",
        "ml-team,admins",
        "émigrés",
    ] {
        assert_eq!(facts["binding_inputs_accept"][name], true, "{name}");
        assert_eq!(facts["header_carries"][name], false, "{name}");
    }

    let servers = servers().await;
    let runs = on_both_paths(&cases, &nmp);
    let requests = runs
        .iter()
        .map(|(((_, profile, _, method, target, ..), claims), path, _)| {
            (*profile, path.request(method, target, claims))
        })
        .collect();
    let answers = check_all(&servers, requests).await;
    let mut allowed = Vec::new();
    for ((((what, profile, _, _, _, status, groups), claims), path, nmp), got) in
        runs.into_iter().zip(answers)
    {
        let context = format!("{what} ({path:?})");
        // The principal agrees with NMP's mapping; the policy decides on it.
        match (want(&PROFILES[*profile], path, claims, nmp), got) {
            (Want::Principal(decided), Got::Allowed(headers)) => {
                assert_eq!(*status, 200, "{context}");
                assert_eq!(
                    Carried::from_headers(&headers).as_ref(),
                    Ok(&decided),
                    "{context}"
                );
                assert_eq!(decided.groups, *groups, "{context}");
                allowed.push((context, decided, headers));
            }
            (Want::Principal(_), Got::Denied(403, _)) => assert_eq!(*status, 403, "{context}"),
            (Want::Refused(400, _), Got::Denied(400, _)) => assert_eq!(*status, 400, "{context}"),
            (want, got) => panic!("{context}: got {got:?}, want {want:?}"),
        }
    }
    assert_nmp_reads_the_headers(&allowed);
}

// ---- trusted headers ----

/// Header values as a gateway might set them, of every shape; a set in three may hold
/// non-ASCII characters, the others are ASCII only.
fn header_set(rng: &mut Rng) -> Headers {
    let ascii = !rng.chance(33);
    let value = |rng: &mut Rng, make: &dyn Fn(&mut Rng) -> String| loop {
        let value = make(rng);
        if !ascii || value.is_ascii() {
            return value;
        }
    };
    let pad = |rng: &mut Rng, value: String| match rng.below(10) {
        0..=6 => value,
        7 | 8 => format!(" {value}  "),
        _ => format!("{}{value}{}", spaces(rng, 1), spaces(rng, 1)),
    };
    let one_of = |pool: &'static [&'static str]| {
        move |rng: &mut Rng| {
            let picked = rng.pick(pool).to_string();
            pad(rng, picked)
        }
    };
    let mut set = Vec::new();
    if rng.chance(92) {
        let ids = &[
            "alice",
            "service:jobs",
            "bob",
            "auth0|abc",
            "émile",
            "   ",
            "",
            "a\u{1c}",
        ];
        set.push(("x-nmp-principal-id", value(rng, &one_of(ids))));
    }
    if rng.chance(60) {
        let emails = &[
            "a@x.io",
            "bob@x.io",
            "jürgen@x.io",
            "bad",
            "",
            "a\u{0}@x.io",
            "a@b@c",
        ];
        set.push(("x-nmp-principal-email", value(rng, &one_of(emails))));
    }
    if rng.chance(60) {
        let groups = |rng: &mut Rng| -> String {
            if rng.chance(5) {
                let n = *rng.pick(&[100, 101]);
                return (0..n)
                    .map(|i| format!("g-{i}"))
                    .collect::<Vec<_>>()
                    .join(",");
            }
            let groups: Vec<String> = (0..rng.below(4))
                .map(|_| {
                    let group = group(rng);
                    pad(rng, group)
                })
                .collect();
            groups.join(",")
        };
        set.push(("x-nmp-principal-groups", value(rng, &groups)));
    }
    if rng.chance(60) {
        let scopes = |rng: &mut Rng| -> String {
            let mut scopes = if rng.chance(80) {
                String::new()
            } else {
                spaces(rng, 1)
            };
            for _ in 0..rng.below(4) {
                scopes.push_str(scope(rng));
                scopes.push(if rng.chance(90) {
                    ' '
                } else {
                    *rng.pick(SPACES)
                });
            }
            scopes
        };
        set.push(("x-nmp-scopes", value(rng, &scopes)));
    }
    set.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

/// With `identity.trust_principal_headers`, nmp-authz reads `x-nmp-*` headers as NMP's
/// middleware reads them (`Principal.from_headers`, `x-nmp-scopes` split on white space), or
/// refuses them: a value with a non-ASCII character (NMP decodes it as Latin-1) or a control
/// character (which NMP strips or lets through).
#[tokio::test]
async fn trusted_headers_are_read_as_nmp_reads_them_or_refused() {
    let mut rng = Rng(SEED + 1);
    let sets: Vec<Headers> = (0..600).map(|_| header_set(&mut rng)).collect();
    let nmp = through_nmp(&sets);
    let servers = [TestServer::start(PROFILES[0].state(true)).await];
    let requests = sets
        .iter()
        .map(|set| {
            let pairs: Vec<(&str, &str)> =
                set.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            (0, check_request("GET", PROBE, None, &pairs))
        })
        .collect();
    let answers = check_all(&servers, requests).await;
    let mut failures = Vec::new();
    let mut allowed = Vec::new();
    let mut classes: BTreeMap<&str, usize> = BTreeMap::new();
    for ((set, nmp), got) in sets.iter().zip(&nmp).zip(answers) {
        let refused = |status| Want::Refused(status, String::new());
        let (class, want) = if set.iter().any(|(_, v)| !v.is_ascii()) {
            ("non-ASCII", refused(400))
        } else if set.iter().any(|(_, v)| v.chars().any(char::is_control)) {
            ("control character", refused(400))
        } else if nmp["status"] == 400 {
            ("NMP refuses", refused(400))
        } else if nmp["status"] != 200 {
            panic!("{set:?}: NMP answered {nmp}");
        } else if nmp["input"]["principal_id"] == "" {
            ("no id", refused(401))
        } else {
            (
                "allowed",
                Want::Principal(Carried::from_pdp_input(&nmp["input"])),
            )
        };
        *classes.entry(class).or_default() += 1;
        if let Some(why) = mismatch(&want, &got) {
            failures.push(format!(
                "{set:?}: want {want:?} ({class}), {why}; NMP {nmp}"
            ));
        } else if let (Want::Principal(read), Got::Allowed(headers)) = (want, got) {
            allowed.push((format!("{set:?}"), read, headers));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} header sets read otherwise than NMP reads them:\n{}",
        failures.len(),
        sets.len(),
        failures[..failures.len().min(10)].join("\n")
    );
    assert_nmp_reads_the_headers(&allowed);
    eprintln!("{} header sets: {classes:?}", sets.len());
    for class in [
        "non-ASCII",
        "NMP refuses",
        "no id",
        "control character",
        "allowed",
    ] {
        assert!(
            classes.get(class).copied().unwrap_or(0) >= 10,
            "{class}: {classes:?}"
        );
    }
}
