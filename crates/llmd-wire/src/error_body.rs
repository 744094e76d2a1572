//! The two JSON error bodies of the request path, each with who sends it.
//!
//! | shape | sent by |
//! |---|---|
//! | [`VllmError`]: `{"object":"error","message","type","param","code"}` | vLLM's OpenAI server and `llmd-sim` (`param` null); llm-d's P/D sidecar and `llmd-pd-proxy` (`param` `""`: a Go string in llm-d) |
//! | [`OpenAiError`]: `{"error":{"message","type","param","code"}}` | OpenAI's API; the GIE/llm-d EPP's `ImmediateResponse` body (`llmd-epp`); `llmd-gateway`'s own errors |
//!
//! `code` is the HTTP status as a number in both (OpenAI's API uses a string code or null;
//! GIE, vLLM and llm-d send the status). OpenAI SDKs read `message` from either shape.

use http::StatusCode;
use serde::{Deserialize, Serialize};

/// vLLM's error body: `{"object":"error","message":...,"type":...,"param":...,"code":<status>}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VllmError {
    /// Always `"error"`.
    pub object: String,
    /// What went wrong, for a person.
    pub message: String,
    /// The error class, e.g. `BadRequestError`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The offending parameter: `null` from vLLM, `""` from llm-d's sidecar.
    pub param: Option<String>,
    /// The HTTP status.
    pub code: u16,
}

impl VllmError {
    /// A body as vLLM writes it (`param` null).
    pub fn new(status: StatusCode, kind: &str, message: impl Into<String>) -> Self {
        Self {
            object: "error".into(),
            message: message.into(),
            kind: kind.into(),
            param: None,
            code: status.as_u16(),
        }
    }

    /// The same with `param` set (llm-d's sidecar sends `""`).
    #[must_use]
    pub fn with_param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    /// The JSON value.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "object": self.object, "message": self.message, "type": self.kind,
            "param": self.param, "code": self.code,
        })
    }

    /// The serialised body.
    pub fn to_vec(&self) -> Vec<u8> {
        self.to_json().to_string().into_bytes()
    }
}

/// The OpenAI/GIE error body: `{"error":{"message":...,"type":...,"param":...,"code":<status>}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenAiError {
    /// The error itself.
    pub error: OpenAiErrorDetail,
}

/// The inside of an [`OpenAiError`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenAiErrorDetail {
    /// What went wrong, for a person.
    pub message: String,
    /// The error class, e.g. `ServiceUnavailableError` ([`openai_error_type`]).
    #[serde(rename = "type")]
    pub kind: String,
    /// The offending parameter, or null.
    pub param: Option<String>,
    /// The HTTP status.
    pub code: u16,
}

impl OpenAiError {
    /// A body for `status` (`param` null).
    pub fn new(status: StatusCode, kind: &str, message: impl Into<String>) -> Self {
        Self {
            error: OpenAiErrorDetail {
                message: message.into(),
                kind: kind.into(),
                param: None,
                code: status.as_u16(),
            },
        }
    }

    /// A body for `status` with the type [`openai_error_type`] gives it.
    pub fn for_status(status: StatusCode, message: impl Into<String>) -> Self {
        Self::new(status, openai_error_type(status), message)
    }

    /// The JSON value.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({"error": {
            "message": self.error.message, "type": self.error.kind,
            "param": self.error.param, "code": self.error.code,
        }})
    }

    /// The serialised body.
    pub fn to_vec(&self) -> Vec<u8> {
        self.to_json().to_string().into_bytes()
    }
}

/// The error `type` the OpenAI Python SDK names its exception after, for a status (what the
/// EPP and the gateway put in [`OpenAiError`]).
pub fn openai_error_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "BadRequestError",
        401 => "AuthenticationError",
        403 => "PermissionDeniedError",
        404 => "NotFoundError",
        413 => "RequestTooLargeError",
        429 => "RateLimitError",
        502 => "BadGatewayError",
        503 => "ServiceUnavailableError",
        504 => "GatewayTimeoutError",
        _ => "InternalServerError",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vllm_shape_with_null_or_empty_param() {
        let v = VllmError::new(StatusCode::BAD_REQUEST, "BadRequestError", "bad");
        assert_eq!(
            v.to_json().to_string(),
            r#"{"object":"error","message":"bad","type":"BadRequestError","param":null,"code":400}"#
        );
        let sidecar = v.with_param("");
        assert_eq!(sidecar.to_json()["param"], "");
        let back: VllmError = serde_json::from_slice(&sidecar.to_vec()).unwrap_or_else(|e| {
            panic!("{e}");
        });
        assert_eq!(back, sidecar);
    }

    #[test]
    fn openai_shape() {
        let e = OpenAiError::for_status(StatusCode::SERVICE_UNAVAILABLE, "no pods");
        assert_eq!(
            e.to_json().to_string(),
            r#"{"error":{"message":"no pods","type":"ServiceUnavailableError","param":null,"code":503}}"#
        );
        let back: OpenAiError =
            serde_json::from_slice(&e.to_vec()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back, e);
    }
}
