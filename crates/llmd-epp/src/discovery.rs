//! Kubernetes discovery: the `InferencePool` (`inference.networking.k8s.io/v1`) names a pod
//! selector and target ports; its ready pods are the endpoints.
//!
//! `llmd-k8s` follows the pool and its pods by watch ([`llmd_k8s::watch_pool`]); this module
//! maps each new snapshot to endpoints and replaces the endpoint set with them. A pod is ready
//! when it has an IP, is not being deleted, and its `Ready` condition is `True`. Its P/D role
//! is the `llm-d.ai/role` label (`prefill`, `decode`, or `both`/absent). Every `targetPorts`
//! number is an endpoint of its own: port `i` is data-parallel rank `i`. With `kv_events_port`
//! set (`--kv-events-port`, or llm-d's `discoverPods` `socketPort`), the EPP dials
//! `tcp://<pod IP>:<port + rank>` for its KV events (llm-d's pod-discovery mode; vLLM offsets
//! each rank's publisher by its rank), and its replay socket likewise; otherwise pods are
//! expected to connect to `--kv-events-bind`.
//!
//! The pool namespace's `InferenceObjective`s whose `spec.poolRef.name` is the pool (llm-d's
//! and GIE's API groups) are followed too ([`follow_objectives`]): their priorities classify
//! requests ([`crate::objectives`]) as soon as the watch sees them.
//!
//! An API error or an unusable pool spec keeps the last good set (`llmd-k8s` logs it once and
//! counts it in `llmd_kubernetes_watch_errors_total`): a flaky API server must not empty the
//! pool. A deleted pool, which the watch reports as such, has no endpoints.

use std::sync::Arc;
use std::time::Duration;

use llmd_k8s::{KvEventPorts, PoolSnapshot};
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
    /// Port of the pods' KV-event publisher to dial, if the EPP dials (rank `i` at port + `i`).
    pub kv_events_port: Option<u16>,
    /// Port of the pods' KV-event replay socket, if they serve one (rank `i` at port + `i`).
    pub kv_events_replay_port: Option<u16>,
    /// How often the pool and its pods are listed again from scratch (changes arrive by watch
    /// in between).
    pub resync: Duration,
}

impl PoolRef {
    /// The pool as `llmd-k8s` names it.
    pub fn k8s(&self) -> llmd_k8s::PoolRef {
        llmd_k8s::PoolRef {
            name: self.name.clone(),
            namespace: self.namespace.clone(),
            group: self.group.clone(),
        }
    }
}

/// The endpoints of a snapshot: each ready pod on every target port of the pool (GIE v1: port
/// `i` is data-parallel rank `i`, an engine with its own queue, `/metrics` and KV-event
/// publisher at the base port + `i`), sorted by `address:port`.
pub fn endpoints_of(snapshot: &PoolSnapshot, kv: KvEventPorts) -> Vec<EndpointSpec> {
    let mut out: Vec<EndpointSpec> = snapshot
        .endpoints(kv)
        .into_iter()
        .map(|e| EndpointSpec {
            role: match e.labels.get(ROLE_LABEL).map(String::as_str) {
                Some("prefill") => Role::Prefill,
                Some("decode") => Role::Decode,
                _ => Role::Both,
            },
            address: e.address,
            port: e.port,
            model: Vec::new(),
            kv_events: e.kv_events,
            kv_events_replay: e.kv_events_replay,
            metrics_port: None,
        })
        .collect();
    out.sort_by_key(EndpointSpec::host_port);
    out.dedup_by(|a, b| a.host_port() == b.host_port());
    out
}

/// Keeps `target` equal to the pool's ready pods until cancelled; `on_change` sees every
/// change (to follow KV events). The watch and the updates run on the caller's task.
pub async fn run(
    client: kube::Client,
    pool: PoolRef,
    target: Arc<Pool>,
    on_change: impl Fn(Change) + Send + 'static,
    cancel: CancellationToken,
    listed: tokio::sync::watch::Sender<bool>,
) {
    let (mut watch, task) = llmd_k8s::watch_pool(client, pool.k8s(), pool.resync, cancel.clone());
    let apply = async move {
        let mut last: Option<Arc<PoolSnapshot>> = None;
        while let Some(view) = watch.changed().await {
            let Some(snapshot) = view.snapshot else {
                continue;
            };
            if last.as_ref().is_some_and(|l| Arc::ptr_eq(l, &snapshot)) {
                continue;
            }
            let kv = KvEventPorts {
                publisher: pool.kv_events_port,
                replay: pool.kv_events_replay_port,
            };
            let change = target.replace(endpoints_of(&snapshot, kv));
            last = Some(snapshot);
            // The pool has been listed once: readiness no longer waits for it.
            listed.send_if_modified(|done| !std::mem::replace(done, true));
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
    };
    // The watch task ends when cancelled; the loop ends when the watch task has.
    tokio::join!(task, apply);
}

/// Keeps `objectives`' cluster layer equal to the pool's `InferenceObjective`s (those of the
/// pool's namespace whose `spec.poolRef.name` is the pool, or that name no pool) until
/// cancelled. A failing watch keeps the last objectives seen.
pub fn follow_objectives(
    client: kube::Client,
    pool: &PoolRef,
    objectives: crate::objectives::Objectives,
    cancel: CancellationToken,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let (mut rx, task) = llmd_k8s::watch_objectives(client, &pool.namespace, cancel);
    let name = pool.name.clone();
    let apply = async move {
        while rx.changed().await.is_ok() {
            let Some(all) = rx.borrow_and_update().clone() else {
                continue;
            };
            let mine: Vec<(String, i32)> = all
                .into_iter()
                .filter(|o| o.pool.as_deref().is_none_or(|p| p == name))
                .map(|o| (o.name, o.priority))
                .collect();
            tracing::info!(
                pool = name,
                objectives = mine.len(),
                "InferenceObjectives changed"
            );
            objectives.set_cluster(mine);
        }
    };
    async move {
        tokio::join!(task, apply);
    }
}
