//! `llmd-epp`: the endpoint picker (EPP) that an Envoy-based gateway calls, over the
//! `envoy.service.ext_proc.v3.ExternalProcessor` gRPC protocol, for every inference request.
//!
//! It will own: the ext_proc server (FULL_DUPLEX_STREAMED and buffered request bodies, headers
//! and `envoy.lb` metadata naming the destination, `ImmediateResponse` errors), OpenAI request
//! parsing, and the scheduler: profiles of filters, weighted scorers and a picker configured by
//! an llm-d-shaped `EndpointPickerConfig` YAML, with the precise prefix-cache scorer (backed by
//! `llmd-kv-index`), load scorers, and the P/D profile handler that decides per request between
//! decode-only and prefill/decode and names the prefill pod in `x-prefiller-host-port`.
//! Ports: gRPC 9002, health 9003, metrics 9090 (`shared/design.md` §5).
//!
//! Status: not built yet (issue 5). The binary says so and exits with an error.

pub mod extproc;
pub mod request;

use llmd_telemetry::TelemetryArgs;

/// Command-line flags of `llmd-epp` (also the `llmd` CLI's subcommand of the same name).
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "llmd-epp",
    version,
    about = "The endpoint picker of llmd-rs (not built yet: issue 5)"
)]
pub struct Args {
    /// Logging and tracing.
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
}

/// Errors of the endpoint picker.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The service is not implemented yet.
    #[error("llmd-epp: the endpoint picker is not built yet (tracked in issue 5)")]
    NotBuilt,
}

/// Runs the endpoint picker until shutdown.
pub async fn run(_args: Args) -> Result<(), Error> {
    Err(Error::NotBuilt)
}
