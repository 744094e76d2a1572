//! `llmd-gateway`: a small HTTP reverse proxy that asks an ext_proc server (the EPP) about every
//! request the way Envoy does, for local runs and tests. It is a stand-in for Envoy, not a
//! production gateway.
//!
//! Per request, on one `Process` stream (FULL_DUPLEX_STREAMED both ways, announced in
//! `protocol_config` as Envoy 1.40 does):
//! 1. the request headers (with `:method`, `:path`, `:authority`, `:scheme`), the body in
//!    chunks of at most 64 KiB, and the end of the body as its own empty chunk with
//!    `end_of_stream` (as Envoy 1.40 sends it);
//! 2. the EPP's answer: an `ImmediateResponse` (sent to the client as is), or header mutations
//!    (among them `x-gateway-destination-endpoint`) and the body back, streamed or replaced;
//! 3. the request goes to the first destination that accepts a connection, falling back down
//!    the comma-separated list;
//! 4. the response headers go through the EPP, then every response body chunk, each forwarded to
//!    the client as the EPP hands it back (the EPP reads token usage from them).
//!
//! The gateway's `gateway.request` span continues the client's `traceparent`, and the EPP and
//! the upstream get the gateway's. An access log line per request goes to the log target
//! `access`. When the EPP cannot be reached or does not answer in time the client gets 503
//! (`--fail-open` with `--default-endpoint` forwards there instead).
//!
//! Not built yet: response trailers, buffered body modes, gRPC upstreams, TLS.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use envoy_types::pb::envoy::config::core::v3::{
    HeaderMap as PbHeaderMap, HeaderValue as PbHeaderValue,
};
use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::processing_mode::BodySendMode;
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_client::ExternalProcessorClient;
use envoy_types::pb::envoy::service::ext_proc::v3::{
    CommonResponse, HttpBody, HttpHeaders, ProcessingRequest, ProcessingResponse,
    ProtocolConfiguration, body_mutation, processing_request, processing_response,
};
use futures::StreamExt;
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use llmd_telemetry::TelemetryArgs;
use llmd_telemetry::names::spans;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// The header the EPP names destinations in (GIE's).
pub const DESTINATION_HEADER: &str = "x-gateway-destination-endpoint";

/// Largest body chunk sent to the EPP.
const CHUNK: usize = 64 << 10;

/// Command-line flags of `llmd-gateway` (also `llmd gateway`).
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "llmd-gateway",
    version,
    about = "Local stand-in for Envoy: asks an ext_proc EPP about each request, forwards to the endpoint it names. Not a production gateway."
)]
pub struct Args {
    /// Logging and tracing.
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
    /// Listen address.
    #[arg(long, default_value = "0.0.0.0")]
    pub host: String,
    /// Listen port.
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// The ext_proc server (the EPP's gRPC port).
    #[arg(
        long,
        env = "LLMD_GATEWAY_EPP",
        default_value = "http://127.0.0.1:9002"
    )]
    pub epp: String,
    /// How long to wait for each answer of the EPP, ms.
    #[arg(long, default_value_t = 10_000)]
    pub epp_timeout_ms: u64,
    /// When the EPP is down or silent, forward to --default-endpoint instead of answering 503.
    #[arg(long, requires = "default_endpoint")]
    pub fail_open: bool,
    /// `host:port` used with --fail-open.
    #[arg(long)]
    pub default_endpoint: Option<String>,
    /// Largest request body, bytes (larger: 413).
    #[arg(long, default_value_t = 32 << 20)]
    pub max_body_bytes: usize,
    /// TCP connect timeout to a destination, ms (then the next one is tried).
    #[arg(long, default_value_t = 2_000)]
    pub connect_timeout_ms: u64,
    /// Timeout until a destination answers with headers, ms.
    #[arg(long, default_value_t = 600_000)]
    pub upstream_timeout_ms: u64,
    /// Do not send responses through the EPP (Envoy's response_header_mode SKIP).
    #[arg(long)]
    pub no_response_processing: bool,
}

/// Errors of the gateway.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad flags.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Listening.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// Address.
        addr: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

struct Gateway {
    args: Args,
    epp: tonic::transport::Channel,
    upstream: Client<HttpConnector, Body>,
}

/// Starts the gateway on `listener`.
pub async fn start(
    args: Args,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<SocketAddr, Error> {
    let addr = listener.local_addr().map_err(|source| Error::Listen {
        addr: "listener".into(),
        source,
    })?;
    let epp = tonic::transport::Endpoint::from_shared(args.epp.clone())
        .map_err(|e| Error::Config(format!("--epp {:?}: {e}", args.epp)))?
        .connect_timeout(Duration::from_millis(args.epp_timeout_ms))
        .tcp_nodelay(true)
        .connect_lazy();
    let mut tcp = HttpConnector::new();
    tcp.set_nodelay(true);
    tcp.set_connect_timeout(Some(Duration::from_millis(args.connect_timeout_ms)));
    let upstream = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(1024)
        .build(tcp);
    let g = Arc::new(Gateway {
        args,
        epp,
        upstream,
    });
    let app = axum::Router::new().fallback(handle).with_state(g);
    tokio::spawn(async move {
        use axum::serve::ListenerExt;
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        if let Err(error) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
        {
            tracing::error!(%error, "gateway stopped");
        }
    });
    tracing::info!(%addr, "llmd-gateway serving");
    Ok(addr)
}

/// Runs the gateway until `shutdown` is cancelled.
pub async fn run(args: Args, shutdown: CancellationToken) -> Result<(), Error> {
    let addr = format!("{}:{}", args.host, args.port);
    let listener = TcpListener::bind(&addr)
        .await
        .map_err(|source| Error::Listen { addr, source })?;
    start(args, listener, shutdown.clone()).await?;
    shutdown.cancelled().await;
    Ok(())
}

/// An OpenAI-style error body.
fn error(status: StatusCode, kind: &str, message: &str) -> Response {
    let body = serde_json::json!({"error": {"message": message, "type": kind, "param": null, "code": status.as_u16()}});
    (status, axum::Json(body)).into_response()
}

fn pb_headers(pairs: &[(String, Vec<u8>)]) -> PbHeaderMap {
    PbHeaderMap {
        headers: pairs
            .iter()
            .map(|(k, v)| PbHeaderValue {
                key: k.clone(),
                value: String::new(),
                raw_value: v.clone(),
            })
            .collect(),
    }
}

/// Applies an ext_proc header mutation to `headers`.
fn apply_mutation(headers: &mut HeaderMap, common: &CommonResponse) {
    let Some(m) = &common.header_mutation else {
        return;
    };
    for name in &m.remove_headers {
        if let Ok(n) = HeaderName::try_from(name.as_str()) {
            headers.remove(n);
        }
    }
    for opt in &m.set_headers {
        let Some(h) = &opt.header else { continue };
        let raw = if h.raw_value.is_empty() {
            h.value.as_bytes()
        } else {
            &h.raw_value
        };
        if h.key.starts_with(':') {
            continue;
        }
        if let (Ok(n), Ok(v)) = (
            HeaderName::try_from(h.key.as_str()),
            HeaderValue::from_bytes(raw),
        ) {
            // HeaderAppendAction: 0 append or add, 1 add if absent, 2 overwrite or add,
            // 3 overwrite only if present.
            match opt.append_action {
                0 => {
                    headers.append(n, v);
                }
                1 => {
                    if !headers.contains_key(&n) {
                        headers.insert(n, v);
                    }
                }
                3 => {
                    if headers.contains_key(&n) {
                        headers.insert(n, v);
                    }
                }
                _ => {
                    headers.insert(n, v);
                }
            }
        }
    }
}

/// What the request phase decided.
enum Decision {
    /// Answer the client with this.
    Respond(Response),
    /// Forward: the mutated headers and body, and the open stream for the response phase.
    Forward {
        headers: HeaderMap,
        body: Bytes,
        stream: Option<Box<EppStream>>,
    },
}

/// An open ext_proc stream.
struct EppStream {
    tx: mpsc::Sender<ProcessingRequest>,
    rx: tonic::Streaming<ProcessingResponse>,
    timeout: Duration,
}

impl EppStream {
    async fn send(&self, r: processing_request::Request) -> Result<(), String> {
        self.tx
            .send(ProcessingRequest {
                request: Some(r),
                ..Default::default()
            })
            .await
            .map_err(|_| "the EPP closed the stream".to_owned())
    }

    async fn recv(&mut self) -> Result<processing_response::Response, String> {
        match tokio::time::timeout(self.timeout, self.rx.message()).await {
            Err(_) => Err(format!("no answer from the EPP within {:?}", self.timeout)),
            Ok(Err(status)) => Err(format!("EPP: {status}")),
            Ok(Ok(None)) => Err("the EPP ended the stream".into()),
            Ok(Ok(Some(m))) => m.response.ok_or_else(|| "an empty EPP answer".into()),
        }
    }
}

impl Gateway {
    /// The request phase: the EPP sees headers and body, and decides.
    async fn ask_epp(
        &self,
        pseudo: &[(String, Vec<u8>)],
        headers: &HeaderMap,
        body: &Bytes,
    ) -> Result<Decision, String> {
        let timeout = Duration::from_millis(self.args.epp_timeout_ms);
        let (tx, rx) = mpsc::channel::<ProcessingRequest>(64);
        let outgoing =
            futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
        let mut pairs: Vec<(String, Vec<u8>)> = pseudo.to_vec();
        for (k, v) in headers {
            pairs.push((k.as_str().to_owned(), v.as_bytes().to_vec()));
        }
        let full_duplex = BodySendMode::FullDuplexStreamed as i32;
        tx.send(ProcessingRequest {
            request: Some(processing_request::Request::RequestHeaders(HttpHeaders {
                headers: Some(pb_headers(&pairs)),
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
        .map_err(|_| "cannot queue the request headers".to_owned())?;
        let mut client = ExternalProcessorClient::new(self.epp.clone());
        let rx = tokio::time::timeout(timeout, client.process(outgoing))
            .await
            .map_err(|_| format!("the EPP did not accept the stream within {timeout:?}"))?
            .map_err(|s| format!("EPP: {s}"))?
            .into_inner();
        let mut stream = EppStream { tx, rx, timeout };
        // As Envoy 1.40 does: the data chunks, then the end of the body as its own empty chunk.
        let mut chunks: Vec<&[u8]> = body.chunks(CHUNK).collect();
        if !chunks.is_empty() {
            chunks.push(&[]);
        }
        for (i, c) in chunks.iter().enumerate() {
            stream
                .send(processing_request::Request::RequestBody(HttpBody {
                    body: c.to_vec(),
                    end_of_stream: i + 1 == chunks.len(),
                    ..Default::default()
                }))
                .await?;
        }
        let mut headers = headers.clone();
        let mut new_body: Option<Vec<u8>> = None;
        let mut body_answers = 0usize;
        let mut headers_answered = false;
        loop {
            match stream.recv().await? {
                processing_response::Response::ImmediateResponse(ir) => {
                    let status = ir
                        .status
                        .and_then(|s| u16::try_from(s.code).ok())
                        .and_then(|c| StatusCode::from_u16(c).ok())
                        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                    let mut out = Response::new(Body::from(ir.body));
                    *out.status_mut() = status;
                    if let Some(m) = ir.headers {
                        apply_mutation(
                            out.headers_mut(),
                            &CommonResponse {
                                header_mutation: Some(m),
                                ..Default::default()
                            },
                        );
                    }
                    return Ok(Decision::Respond(out));
                }
                processing_response::Response::RequestHeaders(h) => {
                    if let Some(c) = &h.response {
                        apply_mutation(&mut headers, c);
                    }
                    headers_answered = true;
                }
                processing_response::Response::RequestBody(b) => {
                    body_answers += 1;
                    let mut done = body_answers >= chunks.len();
                    if let Some(c) = &b.response {
                        apply_mutation(&mut headers, c);
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
                    return Err(format!(
                        "unexpected EPP answer in the request phase: {other:?}"
                    ));
                }
            }
            if headers_answered && chunks.is_empty() {
                break;
            }
        }
        let body = new_body.map_or_else(|| body.clone(), Bytes::from);
        Ok(Decision::Forward {
            headers,
            body,
            stream: (!self.args.no_response_processing).then(|| Box::new(stream)),
        })
    }
}

const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "content-length",
    "host",
];

async fn handle(State(g): State<Arc<Gateway>>, req: Request) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    let path = req
        .uri()
        .path_and_query()
        .map_or_else(|| req.uri().path().to_owned(), |p| p.as_str().to_owned());
    let span = tracing::info_span!(
        spans::GATEWAY_REQUEST,
        otel.kind = "server",
        http.request.method = %method,
        url.path = %req.uri().path(),
        http.response.status_code = tracing::field::Empty,
        llmd.gateway.destination = tracing::field::Empty,
    );
    llmd_telemetry::propagation::set_parent(
        &span,
        llmd_telemetry::propagation::extract_from_headers(req.headers()),
    );
    let (resp, destination) = process(&g, req, &method, &path)
        .instrument(span.clone())
        .await;
    span.record("http.response.status_code", resp.status().as_u16());
    if let Some(d) = &destination {
        span.record("llmd.gateway.destination", d.as_str());
    }
    tracing::info!(
        target: "access",
        method = %method,
        path,
        status = resp.status().as_u16(),
        destination = destination.as_deref().unwrap_or("-"),
        ms = started.elapsed().as_secs_f64() * 1e3,
    );
    resp
}

async fn process(
    g: &Arc<Gateway>,
    req: Request,
    method: &axum::http::Method,
    path: &str,
) -> (Response, Option<String>) {
    let (parts, body) = req.into_parts();
    let body = match axum::body::to_bytes(body, g.args.max_body_bytes).await {
        Ok(b) => b,
        Err(e) => {
            // The limit error sits somewhere down axum's error chain.
            let too_big =
                std::iter::successors(Some(&e as &(dyn std::error::Error + 'static)), |s| {
                    s.source()
                })
                .any(|s| s.is::<http_body_util::LengthLimitError>());
            return if too_big {
                (
                    error(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "BadRequestError",
                        "request body too large",
                    ),
                    None,
                )
            } else {
                (
                    error(
                        StatusCode::BAD_REQUEST,
                        "BadRequestError",
                        &format!("cannot read the body: {e}"),
                    ),
                    None,
                )
            };
        }
    };
    let mut headers = HeaderMap::new();
    for (k, v) in &parts.headers {
        if !HOP_BY_HOP.contains(&k.as_str()) && k != "traceparent" && k != "tracestate" {
            headers.append(k.clone(), v.clone());
        }
    }
    // The EPP and the upstream continue the gateway's span.
    llmd_telemetry::propagation::inject_span_into_headers(&tracing::Span::current(), &mut headers);
    if !headers.contains_key("traceparent")
        && let Some(tp) = parts.headers.get("traceparent")
    {
        headers.insert("traceparent", tp.clone());
    }
    let authority = parts
        .headers
        .get("host")
        .map_or_else(|| b"llmd-gateway".to_vec(), |h| h.as_bytes().to_vec());
    let pseudo = vec![
        (":method".to_owned(), method.as_str().as_bytes().to_vec()),
        (":path".to_owned(), path.as_bytes().to_vec()),
        (":authority".to_owned(), authority),
        (":scheme".to_owned(), b"http".to_vec()),
    ];
    let decision = match g.ask_epp(&pseudo, &headers, &body).await {
        Ok(d) => d,
        Err(why) => {
            tracing::warn!(why, "EPP unavailable");
            match (&g.args.default_endpoint, g.args.fail_open) {
                (Some(d), true) => Decision::Forward {
                    headers: {
                        let mut h = headers.clone();
                        if let Ok(v) = HeaderValue::from_str(d) {
                            h.insert(DESTINATION_HEADER, v);
                        }
                        h
                    },
                    body,
                    stream: None,
                },
                _ => {
                    return (
                        error(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "ServiceUnavailable",
                            &format!("the endpoint picker is unavailable: {why}"),
                        ),
                        None,
                    );
                }
            }
        }
    };
    let (headers, body, stream) = match decision {
        Decision::Respond(r) => return (r, None),
        Decision::Forward {
            headers,
            body,
            stream,
        } => (headers, body, stream),
    };
    let destinations: Vec<String> = headers
        .get(DESTINATION_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    if destinations.is_empty() {
        return (
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                "the endpoint picker named no destination",
            ),
            None,
        );
    }
    let mut last_error = String::new();
    for dest in &destinations {
        let Ok(uri) = format!("http://{dest}{path}").parse::<axum::http::Uri>() else {
            last_error = format!("invalid destination {dest:?}");
            continue;
        };
        let mut up = axum::http::Request::new(Body::from(body.clone()));
        *up.method_mut() = method.clone();
        *up.uri_mut() = uri;
        *up.headers_mut() = headers.clone();
        let sent = tokio::time::timeout(
            Duration::from_millis(g.args.upstream_timeout_ms),
            g.upstream.request(up),
        )
        .await;
        match sent {
            Ok(Ok(resp)) => return (respond(resp, stream).await, Some(dest.clone())),
            Ok(Err(e)) if e.is_connect() => {
                tracing::debug!(dest, error = %e, "destination refused; trying the next");
                last_error = format!("{dest}: {e}");
            }
            Ok(Err(e)) => {
                return (
                    error(
                        StatusCode::BAD_GATEWAY,
                        "BadGateway",
                        &format!("{dest}: {e}"),
                    ),
                    Some(dest.clone()),
                );
            }
            Err(_) => {
                return (
                    error(
                        StatusCode::GATEWAY_TIMEOUT,
                        "GatewayTimeout",
                        &format!("{dest} did not answer in time"),
                    ),
                    Some(dest.clone()),
                );
            }
        }
    }
    (
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            &format!("no destination accepted the request: {last_error}"),
        ),
        None,
    )
}

/// The response phase: headers and every body chunk through the EPP, when it processes them.
async fn respond(
    resp: http::Response<hyper::body::Incoming>,
    stream: Option<Box<EppStream>>,
) -> Response {
    let (mut parts, upstream) = resp.into_parts();
    for h in HOP_BY_HOP {
        parts.headers.remove(*h);
    }
    let Some(mut stream) = stream else {
        let mut out = Response::new(Body::new(upstream));
        *out.status_mut() = parts.status;
        *out.headers_mut() = parts.headers;
        return out;
    };
    let mut pairs = vec![(
        ":status".to_owned(),
        parts.status.as_str().as_bytes().to_vec(),
    )];
    for (k, v) in &parts.headers {
        pairs.push((k.as_str().to_owned(), v.as_bytes().to_vec()));
    }
    let answered = async {
        stream
            .send(processing_request::Request::ResponseHeaders(HttpHeaders {
                headers: Some(pb_headers(&pairs)),
                end_of_stream: false,
                ..Default::default()
            }))
            .await?;
        match stream.recv().await? {
            processing_response::Response::ResponseHeaders(h) => Ok(h.response),
            other => Err(format!(
                "unexpected EPP answer to response headers: {other:?}"
            )),
        }
    }
    .await;
    match answered {
        Ok(Some(c)) => apply_mutation(&mut parts.headers, &c),
        Ok(None) => {}
        Err(why) => {
            // The answer is already on its way: pass it through untouched.
            tracing::warn!(
                why,
                "EPP failed in the response phase; passing the response through"
            );
            let mut out = Response::new(Body::new(upstream));
            *out.status_mut() = parts.status;
            *out.headers_mut() = parts.headers;
            return out;
        }
    }
    let EppStream { tx, rx, timeout } = *stream;
    // Upstream chunks go to the EPP; what the EPP hands back goes to the client.
    let pending: Arc<parking_lot::Mutex<std::collections::VecDeque<Bytes>>> = Arc::default();
    let pending_up = pending.clone();
    tokio::spawn(async move {
        let mut upstream = upstream;
        loop {
            match upstream.frame().await {
                Some(Ok(frame)) => {
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    pending_up.lock().push_back(data.clone());
                    let msg = ProcessingRequest {
                        request: Some(processing_request::Request::ResponseBody(HttpBody {
                            body: data.to_vec(),
                            end_of_stream: false,
                            ..Default::default()
                        })),
                        ..Default::default()
                    };
                    if tx.send(msg).await.is_err() {
                        return;
                    }
                }
                Some(Err(error)) => {
                    tracing::warn!(%error, "upstream body failed");
                    return;
                }
                None => break,
            }
        }
        pending_up.lock().push_back(Bytes::new());
        let _ = tx
            .send(ProcessingRequest {
                request: Some(processing_request::Request::ResponseBody(HttpBody {
                    body: Vec::new(),
                    end_of_stream: true,
                    ..Default::default()
                })),
                ..Default::default()
            })
            .await;
    });
    let body_stream = futures::stream::unfold(
        (rx, pending, false),
        move |(mut rx, pending, done)| async move {
            if done {
                return None;
            }
            let msg = match tokio::time::timeout(timeout, rx.message()).await {
                Ok(Ok(Some(m))) => m,
                Ok(Ok(None)) => return None,
                Ok(Err(status)) => {
                    return Some((
                        Err(std::io::Error::other(format!("EPP: {status}"))),
                        (rx, pending, true),
                    ));
                }
                Err(_) => {
                    return Some((
                        Err(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "EPP response phase timed out",
                        )),
                        (rx, pending, true),
                    ));
                }
            };
            let original = pending.lock().pop_front();
            match msg.response {
                Some(processing_response::Response::ResponseBody(b)) => {
                    let streamed = b
                        .response
                        .and_then(|c| c.body_mutation)
                        .and_then(|m| m.mutation);
                    match streamed {
                        Some(body_mutation::Mutation::StreamedResponse(s)) => {
                            let end = s.end_of_stream;
                            Some((Ok(Bytes::from(s.body)), (rx, pending, end)))
                        }
                        Some(body_mutation::Mutation::Body(all)) => {
                            Some((Ok(Bytes::from(all)), (rx, pending, false)))
                        }
                        _ => {
                            // No mutation: the chunk as the upstream sent it (empty marks the end).
                            let chunk = original.unwrap_or_default();
                            let end = chunk.is_empty();
                            Some((Ok(chunk), (rx, pending, end)))
                        }
                    }
                }
                Some(processing_response::Response::ResponseTrailers(_)) => None,
                other => Some((
                    Err(std::io::Error::other(format!(
                        "unexpected EPP answer {other:?}"
                    ))),
                    (rx, pending, true),
                )),
            }
        },
    )
    .filter(|r| {
        let keep = !matches!(r, Ok(b) if b.is_empty());
        async move { keep }
    });
    let mut out = Response::new(Body::from_stream(body_stream));
    *out.status_mut() = parts.status;
    *out.headers_mut() = parts.headers;
    out
}
