//! `nmp-authz explain`: a request decided offline with the server's own Check (so the status is
//! the one Envoy would return) and explained by the policy core.

use std::collections::HashMap;
use std::path::PathBuf;

use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use serde_json::{Map, json};

use crate::config::Config;
use crate::identity;
use crate::policy::Explanation;
use crate::requests;
use crate::server::{State, check};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// HTTP method of the request (e.g. GET, POST).
    method: Option<String>,
    /// Request path, e.g. /apis/models/v2/workspaces/default/models.
    path: Option<String>,
    /// The caller's principal id (token subject); defaults to --email.
    #[arg(long)]
    principal_id: Option<String>,
    /// The caller's email.
    #[arg(long)]
    email: Option<String>,
    /// The caller's groups, comma-separated (repeatable).
    #[arg(long, value_delimiter = ',')]
    groups: Vec<String>,
    /// A token scope (repeatable; a value with spaces is several scopes).
    #[arg(long)]
    scope: Vec<String>,
    /// A bearer token instead of a principal. A signed token's claims are used as Envoy's
    /// jwt_authn would pass them on: its signature, issuer, audience and expiry are not
    /// checked offline.
    #[arg(long, conflicts_with_all = ["principal_id", "email", "groups", "scope"])]
    token: Option<String>,
    /// Explain each request of a JSON array in the load tester's format (`method`, `path`,
    /// `headers`, `subject`, `jwt_authn` claims) instead of one given here.
    #[arg(long, conflicts_with_all = ["method", "path", "principal_id", "email", "groups", "scope", "token"])]
    requests_file: Option<PathBuf>,
    /// One JSON object per request instead of text.
    #[arg(long)]
    json: bool,
}

/// One request's outcome as Envoy would see it, and why.
struct Explained {
    status: u16,
    reason: &'static str,
    detail: Option<String>,
    /// What identity was made of the request, when something is worth saying.
    note: Option<&'static str>,
    /// The token's groups left out because `x-nmp-principal-groups` cannot carry them.
    dropped_groups: usize,
    explanation: Option<Explanation>,
}

pub fn run(args: &Args, config: &Config) -> Result<(), String> {
    let requests = requests(args, config)?;
    let policy = crate::sources::load(config).map_err(|e| e.to_string())?;
    // Explaining is no request served: nothing is traced.
    let mut config = config.clone();
    config.traces.enabled = false;
    let state = State::new(&config, Some(policy));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    for (request, note) in requests {
        let explained = runtime.block_on(explain(&state, request, note));
        if args.json {
            let record = json!({
                "status": explained.status,
                "reason": explained.reason,
                "detail": explained.detail,
                "note": explained.note,
                "dropped_groups": explained.dropped_groups,
                "explanation": explained.explanation,
            });
            println!("{record}");
        } else {
            print_text(&explained);
        }
    }
    Ok(())
}

fn print_text(e: &Explained) {
    let decision = if e.status == 200 { "ALLOW" } else { "DENY" };
    match &e.detail {
        Some(detail) => println!("decision:    {decision} {}: {detail}", e.status),
        None => println!("decision:    {decision} {}", e.status),
    }
    if let Some(note) = e.note {
        println!("note:        {note}");
    }
    if e.dropped_groups > 0 {
        println!(
            "note:        {} of the token's groups left out: x-nmp-principal-groups cannot carry them",
            e.dropped_groups
        );
    }
    match &e.explanation {
        Some(explanation) => println!("{explanation}"),
        None => println!("reason:      {} (before any policy rule)", e.reason),
    }
}

const SIGNED_NOTE: &str = "signed token: its claims are used as Envoy's jwt_authn would pass them on; \
     signature, issuer, audience and expiry are not checked offline";

/// The requests to explain, each as the CheckRequest Envoy would send.
fn requests(
    args: &Args,
    config: &Config,
) -> Result<Vec<(CheckRequest, Option<&'static str>)>, String> {
    if let Some(file) = &args.requests_file {
        return requests::read_mix(file, 86_400).map(|mix| {
            mix.into_iter()
                .map(|request| offline_identity(request, config))
                .collect()
        });
    }
    let (Some(method), Some(path)) = (&args.method, &args.path) else {
        return Err("explain needs METHOD and PATH (or --requests-file)".into());
    };
    if !path.starts_with('/') {
        return Err(format!("PATH {path:?} must start with /"));
    }
    let mut headers = HashMap::new();
    let mut claims = None;
    if let Some(token) = &args.token {
        headers.insert("authorization".to_string(), format!("Bearer {token}"));
    } else if let Some(id) = args.principal_id.as_ref().or(args.email.as_ref()) {
        let oidc = &config.auth.oidc;
        let mut c = Map::new();
        c.insert(oidc.subject_claim.clone(), json!(id));
        if let Some(email) = &args.email {
            c.insert(oidc.email_claim.clone(), json!(email));
        }
        if !args.groups.is_empty() {
            c.insert(oidc.groups_claim.clone(), json!(args.groups));
        }
        if !args.scope.is_empty() {
            c.insert("scope".into(), json!(args.scope.join(" ")));
        }
        claims = Some(c);
    } else if !args.groups.is_empty() || !args.scope.is_empty() {
        return Err("--groups and --scope need --principal-id or --email".into());
    }
    let mut request = requests::check_request(&method.to_ascii_uppercase(), path, headers);
    if let (Some(claims), Some(attributes)) = (claims, request.attributes.as_mut()) {
        attributes.metadata_context = Some(requests::jwt_authn_metadata(
            &config.identity.jwt_authn_metadata_key,
            &claims,
        ));
    }
    Ok(vec![offline_identity(request, config)])
}

/// A signed bearer token cannot be verified offline (the issuer's keys are not fetched): its
/// claims stand in as jwt_authn metadata, which is how the companion gateway passes verified
/// claims on. Unsigned tokens stay as they are, judged by `auth.allow_unsigned_jwt`.
fn offline_identity(
    mut request: CheckRequest,
    config: &Config,
) -> (CheckRequest, Option<&'static str>) {
    let Some(attributes) = request.attributes.as_mut() else {
        return (request, None);
    };
    if identity::jwt_authn_metadata(attributes).is_some() {
        return (request, None);
    }
    let token = attributes
        .request
        .as_ref()
        .and_then(|r| r.http.as_ref())
        .and_then(|h| h.headers.get("authorization"))
        .and_then(|v| v.strip_prefix("Bearer "))
        .and_then(identity::decode_unverified);
    match token {
        Some((alg, claims)) if alg.as_deref() != Some("none") => {
            attributes.metadata_context = Some(requests::jwt_authn_metadata(
                &config.identity.jwt_authn_metadata_key,
                &claims,
            ));
            (request, Some(SIGNED_NOTE))
        }
        _ => (request, None),
    }
}

async fn explain(state: &State, request: CheckRequest, note: Option<&'static str>) -> Explained {
    // Decided by the server's own path (identity, the request-path rule, the decision);
    // explained by the same policy, for the same principal and path, only when the policy
    // decided (one refused before it — bad path, identity or policy state; auth disabled —
    // has nothing to explain).
    let request = crate::server::check_request::CheckRequest::from_message(&request);
    let decided = check::request(&request);
    check::decide(state, &decided, |verdict| Explained {
        status: verdict.status.http(),
        reason: verdict.outcome.as_str(),
        detail: (!verdict.allowed()).then(|| verdict.detail.to_string()),
        note,
        dropped_groups: verdict.dropped_groups,
        explanation: verdict
            .policy
            .zip(verdict.path.as_deref())
            .map(|(policy, path)| {
                policy.explain(verdict.principal.as_deref(), decided.method, path)
            }),
    })
    .await
}
