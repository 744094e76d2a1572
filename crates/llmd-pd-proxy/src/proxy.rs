//! The HTTP side: routes, the two legs of a P/D request, relaying, timings.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use futures::{Stream, StreamExt};
use http_body_util::{BodyExt, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use llmd_telemetry::names::{pd_proxy as m, spans};
use serde_json::{Map, Value};

use crate::Connector;
use crate::allowlist::{Allowlist, TargetError};
use crate::nixl;

/// The prefill header the EPP sets.
pub const PREFILLER_HEADER: &str = "x-prefiller-host-port";

/// A client that sends this request header (any value but `0`) on a streaming P/D request gets
/// the final timings as an SSE comment line (`: llmd-timing ...`) just before `data: [DONE]`.
pub const TIMING_REQUEST_HEADER: &str = "x-llmd-timing";

/// What the proxy does.
#[derive(Debug, Clone)]
pub struct Config {
    /// Base URL of the local decode engine.
    pub decoder: String,
    /// KV connector.
    pub connector: Connector,
    /// Allowed prefill targets.
    pub allow: Allowlist,
    /// Largest request body.
    pub max_body_bytes: usize,
    /// Whole prefill leg.
    pub prefill_timeout: Duration,
    /// Until the decode engine's response headers.
    pub decode_timeout: Duration,
    /// Longest silence of a streaming decode answer before it is cut (zero: no limit).
    pub decode_idle_timeout: Duration,
    /// Speak HTTP/2 without TLS (prior knowledge) to the decode engine.
    pub decoder_h2c: bool,
    /// TLS to prefill pods (`https://`); `None`: plain HTTP.
    pub prefill_tls: Option<rustls::ClientConfig>,
    /// TLS to the decode engine, used when `decoder` is an `https://` URL.
    pub decoder_tls: Option<rustls::ClientConfig>,
    /// Serve the listener over TLS with this certificate.
    pub server_tls: Option<Arc<crate::tls::CertDir>>,
    /// Follow this InferencePool's pods into the allowlist (set by `run`, or by a test).
    pub pool: Option<crate::pool::PoolSource>,
    /// TCP connect to either engine.
    pub connect_timeout: Duration,
    /// Retries on 502/503/504 or unreachable prefill.
    pub prefill_max_retries: u32,
    /// Wait between retries.
    pub prefill_retry_backoff: Duration,
}

/// A pooled hyper client for one leg: plain HTTP, or HTTPS when the URL says so.
type Upstream = Client<hyper_rustls::HttpsConnector<HttpConnector>, Body>;

struct Inner {
    config: Config,
    /// To prefill pods (HTTP/1.1, as vLLM serves).
    prefill: Upstream,
    /// `http` or `https`, for prefill URLs.
    prefill_scheme: &'static str,
    /// To the local decode engine (h2c with `--decoder-h2c`).
    decoder: Upstream,
}

fn upstream(
    config: &Config,
    tls: Option<&rustls::ClientConfig>,
    h2_only: bool,
) -> Result<Upstream, crate::tls::TlsError> {
    let mut tcp = HttpConnector::new();
    tcp.set_nodelay(true);
    tcp.set_connect_timeout(Some(config.connect_timeout));
    tcp.enforce_http(false);
    let tls = match tls {
        Some(t) => t.clone(),
        None => crate::tls::plain_client_config()?,
    };
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_all_versions()
        .wrap_connector(tcp);
    Ok(Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(1024)
        .pool_idle_timeout(Duration::from_secs(90))
        .http2_only(h2_only)
        .build(connector))
}

/// The proxy's routes: `/health` local, completions and chat through P/D, the rest passed
/// through to the decode engine.
pub fn router(config: Config) -> Result<axum::Router, crate::tls::TlsError> {
    let prefill = upstream(&config, config.prefill_tls.as_ref(), false)?;
    let decoder = upstream(&config, config.decoder_tls.as_ref(), config.decoder_h2c)?;
    let prefill_scheme = if config.prefill_tls.is_some() {
        "https"
    } else {
        "http"
    };
    let inner = Arc::new(Inner {
        config,
        prefill,
        prefill_scheme,
        decoder,
    });
    Ok(axum::Router::new()
        .route("/health", axum::routing::get(|| async { StatusCode::OK }))
        .route("/v1/completions", axum::routing::post(disaggregated))
        .route("/v1/chat/completions", axum::routing::post(disaggregated))
        .route("/v1/messages", axum::routing::post(disaggregated))
        .route("/v1/responses", axum::routing::post(disaggregated))
        .route("/inference/v1/generate", axum::routing::post(disaggregated))
        .fallback(passthrough)
        .with_state(inner))
}

/// vLLM's error body (llm-d's sidecar uses this shape, `param` as an empty string).
fn error(status: StatusCode, kind: &str, message: &str) -> Response {
    let body = serde_json::json!({"object": "error", "message": message, "type": kind, "param": "", "code": status.as_u16()});
    (status, axum::Json(body)).into_response()
}

fn count_error(stage: &'static str) {
    metrics::counter!(m::ERRORS_TOTAL.name, "stage" => stage).increment(1);
}

fn count_request(connector: &'static str, outcome: &'static str) {
    metrics::counter!(m::REQUESTS_TOTAL.name, "connector" => connector, "outcome" => outcome)
        .increment(1);
}

/// Headers forwarded upstream: the client's minus hop-by-hop, length, host and the prefill
/// header.
fn upstream_headers(client: &HeaderMap) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in client {
        match k.as_str() {
            "host"
            | "content-length"
            | "connection"
            | "keep-alive"
            | "transfer-encoding"
            | "te"
            | "trailer"
            | "upgrade"
            | "proxy-connection"
            | PREFILLER_HEADER
            | TIMING_REQUEST_HEADER => {}
            _ => {
                h.append(k.clone(), v.clone());
            }
        }
    }
    h
}

/// Response headers relayed to the client (hop-by-hop and length dropped: the body may change).
fn downstream_headers(upstream: &HeaderMap) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in upstream {
        match k.as_str() {
            "content-length" | "connection" | "keep-alive" | "transfer-encoding" => {}
            _ => {
                h.append(k.clone(), v.clone());
            }
        }
    }
    h
}

async fn read_body(body: Body, limit: usize) -> Result<Bytes, Response> {
    match axum::body::to_bytes(body, limit).await {
        Ok(b) => Ok(b),
        Err(e) => {
            let mut src: Option<&(dyn std::error::Error + 'static)> = Some(&e);
            while let Some(s) = src {
                if s.is::<http_body_util::LengthLimitError>() {
                    count_error("client");
                    return Err(error(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "BadRequestError",
                        &format!("request body over {limit} bytes"),
                    ));
                }
                src = s.source();
            }
            count_error("client");
            Err(error(
                StatusCode::BAD_REQUEST,
                "BadRequestError",
                &format!("cannot read the request body: {e}"),
            ))
        }
    }
}

fn path_and_query(req: &Request) -> String {
    req.uri()
        .path_and_query()
        .map_or_else(|| req.uri().path().to_owned(), |p| p.as_str().to_owned())
}

/// Relays a response (status, headers, streamed body).
fn relay(resp: http::Response<hyper::body::Incoming>) -> Response {
    let (parts, body) = resp.into_parts();
    let mut out = Response::new(Body::new(body));
    *out.status_mut() = parts.status;
    *out.headers_mut() = downstream_headers(&parts.headers);
    out
}

/// The full error chain, for messages.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        text.push_str(": ");
        text.push_str(&s.to_string());
        src = s.source();
    }
    text
}

fn decoder_unreachable(e: &hyper_util::client::legacy::Error) -> Response {
    count_error("decode");
    if e.is_connect() {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "The decode node is not ready. Please check that the vLLM service is running and the port configuration is correct.",
        )
    } else {
        error(
            StatusCode::BAD_GATEWAY,
            "BadGateway",
            &format!("decode engine: {}", chain(e)),
        )
    }
}

fn decoder_timeout() -> Response {
    count_error("decode");
    error(
        StatusCode::GATEWAY_TIMEOUT,
        "GatewayTimeout",
        "the decode engine did not answer in time",
    )
}

/// An upstream request.
fn upstream_request(
    method: Method,
    url: &str,
    headers: HeaderMap,
    body: Body,
) -> Option<http::Request<Body>> {
    let uri: Uri = url.parse().ok()?;
    let mut req = http::Request::new(body);
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.headers_mut() = headers;
    Some(req)
}

/// Everything but completions and chat: to the decode engine unchanged, streamed both ways.
async fn passthrough(State(inner): State<Arc<Inner>>, req: Request) -> Response {
    let limit = inner.config.max_body_bytes;
    let declared = req
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        count_error("client");
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "BadRequestError",
            &format!("request body over {limit} bytes"),
        );
    }
    let url = format!("{}{}", inner.config.decoder, path_and_query(&req));
    let (parts, body) = req.into_parts();
    let mut headers = upstream_headers(&parts.headers);
    if let Some(n) = declared {
        headers.insert(http::header::CONTENT_LENGTH, HeaderValue::from(n));
    }
    // A body without a declared length is cut (and the upstream call fails) past the limit.
    let body = Body::new(Limited::new(body, limit));
    let Some(up) = upstream_request(parts.method, &url, headers, body) else {
        count_error("client");
        return error(
            StatusCode::BAD_REQUEST,
            "BadRequestError",
            "invalid request path",
        );
    };
    match tokio::time::timeout(inner.config.decode_timeout, inner.decoder.request(up)).await {
        Ok(Ok(resp)) => relay(resp),
        Ok(Err(e)) => decoder_unreachable(&e),
        Err(_) => decoder_timeout(),
    }
}

/// Time points of one P/D request.
struct Timings {
    connector: &'static str,
    started: Instant,
    prefill: Duration,
    decode_started: Option<Instant>,
    first_byte: Option<Instant>,
    finished: bool,
    span: tracing::Span,
}

impl Timings {
    fn ms(d: Duration) -> f64 {
        d.as_secs_f64() * 1e3
    }

    fn first_byte(&mut self) {
        if self.first_byte.is_none() {
            let now = Instant::now();
            self.first_byte = Some(now);
            let ttft = Self::ms(now - self.started);
            metrics::histogram!(m::TRUE_TTFT.name, "connector" => self.connector).record(ttft);
            self.span.record("llm_d.pd_proxy.true_ttft_ms", ttft);
        }
    }

    /// The figures so far, `server-timing` style.
    fn summary(&self) -> String {
        let now = Instant::now();
        let total = now - self.started;
        let decode = self.decode_started.map(|d| now - d).unwrap_or_default();
        let ttft = self
            .first_byte
            .map(|f| f - self.started)
            .unwrap_or_default();
        format!(
            "prefill;dur={:.3}, decode;dur={:.3}, true_ttft;dur={:.3}, coordinator;dur={:.3}, total;dur={:.3}",
            Self::ms(self.prefill),
            Self::ms(decode),
            Self::ms(ttft),
            Self::ms(total.saturating_sub(self.prefill + decode)),
            Self::ms(total)
        )
    }

    fn finish(&mut self, outcome: &'static str) {
        if self.finished {
            return;
        }
        self.finished = true;
        let now = Instant::now();
        let total = now - self.started;
        let decode = self.decode_started.map(|d| now - d).unwrap_or_default();
        let overhead = total.saturating_sub(self.prefill + decode);
        let c = self.connector;
        metrics::histogram!(m::PREFILL_DURATION.name, "connector" => c)
            .record(Self::ms(self.prefill));
        metrics::histogram!(m::DECODE_DURATION.name, "connector" => c).record(Self::ms(decode));
        metrics::histogram!(m::TOTAL_DURATION.name, "connector" => c).record(Self::ms(total));
        metrics::histogram!(m::COORDINATOR_OVERHEAD.name, "connector" => c)
            .record(Self::ms(overhead));
        self.span
            .record("llm_d.pd_proxy.prefill_duration_ms", Self::ms(self.prefill));
        self.span
            .record("llm_d.pd_proxy.decode_duration_ms", Self::ms(decode));
        self.span
            .record("llm_d.pd_proxy.total_duration_ms", Self::ms(total));
        self.span
            .record("llm_d.pd_proxy.coordinator_overhead_ms", Self::ms(overhead));
        self.span.record("outcome", outcome);
        count_request(c, outcome);
    }
}

impl Drop for Timings {
    fn drop(&mut self) {
        // The client went away before the answer was complete.
        self.finish("cancelled");
    }
}

/// Relays SSE line-complete, rewriting `cached_tokens` in usage events; records the timings.
fn sse_relay(
    upstream: impl Stream<Item = Result<Bytes, axum::Error>> + Send + Unpin + 'static,
    cached: u64,
    timings: Timings,
    timing_comment: bool,
    idle: Duration,
) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send {
    struct S<U> {
        up: U,
        buf: Vec<u8>,
        cached: u64,
        t: Timings,
        done: bool,
        comment: bool,
    }
    impl<U> S<U> {
        fn emit(&mut self, complete: &[u8]) -> Bytes {
            self.t.first_byte();
            let out = rewrite_lines(complete, self.cached);
            if !self.comment {
                return out;
            }
            let Some(at) = find_done(&out) else {
                return out;
            };
            self.comment = false;
            let mut with = Vec::with_capacity(out.len() + 160);
            with.extend_from_slice(&out[..at]);
            with.extend_from_slice(format!(": llmd-timing {}\n\n", self.t.summary()).as_bytes());
            with.extend_from_slice(&out[at..]);
            Bytes::from(with)
        }
    }
    let state = S {
        up: upstream,
        buf: Vec::new(),
        cached,
        t: timings,
        done: false,
        comment: timing_comment,
    };
    futures::stream::unfold(state, move |mut s| async move {
        if s.done {
            return None;
        }
        loop {
            let next = if idle.is_zero() {
                s.up.next().await
            } else {
                match tokio::time::timeout(idle, s.up.next()).await {
                    Ok(n) => n,
                    Err(_) => {
                        count_error("decode");
                        tracing::warn!(
                            idle_ms = idle.as_millis() as u64,
                            "decode stream went silent; cutting it"
                        );
                        s.done = true;
                        s.t.finish("decode_error");
                        return Some((
                            Err(std::io::Error::new(
                                std::io::ErrorKind::TimedOut,
                                "decode stream idle timeout",
                            )),
                            s,
                        ));
                    }
                }
            };
            match next {
                Some(Ok(chunk)) => {
                    s.buf.extend_from_slice(&chunk);
                    // Forward every complete line now; keep a partial one for the next chunk.
                    let Some(last_nl) = s.buf.iter().rposition(|b| *b == b'\n') else {
                        continue;
                    };
                    let rest = s.buf.split_off(last_nl + 1);
                    let complete = std::mem::replace(&mut s.buf, rest);
                    let out = s.emit(&complete);
                    return Some((Ok(out), s));
                }
                Some(Err(e)) => {
                    count_error("decode");
                    s.done = true;
                    s.t.finish("decode_error");
                    return Some((Err(std::io::Error::other(e)), s));
                }
                None => {
                    s.done = true;
                    let tail = std::mem::take(&mut s.buf);
                    let out = (!tail.is_empty()).then(|| s.emit(&tail));
                    s.t.finish("ok");
                    return out.map(|o| (Ok(o), s));
                }
            }
        }
    })
}

/// Where the `data: [DONE]` line starts, if this text has it at a line start.
fn find_done(bytes: &[u8]) -> Option<usize> {
    const DONE: &[u8] = b"data: [DONE]";
    bytes
        .windows(DONE.len())
        .position(|w| w == DONE)
        .filter(|at| *at == 0 || bytes[at - 1] == b'\n')
}

fn rewrite_lines(bytes: &[u8], cached: u64) -> Bytes {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return Bytes::copy_from_slice(bytes);
    };
    if !text.contains("\"usage\"") {
        return Bytes::copy_from_slice(bytes);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for line in text.split_inclusive('\n') {
        let (body, nl) = match line.strip_suffix('\n') {
            Some(b) => (b, "\n"),
            None => (line, ""),
        };
        let (body, cr) = match body.strip_suffix('\r') {
            Some(b) => (b, "\r"),
            None => (body, ""),
        };
        match nixl::rewrite_sse_line(body, cached) {
            Some(new) => out.push_str(&new),
            None => out.push_str(body),
        }
        out.push_str(cr);
        out.push_str(nl);
    }
    Bytes::from(out)
}

/// Completions, chat, messages, responses and generate: P/D when the EPP named a prefill pod,
/// else pass-through.
async fn disaggregated(State(inner): State<Arc<Inner>>, req: Request) -> Response {
    let started = Instant::now();
    let target = req
        .headers()
        .get(PREFILLER_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_owned);
    let Some(target) = target else {
        return passthrough(State(inner), req).await;
    };
    let timing_comment = req
        .headers()
        .get(TIMING_REQUEST_HEADER)
        .is_some_and(|v| !v.is_empty() && v.as_bytes() != b"0");
    let connector = inner.config.connector.name();
    let span = tracing::info_span!(
        spans::PD_PROXY_REQUEST,
        otel.kind = "server",
        llm_d.pd_proxy.connector = connector,
        llm_d.pd_proxy.prefill_target = tracing::field::Empty,
        llm_d.pd_proxy.request_id = tracing::field::Empty,
        llm_d.pd_proxy.true_ttft_ms = tracing::field::Empty,
        llm_d.pd_proxy.coordinator_overhead_ms = tracing::field::Empty,
        llm_d.pd_proxy.prefill_duration_ms = tracing::field::Empty,
        llm_d.pd_proxy.decode_duration_ms = tracing::field::Empty,
        llm_d.pd_proxy.total_duration_ms = tracing::field::Empty,
        llm_d.pd_proxy.cached_tokens = tracing::field::Empty,
        outcome = tracing::field::Empty,
    );
    llmd_telemetry::propagation::set_parent(
        &span,
        llmd_telemetry::propagation::extract_from_headers(req.headers()),
    );
    let target = match inner.config.allow.check(&target) {
        Ok(t) => t,
        Err(TargetError::Denied(t)) => {
            count_error("client");
            count_request(connector, "denied");
            tracing::warn!(target = t, "prefill target not in the allowlist");
            return (
                StatusCode::FORBIDDEN,
                "Forbidden: prefill target not allowed by the proxy's allowlist",
            )
                .into_response();
        }
        Err(e @ TargetError::Malformed(_)) => {
            count_error("client");
            count_request(connector, "bad_request");
            return error(StatusCode::BAD_REQUEST, "BadRequestError", &e.to_string());
        }
    };
    span.record("llm_d.pd_proxy.prefill_target", target.as_str());
    let path = path_and_query(&req);
    let api = nixl::ApiType::of_path(req.uri().path()).unwrap_or(nixl::ApiType::ChatCompletions);
    let headers = upstream_headers(req.headers());
    let body = match read_body(req.into_body(), inner.config.max_body_bytes).await {
        Ok(b) => b,
        Err(resp) => {
            count_request(connector, "bad_request");
            return resp;
        }
    };
    let client: Map<String, Value> = match serde_json::from_slice(&body) {
        Ok(Value::Object(m)) => m,
        Ok(_) => {
            count_error("client");
            count_request(connector, "bad_request");
            return error(
                StatusCode::BAD_REQUEST,
                "BadRequestError",
                "invalid JSON: the body must be an object",
            );
        }
        Err(e) => {
            count_error("client");
            count_request(connector, "bad_request");
            return error(
                StatusCode::BAD_REQUEST,
                "BadRequestError",
                &format!("invalid JSON: {e}"),
            );
        }
    };
    let request_id = uuid::Uuid::new_v4().to_string();
    span.record("llm_d.pd_proxy.request_id", request_id.as_str());
    let mut timings = Timings {
        connector,
        started,
        prefill: Duration::ZERO,
        decode_started: None,
        first_byte: None,
        finished: false,
        span: span.clone(),
    };

    // Prefill leg.
    let prefill_body = match serde_json::to_vec(&nixl::prefill_body(&client, api)) {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_GATEWAY, "BadGateway", &e.to_string()),
    };
    let prefill_span = tracing::info_span!(parent: &span, spans::PD_PROXY_PREFILL, otel.kind = "client", http.response.status_code = tracing::field::Empty);
    let mut prefill_headers = headers.clone();
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        prefill_headers.append(HeaderName::from_static("x-request-id"), v);
    }
    llmd_telemetry::propagation::inject_span_into_headers(&prefill_span, &mut prefill_headers);
    prefill_headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let url = format!("{}://{target}{path}", inner.prefill_scheme);
    let prefill_body = Bytes::from(prefill_body);
    let prefill_started = Instant::now();
    let mut attempt = 0;
    let prefill_resp = loop {
        let Some(req) = upstream_request(
            Method::POST,
            &url,
            prefill_headers.clone(),
            Body::from(prefill_body.clone()),
        ) else {
            count_error("client");
            timings.finish("bad_request");
            return error(
                StatusCode::BAD_REQUEST,
                "BadRequestError",
                &format!("prefill target {target:?} does not make a valid URL"),
            );
        };
        let sent = tokio::time::timeout(
            inner.config.prefill_timeout,
            prefill_call(&inner.prefill, req, inner.config.max_body_bytes),
        )
        .await
        .unwrap_or(Err(PrefillError::Timeout));
        let retryable = match &sent {
            Ok((parts, _)) => matches!(parts.status.as_u16(), 502..=504),
            Err(e) => !matches!(e, PrefillError::Timeout),
        };
        if retryable && attempt < inner.config.prefill_max_retries {
            attempt += 1;
            tokio::time::sleep(inner.config.prefill_retry_backoff).await;
            continue;
        }
        break sent;
    };
    timings.prefill = prefill_started.elapsed();
    let (parts, prefill_bytes) = match prefill_resp {
        Ok(r) => r,
        Err(e) => {
            count_error("prefill");
            timings.finish("prefill_error");
            let (status, kind) = match e {
                PrefillError::Timeout => (StatusCode::GATEWAY_TIMEOUT, "GatewayTimeout"),
                _ => (StatusCode::BAD_GATEWAY, "BadGateway"),
            };
            return error(status, kind, &format!("prefill on {target} failed: {e}"));
        }
    };
    let status = parts.status;
    prefill_span.record("http.response.status_code", status.as_u16());
    let prefill_headers_back = downstream_headers(&parts.headers);
    drop(prefill_span);
    if !status.is_success() {
        // The prefill's answer, verbatim; no decode.
        count_error("prefill");
        timings.finish("prefill_error");
        let mut out = Response::new(Body::from(prefill_bytes));
        *out.status_mut() = status;
        *out.headers_mut() = prefill_headers_back;
        return out;
    }
    let prefill_json: Value = match serde_json::from_slice(&prefill_bytes) {
        Ok(v @ Value::Object(_)) => v,
        _ => {
            count_error("prefill");
            timings.finish("prefill_error");
            return error(
                StatusCode::BAD_REQUEST,
                "BadRequestError",
                "the prefill response is not a JSON object",
            );
        }
    };
    let params = prefill_json
        .get("kv_transfer_params")
        .cloned()
        .unwrap_or(Value::Null);
    if params.is_null() {
        tracing::warn!(
            target,
            "prefill returned no kv_transfer_params: decode recomputes the prompt"
        );
    }
    let cached = nixl::cached_tokens(&prefill_json);
    span.record("llm_d.pd_proxy.cached_tokens", cached);

    // Decode leg.
    let decode_body = match serde_json::to_vec(&nixl::decode_body(&client, params)) {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_GATEWAY, "BadGateway", &e.to_string()),
    };
    let decode_span = tracing::info_span!(parent: &span, spans::PD_PROXY_DECODE, otel.kind = "client", http.response.status_code = tracing::field::Empty);
    let mut decode_headers = headers;
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        decode_headers.append(HeaderName::from_static("x-request-id"), v);
    }
    llmd_telemetry::propagation::inject_span_into_headers(&decode_span, &mut decode_headers);
    let decode_started = Instant::now();
    timings.decode_started = Some(decode_started);
    decode_headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let Some(req) = upstream_request(
        Method::POST,
        &format!("{}{path}", inner.config.decoder),
        decode_headers,
        Body::from(decode_body),
    ) else {
        count_error("client");
        timings.finish("bad_request");
        return error(
            StatusCode::BAD_REQUEST,
            "BadRequestError",
            "invalid request path",
        );
    };
    let sent = tokio::time::timeout(inner.config.decode_timeout, inner.decoder.request(req)).await;
    let resp = match sent {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            timings.finish("decode_error");
            return decoder_unreachable(&e);
        }
        Err(_) => {
            timings.finish("decode_error");
            return decoder_timeout();
        }
    };
    decode_span.record("http.response.status_code", resp.status().as_u16());
    drop(decode_span);
    let decode_ttft = decode_started.elapsed();
    let status = resp.status();
    let mut headers = downstream_headers(resp.headers());
    let coordinator = started
        .elapsed()
        .saturating_sub(timings.prefill + decode_ttft);
    let timing = format!(
        "prefill;dur={:.3}, coordinator;dur={:.3}, decode_ttft;dur={:.3}",
        Timings::ms(timings.prefill),
        Timings::ms(coordinator),
        Timings::ms(decode_ttft)
    );
    if let Ok(v) = HeaderValue::from_str(&timing) {
        headers.insert(HeaderName::from_static("server-timing"), v);
    }
    let is_sse = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    let body = Body::new(resp.into_body());
    if is_sse && status.is_success() {
        let stream = sse_relay(
            body.into_data_stream(),
            cached,
            timings,
            timing_comment,
            inner.config.decode_idle_timeout,
        );
        let mut out = Response::new(Body::from_stream(stream));
        *out.status_mut() = status;
        *out.headers_mut() = headers;
        return out;
    }
    // A JSON answer (or an error from decode): read it whole, rewrite usage.
    let bytes = match Limited::new(body, inner.config.max_body_bytes)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            count_error("decode");
            timings.finish("decode_error");
            return error(
                StatusCode::BAD_GATEWAY,
                "BadGateway",
                &format!("decode engine: {e}"),
            );
        }
    };
    timings.first_byte();
    let body = match serde_json::from_slice::<Value>(&bytes) {
        Ok(mut v) if status.is_success() => {
            if nixl::rewrite_cached(&mut v, cached) {
                Bytes::from(v.to_string())
            } else {
                bytes
            }
        }
        _ => bytes,
    };
    if !status.is_success() {
        count_error("decode");
    }
    timings.finish(if status.is_success() {
        "ok"
    } else {
        "decode_error"
    });
    let mut out = Response::new(Body::from(body));
    *out.status_mut() = status;
    *out.headers_mut() = headers;
    out
}

/// Why a prefill call failed.
#[derive(Debug, thiserror::Error)]
enum PrefillError {
    #[error("no answer within the prefill timeout")]
    Timeout,
    #[error("{0}")]
    Send(String),
    #[error("reading the answer: {0}")]
    Body(String),
}

/// One prefill attempt: the answer's head and its whole (bounded) body.
async fn prefill_call(
    client: &Upstream,
    req: http::Request<Body>,
    limit: usize,
) -> Result<(http::response::Parts, Bytes), PrefillError> {
    let resp = client
        .request(req)
        .await
        .map_err(|e| PrefillError::Send(chain(&e)))?;
    let (parts, body) = resp.into_parts();
    let bytes = Limited::new(body, limit)
        .collect()
        .await
        .map_err(|e| PrefillError::Body(e.to_string()))?
        .to_bytes();
    Ok((parts, bytes))
}
