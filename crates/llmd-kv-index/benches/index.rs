//! The prefix index's hot paths, each against a baseline measured in the same run:
//!
//! - `apply`: `store` of `BlockStored`-sized batches (16 blocks) into the index, one thread,
//!   against inserting the same keys into a plain `HashMap<u64, u32>` (baseline).
//! - `lookup`: a 2,000-block request over 100 candidate pods in an index holding 1M blocks,
//!   against the same number of lookups in a plain `HashMap` of that size (baseline). Also prints
//!   p50/p99 of single lookups measured one by one.
//! - memory: bytes per (block, pod) entry at 1M blocks, from the allocator (measured) and from
//!   the index's own accounting.
//!
//! Run: `cargo bench -p llmd-kv-index --bench index`

#![allow(clippy::unwrap_used)] // benchmark setup: a failed unwrap is a broken benchmark

use std::collections::HashMap;
use std::hint::black_box;
use std::time::Instant;

use criterion::{BatchSize, Criterion, Throughput};
use llmd_kv_index::events::Tier;
use llmd_kv_index::hashing::BlockKey;
use llmd_kv_index::index::{IndexConfig, IndexOps, PodIdx, PodRegistry, PrefixIndex};

#[global_allocator]
static ALLOC: cap::Cap<std::alloc::System> = cap::Cap::new(std::alloc::System, usize::MAX);

const PODS: usize = 100;
const PROMPTS: usize = 500;
const PROMPT_BLOCKS: usize = 2000;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    let mut rng = Rng(7);
    let registry = PodRegistry::default();
    let pods: Vec<PodIdx> = (0..PODS)
        .map(|i| {
            registry
                .intern(&format!("10.0.{}.{}:8000", i / 250, i % 250))
                .unwrap()
        })
        .collect();
    // 500 prompts of 2,000 blocks (1M distinct blocks, random keys as vLLM's are). Each prompt is
    // held in full by one pod and a random prefix of it by a second.
    let prompts: Vec<Vec<BlockKey>> = (0..PROMPTS)
        .map(|_| (0..PROMPT_BLOCKS).map(|_| BlockKey(rng.next())).collect())
        .collect();

    // Memory, measured by the allocator.
    let before = ALLOC.allocated();
    let index = PrefixIndex::new(IndexConfig {
        max_bytes: 1 << 30,
        shards: 32,
    });
    for (i, prompt) in prompts.iter().enumerate() {
        let a = pods[i % PODS];
        let b = pods[(i * 7 + 3) % PODS];
        for chunk in prompt.chunks(16) {
            index.store(a, Tier::Gpu, chunk);
        }
        let n = (rng.next() % PROMPT_BLOCKS as u64) as usize;
        index.store(b, Tier::Gpu, &prompt[..n]);
    }
    let measured = ALLOC.allocated() - before;
    let snap = index.snapshot();
    eprintln!(
        "memory: {} blocks, {} (block, pod) entries; allocator {:.1} MiB = {:.1} B/entry ({:.1} B/block); accounted {:.1} MiB",
        snap.blocks,
        snap.entries,
        measured as f64 / (1 << 20) as f64,
        measured as f64 / snap.entries as f64,
        measured as f64 / snap.blocks as f64,
        snap.bytes as f64 / (1 << 20) as f64,
    );
    // The same with one pod per block (the worst case for bytes per entry).
    let before = ALLOC.allocated();
    let single = PrefixIndex::new(IndexConfig {
        max_bytes: 1 << 30,
        shards: 32,
    });
    for (i, prompt) in prompts.iter().enumerate() {
        single.store(pods[i % PODS], Tier::Gpu, prompt);
    }
    let measured1 = ALLOC.allocated() - before;
    let s1 = single.snapshot();
    eprintln!(
        "memory, one pod per block: {} entries, {:.1} B/entry measured (table load {:.2})",
        s1.entries,
        measured1 as f64 / s1.entries as f64,
        s1.blocks as f64 * 32.0 / (s1.bytes as f64 * 32.0 / 33.0)
    );
    drop(single);

    // Lookup: one prompt's 2,000 keys over all 100 pods.
    let mut g = c.benchmark_group("lookup_2000_blocks_100_pods_1M_blocks");
    g.throughput(Throughput::Elements(PROMPT_BLOCKS as u64));
    let baseline: HashMap<u64, u32> = prompts
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, k)| (k.0, i as u32))
        .collect();
    let mut which = 0usize;
    g.bench_function("baseline_hashmap_get_x2000", |b| {
        b.iter(|| {
            which = (which + 1) % PROMPTS;
            let mut sum = 0u32;
            for k in &prompts[which] {
                sum = sum.wrapping_add(*baseline.get(&k.0).unwrap_or(&0));
            }
            black_box(sum)
        })
    });
    g.bench_function("index_lookup", |b| {
        b.iter(|| {
            which = (which + 1) % PROMPTS;
            black_box(index.lookup(black_box(&prompts[which]), &pods))
        })
    });
    g.finish();
    drop(baseline);
    let mut lat: Vec<u128> = (0..20_000)
        .map(|i| {
            let t = Instant::now();
            black_box(index.lookup(&prompts[(i * 13) % PROMPTS], &pods));
            t.elapsed().as_nanos()
        })
        .collect();
    lat.sort_unstable();
    eprintln!(
        "lookup latency over 20000 lookups: p50 {:.1} us, p99 {:.1} us, max {:.1} us",
        lat[lat.len() / 2] as f64 / 1e3,
        lat[lat.len() * 99 / 100] as f64 / 1e3,
        lat[lat.len() - 1] as f64 / 1e3
    );

    // Apply: BlockStored batches of 16 blocks into a fresh index.
    let events: Vec<Vec<BlockKey>> = (0..4096)
        .map(|_| (0..16).map(|_| BlockKey(rng.next())).collect())
        .collect();
    let mut g = c.benchmark_group("apply_block_stored");
    g.throughput(Throughput::Elements((events.len() * 16) as u64));
    g.bench_function("baseline_hashmap_insert", |b| {
        b.iter_batched(
            || HashMap::<u64, u32>::with_capacity(events.len() * 16),
            |mut m| {
                for (i, e) in events.iter().enumerate() {
                    for k in e {
                        m.insert(k.0, i as u32);
                    }
                }
                m
            },
            BatchSize::LargeInput,
        )
    });
    g.bench_function("index_store", |b| {
        b.iter_batched(
            || PrefixIndex::new(IndexConfig::default()),
            |idx| {
                for (i, e) in events.iter().enumerate() {
                    idx.store(pods[i % PODS], Tier::Gpu, e);
                }
                idx
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
    c.final_summary();
}
