//! A P/D request as named phases over one per-request context ([`Exchange`]):
//!
//! ```text
//! check target ─► parse ─► prefill leg ─► decode leg ─► first token ─► relay
//! (allowlist)    (body)    (prefill.rs)   (decode.rs)   (true TTFT)    stream | assembled JSON | JSON
//! ```
//!
//! Each phase returns `Result<_, ProxyError>`; [`fail`] is the one place where an error is
//! counted, logged once with the request id, recorded in the request's figures and turned into
//! the client's answer. Requests without `x-prefiller-host-port`, and every other path, pass
//! through to the decode engine ([`passthrough`]), counted by outcome.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::Response;
use http_body_util::Limited;
use llmd_telemetry::names::{attrs, pd_proxy as m, spans};
use serde_json::{Map, Value};

use crate::Connector;
use crate::allowlist::{Allowlist, TargetError};
use crate::assemble::{self, Api};
use crate::context::Exchange;
use crate::error::{ProxyError, Stage, is_length_limit};
use crate::upstream::{self, Upstream};
use crate::{decode, nixl, prefill};

/// The prefill header the EPP sets.
pub use llmd_wire::headers::PREFILLER_HEADER;

/// A client that sends this request header (any value but `0`) on a streaming P/D request gets
/// the final timings as an SSE comment line (`: llmd-timing ...`) just before `data: [DONE]`.
pub use llmd_wire::headers::TIMING_REQUEST_HEADER;

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
    /// Idle connections kept per engine.
    pub max_idle_per_host: usize,
    /// Retries on 502/503/504 or unreachable prefill.
    pub prefill_max_retries: u32,
    /// Wait between retries.
    pub prefill_retry_backoff: Duration,
    /// A client connection must send a request's head within this (slow or idle clients are
    /// closed).
    pub header_read_timeout: Duration,
    /// The proxy's `service.name` on its spans when it shares a process with other components
    /// (`llmd demo`, in-process tests); `None`: the process's own (`OTEL_SERVICE_NAME`).
    pub service_name: Option<String>,
}

/// What every request shares: the configuration and the two upstream clients.
#[derive(Debug)]
pub struct Inner {
    pub(crate) config: Config,
    /// To prefill pods (HTTP/1.1, as vLLM serves).
    pub(crate) prefill: Upstream,
    /// `http` or `https`, for prefill URLs.
    pub(crate) prefill_scheme: &'static str,
    /// To the local decode engine (h2c with `--decoder-h2c`).
    pub(crate) decoder: Upstream,
}

/// Puts the proxy's own `service.name` on a span, when it has one.
pub(crate) fn name_service(span: &tracing::Span, inner: &Inner) {
    if let Some(name) = &inner.config.service_name {
        span.record(llmd_telemetry::names::services::SPAN_ATTR, name.as_str());
    }
}

/// The proxy's routes: `/health` local, completions, chat, messages, responses and generate
/// through P/D, the rest passed through to the decode engine.
pub fn router(config: Config) -> Result<axum::Router, crate::tls::TlsError> {
    let prefill = upstream::client(&config, config.prefill_tls.as_ref(), false)?;
    let decoder = upstream::client(&config, config.decoder_tls.as_ref(), config.decoder_h2c)?;
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

fn path_and_query(req: &Request) -> String {
    req.uri()
        .path_and_query()
        .map_or_else(|| req.uri().path().to_owned(), |p| p.as_str().to_owned())
}

/// The declared `Content-Length`, refused (413) above the limit before anything is read. A value
/// too large for a number is over any limit too.
fn declared_length(req: &Request, limit: usize) -> Result<Option<u64>, ProxyError> {
    let Some(v) = req.headers().get(http::header::CONTENT_LENGTH) else {
        return Ok(None);
    };
    let text = v.to_str().unwrap_or("").trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return match text.parse::<u64>() {
            Ok(n) if n <= limit as u64 => Ok(Some(n)),
            _ => Err(ProxyError::TooLarge { limit }),
        };
    }
    Err(ProxyError::BadRequest {
        reason: format!("invalid Content-Length {text:?}"),
    })
}

/// Everything but the P/D paths, and P/D paths without a prefill header: to the decode engine
/// unchanged, streamed both ways, counted by outcome.
pub(crate) async fn passthrough(State(inner): State<Arc<Inner>>, req: Request) -> Response {
    let limit = inner.config.max_body_bytes;
    let declared = match declared_length(&req, limit) {
        Ok(d) => d,
        Err(e) => return refuse_passthrough(e),
    };
    let url = format!("{}{}", inner.config.decoder, path_and_query(&req));
    let (parts, body) = req.into_parts();
    let mut headers = upstream::forward_headers(&parts.headers);
    if let Some(n) = declared {
        headers.insert(http::header::CONTENT_LENGTH, HeaderValue::from(n));
    }
    // A body without a declared length is cut (and the upstream call fails) past the limit.
    let body = Body::new(Limited::new(body, limit));
    let Some(up) = upstream::request(parts.method, &url, headers, body) else {
        return refuse_passthrough(ProxyError::BadRequest {
            reason: "invalid request path".into(),
        });
    };
    match tokio::time::timeout(inner.config.decode_timeout, inner.decoder.request(up)).await {
        Ok(Ok(resp)) => {
            let (parts, body) = resp.into_parts();
            let outcome = if parts.status.is_server_error() {
                "engine_error"
            } else {
                "ok"
            };
            let mut out = Response::new(Body::new(crate::observed::Observed::new(body, outcome)));
            *out.status_mut() = parts.status;
            *out.headers_mut() = upstream::relay_headers(&parts.headers);
            out
        }
        Ok(Err(e)) => {
            let e = if is_length_limit(&e) {
                ProxyError::TooLarge { limit }
            } else if e.is_connect() {
                ProxyError::DecodeUnavailable
            } else {
                ProxyError::DecodeFailed {
                    reason: crate::error::chain(&e),
                }
            };
            refuse_passthrough(e)
        }
        Err(_) => refuse_passthrough(ProxyError::DecodeTimeout),
    }
}

/// A pass-through request the proxy answers itself.
fn refuse_passthrough(e: ProxyError) -> Response {
    e.count();
    e.log("");
    crate::observed::count_passthrough(e.outcome());
    e.into_response()
}

/// The prefill target the EPP named, when it named one.
fn prefill_header(req: &Request) -> Option<String> {
    req.headers()
        .get(PREFILLER_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
}

/// Completions, chat, messages, responses and generate: P/D when the EPP named a prefill pod,
/// else pass-through.
async fn disaggregated(State(inner): State<Arc<Inner>>, req: Request) -> Response {
    let started = Instant::now();
    let Some(target) = prefill_header(&req) else {
        return passthrough(State(inner), req).await;
    };
    let timing_comment = req
        .headers()
        .get(TIMING_REQUEST_HEADER)
        .is_some_and(|v| !v.is_empty() && v.as_bytes() != b"0");
    let request_id = uuid::Uuid::new_v4().to_string();
    let span = tracing::info_span!(
        spans::PD_PROXY_REQUEST,
        otel.kind = "server",
        service.name = tracing::field::Empty,
        llm_d.pd_proxy.connector = inner.config.connector.name(),
        llm_d.pd_proxy.request_path = req.uri().path(),
        llm_d.pd_proxy.prefill_target = tracing::field::Empty,
        llm_d.pd_proxy.request_id = request_id.as_str(),
        llm_d.pd_proxy.true_ttft_ms = tracing::field::Empty,
        llm_d.pd_proxy.decode_ttft_ms = tracing::field::Empty,
        llm_d.pd_proxy.coordinator_overhead_ms = tracing::field::Empty,
        llm_d.pd_proxy.coordinator_to_first_token_ms = tracing::field::Empty,
        llm_d.pd_proxy.prefill_duration_ms = tracing::field::Empty,
        llm_d.pd_proxy.decode_duration_ms = tracing::field::Empty,
        llm_d.pd_proxy.total_duration_ms = tracing::field::Empty,
        llm_d.pd_proxy.cached_tokens = tracing::field::Empty,
        llm_d.pd_proxy.ttft_observed = tracing::field::Empty,
        outcome = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    );
    name_service(&span, &inner);
    llmd_telemetry::propagation::set_parent(
        &span,
        llmd_telemetry::propagation::extract_from_headers(req.headers()),
    );
    let mut cx = Exchange::new(inner.config.connector.name(), request_id, started, span);
    let answered = phases(&inner, &mut cx, req, &target).await;
    match answered {
        Ok(Answered::Now(response)) => {
            cx.finish("ok");
            response
        }
        Ok(Answered::Stream(answer, cached)) => {
            decode::relay_stream(&inner, *answer, cx, cached, timing_comment)
        }
        Err(e) => fail(cx, e),
    }
}

/// How the phases ended.
enum Answered {
    /// A complete answer (assembled or JSON).
    Now(Response),
    /// A stream to relay (the decode answer, read up to its first token; the cached tokens).
    Stream(Box<decode::Answer>, u64),
}

/// The phases of a P/D request, in order.
async fn phases(
    inner: &Inner,
    cx: &mut Exchange,
    req: Request,
    target: &str,
) -> Result<Answered, ProxyError> {
    // Check the target: only endpoints the proxy was told to trust are called.
    let target = match inner.config.allow.check(target) {
        Ok(t) => t,
        Err(TargetError::Denied(target)) => return Err(ProxyError::Denied { target }),
        Err(e @ TargetError::Malformed(_)) => {
            return Err(ProxyError::BadRequest {
                reason: e.to_string(),
            });
        }
    };
    cx.span.record(attrs::PD_PREFILL_TARGET, target.as_str());
    // Parse.
    let limit = inner.config.max_body_bytes;
    declared_length(&req, limit)?;
    let path = path_and_query(&req);
    let api = nixl::ApiType::of_path(req.uri().path()).unwrap_or(nixl::ApiType::ChatCompletions);
    let assembled = Api::of_path(req.uri().path());
    let headers = upstream::forward_headers(req.headers());
    let body = axum::body::to_bytes(req.into_body(), limit)
        .await
        .map_err(|e| {
            if is_length_limit(&e) {
                ProxyError::TooLarge { limit }
            } else {
                ProxyError::ClientBody {
                    reason: crate::error::chain(&e),
                }
            }
        })?;
    let client: Map<String, Value> = match serde_json::from_slice(&body) {
        Ok(Value::Object(m)) => m,
        Ok(_) => {
            return Err(ProxyError::BadRequest {
                reason: "invalid JSON: the body must be an object".into(),
            });
        }
        Err(e) => {
            return Err(ProxyError::BadRequest {
                reason: format!("invalid JSON: {e}"),
            });
        }
    };
    let client_streams = client.get("stream").and_then(Value::as_bool) == Some(true);
    // Prefill leg.
    let prefilled = prefill::run(inner, cx, &target, &path, api, &client, &headers).await?;
    cx.span.record(
        "llm_d.pd_proxy.cached_tokens",
        i64::try_from(prefilled.cached_tokens).unwrap_or(i64::MAX),
    );
    // Decode leg: streamed from the engine whenever the answer can be assembled, so that the
    // first token is seen when it is generated.
    let assemble = match assembled {
        Some(api) if !client_streams && assemble::can_stream(&client) => Some(api),
        _ => None,
    };
    let mut decode_body = nixl::decode_body(&client, prefilled.kv_transfer_params);
    if let Some(api) = assemble {
        assemble::streamed_body(api, &mut decode_body);
    }
    let mut answer = decode::send(inner, cx, &path, decode_body, headers, client_streams).await?;
    let cached = prefilled.cached_tokens;
    if !answer.is_sse {
        return decode::relay_json(inner, cx, answer, cached)
            .await
            .map(Answered::Now);
    }
    // First token.
    decode::first_token(inner, cx, &mut answer).await?;
    // Relay.
    match assemble {
        Some(api) => decode::assemble_rest(inner, cx, answer, api, cached)
            .await
            .map(Answered::Now),
        None => Ok(Answered::Stream(Box::new(answer), cached)),
    }
}

/// The one place a failed P/D request is counted, logged, recorded and answered.
fn fail(mut cx: Exchange, e: ProxyError) -> Response {
    e.count();
    e.log(&cx.request_id);
    cx.span.record("otel.status_code", "ERROR");
    cx.finish(e.outcome());
    e.into_response()
}

/// Registers the error series at zero.
pub(crate) fn register_zero() {
    for stage in Stage::ALL {
        metrics::counter!(m::ERRORS_TOTAL.name, "stage" => stage.as_str()).increment(0);
    }
    crate::observed::register_zero();
}
