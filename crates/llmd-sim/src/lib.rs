//! `llmd-sim`: a vLLM simulator that stands in for one vLLM pod when there is no GPU.
//!
//! It serves vLLM's OpenAI API (completions and chat, plain and SSE streaming, usage with
//! cached tokens, vLLM-style errors, LoRA adapters), runs an engine model shaped like vLLM V1's
//! scheduler (waiting queue, running batch, chunked prefill, a KV block pool with prefix caching
//! and LRU eviction, preemption) with a timing model instead of a model, publishes vLLM's KV
//! events over ZMQ (either encoding, optional replay), and exposes vLLM's `vllm:*` metrics.
//! Every duration it reports is the wall time the request spent, whatever `--time-scale`.
//!
//! Modules, bottom up (each uses only those above it):
//!
//! | module | what it does |
//! |---|---|
//! | `config` | every flag; the timing defaults (Llama-3.1-8B on one H100, see its docs) |
//! | `faults` | error, latency, stall and dropped-transfer injection |
//! | `block_pool` | vLLM's block pool: prefix-cache hits, LRU free queue, `BlockStored`/`BlockRemoved` |
//! | `metrics` | vLLM's metric names, labels and buckets; how cache hits are counted |
//! | `lora` | the adapters served (static and runtime-loaded) |
//! | `engine` | the scheduler loop and timing, on one task |
//! | `kv_publisher` | ZMQ PUB of KV events, replay ROUTER |
//! | `nixl` | P/D: prefill leases, decode pulls, NIXL metrics |
//! | `tokens` | the model's tokenizer and chat template (or a byte stand-in), output text |
//! | `api` | the HTTP handlers (parse, generate, respond, span, models, error) |
//! | `engine_view` | one engine's `vllm:*` series out of a registry several simulators share (`llmd demo`, benchmarks) |
//! | `testing` | (feature `testing`) starting simulators from other crates' tests |
//!
//! Tracing: one `llm_request` span per request (vLLM's name and `gen_ai.*` attributes), from
//! the request's arrival, parented by the caller's `traceparent`.

pub mod api;
pub mod block_pool;
pub mod config;
pub mod engine;
pub mod engine_view;
pub mod faults;
pub mod kv_publisher;
pub mod lora;
pub mod metrics;
pub mod nixl;
#[cfg(feature = "testing")]
pub mod testing;
pub mod tokens;

use std::net::SocketAddr;
use std::sync::Arc;

use llmd_telemetry::{MetricsHandle, TelemetryArgs};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::EngineArgs;

/// Command-line flags of `llmd-sim` (also `llmd sim`).
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "llmd-sim",
    version,
    about = "vLLM simulator: vLLM's OpenAI API, metrics and KV events, with a timing model instead of a GPU"
)]
pub struct Args {
    /// Logging and tracing.
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
    /// Listen address.
    #[arg(long, default_value = "0.0.0.0")]
    pub host: String,
    /// Listen port (0: any free port, printed at startup).
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// Engine, API and KV-event settings.
    #[command(flatten)]
    pub engine: EngineArgs,
}

/// Errors of the simulator.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The tokenizer could not be loaded.
    #[error("tokenizer: {0} (use --dummy-tokenizer to run without tokenizer files)")]
    Tokenizer(#[from] llmd_tokenizer::TokenizerError),
    /// Listening failed.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// Address.
        addr: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// KV events could not start.
    #[error(transparent)]
    Publisher(#[from] kv_publisher::PublisherError),
    /// Metrics could not be installed.
    #[error(transparent)]
    Telemetry(#[from] llmd_telemetry::TelemetryError),
    /// A flag value that parses but cannot work.
    #[error("invalid configuration: {0}")]
    Config(#[from] config::ConfigError),
    /// Flags that do not parse (in-process starts from flag lists).
    #[error("invalid flags: {0}")]
    Flags(String),
}

/// A running simulator.
#[derive(Debug)]
pub struct Sim {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Where its KV-event PUB socket is bound (when it binds).
    pub kv_events_bound: Option<String>,
    /// Where its replay ROUTER is bound.
    pub kv_replay_bound: Option<String>,
    /// Finishes when the server stops.
    pub served: tokio::task::JoinHandle<std::io::Result<()>>,
    /// The handlers' shared state (engine, NIXL leases, adapters), for tests and diagnostics.
    pub state: Arc<api::AppState>,
}

/// Starts a simulator on `listener` (metrics: served at `/metrics` when `metrics` is given;
/// install the recorder before calling). Stops when `shutdown` is cancelled.
pub async fn start(
    args: EngineArgs,
    listener: TcpListener,
    metrics: Option<MetricsHandle>,
    shutdown: CancellationToken,
) -> Result<Sim, Error> {
    let addr = listener.local_addr().map_err(|source| Error::Listen {
        addr: "listener".into(),
        source,
    })?;
    args.validate()?;
    let args = Arc::new(args);
    let tokenizer = Arc::new(tokens::SimTokenizer::load(
        &args.model,
        args.tokenizer.as_deref(),
        args.dummy_tokenizer,
        args.prompt_cache_tokens,
    )?);
    let engine_metrics = Arc::new(metrics::EngineMetrics::for_engine(&args));
    let advertised = std::env::var("POD_IP").unwrap_or_else(|_| match addr.ip() {
        ip if ip.is_unspecified() => "127.0.0.1".to_owned(),
        ip => ip.to_string(),
    });
    let (sink, kv_events_bound, kv_replay_bound) = match &args.kv_events_endpoint {
        Some(endpoint) => {
            let topic = args
                .kv_events_topic
                .clone()
                .unwrap_or_else(|| format!("kv@{advertised}:{}@{}", addr.port(), args.model));
            let config = kv_publisher::PublisherConfig {
                endpoint: endpoint.clone(),
                topic,
                layout: args.kv_events_encoding,
                replay_endpoint: args.kv_events_replay_endpoint.clone(),
                buffer_steps: args.kv_events_buffer_steps,
                data_parallel_rank: args.data_parallel_rank,
            };
            let (sink, bound, replay) = kv_publisher::start(config, shutdown.clone()).await?;
            (Some(sink), bound, replay)
        }
        None => (None, None, None),
    };
    let engine = engine::Engine::start(args.clone(), engine_metrics.clone(), sink);
    let faults = Arc::new(faults::Faults::new(args.faults.clone()));
    let nixl = nixl::Nixl::new(
        args.nixl.clone(),
        advertised,
        addr.port(),
        engine_metrics,
        args.time_scale,
        faults.clone(),
    );
    let loras = Arc::new(lora::Loras::new(&args.lora, &args.model, |n| {
        args.serves(n)
    }));
    let filler = tokenizer.filler();
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let state = Arc::new(api::AppState {
        args: args.clone(),
        engine,
        tokenizer,
        filler,
        started,
        nixl,
        loras,
        faults,
        recorded: parking_lot::Mutex::new(std::collections::VecDeque::new()),
    });
    let mut app = api::router(state.clone());
    if let Some(m) = metrics {
        // One engine of several in this process: its own series only, as its own vLLM API
        // server would show.
        app = app.merge(if args.data_parallel_size > 1 {
            engine_view::router(m, args.data_parallel_rank)
        } else {
            m.router()
        });
    }
    tracing::info!(%addr, model = args.model, "llmd-sim listening");
    let served = tokio::spawn(async move {
        // Like uvicorn (vLLM's server), no Nagle: a streamed token is not held back until the
        // peer's delayed ACK (~40 ms on a pooled connection).
        use axum::serve::ListenerExt;
        let listener = listener.tap_io(|tcp| {
            if let Err(error) = tcp.set_nodelay(true) {
                tracing::debug!(%error, "cannot set TCP_NODELAY");
            }
        });
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
    });
    Ok(Sim {
        addr,
        kv_events_bound,
        kv_replay_bound,
        served,
        state,
    })
}

/// The histogram buckets that follow the flags: vLLM's per-request token histograms use
/// `build_1_2_5_buckets(max_model_len)`.
pub fn bucket_overrides(args: &EngineArgs) -> Vec<(&'static str, Vec<f64>)> {
    let buckets = llmd_telemetry::names::vllm::buckets_1_2_5(args.max_model_len as u64);
    llmd_telemetry::names::vllm::MAX_MODEL_LEN_BUCKETED
        .iter()
        .map(|d| (d.name, buckets.clone()))
        .collect()
}

/// Runs the simulator until `shutdown` is cancelled: installs the metrics recorder, binds
/// `--host:--port`, serves.
pub async fn run(args: Args, shutdown: CancellationToken) -> Result<(), Error> {
    args.engine.validate()?;
    let metrics = llmd_telemetry::install_prometheus(
        &[llmd_telemetry::names::vllm::ALL],
        &bucket_overrides(&args.engine),
    )?;
    let mut sims = Vec::new();
    for r in 0..args.engine.data_parallel_size {
        let mut engine = args.engine.clone();
        if args.engine.data_parallel_size > 1 {
            engine.data_parallel_rank = args.engine.data_parallel_rank.saturating_add(r);
            engine.kv_events_endpoint = engine
                .kv_events_endpoint
                .map(|e| offset_port(&e, r))
                .transpose()?;
            engine.kv_events_replay_endpoint = engine
                .kv_events_replay_endpoint
                .map(|e| offset_port(&e, r))
                .transpose()?;
        }
        let port = u16::try_from(u32::from(args.port) + r)
            .map_err(|_| Error::Flags(format!("--port {} + rank {r} is not a port", args.port)))?;
        let addr = format!("{}:{port}", args.host);
        let listener = TcpListener::bind(&addr)
            .await
            .map_err(|source| Error::Listen {
                addr: addr.clone(),
                source,
            })?;
        let sim = start(engine, listener, Some(metrics.clone()), shutdown.clone()).await?;
        println!("llmd-sim listening on http://{}", sim.addr);
        sims.push((addr, sim));
    }
    for (addr, sim) in sims {
        match sim.served.await {
            Ok(Ok(())) | Err(_) => {}
            Ok(Err(source)) => return Err(Error::Listen { addr, source }),
        }
    }
    Ok(())
}

/// `endpoint` (`tcp://host:port`) with its port moved up by `by` (a data-parallel rank's
/// publisher, as vLLM offsets it; port 0, any free port, stays 0).
fn offset_port(endpoint: &str, by: u32) -> Result<String, Error> {
    let bad = || Error::Flags(format!("{endpoint:?}: not tcp://host:port"));
    let (head, port) = endpoint.rsplit_once(':').ok_or_else(bad)?;
    let port: u32 = port.parse().map_err(|_| bad())?;
    if port == 0 {
        return Ok(endpoint.to_owned());
    }
    let moved = u16::try_from(port + by).map_err(|_| bad())?;
    Ok(format!("{head}:{moved}"))
}
