//! Reading a request: the body within its size limit, the fields both APIs share, and the
//! prompt, whose size is checked in bytes *before* it is tokenized (a 10 MB prompt is refused
//! with 413 at the cost of measuring it) and in tokens after (vLLM's context-length 400).

use std::sync::Arc;

use axum::extract::Request;
use axum::http::HeaderMap;
use llmd_tokenizer::ChatRequest;
use serde_json::{Map, Value};

use super::AppState;
use super::error::ApiError;
use crate::lora::Adapter;

/// Reads the body within the size limit and parses it as a JSON object (and records it with
/// `--record-requests`).
pub(super) async fn read_json(
    state: &AppState,
    req: Request,
) -> Result<(HeaderMap, Map<String, Value>), ApiError> {
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, state.args.max_request_body_bytes)
        .await
        .map_err(|_| {
            ApiError::too_large(format!(
                "request body exceeds {} bytes or could not be read",
                state.args.max_request_body_bytes
            ))
        })?;
    let value: Value = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("JSON decode error: {e}")))?;
    if state.args.record_requests > 0 {
        let header = |n: &str| {
            let all: Vec<&str> = parts
                .headers
                .get_all(n)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect();
            all
        };
        let mut rec = state.recorded.lock();
        if rec.len() == state.args.record_requests {
            rec.pop_front();
        }
        rec.push_back(serde_json::json!({
            "path": parts.uri.path(),
            "version": format!("{:?}", parts.version),
            "x-request-id": header("x-request-id"),
            "traceparent": header("traceparent"),
            "body": value,
        }));
    }
    match value {
        Value::Object(map) => Ok((parts.headers, map)),
        _ => Err(ApiError::bad_request("request body must be a JSON object")),
    }
}

/// The fields both APIs share.
#[derive(Debug)]
pub(super) struct Params {
    /// The `model` answered with (the base model's name or the adapter's).
    pub model: String,
    /// The adapter serving the request.
    pub lora: Option<Arc<Adapter>>,
    pub max_tokens: Option<usize>,
    pub stream: bool,
    pub include_usage: bool,
    pub n: usize,
    pub temperature: f64,
    pub top_p: f64,
    pub cache_salt: Option<String>,
    pub kv_transfer_params: Option<Value>,
}

fn number(body: &Map<String, Value>, field: &str, default: f64) -> Result<f64, ApiError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v
            .as_f64()
            .ok_or_else(|| ApiError::bad_request(format!("`{field}` must be a number"))),
    }
}

pub(super) fn params(
    state: &AppState,
    body: &Map<String, Value>,
    max_tokens_fields: &[&str],
) -> Result<Params, ApiError> {
    let (model, lora) = match body.get("model") {
        None | Some(Value::Null) => (state.args.model.clone(), None),
        Some(Value::String(m)) if state.args.serves(m) => (m.clone(), None),
        Some(Value::String(m)) => match state.loras.get(m) {
            Some(adapter) => (m.clone(), Some(adapter)),
            None => {
                return Err(ApiError::not_found(format!(
                    "The model `{m}` does not exist."
                )));
            }
        },
        Some(_) => return Err(ApiError::bad_request("`model` must be a string")),
    };
    let mut max_tokens = None;
    for field in max_tokens_fields {
        match body.get(*field) {
            None | Some(Value::Null) => {}
            Some(v) => match v.as_i64() {
                Some(n) if n >= 1 => max_tokens = Some(usize::try_from(n).unwrap_or(usize::MAX)),
                Some(n) => {
                    return Err(ApiError::bad_request(format!(
                        "max_tokens must be at least 1, got {n}."
                    )));
                }
                None => {
                    return Err(ApiError::bad_request(format!(
                        "`{field}` must be an integer"
                    )));
                }
            },
        }
    }
    let stream = match body.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(ApiError::bad_request("`stream` must be a boolean")),
    };
    let include_usage = body
        .get("stream_options")
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    match body.get("n") {
        None | Some(Value::Null) => {}
        Some(v) if v.as_i64() == Some(1) => {}
        Some(_) => return Err(ApiError::bad_request("the simulator supports n = 1 only")),
    }
    let cache_salt = match body.get("cache_salt") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        Some(_) => {
            return Err(ApiError::bad_request(
                "Parameter 'cache_salt' must be a non-empty string if provided.",
            ));
        }
    };
    Ok(Params {
        model,
        lora,
        max_tokens,
        stream,
        include_usage,
        n: 1,
        temperature: number(body, "temperature", 1.0)?,
        top_p: number(body, "top_p", 1.0)?,
        cache_salt,
        kv_transfer_params: body
            .get("kv_transfer_params")
            .filter(|v| !v.is_null())
            .cloned(),
    })
}

/// A prompt as token ids, and the text echo mode repeats.
#[derive(Debug)]
pub(super) struct Prompt {
    pub tokens: Vec<u32>,
    pub echo_text: String,
}

/// Refuses a prompt of more than `--max-prompt-bytes` before any tokenizer work.
fn check_bytes(state: &AppState, bytes: usize) -> Result<(), ApiError> {
    let limit = state.args.prompt_byte_limit();
    if bytes > limit {
        return Err(ApiError::too_large(format!(
            "The prompt is {bytes} bytes, more than this server accepts ({limit} bytes, \
             --max-prompt-bytes). Please reduce the length of the input."
        )));
    }
    Ok(())
}

/// vLLM's context-length error for a prompt of `len` tokens.
pub(super) fn context_error(max_len: usize, len: usize) -> ApiError {
    ApiError::bad_request(format!(
        "This model's maximum context length is {max_len} tokens. However, your request has \
         {len} input tokens. Please reduce the length of the input."
    ))
}

/// The `prompt` of a completions request: a string, one string, or token ids.
pub(super) fn completion_prompt(
    state: &AppState,
    body: &Map<String, Value>,
) -> Result<Prompt, ApiError> {
    let text = |p: &str| -> Result<Prompt, ApiError> {
        check_bytes(state, p.len())?;
        let tokens = state
            .tokenizer
            .encode_completion(p)
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        Ok(Prompt {
            tokens,
            echo_text: p.to_owned(),
        })
    };
    match body.get("prompt") {
        Some(Value::String(p)) => text(p),
        Some(Value::Array(items)) if items.len() == 1 && items[0].is_string() => {
            text(items[0].as_str().unwrap_or_default())
        }
        Some(Value::Array(items))
            if !items.is_empty()
                && items
                    .iter()
                    .all(|i| i.as_u64().is_some_and(|t| t <= u64::from(u32::MAX))) =>
        {
            if items.len() > state.args.max_model_len {
                return Err(context_error(state.args.max_model_len, items.len()));
            }
            let tokens: Vec<u32> = items
                .iter()
                .filter_map(Value::as_u64)
                .filter_map(|t| u32::try_from(t).ok())
                .collect();
            let echo_text = state.tokenizer.decode(&tokens);
            Ok(Prompt { tokens, echo_text })
        }
        Some(Value::Array(_)) => Err(ApiError::bad_request(
            "`prompt` must be a string, one string, or a list of token ids",
        )),
        _ => Err(ApiError::bad_request(
            "`prompt` is required and must be a string or a list of token ids",
        )),
    }
}

/// Bytes of every string in `v` (the text a chat template will see).
fn text_bytes(v: &Value) -> usize {
    match v {
        Value::String(s) => s.len(),
        Value::Array(items) => items.iter().map(text_bytes).sum(),
        Value::Object(map) => map.values().map(text_bytes).sum(),
        _ => 0,
    }
}

/// The rendered and tokenized messages of a chat request.
pub(super) fn chat_prompt(state: &AppState, body: Map<String, Value>) -> Result<Prompt, ApiError> {
    check_bytes(state, body.get("messages").map(text_bytes).unwrap_or(0))?;
    let value = Value::Object(body);
    let chat =
        ChatRequest::from_openai_body(&value).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let tokens = state
        .tokenizer
        .encode_chat(&chat)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let echo_text = chat
        .messages
        .iter()
        .rev()
        .find(|m| m["role"] == "user")
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default()
        .to_owned();
    Ok(Prompt { tokens, echo_text })
}

/// vLLM's request id: `<prefix><X-Request-Id>` when the header is set, else a random one.
pub(super) fn request_id(headers: &HeaderMap, prefix: &str) -> String {
    let base = headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
    format!("{prefix}{base}")
}
