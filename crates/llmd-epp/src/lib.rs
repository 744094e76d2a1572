//! `llmd-epp`: the endpoint picker (EPP) that an Envoy-based gateway calls, over the
//! `envoy.service.ext_proc.v3.ExternalProcessor` gRPC protocol, for every inference request.
//!
//! | module | what it does |
//! |---|---|
//! | `client` | the data-plane side: ask an EPP where a request goes (for gateways and tests) |
//! | `extproc` | the ext_proc stream state machine (full-duplex and buffered bodies, destination header and `envoy.lb` metadata, `ImmediateResponse` errors, response pass-through) |
//! | `request` | OpenAI completions / chat request parsing |
//! | `endpoints` | the endpoint set (static file, reloaded), `/metrics` scraping with staleness |
//! | `discovery` | Kubernetes: an `InferencePool`'s ready pods as the endpoint set |
//! | `config` | the llm-d-shaped `EndpointPickerConfig` |
//! | `plugins` | filters, scorers (precise prefix cache, queue, KV usage, load), pickers, profile handlers (single, P/D) |
//! | `scheduler` | model and subset filtering, the handler, decision metrics |
//!
//! Ports (`shared/design.md` §5): gRPC 9002, gRPC health 9003, metrics 9090 (`/metrics`, and
//! `POST /debug/route` to explain a decision without routing anything).
//!

pub mod client;
pub mod config;
pub mod discovery;
pub mod endpoints;
pub mod extproc;
pub mod plugins;
pub mod request;
pub mod scheduler;
#[cfg(feature = "testing")]
pub mod testing;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_server::ExternalProcessorServer;
use llmd_kv_index::subscriber::{PodEndpoint, Subscriber, SubscriberConfig};
use llmd_telemetry::{MetricsHandle, TelemetryArgs};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::EndpointPickerConfig;
use crate::endpoints::{EndpointsFile, Pool};
use crate::extproc::{ExtProcConfig, ExtProcService, PickContext};
use crate::scheduler::Scheduler;

/// Command-line flags of `llmd-epp` (also `llmd epp`).
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
    /// Listen address.
    #[arg(long, default_value = "0.0.0.0")]
    pub host: String,
    /// ext_proc gRPC port.
    #[arg(long, default_value_t = 9002)]
    pub grpc_port: u16,
    /// gRPC health port.
    #[arg(long, default_value_t = 9003)]
    pub grpc_health_port: u16,
    /// Metrics (and /debug/route) port.
    #[arg(long, default_value_t = 9090)]
    pub metrics_port: u16,
    /// Scheduler config (EndpointPickerConfig YAML); default: precise prefix cache + load.
    #[arg(long, env = "LLMD_EPP_CONFIG")]
    pub config: Option<PathBuf>,
    /// Endpoints file (YAML/JSON), reloaded when it changes (local runs; else --pool-name).
    #[arg(
        long,
        env = "LLMD_EPP_ENDPOINTS",
        required_unless_present = "pool_name",
        conflicts_with = "pool_name"
    )]
    pub endpoints_file: Option<PathBuf>,
    /// Follow this Kubernetes InferencePool (in-cluster config or KUBECONFIG).
    #[arg(long, env = "LLMD_EPP_POOL_NAME")]
    pub pool_name: Option<String>,
    /// Namespace of the InferencePool.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub pool_namespace: String,
    /// API group of the InferencePool.
    #[arg(long, default_value = "inference.networking.k8s.io")]
    pub pool_group: String,
    /// Dial each discovered pod's KV events on this port (else pods connect to --kv-events-bind).
    #[arg(long)]
    pub kv_events_port: Option<u16>,
    /// How often to list the pool's pods, ms.
    #[arg(long, default_value_t = 1000)]
    pub discovery_interval_ms: u64,
    /// Also bind a ZMQ SUB socket that pods connect to for KV events (e.g. tcp://*:5557).
    #[arg(long)]
    pub kv_events_bind: Option<String>,
    /// Scrape interval of the pods' /metrics, ms.
    #[arg(long, default_value_t = 1000)]
    pub scrape_interval_ms: u64,
    /// Largest request body, bytes.
    #[arg(long, default_value_t = 32 << 20)]
    pub max_body_bytes: usize,
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
    /// Largest request body.
    pub max_body_bytes: usize,
    /// The pool's name (label of the `inference_pool_*` gauges).
    pub pool_name: String,
    /// Follow a Kubernetes `InferencePool` (its ready pods replace the endpoints).
    pub kubernetes: Option<KubeSource>,
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

/// Starts an EPP on the given listeners.
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
        max_body_bytes,
        pool_name,
        kubernetes,
    } = options;
    let pool = Arc::new(Pool::default());
    let initial = pool.replace(endpoints.endpoints);
    let scheduler = Arc::new(Scheduler::new(&config, pool.clone())?);
    let mut kv_events_bound = None;
    // Who hears about endpoint changes: the KV-event subscriptions follow the pod set.
    let on_change: Arc<dyn Fn(endpoints::Change) + Send + Sync> = match scheduler.prefix() {
        Some(prefix) => {
            let subscriber = Arc::new(Subscriber::new(
                prefix.kv.clone(),
                SubscriberConfig::default(),
            ));
            if let Some(bind) = &kv_events_bind {
                kv_events_bound = Some(subscriber.bind(bind).await?);
            }
            follow(&subscriber, &prefix.kv, &initial);
            let (kv, stop, sub) = (prefix.kv.clone(), shutdown.clone(), subscriber.clone());
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                while !stop.is_cancelled() {
                    tick.tick().await;
                    kv.index().export_metrics();
                }
                drop(sub);
            });
            let kv = prefix.kv.clone();
            Arc::new(move |c| follow(&subscriber, &kv, &c))
        }
        None => Arc::new(|_| {}),
    };
    if let Some(path) = endpoints_file {
        let on_change = on_change.clone();
        tokio::spawn(endpoints::watch_file(
            path,
            pool.clone(),
            move |c| on_change(c),
            Duration::from_secs(2),
            shutdown.clone(),
        ));
    }
    if let Some(k) = kubernetes {
        tokio::spawn(discovery::run(
            k.client,
            k.pool,
            pool.clone(),
            move |c| on_change(c),
            shutdown.clone(),
        ));
    }
    tokio::spawn(endpoints::scrape_loop(
        pool.clone(),
        pool_name,
        scrape_interval,
        Duration::from_millis(900).min(scrape_interval),
        shutdown.clone(),
    ));

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    for name in [
        "",
        "liveness",
        "readiness",
        "inference-extension",
        "envoy.service.ext_proc.v3.ExternalProcessor",
    ] {
        health_reporter
            .set_service_status(name, tonic_health::ServingStatus::Serving)
            .await;
    }
    let grpc = listeners
        .grpc
        .local_addr()
        .map_err(|source| Error::Listen {
            addr: "grpc".into(),
            source,
        })?;
    let svc = ExtProcService::new(scheduler.clone(), ExtProcConfig { max_body_bytes });
    let stop = shutdown.clone();
    let hs = health_service.clone();
    tokio::spawn(async move {
        let r = tonic::transport::Server::builder()
            .add_service(ExternalProcessorServer::new(svc))
            .add_service(hs)
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listeners.grpc)
                    .with_nodelay(Some(true)),
                stop.cancelled_owned(),
            )
            .await;
        if let Err(error) = r {
            tracing::error!(%error, "ext_proc server stopped");
        }
    });
    if let Some(health) = listeners.health {
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(health_service)
                .serve_with_incoming_shutdown(
                    tonic::transport::server::TcpIncoming::from(health).with_nodelay(Some(true)),
                    stop.cancelled_owned(),
                )
                .await;
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
            axum::routing::get(debug_route).post(debug_route),
        )
        .with_state(scheduler.clone());
    if let Some(m) = metrics {
        app = app.merge(m.router());
    }
    let stop = shutdown.clone();
    let metrics_listener = listeners.metrics;
    tokio::spawn(async move {
        axum::serve(metrics_listener, app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await
    });
    tracing::info!(%grpc, metrics = %metrics_addr, endpoints = pool.snapshot().len(), "llmd-epp serving");
    Ok(Epp {
        grpc,
        metrics: metrics_addr,
        scheduler,
        kv_events_bound,
    })
}

/// Follows the KV events of added endpoints (dialled when they have `kvEvents`, else accepted
/// on the bound socket under their own topic; replay asked at once) and forgets removed ones.
fn follow(sub: &Subscriber, kv: &llmd_kv_index::KvIndex, change: &endpoints::Change) {
    for spec in &change.added {
        sub.add_pod(PodEndpoint {
            pod: spec.host_port(),
            endpoint: spec.kv_events.clone(),
            replay_endpoint: spec.kv_events_replay.clone(),
            model: spec.model.first().cloned().unwrap_or_default(),
        });
    }
    for id in &change.removed {
        sub.remove_pod(id);
        kv.remove_pod(id);
    }
}

#[derive(Debug, serde::Deserialize)]
struct RouteQuery {
    path: Option<String>,
}

/// `GET` or `POST /debug/route?path=/v1/completions` with a request body: the decision for a request body, with every
/// plugin's score per endpoint; nothing is routed.
async fn debug_route(
    State(scheduler): State<Arc<Scheduler>>,
    Query(q): Query<RouteQuery>,
    body: axum::body::Bytes,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let path = q.path.unwrap_or_else(|| "/v1/completions".into());
    let req = match request::parse(&path, &body) {
        Ok(r) => r,
        Err(e) => return (axum::http::StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    let span = tracing::Span::none();
    let ctx = PickContext {
        request: Some(&req),
        headers: &[],
        subset: None,
        span: &span,
    };
    let (result, scores, prefix) = scheduler.decide(&ctx, true);
    let scores: Vec<serde_json::Value> = scores
        .unwrap_or_default()
        .into_iter()
        .map(|(profile, plugin, endpoint, score)| serde_json::json!({"profile": profile, "plugin": plugin, "endpoint": endpoint, "score": score}))
        .collect();
    let body = match result {
        Ok(d) => {
            serde_json::json!({"endpoints": d.endpoints, "headers": d.headers, "scores": scores,
            "prefix": prefix.map(|p| serde_json::json!({"prompt_tokens": p.prompt_tokens, "total_blocks": p.total_blocks, "block_size": p.block_size, "matched_blocks": p.matched}))})
        }
        Err(e) => {
            serde_json::json!({"error": e.to_string(), "status": e.status(), "scores": scores})
        }
    };
    axum::Json(body).into_response()
}

/// Runs the EPP until `shutdown` is cancelled.
pub async fn run(args: Args, shutdown: CancellationToken) -> Result<(), Error> {
    let metrics = llmd_telemetry::install_prometheus(
        &[
            llmd_telemetry::names::epp::ALL,
            llmd_telemetry::names::kv_cache::ALL,
        ],
        &[],
    )?;
    let config = match &args.config {
        Some(path) => EndpointPickerConfig::load(path)?,
        None => EndpointPickerConfig::parse(config::DEFAULT_CONFIG)?,
    };
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
    start(
        Options {
            config,
            endpoints_file: args.endpoints_file.clone(),
            endpoints,
            kv_events_bind: args.kv_events_bind.clone(),
            scrape_interval: Duration::from_millis(args.scrape_interval_ms.max(50)),
            max_body_bytes: args.max_body_bytes,
            pool_name: args.pool_name.clone().unwrap_or_else(|| "static".into()),
            kubernetes,
        },
        listeners,
        Some(metrics),
        shutdown.clone(),
    )
    .await?;
    shutdown.cancelled().await;
    Ok(())
}
