//! Test support (feature `testing`): a fake Kubernetes API server for one `InferencePool` and
//! its pods that answers the way the real one does, so discovery is tested through
//! `kube::Client` without a cluster.
//!
//! It serves, for `inference.networking.k8s.io/v1` `inferencepools`, core `v1` `pods` and
//! `llm-d.ai/v1alpha2` `inferenceobjectives` (other groups' objectives: 404, as a cluster
//! without that CRD answers):
//!
//! - **GET** of the pool by name;
//! - **LIST** of a namespace's collection, with `labelSelector` (`k=v`, `k==v`, `k!=v`, `k`,
//!   `!k`) and `fieldSelector` (`metadata.name`, `metadata.namespace`), answering a
//!   `…List` with `metadata.resourceVersion`;
//! - **WATCH** (`?watch=true`): a chunked stream of JSON lines `{"type": ADDED | MODIFIED |
//!   DELETED | BOOKMARK | ERROR, "object": …}`. From `resourceVersion=N` it replays every change
//!   after N, then streams new ones; without one (or `0`) it starts with an `ADDED` per object.
//!   Selectors apply to both states of a change, as the API server's watch cache does: an
//!   object that starts matching is `ADDED`, one that stops matching `DELETED`. A version older
//!   than the compacted history gets one `ERROR` event with a 410 `Expired` status. Bookmarks
//!   (`allowWatchBookmarks=true`) are sent when a test calls [`FakeKube::bookmark`];
//!   `timeoutSeconds` ends the stream cleanly.
//!
//! Every object carries `metadata.resourceVersion`, one global counter as etcd's revision is.
//! Tests change objects with [`FakeKube::edit`] (the fake turns the difference into events),
//! break watches with [`FakeKube::drop_watches`] (connections cut mid-stream) or
//! [`FakeKube::gone`] (cut, and history compacted: resuming gets 410), make every call fail
//! with [`FakeKube::set_fail`], and read what was asked with [`FakeKube::requests`].

mod watch;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use parking_lot::Mutex;
use serde_json::{Value, json};

use self::watch::Filter;

/// The namespace of the objects the helpers make.
pub const NAMESPACE: &str = "ai";
/// The pool name [`pool`] gives.
pub const POOL: &str = "llama";
/// The InferencePool API group and version the fake serves.
const POOL_API: (&str, &str) = ("inference.networking.k8s.io", "v1");
/// The InferenceObjective API group and version the fake serves.
pub const OBJECTIVE_API: (&str, &str) = ("llm-d.ai", "v1alpha2");

/// The objects the fake holds.
#[derive(Debug, Clone, Default)]
pub struct Objects {
    /// The `InferencePool` object; `Value::Null` when there is none.
    pub pool: Value,
    /// Pod objects (any namespace; requests see their own).
    pub pods: Vec<Value>,
    /// `InferenceObjective` objects (any namespace).
    pub objectives: Vec<Value>,
}

/// The resources served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// `inferencepools`.
    Pool,
    /// `pods`.
    Pod,
    /// `inferenceobjectives`.
    Objective,
}

/// One LIST or WATCH request as received (GETs of the pool are not recorded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Which collection.
    pub kind: Kind,
    /// `?watch=true`.
    pub watch: bool,
    /// `resourceVersion`, if given.
    pub resource_version: Option<String>,
    /// `labelSelector`, if given.
    pub label_selector: Option<String>,
    /// `fieldSelector`, if given.
    pub field_selector: Option<String>,
}

/// A change of one object at one resource version.
#[derive(Debug, Clone)]
struct Change {
    rv: u64,
    kind: Kind,
    old: Option<Value>,
    new: Option<Value>,
}

#[derive(Debug, Default)]
struct Store {
    objects: Objects,
    /// The current resource version (the last change's).
    rv: u64,
    /// Watches from a version below this get 410 Gone.
    compacted: u64,
    log: Vec<Change>,
    fail: bool,
    requests: Vec<Request>,
    /// Open watches end abruptly when this changes.
    cut: u64,
    /// The resource version at the last cut: a cut watch sends nothing after it.
    cut_at: u64,
    /// Open watches that asked for bookmarks send one when this changes.
    bookmarks: u64,
}

/// A running fake API server (plain HTTP on 127.0.0.1).
#[derive(Debug, Clone)]
pub struct FakeKube {
    /// Its address.
    pub addr: SocketAddr,
    store: Arc<Mutex<Store>>,
    /// Bumped after every change of the store, to wake the watches.
    tick: Arc<tokio::sync::watch::Sender<u64>>,
}

#[derive(Debug, Clone)]
struct Shared {
    store: Arc<Mutex<Store>>,
    tick: Arc<tokio::sync::watch::Sender<u64>>,
}

impl FakeKube {
    /// Starts the server with this pool object (`Value::Null`: none) and pods.
    pub async fn start(pool: Value, pods: Vec<Value>) -> std::io::Result<Self> {
        let store = Arc::new(Mutex::new(Store::default()));
        let tick = Arc::new(tokio::sync::watch::channel(0).0);
        let shared = Shared {
            store: store.clone(),
            tick: tick.clone(),
        };
        let app = axum::Router::new()
            .route(
                "/apis/{group}/{version}/namespaces/{ns}/inferencepools/{name}",
                axum::routing::get(get_pool),
            )
            .route(
                "/apis/{group}/{version}/namespaces/{ns}/inferencepools",
                axum::routing::get(pools),
            )
            .route("/api/v1/namespaces/{ns}/pods", axum::routing::get(pods_of))
            .route(
                "/apis/{group}/{version}/namespaces/{ns}/inferenceobjectives",
                axum::routing::get(objectives_of),
            )
            .with_state(shared);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move { axum::serve(listener, app).await });
        let fake = Self { addr, store, tick };
        fake.edit(|o| {
            o.pool = pool;
            o.pods = pods;
        });
        Ok(fake)
    }

    /// A `kube::Client` talking to it.
    pub fn client(&self) -> Result<kube::Client, kube::Error> {
        let url = format!("http://{}", self.addr)
            .parse()
            .map_err(|e: http::uri::InvalidUri| kube::Error::Service(Box::new(e)))?;
        kube::Client::try_from(kube::Config::new(url))
    }

    /// Changes the objects; every object that differs afterwards (ignoring
    /// `metadata.resourceVersion`) gets a new resource version and an event for the watches.
    pub fn edit(&self, f: impl FnOnce(&mut Objects)) {
        {
            let mut s = self.store.lock();
            let mut next = s.objects.clone();
            f(&mut next);
            apply(&mut s, next);
        }
        self.wake();
    }

    /// A copy of the objects now (with their resource versions).
    pub fn objects(&self) -> Objects {
        self.store.lock().objects.clone()
    }

    /// Makes every request fail with 500 (`true`), cutting open watches, or serve again.
    pub fn set_fail(&self, fail: bool) {
        {
            let mut s = self.store.lock();
            s.fail = fail;
            if fail {
                s.cut += 1;
                s.cut_at = s.rv;
            }
        }
        self.wake();
    }

    /// Cuts every open watch mid-stream (the client resumes from the last version it saw).
    pub fn drop_watches(&self) {
        {
            let mut s = self.store.lock();
            s.cut += 1;
            s.cut_at = s.rv;
        }
        self.wake();
    }

    /// Cuts every open watch and compacts the history past every version handed out so far:
    /// resuming from any of them gets 410 Gone, and the client must list again.
    pub fn gone(&self) {
        {
            let mut s = self.store.lock();
            s.cut += 1;
            s.cut_at = s.rv;
            s.rv += 1;
            s.compacted = s.rv;
        }
        self.wake();
    }

    /// Sends a BOOKMARK at the current resource version on every open watch that allows them.
    pub fn bookmark(&self) {
        self.store.lock().bookmarks += 1;
        self.wake();
    }

    /// The current resource version.
    pub fn resource_version(&self) -> u64 {
        self.store.lock().rv
    }

    /// Every LIST and WATCH request so far.
    pub fn requests(&self) -> Vec<Request> {
        self.store.lock().requests.clone()
    }

    /// The label selectors of every pod LIST and WATCH so far.
    pub fn selectors(&self) -> Vec<String> {
        self.requests()
            .into_iter()
            .filter(|r| r.kind == Kind::Pod)
            .map(|r| r.label_selector.unwrap_or_default())
            .collect()
    }

    /// How many LISTs of `kind` were answered or refused so far.
    pub fn lists(&self, kind: Kind) -> usize {
        self.store
            .lock()
            .requests
            .iter()
            .filter(|r| r.kind == kind && !r.watch)
            .count()
    }

    fn wake(&self) {
        self.tick.send_modify(|t| *t += 1);
    }
}

/// The object without its resource version (to compare contents).
fn content(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("resourceVersion");
    }
    v
}

fn set_rv(v: &mut Value, rv: u64) {
    if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        m.insert("resourceVersion".into(), json!(rv.to_string()));
    }
}

fn key(v: &Value) -> (String, String) {
    let m = &v["metadata"];
    (
        m["namespace"].as_str().unwrap_or_default().to_owned(),
        m["name"].as_str().unwrap_or_default().to_owned(),
    )
}

/// Replaces the store's objects with `next`, logging a change per object that differs.
fn apply(s: &mut Store, mut next: Objects) {
    let old_pool = Some(s.objects.pool.clone()).filter(|p| !p.is_null());
    let new_pool = Some(next.pool.clone()).filter(|p| !p.is_null());
    match (&old_pool, &new_pool) {
        (Some(a), Some(b)) if content(a) == content(b) => next.pool = a.clone(),
        (None, None) => {}
        _ => {
            s.rv += 1;
            if let Some(p) = new_pool.as_ref() {
                let mut p = p.clone();
                set_rv(&mut p, s.rv);
                next.pool = p;
            }
            let rv = s.rv;
            s.log.push(Change {
                rv,
                kind: Kind::Pool,
                old: old_pool,
                new: Some(next.pool.clone()).filter(|p| !p.is_null()),
            });
        }
    }
    let pods = std::mem::take(&mut next.pods);
    next.pods = diff(s, Kind::Pod, &s.objects.pods.clone(), pods);
    let objectives = std::mem::take(&mut next.objectives);
    next.objectives = diff(
        s,
        Kind::Objective,
        &s.objects.objectives.clone(),
        objectives,
    );
    s.objects = next;
}

/// Logs a change per object of `new` that differs from `old` (by namespace and name), and one
/// per object gone; returns `new` with resource versions.
fn diff(s: &mut Store, kind: Kind, old: &[Value], mut new: Vec<Value>) -> Vec<Value> {
    let mut old: HashMap<(String, String), Value> =
        old.iter().map(|p| (key(p), p.clone())).collect();
    for obj in &mut new {
        let was = old.remove(&key(obj));
        match &was {
            Some(o) if content(o) == content(obj) => *obj = o.clone(),
            _ => {
                s.rv += 1;
                set_rv(obj, s.rv);
                let rv = s.rv;
                s.log.push(Change {
                    rv,
                    kind,
                    old: was,
                    new: Some(obj.clone()),
                });
            }
        }
    }
    let mut gone: Vec<Value> = old.into_values().collect();
    gone.sort_by_key(key);
    for obj in gone {
        s.rv += 1;
        let rv = s.rv;
        s.log.push(Change {
            rv,
            kind,
            old: Some(obj),
            new: None,
        });
    }
    new
}

/// A `Status` answer, as the API server gives for errors.
fn status(code: StatusCode, reason: &str, message: &str) -> Response {
    (
        code,
        axum::Json(status_object(code.as_u16(), reason, message)),
    )
        .into_response()
}

fn status_object(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

fn pool_api_ok(group: &str, version: &str) -> bool {
    (group, version) == POOL_API
}

async fn get_pool(
    State(sh): State<Shared>,
    Path((group, version, ns, name)): Path<(String, String, String, String)>,
) -> Response {
    let s = sh.store.lock();
    if s.fail {
        return status(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", "fake");
    }
    let pool = &s.objects.pool;
    if !pool_api_ok(&group, &version) || pool.is_null() || key(pool) != (ns, name.clone()) {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("inferencepools \"{name}\" not found"),
        );
    }
    axum::Json(pool.clone()).into_response()
}

async fn pools(
    State(sh): State<Shared>,
    Path((group, version, ns)): Path<(String, String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if !pool_api_ok(&group, &version) {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            "the server could not find the requested resource",
        );
    }
    collection(sh, Kind::Pool, ns, q).await
}

async fn pods_of(
    State(sh): State<Shared>,
    Path(ns): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    collection(sh, Kind::Pod, ns, q).await
}

async fn objectives_of(
    State(sh): State<Shared>,
    Path((group, version, ns)): Path<(String, String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if (group.as_str(), version.as_str()) != OBJECTIVE_API {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            "the server could not find the requested resource",
        );
    }
    collection(sh, Kind::Objective, ns, q).await
}

/// LIST or WATCH of a namespace's collection.
async fn collection(sh: Shared, kind: Kind, ns: String, q: HashMap<String, String>) -> Response {
    let watching = q.get("watch").is_some_and(|w| w == "true" || w == "1");
    let request = Request {
        kind,
        watch: watching,
        resource_version: q.get("resourceVersion").cloned(),
        label_selector: q.get("labelSelector").cloned(),
        field_selector: q.get("fieldSelector").cloned(),
    };
    let filter = match Filter::new(
        kind,
        &ns,
        request.label_selector.as_deref(),
        request.field_selector.as_deref(),
    ) {
        Ok(f) => f,
        Err(why) => return status(StatusCode::BAD_REQUEST, "BadRequest", &why),
    };
    let mut s = sh.store.lock();
    s.requests.push(request.clone());
    if s.fail {
        return status(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", "fake");
    }
    if watching {
        let bookmarks = q.get("allowWatchBookmarks").is_some_and(|b| b == "true");
        let timeout = q
            .get("timeoutSeconds")
            .and_then(|t| t.parse::<u64>().ok())
            .map(std::time::Duration::from_secs);
        let from = match request.resource_version.as_deref() {
            None | Some("" | "0") => None,
            Some(rv) => match rv.parse::<u64>() {
                Ok(rv) => Some(rv),
                Err(_) => {
                    return status(
                        StatusCode::BAD_REQUEST,
                        "BadRequest",
                        &format!("invalid resource version {rv:?}"),
                    );
                }
            },
        };
        let start = watch::start(&s, filter, from, bookmarks);
        drop(s);
        return watch::respond(sh, start, timeout);
    }
    let items: Vec<Value> = match kind {
        Kind::Pool => vec![s.objects.pool.clone()],
        Kind::Pod => s.objects.pods.clone(),
        Kind::Objective => s.objects.objectives.clone(),
    }
    .into_iter()
    .filter(|o| !o.is_null() && filter.matches(o))
    .collect();
    let (api_version, list_kind) = match kind {
        Kind::Pool => (
            format!("{}/{}", POOL_API.0, POOL_API.1),
            "InferencePoolList",
        ),
        Kind::Pod => ("v1".to_owned(), "PodList"),
        Kind::Objective => (
            format!("{}/{}", OBJECTIVE_API.0, OBJECTIVE_API.1),
            "InferenceObjectiveList",
        ),
    };
    axum::Json(json!({"apiVersion": api_version, "kind": list_kind,
                      "metadata": {"resourceVersion": s.rv.to_string()}, "items": items}))
    .into_response()
}

/// A v1 `InferencePool` in `ai/llama` selecting `app: <app>` on `port`.
pub fn pool(app: &str, port: u16) -> Value {
    pool_ports(app, &[port])
}

/// A v1 `InferencePool` in `ai/llama` selecting `app: <app>` on several ports (one per
/// data-parallel rank).
pub fn pool_ports(app: &str, ports: &[u16]) -> Value {
    let ports: Vec<Value> = ports.iter().map(|p| json!({"number": p})).collect();
    json!({
        "apiVersion": "inference.networking.k8s.io/v1", "kind": "InferencePool",
        "metadata": {"name": POOL, "namespace": NAMESPACE},
        "spec": {"selector": {"matchLabels": {"app": app}}, "targetPorts": ports,
                 "endpointPickerRef": {"name": "epp", "port": {"number": 9002}}}
    })
}

/// A pod in namespace `ai` with labels `app` and `llm-d.ai/role`.
pub fn pod(
    name: &str,
    ip: Option<&str>,
    role: &str,
    app: &str,
    ready: bool,
    deleting: bool,
) -> Value {
    let mut p = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": {"app": app, "llm-d.ai/role": role}},
        "spec": {"containers": [{"name": "vllm", "image": "vllm/vllm-openai"}]},
        "status": {"phase": "Running", "conditions": [
            {"type": "PodScheduled", "status": "True"},
            {"type": "Ready", "status": if ready { "True" } else { "False" }}
        ]}
    });
    if let Some(ip) = ip {
        p["status"]["podIP"] = json!(ip);
    }
    if deleting {
        p["metadata"]["deletionTimestamp"] = json!("2026-11-21T10:00:00Z");
    }
    p
}

/// Sets a pod's `Ready` condition.
pub fn set_ready(pod: &mut Value, ready: bool) {
    if let Some(cs) = pod["status"]["conditions"].as_array_mut() {
        for c in cs.iter_mut().filter(|c| c["type"] == "Ready") {
            c["status"] = json!(if ready { "True" } else { "False" });
        }
    }
}

/// The pod named `name` (panics if there is none: test code).
pub fn named<'a>(pods: &'a mut [Value], name: &str) -> &'a mut Value {
    match pods.iter_mut().find(|p| p["metadata"]["name"] == name) {
        Some(p) => p,
        None => panic!("no pod {name}"),
    }
}

/// An `llm-d.ai/v1alpha2` `InferenceObjective` in `ai` with this priority (`None`: unset) for
/// the pool [`pool`] makes.
pub fn objective(name: &str, priority: Option<i32>) -> Value {
    let mut spec = json!({"poolRef": {"name": POOL, "group": "inference.networking.k8s.io"}});
    if let Some(p) = priority {
        spec["priority"] = json!(p);
    }
    json!({
        "apiVersion": format!("{}/{}", OBJECTIVE_API.0, OBJECTIVE_API.1),
        "kind": "InferenceObjective",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": spec,
    })
}
