//! One ext_proc stream (one HTTP request): the request phase (headers, body, decision) and the
//! response phase (passed through, measured).

use std::time::{Duration, Instant};

use llmd_telemetry::names::{self, spans};
use llmd_wire::pb::envoy::extensions::filters::http::ext_proc::v3::processing_mode::BodySendMode;
use llmd_wire::pb::envoy::service::ext_proc::v3::{
    BodyMutation, BodyResponse, CommonResponse, HeaderMutation, HeadersResponse, HttpHeaders,
    ProcessingRequest, ProcessingResponse, TrailersResponse, body_mutation, processing_request,
    processing_response,
};
use llmd_wire::pb::google::protobuf::value::Kind;

use super::request_metrics::RequestMetrics;
use super::response::{self, header, lb_metadata, reply};
use super::usage::find_usage;
use super::{
    DESTINATION_HEADER, DESTINATION_SERVED_HEADER, Deps, InFlightGuard, OWNED_REQUEST_HEADERS,
    SUBSET_HINT_KEY, SUBSET_HINT_NAMESPACE,
};
use crate::inflight::Release;
use crate::labels::model_label;
use crate::objectives::RequestClass;
use crate::request;
use crate::scheduling::PickError;

/// How much of the response's end is kept to find `usage` in.
const RESPONSE_TAIL_BYTES: usize = 16 << 10;

/// How long an endpoint the data plane could not reach is left out of routing.
const UNREACHABLE_PENALTY: Duration = Duration::from_secs(5);

/// Per-stream state.
pub(super) struct StreamState {
    /// The gRPC call's trace context (Envoy's ext_proc span), when it has one.
    grpc_trace: llmd_telemetry::propagation::Context,
    headers: Vec<(String, String)>,
    /// The EPP made up the request's `x-request-id` (the request had none): it is set on the
    /// upstream request.
    request_id_generated: bool,
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
    /// The routed request's model label, once a decision went out (for the duration metric).
    routed_model: Option<String>,
    /// The endpoints the decision named, in order.
    routed_to: Vec<String>,
    /// The last bytes of the response body (where `usage` is, streamed or not).
    response_tail: Vec<u8>,
    /// The request's priority and fairness id (once its body is parsed).
    class: RequestClass,
    /// GIE's and llm-d's request metrics.
    metrics: RequestMetrics,
    /// The decision's in-flight count, released as the response goes by (and all of it when
    /// the stream ends for any reason).
    inflight: Option<InFlightGuard>,
    /// The response is a server-sent event stream.
    response_streamed: bool,
    /// Headers the decision sets on the response (e.g. `x-session-token`).
    response_headers: Vec<(String, String)>,
}

impl StreamState {
    pub(super) fn new(grpc_trace: llmd_telemetry::propagation::Context) -> Self {
        Self {
            grpc_trace,
            headers: Vec::new(),
            request_id_generated: false,
            body: Vec::new(),
            request_done: false,
            headers_only: false,
            buffered: false,
            response_full_duplex: false,
            subset: None,
            closed: false,
            started: None,
            routed_model: None,
            routed_to: Vec::new(),
            response_tail: Vec::new(),
            class: RequestClass::default(),
            metrics: RequestMetrics::new(),
            inflight: None,
            response_streamed: false,
            response_headers: Vec::new(),
        }
    }

    pub(super) fn closed(&self) -> bool {
        self.closed
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub(super) async fn handle(
        &mut self,
        msg: ProcessingRequest,
        deps: &Deps,
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
                self.on_request_headers(h, deps).await
            }
            Some(processing_request::Request::RequestBody(b)) => {
                if self.request_done {
                    // Duplicate or late chunks after the end of the request: nothing to do.
                    return Vec::new();
                }
                let limit = deps.config.max_body_bytes;
                if self.body.len() + b.body.len() > limit {
                    return self.immediate(&PickError::TooLarge(format!(
                        "request body exceeds {limit} bytes"
                    )));
                }
                if self.body.is_empty() {
                    self.body = b.body; // a buffered body is one message: no copy
                } else {
                    self.body.extend_from_slice(&b.body);
                }
                if b.end_of_stream {
                    self.decide(deps).await
                } else {
                    Vec::new()
                }
            }
            Some(processing_request::Request::RequestTrailers(_)) => {
                vec![reply(processing_response::Response::RequestTrailers(
                    TrailersResponse::default(),
                ))]
            }
            Some(processing_request::Request::ResponseHeaders(h)) => {
                self.on_response_headers(&h, deps);
                let find = |name: &str| {
                    h.headers.as_ref().and_then(|m| {
                        m.headers
                            .iter()
                            .find(|hv| hv.key.eq_ignore_ascii_case(name))
                            .map(|hv| {
                                if hv.raw_value.is_empty() {
                                    hv.value.clone()
                                } else {
                                    String::from_utf8_lossy(&hv.raw_value).into_owned()
                                }
                            })
                    })
                };
                let content_type = find("content-type");
                self.response_streamed = content_type
                    .as_deref()
                    .is_some_and(|c| c.starts_with("text/event-stream"));
                if let Some(g) = &self.inflight {
                    // The decode pod answers once prefill is done.
                    g.release(Release::Prefill);
                }
                self.metrics
                    .response_headers(find(":status").as_deref(), content_type.as_deref());
                vec![reply(processing_response::Response::ResponseHeaders(
                    response::set_response_headers(&self.response_headers),
                ))]
            }
            Some(processing_request::Request::ResponseBody(b)) => {
                if self.response_streamed
                    && !b.body.is_empty()
                    && let Some(g) = &self.inflight
                {
                    // The first streamed token is out: the prompt is computed.
                    g.release(Release::Tokens);
                }
                self.metrics.chunk(b.body.len());
                if self.routed_model.is_some() {
                    self.response_tail.extend_from_slice(&b.body);
                    // Trim only once it is twice the window: amortized, not a memmove per chunk.
                    if self.response_tail.len() > 2 * RESPONSE_TAIL_BYTES {
                        let cut = self.response_tail.len() - RESPONSE_TAIL_BYTES;
                        self.response_tail.drain(..cut);
                    }
                }
                if b.end_of_stream {
                    self.finish();
                }
                let common = self
                    .response_full_duplex
                    .then(|| response::streamed(b.body, b.end_of_stream));
                vec![reply(processing_response::Response::ResponseBody(
                    BodyResponse { response: common },
                ))]
            }
            Some(processing_request::Request::ResponseTrailers(_)) => {
                self.finish();
                vec![reply(processing_response::Response::ResponseTrailers(
                    TrailersResponse::default(),
                ))]
            }
            None => Vec::new(),
        }
    }

    /// The data plane says which endpoint served the request: when it is not the first one the
    /// EPP named, the first could not be reached and is left out of routing for a while.
    fn on_response_headers(&self, h: &HttpHeaders, deps: &Deps) {
        let Some(first) = self.routed_to.first() else {
            return;
        };
        let served = h.headers.as_ref().and_then(|m| {
            m.headers
                .iter()
                .find(|hv| hv.key.eq_ignore_ascii_case(DESTINATION_SERVED_HEADER))
                .map(|hv| {
                    if hv.raw_value.is_empty() {
                        hv.value.clone()
                    } else {
                        String::from_utf8_lossy(&hv.raw_value).into_owned()
                    }
                })
        });
        if let Some(served) = served
            && !served.is_empty()
            && served != *first
        {
            tracing::warn!(
                endpoint = first,
                served,
                "the data plane could not reach the chosen endpoint"
            );
            deps.picker.report_unreachable(first, UNREACHABLE_PENALTY);
        }
    }

    /// The response ended: GIE's and llm-d's request metrics, with the response's `usage`.
    fn finish(&mut self) {
        self.inflight = None;
        if self.routed_model.take().is_none() {
            return;
        }
        let usage = find_usage(&self.response_tail);
        self.response_tail = Vec::new();
        self.metrics.finished(usage);
    }

    async fn on_request_headers(&mut self, h: HttpHeaders, deps: &Deps) -> Vec<ProcessingResponse> {
        if let Some(map) = h.headers {
            self.headers.reserve(map.headers.len() + 1);
            for hv in map.headers {
                let value = if hv.raw_value.is_empty() {
                    hv.value
                } else {
                    String::from_utf8(hv.raw_value)
                        .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
                };
                let mut key = hv.key;
                key.make_ascii_lowercase();
                self.headers.push((key, value));
            }
        }
        if !self.headers.iter().any(|(k, _)| k == "x-request-id") {
            self.headers
                .push(("x-request-id".into(), uuid::Uuid::new_v4().to_string()));
            self.request_id_generated = true;
        }
        if h.end_of_stream {
            // No body (GET, ...): route from the headers alone.
            self.headers_only = true;
            return self.decide(deps).await;
        }
        if self.buffered {
            // Envoy waits for this before sending a buffered body.
            return vec![reply(processing_response::Response::RequestHeaders(
                HeadersResponse::default(),
            ))];
        }
        Vec::new()
    }

    /// The EPP's span for this request: a child of the data plane's ext_proc call, else of the
    /// request's own trace context.
    fn request_span(&self, deps: &Deps, path: &str) -> tracing::Span {
        let span = tracing::info_span!(
            spans::EPP_REQUEST,
            otel.kind = "server",
            service.name = tracing::field::Empty,
            path,
            x_request_id = self.header("x-request-id").unwrap_or(""),
        );
        if span.is_disabled() {
            // Nothing records it (no tracer, logs at info): no parent to look for.
            return span;
        }
        if let Some(name) = &deps.config.service_name {
            span.record(names::services::SPAN_ATTR, name.as_str());
        }
        let parent = if llmd_telemetry::propagation::has_span(&self.grpc_trace) {
            self.grpc_trace.clone()
        } else {
            llmd_telemetry::propagation::extract_from_pairs(
                self.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            )
        };
        llmd_telemetry::propagation::set_parent(&span, parent);
        span
    }

    async fn decide(&mut self, deps: &Deps) -> Vec<ProcessingResponse> {
        self.request_done = true;
        let path = self.header(":path").unwrap_or("/").to_owned();
        let span = self.request_span(deps, &path);
        let parsed = if self.body.is_empty() {
            None
        } else {
            match request::parse(&path, &self.body) {
                Ok(r) => Some(r),
                Err(e) => return self.immediate(&PickError::BadRequest(e.to_string())),
            }
        };
        self.class = deps
            .picker
            .classify(&self.headers, parsed.as_ref().map(|r| r.model.as_str()));
        // Flow control (`flowControl` gate): wait for room in the pool, or be refused.
        let mut permit = None;
        if let (Some(fc), Some(req)) = (deps.picker.flow_control(), parsed.as_ref()) {
            let request = crate::flow_control::Request {
                class: &self.class,
                bytes: self.body.len() as u64,
                model: &req.model,
            };
            // A client that leaves drops this future: the wait leaves its queue.
            match fc.admit(request).await {
                Ok(p) => permit = Some(p),
                Err(e) => return self.immediate(&e),
            }
        }
        let headers = std::mem::take(&mut self.headers);
        let picked = deps.pick(parsed, headers, self.subset.clone(), span).await;
        // The decision is counted in flight now (or failed): the pool's capacity sees it.
        drop(permit);
        self.headers = picked.headers;
        let parsed = picked.request;
        let decision = match picked.result {
            Ok(d) if !d.endpoints.is_empty() => d,
            Ok(_) => return self.immediate(&PickError::NoEndpoints(None)),
            Err(e) => return self.immediate(&e),
        };
        self.inflight = picked.inflight;
        let body = decision
            .body
            .clone()
            .unwrap_or_else(|| std::mem::take(&mut self.body));
        let model = parsed.as_ref().map_or("", |r| r.model.as_str());
        self.metrics.routed(model, &self.class, body.len());
        self.routed_model = Some(model_label(model));
        self.routed_to = decision.endpoints.clone();
        self.response_headers = decision.response_headers.clone();
        let destination = decision.endpoints.join(",");
        // Only what changes: every header set or removed is work for the data plane on each
        // request. A buffered body the scheduler left alone keeps its own `Content-Length`; the
        // client's (or the data plane's) `x-request-id` stands.
        let mut set = vec![header(DESTINATION_HEADER, &destination)];
        if !body.is_empty() && (!self.buffered || decision.body.is_some()) {
            set.push(header("content-length", &body.len().to_string()));
        }
        for (k, v) in &decision.headers {
            set.push(header(k, v));
        }
        if self.request_id_generated
            && let Some(id) = self.header("x-request-id")
        {
            set.push(header("x-request-id", id));
        }
        // Headers the EPP owns: a client's own value never reaches the upstream.
        let remove_headers: Vec<String> = OWNED_REQUEST_HEADERS
            .iter()
            .filter(|h| {
                self.header(h).is_some()
                    && !decision
                        .headers
                        .iter()
                        .any(|(k, _)| k.eq_ignore_ascii_case(h))
            })
            .map(|h| (*h).to_owned())
            .collect();
        let metadata = lb_metadata(&destination);
        let mutation = HeaderMutation {
            set_headers: set,
            remove_headers,
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
        out.extend(
            response::body_chunks(&body)
                .into_iter()
                .map(|(chunk, eos)| response::streamed_request_body(chunk, eos)),
        );
        out
    }

    /// The one place an error becomes the client's answer: counted by code, logged.
    fn immediate(&mut self, error: &PickError) -> Vec<ProcessingResponse> {
        self.request_done = true;
        self.closed = true;
        let model = request::model_of(&self.body).unwrap_or_default();
        self.metrics.refused(&model, &self.class, error);
        let request_id = self.header("x-request-id").unwrap_or("");
        if error.status() >= 500 {
            tracing::warn!(status = error.status(), request_id, %error, "request answered by the EPP");
        } else {
            tracing::debug!(status = error.status(), request_id, %error, "request answered by the EPP");
        }
        vec![response::immediate(error)]
    }
}
