//! `llmd-pd-proxy`: the prefill/decode routing sidecar that runs beside each decode engine.
//!
//! It will own: the HTTP proxy on port 8000 in front of the local engine on 8200; for requests
//! carrying `x-prefiller-host-port`, the nixlv2 flow (prefill leg on the named, allow-listed
//! prefill pod, then the decode leg with the prefill's `kv_transfer_params`, the answer streamed
//! back event by event); and the measurements no engine can make: true TTFT, coordinator
//! overhead, prefill and decode durations, as the `llm_d_inference_scheduler_pd_proxy_*`
//! histograms and the `llm_d.pd_proxy.*` spans of `shared/design.md` §4.
//!
//! Status: not built yet (issue 6). The binary says so and exits with an error.

use llmd_telemetry::TelemetryArgs;

/// Command-line flags of `llmd-pd-proxy` (also the `llmd` CLI's subcommand of the same name).
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "llmd-pd-proxy",
    version,
    about = "The P/D routing proxy of llmd-rs (not built yet: issue 6)"
)]
pub struct Args {
    /// Logging and tracing.
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
}

/// Errors of the P/D routing proxy.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The service is not implemented yet.
    #[error("llmd-pd-proxy: the P/D routing proxy is not built yet (tracked in issue 6)")]
    NotBuilt,
}

/// Runs the P/D routing proxy until shutdown.
pub async fn run(_args: Args) -> Result<(), Error> {
    Err(Error::NotBuilt)
}
