//! A full precise-prefix scoring pass for a ~240k-token prompt over 96 pods: tokenize (with a
//! warm prompt cache holding the prompt's long prefix), compute the block keys, look them up.
//! Baseline in the same run: tokenizing the same prompt from scratch (what an EPP without a
//! prompt cache pays on every request; llm-d's Go EPP takes 674 ms / 13 GB for this whole pass,
//! llm-d/llm-d-router#2390). Also prints the bytes allocated by one pass, measured by the
//! allocator.
//!
//! Needs the Llama-3.1 tokenizer: `bash scripts/fetch-tokenizers.sh` first.
//! Run: `cargo bench -p llmd-kv-index --bench scoring_pass`

#![allow(clippy::unwrap_used)] // benchmark setup: a failed unwrap is a broken benchmark

use std::hint::black_box;
use std::time::Instant;

use criterion::Criterion;
use llmd_kv_index::events::Tier;
use llmd_kv_index::hashing::{BlockKey, RequestExtras};
use llmd_kv_index::index::{IndexConfig, IndexOps};
use llmd_kv_index::{KvIndex, KvIndexConfig};
use llmd_testkit::corpus::document;
use llmd_tokenizer::PromptCache;

#[global_allocator]
static ALLOC: cap::Cap<std::alloc::System> = cap::Cap::new(std::alloc::System, usize::MAX);

const MODEL: &str = "meta-llama/Llama-3.1-8B-Instruct";

fn main() {
    let Some(tok) = llmd_testkit::tokenizer::real_tokenizer(MODEL) else {
        return;
    };
    let mut c = Criterion::default().configure_from_args();

    // A long shared context (system prompt + document) and a new question.
    let context = format!("You are a careful analyst.\n{}\n", document(1, 190_000));
    let prompt = format!("{context}Question: which pods hold the most blocks?\n");
    let t = Instant::now();
    let cold = tok.encode(&prompt, true).unwrap();
    let cold_ms = t.elapsed().as_secs_f64() * 1e3;
    eprintln!(
        "prompt: {} bytes, {} tokens; cold tokenization {:.1} ms",
        prompt.len(),
        cold.len(),
        cold_ms
    );

    // 96 pods; four hold the context's blocks, the rest hold 500k unrelated blocks.
    let kv = KvIndex::new(KvIndexConfig {
        hash_seed: Some("0".into()),
        index: IndexConfig {
            max_bytes: 1 << 30,
            shards: 32,
        },
        ..Default::default()
    })
    .unwrap();
    let pods: Vec<String> = (0..96).map(|i| format!("10.0.0.{i}:8000")).collect();
    let pod_refs: Vec<&str> = pods.iter().map(String::as_str).collect();
    let keys = kv.request_keys(MODEL, &cold, &RequestExtras::default());
    for (i, p) in pods.iter().enumerate().take(4) {
        let idx = kv.pods().intern(p).unwrap();
        kv.index()
            .store(idx, Tier::Gpu, &keys[..keys.len() - i * 100]);
    }
    let mut x = 1u64;
    for (i, p) in pods.iter().enumerate().skip(4) {
        let idx = kv.pods().intern(p).unwrap();
        let other: Vec<BlockKey> = (0..5_500)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407 + i as u64);
                BlockKey(x)
            })
            .collect();
        kv.index().store(idx, Tier::Gpu, &other);
    }

    // Warm the prompt cache with the context (an earlier request).
    let cache = PromptCache::new(2_000_000, 1024);
    let earlier = cache
        .lookup(&tok, &format!("{context}Question: summarize.\n"), true)
        .unwrap();
    kv.prompt_keys(MODEL, &earlier, &RequestExtras::default());

    let pass = || {
        let tokens = cache.lookup(&tok, &prompt, true).unwrap();
        let keys = kv.prompt_keys(MODEL, &tokens, &RequestExtras::default());
        kv.lookup(&keys, &pod_refs)
    };
    let counts = pass();
    assert_eq!(
        &counts[..4],
        &[
            keys.len() as u32,
            keys.len() as u32 - 100,
            keys.len() as u32 - 200,
            keys.len() as u32 - 300
        ]
    );
    assert_eq!(&pass()[..], &counts[..], "exact repeat");

    // Allocation of one pass (exact repeat is served from the cache without copying; a new
    // question after the cached context copies the prefix's ids).
    let question_pass = |q: usize| {
        let p = format!("{context}Question: #{q} which pods?\n");
        let before = ALLOC.total_allocated();
        let tokens = cache.lookup(&tok, &p, true).unwrap();
        let after_tokenize = ALLOC.total_allocated();
        let keys = kv.prompt_keys(MODEL, &tokens, &RequestExtras::default());
        let after_keys = ALLOC.total_allocated();
        black_box(kv.lookup(&keys, &pod_refs));
        let after = ALLOC.total_allocated();
        (
            after_tokenize - before,
            after_keys - after_tokenize,
            after - after_keys,
        )
    };
    let (a_tok, a_keys, a_lookup) = question_pass(0);
    eprintln!(
        "allocated by one new-question pass: tokenize {:.0} KiB, keys {:.0} KiB, lookup {:.1} KiB, total {:.0} KiB",
        a_tok as f64 / 1024.0,
        a_keys as f64 / 1024.0,
        a_lookup as f64 / 1024.0,
        (a_tok + a_keys + a_lookup) as f64 / 1024.0
    );
    let before = ALLOC.total_allocated();
    black_box(pass());
    eprintln!(
        "allocated by one exact-repeat pass: {:.0} KiB",
        (ALLOC.total_allocated() - before) as f64 / 1024.0
    );

    let mut g = c.benchmark_group("scoring_pass_240k_tokens_96_pods");
    g.sample_size(10);
    g.bench_function("baseline_cold_tokenization_only", |b| {
        b.iter(|| black_box(tok.encode(black_box(&prompt), true).unwrap()))
    });
    let mut q = 1usize;
    g.bench_function("full_pass_new_question_warm_cache", |b| {
        b.iter(|| {
            q += 1;
            let p = format!("{context}Question: #{q} which pods?\n");
            let tokens = cache.lookup(&tok, &p, true).unwrap();
            let keys = kv.prompt_keys(MODEL, &tokens, &RequestExtras::default());
            black_box(kv.lookup(&keys, &pod_refs))
        })
    });
    g.bench_function("full_pass_exact_repeat", |b| b.iter(|| black_box(pass())));
    let tokens = cache.encode(&tok, &prompt, true).unwrap();
    g.bench_function("part_block_keys_uncached", |b| {
        b.iter(|| black_box(kv.request_keys(MODEL, &tokens, &RequestExtras::default())))
    });
    g.bench_function("part_lookup", |b| {
        b.iter(|| black_box(kv.lookup(&keys, &pod_refs)))
    });
    g.finish();
    c.final_summary();
}
