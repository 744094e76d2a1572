//! One SERVER span `llm_request` per request, parented by the incoming `traceparent`, with
//! vLLM's `gen_ai.*` attributes, arriving at a real OTLP/gRPC receiver.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::time::Duration;

use llmd_telemetry::{OtlpProtocol, TelemetryConfig, TracingConfig, testing};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llm_request_span_continues_the_callers_trace() {
    let (endpoint, spans) = testing::start_grpc_receiver().await;
    let config = TelemetryConfig {
        tracing: TracingConfig::default().with_endpoint(endpoint, OtlpProtocol::Grpc),
        flush_on_signal: false,
        ..TelemetryConfig::default()
    };
    let guard = llmd_telemetry::init("llmd-sim", &config).unwrap();
    let (sim, shutdown) = common::start(&["--dummy-tokenizer", "--time-scale", "0"]).await;
    let base = format!("http://{}", sim.addr);

    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    for (stream, parent) in [(false, "00f067aa0ba902b7"), (true, "00f067aa0ba902b8")] {
        let resp = reqwest::Client::new()
            .post(format!("{base}/v1/completions"))
            .header("traceparent", format!("00-{trace}-{parent}-01"))
            .header("x-request-id", format!("req-{stream}"))
            .json(&serde_json::json!({"prompt": "trace me", "max_tokens": 3, "stream": stream}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        resp.text().await.unwrap();
    }
    tokio::task::spawn_blocking(move || drop(guard))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while spans
        .snapshot()
        .iter()
        .filter(|s| s.span.name == "llm_request")
        .count()
        < 2
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "spans not exported: {:?}",
            spans.snapshot()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for (stream, parent) in [(false, "00f067aa0ba902b7"), (true, "00f067aa0ba902b8")] {
        let span = spans
            .snapshot()
            .into_iter()
            .find(|s| {
                s.span.name == "llm_request"
                    && s.attr("gen_ai.request.id") == Some(format!("cmpl-req-{stream}"))
            })
            .unwrap();
        assert_eq!(span.trace_id_hex(), trace);
        assert_eq!(testing::hex(&span.span.parent_span_id), parent);
        assert_eq!(span.span.kind, 2, "SERVER");
        assert_eq!(span.service_name, "llmd-sim");
        assert_eq!(
            span.attr("gen_ai.usage.prompt_tokens").as_deref(),
            Some("8")
        );
        assert_eq!(
            span.attr("gen_ai.usage.completion_tokens").as_deref(),
            Some("3")
        );
        assert_eq!(span.attr("gen_ai.request.max_tokens").as_deref(), Some("3"));
        assert_eq!(
            span.attr("gen_ai.response.model").as_deref(),
            Some("meta-llama/Llama-3.1-8B-Instruct")
        );
        for latency in [
            "gen_ai.latency.time_to_first_token",
            "gen_ai.latency.time_in_queue",
            "gen_ai.latency.e2e",
        ] {
            let v: f64 = span.attr(latency).unwrap().parse().unwrap();
            assert!(v >= 0.0, "{latency}");
        }
    }
    shutdown.cancel();
}
