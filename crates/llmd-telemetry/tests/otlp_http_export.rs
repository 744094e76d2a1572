//! With `http/protobuf` the same spans go to an OTLP/HTTP receiver at `/v1/traces`, the
//! service name comes from `OTEL_SERVICE_NAME`, and spans are flushed when the guard drops.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::time::Duration;

use llmd_telemetry::{TelemetryConfig, names};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_are_exported_over_http_protobuf_on_drop() {
    let (url, spans) = common::start_http_receiver().await;
    let base = url.trim_end_matches("/v1/traces").to_owned();
    let vars = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", base.as_str()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ("OTEL_SERVICE_NAME", "custom-name"),
        ("OTEL_TRACES_SAMPLER", "always_on"),
    ];
    let config = TelemetryConfig::from_lookup(|k| {
        vars.iter()
            .find(|(n, _)| *n == k)
            .map(|(_, v)| v.to_string())
    });
    assert_eq!(config.tracing.endpoint.as_deref(), Some(url.as_str()));
    let guard = llmd_telemetry::init("llmd-test", &config).unwrap();

    {
        let span = tracing::info_span!(
            names::spans::GATEWAY_REQUEST,
            http.route = "/v1/chat/completions"
        );
        let _entered = span.enter();
        let child = tracing::info_span!(
            names::spans::EPP_PROFILE_HANDLER_PICK,
            decision = "prefill-decode"
        );
        drop(child);
    }
    tokio::task::spawn_blocking(move || drop(guard))
        .await
        .unwrap();

    let root = spans
        .wait_for(names::spans::GATEWAY_REQUEST, Duration::from_secs(5))
        .await
        .expect("root span");
    let pick = spans
        .named(names::spans::EPP_PROFILE_HANDLER_PICK)
        .expect("child span");
    assert_eq!(root.service_name, "custom-name");
    assert_eq!(pick.span.parent_span_id, root.span.span_id);
    assert_eq!(pick.attr("decision").as_deref(), Some("prefill-decode"));
    assert_eq!(
        root.attr("http.route").as_deref(),
        Some("/v1/chat/completions")
    );
}
