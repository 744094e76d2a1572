//! Pass-through requests, counted with their true outcome: a body wrapper that records when the
//! engine's answer has been relayed to its end, broke on the way, or was abandoned by the client.

use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Bytes;
use http_body::{Body, Frame, SizeHint};
use llmd_telemetry::names::pd_proxy as m;

/// Every outcome label value of the pass-through counter.
pub const OUTCOMES: &[&str] = &[
    "ok",
    "engine_error",
    "stream_error",
    "cancelled",
    "bad_request",
    "decode_error",
    "internal_error",
    "denied",
    "prefill_error",
];

/// Counts one pass-through request.
pub fn count_passthrough(outcome: &'static str) {
    metrics::counter!(m::PASSTHROUGH_REQUESTS_TOTAL.name, "outcome" => outcome).increment(1);
}

/// The series at zero.
pub fn register_zero() {
    for o in ["ok", "engine_error", "stream_error", "cancelled"] {
        metrics::counter!(m::PASSTHROUGH_REQUESTS_TOTAL.name, "outcome" => o).increment(0);
    }
}

/// A relayed body that counts its request when it ends (`outcome` given at the head: `ok` or
/// `engine_error`), breaks (`stream_error`) or is dropped unfinished (`cancelled`).
#[derive(Debug)]
pub struct Observed<B> {
    inner: B,
    outcome: &'static str,
    counted: bool,
}

impl<B> Observed<B> {
    /// Wraps `inner`.
    pub fn new(inner: B, outcome: &'static str) -> Self {
        Self {
            inner,
            outcome,
            counted: false,
        }
    }

    fn count(&mut self, outcome: &'static str) {
        if !self.counted {
            self.counted = true;
            count_passthrough(outcome);
        }
    }
}

impl<B> Body for Observed<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => {
                let outcome = self.outcome;
                self.count(outcome);
            }
            Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => {
                // The last frame: hyper may not ask again.
                let outcome = self.outcome;
                self.count(outcome);
            }
            Poll::Ready(Some(Err(error))) => {
                tracing::warn!(%error, "pass-through answer broke mid-stream");
                crate::error::count_error(crate::error::Stage::Decode);
                self.count("stream_error");
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for Observed<B> {
    fn drop(&mut self) {
        self.count("cancelled");
    }
}
