//! vLLM's OpenAI-compatible HTTP surface: `/v1/completions`, `/v1/chat/completions` (plain and
//! SSE streaming), `/v1/models`, `/health`, `/metrics`, with vLLM's response shapes and error
//! bodies (`{"object":"error","message","type","param","code"}`).

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::stream::{self, Stream, StreamExt};
use llmd_tokenizer::ChatRequest;
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;

use crate::config::{EngineArgs, OutputMode};
use crate::engine::{Emit, Engine, EngineRequest};
use crate::nixl::{Nixl, RemotePrefill, TransferFailure};
use crate::tokens::SimTokenizer;

/// Shared state of the HTTP handlers.
pub struct AppState {
    /// Flags.
    pub args: Arc<EngineArgs>,
    /// The engine.
    pub engine: Engine,
    /// Tokenizer.
    pub tokenizer: Arc<SimTokenizer>,
    /// Filler token ids (random mode).
    pub filler: Vec<u32>,
    /// Unix time the server started (`created` of the model card).
    pub started: u64,
    /// P/D state.
    pub nixl: Arc<Nixl>,
    /// Fault injection.
    pub faults: Arc<crate::faults::Faults>,
    /// The last `--record-requests` requests, oldest first.
    pub recorded: parking_lot::Mutex<std::collections::VecDeque<Value>>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("model", &self.args.model)
            .finish()
    }
}

/// A vLLM-style error response.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    kind: &'static str,
    message: String,
}

impl ApiError {
    fn bad_request(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            kind: "BadRequestError",
            message: message.into(),
        }
    }

    fn not_found(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            kind: "NotFoundError",
            message: message.into(),
        }
    }

    fn kv_transfer(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_GATEWAY,
            kind: "KVTransferError",
            message: message.into(),
        }
    }

    fn unavailable(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            kind: "ServiceUnavailableError",
            message: message.into(),
        }
    }

    /// The error body vLLM returns.
    pub fn body(&self) -> Value {
        json!({"object": "error", "message": self.message, "type": self.kind, "param": null, "code": self.status.as_u16()})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(
                status = self.status.as_u16(),
                message = self.message,
                "request failed"
            );
        } else {
            tracing::debug!(
                status = self.status.as_u16(),
                message = self.message,
                "request rejected"
            );
        }
        (self.status, axum::Json(self.body())).into_response()
    }
}

/// The router of one simulated pod (mount `/metrics` beside it).
pub fn router(state: Arc<AppState>) -> Router {
    let nixl = Router::new()
        .route("/nixl/v1/pull", post(crate::nixl::pull_endpoint))
        .with_state(state.nixl.clone());
    let router = Router::new()
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/models", get(models))
        .route("/health", get(|| async { StatusCode::OK }));
    let router = if state.args.record_requests > 0 {
        router.route("/debug/requests", get(recorded))
    } else {
        router
    };
    router.with_state(state).merge(nixl)
}

/// `GET /debug/requests`: the recorded requests, oldest first.
async fn recorded(State(state): State<Arc<AppState>>) -> axum::Json<Value> {
    axum::Json(Value::Array(
        state.recorded.lock().iter().cloned().collect(),
    ))
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

async fn models(State(state): State<Arc<AppState>>) -> Response {
    let names = std::iter::once(&state.args.model).chain(&state.args.served_model_names);
    let data: Vec<Value> = names
        .map(|name| {
            json!({
                "id": name, "object": "model", "created": state.started, "owned_by": "vllm", "root": state.args.model,
                "parent": null, "max_model_len": state.args.max_model_len,
                "permission": [{"id": format!("modelperm-{}", name.len()), "object": "model_permission", "created": state.started,
                    "allow_create_engine": false, "allow_sampling": true, "allow_logprobs": true, "allow_search_indices": false,
                    "allow_view": true, "allow_fine_tuning": false, "organization": "*", "group": null, "is_blocking": false}],
            })
        })
        .collect();
    axum::Json(json!({"object": "list", "data": data})).into_response()
}

/// Reads the body within the size limit and parses it as a JSON object.
async fn read_json(
    state: &AppState,
    req: Request,
) -> Result<(HeaderMap, Map<String, Value>), ApiError> {
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, state.args.max_request_body_bytes)
        .await
        .map_err(|_| ApiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            kind: "BadRequestError",
            message: format!(
                "request body exceeds {} bytes or could not be read",
                state.args.max_request_body_bytes
            ),
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

/// Fields both APIs share.
struct Common {
    model: String,
    max_tokens: Option<usize>,
    stream: bool,
    include_usage: bool,
}

fn common(
    state: &AppState,
    body: &Map<String, Value>,
    max_tokens_fields: &[&str],
) -> Result<Common, ApiError> {
    let model = match body.get("model") {
        None | Some(Value::Null) => state.args.model.clone(),
        Some(Value::String(m)) if state.args.serves(m) => m.clone(),
        Some(Value::String(m)) => {
            return Err(ApiError::not_found(format!(
                "The model `{m}` does not exist."
            )));
        }
        Some(_) => return Err(ApiError::bad_request("`model` must be a string")),
    };
    let mut max_tokens = None;
    for field in max_tokens_fields {
        match body.get(*field) {
            None | Some(Value::Null) => {}
            Some(v) => match v.as_i64() {
                Some(n) if n >= 1 => max_tokens = Some(n as usize),
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
    Ok(Common {
        model,
        max_tokens,
        stream,
        include_usage,
    })
}

fn request_id(headers: &HeaderMap, prefix: &str) -> String {
    let base = headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
    format!("{prefix}{base}")
}

async fn completions(State(state): State<Arc<AppState>>, req: Request) -> Response {
    match completions_inner(state, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn chat_completions(State(state): State<Arc<AppState>>, req: Request) -> Response {
    match chat_inner(state, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn completions_inner(state: Arc<AppState>, req: Request) -> Result<Response, ApiError> {
    let arrival = std::time::Instant::now();
    let (headers, body) = read_json(&state, req).await?;
    let c = common(&state, &body, &["max_tokens"])?;
    let (prompt, echo_text) = match body.get("prompt") {
        Some(Value::String(p)) => (
            state
                .tokenizer
                .encode_completion(p)
                .map_err(|e| ApiError::bad_request(e.to_string()))?,
            p.clone(),
        ),
        Some(Value::Array(items)) if items.len() == 1 && items[0].is_string() => {
            let p = items[0].as_str().unwrap_or_default().to_owned();
            (
                state
                    .tokenizer
                    .encode_completion(&p)
                    .map_err(|e| ApiError::bad_request(e.to_string()))?,
                p,
            )
        }
        Some(Value::Array(items))
            if !items.is_empty()
                && items
                    .iter()
                    .all(|i| i.as_u64().is_some_and(|t| t <= u64::from(u32::MAX))) =>
        {
            let ids: Vec<u32> = items
                .iter()
                .filter_map(Value::as_u64)
                .map(|t| t as u32)
                .collect();
            let text = state.tokenizer.decode(&ids);
            (ids, text)
        }
        Some(Value::Array(_)) => {
            return Err(ApiError::bad_request(
                "`prompt` must be a string, one string, or a list of token ids",
            ));
        }
        _ => {
            return Err(ApiError::bad_request(
                "`prompt` is required and must be a string or a list of token ids",
            ));
        }
    };
    let id = request_id(&headers, "cmpl-");
    let kv = body
        .get("kv_transfer_params")
        .filter(|v| !v.is_null())
        .cloned();
    generate(
        state,
        Gen {
            headers,
            c,
            prompt,
            echo_text,
            id,
            api: Api::Completions,
            kv,
            arrival,
        },
    )
    .await
}

async fn chat_inner(state: Arc<AppState>, req: Request) -> Result<Response, ApiError> {
    let arrival = std::time::Instant::now();
    let (headers, body) = read_json(&state, req).await?;
    let c = common(&state, &body, &["max_completion_tokens", "max_tokens"])?;
    let kv = body
        .get("kv_transfer_params")
        .filter(|v| !v.is_null())
        .cloned();
    let value = Value::Object(body);
    let chat =
        ChatRequest::from_openai_body(&value).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let prompt = state
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
    let id = request_id(&headers, "chatcmpl-");
    generate(
        state,
        Gen {
            headers,
            c,
            prompt,
            echo_text,
            id,
            api: Api::Chat,
            kv,
            arrival,
        },
    )
    .await
}

struct Gen {
    headers: HeaderMap,
    c: Common,
    prompt: Vec<u32>,
    echo_text: String,
    id: String,
    api: Api,
    kv: Option<Value>,
    arrival: std::time::Instant,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Api {
    Completions,
    Chat,
}

async fn generate(state: Arc<AppState>, g: Gen) -> Result<Response, ApiError> {
    if let Some(delay) = state.faults.extra_latency() {
        tokio::time::sleep(delay).await;
    }
    if let Some(status) = state.faults.error() {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        let message = match status.as_u16() {
            429 => "Rate limit reached (fault injection).",
            503 => "The server is overloaded or not ready yet.",
            _ => "Internal server error (fault injection).",
        };
        return Err(ApiError {
            status,
            kind: "InjectedError",
            message: message.into(),
        });
    }
    let Gen {
        headers,
        c,
        prompt,
        echo_text,
        id,
        api,
        kv,
        arrival,
    } = g;
    let flag = |name: &str| {
        kv.as_ref()
            .and_then(|p| p.get(name))
            .and_then(Value::as_bool)
            == Some(true)
    };
    let remote_decode = flag("do_remote_decode");
    let remote_prefill = flag("do_remote_prefill");
    if remote_decode && c.stream {
        return Err(ApiError::bad_request(
            "the prefill leg (kv_transfer_params.do_remote_decode) must not stream",
        ));
    }
    let max_len = state.args.max_model_len;
    if prompt.len() > max_len {
        return Err(ApiError::bad_request(format!(
            "This model's maximum context length is {max_len} tokens. However, your request has {} input tokens. Please reduce the length of the input.",
            prompt.len()
        )));
    }
    let room = max_len - prompt.len();
    let max_tokens = match c.max_tokens {
        Some(m) if m > room => {
            return Err(ApiError::bad_request(format!(
                "This model's maximum context length is {max_len} tokens. However, you requested {} tokens ({} in the messages, {m} in the completion). Please reduce the length of the messages or completion.",
                prompt.len() + m,
                prompt.len()
            )));
        }
        Some(m) => m,
        None => state.args.default_max_tokens.min(room),
    };
    let output: Vec<u32> = match state.args.mode {
        OutputMode::Random => state
            .filler
            .iter()
            .copied()
            .cycle()
            .take(max_tokens)
            .collect(),
        OutputMode::Echo => state
            .tokenizer
            .plain(&echo_text)
            .into_iter()
            .take(max_tokens)
            .collect(),
    };
    // Decode leg: pull the prompt's KV from the prefill pod first.
    let mut external_tokens = 0;
    if remote_prefill {
        match kv.as_ref().and_then(RemotePrefill::from_params) {
            None => tracing::warn!(
                request = id,
                "Got invalid KVTransferParams; computing the prompt locally"
            ),
            Some(remote) => {
                let local = state.engine.cached_blocks(prompt.clone()).await as u64;
                let needed = (remote.block_ids.len() as u64).saturating_sub(local);
                match state
                    .nixl
                    .pull(&remote, needed, state.args.block_size as u64)
                    .await
                {
                    Ok(()) => external_tokens = prompt.len(),
                    Err(error) if state.nixl.args.kv_transfer_failure == TransferFailure::Error => {
                        return Err(ApiError::kv_transfer(error.to_string()));
                    }
                    Err(error) => {
                        tracing::warn!(request = id, %error, "KV transfer failed; computing the prompt locally")
                    }
                }
            }
        }
    }
    let (tx, rx) = mpsc::unbounded_channel();
    let prompt_len = prompt.len();
    let engine_req = EngineRequest {
        id: id.clone(),
        prompt,
        output,
        max_tokens,
        external_tokens,
        hold_blocks: remote_decode,
        tx,
    };
    if !state.engine.submit_at(engine_req, arrival) {
        return Err(ApiError::unavailable("The engine is not running."));
    }
    let created = now_secs();
    // vLLM's one span per request, parented by the caller's traceparent. Field names are
    // vLLM's `SpanAttributes` (`vllm/tracing.py`).
    let span = tracing::info_span!(
        llmd_telemetry::names::spans::LLM_REQUEST,
        otel.kind = "server",
        gen_ai.request.id = %id,
        gen_ai.response.model = %c.model,
        gen_ai.request.max_tokens = max_tokens as u64,
        gen_ai.usage.prompt_tokens = prompt_len as u64,
        gen_ai.usage.completion_tokens = tracing::field::Empty,
        gen_ai.latency.time_in_queue = tracing::field::Empty,
        gen_ai.latency.time_to_first_token = tracing::field::Empty,
        gen_ai.latency.e2e = tracing::field::Empty,
        gen_ai.response.finish_reasons = tracing::field::Empty,
    );
    llmd_telemetry::propagation::set_parent(
        &span,
        llmd_telemetry::propagation::extract_from_headers(&headers),
    );
    let ctx = Ctx {
        state: state.clone(),
        id,
        model: c.model,
        created,
        api,
        prompt_len,
        include_usage: c.include_usage,
        remote_decode,
        span,
        arrival,
        first_token: None,
    };
    let mut response = if c.stream {
        stream_response(ctx, rx).into_response()
    } else {
        full_response(ctx, rx).await?
    };
    if state.args.enable_request_id_headers
        && let Some(v) = headers.get("x-request-id")
    {
        response.headers_mut().insert("x-request-id", v.clone());
    }
    Ok(response)
}

struct Ctx {
    state: Arc<AppState>,
    id: String,
    model: String,
    created: u64,
    api: Api,
    prompt_len: usize,
    include_usage: bool,
    /// Prefill leg: lease the prompt's blocks when done.
    remote_decode: bool,
    /// vLLM's `llm_request` span (ends when the context is dropped, i.e. when the response is
    /// complete).
    span: tracing::Span,
    arrival: std::time::Instant,
    first_token: Option<std::time::Instant>,
}

impl Ctx {
    fn on_scheduled(&self) {
        self.span.record(
            "gen_ai.latency.time_in_queue",
            self.arrival.elapsed().as_secs_f64(),
        );
    }

    fn on_token(&mut self) {
        if self.first_token.is_none() {
            self.first_token = Some(std::time::Instant::now());
            self.span.record(
                "gen_ai.latency.time_to_first_token",
                self.arrival.elapsed().as_secs_f64(),
            );
        }
    }

    fn on_finished(&self, completion_tokens: usize, reason: &str) {
        self.span
            .record("gen_ai.usage.completion_tokens", completion_tokens as u64);
        self.span
            .record("gen_ai.latency.e2e", self.arrival.elapsed().as_secs_f64());
        self.span.record("gen_ai.response.finish_reasons", reason);
    }

    fn usage(&self, completion: usize, cached: usize) -> Value {
        let mut u = json!({"prompt_tokens": self.prompt_len, "total_tokens": self.prompt_len + completion, "completion_tokens": completion});
        if self.state.args.enable_prompt_tokens_details {
            u["prompt_tokens_details"] = json!({"cached_tokens": cached});
        }
        u
    }
}

async fn full_response(
    mut ctx: Ctx,
    mut rx: mpsc::UnboundedReceiver<Emit>,
) -> Result<Response, ApiError> {
    let mut tokens = Vec::new();
    let mut cached = 0;
    let (reason, blocks) = loop {
        match rx.recv().await {
            Some(Emit::Scheduled { cached_tokens }) => {
                cached = cached_tokens;
                ctx.on_scheduled();
            }
            Some(Emit::Token { id, .. }) => {
                tokens.push(id);
                ctx.on_token();
            }
            Some(Emit::Finished { reason, blocks }) => {
                ctx.on_finished(tokens.len(), reason);
                break (reason, blocks);
            }
            None => {
                return Err(ApiError::unavailable(
                    "The engine stopped before the request finished.",
                ));
            }
        }
    };
    let kv_transfer_params = if ctx.remote_decode {
        // vLLM returns parameters only for a length-capped prefill; the prompt's blocks stay leased.
        let prompt_blocks = ctx
            .prompt_len
            .div_ceil(ctx.state.args.block_size.max(1))
            .min(blocks.len());
        let (leased, rest) = blocks.split_at(prompt_blocks);
        ctx.state.engine.release(rest.to_vec());
        if reason == "length" {
            ctx.state.nixl.lease(
                &ctx.id,
                leased.to_vec(),
                ctx.state.nixl.args.tensor_parallel_size,
            )
        } else {
            ctx.state.engine.release(leased.to_vec());
            Value::Null
        }
    } else {
        Value::Null
    };
    let text = ctx.state.tokenizer.decode(&tokens);
    let usage = ctx.usage(tokens.len(), cached);
    let body = match ctx.api {
        Api::Completions => json!({
            "id": ctx.id, "object": "text_completion", "created": ctx.created, "model": ctx.model,
            "choices": [{"index": 0, "text": text, "logprobs": null, "finish_reason": reason, "stop_reason": null, "prompt_logprobs": null}],
            "usage": usage, "system_fingerprint": null, "kv_transfer_params": kv_transfer_params,
        }),
        Api::Chat => json!({
            "id": ctx.id, "object": "chat.completion", "created": ctx.created, "model": ctx.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text, "refusal": null, "annotations": null,
                "audio": null, "function_call": null, "tool_calls": [], "reasoning_content": null},
                "logprobs": null, "finish_reason": reason, "stop_reason": null}],
            "service_tier": null, "system_fingerprint": null, "usage": usage, "prompt_logprobs": null, "kv_transfer_params": kv_transfer_params,
        }),
    };
    Ok(axum::Json(body).into_response())
}

fn stream_response(
    ctx: Ctx,
    rx: mpsc::UnboundedReceiver<Emit>,
) -> Sse<impl Stream<Item = Result<Event, std::convert::Infallible>>> {
    struct S {
        ctx: Ctx,
        rx: mpsc::UnboundedReceiver<Emit>,
        cached: usize,
        generated: usize,
        sent_role: bool,
        finished: bool,
        stall: Option<std::time::Duration>,
        done: bool,
        pending: Vec<Value>,
    }
    let s = S {
        ctx,
        rx,
        cached: 0,
        generated: 0,
        sent_role: false,
        finished: false,
        done: false,
        pending: Vec::new(),
        stall: None,
    };
    let mut s = s;
    s.stall = s.ctx.state.faults.stall();
    let events = stream::unfold(s, |mut s| async move {
        loop {
            if let Some(v) = s.pending.pop() {
                return Some((Event::default().data(v.to_string()), s));
            }
            if s.done {
                return None;
            }
            match s.rx.recv().await {
                Some(Emit::Scheduled { cached_tokens }) => {
                    s.cached = cached_tokens;
                    s.ctx.on_scheduled();
                }
                Some(Emit::Token { id, finish }) => {
                    if s.generated == 1
                        && let Some(stall) = s.stall.take()
                    {
                        tokio::time::sleep(stall).await;
                    }
                    s.generated += 1;
                    s.ctx.on_token();
                    let piece = s.ctx.state.tokenizer.decode(&[id]);
                    let mut out = Vec::new();
                    if s.ctx.api == Api::Chat && !s.sent_role {
                        s.sent_role = true;
                        out.push(chunk(&s.ctx, json!({"role": "assistant", "content": ""}), None));
                    }
                    out.push(chunk(&s.ctx, content(&s.ctx, piece), finish));
                    out.reverse();
                    s.pending = out;
                    s.finished = finish.is_some();
                }
                Some(Emit::Finished { reason, .. }) => {
                    s.ctx.on_finished(s.generated, reason);
                    // The last token carried the finish reason; a request that ended without a
                    // token (aborted) gets an empty final chunk.
                    let mut out = Vec::new();
                    if !s.finished {
                        out.push(chunk(&s.ctx, content(&s.ctx, String::new()), Some(reason)));
                    }
                    if s.ctx.include_usage {
                        out.push(json!({"id": s.ctx.id, "object": object(&s.ctx), "created": s.ctx.created, "model": s.ctx.model,
                            "choices": [], "usage": s.ctx.usage(s.generated, s.cached)}));
                    }
                    out.reverse();
                    s.pending = out;
                    s.done = true;
                }
                None => {
                    s.pending = vec![json!({"object": "error", "message": "The engine stopped before the request finished.",
                        "type": "ServiceUnavailableError", "param": null, "code": 503})];
                    s.done = true;
                }
            }
        }
    })
    .map(Ok)
    .chain(stream::once(async { Ok(Event::default().data("[DONE]")) }));
    Sse::new(events)
}

fn object(ctx: &Ctx) -> &'static str {
    match ctx.api {
        Api::Completions => "text_completion",
        Api::Chat => "chat.completion.chunk",
    }
}

fn content(ctx: &Ctx, piece: String) -> Value {
    match ctx.api {
        Api::Completions => Value::String(piece),
        Api::Chat => json!({"content": piece}),
    }
}

fn chunk(ctx: &Ctx, delta: Value, finish: Option<&str>) -> Value {
    let choice = match ctx.api {
        Api::Completions => {
            json!({"index": 0, "text": delta, "logprobs": null, "finish_reason": finish, "stop_reason": null})
        }
        Api::Chat => {
            json!({"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish, "stop_reason": null})
        }
    };
    let mut c = json!({"id": ctx.id, "object": object(ctx), "created": ctx.created, "model": ctx.model, "choices": [choice]});
    if ctx.include_usage {
        c["usage"] = Value::Null;
    }
    c
}
