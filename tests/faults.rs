//! Faults behind the real gateway and against nmp-authz directly: nmp-authz killed and
//! restarted under load behind Envoy, many concurrent streams, oversized headers, slow
//! clients, a bundle source and an identity provider that accept and never answer. Each test
//! prints its figures (requests, 503 window, file descriptors, RSS); SECURITY.md
//! records them.

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::gateway::{
    KeepAlive, NmpAuthz, Sent, Upstream, paced_load, poll_until, quickstart_envoy, unsigned_token,
};

const ALLOWED: &str = "/apis/models/v2/workspaces/default/models";
const FORBIDDEN: &str = "/apis/models/v2/workspaces/team-a/models";

/// What a request was, and so what it must get.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// alice in `default` (Editor by the bootstrap bindings): 200, and it reaches the upstream.
    Allowed,
    /// alice in `team-a` (no role): 403.
    Forbidden,
    /// No token: 401.
    Anonymous,
}

impl Kind {
    fn status(self) -> u16 {
        match self {
            Kind::Allowed => 200,
            Kind::Forbidden => 403,
            Kind::Anonymous => 401,
        }
    }
}

/// One request of a load run.
type Outcome = Sent<Kind>;

/// Interval between two requests of one load thread (≤ 500 requests/s each).
const PACE: Duration = Duration::from_millis(2);

/// `threads` clients on keep-alive connections to `gateway`, cycling allowed / forbidden /
/// anonymous requests until `stop`.
fn load(
    gateway: SocketAddr,
    threads: usize,
    stop: Arc<AtomicBool>,
    start: Instant,
) -> Vec<thread::JoinHandle<Vec<Outcome>>> {
    let alice = format!(
        "Bearer {}",
        unsigned_token(
            "alice@example.com",
            &[("email", "alice@example.com".into())]
        )
    );
    let mix = vec![
        (Kind::Allowed, ALLOWED, Some(alice.clone())),
        (Kind::Forbidden, FORBIDDEN, Some(alice)),
        (Kind::Anonymous, ALLOWED, None),
    ];
    paced_load(gateway, threads, PACE, mix, stop, start)
}

/// The `req` ids of the requests the upstream received after the first `skip` (each must
/// carry x-nmp-authorized).
fn upstream_ids(upstream: &Upstream, skip: usize) -> Vec<u64> {
    upstream
        .requests()
        .iter()
        .skip(skip)
        .map(|r| {
            assert_eq!(
                r.values("x-nmp-authorized"),
                ["true"],
                "forwarded without the decision header: {r:?}"
            );
            r.path
                .split_once("?req=")
                .and_then(|(_, id)| id.parse().ok())
                .unwrap_or_else(|| panic!("upstream got a request without an id: {}", r.path))
        })
        .collect()
}

/// How long after nmp-authz says `listening` again Envoy may still answer 503: its health
/// check (interval and healthy threshold in envoy/quickstart.yaml) has to see the new process.
const RECOVERY_SLACK: Duration = Duration::from_secs(10);

/// nmp-authz is SIGKILLed while three clients send allowed, forbidden and anonymous requests
/// through the quickstart Envoy, then restarted on the same ports. Every response is the right
/// decision or a 503, 503s only between the kill and shortly after the restart, the upstream
/// receives exactly the requests answered 200 and no request denied by policy, and Envoy keeps
/// running (no restart).
#[test]
fn nmp_authz_killed_under_load_fails_closed_and_resumes() {
    let upstream = Upstream::start();
    let mut authz = NmpAuthz::quickstart();
    let mut envoy = quickstart_envoy(&authz, &upstream);
    let envoy_pid = envoy.pid();
    // Envoy's health check has to pass before it sends Checks.
    let token = unsigned_token("alice@example.com", &[]);
    let bearer = format!("Bearer {token}");
    poll_until(Duration::from_secs(30), || {
        let mut client = KeepAlive::new(envoy.addr());
        match client.get(ALLOWED, &[("Authorization", &bearer)]) {
            Ok(r) if r.status == 200 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .unwrap_or_else(|e| panic!("gateway not serving: {e}\n{}", envoy.log()));
    let warm_up = upstream.requests().len();
    assert_eq!(warm_up, 1);

    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let handles = load(envoy.addr(), 3, stop.clone(), start);
    let counter = || upstream.requests().len();

    // Wall-clock phases (the scenario, not readiness): 3 s of decisions, 2 s down, then until
    // 4 s after nmp-authz is listening again.
    let until = |at: Duration| {
        if let Some(left) = at.checked_sub(start.elapsed()) {
            thread::sleep(left);
        }
    };
    until(Duration::from_secs(3));
    let before_kill = counter();
    assert!(before_kill > warm_up, "nothing forwarded before the kill");
    let killed = start.elapsed();
    authz.kill();
    until(killed + Duration::from_secs(2));
    let forwarded_while_down = counter() - before_kill;
    let restart_began = start.elapsed();
    authz.restart();
    let ready = start.elapsed();
    until(ready + Duration::from_secs(4));
    let resumed = counter() - before_kill - forwarded_while_down;
    assert!(
        resumed > 0,
        "nothing forwarded after the restart\n{}",
        envoy.log()
    );
    stop.store(true, Ordering::SeqCst);
    let outcomes: Vec<Outcome> = handles
        .into_iter()
        .flat_map(|h| h.join().expect("load thread"))
        .collect();
    let total = start.elapsed();

    // Every answer is the decision or a 503 in the window.
    let window_end = ready + RECOVERY_SLACK;
    let mut unavailable = Vec::new();
    for o in &outcomes {
        match &o.status {
            Ok(s) if *s == o.kind.status() => {}
            Ok(503) => {
                assert!(
                    o.received >= killed && o.sent <= window_end,
                    "503 outside the outage (killed at {killed:?}, ready at {ready:?}): {o:?}"
                );
                unavailable.push(o);
            }
            other => panic!(
                "wrong answer {other:?} for {o:?} (killed at {killed:?}, ready at {ready:?})\n{}",
                envoy.log()
            ),
        }
    }
    assert!(!unavailable.is_empty(), "the kill was never observed");

    // The upstream received exactly the requests answered 200, each once.
    let ok: HashSet<u64> = outcomes
        .iter()
        .filter(|o| o.status == Ok(200))
        .map(|o| o.id)
        .collect();
    let ids = upstream_ids(&upstream, warm_up);
    let distinct: HashSet<u64> = ids.iter().copied().collect();
    assert_eq!(distinct.len(), ids.len(), "a request was forwarded twice");
    assert_eq!(distinct, ok, "forwarded set differs from the 200 set");
    for o in &outcomes {
        if distinct.contains(&o.id) {
            assert_eq!(
                o.kind,
                Kind::Allowed,
                "a denied request reached the upstream: {o:?}"
            );
        }
    }
    assert!(envoy.is_running());
    assert_eq!(envoy.pid(), envoy_pid, "Envoy was not restarted");

    let first_503 = unavailable.iter().map(|o| o.received).min().unwrap();
    let last_503 = unavailable.iter().map(|o| o.received).max().unwrap();
    let count = |k: Kind| outcomes.iter().filter(|o| o.kind == k).count();
    eprintln!(
        "kill under load: {} requests in {total:.1?} ({} allowed, {} forbidden, {} anonymous); \
         {} forwarded (= the 200s), {} answered 503; killed at {killed:.2?}, restart began \
         {restart_began:.2?}, listening again {ready:.2?}; 503s seen {first_503:.2?}..{last_503:.2?} \
         (last one {:.2?} after ready); {forwarded_while_down} forwarded while down, {resumed} after",
        outcomes.len(),
        count(Kind::Allowed),
        count(Kind::Forbidden),
        count(Kind::Anonymous),
        ok.len(),
        unavailable.len(),
        last_503.saturating_sub(ready),
    );
}
