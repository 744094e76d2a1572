//! The KV block pool with prefix caching, as vLLM's `BlockPool` / `KVCacheManager` behave
//! (`vllm/v1/core/block_pool.py`, `kv_cache_manager.py`):
//!
//! - `num_gpu_blocks` blocks of `block_size` tokens. A full block that has been computed is
//!   *cached* under its hash (`BlockStored` event) and stays cached after its requests finish,
//!   while it sits in the free queue.
//! - A new request reuses the longest run of cached blocks from block 0, capped so that at least
//!   the last prompt token is computed (vLLM recomputes it for the logits).
//! - The free queue is LRU: blocks are appended when their last user frees them (a request
//!   frees its blocks tail first, so a prompt's last blocks are evicted before its first), and
//!   allocation takes from the front, evicting the cached block there (`BlockRemoved` event).
//! - Usage is the fraction of blocks not in the free queue (`vllm:kv_cache_usage_perc`).

use std::collections::{BTreeMap, HashMap};

use llmd_kv_index::events::{BlockRemoved, BlockStored, KvEvent, WireValue};
use llmd_kv_index::hashing::{BlockDigest, BlockKey};

/// A block id.
pub type BlockId = u32;

/// What a `BlockStored` event says about the request besides hashes and tokens.
#[derive(Debug, Clone, Copy, Default)]
pub struct StoredMeta<'a> {
    /// The request's LoRA adapter: `lora_id` (`lora_int_id`) and `lora_name`.
    pub lora: Option<(i64, &'a str)>,
    /// Published extra keys per block of the `cache_full_blocks` call (empty: nil for all).
    pub extra_keys: &'a [WireValue],
}

#[derive(Debug, Clone, Default)]
struct Block {
    ref_cnt: u32,
    /// Set while the block is cached.
    hash: Option<BlockDigest>,
    /// Key in `free` while the block is in the free queue.
    free_seq: Option<u64>,
}

/// A run of newly cached blocks, becoming one `BlockStored`.
#[derive(Debug, Default)]
struct Stored {
    keys: Vec<BlockKey>,
    tokens: Vec<u32>,
    extra: Vec<WireValue>,
    parent: Option<BlockKey>,
}

/// The pool.
#[derive(Debug)]
pub struct BlockPool {
    block_size: usize,
    blocks: Vec<Block>,
    /// Free queue: order of freeing → block (front = least recently freed = evicted first).
    free: BTreeMap<u64, BlockId>,
    next_free_seq: u64,
    cached: HashMap<BlockDigest, BlockId>,
    events: Vec<KvEvent>,
}

impl BlockPool {
    /// `num_blocks` blocks of `block_size` tokens, all free.
    pub fn new(num_blocks: usize, block_size: usize) -> Self {
        let mut pool = Self {
            block_size,
            blocks: vec![Block::default(); num_blocks],
            free: BTreeMap::new(),
            next_free_seq: 0,
            cached: HashMap::new(),
            events: Vec::new(),
        };
        for id in 0..num_blocks as BlockId {
            pool.push_free(id);
        }
        pool
    }

    fn push_free(&mut self, id: BlockId) {
        let seq = self.next_free_seq;
        self.next_free_seq += 1;
        self.free.insert(seq, id);
        self.blocks[id as usize].free_seq = Some(seq);
    }

    /// Tokens per block.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Total blocks.
    pub fn num_blocks(&self) -> usize {
        self.blocks.len()
    }

    /// Blocks in the free queue (cached or not).
    pub fn num_free(&self) -> usize {
        self.free.len()
    }

    /// `vllm:kv_cache_usage_perc`: fraction of blocks in use, 0..1.
    pub fn usage(&self) -> f64 {
        if self.blocks.is_empty() {
            0.0
        } else {
            1.0 - self.free.len() as f64 / self.blocks.len() as f64
        }
    }

    /// How many of the prompt's leading blocks are cached, given the digests of its full blocks
    /// and its length: a cache hit may cover at most `prompt_len - 1` tokens.
    pub fn cached_prefix(&self, digests: &[BlockDigest], prompt_len: usize) -> usize {
        let max_blocks = prompt_len.saturating_sub(1) / self.block_size;
        digests
            .iter()
            .take(max_blocks)
            .take_while(|d| self.cached.contains_key(*d))
            .count()
    }

    /// Takes the cached blocks of `digests[..hits]` for a request (ref count up, out of the free
    /// queue).
    pub fn touch(&mut self, digests: &[BlockDigest]) -> Vec<BlockId> {
        let mut out = Vec::with_capacity(digests.len());
        for d in digests {
            let Some(&id) = self.cached.get(d) else { break };
            let b = &mut self.blocks[id as usize];
            if let Some(seq) = b.free_seq.take() {
                self.free.remove(&seq);
            }
            b.ref_cnt += 1;
            out.push(id);
        }
        out
    }

    /// Allocates `n` new blocks, evicting cached free blocks as needed. `None` (nothing taken)
    /// when fewer than `n` blocks are free.
    pub fn allocate(&mut self, n: usize) -> Option<Vec<BlockId>> {
        if n > self.free.len() {
            return None;
        }
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let (_, id) = self.free.pop_first()?;
            let b = &mut self.blocks[id as usize];
            b.free_seq = None;
            b.ref_cnt = 1;
            if let Some(hash) = b.hash.take() {
                self.cached.remove(&hash);
                self.events.push(KvEvent::BlockRemoved(BlockRemoved {
                    block_hashes: vec![hash.key()],
                    medium: Some("GPU".into()),
                    group_idx: Some(0),
                }));
            }
            out.push(id);
        }
        Some(out)
    }

    /// Marks `blocks[i]` as holding the full block with `digests[i]` (whose tokens are
    /// `tokens[i * block_size..]`), caching it. Blocks whose hash is already cached elsewhere are
    /// left uncached, as vLLM does. Emits one `BlockStored` for each newly cached run.
    pub fn cache_full_blocks(
        &mut self,
        blocks: &[BlockId],
        digests: &[BlockDigest],
        parent: Option<&BlockDigest>,
        tokens: &[u32],
        meta: StoredMeta<'_>,
    ) {
        let mut run = Stored::default();
        let mut prev = parent.copied();
        for (i, (&id, d)) in blocks.iter().zip(digests).enumerate() {
            let b = &mut self.blocks[id as usize];
            if b.hash.is_none() && !self.cached.contains_key(d) {
                b.hash = Some(*d);
                self.cached.insert(*d, id);
                if run.keys.is_empty() {
                    run.parent = prev.map(|p| p.key());
                }
                run.keys.push(d.key());
                run.extra
                    .push(meta.extra_keys.get(i).cloned().unwrap_or(WireValue::Nil));
                let start = i * self.block_size;
                run.tokens.extend_from_slice(
                    tokens
                        .get(start..start + self.block_size)
                        .unwrap_or_default(),
                );
            } else if !run.keys.is_empty() {
                self.flush_stored(std::mem::take(&mut run), meta);
            }
            prev = Some(*d);
        }
        if !run.keys.is_empty() {
            self.flush_stored(run, meta);
        }
    }

    fn flush_stored(&mut self, run: Stored, meta: StoredMeta<'_>) {
        self.events.push(KvEvent::BlockStored(BlockStored {
            block_hashes: run.keys,
            parent_block_hash: run.parent,
            token_ids: run.tokens,
            block_size: self.block_size as u32,
            lora_id: meta.lora.map(|(id, _)| id),
            medium: Some("GPU".into()),
            lora_name: meta.lora.map(|(_, name)| name.to_owned()),
            extra_keys: Some(run.extra),
            group_idx: Some(0),
            kv_cache_spec_kind: None,
            kv_cache_spec_sliding_window: None,
        }));
    }

    /// Releases a request's blocks, last block first (so its tail is evicted before its head).
    pub fn free(&mut self, blocks: &[BlockId]) {
        for &id in blocks.iter().rev() {
            let b = &mut self.blocks[id as usize];
            b.ref_cnt = b.ref_cnt.saturating_sub(1);
            if b.ref_cnt == 0 && b.free_seq.is_none() {
                self.push_free(id);
            }
        }
    }

    /// Drops every cached hash (`reset_prefix_cache`): one `AllBlocksCleared`.
    pub fn reset_prefix_cache(&mut self) {
        for b in &mut self.blocks {
            b.hash = None;
        }
        self.cached.clear();
        self.events.push(KvEvent::AllBlocksCleared);
    }

    /// Events since the last call, in order.
    pub fn take_events(&mut self) -> Vec<KvEvent> {
        std::mem::take(&mut self.events)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use llmd_kv_index::hashing::{RequestExtras, VllmHasher};

    fn digests(tokens: &[u32]) -> Vec<BlockDigest> {
        let mut d = Vec::new();
        VllmHasher::new(Some("0"), 4).unwrap().digests_into(
            None,
            tokens,
            &RequestExtras::default(),
            &mut d,
        );
        d
    }

    #[test]
    fn store_hit_free_and_evict_like_vllm() {
        let mut pool = BlockPool::new(4, 4);
        let prompt: Vec<u32> = (0..9).collect(); // 2 full blocks + 1 token
        let d = digests(&prompt);
        assert_eq!(pool.cached_prefix(&d, prompt.len()), 0);
        let blocks = pool.allocate(3).unwrap();
        pool.cache_full_blocks(&blocks[..2], &d, None, &prompt, StoredMeta::default());
        let events = pool.take_events();
        assert_eq!(events.len(), 1);
        let KvEvent::BlockStored(s) = &events[0] else {
            panic!()
        };
        assert_eq!(s.block_hashes, vec![d[0].key(), d[1].key()]);
        assert_eq!(s.parent_block_hash, None);
        assert_eq!(s.token_ids, prompt[..8].to_vec());
        assert!((pool.usage() - 0.75).abs() < 1e-9);
        pool.free(&blocks);
        assert_eq!(pool.usage(), 0.0);

        // Same prompt again: both blocks hit (9 tokens > 8 cached).
        assert_eq!(pool.cached_prefix(&d, 9), 2);
        // An 8-token prompt can hit only 1 block: its last token must be computed.
        assert_eq!(pool.cached_prefix(&d, 8), 1);

        // Filling the pool evicts the tail block first (freed first = block 1's... tail order).
        let new = pool.allocate(3).unwrap();
        let removed: Vec<u64> = pool
            .take_events()
            .into_iter()
            .filter_map(|e| match e {
                KvEvent::BlockRemoved(r) => Some(r.block_hashes[0].0),
                _ => None,
            })
            .collect();
        // Free order was [uncached block, block 1, block 0] behind the never-used block 3:
        // allocating 3 takes block 3, the uncached one, then evicts block 1.
        assert_eq!(removed, vec![d[1].key().0]);
        assert_eq!(pool.cached_prefix(&d, 9), 1);
        assert!(pool.allocate(2).is_none(), "only one block left");
        pool.free(&new);
    }

    #[test]
    fn touching_cached_blocks_shares_them() {
        let mut pool = BlockPool::new(8, 4);
        let prompt: Vec<u32> = (100..116).collect();
        let d = digests(&prompt);
        let a = pool.allocate(4).unwrap();
        pool.cache_full_blocks(&a, &d, None, &prompt, StoredMeta::default());
        pool.take_events();
        let b = pool.touch(&d[..3]);
        assert_eq!(b, a[..3].to_vec());
        pool.free(&a);
        assert_eq!(
            pool.num_free(),
            5,
            "three blocks still held by the second request"
        );
        pool.free(&b);
        assert_eq!(pool.num_free(), 8);
        // A duplicate computation of a cached block is not re-cached (no event).
        let c = pool.allocate(1).unwrap();
        pool.cache_full_blocks(&c, &d[..1], None, &prompt, StoredMeta::default());
        assert!(pool.take_events().is_empty());
    }

    #[test]
    fn continuing_chains_name_their_parent() {
        let mut pool = BlockPool::new(8, 4);
        let tokens: Vec<u32> = (0..12).collect();
        let d = digests(&tokens);
        let blocks = pool.allocate(3).unwrap();
        pool.cache_full_blocks(
            &blocks[..1],
            &d[..1],
            None,
            &tokens[..4],
            StoredMeta::default(),
        );
        pool.cache_full_blocks(
            &blocks[1..],
            &d[1..],
            Some(&d[0]),
            &tokens[4..],
            StoredMeta::default(),
        );
        let events = pool.take_events();
        let KvEvent::BlockStored(s) = &events[1] else {
            panic!()
        };
        assert_eq!(s.parent_block_hash, Some(d[0].key()));
        assert_eq!(s.block_hashes, vec![d[1].key(), d[2].key()]);
        pool.reset_prefix_cache();
        assert_eq!(pool.take_events(), vec![KvEvent::AllBlocksCleared]);
        assert_eq!(pool.cached_prefix(&d, 12), 0);
    }
}
