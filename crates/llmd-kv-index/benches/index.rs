//! The prefix index's hot paths, each against a baseline measured in the same run:
//!
//! - **unique prompts** (`lookup_2000_blocks_100_pods_1M_blocks`): 500 prompts of 2,000 random
//!   block keys (1M distinct blocks), each stored in 16-block events by one pod and a random
//!   prefix of it by a second; a 2,000-block lookup over all 100 pods, against 2,000
//!   `HashMap::get` on a `std` map of the same 1M keys.
//! - **shared prefixes** (`shared_prefix_*`): each prompt starts with a multiple of 64 blocks
//!   (64 to 512) of an earlier prompt, then goes on with its own blocks, ~1M distinct blocks;
//!   90 of the 100 pods store these prompts (so every prompt's first block is held by 90% of the
//!   pods), the other 10 hold unrelated prompts. 2,000-block and 128-block lookups over all 100
//!   pods, against as many `HashMap::get`.
//! - single lookups timed one by one: p50/p99/max, alone and while another thread applies
//!   events to the same index as fast as it can (reads against writes).
//! - `apply_block_stored`: `store` of 4,096 `BlockStored` events of 16 blocks, chained as vLLM
//!   publishes them, one thread, against inserting the same keys into a `HashMap<u64, u32>`.
//! - memory: bytes per (block, pod) entry, from the allocator (measured) and from the index's own
//!   accounting.
//!
//! Run: `cargo bench -p llmd-kv-index --bench index` (about a minute on 2 shared cores; criterion
//! flags after `--`, e.g. `-- shared_prefix` runs those groups only).

#![allow(clippy::unwrap_used)] // benchmark setup: a failed unwrap is a broken benchmark

use std::collections::{HashMap, HashSet};
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion, Throughput};
use llmd_kv_index::events::Tier;
use llmd_kv_index::hashing::BlockKey;
use llmd_kv_index::index::{IndexConfig, IndexOps, PodIdx, PodRegistry, PrefixIndex};

#[global_allocator]
static ALLOC: cap::Cap<std::alloc::System> = cap::Cap::new(std::alloc::System, usize::MAX);

const PODS: usize = 100;
const PROMPTS: usize = 500;
const PROMPT_BLOCKS: usize = 2000;
/// Blocks per `BlockStored` event when the bench stores a prompt.
const EVENT_BLOCKS: usize = 16;

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

/// Stores `keys` for `pod` as vLLM publishes them: events of `EVENT_BLOCKS`, each naming the
/// previous event's last block as its parent.
fn store_as_events(index: &PrefixIndex, pod: PodIdx, keys: &[BlockKey]) {
    let mut parent = None;
    for chunk in keys.chunks(EVENT_BLOCKS) {
        index.store_after(pod, Tier::Gpu, parent, chunk);
        parent = chunk.last().copied();
    }
}

fn percentiles(mut ns: Vec<u128>) -> (f64, f64, f64) {
    ns.sort_unstable();
    (
        ns[ns.len() / 2] as f64 / 1e3,
        ns[ns.len() * 99 / 100] as f64 / 1e3,
        ns[ns.len() - 1] as f64 / 1e3,
    )
}

/// Single lookups timed one by one; prints and returns p99 in µs.
fn time_lookups(
    label: &str,
    index: &PrefixIndex,
    queries: &[&[BlockKey]],
    pods: &[PodIdx],
    n: usize,
) -> f64 {
    let lat: Vec<u128> = (0..n)
        .map(|i| {
            let q = queries[(i * 13) % queries.len()];
            let t = Instant::now();
            black_box(index.lookup(q, pods));
            t.elapsed().as_nanos()
        })
        .collect();
    let (p50, p99, max) = percentiles(lat);
    eprintln!("{label}: {n} lookups, p50 {p50:.2} us, p99 {p99:.2} us, max {max:.1} us");
    p99
}

/// The same, while another thread stores and removes 16-block chained events on the same index
/// as fast as it can.
fn time_lookups_under_writes(
    label: &str,
    index: &Arc<PrefixIndex>,
    queries: &[&[BlockKey]],
    pods: &[PodIdx],
    n: usize,
) {
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let index = index.clone();
        let stop = stop.clone();
        let pods = pods.to_vec();
        std::thread::spawn(move || {
            let mut rng = Rng(99);
            let mut applied = 0u64;
            let t = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                // A 256-block prompt stored in 16 events, then evicted again.
                let keys: Vec<BlockKey> = (0..256).map(|_| BlockKey(rng.next())).collect();
                let pod = pods[rng.below(pods.len())];
                store_as_events(&index, pod, &keys);
                for chunk in keys.chunks(EVENT_BLOCKS).rev() {
                    index.remove(pod, Tier::Gpu, chunk);
                }
                applied += 512;
            }
            applied as f64 / t.elapsed().as_secs_f64()
        })
    };
    std::thread::sleep(Duration::from_millis(20));
    let lat: Vec<u128> = (0..n)
        .map(|i| {
            let q = queries[(i * 13) % queries.len()];
            let t = Instant::now();
            black_box(index.lookup(q, pods));
            t.elapsed().as_nanos()
        })
        .collect();
    stop.store(true, Ordering::Relaxed);
    let rate = writer.join().unwrap();
    let (p50, p99, max) = percentiles(lat);
    eprintln!(
        "{label} while a writer applies {:.1} M blocks/s: p50 {p50:.2} us, p99 {p99:.2} us, max {max:.1} us",
        rate / 1e6
    );
}

fn hashmap_of(prompts: &[Vec<BlockKey>]) -> HashMap<u64, u32> {
    prompts
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, k)| (k.0, i as u32))
        .collect()
}

fn bench_hashmap_get(
    b: &mut criterion::Bencher<'_>,
    map: &HashMap<u64, u32>,
    queries: &[&[BlockKey]],
) {
    let mut which = 0usize;
    b.iter(|| {
        which = (which + 1) % queries.len();
        let mut sum = 0u32;
        for k in queries[which] {
            sum = sum.wrapping_add(*map.get(&k.0).unwrap_or(&0));
        }
        black_box(sum)
    })
}

fn bench_lookup(
    b: &mut criterion::Bencher<'_>,
    index: &PrefixIndex,
    queries: &[&[BlockKey]],
    pods: &[PodIdx],
) {
    let mut which = 0usize;
    b.iter(|| {
        which = (which + 1) % queries.len();
        black_box(index.lookup(black_box(queries[which]), pods))
    })
}

fn main() {
    let mut c = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    let mut rng = Rng(7);
    let registry = PodRegistry::default();
    let pods: Vec<PodIdx> = (0..PODS)
        .map(|i| {
            registry
                .intern(&format!("10.0.{}.{}:8000", i / 250, i % 250))
                .unwrap()
        })
        .collect();

    // ---- Unique prompts: 500 x 2,000 random keys, one pod holds each, a second a prefix. ----
    let prompts: Vec<Vec<BlockKey>> = (0..PROMPTS)
        .map(|_| (0..PROMPT_BLOCKS).map(|_| BlockKey(rng.next())).collect())
        .collect();
    let before = ALLOC.allocated();
    let index = PrefixIndex::new(IndexConfig {
        max_bytes: 1 << 30,
        ..Default::default()
    });
    let t = Instant::now();
    for (i, prompt) in prompts.iter().enumerate() {
        store_as_events(&index, pods[i % PODS], prompt);
        let n = rng.below(PROMPT_BLOCKS);
        store_as_events(&index, pods[(i * 7 + 3) % PODS], &prompt[..n]);
    }
    let build = t.elapsed();
    let measured = ALLOC.allocated() - before;
    let snap = index.snapshot();
    eprintln!(
        "unique prompts: {} blocks, {} (block, pod) entries ({:.2} pods/block), {} runs, built in {:.2} s; allocator {:.1} MiB = {:.1} B/entry ({:.1} B/block); accounted {:.1} MiB",
        snap.blocks,
        snap.entries,
        snap.entries as f64 / snap.blocks as f64,
        snap.runs,
        build.as_secs_f64(),
        measured as f64 / (1 << 20) as f64,
        measured as f64 / snap.entries as f64,
        measured as f64 / snap.blocks as f64,
        snap.bytes as f64 / (1 << 20) as f64,
    );
    // The same with one pod per block (the worst case for bytes per entry).
    let before = ALLOC.allocated();
    let single = PrefixIndex::new(IndexConfig {
        max_bytes: 1 << 30,
        ..Default::default()
    });
    for (i, prompt) in prompts.iter().enumerate() {
        store_as_events(&single, pods[i % PODS], prompt);
    }
    let measured1 = ALLOC.allocated() - before;
    let s1 = single.snapshot();
    eprintln!(
        "memory, one pod per block: {} entries, {:.1} B/entry measured",
        s1.entries,
        measured1 as f64 / s1.entries as f64,
    );
    drop(single);

    let queries: Vec<&[BlockKey]> = prompts.iter().map(Vec::as_slice).collect();
    let mut g = c.benchmark_group("lookup_2000_blocks_100_pods_1M_blocks");
    g.throughput(Throughput::Elements(PROMPT_BLOCKS as u64));
    let baseline = hashmap_of(&prompts);
    g.bench_function("baseline_hashmap_get_x2000", |b| {
        bench_hashmap_get(b, &baseline, &queries)
    });
    g.bench_function("index_lookup", |b| bench_lookup(b, &index, &queries, &pods));
    g.finish();
    drop(baseline);
    time_lookups(
        "unique prompts, 2000-block lookup",
        &index,
        &queries,
        &pods,
        20_000,
    );

    // ---- Shared prefixes. ----
    let mut shared: Vec<Vec<BlockKey>> =
        vec![(0..PROMPT_BLOCKS).map(|_| BlockKey(rng.next())).collect()];
    let mut distinct = PROMPT_BLOCKS;
    while distinct < PROMPTS * PROMPT_BLOCKS {
        let parent = rng.below(shared.len());
        let prefix = 64 * (1 + rng.below(8));
        let mut p: Vec<BlockKey> = shared[parent][..prefix].to_vec();
        p.extend((prefix..PROMPT_BLOCKS).map(|_| BlockKey(rng.next())));
        distinct += PROMPT_BLOCKS - prefix;
        shared.push(p);
    }
    let hot_pods = PODS * 9 / 10;
    let sindex = Arc::new(PrefixIndex::new(IndexConfig {
        max_bytes: 1 << 30,
        ..Default::default()
    }));
    let before = ALLOC.allocated();
    // (pod, prompt, blocks) stored, to check the lookups against afterwards.
    let mut stored: Vec<(PodIdx, usize, usize)> = Vec::new();
    for (i, prompt) in shared.iter().enumerate() {
        store_as_events(&sindex, pods[i % hot_pods], prompt);
        let n = rng.below(PROMPT_BLOCKS);
        store_as_events(&sindex, pods[(i * 7 + 3) % hot_pods], &prompt[..n]);
        stored.push((pods[i % hot_pods], i, PROMPT_BLOCKS));
        stored.push((pods[(i * 7 + 3) % hot_pods], i, n));
    }
    for pod in &pods[hot_pods..] {
        let other: Vec<BlockKey> = (0..PROMPT_BLOCKS).map(|_| BlockKey(rng.next())).collect();
        store_as_events(&sindex, *pod, &other);
    }
    let measured = ALLOC.allocated() - before;
    let snap = sindex.snapshot();
    let first_holders = sindex.holders(shared[0][0]).len();
    eprintln!(
        "shared prefixes: {} prompts, {} blocks, {} entries ({:.2} pods/block), {} runs; first block held by {first_holders} of {PODS} pods; allocator {:.1} B/entry",
        shared.len(),
        snap.blocks,
        snap.entries,
        snap.entries as f64 / snap.blocks as f64,
        snap.runs,
        measured as f64 / snap.entries as f64,
    );
    let squeries: Vec<&[BlockKey]> = shared.iter().map(Vec::as_slice).collect();
    let short: Vec<&[BlockKey]> = shared.iter().map(|p| &p[..128]).collect();
    let baseline = hashmap_of(&shared);
    let mut g = c.benchmark_group("shared_prefix_lookup_2000_blocks_100_pods");
    g.throughput(Throughput::Elements(PROMPT_BLOCKS as u64));
    g.bench_function("baseline_hashmap_get_x2000", |b| {
        bench_hashmap_get(b, &baseline, &squeries)
    });
    g.bench_function("index_lookup", |b| {
        bench_lookup(b, &sindex, &squeries, &pods)
    });
    g.finish();
    let mut g = c.benchmark_group("shared_prefix_lookup_128_blocks_100_pods");
    g.throughput(Throughput::Elements(128));
    g.bench_function("baseline_hashmap_get_x128", |b| {
        bench_hashmap_get(b, &baseline, &short)
    });
    g.bench_function("index_lookup", |b| bench_lookup(b, &sindex, &short, &pods));
    g.finish();
    drop(baseline);
    time_lookups(
        "shared prefixes, 2000-block lookup",
        &sindex,
        &squeries,
        &pods,
        20_000,
    );
    time_lookups(
        "shared prefixes, 128-block lookup",
        &sindex,
        &short,
        &pods,
        20_000,
    );
    time_lookups_under_writes(
        "shared prefixes, 2000-block lookup",
        &sindex,
        &squeries,
        &pods,
        20_000,
    );

    // Check on the workload itself: the counts are what a per-key walk over what was stored
    // gives.
    let mut holds: HashMap<u64, HashSet<u32>> = HashMap::new();
    for &(pod, i, n) in &stored {
        for k in &shared[i][..n] {
            holds.entry(k.0).or_default().insert(pod.get());
        }
    }
    for (i, prompt) in shared.iter().enumerate().step_by(10) {
        let expect: Vec<u32> = pods
            .iter()
            .map(|p| {
                prompt
                    .iter()
                    .take_while(|k| holds.get(&k.0).is_some_and(|h| h.contains(&p.get())))
                    .count() as u32
            })
            .collect();
        assert_eq!(sindex.lookup(prompt, &pods), expect, "prompt {i}");
    }

    // ---- Apply: BlockStored events of 16 chained blocks into a fresh index. ----
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
                // 16 chains of 256 events (4,096 blocks each), one per pod.
                for (i, e) in events.iter().enumerate() {
                    let parent = (i % 256 != 0).then(|| *events[i - 1].last().unwrap());
                    idx.store_after(pods[i / 256], Tier::Gpu, parent, e);
                }
                idx
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
    c.final_summary();
}
