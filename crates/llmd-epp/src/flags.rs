//! llm-d's EPP flags that are not about scheduling: logging (`--v`, `--zap-*`), tracing
//! (`--tracing`), TLS and metrics auth (`--secure-serving`, `--metrics-endpoint-auth`, ...),
//! and the ones that only tune llm-d's Go runtime. Each is accepted under llm-d's name, so a
//! deployment's argument list (as llm-d's and GIE's charts render it) starts this EPP
//! unchanged; what would change behaviour and is not implemented is refused at startup with
//! the reason ([`LlmdFlags::check`]).
//!
//! `--secure-serving` is off by default here (llm-d's default is on): the ext_proc port is
//! plaintext until TLS lands, and `--secure-serving=true` is refused until then.
//! `--metrics-endpoint-auth` is likewise off by default (llm-d: on); a Prometheus that sends a
//! bearer token is still served.

use std::path::PathBuf;
use std::time::Duration;

use llmd_telemetry::config::{LogFormat, TelemetryConfig};

/// Parses a Go duration (`50ms`, `2s`, `1m30s`, `1h`, `500us`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty duration".into());
    }
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total = 0.0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("{s:?}: missing unit (ns, us, ms, s, m, h)"))?;
        let (num, tail) = rest.split_at(num_end);
        let n: f64 = num
            .parse()
            .map_err(|_| format!("{s:?} is not a duration"))?;
        let unit_end = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_end);
        let secs = match unit {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            other => return Err(format!("{s:?}: unknown unit {other:?}")),
        };
        total += n * secs;
        rest = tail;
    }
    Duration::try_from_secs_f64(total).map_err(|e| format!("{s:?}: {e}"))
}

/// llm-d's logging and tracing flags (its EPP's and its sidecar's).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct LoggingFlags {
    /// Log verbosity as llm-d counts it (≤3 info, 4 debug, ≥5 trace); used when RUST_LOG is
    /// unset (llm-d: --v).
    #[arg(long = "v", short = 'v', value_name = "LEVEL")]
    pub verbosity: Option<u8>,
    /// `json` or `console` log lines (llm-d: --zap-encoder; ours: --log-format).
    #[arg(long)]
    pub zap_encoder: Option<ZapEncoder>,
    /// `debug`, `info`, `error`, ... when RUST_LOG is unset (llm-d: --zap-log-level).
    #[arg(long)]
    pub zap_log_level: Option<String>,
    /// Development logging: debug level, text lines (llm-d: --zap-devel).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub zap_devel: Option<bool>,
    /// Accepted, no effect (llm-d: --zap-stacktrace-level).
    #[arg(long, hide = true)]
    pub zap_stacktrace_level: Option<String>,
    /// Accepted, no effect (llm-d: --zap-time-encoding).
    #[arg(long, hide = true)]
    pub zap_time_encoding: Option<String>,
    /// Export spans (with OTEL_EXPORTER_OTLP_ENDPOINT); false turns tracing off (llm-d:
    /// --tracing).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub tracing: Option<bool>,
}

/// llm-d's non-scheduling EPP flags.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct LlmdFlags {
    /// Logging and tracing.
    #[command(flatten)]
    pub logging: LoggingFlags,
    /// TLS on the ext_proc port: plaintext until TLS lands here, so only false is accepted
    /// (llm-d: --secure-serving, default true there).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set, default_value_t = false)]
    pub secure_serving: bool,
    /// The ext_proc TLS certificate directory (llm-d: --cert-path; refused until TLS lands).
    #[arg(long)]
    pub cert_path: Option<PathBuf>,
    /// Accepted, no effect without TLS (llm-d: --enable-cert-reload).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set, hide = true)]
    pub enable_cert_reload: Option<bool>,
    /// Accepted, no effect without TLS (llm-d: --tls-min-version).
    #[arg(long, hide = true)]
    pub tls_min_version: Option<String>,
    /// Accepted, no effect without TLS (llm-d: --tls-cipher-suites).
    #[arg(long, hide = true)]
    pub tls_cipher_suites: Option<String>,
    /// Authenticate /metrics scrapes: not implemented, so only false is accepted; a scraper's
    /// bearer token is ignored (llm-d: --metrics-endpoint-auth, default true there).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set, default_value_t = false)]
    pub metrics_endpoint_auth: bool,
    /// TLS for /metrics (llm-d: --metrics-cert-dir; refused).
    #[arg(long)]
    pub metrics_cert_dir: Option<PathBuf>,
    /// mTLS for /metrics (llm-d: --metrics-client-ca-file; refused).
    #[arg(long)]
    pub metrics_client_ca_file: Option<PathBuf>,
    /// llm-d's active-passive leader election (GIE's chart sets it with more than one
    /// replica): there is none here, every replica serves (llm-d: --ha-enable-leader-election).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub ha_enable_leader_election: Option<bool>,
    /// Accepted: gRPC health is always served (llm-d: --health-checking).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set, hide = true)]
    pub health_checking: Option<bool>,
    /// Accepted, no effect (llm-d: --enable-pprof, a Go profiler).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set, hide = true)]
    pub enable_pprof: Option<bool>,
    /// Accepted: the pool gauges are updated after every scrape here (llm-d:
    /// --refresh-prometheus-metrics-interval).
    #[arg(long, value_parser = parse_duration, hide = true)]
    pub refresh_prometheus_metrics_interval: Option<Duration>,
    /// Accepted, not read: LoRA adapters are not used for scheduling here (llm-d:
    /// --lora-info-metric).
    #[arg(long, hide = true)]
    pub lora_info_metric: Option<String>,
    /// Accepted, no effect (llm-d: --grpc-max-recv-msg-size; request bodies are bounded by
    /// --max-body-bytes).
    #[arg(long, hide = true)]
    pub grpc_max_recv_msg_size: Option<String>,
    /// Accepted, no effect (llm-d: --grpc-max-send-msg-size).
    #[arg(long, hide = true)]
    pub grpc_max_send_msg_size: Option<String>,
    /// Pool-less discovery by label (llm-d: --endpoint-selector; refused: use --endpoints-file
    /// or --pool-name).
    #[arg(long)]
    pub endpoint_selector: Option<String>,
    /// Pool-less discovery's ports (llm-d: --endpoint-target-ports; refused).
    #[arg(long)]
    pub endpoint_target_ports: Option<String>,
    /// Per-endpoint scores in the dynamic metadata (llm-d: --emit-endpoint-scores; refused;
    /// /debug/route explains a decision).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub emit_endpoint_scores: Option<bool>,
    /// Accepted; the gRPC stream metrics are not emitted (llm-d: --enable-grpc-stream-metrics).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set, hide = true)]
    pub enable_grpc_stream_metrics: Option<bool>,
    /// Accepted: every plugin here is available (llm-d: --allow-experimental-plugins).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set, hide = true)]
    pub allow_experimental_plugins: Option<bool>,
}

/// `--zap-encoder` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ZapEncoder {
    /// JSON lines.
    Json,
    /// Text lines.
    Console,
}

impl LlmdFlags {
    /// Refuses what would change behaviour and is not implemented.
    pub fn check(&self) -> Result<(), String> {
        if self.secure_serving {
            return Err("--secure-serving=true: TLS on the ext_proc port is not implemented yet; run with --secure-serving=false (plaintext, as the data plane must then be configured) until it lands".into());
        }
        if self.cert_path.is_some() {
            return Err("--cert-path: TLS on the ext_proc port is not implemented yet".into());
        }
        if self.metrics_endpoint_auth {
            return Err("--metrics-endpoint-auth=true: authenticating /metrics scrapes is not implemented; set it false (a scraper's token is accepted and ignored)".into());
        }
        if self.metrics_cert_dir.is_some() || self.metrics_client_ca_file.is_some() {
            return Err(
                "--metrics-cert-dir/--metrics-client-ca-file: TLS on /metrics is not implemented"
                    .into(),
            );
        }
        if self.endpoint_selector.is_some() || self.endpoint_target_ports.is_some() {
            return Err("--endpoint-selector/--endpoint-target-ports: pool-less discovery by label is not implemented; use --pool-name (an InferencePool) or --endpoints-file".into());
        }
        if self.emit_endpoint_scores == Some(true) {
            return Err("--emit-endpoint-scores: per-endpoint scores in the dynamic metadata are not implemented; POST /debug/route on the metrics port explains a decision".into());
        }
        if self.ha_enable_leader_election == Some(true) {
            tracing::warn!(
                "--ha-enable-leader-election: there is no leader election here; every replica serves (active-active). Give every replica every pod's KV events (kvEventsConfig.discoverPods: true)"
            );
        }
        if self.enable_grpc_stream_metrics == Some(true) {
            tracing::warn!(
                "--enable-grpc-stream-metrics: the ext_proc stream metrics are not emitted here"
            );
        }
        Ok(())
    }

    /// Applies the logging and tracing flags (see [`LoggingFlags::apply`]).
    pub fn apply(&self, config: TelemetryConfig) -> TelemetryConfig {
        self.logging.apply(config)
    }
}

impl LoggingFlags {
    /// Applies the logging and tracing flags to a telemetry configuration (`RUST_LOG`, when
    /// set, wins over `--v` and `--zap-log-level`).
    pub fn apply(&self, mut config: TelemetryConfig) -> TelemetryConfig {
        match self.zap_encoder {
            Some(ZapEncoder::Json) => config.log_format = LogFormat::Json,
            Some(ZapEncoder::Console) => config.log_format = LogFormat::Text,
            None => {}
        }
        let rust_log_set = std::env::var_os(llmd_telemetry::config::RUST_LOG).is_some();
        if !rust_log_set {
            let level = match (
                self.verbosity,
                self.zap_log_level.as_deref(),
                self.zap_devel,
            ) {
                (_, Some(l), _) => Some(l.to_ascii_lowercase()),
                (Some(v), _, _) if v >= 5 => Some("trace".into()),
                (Some(4), _, _) => Some("debug".into()),
                (Some(_), _, _) => Some("info".into()),
                (None, None, Some(true)) => Some("debug".into()),
                _ => None,
            };
            if let Some(level) = level {
                config.log_filter = level;
            }
        }
        if self.tracing == Some(false) {
            config.tracing.sdk_disabled = true;
        }
        config
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(parse_duration("50ms").unwrap(), Duration::from_millis(50));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("5d").is_err());
    }
}
