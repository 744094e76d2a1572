//! The scheduler loop on the engine's task: it alone owns the queues, the block pool and the
//! hasher (no lock); see the module above for the step.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use llmd_kv_index::events::WireValue;
use llmd_kv_index::hashing::{BlockDigest, RequestExtras, VllmHasher};
use tokio::sync::mpsc;

use super::hashing::{extend_digests, published_extra_keys};
use super::{Command, Emit, EngineRequest, EngineSnapshot, EventSink, HeldBlocks};
use crate::block_pool::{BlockId, BlockPool, StoredMeta};
use crate::config::EngineArgs;
use crate::metrics::{EngineMetrics, RequestCounts, RequestTimes};

struct Running {
    req: EngineRequest,
    extras: RequestExtras,
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
    /// Preempted at least once (its next admission is not counted in the cache stats).
    preempted: bool,
    scheduled: Option<Instant>,
    first_token: Option<Instant>,
    last_token: Option<Instant>,
}

struct State {
    args: Arc<EngineArgs>,
    metrics: Arc<EngineMetrics>,
    hasher: VllmHasher,
    pool: BlockPool,
    waiting: VecDeque<Running>,
    running: Vec<Running>,
    weak: mpsc::WeakUnboundedSender<Command>,
    scratch: Vec<u8>,
}

pub(super) async fn run(
    args: Arc<EngineArgs>,
    metrics: Arc<EngineMetrics>,
    events: Option<EventSink>,
    mut rx: mpsc::UnboundedReceiver<Command>,
    weak: mpsc::WeakUnboundedSender<Command>,
) {
    let hasher = match VllmHasher::new(args.hash_seed.as_deref(), args.block_size.max(1)) {
        Ok(h) => h,
        Err(error) => {
            tracing::error!(%error, "engine cannot start");
            return;
        }
    };
    let mut st = State {
        pool: BlockPool::new(args.num_gpu_blocks, args.block_size.max(1)),
        args,
        metrics,
        hasher,
        waiting: VecDeque::new(),
        running: Vec::new(),
        weak,
        scratch: Vec::new(),
    };
    loop {
        // Take what arrived; sleep when there is nothing to do.
        if st.waiting.is_empty() && st.running.is_empty() {
            match rx.recv().await {
                Some(cmd) => st.handle(cmd),
                None => break,
            }
        }
        while let Ok(cmd) = rx.try_recv() {
            st.handle(cmd);
        }
        st.abort_gone();
        let work = st.schedule();
        st.publish_state();
        if st.running.is_empty() {
            // Nothing could be scheduled (e.g. no free blocks): wait for the next command.
            match rx.recv().await {
                Some(cmd) => st.handle(cmd),
                None => break,
            }
            continue;
        }
        let step_ms = st.step_ms(work);
        if st.args.time_scale > 0.0 {
            tokio::time::sleep(st.args.scaled(step_ms)).await;
        } else {
            tokio::task::yield_now().await;
        }
        st.outputs();
        st.publish_state();
        let step_events = st.pool.take_events();
        if let Some(sink) = &events
            && !step_events.is_empty()
        {
            let _ = sink.send(step_events);
        }
    }
    tracing::debug!("engine stopped");
}

/// Tokens a step works on.
#[derive(Debug, Clone, Copy, Default)]
struct Work {
    decode_seqs: usize,
    prefill_tokens: usize,
}

impl State {
    fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Submit(req) => {
                let extras = req.extras();
                let mut digests = Vec::with_capacity(req.prompt.len() / self.hasher.block_size());
                extend_digests(
                    &self.hasher,
                    &extras,
                    &req.prompt,
                    &mut digests,
                    &mut self.scratch,
                );
                let tokens = req.prompt.clone();
                self.waiting.push_back(Running {
                    req,
                    extras,
                    blocks: Vec::new(),
                    digests,
                    cached_blocks: 0,
                    computed: 0,
                    tokens,
                    generated: 0,
                    preempted: false,
                    scheduled: None,
                    first_token: None,
                    last_token: None,
                });
            }
            Command::Release(blocks) => self.pool.free(&blocks),
            Command::CachedBlocks(prompt, extras, reply) => {
                let mut digests = Vec::with_capacity(prompt.len() / self.hasher.block_size());
                extend_digests(
                    &self.hasher,
                    &extras,
                    &prompt,
                    &mut digests,
                    &mut self.scratch,
                );
                let _ = reply.send(self.pool.cached_prefix(&digests, prompt.len()));
            }
            Command::Snapshot(reply) => {
                let _ = reply.send(EngineSnapshot {
                    waiting: self.waiting.len(),
                    running: self.running.len(),
                    free_blocks: self.pool.num_free(),
                    total_blocks: self.pool.num_blocks(),
                });
            }
        }
    }

    /// Drops requests whose client went away (`abort`).
    fn abort_gone(&mut self) {
        let now = Instant::now();
        let metrics = &self.metrics;
        self.waiting.retain(|r| {
            let gone = r.req.tx.is_closed();
            if gone {
                metrics.finished(&r.times(now), r.counts(), "abort");
            }
            !gone
        });
        let mut i = 0;
        while i < self.running.len() {
            if self.running[i].req.tx.is_closed() {
                let r = self.running.swap_remove(i);
                self.pool.free(&r.blocks);
                self.metrics.finished(&r.times(now), r.counts(), "abort");
            } else {
                i += 1;
            }
        }
    }

    /// Picks this step's work: decodes, chunked prefills, admissions.
    fn schedule(&mut self) -> Work {
        let bs = self.args.block_size.max(1);
        let mut budget = self.args.max_num_batched_tokens.max(1);
        let mut work = Work::default();
        // Decodes first: one token each, a block when crossing a boundary.
        let mut idx = 0;
        while idx < self.running.len() {
            let r = &self.running[idx];
            if r.computed < r.req.prompt.len() {
                idx += 1;
                continue;
            }
            let needed = (r.tokens.len() + 1).div_ceil(bs);
            if needed > self.running[idx].blocks.len() {
                let missing = needed - self.running[idx].blocks.len();
                match self.pool.allocate(missing) {
                    Some(b) => self.running[idx].blocks.extend(b),
                    None => {
                        // Preempt the newest request to free blocks (recompute later).
                        let Some(mut victim) = self.running.pop() else {
                            break;
                        };
                        self.pool.free(&victim.blocks);
                        victim.blocks.clear();
                        victim.computed = 0;
                        victim.cached_blocks = 0;
                        victim.preempted = true;
                        // Its KV is gone; what arrived over the connector is recomputed.
                        victim.req.remote_kv = false;
                        self.metrics.preempted();
                        self.waiting.push_front(victim);
                        continue;
                    }
                }
            }
            work.decode_seqs += 1;
            budget = budget.saturating_sub(1);
            idx += 1;
        }
        // Continue chunked prefills.
        for r in self
            .running
            .iter_mut()
            .filter(|r| r.computed < r.req.prompt.len())
        {
            let chunk = (r.req.prompt.len() - r.computed).min(budget);
            r.computed += chunk;
            work.prefill_tokens += chunk;
            budget -= chunk;
        }
        // Admit, skipping requests whose adapter does not fit this step (as vLLM does).
        let mut loras: Vec<u32> = Vec::new();
        for r in &self.running {
            if let Some(a) = &r.req.lora
                && !loras.contains(&a.id)
            {
                loras.push(a.id);
            }
        }
        let max_loras = self.args.lora.max_loras.max(1);
        let mut skipped: VecDeque<Running> = VecDeque::new();
        while self.running.len() < self.args.max_num_seqs && budget > 0 {
            let Some(mut r) = self.waiting.pop_front() else {
                break;
            };
            if let Some(a) = &r.req.lora
                && !loras.contains(&a.id)
                && loras.len() >= max_loras
            {
                skipped.push_back(r);
                continue;
            }
            let prompt_len = r.req.prompt.len();
            let hits = self.pool.cached_prefix(&r.digests, prompt_len);
            let local = hits * bs;
            // vLLM: the connector brings the rest of the prompt; the last prompt token is
            // recomputed for its logits.
            let external = if r.req.remote_kv {
                prompt_len.saturating_sub(local)
            } else {
                0
            };
            let touched = self.pool.touch(&r.digests[..hits]);
            let total_blocks = (r.tokens.len() + 1).div_ceil(bs);
            match self
                .pool
                .allocate(total_blocks.saturating_sub(touched.len()))
            {
                Some(new) => {
                    r.blocks = touched;
                    r.blocks.extend(new);
                }
                None => {
                    self.pool.free(&touched);
                    self.waiting.push_front(r);
                    break;
                }
            }
            let cached_tokens = (local + external)
                .min(prompt_len.saturating_sub(1))
                .max(local);
            self.metrics
                .admitted(prompt_len, local, external, r.preempted);
            r.cached_blocks = hits;
            r.computed = cached_tokens;
            r.scheduled.get_or_insert_with(Instant::now);
            if let Some(a) = &r.req.lora
                && !loras.contains(&a.id)
            {
                loras.push(a.id);
            }
            let _ = r.req.tx.send(Emit::Scheduled { cached_tokens });
            let chunk = (prompt_len - r.computed).min(budget);
            r.computed += chunk;
            work.prefill_tokens += chunk;
            budget -= chunk;
            self.running.push(r);
        }
        while let Some(r) = skipped.pop_back() {
            self.waiting.push_front(r);
        }
        work
    }

    fn step_ms(&self, work: Work) -> f64 {
        let mut ms = 0.0;
        if work.prefill_tokens > 0 {
            ms += self.args.prefill_overhead_ms
                + work.prefill_tokens as f64 * self.args.prefill_us_per_token / 1e3;
        }
        if work.decode_seqs > 0 {
            ms += self.args.decode_itl_ms
                + work.decode_seqs as f64 * self.args.decode_itl_per_seq_us / 1e3;
        }
        ms
    }

    /// After the step: tokens, newly full blocks cached, finished requests.
    fn outputs(&mut self) {
        let bs = self.args.block_size.max(1);
        let now = Instant::now();
        let mut finished = Vec::new();
        let mut step_tokens = 0usize;
        for (i, r) in self.running.iter_mut().enumerate() {
            if r.computed < r.req.prompt.len() {
                continue;
            }
            // Prompt done (this step or earlier): one token.
            if let Some(tok) = r.req.output.get(r.generated).copied()
                && r.generated < r.req.max_tokens
            {
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
                step_tokens += 1;
                match (r.first_token, r.last_token) {
                    (None, _) => {
                        r.first_token = Some(now);
                        step_tokens += r.req.prompt.len();
                        self.metrics.first_token(
                            now.duration_since(r.req.arrival).as_secs_f64(),
                            r.req.prompt.len(),
                        );
                    }
                    (Some(_), Some(last)) => self
                        .metrics
                        .inter_token(now.duration_since(last).as_secs_f64()),
                    (Some(_), None) => {}
                }
                r.last_token = Some(now);
            }
            // Cache blocks that became full.
            extend_digests(
                &self.hasher,
                &r.extras,
                &r.tokens,
                &mut r.digests,
                &mut self.scratch,
            );
            if r.digests.len() > r.cached_blocks && r.computed >= r.digests.len() * bs {
                let from = r.cached_blocks;
                let to = r.digests.len().min(r.blocks.len());
                if to > from {
                    let parent = from.checked_sub(1).map(|p| r.digests[p]);
                    let extra: Vec<WireValue> = if r.extras.is_empty() {
                        Vec::new()
                    } else {
                        (from..to)
                            .map(|b| published_extra_keys(&r.extras, b * bs))
                            .collect()
                    };
                    let meta = StoredMeta {
                        lora: r
                            .req
                            .lora
                            .as_ref()
                            .map(|a| (i64::from(a.id), a.name.as_str())),
                        extra_keys: &extra,
                    };
                    self.pool.cache_full_blocks(
                        &r.blocks[from..to],
                        &r.digests[from..to],
                        parent.as_ref(),
                        &r.tokens[from * bs..to * bs],
                        meta,
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
        if step_tokens > 0 {
            self.metrics.step(step_tokens);
        }
        for (i, reason) in finished.into_iter().rev() {
            let r = self.running.swap_remove(i);
            let times = r.times(now);
            self.metrics.finished(&times, r.counts(), reason);
            let held = if r.req.hold_blocks {
                Some(HeldBlocks {
                    blocks: r.blocks.clone(),
                    engine: self.weak.clone(),
                })
            } else {
                self.pool.free(&r.blocks);
                None
            };
            // A handler that is gone drops `held` with the message: the blocks come back.
            let _ = r.req.tx.send(Emit::Finished {
                reason,
                held,
                times,
            });
        }
    }

    fn publish_state(&self) {
        self.metrics
            .set_queue(self.running.len(), self.waiting.len(), self.pool.usage());
        if self.args.lora.enable_lora {
            fn names<'a>(it: impl Iterator<Item = &'a Running>) -> Vec<&'a str> {
                it.filter_map(|r| r.req.lora.as_deref().map(|a| a.name.as_str()))
                    .collect()
            }
            let running = names(self.running.iter());
            let waiting = names(self.waiting.iter());
            self.metrics.set_lora_info(&running, &waiting);
        }
    }
}

impl Running {
    /// vLLM's phases at `now` (the finishing step): e2e from arrival, queue from queued to
    /// first scheduled, prefill to the first token, decode to the last.
    fn times(&self, now: Instant) -> RequestTimes {
        let secs = |a: Instant, b: Instant| b.saturating_duration_since(a).as_secs_f64();
        let arrival = self.req.arrival;
        let sched = self.scheduled.unwrap_or(now);
        let first = self.first_token.unwrap_or(sched);
        let last = self.last_token.unwrap_or(first);
        let decode = secs(first, last);
        RequestTimes {
            e2e: secs(arrival, now),
            queue: secs(self.req.queued, sched),
            ttft: self.first_token.map(|t| secs(arrival, t)),
            prefill: secs(sched, first),
            decode,
            inference: secs(sched, last),
            mean_time_per_output_token: if self.generated > 1 {
                decode / (self.generated - 1) as f64
            } else {
                0.0
            },
        }
    }

    fn counts(&self) -> RequestCounts {
        RequestCounts {
            prompt: self.req.prompt.len(),
            generated: self.generated,
            max_tokens_param: self.req.max_tokens_param,
            n: 1,
        }
    }
}
