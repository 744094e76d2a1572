//! vLLM's normalization of a chat request before the template sees it
//! (`vllm/entrypoints/chat_utils.py`): content parts joined or kept as parts depending on what
//! the template iterates, tool-call `arguments` parsed into objects, tools dumped with every
//! declared field.

use serde_json::{Map, Value as Json};

use super::ChatError;

/// vLLM's content-format detection, simplified: a template that loops over a message's
/// `content` wants the OpenAI list of parts; otherwise parts are joined into one string.
pub(super) fn detects_openai_content(template: &str) -> bool {
    let compact: String = template.split_whitespace().collect::<Vec<_>>().join(" ");
    // `for <name> in <message var><content access>` (a containment test like
    // `'</think>' in message.content` does not count).
    compact.match_indices("for ").any(|(at, _)| {
        let rest = &compact[at + 4..];
        let Some((var, after)) = rest.split_once(' ') else {
            return false;
        };
        let iterates =
            var.chars().all(|c| c.is_alphanumeric() || c == '_') && after.starts_with("in ");
        iterates
            && [
                "message['content']",
                "message[\"content\"]",
                "message.content",
                "msg['content']",
                "msg.content",
                "m.content",
                "m['content']",
            ]
            .iter()
            .any(|access| after[3..].starts_with(access))
    })
}

pub(super) fn normalize_message(m: &Json, openai_content: bool) -> Result<Json, ChatError> {
    let obj = m
        .as_object()
        .ok_or_else(|| ChatError::InvalidRequest("each message must be an object".into()))?;
    let role = obj
        .get("role")
        .and_then(Json::as_str)
        .ok_or_else(|| ChatError::InvalidRequest("a message has no string `role`".into()))?;
    let mut out = Map::new();
    out.insert("role".into(), Json::String(role.to_owned()));
    let content = match obj.get("content") {
        None | Some(Json::Null) => Json::String(String::new()),
        Some(Json::String(s)) => Json::String(s.clone()),
        Some(Json::Array(parts)) => {
            let mut texts = Vec::new();
            for part in parts {
                match part {
                    Json::String(s) => texts.push(s.clone()),
                    Json::Object(p)
                        if matches!(
                            p.get("type").and_then(Json::as_str),
                            Some("text" | "input_text")
                        ) =>
                    {
                        let text = p.get("text").and_then(Json::as_str).ok_or_else(|| {
                            ChatError::InvalidRequest("a text part has no string `text`".into())
                        })?;
                        texts.push(text.to_owned());
                    }
                    Json::Object(p) => {
                        let kind = p.get("type").and_then(Json::as_str).unwrap_or("?");
                        return Err(ChatError::InvalidRequest(format!(
                            "content part type {kind:?} is not supported for prefix scoring"
                        )));
                    }
                    _ => {
                        return Err(ChatError::InvalidRequest(
                            "content parts must be objects or strings".into(),
                        ));
                    }
                }
            }
            if openai_content {
                Json::Array(
                    texts
                        .into_iter()
                        .map(|t| serde_json::json!({"type": "text", "text": t}))
                        .collect(),
                )
            } else {
                Json::String(texts.join("\n"))
            }
        }
        Some(_) => {
            return Err(ChatError::InvalidRequest(
                "`content` must be a string, an array or null".into(),
            ));
        }
    };
    out.insert("content".into(), content);
    if let Some(calls) = obj.get("tool_calls").filter(|c| !c.is_null()) {
        let calls = calls
            .as_array()
            .ok_or_else(|| ChatError::InvalidRequest("`tool_calls` must be an array".into()))?;
        let mut fixed = Vec::with_capacity(calls.len());
        for call in calls {
            let mut call = call.clone();
            if let Some(f) = call.get_mut("function").and_then(Json::as_object_mut) {
                // transformers wants arguments as objects; vLLM parses JSON strings.
                let args = match f.get("arguments") {
                    Some(Json::String(s)) if !s.is_empty() => {
                        serde_json::from_str(s).map_err(|e| {
                            ChatError::InvalidRequest(format!(
                                "tool call arguments are not JSON: {e}"
                            ))
                        })?
                    }
                    Some(Json::Object(o)) => Json::Object(o.clone()),
                    Some(Json::Array(a)) => Json::Array(a.clone()),
                    _ => Json::Object(Map::new()),
                };
                f.insert("arguments".into(), args);
            }
            fixed.push(call);
        }
        out.insert("tool_calls".into(), Json::Array(fixed));
    }
    for key in ["tool_call_id", "name", "reasoning_content"] {
        if let Some(v) = obj.get(key).filter(|v| !v.is_null()) {
            out.insert(key.into(), v.clone());
        }
    }
    Ok(Json::Object(out))
}

/// `ChatCompletionToolsParam.model_dump()`: declared fields in order, extras after.
pub(super) fn normalize_tool(t: &Json) -> Result<Json, ChatError> {
    let obj = t
        .as_object()
        .ok_or_else(|| ChatError::InvalidRequest("each tool must be an object".into()))?;
    let f = obj
        .get("function")
        .and_then(Json::as_object)
        .ok_or_else(|| ChatError::InvalidRequest("a tool has no `function` object".into()))?;
    let name = f
        .get("name")
        .and_then(Json::as_str)
        .ok_or_else(|| ChatError::InvalidRequest("a tool function has no `name`".into()))?;
    let mut func = Map::new();
    func.insert("name".into(), Json::String(name.to_owned()));
    func.insert(
        "description".into(),
        f.get("description").cloned().unwrap_or(Json::Null),
    );
    func.insert(
        "parameters".into(),
        f.get("parameters").cloned().unwrap_or(Json::Null),
    );
    for (k, v) in f
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "name" | "description" | "parameters"))
    {
        func.insert(k.clone(), v.clone());
    }
    let mut out = Map::new();
    out.insert(
        "type".into(),
        obj.get("type")
            .cloned()
            .unwrap_or_else(|| Json::String("function".into())),
    );
    out.insert("function".into(), Json::Object(func));
    for (k, v) in obj
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "type" | "function"))
    {
        out.insert(k.clone(), v.clone());
    }
    Ok(Json::Object(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_format_detection() {
        assert!(detects_openai_content(
            "{% for part in message['content'] %}{{ part.text }}{% endfor %}"
        ));
        assert!(detects_openai_content("{%- for c in message.content %}"));
        assert!(!detects_openai_content(
            "{% if '</think>' in message.content %}x{% endif %}"
        ));
        assert!(!detects_openai_content(
            "{% for message in messages %}{{ message.content }}{% endfor %}"
        ));
    }
}
