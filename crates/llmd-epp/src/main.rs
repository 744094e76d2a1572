//! `llmd-epp` binary: flags, telemetry, then [`llmd_epp::run`].

use std::process::ExitCode;

use clap::Parser;

/// mimalloc: the request path allocates per request (the stream's state, the decoded messages,
/// the answers), and glibc's malloc cost 7-13 CPU-µs per request behind Envoy, measured with
/// `scripts/bench-epp-floor.sh` (`docs/benchmarks.md`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    match try_main(llmd_epp::Args::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn try_main(args: llmd_epp::Args) -> anyhow::Result<()> {
    let telemetry = llmd_telemetry::init("llmd-epp", &args.telemetry_config())?;
    llmd_epp::run(args, telemetry.shutdown_token()).await?;
    Ok(())
}
