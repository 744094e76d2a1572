//! `llmd-gateway`: a small HTTP reverse proxy that asks an ext_proc server (the EPP) about every
//! request the way Envoy does, for local runs and tests. It is a stand-in for Envoy, not a
//! production gateway.
//!
//! The modules follow one request's path:
//!
//! | module | phase |
//! |---|---|
//! | `config` | [`Args`] checked once at startup |
//! | `server` | the listener: one task per connection, header-read and idle timeouts |
//! | `request` | one request's phases in order |
//! | `exchange` | the ext_proc request phase (through [`llmd_wire::ext_proc::Client`]), fail-open |
//! | `forward` | the upstream request, falling back down the destination list |
//! | `relay` | the response headers through the EPP, the body relayed full duplex |
//! | `access` | the end of a request: access line, request counter, end of the span |
//! | `failure` | where a failure is counted, logged once and turned into a status |
//!
//! The crate README has the protocol, the concurrency model and the flags.

mod access;
mod config;
mod exchange;
mod failure;
mod forward;
mod relay;
mod request;
mod server;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::{Args, Error};

/// What every request shares: the checked configuration, the EPP client (one HTTP/2
/// connection) and the upstream connection pool.
struct Gateway {
    config: config::Config,
    epp: llmd_wire::ext_proc::Client,
    upstream: forward::Upstream,
}

/// Starts the gateway on `listener`; it serves until `shutdown` is cancelled. Metrics are
/// recorded into the process's `metrics` recorder, if one is installed.
pub async fn start(
    args: Args,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<SocketAddr, Error> {
    let addr = listener.local_addr().map_err(|source| Error::Listen {
        addr: "listener".into(),
        source,
    })?;
    let config = config::Config::from_args(&args)?;
    let epp_tls = match &args.epp_ca_file {
        Some(ca) => {
            Some(llmd_wire::tls::client_config(Some(ca), false).map_err(|e| Error::Epp(e.into()))?)
        }
        None => None,
    };
    let epp = llmd_wire::ext_proc::Client::connect_lazy_tls(&args.epp, config.epp_timeout, epp_tls)
        .map_err(Error::Epp)?;
    let upstream = forward::client(&config);
    let g = Arc::new(Gateway {
        config,
        epp,
        upstream,
    });
    tokio::spawn(server::serve(listener, g, shutdown));
    tracing::info!(%addr, "llmd-gateway serving");
    Ok(addr)
}

/// Connections waiting to be accepted (tokio's `bind` allows 1,024; a burst of thousands of
/// clients connecting at once overflows that).
const BACKLOG: u32 = 4096;

async fn listen(addr: &str) -> std::io::Result<TcpListener> {
    let mut last = None;
    for a in tokio::net::lookup_host(addr).await? {
        let socket = if a.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        match socket.bind(a).and_then(|()| socket.listen(BACKLOG)) {
            Ok(l) => return Ok(l),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other(format!("{addr} resolves to nothing"))))
}

/// Runs the gateway and its `/metrics` endpoint until `shutdown` is cancelled.
pub async fn run(args: Args, shutdown: CancellationToken) -> Result<(), Error> {
    let metrics = llmd_telemetry::install_prometheus(&[llmd_telemetry::names::gateway::ALL], &[])?;
    let addr = format!("{}:{}", args.host, args.port);
    let listener = listen(&addr)
        .await
        .map_err(|source| Error::Listen { addr, source })?;
    let metrics_addr = format!("{}:{}", args.host, args.metrics_port);
    let metrics_listener =
        TcpListener::bind(&metrics_addr)
            .await
            .map_err(|source| Error::Listen {
                addr: metrics_addr,
                source,
            })?;
    start(args, listener, shutdown.clone()).await?;
    let stop = shutdown.clone();
    tokio::spawn(async move {
        if let Err(error) = metrics
            .serve(metrics_listener, stop.cancelled_owned())
            .await
        {
            tracing::error!(%error, "metrics endpoint stopped");
        }
    });
    shutdown.cancelled().await;
    Ok(())
}
