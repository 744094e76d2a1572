//! The listener: HTTP/1.1 and h2 (h2c by prior knowledge, or h2 by ALPN over TLS) served by
//! hyper, each connection on its own task. A connection must send a request's head within the
//! header-read timeout (which also closes idle keep-alive connections), TLS handshakes within
//! [`HANDSHAKE_TIMEOUT`]; on shutdown the listener stops accepting and open connections are
//! drained for up to [`DRAIN`].

use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::error::{Stage, count_error};

/// A TLS handshake that takes longer than this is dropped (a slow or silent client).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long open connections may finish after shutdown.
pub const DRAIN: Duration = Duration::from_secs(30);

/// Serves `app` on `listener` (over TLS when `tls` is given) until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    app: axum::Router,
    header_read_timeout: Duration,
    shutdown: CancellationToken,
) -> Result<(), std::io::Error> {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http = auto::Builder::new(TokioExecutor::new());
    http.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    http.http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(30)));
    loop {
        let tcp = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(error) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Nagle's algorithm would hold a streamed chunk until the client's delayed ACK (~40 ms).
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY");
        }
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let http = http.clone();
        let watcher = graceful.watcher();
        let tls = tls.clone();
        tokio::spawn(async move {
            let served = match tls {
                None => {
                    let conn = http.serve_connection_with_upgrades(TokioIo::new(tcp), service);
                    watcher.watch(conn.into_owned()).await
                }
                Some(acceptor) => {
                    let stream =
                        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                            Ok(Ok(stream)) => stream,
                            Ok(Err(error)) => {
                                count_error(Stage::Client);
                                tracing::debug!(%error, "TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                count_error(Stage::Client);
                                tracing::debug!("TLS handshake timed out");
                                return;
                            }
                        };
                    let conn = http.serve_connection_with_upgrades(TokioIo::new(stream), service);
                    watcher.watch(conn.into_owned()).await
                }
            };
            if let Err(error) = served {
                tracing::debug!(%error, "connection ended with an error");
            }
        });
    }
    if tokio::time::timeout(DRAIN, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the drain period; closing them");
    }
    Ok(())
}
