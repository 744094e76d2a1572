//! The ext_proc client against a scripted server on a real socket: the messages it sends (as
//! Envoy 1.40 does), the decision it reads back, and the response phase's two halves.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use llmd_wire::ext_proc::{Answer, BodyAnswer, Client, RequestDecision, RequestHead, decide};
use llmd_wire::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption};
use llmd_wire::pb::envoy::extensions::filters::http::ext_proc::v3::processing_mode::BodySendMode;
use llmd_wire::pb::envoy::service::ext_proc::v3::external_processor_client::ExternalProcessorClient;
use llmd_wire::pb::envoy::service::ext_proc::v3::external_processor_server::{
    ExternalProcessor, ExternalProcessorServer,
};
use llmd_wire::pb::envoy::service::ext_proc::v3::{
    BodyMutation, BodyResponse, CommonResponse, HeaderMutation, HeadersResponse, ImmediateResponse,
    ProcessingRequest, ProcessingResponse, StreamedBodyResponse, body_mutation, processing_request,
    processing_response,
};
use llmd_wire::pb::envoy::r#type::v3::HttpStatus;
use tonic::{Request, Response, Status, Streaming};

/// Routes to `10.0.0.1:8000` (uppercasing the body), or rejects bodies containing `reject`;
/// echoes response chunks uppercased.
#[derive(Clone, Default)]
struct Server {
    seen: Arc<Mutex<Vec<ProcessingRequest>>>,
}

type Out = Pin<Box<dyn Stream<Item = Result<ProcessingResponse, Status>> + Send>>;

fn reply(r: processing_response::Response) -> Result<ProcessingResponse, Status> {
    Ok(ProcessingResponse {
        response: Some(r),
        ..Default::default()
    })
}

fn streamed(body: Vec<u8>, end_of_stream: bool) -> Option<CommonResponse> {
    Some(CommonResponse {
        body_mutation: Some(BodyMutation {
            mutation: Some(body_mutation::Mutation::StreamedResponse(
                StreamedBodyResponse {
                    body,
                    end_of_stream,
                    ..Default::default()
                },
            )),
        }),
        ..Default::default()
    })
}

#[tonic::async_trait]
impl ExternalProcessor for Server {
    type ProcessStream = Out;

    async fn process(
        &self,
        request: Request<Streaming<ProcessingRequest>>,
    ) -> Result<Response<Out>, Status> {
        let seen = self.seen.clone();
        let mut body = Vec::new();
        let out = request
            .into_inner()
            .map(move |m| {
                let Ok(m) = m else { return Vec::new() };
                seen.lock().unwrap().push(m.clone());
                match m.request {
                    Some(processing_request::Request::RequestBody(b)) => {
                        body.extend_from_slice(&b.body);
                        if !b.end_of_stream {
                            return Vec::new();
                        }
                        if body.windows(6).any(|w| w == b"reject") {
                            return vec![reply(processing_response::Response::ImmediateResponse(
                                ImmediateResponse {
                                    status: Some(HttpStatus { code: 429 }),
                                    headers: Some(HeaderMutation {
                                        set_headers: vec![set(
                                            "x-llm-d-request-dropped-reason",
                                            "rejected-saturated",
                                        )],
                                        remove_headers: Vec::new(),
                                    }),
                                    body: b"shed".to_vec(),
                                    details: "saturated".into(),
                                    grpc_status: None,
                                },
                            ))];
                        }
                        let upper = body.to_ascii_uppercase();
                        let mut out = vec![reply(processing_response::Response::RequestHeaders(
                            HeadersResponse {
                                response: Some(CommonResponse {
                                    header_mutation: Some(HeaderMutation {
                                        set_headers: vec![set(
                                            "x-gateway-destination-endpoint",
                                            "10.0.0.1:8000,10.0.0.2:8000",
                                        )],
                                        remove_headers: vec!["x-secret".into()],
                                    }),
                                    ..Default::default()
                                }),
                            },
                        ))];
                        let chunks: Vec<&[u8]> = upper.chunks(62_000).collect();
                        for (i, c) in chunks.iter().enumerate() {
                            out.push(reply(processing_response::Response::RequestBody(
                                BodyResponse {
                                    response: streamed(c.to_vec(), i + 1 == chunks.len()),
                                },
                            )));
                        }
                        out
                    }
                    Some(processing_request::Request::ResponseHeaders(_)) => {
                        vec![reply(processing_response::Response::ResponseHeaders(
                            HeadersResponse::default(),
                        ))]
                    }
                    Some(processing_request::Request::ResponseBody(b)) => {
                        vec![reply(processing_response::Response::ResponseBody(
                            BodyResponse {
                                response: streamed(b.body.to_ascii_uppercase(), b.end_of_stream),
                            },
                        ))]
                    }
                    _ => Vec::new(),
                }
            })
            .flat_map(futures::stream::iter);
        Ok(Response::new(Box::pin(out)))
    }
}

fn set(key: &str, value: &str) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.into(),
            value: String::new(),
            raw_value: value.as_bytes().to_vec(),
        }),
        append_action: 2,
        ..Default::default()
    }
}

async fn server() -> (SocketAddr, Server) {
    let svc = Server::default();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let s = svc.clone();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(ExternalProcessorServer::new(s))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l))
            .await
    });
    (addr, svc)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_and_its_response_through_the_client() {
    let (addr, svc) = server().await;
    let client = Client::connect_lazy(&format!("http://{addr}"), Duration::from_secs(5)).unwrap();
    let mut headers = http::HeaderMap::new();
    headers.insert("content-type", "application/json".parse().unwrap());
    headers.insert("x-secret", "drop me".parse().unwrap());
    let body = Bytes::from(vec![b'a'; 150_000]);
    let head = RequestHead {
        method: "POST",
        path: "/v1/completions?x=1",
        authority: b"gw.local",
        scheme: "http",
        headers: &headers,
    };
    let RequestDecision::Continue(c) = client.request(&head, &body).await.unwrap() else {
        panic!("rejected")
    };
    let mut c = *c;
    assert_eq!(
        c.headers["x-gateway-destination-endpoint"],
        "10.0.0.1:8000,10.0.0.2:8000"
    );
    assert!(!c.headers.contains_key("x-secret"));
    assert_eq!(c.body.len(), 150_000);
    assert!(
        c.body.iter().all(|b| *b == b'A'),
        "the body as the server handed it back"
    );

    // What the server was sent: Envoy 1.40's shape.
    let seen = svc.seen.lock().unwrap().clone();
    let first = &seen[0];
    let pc = first.protocol_config.as_ref().unwrap();
    let fd = BodySendMode::FullDuplexStreamed as i32;
    assert_eq!((pc.request_body_mode, pc.response_body_mode), (fd, fd));
    let Some(processing_request::Request::RequestHeaders(h)) = &first.request else {
        panic!("{first:?}")
    };
    let keys: Vec<&str> = h
        .headers
        .as_ref()
        .unwrap()
        .headers
        .iter()
        .map(|h| h.key.as_str())
        .collect();
    assert_eq!(keys[..4], [":method", ":path", ":authority", ":scheme"]);
    assert!(!h.end_of_stream);
    let bodies: Vec<(usize, bool)> = seen
        .iter()
        .filter_map(|m| match &m.request {
            Some(processing_request::Request::RequestBody(b)) => {
                Some((b.body.len(), b.end_of_stream))
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        bodies,
        [(65_536, false), (65_536, false), (18_928, false), (0, true)]
    );

    // The response phase: headers, then chunks and answers on the two halves.
    let mut response_headers = http::HeaderMap::new();
    response_headers.insert("content-type", "text/event-stream".parse().unwrap());
    let immediate = c
        .stream
        .response_headers(http::StatusCode::OK, &mut response_headers)
        .await
        .unwrap();
    assert!(immediate.is_none());
    let (sender, mut answers) = c.stream.into_body();
    for (chunk, end) in [(&b"data: one\n\n"[..], false), (b"", true)] {
        sender
            .reserve()
            .await
            .unwrap()
            .send(&Bytes::from(chunk), end);
        match answers.next().await.unwrap().unwrap() {
            BodyAnswer::Streamed {
                body,
                end_of_stream,
            } => {
                assert_eq!(body, Bytes::from(chunk.to_ascii_uppercase()));
                assert_eq!(end_of_stream, end);
            }
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decide_routes_or_rejects() {
    let (addr, _) = server().await;
    let mut grpc = ExternalProcessorClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let headers = [(":method", "POST"), (":path", "/v1/completions")];
    let routed = decide(
        &mut grpc,
        &headers,
        b"{\"prompt\":\"hi\"}",
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    assert_eq!(routed.destinations(), ["10.0.0.1:8000", "10.0.0.2:8000"]);
    assert_eq!(routed.prefiller(), None);
    let rejected = decide(
        &mut grpc,
        &headers,
        b"{\"prompt\":\"reject\"}",
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    let Answer::Reject {
        status,
        headers,
        body,
    } = rejected
    else {
        panic!("{rejected:?}")
    };
    assert_eq!((status, body.as_slice()), (429, &b"shed"[..]));
    assert!(headers.contains(&(
        "x-llm-d-request-dropped-reason".into(),
        "rejected-saturated".into()
    )));
}
