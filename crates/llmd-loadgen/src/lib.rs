//! `llmd-loadgen`: load for OpenAI-compatible serving stacks, with the shapes that expose P/D
//! behaviour and results a person can act on.
//!
//! - `run`: open-loop rate modes (constant, Poisson, gamma burstiness, trace replay) or fixed
//!   concurrency, bounded by duration and/or request count, warm-up excluded; datasets in tokens
//!   (synthetic length distributions, shared-prefix groups, ShareGPT files, Mooncake traces).
//! - `pd-concurrent WORKERS MINUTES`: the llm-d P/D demo's worker patterns.
//! - `report A.json [B.json ...]`: saved reports side by side.
//!
//! Every request carries `x-request-id` and a fresh sampled `traceparent`, so traces start at the
//! client. Measured per request: TTFT (first non-empty token), inter-token latencies, TPOT, E2E,
//! tokens from `usage`, errors by kind, the P/D proxy's `server-timing` breakdown, and (open
//! loop) how late it left against its schedule.
//!
//! | module | what it does |
//! |---|---|
//! | `client` | one request, measured; SSE parsing; error kinds |
//! | `h1` | the minimal HTTP/1.1 client used for `http://` endpoints |
//! | `dataset` | prompts of N tokens, shared prefixes, ShareGPT, Mooncake traces |
//! | `runner` | the open-loop scheduler thread and the closed-loop workers |
//! | `scenario` | `pd-concurrent` |
//! | `stats` | distributions, goodput, the report JSON |
//! | `output` | progress line, summary table, comparison |
//! | `html` | the self-contained HTML report with SVG plots |
//! | `cli` | the command line: subcommands, target, datasets, flags into a plan |
//! | `sweep` | `run --sweep`: rising-rate stages and the highest passing rate |
//! | `pd` | `pd-concurrent` run against a target |

mod cli;
pub mod client;
pub mod dataset;
pub mod h1;
pub mod html;
pub mod output;
mod pd;
pub mod runner;
pub mod scenario;
pub mod stats;
mod sweep;

pub use cli::{Args, Command, DatasetKind, LoadMode, PdArgs, RunArgs, Target};
pub use pd::run_pd;
pub use sweep::{Sweep, run_sweep, stage_passed};

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::stats::{Report, Slo};

/// Errors of the load generator.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad flags or inputs.
    #[error("{0}")]
    Config(String),
    /// The endpoint is not reachable before the run.
    #[error("ERROR: Cannot reach endpoint: {0}")]
    Preflight(String),
    /// Writing output.
    #[error("{path}: {source}")]
    Io {
        /// File.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A building block.
    #[error(transparent)]
    Client(#[from] client::ClientError),
    /// The dataset.
    #[error(transparent)]
    Dataset(#[from] dataset::DatasetError),
}

pub(crate) fn config_err(e: impl std::fmt::Display) -> Error {
    Error::Config(e.to_string())
}

/// Runs `run` to completion; returns the report (also printed and written as asked).
pub async fn run_load(args: &RunArgs, stop: CancellationToken) -> Result<Report, Error> {
    let plan = args.plan()?;
    let slo = args
        .slo
        .as_deref()
        .map(Slo::parse)
        .transpose()
        .map_err(config_err)?
        .unwrap_or_default();
    let extra = match &args.extra_body {
        None => serde_json::Map::new(),
        Some(s) => match serde_json::from_str(s) {
            Ok(Value::Object(m)) => m,
            _ => return Err(config_err("--extra-body must be a JSON object")),
        },
    };
    let maker = args.target.maker()?;
    let dataset = args.dataset(&maker)?;
    let client = args.target.client(args.api, extra)?;
    args.target.preflight(&client).await?;
    let progress = output::Progress::new(args.target.quiet);
    let bar = progress.bar();
    let out = runner::run(client, dataset, plan.clone(), progress, stop)
        .await
        .map_err(Error::Config)?;
    bar.finish_and_clear();
    let report = Report::build(
        args.config(),
        &out.outcomes,
        out.duration_s,
        out.send_window_s,
        plan.load.target_rate(),
        out.warmup_requests,
        slo,
    );
    args.target.write(&report, &out.outcomes)?;
    Ok(report)
}

/// Runs the load generator (the binary's and `llmd loadgen`'s entry point).
pub async fn run(args: Args, stop: CancellationToken) -> Result<(), Error> {
    // Every stream is a connection: raise the open-file limit to what the system allows.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::debug!(limit = n, "open-file limit"),
        Err(error) => tracing::warn!(%error, "cannot raise the open-file limit"),
    }
    match args.command {
        Command::Run(a) if a.sweep.is_some() => {
            let sweep = run_sweep(&a, stop).await?;
            print!("{}", output::sweep_table(&sweep));
        }
        Command::Run(a) => {
            let report = run_load(&a, stop).await?;
            print!("{}", output::summary(&report));
        }
        Command::PdConcurrent(a) => {
            let report = run_pd(&a, stop).await?;
            print!("{}", output::summary(&report));
            println!(
                "Expected trace spans per P/D request: llm_d.pd_proxy.request > llm_d.pd_proxy.prefill, llm_d.pd_proxy.decode; llm_request on each engine"
            );
            println!("Grafana: http://localhost:3000/d/pd-coordinator-metrics");
        }
        Command::Report { files } => {
            let mut reports = Vec::new();
            let mut names = Vec::new();
            for f in &files {
                let text = std::fs::read(f).map_err(|source| Error::Io {
                    path: f.display().to_string(),
                    source,
                })?;
                let r: Report = serde_json::from_slice(&text)
                    .map_err(|e| config_err(format!("{}: not a report: {e}", f.display())))?;
                names.push(
                    f.file_stem()
                        .map(|s| s.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                );
                reports.push(r);
            }
            if reports.len() == 1 {
                print!("{}", output::summary(&reports[0]));
            } else {
                print!("{}", output::compare(&names, &reports));
            }
        }
    }
    Ok(())
}
