//! `llmd-pd-proxy`: the prefill/decode routing sidecar that runs beside each decode engine.
//!
//! It listens on 8000 in front of the local engine (default `http://127.0.0.1:8200`). A
//! completions or chat request carrying `x-prefiller-host-port` runs llm-d's nixlv2 flow:
//! the prefill leg on the named prefill pod (which must be in the allowlist), then the decode
//! leg on the local engine with the prefill's `kv_transfer_params`, the answer relayed event by
//! event with `cached_tokens` rewritten to the prefill's. Everything else passes through.
//! It measures what no engine can: true TTFT (the first decoded bytes as the client gets them),
//! coordinator overhead (its own time: total minus the time spent waiting on the two legs),
//! prefill and decode durations, as the `llm_d_inference_scheduler_pd_proxy_*` histograms, the
//! `llm_d.pd_proxy.*` spans, and a `server-timing` response header.
//!
//! The request path, in the order a P/D request takes it:
//!
//! | module | what it does |
//! |---|---|
//! | `server` | the listener: HTTP/1.1 and h2, TLS, header-read timeout, drain on shutdown |
//! | `proxy` | the routes and the request as phases (check target, parse, prefill, decode, first token, relay); pass-through |
//! | `allowlist` | which prefill targets may be called (IPs, CIDRs, host names, pool pods) |
//! | `prefill` | the prefill leg (nixlv2 body, retries, timeout) |
//! | `decode` | the decode leg, its first token, and the three relays (stream, assembled JSON, JSON) |
//! | `sse` | event-stream lines: first-token detection, `cached_tokens` rewrite |
//! | `assemble` | a non-streamed client's JSON answer from the decode stream |
//! | `context` | the per-request context: ids, span, time points, the figures and their metrics |
//! | `error` | every failure, its status, stage and outcome, and the one place it becomes an answer |
//! | `observed` | pass-through answers counted with their true outcome |
//! | `upstream` | the two upstream clients and the headers forwarded and relayed |
//! | `nixl` | the nixlv2 body transforms and the `cached_tokens` rewrite |
//! | `pool` | the InferencePool's pods into the allowlist (`--inference-pool`) |
//! | `tls` | rustls: the HTTPS listener with certificate reload, HTTPS to the engines |

pub mod allowlist;
pub mod assemble;
pub mod context;
pub mod decode;
pub mod error;
pub mod nixl;
pub mod observed;
pub mod pool;
pub mod prefill;
pub mod proxy;
pub mod server;
pub mod sse;
pub mod tls;
pub mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use llmd_telemetry::{MetricsHandle, TelemetryArgs};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use proxy::Config;

/// KV connectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Connector {
    /// vLLM's NixlConnector, llm-d's protocol v2 (the default).
    Nixlv2,
}

impl Connector {
    /// The metric label.
    pub fn name(self) -> &'static str {
        match self {
            Connector::Nixlv2 => "nixlv2",
        }
    }
}

/// Command-line flags of `llmd-pd-proxy` (also `llmd pd-proxy`).
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "llmd-pd-proxy",
    version,
    about = "P/D routing sidecar: prefill on the EPP's chosen pod, decode locally, true TTFT measured"
)]
pub struct Args {
    /// Logging and tracing.
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
    /// Listen address.
    #[arg(long, default_value = "0.0.0.0")]
    pub host: String,
    /// Listen port.
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// Port of the proxy's own `/metrics` (the engine's `/metrics` passes through on --port).
    #[arg(long, default_value_t = 9090)]
    pub metrics_port: u16,
    /// The local decode engine.
    #[arg(long, env = "LLMD_PD_DECODER", default_value = "http://127.0.0.1:8200")]
    pub decoder: String,
    /// KV connector protocol.
    #[arg(long, value_enum, default_value = "nixlv2")]
    pub connector: Connector,
    /// Prefill targets that may be called: IPs, CIDRs or host names (repeat or comma-separate).
    /// Nothing is allowed unless listed (or --allow-any-prefill).
    #[arg(long, env = "LLMD_PD_ALLOW_PREFILL", value_delimiter = ',')]
    pub allow_prefill: Vec<String>,
    /// Allow any prefill target (development only: any client could make the proxy call any host).
    #[arg(long)]
    pub allow_any_prefill: bool,
    /// Also allow the pods of this InferencePool (`[namespace/]name`; a bare name is in the
    /// proxy's own namespace): their IPs and names, re-listed every --pool-resync-ms. Needs
    /// RBAC `get` on inferencepools and `list` on pods.
    #[arg(long, env = "INFERENCE_POOL")]
    pub inference_pool: Option<String>,
    /// API group of the InferencePool.
    #[arg(long, default_value = "inference.networking.k8s.io")]
    pub pool_group: String,
    /// How often the InferencePool's pods are listed, ms.
    #[arg(long, default_value_t = 5_000)]
    pub pool_resync_ms: u64,
    /// Largest request body, bytes (larger: 413).
    #[arg(long, default_value_t = 32 << 20)]
    pub max_body_bytes: usize,
    /// Timeout of the whole prefill leg, ms.
    #[arg(long, default_value_t = 120_000)]
    pub prefill_timeout_ms: u64,
    /// Timeout until the decode engine answers with headers, ms.
    #[arg(long, default_value_t = 120_000)]
    pub decode_timeout_ms: u64,
    /// Longest silence of a streaming decode answer before it is cut, ms (0: no limit).
    #[arg(long, default_value_t = 120_000)]
    pub decode_idle_timeout_ms: u64,
    /// Speak HTTP/2 without TLS (h2c, prior knowledge) to the decode engine.
    #[arg(long)]
    pub decoder_h2c: bool,
    /// TCP connect timeout to either engine, ms.
    #[arg(long, default_value_t = 5_000)]
    pub connect_timeout_ms: u64,
    /// Retries of a prefill that answered 502/503/504 or could not be reached.
    #[arg(long, default_value_t = 0)]
    pub prefill_max_retries: u32,
    /// Wait between prefill retries, ms.
    #[arg(long, default_value_t = 200)]
    pub prefill_retry_backoff_ms: u64,
    /// Serve HTTPS with `tls.crt` and `tls.key` from this directory (a `kubernetes.io/tls`
    /// secret's mount), re-read when they change. Without it the listener is plain HTTP.
    #[arg(long, env = "LLMD_PD_CERT_PATH")]
    pub cert_path: Option<std::path::PathBuf>,
    /// Upstream legs to dial over HTTPS: `prefiller`, `decoder` (repeat or comma-separate).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub enable_tls: Vec<Stage>,
    /// Upstream legs whose certificate is not verified (development only).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub tls_insecure_skip_verify: Vec<Stage>,
    /// PEM file of the CA(s) that sign the engines' certificates; only these are trusted
    /// (default: the system roots).
    #[arg(long)]
    pub tls_ca_file: Option<std::path::PathBuf>,
    /// A client connection must send each request's head within this, ms (closes slow and
    /// idle keep-alive connections).
    #[arg(long, default_value_t = 10_000)]
    pub header_read_timeout_ms: u64,
}

/// An upstream leg, for the TLS flags (llm-d's stage names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Stage {
    /// Calls to prefill pods.
    Prefiller,
    /// Calls to the local decode engine.
    Decoder,
}

/// Errors of the P/D routing proxy.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Invalid flags.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Listening.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// Address.
        addr: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Telemetry.
    #[error(transparent)]
    Telemetry(#[from] llmd_telemetry::TelemetryError),
    /// TLS material.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// No Kubernetes client for --inference-pool.
    #[error("--inference-pool needs the Kubernetes API: {0}")]
    Kubernetes(#[from] kube::Error),
    /// A server task stopped.
    #[error(transparent)]
    Stopped(#[from] llmd_telemetry::lifecycle::TaskFailed),
}

impl Args {
    /// The proxy configuration these flags describe.
    pub fn config(&self) -> Result<Config, Error> {
        let mut allow = allowlist::Allowlist::new(&self.allow_prefill, self.allow_any_prefill)
            .map_err(Error::Config)?;
        if let Some(pool) = &self.inference_pool {
            let (_, name) = self.pool_ref(pool)?;
            tracing::info!(
                pool = name,
                "prefill targets include the InferencePool's pods"
            );
            allow.follow_pool();
        }
        if allow.is_empty() {
            tracing::warn!(
                "no prefill target is allowed (--allow-prefill): P/D requests will get 403"
            );
        }
        let mut decoder = self.decoder.trim_end_matches('/').to_owned();
        if !decoder.starts_with("http://") && !decoder.starts_with("https://") {
            return Err(Error::Config(format!(
                "--decoder {decoder:?} must be an http(s) URL"
            )));
        }
        if self.enable_tls.contains(&Stage::Decoder)
            && let Some(rest) = decoder.strip_prefix("http://")
        {
            decoder = format!("https://{rest}");
        }
        if self.decoder_h2c && decoder.starts_with("https://") {
            return Err(Error::Config(
                "--decoder-h2c is HTTP/2 without TLS; over TLS, h2 is negotiated by ALPN".into(),
            ));
        }
        let leg_tls = |stage: Stage, on: bool| -> Result<Option<rustls::ClientConfig>, Error> {
            if !on {
                return Ok(None);
            }
            let insecure = self.tls_insecure_skip_verify.contains(&stage);
            if insecure {
                tracing::warn!(?stage, "TLS certificate verification is off for this leg");
            }
            Ok(Some(tls::client_config(
                self.tls_ca_file.as_deref(),
                insecure,
            )?))
        };
        let prefill_tls = leg_tls(
            Stage::Prefiller,
            self.enable_tls.contains(&Stage::Prefiller),
        )?;
        let decoder_tls = leg_tls(Stage::Decoder, decoder.starts_with("https://"))?;
        Ok(Config {
            decoder,
            connector: self.connector,
            allow,
            max_body_bytes: self.max_body_bytes,
            prefill_timeout: Duration::from_millis(self.prefill_timeout_ms),
            decode_timeout: Duration::from_millis(self.decode_timeout_ms),
            decode_idle_timeout: Duration::from_millis(self.decode_idle_timeout_ms),
            decoder_h2c: self.decoder_h2c,
            prefill_tls,
            decoder_tls,
            server_tls: self
                .cert_path
                .as_deref()
                .map(tls::CertDir::load)
                .transpose()?,
            connect_timeout: Duration::from_millis(self.connect_timeout_ms),
            prefill_max_retries: self.prefill_max_retries,
            prefill_retry_backoff: Duration::from_millis(self.prefill_retry_backoff_ms),
            pool: None,
            header_read_timeout: Duration::from_millis(self.header_read_timeout_ms.max(1)),
            service_name: None,
        })
    }

    /// `--inference-pool` split into (namespace if given, name).
    fn pool_ref<'a>(&self, pool: &'a str) -> Result<(Option<&'a str>, &'a str), Error> {
        let (ns, name) = match pool.split_once('/') {
            Some((ns, name)) => (Some(ns), name),
            None => (None, pool),
        };
        let valid = |s: &str| {
            !s.is_empty()
                && s.len() <= 253
                && s.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        };
        if !valid(name) || ns.is_some_and(|n| !valid(n)) {
            return Err(Error::Config(format!(
                "--inference-pool {pool:?} is not [namespace/]name"
            )));
        }
        Ok((ns, name))
    }

    /// The InferencePool to follow, with a client from the environment (in-cluster service
    /// account or kubeconfig).
    pub async fn pool_source(&self) -> Result<Option<pool::PoolSource>, Error> {
        let Some(pool) = &self.inference_pool else {
            return Ok(None);
        };
        let (ns, name) = self.pool_ref(pool)?;
        let client = kube::Client::try_default().await?;
        Ok(Some(pool::PoolSource {
            namespace: ns.unwrap_or(client.default_namespace()).to_owned(),
            name: name.to_owned(),
            group: self.pool_group.clone(),
            resync: Duration::from_millis(self.pool_resync_ms.max(100)),
            client,
        }))
    }
}

/// A running proxy: its address and the tasks that serve it.
#[derive(Debug)]
pub struct Proxy {
    /// The listener's address.
    pub addr: SocketAddr,
    /// The listener and metrics tasks; [`Proxy::wait`] ends when one fails.
    pub tasks: llmd_telemetry::lifecycle::Tasks,
}

impl Proxy {
    /// Waits until the proxy stops: `Ok` after a shutdown, `Err` when a server task failed.
    pub async fn wait(self) -> Result<(), llmd_telemetry::lifecycle::TaskFailed> {
        self.tasks.wait().await
    }
}

/// Starts the proxy on `listener`, and its `/metrics` on the second listener when given.
pub async fn start(
    config: Config,
    listener: TcpListener,
    metrics: Option<(MetricsHandle, TcpListener)>,
    shutdown: CancellationToken,
) -> Result<Proxy, Error> {
    let addr = listener.local_addr().map_err(|source| Error::Listen {
        addr: "listener".into(),
        source,
    })?;
    let mut tasks = llmd_telemetry::lifecycle::Tasks::new(shutdown.clone());
    if let Some((handle, ml)) = metrics {
        let stop = shutdown.clone();
        tasks.spawn("metrics server", async move {
            axum::serve(ml, handle.router())
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
        });
    }
    // Error series at zero from the start: dashboards read 0, not "no data", when all is well.
    proxy::register_zero();
    let server_tls = config.server_tls.clone();
    let header_read_timeout = config.header_read_timeout;
    let mut config = config;
    if let Some(source) = config.pool.take() {
        // The first listing before serving, so a ready proxy knows its pool.
        pool::follow(source, config.allow.follow_pool(), shutdown.clone()).await;
    }
    let app = proxy::router(config)?;
    let acceptor = match server_tls {
        Some(certs) => {
            certs.watch(CERT_POLL, shutdown.clone());
            Some(tokio_rustls::TlsAcceptor::from(Arc::new(
                certs.server_config()?,
            )))
        }
        None => None,
    };
    let https = acceptor.is_some();
    tasks.spawn(
        "proxy server",
        server::serve(listener, acceptor, app, header_read_timeout, shutdown),
    );
    tracing::info!(%addr, https, "llmd-pd-proxy serving");
    Ok(Proxy { addr, tasks })
}

/// How often `--cert-path` is checked for a rotated certificate.
const CERT_POLL: Duration = Duration::from_secs(10);

/// Runs the proxy until `shutdown` is cancelled.
pub async fn run(args: Args, shutdown: CancellationToken) -> Result<(), Error> {
    let metrics = llmd_telemetry::install_prometheus(&[llmd_telemetry::names::pd_proxy::ALL], &[])?;
    let mut config = args.config()?;
    config.pool = args.pool_source().await?;
    let bind = |port: u16| {
        let addr = format!("{}:{port}", args.host);
        async move {
            TcpListener::bind(&addr)
                .await
                .map_err(|source| Error::Listen { addr, source })
        }
    };
    let listener = bind(args.port).await?;
    let metrics_listener = bind(args.metrics_port).await?;
    let proxy = start(
        config,
        listener,
        Some((metrics, metrics_listener)),
        shutdown,
    )
    .await?;
    proxy.wait().await?;
    Ok(())
}
