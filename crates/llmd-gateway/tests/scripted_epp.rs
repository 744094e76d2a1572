//! The gateway against a scripted ext_proc server: fallback down the destination list when the
//! first refuses connections, header removal and add-if-absent, an EPP that answers without
//! body mutations (the original chunks are forwarded), the EPP's messages as Envoy 1.40
//! sends them (pseudo-headers, protocol_config, the end of the body as an empty chunk), and an
//! EPP that stops answering mid-response (its timer fires; the response passes through).

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use clap::Parser;
use futures::{Stream, StreamExt};
use llmd_testkit::sim::SimBuilder;
use llmd_wire::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption};
use llmd_wire::pb::envoy::service::ext_proc::v3::external_processor_server::{
    ExternalProcessor, ExternalProcessorServer,
};
use llmd_wire::pb::envoy::service::ext_proc::v3::{
    BodyResponse, CommonResponse, HeaderMutation, HeadersResponse, ProcessingRequest,
    ProcessingResponse, processing_request, processing_response,
};
use parking_lot::Mutex;
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

#[derive(Clone)]
struct Scripted {
    destinations: String,
    seen: Arc<Mutex<Vec<ProcessingRequest>>>,
    /// Never answer response-body chunks (an EPP stuck mid-response).
    mute_response_body: bool,
}

type Out = Pin<Box<dyn Stream<Item = Result<ProcessingResponse, Status>> + Send>>;

fn set(key: &str, value: &str, action: i32) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.into(),
            value: String::new(),
            raw_value: value.as_bytes().to_vec(),
        }),
        append_action: action,
        ..Default::default()
    }
}

fn reply(r: processing_response::Response) -> Result<ProcessingResponse, Status> {
    Ok(ProcessingResponse {
        response: Some(r),
        ..Default::default()
    })
}

#[tonic::async_trait]
impl ExternalProcessor for Scripted {
    type ProcessStream = Out;

    async fn process(
        &self,
        request: Request<Streaming<ProcessingRequest>>,
    ) -> Result<Response<Out>, Status> {
        let me = self.clone();
        let mut chunks = 0usize;
        let out = request
            .into_inner()
            .map(move |m| {
                let Ok(m) = m else { return Vec::new() };
                me.seen.lock().push(m.clone());
                match m.request {
                    Some(processing_request::Request::RequestBody(b)) => {
                        chunks += 1;
                        if !b.end_of_stream {
                            return Vec::new();
                        }
                        // Route only after the whole body, as the EPP does; then one answer
                        // per body chunk, none of them mutating it.
                        let mutation = HeaderMutation {
                            set_headers: vec![
                                set("x-gateway-destination-endpoint", &me.destinations, 2),
                                set("x-added", "epp", 1),
                                set("x-keep", "epp", 1),
                            ],
                            remove_headers: vec!["x-secret".into()],
                        };
                        let mut out = vec![reply(processing_response::Response::RequestHeaders(
                            HeadersResponse {
                                response: Some(CommonResponse {
                                    header_mutation: Some(mutation),
                                    ..Default::default()
                                }),
                            },
                        ))];
                        for _ in 0..chunks {
                            out.push(reply(processing_response::Response::RequestBody(
                                BodyResponse::default(),
                            )));
                        }
                        out
                    }
                    Some(processing_request::Request::ResponseHeaders(_)) => vec![reply(
                        processing_response::Response::ResponseHeaders(HeadersResponse::default()),
                    )],
                    Some(processing_request::Request::ResponseBody(_)) if me.mute_response_body => {
                        Vec::new()
                    }
                    Some(processing_request::Request::ResponseBody(_)) => vec![reply(
                        processing_response::Response::ResponseBody(BodyResponse::default()),
                    )],
                    _ => Vec::new(),
                }
            })
            .flat_map(futures::stream::iter);
        Ok(Response::new(Box::pin(out)))
    }
}

async fn scripted(destinations: String) -> (SocketAddr, Arc<Mutex<Vec<ProcessingRequest>>>) {
    scripted_with(destinations, false).await
}

async fn scripted_with(
    destinations: String,
    mute_response_body: bool,
) -> (SocketAddr, Arc<Mutex<Vec<ProcessingRequest>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let svc = Scripted {
        destinations,
        seen: seen.clone(),
        mute_response_body,
    };
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(ExternalProcessorServer::new(svc))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l))
            .await
    });
    (addr, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn falls_back_down_the_list_and_forwards_unmutated_bodies() {
    let pod = llmd_testkit::sim::start(SimBuilder::new().flags([
        "--dummy-tokenizer",
        "--time-scale",
        "0",
        "--mode",
        "echo",
        "--max-model-len",
        "1000000",
        "--record-requests",
        "8",
    ]))
    .await
    .detach();
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (epp, seen) = scripted(format!("{dead},{pod}")).await;
    let gw_args = llmd_gateway::Args::parse_from(["g", "--epp", &format!("http://{epp}")]);
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gw = llmd_gateway::start(gw_args, l, CancellationToken::new())
        .await
        .unwrap();

    let big_prompt = "tokens ".repeat(20_000); // 140 KB: three body chunks to the EPP
    let r = reqwest::Client::new()
        .post(format!("http://{gw}/v1/completions?x=1"))
        .header("x-secret", "drop me")
        .header("x-keep", "client")
        .json(&serde_json::json!({"prompt": big_prompt, "max_tokens": 3, "stream": true}))
        .send()
        .await
        .unwrap();
    let status = r.status();
    let text = r.text().await.unwrap();
    assert_eq!(status, 200, "{text}");
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");

    // The pod behind the dead first destination got it, with the EPP's header changes.
    let v: Value = reqwest::get(format!("http://{pod}/debug/requests"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let req = &v.as_array().unwrap()[0];
    assert_eq!(req["path"], "/v1/completions");
    assert_eq!(
        req["body"]["prompt"].as_str().unwrap().len(),
        big_prompt.len()
    );

    // What the EPP saw: Envoy's shape.
    let seen = seen.lock().clone();
    let first = &seen[0];
    let pc = first.protocol_config.as_ref().unwrap();
    let fd = llmd_wire::pb::envoy::extensions::filters::http::ext_proc::v3::processing_mode::BodySendMode::FullDuplexStreamed as i32;
    assert_eq!((pc.request_body_mode, pc.response_body_mode), (fd, fd));
    let Some(processing_request::Request::RequestHeaders(h)) = &first.request else {
        panic!("{first:?}")
    };
    let get = |k: &str| {
        h.headers
            .as_ref()
            .unwrap()
            .headers
            .iter()
            .find(|x| x.key == k)
            .map(|x| String::from_utf8_lossy(&x.raw_value).into_owned())
    };
    assert_eq!(get(":method").as_deref(), Some("POST"));
    assert_eq!(get(":path").as_deref(), Some("/v1/completions?x=1"));
    assert_eq!(get(":scheme").as_deref(), Some("http"));
    assert!(get("traceparent").is_some() || get("content-type").is_some());
    assert!(!h.end_of_stream);
    let bodies: Vec<_> = seen
        .iter()
        .filter_map(|m| match &m.request {
            Some(processing_request::Request::RequestBody(b)) => {
                Some((b.body.len(), b.end_of_stream))
            }
            _ => None,
        })
        .collect();
    // Three data chunks, then the end as its own empty chunk (Envoy 1.40's shape).
    assert_eq!(bodies.len(), 4, "{bodies:?}");
    assert_eq!(*bodies.last().unwrap(), (0, true));
    assert!(bodies.iter().all(|(n, _)| *n <= 64 << 10));
    assert_eq!(bodies.iter().filter(|(_, eos)| *eos).count(), 1);
    assert!(bodies.last().unwrap().1);
    let response_bodies = seen
        .iter()
        .filter(|m| {
            matches!(
                m.request,
                Some(processing_request::Request::ResponseBody(_))
            )
        })
        .count();
    assert!(
        response_bodies >= 2,
        "every chunk and the end went to the EPP"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_mutations_are_applied_as_envoy_does() {
    // An upstream that answers with the headers it received.
    async fn echo(headers: axum::http::HeaderMap) -> axum::Json<Value> {
        let map: serde_json::Map<String, Value> = headers
            .iter()
            .map(|(k, v)| (k.to_string(), Value::from(v.to_str().unwrap_or(""))))
            .collect();
        axum::Json(Value::Object(map))
    }
    let app = axum::Router::new().fallback(echo);
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await });
    let (epp, _) = scripted(up.to_string()).await;
    let gw_args = llmd_gateway::Args::parse_from(["g", "--epp", &format!("http://{epp}")]);
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gw = llmd_gateway::start(gw_args, l, CancellationToken::new())
        .await
        .unwrap();
    let got: Value = reqwest::Client::new()
        .post(format!("http://{gw}/anything"))
        .header("x-secret", "drop me")
        .header("x-keep", "client")
        .body("{}")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(got.get("x-secret").is_none(), "removed: {got}");
    assert_eq!(got["x-added"], "epp", "added when absent");
    assert_eq!(got["x-keep"], "client", "add-if-absent keeps the client's");
    assert_eq!(got["x-gateway-destination-endpoint"], up.to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_epp_silent_mid_response_times_out_and_the_response_passes_through() {
    let metrics =
        llmd_telemetry::install_prometheus(&[llmd_telemetry::names::gateway::ALL], &[]).unwrap();
    let pod = llmd_testkit::sim::start(SimBuilder::new().flags([
        "--dummy-tokenizer",
        "--time-scale",
        "0",
        "--mode",
        "echo",
    ]))
    .await
    .detach();
    let (epp, _) = scripted_with(pod.to_string(), true).await;
    let gw_args = llmd_gateway::Args::parse_from([
        "g",
        "--epp",
        &format!("http://{epp}"),
        "--epp-timeout-ms",
        "300",
    ]);
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gw = llmd_gateway::start(gw_args, l, CancellationToken::new())
        .await
        .unwrap();
    let body =
        serde_json::json!({"prompt": "the EPP stops answering", "max_tokens": 4, "stream": true});
    let direct = reqwest::Client::new()
        .post(format!("http://{pod}/v1/completions"))
        .json(&body)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let r = reqwest::Client::new()
        .post(format!("http://{gw}/v1/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let via = r.text().await.unwrap();
    let texts = |sse: &str| -> Vec<String> {
        sse.lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter(|d| *d != "[DONE]")
            .map(|d| serde_json::from_str::<Value>(d).unwrap()["choices"][0]["text"].to_string())
            .collect()
    };
    // Every chunk the EPP left unanswered, then the rest, untouched and complete.
    assert_eq!(texts(&via), texts(&direct));
    assert!(via.trim_end().ends_with("data: [DONE]"), "{via}");
    let m = llmd_telemetry::exposition::parse(&metrics.render()).unwrap();
    assert_eq!(
        m.sum(
            "llmd_gateway_errors_total",
            &[("reason", "epp_response_phase")]
        ),
        1.0
    );
}
