//! The prompt-shaping fields of an OpenAI `/v1/chat/completions` body, checked once on arrival.

use serde_json::{Map, Value as Json};

use super::ChatError;
use super::normalize::{normalize_message, normalize_tool};

/// The parts of an OpenAI chat request that shape the prompt.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ChatRequest {
    /// `messages`, as sent.
    pub messages: Vec<Json>,
    /// `tools`, as sent.
    pub tools: Option<Vec<Json>>,
    /// `documents` (RAG templates).
    pub documents: Option<Vec<Json>>,
    /// `add_generation_prompt` (vLLM default: true).
    pub add_generation_prompt: bool,
    /// `continue_final_message` (vLLM default: false).
    pub continue_final_message: bool,
    /// `chat_template_kwargs` (e.g. `enable_thinking`).
    pub chat_template_kwargs: Map<String, Json>,
}

impl ChatRequest {
    /// A request with these messages and vLLM's defaults.
    pub fn new(messages: Vec<Json>) -> Self {
        Self {
            messages,
            add_generation_prompt: true,
            ..Default::default()
        }
    }

    /// Reads the prompt-shaping fields of an OpenAI `/v1/chat/completions` body.
    pub fn from_openai_body(body: &Json) -> Result<Self, ChatError> {
        let invalid = |m: &str| ChatError::InvalidRequest(m.to_owned());
        let messages = body
            .get("messages")
            .and_then(Json::as_array)
            .ok_or_else(|| invalid("`messages` must be an array"))?;
        if messages.is_empty() {
            return Err(invalid("`messages` must not be empty"));
        }
        let list = |name: &str| -> Result<Option<Vec<Json>>, ChatError> {
            match body.get(name) {
                None | Some(Json::Null) => Ok(None),
                Some(Json::Array(a)) => Ok(Some(a.clone())),
                Some(_) => Err(ChatError::InvalidRequest(format!(
                    "`{name}` must be an array"
                ))),
            }
        };
        let flag = |name: &str, default: bool| -> Result<bool, ChatError> {
            match body.get(name) {
                None | Some(Json::Null) => Ok(default),
                Some(Json::Bool(b)) => Ok(*b),
                Some(_) => Err(ChatError::InvalidRequest(format!(
                    "`{name}` must be a boolean"
                ))),
            }
        };
        // Every message and tool must be well-formed whatever renders them later.
        for m in messages {
            normalize_message(m, false)?;
        }
        if let Some(Json::Array(tools)) = body.get("tools") {
            for t in tools {
                normalize_tool(t)?;
            }
        }
        let kwargs = match body.get("chat_template_kwargs") {
            None | Some(Json::Null) => Map::new(),
            Some(Json::Object(m)) => m.clone(),
            Some(_) => return Err(invalid("`chat_template_kwargs` must be an object")),
        };
        Ok(Self {
            messages: messages.clone(),
            tools: list("tools")?,
            documents: list("documents")?,
            add_generation_prompt: flag("add_generation_prompt", true)?,
            continue_final_message: flag("continue_final_message", false)?,
            chat_template_kwargs: kwargs,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn bad_requests_are_rejected() {
        for body in [
            json!({}),
            json!({"messages": []}),
            json!({"messages": "hi"}),
            json!({"messages": [{"role": "user"}], "tools": {}}),
            json!({"messages": [{"role": "user"}], "add_generation_prompt": "yes"}),
            json!({"messages": [{"content": "no role"}]}),
            json!({"messages": [{"role": "user", "content": 5}]}),
            json!({"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]}),
        ] {
            assert!(ChatRequest::from_openai_body(&body).is_err(), "{body}");
        }
    }
}
