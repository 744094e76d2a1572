//! Chat templates rendered as `transformers.apply_chat_template` renders them, after vLLM's
//! normalization of the request.
//!
//! transformers compiles templates in a Jinja2 sandbox with `trim_blocks=True`,
//! `lstrip_blocks=True` and loop controls, adds `raise_exception`, `strftime_now` and its own
//! `tojson` (Python's `json.dumps(x, ensure_ascii=False)`: `", "` and `": "` separators, key
//! order kept, floats in Python's `repr`), and passes `messages`, `tools`, `documents`,
//! `add_generation_prompt`, the special tokens (`bos_token`, `eos_token`, ...) and any
//! `chat_template_kwargs`. minijinja with `minijinja-contrib`'s Python string methods provides
//! the same environment; the tests compare its output with transformers' on real templates.
//!
//! vLLM's normalization (`vllm/entrypoints/chat_utils.py`): text content parts are joined with
//! `"\n"` for templates that expect string content; tool-call `arguments` strings are parsed
//! into objects; tools are dumped with every declared field (`description` and `parameters`
//! as `null` when absent).

use std::path::Path;

use minijinja::value::{Kwargs, Value, ValueKind};
use minijinja::{Environment, Error as JinjaError, ErrorKind};
use serde_json::{Map, Value as Json};

/// Errors of chat rendering.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    /// The request is not a valid chat request.
    #[error("invalid chat request: {0}")]
    InvalidRequest(String),
    /// The template failed to compile or render (including `raise_exception`).
    #[error("chat template: {0}")]
    Template(#[from] JinjaError),
    /// `tokenizer_config.json` could not be read.
    #[error("cannot read {path}: {reason}")]
    Config {
        /// File.
        path: String,
        /// Why.
        reason: String,
    },
}

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

/// vLLM's content-format detection, simplified: a template that loops over a message's
/// `content` wants the OpenAI list of parts; otherwise parts are joined into one string.
fn detects_openai_content(template: &str) -> bool {
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

fn normalize_message(m: &Json, openai_content: bool) -> Result<Json, ChatError> {
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
fn normalize_tool(t: &Json) -> Result<Json, ChatError> {
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

/// HF's `tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)`.
fn tojson_filter(value: Value, kwargs: Kwargs) -> Result<Value, JinjaError> {
    let indent: Option<Value> = kwargs.get("indent")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    let separators: Option<Value> = kwargs.get("separators")?;
    kwargs.assert_all_used()?;
    let indent = match indent {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) => match v.as_i64() {
            Some(n) => Some(" ".repeat(n.max(0) as usize)),
            None => Some(v.as_str().unwrap_or_default().to_owned()),
        },
    };
    let (item_sep, key_sep) = match separators.filter(|s| !s.is_none()) {
        Some(s) => {
            let item = s.get_item(&Value::from(0))?;
            let key = s.get_item(&Value::from(1))?;
            (
                item.as_str().unwrap_or(", ").to_owned(),
                key.as_str().unwrap_or(": ").to_owned(),
            )
        }
        None if indent.is_some() => (",".to_owned(), ": ".to_owned()),
        None => (", ".to_owned(), ": ".to_owned()),
    };
    let opts = PyJson {
        indent,
        item_sep,
        key_sep,
        sort_keys: sort_keys.unwrap_or(false),
        ensure_ascii: ensure_ascii.unwrap_or(false),
    };
    let mut out = String::new();
    opts.write(&mut out, &value, 0)?;
    Ok(Value::from_safe_string(out))
}

struct PyJson {
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    sort_keys: bool,
    ensure_ascii: bool,
}

impl PyJson {
    fn newline(&self, out: &mut String, depth: usize) {
        if let Some(ind) = &self.indent {
            out.push('\n');
            for _ in 0..depth {
                out.push_str(ind);
            }
        }
    }

    fn write(&self, out: &mut String, v: &Value, depth: usize) -> Result<(), JinjaError> {
        match v.kind() {
            ValueKind::Undefined | ValueKind::None => out.push_str("null"),
            ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
            ValueKind::Number => {
                if v.is_integer() {
                    out.push_str(&v.to_string());
                } else {
                    let f = f64::try_from(v.clone()).unwrap_or(f64::NAN);
                    out.push_str(&py_float_repr(f));
                }
            }
            ValueKind::String => self.string(out, v.as_str().unwrap_or_default()),
            ValueKind::Seq | ValueKind::Iterable => {
                let items: Vec<Value> = v.try_iter()?.collect();
                if items.is_empty() {
                    out.push_str("[]");
                    return Ok(());
                }
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(&self.item_sep);
                    }
                    self.newline(out, depth + 1);
                    self.write(out, item, depth + 1)?;
                }
                self.newline(out, depth);
                out.push(']');
            }
            ValueKind::Map => {
                let mut keys: Vec<Value> = v.try_iter()?.collect();
                if self.sort_keys {
                    keys.sort_by_key(|a| a.to_string());
                }
                if keys.is_empty() {
                    out.push_str("{}");
                    return Ok(());
                }
                out.push('{');
                for (i, k) in keys.iter().enumerate() {
                    if i > 0 {
                        out.push_str(&self.item_sep);
                    }
                    self.newline(out, depth + 1);
                    match k.as_str() {
                        Some(s) => self.string(out, s),
                        None => self.string(out, &k.to_string()),
                    }
                    out.push_str(&self.key_sep);
                    self.write(out, &v.get_item(k)?, depth + 1)?;
                }
                self.newline(out, depth);
                out.push('}');
            }
            _ => self.string(out, &v.to_string()),
        }
        Ok(())
    }

    fn string(&self, out: &mut String, s: &str) {
        out.push('"');
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '\u{08}' => out.push_str("\\b"),
                '\u{0c}' => out.push_str("\\f"),
                c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
                c if self.ensure_ascii && !c.is_ascii() => {
                    let mut buf = [0u16; 2];
                    for unit in c.encode_utf16(&mut buf) {
                        out.push_str(&format!("\\u{unit:04x}"));
                    }
                }
                c => out.push(c),
            }
        }
        out.push('"');
    }
}

/// Python's `repr(float)` as `json.dumps` writes it.
pub(crate) fn py_float_repr(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 {
            "Infinity".into()
        } else {
            "-Infinity".into()
        };
    }
    if f == 0.0 {
        return if f.is_sign_negative() {
            "-0.0".into()
        } else {
            "0.0".into()
        };
    }
    // Shortest round-trip digits and decimal exponent.
    let sci = format!("{f:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let negative = mantissa.starts_with('-');
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let sign = if negative { "-" } else { "" };
    if (-4..16).contains(&exp) {
        let point = exp + 1; // digits before the decimal point
        let body = if point <= 0 {
            format!("0.{}{}", "0".repeat((-point) as usize), digits)
        } else if point as usize >= digits.len() {
            format!("{}{}.0", digits, "0".repeat(point as usize - digits.len()))
        } else {
            format!(
                "{}.{}",
                &digits[..point as usize],
                &digits[point as usize..]
            )
        };
        format!("{sign}{body}")
    } else {
        let frac = if digits.len() > 1 {
            format!(".{}", &digits[1..])
        } else {
            String::new()
        };
        let esign = if exp < 0 { '-' } else { '+' };
        format!("{sign}{}{frac}e{esign}{:02}", &digits[..1], exp.abs())
    }
}

/// transformers' `strftime_now(format)`: the current local time (UTC here) formatted.
fn strftime_now(fmt: &str) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    strftime(secs, fmt)
}

pub(crate) fn strftime(unix: i64, fmt: &str) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    const DAYS: [&str; 7] = [
        "Thursday",
        "Friday",
        "Saturday",
        "Sunday",
        "Monday",
        "Tuesday",
        "Wednesday",
    ];
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let cum = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    let yday = cum[(month - 1) as usize] + day + i64::from(leap && month > 2);
    let weekday = DAYS[days.rem_euclid(7) as usize];
    let mname = MONTHS[(month - 1) as usize];
    let mut out = String::new();
    let mut chars = fmt.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('d') => out.push_str(&format!("{day:02}")),
            Some('m') => out.push_str(&format!("{month:02}")),
            Some('Y') => out.push_str(&year.to_string()),
            Some('y') => out.push_str(&format!("{:02}", year % 100)),
            Some('b') => out.push_str(&mname[..3]),
            Some('B') => out.push_str(mname),
            Some('a') => out.push_str(&weekday[..3]),
            Some('A') => out.push_str(weekday),
            Some('j') => out.push_str(&format!("{yday:03}")),
            Some('H') => out.push_str(&format!("{:02}", secs / 3600)),
            Some('M') => out.push_str(&format!("{:02}", secs % 3600 / 60)),
            Some('S') => out.push_str(&format!("{:02}", secs % 60)),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn python_float_repr() {
        for (f, s) in [
            (1.0, "1.0"),
            (1.5e-7, "1.5e-07"),
            (1e-7, "1e-07"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (123456789.5, "123456789.5"),
            (1e16, "1e+16"),
            (1e15, "1000000000000000.0"),
            (-2.5, "-2.5"),
            (0.1, "0.1"),
            (1.7976931348623157e308, "1.7976931348623157e+308"),
            (f64::NAN, "NaN"),
        ] {
            assert_eq!(py_float_repr(f), s, "{f}");
        }
    }

    #[test]
    fn strftime_matches_python() {
        // 2026-11-21 14:20:03 UTC was a Saturday.
        assert_eq!(
            strftime(1_795_270_803, "%d %b %Y %A %j %H:%M:%S %B %m %y %%"),
            "21 Nov 2026 Saturday 325 14:20:03 November 11 26 %"
        );
        assert_eq!(strftime(951_782_400, "%Y-%m-%d %a"), "2000-02-29 Tue");
    }

    #[test]
    fn tojson_is_python_json_dumps() {
        let t = ChatTemplate::new("{{ x | tojson }}|{{ x | tojson(indent=2) }}".into(), vec![])
            .unwrap();
        let mut kwargs = Map::new();
        kwargs.insert(
            "x".into(),
            json!({"b": [1, 2.0, "é\n\"q\""], "a": null, "c": {}}),
        );
        let req = ChatRequest {
            messages: vec![json!({"role": "user", "content": "x"})],
            chat_template_kwargs: kwargs,
            ..ChatRequest::new(vec![])
        };
        let out = t.render(&req).unwrap();
        assert_eq!(
            out,
            "{\"b\": [1, 2.0, \"é\\n\\\"q\\\"\"], \"a\": null, \"c\": {}}|{\n  \"b\": [\n    1,\n    2.0,\n    \"é\\n\\\"q\\\"\"\n  ],\n  \"a\": null,\n  \"c\": {}\n}"
        );
    }

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
