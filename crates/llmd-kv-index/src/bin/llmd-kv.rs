//! `llmd-kv` binary: flags, logging to stderr, then [`llmd_kv_index::cli::run`] (results on
//! stdout as JSON).

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    match try_main(llmd_kv_index::cli::Args::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn try_main(args: llmd_kv_index::cli::Args) -> anyhow::Result<()> {
    let _telemetry = llmd_telemetry::init("llmd-kv", &args.telemetry.to_config())?;
    llmd_kv_index::cli::run(args, &mut std::io::stdout()).await?;
    Ok(())
}
