//! A cache of recent prompts' token ids, so a long shared prefix (a system prompt, a document,
//! a conversation so far) is not re-tokenized on every request.
//!
//! **Resume points.** A prompt can be resumed at byte `p` when `text[p-1]` is `\n` or `\r` and
//! `text[p]` is an ASCII graphic character. For byte-level BPE tokenizers with a regex
//! pre-tokenizer (GPT-2, Llama-3, Qwen, ...) every such point is a pre-token boundary, so the
//! tokens of `text[p..]` alone are exactly the tail of `text`'s tokens; [`ModelTokenizer::resumable`]
//! checks the tokenizer's shape (and that its post-processor only prepends), and the cache is
//! bypassed for any other tokenizer. Points are chosen as a function of the prefix only: the
//! first one at or after every `spacing` bytes.
//!
//! **Lookup.** The text is hashed once, streaming (xxh3-128), with the hash of each prefix taken
//! at each resume point. The longest prefix found in the cache gives its tokens; only the rest of
//! the text is tokenized. An exact repeat of a cached prompt returns the cached ids without
//! copying.
//!
//! **Memory** is bounded by the total number of cached tokens; the least recently used prompts
//! go first.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use xxhash_rust::xxh3::Xxh3;

use super::{ModelTokenizer, TokenizerError};

/// Counters of a [`PromptCache`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PromptCacheStats {
    /// Prompts answered without tokenizing anything (exact repeats).
    pub exact_hits: u64,
    /// Prompts resumed from a cached prefix.
    pub prefix_hits: u64,
    /// Prompts tokenized from scratch.
    pub misses: u64,
    /// Bytes of prompt text not tokenized thanks to the cache.
    pub bytes_reused: u64,
    /// Tokens currently cached.
    pub cached_tokens: u64,
}

struct Entry {
    tokens: Arc<[u32]>,
    /// (prefix hash, token index) of each resume point registered for this entry.
    points: Vec<(u128, u32)>,
    last_used: u64,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<u64, Entry>,
    /// Prefix hash at a resume point → (entry, token index where the rest starts).
    points: HashMap<u128, (u64, u32)>,
    /// Whole-text hash → entry.
    whole: HashMap<u128, u64>,
    next_id: u64,
    clock: u64,
    stats: PromptCacheStats,
}

/// The prompt cache of one tokenizer.
pub struct PromptCache {
    inner: Mutex<Inner>,
    spacing: usize,
    max_tokens: usize,
}

impl std::fmt::Debug for PromptCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PromptCache")
            .field("stats", &self.stats())
            .finish()
    }
}

/// A resume point: byte offset and the hash of the text before it.
struct Point {
    at: usize,
    hash: u128,
}

impl PromptCache {
    /// A cache keeping at most `max_tokens` tokens, with resume points every `spacing` bytes.
    pub fn new(max_tokens: usize, spacing: usize) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            spacing: spacing.max(1),
            max_tokens,
        }
    }

    /// Counters.
    pub fn stats(&self) -> PromptCacheStats {
        self.inner.lock().stats
    }

    /// The resume points of `text` (with the hash of each prefix) and the hash of all of it.
    fn scan(&self, text: &str, add_special: bool) -> (Vec<Point>, u128) {
        let bytes = text.as_bytes();
        let mut h = Xxh3::new();
        h.update(&[u8::from(add_special)]);
        let mut points = Vec::new();
        let mut hashed = 0;
        let mut threshold = self.spacing;
        while threshold < bytes.len() {
            // First newline at or after the threshold whose run ends before an ASCII graphic.
            let Some(rel) = bytes[threshold - 1..]
                .iter()
                .position(|b| *b == b'\n' || *b == b'\r')
            else {
                break;
            };
            let mut p = threshold - 1 + rel;
            while p < bytes.len() && (bytes[p] == b'\n' || bytes[p] == b'\r') {
                p += 1;
            }
            if p < bytes.len() && bytes[p].is_ascii_graphic() {
                h.update(&bytes[hashed..p]);
                hashed = p;
                points.push(Point {
                    at: p,
                    hash: h.digest128(),
                });
                threshold = p + self.spacing;
            } else {
                threshold = p.max(threshold) + 1;
            }
        }
        h.update(&bytes[hashed..]);
        (points, h.digest128())
    }

    /// Token ids of `text` as `tokenizer.encode(text, add_special_tokens)` gives them.
    pub fn encode(
        &self,
        tokenizer: &ModelTokenizer,
        text: &str,
        add_special_tokens: bool,
    ) -> Result<Arc<[u32]>, TokenizerError> {
        if !tokenizer.resumable() || self.max_tokens == 0 {
            return Ok(tokenizer.encode(text, add_special_tokens)?.into());
        }
        let (points, whole) = self.scan(text, add_special_tokens);
        // Exact repeat, or the longest cached prefix.
        let start = {
            let mut inner = self.inner.lock();
            inner.clock += 1;
            let now = inner.clock;
            if let Some(id) = inner.whole.get(&whole).copied()
                && let Some(e) = inner.entries.get_mut(&id)
            {
                e.last_used = now;
                let tokens = e.tokens.clone();
                inner.stats.exact_hits += 1;
                inner.stats.bytes_reused += text.len() as u64;
                return Ok(tokens);
            }
            points.iter().enumerate().rev().find_map(|(i, p)| {
                let (id, tok) = *inner.points.get(&p.hash)?;
                let e = inner.entries.get_mut(&id)?;
                e.last_used = now;
                Some((i, p.at, e.tokens[..tok as usize].to_vec()))
            })
        };
        let (tokens, registered) = match start {
            Some((i, at, mut prefix)) => {
                let (tail, offsets) = tokenizer.encode_with_offsets(&text[at..], false)?;
                let base = prefix.len();
                let mut registered: Vec<(u128, u32)> = Vec::new();
                registered.push((points[i].hash, base as u32));
                registered.extend(points[i + 1..].iter().filter_map(|p| {
                    token_starting_at(&offsets, p.at - at).map(|t| (p.hash, (base + t) as u32))
                }));
                prefix.extend_from_slice(&tail);
                let mut inner = self.inner.lock();
                inner.stats.prefix_hits += 1;
                inner.stats.bytes_reused += at as u64;
                drop(inner);
                (prefix, registered)
            }
            None => {
                let (tokens, offsets) = tokenizer.encode_with_offsets(text, add_special_tokens)?;
                let registered = points
                    .iter()
                    .filter_map(|p| token_starting_at(&offsets, p.at).map(|t| (p.hash, t as u32)))
                    .collect();
                self.inner.lock().stats.misses += 1;
                (tokens, registered)
            }
        };
        let tokens: Arc<[u32]> = tokens.into();
        self.insert(tokens.clone(), registered, whole);
        Ok(tokens)
    }

    fn insert(&self, tokens: Arc<[u32]>, points: Vec<(u128, u32)>, whole: u128) {
        if tokens.len() > self.max_tokens {
            return;
        }
        let mut inner = self.inner.lock();
        let id = inner.next_id;
        inner.next_id += 1;
        inner.clock += 1;
        let now = inner.clock;
        for (hash, tok) in &points {
            inner.points.insert(*hash, (id, *tok));
        }
        inner.whole.insert(whole, id);
        inner.stats.cached_tokens += tokens.len() as u64;
        inner.entries.insert(
            id,
            Entry {
                tokens,
                points,
                last_used: now,
            },
        );
        // Evict least recently used entries beyond the budget.
        while inner.stats.cached_tokens as usize > self.max_tokens {
            let Some(oldest) = inner
                .entries
                .iter()
                .filter(|(k, _)| **k != id)
                .min_by_key(|(_, e)| e.last_used)
                .map(|(k, _)| *k)
            else {
                break;
            };
            if let Some(e) = inner.entries.remove(&oldest) {
                inner.stats.cached_tokens -= e.tokens.len() as u64;
                for (hash, _) in e.points {
                    if inner
                        .points
                        .get(&hash)
                        .is_some_and(|(owner, _)| *owner == oldest)
                    {
                        inner.points.remove(&hash);
                    }
                }
                inner.whole.retain(|_, owner| *owner != oldest);
            }
        }
    }
}

/// Index of the token starting exactly at byte `at` (with the previous token ending at or
/// before it), if any.
fn token_starting_at(offsets: &[(usize, usize)], at: usize) -> Option<usize> {
    let i = offsets.partition_point(|(start, _)| *start < at);
    let starts_here = offsets.get(i).is_some_and(|(s, _)| *s == at);
    let clean_cut = i == 0 || offsets[i - 1].1 <= at;
    (starts_here && clean_cut).then_some(i)
}
