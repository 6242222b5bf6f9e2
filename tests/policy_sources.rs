//! Policy sources: NMP OPA bundles served over local HTTP with ETags, files, and what happens
//! when a source breaks (last good data kept, staleness).

mod common;

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use common::bundle::{BundleServer, Serve, bundle, document};

use nmp_authz::config::{Config, SourceConfig};
use nmp_authz::policy::{CompiledPolicy, Principal};
use nmp_authz::sources::{Refresh, Sources};

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
