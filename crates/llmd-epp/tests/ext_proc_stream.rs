//! The ext_proc server driven through gRPC exactly as Envoy drives it (FULL_DUPLEX_STREAMED and
//! BUFFERED), with a scripted picker.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use llmd_epp::protocol::{ExtProcConfig, ExtProcService};
use llmd_epp::scheduling::{Decision, PickContext, PickError, Picker};
use llmd_wire::pb::envoy::config::core::v3::{HeaderMap, HeaderValue, Metadata};
use llmd_wire::pb::envoy::extensions::filters::http::ext_proc::v3::processing_mode::BodySendMode;
use llmd_wire::pb::envoy::service::ext_proc::v3::external_processor_client::ExternalProcessorClient;
use llmd_wire::pb::envoy::service::ext_proc::v3::external_processor_server::ExternalProcessorServer;
use llmd_wire::pb::envoy::service::ext_proc::v3::{
    HttpBody, HttpHeaders, HttpTrailers, ProcessingRequest, ProcessingResponse,
    ProtocolConfiguration, body_mutation, processing_request, processing_response,
};
use llmd_wire::pb::google::protobuf::{ListValue, Struct, Value, value::Kind};
use tokio::sync::mpsc;

/// Routes to 10.0.0.1:8000 (and 10.0.0.2:8000 as fallback); P/D when the prompt says "pd";
/// no endpoints when the model is "empty"; records the subset hint it saw.
#[derive(Default)]
struct Scripted {
    calls: AtomicUsize,
    last_subset: parking_lot::Mutex<Option<Vec<String>>>,
}

impl Picker for Scripted {
    fn pick(&self, ctx: &PickContext<'_>) -> Result<Decision, PickError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        *self.last_subset.lock() = ctx.subset.clone();
        let mut d = Decision {
            endpoints: vec!["10.0.0.1:8000".into(), "10.0.0.2:8000".into()],
            ..Default::default()
        };
        if let Some(r) = ctx.request {
            if r.model == "empty" {
                return Err(PickError::NoEndpoints(Some(
                    "no pods serve model empty".into(),
                )));
            }
            if r.body
                .get("prompt")
                .and_then(|p| p.as_str())
                .is_some_and(|p| p.contains("pd"))
            {
                d.headers
                    .push(("x-prefiller-host-port".into(), "10.0.1.1:8000".into()));
            }
        }
        Ok(d)
    }
}

async fn server(
    picker: Arc<Scripted>,
    max_body: usize,
) -> ExternalProcessorClient<tonic::transport::Channel> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let svc = ExtProcService::new(
        picker,
        ExtProcConfig {
            max_body_bytes: max_body,
            service_name: None,
        },
    );
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(ExternalProcessorServer::new(svc))
            .serve_with_incoming(
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            )
            .await
            .unwrap();
    });
    ExternalProcessorClient::connect(format!("http://{addr}"))
        .await
        .unwrap()
}

fn headers(pairs: &[(&str, &str)], end_of_stream: bool) -> ProcessingRequest {
    let hm = HeaderMap {
        headers: pairs
            .iter()
            .map(|(k, v)| HeaderValue {
                key: k.to_string(),
                value: String::new(),
                raw_value: v.as_bytes().to_vec(),
            })
            .collect(),
    };
    ProcessingRequest {
        request: Some(processing_request::Request::RequestHeaders(HttpHeaders {
            headers: Some(hm),
            end_of_stream,
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn body(bytes: &[u8], end_of_stream: bool) -> ProcessingRequest {
    ProcessingRequest {
        request: Some(processing_request::Request::RequestBody(HttpBody {
            body: bytes.to_vec(),
            end_of_stream,
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn response_headers() -> ProcessingRequest {
    let hm = HeaderMap {
        headers: vec![HeaderValue {
            key: ":status".into(),
            value: "200".into(),
            raw_value: vec![],
        }],
    };
    ProcessingRequest {
        request: Some(processing_request::Request::ResponseHeaders(HttpHeaders {
            headers: Some(hm),
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn response_body(bytes: &[u8], end_of_stream: bool) -> ProcessingRequest {
    ProcessingRequest {
        request: Some(processing_request::Request::ResponseBody(HttpBody {
            body: bytes.to_vec(),
            end_of_stream,
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// An open stream: send requests one by one, read responses with a timeout.
struct Exchange {
    tx: mpsc::Sender<ProcessingRequest>,
    rx: tonic::Streaming<ProcessingResponse>,
}

impl Exchange {
    async fn open(client: &mut ExternalProcessorClient<tonic::transport::Channel>) -> Self {
        let (tx, rx) = mpsc::channel(16);
        let stream =
            futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
        let rx = client.process(stream).await.unwrap().into_inner();
        Self { tx, rx }
    }

    async fn send(&self, m: ProcessingRequest) {
        self.tx.send(m).await.unwrap();
    }

    async fn next(&mut self) -> ProcessingResponse {
        tokio::time::timeout(Duration::from_secs(5), self.rx.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
    }

    async fn nothing_for(&mut self, ms: u64) {
        assert!(
            tokio::time::timeout(Duration::from_millis(ms), self.rx.message())
                .await
                .is_err(),
            "unexpected response"
        );
    }
}

fn set_headers(r: &ProcessingResponse) -> HashMap<String, String> {
    let common = match r.response.as_ref().unwrap() {
        processing_response::Response::RequestHeaders(h) => h.response.clone().unwrap(),
        processing_response::Response::RequestBody(b) => b.response.clone().unwrap(),
        other => panic!("not a request-phase response: {other:?}"),
    };
    assert!(common.clear_route_cache);
    common
        .header_mutation
        .unwrap()
        .set_headers
        .into_iter()
        .map(|h| {
            let h = h.header.unwrap();
            (h.key, String::from_utf8(h.raw_value).unwrap())
        })
        .collect()
}

fn lb_destination(r: &ProcessingResponse) -> String {
    let md = r.dynamic_metadata.as_ref().unwrap();
    let Some(Kind::StructValue(lb)) = &md.fields["envoy.lb"].kind else {
        panic!()
    };
    let Some(Kind::StringValue(d)) = &lb.fields["x-gateway-destination-endpoint"].kind else {
        panic!()
    };
    d.clone()
}

fn streamed(r: &ProcessingResponse) -> (Vec<u8>, bool) {
    let common = match r.response.as_ref().unwrap() {
        processing_response::Response::RequestBody(b)
        | processing_response::Response::ResponseBody(b) => b.response.clone().unwrap(),
        other => panic!("not a body response: {other:?}"),
    };
    match common.body_mutation.unwrap().mutation.unwrap() {
        body_mutation::Mutation::StreamedResponse(s) => (s.body, s.end_of_stream),
        other => panic!("not streamed: {other:?}"),
    }
}

const BODY: &[u8] =
    br#"{"model":"m","prompt":"please route this pd request","max_tokens":8,"stream":true}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_duplex_request_and_streamed_response_as_envoy_sends_them() {
    let picker = Arc::new(Scripted::default());
    let mut client = server(picker.clone(), 1 << 20).await;
    let mut ex = Exchange::open(&mut client).await;
    ex.send(headers(
        &[
            (":method", "POST"),
            (":path", "/v1/completions"),
            ("content-type", "application/json"),
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
            ("x-request-id", "rid-1"),
        ],
        false,
    ))
    .await;
    ex.nothing_for(100).await; // headers are not answered before the body
    // The body in three chunks, then Envoy 1.40's separate empty end-of-stream chunk.
    ex.send(body(&BODY[..10], false)).await;
    ex.send(body(&BODY[10..40], false)).await;
    ex.send(body(&BODY[40..], false)).await;
    ex.nothing_for(50).await;
    ex.send(body(b"", true)).await;

    let h = ex.next().await;
    let set = set_headers(&h);
    assert_eq!(
        set["x-gateway-destination-endpoint"],
        "10.0.0.1:8000,10.0.0.2:8000"
    );
    assert_eq!(
        lb_destination(&h),
        "10.0.0.1:8000,10.0.0.2:8000",
        "header and metadata agree"
    );
    assert_eq!(set["content-length"], BODY.len().to_string());
    assert_eq!(set["x-prefiller-host-port"], "10.0.1.1:8000");
    assert!(
        !set.contains_key("x-request-id"),
        "the request's own id stands: not set again"
    );
    let (b, eos) = streamed(&ex.next().await);
    assert_eq!((b.as_slice(), eos), (BODY, true));

    // Chunks after the end of the request are ignored.
    ex.send(body(b"late", true)).await;
    ex.nothing_for(50).await;

    // Response path: headers answered, SSE chunks echoed one by one.
    ex.send(response_headers()).await;
    assert!(matches!(
        ex.next().await.response,
        Some(processing_response::Response::ResponseHeaders(_))
    ));
    for (chunk, eos) in [
        (&b"data: {\"choices\":[]}\n\n"[..], false),
        (&b"data: [DONE]\n\n"[..], false),
        (&b""[..], true),
    ] {
        ex.send(response_body(chunk, eos)).await;
        assert_eq!(streamed(&ex.next().await), (chunk.to_vec(), eos));
    }
    ex.send(ProcessingRequest {
        request: Some(processing_request::Request::ResponseTrailers(
            HttpTrailers::default(),
        )),
        ..Default::default()
    })
    .await;
    assert!(matches!(
        ex.next().await.response,
        Some(processing_response::Response::ResponseTrailers(_))
    ));
    assert_eq!(picker.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_without_body_is_routed_from_headers() {
    let mut client = server(Arc::new(Scripted::default()), 1 << 20).await;
    let mut ex = Exchange::open(&mut client).await;
    ex.send(headers(
        &[(":method", "GET"), (":path", "/v1/models")],
        true,
    ))
    .await;
    let set = set_headers(&ex.next().await);
    assert_eq!(
        set["x-gateway-destination-endpoint"],
        "10.0.0.1:8000,10.0.0.2:8000"
    );
    assert!(!set.contains_key("content-length"));
    assert!(
        set.contains_key("x-request-id"),
        "a request id is generated when absent"
    );
    // No body answer follows a bodyless request (Envoy 1.40 rejects one as spurious with a
    // 500): the next message answers the response headers.
    ex.send(response_headers()).await;
    let next = ex.next().await.response;
    assert!(
        matches!(
            next,
            Some(processing_response::Response::ResponseHeaders(_))
        ),
        "{next:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_become_immediate_responses() {
    let picker = Arc::new(Scripted::default());
    let mut client = server(picker.clone(), 64).await;
    for (path, payload, status, reason) in [
        ("/v1/completions", &b"{\"model\": oops"[..], 400, None),
        ("/v1/embeddings", &b"{\"model\":\"m\"}"[..], 400, None),
        (
            "/v1/completions",
            &br#"{"model":"empty","prompt":"x"}"#[..],
            503,
            Some("rejected-no-endpoints"),
        ),
        ("/v1/completions", &[b'x'; 100][..], 413, None),
    ] {
        let mut ex = Exchange::open(&mut client).await;
        ex.send(headers(&[(":method", "POST"), (":path", path)], false))
            .await;
        ex.send(body(payload, true)).await;
        let r = ex.next().await;
        let Some(processing_response::Response::ImmediateResponse(imm)) = r.response else {
            panic!("{r:?}")
        };
        assert_eq!(imm.status.unwrap().code, status, "{path}");
        let err: serde_json::Value = serde_json::from_slice(&imm.body).unwrap();
        assert!(
            err["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with("inference error: "),
            "{err}"
        );
        assert_eq!(err["error"]["code"], status);
        let hs: HashMap<String, String> = imm
            .headers
            .unwrap()
            .set_headers
            .into_iter()
            .map(|h| {
                let h = h.header.unwrap();
                (h.key, String::from_utf8(h.raw_value).unwrap())
            })
            .collect();
        assert_eq!(
            hs.get("x-llm-d-request-dropped-reason").map(String::as_str),
            reason
        );
        let why = &hs["x-llm-d-error-reason"];
        assert!(
            why.len() <= 256 && why.bytes().all(|b| (b' '..=b'~').contains(&b)),
            "{why}"
        );
        assert!(
            ["bad_request: ", "no_endpoints: ", "too_large: "]
                .iter()
                .any(|p| why.starts_with(p)),
            "{why}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffered_mode_and_subset_hint() {
    let picker = Arc::new(Scripted::default());
    let mut client = server(picker.clone(), 1 << 20).await;
    let mut ex = Exchange::open(&mut client).await;
    let mut h = headers(&[(":method", "POST"), (":path", "/v1/completions")], false);
    h.protocol_config = Some(ProtocolConfiguration {
        request_body_mode: BodySendMode::Buffered as i32,
        response_body_mode: BodySendMode::Buffered as i32,
        ..Default::default()
    });
    let hint = Struct {
        fields: BTreeMap::from([(
            "x-gateway-destination-endpoint-subset".to_owned(),
            Value {
                kind: Some(Kind::ListValue(ListValue {
                    values: vec![Value {
                        kind: Some(Kind::StringValue("10.0.0.1:8000".into())),
                    }],
                })),
            },
        )]),
    };
    h.metadata_context = Some(Metadata {
        filter_metadata: HashMap::from([("envoy.lb.subset_hint".to_owned(), hint)]),
        ..Default::default()
    });
    ex.send(h).await;
    // Buffered: headers are answered at once, the decision rides on the body response.
    assert!(matches!(
        ex.next().await.response,
        Some(processing_response::Response::RequestHeaders(_))
    ));
    ex.send(body(BODY, true)).await;
    let r = ex.next().await;
    assert!(matches!(
        r.response,
        Some(processing_response::Response::RequestBody(_))
    ));
    assert_eq!(
        set_headers(&r)["x-gateway-destination-endpoint"],
        "10.0.0.1:8000,10.0.0.2:8000"
    );
    assert_eq!(lb_destination(&r), "10.0.0.1:8000,10.0.0.2:8000");
    assert_eq!(
        picker.last_subset.lock().clone(),
        Some(vec!["10.0.0.1:8000".to_owned()])
    );
    // Buffered response bodies are acknowledged without mutation.
    ex.send(response_body(b"{}", true)).await;
    let Some(processing_response::Response::ResponseBody(b)) = ex.next().await.response else {
        panic!()
    };
    assert!(b.response.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_stream_does_not_disturb_the_next() {
    let picker = Arc::new(Scripted::default());
    let mut client = server(picker.clone(), 1 << 20).await;
    {
        let ex = Exchange::open(&mut client).await;
        ex.send(headers(
            &[(":method", "POST"), (":path", "/v1/completions")],
            false,
        ))
        .await;
        ex.send(body(&BODY[..20], false)).await;
        // The client goes away mid-body.
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut ex = Exchange::open(&mut client).await;
    ex.send(headers(
        &[(":method", "POST"), (":path", "/v1/completions")],
        false,
    ))
    .await;
    ex.send(body(BODY, true)).await;
    assert_eq!(
        set_headers(&ex.next().await)["x-gateway-destination-endpoint"],
        "10.0.0.1:8000,10.0.0.2:8000"
    );
    assert_eq!(
        picker.calls.load(Ordering::SeqCst),
        1,
        "the cancelled request never reached the picker"
    );
}

fn removed_headers(r: &ProcessingResponse) -> Vec<String> {
    let common = match r.response.as_ref().unwrap() {
        processing_response::Response::RequestHeaders(h) => h.response.clone().unwrap(),
        processing_response::Response::RequestBody(b) => b.response.clone().unwrap(),
        other => panic!("not a request-phase response: {other:?}"),
    };
    common.header_mutation.unwrap().remove_headers
}

/// A buffered request: the decision mutates only what it changes. The body is left alone, so
/// its `Content-Length` stands; the request's own `x-request-id` is not set again; the prefill
/// header a client sent is removed (a client must not choose its prefill pod), and nothing is
/// removed from a request without one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffered_decisions_mutate_only_what_they_change() {
    let picker = Arc::new(Scripted::default());
    let mut client = server(picker.clone(), 1 << 20).await;
    let plain = br#"{"model":"m","prompt":"decode only","max_tokens":8}"#;
    for (client_prefiller, removed) in [
        (None, Vec::<String>::new()),
        (
            Some("10.9.9.9:8000"),
            vec!["x-prefiller-host-port".to_owned()],
        ),
    ] {
        let mut ex = Exchange::open(&mut client).await;
        let mut pairs = vec![
            (":method", "POST"),
            (":path", "/v1/completions"),
            ("x-request-id", "rid-7"),
        ];
        if let Some(p) = client_prefiller {
            pairs.push(("x-prefiller-host-port", p));
        }
        let mut h = headers(&pairs, false);
        h.protocol_config = Some(ProtocolConfiguration {
            request_body_mode: BodySendMode::Buffered as i32,
            response_body_mode: BodySendMode::Buffered as i32,
            ..Default::default()
        });
        ex.send(h).await;
        ex.next().await; // the headers' answer
        ex.send(body(plain, true)).await;
        let r = ex.next().await;
        let set = set_headers(&r);
        assert_eq!(
            set.keys().collect::<Vec<_>>(),
            vec!["x-gateway-destination-endpoint"],
            "{client_prefiller:?}"
        );
        assert_eq!(removed_headers(&r), removed, "{client_prefiller:?}");
    }
}
