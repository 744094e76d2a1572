//! The allowlist fed by the InferencePool (`--inference-pool`): `llmd-k8s` follows the pool
//! and the pods its selector matches by watch ([`llmd_k8s::watch_pool`]), and the allowed
//! hosts become those pods' IPs and names. A pod counts while it has an IP and is not being
//! deleted; readiness is the EPP's business (a prefill pod that is not ready yet will not be
//! chosen, and one that just turned unready may still finish the request it was sent). An API
//! error or an unusable pool spec keeps the last set (`llmd-k8s` logs it once and counts it in
//! `llmd_kubernetes_watch_errors_total`); a deleted pool allows no pod.

use std::sync::Arc;
use std::time::Duration;

use llmd_k8s::{PoolPod, PoolSnapshot, PoolWatch};
use parking_lot::RwLock;
use tokio_util::sync::CancellationToken;

use crate::allowlist::PoolHosts;

/// Where the InferencePool is.
#[derive(Clone)]
pub struct PoolSource {
    /// The Kubernetes client.
    pub client: kube::Client,
    /// Namespace of the pool.
    pub namespace: String,
    /// Name of the pool.
    pub name: String,
    /// API group (`inference.networking.k8s.io`).
    pub group: String,
    /// How often the pool and its pods are listed again from scratch (changes arrive by watch
    /// in between).
    pub resync: Duration,
}

impl std::fmt::Debug for PoolSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolSource")
            .field("namespace", &self.namespace)
            .field("name", &self.name)
            .field("group", &self.group)
            .field("resync", &self.resync)
            .finish_non_exhaustive()
    }
}

/// The hosts these pods stand for.
pub fn hosts_of(pods: &[PoolPod]) -> PoolHosts {
    let mut hosts = PoolHosts::default();
    for pod in pods.iter().filter(|p| !p.deleting) {
        let Some(ip) = pod.ip else {
            continue;
        };
        hosts.ips.insert(ip);
        if !pod.name.is_empty() {
            hosts.names.insert(pod.name.to_ascii_lowercase());
        }
    }
    hosts
}

/// Makes `target` the hosts of `snapshot`.
fn apply(pool: &str, snapshot: &PoolSnapshot, target: &RwLock<PoolHosts>) {
    let hosts = hosts_of(&snapshot.pods);
    let mut current = target.write();
    if *current != hosts {
        tracing::info!(
            pool,
            pods = hosts.ips.len(),
            "prefill allowlist follows the InferencePool's pods"
        );
        *current = hosts;
    }
}

/// Starts following the pool: waits for the watch's first answer (a listing, or an error, which
/// leaves `target` empty) and applies it, then returns the future that keeps `target` current
/// until cancelled. The caller spawns that future; the watch runs on its task.
pub async fn follow(
    source: PoolSource,
    target: Arc<RwLock<PoolHosts>>,
    cancel: CancellationToken,
) -> impl Future<Output = ()> + Send + 'static {
    let pool = llmd_k8s::PoolRef {
        name: source.name.clone(),
        namespace: source.namespace,
        group: source.group,
    };
    let (watch, task) = llmd_k8s::watch_pool(source.client, pool, source.resync, cancel);
    let name = source.name;
    // The watch makes progress while the first answer is awaited, then runs on the caller's
    // task together with the loop that applies its snapshots.
    let mut task = Box::pin(task);
    let mut first = watch.clone();
    tokio::select! {
        () = &mut task => {}
        view = first.first_answer() => {
            if let Some(snapshot) = view.and_then(|v| v.snapshot) {
                apply(&name, &snapshot, &target);
            }
        }
    }
    async move {
        tokio::join!(task, follow_loop(&name, watch, &target));
    }
}

async fn follow_loop(name: &str, mut watch: PoolWatch, target: &RwLock<PoolHosts>) {
    // The view seen before the loop started is applied here too (idempotent).
    if let Some(snapshot) = watch.snapshot() {
        apply(name, &snapshot, target);
    }
    while let Some(view) = watch.changed().await {
        if let Some(snapshot) = &view.snapshot {
            apply(name, snapshot, target);
        }
    }
}
