//! Parsing the inference request the gateway hands over: an OpenAI completions or chat
//! completions body, chosen by `:path`. Only what scheduling needs is read; the body is kept as
//! it came (or rewritten when the model name is rewritten).

use serde_json::{Map, Value};

/// Which API a request uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// `/v1/completions`.
    Completions,
    /// `/v1/chat/completions`.
    ChatCompletions,
}

/// The prompt, as the request carries it.
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    /// A completions prompt string.
    Text(String),
    /// A completions prompt given as token ids.
    Tokens(Vec<u32>),
    /// A chat request body (messages, tools, template kwargs), rendered later with the model's
    /// chat template.
    Chat(Value),
}

/// What the scheduler needs from a request.
#[derive(Debug, Clone, PartialEq)]
pub struct InferenceRequest {
    /// API.
    pub api: Api,
    /// `model` as sent.
    pub model: String,
    /// The prompt.
    pub prompt: Prompt,
    /// `stream`.
    pub stream: bool,
    /// `max_tokens` / `max_completion_tokens`.
    pub max_tokens: Option<u64>,
    /// Bytes of user input (prompt text or message contents).
    pub user_input_bytes: usize,
    /// `cache_salt`: vLLM keys it into the prompt's first block, so only requests with the
    /// same salt share cached blocks.
    pub cache_salt: Option<String>,
    /// The body as parsed.
    pub body: Map<String, Value>,
}

/// Why a request could not be parsed (each is a 400 to the client).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Unknown `:path`.
    #[error("unsupported path {0:?} (supported: /v1/completions, /v1/chat/completions)")]
    UnsupportedPath(String),
    /// Body not JSON.
    #[error("request body is not valid JSON: {0}")]
    NotJson(String),
    /// Body not an object.
    #[error("request body must be a JSON object")]
    NotObject,
    /// A field is missing or of the wrong type.
    #[error("{0}")]
    Field(String),
}

/// The `model` of a body, when it is a JSON object with a string `model` (for error labels).
pub fn model_of(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Model {
        model: Option<String>,
    }
    serde_json::from_slice::<Model>(body).ok()?.model
}

/// Parses a request body for `path` (query string ignored).
pub fn parse(path: &str, body: &[u8]) -> Result<InferenceRequest, ParseError> {
    let path = path.split('?').next().unwrap_or_default();
    let api = match path {
        "/v1/completions" => Api::Completions,
        "/v1/chat/completions" => Api::ChatCompletions,
        other => return Err(ParseError::UnsupportedPath(other.to_owned())),
    };
    let value: Value =
        serde_json::from_slice(body).map_err(|e| ParseError::NotJson(e.to_string()))?;
    let Value::Object(map) = value else {
        return Err(ParseError::NotObject);
    };
    let model = match map.get("model") {
        Some(Value::String(m)) if !m.is_empty() => m.clone(),
        Some(Value::String(_)) | None | Some(Value::Null) => {
            return Err(ParseError::Field("model not found in request body".into()));
        }
        Some(_) => return Err(ParseError::Field("`model` must be a string".into())),
    };
    let stream = match map.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(ParseError::Field("`stream` must be a boolean".into())),
    };
    let mut max_tokens = None;
    for field in ["max_tokens", "max_completion_tokens"] {
        match map.get(field) {
            None | Some(Value::Null) => {}
            Some(v) => match v.as_u64() {
                Some(n) => max_tokens = Some(n),
                None => {
                    return Err(ParseError::Field(format!(
                        "`{field}` must be a non-negative integer"
                    )));
                }
            },
        }
    }
    let cache_salt = parse_cache_salt(&map)?;
    let (prompt, user_input_bytes) = match api {
        Api::Completions => match map.get("prompt") {
            Some(Value::String(p)) => (Prompt::Text(p.clone()), p.len()),
            Some(Value::Array(items)) if items.len() == 1 && items[0].is_string() => {
                let p = items[0].as_str().unwrap_or_default().to_owned();
                let n = p.len();
                (Prompt::Text(p), n)
            }
            Some(Value::Array(items))
                if !items.is_empty()
                    && items
                        .iter()
                        .all(|t| t.as_u64().is_some_and(|t| t <= u64::from(u32::MAX))) =>
            {
                let ids: Vec<u32> = items
                    .iter()
                    .filter_map(Value::as_u64)
                    .map(|t| t as u32)
                    .collect();
                let n = ids.len() * 4;
                (Prompt::Tokens(ids), n)
            }
            _ => {
                return Err(ParseError::Field(
                    "`prompt` must be a string, one string, or a list of token ids".into(),
                ));
            }
        },
        Api::ChatCompletions => {
            let Some(Value::Array(messages)) = map.get("messages") else {
                return Err(ParseError::Field("`messages` must be an array".into()));
            };
            if messages.is_empty() {
                return Err(ParseError::Field("`messages` must not be empty".into()));
            }
            let bytes = messages
                .iter()
                .map(|m| match &m["content"] {
                    Value::String(s) => s.len(),
                    Value::Array(parts) => parts
                        .iter()
                        .filter_map(|p| p["text"].as_str())
                        .map(str::len)
                        .sum(),
                    _ => 0,
                })
                .sum();
            (Prompt::Chat(Value::Object(map.clone())), bytes)
        }
    };
    Ok(InferenceRequest {
        api,
        model,
        prompt,
        stream,
        max_tokens,
        user_input_bytes,
        cache_salt,
        body: map,
    })
}

/// `cache_salt` as vLLM's request models take it (`validate_cache_salt` in
/// `vllm/entrypoints/generate/base/protocol.py`, 0.33.0; a `str` field with `min_length=1` in
/// 0.29): absent or `null` is no salt; anything but a non-empty string is refused with vLLM's
/// message. vLLM 0.33 also refuses salts over 128 characters or containing `@`, `/`, `\` or
/// NUL (0.29 allowed 1,024 characters of anything): that is left to the engine, which answers
/// it with its own 400, so a salt an older vLLM accepts is not refused here.
fn parse_cache_salt(map: &Map<String, Value>) -> Result<Option<String>, ParseError> {
    match map.get("cache_salt") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
        Some(_) => Err(ParseError::Field(
            "Parameter 'cache_salt' must be a non-empty string if provided.".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completions_and_chat() {
        let r = parse(
            "/v1/completions?x=1",
            br#"{"model":"m","prompt":"hi","max_tokens":3,"stream":true}"#,
        )
        .unwrap();
        assert_eq!(
            (r.api, r.model.as_str(), r.stream, r.max_tokens),
            (Api::Completions, "m", true, Some(3))
        );
        assert_eq!(r.prompt, Prompt::Text("hi".into()));
        let r = parse("/v1/completions", br#"{"model":"m","prompt":[1,2,3]}"#).unwrap();
        assert_eq!(r.prompt, Prompt::Tokens(vec![1, 2, 3]));
        let r = parse("/v1/chat/completions", br#"{"model":"m","messages":[{"role":"user","content":"hello"}],"max_completion_tokens":5}"#).unwrap();
        assert_eq!(r.user_input_bytes, 5);
        assert_eq!(r.max_tokens, Some(5));
        assert_eq!(r.cache_salt, None);
    }

    #[test]
    fn cache_salt_is_read_as_vllm_reads_it() {
        for (path, body, want) in [
            (
                "/v1/completions",
                &br#"{"model":"m","prompt":"x","cache_salt":"tenant-7"}"#[..],
                Some("tenant-7"),
            ),
            (
                "/v1/chat/completions",
                br#"{"model":"m","messages":[{"role":"user","content":"x"}],"cache_salt":"a/b+c="}"#,
                Some("a/b+c="),
            ),
            (
                "/v1/completions",
                br#"{"model":"m","prompt":"x","cache_salt":null}"#,
                None,
            ),
        ] {
            assert_eq!(parse(path, body).unwrap().cache_salt.as_deref(), want);
        }
        for bad in [r#""""#, "5", "true", r#"["s"]"#, r#"{"s":1}"#] {
            for (path, rest) in [
                ("/v1/completions", r#""prompt":"x""#),
                (
                    "/v1/chat/completions",
                    r#""messages":[{"role":"user","content":"x"}]"#,
                ),
            ] {
                let body = format!(r#"{{"model":"m",{rest},"cache_salt":{bad}}}"#);
                let e = parse(path, body.as_bytes()).unwrap_err();
                assert_eq!(
                    e.to_string(),
                    "Parameter 'cache_salt' must be a non-empty string if provided.",
                    "{path} {bad}"
                );
            }
        }
    }

    #[test]
    fn bad_bodies_have_reasons() {
        for (path, body) in [
            ("/v1/embeddings", &br#"{}"#[..]),
            ("/v1/completions", b"{not json"),
            ("/v1/completions", b"[1]"),
            ("/v1/completions", br#"{"prompt":"x"}"#),
            ("/v1/completions", br#"{"model":5,"prompt":"x"}"#),
            ("/v1/completions", br#"{"model":"m","prompt":5}"#),
            (
                "/v1/completions",
                br#"{"model":"m","prompt":"x","stream":"no"}"#,
            ),
            (
                "/v1/completions",
                br#"{"model":"m","prompt":"x","max_tokens":-1}"#,
            ),
            ("/v1/chat/completions", br#"{"model":"m","messages":[]}"#),
            ("/v1/chat/completions", br#"{"model":"m"}"#),
            ("/v1/completions", &[0xff, 0xfe][..]),
        ] {
            assert!(
                parse(path, body).is_err(),
                "{path} {}",
                String::from_utf8_lossy(body)
            );
        }
    }
}
