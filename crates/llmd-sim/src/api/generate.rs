//! `POST /v1/completions` and `/v1/chat/completions`: one request through its phases:
//! arrive (span opened) → parse → check limits → P/D decode leg pulls its KV → submit to the
//! engine → answer (JSON or SSE). Any phase that fails answers with [`ApiError`] and marks the
//! span.

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use tokio::sync::mpsc;

use super::AppState;
use super::error::ApiError;
use super::parse::{self, Params, Prompt};
use super::respond::{self, Api, Ctx};
use super::span::{RequestSpan, Sampling};
use crate::config::{OutputMode, TransferFailure};
use crate::engine::EngineRequest;
use crate::metrics::RequestCounts;
use crate::nixl::RemotePrefill;

/// `POST /v1/completions`.
pub(super) async fn completions(State(state): State<Arc<AppState>>, req: Request) -> Response {
    handle(state, req, Api::Completions).await
}

/// `POST /v1/chat/completions`.
pub(super) async fn chat_completions(State(state): State<Arc<AppState>>, req: Request) -> Response {
    handle(state, req, Api::Chat).await
}

async fn handle(state: Arc<AppState>, req: Request, api: Api) -> Response {
    let arrival = Instant::now();
    let span = RequestSpan::arrive(req.headers(), state.args.span_service_name.as_deref());
    match run(state, req, api, arrival, span.clone()).await {
        Ok(r) => r,
        Err(e) => {
            span.failed(e.message());
            e.into_response()
        }
    }
}

/// One parsed request on its way to the engine.
struct Job {
    headers: HeaderMap,
    params: Params,
    prompt: Prompt,
    id: String,
    api: Api,
    arrival: Instant,
    span: RequestSpan,
}

async fn run(
    state: Arc<AppState>,
    req: Request,
    api: Api,
    arrival: Instant,
    span: RequestSpan,
) -> Result<Response, ApiError> {
    let (headers, body) = parse::read_json(&state, req).await?;
    let (params, prompt, prefix) = match api {
        Api::Completions => {
            let params = parse::params(&state, &body, &["max_tokens"])?;
            (params, parse::completion_prompt(&state, &body)?, "cmpl-")
        }
        Api::Chat => {
            let params = parse::params(&state, &body, &["max_completion_tokens", "max_tokens"])?;
            (params, parse::chat_prompt(&state, body)?, "chatcmpl-")
        }
    };
    let id = parse::request_id(&headers, prefix);
    generate(
        state,
        Job {
            headers,
            params,
            prompt,
            id,
            api,
            arrival,
            span,
        },
    )
    .await
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Injected faults (off by default): extra latency, then maybe an error.
async fn inject_faults(state: &AppState) -> Result<(), ApiError> {
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
        return Err(ApiError::new(status, "InjectedError", message));
    }
    Ok(())
}

/// `max_tokens` within the context left by the prompt (vLLM's errors when it does not fit).
fn max_tokens(state: &AppState, params: &Params, prompt_len: usize) -> Result<usize, ApiError> {
    let max_len = state.args.max_model_len;
    if prompt_len > max_len {
        return Err(parse::context_error(max_len, prompt_len));
    }
    let room = max_len - prompt_len;
    match params.max_tokens {
        Some(m) if m > room => Err(ApiError::bad_request(format!(
            "This model's maximum context length is {max_len} tokens. However, you requested {} \
             tokens ({prompt_len} in the messages, {m} in the completion). Please reduce the \
             length of the messages or completion.",
            prompt_len.saturating_add(m),
        ))),
        Some(m) => Ok(m),
        None => Ok(state.args.default_max_tokens.min(room)),
    }
}

/// The output token ids the engine will emit.
fn output(state: &AppState, echo_text: &str, max_tokens: usize) -> Vec<u32> {
    match state.args.mode {
        OutputMode::Random => state
            .filler
            .iter()
            .copied()
            .cycle()
            .take(max_tokens)
            .collect(),
        OutputMode::Echo => state
            .tokenizer
            .plain(echo_text)
            .into_iter()
            .take(max_tokens)
            .collect(),
    }
}

/// P/D decode leg: pulls the prompt's KV from the prefill pod named in `kv_transfer_params`.
/// True when it arrived (the engine then computes only the last prompt token); false when the
/// parameters are invalid or the pull failed with `--kv-transfer-failure recompute` (vLLM
/// computes the prompt locally then).
async fn pull_remote_kv(
    state: &AppState,
    job: &Job,
    params: &Value,
    queued: Instant,
) -> Result<bool, ApiError> {
    let Some(remote) = RemotePrefill::from_params(params) else {
        tracing::warn!(
            request = job.id,
            "Got invalid KVTransferParams; computing the prompt locally"
        );
        return Ok(false);
    };
    let extras = crate::engine::extras(job.params.lora.as_deref(), job.params.cache_salt.clone());
    let local = state
        .engine
        .cached_blocks(job.prompt.tokens.clone(), extras)
        .await as u64;
    let needed = (remote.block_ids.len() as u64).saturating_sub(local);
    match state
        .nixl
        .pull(&remote, needed, state.args.block_size as u64)
        .await
    {
        Ok(()) => Ok(true),
        Err(error) if state.nixl.args.kv_transfer_failure == TransferFailure::Error => {
            // vLLM's engine finishes such a request with an error.
            state.engine.failed(
                RequestCounts {
                    prompt: job.prompt.tokens.len(),
                    generated: 0,
                    max_tokens_param: job.params.max_tokens,
                    n: 1,
                },
                job.arrival,
                queued,
            );
            Err(ApiError::kv_transfer(error.to_string()))
        }
        Err(error) => {
            tracing::warn!(request = job.id, %error, "KV transfer failed; computing the prompt locally");
            Ok(false)
        }
    }
}

async fn generate(state: Arc<AppState>, job: Job) -> Result<Response, ApiError> {
    inject_faults(&state).await?;
    let flag = |name: &str| {
        job.params
            .kv_transfer_params
            .as_ref()
            .and_then(|p| p.get(name))
            .and_then(Value::as_bool)
            == Some(true)
    };
    let remote_decode = flag("do_remote_decode");
    let remote_prefill = flag("do_remote_prefill");
    if remote_decode && job.params.stream {
        return Err(ApiError::bad_request(
            "the prefill leg (kv_transfer_params.do_remote_decode) must not stream",
        ));
    }
    let prompt_len = job.prompt.tokens.len();
    let max_tokens = max_tokens(&state, &job.params, prompt_len)?;
    job.span.request(
        &job.id,
        &job.params.model,
        &Sampling {
            max_tokens,
            temperature: job.params.temperature,
            top_p: job.params.top_p,
            n: job.params.n,
        },
        prompt_len,
    );
    // The engine has the request from here (vLLM's queued time; a decode's pull is in it).
    let queued = Instant::now();
    let remote_kv = match (&job.params.kv_transfer_params, remote_prefill) {
        (Some(params), true) => pull_remote_kv(&state, &job, params, queued).await?,
        _ => false,
    };
    let (tx, rx) = mpsc::unbounded_channel();
    let Job {
        headers,
        params,
        prompt,
        id,
        api,
        arrival,
        span,
    } = job;
    let engine_req = EngineRequest {
        id: id.clone(),
        output: output(&state, &prompt.echo_text, max_tokens),
        prompt: prompt.tokens,
        max_tokens,
        max_tokens_param: params.max_tokens,
        remote_kv,
        hold_blocks: remote_decode,
        lora: params.lora,
        cache_salt: params.cache_salt,
        arrival,
        queued,
        tx,
    };
    if !state.engine.submit(engine_req) {
        return Err(ApiError::unavailable("The engine is not running."));
    }
    let ctx = Ctx {
        state: state.clone(),
        id,
        model: params.model,
        created: now_secs(),
        api,
        prompt_len,
        include_usage: params.include_usage,
        remote_decode,
        span,
    };
    let mut response = if params.stream {
        respond::stream_response(ctx, rx).into_response()
    } else {
        respond::full_response(ctx, rx).await?
    };
    if state.args.enable_request_id_headers
        && let Some(v) = headers.get("x-request-id")
    {
        response.headers_mut().insert("x-request-id", v.clone());
    }
    Ok(response)
}
