//! Following the `InferenceObjective`s of a namespace by watch: llm-d's
//! (`llm-d.ai/v1alpha2`) and GIE's (`inference.networking.x-k8s.io/v1alpha2`). Each object
//! names an objective (`metadata.name`), its `spec.priority` (unset: 0) and the pool it
//! belongs to (`spec.poolRef.name`).
//!
//! [`watch_objectives`] returns the receiving side of a `tokio::sync::watch` channel and the
//! future that does the work (spawn it); that task runs one [`kube::runtime::watcher`] per API
//! group (LIST, then WATCH from the list's version, resumed or relisted as the pool watch is)
//! and publishes the merged set after every change. A group whose CRD is not installed answers
//! 404: that watcher backs off and retries (logged once, counted in
//! `llmd_kubernetes_watch_errors_total{resource="inferenceobjectives"}`), and the other group's
//! objectives are still published. An objective defined in both groups takes llm-d's.

use std::collections::HashMap;

use futures::StreamExt;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use serde_json::Value;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The API groups and versions followed, the first winning a name both define.
pub const OBJECTIVE_APIS: &[(&str, &str)] = &[
    ("llm-d.ai", "v1alpha2"),
    ("inference.networking.x-k8s.io", "v1alpha2"),
];

/// One `InferenceObjective`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Objective {
    /// `metadata.name`.
    pub name: String,
    /// `spec.priority` (0 when unset).
    pub priority: i32,
    /// `spec.poolRef.name`, when set.
    pub pool: Option<String>,
}

impl Objective {
    /// From an object; `Err` with the reason when `spec.priority` is not a 32-bit integer.
    pub fn parse(obj: &DynamicObject) -> Result<Self, String> {
        let name = obj.metadata.name.clone().unwrap_or_default();
        let spec = obj.data.get("spec");
        let priority = match spec.and_then(|s| s.get("priority")) {
            None | Some(Value::Null) => 0,
            Some(v) => v
                .as_i64()
                .and_then(|p| i32::try_from(p).ok())
                .ok_or_else(|| {
                    format!("InferenceObjective {name}: spec.priority {v} is not an int32")
                })?,
        };
        let pool = spec
            .and_then(|s| s.get("poolRef"))
            .and_then(|r| r.get("name"))
            .and_then(Value::as_str)
            .map(str::to_owned);
        Ok(Self {
            name,
            priority,
            pool,
        })
    }
}

/// What the watch publishes: the objectives (sorted by name) once a group has been listed.
pub type ObjectivesView = Option<Vec<Objective>>;

fn resource(group: &str, version: &str) -> ApiResource {
    ApiResource {
        group: group.to_owned(),
        version: version.to_owned(),
        api_version: format!("{group}/{version}"),
        kind: "InferenceObjective".to_owned(),
        plural: "inferenceobjectives".to_owned(),
    }
}

/// Follows the namespace's objectives until `cancel` (or until every receiver is dropped).
pub fn watch_objectives(
    client: kube::Client,
    namespace: &str,
    cancel: CancellationToken,
) -> (
    watch::Receiver<ObjectivesView>,
    impl Future<Output = ()> + Send + 'static,
) {
    let (tx, rx) = watch::channel(None);
    let apis: Vec<Api<DynamicObject>> = OBJECTIVE_APIS
        .iter()
        .map(|(g, v)| Api::namespaced_with(client.clone(), namespace, &resource(g, v)))
        .collect();
    let namespace = namespace.to_owned();
    (rx, run(apis, namespace, tx, cancel))
}

#[derive(Debug, Default)]
struct Group {
    listed: bool,
    objects: HashMap<String, Objective>,
    listing: Option<HashMap<String, Objective>>,
    error: Option<String>,
}

async fn run(
    apis: Vec<Api<DynamicObject>>,
    namespace: String,
    tx: watch::Sender<ObjectivesView>,
    cancel: CancellationToken,
) {
    let streams = apis.into_iter().enumerate().map(|(i, api)| {
        watcher::watcher(api, watcher::Config::default())
            .default_backoff()
            .map(move |e| (i, e))
            .boxed()
    });
    let mut events = futures::stream::select_all(streams);
    let mut groups: Vec<Group> = OBJECTIVE_APIS.iter().map(|_| Group::default()).collect();
    loop {
        let (i, item) = tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tx.closed() => return,
            item = events.next() => match item {
                Some(item) => item,
                None => return,
            },
        };
        let g = &mut groups[i];
        let api = OBJECTIVE_APIS[i].0;
        match item {
            Ok(event) => {
                if g.error.take().is_some() {
                    tracing::info!(namespace, api, "InferenceObjective watch recovered");
                }
                let parse = |o: &DynamicObject| match Objective::parse(o) {
                    Ok(obj) => Some(obj),
                    Err(why) => {
                        count("invalid_spec");
                        tracing::warn!(namespace, api, error = why, "InferenceObjective ignored");
                        None
                    }
                };
                match event {
                    Event::Init => g.listing = Some(HashMap::new()),
                    Event::InitApply(o) => {
                        if let Some(obj) = parse(&o) {
                            g.listing
                                .get_or_insert_with(HashMap::new)
                                .insert(obj.name.clone(), obj);
                        }
                    }
                    Event::InitDone => {
                        g.objects = g.listing.take().unwrap_or_default();
                        g.listed = true;
                    }
                    Event::Apply(o) => match parse(&o) {
                        Some(obj) => {
                            g.objects.insert(obj.name.clone(), obj);
                        }
                        None => {
                            g.objects
                                .remove(o.metadata.name.as_deref().unwrap_or_default());
                        }
                    },
                    Event::Delete(o) => {
                        g.objects
                            .remove(o.metadata.name.as_deref().unwrap_or_default());
                    }
                }
            }
            Err(e) => {
                count("api");
                if g.error.is_none() {
                    tracing::warn!(namespace, api, error = %e, "InferenceObjective watch failed (is the CRD installed?); retrying");
                }
                g.error = Some(e.to_string());
                continue;
            }
        }
        if !groups.iter().any(|g| g.listed) {
            continue;
        }
        let mut merged: HashMap<&str, &Objective> = HashMap::new();
        for g in groups.iter().rev() {
            for (name, obj) in &g.objects {
                merged.insert(name, obj);
            }
        }
        let mut all: Vec<Objective> = merged.into_values().cloned().collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        tx.send_if_modified(|v| {
            if v.as_ref() == Some(&all) {
                false
            } else {
                *v = Some(all);
                true
            }
        });
    }
}

fn count(reason: &'static str) {
    use llmd_telemetry::names::{kubernetes::WATCH_ERRORS, labels};
    metrics::counter!(WATCH_ERRORS.name, labels::RESOURCE => "inferenceobjectives", labels::REASON => reason)
        .increment(1);
}
