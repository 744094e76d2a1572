//! A P/D pair of simulators (separate processes, real HTTP between them): the prefill leg
//! returns vLLM-shaped `kv_transfer_params` and leases its blocks, the decode leg pulls them and
//! records the NIXL metrics; a dead prefill, a reused lease and an expired lease fail clearly.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use llmd_telemetry::exposition;
use serde_json::{Value, json};

use common::SimProc;

fn spawn(flags: &[&str]) -> SimProc {
    let mut all = vec![
        "--dummy-tokenizer",
        "--block-size",
        "16",
        "--time-scale",
        "0.1",
    ];
    all.extend_from_slice(flags);
    common::spawn_process(&all)
}

async fn post(base: &str, body: Value) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(format!("{base}/v1/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

async fn metrics(base: &str) -> exposition::Exposition {
    exposition::parse(
        &reqwest::get(format!("{base}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    )
    .unwrap()
}

const PROMPT: &str = "A prompt long enough to fill several blocks of sixteen byte-tokens: the quick brown fox jumps over the lazy dog.";

fn prefill_body() -> Value {
    json!({"prompt": PROMPT, "max_tokens": 1, "stream": false,
           "kv_transfer_params": {"do_remote_decode": true, "do_remote_prefill": false, "remote_engine_id": null,
                                  "remote_block_ids": null, "remote_host": null, "remote_port": null}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefill_then_decode_pulls_kv_and_records_nixl_metrics() {
    let prefill = spawn(&["--role", "prefill", "--engine-id", "prefill-engine-0"]);
    // Rank 1: the `engine` label the decode's metrics carry.
    let decode = spawn(&[
        "--role",
        "decode",
        "--tensor-parallel-size",
        "2",
        "--data-parallel-rank",
        "1",
    ]);

    let (status, p) = post(&prefill.base, prefill_body()).await;
    assert_eq!(status, 200, "{p}");
    assert_eq!(p["choices"][0]["finish_reason"], "length");
    assert_eq!(p["usage"]["completion_tokens"], 1);
    let params = p["kv_transfer_params"].clone();
    let blocks = PROMPT.len().div_ceil(16);
    assert_eq!(params["do_remote_prefill"], true);
    assert_eq!(params["do_remote_decode"], false);
    assert_eq!(params["remote_block_ids"].as_array().unwrap().len(), blocks);
    assert!(
        params["remote_block_ids"]
            .as_array()
            .unwrap()
            .iter()
            .all(Value::is_u64),
        "integer block ids, as vLLM"
    );
    assert_eq!(params["remote_engine_id"], "prefill-engine-0");
    assert_eq!(params["remote_host"], "127.0.0.1");
    assert_eq!(params["remote_port"], prefill.port);
    assert_eq!(params["tp_size"], 1);
    assert!(params["remote_request_id"].is_string());

    // Decode with the prefill's parameters passed through verbatim.
    let (status, d) = post(
        &decode.base,
        json!({"prompt": PROMPT, "max_tokens": 5, "kv_transfer_params": params}),
    )
    .await;
    assert_eq!(status, 200, "{d}");
    assert_eq!(d["usage"]["completion_tokens"], 5);
    assert_eq!(d["kv_transfer_params"], Value::Null);
    let m = metrics(&decode.base).await;
    assert_eq!(
        m.value("vllm:nixl_xfer_time_seconds_count", &[("engine", "0")]),
        None,
        "--data-parallel-rank sets the engine label"
    );
    let labels = [("engine", "1")];
    // One observation per TP rank; each rank moves half the KV (Llama-8B shape: 128 KiB/token).
    assert_eq!(
        m.value("vllm:nixl_xfer_time_seconds_count", &labels),
        Some(2.0)
    );
    let total_bytes = (blocks * 16 * 131_072) as f64;
    assert_eq!(
        m.value("vllm:nixl_bytes_transferred_sum", &labels),
        Some(total_bytes)
    );
    assert_eq!(
        m.value("vllm:nixl_num_descriptors_sum", &labels),
        Some((2 * blocks * 32 * 2) as f64)
    );
    assert_eq!(
        m.value("vllm:nixl_num_failed_transfers_total", &labels),
        Some(0.0)
    );

    // The lease was consumed: the same parameters again are refused, clearly.
    let (status, e) = post(
        &decode.base,
        json!({"prompt": PROMPT, "max_tokens": 2, "kv_transfer_params": params}),
    )
    .await;
    assert_eq!(status, 502, "{e}");
    assert!(
        e["message"].as_str().unwrap().contains("no KV lease"),
        "{e}"
    );

    // A dead prefill pod.
    let dead_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut dead = params.clone();
    dead["remote_port"] = json!(dead_port);
    let (status, e) = post(
        &decode.base,
        json!({"prompt": PROMPT, "max_tokens": 2, "kv_transfer_params": dead}),
    )
    .await;
    assert_eq!(status, 502, "{e}");
    assert_eq!(e["type"], "KVTransferError");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains(&format!("127.0.0.1:{dead_port}")),
        "{e}"
    );
    assert_eq!(
        metrics(&decode.base)
            .await
            .value("vllm:nixl_num_failed_transfers_total", &labels),
        Some(2.0)
    );
    // vLLM's engine finishes a request whose KV load failed with `error`.
    assert_eq!(
        metrics(&decode.base).await.value(
            "vllm:request_success_total",
            &[("engine", "1"), ("finished_reason", "error")]
        ),
        Some(2.0)
    );

    // vLLM's own behaviour is available: recompute locally after a failed pull.
    let recompute = spawn(&["--kv-transfer-failure", "recompute"]);
    let (status, r) = post(
        &recompute.base,
        json!({"prompt": PROMPT, "max_tokens": 2, "kv_transfer_params": dead}),
    )
    .await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(
        metrics(&recompute.base)
            .await
            .value("vllm:nixl_num_failed_transfers_total", &[("engine", "0")]),
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unclaimed_leases_expire() {
    let prefill = spawn(&["--kv-lease-seconds", "0.2", "--mode", "echo"]);
    let decode = spawn(&[]);
    let (_, p) = post(&prefill.base, prefill_body()).await;
    let params = p["kv_transfer_params"].clone();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while metrics(&prefill.base)
        .await
        .value("vllm:nixl_num_kv_expired_reqs_total", &[])
        != Some(1.0)
    {
        assert!(std::time::Instant::now() < deadline, "lease never expired");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let (status, e) = post(
        &decode.base,
        json!({"prompt": PROMPT, "max_tokens": 2, "kv_transfer_params": params}),
    )
    .await;
    assert_eq!(status, 502, "{e}");
    // A prefill leg that stops before its length cap returns no parameters (as vLLM).
    let mut stop = prefill_body();
    stop["max_tokens"] = json!(1000);
    let (status, s) = post(&prefill.base, stop).await;
    assert_eq!(status, 200);
    assert_eq!(s["choices"][0]["finish_reason"], "stop");
    assert_eq!(s["kv_transfer_params"], Value::Null);
    // Streaming the prefill leg is refused.
    let mut streamed = prefill_body();
    streamed["stream"] = json!(true);
    assert_eq!(post(&prefill.base, streamed).await.0, 400);
}
