//! Every flag of the simulator, and nothing else: this module depends on no other module of the
//! crate (the engine, NIXL, LoRA and the HTTP layer read it; it reads none of them).
//!
//! Timing defaults resemble Llama-3.1-8B-Instruct in bf16 on one H100 80GB with vLLM:
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

/// What a failed KV pull does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum TransferFailure {
    /// Fail the request with 502 (makes dead or wrong prefill pods visible); the engine counts
    /// it as `finished_reason="error"`, as vLLM's `kv_load_failure_policy=fail` does.
    #[default]
    Error,
    /// Compute the prompt locally, as vLLM does by default.
    Recompute,
}

/// A startup configuration error, naming the flag.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{flag}: {message}")]
pub struct ConfigError {
    /// The flag, as written on the command line.
    pub flag: &'static str,
    /// What is wrong with it.
    pub message: String,
}

/// One `--lora-modules` entry, as vLLM parses it: `name=path`, or the JSON form
/// `{"name": ..., "path": ..., "base_model_name": ...}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoraModule {
    /// Adapter name (what requests put in `model`).
    pub name: String,
    /// Adapter path (vLLM >= 0.31 hashes it into the block keys).
    pub path: String,
    /// The base model it belongs to (default: the served model).
    pub base_model_name: Option<String>,
}

impl std::str::FromStr for LoraModule {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.starts_with('{') {
            let v: serde_json::Value =
                serde_json::from_str(s).map_err(|e| format!("invalid JSON {s:?}: {e}"))?;
            let field = |k: &str| v.get(k).and_then(serde_json::Value::as_str);
            let known = ["name", "path", "base_model_name"];
            if let Some(obj) = v.as_object()
                && let Some(unknown) = obj.keys().find(|k| !known.contains(&k.as_str()))
            {
                return Err(format!(
                    "unknown field {unknown:?} in {s:?} (expected name, path, base_model_name)"
                ));
            }
            match (field("name"), field("path")) {
                (Some(name), Some(path)) if !name.is_empty() && !path.is_empty() => Ok(Self {
                    name: name.to_owned(),
                    path: path.to_owned(),
                    base_model_name: field("base_model_name").map(str::to_owned),
                }),
                _ => Err(format!(
                    "{s:?} needs non-empty string fields \"name\" and \"path\""
                )),
            }
        } else {
            match s.split_once('=') {
                Some((name, path)) if !name.is_empty() && !path.is_empty() => Ok(Self {
                    name: name.to_owned(),
                    path: path.to_owned(),
                    base_model_name: None,
                }),
                _ => Err(format!(
                    "invalid format {s:?}: expected name=path or a JSON object"
                )),
            }
        }
    }
}

/// LoRA adapters, with vLLM's flag names.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct LoraArgs {
    /// Serve LoRA adapters (vLLM's `--enable-lora`; needed by `--lora-modules`).
    #[arg(long)]
    pub enable_lora: bool,
    /// Adapters served from startup: `name=path` or `{"name": ..., "path": ...,
    /// "base_model_name": ...}`, one or more. A request whose `model` is an adapter name is
    /// served by it.
    #[arg(long, num_args = 1..)]
    pub lora_modules: Vec<LoraModule>,
    /// Most adapters in one engine step (vLLM's `--max-loras`); requests for other adapters
    /// wait.
    #[arg(long, default_value_t = 1)]
    pub max_loras: usize,
    /// Serve `POST /v1/load_lora_adapter` and `/v1/unload_lora_adapter` (vLLM's environment
    /// variable of the same name).
    #[arg(
        long,
        env = "VLLM_ALLOW_RUNTIME_LORA_UPDATING",
        default_value_t = false,
        action = clap::ArgAction::Set,
        value_parser = clap::builder::BoolishValueParser::new(),
    )]
    pub allow_runtime_lora_updating: bool,
}

/// NIXL and model-shape flags.
#[derive(Debug, Clone, clap::Args)]
pub struct NixlArgs {
    /// Engine id (`remote_engine_id`); default: random.
    #[arg(long)]
    pub engine_id: Option<String>,
    /// Host decode pods pull from (vLLM's VLLM_NIXL_SIDE_CHANNEL_HOST); default POD_IP or the
    /// listen address.
    #[arg(long)]
    pub nixl_side_channel_host: Option<String>,
    /// Port decode pods pull from; default the API port (the pull endpoint lives there).
    #[arg(long)]
    pub nixl_side_channel_port: Option<u16>,
    /// Model layers.
    #[arg(long, default_value_t = 32)]
    pub num_layers: u64,
    /// KV heads.
    #[arg(long, default_value_t = 8)]
    pub num_kv_heads: u64,
    /// Head dimension.
    #[arg(long, default_value_t = 128)]
    pub head_dim: u64,
    /// Bytes per KV element (2 for bf16, 1 for fp8).
    #[arg(long, default_value_t = 2)]
    pub kv_dtype_bytes: u64,
    /// Tensor-parallel size (KV heads split across ranks; one observation per rank).
    #[arg(long, default_value_t = 1)]
    pub tensor_parallel_size: u64,
    /// Fixed cost of one KV transfer, ms (model time: scaled by `--time-scale`).
    #[arg(long, default_value_t = 1.0)]
    pub kv_transfer_latency_ms: f64,
    /// KV transfer bandwidth, GB/s (RDMA over a 200-400 Gb/s NIC: ~25 GB/s; model time).
    #[arg(long, default_value_t = 25.0)]
    pub kv_transfer_bandwidth_gbps: f64,
    /// How long a prefill keeps leased blocks for the decode side, seconds of wall time
    /// (vLLM: 480, `VLLM_NIXL_ABORT_REQUEST_TIMEOUT`).
    #[arg(long, default_value_t = 480.0)]
    pub kv_lease_seconds: f64,
    /// What a failed pull does.
    #[arg(long, value_enum, default_value_t = TransferFailure::Error)]
    pub kv_transfer_failure: TransferFailure,
    /// Timeout of the pull call, ms (wall time).
    #[arg(long, default_value_t = 5000)]
    pub kv_transfer_timeout_ms: u64,
}

impl NixlArgs {
    /// KV bytes per token over all TP ranks.
    pub fn bytes_per_token(&self) -> u64 {
        2 * self.num_layers * self.num_kv_heads * self.head_dim * self.kv_dtype_bytes
    }

    /// Model time of moving `bytes`: latency + bytes / bandwidth, seconds (unscaled).
    pub fn transfer_seconds(&self, bytes: u64) -> f64 {
        self.kv_transfer_latency_ms / 1e3
            + bytes as f64 / (self.kv_transfer_bandwidth_gbps.max(1e-6) * 1e9)
    }
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
    /// Prompt tokens kept to resume tokenizing prompts that share a prefix (0: off). Memory is
    /// bounded by it: about 12 bytes per cached token (ids, resume points, index), so the
    /// default holds ~12 MB once full; a process fed new prompts grows until it is full.
    #[arg(long, default_value_t = 1_000_000)]
    pub prompt_cache_tokens: usize,
    /// Use a byte-level stand-in tokenizer instead of the model's (ids are UTF-8 bytes); for
    /// runs without tokenizer files. KV events then match only EPPs configured the same way.
    #[arg(long)]
    pub dummy_tokenizer: bool,
    /// Context length.
    #[arg(long, default_value_t = 131_072)]
    pub max_model_len: usize,
    /// Largest prompt accepted, bytes of text (completions `prompt`, or the text of all chat
    /// messages), checked before tokenizing: larger prompts get 413 without costing tokenizer
    /// time or memory. Default: 8 bytes per token of `--max-model-len`, above what any
    /// prompt that fits the context holds in practice (English averages ~4 bytes per token).
    #[arg(long)]
    pub max_prompt_bytes: Option<usize>,
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
    /// Multiplies every simulated duration (engine steps and KV transfers); 0 answers as fast
    /// as possible. Reported durations are always the wall time actually spent.
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
    /// Batches kept for replay (only with `--kv-events-replay-endpoint`).
    #[arg(long, default_value_t = 10_000)]
    pub kv_events_buffer_steps: usize,
    /// The `engine` label of the `vllm:*` metrics (vLLM labels each engine with its index, the
    /// data-parallel rank). Simulators sharing one process, as in `llmd demo`, take distinct
    /// ranks so that their series stay apart.
    #[arg(long, default_value_t = 0)]
    pub data_parallel_rank: u32,
    /// Data-parallel engines in this process, each with an API server of its own (vLLM's
    /// `--data-parallel-size` with external load balancing, as llm-d deploys it): engine `r`
    /// (`engine` label `--data-parallel-rank` + r) serves on `--port` + r, publishes its KV
    /// events on the port of `--kv-events-endpoint` + r (and replays on
    /// `--kv-events-replay-endpoint` + r), as vLLM offsets a rank's publisher, and its
    /// `/metrics` shows only its own engine's series. Each has its own queue and KV cache.
    #[arg(long, default_value_t = 1)]
    pub data_parallel_size: u32,
    /// P/D role (informational: like vLLM with `kv_role: kv_both`, every role serves both
    /// legs; it labels the pod for routers and dashboards).
    #[arg(long, value_enum, default_value_t = Role::Both)]
    pub role: Role,
    /// The `service.name` of this engine's spans when it shares a process with other
    /// components (`llmd demo`: `vllm-prefill`, `vllm-decode`). Alone, the process's own
    /// (`OTEL_SERVICE_NAME`) names them.
    #[arg(long)]
    pub span_service_name: Option<String>,
    /// LoRA adapters.
    #[command(flatten)]
    pub lora: LoraArgs,
    /// P/D transfer and model shape.
    #[command(flatten)]
    pub nixl: NixlArgs,
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

    /// Checks what clap cannot: values that parse but make no sense together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |flag, message: String| Err(ConfigError { flag, message });
        if !self.time_scale.is_finite() || self.time_scale < 0.0 {
            return err(
                "--time-scale",
                format!("must be >= 0, got {}", self.time_scale),
            );
        }
        if self.block_size == 0 {
            return err("--block-size", "must be at least 1".into());
        }
        if self.data_parallel_size == 0 {
            return err("--data-parallel-size", "must be at least 1".into());
        }
        if self.max_model_len == 0 {
            return err("--max-model-len", "must be at least 1".into());
        }
        if self.max_prompt_bytes == Some(0) {
            return err("--max-prompt-bytes", "must be at least 1".into());
        }
        if !self.lora.lora_modules.is_empty() && !self.lora.enable_lora {
            return err("--lora-modules", "needs --enable-lora (as in vLLM)".into());
        }
        if self.lora.enable_lora && self.lora.max_loras == 0 {
            return err("--max-loras", "must be at least 1".into());
        }
        let mut seen = std::collections::HashSet::new();
        for m in &self.lora.lora_modules {
            if self.serves(&m.name) {
                return err(
                    "--lora-modules",
                    format!("adapter name {:?} is a base model name", m.name),
                );
            }
            if !seen.insert(m.name.as_str()) {
                return err(
                    "--lora-modules",
                    format!("adapter {:?} is listed twice", m.name),
                );
            }
            if let Some(base) = &m.base_model_name
                && !self.serves(base)
            {
                return err(
                    "--lora-modules",
                    format!(
                        "base_model_name {base:?} of {:?} is not served here",
                        m.name
                    ),
                );
            }
        }
        Ok(())
    }

    /// A simulated duration of `ms` milliseconds, scaled.
    pub fn scaled(&self, ms: f64) -> Duration {
        Duration::from_secs_f64((ms * self.time_scale).max(0.0) / 1e3)
    }

    /// True when `name` is this model (not an adapter).
    pub fn serves(&self, name: &str) -> bool {
        name == self.model || self.served_model_names.iter().any(|n| n == name)
    }

    /// The prompt byte limit in effect.
    pub fn prompt_byte_limit(&self) -> usize {
        self.max_prompt_bytes
            .unwrap_or_else(|| self.max_model_len.saturating_mul(8))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lora_modules_parse_both_forms_as_vllm_does() {
        let a: LoraModule = "sql=/adapters/sql".parse().unwrap();
        assert_eq!(a.name, "sql");
        assert_eq!(a.path, "/adapters/sql");
        assert_eq!(a.base_model_name, None);
        let b: LoraModule = r#"{"name": "chat", "path": "/a/chat", "base_model_name": "m"}"#
            .parse()
            .unwrap();
        assert_eq!(b.base_model_name.as_deref(), Some("m"));
        for bad in [
            "nopath",
            "=x",
            "x=",
            r#"{"name": "x"}"#,
            r#"{"name": "x", "path": "p", "rank": 8}"#,
            "{oops",
        ] {
            assert!(bad.parse::<LoraModule>().is_err(), "{bad}");
        }
    }

    #[test]
    fn flags_that_make_no_sense_name_themselves() {
        let args = |f: &[&str]| EngineArgs::from_flags(f.iter().copied()).unwrap();
        assert_eq!(
            args(&["--lora-modules", "a=/p"])
                .validate()
                .unwrap_err()
                .flag,
            "--lora-modules"
        );
        assert!(
            args(&["--enable-lora", "--lora-modules", "a=/p", "b=/q"])
                .validate()
                .is_ok()
        );
        assert_eq!(
            args(&["--enable-lora", "--lora-modules", "a=/p", "a=/q"])
                .validate()
                .unwrap_err()
                .flag,
            "--lora-modules"
        );
        assert_eq!(
            args(&["--time-scale=-1"]).validate().unwrap_err().flag,
            "--time-scale"
        );
        assert_eq!(args(&["--max-model-len", "100"]).prompt_byte_limit(), 800);
        assert!(EngineArgs::from_flags(["--lora-modules", "bad"]).is_err());
    }
}
