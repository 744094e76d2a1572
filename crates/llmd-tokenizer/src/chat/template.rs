//! The template environment transformers builds (`trim_blocks`, `lstrip_blocks`, loop controls,
//! Python string methods, `raise_exception`, `strftime_now`, its own `tojson`) and the context
//! it renders with.

use std::path::Path;

use minijinja::value::Value;
use minijinja::{Environment, Error as JinjaError, ErrorKind};
use serde_json::{Map, Value as Json};

use super::normalize::{detects_openai_content, normalize_message, normalize_tool};
use super::pyjson::tojson_filter;
use super::strftime::strftime_now;
use super::{ChatError, ChatRequest};

/// A compiled chat template with the special tokens it may refer to.
pub struct ChatTemplate {
    env: Environment<'static>,
    /// `bos_token`, `eos_token`, ... as strings.
    special_tokens: Vec<(String, String)>,
    /// The template iterates over message content parts (vLLM's "openai" content format).
    openai_content: bool,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("special_tokens", &self.special_tokens)
            .field("openai_content", &self.openai_content)
            .finish()
    }
}

const TEMPLATE_NAME: &str = "chat_template";

impl ChatTemplate {
    /// Reads `chat_template` and the special tokens from a `tokenizer_config.json`. `None` when
    /// the file has no template.
    pub fn from_tokenizer_config(path: &Path) -> Result<Option<Self>, ChatError> {
        let err = |reason: String| ChatError::Config {
            path: path.display().to_string(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let config: Json = serde_json::from_str(&text).map_err(|e| err(e.to_string()))?;
        let template = match &config["chat_template"] {
            Json::String(s) => s.clone(),
            // A list of named templates: take "default".
            Json::Array(named) => match named
                .iter()
                .find(|t| t["name"] == "default")
                .and_then(|t| t["template"].as_str())
            {
                Some(s) => s.to_owned(),
                None => return Ok(None),
            },
            _ => return Ok(None),
        };
        let mut special_tokens = Vec::new();
        for key in [
            "bos_token",
            "eos_token",
            "unk_token",
            "sep_token",
            "pad_token",
            "cls_token",
            "mask_token",
        ] {
            let token = match &config[key] {
                Json::String(s) => Some(s.clone()),
                Json::Object(o) => o.get("content").and_then(Json::as_str).map(str::to_owned),
                _ => None,
            };
            if let Some(t) = token {
                special_tokens.push((key.to_owned(), t));
            }
        }
        Self::new(template, special_tokens).map(Some)
    }

    /// Compiles `template`.
    pub fn new(template: String, special_tokens: Vec<(String, String)>) -> Result<Self, ChatError> {
        let openai_content = detects_openai_content(&template);
        let mut env = Environment::new();
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()?;
        env.set_syntax(syntax);
        env.add_filter("tojson", tojson_filter);
        env.add_function(
            "raise_exception",
            |msg: String| -> Result<Value, JinjaError> {
                Err(JinjaError::new(ErrorKind::InvalidOperation, msg))
            },
        );
        env.add_function("strftime_now", |fmt: String| strftime_now(&fmt));
        env.add_template_owned(TEMPLATE_NAME, template)?;
        Ok(Self {
            env,
            special_tokens,
            openai_content,
        })
    }

    /// Renders the request as `apply_chat_template(tokenize=False)` would after vLLM's
    /// normalization.
    pub fn render(&self, request: &ChatRequest) -> Result<String, ChatError> {
        if request.add_generation_prompt && request.continue_final_message {
            return Err(ChatError::InvalidRequest(
                "continue_final_message and add_generation_prompt cannot both be true".into(),
            ));
        }
        let messages = request
            .messages
            .iter()
            .map(|m| normalize_message(m, self.openai_content))
            .collect::<Result<Vec<Json>, ChatError>>()?;
        let tools = request
            .tools
            .as_ref()
            .map(|t| t.iter().map(normalize_tool).collect::<Result<Vec<_>, _>>())
            .transpose()?;

        let mut ctx = Map::new();
        for (k, v) in &self.special_tokens {
            ctx.insert(k.clone(), Json::String(v.clone()));
        }
        ctx.insert("messages".into(), Json::Array(messages.clone()));
        ctx.insert("tools".into(), tools.map(Json::Array).unwrap_or(Json::Null));
        ctx.insert(
            "documents".into(),
            request
                .documents
                .clone()
                .map(Json::Array)
                .unwrap_or(Json::Null),
        );
        ctx.insert(
            "add_generation_prompt".into(),
            Json::Bool(request.add_generation_prompt),
        );
        for (k, v) in &request.chat_template_kwargs {
            ctx.insert(k.clone(), v.clone());
        }
        let template = self.env.get_template(TEMPLATE_NAME)?;
        let rendered = template.render(Value::from(minijinja::value::Serde(&ctx)))?;
        if request.continue_final_message {
            return continue_final(rendered, messages.last());
        }
        Ok(rendered)
    }
}

/// transformers' `continue_final_message`: cut the rendering right after the final message's
/// content, leaving it open.
fn continue_final(rendered: String, last: Option<&Json>) -> Result<String, ChatError> {
    let final_message = match last.map(|m| &m["content"]) {
        Some(Json::String(s)) => s.clone(),
        Some(Json::Array(parts)) => parts
            .last()
            .and_then(|p| p["text"].as_str())
            .unwrap_or_default()
            .to_owned(),
        _ => String::new(),
    };
    let stripped = final_message.trim();
    let Some(at) = rendered.rfind(stripped) else {
        return Err(ChatError::InvalidRequest(
            "continue_final_message: the final message is not in the rendered prompt".into(),
        ));
    };
    let lstripped = final_message.trim_start();
    let end = if rendered.get(at..at + lstripped.len()) == Some(final_message.as_str()) {
        at + lstripped.len()
    } else {
        at + stripped.len()
    };
    Ok(rendered[..end].to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn raise_exception_is_an_error() {
        let t = ChatTemplate::new(
            "{{ raise_exception('only user and assistant roles') }}".into(),
            vec![],
        )
        .unwrap();
        let err = t
            .render(&ChatRequest::new(vec![
                json!({"role": "user", "content": "x"}),
            ]))
            .unwrap_err();
        assert!(
            err.to_string().contains("only user and assistant roles"),
            "{err}"
        );
    }

    #[test]
    fn malformed_messages_are_rejected_at_render() {
        let t = ChatTemplate::new("{{ messages }}".into(), vec![]).unwrap();
        for m in [
            json!("hi"),
            json!({"content": "x"}),
            json!({"role": "user", "content": 5}),
            json!({"role": "user", "content": [{"type": "image_url"}]}),
        ] {
            assert!(t.render(&ChatRequest::new(vec![m.clone()])).is_err(), "{m}");
        }
        let both = ChatRequest {
            continue_final_message: true,
            ..ChatRequest::new(vec![json!({"role": "user", "content": "x"})])
        };
        assert!(t.render(&both).is_err());
    }
}
