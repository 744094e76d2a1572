//! The data-plane side of Envoy's `ext_proc` protocol (`envoy.service.ext_proc.v3`), as Envoy
//! 1.40 speaks it to an endpoint picker with `FULL_DUPLEX_STREAMED` bodies both ways
//! (reference note `epp-and-kv-index.md` §1). `llmd-gateway` is built on it; [`decide`] is the
//! one-call form for tests and tools.
//!
//! One [`Client::request`] call opens one `Process` stream for one HTTP request and runs its
//! request phase:
//! 1. the request headers, with the pseudo-headers `:method`, `:path`, `:authority`,
//!    `:scheme` first and `protocol_config` announcing `FULL_DUPLEX_STREAMED` both ways;
//! 2. the body in chunks of at most [`DATA_PLANE_CHUNK`] bytes, then the end of the body as its
//!    own empty chunk with `end_of_stream` (a bodyless request ends on its headers);
//! 3. the answers: an `ImmediateResponse` ([`RequestDecision::Immediate`]), or header
//!    mutations and the body back, streamed (`streamed_response`), replaced (`body`) or
//!    unchanged ([`RequestDecision::Continue`]).
//!
//! The same stream then carries the response phase: [`Stream::response_headers`] (with
//! `:status`), and the body through [`Stream::into_body`], a sending half and an answering half
//! that the caller drives concurrently (a full-duplex exchange has no fixed pairing of chunks
//! and answers). Each wait for an answer in the request and header phases is bounded by the
//! client's timeout; timing the body phase is the caller's (Envoy runs no message timer at all
//! in `FULL_DUPLEX_STREAMED` mode).

mod decide;
mod mutation;

use std::time::Duration;

use crate::pb::envoy::config::core::v3::{HeaderMap as PbHeaderMap, HeaderValue as PbHeaderValue};
use crate::pb::envoy::extensions::filters::http::ext_proc::v3::processing_mode::BodySendMode;
use crate::pb::envoy::service::ext_proc::v3::external_processor_client::ExternalProcessorClient;
use crate::pb::envoy::service::ext_proc::v3::{
    HttpBody, HttpHeaders, ImmediateResponse, ProcessingRequest, ProcessingResponse,
    ProtocolConfiguration, body_mutation, processing_request, processing_response,
};
use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use tokio::sync::mpsc;
use tonic::transport::Channel;

pub use decide::{Answer, decide};
pub use mutation::apply_mutation;

/// Largest body chunk the data plane sends to the ext_proc server (Envoy's 64 KiB).
pub const DATA_PLANE_CHUNK: usize = 64 << 10;

/// Largest body chunk the EPP sends back (GIE's `BodyByteLimit`).
pub const EPP_BODY_CHUNK_LIMIT: usize = 62_000;

/// Dynamic-metadata namespace the EPP names the destination in (`envoy.lb`).
pub const ENVOY_LB_NAMESPACE: &str = "envoy.lb";

/// Metadata namespace of the data plane's subset hint.
pub const SUBSET_HINT_NAMESPACE: &str = "envoy.lb.subset_hint";

/// Key of the subset hint (a list of `ip:port`).
pub const SUBSET_HINT_KEY: &str = "x-gateway-destination-endpoint-subset";

/// HTTP/2 connection window of a [`Client::connect_lazy`] channel. All requests share one
/// connection; a window this large keeps one stream whose answers are not read yet (its client
/// is slow) from stalling the others. Only data actually in flight uses memory.
const CONNECTION_WINDOW: u32 = 64 << 20;

/// Messages queued towards the ext_proc server per stream.
const OUTBOUND_QUEUE: usize = 64;

/// Errors of the ext_proc exchange.
#[derive(Debug, thiserror::Error)]
pub enum ExtProcError {
    /// The server address does not parse.
    #[error("invalid ext_proc server address {uri:?}: {source}")]
    Uri {
        /// What was given.
        uri: String,
        /// Parser error.
        #[source]
        source: tonic::transport::Error,
    },
    /// The TLS client configuration cannot be built.
    #[error("ext_proc client TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
    /// The server did not accept the stream in time.
    #[error("the ext_proc server did not accept the stream within {0:?}")]
    OpenTimeout(Duration),
    /// No answer in time.
    #[error("no ext_proc answer to the {waiting_for} within {timeout:?}")]
    Timeout {
        /// What was sent and not answered.
        waiting_for: &'static str,
        /// The limit.
        timeout: Duration,
    },
    /// The gRPC call failed (unreachable server, reset stream, server error).
    #[error("ext_proc call failed: {0}")]
    Status(#[from] tonic::Status),
    /// The server ended the stream before answering.
    #[error("the ext_proc server ended the stream before answering the {0}")]
    Closed(&'static str),
    /// An answer out of protocol.
    #[error("ext_proc protocol: {0}")]
    Protocol(String),
}

/// The request line and headers of an HTTP request, as the ext_proc server is told them.
#[derive(Debug, Clone, Copy)]
pub struct RequestHead<'a> {
    /// `:method`.
    pub method: &'a str,
    /// `:path`, with the query.
    pub path: &'a str,
    /// `:authority` (the `Host` header).
    pub authority: &'a [u8],
    /// `:scheme`.
    pub scheme: &'a str,
    /// The other headers.
    pub headers: &'a HeaderMap,
}

/// An `ImmediateResponse`: answer the client with this instead of forwarding.
#[derive(Debug, Clone)]
pub struct Immediate {
    /// Status (500 when the server sent none or an invalid one).
    pub status: StatusCode,
    /// Headers the server set.
    pub headers: HeaderMap,
    /// Body.
    pub body: Bytes,
    /// The server's `details` (a short code, e.g. the EPP's error code).
    pub details: String,
}

impl Immediate {
    fn from_pb(ir: ImmediateResponse) -> Self {
        let status = ir
            .status
            .and_then(|s| u16::try_from(s.code).ok())
            .and_then(|c| StatusCode::from_u16(c).ok())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut headers = HeaderMap::new();
        if let Some(m) = &ir.headers {
            apply_mutation(&mut headers, m);
        }
        Self {
            status,
            headers,
            body: Bytes::from(ir.body),
            details: ir.details,
        }
    }
}

/// What the request phase decided.
#[derive(Debug)]
pub enum RequestDecision {
    /// Answer the client with this.
    Immediate(Immediate),
    /// Forward the request.
    Continue(Box<Continue>),
}

/// A request to forward, as the ext_proc server left it.
#[derive(Debug)]
pub struct Continue {
    /// The request headers with the server's mutations applied (among them
    /// [`crate::headers::DESTINATION_HEADER`]).
    pub headers: HeaderMap,
    /// The body, as the server handed it back (or the original when it did not change it).
    pub body: Bytes,
    /// Every header the server set, in order (name, raw value).
    pub set_headers: Vec<(String, Vec<u8>)>,
    /// The open stream, for the response phase.
    pub stream: Stream,
}

/// A client of one ext_proc server. Cheap to clone: every clone shares one HTTP/2 connection.
#[derive(Debug, Clone)]
pub struct Client {
    grpc: ExternalProcessorClient<Channel>,
    timeout: Duration,
}

impl Client {
    /// A client on `channel`; each answer of the request and header phases is awaited at most
    /// `timeout`.
    pub fn new(channel: Channel, timeout: Duration) -> Self {
        Self {
            grpc: ExternalProcessorClient::new(channel),
            timeout,
        }
    }

    /// A client of the server at `uri` (`http://host:port`, or `https://host:port` for TLS
    /// without verifying the server's certificate, as llm-d's Envoy configuration dials its
    /// EPP), connecting on first use with `timeout` as the connect timeout too.
    pub fn connect_lazy(uri: &str, timeout: Duration) -> Result<Self, ExtProcError> {
        Self::connect_lazy_tls(uri, timeout, None)
    }

    /// [`Client::connect_lazy`] with the TLS client configuration for an `https://` URI
    /// (`None`: TLS without certificate verification; see [`crate::tls::client_config`]).
    pub fn connect_lazy_tls(
        uri: &str,
        timeout: Duration,
        tls: Option<rustls::ClientConfig>,
    ) -> Result<Self, ExtProcError> {
        let endpoint = tonic::transport::Endpoint::from_shared(uri.to_owned())
            .map_err(|source| ExtProcError::Uri {
                uri: uri.to_owned(),
                source,
            })?
            .connect_timeout(timeout)
            .tcp_nodelay(true)
            .initial_connection_window_size(CONNECTION_WINDOW);
        let channel = if endpoint.uri().scheme_str() == Some("https") {
            let config = match tls {
                Some(config) => config,
                None => crate::tls::client_config(None, true)?,
            };
            endpoint.connect_with_connector_lazy(crate::tls::grpc_connector(config))
        } else {
            endpoint.connect_lazy()
        };
        Ok(Self::new(channel, timeout))
    }

    /// The per-answer timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Runs the request phase of one request on a new stream.
    pub async fn request(
        &self,
        head: &RequestHead<'_>,
        body: &Bytes,
    ) -> Result<RequestDecision, ExtProcError> {
        request_phase(self.grpc.clone(), self.timeout, head, body).await
    }
}

fn header_pairs<'a>(
    pseudo: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    headers: &'a HeaderMap,
) -> PbHeaderMap {
    let pair = |key: &str, value: &[u8]| PbHeaderValue {
        key: key.to_owned(),
        value: String::new(),
        raw_value: value.to_vec(),
    };
    PbHeaderMap {
        headers: pseudo
            .into_iter()
            .map(|(k, v)| pair(k, v))
            .chain(headers.iter().map(|(k, v)| pair(k.as_str(), v.as_bytes())))
            .collect(),
    }
}

async fn request_phase(
    mut grpc: ExternalProcessorClient<Channel>,
    timeout: Duration,
    head: &RequestHead<'_>,
    body: &Bytes,
) -> Result<RequestDecision, ExtProcError> {
    let (tx, rx) = mpsc::channel::<ProcessingRequest>(OUTBOUND_QUEUE);
    let outgoing =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
    let full_duplex = BodySendMode::FullDuplexStreamed as i32;
    let pseudo = [
        (":method", head.method.as_bytes()),
        (":path", head.path.as_bytes()),
        (":authority", head.authority),
        (":scheme", head.scheme.as_bytes()),
    ];
    tx.send(ProcessingRequest {
        request: Some(processing_request::Request::RequestHeaders(HttpHeaders {
            headers: Some(header_pairs(pseudo, head.headers)),
            end_of_stream: body.is_empty(),
            ..Default::default()
        })),
        protocol_config: Some(ProtocolConfiguration {
            request_body_mode: full_duplex,
            response_body_mode: full_duplex,
            send_body_without_waiting_for_header_response: true,
        }),
        ..Default::default()
    })
    .await
    .map_err(|_| ExtProcError::Closed("request headers"))?;
    let rx = tokio::time::timeout(timeout, grpc.process(outgoing))
        .await
        .map_err(|_| ExtProcError::OpenTimeout(timeout))??
        .into_inner();
    let mut stream = Stream { tx, rx, timeout };
    // As Envoy 1.40 does: the data chunks, then the end of the body as its own empty chunk.
    let mut chunks: Vec<Bytes> = (0..body.len())
        .step_by(DATA_PLANE_CHUNK)
        .map(|at| body.slice(at..body.len().min(at + DATA_PLANE_CHUNK)))
        .collect();
    if !chunks.is_empty() {
        chunks.push(Bytes::new());
    }
    let last = chunks.len();
    for (i, c) in chunks.iter().enumerate() {
        let sent = stream
            .send(processing_request::Request::RequestBody(HttpBody {
                body: c.to_vec(),
                end_of_stream: i + 1 == last,
                ..Default::default()
            }))
            .await;
        if sent.is_err() {
            // The server stopped reading: it may have answered already (an ImmediateResponse
            // for an oversized body); read what it said.
            break;
        }
    }
    let mut headers = head.headers.clone();
    let mut set_headers = Vec::new();
    let mut new_body: Option<Vec<u8>> = None;
    let mut body_answers = 0usize;
    let mut headers_answered = false;
    let waiting_for = "request";
    loop {
        match stream.recv(waiting_for).await? {
            processing_response::Response::ImmediateResponse(ir) => {
                return Ok(RequestDecision::Immediate(Immediate::from_pb(ir)));
            }
            processing_response::Response::RequestHeaders(h) => {
                if let Some(m) = h.response.as_ref().and_then(|c| c.header_mutation.as_ref()) {
                    apply_mutation(&mut headers, m);
                    collect_set(&mut set_headers, m);
                }
                headers_answered = true;
            }
            processing_response::Response::RequestBody(b) => {
                body_answers += 1;
                let mut done = body_answers >= last;
                if let Some(c) = &b.response {
                    if let Some(m) = &c.header_mutation {
                        apply_mutation(&mut headers, m);
                        collect_set(&mut set_headers, m);
                    }
                    match c.body_mutation.as_ref().and_then(|m| m.mutation.as_ref()) {
                        Some(body_mutation::Mutation::StreamedResponse(s)) => {
                            new_body
                                .get_or_insert_with(Vec::new)
                                .extend_from_slice(&s.body);
                            done = s.end_of_stream;
                        }
                        Some(body_mutation::Mutation::Body(all)) => {
                            new_body = Some(all.clone());
                            done = true;
                        }
                        Some(body_mutation::Mutation::ClearBody(true)) => {
                            new_body = Some(Vec::new());
                        }
                        _ => {}
                    }
                }
                if done {
                    break;
                }
            }
            other => {
                return Err(ExtProcError::Protocol(format!(
                    "unexpected answer in the request phase: {other:?}"
                )));
            }
        }
        if headers_answered && chunks.is_empty() {
            break;
        }
    }
    let body = new_body.map_or_else(|| body.clone(), Bytes::from);
    Ok(RequestDecision::Continue(Box::new(Continue {
        headers,
        body,
        set_headers,
        stream,
    })))
}

fn collect_set(
    out: &mut Vec<(String, Vec<u8>)>,
    m: &crate::pb::envoy::service::ext_proc::v3::HeaderMutation,
) {
    for h in m.set_headers.iter().filter_map(|o| o.header.as_ref()) {
        let raw = if h.raw_value.is_empty() {
            h.value.as_bytes().to_vec()
        } else {
            h.raw_value.clone()
        };
        out.push((h.key.clone(), raw));
    }
}

/// An open `Process` stream after the request phase.
#[derive(Debug)]
pub struct Stream {
    tx: mpsc::Sender<ProcessingRequest>,
    rx: tonic::Streaming<ProcessingResponse>,
    timeout: Duration,
}

impl Stream {
    async fn send(&self, r: processing_request::Request) -> Result<(), ExtProcError> {
        self.tx
            .send(ProcessingRequest {
                request: Some(r),
                ..Default::default()
            })
            .await
            .map_err(|_| ExtProcError::Closed("next message"))
    }

    async fn recv(
        &mut self,
        waiting_for: &'static str,
    ) -> Result<processing_response::Response, ExtProcError> {
        match tokio::time::timeout(self.timeout, self.rx.message()).await {
            Err(_) => Err(ExtProcError::Timeout {
                waiting_for,
                timeout: self.timeout,
            }),
            Ok(Err(status)) => Err(status.into()),
            Ok(Ok(None)) => Err(ExtProcError::Closed(waiting_for)),
            Ok(Ok(Some(m))) => m
                .response
                .ok_or_else(|| ExtProcError::Protocol("an empty answer".into())),
        }
    }

    /// The per-answer timeout of this stream.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Sends the response headers (with `:status`) and applies the server's mutations to
    /// `headers`. `Ok(Some(..))`: the server answered with an `ImmediateResponse` instead.
    pub async fn response_headers(
        &mut self,
        status: StatusCode,
        headers: &mut HeaderMap,
    ) -> Result<Option<Immediate>, ExtProcError> {
        let pseudo = [(":status", status.as_str().as_bytes())];
        self.send(processing_request::Request::ResponseHeaders(HttpHeaders {
            headers: Some(header_pairs(pseudo, headers)),
            end_of_stream: false,
            ..Default::default()
        }))
        .await?;
        match self.recv("response headers").await? {
            processing_response::Response::ResponseHeaders(h) => {
                if let Some(m) = h.response.as_ref().and_then(|c| c.header_mutation.as_ref()) {
                    apply_mutation(headers, m);
                }
                Ok(None)
            }
            processing_response::Response::ImmediateResponse(ir) => {
                Ok(Some(Immediate::from_pb(ir)))
            }
            other => Err(ExtProcError::Protocol(format!(
                "unexpected answer to the response headers: {other:?}"
            ))),
        }
    }

    /// Splits the stream for the response body: chunks go out through the [`BodySender`],
    /// answers come in through the [`BodyAnswers`]. Dropping both ends the stream.
    pub fn into_body(self) -> (BodySender, BodyAnswers) {
        (BodySender { tx: self.tx }, BodyAnswers { rx: self.rx })
    }
}

/// The sending half of the response-body exchange.
#[derive(Debug)]
pub struct BodySender {
    tx: mpsc::Sender<ProcessingRequest>,
}

impl BodySender {
    /// Waits for room to send one chunk (cancel-safe: usable in `select!`).
    pub async fn reserve(&self) -> Result<BodyPermit<'_>, ExtProcError> {
        self.tx
            .reserve()
            .await
            .map(|permit| BodyPermit { permit })
            .map_err(|_| ExtProcError::Closed("response body"))
    }
}

/// Room for one response-body chunk.
#[derive(Debug)]
pub struct BodyPermit<'a> {
    permit: mpsc::Permit<'a, ProcessingRequest>,
}

impl BodyPermit<'_> {
    /// Sends a response-body chunk (an empty one with `end_of_stream` ends the body).
    pub fn send(self, chunk: &Bytes, end_of_stream: bool) {
        self.permit.send(ProcessingRequest {
            request: Some(processing_request::Request::ResponseBody(HttpBody {
                body: chunk.to_vec(),
                end_of_stream,
                ..Default::default()
            })),
            ..Default::default()
        });
    }
}

/// The answering half of the response-body exchange.
#[derive(Debug)]
pub struct BodyAnswers {
    rx: tonic::Streaming<ProcessingResponse>,
}

/// One answer of the response-body phase.
#[derive(Debug, Clone)]
pub enum BodyAnswer {
    /// Bytes to send to the client in place of what was sent (`streamed_response`).
    Streamed {
        /// The bytes.
        body: Bytes,
        /// The last of the body.
        end_of_stream: bool,
    },
    /// A whole replacement body (`body`).
    Replaced(Bytes),
    /// The chunk is dropped (`clear_body`).
    Cleared,
    /// The chunk goes on as it was sent (no body mutation).
    Unchanged,
    /// The server answered the trailers: the response is complete.
    Trailers,
    /// The server replaced the response (possible only before the headers went out).
    Immediate(Immediate),
}

impl BodyAnswers {
    /// The next answer; `Ok(None)` when the server ended the stream. Not bounded in time: the
    /// caller decides how long an outstanding chunk may wait (cancel-safe: usable in
    /// `select!`).
    pub async fn next(&mut self) -> Result<Option<BodyAnswer>, ExtProcError> {
        let Some(message) = self.rx.message().await? else {
            return Ok(None);
        };
        let answer = match message.response {
            Some(processing_response::Response::ResponseBody(b)) => {
                match b
                    .response
                    .and_then(|c| c.body_mutation)
                    .and_then(|m| m.mutation)
                {
                    Some(body_mutation::Mutation::StreamedResponse(s)) => BodyAnswer::Streamed {
                        body: Bytes::from(s.body),
                        end_of_stream: s.end_of_stream,
                    },
                    Some(body_mutation::Mutation::Body(all)) => {
                        BodyAnswer::Replaced(Bytes::from(all))
                    }
                    Some(body_mutation::Mutation::ClearBody(true)) => BodyAnswer::Cleared,
                    Some(body_mutation::Mutation::ClearBody(false)) | None => BodyAnswer::Unchanged,
                }
            }
            Some(processing_response::Response::ResponseTrailers(_)) => BodyAnswer::Trailers,
            Some(processing_response::Response::ImmediateResponse(ir)) => {
                BodyAnswer::Immediate(Immediate::from_pb(ir))
            }
            other => {
                return Err(ExtProcError::Protocol(format!(
                    "unexpected answer in the response-body phase: {other:?}"
                )));
            }
        };
        Ok(Some(answer))
    }
}
