//! The vLLM V1 metrics dashboards and EPPs read, with vLLM's names, labels and buckets, and
//! values that follow from the requests sent: per-request token histograms (buckets from
//! `--max-model-len`), iteration tokens, inference time and TPOT per request, the cache config
//! info (block size and GPU blocks as labels), every finish reason, local prefix-cache hits
//! apart from KV-connector hits, failed NIXL notifications. A separate process, since the
//! histogram buckets are per process; promtool (where installed) parses the text.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use serde_json::json;

const E0: &[(&str, &str)] = &[("engine", "0")];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vllm_v1_metrics_follow_the_requests() {
    let sim = common::spawn_process(&[
        "--dummy-tokenizer",
        "--block-size",
        "16",
        "--time-scale",
        "0.01",
        "--max-model-len",
        "4096",
        "--num-gpu-blocks",
        "200",
    ]);
    let base = sim.base.as_str();
    let m = common::scrape(base).await;
    // Registered before any request, as vLLM's are.
    for reason in ["stop", "length", "abort", "error", "repetition"] {
        assert_eq!(
            m.value(
                "vllm:request_success_total",
                &[("engine", "0"), ("finished_reason", reason)]
            ),
            Some(0.0),
            "{reason}"
        );
    }
    for name in [
        "vllm:external_prefix_cache_queries_total",
        "vllm:external_prefix_cache_hits_total",
        "vllm:nixl_num_failed_notifications_total",
    ] {
        assert_eq!(m.value(name, E0), Some(0.0), "{name}");
    }
    // Info-style: value 1, the cache config as labels, `engine` but no `model_name`.
    let info = m
        .find("vllm:cache_config_info", &[("engine", "0")])
        .next()
        .expect("vllm:cache_config_info");
    assert_eq!(info.value, 1.0);
    assert_eq!(info.label("block_size"), Some("16"));
    assert_eq!(info.label("num_gpu_blocks"), Some("200"));
    assert_eq!(info.label("model_name"), None);
    assert!(
        m.find("vllm:lora_requests_info", &[]).next().is_none(),
        "LoRA is off"
    );

    // A 40-token prompt (two full blocks of 16), 5 tokens out.
    let prompt = "forty bytes of prompt, as byte tokens!!!";
    assert_eq!(prompt.len(), 40);
    let (status, body) = common::post_json(
        base,
        "/v1/completions",
        json!({"prompt": prompt, "max_tokens": 5, "temperature": 0.5}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let m = common::scrape(base).await;
    let sum = |name: &str| m.value(&format!("{name}_sum"), E0).unwrap();
    let count = |name: &str| m.value(&format!("{name}_count"), E0).unwrap();
    assert_eq!(sum("vllm:request_prompt_tokens"), 40.0);
    assert_eq!(sum("vllm:request_generation_tokens"), 5.0);
    assert_eq!(sum("vllm:request_max_num_generation_tokens"), 5.0);
    assert_eq!(sum("vllm:request_params_max_tokens"), 5.0);
    assert_eq!(sum("vllm:request_params_n"), 1.0);
    // Steps: the first carries the prompt and token 1, then one token per step.
    assert_eq!(sum("vllm:iteration_tokens_total"), 45.0);
    assert_eq!(count("vllm:iteration_tokens_total"), 5.0);
    assert_eq!(count("vllm:request_inference_time_seconds"), 1.0);
    assert_eq!(count("vllm:request_time_per_output_token_seconds"), 1.0);
    assert!(sum("vllm:request_inference_time_seconds") <= sum("vllm:e2e_request_latency_seconds"));
    // vLLM's `build_1_2_5_buckets(4096)`: 1, 2, 5, ... 2000.
    let les: Vec<f64> = m
        .buckets("vllm:request_prompt_tokens", E0)
        .into_iter()
        .map(|(le, _)| le)
        .filter(|le| le.is_finite())
        .collect();
    assert_eq!(
        les,
        llmd_telemetry::names::vllm::buckets_1_2_5(4096),
        "buckets follow --max-model-len"
    );
    assert_eq!(
        m.value(
            "vllm:request_success_total",
            &[("engine", "0"), ("finished_reason", "length")]
        ),
        Some(1.0)
    );
    // No local hit on a cold cache; every prompt token is a connector query (every sim runs a
    // connector), none a connector hit.
    let c = |name: &str| m.value(name, E0).unwrap();
    assert_eq!(c("vllm:prefix_cache_queries_total"), 40.0);
    assert_eq!(c("vllm:prefix_cache_hits_total"), 0.0);
    assert_eq!(c("vllm:external_prefix_cache_queries_total"), 40.0);
    assert_eq!(c("vllm:external_prefix_cache_hits_total"), 0.0);

    // Again: both full blocks hit locally (39 tokens may hit: 2 blocks); the connector is
    // asked only for the 8 tokens after them.
    common::post_json(
        base,
        "/v1/completions",
        json!({"prompt": prompt, "max_tokens": 5}),
    )
    .await;
    let m = common::scrape(base).await;
    let c = |name: &str| m.value(name, E0).unwrap();
    assert_eq!(c("vllm:prefix_cache_queries_total"), 80.0);
    assert_eq!(c("vllm:prefix_cache_hits_total"), 32.0);
    assert_eq!(c("vllm:external_prefix_cache_queries_total"), 48.0);

    // A decode leg whose prompt is all local (a full prefix hit) only notifies the prefill
    // pod; when that pod is gone, the notification failed, not a transfer, and the request
    // finishes as `error` (the default --kv-transfer-failure).
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let params = json!({"do_remote_prefill": true, "do_remote_decode": false, "remote_block_ids": [0, 1],
        "remote_engine_id": "gone", "remote_host": "127.0.0.1", "remote_port": dead, "remote_request_id": "x"});
    let (status, _) = common::post_json(
        base,
        "/v1/completions",
        json!({"prompt": prompt, "max_tokens": 2, "kv_transfer_params": params}),
    )
    .await;
    assert_eq!(status, 502);
    let m = common::scrape(base).await;
    assert_eq!(
        m.value("vllm:nixl_num_failed_notifications_total", E0),
        Some(1.0)
    );
    assert_eq!(
        m.value("vllm:nixl_num_failed_transfers_total", E0),
        Some(0.0)
    );
    assert_eq!(
        m.value(
            "vllm:request_success_total",
            &[("engine", "0"), ("finished_reason", "error")]
        ),
        Some(1.0)
    );

    // The real Prometheus parser reads it (exit 3 = naming lints only).
    let text = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    llmd_testkit::peers::promtool_check_metrics(&text);
}
