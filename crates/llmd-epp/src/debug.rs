//! `GET` or `POST /debug/route?path=/v1/completions` with a request body: the decision for a
//! request, with every plugin's score per endpoint and the prefix match; nothing is routed.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::response::IntoResponse;

use crate::request;
use crate::scheduling::{PickContext, Scheduler};

#[derive(Debug, serde::Deserialize)]
pub(crate) struct RouteQuery {
    path: Option<String>,
}

/// The handler.
pub(crate) async fn route(
    State(scheduler): State<Arc<Scheduler>>,
    Query(q): Query<RouteQuery>,
    body: axum::body::Bytes,
) -> axum::response::Response {
    let path = q.path.unwrap_or_else(|| "/v1/completions".into());
    let req = match request::parse(&path, &body) {
        Ok(r) => r,
        Err(e) => return (axum::http::StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    // Scheduling is CPU work: off the async workers, as for routed requests.
    let explained = tokio::task::spawn_blocking(move || {
        let span = tracing::Span::none();
        let ctx = PickContext {
            request: Some(&req),
            headers: &[],
            subset: None,
            span: &span,
        };
        let (result, scores, prefix) = scheduler.decide(&ctx, true);
        let scores: Vec<serde_json::Value> = scores
            .unwrap_or_default()
            .into_iter()
            .map(|(profile, plugin, endpoint, score)| serde_json::json!({"profile": profile, "plugin": plugin, "endpoint": endpoint, "score": score}))
            .collect();
        match result {
            Ok(d) => serde_json::json!({"endpoints": d.endpoints, "headers": d.headers, "scores": scores,
                "prefix": prefix.map(|p| serde_json::json!({"prompt_tokens": p.prompt_tokens, "total_blocks": p.total_blocks, "block_size": p.block_size, "matched_blocks": p.matched}))}),
            Err(e) => serde_json::json!({"error": e.to_string(), "status": e.status(), "scores": scores}),
        }
    })
    .await;
    match explained {
        Ok(body) => axum::Json(body).into_response(),
        Err(e) => (
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            format!("scheduling failed: {e}"),
        )
            .into_response(),
    }
}
