//! Which known pod a topic on the bound socket names.
//!
//! Pods are known by their identity in the index, `ip:port` of their serving port (IPv6 in
//! brackets). A topic `kv@<id>@<model>` names a pod when `<id>` is a known identity exactly, or
//! when it is a bare host (llm-d's usual `kv@<pod-ip>@<model>`, without a port) that exactly
//! one known pod has. Anything else is rejected with a reason: events are never indexed under a
//! pod that nobody routes to.

use std::collections::HashMap;
use std::net::IpAddr;

/// Why a message on the bound socket was not applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// The topic names no known pod.
    UnknownPod,
    /// The topic is a bare host that several known pods share (several ports on one IP).
    AmbiguousPod,
    /// The topic names a pod whose events the subscriber dials: only that connection speaks
    /// for it.
    DialledPod,
    /// The sender's IP address is not the pod's (with `verify_peer_address`).
    PeerAddress,
}

impl RejectReason {
    /// Every reason, for registering series at zero.
    pub const ALL: [RejectReason; 4] = [
        RejectReason::UnknownPod,
        RejectReason::AmbiguousPod,
        RejectReason::DialledPod,
        RejectReason::PeerAddress,
    ];

    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::UnknownPod => "unknown_pod",
            RejectReason::AmbiguousPod => "ambiguous_pod",
            RejectReason::DialledPod => "dialled_pod",
            RejectReason::PeerAddress => "peer_address",
        }
    }
}

/// The host part of a pod identity or topic segment: `10.0.0.7:8000` → `10.0.0.7`,
/// `[fd00::1]:8000` → `fd00::1`, `10.0.0.7` → `10.0.0.7`, `fd00::1` → `fd00::1`. IP addresses
/// come back in canonical form, so equal addresses compare equal as text.
pub fn host_of(id: &str) -> String {
    let canonical = |h: &str| {
        h.parse::<IpAddr>()
            .map(|ip| ip.to_string())
            .unwrap_or_else(|_| h.to_owned())
    };
    if let Some(rest) = id.strip_prefix('[') {
        return canonical(rest.split(']').next().unwrap_or(rest));
    }
    if id.parse::<IpAddr>().is_ok() {
        return canonical(id);
    }
    match id.rsplit_once(':') {
        Some((host, port)) if port.parse::<u16>().is_ok() => canonical(host),
        _ => canonical(id),
    }
}

/// True when `segment` names a host without a port (an IP address or a host name).
fn is_bare_host(segment: &str) -> bool {
    segment.parse::<IpAddr>().is_ok()
        || (!segment.contains(':') && !segment.contains('[') && !segment.is_empty())
}

/// The known pods, as the bound socket's reader sees them.
#[derive(Debug, Clone)]
pub struct KnownPods<T> {
    pods: HashMap<String, Known<T>>,
    /// host → identities of the pods on it.
    by_host: HashMap<String, Vec<String>>,
}

impl<T> Default for KnownPods<T> {
    fn default() -> Self {
        Self {
            pods: HashMap::new(),
            by_host: HashMap::new(),
        }
    }
}

#[derive(Debug, Clone)]
struct Known<T> {
    host: String,
    dialled: bool,
    value: T,
}

impl<T> KnownPods<T> {
    /// Adds (or replaces) a pod.
    pub fn insert(&mut self, id: &str, dialled: bool, value: T) -> Option<T> {
        let old = self.remove(id);
        let host = host_of(id);
        self.by_host
            .entry(host.clone())
            .or_default()
            .push(id.to_owned());
        self.pods.insert(
            id.to_owned(),
            Known {
                host,
                dialled,
                value,
            },
        );
        old
    }

    /// Removes a pod.
    pub fn remove(&mut self, id: &str) -> Option<T> {
        let known = self.pods.remove(id)?;
        if let Some(ids) = self.by_host.get_mut(&known.host) {
            ids.retain(|i| i != id);
            if ids.is_empty() {
                self.by_host.remove(&known.host);
            }
        }
        Some(known.value)
    }

    /// A pod by identity.
    pub fn get(&self, id: &str) -> Option<&T> {
        self.pods.get(id).map(|k| &k.value)
    }

    /// A pod by identity, mutably.
    pub fn get_mut(&mut self, id: &str) -> Option<&mut T> {
        self.pods.get_mut(id).map(|k| &mut k.value)
    }

    /// The pod's host (IP in canonical form).
    pub fn host(&self, id: &str) -> Option<&str> {
        self.pods.get(id).map(|k| k.host.as_str())
    }

    /// Identities of the known pods.
    pub fn ids(&self) -> impl Iterator<Item = &String> {
        self.pods.keys()
    }

    /// Number of known pods.
    pub fn len(&self) -> usize {
        self.pods.len()
    }

    /// True when no pod is known.
    pub fn is_empty(&self) -> bool {
        self.pods.is_empty()
    }

    /// The known pod a topic's pod segment names, for a message on the bound socket.
    pub fn resolve(&self, segment: &str) -> Result<(&str, &T), RejectReason> {
        let (id, known) = match self.pods.get_key_value(segment) {
            Some(found) => found,
            None if is_bare_host(segment) => match self.by_host.get(&host_of(segment)) {
                Some(ids) if ids.len() == 1 => self
                    .pods
                    .get_key_value(&ids[0])
                    .ok_or(RejectReason::UnknownPod)?,
                Some(ids) if ids.len() > 1 => return Err(RejectReason::AmbiguousPod),
                _ => return Err(RejectReason::UnknownPod),
            },
            None => return Err(RejectReason::UnknownPod),
        };
        if known.dialled {
            return Err(RejectReason::DialledPod);
        }
        Ok((id.as_str(), &known.value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_in_every_spelling() {
        assert_eq!(host_of("10.0.0.7:8000"), "10.0.0.7");
        assert_eq!(host_of("10.0.0.7"), "10.0.0.7");
        assert_eq!(host_of("[fd00::1]:8000"), "fd00::1");
        assert_eq!(host_of("fd00:0::1"), "fd00::1");
        assert_eq!(host_of("pod-a.ns:8000"), "pod-a.ns");
        assert_eq!(host_of("pod-a"), "pod-a");
        assert_eq!(host_of(""), "");
    }

    #[test]
    fn topics_resolve_to_known_pods_only() {
        let mut pods = KnownPods::default();
        pods.insert("10.0.0.7:8000", false, 'a');
        pods.insert("10.0.0.8:8000", false, 'b');
        pods.insert("10.0.0.8:8001", false, 'c');
        pods.insert("10.0.0.9:8000", true, 'd');
        pods.insert("[fd00::1]:8000", false, 'e');
        assert_eq!(pods.resolve("10.0.0.7:8000"), Ok(("10.0.0.7:8000", &'a')));
        // llm-d's `kv@<ip>@<model>`: matched by IP when one pod has it.
        assert_eq!(pods.resolve("10.0.0.7"), Ok(("10.0.0.7:8000", &'a')));
        assert_eq!(pods.resolve("fd00::1"), Ok(("[fd00::1]:8000", &'e')));
        assert_eq!(pods.resolve("10.0.0.8"), Err(RejectReason::AmbiguousPod));
        assert_eq!(pods.resolve("10.0.0.8:8001"), Ok(("10.0.0.8:8001", &'c')));
        // Another port on a known IP is not that pod.
        assert_eq!(pods.resolve("10.0.0.7:9999"), Err(RejectReason::UnknownPod));
        assert_eq!(pods.resolve("10.6.6.6"), Err(RejectReason::UnknownPod));
        assert_eq!(pods.resolve("pod-x"), Err(RejectReason::UnknownPod));
        assert_eq!(pods.resolve("10.0.0.9:8000"), Err(RejectReason::DialledPod));
        assert_eq!(pods.resolve("10.0.0.9"), Err(RejectReason::DialledPod));
        pods.remove("10.0.0.8:8001");
        assert_eq!(pods.resolve("10.0.0.8"), Ok(("10.0.0.8:8000", &'b')));
        pods.remove("10.0.0.7:8000");
        assert_eq!(pods.resolve("10.0.0.7"), Err(RejectReason::UnknownPod));
        assert_eq!(pods.len(), 3);
    }
}
