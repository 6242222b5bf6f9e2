//! What the companion gateways send to the NMP API without authorization: the paths NMP 0.3.0's
//! own middleware serves without asking its PDP, exactly (no prefix where NMP has an exact path,
//! `/studio/` where NMP tests `startswith("/studio")`), and one battery of checks that every
//! gateway config must pass for them.

use std::net::SocketAddr;

use super::gateway::{Upstream, request};

/// NMP 0.3.0's `HEALTH_ENDPOINTS` (`nmp.common.auth.middleware`): any method.
pub const NMP_HEALTH: [&str; 8] = [
    "/status",
    "/cluster-info",
    "/health/live",
    "/health/ready",
    "/metrics",
    "/apis/auth/discovery",
    "/apis/auth/jwks",
    "/apis/auth/token",
];
/// Health names load balancers probe, which the gateway sends to NMP too: any method.
pub const GATEWAY_HEALTH: [&str; 4] = ["/health", "/healthz", "/ready", "/readyz"];
/// NMP's `PUBLIC_GET_PATHS`: `GET` and `HEAD` only.
pub const READ_ONLY: [&str; 1] = ["/"];
/// NMP's `BYPASS_PREFIXES`, each as the exact path and everything under `<path>/`.
pub const UNDER: [&str; 1] = ["/studio"];

/// A path NMP's HF-compatible routes serve (`/apis/files/v2/hf/`): there NMP takes
/// `Authorization: Bearer service:<name>` as the principal itself.
pub const HF_PATH: &str = "/apis/files/v2/hf/api/models/default/m/revision/main";

/// Every exact path the gateway bypasses, any method.
pub fn exact_paths() -> Vec<&'static str> {
    NMP_HEALTH
        .iter()
        .chain(&GATEWAY_HEALTH)
        .chain(&UNDER)
        .copied()
        .collect()
}

/// Requests, with a spoofed `x-nmp-authorized` and principal, that must reach the upstream
/// as sent, with no token, and carry no `x-nmp-*` header there.
fn bypassed() -> Vec<(&'static str, String)> {
    let mut requests: Vec<(&str, String)> = exact_paths()
        .into_iter()
        .map(|path| ("GET", path.to_string()))
        .collect();
    requests.push(("POST", "/apis/auth/token".into()));
    requests.push(("GET", "/health/ready?verbose=1".into()));
    for path in READ_ONLY {
        requests.extend([("GET", path.into()), ("HEAD", path.into())]);
        requests.push(("GET", format!("{path}?next=/studio")));
    }
    for path in UNDER {
        requests.extend([
            ("GET", format!("{path}/")),
            ("GET", format!("{path}/assets/index.js")),
            ("POST", format!("{path}/x")),
        ]);
    }
    requests
}

/// Requests that look like a bypass and are not: without a token, each is answered without
/// reaching the upstream, 401 (or a 400 for a path nmp-authz finds ambiguous). If a bypass
/// became a prefix, or a method-limited one took every method, one of these would pass.
fn near_misses() -> Vec<(&'static str, String)> {
    let mut requests = Vec::new();
    for path in exact_paths() {
        requests.push(("GET", format!("{path}x")));
        if !UNDER.contains(&path) {
            requests.push(("GET", format!("{path}/x")));
        }
        requests.push(("GET", path.to_uppercase()));
    }
    for path in READ_ONLY {
        for method in ["POST", "PUT", "PATCH", "DELETE"] {
            requests.push((method, path.to_string()));
        }
    }
    for path in UNDER {
        requests.push(("GET", format!("{path}-admin")));
        // Dot segments are resolved before routing: this is a models request.
        requests.push((
            "GET",
            format!("{path}/../apis/models/v2/workspaces/default/models"),
        ));
        requests.push((
            "GET",
            format!("{path}/%2e%2e/apis/models/v2/workspaces/default/models"),
        ));
    }
    requests
}

/// The battery, against `gateway` in front of `upstream` (whose record it consumes):
/// every bypassed request reaches the upstream unauthorized and stripped, every near miss is
/// refused, and a bare claimed service name on an HF-compatible route is a 401 that never
/// reaches the upstream.
pub fn check_bypass(gateway: SocketAddr, upstream: &Upstream, name: &str) {
    let spoofed = [
        ("X-NMP-Authorized", "true"),
        ("X-NMP-Principal-Id", "admin"),
    ];
    upstream.take_requests();
    let mut failures = Vec::new();
    for (method, path) in bypassed() {
        let response = request(gateway, method, &path, &spoofed);
        let seen = upstream.take_requests();
        let reached = seen.len() == 1 && seen[0].method == method && seen[0].path == path;
        if response.status != 200 || !reached {
            failures.push(format!(
                "{method} {path}: not passed to the API: {response:?}, upstream saw {seen:?}"
            ));
        } else if !seen[0].nmp_headers().is_empty() {
            failures.push(format!(
                "{method} {path}: the API got {:?}",
                seen[0].nmp_headers()
            ));
        }
    }
    let mut refused = near_misses();
    refused.push(("GET", HF_PATH.to_string()));
    for (method, path) in refused {
        let headers: &[(&str, &str)] = if path == HF_PATH {
            &[("Authorization", "Bearer service:nim")]
        } else {
            &[]
        };
        let response = request(gateway, method, &path, headers);
        let seen = upstream.take_requests();
        // nginx passes the path as sent, and nmp-authz refuses a dot segment as ambiguous.
        let dot_segment = path.contains("..") || path.contains("%2e");
        let status_ok = response.status == 401 || (response.status == 400 && dot_segment);
        if !status_ok || !seen.is_empty() {
            failures.push(format!(
                "{method} {path}: not refused: {response:?}, upstream saw {seen:?}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{name}: {} bypass checks failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
