//! Block hashing: vLLM's `sha256_cbor` chain (mode `vllm`) and llm-d's chained FNV-1a-64 over
//! CBOR (mode `tokens`).
//!
//! # `vllm` mode (the default: keys equal the engine's own block hashes)
//!
//! vLLM (`vllm/v1/core/kv_cache_utils.py`, `--prefix-caching-hash-algo sha256_cbor`) hashes each
//! **full** block of `block_size` tokens as
//!
//! ```text
//! digest_i = SHA-256( canonical CBOR [ digest_{i-1} (bstr 32), [token ids] (uints), extra_keys | null ] )
//! digest_-1 = NONE_HASH = SHA-256( canonical CBOR of the PYTHONHASHSEED string )
//!             ("vllm-none-hash" when the variable is unset, as vLLM >= 0.29 does)
//! ```
//!
//! and publishes `u64::from_be_bytes(digest[24..32])` in its KV events. That 64-bit value is the
//! index's [`BlockKey`]; the chain continues on the full 32-byte digest. The encoder below writes
//! exactly the bytes `cbor2.dumps(x, canonical=True)` writes for this shape (shortest-form heads,
//! RFC 8949), into a reused buffer: hashing a block allocates nothing. It is hand-written because
//! a general CBOR encoder would build a value tree per block on the hottest path of the EPP;
//! tests check it byte for byte against `ciborium` and against vLLM's own vectors.
//!
//! # `tokens` mode (llm-d's current keys)
//!
//! `root0 = FNV-1a-64(seed bytes)`, `root = FNV-1a-64(CBOR [root0, null, model])`,
//! `key_i = FNV-1a-64(CBOR [key_{i-1}, [token ids], extra])` (`reference/epp-and-kv-index.md`
//! §5.3). Keys are recomputed from each event's `token_ids`, so they do not depend on the
//! engine's `PYTHONHASHSEED`.

use std::fmt;

use fnv::FnvHasher;
use sha2::block_api::compress256;
use sha2::{Digest, Sha256};

/// SHA-256's initial state (FIPS 180-4 §5.3.3).
const SHA256_IV: [u32; 8] = [
    0x6a09_e667,
    0xbb67_ae85,
    0x3c6e_f372,
    0xa54f_f53a,
    0x510e_527f,
    0x9b05_688c,
    0x1f83_d9ab,
    0x5be0_cd19,
];
use std::hash::Hasher;

/// vLLM's block size default for llm-d deployments (the guides run `--block-size 64`).
pub const DEFAULT_BLOCK_SIZE: usize = 64;
/// The seed vLLM >= 0.29 uses for `NONE_HASH` when `PYTHONHASHSEED` is unset.
pub const DEFAULT_NONE_HASH_SEED: &str = "vllm-none-hash";

/// A block's key in the prefix index: the 64-bit value vLLM publishes for the block (mode
/// `vllm`), or llm-d's FNV request key (mode `tokens`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct BlockKey(pub u64);

impl fmt::Debug for BlockKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlockKey({})", self.0)
    }
}

impl fmt::Display for BlockKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// vLLM's full 32-byte block digest, the value the chain continues on.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct BlockDigest(pub [u8; 32]);

impl BlockDigest {
    /// The 64-bit key vLLM publishes: the last 8 digest bytes, big-endian.
    pub fn key(&self) -> BlockKey {
        let mut tail = [0u8; 8];
        tail.copy_from_slice(&self.0[24..]);
        BlockKey(u64::from_be_bytes(tail))
    }

    /// Lowercase hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Debug for BlockDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlockDigest({})", self.to_hex())
    }
}

/// Which key scheme the index uses (`shared/design.md` §2).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum HashAlgo {
    /// vLLM's own `sha256_cbor` chain: keys equal the engine's; events need no token ids.
    #[default]
    #[value(name = "sha256_cbor", alias = "vllm")]
    #[serde(rename = "sha256_cbor", alias = "vllm")]
    Sha256Cbor,
    /// llm-d's chained FNV-1a-64 over CBOR with the model name in the root; keys recomputed from
    /// each event's `token_ids`.
    #[value(name = "cbor-fnv", alias = "tokens")]
    #[serde(rename = "cbor-fnv", alias = "tokens")]
    CborFnv,
}

/// Configuration errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HashError {
    /// Block size must be at least 1.
    #[error("block size must be at least 1")]
    ZeroBlockSize,
}

/// One element of vLLM's per-block `extra_keys` tuple, as Python would hold it before CBOR
/// encoding (a tuple becomes a CBOR array, `str` a text string, `int` an integer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExtraKey {
    /// Python `str`.
    Str(String),
    /// Python `int`.
    Int(i64),
    /// Python `bytes`.
    Bytes(Vec<u8>),
    /// Python `tuple`.
    Tuple(Vec<ExtraKey>),
    /// Python `None`.
    None,
}

/// How a vLLM generation spells its extra keys (`reference/vllm-hashing-and-events.md` §1.5).
/// Configured as `tagged` / `untagged`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExtraKeyStyle {
    /// vLLM >= 0.31: `("lora", name, path)`, `("mm", identifier, offset)`, `("cache_salt", salt)`.
    #[default]
    Tagged,
    /// vLLM 0.20 - 0.29: bare `lora_name`, `(identifier, offset)`, bare salt.
    Untagged,
}

/// A LoRA adapter as vLLM keys it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoraKey {
    /// `lora_name`.
    pub name: String,
    /// `lora_path` (only hashed by vLLM >= 0.31).
    pub path: String,
}

/// A multimodal item placed in the prompt: tokens `[offset, offset + length)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MmItem {
    /// vLLM's identifier (the item's content hash, or a user-provided uuid).
    pub identifier: String,
    /// First placeholder token position in the prompt.
    pub offset: usize,
    /// Number of placeholder tokens.
    pub length: usize,
}

/// Everything besides the tokens that vLLM folds into block hashes for one request.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RequestExtras {
    /// Spelling of the extra keys.
    pub style: ExtraKeyStyle,
    /// LoRA adapter, keyed on every block.
    pub lora: Option<LoraKey>,
    /// Multimodal items, in prompt order; keyed on every block they overlap.
    pub mm_items: Vec<MmItem>,
    /// `cache_salt`, keyed on block 0 only.
    pub cache_salt: Option<String>,
}

impl RequestExtras {
    /// True when no block gets extra keys.
    pub fn is_empty(&self) -> bool {
        self.lora.is_none()
            && self.mm_items.is_empty()
            && self.cache_salt.as_deref().is_none_or(str::is_empty)
    }

    /// The extra keys of the block covering tokens `[start, end)`, in vLLM's order (LoRA,
    /// multimodal items, cache salt); `None` when there are none.
    pub fn block_extra_keys(&self, start: usize, end: usize) -> Option<Vec<ExtraKey>> {
        let mut keys = Vec::new();
        let tagged = self.style == ExtraKeyStyle::Tagged;
        if let Some(lora) = &self.lora {
            keys.push(if tagged {
                ExtraKey::Tuple(vec![
                    ExtraKey::Str("lora".into()),
                    ExtraKey::Str(lora.name.clone()),
                    ExtraKey::Str(lora.path.clone()),
                ])
            } else {
                ExtraKey::Str(lora.name.clone())
            });
        }
        for item in &self.mm_items {
            let overlaps = item.offset < end && item.offset + item.length > start;
            if !overlaps {
                continue;
            }
            // Offset relative to the block start: negative when the item began earlier.
            let rel = item.offset as i64 - start as i64;
            let mut tuple = Vec::with_capacity(3);
            if tagged {
                tuple.push(ExtraKey::Str("mm".into()));
            }
            tuple.push(ExtraKey::Str(item.identifier.clone()));
            tuple.push(ExtraKey::Int(rel));
            keys.push(ExtraKey::Tuple(tuple));
        }
        if start == 0
            && let Some(salt) = self.cache_salt.as_deref().filter(|s| !s.is_empty())
        {
            keys.push(if tagged {
                ExtraKey::Tuple(vec![
                    ExtraKey::Str("cache_salt".into()),
                    ExtraKey::Str(salt.into()),
                ])
            } else {
                ExtraKey::Str(salt.into())
            });
        }
        (!keys.is_empty()).then_some(keys)
    }
}

/// vLLM's `sha256_cbor` block hasher for one seed and block size.
#[derive(Debug, Clone)]
pub struct VllmHasher {
    root: BlockDigest,
    block_size: usize,
}

impl VllmHasher {
    /// `seed` is the engine's `PYTHONHASHSEED` string (`None`: unset, so `"vllm-none-hash"`).
    pub fn new(seed: Option<&str>, block_size: usize) -> Result<Self, HashError> {
        if block_size == 0 {
            return Err(HashError::ZeroBlockSize);
        }
        let seed = seed.unwrap_or(DEFAULT_NONE_HASH_SEED);
        let mut buf = Vec::with_capacity(seed.len() + 9);
        cbor::text(&mut buf, seed);
        Ok(Self {
            root: BlockDigest(Sha256::digest(&buf).into()),
            block_size,
        })
    }

    /// `NONE_HASH`, the parent of block 0.
    pub fn root(&self) -> &BlockDigest {
        &self.root
    }

    /// Tokens per block.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Hashes one block. `parent` is the previous block's digest (`None`: block 0, chained on
    /// the root); `scratch` is reused between calls so nothing is allocated once it has grown.
    pub fn hash_block(
        &self,
        parent: Option<&BlockDigest>,
        tokens: &[u32],
        extra_keys: Option<&[ExtraKey]>,
        scratch: &mut Vec<u8>,
    ) -> BlockDigest {
        scratch.clear();
        encode_block(scratch, &parent.unwrap_or(&self.root).0, tokens, extra_keys);
        BlockDigest(Sha256::digest(scratch.as_slice()).into())
    }

    /// Appends the digests of every full block of `tokens` (a trailing partial block is not
    /// hashed), chaining from `parent` (`None`: from the root).
    pub fn digests_into(
        &self,
        parent: Option<&BlockDigest>,
        tokens: &[u32],
        extras: &RequestExtras,
        out: &mut Vec<BlockDigest>,
    ) {
        let parent = parent.unwrap_or(&self.root);
        if extras.is_empty() {
            out.reserve(tokens.len() / self.block_size);
            self.chain_plain(parent, tokens, |d| out.push(d));
            return;
        }
        let mut scratch = Vec::with_capacity(self.block_size * 5 + 64);
        let mut prev = *parent;
        for (i, block) in tokens.chunks_exact(self.block_size).enumerate() {
            let extra = extras.block_extra_keys(i * self.block_size, (i + 1) * self.block_size);
            prev = self.hash_block(Some(&prev), block, extra.as_deref(), &mut scratch);
            out.push(prev);
        }
    }

    /// Appends the keys of every full block of a plain-text prompt (no extra keys). The hot
    /// path of scoring: two buffers for the whole prompt, no allocation per block.
    pub fn keys_into(&self, tokens: &[u32], out: &mut Vec<BlockKey>) {
        out.reserve(tokens.len() / self.block_size);
        self.chain_plain(&self.root, tokens, |d| out.push(d.key()));
    }

    /// The chain of full blocks without extra keys, digest by digest.
    ///
    /// Each block's bytes are `83 58 20 <parent> <array head> <token ids> f6`: only the parent
    /// depends on the previous digest. So SHA-256 is driven here one 64-byte block at a time
    /// (`sha2`'s raw compression function, with the standard padding written in place), and
    /// between two compressions of block `i` a slice of block `i + 1`'s token ids is encoded
    /// into the other of two buffers. The two are independent, so the CPU runs the encoding
    /// while SHA-256's serial rounds wait on each other. The buffers are written in place, never
    /// cleared. Same bytes and digests as [`encode_block`] + `Sha256::digest` (tests check it).
    fn chain_plain(&self, parent: &BlockDigest, tokens: &[u32], mut emit: impl FnMut(BlockDigest)) {
        let bs = self.block_size;
        let mut blocks = tokens.chunks_exact(bs);
        let Some(first) = blocks.next() else {
            return;
        };
        let mut head = Vec::with_capacity(16);
        head.extend_from_slice(&[0x83, 0x58, 0x20]);
        head.extend_from_slice(&[0; 32]);
        cbor::head(&mut head, cbor::ARRAY, bs as u64);
        let tok_at = head.len();
        // Token ids take at most 5 bytes each; then the null, SHA-256's 0x80 and length, and
        // slack for the last 8-byte store.
        let chunks = (tok_at + bs * 5 + 1 + 9 + 8).div_ceil(64) + 1;
        let mut bufs = [vec![[0u8; 64]; chunks], vec![[0u8; 64]; chunks]];
        for b in &mut bufs {
            b.as_flattened_mut()[..tok_at].copy_from_slice(&head);
        }
        // Encodes `block` from token `from` on, writing at `pos`; returns the new position.
        let encode = |buf: &mut [[u8; 64]], pos: usize, block: &[u32]| -> usize {
            cbor::token_ids_at(buf.as_flattened_mut(), pos, block)
        };
        // Ends a message at `end` (the null) and pads it; returns its length in 64-byte blocks.
        let finish = |buf: &mut [[u8; 64]], end: usize| -> usize {
            let bytes = buf.as_flattened_mut();
            bytes[end] = cbor::NULL;
            let len = end + 1;
            let n = (len + 9).div_ceil(64);
            bytes[len] = 0x80;
            bytes[len + 1..n * 64 - 8].fill(0);
            bytes[n * 64 - 8..n * 64].copy_from_slice(&((len as u64) * 8).to_be_bytes());
            n
        };
        let end = encode(&mut bufs[0], tok_at, first);
        let mut lens = [finish(&mut bufs[0], end), 0];
        let mut prev = *parent;
        let mut cur = 0;
        let mut next = blocks.next();
        loop {
            let (a, b) = bufs.split_at_mut(1);
            let (this, other) = if cur == 0 {
                (&mut a[0], &mut b[0])
            } else {
                (&mut b[0], &mut a[0])
            };
            this.as_flattened_mut()[3..35].copy_from_slice(&prev.0);
            let n = lens[cur];
            let mut state = SHA256_IV;
            match next {
                Some(block) => {
                    // Spread the next block's encoding over this block's compressions.
                    let parts = block.chunks(bs.div_ceil(n));
                    let count = parts.len();
                    let mut pos = tok_at;
                    for (c, part) in this[..n].iter().zip(parts) {
                        pos = encode(other, pos, part);
                        compress256(&mut state, std::slice::from_ref(c));
                    }
                    compress256(&mut state, &this[count.min(n)..n]);
                    lens[cur ^ 1] = finish(other, pos);
                }
                None => compress256(&mut state, &this[..n]),
            }
            let mut digest = [0u8; 32];
            for (d, w) in digest.chunks_exact_mut(4).zip(state) {
                d.copy_from_slice(&w.to_be_bytes());
            }
            prev = BlockDigest(digest);
            emit(prev);
            if next.is_none() {
                break;
            }
            next = blocks.next();
            cur ^= 1;
        }
    }

    /// The keys of every full block, with extra keys.
    pub fn keys(&self, tokens: &[u32], extras: &RequestExtras) -> Vec<BlockKey> {
        let mut digests = Vec::new();
        self.digests_into(None, tokens, extras, &mut digests);
        digests.iter().map(BlockDigest::key).collect()
    }
}

/// llm-d's `cbor-fnv` request-key hasher (mode `tokens`).
#[derive(Debug, Clone)]
pub struct TokensHasher {
    root: u64,
    block_size: usize,
}

impl TokensHasher {
    /// `seed` is llm-d's `hashSeed` (empty by default); `model` the model (or LoRA) name the keys
    /// belong to.
    pub fn new(seed: &str, model: &str, block_size: usize) -> Result<Self, HashError> {
        if block_size == 0 {
            return Err(HashError::ZeroBlockSize);
        }
        let root0 = fnv1a64(seed.as_bytes());
        let mut buf = Vec::with_capacity(model.len() + 24);
        cbor::head(&mut buf, cbor::ARRAY, 3);
        cbor::uint(&mut buf, root0);
        buf.push(cbor::NULL);
        cbor::text(&mut buf, model);
        Ok(Self {
            root: fnv1a64(&buf),
            block_size,
        })
    }

    /// The chain root for this seed and model.
    pub fn root(&self) -> BlockKey {
        BlockKey(self.root)
    }

    /// Tokens per block.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Appends the keys of every full block of `tokens`, chained from `parent` (`None`: the
    /// root). `block_hashes[i]` of llm-d's extra-key form is `extra(i)`: `None` for text.
    pub fn keys_into(
        &self,
        parent: Option<BlockKey>,
        tokens: &[u32],
        extra: &[Option<&[&str]>],
        out: &mut Vec<BlockKey>,
    ) {
        let mut scratch = Vec::with_capacity(self.block_size * 5 + 32);
        let mut prev = parent.map_or(self.root, |k| k.0);
        for (i, block) in tokens.chunks_exact(self.block_size).enumerate() {
            scratch.clear();
            cbor::head(&mut scratch, cbor::ARRAY, 3);
            cbor::uint(&mut scratch, prev);
            cbor::head(&mut scratch, cbor::ARRAY, block.len() as u64);
            for &t in block {
                cbor::uint(&mut scratch, u64::from(t));
            }
            match extra.get(i).copied().flatten() {
                None => scratch.push(cbor::NULL),
                // llm-d: a list of {"Hash": "<mm id or salt>"} maps.
                Some(hashes) => {
                    cbor::head(&mut scratch, cbor::ARRAY, hashes.len() as u64);
                    for h in hashes {
                        cbor::head(&mut scratch, cbor::MAP, 1);
                        cbor::text(&mut scratch, "Hash");
                        cbor::text(&mut scratch, h);
                    }
                }
            }
            prev = fnv1a64(&scratch);
            out.push(BlockKey(prev));
        }
    }
}

#[doc(hidden)]
pub fn encode_token_ids_for_bench(buf: &mut Vec<u8>, tokens: &[u32]) {
    cbor::token_ids(buf, tokens);
}

/// FNV-1a, 64 bit.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h = FnvHasher::default();
    h.write(bytes);
    h.finish()
}

/// Appends canonical CBOR of `[parent (bstr), [tokens], extra_keys | null]`.
fn encode_block(
    buf: &mut Vec<u8>,
    parent: &[u8; 32],
    tokens: &[u32],
    extra_keys: Option<&[ExtraKey]>,
) {
    buf.push(0x83);
    cbor::bytes(buf, parent);
    cbor::head(buf, cbor::ARRAY, tokens.len() as u64);
    cbor::token_ids(buf, tokens);
    match extra_keys {
        None => buf.push(cbor::NULL),
        Some(keys) => {
            cbor::head(buf, cbor::ARRAY, keys.len() as u64);
            for k in keys {
                cbor::extra_key(buf, k);
            }
        }
    }
}

/// The few pieces of canonical CBOR (RFC 8949 §4.2.1, shortest-form heads) the hashes need.
pub(crate) mod cbor {
    use super::ExtraKey;

    pub const UINT: u8 = 0;
    pub const NEGINT: u8 = 1;
    pub const BYTES: u8 = 2;
    pub const TEXT: u8 = 3;
    pub const ARRAY: u8 = 4;
    pub const MAP: u8 = 5;
    pub const NULL: u8 = 0xf6;

    /// A head: major type and argument in shortest form.
    #[inline]
    pub fn head(buf: &mut Vec<u8>, major: u8, value: u64) {
        let m = major << 5;
        if value < 24 {
            buf.push(m | value as u8);
        } else if value <= 0xff {
            buf.extend_from_slice(&[m | 24, value as u8]);
        } else if value <= 0xffff {
            buf.push(m | 25);
            buf.extend_from_slice(&(value as u16).to_be_bytes());
        } else if value <= 0xffff_ffff {
            buf.push(m | 26);
            buf.extend_from_slice(&(value as u32).to_be_bytes());
        } else {
            buf.push(m | 27);
            buf.extend_from_slice(&value.to_be_bytes());
        }
    }

    #[inline]
    pub fn uint(buf: &mut Vec<u8>, value: u64) {
        head(buf, UINT, value);
    }

    /// (additional info, argument bytes) of a uint >= 24 by its bit length.
    const WIDTH_BY_BITS: [(u8, u32); 33] = {
        let mut t = [(26u8, 4u32); 33];
        let mut bits = 0;
        while bits <= 16 {
            t[bits] = if bits <= 8 { (24, 1) } else { (25, 2) };
            bits += 1;
        }
        t
    };

    /// Appends each token id as a CBOR unsigned int. The hot loop of block hashing: every token
    /// is one 8-byte store into pre-sized space (its head and big-endian argument left-aligned
    /// in a `u64`), after which the cursor advances by the encoded length.
    #[inline]
    pub fn token_ids(buf: &mut Vec<u8>, tokens: &[u32]) {
        let start = buf.len();
        // At most 5 bytes per token, plus 3 bytes of slack for the last 8-byte store.
        buf.resize(start + tokens.len() * 5 + 3, 0);
        let end = token_ids_at(buf, start, tokens);
        buf.truncate(end);
    }

    /// Writes the token ids into `out` from `pos` (which must have `5 * tokens.len() + 3` bytes
    /// of room) and returns the position after them.
    #[inline]
    pub fn token_ids_at(out: &mut [u8], mut pos: usize, tokens: &[u32]) -> usize {
        for &t in tokens {
            // Branch-free width selection: token ids of one prompt mix widths unpredictably.
            let (info, arg_bytes) = WIDTH_BY_BITS[(32 - t.leading_zeros()) as usize];
            let wide = (u64::from(info) << 56) | (u64::from(t) << (56 - 8 * arg_bytes));
            let small = t < 24;
            let word = if small { u64::from(t) << 56 } else { wide };
            let len = if small { 1 } else { 1 + arg_bytes as usize };
            if let Some(dst) = out.get_mut(pos..pos + 8) {
                dst.copy_from_slice(&word.to_be_bytes());
            }
            pos += len;
        }
        pos
    }

    pub fn int(buf: &mut Vec<u8>, value: i64) {
        if value >= 0 {
            head(buf, UINT, value as u64);
        } else {
            // -1 - n encodes as major type 1 with argument n.
            head(buf, NEGINT, (-1 - value) as u64);
        }
    }

    pub fn bytes(buf: &mut Vec<u8>, b: &[u8]) {
        head(buf, BYTES, b.len() as u64);
        buf.extend_from_slice(b);
    }

    pub fn text(buf: &mut Vec<u8>, s: &str) {
        head(buf, TEXT, s.len() as u64);
        buf.extend_from_slice(s.as_bytes());
    }

    pub fn extra_key(buf: &mut Vec<u8>, k: &ExtraKey) {
        match k {
            ExtraKey::Str(s) => text(buf, s),
            ExtraKey::Int(i) => int(buf, *i),
            ExtraKey::Bytes(b) => bytes(buf, b),
            ExtraKey::None => buf.push(NULL),
            ExtraKey::Tuple(items) => {
                head(buf, ARRAY, items.len() as u64);
                for item in items {
                    extra_key(buf, item);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn none_hash_matches_vllm() {
        let h = VllmHasher::new(Some("0"), 16).unwrap();
        assert_eq!(
            h.root().to_hex(),
            "4e1195df020de59e0d65a33a4279f1183e7ae4e5d980e309f8b55adff2e61c3e"
        );
        let h = VllmHasher::new(None, 16).unwrap();
        assert_eq!(
            h.root().to_hex(),
            "9bd96a485ad84efdafb72ee48a1d7a69bcead0f8f0433173941b276b9581eef0"
        );
        assert_eq!(
            VllmHasher::new(None, 0).unwrap_err(),
            HashError::ZeroBlockSize
        );
    }

    #[test]
    fn block_bytes_match_the_reference_example() {
        // reference/vllm-hashing-and-events.md §1.3: seed "0", block 16, tokens 1..16.
        let h = VllmHasher::new(Some("0"), 16).unwrap();
        let tokens: Vec<u32> = (1..=16).collect();
        let mut buf = Vec::new();
        encode_block(&mut buf, &h.root().0, &tokens, None);
        let expected = format!(
            "835820{}90{}f6",
            h.root().to_hex(),
            "0102030405060708090a0b0c0d0e0f10"
        );
        assert_eq!(hex::encode(&buf), expected);
        let d = h.hash_block(None, &tokens, None, &mut Vec::new());
        assert_eq!(
            d.to_hex(),
            "202da172482d928bbc42ab25b0151e2b895f13f41002e27b2ceabcfae6d332ea"
        );
        assert_eq!(d.key(), BlockKey(3236607068019569386));
    }

    #[test]
    fn cbor_int_widths_match_ciborium() {
        for v in [
            0u64,
            1,
            23,
            24,
            0xff,
            0x100,
            0xffff,
            0x1_0000,
            0xffff_ffff,
            0x1_0000_0000,
            u64::MAX,
        ] {
            let mut ours = Vec::new();
            cbor::uint(&mut ours, v);
            let mut theirs = Vec::new();
            ciborium::into_writer(&v, &mut theirs).unwrap();
            assert_eq!(ours, theirs, "{v}");
        }
        for v in [-1i64, -24, -25, -256, -257, -65536, -65537, i64::MIN] {
            let mut ours = Vec::new();
            cbor::int(&mut ours, v);
            let mut theirs = Vec::new();
            ciborium::into_writer(&v, &mut theirs).unwrap();
            assert_eq!(ours, theirs, "{v}");
        }
    }

    #[test]
    fn extra_keys_encode_like_ciborium_values() {
        use ciborium::Value;
        let key = ExtraKey::Tuple(vec![
            ExtraKey::Str("mm".into()),
            ExtraKey::Str("img-hash".into()),
            ExtraKey::Int(-3),
            ExtraKey::Bytes(vec![1, 2, 3]),
            ExtraKey::None,
        ]);
        let value = Value::Array(vec![
            Value::Text("mm".into()),
            Value::Text("img-hash".into()),
            Value::Integer((-3).into()),
            Value::Bytes(vec![1, 2, 3]),
            Value::Null,
        ]);
        let mut ours = Vec::new();
        cbor::extra_key(&mut ours, &key);
        let mut theirs = Vec::new();
        ciborium::into_writer(&value, &mut theirs).unwrap();
        assert_eq!(ours, theirs);
    }

    #[test]
    fn lora_and_salt_vector_from_the_reference() {
        // epp-and-kv-index.md §5.4: seed "42", block 16, tokens 1..32, extra keys
        // ("lora-a", "salt1") on block 0 and ("lora-a",) on block 1 (untagged, 0.20-0.29 style).
        let h = VllmHasher::new(Some("42"), 16).unwrap();
        let tokens: Vec<u32> = (1..=32).collect();
        let extras = RequestExtras {
            style: ExtraKeyStyle::Untagged,
            lora: Some(LoraKey {
                name: "lora-a".into(),
                path: "/unused".into(),
            }),
            mm_items: vec![],
            cache_salt: Some("salt1".into()),
        };
        assert_eq!(
            h.keys(&tokens, &extras),
            vec![BlockKey(7385649477401113519), BlockKey(4925844794062788378)]
        );
        // And without extras: the reference's plain vector.
        let mut keys = Vec::new();
        h.keys_into(&tokens, &mut keys);
        assert_eq!(
            keys,
            vec![
                BlockKey(16300212363532267629),
                BlockKey(8671309795006503672)
            ]
        );
    }

    #[test]
    fn mm_offsets_are_relative_to_the_block() {
        let extras = RequestExtras {
            style: ExtraKeyStyle::Tagged,
            lora: None,
            mm_items: vec![MmItem {
                identifier: "img".into(),
                offset: 13,
                length: 10,
            }],
            cache_salt: None,
        };
        assert_eq!(extras.block_extra_keys(0, 8), None);
        let mm = |rel| {
            Some(vec![ExtraKey::Tuple(vec![
                ExtraKey::Str("mm".into()),
                ExtraKey::Str("img".into()),
                ExtraKey::Int(rel),
            ])])
        };
        assert_eq!(extras.block_extra_keys(8, 16), mm(5));
        assert_eq!(extras.block_extra_keys(16, 24), mm(-3));
        assert_eq!(extras.block_extra_keys(24, 32), None);
    }

    #[test]
    fn tokens_mode_golden_key_from_llm_d() {
        // llm-d-kv-cache tests/e2e/uds_tokenizer: block 4, seed "", granite, 7 tokens -> 1 key.
        let h = TokensHasher::new("", "ibm-granite/granite-3.1-8b-instruct", 4).unwrap();
        let mut keys = Vec::new();
        h.keys_into(
            None,
            &[8197, 438, 322, 18926, 432, 45600, 49],
            &[],
            &mut keys,
        );
        assert_eq!(keys, vec![BlockKey(1334984470577408192)]);
    }

    #[test]
    fn tokens_mode_brief_vectors() {
        assert_eq!(fnv1a64(b"42"), 571532774284038691);
        let tokens: Vec<u32> = (1..=32).collect();
        let mut keys = Vec::new();
        TokensHasher::new("42", "Qwen/Qwen3-32B", 16)
            .unwrap()
            .keys_into(None, &tokens, &[], &mut keys);
        assert_eq!(
            keys,
            vec![BlockKey(7334204053829979496), BlockKey(9396288734915886766)]
        );
        keys.clear();
        TokensHasher::new("", "Qwen/Qwen3-0.6B", 16)
            .unwrap()
            .keys_into(None, &tokens, &[], &mut keys);
        assert_eq!(
            keys,
            vec![
                BlockKey(8703025237158681905),
                BlockKey(14853297508287041162)
            ]
        );
        let tokens: Vec<u32> = (1..=128).collect();
        keys.clear();
        TokensHasher::new("42", "Qwen/Qwen3-32B", 64)
            .unwrap()
            .keys_into(None, &tokens, &[], &mut keys);
        assert_eq!(
            keys,
            vec![
                BlockKey(11920603148480554240),
                BlockKey(13186166175184977436)
            ]
        );
    }

    #[test]
    fn two_buffer_chain_equals_block_by_block_hashing() {
        // Token ids of every CBOR width (< 24, one byte, two bytes, four bytes), several block
        // sizes, whole and partial trailing blocks, from the root and from a given parent.
        let mut x = 0x2545_f491_4f6c_dd1d_u64;
        let tokens: Vec<u32> = (0..3000)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                match i % 5 {
                    0 => (x % 24) as u32,
                    1 => (x % 256) as u32,
                    2 => (x % 65_536) as u32,
                    3 => (x % 152_000) as u32,
                    _ => x as u32,
                }
            })
            .collect();
        for bs in [1usize, 3, 16, 23, 24, 64, 256] {
            let h = VllmHasher::new(Some("7"), bs).unwrap();
            for len in [0, bs - 1, bs, 5 * bs + 1, tokens.len()] {
                let toks = &tokens[..len.min(tokens.len())];
                let mut expect = Vec::new();
                let mut prev = *h.root();
                for block in toks.chunks_exact(bs) {
                    prev = h.hash_block(Some(&prev), block, None, &mut Vec::new());
                    expect.push(prev);
                }
                let mut got = Vec::new();
                h.digests_into(None, toks, &RequestExtras::default(), &mut got);
                assert_eq!(got, expect, "block size {bs}, {len} tokens");
                let mut keys = Vec::new();
                h.keys_into(toks, &mut keys);
                assert_eq!(
                    keys,
                    expect.iter().map(BlockDigest::key).collect::<Vec<_>>()
                );
                if let Some(first) = expect.first() {
                    let mut tail = Vec::new();
                    h.digests_into(
                        Some(first),
                        &toks[bs.min(toks.len())..],
                        &RequestExtras::default(),
                        &mut tail,
                    );
                    assert_eq!(tail, expect[1..], "from a parent");
                }
            }
        }
    }

    #[test]
    fn block_size_64_vector_from_the_reference() {
        let h = VllmHasher::new(Some("42"), 64).unwrap();
        let tokens: Vec<u32> = (1..=128).collect();
        let mut keys = Vec::new();
        h.keys_into(&tokens, &mut keys);
        assert_eq!(
            keys,
            vec![
                BlockKey(12133666725276335267),
                BlockKey(5746985983854195892)
            ]
        );
    }
}
