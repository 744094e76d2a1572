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
//! | `speculative` | provisional prefix entries of what was just routed, until the pods' KV events confirm them |
//! | `endpoints` | the endpoint set (static file, reloaded), `/metrics` scraping, health |
//! | `inflight` | what this EPP routed and has not seen finish, per endpoint (requests, prompt tokens) |
//! | `lora` | what a scrape says about a pod's base model and LoRA adapters (`vllm:lora_requests_info`) |
//! | `flow_control` | the `flowControl` gate: priority bands, per-tenant fair queues, TTLs and capacities in front of the scheduler |
//! | `discovery` | Kubernetes: an `InferencePool`'s ready pods as the endpoint set |
//! | `config` | the llm-d-shaped `EndpointPickerConfig` |
//! | `debug` | `/debug/route`: a decision explained, nothing routed |
//! | `labels` | label values from requests, bounded |
//! | `options` | what [`start`] runs: [`Options`], [`Listeners`], [`TlsOptions`], [`KubeSource`] |
//! | `cli` | the command line ([`Args`], llm-d's flag names) and [`run`] |
//!
//! Ports (`shared/design.md` §5): gRPC 9002, gRPC health 9003, metrics 9090 (`/metrics`, and
//! `POST /debug/route` to explain a decision without routing anything).
//!

mod cli;
pub mod config;
mod debug;
pub mod discovery;
pub mod endpoints;
pub mod flags;
pub mod flow_control;
pub mod inflight;
pub mod kv;
pub mod labels;
pub mod lora;
pub mod objectives;
mod options;
pub mod plugins;
pub mod protocol;
pub mod request;
pub mod scheduling;
pub mod speculative;
#[cfg(feature = "testing")]
pub mod testing;

pub use cli::{Args, run};
pub use options::{CERT_RELOAD_INTERVAL, KubeSource, Listeners, Options, TlsOptions};

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use llmd_kv_index::subscriber::{PodEndpoint, Subscriber, SubscriberConfig};
use llmd_telemetry::MetricsHandle;
use llmd_wire::pb::envoy::service::ext_proc::v3::external_processor_server::ExternalProcessorServer;
use tokio_util::sync::CancellationToken;

use crate::endpoints::Pool;
use crate::kv::KvService;
use crate::protocol::{ExtProcConfig, ExtProcService};
use crate::scheduling::Scheduler;

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
    if let Some(fc) = crate::scheduling::Picker::flow_control(&*scheduler) {
        fc.set_pool_name(&pool_name);
        fc.drain_on(shutdown.clone());
    }
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
        let objectives = discovery::follow_objectives(
            k.client.clone(),
            &k.pool,
            scheduler.objectives().clone(),
            shutdown.clone(),
        );
        tasks.spawn("inference objectives", async move {
            objectives.await;
            Ok::<(), std::convert::Infallible>(())
        });
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
