//! The real NeMo Platform behind the companion gateway: NMP 0.3.0's own auth, entities and
//! models services (`nmp services run`, auth on, from `.venv-nmp`, unmodified) behind Envoy
//! with `envoy/quickstart.yaml`, with nmp-authz as both the gateway's ext_authz server and the
//! services' PDP (over its Unix socket), and NMP's auth service as nmp-authz's policy source
//! (its OPA bundle, fetched as `service:nmp-authz`). Driven by NMP's own CLI as an admin and as
//! a user whose membership is changed through NMP's API mid-run. Tokens come from NMP's CLI
//! (`nmp auth login --unsigned-token`), never from this project.

mod common;

use std::time::{Duration, Instant};

use common::gateway::{
    Envoy, Loopback, NmpAuthz, QUICKSTART, get, poll_until, render, request, template,
};
use common::nmp::{Cli, Platform};
use common::process::free_port;

const TEAM: &str = "team-e2e";

#[test]
fn nmp_behind_the_gateway_with_nmp_authz_as_its_pdp() {
    let dir = tempfile::tempdir().expect("temp dir");
    let socket = dir.path().join("pdp.sock");
    let nmp_port = free_port();
    let authz = NmpAuthz::start(&format!(
        "auth:
  allow_unsigned_jwt: true        # NMP's CLI makes unsigned tokens in this test
  bootstrap_bindings: false       # NMP seeds its own
  policy_data_refresh_interval: 1
policy:
  sources:
    - bundle_url: http://127.0.0.1:{nmp_port}/apis/auth/v2/iam/opa-bundle.tar.gz
      principal_id: service:nmp-authz
  bootstrap:
    - builtin: true
pdp:
  unix_socket: {}
",
        socket.display()
    ));
    let started = Instant::now();
    let platform = Platform::start(
        "auth,entities,models",
        nmp_port,
        "auth:
  enabled: true
  admin_email: admin@example.com
  allow_unsigned_jwt: true
  on_invalid_plugin: deny_route
",
        &format!("unix://{}", socket.display()),
    );
    eprintln!(
        "NMP ready in {:?} (nmp-authz bootstrapping its PDP meanwhile)",
        started.elapsed()
    );
    let seeded = platform.seed();
    let envoy = Envoy::start(&render(
        &template(QUICKSTART),
        &Loopback {
            authz_grpc: authz.grpc,
            authz_http: authz.http,
            api: platform.addr,
            idp: None,
        },
    ));
    let gateway = format!("http://{}", envoy.addr());
    let admin = Cli::login(&gateway, "admin@example.com");
    let bob = Cli::login(&gateway, "bob@example.com");
    let admin_token = format!("Bearer {}", admin.token());
    let bob_token = format!("Bearer {}", bob.token());
    // The team's models, through the gateway.
    let team_models = |method: &str, headers: &[(&str, &str)]| {
        let path = format!("/apis/models/v2/workspaces/{TEAM}/models");
        request(envoy.addr(), method, &path, headers)
    };

    // The bundle carries NMP's seeded bindings: the admin is PlatformAdmin at the gateway.
    let (_, took) = poll_until(Duration::from_secs(30), || {
        let r = get(
            envoy.addr(),
            "/apis/auth/v2/iam/opa-bundle.tar.gz",
            &[("authorization", &admin_token)],
        );
        (r.status == 200).then_some(()).ok_or(format!("{r:?}"))
    })
    .unwrap_or_else(|e| panic!("{e}\nseed:\n{seeded}\nnmp-authz:\n{}", authz.log()));
    eprintln!("the seeded admin reached nmp-authz {took:?} after seeding");

    // No identity: refused at the gateway with NMP's shape.
    let anonymous = get(
        envoy.addr(),
        "/apis/models/v2/workspaces/default/models",
        &[],
    );
    assert_eq!(anonymous.status, 401, "{anonymous:?}");
    assert!(anonymous.json()["detail"].is_string());

    // The admin creates a workspace through the gateway; NMP's service (asking nmp-authz)
    // records who did it, from the headers the gateway set.
    let created = admin.run(&["workspaces", "create", TEAM]);
    assert!(created.success, "{}", created.output);
    let got = admin.run(&["workspaces", "get", TEAM]);
    assert!(
        got.output.contains("\"created_by\": \"admin@example.com\""),
        "{}",
        got.output
    );

    // Bob is nobody in the workspace: the CLI's request is refused at the gateway.
    let refused = bob.run(&["models", "list", "--workspace", TEAM]);
    assert!(
        !refused.success && refused.output.contains("403"),
        "{}",
        refused.output
    );
    // Claiming to be the admin does not help: the gateway strips x-nmp-* first.
    let spoofed = team_models(
        "GET",
        &[
            ("authorization", &bob_token),
            ("x-nmp-principal-id", "admin@example.com"),
        ],
    );
    assert_eq!(spoofed.status, 403, "{spoofed:?}");

    // The admin makes bob a Viewer through NMP's API. NMP's own wait_role_propagation polls
    // its PDP, nmp-authz, so the call returns once nmp-authz decides on the new binding...
    let added = admin.run(&[
        "workspaces",
        "members",
        "create",
        "--workspace",
        TEAM,
        "--principal",
        "bob@example.com",
        "--roles",
        "Viewer",
    ]);
    assert!(added.success, "{}", added.output);
    eprintln!(
        "members create returned after {:.1} s (NMP waited for nmp-authz)",
        added.seconds
    );
    // ...and bob's very next request through the gateway is allowed: no window.
    let listed = team_models("GET", &[("authorization", &bob_token)]);
    assert_eq!(listed.status, 200, "{listed:?}");
    let cli_listed = bob.run(&["models", "list", "--workspace", TEAM]);
    assert!(cli_listed.success, "{}", cli_listed.output);
    // A Viewer may not create: refused at the gateway.
    let create = team_models(
        "POST",
        &[
            ("authorization", &bob_token),
            ("content-type", "application/json"),
        ],
    );
    assert_eq!(create.status, 403, "{create:?}");

    // Removed again: the same in reverse.
    let removed = admin.run(&[
        "workspaces",
        "members",
        "delete",
        "--workspace",
        TEAM,
        "bob@example.com",
    ]);
    assert!(removed.success, "{}", removed.output);
    let after = team_models("GET", &[("authorization", &bob_token)]);
    assert_eq!(after.status, 403, "{after:?}");

    // Without NMP's wait, how long a binding takes to reach the gateway: NMP re-publishes its
    // bundle within bundle_cache_seconds (5) and nmp-authz polls every second.
    let carol = format!(
        "Bearer {}",
        Cli::login(&gateway, "carol@example.com").token()
    );
    let changed = Instant::now();
    let added = common::gateway::request_with_body(
        envoy.addr(),
        "POST",
        &format!("/apis/entities/v2/workspaces/{TEAM}/members?wait_role_propagation=false"),
        &[
            ("authorization", &admin_token),
            ("content-type", "application/json"),
        ],
        r#"{"principal": "carol@example.com", "roles": ["Viewer"]}"#,
    );
    assert_eq!(added.status, 201, "{added:?}");
    poll_until(Duration::from_secs(15), || {
        let r = team_models("GET", &[("authorization", &carol)]);
        (r.status == 200).then_some(()).ok_or(format!("{r:?}"))
    })
    .expect("carol's binding reaches the gateway");
    let propagated = changed.elapsed();
    eprintln!("a binding made without waiting reached the gateway after {propagated:?}");
    assert!(
        propagated < Duration::from_secs(10),
        "beyond the stated bound: {propagated:?}"
    );
}
