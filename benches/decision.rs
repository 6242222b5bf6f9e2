//! The decision core in-process: NMP's full endpoint catalog (read from
//! ../shared/nmp/static-authz.yaml, never copied) with 100k bindings, and a realistic mix of
//! requests; and loading those bindings (parse and compile, from NMP's bundle `data.json` and
//! from YAML). `cargo bench --bench decision`; see BENCHMARKS.md for figures and method.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use nmp_authz_core::policy::{
    BindingDefaults, CompiledPolicy, Format, PolicyDocument, Principal, SourceDocument,
};

const NMP_STATIC: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../shared/nmp/static-authz.yaml"
);

/// How many bindings: `NMP_AUTHZ_BENCH_BINDINGS`, 100,000 unless set (BENCHMARKS.md's scaling
/// table sets it).
fn bindings() -> usize {
    std::env::var("NMP_AUTHZ_BENCH_BINDINGS").map_or(100_000, |n| {
        n.parse()
            .expect("NMP_AUTHZ_BENCH_BINDINGS is a number of bindings")
    })
}

/// NMP's catalog with [`bindings`] bindings: users in 1,000 workspaces, groups, and `*`.
fn policy() -> CompiledPolicy {
    let text = std::fs::read_to_string(NMP_STATIC)
        .unwrap_or_else(|e| panic!("{NMP_STATIC}: {e} (the benchmark needs NMP's catalog)"));
    let mut doc = PolicyDocument::parse(&text, Format::Yaml).expect("NMP's catalog parses");
    let roles = ["Viewer", "Editor", "Admin"];
    for n in 0..bindings() {
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

/// [`bindings`] bindings as `bench-policy.sh` writes them: NMP's bundle `data.json` (the document
/// under `authz`, `envoy` and `common`) and a YAML file.
fn binding_texts() -> (String, String) {
    let roles = ["Viewer", "Editor", "Admin"];
    let mut principals = serde_json::Map::new();
    let mut yaml = String::from("authz:\n  principals:\n");
    for n in 0..bindings() {
        let who = if n % 10 == 0 {
            format!("group-{}", n / 10)
        } else {
            format!("user-{n}@example.com")
        };
        let (ws, role) = (format!("ws-{}", n % 1000), roles[n % 3]);
        yaml.push_str(&format!(
            "    \"{who}\": {{workspaces: {{{ws}: [{role}]}}}}\n"
        ));
        principals.insert(who, serde_json::json!({"workspaces": {ws: [role]}}));
    }
    let authz = serde_json::json!({"principals": principals});
    let data = serde_json::json!({"authz": authz, "envoy": authz, "common": authz});
    (data.to_string(), yaml)
}

/// Read, parse and compile as a reload does (after the download and gunzip): NMP's catalog as
/// one source, the bindings as another. Only under `cargo bench`, as `percentiles`.
fn loads(c: &mut Criterion) {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let catalog = std::fs::read_to_string(NMP_STATIC).expect("NMP's catalog");
    let catalog = SourceDocument::parse(&catalog, Format::Yaml).expect("NMP's catalog parses");
    let (data, yaml) = binding_texts();
    let defaults = BindingDefaults::default();
    let compile = |bindings: SourceDocument| {
        CompiledPolicy::build_layers(&[&catalog, &bindings], &defaults, "r").expect("compiles")
    };
    let from_bundle = || compile(SourceDocument::parse_bundle_data(&data).expect("parses"));
    let from_yaml = || compile(SourceDocument::parse(&yaml, Format::Yaml).expect("parses"));
    let count = bindings();
    let mut group = c.benchmark_group("load");
    group.sample_size(10);
    group.bench_function(format!("{count} bindings, bundle data.json"), |b| {
        b.iter(from_bundle)
    });
    group.bench_function(format!("{count} bindings, YAML"), |b| b.iter(from_yaml));
    group.finish();

    // The regression guard (BENCHMARKS.md, "Scaling"), with `cargo bench --bench decision --
    // load`: the median of 5 loads, per binding, against a limit about twice what this machine
    // measured when it was set.
    if !std::env::args().any(|a| a == "load") {
        return;
    }
    let guards: [(&str, u128, &dyn Fn() -> CompiledPolicy); 2] = [
        (
            "bundle data.json",
            LOAD_LIMIT_NS_PER_BINDING[0],
            &from_bundle,
        ),
        ("YAML", LOAD_LIMIT_NS_PER_BINDING[1], &from_yaml),
    ];
    for (what, limit, load) in guards {
        let mut times: Vec<u128> = (0..5)
            .map(|_| {
                let started = std::time::Instant::now();
                black_box(load());
                started.elapsed().as_nanos()
            })
            .collect();
        times.sort_unstable();
        let per_binding = times[2] / count as u128;
        println!(
            "load/guard {what}: {per_binding} ns a binding (limit {limit}), median {} ms for {count}",
            times[2] / 1_000_000
        );
        assert!(
            per_binding <= limit,
            "loading {what} regressed: {per_binding} ns a binding, limit {limit}"
        );
    }
}

/// Parse and compile per binding, bundle `data.json` then YAML (see `loads`).
/// Measured when set (2026-12-05, this machine, busy): 330 and 5,350 ns.
const LOAD_LIMIT_NS_PER_BINDING: [u128; 2] = [700, 11_000];

criterion_group!(benches, decisions, percentiles, loads);
criterion_main!(benches);
