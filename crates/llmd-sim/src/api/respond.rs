//! The answer: vLLM's JSON body (`text_completion`, `chat.completion`) or its SSE stream of
//! chunks, built from what the engine emits for one request.

use std::sync::Arc;

use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use futures::stream::{self, Stream, StreamExt};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::AppState;
use super::error::ApiError;
use super::span::RequestSpan;
use crate::engine::{Emit, HeldBlocks};

/// Which OpenAI API the request came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Api {
    Completions,
    Chat,
}

/// What the answer needs besides the engine's emits.
pub(super) struct Ctx {
    pub state: Arc<AppState>,
    pub id: String,
    pub model: String,
    pub created: u64,
    pub api: Api,
    pub prompt_len: usize,
    pub include_usage: bool,
    /// Prefill leg: lease the prompt's blocks when done.
    pub remote_decode: bool,
    /// vLLM's `llm_request` span; it ends when the context is dropped, i.e. when the response
    /// is complete.
    pub span: RequestSpan,
}

impl Ctx {
    fn usage(&self, completion: usize, cached: usize) -> Value {
        let mut u = json!({"prompt_tokens": self.prompt_len, "total_tokens": self.prompt_len + completion, "completion_tokens": completion});
        if self.state.args.enable_prompt_tokens_details {
            u["prompt_tokens_details"] = json!({"cached_tokens": cached});
        }
        u
    }

    /// The prefill leg's `kv_transfer_params`: the prompt's blocks leased when the request was
    /// length-capped (as vLLM's NixlConnector returns parameters only then), else none.
    fn lease(&self, reason: &str, held: Option<HeldBlocks>) -> Value {
        let Some(mut blocks) = held else {
            return Value::Null;
        };
        let prompt_blocks = self
            .prompt_len
            .div_ceil(self.state.args.block_size.max(1))
            .min(blocks.ids().len());
        // The output's blocks go back now (dropped).
        drop(blocks.split_off(prompt_blocks));
        if self.remote_decode && reason == "length" {
            self.state
                .nixl
                .lease(&self.id, blocks, self.state.nixl.args.tensor_parallel_size)
        } else {
            Value::Null
        }
    }

    fn object(&self) -> &'static str {
        match self.api {
            Api::Completions => "text_completion",
            Api::Chat => "chat.completion.chunk",
        }
    }

    fn content(&self, piece: String) -> Value {
        match self.api {
            Api::Completions => Value::String(piece),
            Api::Chat => json!({"content": piece}),
        }
    }

    fn chunk(&self, delta: Value, finish: Option<&str>) -> Value {
        let choice = match self.api {
            Api::Completions => {
                json!({"index": 0, "text": delta, "logprobs": null, "finish_reason": finish, "stop_reason": null})
            }
            Api::Chat => {
                json!({"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish, "stop_reason": null})
            }
        };
        let mut c = json!({"id": self.id, "object": self.object(), "created": self.created, "model": self.model, "choices": [choice]});
        if self.include_usage {
            c["usage"] = Value::Null;
        }
        c
    }
}

/// A non-streamed answer, once the engine finished the request.
pub(super) async fn full_response(
    ctx: Ctx,
    mut rx: mpsc::UnboundedReceiver<Emit>,
) -> Result<Response, ApiError> {
    let mut tokens = Vec::new();
    let mut cached = 0;
    let (reason, held) = loop {
        match rx.recv().await {
            Some(Emit::Scheduled { cached_tokens }) => cached = cached_tokens,
            Some(Emit::Token { id, .. }) => tokens.push(id),
            Some(Emit::Finished {
                reason,
                held,
                times,
            }) => {
                ctx.span.finished(&times, tokens.len(), reason);
                break (reason, held);
            }
            None => {
                return Err(ApiError::unavailable(
                    "The engine stopped before the request finished.",
                ));
            }
        }
    };
    let kv_transfer_params = ctx.lease(reason, held);
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

/// A streamed answer: one SSE event per token (and the role first, for chat), the usage chunk
/// with `stream_options.include_usage`, then `[DONE]`.
pub(super) fn stream_response(
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
    let stall = ctx.state.faults.stall();
    let s = S {
        ctx,
        rx,
        cached: 0,
        generated: 0,
        sent_role: false,
        finished: false,
        done: false,
        pending: Vec::new(),
        stall,
    };
    let events = stream::unfold(s, |mut s| async move {
        loop {
            if let Some(v) = s.pending.pop() {
                return Some((Event::default().data(v.to_string()), s));
            }
            if s.done {
                return None;
            }
            match s.rx.recv().await {
                Some(Emit::Scheduled { cached_tokens }) => s.cached = cached_tokens,
                Some(Emit::Token { id, finish }) => {
                    if s.generated == 1
                        && let Some(stall) = s.stall.take()
                    {
                        tokio::time::sleep(stall).await;
                    }
                    s.generated += 1;
                    let piece = s.ctx.state.tokenizer.decode(&[id]);
                    let mut out = Vec::new();
                    if s.ctx.api == Api::Chat && !s.sent_role {
                        s.sent_role = true;
                        out.push(s.ctx.chunk(json!({"role": "assistant", "content": ""}), None));
                    }
                    out.push(s.ctx.chunk(s.ctx.content(piece), finish));
                    out.reverse();
                    s.pending = out;
                    s.finished = finish.is_some();
                }
                Some(Emit::Finished {
                    reason,
                    held,
                    times,
                }) => {
                    s.ctx.span.finished(&times, s.generated, reason);
                    // Streaming prefill legs are refused; nothing to lease.
                    drop(held);
                    // The last token carried the finish reason; a request that ended without a
                    // token (aborted) gets an empty final chunk.
                    let mut out = Vec::new();
                    if !s.finished {
                        out.push(s.ctx.chunk(s.ctx.content(String::new()), Some(reason)));
                    }
                    if s.ctx.include_usage {
                        out.push(json!({"id": s.ctx.id, "object": s.ctx.object(), "created": s.ctx.created, "model": s.ctx.model,
                            "choices": [], "usage": s.ctx.usage(s.generated, s.cached)}));
                    }
                    out.reverse();
                    s.pending = out;
                    s.done = true;
                }
                None => {
                    s.ctx.span.failed("The engine stopped before the request finished.");
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
