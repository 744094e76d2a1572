//! `llmd-loadgen`: a load generator for OpenAI-compatible serving stacks.
//!
//! It will own: the `pd-concurrent` scenario (workers with distinct traffic patterns: long
//! prompt/short output, long/long, mixed, bursty, streaming), open-loop rate modes (constant,
//! Poisson, gamma, fixed concurrency, SLO sweep), token-exact synthetic, shared-prefix, ShareGPT
//! and trace-replay datasets, client-side TTFT/ITL/TPOT/E2E measurement with percentiles and
//! goodput, `traceparent` on every request, and a summary a person can act on.
//!
//! Status: not built yet (issue 7). The binary says so and exits with an error.

use llmd_telemetry::TelemetryArgs;

/// Command-line flags of `llmd-loadgen` (also the `llmd` CLI's subcommand of the same name).
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "llmd-loadgen",
    version,
    about = "The load generator of llmd-rs (not built yet: issue 7)"
)]
pub struct Args {
    /// Logging and tracing.
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
}

/// Errors of the load generator.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The service is not implemented yet.
    #[error("llmd-loadgen: the load generator is not built yet (tracked in issue 7)")]
    NotBuilt,
}

/// Runs the load generator until shutdown.
pub async fn run(_args: Args) -> Result<(), Error> {
    Err(Error::NotBuilt)
}
