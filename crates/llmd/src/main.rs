//! `llmd`: one binary for every llmd-rs role. Each subcommand takes exactly the flags and
//! environment variables of the service crate's own binary, because both use the crate's `Args`.

mod demo;
mod fetch;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// mimalloc, as in `llmd-epp`'s own binary: the EPP's request path allocates per request, and
/// glibc's malloc cost it 7-13 CPU-µs per request behind Envoy (`docs/benchmarks.md`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// llmd-rs: disaggregated LLM serving (EPP, P/D proxy, simulator, load generator, gateway).
#[derive(Debug, Parser)]
#[command(name = "llmd", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Endpoint picker (Envoy ext_proc server).
    Epp(Box<llmd_epp::Args>),
    /// Prefill/decode routing sidecar.
    PdProxy(Box<llmd_pd_proxy::Args>),
    /// vLLM simulator.
    Sim(Box<llmd_sim::Args>),
    /// Load generator.
    Loadgen(Box<llmd_loadgen::Args>),
    /// Local ext_proc-calling gateway (a stand-in for Envoy).
    Gateway(Box<llmd_gateway::Args>),
    /// Inspect block keys, tokenization and KV events.
    Kv(Box<llmd_kv_index::cli::Args>),
    /// Run the whole stack in this process on loopback ports and drive it: precise prefix-cache
    /// routing vs random routing, then prefill/decode with a trace waterfall.
    Demo(Box<demo::DemoArgs>),
    /// Print a shell completion script (`llmd completions bash > /etc/bash_completion.d/llmd`).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    match try_main(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn try_main(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Epp(args) => {
            let t = llmd_telemetry::init("llmd-epp", &args.telemetry_config())?;
            llmd_epp::run(*args, t.shutdown_token()).await?;
        }
        Command::PdProxy(args) => {
            let t = llmd_telemetry::init("llmd-pd-proxy", &args.telemetry_config())?;
            llmd_pd_proxy::run(*args, t.shutdown_token()).await?;
        }
        Command::Sim(args) => {
            let t = llmd_telemetry::init("llmd-sim", &args.telemetry.to_config())?;
            llmd_sim::run(*args, t.shutdown_token()).await?;
        }
        Command::Loadgen(args) => {
            let t = llmd_telemetry::init("llmd-loadgen", &args.telemetry.to_config())?;
            llmd_loadgen::run(*args, t.shutdown_token()).await?;
        }
        Command::Kv(args) => {
            let _t = llmd_telemetry::init("llmd-kv", &args.telemetry.to_config())?;
            llmd_kv_index::cli::run(*args, &mut std::io::stdout()).await?;
        }
        Command::Demo(args) => {
            // Without an OTLP endpoint of the user's, spans go to a receiver in this process,
            // so the demo can print one request's trace.
            let mut config = args.telemetry.to_config();
            if std::env::var_os("RUST_LOG").is_none() {
                // The summary is the demo's output; the components' access logs would bury it.
                config.log_filter = "warn".to_owned();
            }
            let spans = if config.tracing.endpoint.is_none() && !config.tracing.sdk_disabled {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
                let endpoint = format!("http://{}", listener.local_addr()?);
                config.tracing = config
                    .tracing
                    .with_endpoint(endpoint, llmd_telemetry::OtlpProtocol::Grpc);
                Some(demo::span_receiver(listener, args.otlp_endpoint.as_deref()).await?)
            } else {
                None
            };
            let t = llmd_telemetry::init("llmd-demo", &config)?;
            let stop = t.shutdown_token();
            demo::run(*args, stop, spans.map(|s| (s, &t))).await?;
        }
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "llmd", &mut std::io::stdout());
        }
        Command::Gateway(args) => {
            let t = llmd_telemetry::init("llmd-gateway", &args.telemetry.to_config())?;
            llmd_gateway::run(*args, t.shutdown_token()).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn completions_cover_every_subcommand() {
        let mut out = Vec::new();
        clap_complete::generate(
            clap_complete::Shell::Bash,
            &mut Cli::command(),
            "llmd",
            &mut out,
        );
        let script = String::from_utf8(out).unwrap_or_default();
        for sub in [
            "epp",
            "pd-proxy",
            "sim",
            "loadgen",
            "gateway",
            "kv",
            "completions",
        ] {
            assert!(script.contains(sub), "{sub}");
        }
        assert!(
            script.contains("--decode-timeout-ms"),
            "flags of the service crates too"
        );
    }
}
