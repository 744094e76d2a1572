//! The `gateway.request` span at a real OTLP/gRPC receiver: it continues the client's trace,
//! is the parent of the engine's `llm_request`, records its numbers as numbers, and ends when
//! the response stream ends (issue 13 item 2.3: it ended at the response headers, 250 ms before
//! the engine span it contains).
//!
//! The order is made causal, not raced: the ext_proc server holds its answer to the end of the
//! response body until the client has received the last data (`data: [DONE]`), so a span that
//! ends with the stream ends after the client's last byte.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{MODEL, epp, gateway, sim};
use futures::{Stream, StreamExt};
use llmd_epp::config::ROUND_ROBIN_CONFIG;
use llmd_epp::endpoints::Role;
use llmd_telemetry::testing::{self, Received};
use llmd_telemetry::{OtlpProtocol, TelemetryConfig, TracingConfig};
use llmd_wire::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption};
use llmd_wire::pb::envoy::service::ext_proc::v3::external_processor_server::{
    ExternalProcessor, ExternalProcessorServer,
};
use llmd_wire::pb::envoy::service::ext_proc::v3::{
    BodyResponse, CommonResponse, HeaderMutation, HeadersResponse, ProcessingRequest,
    ProcessingResponse, processing_request, processing_response,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as Otlp;
use serde_json::json;
use tokio::sync::Notify;
use tonic::{Request, Response, Status, Streaming};

/// Routes to `pod`, answers every response-body chunk at once, except the end of the body:
/// that answer waits for `release`.
#[derive(Clone)]
struct HoldsTheEnd {
    pod: String,
    release: Arc<Notify>,
}

type Out = Pin<Box<dyn Stream<Item = Result<ProcessingResponse, Status>> + Send>>;

fn reply(r: processing_response::Response) -> Result<ProcessingResponse, Status> {
    Ok(ProcessingResponse {
        response: Some(r),
        ..Default::default()
    })
}

#[tonic::async_trait]
impl ExternalProcessor for HoldsTheEnd {
    type ProcessStream = Out;

    async fn process(
        &self,
        request: Request<Streaming<ProcessingRequest>>,
    ) -> Result<Response<Out>, Status> {
        let me = self.clone();
        let chunks = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let out = request
            .into_inner()
            .then(move |m| {
                let (me, chunks) = (me.clone(), chunks.clone());
                async move {
                    let Ok(m) = m else { return Vec::new() };
                    match m.request {
                        Some(processing_request::Request::RequestBody(b)) => {
                            let n = chunks.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                            if !b.end_of_stream {
                                return Vec::new();
                            }
                            let set = HeaderValueOption {
                                header: Some(HeaderValue {
                                    key: "x-gateway-destination-endpoint".into(),
                                    value: String::new(),
                                    raw_value: me.pod.as_bytes().to_vec(),
                                }),
                                append_action: 2,
                                ..Default::default()
                            };
                            let mut out = vec![reply(
                                processing_response::Response::RequestHeaders(HeadersResponse {
                                    response: Some(CommonResponse {
                                        header_mutation: Some(HeaderMutation {
                                            set_headers: vec![set],
                                            remove_headers: Vec::new(),
                                        }),
                                        ..Default::default()
                                    }),
                                }),
                            )];
                            out.extend((0..n).map(|_| {
                                reply(processing_response::Response::RequestBody(
                                    BodyResponse::default(),
                                ))
                            }));
                            out
                        }
                        Some(processing_request::Request::ResponseHeaders(_)) => {
                            vec![reply(processing_response::Response::ResponseHeaders(
                                HeadersResponse::default(),
                            ))]
                        }
                        Some(processing_request::Request::ResponseBody(b)) => {
                            if b.end_of_stream {
                                me.release.notified().await;
                            }
                            vec![reply(processing_response::Response::ResponseBody(
                                BodyResponse::default(),
                            ))]
                        }
                        _ => Vec::new(),
                    }
                }
            })
            .flat_map(futures::stream::iter);
        Ok(Response::new(Box::pin(out)))
    }
}

async fn holding_epp(pod: SocketAddr, release: Arc<Notify>) -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let svc = HoldsTheEnd {
        pod: pod.to_string(),
        release,
    };
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(ExternalProcessorServer::new(svc))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l))
            .await
    });
    addr
}

fn unix_nanos(t: SystemTime) -> u64 {
    u64::try_from(t.duration_since(UNIX_EPOCH).unwrap().as_nanos()).unwrap()
}

fn int_attr(span: &Received, key: &str) -> Option<i64> {
    span.span
        .attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
        .and_then(|v| match v {
            Otlp::IntValue(i) => Some(*i),
            _ => None,
        })
}

/// Streams one completion with this traceparent; returns the time the client had the last
/// data (`data: [DONE]`), after which it calls `then`.
async fn stream_through(gw: SocketAddr, trace: &str, parent: &str, then: impl Fn()) -> SystemTime {
    let r = reqwest::Client::new()
        .post(format!("http://{gw}/v1/completions"))
        .header("traceparent", format!("00-{trace}-{parent}-01"))
        .json(
            &json!({"model": MODEL, "prompt": "a traced stream", "max_tokens": 4, "stream": true}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut body = r.bytes_stream();
    let mut text = String::new();
    let mut last_data = None;
    while let Some(chunk) = body.next().await {
        text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
        if last_data.is_none() && text.contains("data: [DONE]") {
            last_data = Some(SystemTime::now());
            then();
        }
    }
    last_data.expect("no [DONE]")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_span_ends_with_the_stream() {
    let (endpoint, spans) = testing::start_grpc_receiver().await;
    let config = TelemetryConfig {
        tracing: TracingConfig::default().with_endpoint(endpoint, OtlpProtocol::Grpc),
        flush_on_signal: false,
        ..TelemetryConfig::default()
    };
    let guard = llmd_telemetry::init("gateway-api-inference-extension", &config).unwrap();

    // Through an ext_proc server that holds the end of the body until the client has it all.
    let pod = sim(&[]).await;
    let release = Arc::new(Notify::new());
    let held = gateway(&[
        "--epp",
        &format!("http://{}", holding_epp(pod, release.clone()).await),
    ])
    .await;
    let trace_held = "4bf92f3577b34da6a3ce929d0e0e4736";
    let client_last_byte = stream_through(held, trace_held, "00f067aa0ba902b7", || {
        release.notify_one();
    })
    .await;

    // Through the real EPP (round robin), streamed.
    let epp = epp(ROUND_ROBIN_CONFIG, &[(pod, Role::Both)]).await;
    let real = gateway(&["--epp", &format!("http://{epp}")]).await;
    let trace_real = "0af7651916cd43dd8448eb211c80319c";
    stream_through(real, trace_real, "b7ad6b716920333a", || {}).await;

    tokio::task::spawn_blocking(move || drop(guard))
        .await
        .unwrap();
    let in_trace = |trace: &str, name: &str| -> Option<Received> {
        spans
            .snapshot()
            .into_iter()
            .find(|s| s.span.name == name && s.trace_id_hex() == trace)
    };
    for _ in 0..500 {
        if in_trace(trace_held, "llm_request").is_some()
            && in_trace(trace_real, "llm_request").is_some()
            && in_trace(trace_held, "gateway.request").is_some()
            && in_trace(trace_real, "gateway.request").is_some()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    for (trace, parent) in [
        (trace_held, "00f067aa0ba902b7"),
        (trace_real, "b7ad6b716920333a"),
    ] {
        let gw = in_trace(trace, "gateway.request").expect("no gateway.request span");
        let engine = in_trace(trace, "llm_request").expect("no llm_request span");
        assert_eq!(
            testing::hex(&gw.span.parent_span_id),
            parent,
            "continues the client's span"
        );
        assert_eq!(gw.span.kind, 2, "SERVER");
        assert_eq!(gw.service_name, "gateway-api-inference-extension");
        if trace == trace_held {
            // Through the real EPP the parent is still the EPP's span: it writes its own span
            // into the traceparent it sets (issue 13 item 2.1, the EPP's part).
            assert_eq!(
                engine.span.parent_span_id, gw.span.span_id,
                "the engine's span is a child of gateway.request"
            );
        }
        assert!(
            gw.span.end_time_unix_nano >= engine.span.end_time_unix_nano,
            "{trace}: gateway.request ended {} ns before the engine span it contains",
            engine.span.end_time_unix_nano - gw.span.end_time_unix_nano
        );
        // Numbers are numbers (tracing-opentelemetry exports unsigned integers as strings).
        assert_eq!(
            int_attr(&gw, "http.response.status_code"),
            Some(200),
            "{:?}",
            gw.span.attributes
        );
        assert!(int_attr(&gw, "llmd.gateway.response_bytes").is_some_and(|b| b > 0));
        assert_eq!(gw.attr("llmd.gateway.outcome").as_deref(), Some("ok"));
        assert_eq!(gw.attr("llmd.gateway.destination"), Some(pod.to_string()));
    }
    let gw = in_trace(trace_held, "gateway.request").unwrap();
    assert!(
        gw.span.end_time_unix_nano >= unix_nanos(client_last_byte),
        "gateway.request ended before the client had the stream's last data"
    );
}
