//! `nmp-authz-loadtest`: drives `envoy.service.auth.v3.Authorization/Check` and reports
//! allowed, denied by status, gRPC errors and latency (see `--help`).

use std::process::ExitCode;

use clap::Parser;

/// The allocator the server and the do-nothing server use: the load generator shares their two
/// cores, and with the system allocator it took more of them than it did inside the server's
/// binary, which moved BENCHMARKS.md's throughput ratios (88% against 95% for the same server).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Drive `Authorization/Check` and report allowed, denied by status, errors and latency.
#[derive(Parser, Debug)]
#[command(name = "nmp-authz-loadtest", version)]
struct Cli {
    #[command(flatten)]
    args: nmp_authz_loadtest::Args,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match nmp_authz_loadtest::run(&cli.args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(reason) => {
            eprintln!("nmp-authz-loadtest: {reason}");
            ExitCode::FAILURE
        }
    }
}
