//! The proxy in front of a decode `llmd-sim`, with a prefill `llmd-sim`: the nixlv2 flow end to
//! end (the decode sim really pulls the KV blocks the prefill sim leased), streaming and not,
//! the answers equal a direct decode's, timings and errors.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use common::{Pair, proxy};
use llmd_telemetry::MetricsHandle;
use serde_json::{Value, json};

static METRICS: OnceLock<MetricsHandle> = OnceLock::new();

fn metrics() -> MetricsHandle {
    METRICS
        .get_or_init(|| {
            llmd_telemetry::install_prometheus(
                &[
                    llmd_telemetry::names::pd_proxy::ALL,
                    llmd_telemetry::names::vllm::ALL,
                ],
                &[],
            )
            .unwrap()
        })
        .clone()
}

fn metric(name: &str, labels: &[&str]) -> f64 {
    metrics()
        .render()
        .lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| labels.iter().all(|x| l.contains(x)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn pair(extra_proxy: &[&str]) -> Pair {
    pair_with(extra_proxy).await
}

async fn pair_with(extra_proxy: &[&str]) -> Pair {
    let sim_flags = [
        "--dummy-tokenizer",
        "--time-scale",
        "0",
        "--mode",
        "echo",
        "--block-size",
        "16",
        "--record-requests",
        "64",
    ];
    common::pair(
        &sim_flags,
        &["--engine-id", "prefill-0"],
        extra_proxy,
        Some(metrics()),
    )
    .await
}

const PROMPT: &str = "The prefill pod computes this prompt's KV cache, which is long enough for several blocks of sixteen tokens each, and the decode pod pulls it.";

async fn post(url: String, body: Value, prefill: Option<&str>) -> reqwest::Response {
    let mut r = reqwest::Client::new().post(url).json(&body);
    if let Some(p) = prefill {
        r = r.header("x-prefiller-host-port", p);
    }
    r.send().await.unwrap()
}

fn sse_text(body: &str) -> (String, Value) {
    let mut text = String::new();
    let mut usage = Value::Null;
    for data in body.split("\n\n").filter_map(|e| e.strip_prefix("data: ")) {
        if data == "[DONE]" {
            continue;
        }
        let v: Value = serde_json::from_str(data).unwrap();
        if let Some(t) = v["choices"][0]["text"].as_str() {
            text.push_str(t);
        }
        if v["usage"].is_object() {
            usage = v["usage"].clone();
        }
    }
    (text, usage)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pd_requests_equal_direct_decode_and_pull_kv() {
    let p = pair(&[]).await;
    let prefill = p.prefill.to_string();
    let body =
        json!({"model": "meta-llama/Llama-3.1-8B-Instruct", "prompt": PROMPT, "max_tokens": 12});
    let pulls_before = metric("vllm:nixl_xfer_time_seconds_count", &[]);
    let ok_before = metric(
        "llm_d_inference_scheduler_pd_proxy_requests_total",
        &["outcome=\"ok\""],
    );

    // Non-streaming.
    let via = post(
        format!("http://{}/v1/completions", p.proxy),
        body.clone(),
        Some(&prefill),
    )
    .await;
    assert_eq!(via.status(), 200);
    let timing = via.headers()["server-timing"].to_str().unwrap().to_owned();
    assert!(
        timing.starts_with("prefill;dur=")
            && timing.contains("coordinator;dur=")
            && timing.contains("decode_ttft;dur="),
        "{timing}"
    );
    let via: Value = via.json().await.unwrap();
    let direct: Value = post(
        format!("http://{}/v1/completions", p.decode),
        body.clone(),
        None,
    )
    .await
    .json()
    .await
    .unwrap();
    // The answer assembled from the streamed decode leg is the engine's own non-streamed
    // answer, field for field (ids and times aside).
    for (k, v) in direct.as_object().unwrap() {
        if !matches!(k.as_str(), "id" | "created" | "usage") {
            assert_eq!(&via[k], v, "field {k}: {via} vs {direct}");
        }
    }
    assert_eq!(
        via.as_object().unwrap().keys().collect::<Vec<_>>(),
        direct.as_object().unwrap().keys().collect::<Vec<_>>()
    );
    assert_eq!(
        via["usage"]["prompt_tokens"],
        direct["usage"]["prompt_tokens"]
    );
    assert_eq!(via["usage"]["completion_tokens"], 12);
    // cached_tokens is the prefill's (a cold prompt there: 0), not the decode's pulled blocks.
    assert_eq!(via["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
    assert!(
        metric("vllm:nixl_xfer_time_seconds_count", &[]) > pulls_before,
        "the decode sim pulled KV from the prefill sim"
    );
    // What each engine received.
    let seen = |addr: SocketAddr| async move {
        let r = reqwest::get(format!("http://{addr}/debug/requests"))
            .await
            .unwrap();
        let status = r.status();
        let text = r.text().await.unwrap();
        let v: Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{status} {text:?}: {e}"));
        v.as_array().unwrap()[0].clone()
    };
    let (pre, dec) = (seen(p.prefill).await, seen(p.decode).await);
    assert_eq!(pre["path"], "/v1/completions");
    let pb = &pre["body"];
    assert_eq!(
        (
            pb["stream"].clone(),
            pb["max_tokens"].clone(),
            pb["max_completion_tokens"].clone(),
            pb["min_tokens"].clone()
        ),
        (json!(false), json!(1), json!(1), json!(1))
    );
    assert_eq!(
        pb["kv_transfer_params"],
        llmd_pd_proxy::nixl::prefill_placeholder()
    );
    assert_eq!(pb["prompt"], PROMPT);
    let db = &dec["body"];
    assert_eq!(db["max_tokens"], 12);
    // The client did not stream; the decode leg does, so the first token is seen when it is
    // generated (true TTFT), with usage in the stream for the assembled answer.
    assert_eq!(db["stream"], json!(true), "{db}");
    assert_eq!(db["stream_options"]["include_usage"], json!(true), "{db}");
    assert!(db.get("min_tokens").is_none(), "{db}");
    assert_eq!(db["kv_transfer_params"]["remote_engine_id"], "prefill-0");
    assert!(
        db["kv_transfer_params"]["remote_block_ids"]
            .as_array()
            .is_some_and(|b| !b.is_empty())
    );
    let rid = pre["x-request-id"][0].as_str().unwrap();
    assert_eq!(rid.len(), 36, "a fresh UUID");
    assert_eq!(
        dec["x-request-id"],
        json!([rid]),
        "the same id on both legs"
    );

    // Streaming, with usage: the same text, event by event.
    let mut sbody = body.clone();
    sbody["stream"] = json!(true);
    sbody["stream_options"] = json!({"include_usage": true});
    let via = post(
        format!("http://{}/v1/completions", p.proxy),
        sbody.clone(),
        Some(&prefill),
    )
    .await;
    assert_eq!(via.status(), 200);
    assert!(
        via.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let raw = via.text().await.unwrap();
    assert!(
        !raw.contains("llmd-timing"),
        "no timing comment unless asked for"
    );
    let (via_text, via_usage) = sse_text(&raw);
    let (direct_text, _) = sse_text(
        &post(format!("http://{}/v1/completions", p.decode), sbody, None)
            .await
            .text()
            .await
            .unwrap(),
    );
    assert_eq!(via_text, direct_text);
    assert_eq!(via_usage["completion_tokens"], 12);
    // The prefill sim now holds the prompt: its cached tokens are what the client sees.
    assert!(
        via_usage["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .unwrap()
            > 0,
        "{via_usage}"
    );

    // Asked for, the final timings arrive as an SSE comment just before [DONE].
    let mut tbody = body.clone();
    tbody["stream"] = json!(true);
    let via = reqwest::Client::new()
        .post(format!("http://{}/v1/completions", p.proxy))
        .header("x-prefiller-host-port", &prefill)
        .header("x-llmd-timing", "1")
        .json(&tbody)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let events: Vec<&str> = via.split("\n\n").filter(|e| !e.is_empty()).collect();
    let n = events.len();
    assert_eq!(events[n - 1], "data: [DONE]");
    assert!(
        events[n - 2].starts_with(": llmd-timing prefill;dur=")
            && events[n - 2].contains("true_ttft;dur=")
            && events[n - 2].contains("coordinator;dur="),
        "{}",
        events[n - 2]
    );
    assert!(!via_text.is_empty());

    // Chat goes through the same flow.
    let chat = json!({"model": "meta-llama/Llama-3.1-8B-Instruct", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 5});
    let via = post(
        format!("http://{}/v1/chat/completions", p.proxy),
        chat,
        Some(&prefill),
    )
    .await;
    assert_eq!(via.status(), 200);
    let via: Value = via.json().await.unwrap();
    assert_eq!(via["usage"]["completion_tokens"], 5);

    assert!(
        metric(
            "llm_d_inference_scheduler_pd_proxy_requests_total",
            &["outcome=\"ok\""]
        ) >= ok_before + 3.0
    );
    assert!(
        metric(
            "llm_d_inference_scheduler_pd_proxy_true_ttft_milliseconds_count",
            &["nixlv2"]
        ) >= 3.0
    );
    assert!(
        metric(
            "llm_d_inference_scheduler_pd_proxy_coordinator_overhead_milliseconds_count",
            &["nixlv2"]
        ) >= 3.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_header_it_is_a_pass_through() {
    let p = pair(&[]).await;
    let models: Value = reqwest::get(format!("http://{}/v1/models", p.proxy))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(models["data"][0]["id"], "meta-llama/Llama-3.1-8B-Instruct");
    let body = json!({"prompt": PROMPT, "max_tokens": 3});
    let r = post(
        format!("http://{}/v1/completions", p.proxy),
        body.clone(),
        None,
    )
    .await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["usage"]["completion_tokens"], 3);
    // An empty header is no header.
    let r = post(
        format!("http://{}/v1/completions", p.proxy),
        body,
        Some(" "),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        reqwest::get(format!("http://{}/health", p.proxy))
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_clear_and_nothing_untrusted_is_called() {
    let p = pair(&["--max-body-bytes", "4096"]).await;
    let url = format!("http://{}/v1/completions", p.proxy);
    let body = json!({"prompt": PROMPT, "max_tokens": 3});
    // Not in the allowlist: 403, and the target is never contacted.
    let outsider = tokio::net::TcpListener::bind("127.0.0.2:0").await.unwrap();
    let target = outsider.local_addr().unwrap().to_string();
    let r = post(url.clone(), body.clone(), Some(&target)).await;
    assert_eq!(r.status(), 403);
    assert!(
        tokio::time::timeout(Duration::from_millis(200), outsider.accept())
            .await
            .is_err(),
        "the proxy called a denied host"
    );
    // A malformed target, bad JSON, a non-object, an oversized body.
    assert_eq!(
        post(url.clone(), body.clone(), Some("127.0.0.1"))
            .await
            .status(),
        400
    );
    let prefill = p.prefill.to_string();
    for (raw, status) in [
        (b"{oops".to_vec(), 400),
        (b"[1,2]".to_vec(), 400),
        (vec![b' '; 8192], 413),
    ] {
        let r = reqwest::Client::new()
            .post(&url)
            .header("x-prefiller-host-port", &prefill)
            .header("content-type", "application/json")
            .body(raw)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), status);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["object"], "error");
        assert_eq!(v["code"], status);
    }
    // A prefill error comes back verbatim and decode is not run.
    let r = post(
        url.clone(),
        json!({"prompt": PROMPT, "max_tokens": 3, "n": 2}),
        Some(&prefill),
    )
    .await;
    assert_eq!(r.status(), 400);
    // A dead prefill pod: 502.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let r = post(url.clone(), body.clone(), Some(&dead.to_string())).await;
    assert_eq!(r.status(), 502);
    // A dead decode engine: 503 with vLLM's message.
    let gone = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let decoder = format!("http://{gone}");
    let lonely = proxy(&["--decoder", &decoder, "--allow-prefill", "127.0.0.1"]).await;
    let r = post(
        format!("http://{lonely}/v1/completions"),
        body,
        Some(&prefill),
    )
    .await;
    assert_eq!(r.status(), 503);
    let v: Value = r.json().await.unwrap();
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("decode node is not ready")
    );
    assert!(
        metric(
            "llm_d_inference_scheduler_pd_proxy_errors_total",
            &["stage=\"prefill\""]
        ) >= 2.0
    );
    assert!(
        metric(
            "llm_d_inference_scheduler_pd_proxy_errors_total",
            &["stage=\"decode\""]
        ) >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_decode_leg_can_speak_h2c() {
    let p = pair_with(&["--decoder-h2c"]).await;
    let body = json!({"prompt": PROMPT, "max_tokens": 3, "stream": true});
    let r = post(
        format!("http://{}/v1/completions", p.proxy),
        body,
        Some(&p.prefill.to_string()),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().ends_with("data: [DONE]\n\n"));
    let last = |addr: SocketAddr| async move {
        let v: Value = reqwest::get(format!("http://{addr}/debug/requests"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v.as_array().unwrap().last().unwrap()["version"].clone()
    };
    assert_eq!(last(p.decode).await, "HTTP/2.0");
    assert_eq!(last(p.prefill).await, "HTTP/1.1");
}
