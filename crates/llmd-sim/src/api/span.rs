//! vLLM's one span per request, `llm_request` (`vllm/tracing.py`, `output_processor.py`
//! `do_tracing`): kind SERVER, parented by the caller's `traceparent`, starting at the
//! request's arrival (it is opened before the body is read) and ending when the response has
//! been sent. Latencies are the engine's wall-clock phases in seconds (`f64`), counts are `i64`:
//! tracing-opentelemetry exports `u64`/`usize` fields as strings, so none are recorded here.
//! A request refused before it reaches the engine (a 4xx) keeps its span with status ERROR;
//! vLLM emits none for it.

use axum::http::HeaderMap;
use llmd_telemetry::names::attrs as a;
use tracing::field::Empty;

use crate::metrics::RequestTimes;

/// The `llm_request` span of one request.
#[derive(Debug, Clone)]
pub struct RequestSpan(tracing::Span);

fn int(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl RequestSpan {
    /// Opens the span now (the request's arrival), as a child of the caller's trace context.
    pub fn arrive(headers: &HeaderMap, service_name: Option<&str>) -> Self {
        let span = tracing::info_span!(
            llmd_telemetry::names::spans::LLM_REQUEST,
            otel.kind = "server",
            service.name = Empty,
            otel.status_code = Empty,
            otel.status_description = Empty,
            gen_ai.request.id = Empty,
            gen_ai.response.model = Empty,
            gen_ai.request.max_tokens = Empty,
            gen_ai.request.temperature = Empty,
            gen_ai.request.top_p = Empty,
            gen_ai.request.n = Empty,
            gen_ai.usage.prompt_tokens = Empty,
            gen_ai.usage.completion_tokens = Empty,
            gen_ai.latency.time_in_queue = Empty,
            gen_ai.latency.time_to_first_token = Empty,
            gen_ai.latency.e2e = Empty,
            gen_ai.latency.time_in_model_prefill = Empty,
            gen_ai.latency.time_in_model_decode = Empty,
            gen_ai.latency.time_in_model_inference = Empty,
            gen_ai.response.finish_reasons = Empty,
        );
        if let Some(name) = service_name {
            span.record(llmd_telemetry::names::services::SPAN_ATTR, name);
        }
        llmd_telemetry::propagation::set_parent(
            &span,
            llmd_telemetry::propagation::extract_from_headers(headers),
        );
        Self(span)
    }

    /// The request as the engine will run it.
    pub fn request(&self, id: &str, model: &str, sampling: &Sampling, prompt_tokens: usize) {
        let s = &self.0;
        s.record(a::GEN_AI_REQUEST_ID, id);
        s.record(a::GEN_AI_RESPONSE_MODEL, model);
        s.record(a::GEN_AI_REQUEST_MAX_TOKENS, int(sampling.max_tokens));
        s.record(a::GEN_AI_REQUEST_TEMPERATURE, sampling.temperature);
        s.record(a::GEN_AI_REQUEST_TOP_P, sampling.top_p);
        s.record(a::GEN_AI_REQUEST_N, int(sampling.n));
        s.record(a::GEN_AI_USAGE_PROMPT_TOKENS, int(prompt_tokens));
    }

    /// The engine finished the request.
    pub fn finished(&self, times: &RequestTimes, completion_tokens: usize, reason: &str) {
        let s = &self.0;
        s.record(a::GEN_AI_USAGE_COMPLETION_TOKENS, int(completion_tokens));
        s.record(a::GEN_AI_LATENCY_TIME_IN_QUEUE, times.queue);
        if let Some(ttft) = times.ttft {
            s.record(a::GEN_AI_LATENCY_TTFT, ttft);
        }
        s.record(a::GEN_AI_LATENCY_E2E, times.e2e);
        s.record(a::GEN_AI_LATENCY_PREFILL, times.prefill);
        s.record(a::GEN_AI_LATENCY_DECODE, times.decode);
        s.record(a::GEN_AI_LATENCY_INFERENCE, times.inference);
        s.record(a::GEN_AI_RESPONSE_FINISH_REASONS, reason);
    }

    /// The request failed (status ERROR with the message).
    pub fn failed(&self, message: &str) {
        self.0.record("otel.status_code", "ERROR");
        self.0.record("otel.status_description", message);
    }
}

/// The sampling parameters the span reports.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    /// Effective `max_tokens`.
    pub max_tokens: usize,
    /// `temperature` (1.0 when unset, vLLM's default).
    pub temperature: f64,
    /// `top_p` (1.0 when unset).
    pub top_p: f64,
    /// `n`.
    pub n: usize,
}
