//! Logs and metrics. Counters are plain atomics in a map fixed at start-up, so recording a
//! decision takes no lock.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::policy::Reason;

/// The HTTP statuses a Check can end in.
const STATUSES: [u16; 5] = [200, 400, 401, 403, 503];

/// Outcomes decided before the policy is consulted.
const PRE_DECISION: [&str; 5] = [
    "malformed_request",
    "policy_unavailable",
    "invalid_identity",
    "invalid_principal",
    "auth_disabled",
];

#[derive(Debug)]
pub struct Metrics {
    decisions: HashMap<&'static str, [AtomicU64; STATUSES.len()]>,
    policy_loads: AtomicU64,
    policy_load_failures: AtomicU64,
    /// (issuer, succeeded) -> count. Fetches are rare: a lock is fine here.
    jwks_fetches: Mutex<BTreeMap<(String, bool), u64>>,
}

impl Default for Metrics {
    fn default() -> Self {
        let reasons = Reason::ALL.iter().map(|r| r.as_str()).chain(PRE_DECISION);
        Self {
            decisions: reasons.map(|r| (r, Default::default())).collect(),
            policy_loads: AtomicU64::new(1),
            policy_load_failures: AtomicU64::new(0),
            jwks_fetches: Mutex::default(),
        }
    }
}

impl Metrics {
    pub fn record_check(&self, status: u16, reason: &str) {
        let slot = STATUSES.iter().position(|s| *s == status);
        if let (Some(counters), Some(slot)) = (self.decisions.get(reason), slot) {
            counters[slot].fetch_add(1, Relaxed);
        }
    }

    pub fn jwks_fetched(&self, issuer: &str, ok: bool) {
        let mut fetches = self.jwks_fetches.lock().unwrap_or_else(|e| e.into_inner());
        *fetches.entry((issuer.to_string(), ok)).or_default() += 1;
    }

    pub fn policy_loaded(&self) {
        self.policy_loads.fetch_add(1, Relaxed);
    }

    pub fn policy_load_failed(&self) {
        self.policy_load_failures.fetch_add(1, Relaxed);
    }

    /// Prometheus text exposition.
    pub fn render(&self, revision: Option<&str>, ready: bool) -> String {
        let mut out = String::new();
        header(
            &mut out,
            "nmp_authz_decisions_total",
            "counter",
            "Check decisions by HTTP status and reason.",
        );
        let mut reasons: Vec<_> = self.decisions.iter().collect();
        reasons.sort_by_key(|(r, _)| **r);
        for (reason, counters) in reasons {
            for (status, counter) in STATUSES.iter().zip(counters) {
                let n = counter.load(Relaxed);
                if n > 0 {
                    let result = if *status == 200 { "allow" } else { "deny" };
                    let _ = writeln!(
                        out,
                        "nmp_authz_decisions_total{{result=\"{result}\",status=\"{status}\",reason=\"{reason}\"}} {n}"
                    );
                }
            }
        }
        let loads = self.policy_loads.load(Relaxed);
        header(
            &mut out,
            "nmp_authz_policy_loads_total",
            "counter",
            "Successful policy loads.",
        );
        let _ = writeln!(out, "nmp_authz_policy_loads_total {loads}");
        let failures = self.policy_load_failures.load(Relaxed);
        header(
            &mut out,
            "nmp_authz_policy_load_failures_total",
            "counter",
            "Failed policy loads.",
        );
        let _ = writeln!(out, "nmp_authz_policy_load_failures_total {failures}");
        header(
            &mut out,
            "nmp_authz_policy_info",
            "gauge",
            "The policy revision in use.",
        );
        if let Some(revision) = revision {
            let _ = writeln!(out, "nmp_authz_policy_info{{revision=\"{revision}\"}} 1");
        }
        header(
            &mut out,
            "nmp_authz_jwks_fetches_total",
            "counter",
            "Signing key fetches by issuer and result.",
        );
        let fetches = self.jwks_fetches.lock().unwrap_or_else(|e| e.into_inner());
        for ((issuer, ok), n) in fetches.iter() {
            let result = if *ok { "success" } else { "failure" };
            let issuer = issuer.replace(['"', '\\', '\n'], "_");
            let _ = writeln!(
                out,
                "nmp_authz_jwks_fetches_total{{issuer=\"{issuer}\",result=\"{result}\"}} {n}"
            );
        }
        drop(fetches);
        header(
            &mut out,
            "nmp_authz_ready",
            "gauge",
            "1 when the server has valid policy data.",
        );
        let _ = writeln!(out, "nmp_authz_ready {}", u8::from(ready));
        out
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Logs to stderr; `RUST_LOG` filters (default `info`), `NMP_AUTHZ_LOG_FORMAT=json` for JSON.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::env::var("NMP_AUTHZ_LOG_FORMAT").is_ok_and(|f| f == "json") {
        builder.json().init();
    } else {
        builder.init();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions_are_counted_by_result_status_and_reason() {
        let metrics = Metrics::default();
        metrics.record_check(403, "not_permitted");
        metrics.record_check(403, "not_permitted");
        metrics.record_check(200, "workspace_permission");
        metrics.record_check(401, "invalid_identity");
        metrics.jwks_fetched("https://idp.example.com", true);
        metrics.jwks_fetched("https://idp.example.com", false);
        metrics.jwks_fetched("https://idp.example.com", false);
        let text = metrics.render(Some("abc"), true);
        assert!(text.contains(
            "nmp_authz_jwks_fetches_total{issuer=\"https://idp.example.com\",result=\"failure\"} 2\n"
        ));
        assert!(text.contains(
            "nmp_authz_decisions_total{result=\"deny\",status=\"403\",reason=\"not_permitted\"} 2\n"
        ));
        assert!(text.contains(
            "nmp_authz_decisions_total{result=\"allow\",status=\"200\",reason=\"workspace_permission\"} 1\n"
        ));
        assert!(text.contains("reason=\"invalid_identity\"} 1\n"));
        assert!(text.contains("nmp_authz_policy_info{revision=\"abc\"} 1\n"));
        assert!(text.contains("nmp_authz_ready 1\n"));
        assert!(!text.contains("status=\"503\""), "no zero-valued series");
    }
}
