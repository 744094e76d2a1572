//! The end of a request: one access line (log target `access`), `llmd_gateway_requests_total`,
//! and the end of the `gateway.request` span, all when the response body has ended, with how
//! it really ended:
//!
//! | outcome | when |
//! |---|---|
//! | `ok` | the whole body was handed to the connection |
//! | `cut` | the body failed (the upstream or the EPP failed mid-response); the client was sent an error: an HTTP/1.1 chunked body without its last chunk, or an HTTP/2 `RST_STREAM` |
//! | `client_gone` | the client left before the end (also before the response started: status 0) |
//!
//! [`Tracked`] wraps the response body to see that end. When the body fails, it holds the
//! error for one poll so that the data before it is flushed to the client first.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::http::{Method, StatusCode};
use axum::response::Response;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use llmd_telemetry::names::{attrs, gateway as m};

use crate::server::InFlight;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How a response ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Ok,
    Cut,
    ClientGone,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Cut => "cut",
            Self::ClientGone => "client_gone",
        }
    }
}

/// What the end of a request records; it records once, at the latest when dropped.
pub(crate) struct Finish {
    request_id: Arc<str>,
    method: Method,
    path: String,
    started: Instant,
    /// The endpoint the request went to, once known.
    pub(crate) destination: Option<String>,
    status: Option<StatusCode>,
    bytes: u64,
    /// The `gateway.request` span: it ends when this is dropped.
    span: Option<tracing::Span>,
    _in_flight: InFlight,
}

impl Finish {
    pub(crate) fn new(
        request_id: Arc<str>,
        method: Method,
        path: String,
        started: Instant,
        span: tracing::Span,
        in_flight: InFlight,
    ) -> Self {
        Self {
            request_id,
            method,
            path,
            started,
            destination: None,
            status: None,
            bytes: 0,
            span: Some(span),
            _in_flight: in_flight,
        }
    }

    fn end(&mut self, outcome: Outcome) {
        let Some(span) = self.span.take() else {
            return;
        };
        // tracing-opentelemetry (0.34) ends the OpenTelemetry span at its last exit, not when it
        // closes: entering it here is what makes it end with the response.
        let entered = span.enter();
        let status = self.status.map_or(0, |s| s.as_u16());
        let destination = self.destination.as_deref().unwrap_or("-");
        // Span attributes as i64: tracing-opentelemetry exports unsigned integers as strings.
        span.record(attrs::HTTP_RESPONSE_STATUS_CODE, i64::from(status));
        span.record(
            attrs::GATEWAY_RESPONSE_BYTES,
            i64::try_from(self.bytes).unwrap_or(i64::MAX),
        );
        span.record(attrs::GATEWAY_OUTCOME, outcome.label());
        if self.destination.is_some() {
            span.record(attrs::GATEWAY_DESTINATION, destination);
        }
        tracing::info!(
            target: "access",
            request_id = &*self.request_id,
            method = %self.method,
            path = self.path,
            status,
            destination,
            bytes = self.bytes,
            ms = self.started.elapsed().as_secs_f64() * 1e3,
            outcome = outcome.label(),
        );
        metrics::counter!(
            m::REQUESTS_TOTAL.name,
            "code" => status.to_string(),
            "outcome" => outcome.label(),
        )
        .increment(1);
        drop(entered);
        drop(span);
    }
}

impl Drop for Finish {
    fn drop(&mut self) {
        // Dropped before a response existed: the client left during the request phase.
        self.end(Outcome::ClientGone);
    }
}

/// A response body whose end is recorded by its [`Finish`].
pub(crate) struct Tracked {
    inner: Body,
    finish: Finish,
    /// An error of the inner body, sent on the next poll (after the data before it is flushed).
    held_error: Option<BoxError>,
}

/// Wraps `response`'s body so that its end is recorded.
pub(crate) fn track(response: Response, mut finish: Finish) -> Response {
    let (parts, inner) = response.into_parts();
    finish.status = Some(parts.status);
    let tracked = Tracked {
        inner,
        finish,
        held_error: None,
    };
    Response::from_parts(parts, Body::new(tracked))
}

impl HttpBody for Tracked {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Some(error) = this.held_error.take() {
            this.finish.end(Outcome::Cut);
            return Poll::Ready(Some(Err(error)));
        }
        if this.finish.span.is_none() {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.finish.bytes += data.len() as u64;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => {
                // Let the connection flush what it holds, then fail the body.
                this.held_error = Some(Box::new(error));
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            Poll::Ready(None) => {
                this.finish.end(Outcome::Ok);
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.held_error.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        let outcome = if self.held_error.is_some() {
            Outcome::Cut
        } else if self.inner.is_end_stream() {
            Outcome::Ok
        } else {
            Outcome::ClientGone
        };
        self.finish.end(outcome);
    }
}
