//! One Check in-process, and the identity work inside it. `cargo bench --bench check`; see
//! BENCHMARKS.md.
//!
//! - `check/*`: a CheckRequest decoded from its wire bytes (as the gRPC face reads it: the
//!   fields it needs, maps as lists of entries), decided by the quickstart server's handler
//!   (built-in catalog, bootstrap bindings) and the CheckResponse encoded, against envoy-types'
//!   whole decode and an encode around a do-nothing answer: what nmp-authz adds or saves per
//!   Check on top of the gRPC plumbing, without the network or the scheduler in the figure.
//! - `identity/*`: the principal from Envoy's jwt_authn metadata, and RS256 and ES256 bearer
//!   tokens verified from scratch and remembered (a later request with the same token).

use std::hint::black_box;
use std::sync::Arc;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{CheckRequest, CheckResponse, OkHttpResponse};
use envoy_types::pb::google::rpc::Status;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use nmp_authz::identity::signed::{IssuerKeys, TokenVerifier, usable_keys};
use nmp_authz::identity::{self, Credentials, IdentitySettings};
use nmp_authz::server::check_request::{CheckRequest as WireRequest, Struct};
use nmp_authz::server::{State, check};
use prost::Message;
use serde_json::json;

const KEYS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/keys/");
const MIX_JWT_AUTHN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/mix-jwt-authn.json");

fn quickstart_state() -> State {
    let config = nmp_authz::config::load_from_process_env(None).expect("quickstart config");
    let policy = nmp_authz::sources::load(&config).expect("built-in catalog");
    State::new(&config, Some(policy))
}

/// The mixes as wire bytes: the load tester's built-in one (unsigned bearer tokens, half
/// denied) and the production shape (claims in jwt_authn metadata, mostly allowed).
fn mixes() -> Vec<(&'static str, Vec<Bytes>)> {
    let encode = |requests: Vec<CheckRequest>| {
        requests
            .iter()
            .map(|r| Bytes::from(r.encode_to_vec()))
            .collect()
    };
    let production = nmp_authz::requests::read_mix(MIX_JWT_AUTHN.as_ref(), 3600).expect("mix");
    vec![
        (
            "built-in mix",
            encode(nmp_authz::requests::default_mix(3600)),
        ),
        ("jwt_authn metadata mix", encode(production)),
    ]
}

fn noop_response() -> CheckResponse {
    CheckResponse {
        status: Some(Status::default()),
        http_response: Some(HttpResponse::OkResponse(OkHttpResponse::default())),
        dynamic_metadata: None,
    }
}

/// The quickstart server with a dry run whose shadow policy is the same catalog: every Check
/// decided twice, the disagreements (none) counted. What a dry run costs a Check.
fn quickstart_state_with_shadow() -> State {
    let mut config = nmp_authz::config::load_from_process_env(None).expect("quickstart config");
    config.policy.shadow = Some(nmp_authz::config::ShadowConfig {
        sources: config.policy.sources.clone(),
    });
    let policy = nmp_authz::sources::load(&config).expect("built-in catalog");
    let state = State::new(&config, Some(policy));
    let shadow = nmp_authz::sources::load(&config).expect("built-in catalog");
    let metrics = state.metrics.clone();
    state
        .shadow
        .as_ref()
        .expect("configured")
        .install(shadow, &metrics);
    state
}

/// The quickstart server with traces on: every Check sampled (ratio 1, no context needed),
/// its span queued for export to a loopback port nothing listens on (the export fails off the
/// request path; what a span costs a Check is what is measured).
fn quickstart_state_with_traces(runtime: &tokio::runtime::Runtime) -> State {
    let mut config = nmp_authz::config::load_from_process_env(None).expect("quickstart config");
    config.traces.enabled = true;
    config.traces.endpoint = "http://127.0.0.1:9".into();
    let policy = nmp_authz::sources::load(&config).expect("built-in catalog");
    // The exporter is built on the runtime it sends from.
    let _inside = runtime.enter();
    State::new(&config, Some(policy))
}

fn checks(c: &mut Criterion) {
    let state = quickstart_state();
    let with_shadow = quickstart_state_with_shadow();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let with_traces = quickstart_state_with_traces(&runtime);
    let mut group = c.benchmark_group("check");
    for (name, wire) in mixes() {
        group.bench_function(format!("nmp-authz, {name}"), |b| {
            let mut i = 0;
            b.iter(|| {
                let request = WireRequest::decode(wire[i % wire.len()].clone()).unwrap();
                i += 1;
                let checked = check::check_with_metadata(&state, &request, None);
                let (response, _) = runtime.block_on(checked);
                black_box(response.encode_to_vec())
            })
        });
        group.bench_function(format!("nmp-authz with a dry run, {name}"), |b| {
            let mut i = 0;
            b.iter(|| {
                let request = WireRequest::decode(wire[i % wire.len()].clone()).unwrap();
                i += 1;
                let checked = check::check_with_metadata(&with_shadow, &request, None);
                let (response, _) = runtime.block_on(checked);
                black_box(response.encode_to_vec())
            })
        });
        group.bench_function(format!("nmp-authz with traces on, {name}"), |b| {
            let mut i = 0;
            b.iter(|| {
                let request = WireRequest::decode(wire[i % wire.len()].clone()).unwrap();
                i += 1;
                let checked = check::check_with_metadata(&with_traces, &request, None);
                let (response, _) = runtime.block_on(checked);
                black_box(response.encode_to_vec())
            })
        });
        group.bench_function(format!("do-nothing, {name}"), |b| {
            let mut i = 0;
            b.iter(|| {
                let request = CheckRequest::decode(wire[i % wire.len()].clone()).unwrap();
                i += 1;
                black_box(&request);
                let response = runtime.block_on(async { noop_response() });
                black_box(response.encode_to_vec())
            })
        });
    }
    group.finish();
}

fn identities(c: &mut Criterion) {
    let now = identity::unix_now();
    let issuer = "https://idp.example.com";
    let keyring = Arc::new(IssuerKeys::new(issuer, None));
    let jwks = std::fs::read(format!("{KEYS}jwks.json")).expect("fixture JWKS");
    keyring.replace(usable_keys(&serde_json::from_slice(&jwks).unwrap()));
    let verifier = TokenVerifier::new(vec![keyring], Some("nmp-api".into()));
    let claims = json!({"iss": issuer, "aud": "nmp-api", "sub": "alice",
        "email": "alice@example.com", "groups": ["ml-team", "ops"],
        "scope": "openid platform:read platform:write", "iat": now, "exp": now + 3600});
    let settings = IdentitySettings::default();
    let mut group = c.benchmark_group("identity");

    let metadata = Struct::from_json(json!({ "jwt_payload": claims }).as_object().unwrap());
    group.bench_function("principal from jwt_authn metadata", |b| {
        b.iter(|| {
            identity::identify(
                &settings,
                &verifier,
                &Credentials::default(),
                Some(black_box(&metadata)),
                now,
            )
            .unwrap()
        })
    });

    // The same claims signed by each algorithm DESIGN allows, with the fixture keys the JWKS
    // publishes; "verified" forgets accepted tokens first, so every call verifies afresh.
    let fixture = |name: &str| std::fs::read(format!("{KEYS}{name}")).expect("fixture key");
    let keys = [
        (
            "RS256",
            Algorithm::RS256,
            "rsa-1",
            EncodingKey::from_rsa_pem(&fixture("rsa.pem")),
        ),
        (
            "ES256",
            Algorithm::ES256,
            "ec-1",
            EncodingKey::from_ec_pem(&fixture("ec.pem")),
        ),
    ];
    // Signing the fixture tokens goes through jsonwebtoken's provider; verifying does not.
    nmp_authz::identity::signed::install_jwt_provider();
    for (name, algorithm, kid, key) in keys {
        let header = Header {
            kid: Some(kid.into()),
            ..Header::new(algorithm)
        };
        let token = jsonwebtoken::encode(&header, &claims, &key.unwrap()).unwrap();
        let authorization = format!("Bearer {token}");
        let credentials =
            Credentials::from_headers([("authorization", authorization.as_str())]).unwrap();
        group.bench_function(format!("{name} bearer, verified"), |b| {
            b.iter(|| {
                verifier.forget_verified();
                identity::identify(&settings, &verifier, black_box(&credentials), None, now)
                    .unwrap()
            })
        });
        group.bench_function(format!("{name} bearer, remembered"), |b| {
            b.iter(|| {
                identity::identify(&settings, &verifier, black_box(&credentials), None, now)
                    .unwrap()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, checks, identities);
criterion_main!(benches);
