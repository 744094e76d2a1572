//! `llmd-gateway` binary: flags, telemetry, then [`llmd_gateway::run`].

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    match try_main(llmd_gateway::Args::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn try_main(args: llmd_gateway::Args) -> anyhow::Result<()> {
    let telemetry = llmd_telemetry::init("llmd-gateway", &args.telemetry.to_config())?;
    llmd_gateway::run(args, telemetry.shutdown_token()).await?;
    Ok(())
}
