//! vLLM's metrics (`vllm/v1/metrics/loggers.py`), with its names, `model_name` and `engine`
//! labels and buckets, from the shared catalog in `llmd_telemetry::names::vllm`.
//!
//! Every duration recorded here is wall time measured with [`std::time::Instant`] around what
//! the request actually went through (engine steps and KV transfers are slept scaled by
//! `--time-scale`, and measured, never computed from the model).
//!
//! Prefix caching is counted as vLLM's scheduler counts it: `vllm:prefix_cache_*` are the
//! *local* queries (the prompt) and hits (blocks found in this engine's cache), once per
//! request (not again after a preemption); `vllm:external_prefix_cache_*` are the KV
//! connector's queries (the prompt tokens not found locally, on every request, since every sim
//! runs a connector as `kv_both`) and hits (tokens received over it: a P/D decode's pull).

use llmd_telemetry::names::vllm as n;
use metrics::{Counter, Gauge, Histogram};

use crate::config::EngineArgs;

/// Wall-clock phases of one finished request, seconds (vLLM's `FinishedRequestStats`).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct RequestTimes {
    /// Arrival to the finishing step.
    pub e2e: f64,
    /// Queued (engine received it) to first scheduled; includes a P/D decode's KV pull.
    pub queue: f64,
    /// Arrival to the first token (`None`: no token).
    pub ttft: Option<f64>,
    /// First scheduled to first token.
    pub prefill: f64,
    /// First to last token.
    pub decode: f64,
    /// First scheduled to last token.
    pub inference: f64,
    /// decode / (generated − 1), 0 with fewer than two tokens.
    pub mean_time_per_output_token: f64,
}

/// Token counts and parameters of one finished request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RequestCounts {
    /// Prompt tokens.
    pub prompt: usize,
    /// Generated tokens.
    pub generated: usize,
    /// The request's `max_tokens`, when it set one.
    pub max_tokens_param: Option<usize>,
    /// The request's `n`.
    pub n: usize,
}

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
    inference: Histogram,
    tpot: Histogram,
    prompt_tokens_hist: Histogram,
    generation_tokens_hist: Histogram,
    max_generation_tokens_hist: Histogram,
    max_tokens_param: Histogram,
    params_n: Histogram,
    iteration_tokens: Histogram,
    prompt_tokens: Counter,
    generation_tokens: Counter,
    cache_queries: Counter,
    cache_hits: Counter,
    external_queries: Counter,
    external_hits: Counter,
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
    /// Failed NIXL notifications (full local prefix hit: nothing to read, only notify).
    pub nixl_failed_notifications: Counter,
    /// Expired P/D leases (prefill side).
    pub nixl_expired: Counter,
    max_loras: Option<usize>,
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

/// vLLM's finish reasons (`FINISH_REASON_STRINGS`), each registered at zero.
pub const FINISH_REASONS: [&str; 5] = ["stop", "length", "abort", "error", "repetition"];

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
            inference: labelled!(histogram, n::REQUEST_INFERENCE_TIME, m, e),
            tpot: labelled!(histogram, n::REQUEST_TIME_PER_OUTPUT_TOKEN, m, e),
            prompt_tokens_hist: labelled!(histogram, n::REQUEST_PROMPT_TOKENS, m, e),
            generation_tokens_hist: labelled!(histogram, n::REQUEST_GENERATION_TOKENS, m, e),
            max_generation_tokens_hist: labelled!(
                histogram,
                n::REQUEST_MAX_NUM_GENERATION_TOKENS,
                m,
                e
            ),
            max_tokens_param: labelled!(histogram, n::REQUEST_PARAMS_MAX_TOKENS, m, e),
            params_n: labelled!(histogram, n::REQUEST_PARAMS_N, m, e),
            iteration_tokens: labelled!(histogram, n::ITERATION_TOKENS, m, e),
            prompt_tokens: labelled!(counter, n::PROMPT_TOKENS, m, e),
            generation_tokens: labelled!(counter, n::GENERATION_TOKENS, m, e),
            cache_queries: labelled!(counter, n::PREFIX_CACHE_QUERIES, m, e),
            cache_hits: labelled!(counter, n::PREFIX_CACHE_HITS, m, e),
            external_queries: labelled!(counter, n::EXTERNAL_PREFIX_CACHE_QUERIES, m, e),
            external_hits: labelled!(counter, n::EXTERNAL_PREFIX_CACHE_HITS, m, e),
            preemptions: labelled!(counter, n::NUM_PREEMPTIONS, m, e),
            nixl_xfer_time: labelled!(histogram, n::NIXL_XFER_TIME, m, e),
            nixl_post_time: labelled!(histogram, n::NIXL_POST_TIME, m, e),
            nixl_bytes: labelled!(histogram, n::NIXL_BYTES_TRANSFERRED, m, e),
            nixl_descriptors: labelled!(histogram, n::NIXL_NUM_DESCRIPTORS, m, e),
            nixl_failed: labelled!(counter, n::NIXL_NUM_FAILED_TRANSFERS, m, e),
            nixl_failed_notifications: labelled!(counter, n::NIXL_NUM_FAILED_NOTIFICATIONS, m, e),
            nixl_expired: labelled!(counter, n::NIXL_NUM_KV_EXPIRED_REQS, m, e),
            model: m,
            engine: e,
            max_loras: None,
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
            &s.external_queries,
            &s.external_hits,
            &s.preemptions,
            &s.nixl_failed,
            &s.nixl_failed_notifications,
            &s.nixl_expired,
        ] {
            c.increment(0);
        }
        for reason in FINISH_REASONS {
            s.success(reason).increment(0);
        }
        s
    }

    /// [`Self::new`] for the engine of `args`, with `vllm:cache_config_info` set and, with
    /// `--enable-lora`, `vllm:lora_requests_info` present (no adapter running or waiting).
    pub fn for_engine(args: &EngineArgs) -> Self {
        let mut s = Self::new(&args.model, args.data_parallel_rank);
        let dtype = match args.nixl.kv_dtype_bytes {
            1 => "fp8",
            _ => "auto",
        };
        // vLLM reports each `CacheConfig` field with Python's `str()`.
        let info = [
            ("block_size", args.block_size.to_string()),
            ("cache_dtype", dtype.to_owned()),
            ("enable_prefix_caching", "True".to_owned()),
            ("gpu_memory_utilization", "0.9".to_owned()),
            ("num_cpu_blocks", "None".to_owned()),
            ("num_gpu_blocks", args.num_gpu_blocks.to_string()),
            ("prefix_caching_hash_algo", "sha256_cbor".to_owned()),
            ("engine", s.engine.clone()),
        ];
        let labels: Vec<metrics::Label> = info
            .iter()
            .map(|(k, v)| metrics::Label::new(*k, v.clone()))
            .collect();
        metrics::gauge!(n::CACHE_CONFIG_INFO.name, labels).set(1.0);
        if args.lora.enable_lora {
            s.max_loras = Some(args.lora.max_loras.max(1));
            s.set_lora_info(&[], &[]);
        }
        s
    }

    fn success(&self, reason: &'static str) -> Counter {
        metrics::counter!(n::REQUEST_SUCCESS.name, "model_name" => self.model.clone(), "engine" => self.engine.clone(), "finished_reason" => reason)
    }

    /// A request was admitted: its prefix-cache and connector queries and hits, counted only
    /// for its first admission (vLLM counts re-admissions after preemption apart).
    pub(crate) fn admitted(
        &self,
        prompt_len: usize,
        local_hits: usize,
        external_hits: usize,
        preempted: bool,
    ) {
        if preempted {
            return;
        }
        self.cache_queries.increment(prompt_len as u64);
        self.cache_hits.increment(local_hits as u64);
        let external_queries = prompt_len.saturating_sub(local_hits);
        if external_queries > 0 {
            self.external_queries.increment(external_queries as u64);
            self.external_hits.increment(external_hits as u64);
        }
    }

    /// A request's first token, `ttft` seconds after arrival.
    pub(crate) fn first_token(&self, ttft: f64, prompt_len: usize) {
        self.ttft.record(ttft);
        self.prompt_tokens.increment(prompt_len as u64);
        self.generation_tokens.increment(1);
    }

    /// A later token, `itl` seconds after the previous one.
    pub(crate) fn inter_token(&self, itl: f64) {
        self.itl.record(itl);
        self.generation_tokens.increment(1);
    }

    /// One engine step that produced output: `tokens` = prompt tokens of requests whose
    /// prefill finished in it + tokens generated in it.
    pub(crate) fn step(&self, tokens: usize) {
        self.iteration_tokens.record(tokens as f64);
    }

    pub(crate) fn preempted(&self) {
        self.preemptions.increment(1);
    }

    pub(crate) fn set_queue(&self, running: usize, waiting: usize, usage: f64) {
        self.running.set(running as f64);
        self.waiting.set(waiting as f64);
        self.kv_usage.set(usage);
    }

    /// `vllm:lora_requests_info`: a gauge per (running, waiting) combination whose value is
    /// the time of its last update, as vLLM's `set_to_current_time()`; each list names an
    /// adapter once, in the order its requests come (vLLM joins the keys of a dict filled from
    /// the requests, so insertion order, not sorted).
    pub(crate) fn set_lora_info(&self, running: &[&str], waiting: &[&str]) {
        let Some(max) = self.max_loras else { return };
        let join = |names: &[&str]| {
            let mut v: Vec<&str> = Vec::with_capacity(names.len());
            for n in names {
                if !v.contains(n) {
                    v.push(n);
                }
            }
            v.join(",")
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        metrics::gauge!(n::LORA_REQUESTS_INFO.name,
            "max_lora" => max.to_string(),
            "waiting_lora_adapters" => join(waiting),
            "running_lora_adapters" => join(running))
        .set(now);
    }

    /// A request finished (any reason, including `abort` and `error`).
    pub(crate) fn finished(
        &self,
        times: &RequestTimes,
        counts: RequestCounts,
        reason: &'static str,
    ) {
        self.success(reason).increment(1);
        self.e2e.record(times.e2e);
        self.queue.record(times.queue);
        self.prefill.record(times.prefill);
        self.inference.record(times.inference);
        self.decode.record(times.decode);
        self.prompt_tokens_hist.record(counts.prompt as f64);
        self.generation_tokens_hist.record(counts.generated as f64);
        self.max_generation_tokens_hist
            .record(counts.generated as f64);
        self.params_n.record(counts.n.max(1) as f64);
        self.tpot.record(times.mean_time_per_output_token);
        if let Some(m) = counts.max_tokens_param {
            self.max_tokens_param.record(m as f64);
        }
    }
}
