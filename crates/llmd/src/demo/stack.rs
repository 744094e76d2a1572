//! The demo's building blocks: loopback listeners, simulators, per-engine metrics views,
//! the EPP, the gateway, and reading the process's own metrics.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use llmd_epp::endpoints::{EndpointSpec, Role};
use llmd_telemetry::MetricsHandle;
use llmd_telemetry::exposition::Exposition;
use tokio_util::sync::CancellationToken;

pub(super) async fn bind() -> anyhow::Result<tokio::net::TcpListener> {
    Ok(tokio::net::TcpListener::bind("127.0.0.1:0").await?)
}

pub(super) async fn sim_on(
    flags: &[&str],
    listener: tokio::net::TcpListener,
    stop: &CancellationToken,
) -> anyhow::Result<SocketAddr> {
    let args = llmd_sim::EngineArgs::from_flags(flags.iter().copied())
        .map_err(|e| anyhow::anyhow!("simulator flags: {e}"))?;
    Ok(llmd_sim::start(args, listener, None, stop.clone())
        .await?
        .addr)
}

pub(super) async fn sim(flags: &[&str], stop: &CancellationToken) -> anyhow::Result<SocketAddr> {
    sim_on(flags, bind().await?, stop).await
}

pub(super) async fn engine_metrics(
    metrics: &MetricsHandle,
    rank: u32,
    stop: &CancellationToken,
) -> anyhow::Result<SocketAddr> {
    let listener = bind().await?;
    let addr = listener.local_addr()?;
    let app = llmd_sim::engine_view::router(metrics.clone(), rank);
    let stop = stop.clone();
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await
        {
            tracing::warn!(%error, "engine metrics view stopped");
        }
    });
    Ok(addr)
}

pub(super) fn spec(addr: SocketAddr, role: Role, metrics_port: Option<u16>) -> EndpointSpec {
    EndpointSpec {
        address: addr.ip().to_string(),
        port: addr.port(),
        role,
        model: Vec::new(),
        kv_events: None,
        kv_events_replay: None,
        metrics_port,
    }
}

/// Writes a Prometheus configuration scraping the demo's metrics endpoint.
pub(super) fn write_prometheus_config(path: &Path, target: SocketAddr) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let text = format!(
        "# Written by `llmd demo`: scrapes every component of the demo. They share one process\n\
         # and so one registry, served whole at this target; the simulators' series are told\n\
         # apart by their `engine` label. Run: prometheus --config.file={}\n\
         global:\n  scrape_interval: 2s\n  evaluation_interval: 2s\n\
         scrape_configs:\n  - job_name: llmd-demo\n    static_configs:\n      - targets: ['{target}']\n",
        path.display()
    );
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// A counter or histogram family's growth between two snapshots.
pub(super) fn delta(
    before: &Exposition,
    after: &Exposition,
    name: &str,
    labels: &[(&str, &str)],
) -> f64 {
    after.sum(name, labels) - before.sum(name, labels)
}

/// A histogram family's growth per bucket between two snapshots, summed over the series that
/// match `labels`: (upper bound, observations in that bucket alone), `+Inf` last.
pub(super) fn bucket_delta(
    before: &Exposition,
    after: &Exposition,
    family: &str,
    labels: &[(&str, &str)],
) -> Vec<(f64, f64)> {
    let name = format!("{family}_bucket");
    let cumulative = |e: &Exposition| {
        let mut by_le: Vec<(f64, f64)> = Vec::new();
        for s in e.find(&name, labels) {
            let Some(le) = s
                .label("le")
                .and_then(llmd_telemetry::exposition::parse_value)
            else {
                continue;
            };
            match by_le.iter_mut().find(|(l, _)| *l == le) {
                Some(b) => b.1 += s.value,
                None => by_le.push((le, s.value)),
            }
        }
        by_le
    };
    let (b, mut a) = (cumulative(before), cumulative(after));
    a.sort_by(|x, y| x.0.total_cmp(&y.0));
    let mut out = Vec::with_capacity(a.len());
    let mut below = 0.0;
    for (le, n) in a {
        let was = b.iter().find(|(l, _)| *l == le).map_or(0.0, |x| x.1);
        let grew = n - was;
        out.push((le, (grew - below).max(0.0)));
        below = grew;
    }
    out
}

pub(super) fn snapshot(metrics: &MetricsHandle) -> anyhow::Result<Exposition> {
    llmd_telemetry::exposition::parse(&metrics.render()).context("reading the demo's own metrics")
}

/// Starts an EPP on loopback ports.
pub(super) async fn epp(
    config: &str,
    endpoints: Vec<EndpointSpec>,
    kv_events_bind: Option<String>,
    pool: &str,
    metrics: &MetricsHandle,
    stop: &CancellationToken,
) -> anyhow::Result<llmd_epp::Epp> {
    Ok(llmd_epp::start(
        llmd_epp::Options {
            config: llmd_epp::config::EndpointPickerConfig::parse(config)?,
            endpoints_file: None,
            endpoints: llmd_epp::endpoints::EndpointsFile { endpoints },
            kv_events_bind,
            scrape_interval: Duration::from_millis(500),
            max_body_bytes: 32 << 20,
            pool_name: pool.into(),
            kubernetes: None,
            metric_names: Default::default(),
            metrics_staleness: None,
            objectives: Vec::new(),
            subset_filter: true,
            limits: Default::default(),
            grace_period: std::time::Duration::from_secs(1),
            service_name: Some(llmd_telemetry::names::services::SCHEDULER.to_owned()),
            // TLS on ext_proc, as `llmd epp` serves it by default (self-signed, not verified).
            tls: Some(llmd_epp::TlsOptions::self_signed()),
        },
        llmd_epp::Listeners::loopback().await?,
        Some(metrics.clone()),
        stop.clone(),
    )
    .await?)
}

pub(super) async fn gateway(
    epp: &llmd_epp::Epp,
    stop: &CancellationToken,
) -> anyhow::Result<SocketAddr> {
    let gw_args = <llmd_gateway::Args as Parser>::try_parse_from([
        "llmd-gateway",
        "--epp",
        &format!("https://{}", epp.grpc),
        "--span-service-name",
        llmd_telemetry::names::services::GATEWAY,
    ])?;
    Ok(llmd_gateway::start(gw_args, bind().await?, stop.clone()).await?)
}
