//! Every way a request can fail in the proxy, and the one place where a failure becomes the
//! client's answer ([`ProxyError::into_response`]): the status, the stage it is counted under in
//! `llm_d_inference_scheduler_pd_proxy_errors_total`, the outcome it is counted under in
//! `..._requests_total`, and the body (vLLM's error JSON, or the upstream's own answer when an
//! engine answered with an error).

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The request body is over `--max-body-bytes` (declared or read).
    #[error("request body over {limit} bytes")]
    TooLarge {
        /// The limit, bytes.
        limit: usize,
    },
    /// The client's body could not be read (truncated, connection reset).
    #[error("cannot read the request body: {reason}")]
    ClientBody {
        /// What went wrong.
        reason: String,
    },
    /// Malformed request: not a JSON object, malformed prefill header, invalid path.
    #[error("{reason}")]
    BadRequest {
        /// What is wrong.
        reason: String,
    },
    /// The prefill target is not in the allowlist.
    #[error("prefill target {target} is not allowed by the proxy's allowlist")]
    Denied {
        /// The target the request named.
        target: String,
    },
    /// The prefill pod could not be reached or its answer not read.
    #[error("prefill on {target} failed: {reason}")]
    PrefillFailed {
        /// `host:port`.
        target: String,
        /// The cause, with its chain.
        reason: String,
    },
    /// The prefill leg took longer than `--prefill-timeout-ms`.
    #[error("prefill on {target} did not answer within {timeout_ms} ms")]
    PrefillTimeout {
        /// `host:port`.
        target: String,
        /// The timeout.
        timeout_ms: u64,
    },
    /// The prefill pod answered with an error status: relayed verbatim, no decode.
    #[error("prefill on {target} answered {}", .answer.status)]
    PrefillStatus {
        /// `host:port`.
        target: String,
        /// Its answer.
        answer: Box<Relayed>,
    },
    /// The prefill pod answered 2xx with something that is not a JSON object.
    #[error("the prefill response from {target} is not a JSON object")]
    PrefillInvalid {
        /// `host:port`.
        target: String,
    },
    /// The decode engine refused the connection.
    #[error(
        "The decode node is not ready. Please check that the vLLM service is running and the port configuration is correct."
    )]
    DecodeUnavailable,
    /// The decode engine failed otherwise (connection reset, bad answer, broken stream).
    #[error("decode engine: {reason}")]
    DecodeFailed {
        /// The cause.
        reason: String,
    },
    /// The decode engine sent no headers within `--decode-timeout-ms`, or its stream stayed
    /// silent for `--decode-idle-timeout-ms`.
    #[error("the decode engine did not answer in time")]
    DecodeTimeout,
    /// The decode engine answered with an error status: relayed verbatim.
    #[error("decode engine answered {}", .answer.status)]
    DecodeStatus {
        /// Its answer.
        answer: Box<Relayed>,
    },
    /// A bug or resource problem in the proxy itself.
    #[error("internal error: {reason}")]
    Internal {
        /// What happened.
        reason: String,
    },
}

/// An engine's error answer, relayed to the client as it is.
#[derive(Debug)]
pub struct Relayed {
    /// Its status.
    pub status: StatusCode,
    /// Its headers (hop-by-hop removed).
    pub headers: HeaderMap,
    /// Its body.
    pub body: Bytes,
}

/// Where an error came from: the `stage` label of the errors counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// The client's request.
    Client,
    /// The prefill leg.
    Prefill,
    /// The decode leg.
    Decode,
    /// The proxy itself.
    Proxy,
}

impl Stage {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Client => "client",
            Stage::Prefill => "prefill",
            Stage::Decode => "decode",
            Stage::Proxy => "proxy",
        }
    }

    /// Every stage (series registered at zero).
    pub const ALL: [Stage; 4] = [Stage::Client, Stage::Prefill, Stage::Decode, Stage::Proxy];
}

impl ProxyError {
    /// The status the client gets.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::ClientBody { .. } | Self::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Self::Denied { .. } => StatusCode::FORBIDDEN,
            Self::PrefillFailed { .. }
            | Self::PrefillInvalid { .. }
            | Self::DecodeFailed { .. } => StatusCode::BAD_GATEWAY,
            Self::PrefillTimeout { .. } | Self::DecodeTimeout => StatusCode::GATEWAY_TIMEOUT,
            Self::DecodeUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::PrefillStatus { answer, .. } | Self::DecodeStatus { answer } => answer.status,
            Self::Internal { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stage it is counted under.
    pub fn stage(&self) -> Stage {
        match self {
            Self::TooLarge { .. }
            | Self::ClientBody { .. }
            | Self::BadRequest { .. }
            | Self::Denied { .. } => Stage::Client,
            Self::PrefillFailed { .. }
            | Self::PrefillTimeout { .. }
            | Self::PrefillStatus { .. }
            | Self::PrefillInvalid { .. } => Stage::Prefill,
            Self::DecodeUnavailable
            | Self::DecodeFailed { .. }
            | Self::DecodeTimeout
            | Self::DecodeStatus { .. } => Stage::Decode,
            Self::Internal { .. } => Stage::Proxy,
        }
    }

    /// The `outcome` label of the requests counter.
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::Denied { .. } => "denied",
            Self::TooLarge { .. } | Self::ClientBody { .. } | Self::BadRequest { .. } => {
                "bad_request"
            }
            Self::PrefillFailed { .. }
            | Self::PrefillTimeout { .. }
            | Self::PrefillStatus { .. }
            | Self::PrefillInvalid { .. } => "prefill_error",
            Self::DecodeUnavailable
            | Self::DecodeFailed { .. }
            | Self::DecodeTimeout
            | Self::DecodeStatus { .. } => "decode_error",
            Self::Internal { .. } => "internal_error",
        }
    }

    /// vLLM's `type` for the error body.
    fn kind(&self) -> &'static str {
        match self.status() {
            StatusCode::BAD_REQUEST => "BadRequestError",
            StatusCode::FORBIDDEN => "PermissionDeniedError",
            StatusCode::PAYLOAD_TOO_LARGE => "RequestTooLargeError",
            StatusCode::BAD_GATEWAY => "BadGateway",
            StatusCode::SERVICE_UNAVAILABLE => "ServiceUnavailable",
            StatusCode::GATEWAY_TIMEOUT => "GatewayTimeout",
            _ => "InternalServerError",
        }
    }

    /// Counts it under its stage. [`crate::context::Exchange`] counts the request's outcome.
    pub fn count(&self) {
        count_error(self.stage());
    }

    /// Logs it once, at a level by who is at fault.
    pub fn log(&self, request_id: &str) {
        let status = self.status().as_u16();
        let stage = self.stage().as_str();
        match self.stage() {
            Stage::Client => {
                tracing::info!(request_id, stage, status, error = %self, "request refused")
            }
            _ => tracing::warn!(request_id, stage, status, error = %self, "request failed"),
        }
    }

    /// The client's answer.
    pub fn into_response(self) -> Response {
        let status = self.status();
        match self {
            Self::PrefillStatus { answer, .. } | Self::DecodeStatus { answer } => {
                let Relayed {
                    status,
                    headers,
                    body,
                } = *answer;
                let mut out = Response::new(Body::from(body));
                *out.status_mut() = status;
                *out.headers_mut() = headers;
                out
            }
            other => vllm_error(status, other.kind(), &other.to_string()),
        }
    }
}

/// Counts one error under `stage`.
pub fn count_error(stage: Stage) {
    metrics::counter!(llmd_telemetry::names::pd_proxy::ERRORS_TOTAL.name, "stage" => stage.as_str())
        .increment(1);
}

/// vLLM's error body (llm-d's sidecar uses this shape, `param` as an empty string).
pub fn vllm_error(status: StatusCode, kind: &str, message: &str) -> Response {
    let body = llmd_wire::error_body::VllmError::new(status, kind, message).with_param("");
    let mut out = Response::new(Body::from(body.to_vec()));
    *out.status_mut() = status;
    out.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    out
}

/// The full error chain, for messages.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        text.push_str(": ");
        text.push_str(&s.to_string());
        src = s.source();
    }
    text
}

/// True when `e` (or a cause) is the body-limit error.
pub fn is_length_limit(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = src {
        if s.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        src = s.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_stages_and_outcomes() {
        let cases = [
            (
                ProxyError::TooLarge { limit: 1 },
                413,
                "client",
                "bad_request",
            ),
            (
                ProxyError::ClientBody { reason: "x".into() },
                400,
                "client",
                "bad_request",
            ),
            (
                ProxyError::Denied { target: "x".into() },
                403,
                "client",
                "denied",
            ),
            (
                ProxyError::PrefillInvalid { target: "x".into() },
                502,
                "prefill",
                "prefill_error",
            ),
            (
                ProxyError::PrefillTimeout {
                    target: "x".into(),
                    timeout_ms: 1,
                },
                504,
                "prefill",
                "prefill_error",
            ),
            (ProxyError::DecodeUnavailable, 503, "decode", "decode_error"),
            (
                ProxyError::Internal { reason: "x".into() },
                500,
                "proxy",
                "internal_error",
            ),
        ];
        for (e, status, stage, outcome) in cases {
            assert_eq!(e.status().as_u16(), status, "{e}");
            assert_eq!(e.stage().as_str(), stage, "{e}");
            assert_eq!(e.outcome(), outcome, "{e}");
            let r = e.into_response();
            assert_eq!(r.status().as_u16(), status);
            assert_eq!(r.headers()["content-type"], "application/json");
        }
    }
}
