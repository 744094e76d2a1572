//! Real Envoy 1.40 as the gateway, with the tracing docs/envoy/envoy-ext-proc.yaml sets up,
//! exporting to an OTLP/gRPC receiver in this test together with the EPP, the P/D proxy and the
//! simulators (in-process, through this process's tracer): one trace per request (issue 13 item
//! 2, "the same holds with real Envoy as the gateway").
//!
//! What Envoy does, as checked here: its request span (`gateway.request`, the route's decorator,
//! SERVER, `service.name` gateway-api-inference-extension) continues the client's
//! `traceparent`, or starts the trace when there is none; the pod (engine or proxy) continues
//! Envoy's span, never an EPP span, and lies inside its window. The ext_proc call gets a span of
//! its own, a CLIENT child of Envoy's request span, and the EPP's `llm_d.epp.request` is that
//! span's child. The ext_proc span ends when Envoy tears the filter down, at or after the end of
//! the request span that contains it. Envoy's tags are strings (`http.status_code: "200"`).

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{MODEL, envoy_traced, epp_tls, pd_setup, sim};
use llmd_epp::config::ROUND_ROBIN_CONFIG;
use llmd_epp::endpoints::Role;
use llmd_telemetry::names::{services, spans as names};
use llmd_telemetry::testing::{self, Received, Spans};
use llmd_telemetry::{OtlpProtocol, TelemetryConfig, TracingConfig};
use llmd_testkit::peers::envoy_bin;
use opentelemetry_proto::tonic::common::v1::any_value::Value as Otlp;
use serde_json::json;

/// The name Envoy's gRPC client gives the span of an ext_proc stream.
const EXT_PROC_SPAN: &str = "async envoy.service.ext_proc.v3.ExternalProcessor.Process egress";
/// OTLP span kinds.
const SERVER: i32 = 2;
const CLIENT: i32 = 3;

/// Sends one completion through `front` (streamed or not), with this client span as the
/// `traceparent` when given; reads the whole answer.
async fn complete(front: SocketAddr, client: Option<(&str, &str)>, stream: bool) {
    let mut r = reqwest::Client::new()
        .post(format!("http://{front}/v1/completions"))
        .json(&json!({"model": MODEL, "prompt": "a traced request", "max_tokens": 4, "stream": stream}));
    if let Some((trace, span)) = client {
        r = r.header("traceparent", format!("00-{trace}-{span}-01"));
    }
    let r = r.send().await.unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert!(text.contains("choices"), "{text}");
}

/// The spans of `trace`.
fn trace_of(spans: &Spans, trace: &str) -> Vec<Received> {
    spans
        .snapshot()
        .into_iter()
        .filter(|s| s.trace_id_hex() == trace)
        .collect()
}

fn one<'a>(spans: &'a [Received], name: &str, service: Option<&str>) -> &'a Received {
    let found: Vec<&Received> = spans
        .iter()
        .filter(|s| s.span.name == name && service.is_none_or(|svc| s.service_name == svc))
        .collect();
    assert_eq!(found.len(), 1, "one {name} expected: {found:#?}");
    found[0]
}

fn inside(child: &Received, parent: &Received) {
    let ((c0, c1), (p0, p1)) = (child.window(), parent.window());
    assert!(
        p0 <= c0 && c1 <= p1,
        "{} [{c0}, {c1}] lies outside {} [{p0}, {p1}]",
        child.span.name,
        parent.span.name
    );
}

/// Checks one request's trace; `pd`: served by the P/D proxy. Returns Envoy's span.
fn check_trace(spans: &[Received], client_span: Option<&str>, pd: bool) -> Received {
    let gw = one(spans, names::GATEWAY_REQUEST, Some(services::GATEWAY));
    assert_eq!(gw.span.kind, SERVER);
    match client_span {
        Some(client) => assert_eq!(gw.parent_id_hex(), client, "continues the client's span"),
        None => assert!(gw.span.parent_span_id.is_empty(), "starts the trace"),
    }
    // Envoy's tags are strings, numbers included.
    assert_eq!(
        gw.value("http.status_code"),
        Some(&Otlp::StringValue("200".into()))
    );

    // The ext_proc call: a CLIENT span of Envoy's under its request span; the EPP continues it.
    let ext_proc = one(spans, EXT_PROC_SPAN, Some(services::GATEWAY));
    assert_eq!(ext_proc.span.kind, CLIENT);
    assert_eq!(ext_proc.parent_id_hex(), gw.span_id_hex());
    assert!(ext_proc.span.start_time_unix_nano >= gw.span.start_time_unix_nano);
    assert!(
        ext_proc.span.end_time_unix_nano >= gw.span.end_time_unix_nano,
        "the ext_proc span ends when Envoy tears the filter down, after the request span"
    );
    let epp = one(spans, names::EPP_REQUEST, None);
    assert_eq!(epp.parent_id_hex(), ext_proc.span_id_hex());
    inside(epp, gw);

    // The pod continues Envoy's span, never an EPP span, inside its window.
    let epp_ids: Vec<String> = spans
        .iter()
        .filter(|s| s.span.name.starts_with("llm_d.epp."))
        .map(Received::span_id_hex)
        .collect();
    assert!(epp_ids.len() >= 2, "the EPP's request and pick spans");
    let pod = if pd {
        one(spans, names::PD_PROXY_REQUEST, None)
    } else {
        one(spans, names::LLM_REQUEST, None)
    };
    assert_eq!(pod.parent_id_hex(), gw.span_id_hex(), "{pod:#?}");
    inside(pod, gw);
    if pd {
        // Both engines' spans are in the trace, under the proxy's legs.
        let engines: Vec<&Received> = spans
            .iter()
            .filter(|s| s.span.name == names::LLM_REQUEST)
            .collect();
        assert_eq!(engines.len(), 2, "{engines:#?}");
        for leg in [names::PD_PROXY_PREFILL, names::PD_PROXY_DECODE] {
            let leg = one(spans, leg, None);
            assert_eq!(leg.parent_id_hex(), pod.span_id_hex());
            inside(leg, gw);
            let engine = engines
                .iter()
                .find(|e| e.parent_id_hex() == leg.span_id_hex())
                .unwrap_or_else(|| panic!("no engine span under {}", leg.span.name));
            inside(engine, gw);
        }
    }
    for s in spans {
        assert!(
            !epp_ids.contains(&s.parent_id_hex()) || s.span.name.starts_with("llm_d.epp."),
            "{} is a child of an EPP span",
            s.span.name
        );
    }
    gw.clone()
}

/// What of `want` (trace, span names) has not arrived yet.
fn missing(spans: &Spans, want: &[(&str, &[&str])]) -> Vec<String> {
    let all = spans.snapshot();
    want.iter()
        .flat_map(|(trace, names)| names.iter().map(move |n| (*trace, *n)))
        .filter(|(trace, n)| {
            !all.iter()
                .any(|s| s.trace_id_hex() == *trace && s.span.name == *n)
        })
        .map(|(trace, n)| format!("{n} in {trace}"))
        .collect()
}

/// Waits (bounded) until each trace has these spans; says what is missing, with Envoy's
/// tracer counters, when they do not come.
async fn wait_for(spans: &Spans, want: &[(&str, &[&str])], envoys: &[&common::Envoy]) {
    for _ in 0..1500 {
        if missing(spans, want).is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut stats = String::new();
    for e in envoys {
        stats.push_str(&e.stats("tracing").await);
    }
    let got: Vec<String> = spans
        .snapshot()
        .iter()
        .map(|s| format!("{} {} {}", s.trace_id_hex(), s.service_name, s.span.name))
        .collect();
    panic!(
        "missing: {:?}\nEnvoy: {stats}\nreceived: {got:#?}",
        missing(spans, want)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_continues_the_trace_and_the_pods_continue_envoy() {
    let Some(bin) = envoy_bin() else { return };
    let (endpoint, spans) = testing::start_grpc_receiver().await;
    let otlp_port: u16 = endpoint.rsplit(':').next().unwrap().parse().unwrap();
    let config = TelemetryConfig {
        tracing: TracingConfig::default().with_endpoint(endpoint, OtlpProtocol::Grpc),
        flush_on_signal: false,
        ..TelemetryConfig::default()
    };
    // The EPP, the proxy and the simulators export through this process's tracer.
    let guard = llmd_telemetry::init("llmd-gateway-tests", &config).unwrap();

    // Decode-only: one pod behind the EPP. Streamed, not streamed, and with no client trace.
    // The shipped config as it is: TLS to an EPP serving it, as `llmd epp` does by default.
    let pod = sim(&[]).await;
    let tls = Some(llmd_epp::TlsOptions::self_signed());
    let decode_only = envoy_traced(
        &bin,
        epp_tls(ROUND_ROBIN_CONFIG, &[(pod, Role::Both)], tls).await,
        otlp_port,
        true,
    )
    .await;
    let streamed = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let whole = ("5bf92f3577b34da6a3ce929d0e0e4737", "10f067aa0ba902b8");
    complete(decode_only.addr, Some(streamed), true).await;
    complete(decode_only.addr, Some(whole), false).await;
    complete(decode_only.addr, None, true).await;

    // P/D: the proxy in front of the decode sim, a prefill sim, the P/D EPP.
    let (_prefill, _decode, pd_epp) = pd_setup().await;
    // P/D over a plaintext EPP (`--secure-serving=false`; the config's TLS line deleted).
    let pd = envoy_traced(&bin, pd_epp, otlp_port, false).await;
    let pd_trace = ("0af7651916cd43dd8448eb211c80319c", "b7ad6b716920333a");
    complete(pd.addr, Some(pd_trace), true).await;

    tokio::task::spawn_blocking(move || drop(guard))
        .await
        .unwrap();
    let decode_spans: &[&str] = &[
        names::GATEWAY_REQUEST,
        EXT_PROC_SPAN,
        names::EPP_REQUEST,
        names::LLM_REQUEST,
    ];
    let pd_spans: &[&str] = &[
        names::GATEWAY_REQUEST,
        EXT_PROC_SPAN,
        names::EPP_REQUEST,
        names::PD_PROXY_REQUEST,
        names::PD_PROXY_PREFILL,
        names::PD_PROXY_DECODE,
        names::LLM_REQUEST,
    ];
    wait_for(
        &spans,
        &[
            (streamed.0, decode_spans),
            (whole.0, decode_spans),
            (pd_trace.0, pd_spans),
        ],
        &[&decode_only, &pd],
    )
    .await;

    for (trace, client) in [streamed, whole] {
        check_trace(&trace_of(&spans, trace), Some(client), false);
    }
    check_trace(&trace_of(&spans, pd_trace.0), Some(pd_trace.1), true);

    // Without a client traceparent Envoy starts the trace: its span is the root, and the EPP
    // and the engine are in that trace.
    let known = [streamed.0, whole.0, pd_trace.0];
    let mut root = None;
    for _ in 0..1500 {
        root = spans.snapshot().into_iter().find(|s| {
            s.service_name == services::GATEWAY
                && s.span.name == names::GATEWAY_REQUEST
                && !known.contains(&s.trace_id_hex().as_str())
        });
        if let Some(r) = &root
            && decode_spans.iter().all(|n| {
                trace_of(&spans, &r.trace_id_hex())
                    .iter()
                    .any(|s| s.span.name == *n)
            })
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let root = root.expect("no span of Envoy's own trace");
    let gw = check_trace(&trace_of(&spans, &root.trace_id_hex()), None, false);
    assert_eq!(gw.span_id_hex(), root.span_id_hex());
    drop((decode_only, pd));
}
