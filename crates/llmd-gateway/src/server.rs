//! The listener: accepts connections and serves each on its own task (HTTP/1.1, or HTTP/2 with
//! prior knowledge), with the timeouts that keep slow or idle clients from holding sockets:
//! - `--header-read-timeout-ms`: a connection must send a request's headers within this long
//!   of being ready for one (hyper's HTTP/1 header timer, which also runs while a keep-alive
//!   connection waits for its next request; and, for any connection, the time from accept to
//!   its first request);
//! - `--idle-timeout-ms`: a connection with no request in flight for this long is closed
//!   gracefully (HTTP/2: GOAWAY).
//!
//! Requests in flight are counted per connection (a request is in flight until its response
//! body has ended, [`InFlight`]), which is what "idle" means.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use llmd_telemetry::names::gateway as m;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::Gateway;

/// One request in flight on a connection; dropped when its response has ended.
pub(crate) struct InFlight {
    connection: Arc<watch::Sender<usize>>,
}

impl InFlight {
    fn new(connection: Arc<watch::Sender<usize>>) -> Self {
        connection.send_modify(|n| *n += 1);
        metrics::gauge!(m::IN_FLIGHT_REQUESTS.name).increment(1.0);
        Self { connection }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.connection.send_modify(|n| *n = n.saturating_sub(1));
        metrics::gauge!(m::IN_FLIGHT_REQUESTS.name).decrement(1.0);
    }
}

/// An open client connection (the gauge).
struct Open;

impl Open {
    fn new() -> Self {
        metrics::gauge!(m::OPEN_CONNECTIONS.name).increment(1.0);
        Self
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        metrics::gauge!(m::OPEN_CONNECTIONS.name).decrement(1.0);
    }
}

/// Accepts connections until `shutdown`; each is served on its own task.
pub(crate) async fn serve(listener: TcpListener, g: Arc<Gateway>, shutdown: CancellationToken) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(g.config.header_read_timeout);
    builder.http2().timer(TokioTimer::new());
    let builder = Arc::new(builder);
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((tcp, peer)) => {
                let _ = tcp.set_nodelay(true);
                tokio::spawn(connection(
                    builder.clone(),
                    tcp,
                    peer,
                    g.clone(),
                    shutdown.clone(),
                ));
            }
            Err(error) => {
                // Out of file descriptors, mostly: keep serving the connections we have.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    tracing::info!("llmd-gateway stopped accepting connections");
}

/// Serves one connection until it closes, is idle too long, or the gateway shuts down.
async fn connection(
    builder: Arc<auto::Builder<TokioExecutor>>,
    tcp: TcpStream,
    peer: SocketAddr,
    g: Arc<Gateway>,
    shutdown: CancellationToken,
) {
    let _open = Open::new();
    let (in_flight, mut requests) = watch::channel(0usize);
    let in_flight = Arc::new(in_flight);
    let (header_timeout, idle_timeout) = (g.config.header_read_timeout, g.config.idle_timeout);
    let service = service_fn(move |req| {
        let g = g.clone();
        let request = InFlight::new(in_flight.clone());
        async move { Ok::<_, Infallible>(crate::request::handle(g, req, request).await) }
    });
    let conn = builder.serve_connection(TokioIo::new(tcp), service);
    tokio::pin!(conn);
    let mut closing = false;
    // After an idle close began: an HTTP/2 client must answer the GOAWAY's PING before the
    // connection closes gracefully; one that does not is dropped at this deadline.
    let mut drop_at: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(error) = result {
                    let timed_out = llmd_wire::error_chain::find::<hyper::Error>(&*error)
                        .is_some_and(hyper::Error::is_timeout);
                    if timed_out {
                        // Counted once: the idle watcher may have closed it for this already.
                        if !closing {
                            closed(peer, "header_read_timeout");
                        }
                    } else {
                        tracing::debug!(%peer, error = %llmd_wire::error_chain::chain(&*error), "client connection failed");
                    }
                }
                break;
            }
            () = shutdown.cancelled(), if !closing => {
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
            reason = idle(&mut requests, header_timeout, idle_timeout), if !closing => {
                closed(peer, reason);
                conn.as_mut().graceful_shutdown();
                closing = true;
                drop_at = Some(tokio::time::Instant::now() + header_timeout);
            }
            () = tokio::time::sleep_until(drop_at.unwrap_or_else(tokio::time::Instant::now)),
                if drop_at.is_some() => {
                if *requests.borrow() == 0 {
                    break;
                }
                // A request came in before the GOAWAY reached the client: let it finish.
                drop_at = None;
            }
        }
    }
}

fn closed(peer: SocketAddr, reason: &'static str) {
    metrics::counter!(m::CONNECTIONS_CLOSED_TOTAL.name, "reason" => reason).increment(1);
    tracing::debug!(%peer, reason, "closing a client connection");
}

/// Resolves when the connection has had no request in flight for too long: the header-read
/// timeout before its first request, the idle timeout after.
async fn idle(
    requests: &mut watch::Receiver<usize>,
    header_timeout: Duration,
    idle_timeout: Duration,
) -> &'static str {
    let mut seen_a_request = false;
    loop {
        if *requests.borrow_and_update() > 0 {
            seen_a_request = true;
            if requests.changed().await.is_err() {
                return std::future::pending().await;
            }
            continue;
        }
        let (limit, reason) = if seen_a_request {
            (idle_timeout, "idle_timeout")
        } else {
            (header_timeout, "header_read_timeout")
        };
        match tokio::time::timeout(limit, requests.changed()).await {
            Err(_) => return reason,
            Ok(Err(_)) => return std::future::pending().await,
            Ok(Ok(())) => {}
        }
    }
}
