//! A cache of recent prompts' token ids (and, for a consumer such as the KV index, one
//! annotation per entry: its block digests), so a long shared prefix (a system prompt, a
//! document, a conversation so far) is neither re-tokenized nor re-hashed on every request.
//!
//! **Resume points.** A prompt can be resumed at byte `p` when `text[p-1]` is `\n` or `\r` and
//! `text[p]` is an ASCII graphic character, and, for tokenizers whose pre-tokenizer starts a
//! letter run at its leading space ([`ModelTokenizer::resumes_at_spaces`]: GPT-2, Llama-3,
//! Qwen), when `text[p]` is a space between an ASCII graphic character and an ASCII letter
//! (`word| word`), so a one-paragraph prompt resumes too. For byte-level BPE tokenizers with a
//! regex pre-tokenizer every such point is a pre-token boundary, so the tokens of `text[p..]`
//! alone are exactly the tail of `text`'s tokens; [`ModelTokenizer::resumable`] checks the
//! tokenizer's shape (and that its post-processor only prepends), and the cache is bypassed for
//! any other tokenizer. Points are a function of the prefix only: the first one at or after
//! every `spacing` bytes.
//!
//! **Lookup.** The text is hashed once, streaming (xxh3-128), taking the hash of each prefix at
//! each resume point. The longest prefix found in the cache gives its tokens by reference
//! ([`PromptTokens`]); only the rest of the text is tokenized. Nothing is copied for the cached
//! part. A prompt becomes a cache entry of its own when it was not resumed at all, or when its
//! new part holds resume points of its own (so a short new question after a cached document
//! does not add a near-copy of the document).
//!
//! **Annotations.** Each entry can carry one value computed from its tokens, of any type,
//! tagged with a `u64` fingerprint of what computed it ([`CacheEntry::annotation`],
//! [`CacheEntry::set_annotation`]). `llmd_kv_index::KvIndex::prompt_keys` stores the entry's
//! block digests there under its hashing configuration's fingerprint, so only the blocks after
//! the resume point are hashed. The cache never looks inside: it knows nothing of hashing.
//!
//! **Memory** is bounded by the total number of cached tokens; the least recently used prompts
//! go first.

use std::any::Any;
use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use xxhash_rust::xxh3::Xxh3;

use crate::{ModelTokenizer, TokenizerError};

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

/// A value computed from an entry's tokens, tagged with the fingerprint of what computed it.
type Annotation = (u64, Arc<dyn Any + Send + Sync>);

/// One cached prompt.
pub struct CacheEntry {
    tokens: Vec<u32>,
    /// One annotation (for the index: block digests under one hashing configuration).
    annotation: Mutex<Option<Annotation>>,
}

impl std::fmt::Debug for CacheEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheEntry")
            .field("tokens", &self.tokens.len())
            .finish()
    }
}

impl CacheEntry {
    /// The entry's token ids.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// The annotation stored under `fingerprint` with type `T`, if any.
    pub fn annotation<T: Any + Send + Sync>(&self, fingerprint: u64) -> Option<Arc<T>> {
        let slot = self.annotation.lock();
        let (f, value) = slot.as_ref()?;
        if *f != fingerprint {
            return None;
        }
        value.clone().downcast::<T>().ok()
    }

    /// Stores `value` under `fingerprint`. An annotation of another fingerprint or type is
    /// replaced; one of the same fingerprint and type only when `replaces(&current)` says so
    /// (the index keeps the longer of two digest lists).
    pub fn set_annotation<T: Any + Send + Sync>(
        &self,
        fingerprint: u64,
        value: Arc<T>,
        replaces: impl FnOnce(&T) -> bool,
    ) {
        let mut slot = self.annotation.lock();
        let replace = match slot.as_ref() {
            Some((f, current)) if *f == fingerprint => {
                current.downcast_ref::<T>().is_none_or(replaces)
            }
            _ => true,
        };
        if replace {
            *slot = Some((fingerprint, value));
        }
    }
}

/// A prompt's token ids: the first `prefix_len` ids of a cached entry, then `tail`.
#[derive(Debug, Clone)]
pub struct PromptTokens {
    prefix: Option<(Arc<CacheEntry>, usize)>,
    tail: Vec<u32>,
    /// The entry this prompt was stored as, when it was (its digests can be filled in).
    stored: Option<Arc<CacheEntry>>,
}

impl PromptTokens {
    fn uncached(tail: Vec<u32>) -> Self {
        Self {
            prefix: None,
            tail,
            stored: None,
        }
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.prefix_len() + self.tail.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The cached part, if the prompt was resumed from one: (entry, tokens used from it).
    pub fn prefix(&self) -> Option<(&Arc<CacheEntry>, usize)> {
        self.prefix.as_ref().map(|(e, n)| (e, *n))
    }

    fn prefix_len(&self) -> usize {
        self.prefix.as_ref().map_or(0, |(_, n)| *n)
    }

    /// The tokens after the cached part.
    pub fn tail(&self) -> &[u32] {
        &self.tail
    }

    /// The entry this prompt was stored as, if it was stored.
    pub fn stored(&self) -> Option<&Arc<CacheEntry>> {
        self.stored.as_ref()
    }

    /// Token `i`.
    pub fn get(&self, i: usize) -> Option<u32> {
        match &self.prefix {
            Some((e, n)) if i < *n => e.tokens.get(i).copied(),
            _ => self.tail.get(i - self.prefix_len()).copied(),
        }
    }

    /// Tokens `range` copied out (small ranges: the block straddling the cut, say).
    pub fn slice_to_vec(&self, range: std::ops::Range<usize>) -> Vec<u32> {
        let n = self.prefix_len();
        let mut out = Vec::with_capacity(range.len());
        if let Some((e, _)) = &self.prefix
            && range.start < n
        {
            out.extend_from_slice(&e.tokens[range.start..range.end.min(n)]);
        }
        if range.end > n {
            out.extend_from_slice(&self.tail[range.start.max(n) - n..range.end - n]);
        }
        out
    }

    /// All token ids, copied.
    pub fn to_vec(&self) -> Vec<u32> {
        self.slice_to_vec(0..self.len())
    }
}

#[derive(Default)]
struct Inner {
    entries: HashMap<u64, (Arc<CacheEntry>, Vec<u128>, u64)>,
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
    fn scan(&self, text: &str, add_special: bool, at_spaces: bool) -> (Vec<Point>, u128) {
        let bytes = text.as_bytes();
        let mut h = Xxh3::new();
        h.update(&[u8::from(add_special)]);
        let mut points = Vec::with_capacity(bytes.len() / self.spacing + 1);
        let mut hashed = 0;
        let mut threshold = self.spacing;
        while let Some(p) = resume_point(bytes, threshold, at_spaces) {
            h.update(&bytes[hashed..p]);
            hashed = p;
            points.push(Point {
                at: p,
                hash: h.digest128(),
            });
            threshold = p + self.spacing;
        }
        h.update(&bytes[hashed..]);
        (points, h.digest128())
    }

    /// Token ids of `text` as `tokenizer.encode(text, add_special_tokens)` gives them, copied
    /// into one vector.
    pub fn encode(
        &self,
        tokenizer: &ModelTokenizer,
        text: &str,
        add_special_tokens: bool,
    ) -> Result<Vec<u32>, TokenizerError> {
        Ok(self.lookup(tokenizer, text, add_special_tokens)?.to_vec())
    }

    /// Token ids of `text`, the cached part by reference.
    pub fn lookup(
        &self,
        tokenizer: &ModelTokenizer,
        text: &str,
        add_special_tokens: bool,
    ) -> Result<PromptTokens, TokenizerError> {
        if !tokenizer.resumable() || self.max_tokens == 0 {
            return Ok(PromptTokens::uncached(
                tokenizer.encode(text, add_special_tokens)?,
            ));
        }
        let (points, whole) = self.scan(text, add_special_tokens, tokenizer.resumes_at_spaces());
        let start = {
            let mut inner = self.inner.lock();
            inner.clock += 1;
            let now = inner.clock;
            if let Some(id) = inner.whole.get(&whole).copied()
                && let Some((entry, _, used)) = inner.entries.get_mut(&id)
            {
                *used = now;
                let entry = entry.clone();
                inner.stats.exact_hits += 1;
                inner.stats.bytes_reused += text.len() as u64;
                let n = entry.tokens.len();
                return Ok(PromptTokens {
                    prefix: Some((entry, n)),
                    tail: Vec::new(),
                    stored: None,
                });
            }
            points.iter().enumerate().rev().find_map(|(i, p)| {
                let (id, tok) = *inner.points.get(&p.hash)?;
                let (entry, _, used) = inner.entries.get_mut(&id)?;
                *used = now;
                Some((i, p.at, entry.clone(), tok as usize))
            })
        };
        match start {
            Some((i, at, entry, n)) => {
                let (tail, offsets) = tokenizer.encode_with_offsets(&text[at..], false)?;
                let new_points: Vec<(u128, u32)> = points[i + 1..]
                    .iter()
                    .filter_map(|p| {
                        token_starting_at(&offsets, p.at - at).map(|t| (p.hash, (n + t) as u32))
                    })
                    .collect();
                {
                    let mut inner = self.inner.lock();
                    inner.stats.prefix_hits += 1;
                    inner.stats.bytes_reused += at as u64;
                }
                let mut tokens = PromptTokens {
                    prefix: Some((entry, n)),
                    tail,
                    stored: None,
                };
                if !new_points.is_empty() {
                    let mut registered = vec![(points[i].hash, n as u32)];
                    registered.extend(new_points);
                    tokens.stored = self.insert(tokens.to_vec(), registered, whole);
                }
                Ok(tokens)
            }
            None => {
                let (ids, offsets) = tokenizer.encode_with_offsets(text, add_special_tokens)?;
                let registered: Vec<(u128, u32)> = points
                    .iter()
                    .filter_map(|p| token_starting_at(&offsets, p.at).map(|t| (p.hash, t as u32)))
                    .collect();
                self.inner.lock().stats.misses += 1;
                if ids.len() > self.max_tokens {
                    return Ok(PromptTokens::uncached(ids));
                }
                match self.insert(ids, registered, whole) {
                    Some(entry) => {
                        let n = entry.tokens.len();
                        Ok(PromptTokens {
                            prefix: Some((entry.clone(), n)),
                            tail: Vec::new(),
                            stored: Some(entry),
                        })
                    }
                    None => Ok(PromptTokens::uncached(Vec::new())),
                }
            }
        }
    }

    fn insert(
        &self,
        tokens: Vec<u32>,
        points: Vec<(u128, u32)>,
        whole: u128,
    ) -> Option<Arc<CacheEntry>> {
        if tokens.len() > self.max_tokens {
            return None;
        }
        let entry = Arc::new(CacheEntry {
            tokens,
            annotation: Mutex::new(None),
        });
        let mut inner = self.inner.lock();
        let id = inner.next_id;
        inner.next_id += 1;
        inner.clock += 1;
        let now = inner.clock;
        for (hash, tok) in &points {
            inner.points.insert(*hash, (id, *tok));
        }
        inner.whole.insert(whole, id);
        inner.stats.cached_tokens += entry.tokens.len() as u64;
        let hashes: Vec<u128> = points
            .iter()
            .map(|(h, _)| *h)
            .chain(std::iter::once(whole))
            .collect();
        inner.entries.insert(id, (entry.clone(), hashes, now));
        // Evict least recently used entries beyond the budget.
        while inner.stats.cached_tokens as usize > self.max_tokens {
            let Some(oldest) = inner
                .entries
                .iter()
                .filter(|(k, _)| **k != id)
                .min_by_key(|(_, e)| e.2)
                .map(|(k, _)| *k)
            else {
                break;
            };
            if let Some((e, hashes, _)) = inner.entries.remove(&oldest) {
                inner.stats.cached_tokens -= e.tokens.len() as u64;
                for hash in hashes {
                    if inner
                        .points
                        .get(&hash)
                        .is_some_and(|(owner, _)| *owner == oldest)
                    {
                        inner.points.remove(&hash);
                    }
                    if inner.whole.get(&hash) == Some(&oldest) {
                        inner.whole.remove(&hash);
                    }
                }
            }
        }
        Some(entry)
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

/// Byte `i` is a space between an ASCII graphic character and an ASCII letter (`word| word`):
/// a resume point for tokenizers that [`ModelTokenizer::resumes_at_spaces`].
pub(crate) fn is_space_point(bytes: &[u8], i: usize) -> bool {
    i > 0
        && bytes.get(i) == Some(&b' ')
        && bytes[i - 1].is_ascii_graphic()
        && bytes.get(i + 1).is_some_and(u8::is_ascii_alphabetic)
}

/// The first resume point at or after `from`: a byte that is an ASCII graphic character after a
/// newline run, or (`at_spaces`) a space between an ASCII graphic character and an ASCII letter.
fn resume_point(bytes: &[u8], from: usize, at_spaces: bool) -> Option<usize> {
    let mut i = from.max(1);
    while i < bytes.len() {
        let (prev, b) = (bytes[i - 1], bytes[i]);
        if (prev == b'\n' || prev == b'\r') && b.is_ascii_graphic() {
            return Some(i);
        }
        if at_spaces && is_space_point(bytes, i) {
            return Some(i);
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> CacheEntry {
        CacheEntry {
            tokens: vec![1, 2, 3],
            annotation: Mutex::new(None),
        }
    }

    #[test]
    fn annotations_are_typed_and_keyed_by_fingerprint() {
        let e = entry();
        assert!(e.annotation::<Vec<u8>>(7).is_none());
        e.set_annotation(7, Arc::new(vec![1u8, 2]), |_| {
            unreachable!("nothing to replace")
        });
        assert_eq!(e.annotation::<Vec<u8>>(7).as_deref(), Some(&vec![1u8, 2]));
        // Another fingerprint or another type sees nothing.
        assert!(e.annotation::<Vec<u8>>(8).is_none());
        assert!(e.annotation::<String>(7).is_none());
        // Same fingerprint and type: the predicate decides.
        e.set_annotation(7, Arc::new(vec![9u8]), |cur: &Vec<u8>| cur.is_empty());
        assert_eq!(e.annotation::<Vec<u8>>(7).as_deref(), Some(&vec![1u8, 2]));
        e.set_annotation(7, Arc::new(vec![1u8, 2, 3]), |cur: &Vec<u8>| cur.len() < 3);
        assert_eq!(
            e.annotation::<Vec<u8>>(7).as_deref(),
            Some(&vec![1u8, 2, 3])
        );
        // Another fingerprint replaces it whatever the predicate.
        e.set_annotation(8, Arc::new(String::from("x")), |_: &String| false);
        assert!(e.annotation::<Vec<u8>>(7).is_none());
        assert_eq!(
            e.annotation::<String>(8).as_deref().map(String::as_str),
            Some("x")
        );
    }
}
