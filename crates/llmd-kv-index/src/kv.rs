//! [`KvIndex`]: the prefix index together with its pods, its key scheme, and the rules for
//! applying vLLM's events to it. This is what the EPP holds and the subscriber feeds.
//!
//! In mode `sha256_cbor` (the default) event hashes are the index keys: a `BlockStored` is
//! stored as published, with no token ids needed. In mode `cbor-fnv` (llm-d's current keys),
//! keys are recomputed from each event's `token_ids` with the model (or LoRA) name in the root,
//! and an engine-hash → key map per pod resolves parents and removals.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use crate::events::{BlockStored, EventBatch, KvEvent, Tier};
use crate::hashing::{
    BlockDigest, BlockKey, HashAlgo, HashError, RequestExtras, TokensHasher, VllmHasher,
};
use crate::index::{IndexConfig, IndexOps, PodIdx, PodRegistry, PrefixIndex, TooManyPods};
use llmd_tokenizer::PromptTokens;

/// KV-cache spec kinds whose blocks are prefix-cache blocks (others, like sliding-window
/// groups, are skipped).
const INDEXED_KINDS: &[&str] = &["full_attention", "mla_attention", "sink_full_attention"];

/// Configuration of a [`KvIndex`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvIndexConfig {
    /// Key scheme.
    pub algo: HashAlgo,
    /// Tokens per block; must equal the engines' `--block-size` in mode `sha256_cbor`.
    pub block_size: usize,
    /// The engines' `PYTHONHASHSEED` (`sha256_cbor`) or llm-d's `hashSeed` (`cbor-fnv`);
    /// `None`: unset.
    pub hash_seed: Option<String>,
    /// Index memory and sharding.
    pub index: IndexConfig,
}

impl Default for KvIndexConfig {
    fn default() -> Self {
        Self {
            algo: HashAlgo::Sha256Cbor,
            block_size: crate::hashing::DEFAULT_BLOCK_SIZE,
            hash_seed: None,
            index: IndexConfig::default(),
        }
    }
}

/// What applying one batch did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ApplyOutcome {
    /// Blocks stored.
    pub stored: u64,
    /// Blocks removed.
    pub removed: u64,
    /// `AllBlocksCleared` events applied.
    pub cleared: u64,
    /// Events skipped, with why in [`SkipReason`] counters.
    pub skipped_events: u64,
}

/// Why an event was not applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    /// A KV-cache group that is not full attention (sliding window, Mamba, ...).
    GroupKind,
    /// The event's block size differs from the index's (its keys mean other blocks).
    BlockSize,
    /// `token_ids` do not fill the stored blocks (mode `cbor-fnv` needs them).
    TokenCount,
    /// Mode `cbor-fnv`: the parent block is unknown, so the chain cannot be continued.
    UnknownParent,
}

impl SkipReason {
    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::GroupKind => "group_kind",
            SkipReason::BlockSize => "block_size",
            SkipReason::TokenCount => "token_count",
            SkipReason::UnknownParent => "unknown_parent",
        }
    }
}

/// The prefix index with its pod registry and key scheme.
pub struct KvIndex {
    config: KvIndexConfig,
    index: PrefixIndex,
    pods: PodRegistry,
    vllm: VllmHasher,
    /// Mode `cbor-fnv`: a hasher per model (or LoRA) name.
    tokens_hashers: Mutex<HashMap<String, TokensHasher>>,
    /// Mode `cbor-fnv`: (pod, engine hash) → index key.
    engine_keys: Mutex<HashMap<(PodIdx, u64), BlockKey>>,
    skipped: [AtomicU64; 4],
    /// Identifies the hashing configuration, so cached block digests are only reused under it.
    fingerprint: u64,
}

impl std::fmt::Debug for KvIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvIndex")
            .field("config", &self.config)
            .field("index", &self.index)
            .finish()
    }
}

/// Errors of [`KvIndex`].
#[derive(Debug, thiserror::Error)]
pub enum KvIndexError {
    /// Bad hashing configuration.
    #[error(transparent)]
    Hash(#[from] HashError),
    /// Pod registry full.
    #[error(transparent)]
    TooManyPods(#[from] TooManyPods),
}

impl KvIndex {
    /// A new, empty index.
    pub fn new(config: KvIndexConfig) -> Result<Self, KvIndexError> {
        let vllm = VllmHasher::new(config.hash_seed.as_deref(), config.block_size)?;
        Ok(Self {
            index: PrefixIndex::new(config.index),
            pods: PodRegistry::default(),
            vllm,
            tokens_hashers: Mutex::new(HashMap::new()),
            engine_keys: Mutex::new(HashMap::new()),
            skipped: Default::default(),
            fingerprint: xxhash_rust::xxh3::xxh3_64(
                format!(
                    "{:?}/{}/{:?}",
                    config.algo, config.block_size, config.hash_seed
                )
                .as_bytes(),
            ),
            config,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &KvIndexConfig {
        &self.config
    }

    /// The underlying index.
    pub fn index(&self) -> &PrefixIndex {
        &self.index
    }

    /// The pod registry.
    pub fn pods(&self) -> &PodRegistry {
        &self.pods
    }

    /// Events skipped for `reason` so far.
    pub fn skipped(&self, reason: SkipReason) -> u64 {
        self.skipped[reason as usize].load(Ordering::Relaxed)
    }

    fn skip(&self, reason: SkipReason) {
        self.skipped[reason as usize].fetch_add(1, Ordering::Relaxed);
        metrics::counter!(llmd_telemetry::names::kv_cache::EVENTS_SKIPPED.name, "reason" => reason.as_str()).increment(1);
    }

    fn tokens_hasher(&self, model: &str) -> Result<TokensHasher, HashError> {
        let mut hashers = self.tokens_hashers.lock();
        if let Some(h) = hashers.get(model) {
            return Ok(h.clone());
        }
        let h = TokensHasher::new(
            self.config.hash_seed.as_deref().unwrap_or(""),
            model,
            self.config.block_size,
        )?;
        hashers.insert(model.to_owned(), h.clone());
        Ok(h)
    }

    /// The index keys of a request's prompt (full blocks only), as the index stores them.
    /// `model` is the request's target model (or LoRA adapter name).
    pub fn request_keys(
        &self,
        model: &str,
        tokens: &[u32],
        extras: &RequestExtras,
    ) -> Vec<BlockKey> {
        match self.config.algo {
            HashAlgo::Sha256Cbor if extras.is_empty() => {
                let mut out = Vec::with_capacity(tokens.len() / self.config.block_size);
                self.vllm.keys_into(tokens, &mut out);
                out
            }
            HashAlgo::Sha256Cbor => self.vllm.keys(tokens, extras),
            HashAlgo::CborFnv => {
                let mut out = Vec::new();
                if let Ok(h) = self.tokens_hasher(model) {
                    h.keys_into(None, tokens, &[], &mut out);
                }
                out
            }
        }
    }

    /// The keys of a prompt tokenized through a [`llmd_tokenizer::PromptCache`]: block digests
    /// of the cached prefix are reused (computed once per cache entry), so only the blocks after
    /// the resume point are hashed. Same result as [`Self::request_keys`] on all the tokens.
    pub fn prompt_keys(
        &self,
        model: &str,
        tokens: &PromptTokens,
        extras: &RequestExtras,
    ) -> Vec<BlockKey> {
        if self.config.algo != HashAlgo::Sha256Cbor || !extras.is_empty() {
            return self.request_keys(model, &tokens.to_vec(), extras);
        }
        let bs = self.config.block_size;
        let Some((entry, n)) = tokens.prefix() else {
            let mut out = Vec::with_capacity(tokens.len() / bs);
            self.vllm.keys_into(tokens.tail(), &mut out);
            return out;
        };
        let digests = match entry.annotation::<Vec<BlockDigest>>(self.fingerprint) {
            Some(d) => d,
            None => {
                let mut d = Vec::with_capacity(entry.tokens().len() / bs);
                self.vllm
                    .digests_into(None, entry.tokens(), &RequestExtras::default(), &mut d);
                let d = std::sync::Arc::new(d);
                // Keeps the longer of two lists, as below.
                entry.set_annotation(self.fingerprint, d.clone(), |current| {
                    d.len() > current.len()
                });
                d
            }
        };
        let reused = (n / bs).min(digests.len());
        let total = tokens.len() / bs;
        let mut keys = Vec::with_capacity(total);
        keys.extend(digests[..reused].iter().map(BlockDigest::key));
        let rest = tokens.slice_to_vec(reused * bs..total * bs);
        let mut fresh = Vec::with_capacity(total - reused);
        self.vllm.digests_into(
            reused.checked_sub(1).map(|i| &digests[i]),
            &rest,
            &RequestExtras::default(),
            &mut fresh,
        );
        keys.extend(fresh.iter().map(BlockDigest::key));
        if let Some(stored) = tokens.stored()
            && !std::sync::Arc::ptr_eq(stored, entry)
        {
            let mut all = Vec::with_capacity(reused + fresh.len());
            all.extend_from_slice(&digests[..reused]);
            all.extend(fresh);
            let longer = all.len();
            stored.set_annotation(self.fingerprint, std::sync::Arc::new(all), |current| {
                longer > current.len()
            });
        }
        keys
    }

    /// For each named pod, the number of consecutive `keys` from block 0 it holds. Unknown
    /// pods get 0.
    pub fn lookup(&self, keys: &[BlockKey], pods: &[&str]) -> Vec<u32> {
        let mut resolved = Vec::with_capacity(pods.len());
        self.pods.get_many(pods, &mut resolved);
        let idxs: Vec<PodIdx> = resolved.iter().flatten().copied().collect();
        let mut counts = self.index.lookup(keys, &idxs).into_iter();
        resolved
            .iter()
            .map(|r| match r {
                Some(_) => counts.next().unwrap_or(0),
                None => 0,
            })
            .collect()
    }

    /// Drops every entry of `pod` (e.g. its engine restarted) but keeps it registered.
    pub fn clear_pod(&self, pod: &str) {
        if let Some(idx) = self.pods.get(pod) {
            self.index.clear_pod(idx);
            self.engine_keys.lock().retain(|(p, _), _| *p != idx);
        }
    }

    /// Forgets `pod` entirely (it left the pool).
    pub fn remove_pod(&self, pod: &str) {
        self.clear_pod(pod);
        self.pods.forget(pod);
    }

    /// Applies one decoded batch published by `pod` for `model`.
    pub fn apply_batch(
        &self,
        pod: &str,
        model: &str,
        batch: &EventBatch,
    ) -> Result<ApplyOutcome, KvIndexError> {
        let idx = self.pods.intern(pod)?;
        let mut out = ApplyOutcome::default();
        for event in &batch.events {
            match event {
                KvEvent::BlockStored(e) => match self.store(idx, model, e) {
                    Ok(n) => out.stored += n,
                    Err(reason) => {
                        self.skip(reason);
                        out.skipped_events += 1;
                    }
                },
                KvEvent::BlockRemoved(e) => {
                    let keys: Vec<BlockKey> = match self.config.algo {
                        HashAlgo::Sha256Cbor => e.block_hashes.clone(),
                        HashAlgo::CborFnv => {
                            let mut map = self.engine_keys.lock();
                            e.block_hashes
                                .iter()
                                .filter_map(|h| map.remove(&(idx, h.0)))
                                .collect()
                        }
                    };
                    self.index.remove(idx, e.tier(), &keys);
                    out.removed += keys.len() as u64;
                }
                KvEvent::AllBlocksCleared => {
                    self.index.clear_pod(idx);
                    self.engine_keys.lock().retain(|(p, _), _| *p != idx);
                    out.cleared += 1;
                }
            }
        }
        Ok(out)
    }

    fn store(&self, pod: PodIdx, model: &str, e: &BlockStored) -> Result<u64, SkipReason> {
        if let Some(kind) = e.kv_cache_spec_kind.as_deref()
            && !INDEXED_KINDS.contains(&kind)
        {
            return Err(SkipReason::GroupKind);
        }
        let tier: Tier = e.tier();
        match self.config.algo {
            HashAlgo::Sha256Cbor => {
                if e.block_size as usize != self.config.block_size {
                    return Err(SkipReason::BlockSize);
                }
                self.index
                    .store_after(pod, tier, e.parent_block_hash, &e.block_hashes);
                Ok(e.block_hashes.len() as u64)
            }
            HashAlgo::CborFnv => {
                let n = e.block_hashes.len();
                if e.token_ids.len() != n * e.block_size as usize || n == 0 {
                    return Err(SkipReason::TokenCount);
                }
                let model = e.lora_name.as_deref().unwrap_or(model);
                let hasher = self
                    .tokens_hasher(model)
                    .map_err(|_| SkipReason::BlockSize)?;
                let mut map = self.engine_keys.lock();
                let parent = match e.parent_block_hash {
                    None => None,
                    Some(p) => Some(*map.get(&(pod, p.0)).ok_or(SkipReason::UnknownParent)?),
                };
                let mut keys = Vec::with_capacity(e.token_ids.len() / self.config.block_size);
                hasher.keys_into(parent, &e.token_ids, &[], &mut keys);
                if keys.is_empty() {
                    return Err(SkipReason::TokenCount);
                }
                // Engine block i maps to the key covering its last token (proportional when
                // the block sizes differ, 1:1 when they match).
                for (i, h) in e.block_hashes.iter().enumerate() {
                    let last_token = (i + 1) * e.block_size as usize;
                    let k = last_token / self.config.block_size;
                    if k >= 1 {
                        map.insert((pod, h.0), keys[(k - 1).min(keys.len() - 1)]);
                    }
                }
                drop(map);
                self.index.store_after(pod, tier, parent, &keys);
                Ok(keys.len() as u64)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::BlockRemoved;

    fn stored(
        hashes: Vec<BlockKey>,
        parent: Option<BlockKey>,
        tokens: Vec<u32>,
        block_size: u32,
    ) -> KvEvent {
        KvEvent::BlockStored(BlockStored {
            block_hashes: hashes,
            parent_block_hash: parent,
            token_ids: tokens,
            block_size,
            medium: Some("GPU".into()),
            ..Default::default()
        })
    }

    #[test]
    fn vllm_mode_applies_event_hashes_and_scores_requests() {
        let kv = KvIndex::new(KvIndexConfig {
            block_size: 16,
            hash_seed: Some("0".into()),
            ..Default::default()
        })
        .unwrap();
        let tokens: Vec<u32> = (1000..1040).collect();
        let keys = kv.request_keys("m", &tokens, &RequestExtras::default());
        assert_eq!(keys.len(), 2);
        // The engine stores the first two blocks, as in vLLM's own vector.
        let batch = EventBatch {
            events: vec![stored(keys.clone(), None, tokens[..32].to_vec(), 16)],
            ..Default::default()
        };
        assert_eq!(kv.apply_batch("pod-a", "m", &batch).unwrap().stored, 2);
        assert_eq!(kv.lookup(&keys, &["pod-a", "pod-b"]), vec![2, 0]);
        // Blocks of another size or a sliding-window group are skipped.
        let mut sw = stored(vec![BlockKey(1)], None, vec![], 16);
        if let KvEvent::BlockStored(s) = &mut sw {
            s.kv_cache_spec_kind = Some("sliding_window".into());
        }
        let batch = EventBatch {
            events: vec![stored(vec![BlockKey(9)], None, vec![], 32), sw],
            ..Default::default()
        };
        assert_eq!(
            kv.apply_batch("pod-a", "m", &batch).unwrap().skipped_events,
            2
        );
        assert_eq!(kv.skipped(SkipReason::BlockSize), 1);
        assert_eq!(kv.skipped(SkipReason::GroupKind), 1);
        // Removal and clear.
        let batch = EventBatch {
            events: vec![KvEvent::BlockRemoved(BlockRemoved {
                block_hashes: vec![keys[1]],
                medium: None,
                group_idx: None,
            })],
            ..Default::default()
        };
        kv.apply_batch("pod-a", "m", &batch).unwrap();
        assert_eq!(kv.lookup(&keys, &["pod-a"]), vec![1]);
        kv.apply_batch(
            "pod-a",
            "m",
            &EventBatch {
                events: vec![KvEvent::AllBlocksCleared],
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(kv.lookup(&keys, &["pod-a"]), vec![0]);
    }

    #[test]
    fn tokens_mode_recomputes_keys_and_follows_parents() {
        let kv = KvIndex::new(KvIndexConfig {
            algo: HashAlgo::CborFnv,
            block_size: 4,
            ..Default::default()
        })
        .unwrap();
        let tokens: Vec<u32> = (1..=12).collect();
        let keys = kv.request_keys("model-x", &tokens, &RequestExtras::default());
        assert_eq!(keys.len(), 3);
        // Engine hashes are opaque here (e.g. an unaligned PYTHONHASHSEED).
        let first = EventBatch {
            events: vec![stored(
                vec![BlockKey(11), BlockKey(12)],
                None,
                tokens[..8].to_vec(),
                4,
            )],
            ..Default::default()
        };
        kv.apply_batch("p", "model-x", &first).unwrap();
        let second = EventBatch {
            events: vec![stored(
                vec![BlockKey(13)],
                Some(BlockKey(12)),
                tokens[8..].to_vec(),
                4,
            )],
            ..Default::default()
        };
        kv.apply_batch("p", "model-x", &second).unwrap();
        assert_eq!(kv.lookup(&keys, &["p"]), vec![3]);
        // An unknown parent cannot be chained: skipped.
        let orphan = EventBatch {
            events: vec![stored(
                vec![BlockKey(99)],
                Some(BlockKey(98)),
                vec![1, 2, 3, 4],
                4,
            )],
            ..Default::default()
        };
        assert_eq!(
            kv.apply_batch("p", "model-x", &orphan)
                .unwrap()
                .skipped_events,
            1
        );
        assert_eq!(kv.skipped(SkipReason::UnknownParent), 1);
        // Removal maps engine hashes back to keys.
        let removed = EventBatch {
            events: vec![KvEvent::BlockRemoved(BlockRemoved {
                block_hashes: vec![BlockKey(12)],
                medium: None,
                group_idx: None,
            })],
            ..Default::default()
        };
        kv.apply_batch("p", "model-x", &removed).unwrap();
        assert_eq!(kv.lookup(&keys, &["p"]), vec![1]);
        // Another model's keys do not collide.
        assert_ne!(
            kv.request_keys("model-y", &tokens, &RequestExtras::default()),
            keys
        );
    }

    #[test]
    fn removing_a_pod_forgets_it() {
        let kv = KvIndex::new(KvIndexConfig {
            block_size: 2,
            ..Default::default()
        })
        .unwrap();
        let batch = EventBatch {
            events: vec![stored(vec![BlockKey(1)], None, vec![1, 2], 2)],
            ..Default::default()
        };
        kv.apply_batch("gone", "m", &batch).unwrap();
        kv.remove_pod("gone");
        assert_eq!(kv.pods().get("gone"), None);
        assert_eq!(kv.index().snapshot().entries, 0);
    }
}
