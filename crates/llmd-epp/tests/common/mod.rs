//! In-process EPP + simulator fixtures, and an ext_proc client that routes one request the way
//! Envoy does (headers, then the body with `end_of_stream`).
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use llmd_epp::config::EndpointPickerConfig;
use llmd_epp::endpoints::{EndpointSpec, EndpointsFile};
use llmd_epp::{Epp, Listeners, Options};
use llmd_telemetry::MetricsHandle;
use llmd_testkit::sim::{Sim, SimBuilder};
use llmd_wire::ext_proc::Answer;
use llmd_wire::pb::envoy::service::ext_proc::v3::external_processor_client::ExternalProcessorClient;
use tokio_util::sync::CancellationToken;

pub const MODEL: &str = "meta-llama/Llama-3.1-8B-Instruct";

static METRICS: OnceLock<MetricsHandle> = OnceLock::new();

/// The process's Prometheus recorder (EPP, KV index and simulator metrics share it).
pub fn metrics() -> MetricsHandle {
    METRICS
        .get_or_init(|| {
            llmd_telemetry::install_prometheus(
                &[
                    llmd_telemetry::names::epp::ALL,
                    llmd_telemetry::names::kv_cache::ALL,
                    llmd_telemetry::names::vllm::ALL,
                ],
                &[],
            )
            .unwrap()
        })
        .clone()
}

/// The Llama-3.1 tokenizer dir, if fetched (in CI its absence is a failure).
pub fn llama_tokenizer() -> Option<String> {
    llmd_testkit::tokenizer::tokenizer_dir(MODEL)
}

/// Starts a simulator on 127.0.0.1 with these flags; cancel the token to stop it.
pub async fn sim(flags: &[&str]) -> (Sim, CancellationToken) {
    let builder = SimBuilder::new().flags(flags.iter().copied());
    llmd_testkit::sim::start(builder.metrics(metrics()))
        .await
        .into_parts()
}

/// The endpoint spec of a simulator (`role`: prefill/decode/both).
pub fn spec_of(sim: &Sim, role: &str) -> EndpointSpec {
    let kv = sim
        .kv_events_bound
        .as_deref()
        .map(|b| format!("tcp://127.0.0.1:{}", b.rsplit(':').next().unwrap()));
    let yaml = format!(
        "endpoints: [{{address: 127.0.0.1, port: {}, role: {role}, model: {MODEL}{}}}]",
        sim.addr.port(),
        kv.map(|k| format!(", kvEvents: \"{k}\""))
            .unwrap_or_default()
    );
    EndpointsFile::parse(&yaml).unwrap().endpoints.remove(0)
}

/// A running EPP and a client of its ext_proc service.
pub struct TestEpp {
    pub epp: Epp,
    pub client: ExternalProcessorClient<tonic::transport::Channel>,
    pub shutdown: CancellationToken,
}

impl Drop for TestEpp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Starts an EPP on 127.0.0.1 with this config over these endpoints.
pub async fn epp(
    config: &str,
    endpoints: Vec<EndpointSpec>,
    endpoints_file: Option<std::path::PathBuf>,
    kv_events_bind: Option<&str>,
) -> TestEpp {
    let shutdown = CancellationToken::new();
    let epp = llmd_epp::start(
        Options {
            config: EndpointPickerConfig::parse(config).unwrap(),
            endpoints_file,
            endpoints: EndpointsFile { endpoints },
            kv_events_bind: kv_events_bind.map(str::to_owned),
            scrape_interval: Duration::from_millis(100),
            max_body_bytes: 1 << 20,
            metric_names: Default::default(),
            metrics_staleness: None,
            objectives: Vec::new(),
            subset_filter: true,
            pool_name: "test-pool".into(),
            kubernetes: None,
            limits: Default::default(),
            grace_period: std::time::Duration::from_secs(1),
            service_name: None,
            tls: None,
        },
        Listeners::loopback().await.unwrap(),
        Some(metrics()),
        shutdown.clone(),
    )
    .await
    .unwrap();
    let client = ExternalProcessorClient::connect(format!("http://{}", epp.grpc))
        .await
        .unwrap();
    TestEpp {
        epp,
        client,
        shutdown,
    }
}

/// What the EPP answered for one request.
#[derive(Debug)]
pub enum Routed {
    /// Headers it set (destination, prefiller, ...).
    To(HashMap<String, String>),
    /// An ImmediateResponse: HTTP status and body.
    Rejected(u32, String),
}

impl Routed {
    /// The destination list (panics on a rejection).
    pub fn destination(&self) -> &str {
        match self {
            Routed::To(h) => &h["x-gateway-destination-endpoint"],
            Routed::Rejected(s, b) => panic!("rejected {s}: {b}"),
        }
    }

    /// The first destination.
    pub fn primary(&self) -> String {
        self.destination().split(',').next().unwrap().to_owned()
    }

    /// The prefill pod, when P/D was chosen.
    pub fn prefiller(&self) -> Option<String> {
        match self {
            Routed::To(h) => h.get("x-prefiller-host-port").cloned(),
            Routed::Rejected(s, b) => panic!("rejected {s}: {b}"),
        }
    }
}

/// Routes one POST through the ext_proc stream.
pub async fn route(
    client: &mut ExternalProcessorClient<tonic::transport::Channel>,
    path: &str,
    body: &[u8],
) -> Routed {
    route_with(client, path, body, &[]).await
}

/// Routes one POST with extra request headers (e.g. `traceparent`).
pub async fn route_with(
    client: &mut ExternalProcessorClient<tonic::transport::Channel>,
    path: &str,
    body: &[u8],
    extra: &[(&str, &str)],
) -> Routed {
    let mut pairs = vec![
        (":method", "POST"),
        (":path", path),
        ("content-type", "application/json"),
    ];
    pairs.extend_from_slice(extra);
    match llmd_wire::ext_proc::decide(client, &pairs, body, Duration::from_secs(10))
        .await
        .unwrap()
    {
        Answer::Route(headers) => Routed::To(headers.into_iter().collect()),
        Answer::Reject { status, body, .. } => Routed::Rejected(
            u32::from(status),
            String::from_utf8_lossy(&body).into_owned(),
        ),
    }
}

/// A completions body.
pub fn completion(prompt: &str, max_tokens: u32) -> Vec<u8> {
    serde_json::to_vec(
        &serde_json::json!({"model": MODEL, "prompt": prompt, "max_tokens": max_tokens}),
    )
    .unwrap()
}

/// Sends the request to the routed pod as a gateway would; returns the usage object.
pub async fn serve(pod: &str, body: &[u8]) -> serde_json::Value {
    let resp = reqwest::Client::new()
        .post(format!("http://{pod}/v1/completions"))
        .header("content-type", "application/json")
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.json::<serde_json::Value>().await.unwrap()["usage"].clone()
}

/// Waits (at most 10 s) for a condition.
pub async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A metric's value from the rendered exposition (sum over series whose labels contain all
/// of `labels`).
pub fn metric(name: &str, labels: &[&str]) -> f64 {
    metrics()
        .render()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| labels.iter().all(|x| l.contains(x)))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

pub fn prefix_config(tok: &str) -> String {
    format!(
        r#"
plugins:
  - type: precise-prefix-cache-scorer
    parameters: {{hashSeed: "7", tokenizer: "{tok}"}}
  - type: max-score-picker
schedulingProfiles:
  - name: default
    plugins:
      - {{pluginRef: precise-prefix-cache-scorer}}
      - {{pluginRef: max-score-picker}}
"#
    )
}

pub fn pd_config(tok: &str) -> String {
    format!(
        r#"
plugins:
  - type: precise-prefix-cache-scorer
    parameters: {{hashSeed: "7", tokenizer: "{tok}"}}
  - type: decode-filter
  - type: prefill-filter
  - type: max-score-picker
  - type: pd-profile-handler
    parameters: {{threshold: 256}}
schedulingProfiles:
  - name: decode
    plugins:
      - {{pluginRef: decode-filter}}
      - {{pluginRef: precise-prefix-cache-scorer}}
      - {{pluginRef: max-score-picker}}
  - name: prefill
    plugins:
      - {{pluginRef: prefill-filter}}
      - {{pluginRef: max-score-picker}}
"#
    )
}

pub fn sim_flags<'a>(tok: &'a str, kv_events: &'a str) -> Vec<&'a str> {
    vec![
        "--model",
        MODEL,
        "--tokenizer",
        tok,
        "--hash-seed",
        "7",
        "--time-scale",
        "0",
        "--kv-events-endpoint",
        kv_events,
    ]
}

/// A text of about `words` × 2 tokens, distinct per `seed`.
pub fn text(seed: &str, words: usize) -> String {
    (0..words).map(|i| format!("{seed}{i} ")).collect()
}

/// `POST /debug/route`: the blocks each pod holds of this prompt's prefix.
pub async fn matched(metrics_addr: std::net::SocketAddr, prompt: &str) -> serde_json::Value {
    let v: serde_json::Value = reqwest::Client::new()
        .post(format!("http://{metrics_addr}/debug/route"))
        .body(completion(prompt, 1))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["prefix"]["matched_blocks"].clone()
}

/// Sends short prompts straight to each pod until the index has heard from all of them (a
/// ZMQ subscription drops what was published before it was in place).
pub async fn warm_up(kv: &llmd_kv_index::KvIndex, pods: &[String]) {
    for (i, pod) in pods.iter().enumerate() {
        let mut n = 0;
        while kv.pods().get(pod).is_none() {
            serve(pod, &completion(&text(&format!("warm{i}x{n}y"), 80), 1)).await;
            n += 1;
            assert!(n < 200, "no KV events from {pod}");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
}

/// Waits (at most 10 s) until `/debug/route` says `pod` holds `blocks` blocks of `prompt`.
pub async fn wait_indexed(
    metrics_addr: std::net::SocketAddr,
    prompt: &str,
    pod: &str,
    blocks: u64,
) {
    let mut waited = 0;
    while matched(metrics_addr, prompt).await[pod]
        .as_u64()
        .unwrap_or(0)
        < blocks
    {
        waited += 1;
        assert!(waited < 500, "the EPP never indexed {pod}'s blocks");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
