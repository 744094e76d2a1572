//! Fault injection: errors, stalled streams and dropped KV transfers, as configured.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::time::{Duration, Instant};

use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_errors_stalls_and_dropped_transfers() {
    let client = reqwest::Client::new();

    // Every request fails with vLLM's overload error.
    let (sim, stop) = common::start(&[
        "--dummy-tokenizer",
        "--time-scale",
        "0",
        "--fault-error-rate",
        "1",
    ])
    .await;
    for _ in 0..3 {
        let resp = client
            .post(format!("http://{}/v1/completions", sim.addr))
            .json(&json!({"prompt": "x", "max_tokens": 1}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 503);
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(
            body["message"],
            "The server is overloaded or not ready yet."
        );
    }
    stop.cancel();

    // Streams stall after their first token for the configured time, then finish.
    let (sim, stop) = common::start(&[
        "--dummy-tokenizer",
        "--time-scale",
        "0",
        "--fault-stall-rate",
        "1",
        "--fault-stall-ms",
        "300",
    ])
    .await;
    let started = Instant::now();
    let text = client
        .post(format!("http://{}/v1/completions", sim.addr))
        .json(&json!({"prompt": "x", "max_tokens": 3, "stream": true}))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(text.trim_end().ends_with("data: [DONE]"));
    assert_eq!(text.matches("\"finish_reason\":\"length\"").count(), 1);
    stop.cancel();

    // The prefill side drops every KV transfer: the decode side fails clearly.
    let (prefill, stop_p) = common::start(&[
        "--dummy-tokenizer",
        "--time-scale",
        "0",
        "--fault-drop-kv-rate",
        "1",
    ])
    .await;
    let (decode, stop_d) = common::start(&["--dummy-tokenizer", "--time-scale", "0"]).await;
    let p: serde_json::Value = client
        .post(format!("http://{}/v1/completions", prefill.addr))
        .json(&json!({"prompt": "some prompt text", "max_tokens": 1, "kv_transfer_params": {"do_remote_decode": true}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let resp = client
        .post(format!("http://{}/v1/completions", decode.addr))
        .json(&json!({"prompt": "some prompt text", "max_tokens": 2, "kv_transfer_params": p["kv_transfer_params"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 502);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert!(
        body["message"].as_str().unwrap().contains("dropped"),
        "{body}"
    );
    stop_p.cancel();
    stop_d.cancel();
}
