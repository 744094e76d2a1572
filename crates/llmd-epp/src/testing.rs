//! Test support (feature `testing`): a fake Kubernetes API server that speaks the real REST
//! shapes of the two calls discovery makes (GET an `InferencePool`, LIST pods by label
//! selector), so the EPP's discovery and the P/D proxy's pool allowlist are tested through
//! `kube::Client` without a cluster.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use parking_lot::Mutex;
use serde_json::{Value, json};

/// What the fake API server holds; tests change it while discovery runs.
#[derive(Debug, Default)]
pub struct FakeState {
    /// The `InferencePool` object (served for namespace `ai`, name `llama`).
    pub pool: Value,
    /// Pod objects (any namespace; filtered by the request's).
    pub pods: Vec<Value>,
    /// Answer every call with 500.
    pub fail: bool,
    /// Every label selector a pod list asked for.
    pub selectors: Vec<String>,
}

/// A running fake API server.
#[derive(Debug, Clone)]
pub struct FakeKube {
    /// Its address (plain HTTP).
    pub addr: SocketAddr,
    /// Its state.
    pub state: Arc<Mutex<FakeState>>,
}

/// A scheduler config that always chooses P/D: decode pods by the decode profile, prefill pods
/// by the prefill one, each picked at random.
pub const PD_CONFIG: &str = r#"
plugins:
  - type: decode-filter
  - type: prefill-filter
  - type: random-picker
  - type: pd-profile-handler
    parameters: {threshold: 0}
schedulingProfiles:
  - name: decode
    plugins: [{pluginRef: decode-filter}, {pluginRef: random-picker}]
  - name: prefill
    plugins: [{pluginRef: prefill-filter}, {pluginRef: random-picker}]
"#;

/// The pool namespace and name the fake serves.
pub const NAMESPACE: &str = "ai";
/// The pool name the fake serves.
pub const POOL: &str = "llama";

impl FakeKube {
    /// Starts the server on 127.0.0.1 with this pool object and pods.
    pub async fn start(pool: Value, pods: Vec<Value>) -> std::io::Result<Self> {
        let state = Arc::new(Mutex::new(FakeState {
            pool,
            pods,
            ..Default::default()
        }));
        let app = axum::Router::new()
            .route(
                "/apis/{group}/{version}/namespaces/{ns}/inferencepools/{name}",
                axum::routing::get(get_pool),
            )
            .route(
                "/api/v1/namespaces/{ns}/pods",
                axum::routing::get(list_pods),
            )
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(Self { addr, state })
    }

    /// A `kube::Client` talking to it.
    pub fn client(&self) -> Result<kube::Client, kube::Error> {
        let url = format!("http://{}", self.addr)
            .parse()
            .map_err(|e: http::uri::InvalidUri| kube::Error::Service(Box::new(e)))?;
        kube::Client::try_from(kube::Config::new(url))
    }
}

fn status(code: StatusCode, reason: &str) -> Response {
    (
        code,
        axum::Json(json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": reason, "reason": reason, "code": code.as_u16()})),
    )
        .into_response()
}

async fn get_pool(
    State(s): State<Arc<Mutex<FakeState>>>,
    Path((_group, _version, ns, name)): Path<(String, String, String, String)>,
) -> Response {
    let f = s.lock();
    if f.fail {
        return status(StatusCode::INTERNAL_SERVER_ERROR, "InternalError");
    }
    if ns != NAMESPACE || name != POOL {
        return status(StatusCode::NOT_FOUND, "NotFound");
    }
    axum::Json(f.pool.clone()).into_response()
}

async fn list_pods(
    State(s): State<Arc<Mutex<FakeState>>>,
    Path(ns): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let mut f = s.lock();
    if f.fail {
        return status(StatusCode::INTERNAL_SERVER_ERROR, "InternalError");
    }
    let selector = q.get("labelSelector").cloned().unwrap_or_default();
    f.selectors.push(selector.clone());
    let wanted: Vec<(&str, &str)> = selector
        .split(',')
        .filter_map(|kv| kv.split_once('='))
        .collect();
    let items: Vec<Value> = f
        .pods
        .iter()
        .filter(|p| p["metadata"]["namespace"] == ns.as_str())
        .filter(|p| {
            wanted
                .iter()
                .all(|(k, v)| p["metadata"]["labels"][*k].as_str() == Some(*v))
        })
        .cloned()
        .collect();
    axum::Json(json!({"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "7"}, "items": items}))
        .into_response()
}

/// A v1 `InferencePool` in `ai/llama` selecting `app: <app>` on `port`.
pub fn pool(app: &str, port: u16) -> Value {
    json!({
        "apiVersion": "inference.networking.k8s.io/v1", "kind": "InferencePool",
        "metadata": {"name": POOL, "namespace": NAMESPACE},
        "spec": {"selector": {"matchLabels": {"app": app}}, "targetPorts": [{"number": port}],
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
