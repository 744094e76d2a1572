//! The `usage` of a response, read from its last bytes: GIE's token histograms.

/// Token counts of an OpenAI `usage` object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// `prompt_tokens`.
    pub prompt: u64,
    /// `completion_tokens`.
    pub completion: u64,
    /// `prompt_tokens_details.cached_tokens`, when reported.
    pub cached: Option<u64>,
}

/// What is read of a `usage` object (other fields are skipped without being kept).
#[derive(serde::Deserialize)]
struct UsageJson {
    prompt_tokens: u64,
    completion_tokens: u64,
    /// Any JSON: a malformed `prompt_tokens_details` loses only the cached count.
    #[serde(default)]
    prompt_tokens_details: Option<serde_json::Value>,
}

/// The last `usage` object in the end of a response body: a JSON response or an SSE stream
/// (where it is the last event before `[DONE]` with `stream_options.include_usage`).
pub fn find_usage(tail: &[u8]) -> Option<Usage> {
    const KEY: &[u8] = b"\"usage\"";
    let finder = memchr::memmem::FinderRev::new(KEY);
    let mut end = tail.len();
    while let Some(at) = finder.rfind(&tail[..end]) {
        end = at;
        let rest = &tail[at + KEY.len()..];
        let start = rest
            .iter()
            .position(|b| !matches!(b, b' ' | b'\t' | b'\r' | b'\n' | b':'))?;
        // The object is read up to its closing brace; what follows it is not looked at.
        let mut values =
            serde_json::Deserializer::from_slice(&rest[start..]).into_iter::<UsageJson>();
        if let Some(Ok(u)) = values.next() {
            return Some(Usage {
                prompt: u.prompt_tokens,
                completion: u.completion_tokens,
                cached: u
                    .prompt_tokens_details
                    .and_then(|d| d.get("cached_tokens")?.as_u64()),
            });
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_from_json_and_sse_tails() {
        let json = br#"{"id":"cmpl-1","choices":[{"text":"usage"}],"usage":{"prompt_tokens":12,"total_tokens":15,"completion_tokens":3,"prompt_tokens_details":{"cached_tokens":0}}}"#;
        assert_eq!(
            find_usage(json),
            Some(Usage {
                prompt: 12,
                completion: 3,
                cached: Some(0)
            })
        );
        let sse = b"data: {\"choices\":[{\"text\":\"a\"}],\"usage\":null}\n\ndata: {\"choices\":[],\"usage\": {\"prompt_tokens\":700,\"completion_tokens\":4,\"total_tokens\":704,\"prompt_tokens_details\":{\"cached_tokens\":640}}}\n\ndata: [DONE]\n\n";
        assert_eq!(
            find_usage(sse),
            Some(Usage {
                prompt: 700,
                completion: 4,
                cached: Some(640)
            })
        );
        // Only `usage: null` chunks, a cut-off object, or nothing: no usage.
        assert_eq!(
            find_usage(b"data: {\"usage\":null}\n\ndata: [DONE]\n\n"),
            None
        );
        assert_eq!(find_usage(br#"{"usage":{"prompt_tokens":1,"#), None);
        assert_eq!(find_usage(b""), None);
        // Without details.
        assert_eq!(
            find_usage(br#"{"usage":{"prompt_tokens":1,"completion_tokens":2}}"#),
            Some(Usage {
                prompt: 1,
                completion: 2,
                cached: None
            })
        );
        // A malformed details object loses only the cached count; other fields are skipped.
        assert_eq!(
            find_usage(br#"{"usage":{"prompt_tokens":1,"x":[1,{"y":2}],"completion_tokens":2,"prompt_tokens_details":"?"}}"#),
            Some(Usage {
                prompt: 1,
                completion: 2,
                cached: None
            })
        );
        // Counts that are not unsigned integers are not a usage.
        assert_eq!(
            find_usage(br#"{"usage":{"prompt_tokens":-1,"completion_tokens":2}}"#),
            None
        );
    }
}
