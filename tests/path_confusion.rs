//! Path confusion (README "Request paths"): for every request nmp-authz allows, the workspace
//! and endpoint it authorized are the ones the upstream acts on. Upstreams percent-decode the
//! path once before routing; nmp-authz decides on that decoded path and refuses with 400 a path
//! that upstreams could read two ways. Shown on the Check service alone (what any gateway may
//! send) and behind the companion quickstart Envoy config.

mod common;

use common::gateway::{NmpAuthz, Upstream, quickstart_envoy, request};
use common::{TestServer, check_request, expect_denied, expect_ok, metadata, who};
use nmp_authz::server::State;

const MODELS: &str = "/apis/models/v2/workspaces/default/models";

/// The quickstart's policy: the built-in catalog and the bootstrap bindings (`*` is Editor in
/// `default` and Viewer in `system`).
fn quickstart_state() -> State {
    let config = nmp_authz::config::load_from_process_env(None).expect("quickstart config");
    let policy = nmp_authz::sources::load(&config).expect("built-in catalog");
    State::new(&config, Some(policy))
}

/// What a Check answers, and for a decision the reason and workspace it reports.
#[derive(Debug, PartialEq, Eq)]
enum Expect {
    Allowed {
        workspace: &'static str,
    },
    Denied {
        status: i32,
        reason: &'static str,
    },
    /// 400 before any decision: the path or method is ambiguous.
    Refused,
}
use Expect::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_decides_on_the_path_the_upstream_reads_or_refuses_it() {
    // Loading sources runs a runtime of its own: off this one.
    let state = tokio::task::spawn_blocking(quickstart_state)
        .await
        .expect("quickstart state");
    let mut server = TestServer::start(state).await;
    let alice = who("alice@example.com");
    let cases: &[(&str, &str, Expect)] = &[
        // Plain paths, for reference.
        (
            "POST",
            MODELS,
            Allowed {
                workspace: "default",
            },
        ),
        (
            "POST",
            "/apis/models/v2/workspaces/system/models",
            Denied {
                status: 403,
                reason: "not_permitted",
            },
        ),
        // Percent-encoding is decided decoded, as the upstream routes it: an encoded letter
        // neither hides a workspace nor dodges a deny rule.
        (
            "POST",
            "/apis/models/v2/workspaces/defaul%74/models",
            Allowed {
                workspace: "default",
            },
        ),
        (
            "POST",
            "/apis/models/v2/workspaces/syste%6D/models",
            Denied {
                status: 403,
                reason: "not_permitted",
            },
        ),
        (
            "GET",
            "/apis/secrets/v2/workspaces/default/secrets/db/%61ccess",
            Denied {
                status: 403,
                reason: "secret_access_not_service",
            },
        ),
        (
            "GET",
            "/apis/%65ntities/v2/workspaces/default/things/x/y",
            Denied {
                status: 403,
                reason: "nested_entities_internal",
            },
        ),
        // The query is not part of the path, whatever it holds.
        (
            "GET",
            "/apis/models/v2/workspaces/default/models?next=..%2F..%2Fsystem",
            Allowed {
                workspace: "default",
            },
        ),
        // Dot segments, encoded or not, and anything that splits or decodes again.
        (
            "POST",
            "/apis/models/v2/workspaces/default/../system/models",
            Refused,
        ),
        (
            "POST",
            "/apis/models/v2/workspaces/default/%2e%2e/system/models",
            Refused,
        ),
        (
            "POST",
            "/apis/models/v2/workspaces/default/%2E%2E/system/models",
            Refused,
        ),
        (
            "POST",
            "/apis/models/v2/workspaces/./default/models",
            Refused,
        ),
        (
            "POST",
            "/apis/models/v2/workspaces/system%2F..%2Fdefault/models",
            Refused,
        ),
        (
            "POST",
            "/apis/models/v2/workspaces/default%2fmodels",
            Refused,
        ),
        (
            "POST",
            "/apis/models/v2/workspaces/default%5Cmodels",
            Refused,
        ),
        (
            "POST",
            "/apis/models/v2/workspaces/default%3F/models",
            Refused,
        ),
        (
            "POST",
            "/apis/models/v2/workspaces/defaul%2574/models",
            Refused,
        ),
        (
            "POST",
            "/apis/models/v2/workspaces/default%zz/models",
            Refused,
        ),
        // Repeated slashes, `;` parameters, control characters.
        (
            "POST",
            "//apis/models/v2/workspaces/default/models",
            Refused,
        ),
        (
            "POST",
            "/apis/models/v2//workspaces/default/models",
            Refused,
        ),
        (
            "POST",
            "/apis/models/v2/workspaces/default;v=1/models",
            Refused,
        ),
        (
            "POST",
            "/apis/models/v2/workspaces/default%3Bv=1/models",
            Refused,
        ),
        (
            "POST",
            "/apis/models/v2/workspaces/default%00/models",
            Refused,
        ),
        (
            "POST",
            "/apis/models/v2/workspaces/default%0A/models",
            Refused,
        ),
        // Methods are case-sensitive.
        ("post", MODELS, Refused),
        ("Get", MODELS, Refused),
        // A trailing slash or another case names no endpoint: denied, not guessed at.
        (
            "POST",
            "/apis/models/v2/workspaces/default/models/",
            Denied {
                status: 403,
                reason: "not_permitted",
            },
        ),
        (
            "POST",
            "/APIS/models/v2/workspaces/default/models",
            Denied {
                status: 403,
                reason: "not_permitted",
            },
        ),
    ];
    let mut failures = Vec::new();
    for (method, path, expect) in cases {
        let response = server
            .check(check_request(method, path, Some(&alice), &[]))
            .await;
        let context = format!("{method} {path}");
        let outcome = match expect {
            Allowed { workspace } => expect_ok(&response, Some("alice@example.com"), &context)
                .map(drop)
                .and_then(|()| {
                    let got = metadata(&response, "workspace");
                    (got == Some(*workspace))
                        .then_some(())
                        .ok_or(format!("{context}: authorized workspace {got:?}"))
                }),
            Denied { status, reason } => expect_denied(&response, *status, &context)
                .map(drop)
                .and_then(|()| {
                    let got = metadata(&response, "reason");
                    (got == Some(*reason))
                        .then_some(())
                        .ok_or(format!("{context}: reason {got:?}, expected {reason}"))
                }),
            Refused => expect_denied(&response, 400, &context)
                .map(drop)
                .and_then(|()| {
                    metadata(&response, "reason")
                        .is_none()
                        .then_some(())
                        .ok_or(format!("{context}: decided, though ambiguous"))
                }),
        };
        if let Err(failure) = outcome {
            failures.push(failure);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The path as an upstream framework routes it: percent-decoded once.
fn upstream_reading(path: &str) -> String {
    let base = path.split('?').next().unwrap_or_default().as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < base.len() {
        let hex = base
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
            Some(byte) if base[i] == b'%' => {
                out.push(byte);
                i += 3;
            }
            _ => {
                out.push(base[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Behind the companion quickstart gateway, alice (Editor in `default`, Viewer in `system`)
/// tries to write in `system` through every spelling: nothing that reaches the upstream writes
/// anywhere but `default`, read as the upstream reads it.
#[test]
fn behind_envoy_every_forwarded_write_lands_in_the_authorized_workspace() {
    let upstream = Upstream::start();
    let authz = NmpAuthz::quickstart();
    let envoy = quickstart_envoy(&authz, &upstream);
    let token = common::gateway::unsigned_token(
        "alice@example.com",
        &[("email", "alice@example.com".into())],
    );
    let authorization = format!("Bearer {token}");
    let headers = [("Authorization", authorization.as_str())];
    let at_system = [
        "/apis/models/v2/workspaces/system/models",
        "/apis/models/v2/workspaces/default/../system/models",
        "/apis/models/v2/workspaces/default/%2e%2e/system/models",
        "/apis/models/v2/workspaces/default/.%2E/system/models",
        "/apis/models/v2/workspaces/syste%6D/models",
        "/apis/models/v2/workspaces/syst%65m/models?w=default",
        "/apis/models/v2/workspaces//system/models",
        "/apis/models/v2/workspaces/default%2F..%2Fsystem/models",
        "/apis/models/v2/workspaces/default%5C..%5Csystem/models",
        "/apis/models/v2/workspaces/system;w=default/models",
        "/apis/models/v2/workspaces/system%3Bw=default/models",
        "/apis/models/v2/workspaces/default/%252e%252e/system/models",
        "/apis/models/v2/workspaces/default/./../system/models",
    ];
    let at_default = [
        MODELS,
        "/apis/models/v2/workspaces/defaul%74/models",
        "/apis/models/v2/workspaces/system/../default/models",
        "/apis/models/v2/./workspaces/default/models",
    ];
    let mut forwarded_to_default = 0;
    for path in at_system.iter().chain(&at_default) {
        let before = upstream.requests().len();
        let response = request(envoy.addr(), "POST", path, &headers);
        let received = upstream.requests();
        let new = &received[before..];
        if !(200..300).contains(&response.status) {
            assert!(
                new.is_empty(),
                "{path}: denied ({}) yet forwarded: {new:?}",
                response.status
            );
            continue;
        }
        assert_eq!(new.len(), 1, "{path}: {new:?}");
        let reading = upstream_reading(&new[0].path);
        let segments: Vec<&str> = reading.split('/').collect();
        assert!(
            !segments
                .iter()
                .skip(1)
                .any(|s| s.is_empty() || *s == "." || *s == ".."),
            "{path}: the upstream got {:?}, which it could resolve further",
            new[0].path
        );
        assert_eq!(
            reading, MODELS,
            "{path}: allowed, and the upstream read it as {reading:?}"
        );
        forwarded_to_default += 1;
    }
    // Spellings of `default` that the gateway or nmp-authz make plain are still served; at
    // least the plain path and one encoded or dotted spelling.
    assert!(
        forwarded_to_default >= 2,
        "{forwarded_to_default}\n{}",
        authz.log()
    );
    let at_system_forwarded = upstream
        .requests()
        .iter()
        .filter(|r| upstream_reading(&r.path) != MODELS)
        .count();
    assert_eq!(at_system_forwarded, 0, "{:?}", upstream.requests());
}
