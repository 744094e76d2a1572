//! One request, phase by phase: read the body, ask the EPP ([`crate::exchange`]), forward
//! ([`crate::forward`]), relay the response ([`crate::relay`]); its end is recorded by
//! [`crate::access`].

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderValue, Method, header};
use axum::response::Response;
use http_body_util::{BodyExt, Limited};
use hyper::body::{Body as _, Incoming};
use llmd_telemetry::names::spans;
use llmd_wire::error_chain::{chain, find};
use llmd_wire::ext_proc::RequestHead;
use llmd_wire::headers::{REQUEST_ID_HEADER, strip_hop_by_hop};
use tracing::Instrument;

use crate::Gateway;
use crate::access::{self, Finish};
use crate::exchange::{self, Decision};
use crate::failure::{self, Reason};
use crate::forward::{self, Forwarded, Outgoing};
use crate::relay;
use crate::server::InFlight;

/// Serves one request.
pub(crate) async fn handle(
    g: Arc<Gateway>,
    req: http::Request<Incoming>,
    in_flight: InFlight,
) -> Response {
    let started = Instant::now();
    // As Envoy does: the client's request id, or a new one; the EPP and the upstream get it.
    let request_id: Arc<str> = req
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .map_or_else(|| uuid::Uuid::new_v4().to_string().into(), Into::into);
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
        llmd.gateway.outcome = tracing::field::Empty,
        llmd.gateway.response_bytes = tracing::field::Empty,
        llmd.gateway.request_id = &*request_id,
        service.name = tracing::field::Empty,
    );
    if let Some(name) = &g.config.span_service_name {
        span.record(llmd_telemetry::names::services::SPAN_ATTR, name.as_str());
    }
    llmd_telemetry::propagation::set_parent(
        &span,
        llmd_telemetry::propagation::extract_from_headers(req.headers()),
    );
    let mut finish = Finish::new(
        request_id.clone(),
        method.clone(),
        path.clone(),
        started,
        span.clone(),
        in_flight,
    );
    let (response, destination) = phases(&g, req, &request_id, &method, &path)
        .instrument(span)
        .await;
    finish.destination = destination;
    access::track(response, finish)
}

/// The phases of a request; the response and the destination it went to.
async fn phases(
    g: &Gateway,
    req: http::Request<Incoming>,
    request_id: &Arc<str>,
    method: &Method,
    path: &str,
) -> (Response, Option<String>) {
    let (parts, body) = req.into_parts();
    let body = match read_body(body, g.config.max_body_bytes, request_id).await {
        Ok(b) => b,
        Err(response) => return (response, None),
    };
    let headers = upstream_headers(&parts.headers, request_id);
    let authority = parts
        .headers
        .get(header::HOST)
        .map_or(&b"llmd-gateway"[..], HeaderValue::as_bytes);
    let head = RequestHead {
        method: method.as_str(),
        path,
        authority,
        scheme: "http",
        headers: &headers,
    };
    let decision = exchange::ask(
        &g.epp,
        &head,
        body,
        g.config.fail_open_to.as_deref(),
        g.config.response_processing,
        request_id,
    )
    .await;
    let (headers, body, stream) = match decision {
        Decision::Respond(r) => return (r, None),
        Decision::Forward {
            headers,
            body,
            stream,
        } => (headers, body, stream),
    };
    let outgoing = Outgoing {
        method,
        path,
        headers: &headers,
        body: &body,
    };
    match forward::forward(
        &g.upstream,
        g.config.upstream_timeout,
        &outgoing,
        request_id,
    )
    .await
    {
        Forwarded::Answered(response, dest) => (
            relay::respond(response, stream, request_id).await,
            Some(dest),
        ),
        Forwarded::Failed(response, dest) => (response, dest),
    }
}

/// The request body, or the client's error answer: 413 over the limit (before reading any of
/// it when the length is declared), 400 when it cannot be read.
async fn read_body(body: Incoming, limit: usize, request_id: &str) -> Result<Bytes, Response> {
    let too_large = || {
        failure::respond(
            request_id,
            Reason::BodyTooLarge,
            &format!("request body over {limit} bytes"),
        )
    };
    if body.size_hint().lower() > limit as u64 {
        return Err(too_large());
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if find::<http_body_util::LengthLimitError>(&*e).is_some() => Err(too_large()),
        Err(e) => Err(failure::respond(
            request_id,
            Reason::BodyUnreadable,
            &format!("cannot read the request body: {}", chain(&*e)),
        )),
    }
}

/// The headers the EPP and the upstream get: the client's without hop-by-hop ones, length and
/// host, with the request id and the gateway's trace context.
fn upstream_headers(client: &HeaderMap, request_id: &str) -> HeaderMap {
    let mut headers = client.clone();
    strip_hop_by_hop(&mut headers);
    for h in [
        header::CONTENT_LENGTH,
        header::HOST,
        header::HeaderName::from_static("traceparent"),
        header::HeaderName::from_static("tracestate"),
    ] {
        headers.remove(h);
    }
    if let Ok(v) = HeaderValue::from_str(request_id) {
        headers.insert(REQUEST_ID_HEADER, v);
    }
    // The EPP and the upstream continue the gateway's span; with tracing off, the client's.
    llmd_telemetry::propagation::inject_span_into_headers(&tracing::Span::current(), &mut headers);
    if !headers.contains_key("traceparent")
        && let Some(tp) = client.get("traceparent")
    {
        headers.insert("traceparent", tp.clone());
    }
    headers
}
