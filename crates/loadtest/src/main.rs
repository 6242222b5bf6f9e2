//! `nmp-authz-loadtest`: drives `envoy.service.auth.v3.Authorization/Check` and reports
//! allowed, denied by status, gRPC errors and latency (see `--help`).

use std::process::ExitCode;

use clap::Parser;

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
