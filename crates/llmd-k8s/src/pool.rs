//! The `InferencePool` object (`inference.networking.k8s.io/v1`): where it is and what its spec
//! says.
//!
//! Only the fields discovery needs are read, from the object as JSON (no generated type: GIE's
//! CRD is not in `k8s-openapi`, and v1 and the older v1alpha2 differ in two places):
//! `spec.selector.matchLabels` (v1alpha2: a plain label map) and `spec.targetPorts[].number`
//! (v1alpha2: `spec.targetPortNumber`). GIE v1 allows up to eight target ports, unique; each is
//! one endpoint per pod, its index the data-parallel rank.

use std::collections::BTreeMap;

use kube::api::ApiResource;
use serde_json::Value;

/// The InferencePool API group of GIE v1.
pub const DEFAULT_GROUP: &str = "inference.networking.k8s.io";

/// GIE v1's upper bound on `spec.targetPorts`.
pub const MAX_TARGET_PORTS: usize = 8;

/// Which `InferencePool` to follow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolRef {
    /// Its name.
    pub name: String,
    /// Its namespace (its pods are in the same one).
    pub namespace: String,
    /// Its API group (GIE: `inference.networking.k8s.io`); the version is `v1`.
    pub group: String,
}

impl PoolRef {
    /// `namespace/name` in [`DEFAULT_GROUP`].
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            namespace: namespace.into(),
            group: DEFAULT_GROUP.to_owned(),
        }
    }

    /// The API resource (`<group>/v1`, kind `InferencePool`, plural `inferencepools`).
    pub fn resource(&self) -> ApiResource {
        ApiResource {
            group: self.group.clone(),
            version: "v1".into(),
            api_version: format!("{}/v1", self.group),
            kind: "InferencePool".into(),
            plural: "inferencepools".into(),
        }
    }
}

impl std::fmt::Display for PoolRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// An `InferencePool` whose spec cannot be used; the message names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("InferencePool {pool}: {reason}")]
pub struct InvalidPool {
    /// The pool's name.
    pub pool: String,
    /// What is wrong, naming the field.
    pub reason: String,
}

/// What the pool object says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSpec {
    /// `spec.selector.matchLabels`: a pod belongs to the pool when it has all of them.
    pub selector: BTreeMap<String, String>,
    /// `spec.targetPorts[].number`, in order: index `i` is data-parallel rank `i`.
    pub target_ports: Vec<u16>,
}

impl PoolSpec {
    /// The selector as a label-selector string (`k=v,k2=v2`, sorted), as list and watch take it.
    pub fn label_selector(&self) -> String {
        self.selector
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Reads `spec.selector` and `spec.targetPorts` of a pool object (v1; v1alpha2's plain
    /// selector map and `targetPortNumber` too).
    pub fn parse(name: &str, obj: &Value) -> Result<Self, InvalidPool> {
        let bad = |why: &str| InvalidPool {
            pool: name.to_owned(),
            reason: why.to_owned(),
        };
        let spec = obj.get("spec").ok_or_else(|| bad("no spec"))?;
        let sel = spec
            .get("selector")
            .ok_or_else(|| bad("no spec.selector"))?;
        // v1: {matchLabels: {...}}; v1alpha2: a plain label map.
        let labels = sel.get("matchLabels").unwrap_or(sel);
        let selector: BTreeMap<String, String> = labels
            .as_object()
            .ok_or_else(|| bad("spec.selector.matchLabels is not a label map"))?
            .iter()
            .map(|(k, v)| {
                v.as_str()
                    .map(|v| (k.clone(), v.to_owned()))
                    .ok_or_else(|| bad("a spec.selector.matchLabels value is not a string"))
            })
            .collect::<Result<_, _>>()?;
        if selector.is_empty() {
            return Err(bad(
                "empty spec.selector.matchLabels (it would select every pod)",
            ));
        }
        let port = |v: &Value| {
            v.as_u64()
                .and_then(|p| u16::try_from(p).ok())
                .filter(|p| *p != 0)
        };
        let target_ports = match spec.get("targetPorts") {
            Some(list) => {
                let list = list
                    .as_array()
                    .ok_or_else(|| bad("spec.targetPorts is not a list"))?;
                list.iter()
                    .map(|p| p.get("number").and_then(port))
                    .collect::<Option<Vec<u16>>>()
                    .ok_or_else(|| bad("a spec.targetPorts[].number is not a port (1-65535)"))?
            }
            None => spec
                .get("targetPortNumber")
                .and_then(port)
                .map(|p| vec![p])
                .ok_or_else(|| bad("no spec.targetPorts"))?,
        };
        if target_ports.is_empty() {
            return Err(bad("spec.targetPorts is empty"));
        }
        if target_ports.len() > MAX_TARGET_PORTS {
            return Err(bad("spec.targetPorts has more than 8 entries"));
        }
        let mut seen = std::collections::HashSet::new();
        if !target_ports.iter().all(|p| seen.insert(*p)) {
            return Err(bad("spec.targetPorts numbers are not unique"));
        }
        Ok(Self {
            selector,
            target_ports,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

    use serde_json::json;

    use super::*;

    #[test]
    fn v1_and_v1alpha2_shapes() {
        let v1 = json!({"spec": {"selector": {"matchLabels": {"a": "b", "c": "d"}},
                                 "targetPorts": [{"number": 8200}, {"number": 8201}]}});
        let s = PoolSpec::parse("p", &v1).unwrap();
        assert_eq!(s.selector["a"], "b");
        assert_eq!(s.target_ports, vec![8200, 8201]);
        assert_eq!(s.label_selector(), "a=b,c=d");
        let alpha = json!({"spec": {"selector": {"a": "b"}, "targetPortNumber": 8000}});
        assert_eq!(
            PoolSpec::parse("p", &alpha).unwrap().target_ports,
            vec![8000]
        );
    }

    #[test]
    fn unusable_specs_name_the_field() {
        let ports = |n: usize| {
            (0..n)
                .map(|i| json!({"number": 8000 + i}))
                .collect::<Vec<_>>()
        };
        for (bad, field) in [
            (json!({}), "spec"),
            (json!({"spec": {"targetPorts": ports(1)}}), "spec.selector"),
            (
                json!({"spec": {"selector": {"matchLabels": {}}, "targetPorts": ports(1)}}),
                "matchLabels",
            ),
            (
                json!({"spec": {"selector": {"matchLabels": {"a": 1}}, "targetPorts": ports(1)}}),
                "matchLabels",
            ),
            (
                json!({"spec": {"selector": {"matchLabels": {"a": "b"}}, "targetPorts": [{"number": 70000}]}}),
                "targetPorts[].number",
            ),
            (
                json!({"spec": {"selector": {"matchLabels": {"a": "b"}}, "targetPorts": [{"number": 0}]}}),
                "targetPorts[].number",
            ),
            (
                json!({"spec": {"selector": {"matchLabels": {"a": "b"}}}}),
                "spec.targetPorts",
            ),
            (
                json!({"spec": {"selector": {"matchLabels": {"a": "b"}}, "targetPorts": []}}),
                "spec.targetPorts",
            ),
            (
                json!({"spec": {"selector": {"matchLabels": {"a": "b"}}, "targetPorts": ports(9)}}),
                "more than 8",
            ),
            (
                json!({"spec": {"selector": {"matchLabels": {"a": "b"}}, "targetPorts": [{"number": 1}, {"number": 1}]}}),
                "unique",
            ),
        ] {
            let err = PoolSpec::parse("p", &bad).unwrap_err().to_string();
            assert!(err.contains(field), "{bad}: {err}");
        }
    }
}
