//! `nmp-authz token`: a quickstart unsigned (`alg: none`) token for curl, refused unless the
//! configuration accepts such tokens.

use std::time::Duration;

use serde_json::{Map, json};

use crate::config::Config;
use crate::identity;
use crate::policy::Principal;

/// Longest lifetime a quickstart token may ask for, in days.
const MAX_LIFETIME_DAYS: u64 = 365;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The caller's email (also the principal id unless --principal-id is given).
    #[arg(long)]
    email: Option<String>,
    /// The principal id (token subject), e.g. service:my-service.
    #[arg(long)]
    principal_id: Option<String>,
    /// Groups, comma-separated (repeatable).
    #[arg(long, value_delimiter = ',')]
    groups: Vec<String>,
    /// A token scope (repeatable; a value with spaces is several scopes).
    #[arg(long)]
    scope: Vec<String>,
    /// Lifetime, e.g. 1h, 30m, 7d.
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    expires_in: Duration,
}

pub fn run(args: &Args, config: &Config) -> Result<(), String> {
    let now = identity::unix_now();
    println!("{}", token(args, config, now)?);
    Ok(())
}

/// The token, or why the configuration would not accept it.
fn token(args: &Args, config: &Config, now: u64) -> Result<String, String> {
    if !config.auth.allow_unsigned_jwt {
        return Err(
            "this configuration does not accept unsigned tokens (auth.allow_unsigned_jwt is \
             false); get a token from your identity provider"
                .into(),
        );
    }
    if !config.identity.verify_bearer {
        return Err("identity.verify_bearer is false: the server ignores bearer tokens".into());
    }
    let Some(subject) = args.principal_id.as_ref().or(args.email.as_ref()) else {
        return Err("token needs --email or --principal-id".into());
    };
    if args.expires_in.is_zero() || args.expires_in.as_secs() > MAX_LIFETIME_DAYS * 86_400 {
        return Err(format!(
            "--expires-in must be more than 0 and at most {MAX_LIFETIME_DAYS}d"
        ));
    }
    let scopes: Vec<String> = args
        .scope
        .iter()
        .flat_map(|s| s.split_whitespace())
        .map(str::to_string)
        .collect();
    // The server refuses a principal in the wrong format with 400; refuse it here instead.
    let principal = Principal {
        id: Some(subject.clone()),
        email: args.email.clone(),
        groups: args.groups.clone(),
        scopes: scopes.clone(),
    };
    identity::validate_principal(&principal).map_err(|e| e.detail().to_string())?;

    let oidc = &config.auth.oidc;
    let mut claims = Map::new();
    // Unsigned tokens need `sub` whatever the subject claim is called.
    claims.insert("sub".into(), json!(subject));
    claims.insert(oidc.subject_claim.clone(), json!(subject));
    if let Some(email) = &args.email {
        claims.insert(oidc.email_claim.clone(), json!(email));
    }
    if !args.groups.is_empty() {
        claims.insert(oidc.groups_claim.clone(), json!(args.groups));
    }
    if !scopes.is_empty() {
        claims.insert("scope".into(), json!(scopes.join(" ")));
    }
    claims.insert("iat".into(), json!(now));
    claims.insert(
        "exp".into(),
        json!(now.saturating_add(args.expires_in.as_secs())),
    );
    Ok(identity::unsigned_token(&claims))
}
