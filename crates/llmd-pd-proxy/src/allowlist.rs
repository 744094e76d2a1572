//! Which prefill targets the proxy may call. A target from `x-prefiller-host-port` is reduced
//! to its host and checked against exact hosts/IPs and CIDR ranges, and (in Kubernetes) the
//! IPs and names of the InferencePool's pods, as llm-d's SSRF protection does (ports are not
//! checked); nothing else is fetched.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use parking_lot::RwLock;

/// The allowlist.
#[derive(Debug, Clone, Default)]
pub struct Allowlist {
    any: bool,
    nets: Vec<IpNet>,
    hosts: Vec<String>,
    pool: Option<Arc<RwLock<PoolHosts>>>,
}

/// The hosts of an InferencePool's pods, replaced on every listing (see [`crate::pool`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolHosts {
    /// Pod IPs.
    pub ips: HashSet<IpAddr>,
    /// Pod names, lowercase.
    pub names: HashSet<String>,
}

impl PoolHosts {
    fn allows(&self, host: &str) -> bool {
        match host.parse::<IpAddr>() {
            Ok(ip) => self.ips.contains(&ip),
            Err(_) => self.names.contains(&host.to_ascii_lowercase()),
        }
    }
}

/// A target that cannot be parsed or is not allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// Not `host:port`.
    #[error("prefill target {0:?} is not host:port")]
    Malformed(String),
    /// Not in the allowlist.
    #[error("prefill target {0:?} is not allowed")]
    Denied(String),
}

impl Allowlist {
    /// From entries (IPs, CIDRs, host names); `any` allows every target (development only).
    pub fn new(entries: &[String], any: bool) -> Result<Self, String> {
        let mut list = Self {
            any,
            ..Default::default()
        };
        for e in entries.iter().flat_map(|e| e.split(',')).map(str::trim) {
            if e.is_empty() {
                continue;
            }
            if let Ok(net) = e.parse::<IpNet>() {
                list.nets.push(net);
            } else if let Ok(ip) = e.parse::<IpAddr>() {
                list.nets.push(IpNet::from(ip));
            } else if e
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
            {
                list.hosts.push(e.to_ascii_lowercase());
            } else {
                return Err(format!("invalid allowlist entry {e:?}"));
            }
        }
        Ok(list)
    }

    /// Also allows the hosts of an InferencePool's pods; returns the set a follower keeps
    /// current (empty until the first listing).
    pub fn follow_pool(&mut self) -> Arc<RwLock<PoolHosts>> {
        self.pool.get_or_insert_with(Default::default).clone()
    }

    /// True when nothing at all is allowed (nor ever will be: no pool is followed).
    pub fn is_empty(&self) -> bool {
        !self.any && self.nets.is_empty() && self.hosts.is_empty() && self.pool.is_none()
    }

    /// Parses the first entry of an `x-prefiller-host-port` value and checks it; returns
    /// `host:port` to dial.
    pub fn check(&self, header: &str) -> Result<String, TargetError> {
        let first = header.split(',').next().unwrap_or("").trim();
        let target = first
            .strip_prefix("http://")
            .unwrap_or(first)
            .trim_end_matches('/');
        let malformed = || TargetError::Malformed(target.to_owned());
        let (host, port) = target.rsplit_once(':').ok_or_else(malformed)?;
        port.parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(malformed)?;
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        if bare.is_empty() || target.contains(['/', '@', '?', '#', ' ']) {
            return Err(malformed());
        }
        let allowed = self.any
            || match bare.parse::<IpAddr>() {
                Ok(ip) => self.nets.iter().any(|n| n.contains(&ip)),
                Err(_) => self.hosts.iter().any(|h| h.eq_ignore_ascii_case(bare)),
            }
            || self.pool.as_ref().is_some_and(|p| p.read().allows(bare));
        if !allowed {
            return Err(TargetError::Denied(target.to_owned()));
        }
        if bare.contains(':') {
            Ok(format!("[{bare}]:{port}"))
        } else {
            Ok(format!("{bare}:{port}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_parsed_and_checked() {
        let a =
            Allowlist::new(&["10.0.0.0/24, prefill-0".into(), "fd00::1".into()], false).unwrap();
        assert_eq!(a.check("10.0.0.7:8000"), Ok("10.0.0.7:8000".into()));
        assert_eq!(
            a.check(" http://10.0.0.7:8000/ , 10.9.9.9:1"),
            Ok("10.0.0.7:8000".into())
        );
        assert_eq!(a.check("[fd00::1]:8000"), Ok("[fd00::1]:8000".into()));
        assert_eq!(a.check("PREFILL-0:8000"), Ok("PREFILL-0:8000".into()));
        assert!(matches!(
            a.check("10.0.1.7:8000"),
            Err(TargetError::Denied(_))
        ));
        assert!(matches!(
            a.check("evil.com:80"),
            Err(TargetError::Denied(_))
        ));
        for bad in [
            "10.0.0.7",
            "10.0.0.7:0",
            "10.0.0.7:x",
            "user@10.0.0.7:80",
            "10.0.0.7:80/x",
            ":80",
            "",
        ] {
            assert!(
                matches!(a.check(bad), Err(TargetError::Malformed(_))),
                "{bad}"
            );
        }
        assert!(Allowlist::new(&["a b".into()], false).is_err());
        assert!(Allowlist::new(&[], false).unwrap().is_empty());

        // The pool's pods, by IP (any spelling) or name; ports are not checked.
        let mut b = Allowlist::new(&[], false).unwrap();
        let hosts = b.follow_pool();
        assert!(!b.is_empty());
        assert!(matches!(
            b.check("10.1.0.2:8000"),
            Err(TargetError::Denied(_))
        ));
        *hosts.write() = PoolHosts {
            ips: ["10.1.0.2".parse().unwrap(), "fd00::2".parse().unwrap()].into(),
            names: ["prefill-0".into()].into(),
        };
        assert!(b.check("10.1.0.2:9999").is_ok());
        assert!(b.check("[fd00:0::2]:8000").is_ok());
        assert!(b.check("Prefill-0:8000").is_ok());
        assert!(matches!(
            b.check("10.1.0.3:8000"),
            Err(TargetError::Denied(_))
        ));
        assert_eq!(
            Allowlist::new(&[], true).unwrap().check("1.2.3.4:5"),
            Ok("1.2.3.4:5".into())
        );
    }
}
