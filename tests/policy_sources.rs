//! Policy sources: NMP OPA bundles served over local HTTP with ETags, files, and what happens
//! when a source breaks (last good data kept, staleness).

mod common;

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use common::bundle::{BundleServer, Serve, bundle, document};

use nmp_authz::config::{Config, SourceConfig};
use nmp_authz::sources::{Refresh, Sources};
use nmp_authz_core::policy::{CompiledPolicy, Principal};

use common::bundle::THINGS;

fn config(sources: Vec<SourceConfig>) -> Config {
    let mut config = Config::default();
    config.auth.bootstrap_bindings = false;
    config.policy.sources = sources;
    config
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn compiled(refresh: Refresh) -> CompiledPolicy {
    match refresh {
        Refresh::Compiled(policy, _) => *policy,
        other => panic!("expected a compiled policy, got {other:?}"),
    }
}

fn alice_may_read(policy: &CompiledPolicy) -> bool {
    policy
        .allow(Some(&Principal::with_id("alice")), "GET", THINGS)
        .allowed
}

/// A bundle server with alice's bundle (revision r1) and the sources reading it.
fn served_bundle() -> (BundleServer, Sources) {
    let server = BundleServer::start(Serve::Bundle {
        body: bundle(&document("alice"), "r1"),
        etag: "\"r1\"".into(),
    });
    let sources = Sources::new(
        &config(vec![SourceConfig::BundleUrl {
            principal_id: None,
            bearer_token_file: None,
            bundle_url: server.url.clone(),
        }]),
        Arc::default(),
    );
    (server, sources)
}

/// A policy file granting alice, and the sources reading it (keep the directory alive).
fn file_source() -> (tempfile::TempDir, std::path::PathBuf, Sources) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policy.json");
    std::fs::write(&file, document("alice")).unwrap();
    let sources = Sources::new(
        &config(vec![SourceConfig::File { file: file.clone() }]),
        Arc::default(),
    );
    (dir, file, sources)
}

fn last_error(sources: &Sources) -> Option<String> {
    sources.status()[0].last_error.clone()
}

#[test]
fn a_bundle_change_flips_the_decision_and_304_costs_nothing() {
    let (server, mut sources) = served_bundle();
    let rt = runtime();
    let v1 = compiled(rt.block_on(sources.refresh()));
    assert!(alice_may_read(&v1));

    // Unchanged bundle: the server answers 304 to our If-None-Match, nothing is parsed.
    assert!(matches!(rt.block_on(sources.refresh()), Refresh::Unchanged));
    assert_eq!(
        server.seen_if_none_match.lock().unwrap().last().cloned(),
        Some(Some("\"r1\"".to_string()))
    );

    // A binding removed in a new revision: the next refresh compiles it and alice loses access.
    server.set(Serve::Bundle {
        body: bundle(&document(""), "r2"),
        etag: "\"r2\"".into(),
    });
    let v2 = compiled(rt.block_on(sources.refresh()));
    assert!(!alice_may_read(&v2));
    assert_ne!(v1.revision(), v2.revision());
    assert_eq!(last_error(&sources), None);
}

#[test]
fn broken_bundles_keep_the_last_good_policy() {
    let good = bundle(&document("alice"), "r1");
    let (server, mut sources) = served_bundle();
    let rt = runtime();
    let policy = compiled(rt.block_on(sources.refresh()));
    assert!(alice_may_read(&policy));

    let truncated = good[..good.len() / 2].to_vec();
    let no_data = {
        let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            flate2::Compression::default(),
        ));
        let mut header = tar::Header::new_gnu();
        header.set_size(2);
        header.set_cksum();
        tar.append_data(&mut header, ".manifest", &b"{}"[..])
            .unwrap();
        tar.into_inner().unwrap().finish().unwrap()
    };
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("garbage", b"this is not a bundle".to_vec(), "gzip"),
        ("truncated gzip", truncated, "data.json"),
        ("oversized", vec![0u8; 33 * 1024 * 1024], "reading the body"),
        ("no data.json", no_data, "no data.json"),
        (
            "invalid policy",
            bundle(r#"{"authz": {"roles": {"R": {"permisions": []}}}}"#, "bad"),
            "permisions",
        ),
    ];
    for (name, body, expected) in cases {
        server.set(Serve::Raw(body));
        let outcome = rt.block_on(sources.refresh());
        assert!(
            matches!(outcome, Refresh::Unchanged),
            "{name}: no new policy, got {outcome:?}"
        );
        let error = last_error(&sources).unwrap_or_else(|| panic!("{name}: error recorded"));
        assert!(
            error.contains(expected),
            "{name}: error should mention {expected:?}: {error}"
        );
    }
    // The good bundle again: the source is healthy; nothing changed, so nothing recompiles.
    server.set(Serve::Bundle {
        body: good,
        etag: "\"r1\"".into(),
    });
    assert!(matches!(rt.block_on(sources.refresh()), Refresh::Unchanged));
    assert_eq!(last_error(&sources), None);
}

#[test]
fn staleness_follows_a_failing_source_and_recovers() {
    let (server, mut sources) = served_bundle();
    let rt = runtime();
    compiled(rt.block_on(sources.refresh()));
    assert!(!sources.stale(Duration::ZERO), "healthy is never stale");

    server.set(Serve::Raw(b"garbage".to_vec()));
    let _ = rt.block_on(sources.refresh());
    // Failing: stale once the last good read is older than the allowance.
    assert!(sources.stale(Duration::ZERO));
    assert!(!sources.stale(Duration::from_secs(3600)));

    server.set(Serve::Bundle {
        body: bundle(&document("alice"), "r1"),
        etag: "\"r1\"".into(),
    });
    let _ = rt.block_on(sources.refresh());
    assert!(!sources.stale(Duration::ZERO), "recovered by itself");
}

#[test]
fn an_unreachable_bundle_never_loaded_is_stale_and_loads_nothing() {
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/bundle.tar.gz", closed.local_addr().unwrap());
    drop(closed);
    let rt = runtime();
    let mut sources = Sources::new(
        &config(vec![SourceConfig::BundleUrl {
            bundle_url: url,
            principal_id: None,
            bearer_token_file: None,
        }]),
        Arc::default(),
    );
    assert!(matches!(rt.block_on(sources.refresh()), Refresh::Unchanged));
    assert!(sources.stale(Duration::from_secs(3600)));
    assert!(last_error(&sources).is_some());
}

#[test]
fn files_are_reparsed_only_when_they_change() {
    let (dir, file, mut sources) = file_source();
    let rt = runtime();
    assert!(alice_may_read(&compiled(rt.block_on(sources.refresh()))));
    assert!(matches!(rt.block_on(sources.refresh()), Refresh::Unchanged));

    // A Kubernetes-style swap: write elsewhere, rename over the file.
    let next = dir.path().join("policy.json.new");
    std::fs::write(&next, document("")).unwrap();
    std::fs::rename(&next, &file).unwrap();
    assert!(!alice_may_read(&compiled(rt.block_on(sources.refresh()))));

    // A broken edit keeps the last good document.
    std::fs::write(&file, "{not json").unwrap();
    assert!(matches!(rt.block_on(sources.refresh()), Refresh::Unchanged));
    assert!(last_error(&sources).is_some_and(|e| e.contains("invalid JSON")));
}

#[test]
fn documents_that_do_not_compile_count_toward_staleness() {
    let (_dir, file, mut sources) = file_source();
    let rt = runtime();
    compiled(rt.block_on(sources.refresh()));
    // Valid JSON, but a binding to a role that does not exist.
    std::fs::write(
        &file,
        document("alice").replace("[\"Viewer\"]", "[\"Ghost\"]"),
    )
    .unwrap();
    match rt.block_on(sources.refresh()) {
        Refresh::Failed(e) => assert!(e.to_string().contains("Ghost"), "{e}"),
        other => panic!("expected a compile failure, got {other:?}"),
    }
    // Reading the same broken file again is no recovery.
    assert!(matches!(rt.block_on(sources.refresh()), Refresh::Unchanged));
    assert!(sources.compile_error().is_some());
    assert!(sources.stale(Duration::ZERO));
    assert!(!sources.stale(Duration::from_secs(3600)));
    std::fs::write(&file, document("alice")).unwrap();
    compiled(rt.block_on(sources.refresh()));
    assert!(sources.compile_error().is_none());
    assert!(!sources.stale(Duration::ZERO));
}

/// NMP's own bundle layout: the document under `authz`, `envoy` and `common` (copies), and
/// plugin routes whose placeholders carry FastAPI converters (`{trailing_uri:path}`).
#[test]
fn nmps_bundle_roots_and_converter_placeholders_load() {
    let doc: serde_json::Value = serde_json::from_str(&document("alice")).unwrap();
    let mut authz = doc["authz"].clone();
    authz["endpoints"]["/apis/x/v2/workspaces/{workspace}/agents/{name}/-/{trailing_uri:path}"] =
        serde_json::json!({"post": {"permissions": ["things.read"]}});
    let nmp_layout = serde_json::json!({"authz": authz, "envoy": authz, "common": authz});
    let parsed = nmp_authz::sources::parse_bundle(&bundle(&nmp_layout.to_string(), "r1"))
        .expect("NMP's layout loads");
    let defaults = nmp_authz_core::policy::BindingDefaults {
        bootstrap_bindings: false,
        ..Default::default()
    };
    let policy = CompiledPolicy::build_layers(&[&parsed], &defaults, "r1").unwrap();
    let alice = Principal::with_id("alice");
    let tail = "/apis/x/v2/workspaces/ws1/agents/a1/-/v1/chat/completions";
    assert!(policy.allow(Some(&alice), "POST", tail).allowed);
    assert!(policy.allow(Some(&alice), "GET", THINGS).allowed);
    // Any other root is not NMP's: refused, naming it.
    let odd = serde_json::json!({"authz": doc["authz"], "extra": {}});
    let err = nmp_authz::sources::parse_bundle(&bundle(&odd.to_string(), "r1")).unwrap_err();
    assert!(err.contains("extra"), "{err}");
}

/// A bundle request says who it is: NMP's service-principal header, or a bearer token read
/// from a file on every request (a rotated token is used at once).
#[test]
fn bundle_requests_carry_their_credential() {
    let runtime = runtime();
    let server = BundleServer::start(Serve::Bundle {
        body: bundle(&document("alice"), "r1"),
        etag: "\"r1\"".into(),
    });
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "first-token\n").unwrap();
    let mut by_header = Sources::new(
        &config(vec![SourceConfig::BundleUrl {
            bundle_url: server.url.clone(),
            principal_id: Some("service:nmp-authz".into()),
            bearer_token_file: None,
        }]),
        Arc::default(),
    );
    let mut by_token = Sources::new(
        &config(vec![SourceConfig::BundleUrl {
            bundle_url: server.url.clone(),
            principal_id: None,
            bearer_token_file: Some(token.clone()),
        }]),
        Arc::default(),
    );
    runtime.block_on(by_header.refresh());
    runtime.block_on(by_token.refresh());
    std::fs::write(&token, "second-token").unwrap();
    runtime.block_on(by_token.refresh());
    let seen = server.seen_headers.lock().unwrap().clone();
    let header = |i: usize, name: &str| {
        seen[i]
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(
        header(0, "x-nmp-principal-id").as_deref(),
        Some("service:nmp-authz")
    );
    assert_eq!(header(0, "authorization"), None);
    assert_eq!(
        header(1, "authorization").as_deref(),
        Some("Bearer first-token")
    );
    assert_eq!(
        header(2, "authorization").as_deref(),
        Some("Bearer second-token")
    );
    assert_eq!(header(1, "x-nmp-principal-id"), None);
    // An unreadable token file is a failed read, not a request without a credential.
    std::fs::remove_file(&token).unwrap();
    runtime.block_on(by_token.refresh());
    assert_eq!(server.seen_headers.lock().unwrap().len(), 3);
    let status = by_token.status();
    assert!(
        status[0]
            .last_error
            .as_deref()
            .unwrap_or("")
            .contains("bearer_token_file"),
        "{status:?}"
    );
}

/// `policy.bootstrap` stands in while the bundle has never loaded (Checks stay 503: the data
/// is stale), and is no part of the policy once it has.
#[test]
fn bootstrap_sources_stand_in_until_the_bundle_loads() {
    let runtime = runtime();
    let server = BundleServer::start(Serve::Raw(b"not yet".to_vec()));
    let mut config = config(vec![SourceConfig::BundleUrl {
        bundle_url: server.url.clone(),
        principal_id: None,
        bearer_token_file: None,
    }]);
    config.policy.bootstrap = vec![SourceConfig::Builtin { builtin: true }];
    let mut sources = Sources::new(&config, Arc::default());
    let standing_in = compiled(runtime.block_on(sources.refresh()));
    assert!(sources.bootstrapping());
    assert!(
        sources.stale(Duration::from_secs(300)),
        "Checks must wait for the bundle"
    );
    assert!(standing_in.endpoint_count() > 90, "the built-in catalog");
    assert!(!alice_may_read(&standing_in));
    server.set(Serve::Bundle {
        body: bundle(&document("alice"), "r1"),
        etag: "\"r1\"".into(),
    });
    let loaded = compiled(runtime.block_on(sources.refresh()));
    assert!(!sources.bootstrapping());
    assert!(!sources.stale(Duration::from_secs(300)));
    assert!(alice_may_read(&loaded));
    assert_eq!(
        loaded.endpoint_count(),
        1,
        "the bundle alone, no built-in routes"
    );
}
