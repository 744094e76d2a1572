//! vLLM's OpenAI-compatible HTTP surface: `/v1/completions`, `/v1/chat/completions` (plain and
//! SSE streaming), `/v1/models`, `/health`, the LoRA adapter endpoints, the NIXL pull endpoint,
//! with vLLM's response shapes and error bodies (`{"object":"error","message","type","param",
//! "code"}`).
//!
//! | module | what it does |
//! |---|---|
//! | `parse` | body within its limit, shared fields, the prompt (bytes checked before tokenizing) |
//! | `generate` | a completion request's phases: faults, limits, the P/D pull, submit |
//! | `respond` | the JSON body or SSE stream from the engine's emits; the prefill's lease |
//! | `span` | vLLM's `llm_request` span (from arrival, numbers as numbers) |
//! | `models` | `/v1/models`, `/v1/load_lora_adapter`, `/v1/unload_lora_adapter` |
//! | `error` | [`ApiError`]: every refusal becomes vLLM's error body here |

mod error;
mod generate;
mod models;
mod parse;
mod respond;
mod span;

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use serde_json::Value;

pub use error::ApiError;

use crate::config::EngineArgs;
use crate::engine::Engine;
use crate::lora::Loras;
use crate::nixl::Nixl;
use crate::tokens::SimTokenizer;

/// Shared state of the HTTP handlers (read-only after startup except the recorded requests
/// and the adapter registry, each behind its own lock).
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
    /// LoRA adapters.
    pub loras: Arc<Loras>,
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

/// The router of one simulated pod (mount `/metrics` beside it).
pub fn router(state: Arc<AppState>) -> Router {
    let nixl = Router::new()
        .route("/nixl/v1/pull", post(crate::nixl::pull_endpoint))
        .with_state(state.nixl.clone());
    let mut router = Router::new()
        .route("/v1/completions", post(generate::completions))
        .route("/v1/chat/completions", post(generate::chat_completions))
        .route("/v1/models", get(models::models))
        .route("/health", get(|| async { StatusCode::OK }));
    if state.loras.runtime_updates {
        router = router
            .route("/v1/load_lora_adapter", post(models::load_lora))
            .route("/v1/unload_lora_adapter", post(models::unload_lora));
    }
    if state.args.record_requests > 0 {
        router = router.route("/debug/requests", get(recorded));
    }
    router.with_state(state).merge(nixl)
}

/// `GET /debug/requests`: the recorded requests, oldest first.
async fn recorded(State(state): State<Arc<AppState>>) -> axum::Json<Value> {
    axum::Json(Value::Array(
        state.recorded.lock().iter().cloned().collect(),
    ))
}
