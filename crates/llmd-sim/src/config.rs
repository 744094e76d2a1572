//! Simulator flags. Timing defaults resemble Llama-3.1-8B-Instruct in bf16 on one H100 80GB
//! with vLLM:
//!
//! - prefill: about 20k tokens/s of compute (2 × 8e9 FLOP per token at roughly 35-40% of the
//!   H100's 989 dense bf16 TFLOP/s), so 50 µs per uncached prompt token, plus 3 ms per step;
//! - decode: memory-bound, 16 GB of weights read per step at ~3.35 TB/s ≈ 5 ms, observed ITL
//!   around 6.5 ms at batch 1, growing by ~0.1 ms per running sequence (KV reads, batch
//!   compute), i.e. ~13 ms at batch 64;
//! - KV: 128 KiB per token (2 × 32 layers × 8 KV heads × 128 dims × 2 bytes); after 16 GB of
//!   weights and activations, ~52 GB of an 80 GB card at 0.9 utilization holds ~425k tokens,
//!   6,650 blocks of 64.
//!
//! These are estimates from public specs and commonly reported vLLM numbers, not measurements;
//! every one is a flag.

use std::time::Duration;

use llmd_kv_index::events::Layout;

/// Output text generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum OutputMode {
    /// Deterministic filler text.
    #[default]
    Random,
    /// Echo the prompt (completions) or the last user message (chat).
    Echo,
}

/// P/D role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Role {
    /// Serves everything (and both P/D legs).
    #[default]
    Both,
    /// Prefill pod.
    Prefill,
    /// Decode pod.
    Decode,
}

/// Engine and API settings (the part of the flags the engine uses).
#[derive(Debug, Clone, clap::Args)]
pub struct EngineArgs {
    /// Model name served (`--served-model-name` in vLLM); also names the tokenizer by default.
    #[arg(
        long,
        env = "SIM_MODEL",
        default_value = "meta-llama/Llama-3.1-8B-Instruct"
    )]
    pub model: String,
    /// Extra names the model answers to.
    #[arg(long = "served-model-name")]
    pub served_model_names: Vec<String>,
    /// Tokenizer: local dir, tokenizer.json, or HF-cache model name (default: --model).
    #[arg(long, env = "LLMD_TOKENIZER")]
    pub tokenizer: Option<String>,
    /// Use a byte-level stand-in tokenizer instead of the model's (ids are UTF-8 bytes); for
    /// runs without tokenizer files. KV events then match only EPPs configured the same way.
    #[arg(long)]
    pub dummy_tokenizer: bool,
    /// Context length.
    #[arg(long, default_value_t = 131_072)]
    pub max_model_len: usize,
    /// Most sequences running at once.
    #[arg(long, default_value_t = 256)]
    pub max_num_seqs: usize,
    /// Token budget of one engine step (chunked prefill).
    #[arg(long, default_value_t = 8192)]
    pub max_num_batched_tokens: usize,
    /// KV blocks (see the module docs for the default).
    #[arg(long, default_value_t = 6650)]
    pub num_gpu_blocks: usize,
    /// Tokens per KV block.
    #[arg(long, default_value_t = 64)]
    pub block_size: usize,
    /// The hash seed of the block hashes (vLLM reads PYTHONHASHSEED).
    #[arg(long, env = "PYTHONHASHSEED")]
    pub hash_seed: Option<String>,
    /// Multiplies every simulated duration; 0 answers as fast as possible.
    #[arg(long, default_value_t = 1.0)]
    pub time_scale: f64,
    /// Output text.
    #[arg(long, value_enum, default_value_t = OutputMode::Random)]
    pub mode: OutputMode,
    /// Output tokens when a request sets no max_tokens.
    #[arg(long, default_value_t = 256)]
    pub default_max_tokens: usize,
    /// Fixed cost of a step that prefills, ms.
    #[arg(long, default_value_t = 3.0)]
    pub prefill_overhead_ms: f64,
    /// Prefill time per uncached prompt token, µs.
    #[arg(long, default_value_t = 50.0)]
    pub prefill_us_per_token: f64,
    /// Decode step time at batch 1, ms.
    #[arg(long, default_value_t = 6.5)]
    pub decode_itl_ms: f64,
    /// Extra decode step time per running sequence, µs.
    #[arg(long, default_value_t = 100.0)]
    pub decode_itl_per_seq_us: f64,
    /// Report `prompt_tokens_details.cached_tokens` (vLLM's `--enable-prompt-tokens-details`;
    /// off by default in vLLM, on here because routers measure cache hits with it).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub enable_prompt_tokens_details: bool,
    /// Echo `X-Request-Id` in responses (vLLM's `--enable-request-id-headers`).
    #[arg(long)]
    pub enable_request_id_headers: bool,
    /// Keep the last N completion/chat requests (path, `x-request-id`, `traceparent`, body) and
    /// show them at `GET /debug/requests` (for testing what a proxy sent; 0: off, no route).
    #[arg(long, default_value_t = 0)]
    pub record_requests: usize,
    /// Largest request body accepted, bytes.
    #[arg(long, default_value_t = 32 << 20)]
    pub max_request_body_bytes: usize,
    /// KV events: ZMQ endpoint (binds when it contains `*` or `::` or is ipc, else connects, as
    /// vLLM does). Unset: no events.
    #[arg(long)]
    pub kv_events_endpoint: Option<String>,
    /// KV events topic; default `kv@<POD_IP or host>:<port>@<model>`.
    #[arg(long)]
    pub kv_events_topic: Option<String>,
    /// Event layout: `map` (vLLM >= 0.25) or `array` (vLLM <= 0.23).
    #[arg(long, value_enum, default_value_t = Layout::Map)]
    pub kv_events_encoding: Layout,
    /// Replay (ROUTER) endpoint serving buffered batches.
    #[arg(long)]
    pub kv_events_replay_endpoint: Option<String>,
    /// Batches kept for replay.
    #[arg(long, default_value_t = 10_000)]
    pub kv_events_buffer_steps: usize,
    /// The `engine` label of the `vllm:*` metrics (vLLM labels each engine with its index, the
    /// data-parallel rank). Simulators sharing one process, as in `llmd demo`, take distinct
    /// ranks so that their series stay apart.
    #[arg(long, default_value_t = 0)]
    pub data_parallel_rank: u32,
    /// P/D role (informational: like vLLM with `kv_role: kv_both`, every role serves both
    /// legs; it labels the pod for routers and dashboards).
    #[arg(long, value_enum, default_value_t = Role::Both)]
    pub role: Role,
    /// P/D transfer and model shape.
    #[command(flatten)]
    pub nixl: crate::nixl::NixlArgs,
    /// Fault injection (off by default).
    #[command(flatten)]
    pub faults: crate::faults::FaultArgs,
}

impl EngineArgs {
    /// Parses engine flags as `llmd-sim` would (without the program name), e.g. to start a
    /// simulator in-process from a test or a benchmark.
    pub fn from_flags<I, S>(flags: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = S>,
        S: Into<std::ffi::OsString> + Clone,
    {
        #[derive(clap::Parser)]
        struct Flags {
            #[command(flatten)]
            engine: EngineArgs,
        }
        let all = std::iter::once(std::ffi::OsString::from("llmd-sim"))
            .chain(flags.into_iter().map(Into::into));
        <Flags as clap::Parser>::try_parse_from(all).map(|f| f.engine)
    }

    /// A simulated duration of `ms` milliseconds, scaled.
    pub fn scaled(&self, ms: f64) -> Duration {
        Duration::from_secs_f64((ms * self.time_scale).max(0.0) / 1e3)
    }

    /// True when `name` is this model.
    pub fn serves(&self, name: &str) -> bool {
        name == self.model || self.served_model_names.iter().any(|n| n == name)
    }
}
