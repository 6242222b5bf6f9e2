//! The decision core in-process: NMP's full endpoint catalog (read from
//! ../shared/nmp/static-authz.yaml, never copied) with 100k bindings, and a realistic mix of
//! requests. `cargo bench --bench decision`; see BENCHMARKS.md for figures and method.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use nmp_authz_core::policy::{BindingDefaults, CompiledPolicy, Format, PolicyDocument, Principal};

const NMP_STATIC: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../shared/nmp/static-authz.yaml"
);
const BINDINGS: usize = 100_000;

/// NMP's catalog with `BINDINGS` bindings: users in 1,000 workspaces, groups, and `*`.
fn policy() -> CompiledPolicy {
    let text = std::fs::read_to_string(NMP_STATIC)
        .unwrap_or_else(|e| panic!("{NMP_STATIC}: {e} (the benchmark needs NMP's catalog)"));
    let mut doc = PolicyDocument::parse(&text, Format::Yaml).expect("NMP's catalog parses");
    let roles = ["Viewer", "Editor", "Admin"];
    for n in 0..BINDINGS {
        let principal = if n % 10 == 0 {
            format!("group-{}", n / 10)
        } else {
            format!("user-{n}@example.com")
        };
        doc.bind(&principal, &format!("ws-{}", n % 1000), &[roles[n % 3]]);
    }
    let defaults = BindingDefaults {
        admin_email: Some("admin@example.com".into()),
        ..BindingDefaults::default()
    };
    CompiledPolicy::build(doc, &defaults, "bench").expect("compiles")
}

/// (principal, method, path): reads and writes in a workspace, a cross-workspace list, a tail
/// route, a denial, an admin, a service principal on an unknown path.
fn mix() -> Vec<(Principal, &'static str, String)> {
    let user = |n: usize, groups: &[&str]| Principal {
        id: Some(format!("user-{n}@example.com")),
        email: Some(format!("user-{n}@example.com")),
        groups: groups.iter().map(|g| g.to_string()).collect(),
        scopes: vec![
            "openid".into(),
            "platform:read".into(),
            "platform:write".into(),
        ],
    };
    let ws = |n: usize| format!("ws-{}", n % 1000);
    vec![
        (
            user(1, &["group-7"]),
            "GET",
            format!("/apis/models/v2/workspaces/{}/models", ws(1)),
        ),
        (
            user(2, &[]),
            "POST",
            format!("/apis/models/v2/workspaces/{}/models", ws(2)),
        ),
        (
            user(4, &["group-4"]),
            "GET",
            format!("/apis/models/v2/workspaces/{}/models/llama?page=2", ws(4)),
        ),
        (
            user(5, &[]),
            "GET",
            "/apis/models/v2/workspaces/-/models".to_string(),
        ),
        (
            user(7, &[]),
            "POST",
            format!(
                "/apis/inference-gateway/v2/workspaces/{}/openai/-/v1/chat/completions",
                ws(7)
            ),
        ),
        (
            user(8, &[]),
            "DELETE",
            format!("/apis/secrets/v2/workspaces/{}/secrets/s", ws(9)),
        ),
        (
            Principal::with_id("admin@example.com"),
            "GET",
            "/apis/auth/v2/iam/role-bindings".to_string(),
        ),
        (
            Principal::with_id("service:jobs"),
            "GET",
            "/v1/legacy/thing".to_string(),
        ),
    ]
}

fn decisions(c: &mut Criterion) {
    let policy = policy();
    let mix = mix();
    let mut group = c.benchmark_group("decision");
    group.bench_function("mix of 8 (per request)", |b| {
        let mut i = 0;
        b.iter(|| {
            let (principal, method, path) = &mix[i % mix.len()];
            i += 1;
            black_box(
                policy
                    .allow(Some(black_box(principal)), method, path)
                    .allowed,
            )
        })
    });
    for (n, (principal, method, path)) in mix.iter().enumerate() {
        group.bench_function(format!("{n}: {method} {path}"), |b| {
            b.iter(|| {
                black_box(
                    policy
                        .allow(Some(black_box(principal)), method, path)
                        .allowed,
                )
            })
        });
    }
    group.finish();
}

/// Median and p99 of single decisions over the mix (criterion reports means): each call timed
/// alone, 200k rounds of the mix. Only under `cargo bench` (not when `cargo test` runs benches).
fn percentiles(_: &mut Criterion) {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let policy = policy();
    let mix = mix();
    let mut histogram = hdrhistogram::Histogram::<u64>::new(3).expect("histogram");
    for _ in 0..200_000 {
        for (principal, method, path) in &mix {
            let started = std::time::Instant::now();
            black_box(
                policy
                    .allow(Some(black_box(principal)), method, path)
                    .allowed,
            );
            let took = started.elapsed().as_nanos();
            histogram
                .record(u64::try_from(took).unwrap_or(u64::MAX))
                .unwrap();
        }
    }
    println!(
        "decision/single calls over the mix: p50 {} ns, p90 {} ns, p99 {} ns, p99.9 {} ns ({} calls, each timed alone: includes ~20 ns of clock reads)",
        histogram.value_at_quantile(0.5),
        histogram.value_at_quantile(0.9),
        histogram.value_at_quantile(0.99),
        histogram.value_at_quantile(0.999),
        histogram.len(),
    );
}

criterion_group!(benches, decisions, percentiles);
criterion_main!(benches);
