//! How a host fetches an issuer's keys, minus the I/O: the bounds and intervals both hosts
//! keep, and what a discovery document and a JWKS must look like. The server fetches on its
//! async runtime (`src/identity/jwks.rs`), the Envoy module on a thread of its own.

use std::time::Duration;

use jsonwebtoken::jwk::JwkSet;
use serde_json::Value as Json;

use crate::{SigningKey, usable_keys};

/// A token signed with an unknown key refetches an issuer's keys at most this often.
pub const REFETCH_INTERVAL: Duration = Duration::from_secs(10);
/// Bound on one discovery or JWKS request, connection included.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on a discovery document or JWKS body.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// After a failed scheduled refresh, try again this soon (never later than the cache TTL).
pub const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(15);

/// How long to wait before the next scheduled fetch, after one that succeeded or not.
pub fn next_refresh(ok: bool, cache_ttl: Duration) -> Duration {
    let wait = if ok {
        cache_ttl
    } else {
        RETRY_AFTER_FAILURE.min(cache_ttl)
    };
    wait.max(Duration::from_secs(1))
}

/// Where `issuer`'s OpenID discovery document is.
pub fn discovery_url(issuer: &str) -> String {
    format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    )
}

/// The `jwks_uri` of `issuer`'s discovery document `body`, or why there is none.
pub fn jwks_uri_from_discovery(issuer: &str, body: &[u8]) -> Result<String, String> {
    let document: Json = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    // OpenID Connect Discovery: the document must name the issuer it was fetched for.
    if document.get("issuer").and_then(Json::as_str) != Some(issuer) {
        return Err(format!("its issuer is not {issuer:?}"));
    }
    document
        .get("jwks_uri")
        .and_then(Json::as_str)
        .map(str::to_string)
        .ok_or_else(|| "no jwks_uri".into())
}

/// The usable keys of a JWKS `body` ([`usable_keys`]), or why it is no JWKS.
pub fn keys_from_jwks(body: &[u8]) -> Result<Vec<SigningKey>, String> {
    let set: JwkSet = serde_json::from_slice(body).map_err(|e| format!("not a JWKS: {e}"))?;
    Ok(usable_keys(&set))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovery_must_name_its_issuer_and_a_jwks_uri() {
        let issuer = "https://idp.example.com/realms/nmp";
        assert_eq!(
            discovery_url(&format!("{issuer}/")),
            format!("{issuer}/.well-known/openid-configuration")
        );
        let good = format!(r#"{{"issuer": "{issuer}", "jwks_uri": "{issuer}/certs"}}"#);
        assert_eq!(
            jwks_uri_from_discovery(issuer, good.as_bytes()),
            Ok(format!("{issuer}/certs"))
        );
        let other = r#"{"issuer": "https://evil.example.com", "jwks_uri": "https://e/certs"}"#;
        assert!(jwks_uri_from_discovery(issuer, other.as_bytes()).is_err());
        let none = format!(r#"{{"issuer": "{issuer}"}}"#);
        assert_eq!(
            jwks_uri_from_discovery(issuer, none.as_bytes()),
            Err("no jwks_uri".into())
        );
        assert!(jwks_uri_from_discovery(issuer, b"<html>").is_err());
    }

    #[test]
    fn a_jwks_body_gives_its_usable_keys() {
        let body = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/fixtures/keys/jwks.json"
        ))
        .unwrap();
        assert_eq!(keys_from_jwks(&body).unwrap().len(), 3);
        assert!(keys_from_jwks(b"{}").is_err());
    }

    #[test]
    fn failures_are_retried_sooner_but_never_later_than_the_ttl() {
        let ttl = Duration::from_secs(300);
        assert_eq!(next_refresh(true, ttl), ttl);
        assert_eq!(next_refresh(false, ttl), RETRY_AFTER_FAILURE);
        assert_eq!(
            next_refresh(false, Duration::from_secs(5)),
            Duration::from_secs(5)
        );
        assert_eq!(next_refresh(true, Duration::ZERO), Duration::from_secs(1));
    }
}
