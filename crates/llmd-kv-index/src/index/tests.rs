use super::*;

fn keys(range: std::ops::Range<u64>) -> Vec<BlockKey> {
    range
        .map(|k| BlockKey(k.wrapping_mul(0x9e37_79b9_7f4a_7c15)))
        .collect()
}

fn p(i: u32) -> PodIdx {
    PodIdx(i)
}

#[test]
fn consecutive_matches_from_block_zero() {
    let idx = PrefixIndex::new(IndexConfig::default());
    let k = keys(0..10);
    idx.store(p(1), Tier::Gpu, &k);
    idx.store(p(2), Tier::Gpu, &k[..5]);
    idx.store(p(3), Tier::Gpu, &k[1..]);
    idx.store(p(4), Tier::Gpu, &[k[0], k[1], k[3]]);
    assert_eq!(
        idx.lookup(&k, &[p(1), p(2), p(3), p(4), p(5)]),
        vec![10, 5, 0, 2, 0]
    );
    assert_eq!(idx.lookup(&k[..3], &[p(1), p(2)]), vec![3, 3]);
    assert_eq!(idx.lookup(&[], &[p(1)]), vec![0]);
    assert_eq!(idx.lookup(&k, &[]), Vec::<u32>::new());
    // A key nobody holds stops every pod there.
    let mut gap = k.clone();
    gap[6] = BlockKey(12345);
    assert_eq!(idx.lookup(&gap, &[p(1), p(2)]), vec![6, 5]);
    assert_eq!(idx.lookup_any(&k), vec![(p(1), 10), (p(2), 5), (p(4), 2)]);
    let s = idx.snapshot();
    assert_eq!(s.blocks, 10);
    assert_eq!(s.entries, 10 + 5 + 9 + 3);
    assert_eq!(s.admissions, s.entries);
    assert_eq!(s.lookups, 6);
    assert_eq!(s.lookup_hits, 4);
    // llm-d's hit count: the best candidate's blocks, summed (10 + 3 + 6 + 10).
    assert_eq!(s.hit_blocks, 29);
}

#[test]
fn tiers_and_removal() {
    let idx = PrefixIndex::new(IndexConfig::default());
    let k = keys(0..4);
    idx.store(p(1), Tier::Gpu, &k);
    idx.store(p(1), Tier::Cpu, &k[..2]);
    assert_eq!(
        idx.snapshot().entries,
        4,
        "a second tier is not a second entry"
    );
    idx.remove(p(1), Tier::Gpu, &k[..3]);
    assert_eq!(
        idx.lookup(&k, &[p(1)]),
        vec![2],
        "blocks 0-1 still on CPU, block 2 gone"
    );
    assert_eq!(idx.holders(k[0]), vec![(p(1), vec![Tier::Cpu])]);
    idx.remove(p(1), Tier::Cpu, &k[..1]);
    assert_eq!(idx.lookup(&k, &[p(1)]), vec![0]);
    // Removing what is not there is a no-op.
    idx.remove(p(9), Tier::Gpu, &k);
    idx.remove(p(1), Tier::Gpu, &keys(100..101));
    assert_eq!(idx.snapshot().entries, 2);
}

#[test]
fn clearing_a_pod_drops_only_its_entries() {
    let idx = PrefixIndex::new(IndexConfig {
        shards: 4,
        ..Default::default()
    });
    let k = keys(0..100);
    for pod in 1..=6 {
        idx.store(p(pod), Tier::Gpu, &k);
    }
    idx.clear_pod(p(3));
    assert_eq!(idx.lookup(&k, &[p(2), p(3), p(4)]), vec![100, 0, 100]);
    assert_eq!(idx.snapshot().entries, 500);
    for pod in [1, 2, 4, 5, 6] {
        idx.clear_pod(p(pod));
    }
    let s = idx.snapshot();
    assert_eq!((s.blocks, s.entries), (0, 0));
}

#[test]
fn memory_stays_within_budget_and_lru_entries_survive() {
    let budget = 256 << 10;
    let idx = PrefixIndex::new(IndexConfig {
        max_bytes: budget,
        shards: 4,
    });
    let max_blocks = idx.max_blocks();
    assert!(max_blocks > 1000, "{max_blocks}");
    // A hot prefix that lookups keep touching, then a flood of other blocks.
    let hot = keys(0..200);
    idx.store(p(1), Tier::Gpu, &hot);
    for round in 0..50u64 {
        let flood = keys(1_000_000 + round * 1000..1_000_000 + (round + 1) * 1000);
        idx.store(p(2), Tier::Gpu, &flood);
        // Removals leave tombstones in the tables; they must not make a shard outgrow its share.
        idx.remove(p(2), Tier::Gpu, &flood[..300]);
        assert!(
            idx.snapshot().bytes <= budget as u64,
            "round {round}: {:?}",
            idx.snapshot()
        );
        assert_eq!(
            idx.lookup(&hot, &[p(1)]),
            vec![200],
            "hot prefix evicted in round {round}"
        );
    }
    let s = idx.snapshot();
    assert!(
        s.bytes <= budget as u64,
        "{} bytes > budget {budget}",
        s.bytes
    );
    assert!(s.blocks as usize <= max_blocks);
    assert!(s.evictions > 0);
    assert_eq!(s.admissions - s.evictions - s.removals, s.entries);
}

/// SplitMix64: a small seeded generator so the streams are reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[test]
fn matches_the_reference_model_on_random_event_streams() {
    for seed in 0..20u64 {
        let mut rng = Rng(seed);
        let real = PrefixIndex::new(IndexConfig {
            max_bytes: 64 << 20,
            shards: 8,
        });
        let model = ReferenceIndex::default();
        // 30 prompts, each a chain of 40 blocks; 8 pods.
        let prompts: Vec<Vec<BlockKey>> = (0..30).map(|i| keys(i * 1000..i * 1000 + 40)).collect();
        let pods: Vec<PodIdx> = (0..8).map(p).collect();
        for step in 0..3000 {
            let prompt = &prompts[rng.below(prompts.len() as u64) as usize];
            let pod = pods[rng.below(pods.len() as u64) as usize];
            let tier = if rng.below(4) == 0 {
                Tier::Cpu
            } else {
                Tier::Gpu
            };
            let a = rng.below(40) as usize;
            let b = (a + 1 + rng.below(10) as usize).min(40);
            match rng.below(20) {
                0..=11 => {
                    real.store(pod, tier, &prompt[a..b]);
                    model.store(pod, tier, &prompt[a..b]);
                }
                12..=17 => {
                    real.remove(pod, tier, &prompt[a..b]);
                    model.remove(pod, tier, &prompt[a..b]);
                }
                18 if step % 7 == 0 => {
                    real.clear_pod(pod);
                    model.clear_pod(pod);
                }
                _ => {
                    let n = rng.below(41) as usize;
                    assert_eq!(
                        real.lookup(&prompt[..n], &pods),
                        model.lookup(&prompt[..n], &pods),
                        "seed {seed} step {step}"
                    );
                }
            }
        }
        for prompt in &prompts {
            assert_eq!(
                real.lookup(prompt, &pods),
                model.lookup(prompt, &pods),
                "seed {seed} final"
            );
        }
        assert_eq!(real.snapshot().evictions, 0);
    }
}

#[test]
fn concurrent_writers_and_readers() {
    let idx = std::sync::Arc::new(PrefixIndex::new(IndexConfig::default()));
    let chain = keys(0..500);
    std::thread::scope(|s| {
        for w in 0..4u32 {
            let idx = idx.clone();
            let chain = chain.clone();
            s.spawn(move || {
                for round in 0..200 {
                    idx.store(p(w), Tier::Gpu, &chain);
                    if round % 3 == 0 {
                        idx.remove(p(w), Tier::Gpu, &chain[250..]);
                    }
                }
                idx.store(p(w), Tier::Gpu, &chain);
            });
        }
        for _ in 0..2 {
            let idx = idx.clone();
            let chain = chain.clone();
            s.spawn(move || {
                for _ in 0..2000 {
                    let counts = idx.lookup(&chain, &[p(0), p(1), p(2), p(3)]);
                    assert!(
                        counts
                            .iter()
                            .all(|c| *c == 250 || *c == 500 || *c == 0 || *c <= 500)
                    );
                }
            });
        }
    });
    assert_eq!(idx.lookup(&chain, &[p(0), p(1), p(2), p(3)]), vec![500; 4]);
}

/// Prompts that share prefixes, as a system prompt and multi-turn chats make them: prompt 0 is
/// fresh; each later prompt starts with a multiple of `unit` blocks of an earlier one and goes
/// on with blocks of its own.
fn shared_prefix_prompts(
    rng: &mut Rng,
    count: usize,
    len: usize,
    unit: usize,
) -> Vec<Vec<BlockKey>> {
    let mut next = 1u64 << 40;
    let mut fresh = |n: usize| -> Vec<BlockKey> {
        let k = keys(next..next + n as u64);
        next += n as u64;
        k
    };
    let mut prompts = vec![fresh(len)];
    for _ in 1..count {
        let parent = rng.below(prompts.len() as u64) as usize;
        let shared = unit * (1 + rng.below((len / unit - 1) as u64) as usize);
        let mut p = prompts[parent][..shared].to_vec();
        p.extend(fresh(len - shared));
        prompts.push(p);
    }
    prompts
}

/// One random step of an event stream over `prompts`, applied to both indexes; lookups are
/// compared. Stores name their parent (or not, at random) as `BlockStored` events do.
fn random_step(
    rng: &mut Rng,
    real: &PrefixIndex,
    model: &ReferenceIndex,
    prompts: &[Vec<BlockKey>],
    pods: &[PodIdx],
    what: &str,
) {
    let prompt = &prompts[rng.below(prompts.len() as u64) as usize];
    let len = prompt.len();
    let pod = pods[rng.below(pods.len() as u64) as usize];
    let tier = if rng.below(4) == 0 {
        Tier::Cpu
    } else {
        Tier::Gpu
    };
    // Mostly prefixes and chain continuations, sometimes arbitrary ranges.
    let a = match rng.below(3) {
        0 => 0,
        _ => rng.below(len as u64) as usize,
    };
    let b = (a + 1 + rng.below(24) as usize).min(len);
    match rng.below(20) {
        0..=10 => {
            let parent = (a > 0 && rng.below(4) != 0).then(|| prompt[a - 1]);
            real.store_after(pod, tier, parent, &prompt[a..b]);
            model.store_after(pod, tier, parent, &prompt[a..b]);
        }
        11..=16 => {
            // vLLM evicts a request's blocks from the tail; sometimes from anywhere.
            let (a, b) = if rng.below(2) == 0 {
                (len - (b - a).min(len), len)
            } else {
                (a, b)
            };
            real.remove(pod, tier, &prompt[a..b]);
            model.remove(pod, tier, &prompt[a..b]);
        }
        17 if rng.below(10) == 0 => {
            real.clear_pod(pod);
            model.clear_pod(pod);
        }
        _ => {
            let n = rng.below(len as u64 + 1) as usize;
            // Candidates: all pods, or a random subset with a repeat and an unknown pod.
            let cands: Vec<PodIdx> = if rng.below(2) == 0 {
                pods.to_vec()
            } else {
                let mut c: Vec<PodIdx> =
                    pods.iter().copied().filter(|_| rng.below(2) == 0).collect();
                c.push(pod);
                c.push(p(999));
                c
            };
            assert_eq!(
                real.lookup(&prompt[..n], &cands),
                model.lookup(&prompt[..n], &cands),
                "{what}"
            );
        }
    }
}

#[test]
fn matches_the_reference_model_with_shared_prefixes() {
    for seed in 0..8u64 {
        let mut rng = Rng(1000 + seed);
        let real = PrefixIndex::new(IndexConfig {
            max_bytes: 64 << 20,
            shards: 8,
        });
        let model = ReferenceIndex::default();
        // 40 prompts of 96 blocks sharing multiples of 8 blocks; 24 pods.
        let prompts = shared_prefix_prompts(&mut rng, 40, 96, 8);
        let pods: Vec<PodIdx> = (0..24).map(p).collect();
        // Most pods hold the common first blocks, as with a shared system prompt.
        for (i, pod) in pods.iter().enumerate().take(21) {
            let prompt = &prompts[i % prompts.len()];
            real.store_after(*pod, Tier::Gpu, None, &prompt[..16]);
            model.store(*pod, Tier::Gpu, &prompt[..16]);
        }
        for step in 0..2500 {
            random_step(
                &mut rng,
                &real,
                &model,
                &prompts,
                &pods,
                &format!("seed {seed} step {step}"),
            );
        }
        for prompt in &prompts {
            assert_eq!(
                real.lookup(prompt, &pods),
                model.lookup(prompt, &pods),
                "seed {seed} final"
            );
            for k in prompt {
                let mut held: Vec<PodIdx> = real.holders(*k).into_iter().map(|(p, _)| p).collect();
                held.sort_unstable();
                let expect: Vec<PodIdx> = pods
                    .iter()
                    .copied()
                    .filter(|pod| model.lookup(&[*k], &[*pod]) == vec![1])
                    .collect();
                assert_eq!(held, expect, "seed {seed}: holders of {k:?}");
            }
        }
        let s = real.snapshot();
        assert_eq!(s.evictions, 0);
        assert_eq!(s.admissions - s.removals, s.entries, "seed {seed}");
    }
}

#[test]
fn under_a_tight_budget_lookups_never_claim_more_than_the_model() {
    for seed in 0..4u64 {
        let mut rng = Rng(2000 + seed);
        let budget = 96 << 10;
        let real = PrefixIndex::new(IndexConfig {
            max_bytes: budget,
            shards: 4,
        });
        let model = ReferenceIndex::default();
        let prompts = shared_prefix_prompts(&mut rng, 200, 128, 16);
        let pods: Vec<PodIdx> = (0..16).map(p).collect();
        for step in 0..2500 {
            let prompt = &prompts[rng.below(prompts.len() as u64) as usize];
            let pod = pods[rng.below(pods.len() as u64) as usize];
            let n = 1 + rng.below(prompt.len() as u64) as usize;
            if rng.below(3) == 0 {
                let ours = real.lookup(&prompt[..n], &pods);
                let theirs = model.lookup(&prompt[..n], &pods);
                assert!(
                    ours.iter().zip(&theirs).all(|(a, b)| a <= b),
                    "seed {seed} step {step}: {ours:?} > {theirs:?}"
                );
            } else {
                let mut parent = None;
                for chunk in prompt[..n].chunks(16) {
                    real.store_after(pod, Tier::Gpu, parent, chunk);
                    model.store(pod, Tier::Gpu, chunk);
                    parent = chunk.last().copied();
                }
            }
            let s = real.snapshot();
            assert!(s.bytes <= budget as u64, "seed {seed} step {step}: {s:?}");
        }
        let s = real.snapshot();
        assert!(s.evictions > 0);
        assert_eq!(s.admissions - s.evictions - s.removals, s.entries);
    }
}

#[test]
fn a_chain_stored_in_many_events_is_one_run() {
    let idx = PrefixIndex::new(IndexConfig::default());
    let chain = keys(0..(3 * WRITE_CHUNK as u64 + 10));
    let mut parent = None;
    for event in chain.chunks(16) {
        idx.store_after(p(1), Tier::Gpu, parent, event);
        parent = event.last().copied();
    }
    // Another pod holding a prefix, and one holding it all in a single long event.
    idx.store(p(2), Tier::Gpu, &chain[..100]);
    idx.store(p(3), Tier::Gpu, &chain);
    let s = idx.snapshot();
    assert_eq!((s.runs, s.blocks), (1, chain.len() as u64));
    assert_eq!(
        idx.lookup(&chain, &[p(3), p(2), p(1), p(2)]),
        vec![chain.len() as u32, 100, chain.len() as u32, 100]
    );
    // A branch off the middle is a run of its own; the trunk's holders are unchanged.
    let branch: Vec<BlockKey> = chain[..50]
        .iter()
        .copied()
        .chain(keys(5000..5020))
        .collect();
    idx.store_after(p(4), Tier::Gpu, Some(chain[49]), &branch[50..]);
    assert_eq!(idx.snapshot().runs, 2);
    assert_eq!(idx.lookup(&branch, &[p(1), p(4)]), vec![50, 0]);
    idx.store(p(4), Tier::Gpu, &chain[..50]);
    assert_eq!(idx.lookup(&branch, &[p(1), p(4)]), vec![50, 70]);
    // Evicting the tail of the trunk trims it; storing it again extends the run again.
    for pod in [1, 3] {
        idx.remove(p(pod), Tier::Gpu, &chain[200..]);
    }
    assert_eq!(idx.snapshot().blocks, 200 + 20);
    idx.store_after(p(1), Tier::Gpu, Some(chain[199]), &chain[200..]);
    assert_eq!(idx.snapshot().runs, 2);
    assert_eq!(idx.lookup(&chain, &[p(1)]), vec![chain.len() as u32]);
}
