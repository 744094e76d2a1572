//! Kubernetes discovery: the `InferencePool` (`inference.networking.k8s.io/v1`) names a pod
//! selector and a target port; its ready pods are the endpoints.
//!
//! Every `resync` the pool object and the pods matching its `spec.selector.matchLabels` are
//! listed (two GETs; a pool of hundreds of pods is one page), and the endpoint set is replaced
//! with the ready ones. A pod is ready when it has an IP, is not being deleted, and its `Ready`
//! condition is `True`. Its P/D role is the `llm-d.ai/role` label (`prefill`, `decode`, or
//! `both`/absent), its port the pool's first `targetPorts` number. With `kv_events_port` set,
//! the EPP dials `tcp://<pod IP>:<port>` for its KV events (llm-d's pod-discovery mode);
//! otherwise pods are expected to connect to `--kv-events-bind`.
//!
//! An API error keeps the last good set (logged once until the next success): a flaky API
//! server must not empty the pool.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ApiResource, DynamicObject, ListParams};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::endpoints::{Change, EndpointSpec, Pool, Role};

/// The role label of llm-d's P/D deployments.
pub const ROLE_LABEL: &str = "llm-d.ai/role";

/// Where the pool is and how to follow it.
#[derive(Debug, Clone)]
pub struct PoolRef {
    /// `InferencePool` name.
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// Its API group (GIE: `inference.networking.k8s.io`).
    pub group: String,
    /// Port of the pods' KV-event publisher to dial, if the EPP dials.
    pub kv_events_port: Option<u16>,
    /// How often to list.
    pub resync: Duration,
}

/// Errors of discovery.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// The API call failed.
    #[error("kubernetes API: {0}")]
    Api(#[from] kube::Error),
    /// The pool object is not usable.
    #[error("InferencePool {0}: {1}")]
    Pool(String, String),
}

/// What the pool object says.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolSpec {
    /// `spec.selector.matchLabels`.
    pub selector: BTreeMap<String, String>,
    /// `spec.targetPorts[0].number`.
    pub port: u16,
}

/// Reads `spec.selector` and `spec.targetPorts` (v1; the v1alpha2 `targetPortNumber` too).
pub fn pool_spec(name: &str, obj: &Value) -> Result<PoolSpec, DiscoveryError> {
    let bad = |why: &str| DiscoveryError::Pool(name.to_owned(), why.to_owned());
    let spec = obj.get("spec").ok_or_else(|| bad("no spec"))?;
    let sel = spec
        .get("selector")
        .ok_or_else(|| bad("no spec.selector"))?;
    // v1: {matchLabels: {...}}; v1alpha2: a plain label map.
    let labels = sel.get("matchLabels").unwrap_or(sel);
    let selector: BTreeMap<String, String> = labels
        .as_object()
        .ok_or_else(|| bad("spec.selector is not a label map"))?
        .iter()
        .map(|(k, v)| {
            v.as_str()
                .map(|v| (k.clone(), v.to_owned()))
                .ok_or_else(|| bad("a selector value is not a string"))
        })
        .collect::<Result<_, _>>()?;
    if selector.is_empty() {
        return Err(bad("empty selector (it would select every pod)"));
    }
    let port = spec
        .get("targetPorts")
        .and_then(|p| p.get(0))
        .and_then(|p| p.get("number"))
        .or_else(|| spec.get("targetPortNumber"))
        .and_then(Value::as_u64)
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p != 0)
        .ok_or_else(|| bad("no valid spec.targetPorts[0].number"))?;
    Ok(PoolSpec { selector, port })
}

/// The endpoint of a pod, if it is ready.
pub fn pod_endpoint(pod: &Pod, port: u16, kv_events_port: Option<u16>) -> Option<EndpointSpec> {
    if pod.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let status = pod.status.as_ref()?;
    let ip = status.pod_ip.as_deref().filter(|ip| !ip.is_empty())?;
    let ready = status
        .conditions
        .as_ref()?
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    if !ready {
        return None;
    }
    let role = match pod
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(ROLE_LABEL))
        .map(String::as_str)
    {
        Some("prefill") => Role::Prefill,
        Some("decode") => Role::Decode,
        _ => Role::Both,
    };
    Some(EndpointSpec {
        address: ip.to_owned(),
        port,
        role,
        model: Vec::new(),
        kv_events: kv_events_port.map(|p| {
            if ip.contains(':') {
                format!("tcp://[{ip}]:{p}")
            } else {
                format!("tcp://{ip}:{p}")
            }
        }),
        kv_events_replay: None,
        metrics_port: None,
    })
}

/// The pool object's spec and the pods its selector matches (any state), from two GETs.
/// The P/D proxy's allowlist uses this too.
pub async fn pool_pods(
    client: &kube::Client,
    namespace: &str,
    group: &str,
    name: &str,
) -> Result<(PoolSpec, Vec<Pod>), DiscoveryError> {
    let resource = ApiResource {
        group: group.to_owned(),
        version: "v1".into(),
        api_version: format!("{group}/v1"),
        kind: "InferencePool".into(),
        plural: "inferencepools".into(),
    };
    let pools: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &resource);
    let obj = pools.get(name).await?;
    let spec = pool_spec(name, &obj.data)?;
    let selector = spec
        .selector
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let list = pods.list(&ListParams::default().labels(&selector)).await?;
    Ok((spec, list.items))
}

/// One listing: the ready endpoints of the pool.
pub async fn list_once(
    client: &kube::Client,
    pool: &PoolRef,
) -> Result<Vec<EndpointSpec>, DiscoveryError> {
    let (spec, pods) = pool_pods(client, &pool.namespace, &pool.group, &pool.name).await?;
    let mut out: Vec<EndpointSpec> = pods
        .iter()
        .filter_map(|p| pod_endpoint(p, spec.port, pool.kv_events_port))
        .collect();
    out.sort_by_key(EndpointSpec::host_port);
    out.dedup_by(|a, b| a.host_port() == b.host_port());
    Ok(out)
}

/// Keeps `target` equal to the pool's ready pods until cancelled; `on_change` sees every
/// change (to follow KV events).
pub async fn run(
    client: kube::Client,
    pool: PoolRef,
    target: Arc<Pool>,
    on_change: impl Fn(Change) + Send + 'static,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(pool.resync);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tick.tick() => {}
        }
        match list_once(&client, &pool).await {
            Ok(specs) => {
                if failing {
                    tracing::info!(pool = pool.name, "kubernetes discovery recovered");
                    failing = false;
                }
                let change = target.replace(specs);
                if change != Change::default() {
                    tracing::info!(
                        pool = pool.name,
                        added = change.added.len(),
                        removed = change.removed.len(),
                        "pool endpoints changed"
                    );
                    on_change(change);
                }
            }
            Err(error) => {
                if !failing {
                    tracing::warn!(pool = pool.name, %error, "kubernetes discovery failed; keeping the last endpoints");
                    failing = true;
                }
            }
        }
    }
}
