//! The pool's endpoints and their live state.
//!
//! Endpoints come from a static file (YAML or JSON, reloaded when it changes) for local runs;
//! Kubernetes discovery (InferencePool selector → ready pods) is the other source. Each
//! endpoint's `/metrics` is scraped on an interval for vLLM's queue and KV-cache gauges; data
//! older than the staleness limit is marked stale and not trusted by the load scorers.
//!
//! ```yaml
//! endpoints:
//!   - address: 10.0.0.7          # IP or host name
//!     port: 8000                 # serving port (the pod id is "address:port")
//!     role: decode               # prefill | decode | both (default both)
//!     model: meta-llama/Llama-3.1-8B-Instruct   # optional: models this pod serves
//!     kvEvents: tcp://10.0.0.7:5557             # optional: ZMQ PUB to dial for KV events
//!     kvEventsReplay: tcp://10.0.0.7:5558       # optional
//!     metricsPort: 8000          # optional (default: port)
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use parking_lot::RwLock;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::inflight::{InFlight, PodLoad};

/// A pod's P/D role (`llm-d.ai/role`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Prefill pod.
    Prefill,
    /// Decode pod.
    Decode,
    /// Both (the default).
    #[default]
    Both,
}

/// One endpoint as configured.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EndpointSpec {
    /// IP or host name.
    pub address: String,
    /// Serving port.
    pub port: u16,
    /// P/D role.
    #[serde(default)]
    pub role: Role,
    /// Models served (empty: any).
    #[serde(default, alias = "models", deserialize_with = "one_or_many")]
    pub model: Vec<String>,
    /// ZMQ endpoint to dial for KV events.
    #[serde(default)]
    pub kv_events: Option<String>,
    /// Replay endpoint for KV events.
    #[serde(default)]
    pub kv_events_replay: Option<String>,
    /// Port of `/metrics` (default: the serving port).
    #[serde(default)]
    pub metrics_port: Option<u16>,
}

fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Option::<OneOrMany>::deserialize(d)? {
        None => Vec::new(),
        Some(OneOrMany::One(s)) => vec![s],
        Some(OneOrMany::Many(v)) => v,
    })
}

impl EndpointSpec {
    /// `address:port` (IPv6 in brackets): the pod's identity and the destination value.
    pub fn host_port(&self) -> String {
        if self.address.contains(':') && !self.address.starts_with('[') {
            format!("[{}]:{}", self.address, self.port)
        } else {
            format!("{}:{}", self.address, self.port)
        }
    }

    /// True when the endpoint serves `model` (or serves any model).
    pub fn serves(&self, model: &str) -> bool {
        self.model.is_empty() || self.model.iter().any(|m| m == model)
    }
}

/// The file format.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointsFile {
    /// The endpoints.
    pub endpoints: Vec<EndpointSpec>,
}

/// Errors reading the endpoints file.
#[derive(Debug, thiserror::Error)]
pub enum EndpointsError {
    /// Reading.
    #[error("cannot read {path}: {source}")]
    Io {
        /// File.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Parsing.
    #[error("invalid endpoints file {path}: {reason}")]
    Invalid {
        /// File.
        path: String,
        /// Why.
        reason: String,
    },
}

impl EndpointsFile {
    /// Reads and validates a file.
    pub fn load(path: &Path) -> Result<Self, EndpointsError> {
        let text = std::fs::read_to_string(path).map_err(|source| EndpointsError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text).map_err(|reason| EndpointsError::Invalid {
            path: path.display().to_string(),
            reason,
        })
    }

    /// Parses YAML (a superset of JSON).
    pub fn parse(text: &str) -> Result<Self, String> {
        let file: Self = serde_yaml_ng::from_str(text).map_err(|e| e.to_string())?;
        let mut seen = std::collections::HashSet::new();
        for e in &file.endpoints {
            if e.address.is_empty() || e.port == 0 {
                return Err(format!(
                    "endpoint {:?} needs an address and a non-zero port",
                    e.address
                ));
            }
            if !seen.insert(e.host_port()) {
                return Err(format!("endpoint {} is listed twice", e.host_port()));
            }
        }
        Ok(file)
    }
}

/// What the last scrape of an endpoint said.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Load {
    /// `vllm:num_requests_waiting`.
    pub waiting: f64,
    /// `vllm:num_requests_running`.
    pub running: f64,
    /// `vllm:kv_cache_usage_perc` (0..1).
    pub kv_usage: f64,
    /// `block_size` of `vllm:cache_config_info`, when exposed.
    pub cache_block_size: Option<u32>,
    /// `num_gpu_blocks` of `vllm:cache_config_info`, when exposed.
    pub num_gpu_blocks: Option<u64>,
}

/// One model-server metric the scraper reads: a name and, optionally, labels a sample must
/// carry (llm-d's metric flags take `name` or `name{label="value",...}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricSpec {
    /// The metric name.
    pub name: String,
    /// Required labels.
    pub labels: Vec<(String, String)>,
}

impl MetricSpec {
    /// Parses `name` or `name{label="value",...}`.
    pub fn parse(spec: &str) -> Result<Self, String> {
        let spec = spec.trim();
        let (name, rest) = match spec.split_once('{') {
            None => (spec, None),
            Some((n, r)) => (n, Some(r)),
        };
        let valid = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':');
        if !valid {
            return Err(format!("{spec:?} is not a metric name"));
        }
        let mut labels = Vec::new();
        if let Some(rest) = rest {
            let body = rest
                .strip_suffix('}')
                .ok_or_else(|| format!("{spec:?}: missing closing brace"))?;
            for pair in body.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                let (k, v) = pair
                    .split_once('=')
                    .ok_or_else(|| format!("{spec:?}: {pair:?} is not label=\"value\""))?;
                labels.push((k.trim().to_owned(), v.trim().trim_matches('"').to_owned()));
            }
        }
        Ok(Self {
            name: name.to_owned(),
            labels,
        })
    }

    pub(crate) fn matches(&self, s: &llmd_telemetry::exposition::Sample) -> bool {
        s.name == self.name && self.labels.iter().all(|(k, v)| s.label(k) == Some(v))
    }
}

/// The model-server metrics the scraper reads (llm-d's `--total-queued-requests-metric`,
/// `--total-running-requests-metric`, `--kv-cache-usage-percentage-metric`; vLLM's names by
/// default).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricNames {
    /// Waiting requests.
    pub waiting: MetricSpec,
    /// Running requests.
    pub running: MetricSpec,
    /// KV-cache usage (0..1).
    pub kv_usage: MetricSpec,
    /// The cache configuration (`block_size`, `num_gpu_blocks` labels).
    pub cache_info: MetricSpec,
    /// LoRA adapters (`running_lora_adapters`, `waiting_lora_adapters`, `max_lora` labels;
    /// llm-d's `--lora-info-metric`).
    pub lora_info: MetricSpec,
}

impl Default for MetricNames {
    fn default() -> Self {
        let m = |n: &str| MetricSpec {
            name: n.to_owned(),
            labels: Vec::new(),
        };
        Self {
            waiting: m("vllm:num_requests_waiting"),
            running: m("vllm:num_requests_running"),
            kv_usage: m("vllm:kv_cache_usage_perc"),
            cache_info: m("vllm:cache_config_info"),
            lora_info: m("vllm:lora_requests_info"),
        }
    }
}

/// An endpoint with its live state. Cheap to clone (its spec and id are shared).
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// As configured.
    pub spec: Arc<EndpointSpec>,
    /// `address:port`.
    pub id: Arc<str>,
    /// Last good scrape and when it happened.
    pub load: Option<(Load, Instant)>,
    /// Not routable until then: its metrics scrape failed, or the data plane could not reach
    /// it.
    pub unhealthy_until: Option<Instant>,
    /// What this EPP has in flight on it now (filled when the scheduler takes its
    /// candidates; [`crate::inflight`]).
    pub inflight: PodLoad,
    /// What this EPP had in flight on it when the last scrape landed: the scrape counts
    /// those, so only the change since is added to it ([`Endpoint::current_load`]).
    pub inflight_at_scrape: PodLoad,
    /// The models the last good scrape showed (base model, LoRA adapters); as old as `load`.
    pub models: Option<Arc<crate::lora::ServedModels>>,
}

impl Endpoint {
    /// An endpoint with no live state yet.
    pub fn new(spec: EndpointSpec) -> Self {
        Self {
            id: spec.host_port().into(),
            spec: Arc::new(spec),
            load: None,
            unhealthy_until: None,
            inflight: PodLoad::default(),
            inflight_at_scrape: PodLoad::default(),
            models: None,
        }
    }

    /// The last scrape (if fresher than `max_age`) corrected by what this EPP routed and saw
    /// finish since: requests routed since join the waiting queue, requests finished since
    /// leave the running ones, and prompt tokens routed since add to the KV-cache usage when
    /// the pod's capacity is known. Between scrapes, a pod's load follows the EPP's own
    /// decisions instead of standing still.
    pub fn current_load(&self, max_age: Duration) -> Option<Load> {
        let mut l = self.fresh_load(max_age)?;
        let dr = self.inflight.requests as f64 - self.inflight_at_scrape.requests as f64;
        if dr > 0.0 {
            l.waiting += dr;
        } else {
            l.running = (l.running + dr).max(0.0);
        }
        if let (Some(bs), Some(blocks)) = (l.cache_block_size, l.num_gpu_blocks) {
            let capacity = f64::from(bs) * blocks as f64;
            if capacity > 0.0 {
                let dt = self.inflight.tokens as f64 - self.inflight_at_scrape.tokens as f64;
                l.kv_usage = (l.kv_usage + dt / capacity).clamp(0.0, 1.0);
            }
        }
        Some(l)
    }

    /// The served models if the scrape that read them is fresher than `max_age`.
    pub fn fresh_models(&self, max_age: Duration) -> Option<&crate::lora::ServedModels> {
        self.fresh_load(max_age).and(self.models.as_deref())
    }

    /// The load if it is fresher than `max_age`.
    pub fn fresh_load(&self, max_age: Duration) -> Option<Load> {
        self.load
            .filter(|(_, at)| at.elapsed() <= max_age)
            .map(|(l, _)| l)
    }

    /// False while the endpoint is known to be failing.
    pub fn healthy(&self, now: Instant) -> bool {
        self.unhealthy_until.is_none_or(|until| now >= until)
    }
}

/// The endpoint set, shared by the scheduler, the scraper and the KV-event subscriptions.
/// Readers take a snapshot (one reference count, no copy); writers replace it.
#[derive(Debug, Default)]
pub struct Pool {
    endpoints: RwLock<Arc<Vec<Endpoint>>>,
    inflight: InFlight,
    /// Benchmarks only: scorers do not see the in-flight count (the EPP before it).
    inflight_hidden: std::sync::atomic::AtomicBool,
    /// Woken when the set or a scraped load changes (flow control dispatches on it).
    changed: tokio::sync::Notify,
}

/// How the set changed (to follow with KV-event subscriptions).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Change {
    /// New endpoints.
    pub added: Vec<EndpointSpec>,
    /// Removed endpoints (ids).
    pub removed: Vec<String>,
}

impl Pool {
    /// The endpoints now (shared, not copied).
    pub fn snapshot(&self) -> Arc<Vec<Endpoint>> {
        self.endpoints.read().clone()
    }

    /// Replaces the set, keeping the state of endpoints that stay.
    pub fn replace(&self, specs: Vec<EndpointSpec>) -> Change {
        let mut guard = self.endpoints.write();
        let old: HashMap<&str, &Endpoint> = guard.iter().map(|e| (&*e.id, e)).collect();
        let mut change = Change::default();
        let mut eps = Vec::with_capacity(specs.len());
        for spec in specs {
            let id = spec.host_port();
            match old.get(id.as_str()) {
                Some(prev) if *prev.spec == spec => eps.push((*prev).clone()),
                _ => {
                    change.added.push(spec.clone());
                    eps.push(Endpoint::new(spec));
                }
            }
        }
        let now: std::collections::HashSet<&str> = eps.iter().map(|e| &*e.id).collect();
        change.removed = old
            .keys()
            .filter(|id| !now.contains(**id))
            .map(|id| (*id).to_owned())
            .collect();
        drop(old);
        *guard = Arc::new(eps);
        drop(guard);
        self.changed.notify_waiters();
        change
    }

    /// Applies `f` to the endpoint `id`, if it is in the set.
    fn update(&self, id: &str, f: impl FnOnce(&mut Endpoint)) {
        let mut guard = self.endpoints.write();
        if let Some(i) = guard.iter().position(|e| &*e.id == id) {
            f(&mut Arc::make_mut(&mut guard)[i]);
        }
    }

    /// Records a scrape result (and what this EPP has in flight on the pod now).
    pub fn set_load(&self, id: &str, load: Load) {
        self.set_load_at(id, load, self.inflight.get(id));
    }

    /// Records a scrape result and what this EPP had in flight on the pod when the pod
    /// answered (`at`).
    pub fn set_load_at(&self, id: &str, load: Load, at: PodLoad) {
        let at = if self.inflight_hidden() {
            PodLoad::default()
        } else {
            at
        };
        self.update(id, |e| {
            e.load = Some((load, Instant::now()));
            e.inflight_at_scrape = at;
            e.unhealthy_until = None;
        });
        self.changed.notify_waiters();
    }

    /// Resolves when the set or a scraped load next changes.
    pub fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.changed.notified()
    }

    /// What this EPP routed and has not seen finish, per endpoint.
    pub fn inflight(&self) -> &InFlight {
        &self.inflight
    }

    /// Fills each endpoint's in-flight load (what the scorers see).
    pub fn fill_inflight(&self, endpoints: &mut [Endpoint]) {
        if self.inflight_hidden() {
            return;
        }
        self.inflight
            .fill(endpoints.iter_mut().map(|e| (&*e.id, &mut e.inflight)));
    }

    /// Benchmarks only (`benches/routing_quality.rs`): the scorers stop seeing the in-flight
    /// count, so that the EPP as it was before it can be measured in the same run. Never use
    /// it to serve.
    #[doc(hidden)]
    pub fn hide_inflight_for_bench(&self) {
        self.inflight_hidden
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    fn inflight_hidden(&self) -> bool {
        self.inflight_hidden
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Records the models a scrape showed (with [`Pool::set_load`] of the same scrape).
    pub fn set_models(&self, id: &str, models: crate::lora::ServedModels) {
        let models = Arc::new(models);
        self.update(id, |e| e.models = Some(models));
    }

    /// Takes `id` out of routing for `period` (a failed scrape, a failed connection).
    pub fn mark_unhealthy(&self, id: &str, period: Duration) {
        let until = Instant::now() + period;
        self.update(id, |e| {
            e.unhealthy_until = Some(e.unhealthy_until.map_or(until, |u| u.max(until)));
        });
    }
}

/// Reads `vllm:*` load gauges from a `/metrics` text (summed over label sets, e.g. DP engines).
pub fn parse_load(text: &str) -> Result<Load, llmd_telemetry::exposition::ParseError> {
    parse_load_with(text, &MetricNames::default())
}

/// [`parse_load`] with other metric names.
pub fn parse_load_with(
    text: &str,
    names: &MetricNames,
) -> Result<Load, llmd_telemetry::exposition::ParseError> {
    parse_scrape(text, names).map(|(load, _)| load)
}

/// A scrape's load and served models (one parse of the text).
pub fn parse_scrape(
    text: &str,
    names: &MetricNames,
) -> Result<(Load, crate::lora::ServedModels), llmd_telemetry::exposition::ParseError> {
    // Only the five series the EPP reads are parsed in full (vLLM's /metrics is ~30 KB of
    // mostly histogram buckets, scraped 20 times a second per pod); every line is still checked
    // to be exposition text.
    let wanted = [
        &names.waiting,
        &names.running,
        &names.kv_usage,
        &names.cache_info,
        &names.lora_info,
    ];
    let samples = llmd_telemetry::exposition::parse_samples_of(text, |name| {
        wanted.iter().any(|spec| spec.name == name)
    })?;
    let models = crate::lora::from_samples(&samples, names);
    let values = |spec: &MetricSpec| -> Vec<f64> {
        samples
            .iter()
            .filter(|s| spec.matches(s))
            .map(|s| s.value)
            .filter(|v| v.is_finite())
            .collect()
    };
    let usage = values(&names.kv_usage);
    let info = samples.iter().find(|s| names.cache_info.matches(s));
    let load = Load {
        waiting: values(&names.waiting).iter().sum(),
        running: values(&names.running).iter().sum(),
        kv_usage: if usage.is_empty() {
            0.0
        } else {
            usage.iter().sum::<f64>() / usage.len() as f64
        },
        cache_block_size: info
            .and_then(|s| s.label("block_size"))
            .and_then(|v| v.parse().ok()),
        num_gpu_blocks: info
            .and_then(|s| s.label("num_gpu_blocks"))
            .and_then(|v| v.parse().ok()),
    };
    Ok((load, models))
}

/// Why a scrape of a model server's `/metrics` failed.
enum ScrapeFailure {
    Timeout(String),
    Connect(String),
    /// An HTTP error status; `true` for a 5xx.
    Status(String, bool),
    Parse(String),
}

impl ScrapeFailure {
    /// Whether the endpoint is left out of routing until a scrape succeeds: it refused the
    /// connection, failed (5xx) or answered what is not Prometheus text. A timeout (a busy
    /// pod) or a 4xx (a pod that answers, without metrics at that path) keeps it routable.
    fn takes_out_of_routing(&self) -> bool {
        match self {
            Self::Timeout(_) => false,
            Self::Status(_, server_error) => *server_error,
            Self::Connect(_) | Self::Parse(_) => true,
        }
    }

    fn reason(&self) -> &'static str {
        match self {
            Self::Timeout(_) => "timeout",
            Self::Connect(_) => "connect",
            Self::Status(..) => "status",
            Self::Parse(_) => "parse",
        }
    }

    fn message(&self) -> &str {
        match self {
            Self::Timeout(m) | Self::Connect(m) | Self::Status(m, _) | Self::Parse(m) => m,
        }
    }
}

/// Scrapes every endpoint's `/metrics` every `interval` until cancelled.
///
/// After each round it sets GIE's pool gauges (`inference_pool_ready_pods` and the averages),
/// counting an endpoint ready while its last good scrape is at most three intervals old.
///
/// `scraped` is set to true once the first round has finished (the EPP's readiness waits for
/// it).
pub async fn scrape_loop(
    pool: Arc<Pool>,
    pool_name: String,
    names: MetricNames,
    interval: Duration,
    timeout: Duration,
    cancel: CancellationToken,
    scraped: tokio::sync::watch::Sender<bool>,
) {
    let client = reqwest::Client::builder()
        .timeout(timeout)
        .build()
        .unwrap_or_default();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing: std::collections::HashSet<String> = std::collections::HashSet::new();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tick.tick() => {}
        }
        let eps = pool.snapshot();
        let scrapes = eps.iter().map(|e| {
            let url = format!(
                "http://{}:{}/metrics",
                bracket(&e.spec.address),
                e.spec.metrics_port.unwrap_or(e.spec.port)
            );
            let client = client.clone();
            let pool = &pool;
            async move {
                let text = client
                    .get(&url)
                    .send()
                    .await
                    .and_then(|r| r.error_for_status())?
                    .text()
                    .await?;
                // What the pod's numbers include of this EPP's decisions: those made before
                // its answer arrived.
                Ok::<_, reqwest::Error>((text, pool.inflight().get(&e.id)))
            }
        });
        let results = futures::future::join_all(scrapes).await;
        for (e, r) in eps.iter().zip(results) {
            let failure = match r {
                Ok((text, at)) => match parse_scrape(&text, &names) {
                    Ok((load, models)) => {
                        pool.set_load_at(&e.id, load, at);
                        pool.set_models(&e.id, models);
                        failing.remove(&*e.id);
                        continue;
                    }
                    Err(error) => ScrapeFailure::Parse(error.to_string()),
                },
                Err(error) if error.is_timeout() => {
                    ScrapeFailure::Timeout(llmd_wire::error_chain::chain(&error))
                }
                Err(error) if error.is_status() => {
                    let server_error = error.status().is_some_and(|s| s.is_server_error());
                    ScrapeFailure::Status(llmd_wire::error_chain::chain(&error), server_error)
                }
                Err(error) => ScrapeFailure::Connect(llmd_wire::error_chain::chain(&error)),
            };
            metrics::counter!(
                llmd_telemetry::names::epp::METRICS_SCRAPE_FAILURES.name,
                llmd_telemetry::names::labels::REASON => failure.reason()
            )
            .increment(1);
            // A pod too busy to answer in time is still there: it keeps its last load, which
            // the scorers treat as stale once it is; so is one that answers HTTP but has no
            // metrics at that path (a 4xx: a metrics port or path misconfigured, or a sidecar
            // that does not pass /metrics on). One that refuses, fails (5xx) or answers
            // garbage is not routed to until a scrape succeeds again.
            if failure.takes_out_of_routing() {
                pool.mark_unhealthy(&e.id, interval * 2);
            }
            if failing.insert(e.id.to_string()) {
                tracing::warn!(
                    endpoint = &*e.id,
                    reason = failure.reason(),
                    error = failure.message(),
                    "metrics scrape failed (logged once until it succeeds again)"
                );
            }
        }
        inflight_gauges(&pool);
        let ready: Vec<Load> = pool
            .snapshot()
            .iter()
            .filter_map(|e| e.fresh_load(interval * 3))
            .collect();
        pool_gauges(&pool_name, &ready);
        scraped.send_if_modified(|done| !std::mem::replace(done, true));
    }
}

/// llm-d's in-flight gauges, per endpoint of the pool.
fn inflight_gauges(pool: &Pool) {
    use llmd_telemetry::names::{epp, labels};
    for e in pool.snapshot().iter() {
        let now = pool.inflight().get(&e.id);
        let labels = [
            (labels::ENDPOINT_NAME, e.id.to_string()),
            (labels::PRODUCER_NAME, "inflight-load-producer".to_owned()),
        ];
        metrics::gauge!(epp::LLMD_INFLIGHT_REQUESTS.name, &labels).set(now.requests as f64);
        metrics::gauge!(epp::LLMD_INFLIGHT_TOKENS.name, &labels).set(now.tokens as f64);
    }
}

/// GIE's and llm-d's pool gauges over the ready endpoints' loads: ready count, means and
/// (llm-d) standard deviations of KV usage, queue and running requests.
fn pool_gauges(pool_name: &str, ready: &[Load]) {
    use llmd_telemetry::names::epp;
    let n = ready.len() as f64;
    let stats = |f: fn(&Load) -> f64| {
        if ready.is_empty() {
            return (0.0, 0.0);
        }
        let mean = ready.iter().map(f).sum::<f64>() / n;
        let var = ready.iter().map(|l| (f(l) - mean).powi(2)).sum::<f64>() / n;
        (mean, var.sqrt())
    };
    let (kv, kv_sd) = stats(|l| l.kv_usage);
    let (queue, queue_sd) = stats(|l| l.waiting);
    let (running, running_sd) = stats(|l| l.running);
    for (defs, value) in [
        (&[&epp::POOL_READY_PODS, &epp::LLMD_READY_ENDPOINTS][..], n),
        (
            &[
                &epp::POOL_AVG_KV_CACHE_UTILIZATION,
                &epp::LLMD_AVG_KV_CACHE_UTILIZATION,
            ][..],
            kv,
        ),
        (
            &[&epp::POOL_AVG_QUEUE_SIZE, &epp::LLMD_AVG_QUEUE_SIZE][..],
            queue,
        ),
        (
            &[
                &epp::POOL_AVG_RUNNING_REQUESTS,
                &epp::LLMD_AVG_RUNNING_REQUESTS,
            ][..],
            running,
        ),
        (&[&epp::LLMD_STD_DEV_KV_CACHE_UTILIZATION][..], kv_sd),
        (&[&epp::LLMD_STD_DEV_QUEUE_SIZE][..], queue_sd),
        (&[&epp::LLMD_STD_DEV_RUNNING_REQUESTS][..], running_sd),
    ] {
        for def in defs {
            metrics::gauge!(def.name, "name" => pool_name.to_owned()).set(value);
        }
    }
}

fn bracket(address: &str) -> String {
    if address.contains(':') && !address.starts_with('[') {
        format!("[{address}]")
    } else {
        address.to_owned()
    }
}

/// Watches the endpoints file and applies changes (checked every `interval` by mtime).
pub async fn watch_file(
    path: PathBuf,
    pool: Arc<Pool>,
    on_change: impl Fn(Change) + Send + 'static,
    interval: Duration,
    cancel: CancellationToken,
) {
    let mut last: Option<SystemTime> = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
    let mut tick = tokio::time::interval(interval);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tick.tick() => {}
        }
        let Ok(modified) = std::fs::metadata(&path).and_then(|m| m.modified()) else {
            continue;
        };
        if Some(modified) == last {
            continue;
        }
        last = Some(modified);
        match EndpointsFile::load(&path) {
            Ok(file) => {
                let change = pool.replace(file.endpoints);
                if change != Change::default() {
                    tracing::info!(
                        added = change.added.len(),
                        removed = change.removed.len(),
                        "endpoints file reloaded"
                    );
                    on_change(change);
                }
            }
            Err(error) => {
                tracing::warn!(%error, "endpoints file not reloaded (keeping the previous set)")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_format_and_validation() {
        let f = EndpointsFile::parse(
            "endpoints:\n  - {address: 10.0.0.1, port: 8000, role: prefill, model: m, kvEvents: 'tcp://10.0.0.1:5557'}\n  - {address: '::1', port: 8001}\n",
        )
        .unwrap();
        assert_eq!(f.endpoints[0].role, Role::Prefill);
        assert_eq!(f.endpoints[0].model, vec!["m".to_owned()]);
        assert_eq!(f.endpoints[1].host_port(), "[::1]:8001");
        assert_eq!(f.endpoints[1].role, Role::Both);
        assert!(f.endpoints[1].serves("anything"));
        assert!(EndpointsFile::parse("endpoints: [{address: a, port: 0}]").is_err());
        assert!(
            EndpointsFile::parse("endpoints: [{address: a, port: 1}, {address: a, port: 1}]")
                .is_err()
        );
        assert!(EndpointsFile::parse("endpoints: [{address: a, port: 1, colour: red}]").is_err());
    }

    #[test]
    fn the_scraped_load_follows_the_epps_own_decisions_between_scrapes() {
        use crate::inflight::{Leg, Release};
        let pool = Pool::default();
        let spec = EndpointsFile::parse("endpoints: [{address: 10.0.0.1, port: 8000}]")
            .unwrap()
            .endpoints;
        pool.replace(spec);
        let leg = |tokens| Leg {
            endpoint: "10.0.0.1:8000".into(),
            tokens,
            prefill: false,
        };
        // One request in flight when the pod answers: its scrape already counts it.
        let a = pool.inflight().start(&[leg(1_000)]).unwrap();
        pool.set_load(
            "10.0.0.1:8000",
            Load {
                waiting: 0.0,
                running: 1.0,
                kv_usage: 0.25,
                cache_block_size: Some(16),
                num_gpu_blocks: Some(1_000),
            },
        );
        let now = |pool: &Pool| {
            let mut e = pool.snapshot()[0].clone();
            pool.inflight()
                .fill(std::iter::once((&*e.id, &mut e.inflight)));
            e.current_load(Duration::from_secs(5)).unwrap()
        };
        assert_eq!((now(&pool).waiting, now(&pool).running), (0.0, 1.0));
        // Two more routed since: they queue, and their prompts take KV cache.
        let b = pool.inflight().start(&[leg(2_000)]).unwrap();
        let _c = pool.inflight().start(&[leg(2_000)]).unwrap();
        let l = now(&pool);
        assert_eq!((l.waiting, l.running), (2.0, 1.0));
        assert!(
            (l.kv_usage - (0.25 + 4_000.0 / 16_000.0)).abs() < 1e-9,
            "{l:?}"
        );
        // The scraped one and one of the new ones finish: one is left, running.
        pool.inflight().release(a, Release::All);
        pool.inflight().release(b, Release::All);
        let l = now(&pool);
        assert_eq!((l.waiting, l.running), (0.0, 1.0));
        assert!(
            (l.kv_usage - (0.25 + 1_000.0 / 16_000.0)).abs() < 1e-9,
            "{l:?}"
        );
    }

    #[test]
    fn replace_keeps_state_and_reports_changes() {
        let pool = Pool::default();
        let a = EndpointSpec {
            address: "a".into(),
            port: 1,
            role: Role::Both,
            model: vec![],
            kv_events: None,
            kv_events_replay: None,
            metrics_port: None,
        };
        let b = EndpointSpec {
            address: "b".into(),
            ..a.clone()
        };
        assert_eq!(pool.replace(vec![a.clone()]).added.len(), 1);
        pool.set_load(
            "a:1",
            Load {
                waiting: 3.0,
                ..Default::default()
            },
        );
        let change = pool.replace(vec![a.clone(), b]);
        assert_eq!((change.added.len(), change.removed.len()), (1, 0));
        assert_eq!(
            pool.snapshot()[0]
                .fresh_load(Duration::from_secs(5))
                .unwrap()
                .waiting,
            3.0
        );
        pool.mark_unhealthy("a:1", Duration::from_secs(60));
        assert!(!pool.snapshot()[0].healthy(Instant::now()));
        assert!(pool.snapshot()[1].healthy(Instant::now()));
        let change = pool.replace(vec![]);
        assert_eq!(change.removed.len(), 2);
    }

    #[test]
    fn load_from_vllm_metrics() {
        let text = "vllm:num_requests_waiting{engine=\"0\",model_name=\"m\"} 3\nvllm:num_requests_waiting{engine=\"1\",model_name=\"m\"} 1\nvllm:num_requests_running{engine=\"0\",model_name=\"m\"} 7\nvllm:kv_cache_usage_perc{engine=\"0\",model_name=\"m\"} 0.5\n";
        assert_eq!(
            parse_load(text).unwrap(),
            Load {
                waiting: 4.0,
                running: 7.0,
                kv_usage: 0.5,
                ..Default::default()
            }
        );
        assert!(parse_load("garbage line here").is_err());
    }

    #[test]
    fn metric_flags_and_cache_info() {
        let text = "vllm:gpu_cache_usage_perc{model_name=\"m\"} 0.25\nq{pool=\"a\"} 2\nq{pool=\"b\"} 5\nvllm:cache_config_info{block_size=\"16\",num_gpu_blocks=\"6650\"} 1\n";
        let names = MetricNames {
            waiting: MetricSpec::parse("q{pool=\"b\"}").unwrap(),
            kv_usage: MetricSpec::parse("vllm:gpu_cache_usage_perc").unwrap(),
            ..Default::default()
        };
        let l = parse_load_with(text, &names).unwrap();
        assert_eq!((l.waiting, l.kv_usage), (5.0, 0.25));
        assert_eq!(
            (l.cache_block_size, l.num_gpu_blocks),
            (Some(16), Some(6650))
        );
        assert!(MetricSpec::parse("a b").is_err());
        assert!(MetricSpec::parse("a{x=\"1\"").is_err());
    }
}
