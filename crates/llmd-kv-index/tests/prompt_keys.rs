//! `KvIndex::prompt_keys` over a prompt tokenized through `llmd_tokenizer::PromptCache` (block
//! digests of the cached prefix kept in the cache entry's annotation) gives the keys of a fresh
//! tokenization.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use llmd_tokenizer::PromptCache;

const MODEL: &str = "meta-llama/Llama-3.1-8B-Instruct";

/// Deterministic text made of words, code, numbers, unicode and blank lines.
fn document(seed: u64, words: usize) -> String {
    const PIECES: &[&str] = &[
        "the",
        "serving",
        "prefix",
        "cache",
        "of",
        "vLLM",
        "naïve",
        "東京",
        "🚀",
        "x=1;",
        "fn",
        "{",
        "}",
        "(a, b)",
        "3.14",
        "12345",
        "--",
        "'s",
        "don't",
        "\t",
        "  ",
        "<|eot_id|>",
        "\"quoted\"",
        "end.",
    ];
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = String::new();
    for i in 0..words {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.push_str(PIECES[(x % PIECES.len() as u64) as usize]);
        out.push(if x.is_multiple_of(11) { '\n' } else { ' ' });
        if i % 37 == 36 {
            out.push_str(if x.is_multiple_of(3) { "\n\n" } else { "\n" });
        }
    }
    out
}

#[test]
fn prompt_keys_through_the_cache_equal_keys_of_fresh_tokens() {
    use llmd_kv_index::hashing::RequestExtras;
    use llmd_kv_index::{KvIndex, KvIndexConfig};
    let Some(tok) = llmd_testkit::tokenizer::real_tokenizer(MODEL) else {
        return;
    };
    for block_size in [16, 64] {
        let kv = KvIndex::new(KvIndexConfig {
            block_size,
            hash_seed: Some("0".into()),
            ..Default::default()
        })
        .unwrap();
        let cache = PromptCache::new(500_000, 300);
        let prefixes: Vec<String> = (0..3).map(|i| document(50 + i, 900)).collect();
        for round in 0..40u64 {
            let text = format!(
                "{}{}",
                prefixes[(round % 3) as usize],
                document(2000 + round, (round % 5 * 60) as usize)
            );
            let looked_up = cache.lookup(&tok, &text, true).unwrap();
            let fresh = tok.encode(&text, true).unwrap();
            assert_eq!(looked_up.to_vec(), fresh);
            assert_eq!(
                kv.prompt_keys(MODEL, &looked_up, &RequestExtras::default()),
                kv.request_keys(MODEL, &fresh, &RequestExtras::default()),
                "block size {block_size}, round {round}"
            );
        }
        assert!(cache.stats().prefix_hits > 20);
    }
}
