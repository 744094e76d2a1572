//! The engine: a scheduler loop in the shape of vLLM V1's.
//!
//! Each step: abort requests whose client went away; give every decoding request one token
//! (a new block when it crosses a block boundary, preempting the newest request when none is
//! free); continue chunked prefills; admit waiting requests first-come first-served while
//! `max_num_seqs`, the step's token budget and free blocks allow (reusing cached prefix
//! blocks). The step takes `prefill overhead + uncached prompt tokens × per-token time +
//! decode time(batch size)`, scaled by `--time-scale`. Then finished prefills emit their first
//! token, decodes emit the next, newly full blocks are cached (KV events), finished requests
//! free their blocks, and the step's events are published as one batch.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use llmd_kv_index::events::KvEvent;
use llmd_kv_index::hashing::{BlockDigest, RequestExtras, VllmHasher};
use tokio::sync::mpsc;

use crate::block_pool::{BlockId, BlockPool};
use crate::config::EngineArgs;
use crate::metrics::EngineMetrics;

/// What the engine tells a request's handler.
#[derive(Debug, Clone, PartialEq)]
pub enum Emit {
    /// The request was scheduled; `cached_tokens` of its prompt came from the prefix cache.
    Scheduled {
        /// Prompt tokens found in the prefix cache.
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
        /// Block ids the request's KV occupied (the prefill role leases them).
        blocks: Vec<BlockId>,
    },
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
    /// Prompt tokens whose KV arrives from elsewhere (P/D decode): treated as cached.
    pub external_tokens: usize,
    /// Keep the blocks after finishing (P/D prefill lease): released by [`Engine::release`].
    pub hold_blocks: bool,
    /// Where emits go; a closed channel aborts the request.
    pub tx: mpsc::UnboundedSender<Emit>,
}

struct Running {
    req: EngineRequest,
    blocks: Vec<BlockId>,
    /// Digests of the request's full blocks so far (prompt and output).
    digests: Vec<BlockDigest>,
    /// Blocks of `digests` already cached in the pool.
    cached_blocks: usize,
    /// Tokens whose KV is computed.
    computed: usize,
    /// All tokens so far (prompt + output).
    tokens: Vec<u32>,
    generated: usize,
    arrival: Instant,
    first_token: Option<Instant>,
    scheduled: Option<Instant>,
    last_token: Option<Instant>,
}

/// Handle to submit requests to the engine task.
#[derive(Clone, Debug)]
pub struct Engine {
    tx: mpsc::UnboundedSender<Command>,
}

enum Command {
    Submit(EngineRequest, Instant),
    Release(Vec<BlockId>),
    CachedBlocks(Vec<u32>, tokio::sync::oneshot::Sender<usize>),
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
        tokio::spawn(run(args, metrics, events, rx));
        Self { tx }
    }

    /// Queues a request. False when the engine stopped.
    pub fn submit(&self, req: EngineRequest) -> bool {
        self.submit_at(req, Instant::now())
    }

    /// Queues a request that arrived at `arrival` (its latency metrics count from then).
    pub fn submit_at(&self, req: EngineRequest, arrival: Instant) -> bool {
        self.tx.send(Command::Submit(req, arrival)).is_ok()
    }

    /// How many of `prompt`'s leading blocks are in the prefix cache now.
    pub async fn cached_blocks(&self, prompt: Vec<u32>) -> usize {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.tx.send(Command::CachedBlocks(prompt, tx)).is_err() {
            return 0;
        }
        rx.await.unwrap_or(0)
    }

    /// Releases blocks held for a P/D lease.
    pub fn release(&self, blocks: Vec<BlockId>) {
        let _ = self.tx.send(Command::Release(blocks));
    }
}

async fn run(
    args: Arc<EngineArgs>,
    metrics: Arc<EngineMetrics>,
    events: Option<EventSink>,
    mut rx: mpsc::UnboundedReceiver<Command>,
) {
    let hasher = match VllmHasher::new(args.hash_seed.as_deref(), args.block_size.max(1)) {
        Ok(h) => h,
        Err(error) => {
            tracing::error!(%error, "engine cannot start");
            return;
        }
    };
    let bs = args.block_size.max(1);
    let mut pool = BlockPool::new(args.num_gpu_blocks, bs);
    let mut waiting: VecDeque<Running> = VecDeque::new();
    let mut running: Vec<Running> = Vec::new();
    loop {
        // Take what arrived; sleep when there is nothing to do.
        if waiting.is_empty() && running.is_empty() {
            match rx.recv().await {
                Some(cmd) => handle_command(cmd, &mut waiting, &mut pool, &hasher),
                None => break,
            }
        }
        while let Ok(cmd) = rx.try_recv() {
            handle_command(cmd, &mut waiting, &mut pool, &hasher);
        }
        // Aborts: the client went away.
        waiting.retain(|r| !r.req.tx.is_closed());
        let mut i = 0;
        while i < running.len() {
            if running[i].req.tx.is_closed() {
                let r = running.swap_remove(i);
                pool.free(&r.blocks);
                metrics.finished(&r.arrival, "abort");
            } else {
                i += 1;
            }
        }

        // Schedule.
        let mut budget = args.max_num_batched_tokens.max(1);
        let mut decode_seqs = 0usize;
        let mut prefill_tokens = 0usize;
        // Decodes first: one token each, a block when crossing a boundary.
        let mut idx = 0;
        while idx < running.len() {
            let r = &running[idx];
            if r.computed < r.req.prompt.len() {
                idx += 1;
                continue;
            }
            let needed = (r.tokens.len() + 1).div_ceil(bs);
            if needed > running[idx].blocks.len() {
                match pool.allocate(1) {
                    Some(b) => running[idx].blocks.extend(b),
                    None => {
                        // Preempt the newest request to free blocks (recompute later).
                        let Some(mut victim) = running.pop() else {
                            break;
                        };
                        pool.free(&victim.blocks);
                        victim.blocks.clear();
                        victim.computed = 0;
                        victim.cached_blocks = 0;
                        metrics.preempted();
                        waiting.push_front(victim);
                        continue;
                    }
                }
            }
            decode_seqs += 1;
            budget = budget.saturating_sub(1);
            idx += 1;
        }
        // Continue chunked prefills.
        for r in running
            .iter_mut()
            .filter(|r| r.computed < r.req.prompt.len())
        {
            let chunk = (r.req.prompt.len() - r.computed).min(budget);
            r.computed += chunk;
            prefill_tokens += chunk;
            budget -= chunk;
        }
        // Admit.
        while running.len() < args.max_num_seqs && budget > 0 {
            let Some(mut r) = waiting.pop_front() else {
                break;
            };
            let prompt_len = r.req.prompt.len();
            let hits = pool.cached_prefix(&r.digests, prompt_len);
            let cached_tokens =
                (hits * bs).max(r.req.external_tokens.min(prompt_len.saturating_sub(1)));
            let touched = pool.touch(&r.digests[..hits]);
            let total_blocks = (prompt_len + 1).div_ceil(bs);
            match pool.allocate(total_blocks - touched.len()) {
                Some(new) => {
                    r.blocks = touched;
                    r.blocks.extend(new);
                }
                None => {
                    pool.free(&touched);
                    waiting.push_front(r);
                    break;
                }
            }
            r.cached_blocks = hits;
            r.computed = cached_tokens;
            r.scheduled = Some(Instant::now());
            metrics.scheduled(&r.arrival, prompt_len, cached_tokens);
            let _ = r.req.tx.send(Emit::Scheduled { cached_tokens });
            let chunk = (prompt_len - r.computed).min(budget);
            r.computed += chunk;
            prefill_tokens += chunk;
            budget -= chunk;
            running.push(r);
        }
        metrics.set_queue(running.len(), waiting.len(), pool.usage());

        // The step's duration.
        let mut step_ms = 0.0;
        if prefill_tokens > 0 {
            step_ms +=
                args.prefill_overhead_ms + prefill_tokens as f64 * args.prefill_us_per_token / 1e3;
        }
        if decode_seqs > 0 {
            step_ms += args.decode_itl_ms + decode_seqs as f64 * args.decode_itl_per_seq_us / 1e3;
        }
        if running.is_empty() {
            // Nothing could be scheduled (e.g. no free blocks): wait for the next command.
            if let Some(cmd) = rx.recv().await {
                handle_command(cmd, &mut waiting, &mut pool, &hasher);
            } else {
                break;
            }
            continue;
        }
        if args.time_scale > 0.0 {
            tokio::time::sleep(args.scaled(step_ms)).await;
        } else {
            tokio::task::yield_now().await;
        }

        // Outputs.
        let now = Instant::now();
        let mut finished = Vec::new();
        for (i, r) in running.iter_mut().enumerate() {
            if r.computed < r.req.prompt.len() {
                continue;
            }
            // Prompt done (this step or earlier): one token.
            let next = r.req.output.get(r.generated).copied();
            match next {
                Some(tok) if r.generated < r.req.max_tokens => {
                    r.tokens.push(tok);
                    r.generated += 1;
                    r.computed = r.tokens.len();
                    let finish = if r.generated >= r.req.max_tokens {
                        Some("length")
                    } else if r.generated >= r.req.output.len() {
                        Some("stop")
                    } else {
                        None
                    };
                    let _ = r.req.tx.send(Emit::Token { id: tok, finish });
                    match r.first_token {
                        None => {
                            r.first_token = Some(now);
                            metrics.first_token(&r.arrival, r.scheduled.unwrap_or(now));
                        }
                        Some(_) => metrics.inter_token(r.last_token.unwrap_or(now)),
                    }
                    r.last_token = Some(now);
                }
                _ => {}
            }
            // Cache blocks that became full.
            let full = r.tokens.len() / bs;
            if full > r.digests.len() {
                let parent = r.digests.last().copied();
                let start = r.digests.len() * bs;
                hasher.digests_into(
                    parent.as_ref(),
                    &r.tokens[start..full * bs],
                    &RequestExtras::default(),
                    &mut r.digests,
                );
            }
            if r.digests.len() > r.cached_blocks && r.computed >= r.digests.len() * bs {
                let from = r.cached_blocks;
                let to = r.digests.len().min(r.blocks.len());
                if to > from {
                    let parent = from.checked_sub(1).map(|p| r.digests[p]);
                    pool.cache_full_blocks(
                        &r.blocks[from..to],
                        &r.digests[from..to],
                        parent.as_ref(),
                        &r.tokens[from * bs..to * bs],
                    );
                    r.cached_blocks = to;
                }
            }
            let done_len = r.generated >= r.req.max_tokens;
            let done_stop = r.generated >= r.req.output.len();
            if r.first_token.is_some() && (done_len || done_stop) {
                finished.push((i, if done_len { "length" } else { "stop" }));
            }
        }
        for (i, reason) in finished.into_iter().rev() {
            let r = running.swap_remove(i);
            metrics.completed(r.e2e(), r.phases(), reason);
            if !r.req.hold_blocks {
                pool.free(&r.blocks);
            }
            let _ = r.req.tx.send(Emit::Finished {
                reason,
                blocks: r.blocks.clone(),
            });
        }
        metrics.set_queue(running.len(), waiting.len(), pool.usage());
        let step_events = pool.take_events();
        if let Some(sink) = &events
            && !step_events.is_empty()
        {
            let _ = sink.send(step_events);
        }
    }
    tracing::debug!("engine stopped");
}

fn handle_command(
    cmd: Command,
    waiting: &mut VecDeque<Running>,
    pool: &mut BlockPool,
    hasher: &VllmHasher,
) {
    match cmd {
        Command::Submit(req, arrival) => {
            let mut digests = Vec::with_capacity(req.prompt.len() / hasher.block_size());
            hasher.digests_into(None, &req.prompt, &RequestExtras::default(), &mut digests);
            let tokens = req.prompt.clone();
            waiting.push_back(Running {
                req,
                blocks: Vec::new(),
                digests,
                cached_blocks: 0,
                computed: 0,
                tokens,
                generated: 0,
                arrival,
                first_token: None,
                scheduled: None,
                last_token: None,
            });
        }
        Command::Release(blocks) => pool.free(&blocks),
        Command::CachedBlocks(prompt, reply) => {
            let mut digests = Vec::with_capacity(prompt.len() / hasher.block_size());
            hasher.digests_into(None, &prompt, &RequestExtras::default(), &mut digests);
            let _ = reply.send(pool.cached_prefix(&digests, prompt.len()));
        }
    }
}

impl Running {
    /// Seconds from arrival to now.
    fn e2e(&self) -> f64 {
        self.arrival.elapsed().as_secs_f64()
    }

    /// Queue time, prefill time, decode time (seconds).
    fn phases(&self) -> (f64, f64, f64) {
        let sched = self.scheduled.unwrap_or(self.arrival);
        let first = self.first_token.unwrap_or(sched);
        let last = self.last_token.unwrap_or(first);
        (
            sched.duration_since(self.arrival).as_secs_f64(),
            first.duration_since(sched).as_secs_f64(),
            last.duration_since(first).as_secs_f64(),
        )
    }
}
