//! Tokenizing a fresh prompt (the EPP's dominant cost before the prompt cache warms up): HF
//! `tokenizers` against the byte-level BPE fast path, same prompt, same run, and the ratio.
//!
//! Prompts: the 273k-token one of `llmd-kv-index`'s `scoring_pass` bench (1.19 MB of
//! English-like text) and an 8k-token prefix of it, plus an 8k-token "mixed" prompt (code,
//! numbers, CJK, accents, emoji, special tokens) where fewer pieces are whole vocabulary words.
//! Both models (Llama-3.1, Qwen3) with `add_special_tokens` on, as vLLM encodes completions.
//!
//! The tokenizer files are found where the rest of the project finds them: the HF cache
//! (`$HF_HUB_CACHE`, `$HF_HOME/hub`, `~/.cache/huggingface/hub`), then this clone's
//! `.cache/hf` (`bash scripts/fetch-tokenizers.sh`).
//!
//! Run: `cargo bench -p llmd-tokenizer --bench tokenize` (results: docs/benchmarks.md).

#![allow(clippy::unwrap_used)] // benchmark setup: a failed unwrap is a broken benchmark

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::Criterion;
use llmd_testkit::corpus::document;
use llmd_tokenizer::{ModelTokenizer, locate};

const MODELS: [&str; 2] = ["meta-llama/Llama-3.1-8B-Instruct", "Qwen/Qwen3-0.6B"];

/// Varied text: code, numbers, several scripts, special tokens.
fn mixed(words: usize) -> String {
    const PIECES: &[&str] = &[
        "fn main() {",
        "}",
        "let x = 42;",
        "0x7fff_ffff",
        "3.14159",
        "東京都",
        "の",
        "キャッシュ",
        "naïve",
        "café",
        "Ελληνικά",
        "🚀",
        "👍🏽",
        "<|eot_id|>",
        "<|im_end|>",
        "don't",
        "I'M",
        "\t",
        "\n\n",
        "    ",
        "https://example.com/a?b=c",
        "\"quoted\"",
        "1,234,567",
        "...",
        "Straße",
        "добрый",
        "день",
        "مرحبا",
        "#include <stdio.h>",
        "x^2 + y^2",
    ];
    let mut x = 0x2545_f491_4f6c_dd1d_u64;
    let mut out = String::new();
    for _ in 0..words {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.push_str(PIECES[(x % PIECES.len() as u64) as usize]);
        out.push(' ');
    }
    out
}

/// The tokenizer of `model`: HF cache first, then the clone's `.cache/hf`.
fn load(model: &str) -> Option<ModelTokenizer> {
    let clone = llmd_testkit::peers::tokenizer_hub();
    let files = locate(model, None)
        .or_else(|_| locate(model, Some(&clone)))
        .ok()?;
    eprintln!("{model}: {}", files.tokenizer_json.display());
    Some(ModelTokenizer::from_files(model, &files).unwrap())
}

/// `text` cut to about `tokens` tokens (at a char boundary).
fn cut_to_tokens(tok: &ModelTokenizer, text: &str, tokens: usize) -> String {
    let (ids, offsets) = {
        let e = tok.inner().encode(text, false).unwrap();
        (e.get_ids().len(), e.get_offsets().to_vec())
    };
    let end = if tokens >= ids {
        text.len()
    } else {
        offsets[tokens].0
    };
    text[..end].to_owned()
}

/// Mean time of `f` over at least `min` and about 1 s of runs.
fn mean(mut f: impl FnMut(), min: u32) -> Duration {
    let start = Instant::now();
    let mut n = 0;
    while n < min || start.elapsed() < Duration::from_secs(1) {
        f();
        n += 1;
    }
    start.elapsed() / n
}

fn main() {
    let mut c = Criterion::default()
        .configure_from_args()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    let long = format!("You are a careful analyst.\n{}\n", document(1, 190_000));
    let mut found = 0;
    let mut summary = Vec::new();
    for model in MODELS {
        let Some(tok) = load(model) else {
            eprintln!("SKIPPED {model}: no tokenizer; run scripts/fetch-tokenizers.sh");
            continue;
        };
        found += 1;
        let Some(fast) = tok.fast_path() else {
            panic!("{model}: {:?}", tok.fast_path_unsupported());
        };
        let short = cut_to_tokens(&tok, &long, 8_000);
        let varied = cut_to_tokens(&tok, &mixed(8_000), 8_000);
        let short_name = model.rsplit('/').next().unwrap_or(model);
        for (name, text) in [("8k", &short), ("8k_mixed", &varied), ("273k", &long)] {
            let hf = |t: &str| tok.inner().encode_fast(t, true).unwrap().get_ids().to_vec();
            let ids = hf(text);
            assert_eq!(fast.encode(text, true), ids, "{model} {name}: ids differ");
            let mut g = c.benchmark_group(format!("tokenize/{short_name}/{name}"));
            g.throughput(criterion::Throughput::Bytes(text.len() as u64));
            g.bench_function("hf_tokenizers", |b| {
                b.iter(|| black_box(hf(black_box(text))))
            });
            g.bench_function("fast_path", |b| {
                b.iter(|| black_box(fast.encode(black_box(text), true)))
            });
            g.finish();
            // The ratio, from back-to-back means of the two (criterion reports each alone).
            let t_hf = mean(|| drop(black_box(hf(text))), 3);
            let t_fast = mean(|| drop(black_box(fast.encode(text, true))), 3);
            summary.push(format!(
                "{short_name:>14} {name:>8}: {:>7} tokens, {:>9} bytes | HF {:>9.3} ms | fast {:>8.3} ms | ratio {:.3}x",
                ids.len(),
                text.len(),
                t_hf.as_secs_f64() * 1e3,
                t_fast.as_secs_f64() * 1e3,
                t_fast.as_secs_f64() / t_hf.as_secs_f64()
            ));
        }
    }
    if found == 0 {
        eprintln!("SKIPPED: no tokenizer found (scripts/fetch-tokenizers.sh)");
        return;
    }
    eprintln!("\nfast path time / HF time, same run:");
    for line in summary {
        eprintln!("{line}");
    }
    c.final_summary();
}
