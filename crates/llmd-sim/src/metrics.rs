//! vLLM's metrics (`vllm/v1/metrics/loggers.py`), with its names, `model_name` and `engine`
//! labels and buckets, from the shared catalog in `llmd_telemetry::names::vllm`.

use std::time::Instant;

use llmd_telemetry::names::vllm as n;
use metrics::{Counter, Gauge, Histogram};

/// Metric handles of one engine, created once (the hot path is one atomic operation each).
pub struct EngineMetrics {
    model: String,
    engine: String,
    running: Gauge,
    waiting: Gauge,
    kv_usage: Gauge,
    ttft: Histogram,
    itl: Histogram,
    e2e: Histogram,
    queue: Histogram,
    prefill: Histogram,
    decode: Histogram,
    prompt_tokens: Counter,
    generation_tokens: Counter,
    cache_queries: Counter,
    cache_hits: Counter,
    preemptions: Counter,
    /// NIXL (decode side).
    pub nixl_xfer_time: Histogram,
    /// NIXL post time.
    pub nixl_post_time: Histogram,
    /// NIXL bytes per transfer.
    pub nixl_bytes: Histogram,
    /// NIXL descriptors per transfer.
    pub nixl_descriptors: Histogram,
    /// Failed NIXL transfers.
    pub nixl_failed: Counter,
    /// Expired P/D leases (prefill side).
    pub nixl_expired: Counter,
}

impl std::fmt::Debug for EngineMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineMetrics")
            .field("model", &self.model)
            .field("engine", &self.engine)
            .finish()
    }
}

macro_rules! labelled {
    ($kind:ident, $def:expr, $model:expr, $engine:expr) => {
        metrics::$kind!($def.name, "model_name" => $model.clone(), "engine" => $engine.clone())
    };
}

impl EngineMetrics {
    /// Handles for `model` on engine `engine` (the `engine` label; install the Prometheus
    /// recorder first).
    pub fn new(model: &str, engine: u32) -> Self {
        let m = model.to_owned();
        let e = engine.to_string();
        let s = Self {
            running: labelled!(gauge, n::NUM_REQUESTS_RUNNING, m, e),
            waiting: labelled!(gauge, n::NUM_REQUESTS_WAITING, m, e),
            kv_usage: labelled!(gauge, n::KV_CACHE_USAGE_PERC, m, e),
            ttft: labelled!(histogram, n::TIME_TO_FIRST_TOKEN, m, e),
            itl: labelled!(histogram, n::INTER_TOKEN_LATENCY, m, e),
            e2e: labelled!(histogram, n::E2E_REQUEST_LATENCY, m, e),
            queue: labelled!(histogram, n::REQUEST_QUEUE_TIME, m, e),
            prefill: labelled!(histogram, n::REQUEST_PREFILL_TIME, m, e),
            decode: labelled!(histogram, n::REQUEST_DECODE_TIME, m, e),
            prompt_tokens: labelled!(counter, n::PROMPT_TOKENS, m, e),
            generation_tokens: labelled!(counter, n::GENERATION_TOKENS, m, e),
            cache_queries: labelled!(counter, n::PREFIX_CACHE_QUERIES, m, e),
            cache_hits: labelled!(counter, n::PREFIX_CACHE_HITS, m, e),
            preemptions: labelled!(counter, n::NUM_PREEMPTIONS, m, e),
            nixl_xfer_time: labelled!(histogram, n::NIXL_XFER_TIME, m, e),
            nixl_post_time: labelled!(histogram, n::NIXL_POST_TIME, m, e),
            nixl_bytes: labelled!(histogram, n::NIXL_BYTES_TRANSFERRED, m, e),
            nixl_descriptors: labelled!(histogram, n::NIXL_NUM_DESCRIPTORS, m, e),
            nixl_failed: labelled!(counter, n::NIXL_NUM_FAILED_TRANSFERS, m, e),
            nixl_expired: labelled!(counter, n::NIXL_NUM_KV_EXPIRED_REQS, m, e),
            model: m,
            engine: e,
        };
        // Present from the start, as vLLM's are.
        s.running.set(0.0);
        s.waiting.set(0.0);
        s.kv_usage.set(0.0);
        for c in [
            &s.prompt_tokens,
            &s.generation_tokens,
            &s.cache_queries,
            &s.cache_hits,
            &s.preemptions,
            &s.nixl_failed,
            &s.nixl_expired,
        ] {
            c.increment(0);
        }
        for reason in ["stop", "length", "abort"] {
            metrics::counter!(n::REQUEST_SUCCESS.name, "model_name" => s.model.clone(), "engine" => s.engine.clone(), "finished_reason" => reason).increment(0);
        }
        s
    }

    pub(crate) fn scheduled(&self, arrival: &Instant, prompt_len: usize, cached: usize) {
        self.queue.record(arrival.elapsed().as_secs_f64());
        self.prompt_tokens.increment(prompt_len as u64);
        self.cache_queries.increment(prompt_len as u64);
        self.cache_hits.increment(cached as u64);
    }

    pub(crate) fn first_token(&self, arrival: &Instant, _scheduled: Instant) {
        self.ttft.record(arrival.elapsed().as_secs_f64());
        self.generation_tokens.increment(1);
    }

    pub(crate) fn inter_token(&self, last: Instant) {
        self.itl.record(last.elapsed().as_secs_f64());
        self.generation_tokens.increment(1);
    }

    pub(crate) fn preempted(&self) {
        self.preemptions.increment(1);
    }

    pub(crate) fn set_queue(&self, running: usize, waiting: usize, usage: f64) {
        self.running.set(running as f64);
        self.waiting.set(waiting as f64);
        self.kv_usage.set(usage);
    }

    /// `phases` = (queue, prefill, decode) seconds.
    pub(crate) fn completed(&self, e2e: f64, phases: (f64, f64, f64), reason: &'static str) {
        self.e2e.record(e2e);
        let (_, prefill, decode) = phases;
        self.prefill.record(prefill);
        self.decode.record(decode);
        self.success(reason);
    }

    pub(crate) fn finished(&self, arrival: &Instant, reason: &'static str) {
        self.e2e.record(arrival.elapsed().as_secs_f64());
        self.success(reason);
    }

    fn success(&self, reason: &'static str) {
        metrics::counter!(n::REQUEST_SUCCESS.name, "model_name" => self.model.clone(), "engine" => self.engine.clone(), "finished_reason" => reason)
            .increment(1);
    }
}
