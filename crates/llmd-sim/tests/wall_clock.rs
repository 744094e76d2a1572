//! Every duration the simulator reports is time the request really spent, checked against the
//! client's own clock around each request (not against the simulator's arithmetic), at two
//! `--time-scale`s: a P/D pair in-process, the decode leg streamed so the client sees its
//! first token; metrics and the `llm_request` spans (received over OTLP) must lie inside the
//! client's windows, the KV transfer inside the decode TTFT, and numeric span attributes must
//! arrive as numbers. The prefix-cache counters must split local hits from connector hits as
//! vLLM does.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use llmd_sim::testing::{SimBuilder, spawn};
use llmd_telemetry::testing::{self, Received};
use llmd_telemetry::{OtlpProtocol, TelemetryConfig, TracingConfig, exposition};
use opentelemetry_proto::tonic::common::v1::any_value::Value as Otlp;
use serde_json::{Value, json};

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64
}

/// The client's view of one request.
#[derive(Debug)]
struct Window {
    /// Wall clock just before sending / just after the last byte.
    sent: SystemTime,
    done: SystemTime,
    /// Send to first streamed token (streamed requests), send to last byte.
    ttft: Option<f64>,
    e2e: f64,
    body: Value,
}

async fn post(url: &str, id: &str, body: Value) -> Window {
    let client = reqwest::Client::new();
    let sent = SystemTime::now();
    let t0 = Instant::now();
    let resp = client
        .post(url)
        .header("x-request-id", id)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let streamed = body["stream"] == true;
    let mut ttft = None;
    let mut text = String::new();
    let mut chunks = resp.bytes_stream();
    while let Some(chunk) = chunks.next().await {
        let chunk = String::from_utf8(chunk.unwrap().to_vec()).unwrap();
        if streamed && ttft.is_none() && chunk.contains("\"text\"") {
            ttft = Some(t0.elapsed().as_secs_f64());
        }
        text.push_str(&chunk);
    }
    let e2e = t0.elapsed().as_secs_f64();
    let done = SystemTime::now();
    let body = if streamed {
        Value::String(text)
    } else {
        serde_json::from_str(&text).unwrap()
    };
    Window {
        sent,
        done,
        ttft,
        e2e,
        body,
    }
}

fn attr<'a>(span: &'a Received, key: &str) -> &'a Otlp {
    span.span
        .attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
        .unwrap_or_else(|| panic!("{key} missing on {:?}", span.span.attributes))
}

fn int(span: &Received, key: &str) -> i64 {
    match attr(span, key) {
        Otlp::IntValue(i) => *i,
        other => panic!("{key} must be an int, got {other:?}"),
    }
}

fn double(span: &Received, key: &str) -> f64 {
    match attr(span, key) {
        Otlp::DoubleValue(d) => *d,
        other => panic!("{key} must be a double, got {other:?}"),
    }
}

async fn engine_span(spans: &testing::Spans, id: &str) -> Received {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(s) = spans.snapshot().into_iter().find(|s| {
            s.span.name == "llm_request"
                && s.span.attributes.iter().any(|kv| {
                    kv.key == "gen_ai.request.id"
                        && matches!(kv.value.as_ref().and_then(|v| v.value.as_ref()), Some(Otlp::StringValue(v)) if v == id)
                })
        }) {
            return s;
        }
        assert!(Instant::now() < deadline, "no llm_request span for {id}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Seconds of one observation: the `_sum` of a histogram observed once on `engine`.
fn single(m: &exposition::Exposition, name: &str, engine: &str) -> f64 {
    let labels = [("engine", engine)];
    assert_eq!(
        m.value(&format!("{name}_count"), &labels),
        Some(1.0),
        "{name} on engine {engine}"
    );
    m.value(&format!("{name}_sum"), &labels).unwrap()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-6 * a.abs().max(1e-3)
}

const PROMPT_BLOCKS: usize = 64;

/// One P/D request through a fresh pair at `scale`, checked against the client's windows.
async fn scenario(
    scale: f64,
    prefill_rank: &str,
    decode_rank: &str,
    spans: &testing::Spans,
    guard: &llmd_telemetry::TelemetryGuard,
) {
    let metrics = common::metrics();
    let scale_flag = scale.to_string();
    let base = [
        "--dummy-tokenizer",
        "--block-size",
        "16",
        "--time-scale",
        &scale_flag,
    ];
    let prefill = spawn(
        SimBuilder::new()
            .flags(base)
            .flags(["--data-parallel-rank", prefill_rank])
            .metrics(metrics.clone()),
    )
    .await
    .unwrap();
    // 1 GB/s: a 64-block prompt (128 MiB of Llama-8B KV) takes ~135 ms of model time.
    let decode = spawn(
        SimBuilder::new()
            .flags(base)
            .flags([
                "--data-parallel-rank",
                decode_rank,
                "--kv-transfer-bandwidth-gbps",
                "1",
            ])
            .metrics(metrics.clone()),
    )
    .await
    .unwrap();
    let prompt: String = (0..PROMPT_BLOCKS * 16)
        .map(|i| char::from(b'a' + (i * 7 % 26) as u8))
        .collect();
    let prompt_len = prompt.len() as f64;
    let kv = json!({"do_remote_decode": true, "do_remote_prefill": false, "remote_engine_id": null,
                    "remote_block_ids": null, "remote_host": null, "remote_port": null});
    let (pid, did) = (format!("wall-p-{scale}"), format!("wall-d-{scale}"));
    let p = post(
        &format!("{}/v1/completions", prefill.url()),
        &pid,
        json!({"prompt": prompt, "max_tokens": 1, "kv_transfer_params": kv}),
    )
    .await;
    let params = p.body["kv_transfer_params"].clone();
    assert!(params.is_object(), "{}", p.body);
    let d = post(
        &format!("{}/v1/completions", decode.url()),
        &did,
        json!({"prompt": prompt, "max_tokens": 40, "stream": true, "kv_transfer_params": params}),
    )
    .await;
    let client_ttft = d.ttft.unwrap();

    let m = exposition::parse(&metrics.render()).unwrap();
    // Decode engine: every phase inside the client's window.
    let e2e = single(&m, "vllm:e2e_request_latency_seconds", decode_rank);
    let ttft = single(&m, "vllm:time_to_first_token_seconds", decode_rank);
    let queue = single(&m, "vllm:request_queue_time_seconds", decode_rank);
    let prefill_t = single(&m, "vllm:request_prefill_time_seconds", decode_rank);
    let decode_t = single(&m, "vllm:request_decode_time_seconds", decode_rank);
    let inference = single(&m, "vllm:request_inference_time_seconds", decode_rank);
    let tpot = single(
        &m,
        "vllm:request_time_per_output_token_seconds",
        decode_rank,
    );
    let xfer = single(&m, "vllm:nixl_xfer_time_seconds", decode_rank);
    let post_t = single(&m, "vllm:nixl_post_time_seconds", decode_rank);
    let itl_sum = m
        .value(
            "vllm:inter_token_latency_seconds_sum",
            &[("engine", decode_rank)],
        )
        .unwrap();
    println!(
        "scale {scale}: client decode ttft {:.4} e2e {:.4} | reported ttft {ttft:.4} e2e {e2e:.4} \
         queue {queue:.4} xfer {xfer:.4} post {post_t:.4} prefill {prefill_t:.4} decode {decode_t:.4} \
         | client prefill leg {:.4} reported {:.4}",
        client_ttft,
        d.e2e,
        p.e2e,
        single(&m, "vllm:e2e_request_latency_seconds", prefill_rank),
    );
    assert!(
        ttft <= client_ttft,
        "reported TTFT {ttft} > client's {client_ttft}"
    );
    assert!(e2e <= d.e2e, "reported e2e {e2e} > client's {}", d.e2e);
    assert!(
        xfer <= ttft,
        "KV transfer {xfer} longer than the TTFT {ttft} containing it"
    );
    assert!(post_t <= xfer);
    assert!(
        queue >= xfer,
        "the decode's queue time includes its KV pull"
    );
    assert!(ttft <= e2e && inference <= e2e && queue + inference <= e2e + 1e-9);
    assert!(close(prefill_t + decode_t, inference));
    assert!(close(tpot * 39.0, decode_t));
    assert!(
        close(itl_sum, decode_t),
        "ITLs {itl_sum} add up to the decode time {decode_t}"
    );
    // The transfer was really slept (scaled): 64 blocks × 16 tokens × 128 KiB at 1 GB/s.
    let model_secs = 1e-3 + (PROMPT_BLOCKS * 16 * 131_072) as f64 / 1e9;
    assert!(
        xfer >= model_secs * scale,
        "{xfer} < {}",
        model_secs * scale
    );
    // The report covers the window, not a fraction of it (a report in model time scaled twice
    // would be far below the client's).
    assert!(
        e2e >= 0.25 * d.e2e,
        "reported e2e {e2e} vs client {}",
        d.e2e
    );
    // Prefill engine, non-streamed: inside its window.
    let p_e2e = single(&m, "vllm:e2e_request_latency_seconds", prefill_rank);
    assert!(p_e2e <= p.e2e);
    assert!(single(&m, "vllm:time_to_first_token_seconds", prefill_rank) <= p_e2e);

    // Cache accounting, as vLLM's scheduler: the pulled prompt is a connector hit, not a local
    // prefix-cache hit.
    let c = |name: &str| m.value(name, &[("engine", decode_rank)]).unwrap();
    assert_eq!(c("vllm:prefix_cache_queries_total"), prompt_len);
    assert_eq!(c("vllm:prefix_cache_hits_total"), 0.0);
    assert_eq!(c("vllm:external_prefix_cache_queries_total"), prompt_len);
    assert_eq!(c("vllm:external_prefix_cache_hits_total"), prompt_len);

    // The spans: inside the client's windows, from arrival, numbers as numbers, the same
    // durations as the metrics.
    tokio::task::block_in_place(|| guard.flush());
    let ds = engine_span(spans, &format!("cmpl-{did}")).await;
    let (start, end) = (ds.span.start_time_unix_nano, ds.span.end_time_unix_nano);
    assert!(unix_nanos(d.sent) <= start && end <= unix_nanos(d.done));
    let span_e2e = double(&ds, "gen_ai.latency.e2e");
    assert!(close(span_e2e, e2e), "span e2e {span_e2e} vs metric {e2e}");
    assert!(
        (start as f64 + span_e2e * 1e9) <= end as f64 + 2e6,
        "span opened at arrival"
    );
    assert!(close(
        double(&ds, "gen_ai.latency.time_to_first_token"),
        ttft
    ));
    assert!(close(double(&ds, "gen_ai.latency.time_in_queue"), queue));
    assert!(close(
        double(&ds, "gen_ai.latency.time_in_model_prefill"),
        prefill_t
    ));
    assert!(close(
        double(&ds, "gen_ai.latency.time_in_model_decode"),
        decode_t
    ));
    assert!(close(
        double(&ds, "gen_ai.latency.time_in_model_inference"),
        inference
    ));
    assert_eq!(
        int(&ds, "gen_ai.usage.prompt_tokens"),
        PROMPT_BLOCKS as i64 * 16
    );
    assert_eq!(int(&ds, "gen_ai.usage.completion_tokens"), 40);
    assert_eq!(int(&ds, "gen_ai.request.max_tokens"), 40);
    assert_eq!(int(&ds, "gen_ai.request.n"), 1);
    assert_eq!(double(&ds, "gen_ai.request.temperature"), 1.0);
    assert_eq!(double(&ds, "gen_ai.request.top_p"), 1.0);
    let ps = engine_span(spans, &format!("cmpl-{pid}")).await;
    assert!(
        unix_nanos(p.sent) <= ps.span.start_time_unix_nano
            && ps.span.end_time_unix_nano <= unix_nanos(p.done)
    );
    assert!(close(double(&ps, "gen_ai.latency.e2e"), p_e2e));
    assert_eq!(int(&ps, "gen_ai.usage.completion_tokens"), 1);
    prefill.stop().await;
    decode.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reported_durations_lie_within_the_clients_window() {
    let (endpoint, spans) = testing::start_grpc_receiver().await;
    let config = TelemetryConfig {
        tracing: TracingConfig::default().with_endpoint(endpoint, OtlpProtocol::Grpc),
        flush_on_signal: false,
        ..TelemetryConfig::default()
    };
    let guard = llmd_telemetry::init("llmd-sim", &config).unwrap();
    for (scale, prefill_rank, decode_rank) in [(0.2, "31", "32"), (1.0, "33", "34")] {
        scenario(scale, prefill_rank, decode_rank, &spans, &guard).await;
    }
    tokio::task::spawn_blocking(move || drop(guard))
        .await
        .unwrap();
}
