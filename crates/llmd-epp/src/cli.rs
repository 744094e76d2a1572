//! The `llmd epp` / `llmd-epp` command line: flags (llm-d's names accepted, `flags` has the
//! non-scheduling ones) and [`run`], which turns them into [`Options`] and [`start`]s the EPP.

use std::path::PathBuf;
use std::time::Duration;

use llmd_telemetry::TelemetryArgs;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::{self, EndpointPickerConfig};
use crate::endpoints::{self, EndpointsFile};
use crate::scheduling::scheduler::Limits;
use crate::{Error, KubeSource, Listeners, Options, discovery, flags, objectives, start};

/// Command-line flags of `llmd-epp` (also `llmd epp`). llm-d's EPP flags are accepted under
/// their names (each `--help` line says which llm-d flag it is); `docs/coming-from-llm-d.md`
/// lists them all, with what is refused.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "llmd-epp",
    version,
    about = "Endpoint picker: Envoy ext_proc server with precise prefix-cache and P/D scheduling"
)]
pub struct Args {
    /// Logging and tracing.
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
    /// llm-d's logging, tracing and TLS flags.
    #[command(flatten)]
    pub llm_d: flags::LlmdFlags,
    /// Listen address.
    #[arg(long, default_value = "0.0.0.0")]
    pub host: String,
    /// ext_proc gRPC port (llm-d: --grpc-port).
    #[arg(long, default_value_t = 9002)]
    pub grpc_port: u16,
    /// gRPC health port (llm-d: --grpc-health-port).
    #[arg(long, default_value_t = 9003)]
    pub grpc_health_port: u16,
    /// Metrics (and /debug/route) port (llm-d: --metrics-port).
    #[arg(long, default_value_t = 9090)]
    pub metrics_port: u16,
    /// Scheduler config file (EndpointPickerConfig YAML); default: precise prefix cache + load
    /// (llm-d: --config-file).
    #[arg(
        long,
        alias = "config-file",
        env = "LLMD_EPP_CONFIG",
        conflicts_with = "config_text"
    )]
    pub config: Option<PathBuf>,
    /// The scheduler config as text, in lieu of a file (llm-d: --config-text).
    #[arg(long)]
    pub config_text: Option<String>,
    /// InferenceObjective manifests (YAML, `---`-separated) giving requests their priority
    /// without a cluster (ours; with --pool-name the pool's InferenceObjectives are watched and
    /// win, as llm-d does).
    #[arg(long, env = "LLMD_EPP_INFERENCE_OBJECTIVES")]
    pub inference_objectives_file: Option<PathBuf>,
    /// Endpoints file (YAML/JSON), reloaded when it changes (local runs; else --pool-name).
    #[arg(
        long,
        env = "LLMD_EPP_ENDPOINTS",
        required_unless_present = "pool_name",
        conflicts_with = "pool_name"
    )]
    pub endpoints_file: Option<PathBuf>,
    /// Follow this Kubernetes InferencePool (in-cluster config or KUBECONFIG) (llm-d:
    /// --pool-name).
    #[arg(long, env = "LLMD_EPP_POOL_NAME")]
    pub pool_name: Option<String>,
    /// Namespace of the InferencePool (llm-d: --pool-namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub pool_namespace: String,
    /// API group of the InferencePool (llm-d: --pool-group).
    #[arg(long, default_value = "inference.networking.k8s.io")]
    pub pool_group: String,
    /// Dial each discovered pod's KV events on this port (else pods connect to --kv-events-bind;
    /// llm-d: kvEventsConfig.discoverPods with podDiscoveryConfig.socketPort).
    #[arg(long)]
    pub kv_events_port: Option<u16>,
    /// How often to list the pool and its pods again from scratch, ms (changes arrive by watch
    /// in between).
    #[arg(long, default_value_t = 1000)]
    pub discovery_interval_ms: u64,
    /// Also bind a ZMQ SUB socket that pods connect to for KV events, e.g. tcp://*:5557
    /// (llm-d: kvEventsConfig.zmqEndpoint, which is used when this is not given).
    #[arg(long)]
    pub kv_events_bind: Option<String>,
    /// How often the pods' /metrics are scraped, a duration (50ms, 1s; at least 50ms) (llm-d:
    /// --refresh-metrics-interval).
    #[arg(long, default_value = "50ms", value_parser = flags::parse_duration, conflicts_with = "scrape_interval_ms")]
    pub refresh_metrics_interval: std::time::Duration,
    /// The same in milliseconds (ours, older).
    #[arg(long)]
    pub scrape_interval_ms: Option<u64>,
    /// Scraped load older than this is not trusted by the load scorers that do not set
    /// staleAfterSeconds (llm-d: --metrics-staleness-threshold).
    #[arg(long, default_value = "2s", value_parser = flags::parse_duration)]
    pub metrics_staleness_threshold: std::time::Duration,
    /// The waiting-requests metric, `name` or `name{label="value"}` (llm-d:
    /// --total-queued-requests-metric).
    #[arg(long, default_value = "vllm:num_requests_waiting")]
    pub total_queued_requests_metric: String,
    /// The running-requests metric (llm-d: --total-running-requests-metric).
    #[arg(long, default_value = "vllm:num_requests_running")]
    pub total_running_requests_metric: String,
    /// The KV-cache usage metric, 0..1 (llm-d: --kv-cache-usage-percentage-metric).
    #[arg(long, default_value = "vllm:kv_cache_usage_perc")]
    pub kv_cache_usage_percentage_metric: String,
    /// The cache-configuration metric (`block_size`, `num_gpu_blocks` labels) (llm-d:
    /// --cache-info-metric).
    #[arg(long, default_value = "vllm:cache_config_info")]
    pub cache_info_metric: String,
    /// Largest request body, bytes (larger: 413).
    #[arg(long, default_value_t = 32 << 20)]
    pub max_body_bytes: usize,
    /// Largest prompt (user input), bytes: larger prompts get 413 before they are tokenized.
    #[arg(long, default_value_t = 4 << 20)]
    pub max_prompt_bytes: usize,
    /// Fallback endpoints after the picker's choice in x-gateway-destination-endpoint, for data
    /// planes that walk the list (llmd-gateway, Istio, kgateway); 0 for Envoy's ORIGINAL_DST
    /// cluster, which takes one address.
    #[arg(long, default_value_t = 0)]
    pub fallback_endpoints: usize,
    /// Ignore the data plane's subset hint (llm-d: --disable-endpoint-subset-filter).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set, default_value_t = false)]
    pub disable_endpoint_subset_filter: bool,
    /// After SIGTERM, how long requests in flight may finish before the EPP exits, seconds.
    #[arg(long, default_value_t = 30, conflicts_with = "drain_timeout")]
    pub grace_period_seconds: u64,
    /// The same as a duration (llm-d: --drain-timeout).
    #[arg(long, value_parser = flags::parse_duration)]
    pub drain_timeout: Option<std::time::Duration>,
}

impl Args {
    /// The telemetry configuration: `--log-format` and the `OTEL_*` environment, with llm-d's
    /// `--v`, `--zap-*` and `--tracing` applied.
    pub fn telemetry_config(&self) -> llmd_telemetry::config::TelemetryConfig {
        self.llm_d.apply(self.telemetry.to_config())
    }

    /// The scrape interval (`--refresh-metrics-interval`, or `--scrape-interval-ms`).
    pub fn scrape_interval(&self) -> Duration {
        self.scrape_interval_ms
            .map_or(self.refresh_metrics_interval, Duration::from_millis)
            .max(Duration::from_millis(50))
    }

    /// The metric names the scraper reads.
    pub fn metric_names(&self) -> Result<endpoints::MetricNames, Error> {
        let spec = |flag: &str, v: &str| {
            endpoints::MetricSpec::parse(v).map_err(|e| Error::Flag(format!("--{flag}: {e}")))
        };
        Ok(endpoints::MetricNames {
            waiting: spec(
                "total-queued-requests-metric",
                &self.total_queued_requests_metric,
            )?,
            running: spec(
                "total-running-requests-metric",
                &self.total_running_requests_metric,
            )?,
            kv_usage: spec(
                "kv-cache-usage-percentage-metric",
                &self.kv_cache_usage_percentage_metric,
            )?,
            cache_info: spec("cache-info-metric", &self.cache_info_metric)?,
            lora_info: spec(
                "lora-info-metric",
                self.llm_d
                    .lora_info_metric
                    .as_deref()
                    .unwrap_or("vllm:lora_requests_info"),
            )?,
        })
    }

    /// The scheduler configuration the flags name.
    pub fn scheduler_config(&self) -> Result<EndpointPickerConfig, Error> {
        Ok(match (&self.config, &self.config_text) {
            (Some(path), _) => EndpointPickerConfig::load(path)?,
            (None, Some(text)) => EndpointPickerConfig::parse(text)?,
            (None, None) => EndpointPickerConfig::parse(config::DEFAULT_CONFIG)?,
        })
    }
}

/// Runs the EPP until `shutdown` is cancelled.
pub async fn run(args: Args, shutdown: CancellationToken) -> Result<(), Error> {
    args.llm_d.check().map_err(Error::Flag)?;
    let metrics = llmd_telemetry::install_prometheus(
        &[
            llmd_telemetry::names::epp::ALL,
            llmd_telemetry::names::kv_cache::ALL,
            llmd_telemetry::names::kubernetes::ALL,
        ],
        &[],
    )?;
    let config = args.scheduler_config()?;
    let objectives = match &args.inference_objectives_file {
        Some(path) => objectives::Objectives::load_manifests(path)?,
        None => Vec::new(),
    };
    let metric_names = args.metric_names()?;
    let endpoints = match &args.endpoints_file {
        Some(path) => EndpointsFile::load(path)?,
        None => EndpointsFile {
            endpoints: Vec::new(),
        },
    };
    let kubernetes = match &args.pool_name {
        Some(name) if args.endpoints_file.is_none() => Some(KubeSource {
            client: kube::Client::try_default()
                .await
                .map_err(|e| Error::Kubernetes(e.to_string()))?,
            pool: discovery::PoolRef {
                name: name.clone(),
                namespace: args.pool_namespace.clone(),
                group: args.pool_group.clone(),
                kv_events_port: args.kv_events_port,
                kv_events_replay_port: None,
                resync: Duration::from_millis(args.discovery_interval_ms.max(100)),
            },
        }),
        _ => None,
    };
    let bind = |port: u16| {
        let addr = format!("{}:{port}", args.host);
        async move {
            TcpListener::bind(&addr)
                .await
                .map_err(|source| Error::Listen { addr, source })
        }
    };
    let listeners = Listeners {
        grpc: bind(args.grpc_port).await?,
        health: Some(bind(args.grpc_health_port).await?),
        metrics: bind(args.metrics_port).await?,
    };
    let epp = start(
        Options {
            endpoints_file: args.endpoints_file.clone(),
            kv_events_bind: args.kv_events_bind.clone(),
            scrape_interval: args.scrape_interval(),
            metric_names,
            metrics_staleness: Some(args.metrics_staleness_threshold),
            objectives,
            subset_filter: !args.disable_endpoint_subset_filter,
            max_body_bytes: args.max_body_bytes,
            limits: Limits {
                max_prompt_bytes: args.max_prompt_bytes,
                fallbacks: args.fallback_endpoints,
            },
            grace_period: args
                .drain_timeout
                .unwrap_or(Duration::from_secs(args.grace_period_seconds)),
            pool_name: args.pool_name.clone().unwrap_or_else(|| "static".into()),
            kubernetes,
            tls: args.llm_d.tls(),
            ..Options::new(config, endpoints)
        },
        listeners,
        Some(metrics),
        shutdown,
    )
    .await?;
    epp.wait().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    fn args(extra: &[&str]) -> Args {
        let base = ["llmd-epp", "--endpoints-file", "endpoints.yaml"];
        Args::try_parse_from(base.iter().chain(extra)).unwrap()
    }

    #[test]
    fn lora_info_metric_is_read() {
        let names = args(&[]).metric_names().unwrap();
        assert_eq!(names.lora_info.name, "vllm:lora_requests_info");
        let names = args(&["--lora-info-metric", "vllm:lora_requests_info{pool=\"a\"}"])
            .metric_names()
            .unwrap();
        assert_eq!(names.lora_info.labels, [("pool".into(), "a".into())]);
        let e = args(&["--lora-info-metric", "a b"])
            .metric_names()
            .unwrap_err()
            .to_string();
        assert!(e.contains("--lora-info-metric"), "{e}");
    }
}
