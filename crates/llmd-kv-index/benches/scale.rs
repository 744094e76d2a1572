//! Scale by simulation: one [`KvIndex`] behind the real [`Subscriber`] (bound mode, as vLLM pods
//! connect to the EPP), fed by 1,000 simulated pods at vLLM's pace, while another thread makes
//! 1,000 routing decisions per second over all 1,000 pods.
//!
//! - **Publishers**: 4 ZMQ PUB sockets connect to the subscriber, 250 pods each, every pod
//!   publishing one batch per engine step at 50 steps/s (50,000 messages/s in all), vLLM 0.33's
//!   map encoding, with token ids. A pod's step: a new request about once a second (32-128
//!   prompt blocks after a 16-block system prompt every pod shares, prefilled in chunks of 32
//!   blocks per step), decode filling a block every other step, and `BlockRemoved` for the
//!   oldest requests' tail blocks whenever the pod's cache passes 4,000 blocks (256k tokens of
//!   64). Each pod starts with a full cache (applied directly before the clock starts).
//! - **Decisions**: 1,000 per second, each a lookup of a recent request's keys (system prompt +
//!   its blocks) over all 1,000 pods, three ways: by pod name through [`KvIndex::lookup`] (what
//!   the EPP calls), by index over the 1,000 pods, and by index over 100 of them (the same-run
//!   baseline for "within 2x of the 100-pod figure").
//! - **Measured**: ingest lag (receive time − the batch's `ts`, stamped when the publisher
//!   encoded it), messages lost (sequence gaps) or not delivered, lookup percentiles, the
//!   index's bytes against its budget, and the process's CPU time.
//!
//! Run: `cargo bench -p llmd-kv-index --bench scale` (20 s of simulation plus ~10 s of setup;
//! `LLMD_SCALE_SECS=N` changes the simulated time, `LLMD_SCALE_PODS=N` the number of pods).

#![allow(clippy::unwrap_used)] // benchmark setup: a failed unwrap is a broken benchmark

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use llmd_kv_index::events::{
    BlockRemoved, BlockStored, DecodeError, EventBatch, KvEvent, Layout, encode_message,
};
use llmd_kv_index::hashing::BlockKey;
use llmd_kv_index::index::{IndexConfig, IndexOps, PodIdx};
use llmd_kv_index::subscriber::{EventHandler, Subscriber, SubscriberConfig};
use llmd_kv_index::transport::{SocketOptions, SocketType, ZmqSocket};
use llmd_kv_index::{KvIndex, KvIndexConfig};
use parking_lot::Mutex;

const MODEL: &str = "meta-llama/Llama-3.1-8B-Instruct";
const BLOCK: usize = 64;
const STEPS_PER_S: u64 = 50;
const PUBLISHERS: usize = 4;
const SYSTEM_BLOCKS: usize = 16;
const CACHE_BLOCKS: usize = 4000;
const PREFILL_CHUNK: usize = 32;
const DECISIONS_PER_S: u64 = 1000;
const BUDGET: usize = 256 << 20;

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// What the subscriber delivers goes to the index; the sink also measures.
struct Sink {
    kv: Arc<KvIndex>,
    received: AtomicU64,
    lost: AtomicU64,
    restarts: AtomicU64,
    decode_errors: AtomicU64,
    apply_errors: AtomicU64,
    measuring: AtomicBool,
    lags: Mutex<Vec<f32>>,
}

impl EventHandler for Sink {
    fn on_batch(&self, pod: &str, model: &str, _seq: u64, batch: &EventBatch) {
        if self.kv.apply_batch(pod, model, batch).is_err() {
            self.apply_errors.fetch_add(1, Ordering::Relaxed);
        }
        if self.measuring.load(Ordering::Relaxed) {
            let lag = (now_secs() - batch.ts) as f32;
            self.lags.lock().push(lag);
        }
        self.received.fetch_add(1, Ordering::Relaxed);
    }
    fn on_gap(&self, _pod: &str, expected: u64, got: u64) {
        self.lost.fetch_add(got - expected, Ordering::Relaxed);
    }
    fn on_restart(&self, pod: &str, _last: u64, _got: u64) {
        self.restarts.fetch_add(1, Ordering::Relaxed);
        self.kv.clear_pod(pod);
    }
    fn on_decode_error(&self, _pod: &str, _error: &DecodeError) {
        self.decode_errors.fetch_add(1, Ordering::Relaxed);
    }
}

/// One simulated engine's prefix cache.
struct Pod {
    name: String,
    topic: String,
    seq: u64,
    /// Cached requests, oldest first (each without the shared system prompt).
    chains: VecDeque<Vec<BlockKey>>,
    cached: usize,
    /// Blocks of the newest request still to prefill.
    pending: Vec<BlockKey>,
    rng: Rng,
}

/// Token ids of the published blocks (their values do not matter to `sha256_cbor` keys, but
/// vLLM sends them, so they are encoded and decoded): Llama-3-range ids, fixed.
fn token_ids(blocks: usize) -> Vec<u32> {
    static IDS: std::sync::OnceLock<Vec<u32>> = std::sync::OnceLock::new();
    let ids = IDS.get_or_init(|| {
        let mut rng = Rng(3);
        (0..PREFILL_CHUNK * 4 * BLOCK)
            .map(|_| rng.below(128_256) as u32)
            .collect()
    });
    ids[..(blocks * BLOCK).min(ids.len())].to_vec()
}

fn stored(keys: &[BlockKey], parent: Option<BlockKey>, _rng: &mut Rng) -> KvEvent {
    KvEvent::BlockStored(BlockStored {
        block_hashes: keys.to_vec(),
        parent_block_hash: parent,
        token_ids: token_ids(keys.len()),
        block_size: BLOCK as u32,
        medium: Some("GPU".into()),
        ..Default::default()
    })
}

impl Pod {
    fn new(i: usize, seed: u64) -> Self {
        let name = format!("10.{}.{}.{}:8000", i / 65536, (i / 256) % 256, i % 256);
        Self {
            topic: format!("kv@{name}@{MODEL}"),
            name,
            seq: 0,
            chains: VecDeque::new(),
            cached: 0,
            pending: Vec::new(),
            rng: Rng(seed),
        }
    }

    fn fresh(&mut self, n: usize) -> Vec<BlockKey> {
        (0..n).map(|_| BlockKey(self.rng.next())).collect()
    }

    /// Fills the cache with requests (for the warm start), as one batch per request.
    fn warm(&mut self, system: &[BlockKey]) -> Vec<EventBatch> {
        let mut out = vec![EventBatch {
            events: vec![stored(system, None, &mut self.rng)],
            ..Default::default()
        }];
        while self.cached < CACHE_BLOCKS {
            let n = 32 + self.rng.below(97);
            let chain = self.fresh(n);
            out.push(EventBatch {
                events: vec![stored(&chain, system.last().copied(), &mut self.rng)],
                ..Default::default()
            });
            self.cached += n;
            self.chains.push_back(chain);
        }
        out
    }

    /// One engine step's batch.
    fn step(&mut self, system: &[BlockKey], recent: &Mutex<Vec<Vec<BlockKey>>>) -> EventBatch {
        let mut events = Vec::new();
        if self.pending.is_empty() && self.rng.below(STEPS_PER_S as usize) == 0 {
            let n = 32 + self.rng.below(97);
            self.pending = self.fresh(n);
            self.chains.push_back(Vec::with_capacity(n + 64));
        }
        if !self.pending.is_empty() {
            let take = self.pending.len().min(PREFILL_CHUNK);
            let chunk: Vec<BlockKey> = self.pending.drain(..take).collect();
            let chain = self.chains.back_mut().unwrap();
            let parent = chain.last().or(system.last()).copied();
            events.push(stored(&chunk, parent, &mut self.rng));
            chain.extend_from_slice(&chunk);
            self.cached += chunk.len();
            if self.pending.is_empty() {
                let mut full = system.to_vec();
                full.extend_from_slice(chain);
                let mut r = recent.lock();
                let at = self.rng.below(4096);
                if r.len() < 4096 {
                    r.push(full);
                } else {
                    r[at] = full;
                }
            }
        } else if self.rng.below(2) == 0 || events.is_empty() {
            // Decode filled a block of the newest request.
            let block = self.fresh(1);
            let chain = self.chains.back_mut().unwrap();
            let parent = chain.last().or(system.last()).copied();
            events.push(stored(&block, parent, &mut self.rng));
            chain.push(block[0]);
            self.cached += 1;
        }
        // Evict the oldest requests' blocks, tail first, as vLLM's free queue does.
        let mut removed = Vec::new();
        while self.cached > CACHE_BLOCKS && self.chains.len() > 1 {
            let oldest = self.chains.front_mut().unwrap();
            let over = self.cached - CACHE_BLOCKS;
            let n = over.min(oldest.len());
            removed.extend(oldest.drain(oldest.len() - n..).rev());
            self.cached -= n;
            if oldest.is_empty() {
                self.chains.pop_front();
            }
        }
        if !removed.is_empty() {
            events.push(KvEvent::BlockRemoved(BlockRemoved {
                block_hashes: removed,
                medium: Some("GPU".into()),
                group_idx: None,
            }));
        }
        EventBatch {
            ts: now_secs(),
            events,
            ..Default::default()
        }
    }

    fn message(&mut self, batch: &EventBatch) -> Vec<Vec<u8>> {
        let frames = encode_message(&self.topic, self.seq, batch, Layout::Map);
        self.seq += 1;
        frames.into()
    }
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 * p) as usize).min(v.len() - 1)]
}

/// utime + stime of a `/proc/.../stat` file, in seconds (100 clock ticks per second on Linux).
fn stat_cpu(path: &str) -> Option<f64> {
    let s = std::fs::read_to_string(path).ok()?;
    let rest = s.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some((f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / 100.0)
}

/// CPU seconds of this process, and of its threads whose name starts with `prefix`.
fn cpu_secs(prefix: &str) -> (f64, f64) {
    let total = stat_cpu("/proc/self/stat").unwrap_or(0.0);
    let mut part = 0.0;
    if let Ok(dir) = std::fs::read_dir("/proc/self/task") {
        for t in dir.flatten() {
            let p = t.path();
            let name = std::fs::read_to_string(p.join("comm")).unwrap_or_default();
            if name.starts_with(prefix) {
                part += stat_cpu(&p.join("stat").to_string_lossy()).unwrap_or(0.0);
            }
        }
    }
    (total, part)
}

fn main() {
    let secs: u64 = std::env::var("LLMD_SCALE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let pods_n: usize = std::env::var("LLMD_SCALE_PODS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);
    // The EPP side (subscriber and index) on its own runtime; the simulated pods on another, so
    // the CPU each side uses can be told apart (thread names).
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("epp-ingest")
        .enable_all()
        .build()
        .unwrap();
    let pub_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("sim-pods")
        .enable_all()
        .build()
        .unwrap();
    let kv = Arc::new(
        KvIndex::new(KvIndexConfig {
            block_size: BLOCK,
            index: IndexConfig {
                max_bytes: BUDGET,
                ..Default::default()
            },
            ..Default::default()
        })
        .unwrap(),
    );
    let sink = Arc::new(Sink {
        kv: kv.clone(),
        received: AtomicU64::new(0),
        lost: AtomicU64::new(0),
        restarts: AtomicU64::new(0),
        decode_errors: AtomicU64::new(0),
        apply_errors: AtomicU64::new(0),
        measuring: AtomicBool::new(false),
        lags: Mutex::new(Vec::with_capacity(64 << 20 >> 2)),
    });

    // Warm start: every pod's cache full, applied directly.
    let mut rng = Rng(42);
    let system: Vec<BlockKey> = (0..SYSTEM_BLOCKS).map(|_| BlockKey(rng.next())).collect();
    let recent: Arc<Mutex<Vec<Vec<BlockKey>>>> = Arc::new(Mutex::new(Vec::new()));
    let t = Instant::now();
    let mut pods: Vec<Pod> = (0..pods_n).map(|i| Pod::new(i, 1000 + i as u64)).collect();
    for pod in &mut pods {
        for batch in pod.warm(&system) {
            kv.apply_batch(&pod.name, MODEL, &batch).unwrap();
        }
        let mut r = recent.lock();
        if r.len() < 4096 {
            let mut full = system.clone();
            full.extend_from_slice(pod.chains.back().unwrap());
            r.push(full);
        }
    }
    let s = kv.index().snapshot();
    eprintln!(
        "warm start: {pods_n} pods x {CACHE_BLOCKS} cached blocks in {:.1} s: {} blocks, {} entries, {} runs, {:.1} MiB of a {} MiB budget",
        t.elapsed().as_secs_f64(),
        s.blocks,
        s.entries,
        s.runs,
        s.bytes as f64 / (1 << 20) as f64,
        BUDGET >> 20
    );

    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let late_ticks = Arc::new(AtomicU64::new(0));
    let (sub, sent_before) = rt.block_on(async {
        let sub = Subscriber::new(sink.clone(), SubscriberConfig::default());
        let bound = sub.bind("tcp://127.0.0.1:0").await.unwrap();
        let per = pods.len().div_ceil(PUBLISHERS);
        let mut groups = Vec::new();
        while !pods.is_empty() {
            let rest = pods.split_off(per.min(pods.len()));
            groups.push(std::mem::replace(&mut pods, rest));
        }
        let ready = Arc::new(AtomicU64::new(0));
        for mut group in groups {
            let bound = bound.clone();
            let (stop, sent, late, recent, system, ready) = (
                stop.clone(),
                sent.clone(),
                late_ticks.clone(),
                recent.clone(),
                system.clone(),
                ready.clone(),
            );
            pub_rt.spawn(async move {
                // The socket lives on the pods' runtime (its I/O tasks run there too).
                let mut socket = ZmqSocket::new(
                    SocketType::PUB,
                    &SocketOptions {
                        high_water_mark: 100_000,
                        ..SocketOptions::default()
                    },
                )
                .unwrap();
                socket.connect(&bound).unwrap();
                // PUB/SUB joins slowly (a PUB drops what it sends before the subscription
                // arrives): empty batches for 300 ms first. What is lost after that counts.
                for _ in 0..15 {
                    let msg = group[0].message(&EventBatch::default());
                    let _ = socket.send(&msg).await;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                ready.fetch_add(1, Ordering::Relaxed);
                let mut tick = tokio::time::interval(Duration::from_millis(1000 / STEPS_PER_S));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                while !stop.load(Ordering::Relaxed) {
                    let due = tick.tick().await;
                    if due.elapsed() > Duration::from_millis(1000 / STEPS_PER_S) {
                        late.fetch_add(1, Ordering::Relaxed);
                    }
                    for pod in group.iter_mut() {
                        let batch = pod.step(&system, &recent);
                        let msg = pod.message(&batch);
                        if socket.send(&msg).await.is_err() {
                            return;
                        }
                        sent.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
        while ready.load(Ordering::Relaxed) < PUBLISHERS as u64 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Let the first batches settle before measuring.
        tokio::time::sleep(Duration::from_millis(500)).await;
        (sub, sent.load(Ordering::Relaxed))
    });
    let received_before = sink.received.load(Ordering::Relaxed);
    let lost_before = sink.lost.load(Ordering::Relaxed);
    sink.measuring.store(true, Ordering::Relaxed);
    let (cpu0, ingest0) = cpu_secs("epp-ingest");
    let t0 = Instant::now();

    // Decisions: 1,000 per second on this thread, paced, while the runtime ingests.
    let names: Vec<String> = (0..pods_n)
        .map(|i| format!("10.{}.{}.{}:8000", i / 65536, (i / 256) % 256, i % 256))
        .collect();
    let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let idxs: Vec<PodIdx> = names.iter().filter_map(|n| kv.pods().get(n)).collect();
    let (mut by_name, mut by_idx, mut by_idx100) = (Vec::new(), Vec::new(), Vec::new());
    let mut hits = 0u64;
    let period = Duration::from_nanos(1_000_000_000 / DECISIONS_PER_S);
    let mut next = Instant::now();
    let mut qrng = Rng(7);
    while t0.elapsed() < Duration::from_secs(secs) {
        let keys = {
            let r = recent.lock();
            r[qrng.below(r.len())].clone()
        };
        // The three ways in rotating order (the first after the pacing sleep is the one most
        // often preempted on a busy machine).
        let round = by_idx100.len() + by_idx.len() + by_name.len();
        for way in 0..3 {
            let t = Instant::now();
            match (way + round / 3) % 3 {
                0 => {
                    let counts = kv.lookup(&keys, &name_refs);
                    by_name.push(t.elapsed().as_secs_f64() * 1e6);
                    hits += u64::from(counts.iter().any(|c| *c as usize > SYSTEM_BLOCKS));
                }
                1 => {
                    std::hint::black_box(kv.index().lookup(&keys, &idxs));
                    by_idx.push(t.elapsed().as_secs_f64() * 1e6);
                }
                _ => {
                    std::hint::black_box(kv.index().lookup(&keys, &idxs[..100.min(idxs.len())]));
                    by_idx100.push(t.elapsed().as_secs_f64() * 1e6);
                }
            }
        }
        next += period;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    let elapsed = t0.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let (cpu1, ingest1) = cpu_secs("epp-ingest");
    let (cpu, ingest_cpu) = (cpu1 - cpu0, ingest1 - ingest0);
    sink.measuring.store(false, Ordering::Relaxed);
    let sent_total = sent.load(Ordering::Relaxed);
    // Wait for the queues to drain.
    let drain = Instant::now();
    while sink.received.load(Ordering::Relaxed) + sink.lost.load(Ordering::Relaxed)
        < sent_total + received_before - sent_before
        && drain.elapsed() < Duration::from_secs(10)
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    let received = sink.received.load(Ordering::Relaxed) - received_before;
    let lost = sink.lost.load(Ordering::Relaxed) - lost_before;
    let sent_run = sent_total - sent_before;
    sub.shutdown();
    pub_rt.shutdown_timeout(Duration::from_secs(1));
    rt.shutdown_timeout(Duration::from_secs(1));

    let mut lags: Vec<f64> = sink
        .lags
        .lock()
        .iter()
        .map(|l| f64::from(*l) * 1e3)
        .collect();
    let s = kv.index().snapshot();
    eprintln!(
        "ingest: {sent_run} batches sent in {elapsed:.1} s ({:.0}/s), {received} applied, {lost} lost in gaps, {} not delivered, {} publisher ticks late; restarts {}, decode errors {}, apply errors {}",
        sent_run as f64 / elapsed,
        sent_run.saturating_sub(received + lost),
        late_ticks.load(Ordering::Relaxed),
        sink.restarts.load(Ordering::Relaxed),
        sink.decode_errors.load(Ordering::Relaxed),
        sink.apply_errors.load(Ordering::Relaxed),
    );
    if !lags.is_empty() {
        eprintln!(
            "ingest lag (receive - batch ts): p50 {:.2} ms, p99 {:.2} ms, max {:.1} ms",
            pct(&mut lags, 0.5),
            pct(&mut lags, 0.99),
            pct(&mut lags, 1.0)
        );
    }
    let n = by_name.len();
    eprintln!(
        "decisions: {n} in {elapsed:.1} s ({:.0}/s), {:.0}% matched beyond the system prompt",
        n as f64 / elapsed,
        hits as f64 * 100.0 / n as f64
    );
    for (label, v) in [
        ("KvIndex::lookup by name, 1000 pods", &mut by_name),
        ("index lookup, 1000 pods", &mut by_idx),
        ("index lookup, 100 pods (baseline)", &mut by_idx100),
    ] {
        eprintln!(
            "  {label}: p50 {:.1} us, p99 {:.1} us, max {:.0} us",
            pct(v, 0.5),
            pct(v, 0.99),
            pct(v, 1.0)
        );
    }
    eprintln!(
        "  ratio p99 1000 pods / 100 pods: {:.2} (index), {:.2} (by name)",
        pct(&mut by_idx, 0.99) / pct(&mut by_idx100, 0.99),
        pct(&mut by_name, 0.99) / pct(&mut by_idx100, 0.99)
    );
    eprintln!(
        "index after: {} blocks, {} entries, {} runs, {:.1} MiB of {} MiB budget, {} entries evicted",
        s.blocks,
        s.entries,
        s.runs,
        s.bytes as f64 / (1 << 20) as f64,
        BUDGET >> 20,
        s.evictions
    );
    eprintln!(
        "CPU: {:.2} cores busy over the run (2 available, shared with other work on this machine); the EPP's ingest threads (ZMQ receive, decode, apply) {:.2} cores = {:.1} us per batch applied, so {:.0} batches/s per core",
        cpu / elapsed,
        ingest_cpu / elapsed,
        ingest_cpu * 1e6 / received.max(1) as f64,
        received as f64 / ingest_cpu.max(1e-9)
    );
}
