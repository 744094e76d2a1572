//! `llmd-sim` binary: flags, telemetry, then [`llmd_sim::run`] until SIGTERM/Ctrl-C.

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    match try_main(llmd_sim::Args::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn try_main(args: llmd_sim::Args) -> anyhow::Result<()> {
    let telemetry = llmd_telemetry::init("llmd-sim", &args.telemetry.to_config())?;
    llmd_sim::run(args, telemetry.shutdown_token()).await?;
    Ok(())
}
