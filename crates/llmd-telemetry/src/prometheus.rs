//! Prometheus: the `metrics` recorder with per-metric buckets, and `GET /metrics`.
//!
//! A service installs the recorder once with the metric catalog it exposes
//! ([`crate::names`]), then records with the `metrics` macros and serves [`MetricsHandle::router`]
//! on its metrics port (or merges that router into its main one).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;

use crate::TelemetryError;
use crate::names::{MetricDef, MetricKind};

/// Content type of the Prometheus text exposition format.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// How often histogram samples are folded into their buckets between scrapes.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Renders the installed recorder's metrics. Cheap to clone.
#[derive(Clone, Debug)]
pub struct MetricsHandle {
    inner: PrometheusHandle,
}

impl MetricsHandle {
    /// The current metrics in the Prometheus text format.
    pub fn render(&self) -> String {
        self.inner.render()
    }

    /// A router answering `GET /metrics`; merge it into a service's router or serve it alone.
    pub fn router(&self) -> Router {
        let handle = self.clone();
        Router::new().route(
            "/metrics",
            get(move || {
                let body = handle.render();
                async move { ([(header::CONTENT_TYPE, PROMETHEUS_CONTENT_TYPE)], body).into_response() }
            }),
        )
    }

    /// Serves [`Self::router`] on `listener` until `shutdown` completes.
    pub async fn serve(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        axum::serve(listener, self.router())
            .with_graceful_shutdown(shutdown)
            .await
    }

    /// Binds `addr` and serves `/metrics` until `shutdown` completes.
    pub async fn serve_on(
        &self,
        addr: SocketAddr,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), TelemetryError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| TelemetryError::Bind { addr, source })?;
        tracing::info!(%addr, "serving Prometheus metrics at /metrics");
        self.serve(listener, shutdown)
            .await
            .map_err(|source| TelemetryError::Bind { addr, source })
    }
}

/// Installs the process-wide Prometheus recorder for the given metric catalogs.
///
/// Histograms get the buckets of their [`MetricDef`] (or of `bucket_overrides`, for buckets that
/// depend on configuration such as vLLM's `--max-model-len`), every metric gets its help text,
/// and metrics without labels are registered at zero so they are visible before the first event.
/// Fails if a recorder is already installed.
pub fn install_prometheus(
    catalogs: &[&[&'static MetricDef]],
    bucket_overrides: &[(&'static str, Vec<f64>)],
) -> Result<MetricsHandle, TelemetryError> {
    let mut builder = PrometheusBuilder::new();
    let defs = || catalogs.iter().flat_map(|c| c.iter().copied());
    for def in defs().filter(|d| d.kind == MetricKind::Histogram) {
        let buckets = bucket_overrides
            .iter()
            .find(|(name, _)| *name == def.name)
            .map(|(_, b)| b.as_slice())
            .unwrap_or(def.buckets);
        builder = builder.set_buckets_for_metric(Matcher::Full(def.name.to_owned()), buckets)?;
    }
    let inner = builder.install_recorder()?;
    INSTALLED.store(true, Ordering::Release);
    for def in defs() {
        describe(def);
        if def.labels.is_empty() {
            register_zero(def, &[]);
        }
    }
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        let upkeep = inner.clone();
        rt.spawn(async move {
            let mut tick = tokio::time::interval(UPKEEP_INTERVAL);
            loop {
                tick.tick().await;
                upkeep.run_upkeep();
            }
        });
    }
    Ok(MetricsHandle { inner })
}

/// Set once [`install_prometheus`] has installed the process's recorder, which is never
/// replaced after: handles registered from then on stay valid for the life of the process.
static INSTALLED: AtomicBool = AtomicBool::new(false);

/// Whether the process's Prometheus recorder is installed ([`install_prometheus`]). Until it
/// is, `metrics` hands out no-op handles, which must not be kept.
pub fn installed() -> bool {
    INSTALLED.load(Ordering::Acquire)
}

/// A label-less histogram on a hot path, registered once: recording is then an atomic append,
/// not a registry lookup (hashing and comparing the key under a lock) per call. Before the
/// recorder is installed each call registers afresh (and records nowhere), so a handle taken
/// too early is never kept.
#[derive(Debug)]
pub struct HotHistogram {
    name: &'static str,
    handle: OnceLock<metrics::Histogram>,
}

impl HotHistogram {
    /// The histogram `def` names.
    pub const fn new(def: &'static MetricDef) -> Self {
        Self {
            name: def.name,
            handle: OnceLock::new(),
        }
    }

    /// Records one observation.
    pub fn record(&self, value: f64) {
        if let Some(h) = self.handle.get() {
            return h.record(value);
        }
        let h = metrics::histogram!(self.name);
        h.record(value);
        if installed() {
            let _ = self.handle.set(h);
        }
    }
}

/// Registers `def` with the given label values at zero, so dashboards see the series (value 0,
/// empty histogram) before the first observation.
pub fn register_zero(def: &MetricDef, labels: &[(&'static str, String)]) {
    let labels: Vec<metrics::Label> = labels
        .iter()
        .map(|(k, v)| metrics::Label::new(*k, v.clone()))
        .collect();
    match def.kind {
        MetricKind::Counter => metrics::counter!(def.name, labels).increment(0),
        MetricKind::Gauge => metrics::gauge!(def.name, labels).increment(0.0),
        MetricKind::Histogram => {
            let _ = metrics::histogram!(def.name, labels);
        }
    }
}

fn describe(def: &MetricDef) {
    match def.kind {
        MetricKind::Counter => metrics::describe_counter!(def.name, def.help),
        MetricKind::Gauge => metrics::describe_gauge!(def.name, def.help),
        MetricKind::Histogram => metrics::describe_histogram!(def.name, def.help),
    }
}
