//! llm-d's EPP flags that are not about scheduling: logging (`--v`, `--zap-*`), tracing
//! (`--tracing`), TLS and metrics auth (`--secure-serving`, `--metrics-endpoint-auth`, ...),
//! and the ones that only tune llm-d's Go runtime. Each is accepted under llm-d's name, so a
//! deployment's argument list (as llm-d's and GIE's charts render it) starts this EPP
//! unchanged; what would change behaviour and is not implemented is refused at startup with
//! the reason ([`LlmdFlags::check`]).
//!
//! `--secure-serving` (on by default, as in llm-d) serves the ext_proc port over TLS (h2 by
//! ALPN) with `--cert-path`'s `tls.crt`/`tls.key` (re-read when they change) or a
//! self-signed certificate made at start; `--secure-serving=false` serves plaintext.
//! `--metrics-endpoint-auth` is likewise off by default (llm-d: on); a Prometheus that sends a
//! bearer token is still served.

use std::path::PathBuf;
use std::time::Duration;

use llmd_telemetry::config::TelemetryConfig;
pub use llmd_telemetry::llm_d_flags::{LoggingFlags, ZapEncoder, parse_duration};

/// llm-d's non-scheduling EPP flags.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct LlmdFlags {
    /// Logging and tracing.
    #[command(flatten)]
    pub logging: LoggingFlags,
    /// Serve the ext_proc port over TLS, h2 by ALPN (llm-d: --secure-serving, the same default):
    /// with --cert-path, its certificate; without, a self-signed one made at start (the data
    /// plane must then skip verification, as llm-d's gateway configurations do). `false`:
    /// plaintext h2c. The gRPC health port stays plaintext (kubelet gRPC probes speak no TLS);
    /// health on the ext_proc port is served over TLS.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set, default_value_t = true)]
    pub secure_serving: bool,
    /// With --secure-serving: a directory holding `tls.crt` (PEM chain) and `tls.key` (PEM
    /// PKCS#8, PKCS#1 or SEC1), a `kubernetes.io/tls` secret's mount; re-read every 10 s when
    /// a file changed (a bad new pair is logged and the old one kept) (llm-d: --cert-path).
    #[arg(long)]
    pub cert_path: Option<PathBuf>,
    /// `false`: never re-read --cert-path (llm-d: --enable-cert-reload; here on unless false).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set, hide = true)]
    pub enable_cert_reload: Option<bool>,
    /// Accepted, no effect: rustls' defaults apply, TLS 1.2 and 1.3 with its safe suites
    /// (llm-d: --tls-min-version).
    #[arg(long, hide = true)]
    pub tls_min_version: Option<String>,
    /// Accepted, no effect: rustls' safe suites (llm-d: --tls-cipher-suites).
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
    /// The LoRA-adapter metric the lora-affinity-scorer reads (`running_lora_adapters`,
    /// `waiting_lora_adapters`, `max_lora` labels; default vllm:lora_requests_info) (llm-d:
    /// --lora-info-metric).
    #[arg(long)]
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

impl LlmdFlags {
    /// Refuses what would change behaviour and is not implemented.
    pub fn check(&self) -> Result<(), String> {
        if self.cert_path.is_some() && !self.secure_serving {
            tracing::warn!(
                "--cert-path has no effect with --secure-serving=false: the ext_proc port is plaintext"
            );
        }
        if self.tls_min_version.as_deref() == Some("VersionTLS10")
            || self.tls_min_version.as_deref() == Some("VersionTLS11")
        {
            return Err(format!(
                "--tls-min-version={}: TLS below 1.2 is not offered (rustls); use VersionTLS12 or VersionTLS13",
                self.tls_min_version.as_deref().unwrap_or_default()
            ));
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

    /// The ext_proc port's TLS, if --secure-serving.
    pub fn tls(&self) -> Option<crate::TlsOptions> {
        self.secure_serving.then(|| crate::TlsOptions {
            cert_path: self.cert_path.clone(),
            reload_interval: (self.enable_cert_reload != Some(false))
                .then_some(crate::CERT_RELOAD_INTERVAL),
        })
    }

    /// Applies the logging and tracing flags (see [`LoggingFlags::apply`]).
    pub fn apply(&self, config: TelemetryConfig) -> TelemetryConfig {
        self.logging.apply(config)
    }
}
