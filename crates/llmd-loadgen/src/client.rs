//! One request against an OpenAI-compatible server, measured from the client side: TTFT (first
//! non-empty token), inter-token latencies, end-to-end time, token counts from `usage`, the
//! proxy's `server-timing` breakdown, and errors classified by kind (never a panic).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Method, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// The API a request uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Api {
    /// `POST /v1/completions` with `prompt`.
    Completions,
    /// `POST /v1/chat/completions` with one user message.
    Chat,
}

impl Api {
    fn path(self) -> &'static str {
        match self {
            Api::Completions => "/completions",
            Api::Chat => "/chat/completions",
        }
    }
}

/// What to send.
#[derive(Debug, Clone)]
pub struct RequestSpec {
    /// `x-request-id`.
    pub id: String,
    /// The pattern or dataset group it belongs to (results are grouped by it).
    pub pattern: Arc<str>,
    /// Prompt text (the user message for chat).
    pub prompt: String,
    /// Prompt length in tokens as generated (the server's `usage` wins when it reports one).
    pub input_tokens: u32,
    /// `max_tokens`.
    pub max_tokens: u32,
    /// Streaming (SSE) or one JSON answer.
    pub stream: bool,
}

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// TCP connect refused or failed.
    Connect,
    /// No complete answer within `--timeout`.
    Timeout,
    /// An HTTP error status (`"503 Service Unavailable"`).
    Http(String),
    /// An SSE event that is not JSON, or a JSON body that does not parse.
    Malformed,
    /// The stream ended without `data: [DONE]`, or the connection broke mid-answer.
    Incomplete,
    /// Anything else on the wire.
    Transport,
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ErrorKind::Connect => f.write_str("connection failed"),
            ErrorKind::Timeout => f.write_str("timeout"),
            ErrorKind::Http(s) => write!(f, "HTTP {s}"),
            ErrorKind::Malformed => f.write_str("malformed response"),
            ErrorKind::Incomplete => f.write_str("incomplete response"),
            ErrorKind::Transport => f.write_str("transport error"),
        }
    }
}

/// The proxy's `server-timing` figures, ms.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ServerTiming {
    /// `prefill;dur=`.
    pub prefill_ms: Option<f64>,
    /// `coordinator;dur=`.
    pub coordinator_ms: Option<f64>,
    /// `decode_ttft;dur=`.
    pub decode_ttft_ms: Option<f64>,
    /// `true_ttft;dur=`: the proxy's own measure of the time to the first token.
    #[serde(default)]
    pub true_ttft_ms: Option<f64>,
}

impl ServerTiming {
    /// Parses `prefill;dur=1.2, coordinator;dur=0.03, decode_ttft;dur=4.5`; None when no
    /// known metric is present.
    pub fn parse(header: &str) -> Option<Self> {
        let mut t = ServerTiming::default();
        for part in header.split(',') {
            let mut fields = part.split(';').map(str::trim);
            let name = fields.next().unwrap_or("");
            let dur = fields
                .find_map(|f| f.strip_prefix("dur="))
                .and_then(|d| d.parse::<f64>().ok())
                .filter(|d| d.is_finite() && *d >= 0.0);
            match name {
                "prefill" => t.prefill_ms = dur,
                "coordinator" => t.coordinator_ms = dur,
                "decode_ttft" => t.decode_ttft_ms = dur,
                "true_ttft" => t.true_ttft_ms = dur,
                _ => {}
            }
        }
        (t != ServerTiming::default()).then_some(t)
    }
}

/// What happened to one request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    /// `x-request-id`.
    pub id: String,
    /// Pattern or group.
    pub pattern: String,
    /// Sent at, ms since the run started.
    pub start_ms: f64,
    /// How late the send was against its schedule, ms (open loop only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_ms: Option<f64>,
    /// HTTP status (0: none).
    pub status: u16,
    /// The error, if it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorKind>,
    /// Detail of the error (first 200 bytes of the body or the cause).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_detail: Option<String>,
    /// Time to the first non-empty token, ms (streaming only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttft_ms: Option<f64>,
    /// Gaps between later non-empty chunks, ms (f32: ten thousand streams of long answers
    /// keep these in memory).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub itl_ms: Vec<f32>,
    /// End to end, ms.
    pub e2e_ms: f64,
    /// Prompt tokens (`usage.prompt_tokens`, else as generated).
    pub input_tokens: u32,
    /// Output tokens (`usage.completion_tokens`, else streamed chunks).
    pub output_tokens: u32,
    /// `usage.prompt_tokens_details.cached_tokens`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_tokens: Option<u32>,
    /// The proxy's breakdown, when it sent one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_timing: Option<ServerTiming>,
}

impl Outcome {
    /// Succeeded.
    pub fn ok(&self) -> bool {
        self.error.is_none()
    }

    /// Time per output token after the first, ms: (e2e - ttft) / (out - 1).
    pub fn tpot_ms(&self) -> Option<f64> {
        let ttft = self.ttft_ms?;
        (self.output_tokens > 1).then(|| (self.e2e_ms - ttft) / f64::from(self.output_tokens - 1))
    }
}

/// Errors building the client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The endpoint URL.
    #[error("invalid endpoint {0:?}: must be http(s)://host[:port][/path]")]
    Endpoint(String),
    /// TLS setup.
    #[error("TLS: {0}")]
    Tls(String),
}

type Hyper = HyperClient<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// A pooled HTTP client for one endpoint: the minimal HTTP/1.1 client of [`crate::h1`] for
/// `http://`, hyper (with rustls) for `https://`.
#[derive(Clone, Debug)]
pub struct Client {
    http: Hyper,
    h1: Option<Arc<crate::h1::Pool>>,
    /// Path prefix of the endpoint (`/v1`).
    prefix: String,
    base: String,
    model: String,
    api: Api,
    timeout: Duration,
    extra: serde_json::Map<String, Value>,
    service_name: Option<String>,
    headers: Vec<(http::HeaderName, HeaderValue)>,
}

/// Settings of [`Client::new`].
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Base URL with the API prefix, e.g. `http://localhost:8000/v1`.
    pub endpoint: String,
    /// `model`.
    pub model: String,
    /// API.
    pub api: Api,
    /// Whole-request timeout.
    pub timeout: Duration,
    /// Extra body fields (`temperature`, `ignore_eos`, ...).
    pub extra: serde_json::Map<String, Value>,
    /// The `service.name` of the client spans when sharing a process with other components.
    pub service_name: Option<String>,
    /// Extra request headers (name, value), sent on every request.
    pub headers: Vec<(http::HeaderName, HeaderValue)>,
}

impl Client {
    /// A client; `https://` endpoints are verified against the system roots.
    pub fn new(opts: ClientOptions) -> Result<Self, ClientError> {
        let base = opts.endpoint.trim_end_matches('/').to_owned();
        let ok = (base.starts_with("http://") || base.starts_with("https://"))
            && base.parse::<http::Uri>().is_ok_and(|u| u.host().is_some());
        if !ok {
            return Err(ClientError::Endpoint(opts.endpoint));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ClientError::Tls(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut tcp = HttpConnector::new();
        tcp.set_nodelay(true);
        tcp.enforce_http(false);
        tcp.set_connect_timeout(Some(Duration::from_secs(10)));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(tcp);
        let http = HyperClient::builder(TokioExecutor::new())
            .pool_max_idle_per_host(usize::MAX)
            .pool_idle_timeout(Duration::from_secs(60))
            // A fixed 4 KiB read buffer per connection instead of hyper's adaptive 8 KiB and
            // up: answers are small events, and 10,000 streams multiply it.
            .http1_read_buf_exact_size(4096)
            .build(connector);
        let uri: http::Uri = base
            .parse()
            .map_err(|_| ClientError::Endpoint(base.clone()))?;
        let prefix = uri.path().trim_end_matches('/').to_owned();
        let h1 = if uri.scheme_str() == Some("http") {
            let authority = uri
                .authority()
                .ok_or_else(|| ClientError::Endpoint(base.clone()))?;
            let port = authority.port_u16().unwrap_or(80);
            let addr = std::net::ToSocketAddrs::to_socket_addrs(&(authority.host(), port))
                .ok()
                .and_then(|mut a| a.next())
                .ok_or_else(|| ClientError::Endpoint(format!("{base}: cannot resolve the host")))?;
            Some(Arc::new(crate::h1::Pool::new(
                addr,
                authority.as_str().to_owned(),
                Duration::from_secs(10),
            )))
        } else {
            None
        };
        Ok(Self {
            http,
            h1,
            prefix,
            base,
            model: opts.model,
            api: opts.api,
            timeout: opts.timeout,
            extra: opts.extra,
            service_name: opts.service_name,
            headers: opts.headers,
        })
    }

    /// The base URL.
    pub fn endpoint(&self) -> &str {
        &self.base
    }

    /// `GET {base}/models`: Ok when the server answers 2xx.
    pub async fn preflight(&self) -> Result<(), String> {
        let req = http::Request::get(format!("{}/models", self.base))
            .body(Full::new(Bytes::new()))
            .map_err(|e| e.to_string())?;
        match tokio::time::timeout(Duration::from_secs(10), self.http.request(req)).await {
            Ok(Ok(r)) if r.status().is_success() => Ok(()),
            Ok(Ok(r)) => Err(format!("GET /models answered {}", r.status())),
            Ok(Err(e)) => Err(format!("cannot reach {}: {e}", self.base)),
            Err(_) => Err(format!("{} did not answer within 10 s", self.base)),
        }
    }

    fn body(&self, spec: &RequestSpec) -> Value {
        let mut body = serde_json::Map::new();
        body.insert("model".into(), json!(self.model));
        match self.api {
            Api::Completions => {
                body.insert("prompt".into(), json!(spec.prompt));
            }
            Api::Chat => {
                body.insert(
                    "messages".into(),
                    json!([{"role": "user", "content": spec.prompt}]),
                );
            }
        }
        body.insert("max_tokens".into(), json!(spec.max_tokens));
        if spec.stream {
            body.insert("stream".into(), json!(true));
            body.insert("stream_options".into(), json!({"include_usage": true}));
        }
        for (k, v) in &self.extra {
            body.insert(k.clone(), v.clone());
        }
        Value::Object(body)
    }

    /// Sends one request; `t0` is the run's start (for `start_ms`). With tracing on, a CLIENT
    /// span `llmd.loadgen.request` is the root of the request's trace; without, a fresh
    /// `traceparent` is sent all the same.
    pub async fn send(&self, spec: &RequestSpec, t0: Instant) -> Outcome {
        let span = tracing::info_span!(
            llmd_telemetry::names::spans::LOADGEN_REQUEST,
            otel.kind = "client",
            service.name = tracing::field::Empty,
            gen_ai.request.id = %spec.id,
            llmd.loadgen.pattern = %spec.pattern,
            gen_ai.request.max_tokens = i64::from(spec.max_tokens),
            http.response.status_code = tracing::field::Empty,
            error.type = tracing::field::Empty,
        );
        if let Some(name) = &self.service_name {
            span.record(llmd_telemetry::names::services::SPAN_ATTR, name.as_str());
        }
        let mut pairs = Vec::new();
        llmd_telemetry::propagation::inject_span_into_pairs(&span, &mut pairs);
        let tp = pairs
            .into_iter()
            .find(|(k, _)| k == "traceparent")
            .map_or_else(traceparent, |(_, v)| v);
        let out = self.send_traced(spec, t0, &tp).await;
        span.record("http.response.status_code", i64::from(out.status));
        if let Some(e) = &out.error {
            span.record("error.type", e.to_string());
        }
        out
    }

    async fn send_traced(&self, spec: &RequestSpec, t0: Instant, tp: &str) -> Outcome {
        let started = Instant::now();
        let mut out = Outcome {
            id: spec.id.clone(),
            pattern: spec.pattern.to_string(),
            start_ms: ms(started.saturating_duration_since(t0)),
            lag_ms: None,
            status: 0,
            error: None,
            error_detail: None,
            ttft_ms: None,
            itl_ms: Vec::new(),
            e2e_ms: 0.0,
            input_tokens: spec.input_tokens,
            output_tokens: 0,
            cached_tokens: None,
            server_timing: None,
        };
        let result =
            tokio::time::timeout(self.timeout, self.exchange(spec, started, tp, &mut out)).await;
        match result {
            Ok(Ok(())) => {}
            Ok(Err((kind, detail))) => {
                out.error = Some(kind);
                out.error_detail = Some(detail);
            }
            Err(_) => {
                out.error = Some(ErrorKind::Timeout);
                out.error_detail = Some(format!("no complete answer within {:?}", self.timeout));
            }
        }
        out.e2e_ms = ms(started.elapsed());
        out
    }

    async fn exchange(
        &self,
        spec: &RequestSpec,
        started: Instant,
        tp: &str,
        out: &mut Outcome,
    ) -> Result<(), (ErrorKind, String)> {
        let body = serde_json::to_vec(&self.body(spec)).unwrap_or_default();
        let (status, content_type, server_timing, mut body) = match &self.h1 {
            Some(pool) => {
                let mut extra = String::with_capacity(128);
                for (name, value) in [("x-request-id", spec.id.as_str()), ("traceparent", tp)] {
                    if HeaderValue::from_str(value).is_ok() {
                        extra.push_str(name);
                        extra.push_str(": ");
                        extra.push_str(value);
                        extra.push_str("\r\n");
                    }
                }
                for (name, value) in &self.headers {
                    if let Ok(value) = value.to_str() {
                        extra.push_str(name.as_str());
                        extra.push_str(": ");
                        extra.push_str(value);
                        extra.push_str("\r\n");
                    }
                }
                let path = format!("{}{}", self.prefix, self.api.path());
                let (head, body) = pool.post(&path, &extra, &body).await.map_err(h1_error)?;
                (
                    StatusCode::from_u16(head.status).map_err(|_| {
                        (
                            ErrorKind::Malformed,
                            format!("invalid status {}", head.status),
                        )
                    })?,
                    head.content_type,
                    head.server_timing,
                    RespBody::H1(body),
                )
            }
            None => {
                let mut req = http::Request::new(Full::new(Bytes::from(body)));
                *req.method_mut() = Method::POST;
                *req.uri_mut() = format!("{}{}", self.base, self.api.path())
                    .parse()
                    .map_err(|e| (ErrorKind::Transport, format!("{e}")))?;
                let headers = req.headers_mut();
                headers.insert(
                    http::header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                if let Ok(v) = HeaderValue::from_str(&spec.id) {
                    headers.insert("x-request-id", v);
                }
                if let Ok(v) = HeaderValue::from_str(tp) {
                    headers.insert("traceparent", v);
                }
                for (name, value) in &self.headers {
                    headers.append(name.clone(), value.clone());
                }
                let resp = self.http.request(req).await.map_err(|e| {
                    let kind = if e.is_connect() {
                        ErrorKind::Connect
                    } else {
                        ErrorKind::Transport
                    };
                    (kind, error_chain(&e))
                })?;
                let header = |name: http::header::HeaderName| {
                    resp.headers()
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned)
                };
                let content_type = header(http::header::CONTENT_TYPE).unwrap_or_default();
                let server_timing = header(http::header::HeaderName::from_static("server-timing"));
                (
                    resp.status(),
                    content_type,
                    server_timing,
                    RespBody::Hyper(resp.into_body()),
                )
            }
        };
        out.status = status.as_u16();
        out.server_timing = server_timing.as_deref().and_then(ServerTiming::parse);
        let is_sse = content_type
            .to_ascii_lowercase()
            .starts_with("text/event-stream");
        if !status.is_success() {
            let bytes = body.collect(64 << 10).await.unwrap_or_default();
            return Err((http_kind(status), snippet(&bytes)));
        }
        if !is_sse {
            let bytes = body.collect(64 << 20).await?;
            let v: Value = serde_json::from_slice(&bytes)
                .map_err(|e| (ErrorKind::Malformed, format!("{e}: {}", snippet(&bytes))))?;
            if !apply_usage(&v, out) {
                out.output_tokens = u32::from(!text_of(&v).is_empty());
            }
            return Ok(());
        }
        let mut buf: Vec<u8> = Vec::new();
        let mut last: Option<Instant> = None;
        let mut chunks = 0u32;
        let mut done = false;
        let mut from = 0;
        while body.next(&mut |d| buf.extend_from_slice(d)).await? {
            let now = Instant::now();
            while let Some(nl) = buf[from..].iter().position(|b| *b == b'\n') {
                let end = from + nl;
                let line = std::str::from_utf8(&buf[from..=end])
                    .map_err(|_| (ErrorKind::Malformed, "SSE line is not UTF-8".to_owned()))?
                    .trim_end_matches(['\n', '\r']);
                from = end + 1;
                let Some(payload) = line.strip_prefix("data:") else {
                    continue; // comments, event names, blank separators
                };
                let payload = payload.trim_start();
                if payload == "[DONE]" {
                    done = true;
                    continue;
                }
                let v: Value = serde_json::from_str(payload).map_err(|e| {
                    (
                        ErrorKind::Malformed,
                        format!(
                            "SSE event is not JSON ({e}): {}",
                            snippet(payload.as_bytes())
                        ),
                    )
                })?;
                if v.get("error").is_some() {
                    return Err((
                        ErrorKind::Http("stream error".into()),
                        snippet(payload.as_bytes()),
                    ));
                }
                apply_usage(&v, out);
                if !text_of(&v).is_empty() {
                    chunks += 1;
                    match last {
                        None => out.ttft_ms = Some(ms(now - started)),
                        Some(prev) => out.itl_ms.push(ms(now - prev) as f32),
                    }
                    last = Some(now);
                }
            }
            buf.drain(..from);
            from = 0;
        }
        if out.output_tokens == 0 {
            out.output_tokens = chunks;
        }
        if !done {
            return Err((
                ErrorKind::Incomplete,
                "the stream ended without data: [DONE]".into(),
            ));
        }
        Ok(())
    }
}

/// A response body from either transport.
enum RespBody<'a> {
    Hyper(hyper::body::Incoming),
    H1(crate::h1::Body<'a>),
}

impl RespBody<'_> {
    /// The next piece of data, to `on_data`; false at the end.
    async fn next(&mut self, on_data: &mut impl FnMut(&[u8])) -> Result<bool, (ErrorKind, String)> {
        match self {
            RespBody::Hyper(b) => loop {
                match b.frame().await {
                    None => return Ok(false),
                    Some(Err(e)) => return Err((ErrorKind::Incomplete, e.to_string())),
                    Some(Ok(f)) => {
                        if let Ok(d) = f.into_data() {
                            on_data(&d);
                            return Ok(true);
                        }
                    }
                }
            },
            RespBody::H1(b) => b.next(on_data).await.map_err(h1_error),
        }
    }

    /// The whole body, at most `limit` bytes.
    async fn collect(&mut self, limit: usize) -> Result<Vec<u8>, (ErrorKind, String)> {
        let mut all = Vec::new();
        while self.next(&mut |d| all.extend_from_slice(d)).await? {
            if all.len() > limit {
                return Err((
                    ErrorKind::Malformed,
                    format!("response body over {limit} bytes"),
                ));
            }
        }
        Ok(all)
    }
}

fn h1_error(e: crate::h1::H1Error) -> (ErrorKind, String) {
    use crate::h1::H1Error;
    match e {
        H1Error::Connect(s) => (ErrorKind::Connect, s),
        H1Error::Malformed(s) => (ErrorKind::Malformed, s),
        H1Error::Incomplete(s) => (ErrorKind::Incomplete, s),
        H1Error::Io(s) => (ErrorKind::Transport, s),
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn http_kind(status: StatusCode) -> ErrorKind {
    ErrorKind::Http(match status.canonical_reason() {
        Some(r) => format!("{} {r}", status.as_u16()),
        None => status.as_u16().to_string(),
    })
}

fn snippet(bytes: &[u8]) -> String {
    let s = String::from_utf8_lossy(&bytes[..bytes.len().min(200)]);
    s.trim().to_owned()
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        text.push_str(": ");
        text.push_str(&s.to_string());
        src = s.source();
    }
    text
}

/// The generated text of a completion, chat answer or stream chunk.
fn text_of(v: &Value) -> &str {
    let Some(choice) = v.get("choices").and_then(|c| c.get(0)) else {
        return "";
    };
    for path in [
        &["text"][..],
        &["delta", "content"],
        &["delta", "reasoning_content"],
        &["message", "content"],
    ] {
        let mut cur = choice;
        let mut found = true;
        for key in path {
            match cur.get(*key) {
                Some(next) => cur = next,
                None => {
                    found = false;
                    break;
                }
            }
        }
        if found && let Some(s) = cur.as_str().filter(|s| !s.is_empty()) {
            return s;
        }
    }
    ""
}

/// Token counts from a `usage` object; true when it had completion tokens.
fn apply_usage(v: &Value, out: &mut Outcome) -> bool {
    let Some(usage) = v.get("usage").filter(|u| u.is_object()) else {
        return false;
    };
    let num = |x: Option<&Value>| {
        x.and_then(Value::as_u64)
            .and_then(|n| u32::try_from(n).ok())
    };
    if let Some(p) = num(usage.get("prompt_tokens")) {
        out.input_tokens = p;
    }
    out.cached_tokens = num(usage
        .get("prompt_tokens_details")
        .and_then(|d| d.get("cached_tokens")))
    .or(out.cached_tokens);
    match num(usage.get("completion_tokens")) {
        Some(c) => {
            out.output_tokens = c;
            true
        }
        None => false,
    }
}

/// A fresh W3C `traceparent` (sampled), so the trace starts at the client.
fn traceparent() -> String {
    // The thread's generator: no system call per request, as uuid's v4 would make.
    let trace: u128 = rand::random::<u128>() | 1;
    let span: u64 = rand::random::<u64>() | 1;
    format!("00-{trace:032x}-{span:016x}-01")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_timing_is_parsed() {
        let t = ServerTiming::parse("prefill;dur=12.5, coordinator;dur=0.031, decode_ttft;dur=4")
            .unwrap_or_default();
        assert_eq!(t.prefill_ms, Some(12.5));
        assert_eq!(t.coordinator_ms, Some(0.031));
        assert_eq!(t.decode_ttft_ms, Some(4.0));
        let t = ServerTiming::parse("prefill;dur=1, true_ttft;dur=7.5").unwrap();
        assert_eq!(t.true_ttft_ms, Some(7.5));
        assert_eq!(ServerTiming::parse("cache;desc=hit"), None);
        assert_eq!(ServerTiming::parse("prefill;dur=NaN"), None);
    }

    #[test]
    fn text_is_found_in_every_shape() {
        assert_eq!(text_of(&json!({"choices": [{"text": "a"}]})), "a");
        assert_eq!(
            text_of(&json!({"choices": [{"delta": {"content": "b"}}]})),
            "b"
        );
        assert_eq!(
            text_of(&json!({"choices": [{"delta": {"role": "assistant"}}]})),
            ""
        );
        assert_eq!(
            text_of(&json!({"choices": [{"message": {"content": "c"}}]})),
            "c"
        );
        assert_eq!(text_of(&json!({"choices": []})), "");
    }

    #[test]
    fn tpot_follows_vllm_bench() {
        let mut o = Outcome {
            id: "x".into(),
            pattern: "p".into(),
            start_ms: 0.0,
            lag_ms: None,
            status: 200,
            error: None,
            error_detail: None,
            ttft_ms: Some(100.0),
            itl_ms: vec![],
            e2e_ms: 1100.0,
            input_tokens: 10,
            output_tokens: 11,
            cached_tokens: None,
            server_timing: None,
        };
        assert_eq!(o.tpot_ms(), Some(100.0));
        o.output_tokens = 1;
        assert_eq!(o.tpot_ms(), None);
    }

    #[test]
    fn traceparent_is_w3c() {
        let t = traceparent();
        let parts: Vec<&str> = t.split('-').collect();
        assert_eq!(parts.len(), 4);
        assert_eq!(
            (parts[0], parts[1].len(), parts[2].len(), parts[3]),
            ("00", 32, 16, "01")
        );
    }
}
