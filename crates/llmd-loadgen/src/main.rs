//! `llmd-loadgen` binary: flags, telemetry, then [`llmd_loadgen::run`].

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    match try_main(llmd_loadgen::Args::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn try_main(args: llmd_loadgen::Args) -> anyhow::Result<()> {
    let telemetry = llmd_telemetry::init("llmd-loadgen", &args.telemetry.to_config())?;
    llmd_loadgen::run(args, telemetry.shutdown_token()).await?;
    Ok(())
}
