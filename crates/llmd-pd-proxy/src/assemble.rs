//! One JSON answer from a stream of events.
//!
//! A P/D request whose client did not ask for streaming still has its decode leg streamed, so the
//! proxy sees the first token when it is generated and its true TTFT is the client-visible one
//! (a JSON answer's first byte arrives after the last token). The events are then assembled into
//! the answer the engine would have sent without streaming, field by field as vLLM lays it out:
//! text and content concatenated, tool-call deltas merged by index, logprobs appended, the last
//! finish and stop reasons, the usage event's usage.
//!
//! | API | path | assembled from |
//! |---|---|---|
//! | completions | `/v1/completions` | `text_completion` chunks |
//! | chat | `/v1/chat/completions` | `chat.completion.chunk` deltas |
//! | messages | `/v1/messages` | Anthropic events (`message_start`, `content_block_*`, `message_delta`) |
//! | responses | `/v1/responses` | the `response.completed` event's `response` |
//!
//! `/inference/v1/generate` has no assembler: its non-streamed answers are relayed as they are,
//! and their true TTFT is not observed (the span says so).

use serde_json::{Map, Value, json};

/// The APIs the assembler knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// `/v1/completions`.
    Completions,
    /// `/v1/chat/completions`.
    Chat,
    /// `/v1/messages` (Anthropic).
    Messages,
    /// `/v1/responses`.
    Responses,
}

impl Api {
    /// The API of a request path, when the proxy can assemble its streamed answer.
    pub fn of_path(path: &str) -> Option<Self> {
        match path {
            "/v1/completions" => Some(Self::Completions),
            "/v1/chat/completions" => Some(Self::Chat),
            "/v1/messages" => Some(Self::Messages),
            "/v1/responses" => Some(Self::Responses),
            _ => None,
        }
    }

    /// The label of the span attribute `llm_d.openai.api`.
    pub fn as_str(self) -> &'static str {
        match self {
            Api::Completions => "completions",
            Api::Chat => "chat_completions",
            Api::Messages => "messages",
            Api::Responses => "responses",
        }
    }
}

/// Asks the decode engine for a stream on behalf of a client that did not: the client's body
/// with `stream: true` (and usage in the stream, for the answer's `usage`).
pub fn streamed_body(api: Api, body: &mut Map<String, Value>) {
    body.insert("stream".into(), Value::Bool(true));
    if matches!(api, Api::Completions | Api::Chat) {
        body.insert(
            "stream_options".into(),
            json!({"include_usage": true, "continuous_usage_stats": false}),
        );
    }
}

/// True when a request can be answered from a stream with the same result: beam search and
/// `best_of` answers are chosen at the end, so they are not streamed.
pub fn can_stream(body: &Map<String, Value>) -> bool {
    let truthy = |k: &str| match body.get(k) {
        Some(Value::Bool(b)) => *b,
        Some(Value::Number(n)) => n.as_f64().is_some_and(|v| v > 1.0),
        _ => false,
    };
    !truthy("use_beam_search") && !truthy("best_of")
}

/// Assembles one API's events.
#[derive(Debug)]
pub struct Assembler {
    api: Api,
    head: Map<String, Value>,
    choices: Vec<Choice>,
    usage: Value,
    /// Messages: the message object; Responses: the final response.
    whole: Option<Value>,
    partial_json: Vec<String>,
}

#[derive(Debug, Default)]
struct Choice {
    index: u64,
    role: Option<Value>,
    text: String,
    saw_text: bool,
    reasoning: Option<String>,
    tool_calls: Vec<Map<String, Value>>,
    logprobs: Option<Value>,
    finish_reason: Value,
    stop_reason: Value,
    prompt_logprobs: Option<Value>,
    token_ids: Option<Vec<Value>>,
}

/// Why a stream could not be assembled.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AssembleError {
    /// The engine sent an error event.
    #[error("the decode stream carried an error: {0}")]
    Upstream(String),
    /// The stream ended before its answer was complete.
    #[error("the decode stream ended without {0}")]
    Incomplete(&'static str),
}

impl Assembler {
    /// An assembler for `api`.
    pub fn new(api: Api) -> Self {
        Self {
            api,
            head: Map::new(),
            choices: Vec::new(),
            usage: Value::Null,
            whole: None,
            partial_json: Vec::new(),
        }
    }

    /// Takes one event (the parsed `data:` payload).
    pub fn push(&mut self, event: &Value) -> Result<(), AssembleError> {
        if event.get("object").and_then(Value::as_str) == Some("error")
            || event.get("error").is_some() && event.get("choices").is_none()
            || event.get("type").and_then(Value::as_str) == Some("error")
        {
            return Err(AssembleError::Upstream(event.to_string()));
        }
        match self.api {
            Api::Completions | Api::Chat => self.push_choices(event),
            Api::Messages => self.push_message(event),
            Api::Responses => {
                if let Some(t) = event.get("type").and_then(Value::as_str)
                    && matches!(
                        t,
                        "response.completed" | "response.incomplete" | "response.failed"
                    )
                {
                    self.whole = event.get("response").cloned();
                }
            }
        }
        Ok(())
    }

    fn push_choices(&mut self, event: &Value) {
        for k in [
            "id",
            "created",
            "model",
            "system_fingerprint",
            "service_tier",
        ] {
            if let Some(v) = event.get(k)
                && !v.is_null()
            {
                self.head.entry(k).or_insert_with(|| v.clone());
            }
        }
        if let Some(u) = event.get("usage")
            && u.is_object()
        {
            self.usage = u.clone();
        }
        let Some(choices) = event.get("choices").and_then(Value::as_array) else {
            return;
        };
        for c in choices {
            let index = c.get("index").and_then(Value::as_u64).unwrap_or(0);
            let at = match self.choices.iter().position(|x| x.index == index) {
                Some(at) => at,
                None => {
                    self.choices.push(Choice {
                        index,
                        finish_reason: Value::Null,
                        stop_reason: Value::Null,
                        ..Default::default()
                    });
                    self.choices.len() - 1
                }
            };
            let ch = &mut self.choices[at];
            if let Some(t) = c.get("text").and_then(Value::as_str) {
                ch.text.push_str(t);
                ch.saw_text = true;
            }
            if let Some(d) = c.get("delta") {
                if let Some(r) = d.get("role")
                    && !r.is_null()
                {
                    ch.role.get_or_insert_with(|| r.clone());
                }
                if let Some(t) = d.get("content").and_then(Value::as_str) {
                    ch.text.push_str(t);
                    ch.saw_text = true;
                }
                for k in ["reasoning_content", "reasoning"] {
                    if let Some(t) = d.get(k).and_then(Value::as_str) {
                        ch.reasoning.get_or_insert_with(String::new).push_str(t);
                    }
                }
                if let Some(calls) = d.get("tool_calls").and_then(Value::as_array) {
                    for call in calls {
                        merge_tool_call(&mut ch.tool_calls, call);
                    }
                }
            }
            if let Some(lp) = c.get("logprobs")
                && !lp.is_null()
            {
                merge_logprobs(&mut ch.logprobs, lp);
            }
            for (k, slot) in [
                ("finish_reason", &mut ch.finish_reason),
                ("stop_reason", &mut ch.stop_reason),
            ] {
                if let Some(v) = c.get(k)
                    && !v.is_null()
                {
                    *slot = v.clone();
                }
            }
            if let Some(p) = c.get("prompt_logprobs")
                && !p.is_null()
            {
                ch.prompt_logprobs.get_or_insert_with(|| p.clone());
            }
            if let Some(ids) = c.get("token_ids").and_then(Value::as_array) {
                ch.token_ids
                    .get_or_insert_with(Vec::new)
                    .extend(ids.iter().cloned());
            }
        }
    }

    fn push_message(&mut self, event: &Value) {
        match event.get("type").and_then(Value::as_str) {
            Some("message_start") => self.whole = event.get("message").cloned(),
            Some("content_block_start") => {
                let index = event.get("index").and_then(Value::as_u64).unwrap_or(0) as usize;
                if let Some(content) = self
                    .whole
                    .as_mut()
                    .and_then(|m| m.get_mut("content"))
                    .and_then(Value::as_array_mut)
                {
                    while content.len() <= index {
                        content.push(Value::Null);
                    }
                    content[index] = event.get("content_block").cloned().unwrap_or(Value::Null);
                }
                while self.partial_json.len() <= index {
                    self.partial_json.push(String::new());
                }
            }
            Some("content_block_delta") => {
                let index = event.get("index").and_then(Value::as_u64).unwrap_or(0) as usize;
                let delta = event.get("delta").cloned().unwrap_or(Value::Null);
                let block = self
                    .whole
                    .as_mut()
                    .and_then(|m| m.get_mut("content"))
                    .and_then(|c| c.get_mut(index))
                    .and_then(Value::as_object_mut);
                match (delta.get("type").and_then(Value::as_str), block) {
                    (Some("text_delta"), Some(b)) => append_str(b, "text", &delta["text"]),
                    (Some("thinking_delta"), Some(b)) => {
                        append_str(b, "thinking", &delta["thinking"])
                    }
                    (Some("signature_delta"), Some(b)) => {
                        append_str(b, "signature", &delta["signature"])
                    }
                    (Some("input_json_delta"), Some(_)) => {
                        if let (Some(buf), Some(p)) = (
                            self.partial_json.get_mut(index),
                            delta.get("partial_json").and_then(Value::as_str),
                        ) {
                            buf.push_str(p);
                        }
                    }
                    _ => {}
                }
            }
            Some("content_block_stop") => {
                let index = event.get("index").and_then(Value::as_u64).unwrap_or(0) as usize;
                let json = self.partial_json.get(index).filter(|s| !s.is_empty());
                if let (Some(json), Some(b)) = (
                    json,
                    self.whole
                        .as_mut()
                        .and_then(|m| m.get_mut("content"))
                        .and_then(|c| c.get_mut(index))
                        .and_then(Value::as_object_mut),
                ) && let Ok(input) = serde_json::from_str::<Value>(json)
                {
                    b.insert("input".into(), input);
                }
            }
            Some("message_delta") => {
                let Some(m) = self.whole.as_mut().and_then(Value::as_object_mut) else {
                    return;
                };
                if let Some(d) = event.get("delta").and_then(Value::as_object) {
                    for (k, v) in d {
                        m.insert(k.clone(), v.clone());
                    }
                }
                if let Some(u) = event.get("usage").and_then(Value::as_object) {
                    let usage = m.entry("usage").or_insert_with(|| json!({}));
                    if let Some(usage) = usage.as_object_mut() {
                        for (k, v) in u {
                            usage.insert(k.clone(), v.clone());
                        }
                    }
                }
            }
            _ => {}
        }
    }

    /// The answer the engine would have sent without streaming.
    pub fn finish(self) -> Result<Value, AssembleError> {
        match self.api {
            Api::Messages => self.whole.ok_or(AssembleError::Incomplete("message_start")),
            Api::Responses => self
                .whole
                .ok_or(AssembleError::Incomplete("response.completed")),
            Api::Completions | Api::Chat => {
                if self.choices.is_empty() && self.head.is_empty() {
                    return Err(AssembleError::Incomplete("any choice"));
                }
                Ok(self.choices_answer())
            }
        }
    }

    fn choices_answer(mut self) -> Value {
        self.choices.sort_by_key(|c| c.index);
        let get = |k: &str| self.head.get(k).cloned().unwrap_or(Value::Null);
        let choices: Vec<Value> = self
            .choices
            .iter()
            .map(|c| match self.api {
                Api::Completions => {
                    let mut o = json!({
                        "index": c.index, "text": c.text, "logprobs": c.logprobs.clone().unwrap_or(Value::Null),
                        "finish_reason": c.finish_reason, "stop_reason": c.stop_reason,
                        "prompt_logprobs": c.prompt_logprobs.clone().unwrap_or(Value::Null),
                    });
                    if let Some(ids) = &c.token_ids {
                        o["token_ids"] = Value::Array(ids.clone());
                    }
                    o
                }
                _ => {
                    let content = if c.saw_text || c.tool_calls.is_empty() {
                        Value::String(c.text.clone())
                    } else {
                        Value::Null
                    };
                    let mut o = json!({
                        "index": c.index,
                        "message": {
                            "role": c.role.clone().unwrap_or_else(|| json!("assistant")),
                            "content": content, "refusal": null, "annotations": null, "audio": null,
                            "function_call": null,
                            "tool_calls": c.tool_calls.iter().cloned().map(Value::Object).collect::<Vec<_>>(),
                            "reasoning_content": c.reasoning.clone().map_or(Value::Null, Value::String),
                        },
                        "logprobs": c.logprobs.clone().unwrap_or(Value::Null),
                        "finish_reason": c.finish_reason, "stop_reason": c.stop_reason,
                    });
                    if let Some(ids) = &c.token_ids {
                        o["token_ids"] = Value::Array(ids.clone());
                    }
                    o
                }
            })
            .collect();
        match self.api {
            Api::Completions => json!({
                "id": get("id"), "object": "text_completion", "created": get("created"),
                "model": get("model"), "choices": choices, "usage": self.usage,
                "system_fingerprint": get("system_fingerprint"), "kv_transfer_params": null,
            }),
            _ => json!({
                "id": get("id"), "object": "chat.completion", "created": get("created"),
                "model": get("model"), "choices": choices, "service_tier": get("service_tier"),
                "system_fingerprint": get("system_fingerprint"), "usage": self.usage,
                "prompt_logprobs": null, "kv_transfer_params": null,
            }),
        }
    }
}

fn append_str(obj: &mut Map<String, Value>, key: &str, add: &Value) {
    let Some(add) = add.as_str() else { return };
    match obj.get_mut(key) {
        Some(Value::String(s)) => s.push_str(add),
        _ => {
            obj.insert(key.into(), Value::String(add.to_owned()));
        }
    }
}

/// Merges a streamed tool-call delta into the calls so far (by `index`: the id, type and name
/// arrive once, the arguments in pieces).
fn merge_tool_call(calls: &mut Vec<Map<String, Value>>, delta: &Value) {
    let index = delta.get("index").and_then(Value::as_u64).unwrap_or(0);
    let at = match calls
        .iter()
        .position(|c| c.get("index").and_then(Value::as_u64) == Some(index))
    {
        Some(at) => at,
        None => {
            let mut c = Map::new();
            c.insert("index".into(), json!(index));
            calls.push(c);
            calls.len() - 1
        }
    };
    let call = &mut calls[at];
    for k in ["id", "type"] {
        if let Some(v) = delta.get(k)
            && !v.is_null()
        {
            call.insert(k.into(), v.clone());
        }
    }
    if let Some(f) = delta.get("function").and_then(Value::as_object) {
        let func = call.entry("function").or_insert_with(|| json!({}));
        if let Some(func) = func.as_object_mut() {
            if let Some(name) = f.get("name")
                && !name.is_null()
            {
                func.insert("name".into(), name.clone());
            }
            if let Some(args) = f.get("arguments") {
                append_str(func, "arguments", args);
            }
        }
    }
    if let Some(f) = call.get_mut("function").and_then(Value::as_object_mut) {
        f.entry("arguments").or_insert_with(|| json!(""));
    }
}

/// Appends a chunk's logprobs: chat's `{"content": [...]}` and completions'
/// `{"tokens", "token_logprobs", "top_logprobs", "text_offset"}` arrays.
fn merge_logprobs(acc: &mut Option<Value>, chunk: &Value) {
    let Some(acc) = acc else {
        *acc = Some(chunk.clone());
        return;
    };
    let (Some(a), Some(c)) = (acc.as_object_mut(), chunk.as_object()) else {
        return;
    };
    for (k, v) in c {
        match (a.get_mut(k), v) {
            (Some(Value::Array(mine)), Value::Array(more)) => mine.extend(more.iter().cloned()),
            (None, v) => {
                a.insert(k.clone(), v.clone());
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assemble(api: Api, events: &[Value]) -> Value {
        let mut a = Assembler::new(api);
        for e in events {
            a.push(e).unwrap();
        }
        a.finish().unwrap()
    }

    #[test]
    fn completions() {
        let e = |text: &str, finish: Value| {
            json!({"id":"cmpl-1","object":"text_completion","created":7,"model":"m",
                "choices":[{"index":0,"text":text,"logprobs":null,"finish_reason":finish,"stop_reason":null}],"usage":null})
        };
        let usage = json!({"id":"cmpl-1","object":"text_completion","created":7,"model":"m","choices":[],
            "usage":{"prompt_tokens":3,"total_tokens":5,"completion_tokens":2}});
        let v = assemble(
            Api::Completions,
            &[e("Hel", Value::Null), e("lo", json!("length")), usage],
        );
        assert_eq!(
            v,
            json!({"id":"cmpl-1","object":"text_completion","created":7,"model":"m",
                "choices":[{"index":0,"text":"Hello","logprobs":null,"finish_reason":"length","stop_reason":null,"prompt_logprobs":null}],
                "usage":{"prompt_tokens":3,"total_tokens":5,"completion_tokens":2},
                "system_fingerprint":null,"kv_transfer_params":null})
        );
    }

    #[test]
    fn chat_with_two_choices_tool_calls_reasoning_and_logprobs() {
        let ev = |choices: Value| json!({"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m","choices":choices});
        let v = assemble(
            Api::Chat,
            &[
                ev(
                    json!([{"index":0,"delta":{"role":"assistant","content":""}},
                          {"index":1,"delta":{"role":"assistant","content":""}}]),
                ),
                ev(
                    json!([{"index":1,"delta":{"content":"B"},"logprobs":{"content":[{"token":"B","logprob":-1.0}]}}]),
                ),
                ev(json!([{"index":0,"delta":{"reasoning_content":"think"}}])),
                ev(
                    json!([{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"f","arguments":"{\"a\""}}]}}]),
                ),
                ev(
                    json!([{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":":1}"}}]}}]),
                ),
                ev(
                    json!([{"index":1,"delta":{"content":"b"},"logprobs":{"content":[{"token":"b","logprob":-2.0}]},"finish_reason":"stop"}]),
                ),
                ev(json!([{"index":0,"delta":{},"finish_reason":"tool_calls"}])),
            ],
        );
        let c0 = &v["choices"][0];
        assert_eq!(c0["message"]["content"], "");
        assert_eq!(c0["message"]["reasoning_content"], "think");
        assert_eq!(
            c0["message"]["tool_calls"],
            json!([{"index":0,"id":"call_1","type":"function","function":{"name":"f","arguments":"{\"a\":1}"}}])
        );
        assert_eq!(c0["finish_reason"], "tool_calls");
        let c1 = &v["choices"][1];
        assert_eq!(c1["message"]["content"], "Bb");
        assert_eq!(
            c1["logprobs"]["content"],
            json!([{"token":"B","logprob":-1.0},{"token":"b","logprob":-2.0}])
        );
        assert_eq!(v["object"], "chat.completion");
        assert_eq!(v["id"], "chatcmpl-1");
    }

    #[test]
    fn messages_and_responses() {
        let v = assemble(
            Api::Messages,
            &[
                json!({"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","model":"m","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":5,"output_tokens":0}}}),
                json!({"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}),
                json!({"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi"}}),
                json!({"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"!"}}),
                json!({"type":"content_block_stop","index":0}),
                json!({"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"t","name":"f","input":{}}}),
                json!({"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"x\":"}}),
                json!({"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"2}"}}),
                json!({"type":"content_block_stop","index":1}),
                json!({"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":3}}),
                json!({"type":"message_stop"}),
            ],
        );
        assert_eq!(v["content"][0]["text"], "Hi!");
        assert_eq!(v["content"][1]["input"], json!({"x":2}));
        assert_eq!(v["stop_reason"], "end_turn");
        assert_eq!(v["usage"], json!({"input_tokens":5,"output_tokens":3}));

        let r = assemble(
            Api::Responses,
            &[
                json!({"type":"response.created","response":{"id":"r","status":"in_progress"}}),
                json!({"type":"response.output_text.delta","delta":"x"}),
                json!({"type":"response.completed","response":{"id":"r","status":"completed"}}),
            ],
        );
        assert_eq!(r, json!({"id":"r","status":"completed"}));
    }

    #[test]
    fn errors_and_incomplete_streams() {
        let mut a = Assembler::new(Api::Chat);
        assert!(matches!(
            a.push(&json!({"object":"error","message":"boom","code":503})),
            Err(AssembleError::Upstream(_))
        ));
        assert_eq!(
            Assembler::new(Api::Responses).finish(),
            Err(AssembleError::Incomplete("response.completed"))
        );
        assert!(Assembler::new(Api::Completions).finish().is_err());
        let mut body = Map::new();
        body.insert("use_beam_search".into(), json!(true));
        assert!(!can_stream(&body));
        body.clear();
        body.insert("best_of".into(), json!(1));
        assert!(can_stream(&body));
    }
}
