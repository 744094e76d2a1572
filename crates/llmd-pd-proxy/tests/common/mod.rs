//! A prefill simulator, a decode simulator and the proxy in front of the decode one, all
//! in-process on 127.0.0.1 (the simulators through `llmd_testkit::sim`).
#![allow(dead_code, clippy::unwrap_used)]

use std::net::SocketAddr;

use clap::Parser;
use llmd_telemetry::MetricsHandle;
use llmd_testkit::sim::SimBuilder;
use tokio_util::sync::CancellationToken;

/// Starts a simulator with these flags; it serves until the test ends.
pub async fn sim(flags: &[&str], metrics: Option<MetricsHandle>) -> SocketAddr {
    let builder = SimBuilder::new().flags(flags.iter().copied());
    llmd_testkit::sim::start(builder.metrics(metrics))
        .await
        .detach()
}

/// `--secure-proxy=false` (plain HTTP, as llm-d's deployments run the sidecar) unless the flags
/// ask for TLS.
pub fn plain_unless_tls<'a>(flags: &[&'a str]) -> Vec<&'a str> {
    let mut v = flags.to_vec();
    if !flags
        .iter()
        .any(|f| f.starts_with("--cert-path") || f.starts_with("--secure-proxy"))
    {
        v.push("--secure-proxy=false");
    }
    v
}

/// Starts the proxy with these flags.
pub async fn proxy(flags: &[&str]) -> SocketAddr {
    let args = llmd_pd_proxy::Args::parse_from(
        std::iter::once("llmd-pd-proxy").chain(plain_unless_tls(flags)),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    llmd_pd_proxy::start(
        args.config().unwrap(),
        listener,
        None,
        CancellationToken::new(),
    )
    .await
    .unwrap()
    .addr
}

/// The three servers of a P/D setup.
pub struct Pair {
    pub prefill: SocketAddr,
    pub decode: SocketAddr,
    pub proxy: SocketAddr,
}

/// Both simulators get `sim_flags` (and `--role`), the prefill one also `prefill_extra`; the
/// proxy fronts the decode one, allows 127.0.0.1 as prefill target, plus `proxy_extra`.
pub async fn pair(
    sim_flags: &[&str],
    prefill_extra: &[&str],
    proxy_extra: &[&str],
    metrics: Option<MetricsHandle>,
) -> Pair {
    let prefill = sim(
        &[sim_flags, &["--role", "prefill"], prefill_extra].concat(),
        metrics.clone(),
    )
    .await;
    let decode = sim(&[sim_flags, &["--role", "decode"]].concat(), metrics).await;
    let decoder = format!("http://{decode}");
    let proxy = proxy(
        &[
            &[
                "--decoder",
                decoder.as_str(),
                "--allow-prefill",
                "127.0.0.1",
            ][..],
            proxy_extra,
        ]
        .concat(),
    )
    .await;
    Pair {
        prefill,
        decode,
        proxy,
    }
}
