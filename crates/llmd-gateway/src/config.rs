//! Flags (`Args`), checked once at startup into the timeouts and limits the other modules use
//! (`Config`).

use std::time::Duration;

use llmd_telemetry::TelemetryArgs;

/// Command-line flags of `llmd-gateway` (also `llmd gateway`).
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "llmd-gateway",
    version,
    about = "Local stand-in for Envoy: asks an ext_proc EPP about each request, forwards to the endpoint it names. Not a production gateway."
)]
pub struct Args {
    /// Logging and tracing.
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
    /// Listen address.
    #[arg(long, default_value = "0.0.0.0")]
    pub host: String,
    /// Listen port.
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Port serving Prometheus metrics at `/metrics` (`llmd gateway` / `llmd-gateway` only).
    #[arg(long, default_value_t = 9091)]
    pub metrics_port: u16,
    /// The ext_proc server (the EPP's gRPC port): `https://host:port` over TLS (h2 by ALPN)
    /// without verifying the EPP's certificate, as llm-d's gateways dial their EPP (`llmd epp`
    /// serves TLS by default, with a self-signed certificate); --epp-ca-file verifies it.
    /// `http://host:port` for an EPP run with --secure-serving=false.
    #[arg(
        long,
        env = "LLMD_GATEWAY_EPP",
        default_value = "https://127.0.0.1:9002"
    )]
    pub epp: String,
    /// With an `https://` --epp: verify the EPP's certificate against the CA certificates in
    /// this PEM file (only those) instead of accepting any certificate.
    #[arg(long)]
    pub epp_ca_file: Option<std::path::PathBuf>,
    /// How long an answer of the EPP to a message the gateway sent may take, ms. The timer runs
    /// only while such an answer is outstanding: a silent upstream is not an EPP timeout.
    #[arg(long, default_value_t = 10_000)]
    pub epp_timeout_ms: u64,
    /// When the EPP is down or silent, forward to --default-endpoint instead of answering 503.
    #[arg(long, requires = "default_endpoint")]
    pub fail_open: bool,
    /// `host:port` used with --fail-open.
    #[arg(long)]
    pub default_endpoint: Option<String>,
    /// Largest request body, bytes (larger: 413, before any of it is read when the
    /// Content-Length says so).
    #[arg(long, default_value_t = 32 << 20)]
    pub max_body_bytes: usize,
    /// TCP connect timeout to a destination, ms (then the next one is tried).
    #[arg(long, default_value_t = 2_000)]
    pub connect_timeout_ms: u64,
    /// Timeout until a destination answers with headers, ms.
    #[arg(long, default_value_t = 600_000)]
    pub upstream_timeout_ms: u64,
    /// Idle upstream connections are closed after this long, ms.
    #[arg(long, default_value_t = 90_000)]
    pub upstream_idle_timeout_ms: u64,
    /// A client must send a request's headers within this long of its connection being ready
    /// for them (accepted, or done with the previous response), ms; slower connections are
    /// closed. An idle HTTP/1.1 keep-alive connection is closed after it too.
    #[arg(long, default_value_t = 30_000)]
    pub header_read_timeout_ms: u64,
    /// A client connection with no request in flight for this long is closed, ms (HTTP/2:
    /// after a GOAWAY).
    #[arg(long, default_value_t = 60_000)]
    pub idle_timeout_ms: u64,
    /// Do not send responses through the EPP (Envoy's response_header_mode SKIP).
    #[arg(long)]
    pub no_response_processing: bool,
    /// The `service.name` of the gateway's spans when it shares a process with other
    /// components (`llmd demo`); alone, the process's own (`OTEL_SERVICE_NAME`) names them.
    #[arg(long)]
    pub span_service_name: Option<String>,
}

/// Errors of the gateway.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A flag has a value the gateway cannot use.
    #[error("invalid --{flag}: {reason}")]
    Config {
        /// The flag.
        flag: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The EPP address does not parse.
    #[error("invalid --epp: {0}")]
    Epp(#[source] llmd_wire::ext_proc::ExtProcError),
    /// Listening.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// Address.
        addr: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Metrics.
    #[error(transparent)]
    Telemetry(#[from] llmd_telemetry::TelemetryError),
}

/// The checked configuration.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub epp_timeout: Duration,
    pub fail_open_to: Option<String>,
    pub max_body_bytes: usize,
    pub connect_timeout: Duration,
    pub upstream_timeout: Duration,
    pub upstream_idle_timeout: Duration,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub response_processing: bool,
    pub span_service_name: Option<String>,
}

impl Config {
    pub(crate) fn from_args(args: &Args) -> Result<Self, Error> {
        let ms = |flag: &'static str, v: u64| {
            if v == 0 {
                Err(Error::Config {
                    flag,
                    reason: "must be more than 0 ms".into(),
                })
            } else {
                Ok(Duration::from_millis(v))
            }
        };
        let fail_open_to = match (&args.default_endpoint, args.fail_open) {
            (Some(d), true) => {
                if http::HeaderValue::from_str(d).is_err() || d.trim().is_empty() {
                    return Err(Error::Config {
                        flag: "default-endpoint",
                        reason: format!("{d:?} is not a host:port"),
                    });
                }
                Some(d.clone())
            }
            _ => None,
        };
        Ok(Self {
            epp_timeout: ms("epp-timeout-ms", args.epp_timeout_ms)?,
            fail_open_to,
            max_body_bytes: args.max_body_bytes,
            connect_timeout: ms("connect-timeout-ms", args.connect_timeout_ms)?,
            upstream_timeout: ms("upstream-timeout-ms", args.upstream_timeout_ms)?,
            upstream_idle_timeout: ms("upstream-idle-timeout-ms", args.upstream_idle_timeout_ms)?,
            header_read_timeout: ms("header-read-timeout-ms", args.header_read_timeout_ms)?,
            idle_timeout: ms("idle-timeout-ms", args.idle_timeout_ms)?,
            response_processing: !args.no_response_processing,
            span_service_name: args.span_service_name.clone(),
        })
    }
}
