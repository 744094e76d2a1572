//! Starting simulators from tests (feature `testing`): one way for every crate.
//!
//! ```no_run
//! # async fn demo() -> Result<(), llmd_sim::Error> {
//! use llmd_sim::testing::{SimBuilder, spawn};
//!
//! // A fast simulator (byte tokenizer, no simulated time) on 127.0.0.1, any free port.
//! let sim = spawn(SimBuilder::fast().flags(["--block-size", "16"])).await?;
//! let body = reqwest::get(format!("{}/v1/models", sim.url())).await.unwrap().text().await.unwrap();
//! assert!(body.contains("Llama"));
//! sim.stop().await; // or drop it: the server is told to stop either way
//! # Ok(())
//! # }
//! ```
//!
//! Other crates' tests reach this through `llmd_testkit::sim`, which adds the test-side
//! conveniences (panicking starts, a detached simulator).
//!
//! Metrics: the process-wide Prometheus recorder is the caller's to install (once per test
//! binary, with every catalog the test reads); pass its handle with [`SimBuilder::metrics`] to
//! serve `/metrics` on the simulator's port. Several simulators in one process keep their
//! series apart with distinct `--data-parallel-rank` values (the `engine` label).

use std::net::SocketAddr;

use llmd_telemetry::MetricsHandle;
use tokio::net::TcpListener;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::{EngineArgs, Error, Sim};

/// What to start: flags as `llmd-sim` takes them, where to listen, and metrics.
#[derive(Debug, Clone, Default)]
pub struct SimBuilder {
    flags: Vec<String>,
    metrics: Option<MetricsHandle>,
    host: Option<String>,
}

impl SimBuilder {
    /// No flags: the simulator's defaults (the real tokenizer, real-time steps).
    pub fn new() -> Self {
        Self::default()
    }

    /// `--dummy-tokenizer --time-scale 0`: no tokenizer files, answers as fast as it can.
    pub fn fast() -> Self {
        Self::new().flags(["--dummy-tokenizer", "--time-scale", "0"])
    }

    /// Adds one flag (or value).
    pub fn flag(mut self, flag: impl Into<String>) -> Self {
        self.flags.push(flag.into());
        self
    }

    /// Adds flags (and values), in order; later ones override earlier ones as clap does.
    pub fn flags<I, S>(mut self, flags: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.flags.extend(flags.into_iter().map(Into::into));
        self
    }

    /// Serves `/metrics` from this recorder (`None`: no `/metrics`, the default).
    pub fn metrics(mut self, handle: impl Into<Option<MetricsHandle>>) -> Self {
        self.metrics = handle.into();
        self
    }

    /// Listen address (default `127.0.0.1`).
    pub fn host(mut self, host: impl Into<String>) -> Self {
        self.host = Some(host.into());
        self
    }

    /// The parsed engine flags.
    pub fn engine_args(&self) -> Result<EngineArgs, Error> {
        EngineArgs::from_flags(self.flags.iter().cloned()).map_err(|e| Error::Flags(e.to_string()))
    }
}

/// A running simulator; dropping it stops the server (unless [`SimHandle::into_parts`] or
/// [`SimHandle::detach`] took it apart).
#[derive(Debug)]
pub struct SimHandle {
    sim: Sim,
    stop: DropGuard,
}

impl SimHandle {
    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.sim.addr
    }

    /// `http://<addr>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.sim.addr)
    }

    /// `<ip>:<port>`, as the EPP and the proxy name pods.
    pub fn host_port(&self) -> String {
        self.sim.addr.to_string()
    }

    /// The KV-event PUB endpoint, when it binds one.
    pub fn kv_events_endpoint(&self) -> Option<&str> {
        self.sim.kv_events_bound.as_deref()
    }

    /// The replay ROUTER endpoint, when configured.
    pub fn kv_replay_endpoint(&self) -> Option<&str> {
        self.sim.kv_replay_bound.as_deref()
    }

    /// The running simulator (its state, for assertions on leases or the engine).
    pub fn sim(&self) -> &Sim {
        &self.sim
    }

    /// A token that stops it when cancelled.
    pub fn stop_token(&self) -> CancellationToken {
        self.stop.token().clone()
    }

    /// Stops the server and waits until it has.
    pub async fn stop(self) {
        let mut sim = self.sim;
        self.stop.disarm().cancel();
        let _ = (&mut sim.served).await;
    }

    /// The simulator and its stop token, no longer stopped on drop: it serves until the token
    /// is cancelled (dropping the token does not cancel it).
    pub fn into_parts(self) -> (Sim, CancellationToken) {
        (self.sim, self.stop.disarm())
    }

    /// Its address; the simulator serves until the runtime (the test) ends.
    pub fn detach(self) -> SocketAddr {
        self.into_parts().0.addr
    }
}

/// Starts a simulator on `127.0.0.1:0` (or the builder's host) with the builder's flags.
pub async fn spawn(builder: SimBuilder) -> Result<SimHandle, Error> {
    let host = builder.host.as_deref().unwrap_or("127.0.0.1");
    let addr = format!("{host}:0");
    let listener = TcpListener::bind(&addr)
        .await
        .map_err(|source| Error::Listen { addr, source })?;
    spawn_on(builder, listener).await
}

/// Starts a simulator on a listener the caller bound (a chosen port); the builder's host is
/// not used.
pub async fn spawn_on(builder: SimBuilder, listener: TcpListener) -> Result<SimHandle, Error> {
    let args = builder.engine_args()?;
    let stop = CancellationToken::new();
    let sim = crate::start(args, listener, builder.metrics, stop.clone()).await?;
    Ok(SimHandle {
        sim,
        stop: stop.drop_guard(),
    })
}
