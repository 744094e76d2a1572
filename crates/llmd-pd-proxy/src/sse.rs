//! Server-sent events from the decode engine, line by line: complete lines are handed on as they
//! arrive (a partial one waits for the next chunk), `data:` payloads are parsed where the proxy
//! needs them (to find the first token, to rewrite `cached_tokens` in usage events), and
//! everything else passes unchanged.

use bytes::Bytes;
use serde_json::Value;

use crate::nixl;

/// Splits a byte stream into complete lines.
#[derive(Debug, Default)]
pub struct Lines {
    buf: Vec<u8>,
}

impl Lines {
    /// Adds a chunk; returns the complete lines it finished (with their `\n`), if any.
    pub fn push(&mut self, chunk: &[u8]) -> Option<Vec<u8>> {
        self.buf.extend_from_slice(chunk);
        let last_nl = self.buf.iter().rposition(|b| *b == b'\n')?;
        let rest = self.buf.split_off(last_nl + 1);
        Some(std::mem::replace(&mut self.buf, rest))
    }

    /// What is left at the end of the stream (a last line without `\n`).
    pub fn finish(&mut self) -> Option<Vec<u8>> {
        (!self.buf.is_empty()).then(|| std::mem::take(&mut self.buf))
    }
}

/// The `data:` payloads of complete SSE lines (`[DONE]` included, comments and `event:` lines
/// not).
pub fn data_payloads(lines: &[u8]) -> impl Iterator<Item = &str> {
    lines.split(|b| *b == b'\n').filter_map(|line| {
        let line = std::str::from_utf8(line).ok()?.trim_end_matches('\r');
        Some(line.strip_prefix("data:")?.trim_start())
    })
}

/// True when this event carries generated output: the point a streaming client counts its
/// first token at. Covers OpenAI completions (`choices[].text`), chat (`choices[].delta`
/// content, reasoning or tool calls), a finish reason on an otherwise empty event (a request
/// that generated nothing), Anthropic messages (`content_block_delta`) and the Responses API
/// (`response.*.delta`). An event the proxy does not recognise does not count.
pub fn carries_output(event: &Value) -> bool {
    if let Some(choices) = event.get("choices").and_then(Value::as_array) {
        return choices.iter().any(|c| {
            let non_empty = |v: Option<&Value>| match v {
                Some(Value::String(s)) => !s.is_empty(),
                Some(Value::Array(a)) => !a.is_empty(),
                Some(Value::Null) | None => false,
                Some(_) => true,
            };
            non_empty(c.get("text"))
                || c.get("delta").is_some_and(|d| {
                    ["content", "reasoning_content", "reasoning", "tool_calls"]
                        .iter()
                        .any(|k| non_empty(d.get(*k)))
                })
                || non_empty(c.get("finish_reason"))
        });
    }
    match event.get("type").and_then(Value::as_str) {
        Some("content_block_delta") => true,
        Some(t) => t.starts_with("response.") && t.ends_with(".delta"),
        None => false,
    }
}

/// Whether any complete line in `lines` is an event with output.
pub fn has_output(lines: &[u8]) -> bool {
    data_payloads(lines)
        .filter(|p| *p != "[DONE]")
        .filter_map(|p| serde_json::from_str::<Value>(p).ok())
        .any(|v| carries_output(&v))
}

/// Where the `data: [DONE]` line starts, if these lines have it at a line start.
pub fn find_done(bytes: &[u8]) -> Option<usize> {
    const DONE: &[u8] = b"data: [DONE]";
    bytes
        .windows(DONE.len())
        .position(|w| w == DONE)
        .filter(|at| *at == 0 || bytes[at - 1] == b'\n')
}

/// True when the text has a `"usage"` key whose value is an object.
fn has_usage_object(text: &str) -> bool {
    text.match_indices("\"usage\"").any(|(at, key)| {
        text[at + key.len()..]
            .trim_start()
            .strip_prefix(':')
            .is_some_and(|rest| rest.trim_start().starts_with('{'))
    })
}

/// The lines with `usage.prompt_tokens_details.cached_tokens` set to `cached` in every usage
/// event (the nixlv2 convention: the client sees the prefill's cache hits).
pub fn rewrite_cached(bytes: &[u8], cached: u64) -> Bytes {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return Bytes::copy_from_slice(bytes);
    };
    if !has_usage_object(text) {
        // Most events carry `"usage": null` (or nothing): nothing to parse.
        return Bytes::copy_from_slice(bytes);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for line in text.split_inclusive('\n') {
        let (body, nl) = match line.strip_suffix('\n') {
            Some(b) => (b, "\n"),
            None => (line, ""),
        };
        let (body, cr) = match body.strip_suffix('\r') {
            Some(b) => (b, "\r"),
            None => (body, ""),
        };
        match nixl::rewrite_sse_line(body, cached) {
            Some(new) => out.push_str(&new),
            None => out.push_str(body),
        }
        out.push_str(cr);
        out.push_str(nl);
    }
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn lines_are_complete_and_the_rest_waits() {
        let mut l = Lines::default();
        assert_eq!(l.push(b"data: {\"a\""), None);
        assert_eq!(
            l.push(b":1}\n\ndata: {"),
            Some(b"data: {\"a\":1}\n\n".to_vec())
        );
        assert_eq!(l.finish(), Some(b"data: {".to_vec()));
        assert_eq!(l.finish(), None);
    }

    #[test]
    fn output_events_as_clients_count_them() {
        assert!(carries_output(&json!({"choices":[{"text":"a"}]})));
        assert!(!carries_output(&json!({"choices":[{"text":""}]})));
        // vLLM's first chat event carries only the role: not a token yet.
        assert!(!carries_output(
            &json!({"choices":[{"delta":{"role":"assistant","content":""}}]})
        ));
        assert!(carries_output(
            &json!({"choices":[{"delta":{"content":"x"}}]})
        ));
        assert!(carries_output(
            &json!({"choices":[{"delta":{"reasoning_content":"x"}}]})
        ));
        assert!(carries_output(
            &json!({"choices":[{"delta":{"tool_calls":[{"index":0}]}}]})
        ));
        assert!(carries_output(
            &json!({"choices":[{"text":"","finish_reason":"length"}]})
        ));
        assert!(!carries_output(&json!({"choices":[],"usage":{}})));
        assert!(carries_output(&json!({"type":"content_block_delta"})));
        assert!(carries_output(
            &json!({"type":"response.output_text.delta"})
        ));
        assert!(!carries_output(&json!({"type":"response.created"})));
        assert!(has_output(
            b": comment\ndata: {\"choices\":[{\"text\":\"a\"}]}\n\n"
        ));
        assert!(!has_output(b"data: [DONE]\n\n"));
    }

    #[test]
    fn only_usage_objects_are_parsed() {
        assert!(has_usage_object(r#"{"usage" : {"a":1}}"#));
        assert!(!has_usage_object(r#"{"usage":null,"text":"usage"}"#));
        let line = b"data: {\"choices\":[{\"text\":\"a\"}],\"usage\":null}\n\n";
        assert_eq!(&rewrite_cached(line, 5)[..], &line[..]);
    }

    #[test]
    fn done_and_cached_rewrite() {
        assert_eq!(find_done(b"data: x\n\ndata: [DONE]\n\n"), Some(9));
        assert_eq!(find_done(b"xdata: [DONE]"), None);
        let out = rewrite_cached(
            b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":9}}\r\n\r\n",
            7,
        );
        assert!(
            std::str::from_utf8(&out)
                .unwrap()
                .contains("\"cached_tokens\":7")
        );
        assert!(out.ends_with(b"\r\n\r\n"));
    }
}
