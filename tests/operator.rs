//! The operator commands as an operator runs them: `explain`, `doctor`, `token` and
//! `members list`, on good and bad input, their output and exit codes.

use std::path::{Path, PathBuf};
use std::process::Output;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value as Json;

mod common;
use common::process::{Server, describe, nmp_authz, text};

const CLI: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/cli");
const OPERATOR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/operator");
/// README's operator examples: a hardened `config.yaml` and its `policy.yaml`.
const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples");
const EPHEMERAL: [&str; 4] = ["--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"];

fn run(args: &[&str]) -> Output {
    run_env(args, &[])
}

fn run_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    nmp_authz()
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run nmp-authz")
}

/// The CLI fixture: admin@example.com is PlatformAdmin, alice is Editor in ws1, the bootstrap
/// bindings apply, unsigned tokens are refused.
fn cli_config() -> String {
    format!("{CLI}/config.yaml")
}

fn ok(out: &Output) -> String {
    assert!(out.status.success(), "expected success\n{}", describe(out));
    text(&out.stdout)
}

/// Non-zero exit and one stderr line `nmp-authz: ...` mentioning every needle.
fn fails_one_line(out: &Output, needles: &[&str]) {
    assert!(!out.status.success(), "expected failure\n{}", describe(out));
    let stderr = text(&out.stderr);
    assert_eq!(stderr.trim_end().lines().count(), 1, "{}", describe(out));
    assert!(stderr.starts_with("nmp-authz: "), "{}", describe(out));
    for needle in needles {
        assert!(stderr.contains(needle), "{needle:?}\n{}", describe(out));
    }
}

fn json_lines(stdout: &str) -> Vec<Json> {
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

#[test]
fn every_operator_command_has_help() {
    for args in [
        &["explain", "--help"][..],
        &["check", "--help"],
        &["doctor", "--help"],
        &["token", "--help"],
        &["members", "--help"],
        &["members", "list", "--help"],
    ] {
        let help = ok(&run(args));
        assert!(help.contains("Usage"), "{args:?}\n{help}");
    }
    let help = ok(&run(&["explain", "--help"]));
    for flag in [
        "--email",
        "--groups",
        "--scope",
        "--token",
        "--requests-file",
        "--json",
    ] {
        assert!(help.contains(flag), "explain --help lacks {flag}");
    }
}

// --- explain --------------------------------------------------------------------------------

#[test]
fn explain_editor_in_default_is_allowed_by_the_wildcard_binding() {
    let config = cli_config();
    let args = [
        "explain",
        "--config",
        &config,
        "POST",
        "/apis/models/v2/workspaces/default/models",
        "--email",
        "bob@example.com",
    ];
    let out = ok(&run(&args));
    for line in [
        "decision:    ALLOW 200",
        "reason:      workspace_permission",
        "endpoint:    /apis/models/v2/workspaces/{workspace}/models",
        "workspace:   default",
        "* (wildcard) in default: Editor",
        "models.create in default for bob@example.com: granted by Editor via *",
        "deny rule:   none fired",
    ] {
        assert!(out.contains(line), "{line:?}\n{out}");
    }

    let out = ok(&run(&[&args[..], &["--json"]].concat()));
    let records = json_lines(&out);
    assert_eq!(records.len(), 1, "{out}");
    let r = &records[0];
    assert_eq!(r["status"], 200);
    assert_eq!(r["reason"], "workspace_permission");
    let e = &r["explanation"];
    assert_eq!(e["allowed"], true);
    assert_eq!(e["workspace"], "default");
    assert_eq!(e["permission_checks"][0]["permission"], "models.create");
    assert_eq!(e["permission_checks"][0]["granted_by"]["principal"], "*");
    assert_eq!(e["permission_checks"][0]["granted_by"]["role"], "Editor");
    assert_eq!(e["scope_check"]["result"], "no_platform_scopes");
}

/// Explained on the path as Check decides on it (README "Request paths"): decoded once, or
/// refused with 400 before any rule.
#[test]
fn explain_follows_the_request_path_rule() {
    let config = cli_config();
    let explain = |path: &str| {
        let args = [
            "explain",
            "--config",
            &config,
            "--json",
            "POST",
            path,
            "--email",
            "bob@example.com",
        ];
        json_lines(&ok(&run(&args))).remove(0)
    };
    let r = explain("/apis/models/v2/workspaces/defaul%74/models");
    assert_eq!(r["status"], 200, "{r}");
    assert_eq!(r["explanation"]["workspace"], "default", "{r}");
    let r = explain("/apis/models/v2/workspaces/system/../default/models");
    assert_eq!(r["status"], 400, "{r}");
    assert_eq!(r["reason"], "ambiguous_request", "{r}");
    assert!(r["explanation"].is_null(), "{r}");
}

#[test]
fn explain_viewer_post_in_system_is_403_naming_the_missing_permission() {
    let config = cli_config();
    let args = [
        "explain",
        "--config",
        &config,
        "POST",
        "/apis/models/v2/workspaces/system/models",
        "--email",
        "bob@example.com",
    ];
    let out = ok(&run(&args));
    for line in [
        "decision:    DENY 403: Permission denied: required permissions not held",
        "reason:      not_permitted",
        "* (wildcard) in system: Viewer, WorkspaceCreator",
        "models.create in system for bob@example.com: MISSING",
    ] {
        assert!(out.contains(line), "{line:?}\n{out}");
    }
    let r = &json_lines(&ok(&run(&[&args[..], &["--json"]].concat())))[0];
    assert_eq!(r["status"], 403);
    assert_eq!(
        r["explanation"]["permission_checks"][0]["granted_by"],
        Json::Null
    );
    assert_eq!(r["explanation"]["deny_rule"], Json::Null);
}

#[test]
fn explain_scope_mismatch_group_binding_admin_and_no_identity() {
    let config = cli_config();
    let explain = |extra: &[&str]| {
        let mut args = vec!["explain", "--config", &config, "--json"];
        args.extend_from_slice(extra);
        json_lines(&ok(&run(&args))).remove(0)
    };
    // A platform scope that is not one of the endpoint's: 403 even though alice is an Editor.
    let r = explain(&[
        "GET",
        "/apis/models/v2/workspaces/ws1/models",
        "--email",
        "alice@example.com",
        "--scope",
        "models:write",
    ]);
    assert_eq!(r["status"], 403);
    assert_eq!(r["reason"], "scope_mismatch");
    assert_eq!(r["explanation"]["scope_check"]["passed"], false);
    assert_eq!(
        r["explanation"]["scope_check"]["token_scopes"],
        serde_json::json!(["models:write"])
    );
    // The binding key alice@example.com reached through a group of that name.
    let r = explain(&[
        "GET",
        "/apis/models/v2/workspaces/ws1/models",
        "--principal-id",
        "u-123",
        "--groups",
        "alice@example.com",
    ]);
    assert_eq!(r["status"], 200);
    assert_eq!(r["explanation"]["roles"][0]["via"], "group");
    assert_eq!(
        r["explanation"]["roles"][0]["roles"],
        serde_json::json!(["Editor"])
    );
    assert_eq!(r["dropped_groups"], 0);
    // Groups x-nmp-principal-groups cannot carry are left out, and counted (README "Identity").
    let r = explain(&[
        "GET",
        "/apis/models/v2/workspaces/ws1/models",
        "--principal-id",
        "u-123",
        "--groups",
        "alice@example.com,Data Science,émigrés",
    ]);
    assert_eq!(r["status"], 200);
    assert_eq!(r["dropped_groups"], 2);
    let r = explain(&[
        "DELETE",
        "/apis/models/v2/workspaces/ws1/models/m",
        "--email",
        "admin@example.com",
    ]);
    assert_eq!(r["reason"], "platform_admin");
    assert_eq!(r["explanation"]["platform_admin"], "admin@example.com");
    let r = explain(&["GET", "/apis/models/v2/workspaces/ws1/models"]);
    assert_eq!(r["status"], 401);
    assert_eq!(r["reason"], "no_identity");
}

#[test]
fn explain_tokens_unsigned_refused_by_config_and_signed_read_offline() {
    // The quickstart accepts unsigned tokens; the CLI fixture does not (401 before any rule).
    let token = ok(&run(&["token", "--email", "carol@example.com"]));
    let token = token.trim();
    let path = "/apis/models/v2/workspaces/default/models";
    let r = json_lines(&ok(&run(&[
        "explain", "--json", "GET", path, "--token", token,
    ])))
    .remove(0);
    assert_eq!(r["status"], 200, "{r}");
    assert_eq!(r["explanation"]["principals"][0], "carol@example.com");

    let config = cli_config();
    let out = ok(&run(&[
        "explain", "--config", &config, "GET", path, "--token", token,
    ]));
    assert!(
        out.contains("decision:    DENY 401: Invalid or expired token"),
        "{out}"
    );
    assert!(out.contains("before any policy rule"), "{out}");

    // A signed token cannot be verified offline: its claims are used as jwt_authn's would be.
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","kid":"k1"}"#);
    let claims = URL_SAFE_NO_PAD.encode(br#"{"sub":"alice@example.com","exp":1,"iat":1}"#);
    let signed = format!("{header}.{claims}.c2lnbmF0dXJl");
    let r = json_lines(&ok(&run(&[
        "explain",
        "--config",
        &config,
        "--json",
        "GET",
        "/apis/models/v2/workspaces/ws1/models",
        "--token",
        &signed,
    ])))
    .remove(0);
    assert_eq!(r["status"], 200, "{r}");
    assert!(
        r["note"].as_str().unwrap().contains("not checked offline"),
        "{r}"
    );
}

#[test]
fn explain_a_requests_file_one_record_each() {
    let config = cli_config();
    let file = format!("{OPERATOR}/requests.json");
    let out = ok(&run(&[
        "explain",
        "--config",
        &config,
        "--requests-file",
        &file,
        "--json",
    ]));
    let records = json_lines(&out);
    assert_eq!(records.len(), 2, "{out}");
    // An unsigned token, refused by this configuration.
    assert_eq!(records[0]["status"], 401);
    assert_eq!(records[0]["explanation"], Json::Null);
    // jwt_authn claims; the query is never recorded.
    assert_eq!(records[1]["status"], 403);
    assert_eq!(records[1]["reason"], "scope_mismatch");
    assert_eq!(
        records[1]["explanation"]["path"],
        "/apis/models/v2/workspaces/ws1/models"
    );
}

#[test]
fn explain_bad_input_is_one_line() {
    let config = cli_config();
    fails_one_line(
        &run(&["explain", "--config", &config]),
        &["METHOD and PATH"],
    );
    fails_one_line(
        &run(&["explain", "--config", &config, "GET", "apis/x"]),
        &["must start with /"],
    );
    fails_one_line(
        &run(&["explain", "GET", "/x", "--groups", "g"]),
        &["--principal-id or --email"],
    );
    fails_one_line(
        &run(&["explain", "--requests-file", "/nonexistent/requests.json"]),
        &["/nonexistent/requests.json"],
    );
    fails_one_line(
        &run(&["explain", "--config", "/nonexistent/c.yaml", "GET", "/x"]),
        &["/nonexistent/c.yaml"],
    );
    // An invalid principal is the server's 400, not a crash.
    let r = json_lines(&ok(&run(&[
        "explain",
        "--json",
        "GET",
        "/x",
        "--principal-id",
        "bad id",
    ])))
    .remove(0);
    assert_eq!(r["status"], 400);
}

#[test]
fn server_logs_the_explanation_at_debug_level() {
    let mut server = Server::start_with_env(
        &EPHEMERAL,
        &[
            ("RUST_LOG", "nmp_authz=debug"),
            ("NMP_AUTHZ_LOG_FORMAT", "json"),
        ],
    );
    let (grpc, _) = server.addresses();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut client = runtime
        .block_on(
            envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient::connect(
                format!("http://{grpc}"),
            ),
        )
        .unwrap();
    let bob = common::who("bob@example.com");
    let request = common::check_request(
        "POST",
        "/apis/models/v2/workspaces/system/models?secret=QUERY",
        Some(&bob),
        &[],
    );
    runtime.block_on(client.check(request)).unwrap();
    assert_eq!(server.terminate().code(), Some(0));
    let log = server.output();
    let explained: Vec<Json> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Json>(l).ok())
        .filter(|v| v["fields"]["message"] == "decision explained")
        .collect();
    assert_eq!(explained.len(), 1, "{log}");
    let e: Json =
        serde_json::from_str(explained[0]["fields"]["explanation"].as_str().unwrap()).unwrap();
    assert_eq!(e["reason"], "not_permitted");
    assert_eq!(e["permission_checks"][0]["workspace"], "system");
    assert!(!log.contains("QUERY"), "the query leaked:\n{log}");
}

// --- token ----------------------------------------------------------------------------------

fn claims(token: &str) -> Json {
    let parts: Vec<&str> = token.trim().split('.').collect();
    assert_eq!(parts.len(), 3, "{token}");
    assert_eq!(parts[2], "", "unsigned tokens have an empty signature");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap()
}

#[test]
fn token_mints_quickstart_tokens() {
    let c = claims(&ok(&run(&[
        "token",
        "--email",
        "alice@example.com",
        "--groups",
        "ml,ops",
        "--scope",
        "models:read platform:read",
    ])));
    assert_eq!(c["sub"], "alice@example.com");
    assert_eq!(c["email"], "alice@example.com");
    assert_eq!(c["groups"], serde_json::json!(["ml", "ops"]));
    assert_eq!(c["scope"], "models:read platform:read");
    assert_eq!(
        c["exp"].as_u64().unwrap() - c["iat"].as_u64().unwrap(),
        86_400
    );

    let c = claims(&ok(&run(&[
        "token",
        "--principal-id",
        "service:evaluator",
        "--expires-in",
        "1h",
    ])));
    assert_eq!(c["sub"], "service:evaluator");
    assert_eq!(c.get("email"), None);
    assert_eq!(
        c["exp"].as_u64().unwrap() - c["iat"].as_u64().unwrap(),
        3_600
    );
}

#[test]
fn token_refused_on_bad_input_or_when_unsigned_tokens_are_off() {
    let config = cli_config();
    fails_one_line(
        &run(&["token", "--config", &config, "--email", "a@example.com"]),
        &["auth.allow_unsigned_jwt is false"],
    );
    fails_one_line(
        &run_env(
            &["token", "--email", "a@example.com"],
            &[("NMP_AUTH_ALLOW_UNSIGNED_JWT", "false")],
        ),
        &["auth.allow_unsigned_jwt"],
    );
    fails_one_line(&run(&["token"]), &["--email or --principal-id"]);
    fails_one_line(
        &run(&["token", "--email", "not an email"]),
        &["Invalid principal ID format"],
    );
    fails_one_line(
        &run(&["token", "--principal-id", "u1", "--email", "nope"]),
        &["Invalid email format"],
    );
    fails_one_line(
        &run(&[
            "token",
            "--email",
            "a@example.com",
            "--scope",
            "models.read",
        ]),
        &["Invalid scope format"],
    );
    fails_one_line(
        &run(&["token", "--email", "a@example.com", "--expires-in", "0s"]),
        &["--expires-in"],
    );
    assert!(
        !run(&["token", "--email", "a@example.com", "--expires-in", "soon"])
            .status
            .success()
    );
}

// --- members --------------------------------------------------------------------------------

#[test]
fn members_list_shows_bindings_wildcards_and_admins() {
    let out = ok(&run(&["members", "list", "--workspace", "default"]));
    assert!(
        out.lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["*", "wildcard", "Editor"]),
        "{out}"
    );
    assert!(out.contains("holds ServiceSystem"), "{out}");

    let config = cli_config();
    let out = ok(&run(&[
        "members",
        "list",
        "--config",
        &config,
        "--workspace",
        "ws1",
        "--json",
    ]));
    let m: Json = serde_json::from_str(&out).unwrap();
    assert_eq!(m["workspace"], "ws1");
    let members = m["members"].as_array().unwrap();
    let find = |who: &str| {
        members
            .iter()
            .find(|x| x["principal"] == who)
            .unwrap_or_else(|| panic!("{who} missing: {out}"))
    };
    assert_eq!(
        find("alice@example.com")["roles"],
        serde_json::json!(["Editor"])
    );
    assert_eq!(find("alice@example.com")["via"], "binding");
    assert_eq!(find("admin@example.com")["via"], "platform_admin");
    // The bootstrap bindings name no ws1.
    assert!(members.iter().all(|x| x["principal"] != "*"), "{out}");
    // A fixture without ServiceSystem has no implicit role.
    assert_eq!(m["service_default"], Json::Null);

    let out = ok(&run(&[
        "members",
        "list",
        "--config",
        &config,
        "--workspace",
        "nobody-here",
    ]));
    assert!(
        out.contains("PlatformAdmin (in system: every workspace)"),
        "{out}"
    );
}

#[test]
fn members_bad_input() {
    assert!(!run(&["members", "list"]).status.success());
    assert!(!run(&["members"]).status.success());
    fails_one_line(
        &run(&["members", "list", "--workspace", ""]),
        &["not a workspace name"],
    );
    fails_one_line(
        &run(&[
            "members",
            "list",
            "--workspace",
            "a",
            "--config",
            "/nonexistent/c.yaml",
        ]),
        &["/nonexistent/c.yaml"],
    );
}

// --- doctor ---------------------------------------------------------------------------------

/// The examples' hardened `config.yaml` and `policy.yaml` in a private directory, both mode 600.
fn hardened_dir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    for f in ["config.yaml", "policy.yaml"] {
        std::fs::copy(Path::new(EXAMPLES).join(f), dir.path().join(f)).unwrap();
        chmod(&dir.path().join(f), 0o600);
    }
    let config = dir.path().join("config.yaml");
    (dir, config)
}

fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn doctor_json(out: &Output) -> Vec<(String, String, String)> {
    let checks: Json =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}\n{}", describe(out)));
    checks
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["check"].as_str().unwrap().to_string(),
                c["status"].as_str().unwrap().to_string(),
                c["detail"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn status_of<'a>(checks: &'a [(String, String, String)], name: &str) -> &'a str {
    checks
        .iter()
        .find(|c| c.0 == name)
        .map(|c| c.1.as_str())
        .unwrap_or_else(|| panic!("no check {name}: {checks:?}"))
}

#[test]
fn doctor_passes_a_hardened_config() {
    let (_dir, config) = hardened_dir();
    let config = config.to_str().unwrap();
    let out = run(&["doctor", "--config", config, "--json"]);
    assert!(out.status.success(), "{}", describe(&out));
    let checks = doctor_json(&out);
    assert!(
        checks.iter().all(|c| c.1 == "pass"),
        "every check should pass: {checks:?}"
    );
    assert_eq!(status_of(&checks, "one PlatformAdmin"), "pass");
    let text = ok(&run(&["doctor", "--config", config]));
    assert!(text.contains("pass  one PlatformAdmin"), "{text}");
    assert!(text.contains("0 failed"), "{text}");
}

/// With traces on, whether spans carry identities is a check of its own.
#[test]
fn doctor_flags_identities_in_traces() {
    let (_dir, config) = hardened_dir();
    let hardened = std::fs::read_to_string(&config).unwrap();
    for (record, expected) in [("false", "pass"), ("true", "warn")] {
        std::fs::write(
            &config,
            format!("{hardened}\ntraces:\n  enabled: true\n  record_principal: {record}\n"),
        )
        .unwrap();
        let out = run(&["doctor", "--config", config.to_str().unwrap(), "--json"]);
        let checks = doctor_json(&out);
        assert_eq!(
            status_of(&checks, "identities in traces"),
            expected,
            "{checks:?}"
        );
    }
}

#[test]
fn doctor_fails_the_quickstart_and_flags_each_item() {
    let out = run(&["doctor", "--json"]);
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(
        text(&out.stderr).contains("checks failed"),
        "{}",
        describe(&out)
    );
    let checks = doctor_json(&out);
    assert_eq!(status_of(&checks, "OIDC configured"), "fail");
    assert_eq!(status_of(&checks, "unsigned tokens off"), "fail");
    assert_eq!(status_of(&checks, "one PlatformAdmin"), "fail");
    assert_eq!(status_of(&checks, "audience set"), "warn");
    assert_eq!(status_of(&checks, "wildcard bindings"), "warn");

    // The CLI fixture: a shared-mailbox admin, world-readable files.
    let config = cli_config();
    let checks = doctor_json(&run(&["doctor", "--config", &config, "--json"]));
    assert_eq!(status_of(&checks, "admin_email"), "warn");
    assert_eq!(status_of(&checks, "one PlatformAdmin"), "pass");

    // Several admins, extra issuers, auth off, a world-writable policy, short staleness.
    let (dir, config_path) = hardened_dir();
    std::fs::write(
        &config_path,
        "auth:\n  enabled: false\n  admin_email: jane.doe@example.com\n  \
         policy_data_refresh_interval: 30\n  oidc:\n    enabled: true\n    \
         issuer: https://idp.example.com\n    additional_issuers: [https://other.example.com]\n\
         policy:\n  max_staleness_seconds: 30\n  sources:\n    - file: policy.yaml\n",
    )
    .unwrap();
    chmod(&dir.path().join("policy.yaml"), 0o666);
    let out = run(&[
        "doctor",
        "--config",
        config_path.to_str().unwrap(),
        "--json",
    ]);
    assert!(!out.status.success());
    let checks = doctor_json(&out);
    assert_eq!(status_of(&checks, "auth enabled"), "fail");
    assert_eq!(status_of(&checks, "additional issuers"), "warn");
    assert_eq!(status_of(&checks, "staleness bound"), "warn");
    assert!(
        checks.iter().any(|c| c.0 == "file permissions"
            && c.1 == "fail"
            && c.2.contains("writable by others")),
        "{checks:?}"
    );
}

#[test]
fn doctor_names_a_mistyped_environment_variable() {
    let out = run_env(&["doctor"], &[("NMP_AUTH_OIDC__ISSUR", "https://x")]);
    assert!(!out.status.success());
    let stdout = text(&out.stdout);
    assert!(stdout.contains("NMP_AUTH_OIDC__ISSUR"), "{stdout}");
    assert!(stdout.contains("must name a key"), "{stdout}");
}

#[test]
fn doctor_probes_a_running_deployment() {
    let (_dir, config) = hardened_dir();
    let config = config.to_str().unwrap();
    let mut server = Server::start(&EPHEMERAL);
    let (_, http) = server.addresses();
    let url = format!("http://{http}");
    let out = run(&["doctor", "--config", config, "--url", &url, "--json"]);
    let checks = doctor_json(&out);
    assert_eq!(status_of(&checks, "live: discovery"), "pass", "{checks:?}");
    assert_eq!(
        status_of(&checks, "live: unauthenticated"),
        "pass",
        "{checks:?}"
    );
    assert!(out.status.success(), "{}", describe(&out));
    server.terminate();

    // Authorization off: discovery says so, and nothing is refused.
    let dir = tempfile::tempdir().unwrap();
    let off = dir.path().join("off.yaml");
    std::fs::write(&off, "auth:\n  enabled: false\n").unwrap();
    let mut server =
        Server::start(&[&["--config", off.to_str().unwrap()][..], &EPHEMERAL].concat());
    let (_, http) = server.addresses();
    let out = run(&[
        "doctor",
        "--config",
        config,
        "--url",
        &format!("http://{http}"),
        "--json",
    ]);
    assert!(!out.status.success());
    let checks = doctor_json(&out);
    assert_eq!(status_of(&checks, "live: discovery"), "fail");
    assert_eq!(status_of(&checks, "live: unauthenticated"), "fail");
    server.terminate();

    fails_one_line(
        &run(&["doctor", "--config", config, "--url", "ftp://127.0.0.1"]),
        &["http(s) URL"],
    );
}

/// The PDP listener believes a header from whoever connects: doctor says who can, and whether
/// NMP's services could start against it.
#[test]
fn doctor_judges_the_pdp_listener() {
    let (dir, config) = hardened_dir();
    let hardened = std::fs::read_to_string(&config).unwrap();
    let with = |extra: &str| {
        std::fs::write(&config, format!("{hardened}{extra}")).unwrap();
        chmod(&config, 0o600);
        let out = run(&["doctor", "--config", config.to_str().unwrap(), "--json"]);
        let checks = doctor_json(&out);
        let pdp = checks.iter().find(|c| c.0 == "PDP listener").cloned();
        pdp.unwrap_or_else(|| panic!("no PDP listener check: {checks:?}"))
    };
    assert_eq!(with("").1, "pass");
    let socket = dir.path().join("pdp.sock");
    let local = with(&format!(
        "pdp:\n  unix_socket: {}\n  addr: 127.0.0.1:8181\n",
        socket.display()
    ));
    assert_eq!(local.1, "pass", "{local:?}");
    assert!(local.2.contains("mode 0660"), "{local:?}");
    let open = with("pdp:\n  addr: 0.0.0.0:8181\n");
    assert_eq!(open.1, "warn", "{open:?}");
    assert!(open.2.contains("NetworkPolicy"), "{open:?}");
    // Following NMP's bundle without a bootstrap source: NMP's services could not start.
    let bundle = "    - bundle_url: http://127.0.0.1:9/apis/auth/v2/iam/opa-bundle.tar.gz\n";
    let hardened = hardened.replace("    - file: policy.yaml\n", bundle);
    std::fs::write(&config, format!("{hardened}pdp:\n  addr: 127.0.0.1:8181\n")).unwrap();
    chmod(&config, 0o600);
    let checks = doctor_json(&run(&[
        "doctor",
        "--config",
        config.to_str().unwrap(),
        "--json",
    ]));
    let pdp = checks.iter().find(|c| c.0 == "PDP listener").unwrap();
    assert_eq!(pdp.1, "warn", "{pdp:?}");
    assert!(pdp.2.contains("policy.bootstrap"), "{pdp:?}");
}
