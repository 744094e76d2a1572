//! The one error type of the HTTP layer: every refusal becomes vLLM's error body
//! `{"object":"error","message","type","param","code"}` here, and is logged here, once.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// A vLLM-style error response.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) kind: &'static str,
    pub(crate) message: String,
}

impl ApiError {
    /// 400 `BadRequestError`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "BadRequestError", message)
    }

    /// 404 `NotFoundError`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "NotFoundError", message)
    }

    /// 413: the body or the prompt is larger than this server accepts.
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "BadRequestError", message)
    }

    /// 502: the KV pull from the prefill pod failed.
    pub fn kv_transfer(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_GATEWAY, "KVTransferError", message)
    }

    /// 503.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailableError",
            message,
        )
    }

    /// Any status and type.
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            kind,
            message: message.into(),
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The error body vLLM returns.
    pub fn body(&self) -> Value {
        json!({"object": "error", "message": self.message, "type": self.kind, "param": null, "code": self.status.as_u16()})
    }
}

impl From<crate::lora::LoraError> for ApiError {
    fn from(e: crate::lora::LoraError) -> Self {
        let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST);
        Self::new(status, e.kind(), e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(
                status = self.status.as_u16(),
                message = self.message,
                "request failed"
            );
        } else {
            tracing::debug!(
                status = self.status.as_u16(),
                message = self.message,
                "request rejected"
            );
        }
        (self.status, axum::Json(self.body())).into_response()
    }
}
