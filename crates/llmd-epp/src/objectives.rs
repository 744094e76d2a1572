//! Priority and fairness, as GIE and llm-d define them: a request names its
//! `InferenceObjective` in `x-llm-d-inference-objective` (or the older
//! `x-gateway-inference-objective`); the objective's `spec.priority` is its priority (higher
//! is more important); unset or unknown is 0. Below 0 a request is *sheddable*: it is refused
//! with 429 while the pool is saturated. Its fairness id is `x-llm-d-inference-fairness-id`
//! (or `x-gateway-inference-fairness-id`), else `default-flow`.
//!
//! Objectives come from the cluster (with `--pool-name`: the pool namespace's
//! `InferenceObjective`s whose `spec.poolRef.name` is the pool, followed by watch, llm-d's and
//! GIE's API groups; [`Objectives::set_cluster`]), from the config's `inferenceObjectives` and
//! from `--inference-objectives-file`, a YAML file of `InferenceObjective` manifests as applied
//! to a cluster. The cluster's definition of a name wins. A request that names no objective
//! takes the one named like its model, if any (GIE's older `InferenceModel` was keyed by model).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use parking_lot::RwLock;

use serde::Deserialize;

use crate::config::{ConfigError, ObjectiveSpec};

/// The objective header, current name first, then the deprecated one.
pub const OBJECTIVE_HEADERS: &[&str] = &[
    "x-llm-d-inference-objective",
    "x-gateway-inference-objective",
];
/// The fairness header, current name first, then the deprecated one.
pub const FAIRNESS_HEADERS: &[&str] = &[
    "x-llm-d-inference-fairness-id",
    "x-gateway-inference-fairness-id",
];
/// The fairness id of a request without one.
pub const DEFAULT_FAIRNESS_ID: &str = "default-flow";

/// The API groups an `InferenceObjective` manifest may use.
const OBJECTIVE_API_VERSIONS: &[&str] = &[
    "llm-d.ai/v1alpha2",
    "inference.networking.x-k8s.io/v1alpha2",
];

/// What a request is, for admission and for metric labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestClass {
    /// Its objective's priority (0 when it names none or an unknown one).
    pub priority: i32,
    /// Its fairness id.
    pub fairness_id: String,
}

impl Default for RequestClass {
    fn default() -> Self {
        Self {
            priority: 0,
            fairness_id: DEFAULT_FAIRNESS_ID.into(),
        }
    }
}

impl RequestClass {
    /// GIE: a request is sheddable when its priority is below 0.
    pub fn sheddable(&self) -> bool {
        self.priority < 0
    }
}

/// The known objectives: name → priority.
#[derive(Debug, Clone, Default)]
pub struct Objectives {
    by_name: HashMap<String, i32>,
    /// The cluster's (the watch replaces it; shared by clones).
    cluster: Arc<RwLock<HashMap<String, i32>>>,
}

fn header<'a>(headers: &'a [(String, String)], names: &[&str]) -> Option<&'a str> {
    names.iter().find_map(|n| {
        headers
            .iter()
            .find(|(k, v)| k == n && !v.trim().is_empty())
            .map(|(_, v)| v.trim())
    })
}

impl Objectives {
    /// From specs (a later spec of the same name is an error).
    pub fn new(specs: &[ObjectiveSpec]) -> Result<Self, ConfigError> {
        let mut by_name = HashMap::new();
        for s in specs {
            if by_name.insert(s.name.clone(), s.priority).is_some() {
                return Err(ConfigError::Invalid(format!(
                    "InferenceObjective {:?} is defined twice",
                    s.name
                )));
            }
        }
        Ok(Self {
            by_name,
            cluster: Arc::default(),
        })
    }

    /// Replaces the cluster's objectives (name → priority), as the watch sees them now.
    pub fn set_cluster(&self, objectives: impl IntoIterator<Item = (String, i32)>) {
        *self.cluster.write() = objectives.into_iter().collect();
    }

    /// An objective's priority: the cluster's, else the configured one.
    pub fn priority(&self, name: &str) -> Option<i32> {
        self.cluster
            .read()
            .get(name)
            .copied()
            .or_else(|| self.by_name.get(name).copied())
    }

    /// The configured objectives (sorted by name; not the cluster's).
    pub fn specs(&self) -> Vec<ObjectiveSpec> {
        let mut v: Vec<ObjectiveSpec> = self
            .by_name
            .iter()
            .map(|(name, priority)| ObjectiveSpec {
                name: name.clone(),
                priority: *priority,
            })
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// How many are known.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// True when none is known.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// The class of a request with these (lower-cased) headers and model.
    pub fn classify(&self, headers: &[(String, String)], model: Option<&str>) -> RequestClass {
        let priority = match header(headers, OBJECTIVE_HEADERS) {
            Some(name) => self.priority(name).unwrap_or(0),
            None => model.and_then(|m| self.priority(m)).unwrap_or(0),
        };
        let fairness_id = header(headers, FAIRNESS_HEADERS)
            .unwrap_or(DEFAULT_FAIRNESS_ID)
            .to_owned();
        RequestClass {
            priority,
            fairness_id,
        }
    }

    /// Reads a YAML file of `InferenceObjective` manifests (`---`-separated, as `kubectl
    /// apply -f` takes them).
    pub fn load_manifests(path: &Path) -> Result<Vec<ObjectiveSpec>, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse_manifests(&text)
            .map_err(|e| ConfigError::Invalid(format!("{}: {e}", path.display())))
    }

    /// Parses `InferenceObjective` manifests.
    pub fn parse_manifests(text: &str) -> Result<Vec<ObjectiveSpec>, String> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Manifest {
            api_version: String,
            kind: String,
            metadata: Metadata,
            #[serde(default)]
            spec: Spec,
        }
        #[derive(Deserialize)]
        struct Metadata {
            name: String,
        }
        #[derive(Deserialize, Default)]
        #[serde(rename_all = "camelCase")]
        struct Spec {
            #[serde(default)]
            priority: Option<i32>,
        }
        let mut out = Vec::new();
        for (i, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
            let v = serde_yaml_ng::Value::deserialize(doc)
                .map_err(|e| format!("document {}: {e}", i + 1))?;
            if v.is_null() {
                continue;
            }
            let m: Manifest =
                serde_yaml_ng::from_value(v).map_err(|e| format!("document {}: {e}", i + 1))?;
            if m.kind != "InferenceObjective" || !OBJECTIVE_API_VERSIONS.contains(&&*m.api_version)
            {
                return Err(format!(
                    "document {}: {} {} is not an InferenceObjective ({})",
                    i + 1,
                    m.api_version,
                    m.kind,
                    OBJECTIVE_API_VERSIONS.join(" or ")
                ));
            }
            out.push(ObjectiveSpec {
                name: m.metadata.name,
                priority: m.spec.priority.unwrap_or(0),
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn priority_from_the_objective_header_then_the_model() {
        let o = Objectives::new(&[
            ObjectiveSpec {
                name: "batch".into(),
                priority: -1,
            },
            ObjectiveSpec {
                name: "m".into(),
                priority: 5,
            },
        ])
        .unwrap();
        let c = o.classify(&h(&[("x-gateway-inference-objective", "batch")]), Some("m"));
        assert_eq!(c.priority, -1);
        assert!(c.sheddable());
        assert_eq!(c.fairness_id, "default-flow");
        // The current header wins over the deprecated one.
        let c = o.classify(
            &h(&[
                ("x-gateway-inference-objective", "batch"),
                ("x-llm-d-inference-objective", "m"),
                ("x-gateway-inference-fairness-id", "tenant-a"),
            ]),
            None,
        );
        assert_eq!((c.priority, c.fairness_id.as_str()), (5, "tenant-a"));
        assert_eq!(o.classify(&[], Some("m")).priority, 5);
        // Unknown objective: 0, even if the model names one.
        assert_eq!(
            o.classify(&h(&[("x-llm-d-inference-objective", "nope")]), Some("m"))
                .priority,
            0
        );
        assert_eq!(o.classify(&[], None), RequestClass::default());
        // The cluster's definition wins, and follows the watch.
        let shared = o.clone();
        shared.set_cluster([("batch".to_owned(), 7), ("new".to_owned(), -3)]);
        let c = o.classify(&h(&[("x-llm-d-inference-objective", "batch")]), None);
        assert_eq!(c.priority, 7);
        assert_eq!(
            o.classify(&h(&[("x-llm-d-inference-objective", "new")]), None)
                .priority,
            -3
        );
        shared.set_cluster([]);
        assert_eq!(
            o.classify(&h(&[("x-llm-d-inference-objective", "batch")]), None)
                .priority,
            -1
        );
    }

    #[test]
    fn manifests_as_applied_to_a_cluster() {
        let specs = Objectives::parse_manifests(
            "apiVersion: llm-d.ai/v1alpha2\nkind: InferenceObjective\nmetadata: {name: critical, namespace: ai}\nspec: {priority: 100, poolRef: {name: p}}\n---\napiVersion: inference.networking.x-k8s.io/v1alpha2\nkind: InferenceObjective\nmetadata: {name: batch}\nspec: {priority: -10}\n---\napiVersion: llm-d.ai/v1alpha2\nkind: InferenceObjective\nmetadata: {name: plain}\n",
        )
        .unwrap();
        assert_eq!(
            specs
                .iter()
                .map(|s| (s.name.as_str(), s.priority))
                .collect::<Vec<_>>(),
            vec![("critical", 100), ("batch", -10), ("plain", 0)]
        );
        let e =
            Objectives::parse_manifests("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n")
                .unwrap_err();
        assert!(e.contains("not an InferenceObjective"), "{e}");
    }
}
