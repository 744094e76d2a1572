//! The one place a failure is counted (`llmd_gateway_errors_total{reason}`), logged once with
//! the request id, and, when the client can still be answered, turned into a status and an
//! OpenAI-style error body.

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use llmd_telemetry::names::gateway as m;
use llmd_wire::error_body::OpenAiError;

/// Why a request could not be served normally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    /// The request body is over `--max-body-bytes` (413).
    BodyTooLarge,
    /// The request body could not be read (400).
    BodyUnreadable,
    /// The EPP could not be reached, failed or was silent in the request phase (503, or
    /// forwarded with `--fail-open`).
    EppUnavailable,
    /// The EPP failed while a response was relayed; the rest passed through untouched.
    EppResponsePhase,
    /// The EPP ended a response it had started (an `ImmediateResponse` after the headers).
    EppCut,
    /// The EPP named no destination (503).
    NoDestination,
    /// No destination accepted a connection (503).
    UpstreamUnreachable,
    /// The destination sent no response headers in time (504).
    UpstreamTimeout,
    /// The destination failed before its response headers (502).
    UpstreamError,
    /// The destination failed mid-response: the client's stream was cut.
    UpstreamCut,
}

impl Reason {
    /// The `reason` label.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::BodyTooLarge => "body_too_large",
            Self::BodyUnreadable => "body_unreadable",
            Self::EppUnavailable => "epp_unavailable",
            Self::EppResponsePhase => "epp_response_phase",
            Self::EppCut => "epp_cut",
            Self::NoDestination => "no_destination",
            Self::UpstreamUnreachable => "upstream_unreachable",
            Self::UpstreamTimeout => "upstream_timeout",
            Self::UpstreamError => "upstream_error",
            Self::UpstreamCut => "upstream_cut",
        }
    }

    /// The status a client is answered with, for failures that happen before the response.
    pub(crate) fn status(self) -> StatusCode {
        match self {
            Self::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BodyUnreadable => StatusCode::BAD_REQUEST,
            Self::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Self::UpstreamError => StatusCode::BAD_GATEWAY,
            Self::EppUnavailable | Self::NoDestination | Self::UpstreamUnreachable => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::EppResponsePhase | Self::EppCut | Self::UpstreamCut => StatusCode::BAD_GATEWAY,
        }
    }
}

/// Counts a failure and logs it once.
pub(crate) fn record(request_id: &str, reason: Reason, detail: &str) {
    metrics::counter!(m::ERRORS_TOTAL.name, "reason" => reason.label()).increment(1);
    tracing::warn!(
        request_id,
        reason = reason.label(),
        detail,
        "request failed"
    );
}

/// Counts a failure, logs it once, and builds the client's answer.
pub(crate) fn respond(request_id: &str, reason: Reason, message: &str) -> Response {
    record(request_id, reason, message);
    let status = reason.status();
    let mut out = Response::new(Body::from(
        OpenAiError::for_status(status, message).to_vec(),
    ));
    *out.status_mut() = status;
    out.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    out
}
