//! `llmd-sim`: a vLLM simulator that stands in for one vLLM pod when there is no GPU.
//!
//! It will own: vLLM's OpenAI API (completions and chat, streaming and not, usage with cached
//! tokens, vLLM-style errors), an engine model (scheduler loop, waiting queue, running batch,
//! a KV block pool with prefix caching and LRU eviction, a timing model), vLLM's KV events over
//! ZMQ (both encodings), the NIXL P/D protocol (`kv_transfer_params`, a real KV pull from the
//! prefill sim), vLLM's `vllm:*` metrics and its `llm_request` span, and fault injection.
//!
//! Status: not built yet (issue 4). The binary says so and exits with an error.

pub mod block_pool;

use llmd_telemetry::TelemetryArgs;

/// Command-line flags of `llmd-sim` (also the `llmd` CLI's subcommand of the same name).
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "llmd-sim",
    version,
    about = "The vLLM simulator of llmd-rs (not built yet: issue 4)"
)]
pub struct Args {
    /// Logging and tracing.
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
}

/// Errors of the vLLM simulator.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The service is not implemented yet.
    #[error("llmd-sim: the vLLM simulator is not built yet (tracked in issue 4)")]
    NotBuilt,
}

/// Runs the vLLM simulator until shutdown.
pub async fn run(_args: Args) -> Result<(), Error> {
    Err(Error::NotBuilt)
}
