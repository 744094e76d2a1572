//! The gateway in front of a real `llmd-epp` (ext_proc over gRPC) and two `llmd-sim` pods:
//! routing by the EPP's destination, the EPP's body and response-body echo on the way,
//! streaming, an `ImmediateResponse` passed to the client, and the EPP being down.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::net::SocketAddr;

use clap::Parser;
use llmd_epp::config::{EndpointPickerConfig, ROUND_ROBIN_CONFIG};
use llmd_epp::endpoints::{EndpointSpec, EndpointsFile, Role};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const MODEL: &str = "meta-llama/Llama-3.1-8B-Instruct";

async fn sim() -> SocketAddr {
    let args = llmd_sim::EngineArgs::from_flags([
        "--dummy-tokenizer",
        "--time-scale",
        "0",
        "--mode",
        "echo",
        "--record-requests",
        "64",
    ])
    .unwrap();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    llmd_sim::start(args, l, None, CancellationToken::new())
        .await
        .unwrap()
        .addr
}

async fn epp(pods: &[SocketAddr]) -> SocketAddr {
    let bind = || async { tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap() };
    let endpoints = pods
        .iter()
        .map(|p| EndpointSpec {
            address: p.ip().to_string(),
            port: p.port(),
            role: Role::Both,
            model: Vec::new(),
            kv_events: None,
            kv_events_replay: None,
            metrics_port: None,
        })
        .collect();
    llmd_epp::start(
        llmd_epp::Options {
            config: EndpointPickerConfig::parse(ROUND_ROBIN_CONFIG).unwrap(),
            endpoints_file: None,
            endpoints: EndpointsFile { endpoints },
            kv_events_bind: None,
            scrape_interval: std::time::Duration::from_secs(5),
            max_body_bytes: 1 << 20,
            pool_name: "test".into(),
            kubernetes: None,
        },
        llmd_epp::Listeners {
            grpc: bind().await,
            health: None,
            metrics: bind().await,
        },
        None,
        CancellationToken::new(),
    )
    .await
    .unwrap()
    .grpc
}

async fn gateway(flags: &[&str]) -> SocketAddr {
    let args = llmd_gateway::Args::parse_from(
        std::iter::once("llmd-gateway").chain(flags.iter().copied()),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    llmd_gateway::start(args, l, CancellationToken::new())
        .await
        .unwrap()
}

async fn recorded(sim: SocketAddr) -> Vec<Value> {
    let v: Value = reqwest::get(format!("http://{sim}/debug/requests"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v.as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_go_where_the_epp_says_streaming_included() {
    let (a, b) = (sim().await, sim().await);
    let epp = epp(&[a, b]).await;
    let gw = gateway(&["--epp", &format!("http://{epp}")]).await;
    let http = reqwest::Client::new();
    let body = json!({"model": MODEL, "prompt": "route me through the picker", "max_tokens": 5});
    let direct: Value = http
        .post(format!("http://{a}/v1/completions"))
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for _ in 0..4 {
        let r = http
            .post(format!("http://{gw}/v1/completions"))
            .header(
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            )
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["choices"][0]["text"], direct["choices"][0]["text"]);
    }
    // Round robin over both pods: each saw two of the four (plus a's direct one).
    let (ra, rb) = (recorded(a).await, recorded(b).await);
    assert_eq!((ra.len(), rb.len()), (3, 2), "{ra:?} {rb:?}");
    // The pod got the EPP's routing header and a traceparent in the client's trace.
    let last = &rb[1];
    let tp = last["traceparent"][0].as_str().unwrap();
    assert!(tp.contains("4bf92f3577b34da6a3ce929d0e0e4736"), "{tp}");
    assert_eq!(last["body"]["prompt"], "route me through the picker");

    // Streaming: every event arrives, through the EPP's response-body echo.
    let sbody = json!({"model": MODEL, "prompt": "stream me", "max_tokens": 6, "stream": true});
    let direct = http
        .post(format!("http://{a}/v1/completions"))
        .json(&sbody)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let r = http
        .post(format!("http://{gw}/v1/completions"))
        .json(&sbody)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()
            .get("content-type")
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let via = r.text().await.unwrap();
    let texts = |s: &str| -> Vec<String> {
        s.lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter(|d| *d != "[DONE]")
            .map(|d| serde_json::from_str::<Value>(d).unwrap()["choices"][0]["text"].to_string())
            .collect()
    };
    assert_eq!(texts(&via), texts(&direct));
    assert!(via.trim_end().ends_with("data: [DONE]"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_epps_immediate_response_reaches_the_client() {
    let a = sim().await;
    let epp = epp(&[a]).await;
    let gw = gateway(&["--epp", &format!("http://{epp}")]).await;
    let r = reqwest::Client::new()
        .post(format!("http://{gw}/v1/completions"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.headers().contains_key("x-llm-d-error-reason"));
    let v: Value = r.json().await.unwrap();
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("inference error"),
        "{v}"
    );
    assert!(recorded(a).await.is_empty(), "nothing reached the pod");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_epp_is_503_or_fail_open() {
    let a = sim().await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let body = json!({"model": MODEL, "prompt": "x", "max_tokens": 2});
    let closed = gateway(&[
        "--epp",
        &format!("http://{dead}"),
        "--epp-timeout-ms",
        "500",
    ])
    .await;
    let r = reqwest::Client::new()
        .post(format!("http://{closed}/v1/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let v: Value = r.json().await.unwrap();
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("endpoint picker"),
        "{v}"
    );
    let open = gateway(&[
        "--epp",
        &format!("http://{dead}"),
        "--epp-timeout-ms",
        "500",
        "--fail-open",
        "--default-endpoint",
        &a.to_string(),
    ])
    .await;
    let r = reqwest::Client::new()
        .post(format!("http://{open}/v1/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(recorded(a).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefill_decode_through_the_whole_chain() {
    // client → gateway → (EPP: P/D) → pd-proxy in front of the decode sim → prefill sim.
    let sim_with = |role: &'static str| async move {
        let args = llmd_sim::EngineArgs::from_flags([
            "--dummy-tokenizer",
            "--time-scale",
            "0",
            "--mode",
            "echo",
            "--record-requests",
            "8",
            "--role",
            role,
        ])
        .unwrap();
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        llmd_sim::start(args, l, None, CancellationToken::new())
            .await
            .unwrap()
            .addr
    };
    let (prefill, decode) = (sim_with("prefill").await, sim_with("decode").await);
    let proxy_args = <llmd_pd_proxy::Args as Parser>::parse_from([
        "p",
        "--decoder",
        &format!("http://{decode}"),
        "--allow-prefill",
        "127.0.0.1",
    ]);
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = llmd_pd_proxy::start(
        proxy_args.config().unwrap(),
        l,
        None,
        CancellationToken::new(),
    )
    .await
    .unwrap();
    const PD: &str = r#"
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
    let spec = |addr: SocketAddr, role| EndpointSpec {
        address: addr.ip().to_string(),
        port: addr.port(),
        role,
        model: Vec::new(),
        kv_events: None,
        kv_events_replay: None,
        metrics_port: None,
    };
    let bind = || async { tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap() };
    let epp = llmd_epp::start(
        llmd_epp::Options {
            config: EndpointPickerConfig::parse(PD).unwrap(),
            endpoints_file: None,
            endpoints: EndpointsFile {
                endpoints: vec![spec(proxy, Role::Decode), spec(prefill, Role::Prefill)],
            },
            kv_events_bind: None,
            scrape_interval: std::time::Duration::from_secs(5),
            max_body_bytes: 1 << 20,
            pool_name: "pd".into(),
            kubernetes: None,
        },
        llmd_epp::Listeners {
            grpc: bind().await,
            health: None,
            metrics: bind().await,
        },
        None,
        CancellationToken::new(),
    )
    .await
    .unwrap()
    .grpc;
    let gw = gateway(&["--epp", &format!("http://{epp}")]).await;
    let r = reqwest::Client::new()
        .post(format!("http://{gw}/v1/completions"))
        .json(
            &json!({"model": MODEL, "prompt": "disaggregated through every hop", "max_tokens": 4}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let timing = r
        .headers()
        .get("server-timing")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    assert!(timing.contains("prefill;dur="), "{timing}");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["usage"]["completion_tokens"], 4);
    // The prefill sim ran the nixlv2 prefill leg; the decode sim got the KV parameters.
    let p = recorded(prefill).await;
    assert_eq!(p.len(), 1);
    assert_eq!(p[0]["body"]["max_tokens"], 1);
    let d = recorded(decode).await;
    assert_eq!(d.len(), 1);
    assert!(
        d[0]["body"]["kv_transfer_params"]["remote_engine_id"].is_string(),
        "{}",
        d[0]["body"]
    );
}
