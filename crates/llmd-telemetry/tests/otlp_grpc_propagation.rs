//! A span started in one component, whose context is injected into a real HTTP request and
//! extracted on the other side, arrives at an OTLP/gRPC receiver as a child with the same trace
//! id and the attributes that were set.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::time::Duration;

use llmd_telemetry::{OtlpProtocol, TelemetryConfig, TracingConfig, names, propagation};
use tracing::Instrument;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_span_crosses_http_and_arrives_with_parent_and_attributes() {
    let (endpoint, spans) = common::start_grpc_receiver().await;
    let config = TelemetryConfig {
        tracing: TracingConfig {
            resource_attributes: vec![("k8s.pod.name".into(), "proxy-0".into())],
            ..TracingConfig::default()
        }
        .with_endpoint(endpoint, OtlpProtocol::Grpc),
        ..TelemetryConfig::default()
    };
    let guard = llmd_telemetry::init("llmd-test-proxy", &config).unwrap();
    assert!(guard.tracing_enabled());

    // Component B: an HTTP server that continues the caller's trace.
    let app = axum::Router::new().route(
        "/v1/completions",
        axum::routing::post(|headers: axum::http::HeaderMap| async move {
            let span = tracing::info_span!(
                names::spans::LLM_REQUEST,
                otel.kind = "server",
                gen_ai.request.id = tracing::field::Empty,
                gen_ai.usage.prompt_tokens = 128_i64,
            );
            propagation::set_parent(&span, propagation::extract_from_headers(&headers));
            span.record("gen_ai.request.id", "req-42");
            async { "ok" }.instrument(span).await
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    // Component A: a client span whose context goes into the request headers.
    let client_span = tracing::info_span!(
        names::spans::PD_PROXY_DECODE,
        llm_d.pd_proxy.connector = "nixlv2"
    );
    let mut headers = http::HeaderMap::new();
    propagation::inject_span_into_headers(&client_span, &mut headers);
    let traceparent = headers
        .get("traceparent")
        .expect("traceparent injected")
        .to_str()
        .unwrap()
        .to_owned();
    let response = reqwest::Client::new()
        .post(format!("http://{addr}/v1/completions"))
        .headers(headers)
        .body("{}")
        .send()
        .instrument(client_span.clone())
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    drop(client_span);

    // Wait for both spans; the batch processor exports on flush.
    let flusher = tokio::task::spawn_blocking(move || {
        guard.flush();
        guard
    });
    let guard = flusher.await.unwrap();
    let server = spans
        .wait_for(names::spans::LLM_REQUEST, Duration::from_secs(10))
        .await
        .expect("server span");
    let client = spans
        .wait_for(names::spans::PD_PROXY_DECODE, Duration::from_secs(10))
        .await
        .expect("client span");

    assert_eq!(server.span.trace_id, client.span.trace_id, "same trace");
    assert_eq!(
        server.span.parent_span_id, client.span.span_id,
        "server span is the client span's child"
    );
    assert!(
        traceparent.contains(&client.trace_id_hex()),
        "{traceparent} carries the client's trace id"
    );
    assert!(traceparent.contains(&common::hex(&client.span.span_id)));
    assert_eq!(server.attr("gen_ai.request.id").as_deref(), Some("req-42"));
    assert_eq!(
        server.attr("gen_ai.usage.prompt_tokens").as_deref(),
        Some("128")
    );
    assert_eq!(
        client.attr("llm_d.pd_proxy.connector").as_deref(),
        Some("nixlv2")
    );
    // SpanKind::Server = 2 in OTLP.
    assert_eq!(server.span.kind, 2);
    assert_eq!(server.service_name, "llmd-test-proxy");
    tokio::task::spawn_blocking(move || drop(guard))
        .await
        .unwrap();
}
