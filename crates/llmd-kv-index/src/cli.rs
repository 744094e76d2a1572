//! `llmd-kv` (also `llmd kv`): answers the question operators ask most, "why was there no
//! cache hit?", by showing the keys a prompt hashes to and the events pods actually publish.
//!
//! - `hash`: token ids, a prompt or an OpenAI request → the block keys the index would use (JSON:
//!   each block's key as a decimal u64, and in `sha256_cbor` mode the full digest in hex).
//! - `tokenize`: a prompt or an OpenAI request → token ids (and the rendered chat text).
//! - `listen`: subscribe to pods and print every decoded event as a JSON line, with gaps,
//!   restarts, replays, rejected topics and decode errors inline. With `--bind`, every pod that
//!   connects is shown, named by its topic.

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use crate::events::{DecodeError, EventBatch, KvEvent, WireValue};
use crate::hashing::{BlockDigest, HashAlgo, LoraKey, RequestExtras, TokensHasher, VllmHasher};
use crate::subscriber::{EventHandler, PodEndpoint, Subscriber, SubscriberConfig};
use llmd_tokenizer::{ChatRequest, ModelTokenizer};

/// `llmd-kv`: inspect block keys, tokenization and KV events.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "llmd-kv",
    version,
    about = "Inspect vLLM block keys, tokenization and KV events (why was there no cache hit?)"
)]
pub struct Args {
    /// Logging.
    #[command(flatten)]
    pub telemetry: llmd_telemetry::TelemetryArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// `llmd-kv` subcommands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Print the block keys of token ids, a prompt or an OpenAI request, as JSON.
    Hash(HashArgs),
    /// Print the token ids of a prompt or an OpenAI request, as JSON.
    Tokenize(TokenizeArgs),
    /// Subscribe to KV-event publishers and print every event as a JSON line.
    Listen(ListenArgs),
}

/// Where the text comes from.
#[derive(Debug, Clone, clap::Args)]
pub struct InputArgs {
    /// A completions prompt.
    #[arg(long, group = "input")]
    pub prompt: Option<String>,
    /// An OpenAI request body (completions `prompt` or chat `messages`), as a file or `-`.
    #[arg(long, group = "input")]
    pub request: Option<String>,
    /// Tokenizer: a local directory, a tokenizer.json, or a model name in the HF cache.
    #[arg(long, env = "LLMD_TOKENIZER")]
    pub tokenizer: Option<String>,
}

/// `hash` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct HashArgs {
    /// Token ids, comma-separated (instead of a prompt or request); `""` is no tokens.
    #[arg(long, group = "input", value_parser = parse_token_ids)]
    pub tokens: Option<TokenIds>,
    /// Prompt or request and tokenizer.
    #[command(flatten)]
    pub input: InputArgs,
    /// Key scheme.
    #[arg(long, value_enum, default_value_t = HashAlgo::Sha256Cbor)]
    pub algo: HashAlgo,
    /// The engines' PYTHONHASHSEED (sha256_cbor) or llm-d's hashSeed (cbor-fnv); unset means
    /// vLLM's default "vllm-none-hash" root.
    #[arg(long, env = "PYTHONHASHSEED")]
    pub seed: Option<String>,
    /// Tokens per block (the engines' --block-size).
    #[arg(long, default_value_t = crate::hashing::DEFAULT_BLOCK_SIZE)]
    pub block_size: usize,
    /// Model (or LoRA) name, for cbor-fnv keys.
    #[arg(long, default_value = "meta-llama/Llama-3.1-8B-Instruct")]
    pub model: String,
    /// LoRA adapter name (sha256_cbor extra key).
    #[arg(long, requires = "lora_path")]
    pub lora_name: Option<String>,
    /// LoRA adapter path (hashed by vLLM >= 0.31).
    #[arg(long)]
    pub lora_path: Option<String>,
    /// cache_salt of the request (extra key of block 0).
    #[arg(long)]
    pub cache_salt: Option<String>,
}

/// Token ids given on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenIds(pub Vec<u32>);

/// `1,2,3` → ids; an empty (or all-blank) list is no tokens, which hashes to no blocks.
fn parse_token_ids(s: &str) -> Result<TokenIds, String> {
    if s.trim().is_empty() {
        return Ok(TokenIds(Vec::new()));
    }
    s.split(',')
        .map(|t| {
            t.trim()
                .parse::<u32>()
                .map_err(|e| format!("token id {t:?}: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(TokenIds)
}

/// `tokenize` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct TokenizeArgs {
    /// Prompt or request and tokenizer.
    #[command(flatten)]
    pub input: InputArgs,
}

/// `listen` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct ListenArgs {
    /// A publisher to dial, `[pod=]tcp://host:port` (repeatable). The pod name defaults to the
    /// endpoint.
    #[arg(long = "endpoint")]
    pub endpoints: Vec<String>,
    /// Bind a socket that publishers connect to (pods named by topic).
    #[arg(long)]
    pub bind: Option<String>,
    /// Replay (ROUTER) endpoint of the (single) dialled publisher, to fill gaps.
    #[arg(long)]
    pub replay_endpoint: Option<String>,
    /// Subscription prefix.
    #[arg(long, default_value = "kv@")]
    pub topic_filter: String,
    /// Stop after this many messages.
    #[arg(long)]
    pub count: Option<u64>,
    /// Stop after this many seconds.
    #[arg(long)]
    pub duration: Option<f64>,
    /// Print every block hash and token id (default: counts only for token ids).
    #[arg(long)]
    pub verbose: bool,
}

/// Errors of the CLI.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad usage.
    #[error("{0}")]
    Usage(String),
    /// Reading input.
    #[error("cannot read {what}: {source}")]
    Io {
        /// What.
        what: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Tokenizer problems.
    #[error(transparent)]
    Tokenizer(#[from] llmd_tokenizer::TokenizerError),
    /// Chat problems.
    #[error(transparent)]
    Chat(#[from] llmd_tokenizer::ChatError),
    /// Hash configuration.
    #[error(transparent)]
    Hash(#[from] crate::hashing::HashError),
    /// Subscription problems.
    #[error(transparent)]
    Subscriber(#[from] crate::subscriber::SubscriberError),
}

/// Runs the CLI, writing results to `out`.
pub async fn run(args: Args, out: &mut (dyn Write + Send)) -> Result<(), CliError> {
    match args.command {
        Command::Hash(a) => hash(a, out),
        Command::Tokenize(a) => tokenize(a, out),
        Command::Listen(a) => listen(a, out).await,
    }
}

fn write_json(out: &mut (dyn Write + Send), v: &Value) -> Result<(), CliError> {
    writeln!(out, "{v}").map_err(|source| CliError::Io {
        what: "stdout".into(),
        source,
    })
}

/// Token ids (and the rendered text for chat) of the input.
fn input_tokens(input: &InputArgs) -> Result<(Vec<u32>, Option<String>), CliError> {
    let name = input
        .tokenizer
        .clone()
        .ok_or_else(|| CliError::Usage("--tokenizer is needed for --prompt or --request".into()))?;
    let tok = ModelTokenizer::load(&name)?;
    if let Some(prompt) = &input.prompt {
        return Ok((tok.encode_completion(prompt)?, None));
    }
    let Some(src) = &input.request else {
        return Err(CliError::Usage(
            "give --tokens, --prompt or --request".into(),
        ));
    };
    let mut text = String::new();
    let read = if src == "-" {
        std::io::stdin().read_to_string(&mut text).map(|_| ())
    } else {
        std::fs::read_to_string(src).map(|t| text = t)
    };
    read.map_err(|source| CliError::Io {
        what: src.clone(),
        source,
    })?;
    let body: Value = serde_json::from_str(&text)
        .map_err(|e| CliError::Usage(format!("{src} is not JSON: {e}")))?;
    if body.get("messages").is_some() {
        let req = ChatRequest::from_openai_body(&body)?;
        let rendered = tok.render_chat(&req)?;
        Ok((tok.encode(&rendered, false)?, Some(rendered)))
    } else {
        match body.get("prompt") {
            Some(Value::String(p)) => Ok((tok.encode_completion(p)?, None)),
            Some(Value::Array(ids)) if ids.iter().all(Value::is_u64) => Ok((
                ids.iter()
                    .filter_map(Value::as_u64)
                    .map(|i| i as u32)
                    .collect(),
                None,
            )),
            _ => Err(CliError::Usage(format!(
                "{src} has neither `messages` nor a string or token-id `prompt`"
            ))),
        }
    }
}

fn hash(a: HashArgs, out: &mut (dyn Write + Send)) -> Result<(), CliError> {
    let tokens = match &a.tokens {
        Some(t) => t.0.clone(),
        None => input_tokens(&a.input)?.0,
    };
    let bs = a.block_size;
    let mut blocks = Vec::new();
    match a.algo {
        HashAlgo::Sha256Cbor => {
            let hasher = VllmHasher::new(a.seed.as_deref(), bs)?;
            let extras = RequestExtras {
                lora: a.lora_name.clone().map(|name| LoraKey {
                    name,
                    path: a.lora_path.clone().unwrap_or_default(),
                }),
                cache_salt: a.cache_salt.clone(),
                ..Default::default()
            };
            let mut digests: Vec<BlockDigest> = Vec::new();
            hasher.digests_into(None, &tokens, &extras, &mut digests);
            for (i, d) in digests.iter().enumerate() {
                blocks.push(json!({"index": i, "tokens": [i * bs, (i + 1) * bs], "key": d.key().0, "digest": d.to_hex()}));
            }
            write_json(
                out,
                &json!({
                    "algo": "sha256_cbor", "block_size": bs, "seed": a.seed, "none_hash": hasher.root().to_hex(),
                    "num_tokens": tokens.len(), "partial_block_tokens": tokens.len() % bs, "blocks": blocks,
                }),
            )
        }
        HashAlgo::CborFnv => {
            let hasher = TokensHasher::new(a.seed.as_deref().unwrap_or(""), &a.model, bs)?;
            let mut keys = Vec::new();
            hasher.keys_into(None, &tokens, &[], &mut keys);
            for (i, k) in keys.iter().enumerate() {
                blocks.push(json!({"index": i, "tokens": [i * bs, (i + 1) * bs], "key": k.0}));
            }
            write_json(
                out,
                &json!({
                    "algo": "cbor-fnv", "block_size": bs, "seed": a.seed.unwrap_or_default(), "model": a.model,
                    "root": hasher.root().0, "num_tokens": tokens.len(), "partial_block_tokens": tokens.len() % bs, "blocks": blocks,
                }),
            )
        }
    }
}

fn tokenize(a: TokenizeArgs, out: &mut (dyn Write + Send)) -> Result<(), CliError> {
    let (ids, rendered) = input_tokens(&a.input)?;
    let mut v = json!({"count": ids.len(), "ids": ids});
    if let Some(r) = rendered {
        v["rendered"] = Value::String(r);
    }
    write_json(out, &v)
}

fn wire_json(v: &WireValue) -> Value {
    match v {
        WireValue::Nil => Value::Null,
        WireValue::Bool(b) => json!(b),
        WireValue::Int(i) => i64::try_from(*i)
            .map(Value::from)
            .unwrap_or_else(|_| Value::String(i.to_string())),
        WireValue::Float(f) => json!(f),
        WireValue::Str(s) => json!(s),
        WireValue::Bin(b) => json!(hex::encode(b)),
        WireValue::Array(a) => Value::Array(a.iter().map(wire_json).collect()),
        WireValue::Map(m) => Value::Array(
            m.iter()
                .map(|(k, v)| json!([wire_json(k), wire_json(v)]))
                .collect(),
        ),
    }
}

fn event_json(e: &KvEvent, verbose: bool) -> Value {
    match e {
        KvEvent::BlockStored(s) => {
            let mut v = json!({
                "type": "BlockStored",
                "block_hashes": s.block_hashes.iter().map(|k| k.0).collect::<Vec<_>>(),
                "parent_block_hash": s.parent_block_hash.map(|k| k.0),
                "block_size": s.block_size,
                "num_tokens": s.token_ids.len(),
                "medium": s.medium, "lora_name": s.lora_name, "group_idx": s.group_idx,
                "kv_cache_spec_kind": s.kv_cache_spec_kind,
            });
            if verbose {
                v["token_ids"] = json!(s.token_ids);
                v["extra_keys"] = s
                    .extra_keys
                    .as_ref()
                    .map(|k| Value::Array(k.iter().map(wire_json).collect()))
                    .unwrap_or(Value::Null);
            }
            v
        }
        KvEvent::BlockRemoved(r) => json!({
            "type": "BlockRemoved", "block_hashes": r.block_hashes.iter().map(|k| k.0).collect::<Vec<_>>(),
            "medium": r.medium, "group_idx": r.group_idx,
        }),
        KvEvent::AllBlocksCleared => json!({"type": "AllBlocksCleared"}),
    }
}

/// Prints what the subscriber sees, one JSON object per line.
struct Printer {
    tx: tokio::sync::mpsc::UnboundedSender<Value>,
    verbose: bool,
}

impl EventHandler for Printer {
    fn on_batch(&self, pod: &str, model: &str, seq: u64, batch: &EventBatch) {
        let events: Vec<Value> = batch
            .events
            .iter()
            .map(|e| event_json(e, self.verbose))
            .collect();
        let _ = self.tx.send(json!({
            "pod": pod, "model": model, "seq": seq, "ts": batch.ts, "data_parallel_rank": batch.data_parallel_rank,
            "events": events,
            "skipped": {"unknown_events": batch.skipped.unknown_events, "unknown_fields": batch.skipped.unknown_fields,
                        "malformed_events": batch.skipped.malformed_events},
        }));
    }
    fn on_gap(&self, pod: &str, expected: u64, got: u64) {
        let _ = self.tx.send(json!({"gap": {"pod": pod, "expected": expected, "got": got, "missing": got - expected}}));
    }
    fn on_restart(&self, pod: &str, last: u64, got: u64) {
        let _ = self
            .tx
            .send(json!({"restart": {"pod": pod, "last": last, "got": got}}));
    }
    fn on_decode_error(&self, pod: &str, error: &DecodeError) {
        let _ = self.tx.send(json!({"decode_error": {"pod": pod, "reason": error.reason(), "error": error.to_string()}}));
    }
    fn on_replay(&self, pod: &str, from: u64, to: u64, recovered: u64) {
        let _ = self
            .tx
            .send(json!({"replay": {"pod": pod, "from": from, "to": to, "recovered": recovered}}));
    }
    fn on_rejected(&self, topic: &str, reason: crate::subscriber::RejectReason) {
        let _ = self
            .tx
            .send(json!({"rejected": {"topic": topic, "reason": reason.as_str()}}));
    }
}

async fn listen(a: ListenArgs, out: &mut (dyn Write + Send)) -> Result<(), CliError> {
    if a.endpoints.is_empty() && a.bind.is_none() {
        return Err(CliError::Usage(
            "give --endpoint (repeatable) and/or --bind".into(),
        ));
    }
    if a.replay_endpoint.is_some() && a.endpoints.len() != 1 {
        return Err(CliError::Usage(
            "--replay-endpoint needs exactly one --endpoint".into(),
        ));
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let printer = Arc::new(Printer {
        tx,
        verbose: a.verbose,
    });
    let config = SubscriberConfig {
        topic_filter: a.topic_filter.clone(),
        // A debugging tool: every pod that connects to --bind is shown, named by its topic.
        accept_unknown_topics: true,
        ..Default::default()
    };
    let sub = Subscriber::new(printer, config);
    for spec in &a.endpoints {
        let (pod, endpoint) = match spec.split_once('=') {
            Some((pod, endpoint)) if endpoint.contains("://") => {
                (pod.to_owned(), endpoint.to_owned())
            }
            _ => (spec.clone(), spec.clone()),
        };
        sub.add_pod(PodEndpoint {
            pod,
            endpoint: Some(endpoint),
            replay_endpoint: a.replay_endpoint.clone(),
            model: String::new(),
        });
    }
    if let Some(bind) = &a.bind {
        let bound = sub.bind(bind).await?;
        write_json(out, &json!({"bound": bound}))?;
    }
    let deadline = a
        .duration
        .map(|d| tokio::time::Instant::now() + Duration::from_secs_f64(d.max(0.0)));
    let mut messages = 0u64;
    loop {
        let next = match deadline {
            Some(d) => match tokio::time::timeout_at(d, rx.recv()).await {
                Ok(v) => v,
                Err(_) => break,
            },
            None => tokio::select! {
                v = rx.recv() => v,
                _ = llmd_telemetry::shutdown_signal() => break,
            },
        };
        let Some(line) = next else { break };
        let is_message = line.get("seq").is_some() || line.get("decode_error").is_some();
        write_json(out, &line)?;
        if is_message {
            messages += 1;
            if a.count.is_some_and(|c| messages >= c) {
                break;
            }
        }
    }
    sub.shutdown();
    Ok(())
}
