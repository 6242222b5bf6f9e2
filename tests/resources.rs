//! Resources under hostile or heavy use of the real server (the binary, quickstart): 10k
//! concurrent Checks, oversized Check requests, oversized headers through Envoy, slow and idle
//! clients on both ports, running out of file descriptors. Each test checks that decisions stay
//! right, the server stays up, and descriptors come back; and prints its figures.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use common::check_request;
use common::gateway::{
    NmpAuthz, Upstream, poll_until, quickstart_envoy, try_request, unsigned_token,
};
use common::process::{Server, fd_count, http_get, rss_kib, thread_count};
use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use tonic::transport::Channel;

const ALLOWED: &str = "/apis/models/v2/workspaces/default/models";
const FORBIDDEN: &str = "/apis/models/v2/workspaces/team-a/models";

fn quickstart() -> (Server, SocketAddr, SocketAddr) {
    let mut server = Server::start(&["--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"]);
    let (grpc, http) = server.addresses();
    (server, grpc, http)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("client runtime")
}

/// The status Envoy would return for a CheckResponse (200 for OK), or the gRPC error.
async fn status(
    client: &mut AuthorizationClient<Channel>,
    request: CheckRequest,
) -> Result<i32, String> {
    let response = client
        .check(request)
        .await
        .map_err(|e| format!("{:?}: {}", e.code(), e.message()))?
        .into_inner();
    Ok(match response.http_response {
        Some(HttpResponse::OkResponse(_)) => 200,
        Some(HttpResponse::DeniedResponse(d)) => d.status.map_or(0, |s| s.code),
        _ => 0,
    })
}

fn alice() -> String {
    format!("Bearer {}", unsigned_token("alice@example.com", &[]))
}

/// Descriptors of `pid` back to `baseline` (polled: the server closes them as it sees EOF).
fn fds_return_to(pid: u32, baseline: usize) -> Result<(usize, Duration), String> {
    poll_until(Duration::from_secs(15), || {
        let now = fd_count(pid);
        if now <= baseline {
            Ok(now)
        } else {
            Err(format!("{now} fds, baseline {baseline}"))
        }
    })
}

/// 10,000 Checks in flight at once over 4 HTTP/2 connections (the server's per-connection
/// stream limit queues the rest in the client): every one gets the right decision, the server
/// is alive, and its descriptors return to the baseline when the connections close.
#[test]
fn ten_thousand_concurrent_checks_are_all_answered_and_descriptors_return() {
    let (server, grpc, http) = quickstart();
    let pid = server.child.id();
    let fds_before = fd_count(pid);
    let rss_before = rss_kib(pid);
    let token = alice();
    // Twice: descriptors must come back each time.
    let mut rounds = Vec::new();
    for _ in 0..2 {
        let runtime = runtime();
        let (took, fds_during) = runtime.block_on(ten_thousand(grpc, &token, pid));
        drop(runtime); // closes the four connections
        let (fds_after, settled) = fds_return_to(pid, fds_before).unwrap_or_else(|e| panic!("{e}"));
        rounds.push((took, fds_during, fds_after, settled, rss_kib(pid)));
    }
    let (code, _) = http_get(http, "/health/live");
    assert_eq!(code, 200);
    for (n, (took, during, after, settled, rss)) in rounds.iter().enumerate() {
        eprintln!(
            "10k concurrent Checks over 4 connections, round {}: all right in {took:.2?}; fds \
             {fds_before} -> {during} (connected) -> {after} ({settled:.2?} after close); RSS \
             {rss_before} KiB at start, {rss} KiB after",
            n + 1
        );
    }
    // 10k requests in flight cost tens of MiB (the server accepts every stream at once);
    // RSS after a round depends on that peak, so the bound is absolute. Flat memory over
    // time is the soak's check.
    for (_, _, _, _, rss) in &rounds {
        assert!(
            *rss < 192 * 1024,
            "RSS {rss} KiB after 10k concurrent Checks"
        );
    }
    eprintln!("threads {}", thread_count(pid));
}

async fn ten_thousand(grpc: SocketAddr, token: &str, pid: u32) -> (Duration, usize) {
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(
            AuthorizationClient::connect(format!("http://{grpc}"))
                .await
                .unwrap(),
        );
    }
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..10_000usize {
        let mut client = clients[i % clients.len()].clone();
        let (path, headers, want) = match i % 3 {
            0 => (ALLOWED, vec![("authorization", token.to_string())], 200),
            1 => (FORBIDDEN, vec![("authorization", token.to_string())], 403),
            _ => (ALLOWED, vec![], 401),
        };
        tasks.spawn(async move {
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let got = status(&mut client, check_request("GET", path, None, &headers)).await;
            (i, want, got)
        });
    }
    let mut answered = 0;
    while let Some(joined) = tokio::time::timeout(Duration::from_secs(60), tasks.join_next())
        .await
        .expect("10k Checks answered within 60 s")
    {
        let (i, want, got) = joined.expect("check task");
        assert_eq!(got, Ok(want), "check {i}");
        answered += 1;
    }
    assert_eq!(answered, 10_000);
    (started.elapsed(), fd_count(pid))
}

/// Check requests far beyond anything Envoy sends (Envoy caps headers at 60 KiB / 100 by
/// default): a 1 MiB authorization header, 10,000 headers, duplicated credential headers, a
/// 5 MiB message. Each is denied (or refused by gRPC's 4 MiB message limit, which Envoy turns
/// into a 503), none crashes the server, and it answers normally afterwards.
#[test]
fn oversized_check_requests_are_denied_and_the_server_stays_up() {
    let (server, grpc, _) = quickstart();
    let pid = server.child.id();
    let runtime = runtime();
    let rss_before = rss_kib(pid);
    runtime.block_on(async {
        let mut client = AuthorizationClient::connect(format!("http://{grpc}"))
            .await
            .unwrap();
        let huge = format!("Bearer {}", "a".repeat(1 << 20));
        let got = status(
            &mut client,
            check_request("GET", ALLOWED, None, &[("authorization", &huge)]),
        )
        .await;
        assert_eq!(got, Ok(401), "1 MiB authorization header");

        let names: Vec<String> = (0..10_000).map(|i| format!("x-filler-{i}")).collect();
        let many: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "v")).collect();
        let got = status(&mut client, check_request("GET", ALLOWED, None, &many)).await;
        assert_eq!(got, Ok(401), "10k headers, no credential");

        let token = alice();
        let mut many_with_token = many.clone();
        many_with_token.push(("authorization", &token));
        let got = status(
            &mut client,
            check_request("GET", FORBIDDEN, None, &many_with_token),
        )
        .await;
        assert_eq!(got, Ok(403), "10k headers, forbidden path");

        let big_path = format!("{ALLOWED}/{}", "x".repeat(1 << 20));
        let got = status(
            &mut client,
            check_request("GET", &big_path, None, &[("authorization", &token)]),
        )
        .await;
        // A 1 MiB model name: the decision for any name (alice reads models in default).
        assert_eq!(got, Ok(200), "1 MiB path segment");

        let five_mib = "b".repeat(5 << 20);
        let got = status(
            &mut client,
            check_request(
                "GET",
                ALLOWED,
                None,
                &[("authorization", &token), ("x-big", &five_mib)],
            ),
        )
        .await;
        let error = got.expect_err("a 5 MiB Check is refused by the message size limit");
        assert!(
            error.contains("OutOfRange") || error.contains("ResourceExhausted"),
            "{error}"
        );

        let got = status(
            &mut client,
            check_request("GET", ALLOWED, None, &[("authorization", &token)]),
        )
        .await;
        assert_eq!(got, Ok(200), "a normal Check afterwards");
    });
    let rss_after = rss_kib(pid);
    eprintln!(
        "oversized Checks: all denied/refused, server up; RSS {rss_before} -> {rss_after} KiB"
    );
}

/// Through the quickstart Envoy: a 100 KiB header and 200 headers are refused by Envoy itself
/// (431) before ext_authz; nothing reaches the upstream, and nmp-authz is never asked.
#[test]
fn oversized_headers_through_envoy_are_refused_by_envoy() {
    let upstream = Upstream::start();
    let authz = NmpAuthz::quickstart();
    let envoy = quickstart_envoy(&authz, &upstream);
    let token = alice();
    let big = "v".repeat(100 * 1024);
    let response = try_request(
        envoy.addr(),
        "GET",
        ALLOWED,
        &[("Authorization", &token), ("x-big", &big)],
    );
    let big_status = response.map(|r| r.status);
    let names: Vec<String> = (0..200).map(|i| format!("x-filler-{i}")).collect();
    let mut many: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "v")).collect();
    many.push(("Authorization", &token));
    let many_status = try_request(envoy.addr(), "GET", ALLOWED, &many).map(|r| r.status);
    for (what, got) in [
        ("100 KiB header", &big_status),
        ("200 headers", &many_status),
    ] {
        // Envoy answers 431, or resets the connection (an Err here): never forwards.
        assert!(
            matches!(got, Ok(431) | Err(_)),
            "{what}: {got:?}\n{}",
            envoy.log()
        );
    }
    assert!(
        upstream.requests().is_empty(),
        "forwarded: {:?}",
        upstream.requests()
    );
    let normal = try_request(envoy.addr(), "GET", ALLOWED, &[("Authorization", &token)]).unwrap();
    assert_eq!(normal.status, 200);
    eprintln!(
        "through Envoy: 100 KiB header -> {big_status:?}, 200 headers -> {many_status:?}, none forwarded"
    );
}

/// Idle and trickling connections to both ports do not hold up other Checks; the HTTP port
/// closes a connection that has not sent its headers in time; descriptors come back.
#[test]
fn slow_clients_do_not_block_checks_and_descriptors_return() {
    let (server, grpc, http) = quickstart();
    let pid = server.child.id();
    let fds_before = fd_count(pid);
    // 100 connections that send nothing, 20 that trickle a request a byte at a time.
    let mut idle: Vec<TcpStream> = (0..50)
        .flat_map(|_| {
            [
                TcpStream::connect(grpc).unwrap(),
                TcpStream::connect(http).unwrap(),
            ]
        })
        .collect();
    let mut trickle: Vec<TcpStream> = (0..10)
        .flat_map(|_| {
            [
                TcpStream::connect(grpc).unwrap(),
                TcpStream::connect(http).unwrap(),
            ]
        })
        .collect();
    let runtime = runtime();
    let token = alice();
    let worst = runtime.block_on(async {
        let mut client = AuthorizationClient::connect(format!("http://{grpc}"))
            .await
            .unwrap();
        let mut worst = Duration::ZERO;
        for i in 0..200 {
            // Every tenth Check, one more byte on each trickling connection.
            if i % 10 == 0 {
                for stream in &mut trickle {
                    let _ = stream.write_all(b"G");
                }
            }
            let started = Instant::now();
            let got = status(
                &mut client,
                check_request("GET", ALLOWED, None, &[("authorization", &token)]),
            )
            .await;
            worst = worst.max(started.elapsed());
            assert_eq!(got, Ok(200));
        }
        worst
    });
    assert!(worst < Duration::from_secs(1), "slowest Check {worst:?}");
    let (code, _) = http_get(http, "/health/live");
    assert_eq!(code, 200, "HTTP answers beside 60 slow connections");
    let fds_with_slow = fd_count(pid);

    // The HTTP port gives up on a connection that has not finished its headers.
    let mut silent = TcpStream::connect(http).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let started = Instant::now();
    let mut buf = [0; 64];
    let closed = silent.read(&mut buf);
    let closed_after = started.elapsed();
    assert!(
        closed.is_ok() && closed_after < Duration::from_secs(25),
        "idle HTTP connection not closed by the server: {closed:?} after {closed_after:?}"
    );

    idle.clear();
    trickle.clear();
    drop(silent);
    drop(runtime);
    let (fds_after, settled) = fds_return_to(pid, fds_before).unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "slow clients: 200 Checks beside 100 idle + 20 trickling connections, slowest {worst:.2?}; \
         an idle HTTP connection closed by the server after {closed_after:.1?}; fds {fds_before} -> \
         {fds_with_slow} -> {fds_after} ({settled:.2?} after the clients closed)"
    );
}

/// The server runs out of file descriptors (its limit lowered with prlimit, then idle
/// connections until accept fails): both ports work again once the connections close — an
/// accept error is not fatal to either listener.
#[test]
fn running_out_of_file_descriptors_is_survived() {
    let (server, grpc, http) = quickstart();
    let pid = server.child.id();
    let baseline = fd_count(pid);
    let limit = baseline + 16;
    let limited = Command::new("prlimit")
        .arg(format!("--pid={pid}"))
        .arg(format!("--nofile={limit}:{limit}"))
        .status()
        .expect("run prlimit (util-linux)");
    assert!(limited.success(), "prlimit");
    // Far more connections than the limit: the kernel completes them (the listen backlog),
    // the server's accept fails with EMFILE.
    let mut held = Vec::new();
    for _ in 0..40 {
        held.push(TcpStream::connect(http).unwrap());
        held.push(TcpStream::connect(grpc).unwrap());
    }
    poll_until(Duration::from_secs(10), || {
        let n = fd_count(pid);
        if n + 1 >= limit {
            Ok(())
        } else {
            Err(format!("{n} of {limit}"))
        }
    })
    .unwrap_or_else(|e| panic!("the server did not reach its fd limit: {e}"));
    drop(held);
    let (_, recovered) = poll_until(Duration::from_secs(15), || {
        let response = try_request(http, "GET", "/health/live", &[])?;
        if response.status != 200 {
            return Err(format!("HTTP {}", response.status));
        }
        Ok(())
    })
    .unwrap_or_else(|e| panic!("HTTP face did not survive EMFILE: {e}\n{}", server.output()));
    let runtime = runtime();
    let got = runtime.block_on(async {
        let mut client = AuthorizationClient::connect(format!("http://{grpc}"))
            .await
            .unwrap();
        status(
            &mut client,
            check_request("GET", ALLOWED, None, &[("authorization", &alice())]),
        )
        .await
    });
    assert_eq!(got, Ok(200), "gRPC after EMFILE");
    eprintln!(
        "fd exhaustion at limit {limit}: HTTP and gRPC answer again {recovered:.2?} after the clients closed"
    );
}
