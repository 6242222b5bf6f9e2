//! Smoke test of the OIDC test harness (tests/common/oidc.rs and tests/oidc/provider.mjs): a
//! real `oidc-provider` issues the signed access tokens the other tests rely on.

mod common;

use std::time::Instant;

use common::oidc::{
    API_AUDIENCE, API_RESOURCE, ES256_RESOURCE, KeyDir, OTHER_RESOURCE, Options, Provider,
    jwt_claims, jwt_header, unix_now,
};
use serde_json::json;

#[test]
fn provider_issues_signed_tokens_and_rotates_keys() {
    let keys = KeyDir::new();
    let (k1, e1) = (keys.rsa("k1"), keys.ec("e1"));

    let started = Instant::now();
    let mut provider = Provider::start(&[k1.clone(), e1.clone()], Options::default());
    eprintln!("provider started in {:?}", started.elapsed());
    let issuer = provider.issuer().to_string();
    assert_eq!(issuer, format!("http://127.0.0.1:{}", provider.port()));
    assert_eq!(provider.discovery()["issuer"], issuer.as_str());

    // The key files were created, each with its own kid, and only public parts are published.
    let (k1_kid, e1_kid) = (k1.kid(), e1.kid());
    assert_ne!(k1_kid, e1_kid);
    assert_eq!(provider.jwks_kids(), [k1_kid.clone(), e1_kid.clone()]);
    for key in provider.jwks()["keys"].as_array().unwrap() {
        assert!(
            key.get("d").is_none(),
            "private key material published: {key}"
        );
    }

    // RS256 for the API.
    let before = unix_now();
    let token = provider.token("alice", "platform:read", API_RESOURCE);
    let header = jwt_header(&token);
    assert_eq!(header["alg"], "RS256");
    assert_eq!(header["typ"], "at+jwt");
    assert_eq!(header["kid"], k1_kid.as_str());
    let claims = jwt_claims(&token);
    assert_eq!(claims["iss"], issuer.as_str());
    assert_eq!(claims["aud"], API_AUDIENCE);
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["client_id"], "alice");
    assert_eq!(claims["scope"], "platform:read");
    assert_eq!(claims["email"], "alice@example.com");
    assert_eq!(claims["groups"], json!(["team-a"]));
    let (iat, exp) = (
        claims["iat"].as_i64().unwrap(),
        claims["exp"].as_i64().unwrap(),
    );
    assert!(
        (before - 5..=unix_now() + 5).contains(&iat),
        "iat {iat}, now {before}"
    );
    assert_eq!(exp - iat, 600, "default TTL");

    // Several scopes; unknown scopes are dropped, not refused.
    let claims = jwt_claims(&provider.token(
        "bob",
        "platform:read models:write files:read bogus",
        API_RESOURCE,
    ));
    assert_eq!(claims["sub"], "bob");
    assert_eq!(claims["scope"], "platform:read models:write files:read");
    assert_eq!(claims["email"], "bob@example.com");
    assert!(claims.get("groups").is_none(), "{claims}");

    // Service clients carry no email or groups; a colon in the client id works.
    for client in ["service-jobs", "service:jobs"] {
        let claims = jwt_claims(&provider.token(client, "files:write", ""));
        assert_eq!(claims["sub"], client);
        assert_eq!(claims["aud"], API_AUDIENCE, "the default resource");
        assert!(claims.get("email").is_none() && claims.get("groups").is_none());
    }

    // ES256 for the API; RS256 for another audience.
    let token = provider.token("alice", "platform:read", ES256_RESOURCE);
    assert_eq!(jwt_header(&token)["alg"], "ES256");
    assert_eq!(jwt_header(&token)["kid"], e1_kid.as_str());
    assert_eq!(jwt_claims(&token)["aud"], API_AUDIENCE);
    let token = provider.token("alice", "platform:read", OTHER_RESOURCE);
    assert_eq!(jwt_header(&token)["alg"], "RS256");
    assert_eq!(jwt_claims(&token)["aud"], "urn:other");

    // Refusals.
    let (status, body) = provider.token_response("alice", "wrong", "platform:read", API_RESOURCE);
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_client"))
    );
    let (status, body) = provider.token_response("alice", "secret", "platform:read", "urn:nope");
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_target"))
    );

    // Rotation: k2 signs, k1 is still published, same issuer.
    let k2 = keys.rsa("k2");
    provider.restart(&[k2.clone(), k1.clone()]);
    assert_eq!(provider.issuer(), issuer);
    let k2_kid = k2.kid();
    assert_eq!(provider.jwks_kids(), [k2_kid.clone(), k1_kid.clone()]);
    let token = provider.token("alice", "platform:read", API_RESOURCE);
    assert_eq!(jwt_header(&token)["kid"], k2_kid.as_str());
    assert_eq!(jwt_claims(&token)["iss"], issuer.as_str());

    let status = provider.stop().expect("it was running");
    assert!(status.success(), "exit on SIGTERM: {status}");
    assert!(provider.stop().is_none());
}

#[test]
fn clock_offset_and_ttl() {
    let keys = KeyDir::new();
    let provider = Provider::start(&[keys.rsa("k1")], Options::clock_offset(-3600));
    let claims = jwt_claims(&provider.token("alice", "platform:read", API_RESOURCE));
    let now = unix_now();
    let exp = claims["exp"].as_i64().unwrap();
    assert!(exp < now, "exp {exp} should be before now {now}");
    assert!((now - 3600 - 5..=now - 3600 + 5).contains(&claims["iat"].as_i64().unwrap()));

    let provider = Provider::start(&[keys.rsa("k1")], Options::ttl(5));
    let claims = jwt_claims(&provider.token("alice", "platform:read", API_RESOURCE));
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        5
    );
}

#[test]
fn start_fails_clearly_on_a_bad_key() {
    let dir = KeyDir::new();
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, "{\"kty\":\"RSA\"}").unwrap();
    let err = match Provider::try_start(&[common::oidc::Key::rsa(&bad)], Options::default()) {
        Ok(_) => panic!("a key without kid is refused"),
        Err(e) => e,
    };
    assert!(err.contains("has no kid"), "{err}");
}
