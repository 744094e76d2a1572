//! With tracing on, every request is the root of its trace: a CLIENT span
//! `llmd.loadgen.request` at a real OTLP/gRPC receiver, and the simulator's `llm_request`
//! span continues that trace as its child.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::time::Duration;

use clap::Parser;
use llmd_loadgen::{Args, Command};
use llmd_telemetry::{OtlpProtocol, TelemetryConfig, TracingConfig, testing};
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_request_roots_a_trace_the_engine_continues() {
    let (endpoint, spans) = testing::start_grpc_receiver().await;
    let config = TelemetryConfig {
        tracing: TracingConfig::default().with_endpoint(endpoint, OtlpProtocol::Grpc),
        flush_on_signal: false,
        ..TelemetryConfig::default()
    };
    let guard = llmd_telemetry::init("llmd-loadgen", &config).unwrap();
    let sim = llmd_testkit::sim::start(llmd_testkit::sim::SimBuilder::new().flags([
        "--dummy-tokenizer",
        "--model",
        "m",
        "--time-scale",
        "0",
    ]))
    .await;
    let endpoint = format!("{}/v1", sim.url());
    let Command::Run(run) = Args::parse_from([
        "l",
        "run",
        "--endpoint",
        &endpoint,
        "--model",
        "m",
        "--tokenizer",
        "bytes",
        "--quiet",
        "--load",
        "constant",
        "--rate",
        "50",
        "--requests",
        "3",
        "--input-tokens",
        "8",
        "--output-tokens",
        "2",
        "--stream",
    ])
    .command
    else {
        unreachable!()
    };
    let r = llmd_loadgen::run_load(&run, CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(r.overall.ok, 3);
    tokio::task::spawn_blocking(move || drop(guard))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let count = |name: &str| {
        spans
            .snapshot()
            .iter()
            .filter(|s| s.span.name == name)
            .count()
    };
    while count("llmd.loadgen.request") < 3 || count("llm_request") < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "spans: {:?}",
            spans.snapshot()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let all = spans.snapshot();
    for client in all.iter().filter(|s| s.span.name == "llmd.loadgen.request") {
        assert_eq!(client.span.kind, 3, "CLIENT");
        assert!(client.span.parent_span_id.is_empty(), "a root span");
        assert_eq!(
            client.attr("http.response.status_code").as_deref(),
            Some("200")
        );
        let id = client.attr("gen_ai.request.id").unwrap();
        assert_eq!(
            uuid::Uuid::parse_str(&id).map(|u| u.get_version_num()),
            Ok(4),
            "{id}"
        );
        let engine = all
            .iter()
            .find(|s| s.span.name == "llm_request" && s.trace_id_hex() == client.trace_id_hex())
            .unwrap_or_else(|| panic!("no engine span in trace {}", client.trace_id_hex()));
        assert_eq!(engine.span.parent_span_id, client.span.span_id);
    }
}
