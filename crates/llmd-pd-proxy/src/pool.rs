//! The allowlist fed by the InferencePool (`--inference-pool`): every `resync` the pool object
//! and the pods its selector matches are listed (the EPP's discovery calls,
//! [`llmd_epp::discovery::pool_pods`]), and the allowed hosts become those pods' IPs and names.
//! A pod counts while it has an IP and is not being deleted; readiness is the EPP's business
//! (a prefill pod that is not ready yet will not be chosen, and one that just turned unready
//! may still finish the request it was sent). An API error keeps the last set, logged once.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
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
    /// How often to list.
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
pub fn hosts_of(pods: &[Pod]) -> PoolHosts {
    let mut hosts = PoolHosts::default();
    for pod in pods {
        if pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let Some(ip) = pod
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.as_deref())
            .and_then(|ip| ip.parse().ok())
        else {
            continue;
        };
        hosts.ips.insert(ip);
        if let Some(name) = &pod.metadata.name {
            hosts.names.insert(name.to_ascii_lowercase());
        }
    }
    hosts
}

/// One listing into `target`; false (and `target` untouched) on an API error.
pub async fn refresh(source: &PoolSource, target: &RwLock<PoolHosts>, failing: &mut bool) -> bool {
    match llmd_epp::discovery::pool_pods(
        &source.client,
        &source.namespace,
        &source.group,
        &source.name,
    )
    .await
    {
        Ok((_, pods)) => {
            let hosts = hosts_of(&pods);
            if *failing {
                tracing::info!(pool = source.name, "InferencePool listing recovered");
                *failing = false;
            }
            let mut current = target.write();
            if *current != hosts {
                tracing::info!(
                    pool = source.name,
                    pods = hosts.ips.len(),
                    "prefill allowlist follows the InferencePool's pods"
                );
                *current = hosts;
            }
            true
        }
        Err(error) => {
            if !*failing {
                tracing::warn!(pool = source.name, %error, "InferencePool listing failed; keeping the last allowlist");
                *failing = true;
            }
            false
        }
    }
}

/// Lists once now, then every `resync` until cancelled (in the background).
pub async fn follow(source: PoolSource, target: Arc<RwLock<PoolHosts>>, cancel: CancellationToken) {
    let mut failing = false;
    refresh(&source, &target, &mut failing).await;
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(source.resync);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tick.tick() => { refresh(&source, &target, &mut failing).await; }
            }
        }
    });
}
