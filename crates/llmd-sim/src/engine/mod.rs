//! The engine: a scheduler loop in the shape of vLLM V1's, on one tokio task that owns every
//! piece of its state (queues, block pool, hasher); handlers talk to it over a channel.
//!
//! Each step: abort requests whose client went away; give every decoding request one token
//! (a new block when it crosses a block boundary, preempting the newest request when none is
//! free); continue chunked prefills; admit waiting requests first-come first-served while
//! `max_num_seqs`, the step's token budget, free blocks and `--max-loras` allow (reusing cached
//! prefix blocks; a request for an adapter that does not fit this step is skipped, not
//! blocking the ones behind it). The step takes `prefill overhead + uncached prompt tokens ×
//! per-token time + decode time(batch size)`, scaled by `--time-scale` and slept. Then finished
//! prefills emit their first token, decodes emit the next, newly full blocks are cached (KV
//! events), finished requests free their blocks, and the step's events are published as one
//! batch. Every timestamp is taken with [`Instant::now`] as it happens, so the durations the
//! metrics and spans report are the wall time the request spent.

//!
//! | module | what it does |
//! |---|---|
//! | (here) | the handle ([`Engine`]), what goes in ([`EngineRequest`]) and comes out ([`Emit`], [`HeldBlocks`]) |
//! | `scheduler` | the loop: scheduling, the step's duration, outputs, metrics |
//! | `hashing` | block digests with vLLM's extra keys, and the extra keys as published |

mod hashing;
mod scheduler;

use std::sync::Arc;
use std::time::Instant;

use llmd_kv_index::events::KvEvent;
use llmd_kv_index::hashing::RequestExtras;
use tokio::sync::{mpsc, oneshot};

use crate::block_pool::BlockId;
use crate::config::EngineArgs;
use crate::lora::Adapter;
use crate::metrics::{EngineMetrics, RequestCounts, RequestTimes};

pub use hashing::extras;

/// What the engine tells a request's handler.
#[derive(Debug)]
pub enum Emit {
    /// The request was scheduled; `cached_tokens` of its prompt were not computed here (local
    /// prefix-cache hits plus tokens received over the KV connector).
    Scheduled {
        /// Prompt tokens not computed (vLLM's `num_cached_tokens`).
        cached_tokens: usize,
    },
    /// One output token; `finish` is set on the last one (`stop` or `length`).
    Token {
        /// Token id.
        id: u32,
        /// Finish reason when this token ends the request.
        finish: Option<&'static str>,
    },
    /// Done.
    Finished {
        /// `stop`, `length` or `abort`.
        reason: &'static str,
        /// The request's blocks, for a request that asked to hold them (P/D prefill lease);
        /// released when dropped.
        held: Option<HeldBlocks>,
        /// Wall-clock phases (the numbers the metrics recorded).
        times: RequestTimes,
    },
}

/// Blocks kept after their request finished (a P/D prefill's lease): given back to the pool
/// when dropped, whoever drops them (the handler, a lease that expires or is pulled, or a
/// response the client abandoned), so a block can never be lost.
pub struct HeldBlocks {
    blocks: Vec<BlockId>,
    engine: mpsc::WeakUnboundedSender<Command>,
}

impl std::fmt::Debug for HeldBlocks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeldBlocks")
            .field("blocks", &self.blocks.len())
            .finish()
    }
}

impl HeldBlocks {
    /// The held block ids.
    pub fn ids(&self) -> &[BlockId] {
        &self.blocks
    }

    /// Keeps the first `n` blocks here and returns the rest as their own holding.
    pub fn split_off(&mut self, n: usize) -> HeldBlocks {
        let rest = self.blocks.split_off(n.min(self.blocks.len()));
        HeldBlocks {
            blocks: rest,
            engine: self.engine.clone(),
        }
    }
}

impl Drop for HeldBlocks {
    fn drop(&mut self) {
        if !self.blocks.is_empty()
            && let Some(tx) = self.engine.upgrade()
        {
            let _ = tx.send(Command::Release(std::mem::take(&mut self.blocks)));
        }
    }
}

/// A request handed to the engine.
#[derive(Debug)]
pub struct EngineRequest {
    /// Request id.
    pub id: String,
    /// Prompt token ids.
    pub prompt: Vec<u32>,
    /// Output token ids to emit, in order (the engine stops at their end with `stop`, or at
    /// `max_tokens` with `length`).
    pub output: Vec<u32>,
    /// Output length cap.
    pub max_tokens: usize,
    /// `max_tokens` as the request set it (`vllm:request_params_max_tokens`).
    pub max_tokens_param: Option<usize>,
    /// The prompt's KV arrived over the KV connector (P/D decode after a pull): the tokens not
    /// in the local prefix cache count as external hits and are not computed.
    pub remote_kv: bool,
    /// Keep the blocks after finishing (P/D prefill lease): handed out in [`Emit::Finished`].
    pub hold_blocks: bool,
    /// The LoRA adapter serving it.
    pub lora: Option<Arc<Adapter>>,
    /// `cache_salt` (keyed into block 0's hash).
    pub cache_salt: Option<String>,
    /// When the request arrived at the server (its latencies count from here).
    pub arrival: Instant,
    /// When it was handed to the engine (vLLM's `queued_ts`; for a P/D decode, before its KV
    /// pull).
    pub queued: Instant,
    /// Where emits go; a closed channel aborts the request.
    pub tx: mpsc::UnboundedSender<Emit>,
}

impl EngineRequest {
    /// The extra keys vLLM hashes for this request (LoRA on every block, salt on block 0).
    pub fn extras(&self) -> RequestExtras {
        extras(self.lora.as_deref(), self.cache_salt.clone())
    }
}

/// A point-in-time view of the engine, for tests and diagnostics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EngineSnapshot {
    /// Requests waiting.
    pub waiting: usize,
    /// Requests running.
    pub running: usize,
    /// Blocks in the free queue (cached or not).
    pub free_blocks: usize,
    /// All blocks.
    pub total_blocks: usize,
}

/// Handle to submit requests to the engine task.
#[derive(Clone, Debug)]
pub struct Engine {
    tx: mpsc::UnboundedSender<Command>,
    metrics: Arc<EngineMetrics>,
}

enum Command {
    Submit(EngineRequest),
    Release(Vec<BlockId>),
    CachedBlocks(Vec<u32>, RequestExtras, oneshot::Sender<usize>),
    Snapshot(oneshot::Sender<EngineSnapshot>),
}

/// A batch of KV events produced by one step.
pub type EventSink = mpsc::UnboundedSender<Vec<KvEvent>>;

impl Engine {
    /// Starts the engine loop.
    pub fn start(
        args: Arc<EngineArgs>,
        metrics: Arc<EngineMetrics>,
        events: Option<EventSink>,
    ) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let weak = tx.downgrade();
        tokio::spawn(scheduler::run(args, metrics.clone(), events, rx, weak));
        Self { tx, metrics }
    }

    /// Queues a request. False when the engine stopped.
    pub fn submit(&self, req: EngineRequest) -> bool {
        self.tx.send(Command::Submit(req)).is_ok()
    }

    /// How many of `prompt`'s leading blocks (hashed with `extras`) are in the prefix cache.
    pub async fn cached_blocks(&self, prompt: Vec<u32>, extras: RequestExtras) -> usize {
        let (tx, rx) = oneshot::channel();
        if self
            .tx
            .send(Command::CachedBlocks(prompt, extras, tx))
            .is_err()
        {
            return 0;
        }
        rx.await.unwrap_or(0)
    }

    /// Queue lengths and free blocks now.
    pub async fn snapshot(&self) -> EngineSnapshot {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Command::Snapshot(tx)).is_err() {
            return EngineSnapshot::default();
        }
        rx.await.unwrap_or_default()
    }

    /// Records a request that failed on its way into the engine (e.g. its KV pull) as vLLM
    /// counts a request its engine finishes with an error (`finished_reason="error"`), before
    /// the caller answers.
    pub fn failed(&self, counts: RequestCounts, arrival: Instant, queued: Instant) {
        let now = Instant::now();
        let times = RequestTimes {
            e2e: now.duration_since(arrival).as_secs_f64(),
            queue: now.duration_since(queued).as_secs_f64(),
            ..RequestTimes::default()
        };
        self.metrics.finished(&times, counts, "error");
    }
}
