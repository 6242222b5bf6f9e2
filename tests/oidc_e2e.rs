//! Signed bearer tokens end to end: tokens issued by a real OpenID provider (npm
//! `oidc-provider`, see tests/oidc/), verified by an in-process nmp-authz that fetches the
//! provider's keys over HTTP, asked through a real gRPC Check over loopback.

mod common;

use std::time::{Duration, Instant};

use common::oidc::{API_AUDIENCE, ES256_RESOURCE, KeyDir, OTHER_RESOURCE, Options, Provider};
use common::{TestServer, check_request, expect_denied, expect_ok, header};
use envoy_types::pb::envoy::service::auth::v3::CheckResponse;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use nmp_authz::config::Config;
use nmp_authz::server::State;
use tokio::sync::watch;

const MODELS: &str = "/apis/models/v2/workspaces/default/models";
/// Bound on waiting for a behaviour that is rate-limited to one refetch per 10 s.
const RECOVERY_DEADLINE: Duration = Duration::from_secs(40);
/// A refusal that did not wait for a key fetch: within the 1 s refetch wait, with room for a
/// loaded machine, and short of the 5 s a fetch may take (what an unbounded wait would show).
const PROMPT: Duration = Duration::from_millis(4500);

/// nmp-authz with OIDC on (built-in catalog, bootstrap bindings: everyone is Editor in
/// `default`), its key fetcher running, and a gRPC client.
struct Gateway {
    server: TestServer,
    _stop_keys: watch::Sender<bool>,
    runtime: tokio::runtime::Runtime,
}

impl Gateway {
    fn start(issuer: &str, additional: &[&str]) -> Gateway {
        let mut config = Config::default();
        config.auth.oidc.enabled = true;
        config.auth.oidc.issuer = Some(issuer.into());
        config.auth.oidc.additional_issuers = additional.iter().map(|s| s.to_string()).collect();
        config.auth.oidc.audience = Some(API_AUDIENCE.into());
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let policy = nmp_authz::sources::load(&config).expect("built-in catalog loads");
        let state = State::new(&config, Some(policy));
        let (stop_keys, stopped) = watch::channel(false);
        runtime.spawn(state.keys.clone().run(stopped));
        let server = runtime.block_on(TestServer::start(state));
        Gateway {
            server,
            _stop_keys: stop_keys,
            runtime,
        }
    }

    fn check(&mut self, token: &str, method: &str, path: &str) -> CheckResponse {
        let authorization = format!("Bearer {token}");
        let request = check_request(method, path, None, &[("authorization", &authorization)]);
        self.runtime.block_on(self.server.check(request))
    }

    fn status(&mut self, token: &str) -> i32 {
        common::http_status(&self.check(token, "GET", MODELS))
    }

    /// Asks until the token is allowed, within a bound; returns how long that took.
    fn allowed_within(&mut self, token: &str, deadline: Duration) -> Result<Duration, String> {
        let start = Instant::now();
        loop {
            let status = self.status(token);
            if status == 200 {
                return Ok(start.elapsed());
            }
            if start.elapsed() > deadline {
                return Err(format!("still {status} after {deadline:?}"));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

fn detail(response: &CheckResponse) -> String {
    match &response.http_response {
        Some(HttpResponse::DeniedResponse(d)) => d.body.clone(),
        other => format!("{other:?}"),
    }
}

fn expect_401(response: &CheckResponse, context: &str) {
    expect_denied(response, 401, context).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn valid_tokens_are_allowed_and_their_principal_reaches_the_headers() {
    let keys = KeyDir::new();
    let provider = Provider::start(&[keys.rsa("k1"), keys.ec("e1")], Options::default());
    let mut gateway = Gateway::start(provider.issuer(), &[]);

    let token = provider.token("alice", "platform:read", "");
    let response = gateway.check(&token, "GET", MODELS);
    let ok = expect_ok(&response, Some("alice"), "alice reads").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        header(&ok.headers, "x-nmp-principal-email"),
        Some("alice@example.com")
    );
    assert_eq!(
        header(&ok.headers, "x-nmp-principal-groups"),
        Some("team-a")
    );
    assert_eq!(header(&ok.headers, "x-nmp-scopes"), Some("platform:read"));
    // The scopes decide too: a read-only token cannot write where alice's role could.
    let write = gateway.check(&token, "POST", MODELS);
    expect_denied(&write, 403, "read-only scope writing").unwrap_or_else(|e| panic!("{e}"));

    // ES256 tokens from the same provider.
    let es = provider.token("bob", "platform:write", ES256_RESOURCE);
    assert_eq!(common::oidc::jwt_header(&es)["alg"], "ES256");
    let response = gateway.check(&es, "POST", MODELS);
    expect_ok(&response, Some("bob"), "bob writes with ES256").unwrap_or_else(|e| panic!("{e}"));

    // A service principal's token: ServiceSystem on a known path.
    let svc = provider.token("service:jobs", "", "");
    let response = gateway.check(&svc, "DELETE", &format!("{MODELS}/m1"));
    expect_ok(&response, Some("service:jobs"), "service").unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn bad_tokens_are_401() {
    let keys = KeyDir::new();
    let k1 = keys.rsa("k1");
    let mut provider = Provider::start(std::slice::from_ref(&k1), Options::default());
    let mut gateway = Gateway::start(provider.issuer(), &[]);
    let good = provider.token("alice", "", "");
    assert_eq!(gateway.status(&good), 200, "the control token is allowed");

    // Wrong audience.
    let other_audience = provider.token("alice", "", OTHER_RESOURCE);
    let response = gateway.check(&other_audience, "GET", MODELS);
    expect_401(&response, "wrong audience");
    assert!(
        detail(&response).contains("audience"),
        "{}",
        detail(&response)
    );

    // Tampered: claims changed, signature kept.
    let mut parts: Vec<String> = good.split('.').map(str::to_string).collect();
    let mut claims = common::oidc::jwt_claims(&good);
    claims["sub"] = "mallory".into();
    use base64::Engine as _;
    parts[1] = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(claims.to_string());
    let response = gateway.check(&parts.join("."), "GET", MODELS);
    expect_401(&response, "tampered claims");

    // Signature bytes flipped.
    let mut signature = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(good.rsplit('.').next().unwrap())
        .unwrap();
    signature[10] ^= 0xff;
    let flipped = format!(
        "{}.{}",
        good.rsplit_once('.').unwrap().0,
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(signature)
    );
    expect_401(&gateway.check(&flipped, "GET", MODELS), "flipped signature");

    // Expired: the same provider (same issuer, same key) running an hour in the past.
    provider.restart_with(std::slice::from_ref(&k1), Options::clock_offset(-3600));
    let expired = provider.token("alice", "", "");
    let response = gateway.check(&expired, "GET", MODELS);
    expect_401(&response, "expired");
    assert!(
        detail(&response).contains("Invalid or expired token"),
        "{}",
        detail(&response)
    );
    // Its clock right again (`restart` would keep the offset): its tokens are accepted again.
    provider.restart_with(&[k1], Options::default());
    let fresh = provider.token("alice", "", "");
    assert_eq!(gateway.status(&fresh), 200, "its clock is right again");

    // Unknown kid: a provider claiming the trusted issuer but signing with its own key.
    let impostor_keys = KeyDir::new();
    let impostor = Provider::start(
        &[impostor_keys.rsa("rogue")],
        Options {
            issuer: Some(provider.issuer().to_string()),
            ..Options::default()
        },
    );
    let rogue = impostor.token("alice", "", "");
    assert_eq!(common::oidc::jwt_claims(&rogue)["iss"], provider.issuer());
    let started = Instant::now();
    let response = gateway.check(&rogue, "GET", MODELS);
    expect_401(&response, "unknown kid");
    assert!(started.elapsed() < PROMPT, "no hang");

    // An issuer that is not configured.
    let stranger_keys = KeyDir::new();
    let stranger = Provider::start(&[stranger_keys.rsa("s1")], Options::default());
    let response = gateway.check(&stranger.token("alice", "", ""), "GET", MODELS);
    expect_401(&response, "untrusted issuer");
    assert!(
        detail(&response).contains("issuer"),
        "{}",
        detail(&response)
    );
}

#[test]
fn rotated_keys_are_picked_up_without_a_restart() {
    let keys = KeyDir::new();
    let (k1, k2) = (keys.rsa("k1"), keys.rsa("k2"));
    let mut provider = Provider::start(std::slice::from_ref(&k1), Options::default());
    let mut gateway = Gateway::start(provider.issuer(), &[]);
    assert_eq!(gateway.status(&provider.token("alice", "", "")), 200);
    // Issued with k1 but not yet shown to the gateway (so not in its verified-token cache).
    let old = provider.token("bob", "", "");

    provider.restart(&[k2.clone(), k1.clone()]);
    let new = provider.token("alice", "", "");
    assert_eq!(common::oidc::jwt_header(&new)["kid"], k2.kid());
    gateway
        .allowed_within(&new, RECOVERY_DEADLINE)
        .unwrap_or_else(|e| panic!("token signed with the new key: {e}"));
    // The old key is still published: its tokens still pass.
    assert_eq!(gateway.status(&old), 200, "token signed with the old key");
}

#[test]
fn provider_down_keeps_cached_keys_and_recovers() {
    let keys = KeyDir::new();
    let (k1, k3) = (keys.rsa("k1"), keys.rsa("k3"));
    let mut provider = Provider::start(std::slice::from_ref(&k1), Options::default());
    let mut gateway = Gateway::start(provider.issuer(), &[]);
    assert_eq!(gateway.status(&provider.token("alice", "", "")), 200);
    let cached_key_token = provider.token("bob", "", "");
    // A token with a key the gateway has never seen, then the provider goes away.
    provider.restart(&[k3.clone(), k1.clone()]);
    let new_key_token = provider.token("alice", "", "");
    provider.stop();

    assert_eq!(
        gateway.status(&cached_key_token),
        200,
        "a token signed with a key fetched earlier still passes"
    );
    let started = Instant::now();
    let response = gateway.check(&new_key_token, "GET", MODELS);
    expect_401(&response, "new kid while the provider is down");
    assert!(
        started.elapsed() < PROMPT,
        "refused promptly, took {:?}",
        started.elapsed()
    );

    provider.restart(&[k3, k1]);
    gateway
        .allowed_within(&new_key_token, RECOVERY_DEADLINE)
        .unwrap_or_else(|e| panic!("after the provider returned: {e}"));
}

/// The provider hangs (accepts, answers nothing) instead of being down: a token with a cached
/// key is still answered at once, one with a key never seen is refused within the bounded
/// refetch wait, and all recovers when the provider answers again.
#[test]
fn hung_provider_keeps_cached_keys_and_bounds_the_wait() {
    let keys = KeyDir::new();
    let (k1, k3) = (keys.rsa("k1"), keys.rsa("k3"));
    let mut provider = Provider::start(std::slice::from_ref(&k1), Options::default());
    let mut gateway = Gateway::start(provider.issuer(), &[]);
    assert_eq!(gateway.status(&provider.token("alice", "", "")), 200);
    let cached_key_token = provider.token("bob", "", "");
    provider.restart(&[k3.clone(), k1.clone()]);
    let new_key_token = provider.token("alice", "", "");
    // What a cached-key Check costs on this machine right now, before anything hangs.
    let started = Instant::now();
    assert_eq!(gateway.status(&cached_key_token), 200);
    let baseline = started.elapsed();
    provider.freeze(true);

    // Held behind the hanging provider, a Check would wait out the refetch (1 s) or the
    // fetch's own limit (5 s): well over its baseline.
    let unheld = baseline + Duration::from_millis(900);
    let started = Instant::now();
    assert_eq!(
        gateway.status(&cached_key_token),
        200,
        "cached key, provider hung"
    );
    assert!(
        started.elapsed() < unheld,
        "took {:?} (baseline {baseline:?})",
        started.elapsed()
    );
    let started = Instant::now();
    let response = gateway.check(&new_key_token, "GET", MODELS);
    expect_401(&response, "new kid while the provider hangs");
    assert!(
        started.elapsed() < PROMPT,
        "refused within the bounded wait, took {:?}",
        started.elapsed()
    );
    // Other Checks are not held up behind the hanging refetch.
    let started = Instant::now();
    assert_eq!(gateway.status(&cached_key_token), 200);
    assert!(
        started.elapsed() < unheld,
        "took {:?} (baseline {baseline:?})",
        started.elapsed()
    );

    provider.freeze(false);
    gateway
        .allowed_within(&new_key_token, RECOVERY_DEADLINE)
        .unwrap_or_else(|e| panic!("after the provider answered again: {e}"));
}

#[test]
fn additional_issuers_are_trusted_and_others_are_not() {
    let (a_keys, b_keys, c_keys) = (KeyDir::new(), KeyDir::new(), KeyDir::new());
    let a = Provider::start(&[a_keys.rsa("a1")], Options::default());
    let b = Provider::start(&[b_keys.rsa("b1")], Options::default());
    let c = Provider::start(&[c_keys.rsa("c1")], Options::default());
    let mut gateway = Gateway::start(a.issuer(), &[b.issuer()]);
    assert_eq!(
        gateway.status(&a.token("alice", "", "")),
        200,
        "main issuer"
    );
    assert_eq!(
        gateway.status(&b.token("alice", "", "")),
        200,
        "additional issuer"
    );
    assert_eq!(
        gateway.status(&c.token("alice", "", "")),
        401,
        "not configured"
    );
    // The additional issuer's key does not vouch for the main issuer's name, or vice versa.
    let b_token = b.token("bob", "", "");
    let mut claims = common::oidc::jwt_claims(&b_token);
    claims["iss"] = a.issuer().into();
    use base64::Engine as _;
    let parts: Vec<&str> = b_token.split('.').collect();
    let swapped = format!(
        "{}.{}.{}",
        parts[0],
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(claims.to_string()),
        parts[2]
    );
    assert_eq!(gateway.status(&swapped), 401, "issuer swapped");
}

/// `GET /apis/auth/discovery` on the HTTP port, as NMP clients read it.
fn discovery(config: &Config) -> serde_json::Value {
    use std::io::{Read, Write};
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let state = std::sync::Arc::new(State::new(config, None));
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let (_stop, stopped) = watch::channel(false);
    runtime.spawn(nmp_authz::server::http::serve(
        listener,
        state,
        stopped,
        nmp_authz::server::http::Face::Main,
    ));
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .write_all(b"GET /apis/auth/discovery HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let body = response.split_once("\r\n\r\n").unwrap().1;
    serde_json::from_str(body).unwrap()
}

#[test]
fn discovery_says_whether_auth_and_oidc_are_on() {
    let mut config = Config::default();
    assert_eq!(
        discovery(&config),
        serde_json::json!({"auth_enabled": true, "oidc": null})
    );
    config.auth.oidc.enabled = true;
    config.auth.oidc.issuer = Some("https://idp.example.com/realms/nmp".into());
    config.auth.oidc.client_id = "nmp-cli".into();
    config.auth.oidc.audience = Some("nmp-api".into());
    let document = discovery(&config);
    assert_eq!(document["auth_enabled"], true);
    assert_eq!(
        document["oidc"]["issuer"],
        "https://idp.example.com/realms/nmp"
    );
    assert_eq!(document["oidc"]["client_id"], "nmp-cli");
    assert_eq!(document["oidc"]["audience"], "nmp-api");
    config.auth.enabled = false;
    assert_eq!(discovery(&config)["auth_enabled"], false);
}
