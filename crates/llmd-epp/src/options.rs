//! What [`crate::start`] runs: the [`Options`], the [`Listeners`] it serves on, TLS on the
//! ext_proc port and the Kubernetes source of endpoints.

use std::path::PathBuf;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::config::{self, EndpointPickerConfig};
use crate::discovery;
use crate::endpoints::{self, EndpointsFile};
use crate::scheduling::scheduler::Limits;

/// Listeners for [`crate::start`].
#[derive(Debug)]
pub struct Listeners {
    /// ext_proc (health is served here too).
    pub grpc: TcpListener,
    /// gRPC health only.
    pub health: Option<TcpListener>,
    /// Metrics and /debug/route.
    pub metrics: TcpListener,
}

impl Listeners {
    /// ext_proc and metrics on `127.0.0.1`, any free port each, no separate health port (tests,
    /// benchmarks, `llmd demo`).
    pub async fn loopback() -> std::io::Result<Self> {
        Ok(Self {
            grpc: TcpListener::bind("127.0.0.1:0").await?,
            health: None,
            metrics: TcpListener::bind("127.0.0.1:0").await?,
        })
    }
}

/// What [`crate::start`] runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// Scheduler configuration.
    pub config: EndpointPickerConfig,
    /// Endpoints file to watch for changes, if any.
    pub endpoints_file: Option<PathBuf>,
    /// The initial endpoints.
    pub endpoints: EndpointsFile,
    /// ZMQ address to bind for KV events (pods connect to it), if any.
    pub kv_events_bind: Option<String>,
    /// How often to scrape the pods' `/metrics`.
    pub scrape_interval: Duration,
    /// The model-server metrics the scraper reads.
    pub metric_names: endpoints::MetricNames,
    /// Scraped load older than this is not trusted by load scorers that do not say
    /// (`--metrics-staleness-threshold`; `None`: the scorers' own default).
    pub metrics_staleness: Option<Duration>,
    /// InferenceObjectives beside the config's (`--inference-objectives-file`).
    pub objectives: Vec<config::ObjectiveSpec>,
    /// Honour the data plane's subset hint (`--disable-endpoint-subset-filter` turns it off).
    pub subset_filter: bool,
    /// Largest request body.
    pub max_body_bytes: usize,
    /// What a request may ask of the scheduler.
    pub limits: Limits,
    /// After shutdown, how long requests in flight may finish.
    pub grace_period: Duration,
    /// The pool's name (label of the `inference_pool_*` gauges).
    pub pool_name: String,
    /// Follow a Kubernetes `InferencePool` (its ready pods replace the endpoints).
    pub kubernetes: Option<KubeSource>,
    /// The EPP's `service.name` on its spans when it shares a process with other components;
    /// `None`: the process's own.
    pub service_name: Option<String>,
    /// Serve the ext_proc port over TLS (`llmd epp --secure-serving`); `None`: plaintext.
    pub tls: Option<TlsOptions>,
}

/// TLS on the ext_proc port (h2 by ALPN; the separate health port stays plaintext: kubelet gRPC probes speak no TLS).
#[derive(Debug, Clone)]
pub struct TlsOptions {
    /// A directory holding `tls.crt` and `tls.key` (a `kubernetes.io/tls` secret's mount);
    /// `None`: a self-signed certificate made at start (clients must skip verification).
    pub cert_path: Option<PathBuf>,
    /// How often the files are checked for a rotated pair (`None`: never re-read).
    pub reload_interval: Option<Duration>,
}

impl TlsOptions {
    /// A self-signed certificate.
    pub fn self_signed() -> Self {
        Self {
            cert_path: None,
            reload_interval: None,
        }
    }
}

/// How often `--cert-path` is checked for a rotated certificate.
pub const CERT_RELOAD_INTERVAL: Duration = Duration::from_secs(10);

impl Options {
    /// Options for `config` over a fixed set of endpoints, with the defaults of `llmd epp`.
    pub fn new(config: EndpointPickerConfig, endpoints: EndpointsFile) -> Self {
        Self {
            config,
            endpoints_file: None,
            endpoints,
            kv_events_bind: None,
            scrape_interval: Duration::from_millis(1000),
            metric_names: endpoints::MetricNames::default(),
            metrics_staleness: None,
            objectives: Vec::new(),
            subset_filter: true,
            max_body_bytes: 32 << 20,
            limits: Limits::default(),
            grace_period: Duration::from_secs(30),
            pool_name: "static".into(),
            kubernetes: None,
            service_name: None,
            tls: None,
        }
    }
}

/// A Kubernetes client and the pool to follow.
#[derive(Clone)]
pub struct KubeSource {
    /// The API client.
    pub client: kube::Client,
    /// The pool.
    pub pool: discovery::PoolRef,
}

impl std::fmt::Debug for KubeSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeSource")
            .field("pool", &self.pool)
            .finish_non_exhaustive()
    }
}
