//! The fuzz targets' bodies (`fuzz/src/lib.rs`, included here by path) over their generated
//! seeds and the checked-in corpus `fuzz/corpus/<target>/`: the seeds and every input that
//! once crashed or decided wrongly. Runs in every `cargo test`, without cargo-fuzz.

#[path = "../fuzz/src/lib.rs"]
mod bodies;

use std::path::Path;

fn run(target: &str) {
    let (_, body) = bodies::TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .expect("a known target");
    let seeds = bodies::seeds(target);
    assert!(!seeds.is_empty(), "{target} has seeds");
    for seed in &seeds {
        body(seed);
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("corpus entry").path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} is empty", dir.display());
    for file in files {
        let data = std::fs::read(&file).expect("corpus file");
        let outcome = std::panic::catch_unwind(|| body(&data));
        assert!(outcome.is_ok(), "{} fails", file.display());
    }
}

#[test]
fn matching_corpus() {
    run("matching");
}

#[test]
fn token_corpus() {
    run("token");
}

#[test]
fn check_request_corpus() {
    run("check_request");
}

#[test]
fn policy_load_corpus() {
    run("policy_load");
}

#[test]
fn pdp_input_corpus() {
    run("pdp_input");
}

#[test]
fn module_request_corpus() {
    run("module_request");
}

/// Every generated seed is in the checked-in corpus, so `cargo fuzz` starts from them too.
/// `FUZZ_WRITE_SEEDS=1 cargo test --test fuzz_regressions` writes them there.
#[test]
fn generated_seeds_are_checked_in() {
    let write = std::env::var_os("FUZZ_WRITE_SEEDS").is_some();
    for (target, _) in bodies::TARGETS {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/corpus")
            .join(target);
        for (i, seed) in bodies::seeds(target).iter().enumerate() {
            let file = dir.join(format!("seed-{i}"));
            if write {
                std::fs::create_dir_all(&dir).expect("corpus dir");
                std::fs::write(&file, seed).expect("seed file");
            }
            let checked_in = std::fs::read(&file).unwrap_or_default();
            assert!(
                checked_in == *seed,
                "{} differs from the generated seed: run FUZZ_WRITE_SEEDS=1 cargo test --test fuzz_regressions",
                file.display()
            );
        }
    }
}

/// A YAML alias bomb (under 600 bytes naming 10^9 nodes through nested anchors) is refused by
/// the parser's budget instead of being expanded (measured: about 180 MB and 2 s in a debug
/// build before the refusal).
#[test]
fn yaml_alias_bomb_is_refused() {
    let mut text =
        String::from("authz:\n  workspaces:\n    a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for level in 1..9 {
        let refs = vec![format!("*a{}", level - 1); 10].join(", ");
        text.push_str(&format!("    a{level}: &a{level} [{refs}]\n"));
    }
    assert!(text.len() < 600, "{}", text.len());
    let err =
        nmp_authz_core::policy::PolicyDocument::parse(&text, nmp_authz_core::policy::Format::Yaml)
            .expect_err("an alias bomb is refused");
    assert!(err.message.contains("budget"), "{err}");
}
