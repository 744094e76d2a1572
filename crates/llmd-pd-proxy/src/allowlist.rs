//! Which prefill targets the proxy may call. A target from `x-prefiller-host-port` is reduced
//! to its host and checked against exact hosts/IPs and CIDR ranges; nothing else is fetched.

use std::net::IpAddr;

use ipnet::IpNet;

/// The allowlist.
#[derive(Debug, Clone, Default)]
pub struct Allowlist {
    any: bool,
    nets: Vec<IpNet>,
    hosts: Vec<String>,
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

    /// True when nothing at all is allowed.
    pub fn is_empty(&self) -> bool {
        !self.any && self.nets.is_empty() && self.hosts.is_empty()
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
            };
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
        assert_eq!(
            Allowlist::new(&[], true).unwrap().check("1.2.3.4:5"),
            Ok("1.2.3.4:5".into())
        );
    }
}
