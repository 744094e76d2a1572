//! The nixlv2 connector's body transforms (llm-d's `connector_nixlv2.go`, reference §1.5).

use serde_json::{Map, Value, json};

/// The placeholder `kv_transfer_params` of the prefill leg.
pub fn prefill_placeholder() -> Value {
    json!({"do_remote_decode": true, "do_remote_prefill": false, "remote_engine_id": null,
           "remote_block_ids": null, "remote_host": null, "remote_port": null})
}

/// Which API a request uses: where its token limits live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiType {
    /// `/v1/completions`, `/v1/chat/completions`, `/v1/messages`: `max_tokens`,
    /// `max_completion_tokens` and `min_tokens`.
    ChatCompletions,
    /// `/v1/responses`: `max_output_tokens`.
    Responses,
    /// `/inference/v1/generate`: `sampling_params.max_tokens` and `.min_tokens`.
    Generate,
}

impl ApiType {
    /// The API type of a path, if the P/D flow handles it.
    pub fn of_path(path: &str) -> Option<Self> {
        match path {
            "/v1/completions" | "/v1/chat/completions" | "/v1/messages" => {
                Some(Self::ChatCompletions)
            }
            "/v1/responses" => Some(Self::Responses),
            "/inference/v1/generate" => Some(Self::Generate),
            _ => None,
        }
    }
}

/// The prefill body: the client's, with the placeholder parameters, no streaming, and the
/// token limits set to 1 (all of them, even those the client did not send).
pub fn prefill_body(client: &Map<String, Value>, api: ApiType) -> Map<String, Value> {
    let mut b = client.clone();
    b.insert("kv_transfer_params".into(), prefill_placeholder());
    b.insert("stream".into(), Value::Bool(false));
    b.remove("stream_options");
    match api {
        ApiType::ChatCompletions => {
            for k in ["max_tokens", "max_completion_tokens", "min_tokens"] {
                b.insert(k.into(), json!(1));
            }
        }
        ApiType::Responses => {
            b.insert("max_output_tokens".into(), json!(1));
        }
        ApiType::Generate => {
            let sp = b.entry("sampling_params").or_insert_with(|| json!({}));
            if !sp.is_object() {
                *sp = json!({});
            }
            if let Some(sp) = sp.as_object_mut() {
                sp.insert("max_tokens".into(), json!(1));
                sp.insert("min_tokens".into(), json!(1));
            }
        }
    }
    b
}

/// The decode body: the client's fields as sent, plus the prefill's `kv_transfer_params`
/// verbatim (`null` when the prefill returned none: decode then recomputes).
pub fn decode_body(client: &Map<String, Value>, params: Value) -> Map<String, Value> {
    let mut b = client.clone();
    b.insert("kv_transfer_params".into(), params);
    b
}

/// `usage.prompt_tokens_details.cached_tokens` of a response (missing or null: 0).
pub fn cached_tokens(resp: &Value) -> u64 {
    resp.pointer("/usage/prompt_tokens_details/cached_tokens")
        .and_then(Value::as_u64)
        .unwrap_or(0)
}

/// Sets `usage.prompt_tokens_details.cached_tokens` where a `usage` object exists (creating
/// the details object); returns whether it changed anything.
pub fn rewrite_cached(resp: &mut Value, cached: u64) -> bool {
    let Some(usage) = resp.get_mut("usage").and_then(Value::as_object_mut) else {
        return false;
    };
    let details = usage
        .entry("prompt_tokens_details")
        .or_insert_with(|| json!({}));
    if !details.is_object() {
        *details = json!({});
    }
    if let Some(d) = details.as_object_mut() {
        d.insert("cached_tokens".into(), json!(cached));
    }
    true
}

/// Rewrites one SSE line (`data: {...}`) when it carries usage; other lines unchanged.
pub fn rewrite_sse_line(line: &str, cached: u64) -> Option<String> {
    let data = line.strip_prefix("data:")?.trim_start();
    if data == "[DONE]" || !data.contains("\"usage\"") {
        return None;
    }
    let mut v: Value = serde_json::from_str(data).ok()?;
    if v.get("usage").is_some_and(Value::is_object) && rewrite_cached(&mut v, cached) {
        Some(format!("data: {v}"))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_follow_the_reference() {
        let client: Map<String, Value> = serde_json::from_value(json!({
            "model": "m", "prompt": "p", "stream": true, "stream_options": {"include_usage": true},
            "max_tokens": 50, "kv_transfer_params": {"x": 1}, "temperature": 0.5
        }))
        .unwrap();
        let p = prefill_body(&client, ApiType::ChatCompletions);
        assert_eq!(p["stream"], false);
        assert!(!p.contains_key("stream_options"));
        assert_eq!(
            (
                p["max_tokens"].clone(),
                p["max_completion_tokens"].clone(),
                p["min_tokens"].clone()
            ),
            (json!(1), json!(1), json!(1))
        );
        assert_eq!(p["kv_transfer_params"], prefill_placeholder());
        assert_eq!(p["temperature"], 0.5);
        let params =
            json!({"remote_block_ids": [1, 2], "remote_engine_id": "e", "future_key": [true]});
        let d = decode_body(&client, params.clone());
        assert_eq!(d["kv_transfer_params"], params);
        assert_eq!(d["stream"], true);
        assert_eq!(d["stream_options"], json!({"include_usage": true}));
        assert_eq!(d["max_tokens"], 50);
        assert!(!d.contains_key("min_tokens"));

        let r = prefill_body(&client, ApiType::Responses);
        assert_eq!(
            (r["max_output_tokens"].clone(), r["max_tokens"].clone()),
            (json!(1), json!(50))
        );
        let g = prefill_body(&client, ApiType::Generate);
        assert_eq!(
            g["sampling_params"],
            json!({"max_tokens": 1, "min_tokens": 1})
        );
        assert_eq!(
            ApiType::of_path("/v1/messages"),
            Some(ApiType::ChatCompletions)
        );
        assert_eq!(ApiType::of_path("/v1/models"), None);
    }

    #[test]
    fn cached_tokens_are_rewritten() {
        let mut v = json!({"usage": {"prompt_tokens": 100, "completion_tokens": 2}});
        assert!(rewrite_cached(&mut v, 64));
        assert_eq!(cached_tokens(&v), 64);
        assert_eq!(
            cached_tokens(&json!({"usage": {"prompt_tokens_details": null}})),
            0
        );
        let line = r#"data: {"choices":[],"usage":{"prompt_tokens":9,"prompt_tokens_details":{"cached_tokens":0}}}"#;
        let out = rewrite_sse_line(line, 128).unwrap();
        assert!(out.contains(r#""cached_tokens":128"#), "{out}");
        assert_eq!(rewrite_sse_line("data: [DONE]", 1), None);
        assert_eq!(
            rewrite_sse_line(r#"data: {"choices":[{"text":"x"}],"usage":null}"#, 1),
            None
        );
        assert_eq!(rewrite_sse_line(": comment", 1), None);
        assert_eq!(rewrite_sse_line("data: {not json \"usage\"", 1), None);
    }
}
