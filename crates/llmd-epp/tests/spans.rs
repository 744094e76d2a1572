//! The EPP's spans arrive at a real OTLP/gRPC receiver as children of the request's
//! `traceparent`: the prefix-cache scorer with per-pod matched blocks, and the P/D handler's
//! decision with its cache-hit ratio.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::time::Duration;

use common::{
    completion, epp, pd_config, route_with, serve, sim, sim_flags, spec_of, text, warm_up,
};
use llmd_telemetry::{OtlpProtocol, TelemetryConfig, TracingConfig, testing};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scorer_and_handler_spans_continue_the_trace() {
    let Some(tok) = common::llama_tokenizer() else {
        return;
    };
    let (endpoint, spans) = testing::start_grpc_receiver().await;
    let config = TelemetryConfig {
        tracing: TracingConfig::default().with_endpoint(endpoint, OtlpProtocol::Grpc),
        flush_on_signal: false,
        ..TelemetryConfig::default()
    };
    let guard = llmd_telemetry::init("llmd-epp", &config).unwrap();
    let (decode, _d) = sim(&sim_flags(&tok, "tcp://*:0")).await;
    let (prefill, _p) = sim(&sim_flags(&tok, "tcp://*:0")).await;
    let specs = vec![spec_of(&decode, "decode"), spec_of(&prefill, "prefill")];
    let (decode_pod, prefill_pod) = (specs[0].host_port(), specs[1].host_port());
    let mut e = epp(&pd_config(&tok), specs, None, None).await;
    let kv = e.epp.scheduler.kv().unwrap().index.clone();
    warm_up(&kv, &[decode_pod.clone(), prefill_pod.clone()]).await;

    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let long = text("span", 500);
    // Loads the tokenizer (seconds in a debug build) before the timed routes.
    common::matched(e.epp.metrics, &long).await;
    let body = completion(&long, 2);
    let cold = route_with(
        &mut e.client,
        "/v1/completions",
        &body,
        &[("traceparent", &format!("00-{trace}-00f067aa0ba90001-01"))],
    )
    .await;
    assert_eq!(cold.prefiller().as_deref(), Some(prefill_pod.as_str()));
    let usage = serve(&decode_pod, &body).await;
    let blocks = usage["prompt_tokens"].as_u64().unwrap() / 64;
    common::wait_indexed(e.epp.metrics, &long, &decode_pod, blocks).await;
    let warm = route_with(
        &mut e.client,
        "/v1/completions",
        &body,
        &[("traceparent", &format!("00-{trace}-00f067aa0ba90002-01"))],
    )
    .await;
    assert_eq!(warm.prefiller(), None);
    drop(e);
    tokio::task::spawn_blocking(move || drop(guard))
        .await
        .unwrap();

    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let find = |parent: &str, name: &str| {
        let all = spans.snapshot();
        let root = all.iter().find(|s| {
            s.span.name == "llm_d.epp.request" && testing::hex(&s.span.parent_span_id) == parent
        })?;
        assert_eq!(root.trace_id_hex(), trace);
        assert_eq!(root.span.kind, 2, "SERVER");
        // `name` is a descendant of the request span.
        let mut found = None;
        for s in all.iter().filter(|s| s.span.name == name) {
            let mut p = s.span.parent_span_id.clone();
            while let Some(up) = all.iter().find(|x| x.span.span_id == p) {
                if up.span.span_id == root.span.span_id {
                    found = Some(s.clone());
                    break;
                }
                p = up.span.parent_span_id.clone();
            }
        }
        found
    };
    let names = [
        "llm_d.epp.scorer.prefix_cache",
        "llm_d.epp.profile_handler.pick",
    ];
    loop {
        let all_there = ["00f067aa0ba90001", "00f067aa0ba90002"]
            .iter()
            .all(|p| names.iter().all(|n| find(p, n).is_some()));
        if all_there {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "spans not exported: {:?}",
            spans
                .snapshot()
                .iter()
                .map(|s| s.span.name.clone())
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cold_pick = find("00f067aa0ba90001", names[1]).unwrap();
    assert_eq!(
        cold_pick.attr("decision").as_deref(),
        Some("prefill-decode")
    );
    assert_eq!(cold_pick.attr("pd_threshold").as_deref(), Some("256"));
    assert_eq!(
        cold_pick.attr("llm_d.epp.prefill_pod").as_deref(),
        Some(prefill_pod.as_str())
    );
    assert_eq!(
        cold_pick.attr("llm_d.epp.decode_pod").as_deref(),
        Some(decode_pod.as_str())
    );
    assert!(
        cold_pick
            .attr("user_input_bytes")
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= long.len() as u64
    );

    let warm_pick = find("00f067aa0ba90002", names[1]).unwrap();
    assert_eq!(warm_pick.attr("decision").as_deref(), Some("decode-only"));
    let ratio: f64 = warm_pick.attr("cache_hit_ratio").unwrap().parse().unwrap();
    assert!(ratio > 0.9, "cache_hit_ratio {ratio}");
    let warm_scorer = find("00f067aa0ba90002", names[0]).unwrap();
    assert_eq!(
        warm_scorer.attr("llm_d.epp.prefix_cache.total_blocks"),
        Some(blocks.to_string())
    );
    let per_pod = warm_scorer
        .attr("llm_d.epp.prefix_cache.matched_blocks")
        .unwrap();
    assert!(
        per_pod.contains(&format!("{decode_pod}={blocks}")),
        "{per_pod}"
    );
}
