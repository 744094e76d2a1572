//! The proxy's span tree at a real OTLP/gRPC receiver: `llm_d.pd_proxy.request` continues the
//! client's trace, with `llm_d.pd_proxy.prefill` and `llm_d.pd_proxy.decode` under it, and each
//! engine's `llm_request` span under the leg that called it (the context crossed HTTP).

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::time::Duration;

use llmd_telemetry::{OtlpProtocol, TelemetryConfig, TracingConfig, testing};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_span_tree_follows_the_request() {
    let (endpoint, spans) = testing::start_grpc_receiver().await;
    let config = TelemetryConfig {
        tracing: TracingConfig::default().with_endpoint(endpoint, OtlpProtocol::Grpc),
        flush_on_signal: false,
        ..TelemetryConfig::default()
    };
    let guard = llmd_telemetry::init("llmd-pd-proxy", &config).unwrap();
    let sim_flags = [
        "--dummy-tokenizer",
        "--time-scale",
        "0",
        "--block-size",
        "16",
    ];
    let p = common::pair(&sim_flags, &[], &[], None).await;
    let (prefill, proxy) = (p.prefill, p.proxy);
    let trace = "0af7651916cd43dd8448eb211c80319c";
    for stream in [false, true] {
        let r = reqwest::Client::new()
            .post(format!("http://{proxy}/v1/completions"))
            .header("x-prefiller-host-port", prefill.to_string())
            .header("traceparent", format!("00-{trace}-b7ad6b716920333{}-01", u8::from(stream)))
            .json(&serde_json::json!({"prompt": "a prompt long enough for a couple of blocks of sixteen tokens each, yes", "max_tokens": 4, "stream": stream}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.text().await.unwrap();
    }
    tokio::task::spawn_blocking(move || drop(guard))
        .await
        .unwrap();

    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let all = spans.snapshot();
        let n = |name: &str| all.iter().filter(|s| s.span.name == name).count();
        if n("llm_d.pd_proxy.request") >= 2 && n("llm_request") >= 4 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "spans not exported: {:?}",
            all.iter().map(|s| s.span.name.clone()).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let all = spans.snapshot();
    for stream in [false, true] {
        let parent = format!("b7ad6b716920333{}", u8::from(stream));
        let root = all
            .iter()
            .find(|s| {
                s.span.name == "llm_d.pd_proxy.request"
                    && testing::hex(&s.span.parent_span_id) == parent
            })
            .unwrap();
        assert_eq!(root.trace_id_hex(), trace);
        assert_eq!(root.span.kind, 2, "SERVER");
        assert_eq!(
            root.attr("llm_d.pd_proxy.connector").as_deref(),
            Some("nixlv2")
        );
        assert_eq!(
            root.attr("llm_d.pd_proxy.prefill_target"),
            Some(prefill.to_string())
        );
        assert_eq!(root.attr("outcome").as_deref(), Some("ok"));
        for a in [
            "llm_d.pd_proxy.true_ttft_ms",
            "llm_d.pd_proxy.coordinator_overhead_ms",
            "llm_d.pd_proxy.prefill_duration_ms",
            "llm_d.pd_proxy.decode_duration_ms",
            "llm_d.pd_proxy.total_duration_ms",
        ] {
            let v: f64 = root
                .attr(a)
                .unwrap_or_else(|| panic!("{a} missing"))
                .parse()
                .unwrap();
            assert!(v >= 0.0, "{a}");
        }
        let child = |name: &str| {
            all.iter()
                .find(|s| s.span.name == name && s.span.parent_span_id == root.span.span_id)
                .unwrap_or_else(|| panic!("no {name} under the request span"))
        };
        for leg in ["llm_d.pd_proxy.prefill", "llm_d.pd_proxy.decode"] {
            let l = child(leg);
            assert_eq!(l.span.kind, 3, "CLIENT");
            let engine = all
                .iter()
                .find(|s| s.span.name == "llm_request" && s.span.parent_span_id == l.span.span_id)
                .unwrap_or_else(|| panic!("no engine span under {leg}"));
            assert_eq!(engine.trace_id_hex(), trace);
        }
    }
}
