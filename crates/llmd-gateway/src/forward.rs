//! Upstream forwarding: the request goes to the first destination in
//! `x-gateway-destination-endpoint` that accepts a connection, falling back down the
//! comma-separated list (Envoy's `ORIGINAL_DST` cluster takes only the first entry).

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, Uri};
use axum::response::Response;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use llmd_wire::error_chain::chain;
use llmd_wire::headers::DESTINATION_HEADER;

use crate::config::Config;
use crate::failure::{self, Reason};

/// Pooled HTTP/1.1 connections to the destinations.
pub(crate) type Upstream = Client<HttpConnector, Body>;

/// The upstream client: idle connections are closed after `--upstream-idle-timeout-ms` (the
/// pool needs a timer for that, or it never reaps them).
pub(crate) fn client(config: &Config) -> Upstream {
    let mut tcp = HttpConnector::new();
    tcp.set_nodelay(true);
    tcp.set_connect_timeout(Some(config.connect_timeout));
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(1024)
        .pool_idle_timeout(config.upstream_idle_timeout)
        .pool_timer(TokioTimer::new())
        .build(tcp)
}

/// The destinations the EPP named, in order.
pub(crate) fn destinations(headers: &HeaderMap) -> Vec<String> {
    headers
        .get(DESTINATION_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// What forwarding gave.
pub(crate) enum Forwarded {
    /// A destination answered with headers.
    Answered(http::Response<Incoming>, String),
    /// No answer: the client's error response, and the destination that failed (if one did).
    Failed(Response, Option<String>),
}

/// One request to forward.
pub(crate) struct Outgoing<'a> {
    pub method: &'a Method,
    pub path: &'a str,
    pub headers: &'a HeaderMap,
    pub body: &'a Bytes,
}

/// Sends the request to the first destination that takes it.
pub(crate) async fn forward(
    upstream: &Upstream,
    response_timeout: Duration,
    request: &Outgoing<'_>,
    request_id: &str,
) -> Forwarded {
    let destinations = destinations(request.headers);
    if destinations.is_empty() {
        return Forwarded::Failed(
            failure::respond(
                request_id,
                Reason::NoDestination,
                "the endpoint picker named no destination",
            ),
            None,
        );
    }
    let mut last_error = String::new();
    for dest in destinations {
        let Ok(uri) = format!("http://{dest}{}", request.path).parse::<Uri>() else {
            last_error = format!("invalid destination {dest:?}");
            continue;
        };
        let mut up = http::Request::new(Body::from(request.body.clone()));
        *up.method_mut() = request.method.clone();
        *up.uri_mut() = uri;
        *up.headers_mut() = request.headers.clone();
        match tokio::time::timeout(response_timeout, upstream.request(up)).await {
            Ok(Ok(resp)) => return Forwarded::Answered(resp, dest),
            Ok(Err(e)) if e.is_connect() => {
                tracing::debug!(request_id, dest, error = %chain(&e), "destination refused; trying the next");
                last_error = format!("{dest}: {}", chain(&e));
            }
            Ok(Err(e)) => {
                let message = format!("{dest}: {}", chain(&e));
                return Forwarded::Failed(
                    failure::respond(request_id, Reason::UpstreamError, &message),
                    Some(dest),
                );
            }
            Err(_) => {
                let message =
                    format!("{dest} sent no response headers within {response_timeout:?}");
                return Forwarded::Failed(
                    failure::respond(request_id, Reason::UpstreamTimeout, &message),
                    Some(dest),
                );
            }
        }
    }
    Forwarded::Failed(
        failure::respond(
            request_id,
            Reason::UpstreamUnreachable,
            &format!("no destination accepted the request: {last_error}"),
        ),
        None,
    )
}
