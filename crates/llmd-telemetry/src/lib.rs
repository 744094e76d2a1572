//! Logging, OpenTelemetry tracing, W3C trace-context propagation and Prometheus metrics for every
//! llmd-rs service.
//!
//! Every service binary does the same three things at startup, through this crate:
//!
//! 1. [`init`] installs the `tracing` subscriber (logs to stderr, text or JSON, filtered by
//!    `RUST_LOG`) and, when an OTLP endpoint is configured, an OpenTelemetry tracer that exports
//!    `tracing` spans over OTLP/gRPC or OTLP/HTTP. With no endpoint, tracing is off and costs
//!    nothing: no tracer, no exporter, no extra layer. Log lines show the spans they happen in
//!    (`epp.request{x_request_id=..}: ...`) only when `RUST_LOG` enables `debug` somewhere: the
//!    log layer formats every span's fields when the span opens, which cost the EPP ~4 µs per
//!    request (a tenth of its overhead over a no-op ext_proc server); at `info` a log line
//!    carries its own fields (the request path's logs name their `request_id`).
//! 2. [`install_prometheus`] installs the `metrics` recorder with the bucket layout of every
//!    histogram in the [`names`] catalog, and [`MetricsHandle::router`] serves `GET /metrics`.
//! 3. [`propagation`] carries the W3C `traceparent`/`tracestate`/`baggage` headers across every
//!    hop: extracted from incoming HTTP headers (or Envoy's ext_proc header pairs) and injected
//!    into outgoing requests.
//!
//! The [`TelemetryGuard`] returned by [`init`] flushes spans when dropped and when SIGTERM or
//! Ctrl-C arrives. A service that shuts down gracefully takes [`TelemetryGuard::shutdown_token`]
//! and stops when it is cancelled; a service that does not gets the default behaviour (exit with
//! status 128 + signal number), after the flush.
//!
//! # Configuration
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `RUST_LOG` | log filter (`EnvFilter` syntax) | `info` |
//! | `LLMD_LOG_FORMAT` / `--log-format` | `text` or `json` | `text` |
//! | `OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` | where spans go | unset: tracing off |
//! | `OTEL_EXPORTER_OTLP_PROTOCOL`, `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL` | `grpc` or `http/protobuf` | `grpc` |
//! | `OTEL_EXPORTER_OTLP_TIMEOUT` | export timeout, ms | `10000` |
//! | `OTEL_EXPORTER_OTLP_HEADERS` | extra export headers (read by the exporter) | none |
//! | `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES` | resource | the service's own name |
//! | `OTEL_TRACES_SAMPLER`, `OTEL_TRACES_SAMPLER_ARG` | sampling | `parentbased_traceidratio`, `1.0` |
//! | `OTEL_SDK_DISABLED` | `true` turns tracing off whatever else is set | `false` |
//!
//! # Example
//!
//! A service that serves `/metrics`, records a histogram from the catalog, and continues the
//! caller's trace in a span whose context it passes on to the next hop:
//!
//! ```
//! use llmd_telemetry::{names, propagation, TelemetryConfig};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), llmd_telemetry::TelemetryError> {
//! // Reads RUST_LOG, LLMD_LOG_FORMAT and OTEL_*; no endpoint here, so tracing is off.
//! let config = TelemetryConfig::default();
//! let guard = llmd_telemetry::init("llmd-example", &config)?;
//! assert!(!guard.tracing_enabled());
//!
//! let metrics = llmd_telemetry::install_prometheus(&[names::pd_proxy::ALL], &[])?;
//! let _router = metrics.router(); // axum::serve(listener, router) on the metrics port
//!
//! // An incoming request's headers...
//! let mut incoming = http::HeaderMap::new();
//! incoming.insert(
//!     "traceparent",
//!     "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".parse().unwrap(),
//! );
//! let span = tracing::info_span!(names::spans::PD_PROXY_REQUEST);
//! propagation::set_parent(&span, propagation::extract_from_headers(&incoming));
//!
//! // ...and the outgoing one. With tracing off the caller's traceparent is passed on as is.
//! let mut outgoing = incoming.clone();
//! propagation::inject_span_into_headers(&span, &mut outgoing);
//! assert!(outgoing.contains_key("traceparent"));
//!
//! metrics::histogram!(names::pd_proxy::COORDINATOR_OVERHEAD.name, "connector" => "nixlv2")
//!     .record(0.4);
//! assert!(metrics.render().contains("llm_d_inference_scheduler_pd_proxy_coordinator_overhead_milliseconds_bucket"));
//! # Ok(())
//! # }
//! ```

pub mod config;
pub mod exposition;
pub mod lifecycle;
pub mod llm_d_flags;
pub mod names;
pub mod prometheus;
pub mod propagation;
mod service_split;
pub mod testing;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::filter::{EnvFilter, FilterExt, LevelFilter, Targets, filter_fn};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, Registry};

pub use config::{LogFormat, OtlpProtocol, SamplerConfig, TelemetryConfig, TracingConfig};
pub use prometheus::{HotHistogram, MetricsHandle, install_prometheus, register_zero};

/// Errors from setting up telemetry. Recording metrics and spans never fails.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// `RUST_LOG` could not be parsed.
    #[error("invalid log filter {filter:?}: {source}")]
    LogFilter {
        /// The directives given.
        filter: String,
        /// Parser error.
        #[source]
        source: tracing_subscriber::filter::ParseError,
    },
    /// A global `tracing` subscriber was already installed.
    #[error("a tracing subscriber is already installed: {0}")]
    SubscriberAlreadySet(#[from] tracing_subscriber::util::TryInitError),
    /// The OTLP exporter could not be built (bad endpoint, ...).
    #[error("cannot build the OTLP span exporter for {endpoint}: {source}")]
    Exporter {
        /// Configured endpoint.
        endpoint: String,
        /// Exporter error.
        #[source]
        source: opentelemetry_otlp::ExporterBuildError,
    },
    /// The exporter's background runtime could not be started.
    #[error("cannot start the span export runtime: {0}")]
    Runtime(#[source] std::io::Error),
    /// The Prometheus recorder could not be installed (already installed, bad buckets).
    #[error("cannot install the Prometheus recorder: {0}")]
    Prometheus(#[from] metrics_exporter_prometheus::BuildError),
    /// The metrics listener could not bind or serve.
    #[error("cannot serve metrics on {addr}: {source}")]
    Bind {
        /// Address.
        addr: std::net::SocketAddr,
        /// I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// Command-line flags every service shares; flatten it into a service's clap `Args`.
#[derive(Debug, Clone, clap::Args)]
pub struct TelemetryArgs {
    /// Log line format (logs go to stderr; filter with RUST_LOG).
    #[arg(long, env = config::LLMD_LOG_FORMAT, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

impl TelemetryArgs {
    /// The configuration from these flags plus `RUST_LOG` and the `OTEL_*` environment.
    pub fn to_config(&self) -> TelemetryConfig {
        TelemetryConfig {
            log_format: self.log_format,
            ..TelemetryConfig::from_env()
        }
    }
}

/// Keeps telemetry running; flushes and shuts the tracer down when dropped.
#[derive(Debug)]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
    export_runtime: Option<tokio::runtime::Runtime>,
    shutdown: CancellationToken,
    shutdown_taken: Arc<AtomicBool>,
}

impl TelemetryGuard {
    /// True when spans are being recorded and exported.
    pub fn tracing_enabled(&self) -> bool {
        self.provider.is_some()
    }

    /// A token cancelled when SIGTERM or Ctrl-C arrives (after spans are flushed). Taking it
    /// tells the guard that the service shuts itself down; otherwise the guard exits the process
    /// with status 128 + signal number, as the default signal action would have.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown_taken.store(true, Ordering::SeqCst);
        self.shutdown.clone()
    }

    /// Exports every finished span now. Blocks until the exporter answers or times out.
    pub fn flush(&self) {
        if let Some(provider) = &self.provider
            && let Err(error) = provider.force_flush()
        {
            tracing::warn!(%error, "span flush failed");
        }
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(error) = provider.shutdown()
        {
            eprintln!("llmd-telemetry: tracer shutdown failed: {error}");
        }
        if let Some(rt) = self.export_runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// Targets whose spans never go to the tracer: the exporter's own transport would otherwise
/// trace its own exports.
const NOT_TRACED: &[&str] = &[
    "h2",
    "hyper",
    "hyper_util",
    "tonic",
    "tower",
    "reqwest",
    "opentelemetry",
];

/// Set by [`init`] when it installs a tracer.
static TRACING: AtomicBool = AtomicBool::new(false);

/// Whether [`init`] installed an OpenTelemetry tracer in this process: without one, a trace
/// context extracted from a request has nowhere to go, and a hot path may skip extracting it.
pub fn tracing_enabled() -> bool {
    TRACING.load(Ordering::Acquire)
}

/// Installs logging and (when configured) tracing for the whole process.
///
/// `service_name` is the OpenTelemetry `service.name` unless `OTEL_SERVICE_NAME` or
/// `OTEL_RESOURCE_ATTRIBUTES` says otherwise. Call it once, early, inside the tokio runtime (the
/// signal handler needs one; without a runtime, flush-on-signal is skipped).
pub fn init(
    service_name: &str,
    config: &TelemetryConfig,
) -> Result<TelemetryGuard, TelemetryError> {
    let log_filter = EnvFilter::builder()
        .parse(&config.log_filter)
        .map_err(|source| TelemetryError::LogFilter {
            filter: config.log_filter.clone(),
            source,
        })?;
    // Span context in log lines only at debug (see the module docs: the cost is per span).
    let hint = log_filter.max_level_hint();
    let spans_in_logs = hint.is_none_or(|max| max >= LevelFilter::DEBUG);
    let mut spans = filter_fn(move |m| spans_in_logs || !m.is_span());
    if let Some(max) = hint {
        // Without the hint the pair has none, and `tracing` would then evaluate every
        // `trace!` call site in the process.
        spans = spans.with_max_level_hint(max);
    }
    let log_filter = log_filter.and(spans);
    let log_layer = match config.log_format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .boxed(),
    }
    .with_filter(log_filter);

    let (provider, export_runtime) = if config.tracing.enabled() {
        let (provider, rt) = build_tracer_provider(service_name, &config.tracing)?;
        (Some(provider), rt)
    } else {
        (None, None)
    };
    let otel_layer = provider.as_ref().map(|p| {
        let not_traced = NOT_TRACED.iter().fold(
            Targets::new().with_default(LevelFilter::INFO),
            |t, target| t.with_target(*target, LevelFilter::OFF),
        );
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer(service_name.to_owned()))
            .with_filter(not_traced)
    });

    match otel_layer {
        // Not `with(None)`: an absent layer still takes part in the call sites' interest, and
        // spans nothing records would be created for nothing.
        Some(otel) => Registry::default().with(log_layer).with(otel).try_init()?,
        None => Registry::default().with(log_layer).try_init()?,
    }
    opentelemetry::global::set_text_map_propagator(propagation::new_propagator());
    if let Some(p) = &provider {
        opentelemetry::global::set_tracer_provider(p.clone());
        TRACING.store(true, Ordering::Release);
    }

    for warning in &config.warnings {
        tracing::warn!(service = service_name, "telemetry configuration: {warning}");
    }
    match &config.tracing.endpoint {
        Some(endpoint) if provider.is_some() => tracing::info!(
            service = service_name,
            endpoint = %endpoint,
            protocol = ?config.tracing.protocol,
            sampling_ratio = config.tracing.sampler.ratio,
            parent_based = config.tracing.sampler.parent_based,
            "tracing enabled"
        ),
        _ => tracing::debug!(
            service = service_name,
            "tracing off (no OTLP endpoint, or OTEL_SDK_DISABLED)"
        ),
    }

    let guard = TelemetryGuard {
        provider,
        export_runtime,
        shutdown: CancellationToken::new(),
        shutdown_taken: Arc::new(AtomicBool::new(false)),
    };
    if config.flush_on_signal
        && let Ok(rt) = tokio::runtime::Handle::try_current()
    {
        rt.spawn(on_signal(
            guard.provider.clone(),
            guard.shutdown.clone(),
            guard.shutdown_taken.clone(),
        ));
    }
    Ok(guard)
}

async fn on_signal(
    provider: Option<SdkTracerProvider>,
    token: CancellationToken,
    taken: Arc<AtomicBool>,
) {
    let Some(signal) = shutdown_signal().await else {
        return;
    };
    tracing::info!(signal = signal.name(), "shutdown signal received");
    if let Some(provider) = provider {
        let flushed = tokio::task::spawn_blocking(move || provider.force_flush()).await;
        if let Ok(Err(error)) = flushed {
            tracing::warn!(%error, "span flush on shutdown failed");
        }
    }
    token.cancel();
    if !taken.load(Ordering::SeqCst) {
        std::process::exit(128 + signal.number());
    }
}

/// A shutdown signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGTERM (Kubernetes pod termination).
    Term,
    /// SIGINT (Ctrl-C).
    Interrupt,
}

impl Signal {
    /// Name for logs.
    pub fn name(self) -> &'static str {
        match self {
            Signal::Term => "SIGTERM",
            Signal::Interrupt => "SIGINT",
        }
    }

    /// POSIX signal number.
    pub fn number(self) -> i32 {
        match self {
            Signal::Term => 15,
            Signal::Interrupt => 2,
        }
    }
}

/// Waits for SIGTERM or Ctrl-C. `None` if no handler could be installed.
pub async fn shutdown_signal() -> Option<Signal> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).ok()?;
        tokio::select! {
            _ = term.recv() => Some(Signal::Term),
            r = tokio::signal::ctrl_c() => r.ok().map(|_| Signal::Interrupt),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c()
            .await
            .ok()
            .map(|_| Signal::Interrupt)
    }
}

fn build_tracer_provider(
    service_name: &str,
    cfg: &TracingConfig,
) -> Result<(SdkTracerProvider, Option<tokio::runtime::Runtime>), TelemetryError> {
    let endpoint = cfg.endpoint.clone().unwrap_or_default();
    let exporter_error = |source| TelemetryError::Exporter {
        endpoint: endpoint.clone(),
        source,
    };
    // The batch processor exports from its own thread. The gRPC channel's connection tasks get a
    // one-thread runtime of their own, so exports neither depend on nor block the service's
    // runtime (a current-thread runtime blocked in `Drop` would otherwise deadlock the flush).
    let timeout = cfg.timeout;
    let (exporter, runtime) = match cfg.protocol {
        OtlpProtocol::Grpc => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("otlp-export")
                .enable_all()
                .build()
                .map_err(TelemetryError::Runtime)?;
            let handle = rt.handle().clone();
            let endpoint = endpoint.clone();
            let make = move || {
                let _entered = handle.enter();
                opentelemetry_otlp::SpanExporter::builder()
                    .with_tonic()
                    .with_endpoint(endpoint.clone())
                    .with_timeout(timeout)
                    .build()
            };
            let first = make().map_err(exporter_error)?;
            let make = move || make().map_err(|e| e.to_string());
            (
                service_split::ServiceSplitExporter::new(first, Box::new(make)),
                Some(rt),
            )
        }
        OtlpProtocol::HttpProtobuf => {
            let endpoint = endpoint.clone();
            let make = move || {
                opentelemetry_otlp::SpanExporter::builder()
                    .with_http()
                    .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                    .with_endpoint(endpoint.clone())
                    .with_timeout(timeout)
                    .build()
            };
            let first = make().map_err(exporter_error)?;
            let make = move || make().map_err(|e| e.to_string());
            (
                service_split::ServiceSplitExporter::new(first, Box::new(make)),
                None,
            )
        }
    };

    let root = Sampler::TraceIdRatioBased(cfg.sampler.ratio);
    let sampler = if cfg.sampler.parent_based {
        Sampler::ParentBased(Box::new(root))
    } else {
        root
    };

    let attr_service_name = cfg
        .resource_attributes
        .iter()
        .find(|(k, _)| k == "service.name")
        .map(|(_, v)| v.clone());
    let name = cfg
        .service_name
        .clone()
        .or(attr_service_name)
        .unwrap_or_else(|| service_name.to_owned());
    let resource = Resource::builder_empty()
        .with_attributes(
            cfg.resource_attributes
                .iter()
                .filter(|(k, _)| k != "service.name")
                .map(|(k, v)| KeyValue::new(k.clone(), v.clone())),
        )
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .with_service_name(name)
        .build();

    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(sampler)
        .with_resource(resource)
        .build();
    Ok((provider, runtime))
}
