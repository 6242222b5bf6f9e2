//! The dry run: a candidate policy (`policy.shadow.sources`) decides every Check the enforced
//! policy decided, beside it, and never changes an answer. Where the two would answer with a
//! different status the disagreement is counted
//! (`nmp_authz_shadow_disagreements_total{enforced,shadow}`) and logged as a record
//! (target `nmp_authz::shadow`), within a per-reason budget a second like denial records.
//!
//! Compiled like the enforced policy: by the reload loop, once per change, swapped whole; a
//! Check only loads the current one. With no shadow policy configured `State::shadow` is
//! `None` and a Check pays one branch.

use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwapOption;
use nmp_authz_core::verdict::{Outcome, Status, Verdict};
use prometheus_client::metrics::counter::Counter;

use crate::policy::CompiledPolicy;
use crate::telemetry::{DecisionLog, Metrics, ShadowFacts};

use super::check::Request;

#[derive(Debug)]
pub struct Shadow {
    pub policy: ArcSwapOption<CompiledPolicy>,
    /// Unix time the shadow policy in use was installed (0: never).
    pub loaded_at: AtomicU64,
    /// `[enforced allowed][shadow allowed]`, resolved at start-up.
    disagreements: [[Counter; 2]; 2],
    /// The records' budget: keyed by the shadow's outcome, so that one kind of disagreement
    /// does not hide the others.
    log: DecisionLog,
}

impl Shadow {
    pub fn new(metrics: &Metrics) -> Self {
        Self {
            policy: ArcSwapOption::empty(),
            loaded_at: AtomicU64::new(0),
            disagreements: metrics.shadow_counters(),
            log: DecisionLog::for_shadow(),
        }
    }

    /// Decides `request` with the shadow policy when the enforced policy decided it, and
    /// counts and logs a different answer. Identity, the request-path rule and staleness are
    /// the enforced side's: the shadow sees the principal and the path it decided on.
    pub(crate) fn compare(&self, request: &Request<'_>, enforced: &Verdict<'_>) {
        let (Outcome::Decided(_), Some(path), Some(decision)) = (
            enforced.outcome,
            enforced.path.as_deref(),
            &enforced.decision,
        ) else {
            return;
        };
        let policy = self.policy.load();
        let Some(policy) = policy.as_deref() else {
            return;
        };
        let principal = enforced.principal.as_deref();
        let shadow = policy.allow(principal, request.method, path);
        let outcome = Outcome::Decided(shadow.reason);
        let status = outcome.status(principal.is_some());
        if status == enforced.status {
            return;
        }
        let shadow_allowed = status == Status::Ok;
        self.disagreements[usize::from(enforced.allowed())][usize::from(shadow_allowed)].inc();
        if self.log.should_log(false, outcome) {
            crate::telemetry::log_shadow(&ShadowFacts {
                method: request.method,
                path: path.split('?').next().unwrap_or_default(),
                principal_id: principal.and_then(|p| p.id.as_deref()).unwrap_or_default(),
                enforced_status: enforced.status.http(),
                enforced_reason: enforced.outcome.as_str(),
                enforced_endpoint: decision.endpoint.unwrap_or_default(),
                policy_revision: enforced.policy.map_or("", |p| p.revision()),
                shadow_status: status.http(),
                shadow_reason: outcome.as_str(),
                shadow_endpoint: shadow.endpoint.unwrap_or_default(),
                shadow_revision: policy.revision(),
                workspace: shadow
                    .workspace
                    .as_deref()
                    .or(decision.workspace.as_deref())
                    .unwrap_or_default(),
            });
        }
    }

    /// Swaps in a newly compiled shadow policy.
    pub fn install(&self, policy: CompiledPolicy, metrics: &Metrics) {
        tracing::info!(
            revision = policy.revision(),
            endpoints = policy.endpoint_count(),
            bindings = policy.binding_count(),
            "shadow policy loaded (dry run: decides beside the enforced policy, answers nothing)"
        );
        self.policy.store(Some(std::sync::Arc::new(policy)));
        self.loaded_at
            .store(crate::identity::unix_now(), Ordering::Relaxed);
        metrics.shadow_policy_loaded();
    }

    /// At shutdown: the disagreement records left out over the budget, counted.
    pub(crate) fn report_suppressed(&self) {
        self.log.report_suppressed();
    }
}
