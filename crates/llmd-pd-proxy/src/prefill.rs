//! The prefill leg: the client's request, with nixlv2's placeholder `kv_transfer_params`, no
//! streaming and one output token, on the prefill pod the EPP named; retried on 502/503/504 or
//! an unreachable pod (`--prefill-max-retries`), the whole leg bounded by
//! `--prefill-timeout-ms`. Its answer's `kv_transfer_params` go to the decode leg.

use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method};
use http_body_util::{BodyExt, Limited};
use llmd_telemetry::names::spans;
use serde_json::{Map, Value};

use crate::context::Exchange;
use crate::error::{ProxyError, Relayed, chain};
use crate::nixl;
use crate::proxy::Inner;
use crate::upstream::{self, Upstream};

/// What the decode leg needs from the prefill.
#[derive(Debug)]
pub struct Prefilled {
    /// The prefill's `kv_transfer_params` (`null` when it returned none: decode recomputes).
    pub kv_transfer_params: Value,
    /// The prefill's `cached_tokens` (reported to the client as the request's cache hits).
    pub cached_tokens: u64,
}

/// Runs the prefill leg on `target` (already checked against the allowlist).
pub async fn run(
    inner: &Inner,
    cx: &mut Exchange,
    target: &str,
    path: &str,
    api: nixl::ApiType,
    client: &Map<String, Value>,
    headers: &HeaderMap,
) -> Result<Prefilled, ProxyError> {
    let body =
        serde_json::to_vec(&nixl::prefill_body(client, api)).map_err(|e| ProxyError::Internal {
            reason: format!("serialising the prefill body: {e}"),
        })?;
    let span = tracing::info_span!(
        parent: &cx.span,
        spans::PD_PROXY_PREFILL,
        otel.kind = "client",
        service.name = tracing::field::Empty,
        llm_d.pd_proxy.prefill_target = target,
        http.response.status_code = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    );
    crate::proxy::name_service(&span, inner);
    let mut headers = headers.clone();
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
    let url = format!("{}://{target}{path}", inner.prefill_scheme);
    let body = Bytes::from(body);
    let started = Instant::now();
    let config = &inner.config;
    let mut attempt = 0;
    let answer = loop {
        let Some(req) = upstream::request(
            Method::POST,
            &url,
            headers.clone(),
            Body::from(body.clone()),
        ) else {
            return Err(ProxyError::BadRequest {
                reason: format!("prefill target {target:?} does not make a valid URL"),
            });
        };
        let sent = tokio::time::timeout(
            config.prefill_timeout,
            call(&inner.prefill, req, config.max_body_bytes),
        )
        .await
        .unwrap_or(Err(Attempt::Timeout));
        let retryable = match &sent {
            Ok((parts, _)) => matches!(parts.status.as_u16(), 502..=504),
            Err(e) => !matches!(e, Attempt::Timeout),
        };
        if retryable && attempt < config.prefill_max_retries {
            attempt += 1;
            tokio::time::sleep(config.prefill_retry_backoff).await;
            continue;
        }
        break sent;
    };
    cx.prefill = started.elapsed();
    let (parts, bytes) = match answer {
        Ok(p) => p,
        Err(e) => {
            span.record("otel.status_code", "ERROR");
            return Err(match e {
                Attempt::Timeout => ProxyError::PrefillTimeout {
                    target: target.to_owned(),
                    timeout_ms: config.prefill_timeout.as_millis() as u64,
                },
                Attempt::Failed(reason) => ProxyError::PrefillFailed {
                    target: target.to_owned(),
                    reason,
                },
            });
        }
    };
    span.record(
        "http.response.status_code",
        i64::from(parts.status.as_u16()),
    );
    if !parts.status.is_success() {
        span.record("otel.status_code", "ERROR");
        return Err(ProxyError::PrefillStatus {
            target: target.to_owned(),
            answer: Box::new(Relayed {
                status: parts.status,
                headers: upstream::relay_headers(&parts.headers),
                body: bytes,
            }),
        });
    }
    let answer: Value = match serde_json::from_slice(&bytes) {
        Ok(v @ Value::Object(_)) => v,
        _ => {
            span.record("otel.status_code", "ERROR");
            return Err(ProxyError::PrefillInvalid {
                target: target.to_owned(),
            });
        }
    };
    let kv_transfer_params = answer
        .get("kv_transfer_params")
        .cloned()
        .unwrap_or(Value::Null);
    if kv_transfer_params.is_null() {
        tracing::warn!(
            request_id = cx.request_id,
            target,
            "prefill returned no kv_transfer_params: decode recomputes the prompt"
        );
    }
    Ok(Prefilled {
        kv_transfer_params,
        cached_tokens: nixl::cached_tokens(&answer),
    })
}

/// Why one prefill attempt failed.
enum Attempt {
    Timeout,
    Failed(String),
}

/// One prefill attempt: the answer's head and its whole (bounded) body.
async fn call(
    client: &Upstream,
    req: http::Request<Body>,
    limit: usize,
) -> Result<(http::response::Parts, Bytes), Attempt> {
    let resp = client
        .request(req)
        .await
        .map_err(|e| Attempt::Failed(chain(&e)))?;
    let (parts, body) = resp.into_parts();
    let bytes = Limited::new(body, limit)
        .collect()
        .await
        .map_err(|e| Attempt::Failed(format!("reading the answer: {e}")))?
        .to_bytes();
    Ok((parts, bytes))
}
