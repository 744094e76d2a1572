//! With no endpoint configured, or with `OTEL_SDK_DISABLED=true`, nothing is exported and
//! nothing fails: spans are created, propagation passes the caller's context through, and the
//! guard drops at once.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::time::{Duration, Instant};

use llmd_telemetry::{TelemetryConfig, names, propagation};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_endpoint_and_sdk_disabled_export_nothing() {
    // A receiver where an endpoint-less SDK would send by default (localhost:4317), if the port
    // is free here, and one the disabled config points at explicitly.
    let default_port = tokio::net::TcpListener::bind("127.0.0.1:4317").await.ok();
    let default_sink = match default_port {
        Some(listener) => Some(common::start_grpc_receiver_on(listener).await),
        None => None,
    };
    let (endpoint, explicit_sink) = common::start_grpc_receiver().await;

    let vars = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_SDK_DISABLED", "true"),
    ];
    let disabled = TelemetryConfig::from_lookup(|k| {
        vars.iter()
            .find(|(n, _)| *n == k)
            .map(|(_, v)| v.to_string())
    });
    assert!(!disabled.tracing.enabled());
    assert!(!TelemetryConfig::from_lookup(|_| None).tracing.enabled());

    let guard = llmd_telemetry::init("llmd-test", &disabled).unwrap();
    assert!(!guard.tracing_enabled());

    let incoming_tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    for i in 0..100 {
        let span = tracing::info_span!(names::spans::PD_PROXY_REQUEST, i);
        let _e = span.enter();
        let mut headers = http::HeaderMap::new();
        headers.insert("traceparent", incoming_tp.parse().unwrap());
        propagation::set_parent(&span, propagation::extract_from_headers(&headers));
        propagation::inject_span_into_headers(&span, &mut headers);
        assert_eq!(
            headers.get("traceparent").unwrap(),
            incoming_tp,
            "caller context passed through"
        );
        let mut fresh = http::HeaderMap::new();
        propagation::inject_span_into_headers(&span, &mut fresh);
        assert!(fresh.is_empty(), "no context invented when tracing is off");
    }
    guard.flush();
    let started = Instant::now();
    drop(guard);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "drop does not wait on an exporter"
    );

    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        explicit_sink.snapshot().is_empty(),
        "disabled SDK exported spans"
    );
    if let Some(sink) = default_sink {
        assert!(
            sink.snapshot().is_empty(),
            "spans went to the default endpoint"
        );
    }
}
