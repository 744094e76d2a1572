//! The Envoy `ext_proc` server (`envoy.service.ext_proc.v3.ExternalProcessor.Process`): one
//! bidirectional stream per HTTP request, answered the way Envoy and the GIE endpoint-picker
//! protocol expect (`reference/epp-and-kv-index.md` §1).
//!
//! **Full-duplex streamed bodies** (the GIE default; `protocol_config.request_body_mode =
//! FULL_DUPLEX_STREAMED`, or no `protocol_config`): request headers are stored and not answered;
//! body chunks are buffered until `end_of_stream` (Envoy 1.40 sends it as its own empty chunk);
//! then one headers response (`clear_route_cache`, the destination in
//! `x-gateway-destination-endpoint` and in `envoy.lb` dynamic metadata, `Content-Length`,
//! headers the scheduler adds such as `x-prefiller-host-port`, `traceparent`) and the body in
//! `streamed_response` chunks of at most 62,000 bytes, `end_of_stream` on the last.
//!
//! **Buffered bodies** (`BUFFERED`): request headers are answered at once (Envoy waits for that
//! before sending the buffered body); the decision then goes in the body response's header
//! mutation.
//!
//! A request without a body (`end_of_stream` on its headers, e.g. GET) is routed from its
//! headers alone. The response path is passed through: headers answered, body chunks echoed
//! one by one as they arrive (full duplex), trailers answered. Errors become an
//! `ImmediateResponse` with the status from [`PickError::status`] and, where GIE defines one, an
//! `x-llm-d-request-dropped-reason` header. Chunks arriving after the request's end are ignored.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use envoy_types::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption};
use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::processing_mode::BodySendMode;
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_server::ExternalProcessor;
use envoy_types::pb::envoy::service::ext_proc::v3::{
    BodyMutation, BodyResponse, CommonResponse, HeaderMutation, HeadersResponse, HttpHeaders,
    ImmediateResponse, ProcessingRequest, ProcessingResponse, StreamedBodyResponse,
    TrailersResponse, body_mutation, processing_request, processing_response,
};
use envoy_types::pb::envoy::r#type::v3::HttpStatus;
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
use futures::Stream;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

use crate::request::{self, InferenceRequest};

/// Header naming the chosen endpoint(s): `ip:port`, or a comma-separated fallback list.
pub const DESTINATION_HEADER: &str = "x-gateway-destination-endpoint";
/// Header the data plane reports the served endpoint in.
pub const DESTINATION_SERVED_HEADER: &str = "x-gateway-destination-endpoint-served";
/// Why a request was dropped (GIE names).
pub const DROPPED_REASON_HEADER: &str = "x-llm-d-request-dropped-reason";

/// Set on every error answer: the error's code and message (printable ASCII, at most 256
/// bytes), so a client or access log sees why without parsing the body.
pub const ERROR_REASON_HEADER: &str = "x-llm-d-error-reason";
/// The prefill pod for the P/D sidecar.
pub const PREFILLER_HEADER: &str = "x-prefiller-host-port";
/// Dynamic-metadata namespace of the destination.
pub const ENVOY_LB_NAMESPACE: &str = "envoy.lb";
/// Metadata namespace of the subset hint.
pub const SUBSET_HINT_NAMESPACE: &str = "envoy.lb.subset_hint";
/// Key of the subset hint (a list of `ip:port`).
pub const SUBSET_HINT_KEY: &str = "x-gateway-destination-endpoint-subset";
/// Largest body chunk sent back to Envoy.
pub const BODY_CHUNK_LIMIT: usize = 62_000;

/// What the scheduler decided for one request.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Decision {
    /// Endpoints in preference order (`host:port`; IPv6 hosts in brackets). Not empty.
    pub endpoints: Vec<String>,
    /// Headers to add to the upstream request (e.g. `x-prefiller-host-port`).
    pub headers: Vec<(String, String)>,
    /// A rewritten body, when the scheduler changed it.
    pub body: Option<Vec<u8>>,
}

/// Why no decision could be made; mapped to the client's status in one place.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PickError {
    /// The request is malformed (400).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The model is not served here (404).
    #[error("model {0:?} is not served by this pool")]
    UnknownModel(String),
    /// No candidate endpoint (503, `rejected-no-endpoints`).
    #[error("no ready endpoints{}", .0.as_deref().map(|r| format!(": {r}")).unwrap_or_default())]
    NoEndpoints(Option<String>),
    /// Every candidate is saturated and shedding is on (429, `rejected-saturated`).
    #[error("all endpoints are saturated")]
    Saturated,
    /// Body over the limit (413).
    #[error("request body exceeds {0} bytes")]
    TooLarge(usize),
    /// Anything else (500).
    #[error("internal error: {0}")]
    Internal(String),
}

impl PickError {
    /// HTTP status for the client.
    pub fn status(&self) -> u16 {
        match self {
            PickError::BadRequest(_) => 400,
            PickError::UnknownModel(_) => 404,
            PickError::TooLarge(_) => 413,
            PickError::Saturated => 429,
            PickError::Internal(_) => 500,
            PickError::NoEndpoints(_) => 503,
        }
    }

    /// GIE's dropped-reason value, where one applies.
    pub fn dropped_reason(&self) -> Option<&'static str> {
        match self {
            PickError::NoEndpoints(_) => Some("rejected-no-endpoints"),
            PickError::Saturated => Some("rejected-saturated"),
            _ => None,
        }
    }

    /// The OpenAI-style error body (`{"error": {"message", "type", "param", "code"}}`) the
    /// client receives.
    pub fn openai_body(&self) -> Vec<u8> {
        let kind = match self.status() {
            400 => "BadRequestError",
            404 => "NotFoundError",
            413 => "RequestTooLargeError",
            429 => "RateLimitError",
            503 => "ServiceUnavailableError",
            _ => "InternalServerError",
        };
        serde_json::json!({"error": {
            "message": format!("inference error: {self}"),
            "type": kind,
            "param": null,
            "code": self.status(),
        }})
        .to_string()
        .into_bytes()
    }

    /// A short machine-readable code (the ImmediateResponse `details`, a metric label).
    pub fn code(&self) -> &'static str {
        match self {
            PickError::BadRequest(_) => "bad_request",
            PickError::UnknownModel(_) => "unknown_model",
            PickError::TooLarge(_) => "too_large",
            PickError::Saturated => "saturated",
            PickError::Internal(_) => "internal",
            PickError::NoEndpoints(_) => "no_endpoints",
        }
    }
}

/// Everything the picker sees about a request.
#[derive(Debug)]
pub struct PickContext<'a> {
    /// The parsed body (`None` for a request without body).
    pub request: Option<&'a InferenceRequest>,
    /// Request headers, names lower-cased.
    pub headers: &'a [(String, String)],
    /// The data plane's subset hint (`ip:port` list), when given.
    pub subset: Option<Vec<String>>,
    /// The span of this request's handling (parent for scheduler spans).
    pub span: &'a tracing::Span,
}

/// The scheduler behind the protocol.
pub trait Picker: Send + Sync + 'static {
    /// Chooses the endpoints for a request.
    fn pick(&self, ctx: &PickContext<'_>) -> Result<Decision, PickError>;
}

/// Server settings.
#[derive(Debug, Clone)]
pub struct ExtProcConfig {
    /// Largest request body accepted, bytes.
    pub max_body_bytes: usize,
}

impl Default for ExtProcConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 32 << 20,
        }
    }
}

/// The `ExternalProcessor` service.
pub struct ExtProcService<P> {
    picker: Arc<P>,
    config: ExtProcConfig,
}

impl<P> std::fmt::Debug for ExtProcService<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExtProcService")
            .field("config", &self.config)
            .finish()
    }
}

impl<P: Picker> ExtProcService<P> {
    /// A service deciding with `picker`.
    pub fn new(picker: Arc<P>, config: ExtProcConfig) -> Self {
        Self { picker, config }
    }
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<ProcessingResponse, Status>> + Send>>;

#[tonic::async_trait]
impl<P: Picker> ExternalProcessor for ExtProcService<P> {
    type ProcessStream = ResponseStream;

    async fn process(
        &self,
        request: Request<Streaming<ProcessingRequest>>,
    ) -> Result<Response<Self::ProcessStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel::<Result<ProcessingResponse, Status>>(16);
        let picker = self.picker.clone();
        let config = self.config.clone();
        tokio::spawn(async move {
            let mut state = StreamState::default();
            loop {
                let msg = match inbound.message().await {
                    Ok(Some(m)) => m,
                    Ok(None) => break,
                    Err(status) => {
                        tracing::debug!(%status, "ext_proc stream ended by the data plane");
                        break;
                    }
                };
                let replies = state.handle(msg, picker.as_ref(), &config);
                for reply in replies {
                    if tx.send(Ok(reply)).await.is_err() {
                        return;
                    }
                }
                if state.closed {
                    break;
                }
            }
        });
        let stream =
            futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|r| (r, rx)) });
        Ok(Response::new(Box::pin(stream)))
    }
}

/// Per-stream state (one HTTP request).
#[derive(Default)]
struct StreamState {
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// Request phase answered (decision or error sent).
    request_done: bool,
    /// The request ended with its headers (GET, ...): no body answers may follow, or Envoy
    /// rejects them as spurious and answers 500.
    headers_only: bool,
    /// Buffered (not full-duplex) request bodies.
    buffered: bool,
    /// Full-duplex response bodies (echo chunks as streamed responses).
    response_full_duplex: bool,
    /// Subset hint from metadata.
    subset: Option<Vec<String>>,
    /// An ImmediateResponse went out: nothing more to say.
    closed: bool,
    started: Option<Instant>,
    /// The routed request's model, once a decision went out (for the duration metric).
    routed_model: Option<String>,
    /// The last bytes of the response body (where `usage` is, streamed or not).
    response_tail: Vec<u8>,
}

/// How much of the response's end is kept to find `usage` in.
const RESPONSE_TAIL_BYTES: usize = 16 << 10;

/// Token counts of an OpenAI `usage` object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// `prompt_tokens`.
    pub prompt: u64,
    /// `completion_tokens`.
    pub completion: u64,
    /// `prompt_tokens_details.cached_tokens`, when reported.
    pub cached: Option<u64>,
}

/// The last `usage` object in the end of a response body: a JSON response or an SSE stream
/// (where it is the last event before `[DONE]` with `stream_options.include_usage`).
pub fn find_usage(tail: &[u8]) -> Option<Usage> {
    const KEY: &[u8] = b"\"usage\"";
    let mut end = tail.len();
    while let Some(at) = tail[..end].windows(KEY.len()).rposition(|w| w == KEY) {
        end = at;
        let rest = &tail[at + KEY.len()..];
        let start = rest
            .iter()
            .position(|b| !matches!(b, b' ' | b'\t' | b'\r' | b'\n' | b':'))?;
        let mut values =
            serde_json::Deserializer::from_slice(&rest[start..]).into_iter::<serde_json::Value>();
        if let Some(Ok(v)) = values.next()
            && let (Some(prompt), Some(completion)) = (
                v.get("prompt_tokens").and_then(serde_json::Value::as_u64),
                v.get("completion_tokens")
                    .and_then(serde_json::Value::as_u64),
            )
        {
            return Some(Usage {
                prompt,
                completion,
                cached: v
                    .get("prompt_tokens_details")
                    .and_then(|d| d.get("cached_tokens"))
                    .and_then(serde_json::Value::as_u64),
            });
        }
    }
    None
}

impl StreamState {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn handle(
        &mut self,
        msg: ProcessingRequest,
        picker: &dyn PickerDyn,
        config: &ExtProcConfig,
    ) -> Vec<ProcessingResponse> {
        if let Some(pc) = &msg.protocol_config {
            self.buffered = pc.request_body_mode != BodySendMode::FullDuplexStreamed as i32;
            self.response_full_duplex =
                pc.response_body_mode == BodySendMode::FullDuplexStreamed as i32;
        } else if self.started.is_none() {
            // No protocol_config (older Envoy, our gateway): GIE's full-duplex configuration.
            self.response_full_duplex = true;
        }
        if let Some(md) = &msg.metadata_context
            && let Some(hint) = md.filter_metadata.get(SUBSET_HINT_NAMESPACE)
        {
            self.subset = hint.fields.get(SUBSET_HINT_KEY).map(|v| match &v.kind {
                Some(Kind::ListValue(l)) => l
                    .values
                    .iter()
                    .filter_map(|v| match &v.kind {
                        Some(Kind::StringValue(s)) => Some(s.clone()),
                        _ => None,
                    })
                    .collect(),
                _ => Vec::new(),
            });
        }
        self.started.get_or_insert_with(Instant::now);
        match msg.request {
            Some(processing_request::Request::RequestHeaders(h)) => {
                self.on_request_headers(h, picker)
            }
            Some(processing_request::Request::RequestBody(b)) => {
                if self.request_done {
                    // Duplicate or late chunks after the end of the request: nothing to do.
                    return Vec::new();
                }
                if self.body.len() + b.body.len() > config.max_body_bytes {
                    return self.immediate(&PickError::TooLarge(config.max_body_bytes));
                }
                self.body.extend_from_slice(&b.body);
                if b.end_of_stream {
                    self.decide(picker)
                } else {
                    Vec::new()
                }
            }
            Some(processing_request::Request::RequestTrailers(_)) => {
                vec![reply(processing_response::Response::RequestTrailers(
                    TrailersResponse::default(),
                ))]
            }
            Some(processing_request::Request::ResponseHeaders(_)) => {
                vec![reply(processing_response::Response::ResponseHeaders(
                    HeadersResponse::default(),
                ))]
            }
            Some(processing_request::Request::ResponseBody(b)) => {
                if self.routed_model.is_some() {
                    self.response_tail.extend_from_slice(&b.body);
                    // Trim only once it is twice the window: amortized, not a memmove per chunk.
                    if self.response_tail.len() > 2 * RESPONSE_TAIL_BYTES {
                        let cut = self.response_tail.len() - RESPONSE_TAIL_BYTES;
                        self.response_tail.drain(..cut);
                    }
                }
                if b.end_of_stream {
                    self.record_usage();
                    self.record_duration();
                }
                let common = if self.response_full_duplex {
                    Some(CommonResponse {
                        body_mutation: Some(BodyMutation {
                            mutation: Some(body_mutation::Mutation::StreamedResponse(
                                StreamedBodyResponse {
                                    body: b.body,
                                    end_of_stream: b.end_of_stream,
                                    ..Default::default()
                                },
                            )),
                        }),
                        ..Default::default()
                    })
                } else {
                    None
                };
                vec![reply(processing_response::Response::ResponseBody(
                    BodyResponse { response: common },
                ))]
            }
            Some(processing_request::Request::ResponseTrailers(_)) => {
                self.record_usage();
                self.record_duration();
                vec![reply(processing_response::Response::ResponseTrailers(
                    TrailersResponse::default(),
                ))]
            }
            None => Vec::new(),
        }
    }

    /// GIE's token histograms from the response's `usage`, when it has one.
    fn record_usage(&mut self) {
        let Some(model) = self.routed_model.clone() else {
            return;
        };
        let Some(u) = find_usage(&self.response_tail) else {
            return;
        };
        use llmd_telemetry::names::epp;
        let labels = [("model_name", model.clone()), ("target_model_name", model)];
        metrics::histogram!(epp::INPUT_TOKENS.name, &labels).record(u.prompt as f64);
        metrics::histogram!(epp::OUTPUT_TOKENS.name, &labels).record(u.completion as f64);
        if let Some(c) = u.cached {
            metrics::histogram!(epp::PROMPT_CACHED_TOKENS.name, &labels).record(c as f64);
        }
        self.response_tail = Vec::new();
    }

    /// GIE's request duration: first message to the end of the response, once per request.
    fn record_duration(&mut self) {
        if let (Some(model), Some(started)) = (self.routed_model.take(), self.started) {
            metrics::histogram!(
                llmd_telemetry::names::epp::REQUEST_DURATION.name,
                "model_name" => model.clone(),
                "target_model_name" => model
            )
            .record(started.elapsed().as_secs_f64());
        }
    }

    fn on_request_headers(
        &mut self,
        h: HttpHeaders,
        picker: &dyn PickerDyn,
    ) -> Vec<ProcessingResponse> {
        if let Some(map) = h.headers {
            for hv in map.headers {
                let value = if hv.raw_value.is_empty() {
                    hv.value
                } else {
                    String::from_utf8_lossy(&hv.raw_value).into_owned()
                };
                self.headers.push((hv.key.to_ascii_lowercase(), value));
            }
        }
        if !self.headers.iter().any(|(k, _)| k == "x-request-id") {
            self.headers
                .push(("x-request-id".into(), uuid::Uuid::new_v4().to_string()));
        }
        if h.end_of_stream {
            // No body (GET, ...): route from the headers alone.
            self.headers_only = true;
            return self.decide(picker);
        }
        if self.buffered {
            // Envoy waits for this before sending a buffered body.
            return vec![reply(processing_response::Response::RequestHeaders(
                HeadersResponse::default(),
            ))];
        }
        Vec::new()
    }

    fn decide(&mut self, picker: &dyn PickerDyn) -> Vec<ProcessingResponse> {
        self.request_done = true;
        let span = tracing::info_span!(
            "llm_d.epp.request",
            otel.kind = "server",
            path = tracing::field::Empty
        );
        llmd_telemetry::propagation::set_parent(
            &span,
            llmd_telemetry::propagation::extract_from_pairs(
                self.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            ),
        );
        let _entered = span.enter();
        let path = self.header(":path").unwrap_or("/").to_owned();
        span.record("path", path.as_str());
        let parsed = if self.body.is_empty() {
            None
        } else {
            match request::parse(&path, &self.body) {
                Ok(r) => Some(r),
                Err(e) => return self.immediate(&PickError::BadRequest(e.to_string())),
            }
        };
        let ctx = PickContext {
            request: parsed.as_ref(),
            headers: &self.headers,
            subset: self.subset.clone(),
            span: &span,
        };
        let decision = match picker.pick_dyn(&ctx) {
            Ok(d) if !d.endpoints.is_empty() => d,
            Ok(_) => return self.immediate(&PickError::NoEndpoints(None)),
            Err(e) => return self.immediate(&e),
        };
        let body = decision
            .body
            .clone()
            .unwrap_or_else(|| std::mem::take(&mut self.body));
        self.routed_model = Some(parsed.as_ref().map(|r| r.model.clone()).unwrap_or_default());
        let destination = decision.endpoints.join(",");
        let mut set = vec![header(DESTINATION_HEADER, &destination)];
        if !body.is_empty() {
            set.push(header("content-length", &body.len().to_string()));
        }
        for (k, v) in &decision.headers {
            set.push(header(k, v));
        }
        let mut trace_headers = Vec::new();
        llmd_telemetry::propagation::inject_span_into_pairs(&span, &mut trace_headers);
        for (k, v) in &trace_headers {
            set.push(header(k, v));
        }
        if let Some(id) = self.header("x-request-id") {
            set.push(header("x-request-id", id));
        }
        let metadata = lb_metadata(&destination);
        let mutation = HeaderMutation {
            set_headers: set,
            remove_headers: Vec::new(),
        };
        if self.buffered {
            let common = CommonResponse {
                header_mutation: Some(mutation),
                clear_route_cache: true,
                body_mutation: decision.body.map(|b| BodyMutation {
                    mutation: Some(body_mutation::Mutation::Body(b)),
                }),
                ..Default::default()
            };
            let mut r = reply(processing_response::Response::RequestBody(BodyResponse {
                response: Some(common),
            }));
            r.dynamic_metadata = Some(metadata);
            return vec![r];
        }
        let headers = CommonResponse {
            header_mutation: Some(mutation),
            clear_route_cache: true,
            ..Default::default()
        };
        let mut out = vec![reply(processing_response::Response::RequestHeaders(
            HeadersResponse {
                response: Some(headers),
            },
        ))];
        out[0].dynamic_metadata = Some(metadata);
        if self.headers_only {
            return out;
        }
        out.extend(body_chunks(&body).into_iter().map(|(chunk, eos)| {
            reply(processing_response::Response::RequestBody(BodyResponse {
                response: Some(CommonResponse {
                    body_mutation: Some(BodyMutation {
                        mutation: Some(body_mutation::Mutation::StreamedResponse(
                            StreamedBodyResponse {
                                body: chunk.to_vec(),
                                end_of_stream: eos,
                                ..Default::default()
                            },
                        )),
                    }),
                    ..Default::default()
                }),
            }))
        }));
        out
    }

    fn immediate(&mut self, error: &PickError) -> Vec<ProcessingResponse> {
        self.request_done = true;
        self.closed = true;
        let reason: String = format!("{}: {error}", error.code())
            .chars()
            .map(|c| {
                if c.is_ascii_graphic() || c == ' ' {
                    c
                } else {
                    '?'
                }
            })
            .take(256)
            .collect();
        let mut set = vec![
            header("content-type", "application/json"),
            header(ERROR_REASON_HEADER, &reason),
        ];
        if let Some(reason) = error.dropped_reason() {
            set.push(header(DROPPED_REASON_HEADER, reason));
        }
        tracing::debug!(status = error.status(), %error, "request answered by the EPP");
        vec![reply(processing_response::Response::ImmediateResponse(
            ImmediateResponse {
                status: Some(HttpStatus {
                    code: i32::from(error.status()),
                }),
                headers: Some(HeaderMutation {
                    set_headers: set,
                    remove_headers: Vec::new(),
                }),
                body: error.openai_body(),
                grpc_status: None,
                details: error.code().to_owned(),
            },
        ))]
    }
}

/// Object-safe view of [`Picker`] (the state machine is not generic).
trait PickerDyn {
    fn pick_dyn(&self, ctx: &PickContext<'_>) -> Result<Decision, PickError>;
}

impl<P: Picker> PickerDyn for P {
    fn pick_dyn(&self, ctx: &PickContext<'_>) -> Result<Decision, PickError> {
        self.pick(ctx)
    }
}

fn reply(response: processing_response::Response) -> ProcessingResponse {
    ProcessingResponse {
        response: Some(response),
        ..Default::default()
    }
}

fn header(key: &str, value: &str) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.to_owned(),
            value: String::new(),
            raw_value: value.as_bytes().to_vec(),
        }),
        append_action: 2, // OVERWRITE_IF_EXISTS_OR_ADD
        ..Default::default()
    }
}

fn lb_metadata(destination: &str) -> Struct {
    let inner = Struct {
        fields: HashMap::from([(
            DESTINATION_HEADER.to_owned(),
            Value {
                kind: Some(Kind::StringValue(destination.to_owned())),
            },
        )]),
    };
    Struct {
        fields: HashMap::from([(
            ENVOY_LB_NAMESPACE.to_owned(),
            Value {
                kind: Some(Kind::StructValue(inner)),
            },
        )]),
    }
}

/// The body in chunks of at most [`BODY_CHUNK_LIMIT`] bytes, `true` on the last; an empty
/// body is one empty chunk.
fn body_chunks(body: &[u8]) -> Vec<(&[u8], bool)> {
    if body.is_empty() {
        return vec![(body, true)];
    }
    let n = body.len().div_ceil(BODY_CHUNK_LIMIT);
    body.chunks(BODY_CHUNK_LIMIT)
        .enumerate()
        .map(|(i, c)| (c, i + 1 == n))
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn usage_from_json_and_sse_tails() {
        use super::{Usage, find_usage};
        let json = br#"{"id":"cmpl-1","choices":[{"text":"usage"}],"usage":{"prompt_tokens":12,"total_tokens":15,"completion_tokens":3,"prompt_tokens_details":{"cached_tokens":0}}}"#;
        assert_eq!(
            find_usage(json),
            Some(Usage {
                prompt: 12,
                completion: 3,
                cached: Some(0)
            })
        );
        let sse = b"data: {\"choices\":[{\"text\":\"a\"}],\"usage\":null}\n\ndata: {\"choices\":[],\"usage\": {\"prompt_tokens\":700,\"completion_tokens\":4,\"total_tokens\":704,\"prompt_tokens_details\":{\"cached_tokens\":640}}}\n\ndata: [DONE]\n\n";
        assert_eq!(
            find_usage(sse),
            Some(Usage {
                prompt: 700,
                completion: 4,
                cached: Some(640)
            })
        );
        // Only `usage: null` chunks, a cut-off object, or nothing: no usage.
        assert_eq!(
            find_usage(b"data: {\"usage\":null}\n\ndata: [DONE]\n\n"),
            None
        );
        assert_eq!(find_usage(br#"{"usage":{"prompt_tokens":1,"#), None);
        assert_eq!(find_usage(b""), None);
        // Without details.
        assert_eq!(
            find_usage(br#"{"usage":{"prompt_tokens":1,"completion_tokens":2}}"#),
            Some(Usage {
                prompt: 1,
                completion: 2,
                cached: None
            })
        );
    }

    use super::*;

    #[test]
    fn chunking() {
        assert_eq!(body_chunks(b""), vec![(&b""[..], true)]);
        let big = vec![7u8; BODY_CHUNK_LIMIT * 2 + 5];
        let chunks = body_chunks(&big);
        assert_eq!(
            chunks
                .iter()
                .map(|(c, e)| (c.len(), *e))
                .collect::<Vec<_>>(),
            vec![(62_000, false), (62_000, false), (5, true)]
        );
    }

    #[test]
    fn error_statuses() {
        assert_eq!(PickError::NoEndpoints(None).status(), 503);
        assert_eq!(
            PickError::NoEndpoints(None).dropped_reason(),
            Some("rejected-no-endpoints")
        );
        assert_eq!(PickError::Saturated.status(), 429);
        assert_eq!(PickError::BadRequest("x".into()).status(), 400);
        assert_eq!(PickError::TooLarge(1).status(), 413);
    }
}
