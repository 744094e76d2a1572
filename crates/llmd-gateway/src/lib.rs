//! `llmd-gateway`: a small HTTP reverse proxy that calls an ext_proc server for every request
//! exactly as Envoy does, for local runs and tests. It is a stand-in for Envoy, not a
//! production gateway.
//!
//! It will own: the ext_proc client side (FULL_DUPLEX_STREAMED request and response bodies,
//! header and metadata mutations, `ImmediateResponse`), forwarding to the endpoint named in
//! `x-gateway-destination-endpoint` with fallback down the list, streaming both ways, the
//! `gateway.request` span, an access log, and fail-open/fail-closed behaviour when the EPP is
//! down.
//!
//! Status: not built yet (issue 8). The binary says so and exits with an error.

use llmd_telemetry::TelemetryArgs;

/// Command-line flags of `llmd-gateway` (also the `llmd` CLI's subcommand of the same name).
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "llmd-gateway",
    version,
    about = "The local gateway of llmd-rs (not built yet: issue 8)"
)]
pub struct Args {
    /// Logging and tracing.
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
}

/// Errors of the local gateway.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The service is not implemented yet.
    #[error("llmd-gateway: the local gateway is not built yet (tracked in issue 8)")]
    NotBuilt,
}

/// Runs the local gateway until shutdown.
pub async fn run(_args: Args) -> Result<(), Error> {
    Err(Error::NotBuilt)
}
