//! The decode leg and the relay of its answer.
//!
//! [`send`] asks the local engine for the completion with the prefill's `kv_transfer_params`
//! (as a stream even when the client did not ask for one, where the API can be assembled: see
//! [`crate::assemble`]); [`first_token`] reads the stream up to its first generated token, the
//! moment true TTFT is measured at; then one of three relays answers the client:
//! [`relay_stream`] (the client streams: events relayed line by line as they arrive),
//! [`assemble_rest`] (the client did not: the rest of the stream assembled into one JSON answer),
//! or [`relay_json`] (an API without an assembler, or an engine that answered JSON).

use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::Response;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use llmd_telemetry::names::spans;
use serde_json::{Map, Value};

use crate::assemble::{Api, Assembler};
use crate::context::Exchange;
use crate::error::{ProxyError, Relayed, chain};
use crate::proxy::Inner;
use crate::sse::{self, Lines};
use crate::upstream;

/// The decode engine's answer, its head read.
#[derive(Debug)]
pub struct Answer {
    /// Its status (2xx: errors became [`ProxyError::DecodeStatus`]).
    pub status: StatusCode,
    /// Its headers, hop-by-hop removed.
    pub headers: HeaderMap,
    /// An event stream (else a JSON answer).
    pub is_sse: bool,
    body: Incoming,
    /// Lines read so far (up to the first token), not yet relayed.
    head: Vec<u8>,
    lines: Lines,
    /// `llm_d.pd_proxy.decode`: ends when the engine's answer does.
    span: tracing::Span,
    ended: bool,
    /// When the first event with output was read.
    first_token_at: Option<Instant>,
}

/// Sends the decode request; error statuses come back as [`ProxyError::DecodeStatus`].
pub async fn send(
    inner: &Inner,
    cx: &mut Exchange,
    path: &str,
    body: Map<String, Value>,
    headers: HeaderMap,
    client_streams: bool,
) -> Result<Answer, ProxyError> {
    let body = serde_json::to_vec(&body).map_err(|e| ProxyError::Internal {
        reason: format!("serialising the decode body: {e}"),
    })?;
    let span = tracing::info_span!(
        parent: &cx.span,
        spans::PD_PROXY_DECODE,
        otel.kind = "client",
        service.name = tracing::field::Empty,
        llm_d.pd_proxy.decode.streaming = client_streams,
        http.response.status_code = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    );
    crate::proxy::name_service(&span, inner);
    let mut headers = headers;
    if let Ok(v) = HeaderValue::from_str(&cx.request_id) {
        headers.append(
            HeaderName::from_static(llmd_wire::headers::REQUEST_ID_HEADER),
            v,
        );
    }
    llmd_telemetry::propagation::inject_span_into_headers(&span, &mut headers);
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let url = format!("{}{path}", inner.config.decoder);
    let Some(req) = upstream::request(Method::POST, &url, headers, Body::from(body)) else {
        return Err(ProxyError::BadRequest {
            reason: "invalid request path".into(),
        });
    };
    cx.decode_started = Some(Instant::now());
    let resp =
        match tokio::time::timeout(inner.config.decode_timeout, inner.decoder.request(req)).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                span.record("otel.status_code", "ERROR");
                return Err(if e.is_connect() {
                    ProxyError::DecodeUnavailable
                } else {
                    ProxyError::DecodeFailed { reason: chain(&e) }
                });
            }
            Err(_) => {
                span.record("otel.status_code", "ERROR");
                return Err(ProxyError::DecodeTimeout);
            }
        };
    let status = resp.status();
    span.record("http.response.status_code", i64::from(status.as_u16()));
    let headers = upstream::relay_headers(resp.headers());
    let is_sse = resp
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    if !status.is_success() {
        span.record("otel.status_code", "ERROR");
        let body = Limited::new(resp.into_body(), inner.config.max_body_bytes)
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        cx.on_decode_end(Instant::now());
        return Err(ProxyError::DecodeStatus {
            answer: Box::new(Relayed {
                status,
                headers,
                body,
            }),
        });
    }
    Ok(Answer {
        status,
        headers,
        is_sse,
        body: resp.into_body(),
        head: Vec::new(),
        lines: Lines::default(),
        span,
        ended: false,
        first_token_at: None,
    })
}

impl Answer {
    /// The next chunk of the engine's answer (`None` at its end), bounded by the idle timeout.
    async fn next(&mut self, idle: Duration) -> Result<Option<Bytes>, ProxyError> {
        if self.ended {
            return Ok(None);
        }
        loop {
            let frame = if idle.is_zero() {
                self.body.frame().await
            } else {
                tokio::time::timeout(idle, self.body.frame())
                    .await
                    .map_err(|_| ProxyError::DecodeTimeout)?
            };
            match frame {
                None => {
                    self.ended = true;
                    return Ok(None);
                }
                Some(Err(e)) => {
                    return Err(ProxyError::DecodeFailed {
                        reason: format!("the stream broke: {}", chain(&e)),
                    });
                }
                Some(Ok(f)) => {
                    if let Ok(data) = f.into_data() {
                        return Ok(Some(data));
                    }
                }
            }
        }
    }

    /// Marks the end of the engine's answer: the decode span ends, the decode duration is known.
    fn end(&mut self, cx: &mut Exchange) {
        cx.on_decode_end(Instant::now());
        self.span = tracing::Span::none();
    }
}

/// Reads the event stream up to the first event with generated output. The lines read are
/// kept for the relay, which records the first token when it hands them to the client (a
/// stream), or now (an answer assembled for a client that did not stream). A stream that ends
/// first has no first token (true TTFT is then not recorded).
pub async fn first_token(
    inner: &Inner,
    cx: &mut Exchange,
    answer: &mut Answer,
) -> Result<(), ProxyError> {
    let idle = inner.config.decode_idle_timeout;
    while let Some(chunk) = answer.next(idle).await? {
        if let Some(lines) = answer.lines.push(&chunk) {
            let found = sse::has_output(&lines);
            answer.head.extend_from_slice(&lines);
            if found {
                answer.first_token_at = Some(Instant::now());
                return Ok(());
            }
        }
        if answer.head.len() > inner.config.max_body_bytes {
            return Err(ProxyError::DecodeFailed {
                reason: "no token in the first max-body-bytes of the stream".into(),
            });
        }
    }
    answer.end(cx);
    Ok(())
}

/// The response head relayed to the client, with the `server-timing` known now.
fn head(status: StatusCode, mut headers: HeaderMap, cx: &Exchange) -> Response {
    if let Ok(v) = HeaderValue::from_str(&cx.server_timing()) {
        headers.insert(
            HeaderName::from_static(llmd_wire::headers::SERVER_TIMING_HEADER),
            v,
        );
    }
    let mut out = Response::new(Body::empty());
    *out.status_mut() = status;
    *out.headers_mut() = headers;
    out
}

/// The client streams: what was read is relayed at once, the rest line by line as it arrives,
/// `cached_tokens` rewritten in usage events, and (when asked for) the final timings as an SSE
/// comment before `data: [DONE]`. The request's figures are recorded when the last byte has
/// been handed on; a broken or silent decode stream aborts the client's body (never a clean
/// end), counted and logged.
pub fn relay_stream(
    inner: &Inner,
    mut answer: Answer,
    cx: Exchange,
    cached: u64,
    timing_comment: bool,
) -> Response {
    let idle = inner.config.decode_idle_timeout;
    let headers = std::mem::take(&mut answer.headers);
    let status = answer.status;
    struct Relay {
        answer: Answer,
        cx: Exchange,
        cached: u64,
        comment: bool,
        idle: Duration,
        finished: bool,
    }
    impl Relay {
        fn emit(&mut self, lines: &[u8]) -> Bytes {
            let out = sse::rewrite_cached(lines, self.cached);
            if !self.comment {
                return out;
            }
            let Some(at) = sse::find_done(&out) else {
                return out;
            };
            self.comment = false;
            let mut with = Vec::with_capacity(out.len() + 200);
            with.extend_from_slice(&out[..at]);
            with.extend_from_slice(format!(": llmd-timing {}\n\n", self.cx.summary()).as_bytes());
            with.extend_from_slice(&out[at..]);
            Bytes::from(with)
        }
    }
    let head_lines = std::mem::take(&mut answer.head);
    let mut state = Relay {
        answer,
        cx,
        cached,
        comment: timing_comment,
        idle,
        finished: false,
    };
    let first = (!head_lines.is_empty()).then(|| state.emit(&head_lines));
    // The first token is handed to the client now, with the response head: true TTFT is the
    // time to this moment, the proxy's relay work included.
    if state.answer.first_token_at.is_some() {
        state.cx.on_first_token(Instant::now());
    }
    let out = head(status, headers, &state.cx);
    let rest = futures::stream::unfold(state, |mut s| async move {
        if s.finished {
            return None;
        }
        loop {
            match s.answer.next(s.idle).await {
                Ok(Some(chunk)) => {
                    if let Some(lines) = s.answer.lines.push(&chunk) {
                        let out = s.emit(&lines);
                        return Some((Ok(out), s));
                    }
                }
                Ok(None) => {
                    s.answer.end(&mut s.cx);
                    if let Some(tail) = s.answer.lines.finish() {
                        let out = s.emit(&tail);
                        return Some((Ok(out), s));
                    }
                    // Asked for more after the last byte: the response is complete.
                    s.finished = true;
                    s.cx.finish("ok");
                    return None;
                }
                Err(e) => {
                    s.answer.end(&mut s.cx);
                    e.count();
                    e.log(&s.cx.request_id);
                    s.cx.finish(e.outcome());
                    s.finished = true;
                    return Some((Err(std::io::Error::other(e.to_string())), s));
                }
            }
        }
    });
    let stream = futures::stream::iter(first.map(Ok)).chain(rest);
    let (parts, _) = out.into_parts();
    Response::from_parts(parts, Body::from_stream(stream))
}

use futures::StreamExt as _;

/// The client did not stream: the rest of the events are read and assembled into the JSON
/// answer the engine would have sent.
pub async fn assemble_rest(
    inner: &Inner,
    cx: &mut Exchange,
    mut answer: Answer,
    api: Api,
    cached: u64,
) -> Result<Response, ProxyError> {
    if let Some(at) = answer.first_token_at {
        cx.on_first_token(at);
    }
    let idle = inner.config.decode_idle_timeout;
    let mut assembler = Assembler::new(api);
    let mut total = answer.head.len();
    let take = |assembler: &mut Assembler, lines: &[u8]| -> Result<(), ProxyError> {
        for payload in sse::data_payloads(lines) {
            if payload == "[DONE]" {
                continue;
            }
            let event: Value =
                serde_json::from_str(payload).map_err(|e| ProxyError::DecodeFailed {
                    reason: format!("an event of the stream is not JSON: {e}"),
                })?;
            assembler
                .push(&event)
                .map_err(|e| ProxyError::DecodeFailed {
                    reason: e.to_string(),
                })?;
        }
        Ok(())
    };
    let head_lines = std::mem::take(&mut answer.head);
    take(&mut assembler, &head_lines)?;
    while let Some(chunk) = answer.next(idle).await? {
        total += chunk.len();
        if total > inner.config.max_body_bytes {
            return Err(ProxyError::DecodeFailed {
                reason: format!("the answer is over {} bytes", inner.config.max_body_bytes),
            });
        }
        if let Some(lines) = answer.lines.push(&chunk) {
            take(&mut assembler, &lines)?;
        }
    }
    if let Some(tail) = answer.lines.finish() {
        take(&mut assembler, &tail)?;
    }
    answer.end(cx);
    let mut json = assembler.finish().map_err(|e| ProxyError::DecodeFailed {
        reason: e.to_string(),
    })?;
    crate::nixl::rewrite_cached(&mut json, cached);
    let mut headers = std::mem::take(&mut answer.headers);
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let mut out = head(answer.status, headers, cx);
    *out.body_mut() = Body::from(json.to_string());
    Ok(out)
}

/// A JSON answer (an API without an assembler, or an engine that did not stream): read whole,
/// `cached_tokens` rewritten. Its first token is not observed.
pub async fn relay_json(
    inner: &Inner,
    cx: &mut Exchange,
    answer: Answer,
    cached: u64,
) -> Result<Response, ProxyError> {
    let Answer {
        status,
        headers,
        body,
        span,
        ..
    } = answer;
    let bytes = Limited::new(body, inner.config.max_body_bytes)
        .collect()
        .await
        .map_err(|e| ProxyError::DecodeFailed {
            reason: format!("reading the answer: {e}"),
        })?
        .to_bytes();
    cx.on_decode_end(Instant::now());
    drop(span);
    cx.span.record("llm_d.pd_proxy.ttft_observed", false);
    let body = match serde_json::from_slice::<Value>(&bytes) {
        Ok(mut v) => {
            if crate::nixl::rewrite_cached(&mut v, cached) {
                Bytes::from(v.to_string())
            } else {
                bytes
            }
        }
        Err(_) => bytes,
    };
    let mut out = head(status, headers, cx);
    *out.body_mut() = Body::from(body);
    Ok(out)
}
