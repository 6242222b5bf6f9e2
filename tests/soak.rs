//! Soak: sustained load through the quickstart Envoy to nmp-authz while its policy file is
//! rewritten every few seconds, for a bounded time. `scripts/soak.sh [SECONDS]` runs
//! [`soak_command`] (default 600 s); the suite runs the same code for two minutes
//! ([`soak_through_envoy_with_a_changing_policy`]).
//!
//! "Wrong decision" is exact. alice always holds Editor in `stable` (200) and nothing in
//! `other` (403); a request without a token is 401. Only `flip@example.com`'s access to
//! workspace `flip` changes: bound as Viewer in even revisions, unbound in odd ones. After each
//! rewrite a probe asks until it sees the new decision (bounded: [`APPLY_DEADLINE`]); revision
//! j is possibly in effect from the moment its file is renamed into place until the probe has
//! seen revision j+1. A flip request must get the decision of a revision possibly in effect at
//! some point between its send and its answer; every other request must get its fixed answer.
//! The upstream must receive exactly the requests answered 200. Each revision also binds 200
//! fresh principals, so every reload compiles a new, different policy.

mod common;

use std::collections::HashSet;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::gateway::{
    KeepAlive, NmpAuthz, Sent, Upstream, paced_load, poll_until, quickstart_envoy, unsigned_token,
};
use common::process::{fd_count, rss_kib, thread_count};

const STABLE: &str = "/apis/models/v2/workspaces/stable/models";
const OTHER: &str = "/apis/models/v2/workspaces/other/models";
const FLIP: &str = "/apis/models/v2/workspaces/flip/models";

/// Time between two policy rewrites.
const REWRITE_EVERY: Duration = Duration::from_secs(4);
/// A rewrite must show in decisions within this (the file watch; the 5 s refresh interval is
/// the backstop).
const APPLY_DEADLINE: Duration = Duration::from_secs(7);
/// Load threads (each on one keep-alive connection to Envoy).
const THREADS: u64 = 3;
/// Total request rate unless NMP_AUTHZ_SOAK_RATE says otherwise.
const DEFAULT_RATE: u64 = 600;
/// Allowed RSS growth of nmp-authz from the warm sample to the end: flat memory.
const RSS_GROWTH_LIMIT_KIB: u64 = 16 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Stable,
    Other,
    Anonymous,
    Flip,
}

type Outcome = Sent<Kind>;

/// One policy revision: when its file was renamed into place, when the probe first saw its
/// decision, and whether flip@example.com is bound in it.
#[derive(Clone, Debug)]
struct Revision {
    written: Duration,
    observed: Duration,
    flip_bound: bool,
}

fn policy_text(revision: usize, flip_bound: bool) -> String {
    let mut text = String::from(
        "authz:\n  principals:\n    alice@example.com: {workspaces: {stable: [Editor]}}\n",
    );
    if flip_bound {
        text.push_str("    flip@example.com: {workspaces: {flip: [Viewer]}}\n");
    }
    for k in 0..200 {
        let _ = writeln!(
            text,
            "    churn-{revision}-{k}@example.com: {{workspaces: {{churn-{k}: [Viewer]}}}}"
        );
    }
    text
}

/// Writes the policy as a ConfigMap update does: a new file renamed over the old one.
fn write_policy(dir: &Path, revision: usize, flip_bound: bool) {
    let next = dir.join("policy.yaml.next");
    std::fs::write(&next, policy_text(revision, flip_bound)).expect("write the policy");
    std::fs::rename(&next, dir.join("policy.yaml")).expect("rename the policy into place");
}

#[derive(Debug, Default)]
struct Report {
    seconds: f64,
    requests: usize,
    by_kind: [usize; 4],
    forwarded: usize,
    revisions: usize,
    max_apply: Duration,
    flip_tolerated: usize,
    wrong: Vec<String>,
    errors: Vec<String>,
    rss_start_kib: u64,
    rss_warm_kib: u64,
    rss_max_kib: u64,
    rss_end_kib: u64,
    fds_start: usize,
    fds_end: usize,
    threads_start: u64,
    threads_end: u64,
}

impl Report {
    fn summary(&self) -> String {
        format!(
            "soak: {:.0} s, {} requests ({:.0}/s; stable {}, other {}, anonymous {}, flip {}), \
             {} forwarded (= the 200s), {} policy revisions (slowest applied in {:.0?}), \
             {} flip requests straddled a change; {} wrong decisions, {} errors; nmp-authz RSS \
             {} KiB at start, {} warm, {} max, {} at end (limit warm + {} KiB); fds {} -> {}; \
             threads {} -> {}",
            self.seconds,
            self.requests,
            self.requests as f64 / self.seconds,
            self.by_kind[0],
            self.by_kind[1],
            self.by_kind[2],
            self.by_kind[3],
            self.forwarded,
            self.revisions,
            self.max_apply,
            self.flip_tolerated,
            self.wrong.len(),
            self.errors.len(),
            self.rss_start_kib,
            self.rss_warm_kib,
            self.rss_max_kib,
            self.rss_end_kib,
            RSS_GROWTH_LIMIT_KIB,
            self.fds_start,
            self.fds_end,
            self.threads_start,
            self.threads_end,
        )
    }

    /// Why the run failed, if it did.
    fn failures(&self) -> Vec<String> {
        let mut failures: Vec<String> = self.wrong.iter().take(10).cloned().collect();
        failures.extend(self.errors.iter().take(10).cloned());
        if self.rss_end_kib > self.rss_warm_kib + RSS_GROWTH_LIMIT_KIB {
            failures.push(format!(
                "memory grew: RSS {} KiB warm, {} KiB at end",
                self.rss_warm_kib, self.rss_end_kib
            ));
        }
        if self.fds_end > self.fds_start {
            failures.push(format!(
                "file descriptors grew: {} -> {}",
                self.fds_start, self.fds_end
            ));
        }
        if self.revisions < 2 {
            failures.push("fewer than two policy changes".into());
        }
        failures
    }
}

fn load(
    gateway: SocketAddr,
    rate: u64,
    stop: Arc<AtomicBool>,
    start: Instant,
) -> Vec<thread::JoinHandle<Vec<Outcome>>> {
    let pace = Duration::from_secs_f64(THREADS as f64 / rate.max(1) as f64);
    let bearer = |email: &str| {
        format!(
            "Bearer {}",
            unsigned_token(email, &[("email", email.into())])
        )
    };
    let (alice, flip) = (bearer("alice@example.com"), bearer("flip@example.com"));
    let mix = vec![
        (Kind::Stable, STABLE, Some(alice.clone())),
        (Kind::Other, OTHER, Some(alice)),
        (Kind::Anonymous, STABLE, None),
        (Kind::Flip, FLIP, Some(flip)),
    ];
    paced_load(gateway, THREADS as usize, pace, mix, stop, start)
}

/// The flip decisions possible between `sent` and `received`.
fn possible_flip(revisions: &[Revision], sent: Duration, received: Duration) -> HashSet<u16> {
    let mut statuses = HashSet::new();
    for (j, revision) in revisions.iter().enumerate() {
        let until = revisions.get(j + 1).map_or(Duration::MAX, |r| r.observed);
        if revision.written <= received && sent < until {
            statuses.insert(if revision.flip_bound { 200 } else { 403 });
        }
    }
    statuses
}

/// Runs the soak for `duration` at `rate` requests/s (all loopback) and reports.
fn soak(duration: Duration, rate: u64) -> Report {
    let dir = tempfile::tempdir().expect("soak directory");
    write_policy(dir.path(), 0, true);
    let config = format!(
        "auth:\n  allow_unsigned_jwt: true\n  bootstrap_bindings: false\n  \
         policy_data_refresh_interval: 5\npolicy:\n  max_staleness_seconds: 3600\n  sources:\n    \
         - builtin: true\n    - file: {}\n",
        dir.path().join("policy.yaml").display()
    );
    let upstream = Upstream::start();
    let authz = NmpAuthz::start(&config);
    let pid = authz.pid().expect("nmp-authz runs");
    let envoy = quickstart_envoy(&authz, &upstream);
    let flip_token = format!("Bearer {}", unsigned_token("flip@example.com", &[]));
    let mut probe = KeepAlive::new(envoy.addr());
    let probe_status = |probe: &mut KeepAlive| {
        probe
            .get(FLIP, &[("Authorization", &flip_token)])
            .map(|r| r.status)
    };
    poll_until(Duration::from_secs(30), || match probe_status(&mut probe) {
        Ok(200) => Ok(()),
        other => Err(format!("{other:?}")),
    })
    .unwrap_or_else(|e| panic!("gateway not serving: {e}\n{}", envoy.log()));
    let warm_up = upstream.take_requests().len();

    let mut report = Report {
        rss_start_kib: rss_kib(pid),
        fds_start: fd_count(pid),
        threads_start: thread_count(pid),
        ..Report::default()
    };
    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let handles = load(envoy.addr(), rate, stop.clone(), start);
    let mut revisions = vec![Revision {
        written: Duration::ZERO,
        observed: Duration::ZERO,
        flip_bound: true,
    }];
    let mut forwarded: HashSet<u64> = HashSet::new();
    let mut drain = |report: &mut Report| {
        for r in upstream.take_requests() {
            if r.values("x-nmp-authorized") != ["true"] {
                report
                    .wrong
                    .push(format!("forwarded without x-nmp-authorized: {r:?}"));
            }
            match r
                .path
                .split_once("?req=")
                .and_then(|(_, id)| id.parse().ok())
            {
                Some(id) => {
                    if !forwarded.insert(id) {
                        report.wrong.push(format!("forwarded twice: {}", r.path));
                    }
                }
                None if r.path == FLIP => {} // the probe's
                None => report.wrong.push(format!("unknown forwarded {}", r.path)),
            }
        }
    };
    let warm_at = (duration / 10).max(REWRITE_EVERY + APPLY_DEADLINE);
    while start.elapsed() + REWRITE_EVERY <= duration {
        let next_write = revisions.last().unwrap().written + REWRITE_EVERY;
        while start.elapsed() < next_write {
            thread::sleep(Duration::from_millis(100).min(next_write - start.elapsed()));
            drain(&mut report);
            let rss = rss_kib(pid);
            report.rss_max_kib = report.rss_max_kib.max(rss);
            if report.rss_warm_kib == 0 && start.elapsed() >= warm_at {
                report.rss_warm_kib = rss;
            }
        }
        let number = revisions.len();
        let flip_bound = number % 2 == 0;
        let written = start.elapsed();
        write_policy(dir.path(), number, flip_bound);
        let want = if flip_bound { 200 } else { 403 };
        let applied = poll_until(APPLY_DEADLINE, || match probe_status(&mut probe) {
            Ok(s) if s == want => Ok(()),
            Ok(s) if s == 200 || s == 403 => Err(format!("still {s}")),
            other => {
                report
                    .errors
                    .push(format!("probe after revision {number}: {other:?}"));
                Err(format!("{other:?}"))
            }
        });
        let observed = start.elapsed();
        if let Err(e) = applied {
            report.wrong.push(format!(
                "revision {number} (flip bound: {flip_bound}) not applied: {e}"
            ));
        }
        report.max_apply = report.max_apply.max(observed - written);
        revisions.push(Revision {
            written,
            observed,
            flip_bound,
        });
    }
    let left = duration.saturating_sub(start.elapsed());
    thread::sleep(left);
    stop.store(true, Ordering::SeqCst);
    let outcomes: Vec<Outcome> = handles
        .into_iter()
        .flat_map(|h| h.join().expect("load thread"))
        .collect();
    report.seconds = start.elapsed().as_secs_f64();
    drain(&mut report);
    assert_eq!(warm_up, 1, "the readiness probe");

    report.requests = outcomes.len();
    report.revisions = revisions.len() - 1;
    let mut ok = HashSet::new();
    for o in &outcomes {
        report.by_kind[o.kind as usize] += 1;
        let status = match &o.status {
            Ok(status) => *status,
            Err(e) => {
                report.errors.push(format!("{o:?}: {e}"));
                continue;
            }
        };
        if status == 200 {
            ok.insert(o.id);
        }
        let allowed: HashSet<u16> = match o.kind {
            Kind::Stable => [200].into(),
            Kind::Other => [403].into(),
            Kind::Anonymous => [401].into(),
            Kind::Flip => possible_flip(&revisions, o.sent, o.received),
        };
        if o.kind == Kind::Flip && allowed.len() > 1 {
            report.flip_tolerated += 1;
        }
        if !allowed.contains(&status) {
            let wrong = format!("{o:?}: expected one of {allowed:?}");
            if (500..600).contains(&status) {
                report.errors.push(wrong);
            } else {
                report.wrong.push(wrong);
            }
        }
    }
    report.forwarded = forwarded.len();
    for id in forwarded.symmetric_difference(&ok) {
        report
            .wrong
            .push(format!("request {id}: forwarded and answered 200 differ"));
    }
    // Load has stopped; the gateway's connections to nmp-authz stay (pooled), as at the start.
    report.rss_end_kib = rss_kib(pid);
    report.rss_max_kib = report.rss_max_kib.max(report.rss_end_kib);
    if report.rss_warm_kib == 0 {
        report.rss_warm_kib = report.rss_end_kib;
    }
    report.fds_end = fd_count(pid);
    report.threads_end = thread_count(pid);
    drop(envoy);
    report
}

fn rate() -> u64 {
    std::env::var("NMP_AUTHZ_SOAK_RATE")
        .ok()
        .map(|v| {
            v.parse()
                .expect("NMP_AUTHZ_SOAK_RATE is requests per second")
        })
        .unwrap_or(DEFAULT_RATE)
}

fn run(duration: Duration) {
    let report = soak(duration, rate());
    eprintln!("{}", report.summary());
    let failures = report.failures();
    assert!(
        failures.is_empty(),
        "{}\nfailures:\n{}",
        report.summary(),
        failures.join("\n")
    );
}

/// The soak in the suite: two minutes (about thirty policy changes), as issue 7 asks.
#[test]
fn soak_through_envoy_with_a_changing_policy() {
    run(Duration::from_secs(120));
}

/// `scripts/soak.sh [SECONDS]`: the same for NMP_AUTHZ_SOAK_SECONDS (default 600).
#[test]
#[ignore = "long: run with scripts/soak.sh [SECONDS]"]
fn soak_command() {
    let seconds = std::env::var("NMP_AUTHZ_SOAK_SECONDS")
        .ok()
        .map(|v| {
            v.parse()
                .expect("NMP_AUTHZ_SOAK_SECONDS is a number of seconds")
        })
        .unwrap_or(600);
    run(Duration::from_secs(seconds));
}
