//! Byte-pair merging with HF `tokenizers`' semantics, on raw bytes.
//!
//! HF's BPE model (`Word::merge_all`) repeatedly applies the listed merge of lowest rank among
//! the adjacent symbol pairs, the leftmost on ties, until none applies; with `ignore_merges` a
//! piece that is itself in the vocabulary is taken whole first. The pairs are `(left id,
//! right id)` from the `merges` list, so only listed merges ever happen (unlike tiktoken's
//! "any two adjacent tokens whose bytes are in the vocabulary"). The byte-level alphabet is
//! undone once at load: vocabulary keys become the bytes they stand for.

use std::sync::atomic::{AtomicU8, Ordering};

use hashbrown::HashMap;

type Hasher = foldhash::fast::FixedState;

/// Pieces up to this many bytes merge by rescanning a small vector; longer ones use a heap
/// (HF's algorithm) so a pathological piece (100k letters) stays `O(n log n)`.
const SCAN_MAX: usize = 48;

/// State of the "does this token's own text merge into it" check, per id.
const UNKNOWN: u8 = 0;
const SELF_MERGING: u8 = 1;
const NOT_SELF_MERGING: u8 = 2;

#[derive(Clone, Copy)]
struct Merge {
    rank: u32,
    new_id: u32,
}

/// The vocabulary and merges of a byte-level BPE model.
pub(super) struct Bpe {
    /// Token bytes → id.
    vocab: HashMap<Box<[u8]>, u32, Hasher>,
    /// The id of each single byte.
    byte_ids: [u32; 256],
    /// `(left << 32) | right` → rank and merged id.
    merges: HashMap<u64, Merge, Hasher>,
    /// Byte length of each id (vocabulary and added tokens).
    pub(super) token_len: Vec<u32>,
    ignore_merges: bool,
    /// Without `ignore_merges`, a piece found whole in the vocabulary may only be taken whole
    /// when merging its bytes gives that token; learnt lazily per id.
    self_merging: Vec<AtomicU8>,
}

impl std::fmt::Debug for Bpe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bpe")
            .field("vocab", &self.vocab.len())
            .field("merges", &self.merges.len())
            .field("ignore_merges", &self.ignore_merges)
            .finish()
    }
}

/// GPT-2's byte ↔ printable-char table: bytes that are printable Latin-1 stand for
/// themselves, the others are shifted to U+0100 and up, in byte order.
fn byte_of_char() -> HashMap<char, u8, Hasher> {
    let mut map = HashMap::with_hasher(Hasher::default());
    let mut shifted = 0u32;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        let c = if printable {
            char::from(b)
        } else {
            shifted += 1;
            char::from_u32(255 + shifted).unwrap_or(char::REPLACEMENT_CHARACTER)
        };
        map.insert(c, b);
    }
    map
}

impl Bpe {
    /// Builds the model from `tokenizer.json`'s `vocab` and `merges` (`"a b"` strings or
    /// `["a", "b"]` pairs). `None` and a reason when the vocabulary is not byte-level.
    pub(super) fn new(
        vocab: &serde_json::Map<String, serde_json::Value>,
        merges: &[serde_json::Value],
        ignore_merges: bool,
    ) -> Result<Self, String> {
        let to_bytes = byte_of_char();
        let decode =
            |s: &str| -> Option<Vec<u8>> { s.chars().map(|c| to_bytes.get(&c).copied()).collect() };
        let mut by_bytes = HashMap::with_capacity_and_hasher(vocab.len(), Hasher::default());
        let mut by_text: HashMap<&str, u32, Hasher> =
            HashMap::with_capacity_and_hasher(vocab.len(), Hasher::default());
        let mut token_len = Vec::new();
        for (text, id) in vocab {
            let id = id
                .as_u64()
                .and_then(|i| u32::try_from(i).ok())
                .ok_or_else(|| format!("vocab id of {text:?} is not a u32"))?;
            let bytes =
                decode(text).ok_or_else(|| format!("vocab entry {text:?} is not byte-level"))?;
            let idx = id as usize;
            if token_len.len() <= idx {
                token_len.resize(idx + 1, 0);
            }
            token_len[idx] = bytes.len() as u32;
            by_bytes.insert(bytes.into_boxed_slice(), id);
            by_text.insert(text.as_str(), id);
        }
        let mut byte_ids = [0u32; 256];
        for (b, slot) in byte_ids.iter_mut().enumerate() {
            *slot = *by_bytes
                .get(&[b as u8][..])
                .ok_or_else(|| format!("byte {b:#04x} has no token"))?;
        }
        let mut merge_map = HashMap::with_capacity_and_hasher(merges.len(), Hasher::default());
        for (rank, m) in merges.iter().enumerate() {
            let (a, b) = match m {
                serde_json::Value::String(s) => s
                    .split_once(' ')
                    .ok_or_else(|| format!("merge {s:?} is not two tokens"))?,
                serde_json::Value::Array(pair) if pair.len() == 2 => {
                    match (pair[0].as_str(), pair[1].as_str()) {
                        (Some(a), Some(b)) => (a, b),
                        _ => return Err(format!("merge {m} is not two strings")),
                    }
                }
                _ => return Err(format!("merge {m} is not a pair")),
            };
            let (Some(&ia), Some(&ib)) = (by_text.get(a), by_text.get(b)) else {
                return Err(format!("merge {a:?} {b:?}: a token is not in the vocab"));
            };
            let merged = format!("{a}{b}");
            let Some(&new_id) = by_text.get(merged.as_str()) else {
                return Err(format!("merge {a:?} {b:?}: {merged:?} is not in the vocab"));
            };
            // As HF: a repeated pair keeps its last rank.
            merge_map.insert(
                (u64::from(ia) << 32) | u64::from(ib),
                Merge {
                    rank: rank as u32,
                    new_id,
                },
            );
        }
        let self_merging = (0..token_len.len())
            .map(|_| AtomicU8::new(UNKNOWN))
            .collect();
        Ok(Self {
            vocab: by_bytes,
            byte_ids,
            merges: merge_map,
            token_len,
            ignore_merges,
            self_merging,
        })
    }

    /// Grows `token_len` to cover `id` (added tokens) with `len` bytes.
    pub(super) fn set_token_len(&mut self, id: u32, len: usize) {
        let idx = id as usize;
        if self.token_len.len() <= idx {
            self.token_len.resize(idx + 1, 0);
        }
        self.token_len[idx] = len as u32;
    }

    #[inline]
    fn merge_of(&self, left: u32, right: u32) -> Option<Merge> {
        self.merges
            .get(&((u64::from(left) << 32) | u64::from(right)))
            .copied()
    }

    /// Appends the ids of one pre-token.
    pub(super) fn encode_piece(&self, piece: &[u8], out: &mut Vec<u32>) {
        match piece.len() {
            0 => return,
            1 => {
                out.push(self.byte_ids[piece[0] as usize]);
                return;
            }
            _ => {}
        }
        if let Some(&id) = self.vocab.get(piece)
            && (self.ignore_merges || self.merges_into_itself(id, piece))
        {
            out.push(id);
            return;
        }
        self.merge(piece, out);
    }

    fn merges_into_itself(&self, id: u32, piece: &[u8]) -> bool {
        let Some(state) = self.self_merging.get(id as usize) else {
            return false;
        };
        match state.load(Ordering::Relaxed) {
            SELF_MERGING => true,
            NOT_SELF_MERGING => false,
            _ => {
                let mut ids = Vec::new();
                self.merge(piece, &mut ids);
                let yes = ids == [id];
                let value = if yes { SELF_MERGING } else { NOT_SELF_MERGING };
                state.store(value, Ordering::Relaxed);
                yes
            }
        }
    }

    fn merge(&self, piece: &[u8], out: &mut Vec<u32>) {
        if piece.len() <= SCAN_MAX {
            self.merge_scan(piece, out);
        } else {
            self.merge_heap(piece, out);
        }
    }

    /// Short pieces: symbols and the merge of each adjacent pair in two small vectors; find
    /// the lowest rank (leftmost on ties), merge, update the two neighbouring pairs.
    fn merge_scan(&self, piece: &[u8], out: &mut Vec<u32>) {
        let mut syms: Vec<u32> = piece.iter().map(|b| self.byte_ids[*b as usize]).collect();
        let mut pairs: Vec<Option<Merge>> =
            syms.windows(2).map(|w| self.merge_of(w[0], w[1])).collect();
        loop {
            let mut best: Option<(usize, Merge)> = None;
            for (i, m) in pairs.iter().enumerate() {
                if let Some(m) = m
                    && best.is_none_or(|(_, b)| m.rank < b.rank)
                {
                    best = Some((i, *m));
                }
            }
            let Some((i, m)) = best else { break };
            syms[i] = m.new_id;
            syms.remove(i + 1);
            pairs.remove(i);
            if i > 0 {
                pairs[i - 1] = self.merge_of(syms[i - 1], syms[i]);
            }
            if i < pairs.len() {
                pairs[i] = self.merge_of(syms[i], syms[i + 1]);
            }
        }
        out.extend_from_slice(&syms);
    }

    /// Long pieces: HF's algorithm. A doubly linked list of symbols and a min-heap of
    /// candidate merges `(rank, position)`; stale candidates are skipped when popped.
    fn merge_heap(&self, piece: &[u8], out: &mut Vec<u32>) {
        use std::cmp::Reverse;
        use std::collections::BinaryHeap;

        const NONE: usize = usize::MAX;
        let n = piece.len();
        let mut id: Vec<u32> = piece.iter().map(|b| self.byte_ids[*b as usize]).collect();
        let mut alive = vec![true; n];
        let mut prev: Vec<usize> = (0..n).map(|i| i.wrapping_sub(1)).collect();
        let mut next: Vec<usize> = (1..=n).map(|i| if i == n { NONE } else { i }).collect();
        prev[0] = NONE;
        let mut heap = BinaryHeap::with_capacity(n);
        for i in 0..n - 1 {
            if let Some(m) = self.merge_of(id[i], id[i + 1]) {
                heap.push(Reverse((m.rank, i, m.new_id)));
            }
        }
        while let Some(Reverse((_, pos, new_id))) = heap.pop() {
            if !alive[pos] || next[pos] == NONE {
                continue;
            }
            let right = next[pos];
            // Stale when the pair there no longer merges into `new_id` (HF's check).
            match self.merge_of(id[pos], id[right]) {
                Some(m) if m.new_id == new_id => {}
                _ => continue,
            }
            id[pos] = new_id;
            alive[right] = false;
            next[pos] = next[right];
            if next[pos] != NONE {
                prev[next[pos]] = pos;
            }
            if prev[pos] != NONE
                && let Some(m) = self.merge_of(id[prev[pos]], id[pos])
            {
                heap.push(Reverse((m.rank, prev[pos], m.new_id)));
            }
            if next[pos] != NONE
                && let Some(m) = self.merge_of(id[pos], id[next[pos]])
            {
                heap.push(Reverse((m.rank, pos, m.new_id)));
            }
        }
        let mut i = 0;
        while i != NONE {
            out.push(id[i]);
            i = next[i];
        }
    }
}
