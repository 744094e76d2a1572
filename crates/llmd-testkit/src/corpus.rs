//! The benchmarks' corpus: deterministic pseudo-English text (words, punctuation and numbers of
//! the serving domain, a newline every 97 words), the same for a seed on every run and in every
//! crate's benchmark, so that their numbers describe the same prompts.

/// About `words` words of pseudo-English text, deterministic per `seed` (xorshift over a small
/// vocabulary).
pub fn document(seed: u64, words: usize) -> String {
    const WORDS: &[&str] = &[
        "the",
        "serving",
        "prefix",
        "cache",
        "of",
        "large",
        "language",
        "models",
        "routes",
        "requests",
        "to",
        "pods",
        "that",
        "already",
        "hold",
        "their",
        "blocks,",
        "which",
        "cuts",
        "time",
        "first",
        "token.",
        "Decode",
        "prefill",
        "disaggregation",
        "KV",
        "transfer",
        "NIXL",
        "(see",
        "section",
        "3.2)",
        "p99",
        "latency",
        "=",
        "42ms;",
    ];
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = String::with_capacity(words * 7);
    for i in 0..words {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.push_str(WORDS[(x % WORDS.len() as u64) as usize]);
        out.push(if i % 97 == 96 { '\n' } else { ' ' });
    }
    out
}
