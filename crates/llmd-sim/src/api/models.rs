//! `GET /v1/models` (base model names, then LoRA adapters with their `parent`, as vLLM's
//! `show_available_models`), and vLLM's runtime adapter endpoints `POST /v1/load_lora_adapter`
//! and `/v1/unload_lora_adapter` (served only with `VLLM_ALLOW_RUNTIME_LORA_UPDATING`; they
//! answer plain text on success, vLLM's error body otherwise).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::AppState;
use super::error::ApiError;

fn permission(state: &AppState, id: &str) -> Value {
    json!([{"id": format!("modelperm-{}", id.len()), "object": "model_permission", "created": state.started,
        "allow_create_engine": false, "allow_sampling": true, "allow_logprobs": true, "allow_search_indices": false,
        "allow_view": true, "allow_fine_tuning": false, "organization": "*", "group": null, "is_blocking": false}])
}

/// `GET /v1/models`.
pub(super) async fn models(State(state): State<Arc<AppState>>) -> Response {
    let names = std::iter::once(&state.args.model).chain(&state.args.served_model_names);
    let mut data: Vec<Value> = names
        .map(|name| {
            json!({
                "id": name, "object": "model", "created": state.started, "owned_by": "vllm",
                "root": state.args.model, "parent": null, "max_model_len": state.args.max_model_len,
                "permission": permission(&state, name),
            })
        })
        .collect();
    for a in state.loras.list() {
        data.push(json!({
            "id": a.name, "object": "model", "created": state.started, "owned_by": "vllm",
            "root": a.path, "parent": a.base_model, "max_model_len": null,
            "permission": permission(&state, &a.name),
        }));
    }
    axum::Json(json!({"object": "list", "data": data})).into_response()
}

async fn body(state: &AppState, req: Request) -> Result<serde_json::Map<String, Value>, ApiError> {
    let bytes = axum::body::to_bytes(req.into_body(), state.args.max_request_body_bytes)
        .await
        .map_err(|_| ApiError::too_large("request body too large or unreadable"))?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::bad_request("request body must be a JSON object")),
        Err(e) => Err(ApiError::bad_request(format!("JSON decode error: {e}"))),
    }
}

fn field<'a>(body: &'a serde_json::Map<String, Value>, name: &str) -> &'a str {
    body.get(name).and_then(Value::as_str).unwrap_or_default()
}

/// `POST /v1/load_lora_adapter` `{"lora_name", "lora_path"}`.
pub(super) async fn load_lora(State(state): State<Arc<AppState>>, req: Request) -> Response {
    let result = async {
        let body = body(&state, req).await?;
        let name = field(&body, "lora_name");
        let args = state.args.clone();
        state
            .loras
            .load(name, field(&body, "lora_path"), |n| args.serves(n))?;
        Ok::<_, ApiError>(format!(
            "Success: LoRA adapter '{name}' added successfully."
        ))
    }
    .await;
    match result {
        Ok(text) => text.into_response(),
        Err(e) => e.into_response(),
    }
}

/// `POST /v1/unload_lora_adapter` `{"lora_name"}`.
pub(super) async fn unload_lora(State(state): State<Arc<AppState>>, req: Request) -> Response {
    let result = async {
        let body = body(&state, req).await?;
        let name = field(&body, "lora_name");
        state.loras.unload(name)?;
        Ok::<_, ApiError>(format!(
            "Success: LoRA adapter '{name}' removed successfully."
        ))
    }
    .await;
    match result {
        Ok(text) => text.into_response(),
        Err(e) => e.into_response(),
    }
}
