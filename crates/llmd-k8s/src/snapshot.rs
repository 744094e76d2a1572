//! What discovery hands its users: the pool's spec and its pods in a neutral form
//! ([`PoolSnapshot`], [`PoolPod`]), and the routable endpoints derived from them
//! ([`PoolSnapshot::endpoints`]).
//!
//! An endpoint is a ready pod (an IP, not being deleted, condition `Ready` = `True`) on one of
//! the pool's target ports; the port's index in `spec.targetPorts` is its data-parallel rank,
//! as GIE's EPP counts it. A pod may narrow its ports with GIE's annotation
//! `inference.networking.k8s.io/active-ports` (`"8000,8001"`; entries that are not target
//! ports are ignored; a rank keeps its index). KV-event endpoints follow vLLM's convention for
//! data-parallel ranks (`ZmqEventPublisher.offset_endpoint_port`): rank `r` publishes on the
//! configured port + `r`, and serves replay on the replay port + `r`, on the pod's IP.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::Pod;

use crate::pool::PoolSpec;

/// GIE's annotation naming the target ports a pod serves on (comma-separated numbers).
pub const ACTIVE_PORTS_ANNOTATION: &str = "inference.networking.k8s.io/active-ports";

/// A pod the pool's selector matches, in any state: the fields discovery reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolPod {
    /// `metadata.name`.
    pub name: String,
    /// `status.podIP`, when assigned and valid.
    pub ip: Option<IpAddr>,
    /// The `Ready` condition is `True`.
    pub ready: bool,
    /// `metadata.deletionTimestamp` is set (terminating).
    pub deleting: bool,
    /// `metadata.labels`.
    pub labels: BTreeMap<String, String>,
    /// The ports of [`ACTIVE_PORTS_ANNOTATION`] when the pod has it (invalid entries dropped).
    pub active_ports: Option<Vec<u16>>,
}

impl PoolPod {
    /// The fields of a pod object.
    pub fn from_pod(pod: &Pod) -> Self {
        let status = pod.status.as_ref();
        Self {
            name: pod.metadata.name.clone().unwrap_or_default(),
            ip: status
                .and_then(|s| s.pod_ip.as_deref())
                .and_then(|ip| ip.parse().ok()),
            ready: status
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True")),
            deleting: pod.metadata.deletion_timestamp.is_some(),
            labels: pod.metadata.labels.clone().unwrap_or_default(),
            active_ports: pod
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(ACTIVE_PORTS_ANNOTATION))
                .map(|v| {
                    v.split(',')
                        .filter_map(|p| p.trim().parse::<u16>().ok())
                        .filter(|p| *p != 0)
                        .collect()
                }),
        }
    }

    /// Routable: has an IP, is not being deleted, and is ready.
    pub fn routable(&self) -> bool {
        self.ip.is_some() && !self.deleting && self.ready
    }
}

/// The pool as last seen: its spec (`None` while the pool does not exist) and the pods its
/// selector matches, in any state, sorted by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolSnapshot {
    /// The last usable spec; `None` when the pool does not exist (or never had a usable spec).
    pub spec: Option<PoolSpec>,
    /// The pods `spec.selector` matches (empty without a spec).
    pub pods: Vec<PoolPod>,
}

/// Which ports of a discovered pod serve KV events (each `None`: not derived).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KvEventPorts {
    /// The ZMQ PUB port of rank 0 (vLLM `--kv-events-config` `endpoint` `tcp://*:<port>`).
    pub publisher: Option<u16>,
    /// The ZMQ ROUTER replay port of rank 0 (`replay_endpoint` `tcp://*:<port>`).
    pub replay: Option<u16>,
}

impl KvEventPorts {
    /// True when, with `ranks` data-parallel ranks, one rank's replay port is another's
    /// publisher port (`publisher..publisher+ranks` and `replay..replay+ranks` overlap).
    pub fn overlap(&self, ranks: usize) -> bool {
        match (self.publisher, self.replay) {
            (Some(p), Some(r)) => {
                let (p, r, n) = (usize::from(p), usize::from(r), ranks.max(1));
                p < r + n && r < p + n
            }
            _ => false,
        }
    }
}

/// One routable endpoint: a ready pod on one target port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveredEndpoint {
    /// The pod's name.
    pub pod: String,
    /// The pod's IP (IPv6 without brackets).
    pub address: String,
    /// The target port.
    pub port: u16,
    /// The data-parallel rank: the port's index in `spec.targetPorts`.
    pub rank: u32,
    /// The pod's labels.
    pub labels: BTreeMap<String, String>,
    /// `tcp://<ip>:<publisher port + rank>`, when a publisher port is configured.
    pub kv_events: Option<String>,
    /// `tcp://<ip>:<replay port + rank>`, when a replay port is configured.
    pub kv_events_replay: Option<String>,
}

impl PoolSnapshot {
    /// The routable endpoints: every ready pod on every (active) target port, pods in name
    /// order, ranks in order.
    pub fn endpoints(&self, kv: KvEventPorts) -> Vec<DiscoveredEndpoint> {
        let Some(spec) = &self.spec else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for pod in self.pods.iter().filter(|p| p.routable()) {
            let Some(ip) = pod.ip else { continue };
            for (rank, &port) in spec.target_ports.iter().enumerate() {
                if pod
                    .active_ports
                    .as_ref()
                    .is_some_and(|active| !active.contains(&port))
                {
                    continue;
                }
                // At most MAX_TARGET_PORTS ranks: the casts cannot truncate.
                let rank = rank as u16;
                let tcp = |base: Option<u16>| {
                    let p = base?.checked_add(rank)?;
                    Some(match ip {
                        IpAddr::V4(ip) => format!("tcp://{ip}:{p}"),
                        IpAddr::V6(ip) => format!("tcp://[{ip}]:{p}"),
                    })
                };
                out.push(DiscoveredEndpoint {
                    pod: pod.name.clone(),
                    address: ip.to_string(),
                    port,
                    rank: u32::from(rank),
                    labels: pod.labels.clone(),
                    kv_events: tcp(kv.publisher),
                    kv_events_replay: tcp(kv.replay),
                });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

    use serde_json::json;

    use super::*;

    fn pod(v: serde_json::Value) -> PoolPod {
        PoolPod::from_pod(&serde_json::from_value(v).unwrap())
    }

    fn ready(name: &str, ip: &str) -> serde_json::Value {
        json!({"metadata": {"name": name, "labels": {"app": "vllm"}},
               "status": {"podIP": ip, "conditions": [{"type": "Ready", "status": "True"}]}})
    }

    #[test]
    fn readiness_from_the_pod_object() {
        assert!(pod(ready("a", "10.0.0.1")).routable());
        let mut unready = ready("a", "10.0.0.1");
        unready["status"]["conditions"][0]["status"] = json!("False");
        assert!(!pod(unready).routable());
        let mut deleting = ready("a", "10.0.0.1");
        deleting["metadata"]["deletionTimestamp"] = json!("2026-11-21T10:00:00Z");
        assert!(!pod(deleting).routable());
        let mut no_ip = ready("a", "10.0.0.1");
        no_ip["status"]
            .as_object_mut()
            .unwrap()
            .remove("podIP")
            .unwrap();
        assert!(!pod(no_ip).routable());
        assert!(!pod(ready("a", "not-an-ip")).routable());
    }

    #[test]
    fn one_endpoint_per_target_port_with_its_rank_and_kv_ports() {
        let mut narrowed = ready("b", "fd00::2");
        narrowed["metadata"]["annotations"] = json!({ACTIVE_PORTS_ANNOTATION: "8001, 9999,x"});
        let snap = PoolSnapshot {
            spec: Some(PoolSpec {
                selector: [("app".into(), "vllm".into())].into(),
                target_ports: vec![8000, 8001],
            }),
            pods: vec![pod(ready("a", "10.0.0.1")), pod(narrowed)],
        };
        let kv = KvEventPorts {
            publisher: Some(5557),
            replay: Some(5600),
        };
        let got: Vec<_> = snap
            .endpoints(kv)
            .into_iter()
            .map(|e| {
                (
                    e.address,
                    e.port,
                    e.rank,
                    e.kv_events.unwrap(),
                    e.kv_events_replay.unwrap(),
                )
            })
            .collect();
        let row = |a: &str, port, rank, k: &str, r: &str| {
            (a.to_owned(), port, rank, k.to_owned(), r.to_owned())
        };
        assert_eq!(
            got,
            vec![
                row(
                    "10.0.0.1",
                    8000,
                    0,
                    "tcp://10.0.0.1:5557",
                    "tcp://10.0.0.1:5600"
                ),
                row(
                    "10.0.0.1",
                    8001,
                    1,
                    "tcp://10.0.0.1:5558",
                    "tcp://10.0.0.1:5601"
                ),
                // The annotation keeps rank 1 only; it stays rank 1.
                row(
                    "fd00::2",
                    8001,
                    1,
                    "tcp://[fd00::2]:5558",
                    "tcp://[fd00::2]:5601"
                ),
            ]
        );
        // Without ports configured, nothing is derived; without a spec, nothing is routable.
        assert!(
            snap.endpoints(KvEventPorts::default())
                .iter()
                .all(|e| e.kv_events.is_none() && e.kv_events_replay.is_none())
        );
        assert!(PoolSnapshot { spec: None, ..snap }.endpoints(kv).is_empty());
    }

    #[test]
    fn overlapping_kv_port_ranges() {
        let kv = |p, r| KvEventPorts {
            publisher: Some(p),
            replay: Some(r),
        };
        // vLLM's example layout, 5557 + 5558: fine for one rank, a clash from two.
        assert!(!kv(5557, 5558).overlap(1));
        assert!(kv(5557, 5558).overlap(2));
        assert!(kv(5558, 5557).overlap(2));
        assert!(!kv(5557, 5600).overlap(8));
        assert!(kv(5557, 5557).overlap(1));
    }
}
