//! `llmd-pd-proxy` binary: flags, telemetry, then [`llmd_pd_proxy::run`].

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    match try_main(llmd_pd_proxy::Args::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn try_main(args: llmd_pd_proxy::Args) -> anyhow::Result<()> {
    let telemetry = llmd_telemetry::init("llmd-pd-proxy", &args.telemetry_config())?;
    llmd_pd_proxy::run(args, telemetry.shutdown_token()).await?;
    Ok(())
}
