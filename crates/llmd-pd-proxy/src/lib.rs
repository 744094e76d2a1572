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
//! | `tls` | `llmd_wire::tls` (shared with the EPP): the HTTPS listener with certificate reload, HTTPS to the engines |

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
pub use llmd_wire::tls;
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

/// Command-line flags of `llmd-pd-proxy` (also `llmd pd-proxy`). llm-d's sidecar flags are
/// accepted under their names (each `--help` line says which); `docs/coming-from-llm-d.md`
/// lists them, with what is refused.
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
    /// llm-d's logging flags (`--v`, `--zap-*`, `--tracing`).
    #[command(flatten)]
    pub logging: llmd_telemetry::llm_d_flags::LoggingFlags,
    /// Listen address.
    #[arg(long, default_value = "0.0.0.0")]
    pub host: String,
    /// Listen port (llm-d: --port; with --data-parallel-size N, ranks 1.. listen on port+rank).
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// Port of the proxy's own `/metrics` (the engine's `/metrics` passes through on --port);
    /// 0: none (llm-d: --metrics-port, whose default there is 0).
    #[arg(long, default_value_t = 9090)]
    pub metrics_port: u16,
    /// The local decode engine's URL (ours; or llm-d's --model-server-port).
    #[arg(long, env = "LLMD_PD_DECODER", default_value = "http://127.0.0.1:8200")]
    pub decoder: String,
    /// The local decode engine's port on 127.0.0.1 (llm-d: --model-server-port, and its
    /// deprecated --vllm-port; default 8200).
    #[arg(long, alias = "vllm-port", conflicts_with = "decoder")]
    pub model_server_port: Option<u16>,
    /// The engine's data-parallel size: ranks 1..N get their own proxy on --port + rank in
    /// front of the engine's port + rank (llm-d: --data-parallel-size).
    #[arg(long, default_value_t = 1)]
    pub data_parallel_size: u16,
    /// KV connector protocol (llm-d: --kv-connector; only nixlv2 is implemented).
    #[arg(long, alias = "kv-connector", value_enum, default_value = "nixlv2")]
    pub connector: Connector,
    /// Serve HTTPS: --cert-path's certificate, else a self-signed one (llm-d: --secure-proxy,
    /// on by default as there; --secure-proxy=false serves plain HTTP).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set, default_value_t = true)]
    pub secure_proxy: bool,
    /// Prefill targets that may be called: IPs, CIDRs or host names (repeat or comma-separate).
    /// Nothing is allowed unless listed (or --allow-any-prefill, or the pool's pods).
    #[arg(long, env = "LLMD_PD_ALLOW_PREFILL", value_delimiter = ',')]
    pub allow_prefill: Vec<String>,
    /// Allow any prefill target (development only: any client could make the proxy call any host).
    #[arg(long)]
    pub allow_any_prefill: bool,
    /// llm-d's SSRF protection: true allows only the pods of --inference-pool (as here by
    /// default); false allows any prefill target, as llm-d does without it (llm-d:
    /// --enable-ssrf-protection).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub enable_ssrf_protection: Option<bool>,
    /// Also allow the pods of this InferencePool (`[namespace/]name`; a bare name is in the
    /// proxy's own namespace): their IPs and names, followed by watch. Needs RBAC `list` and
    /// `watch` on inferencepools and pods (llm-d: --inference-pool).
    #[arg(long, env = "INFERENCE_POOL")]
    pub inference_pool: Option<String>,
    /// API group of the InferencePool (llm-d: --pool-group).
    #[arg(long, default_value = "inference.networking.k8s.io")]
    pub pool_group: String,
    /// How often the InferencePool and its pods are listed again from scratch, ms (changes
    /// arrive by watch in between).
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
    /// Retries of a prefill that answered 502/503/504 or could not be reached (llm-d:
    /// --prefill-max-retries).
    #[arg(long, default_value_t = 0)]
    pub prefill_max_retries: u32,
    /// Wait between prefill retries, ms.
    #[arg(long, default_value_t = 200, conflicts_with = "prefill_retry_backoff")]
    pub prefill_retry_backoff_ms: u64,
    /// The same as a duration (llm-d: --prefill-retry-backoff).
    #[arg(long, value_parser = llmd_telemetry::llm_d_flags::parse_duration)]
    pub prefill_retry_backoff: Option<Duration>,
    /// With --secure-proxy (the default), serve HTTPS with `tls.crt` and `tls.key` from this
    /// directory (a `kubernetes.io/tls` secret's mount), re-read when they change (llm-d:
    /// --cert-path).
    #[arg(long, env = "LLMD_PD_CERT_PATH")]
    pub cert_path: Option<std::path::PathBuf>,
    /// Upstream legs to dial over HTTPS: `prefiller`, `decoder` (repeat or comma-separate)
    /// (llm-d: --enable-tls).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub enable_tls: Vec<Stage>,
    /// Upstream legs whose certificate is not verified (development only) (llm-d:
    /// --tls-insecure-skip-verify).
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
    /// Idle connections kept per engine (llm-d: --max-idle-conns-per-host).
    #[arg(long, default_value_t = 1024)]
    pub max_idle_conns_per_host: usize,
    /// Chunked decode (llm-d: --decode-chunk-size; only 0, off, is supported).
    #[arg(long, default_value_t = 0)]
    pub decode_chunk_size: u32,
    /// Encode disaggregation's connector (llm-d: --ec-connector; not supported).
    #[arg(long)]
    pub ec_connector: Option<String>,
    /// Pick a random prefill pod of the header's list (llm-d: --enable-prefiller-sampling; not
    /// supported: the first is used).
    #[arg(long, env = "ENABLE_PREFILLER_SAMPLING", num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub enable_prefiller_sampling: Option<bool>,
    /// llm-d's OffloadingConnector P2P tier (llm-d: --enable-p2p-pull; not supported).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub enable_p2p_pull: Option<bool>,
    /// Accepted, used only by connectors not supported here (llm-d: --mooncake-bootstrap-port).
    #[arg(long, env = "MOONCAKE_BOOTSTRAP_PORT", hide = true)]
    pub mooncake_bootstrap_port: Option<u16>,
    /// Accepted, used only by connectors not supported here (llm-d: --p2p-connector-port).
    #[arg(long, env = "P2P_CONNECTOR_PORT", hide = true)]
    pub p2p_connector_port: Option<u16>,
    /// llm-d's YAML configuration of the same keys (llm-d: --configuration,
    /// --configuration-file; not supported: pass flags).
    #[arg(long, alias = "configuration-file")]
    pub configuration: Option<String>,
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
    /// The telemetry configuration, with llm-d's `--v`, `--zap-*` and `--tracing` applied.
    pub fn telemetry_config(&self) -> llmd_telemetry::config::TelemetryConfig {
        self.logging.apply(self.telemetry.to_config())
    }

    /// Refuses llm-d flags whose behaviour is not implemented.
    fn check(&self) -> Result<(), Error> {
        let refuse = |m: &str| Err(Error::Config(m.to_owned()));
        if self.decode_chunk_size != 0 {
            return refuse("--decode-chunk-size: chunked decode is not supported (0, off)");
        }
        if self.ec_connector.as_deref().is_some_and(|c| !c.is_empty()) {
            return refuse("--ec-connector: encode disaggregation (E/P/D) is not supported");
        }
        if self.enable_prefiller_sampling == Some(true) {
            return refuse(
                "--enable-prefiller-sampling: the first prefill pod of x-prefiller-host-port is used; sampling among several is not supported",
            );
        }
        if self.enable_p2p_pull == Some(true) {
            return refuse(
                "--enable-p2p-pull: the OffloadingConnector P2P tier is not supported (connector nixlv2 only)",
            );
        }
        if self.configuration.is_some() {
            return refuse("--configuration/--configuration-file: pass the settings as flags");
        }
        if self.data_parallel_size == 0 {
            return refuse("--data-parallel-size must be at least 1");
        }
        if self.enable_ssrf_protection == Some(true) && self.inference_pool.is_none() {
            return refuse(
                "--enable-ssrf-protection needs --inference-pool (or INFERENCE_POOL): the pool's pods are the allowed prefill targets",
            );
        }
        Ok(())
    }

    /// The decode engine's URL: `--decoder`, or `http://127.0.0.1:<--model-server-port>`.
    fn decoder_url(&self) -> String {
        match self.model_server_port {
            Some(p) => format!("http://127.0.0.1:{p}"),
            None => self.decoder.trim_end_matches('/').to_owned(),
        }
    }

    /// The proxy configuration these flags describe.
    pub fn config(&self) -> Result<Config, Error> {
        self.check()?;
        // llm-d without --enable-ssrf-protection calls any prefill target; here that is
        // opt-in: --enable-ssrf-protection=false asks for it explicitly.
        let any = self.allow_any_prefill || self.enable_ssrf_protection == Some(false);
        let mut allow =
            allowlist::Allowlist::new(&self.allow_prefill, any).map_err(Error::Config)?;
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
        let mut decoder = self.decoder_url();
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
            // llm-d: --secure-proxy serves --cert-path's certificate, else a self-signed one;
            // --secure-proxy=false serves plain HTTP whatever --cert-path says.
            server_tls: match (&self.cert_path, self.secure_proxy) {
                (Some(dir), true) => Some(tls::CertDir::load(dir)?),
                (None, true) => {
                    tracing::warn!(
                        "--secure-proxy without --cert-path: serving HTTPS with a self-signed certificate (as llm-d does); clients must skip verification. --secure-proxy=false serves plain HTTP"
                    );
                    Some(tls::CertDir::self_signed()?)
                }
                (Some(_), false) => {
                    tracing::warn!(
                        "--cert-path is ignored with --secure-proxy=false (as in llm-d): serving plain HTTP"
                    );
                    None
                }
                (None, false) => None,
            },
            connect_timeout: Duration::from_millis(self.connect_timeout_ms),
            max_idle_per_host: self.max_idle_conns_per_host,
            prefill_max_retries: self.prefill_max_retries,
            prefill_retry_backoff: self
                .prefill_retry_backoff
                .unwrap_or(Duration::from_millis(self.prefill_retry_backoff_ms)),
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
        let follow = pool::follow(source, config.allow.follow_pool(), shutdown.clone()).await;
        tasks.spawn("inference pool watch", async move {
            follow.await;
            Ok::<(), std::convert::Infallible>(())
        });
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

/// Runs the proxy until `shutdown` is cancelled (with `--data-parallel-size N`, one proxy per
/// rank: rank r listens on `--port + r` in front of the engine's port + r, as llm-d does).
pub async fn run(args: Args, shutdown: CancellationToken) -> Result<(), Error> {
    let metrics = llmd_telemetry::install_prometheus(
        &[
            llmd_telemetry::names::pd_proxy::ALL,
            llmd_telemetry::names::kubernetes::ALL,
        ],
        &[],
    )?;
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
    let mut ranks = Vec::new();
    for rank in 1..args.data_parallel_size {
        let mut c = config.clone();
        c.pool = match &config.pool {
            Some(_) => args.pool_source().await?,
            None => None,
        };
        c.decoder = offset_port(&config.decoder, rank)?;
        let port = args
            .port
            .checked_add(rank)
            .ok_or_else(|| Error::Config(format!("--port + rank {rank} is not a port")))?;
        ranks.push((c, bind(port).await?));
    }
    let listener = bind(args.port).await?;
    let metrics_listener = match args.metrics_port {
        0 => None,
        p => Some((metrics, bind(p).await?)),
    };
    let proxy = start(config, listener, metrics_listener, shutdown.clone()).await?;
    let mut others = Vec::new();
    for (c, l) in ranks {
        others.push(start(c, l, None, shutdown.clone()).await?);
    }
    let waits = others.into_iter().map(|p| p.wait());
    let (first, rest) = tokio::join!(proxy.wait(), futures::future::join_all(waits));
    first?;
    for r in rest {
        r?;
    }
    Ok(())
}

/// `url` with its port increased by `by` (a data-parallel rank's engine).
fn offset_port(url: &str, by: u16) -> Result<String, Error> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| Error::Config(format!("decoder URL {url:?}: {e}")))?;
    let (Some(scheme), Some(host)) = (uri.scheme_str(), uri.host()) else {
        return Err(Error::Config(format!(
            "decoder URL {url:?} has no scheme or host"
        )));
    };
    let base = uri
        .port_u16()
        .unwrap_or(if scheme == "https" { 443 } else { 80 });
    let port = base
        .checked_add(by)
        .ok_or_else(|| Error::Config(format!("decoder port {base} + {by} is not a port")))?;
    let host = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_owned()
    };
    Ok(format!("{scheme}://{host}:{port}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn llm_d_sidecar_flags() {
        let a = Args::parse_from([
            "p",
            "--port=8000",
            "--vllm-port=8300",
            "--kv-connector=nixlv2",
            "--secure-proxy=false",
            "--enable-ssrf-protection=false",
            "--prefill-retry-backoff=1s",
            "--data-parallel-size=2",
        ]);
        let c = a.config().unwrap();
        assert_eq!(c.decoder, "http://127.0.0.1:8300");
        assert!(c.server_tls.is_none());
        assert_eq!(c.prefill_retry_backoff, Duration::from_secs(1));
        assert_eq!(offset_port(&c.decoder, 1).unwrap(), "http://127.0.0.1:8301");
        // llm-d's default: HTTPS, self-signed without --cert-path.
        let c = Args::parse_from(["p", "--allow-any-prefill"])
            .config()
            .unwrap();
        assert!(c.server_tls.is_some());
        for (flag, word) in [
            ("--decode-chunk-size=64", "chunked"),
            ("--ec-connector=ec-nixl", "encode"),
            ("--enable-prefiller-sampling", "sampling"),
            ("--enable-ssrf-protection", "inference-pool"),
        ] {
            let e = Args::parse_from(["p", flag])
                .config()
                .unwrap_err()
                .to_string();
            assert!(e.contains(word), "{flag}: {e}");
        }
        assert!(Args::try_parse_from(["p", "--kv-connector=sglang"]).is_err());
        assert!(
            Args::try_parse_from(["p", "--model-server-port=1", "--decoder=http://x:1"]).is_err()
        );
    }
}
