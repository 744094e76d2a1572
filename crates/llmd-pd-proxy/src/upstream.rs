//! The two upstream clients (prefill pods, the local decode engine), the headers forwarded to
//! them and relayed back.

use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, Method, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::proxy::{Config, PREFILLER_HEADER, TIMING_REQUEST_HEADER};
use crate::tls::TlsError;

/// A pooled hyper client for one leg: plain HTTP, or HTTPS when the URL says so.
pub type Upstream = Client<hyper_rustls::HttpsConnector<HttpConnector>, Body>;

/// Idle pooled connections are closed after this long (reaped by the pool's timer).
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// A client for one leg.
pub fn client(
    config: &Config,
    tls: Option<&rustls::ClientConfig>,
    h2_only: bool,
) -> Result<Upstream, TlsError> {
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
        .pool_max_idle_per_host(config.max_idle_per_host)
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        // Without a timer the idle timeout is never checked and idle connections pile up.
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .http2_only(h2_only)
        .build(connector))
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) and the ones the proxy sets itself.
const NOT_FORWARDED: &[&str] = &[
    "host",
    "content-length",
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "proxy-connection",
    "proxy-authorization",
    PREFILLER_HEADER,
    TIMING_REQUEST_HEADER,
];

/// Headers forwarded upstream: the client's minus hop-by-hop, length, host and the prefill
/// header.
pub fn forward_headers(client: &HeaderMap) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in client {
        if !NOT_FORWARDED.contains(&k.as_str()) {
            h.append(k.clone(), v.clone());
        }
    }
    h
}

/// Response headers relayed to the client (hop-by-hop and length dropped: the body may change).
pub fn relay_headers(upstream: &HeaderMap) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in upstream {
        match k.as_str() {
            "content-length" | "connection" | "keep-alive" | "transfer-encoding" | "trailer"
            | "upgrade" => {}
            _ => {
                h.append(k.clone(), v.clone());
            }
        }
    }
    h
}

/// An upstream request; `None` when `url` is not a valid URI.
pub fn request(
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
