//! `llmd-epp`: the endpoint picker (EPP) that an Envoy-based gateway calls, over the
//! `envoy.service.ext_proc.v3.ExternalProcessor` gRPC protocol, for every inference request.
//!
//! Read it top-down, the way a request goes through it:
//!
//! | module | what it does |
//! |---|---|
//! | `protocol` | the ext_proc server: one stream per request (full-duplex and buffered bodies, destination header and `envoy.lb` metadata, `ImmediateResponse` errors, response pass-through), scheduling off the async runtime |
//! | `request` | OpenAI completions / chat request parsing |
//! | `scheduling` | decisions and errors, the plugin contracts, profiles, the scheduler (model, subset and health filtering, shedding, decision metrics) |
//! | `plugins` | one file per llm-d plugin type (filters, scorers, pickers, profile handlers) and the registry that builds them from typed parameters |
//! | `kv` | the KV service the precise scorer reads: the prefix index and the tokenizers |
//! | `endpoints` | the endpoint set (static file, reloaded), `/metrics` scraping, health |
//! | `discovery` | Kubernetes: an `InferencePool`'s ready pods as the endpoint set |
//! | `config` | the llm-d-shaped `EndpointPickerConfig` |
//! | `debug` | `/debug/route`: a decision explained, nothing routed |
//! | `labels` | label values from requests, bounded |
//!
//! Ports (`shared/design.md` §5): gRPC 9002, gRPC health 9003, metrics 9090 (`/metrics`, and
//! `POST /debug/route` to explain a decision without routing anything).
//!

pub mod config;
mod debug;
pub mod discovery;
pub mod endpoints;
pub mod flags;
pub mod kv;
pub mod labels;
pub mod objectives;
pub mod plugins;
pub mod protocol;
pub mod request;
pub mod scheduling;
#[cfg(feature = "testing")]
pub mod testing;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_server::ExternalProcessorServer;
use llmd_kv_index::subscriber::{PodEndpoint, Subscriber, SubscriberConfig};
use llmd_telemetry::{MetricsHandle, TelemetryArgs};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::EndpointPickerConfig;
use crate::endpoints::{EndpointsFile, Pool};
use crate::kv::KvService;
use crate::protocol::{ExtProcConfig, ExtProcService};
use crate::scheduling::Scheduler;
use crate::scheduling::scheduler::Limits;

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
    /// until the Kubernetes watch exists (ours; llm-d watches the InferenceObjective CRD).
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

/// Errors of the EPP.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Configuration.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// Endpoints file.
    #[error(transparent)]
    Endpoints(#[from] endpoints::EndpointsError),
    /// Listening.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// Address.
        addr: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// KV events.
    #[error(transparent)]
    Subscriber(#[from] llmd_kv_index::subscriber::SubscriberError),
    /// Telemetry.
    #[error(transparent)]
    Telemetry(#[from] llmd_telemetry::TelemetryError),
    /// No usable Kubernetes configuration.
    #[error("kubernetes client: {0}")]
    Kubernetes(String),
    /// The ext_proc port's TLS certificate.
    #[error("ext_proc TLS: {0}")]
    Tls(#[from] llmd_wire::tls::TlsError),
    /// A server task stopped.
    #[error(transparent)]
    Stopped(#[from] llmd_telemetry::lifecycle::TaskFailed),
    /// A flag this EPP refuses (or a bad value).
    #[error("{0}")]
    Flag(String),
}

/// A running EPP.
#[derive(Debug)]
pub struct Epp {
    /// ext_proc address.
    pub grpc: SocketAddr,
    /// Metrics address.
    pub metrics: SocketAddr,
    /// The scheduler.
    pub scheduler: Arc<Scheduler>,
    /// Bound KV-event socket, if any.
    pub kv_events_bound: Option<String>,
    /// Its servers and loops; [`Epp::wait`] ends when one fails.
    pub tasks: llmd_telemetry::lifecycle::Tasks,
}

impl Epp {
    /// Waits until the EPP stops: `Ok` after a shutdown (requests in flight drained), `Err`
    /// when a server task failed.
    pub async fn wait(self) -> Result<(), llmd_telemetry::lifecycle::TaskFailed> {
        self.tasks.wait().await
    }
}

/// Listeners for [`start`].
#[derive(Debug)]
pub struct Listeners {
    /// ext_proc (health is served here too).
    pub grpc: TcpListener,
    /// gRPC health only.
    pub health: Option<TcpListener>,
    /// Metrics and /debug/route.
    pub metrics: TcpListener,
}

/// What [`start`] runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// Scheduler configuration.
    pub config: EndpointPickerConfig,
    /// Endpoints file to watch for changes, if any.
    pub endpoints_file: Option<PathBuf>,
    /// The initial endpoints.
    pub endpoints: EndpointsFile,
    /// ZMQ address to bind for KV events (pods connect to it), if any.
    pub kv_events_bind: Option<String>,
    /// How often to scrape the pods' `/metrics`.
    pub scrape_interval: Duration,
    /// The model-server metrics the scraper reads.
    pub metric_names: endpoints::MetricNames,
    /// Scraped load older than this is not trusted by load scorers that do not say
    /// (`--metrics-staleness-threshold`; `None`: the scorers' own default).
    pub metrics_staleness: Option<Duration>,
    /// InferenceObjectives beside the config's (`--inference-objectives-file`).
    pub objectives: Vec<config::ObjectiveSpec>,
    /// Honour the data plane's subset hint (`--disable-endpoint-subset-filter` turns it off).
    pub subset_filter: bool,
    /// Largest request body.
    pub max_body_bytes: usize,
    /// What a request may ask of the scheduler.
    pub limits: Limits,
    /// After shutdown, how long requests in flight may finish.
    pub grace_period: Duration,
    /// The pool's name (label of the `inference_pool_*` gauges).
    pub pool_name: String,
    /// Follow a Kubernetes `InferencePool` (its ready pods replace the endpoints).
    pub kubernetes: Option<KubeSource>,
    /// The EPP's `service.name` on its spans when it shares a process with other components;
    /// `None`: the process's own.
    pub service_name: Option<String>,
    /// Serve the ext_proc port over TLS (`llmd epp --secure-serving`); `None`: plaintext.
    pub tls: Option<TlsOptions>,
}

/// TLS on the ext_proc port (h2 by ALPN; the separate health port stays plaintext: kubelet gRPC probes speak no TLS).
#[derive(Debug, Clone)]
pub struct TlsOptions {
    /// A directory holding `tls.crt` and `tls.key` (a `kubernetes.io/tls` secret's mount);
    /// `None`: a self-signed certificate made at start (clients must skip verification).
    pub cert_path: Option<PathBuf>,
    /// How often the files are checked for a rotated pair (`None`: never re-read).
    pub reload_interval: Option<Duration>,
}

impl TlsOptions {
    /// A self-signed certificate.
    pub fn self_signed() -> Self {
        Self {
            cert_path: None,
            reload_interval: None,
        }
    }
}

/// How often `--cert-path` is checked for a rotated certificate.
pub const CERT_RELOAD_INTERVAL: Duration = Duration::from_secs(10);

impl Options {
    /// Options for `config` over a fixed set of endpoints, with the defaults of `llmd epp`.
    pub fn new(config: EndpointPickerConfig, endpoints: EndpointsFile) -> Self {
        Self {
            config,
            endpoints_file: None,
            endpoints,
            kv_events_bind: None,
            scrape_interval: Duration::from_millis(1000),
            metric_names: endpoints::MetricNames::default(),
            metrics_staleness: None,
            objectives: Vec::new(),
            subset_filter: true,
            max_body_bytes: 32 << 20,
            limits: Limits::default(),
            grace_period: Duration::from_secs(30),
            pool_name: "static".into(),
            kubernetes: None,
            service_name: None,
            tls: None,
        }
    }
}

/// A Kubernetes client and the pool to follow.
#[derive(Clone)]
pub struct KubeSource {
    /// The API client.
    pub client: kube::Client,
    /// The pool.
    pub pool: discovery::PoolRef,
}

impl std::fmt::Debug for KubeSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeSource")
            .field("pool", &self.pool)
            .finish_non_exhaustive()
    }
}

/// The liveness service name (the chart's liveness probe asks for it).
const LIVENESS: &str = "liveness";

/// The gRPC health service names the EPP answers for (GIE's and the ext_proc service's).
const HEALTH_SERVICES: &[&str] = &[
    "",
    LIVENESS,
    "readiness",
    "inference-extension",
    "envoy.service.ext_proc.v3.ExternalProcessor",
];

/// Starts an EPP on the given listeners. Its servers and loops run in the returned handle's
/// task set; cancelling `shutdown` stops them (the ext_proc server drains requests in flight
/// for up to the grace period).
pub async fn start(
    options: Options,
    listeners: Listeners,
    metrics: Option<MetricsHandle>,
    shutdown: CancellationToken,
) -> Result<Epp, Error> {
    let Options {
        config,
        endpoints_file,
        endpoints,
        kv_events_bind,
        scrape_interval,
        metric_names,
        metrics_staleness,
        objectives,
        subset_filter,
        max_body_bytes,
        limits,
        grace_period,
        pool_name,
        kubernetes,
        service_name,
        tls,
    } = options;
    let tls = match tls {
        Some(t) => {
            let certs = match &t.cert_path {
                Some(dir) => llmd_wire::tls::CertDir::load(dir)?,
                None => llmd_wire::tls::CertDir::self_signed()?,
            };
            if let (Some(every), Some(_)) = (t.reload_interval, &t.cert_path) {
                certs.watch(every, shutdown.clone());
            }
            Some(tokio_rustls::TlsAcceptor::from(Arc::new(
                certs.grpc_server_config()?,
            )))
        }
        None => None,
    };
    let mut tasks = llmd_telemetry::lifecycle::Tasks::new(shutdown.clone());
    let pool = Arc::new(Pool::default());
    let initial = pool.replace(endpoints.endpoints);
    let kv = KvService::for_config(&config)?;
    let scheduler = Arc::new(
        Scheduler::with_env(
            &config,
            plugins::registry::BuildEnv {
                kv: kv.clone(),
                scrape_interval: Some(scrape_interval),
                pool: Some(pool.clone()),
                stale_after: metrics_staleness,
            },
        )?
        .with_objectives(&objectives)?
        .with_limits(limits)
        .with_subset_filter(subset_filter)
        .with_service_name(service_name.clone()),
    );
    build_info();
    let mut kv_events_bound = None;
    // Who hears about endpoint changes: the KV-event subscriptions follow the pod set.
    let on_change: Arc<dyn Fn(endpoints::Change) + Send + Sync> = match &kv {
        Some(kv) => {
            // A configured tokenizer (ours `tokenizer`, llm-d's `modelName`) is loaded now, off
            // the runtime, so the first request does not pay for it.
            if kv.params().tokenizer.is_some() {
                let kv = kv.clone();
                tokio::task::spawn_blocking(move || kv.preload());
            }
            let events = kv.params().kv_events.clone();
            let defaults = SubscriberConfig::default();
            let subscriber = Arc::new(Subscriber::new(
                kv.index.clone(),
                SubscriberConfig {
                    topic_filter: events.topic_filter.clone(),
                    ..defaults
                },
            ));
            // llm-d's kvEventsConfig.discoverPods: dial every pod's publisher on socketPort.
            let dial = (events.discover_pods == Some(true)).then_some(Dial {
                port: events.socket_port,
                replay_port: events.replay_port,
            });
            // --kv-events-bind wins over llm-d's kvEventsConfig.zmqEndpoint.
            if let Some(bind) = kv_events_bind.as_ref().or(events.bind.as_ref()) {
                kv_events_bound = Some(subscriber.bind(bind).await?);
            }
            follow(&subscriber, &kv.index, &initial, dial);
            let (index, stop, sub) = (kv.index.clone(), shutdown.clone(), subscriber.clone());
            tasks.spawn("kv index metrics", async move {
                // The subscriber lives as long as this task: the EPP's.
                let _subscriber = sub;
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return Ok::<(), std::convert::Infallible>(()),
                        _ = tick.tick() => index.index().export_metrics(),
                    }
                }
            });
            let index = kv.index.clone();
            Arc::new(move |c| follow(&subscriber, &index, &c, dial))
        }
        None => Arc::new(|_| {}),
    };
    if let Some(path) = endpoints_file {
        let on_change = on_change.clone();
        let watch = endpoints::watch_file(
            path,
            pool.clone(),
            move |c| on_change(c),
            Duration::from_secs(2),
            shutdown.clone(),
        );
        tasks.spawn("endpoints file watch", async move {
            watch.await;
            Ok::<(), std::convert::Infallible>(())
        });
    }
    // Readiness: the pool listed once (at start for a file or fixed endpoints; by the first
    // watch snapshot from Kubernetes) and one round of metrics scrapes done.
    let (listed_tx, mut listed) = tokio::sync::watch::channel(kubernetes.is_none());
    let (scraped_tx, mut scraped) = tokio::sync::watch::channel(false);
    if let Some(mut k) = kubernetes {
        // llm-d's discoverPods: the pods' publisher and replay ports, per rank, derived by
        // discovery (a --kv-events-port flag wins).
        if let Some(kv) = &kv {
            let events = &kv.params().kv_events;
            if events.discover_pods == Some(true) {
                k.pool.kv_events_port.get_or_insert(events.socket_port);
                if k.pool.kv_events_replay_port.is_none() {
                    k.pool.kv_events_replay_port = events.replay_port;
                }
            }
        }
        let follow = discovery::run(
            k.client,
            k.pool,
            pool.clone(),
            move |c| on_change(c),
            shutdown.clone(),
            listed_tx,
        );
        tasks.spawn("kubernetes discovery", async move {
            follow.await;
            Ok::<(), std::convert::Infallible>(())
        });
    }
    let scrape = endpoints::scrape_loop(
        pool.clone(),
        pool_name,
        metric_names,
        scrape_interval,
        Duration::from_millis(900).min(scrape_interval.max(Duration::from_millis(500))),
        shutdown.clone(),
        scraped_tx,
    );
    tasks.spawn("metrics scrape", async move {
        scrape.await;
        Ok::<(), std::convert::Infallible>(())
    });

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    // Liveness answers SERVING from the start; everything else (readiness, the ext_proc
    // service, the default) only once the EPP can route: the pool listed and scraped once.
    // All turn NOT_SERVING as soon as the EPP stops (asked to, or because a task failed), so
    // the data plane stops sending while requests in flight drain.
    health_reporter
        .set_service_status(LIVENESS, tonic_health::ServingStatus::Serving)
        .await;
    for name in HEALTH_SERVICES.iter().filter(|n| **n != LIVENESS) {
        health_reporter
            .set_service_status(*name, tonic_health::ServingStatus::NotServing)
            .await;
    }
    let stop = shutdown.clone();
    tasks.spawn("health", async move {
        let ready = async {
            // An error means the sender is gone: its task ended, and the EPP with it.
            let _ = listed.wait_for(|l| *l).await;
            let _ = scraped.wait_for(|s| *s).await;
        };
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = ready => {
                tracing::info!("ready: the pool is listed and its metrics scraped");
                for name in HEALTH_SERVICES {
                    health_reporter
                        .set_service_status(*name, tonic_health::ServingStatus::Serving)
                        .await;
                }
                stop.cancelled().await;
            }
        }
        for name in HEALTH_SERVICES {
            health_reporter
                .set_service_status(*name, tonic_health::ServingStatus::NotServing)
                .await;
        }
        Ok::<(), std::convert::Infallible>(())
    });
    let grpc = listeners
        .grpc
        .local_addr()
        .map_err(|source| Error::Listen {
            addr: "grpc".into(),
            source,
        })?;
    let svc = ExtProcService::new(
        scheduler.clone(),
        ExtProcConfig {
            max_body_bytes,
            service_name,
        },
    );
    let stop = shutdown.clone();
    let hs = health_service.clone();
    let secure = tls.is_some();
    tasks.spawn("ext_proc server", async move {
        let router = tonic::transport::Server::builder()
            .add_service(ExternalProcessorServer::new(svc))
            .add_service(hs);
        match tls {
            Some(acceptor) => {
                let incoming = llmd_wire::tls::incoming(listeners.grpc, acceptor, stop.clone());
                let server =
                    router.serve_with_incoming_shutdown(incoming, stop.clone().cancelled_owned());
                drained(server, stop, grace_period).await
            }
            None => {
                let server = router.serve_with_incoming_shutdown(
                    tonic::transport::server::TcpIncoming::from(listeners.grpc)
                        .with_nodelay(Some(true)),
                    stop.clone().cancelled_owned(),
                );
                drained(server, stop, grace_period).await
            }
        }
    });
    if let Some(health) = listeners.health {
        let stop = shutdown.clone();
        tasks.spawn("health server", async move {
            let server = tonic::transport::Server::builder()
                .add_service(health_service)
                .serve_with_incoming_shutdown(
                    tonic::transport::server::TcpIncoming::from(health).with_nodelay(Some(true)),
                    stop.clone().cancelled_owned(),
                );
            drained(server, stop, grace_period).await
        });
    }
    let metrics_addr = listeners
        .metrics
        .local_addr()
        .map_err(|source| Error::Listen {
            addr: "metrics".into(),
            source,
        })?;
    let mut app = axum::Router::new()
        .route(
            "/debug/route",
            axum::routing::get(debug::route).post(debug::route),
        )
        .with_state(scheduler.clone());
    if let Some(m) = metrics {
        app = app.merge(m.router());
    }
    let stop = shutdown.clone();
    let metrics_listener = listeners.metrics;
    tasks.spawn("metrics server", async move {
        axum::serve(metrics_listener, app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await
    });
    tracing::info!(%grpc, tls = secure, metrics = %metrics_addr, endpoints = pool.snapshot().len(), "llmd-epp serving");
    Ok(Epp {
        grpc,
        metrics: metrics_addr,
        scheduler,
        kv_events_bound,
        tasks,
    })
}

/// A gRPC server that, once asked to stop, has `grace` to finish the streams in flight.
async fn drained<F>(
    server: F,
    stop: CancellationToken,
    grace: Duration,
) -> Result<(), tonic::transport::Error>
where
    F: std::future::Future<Output = Result<(), tonic::transport::Error>>,
{
    tokio::pin!(server);
    tokio::select! {
        r = &mut server => r,
        _ = async { stop.cancelled().await; tokio::time::sleep(grace).await } => {
            tracing::warn!(grace_s = grace.as_secs(), "requests still in flight after the grace period; stopping");
            Ok(())
        }
    }
}

/// llm-d's pod discovery: the port every pod publishes KV events on.
#[derive(Debug, Clone, Copy)]
struct Dial {
    port: u16,
    replay_port: Option<u16>,
}

/// GIE's and llm-d's build-information gauges (value 1).
fn build_info() {
    let commit = option_env!("LLMD_GIT_COMMIT").unwrap_or("unknown");
    for def in [
        &llmd_telemetry::names::epp::INFO,
        &llmd_telemetry::names::epp::LLMD_INFO,
    ] {
        metrics::gauge!(def.name, "commit" => commit, "build_ref" => env!("CARGO_PKG_VERSION"))
            .set(1.0);
    }
}

/// Follows the KV events of added endpoints and forgets removed ones: dialled at their
/// `kvEvents` (or, with llm-d's `discoverPods`, at the discovery port), else accepted on the
/// bound socket under their own topic; their replay socket asked at once.
fn follow(
    sub: &Subscriber,
    kv: &llmd_kv_index::KvIndex,
    change: &endpoints::Change,
    dial: Option<Dial>,
) {
    for spec in &change.added {
        let host = if spec.address.contains(':') && !spec.address.starts_with('[') {
            format!("[{}]", spec.address)
        } else {
            spec.address.clone()
        };
        let endpoint = spec
            .kv_events
            .clone()
            .or_else(|| dial.map(|d| format!("tcp://{host}:{}", d.port)));
        let replay = spec.kv_events_replay.clone().or_else(|| {
            dial.and_then(|d| d.replay_port)
                .map(|p| format!("tcp://{host}:{p}"))
        });
        sub.add_pod(PodEndpoint {
            pod: spec.host_port(),
            endpoint,
            replay_endpoint: replay,
            model: spec.model.first().cloned().unwrap_or_default(),
        });
    }
    for id in &change.removed {
        sub.remove_pod(id);
        kv.remove_pod(id);
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
