//! The prefix index: block key → the pods (and tiers) holding that block.
//!
//! # Data structure
//!
//! `N` shards (a power of two, 32 by default), each a `hashbrown::HashTable` of 32-byte entries
//! `{ key: u64, holders: Holders (16 B), last_used: AtomicU64 }` behind a `parking_lot::RwLock`.
//! `Holders` keeps up to three `(pod, tier mask)` pairs inline and spills to the heap beyond.
//! A key's shard comes from bits 32..37 of its (seeded) hash, so shards and hashbrown's control
//! bytes use different bits.
//!
//! # Concurrency: writes never block reads for long
//!
//! - **Lookups** take shard *read* locks only, lazily, at most once per shard per lookup, and
//!   record recency with a relaxed atomic store into the entry. Many lookups run in parallel.
//! - **Writes** (one KV event's blocks) take one shard's write lock per block, for one hash-table
//!   operation. Eviction runs under one shard's write lock and touches only that shard.
//! - Clearing a pod walks the shards one at a time.
//!
//! # Memory bound
//!
//! The byte budget is split evenly over the shards. Each shard's table may grow only to the
//! largest power-of-two bucket count whose allocation fits its share; when it holds as many
//! entries as that table can (7/8 of the buckets), the least recently used 1/16 of its entries
//! (by `last_used`, stamped from the shard's logical clock on store and lookup) are evicted in
//! one pass before the next insertion. At that steady state an entry costs 33/0.875 ≈ 38 bytes,
//! shared by the pods holding the block. Heap-spilled holder lists are counted too.

mod holders;
mod pods;
mod reference;

pub use pods::{PodIdx, PodRegistry, TooManyPods};
pub use reference::ReferenceIndex;

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};

use hashbrown::HashTable;
use parking_lot::{RwLock, RwLockReadGuard};

use crate::events::Tier;
use crate::hashing::BlockKey;
use holders::Holders;

/// Default byte budget of the index.
pub const DEFAULT_MAX_BYTES: usize = 512 << 20;
/// Default number of shards.
pub const DEFAULT_SHARDS: usize = 32;

/// Index settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexConfig {
    /// Upper bound of the memory the index accounts for its entries, in bytes.
    pub max_bytes: usize,
    /// Number of shards (rounded up to a power of two, at most 256).
    pub shards: usize,
}

impl Default for IndexConfig {
    fn default() -> Self {
        Self {
            max_bytes: DEFAULT_MAX_BYTES,
            shards: DEFAULT_SHARDS,
        }
    }
}

/// The operations every index implementation offers (the real one and [`ReferenceIndex`], which
/// the tests compare it against).
pub trait IndexOps {
    /// Records that `pod` holds `keys` in `tier`.
    fn store(&self, pod: PodIdx, tier: Tier, keys: &[BlockKey]);
    /// Records that `pod` no longer holds `keys` in `tier`.
    fn remove(&self, pod: PodIdx, tier: Tier, keys: &[BlockKey]);
    /// Drops every entry of `pod`.
    fn clear_pod(&self, pod: PodIdx);
    /// For each candidate, the number of consecutive `keys` from `keys[0]` it holds (any tier).
    fn lookup(&self, keys: &[BlockKey], candidates: &[PodIdx]) -> Vec<u32>;
}

/// Counters of the index (cumulative) and its current size.
#[derive(Debug, Default)]
pub struct IndexStats {
    /// (block, pod) entries added.
    pub admissions: AtomicU64,
    /// (block, pod) entries evicted for the budget.
    pub evictions: AtomicU64,
    /// (block, pod) entries removed by events or pod clears.
    pub removals: AtomicU64,
    /// Lookups.
    pub lookups: AtomicU64,
    /// Lookups where a candidate held the first block.
    pub lookup_hits: AtomicU64,
    /// Consecutive blocks (from block 0) held by the best candidate, summed over lookups.
    pub hit_blocks: AtomicU64,
}

/// A point-in-time view of [`IndexStats`] plus size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IndexSnapshot {
    /// (block, pod) entries added.
    pub admissions: u64,
    /// (block, pod) entries evicted.
    pub evictions: u64,
    /// (block, pod) entries removed by events or pod clears.
    pub removals: u64,
    /// Lookups.
    pub lookups: u64,
    /// Lookups with a hit on block 0.
    pub lookup_hits: u64,
    /// Consecutive blocks (from block 0) held by the best candidate, summed over lookups.
    pub hit_blocks: u64,
    /// Distinct blocks held.
    pub blocks: u64,
    /// (block, pod) entries held.
    pub entries: u64,
    /// Bytes accounted (tables + spilled holder lists).
    pub bytes: u64,
}

struct Entry {
    key: u64,
    holders: Holders,
    last_used: AtomicU64,
}

struct Shard {
    table: HashTable<Entry>,
    /// Logical clock: bumped by every store; lookups stamp entries with its current value.
    clock: AtomicU64,
    /// Most entries this shard may hold (7/8 of its largest allowed bucket count).
    max_entries: usize,
    /// This shard's share of the byte budget.
    budget_bytes: usize,
    /// (block, pod) entries.
    entries: u64,
    /// Heap bytes of spilled holder lists.
    heap_bytes: usize,
    /// Reused by eviction.
    scratch: Vec<u64>,
}

/// The concurrent, memory-bounded prefix index.
pub struct PrefixIndex {
    shards: Box<[RwLock<Shard>]>,
    shard_shift: u32,
    hasher: foldhash::fast::FixedState,
    stats: IndexStats,
}

impl std::fmt::Debug for PrefixIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrefixIndex")
            .field("shards", &self.shards.len())
            .field("snapshot", &self.snapshot())
            .finish()
    }
}

const ENTRY_BYTES: usize = std::mem::size_of::<Entry>();

impl PrefixIndex {
    /// A new, empty index.
    pub fn new(config: IndexConfig) -> Self {
        let shards = config.shards.clamp(1, 256).next_power_of_two();
        let per_shard = config.max_bytes / shards;
        // Largest power-of-two bucket count whose table (entries + one control byte each) fits.
        let mut buckets = 8usize;
        while (buckets * 2) * (ENTRY_BYTES + 1) <= per_shard {
            buckets *= 2;
        }
        let max_entries = if buckets * (ENTRY_BYTES + 1) <= per_shard {
            buckets / 8 * 7
        } else {
            4
        };
        let shards: Box<[RwLock<Shard>]> = (0..shards)
            .map(|_| {
                RwLock::new(Shard {
                    table: HashTable::new(),
                    clock: AtomicU64::new(1),
                    max_entries,
                    budget_bytes: per_shard,
                    entries: 0,
                    heap_bytes: 0,
                    scratch: Vec::new(),
                })
            })
            .collect();
        let seed = foldhash::fast::RandomState::default().hash_one(0x6c6c_6d64_u64);
        Self {
            shard_shift: 32,
            shards,
            hasher: foldhash::fast::FixedState::with_seed(seed),
            stats: IndexStats::default(),
        }
    }

    /// Most distinct blocks the index keeps before evicting.
    pub fn max_blocks(&self) -> usize {
        self.shards.iter().map(|s| s.read().max_entries).sum()
    }

    #[inline]
    fn hash(&self, key: u64) -> u64 {
        self.hasher.hash_one(key)
    }

    #[inline]
    fn shard_of(&self, hash: u64) -> usize {
        (hash >> self.shard_shift) as usize & (self.shards.len() - 1)
    }

    /// Counters and size now.
    pub fn snapshot(&self) -> IndexSnapshot {
        let mut s = IndexSnapshot {
            admissions: self.stats.admissions.load(Ordering::Relaxed),
            evictions: self.stats.evictions.load(Ordering::Relaxed),
            removals: self.stats.removals.load(Ordering::Relaxed),
            lookups: self.stats.lookups.load(Ordering::Relaxed),
            lookup_hits: self.stats.lookup_hits.load(Ordering::Relaxed),
            hit_blocks: self.stats.hit_blocks.load(Ordering::Relaxed),
            ..Default::default()
        };
        for shard in self.shards.iter() {
            let g = shard.read();
            s.blocks += g.table.len() as u64;
            s.entries += g.entries;
            s.bytes += (g.table.allocation_size() + g.heap_bytes) as u64;
        }
        s
    }

    /// Publishes the `llm_d_epp_kv_cache_index_*` metrics and llm-d's deprecated
    /// `kvcache_index_*` twins (call periodically, e.g. every second; the hot paths only touch
    /// the index's own atomics).
    pub fn export_metrics(&self) {
        use llmd_telemetry::names::kv_cache as n;
        let s = self.snapshot();
        for (def, value) in [
            (&n::INDEX_ADMISSIONS, s.admissions),
            (&n::LEGACY_INDEX_ADMISSIONS, s.admissions),
            (&n::INDEX_EVICTIONS, s.evictions),
            (&n::LEGACY_INDEX_EVICTIONS, s.evictions),
            (&n::INDEX_LOOKUP_REQUESTS, s.lookups),
            (&n::LEGACY_INDEX_LOOKUP_REQUESTS, s.lookups),
            (&n::INDEX_LOOKUP_HITS, s.hit_blocks),
            (&n::LEGACY_INDEX_LOOKUP_HITS, s.hit_blocks),
            (&n::INDEX_MAX_POD_HIT_COUNT, s.hit_blocks),
            (&n::LEGACY_INDEX_MAX_POD_HIT_COUNT, s.hit_blocks),
        ] {
            metrics::counter!(def.name).absolute(value);
        }
        metrics::gauge!(n::INDEX_ENTRIES.name).set(s.entries as f64);
        metrics::gauge!(n::INDEX_BYTES.name).set(s.bytes as f64);
    }

    /// The pods holding `key`, with their tiers (diagnostics; `llmd-kv` uses it).
    pub fn holders(&self, key: BlockKey) -> Vec<(PodIdx, Vec<Tier>)> {
        let h = self.hash(key.0);
        let g = self.shards[self.shard_of(h)].read();
        g.table
            .find(h, |e| e.key == key.0)
            .map(|e| {
                e.holders
                    .iter()
                    .map(|(p, mask)| (p, holders::tiers_of(mask)))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// For every pod holding `keys[0]`, the number of consecutive `keys` it holds. Sorted by
    /// pod. Use [`IndexOps::lookup`] when the candidate pods are known.
    pub fn lookup_any(&self, keys: &[BlockKey]) -> Vec<(PodIdx, u32)> {
        let Some(first) = keys.first() else {
            return Vec::new();
        };
        let h = self.hash(first.0);
        let mut pods: Vec<PodIdx> = {
            let g = self.shards[self.shard_of(h)].read();
            g.table
                .find(h, |e| e.key == first.0)
                .map(|e| e.holders.iter().map(|(p, _)| p).collect())
                .unwrap_or_default()
        };
        pods.sort_unstable();
        let counts = self.lookup(keys, &pods);
        pods.into_iter().zip(counts).collect()
    }

    /// Makes room for one more entry without letting the shard's table outgrow its budget.
    ///
    /// hashbrown doubles a table whose free slots are used up (by entries or by tombstones left
    /// from removals) whenever it is more than half full. While the doubled table still fits the
    /// shard's budget that is fine; otherwise the shard rebuilds its table at the capped size,
    /// which drops the tombstones, and evicts the least recently used 1/16 of its entries in the
    /// same pass when it is (nearly) full.
    fn make_room(&self, shard: &mut Shard) {
        if shard.table.len() < shard.table.capacity() {
            return;
        }
        if shard.table.allocation_size() * 2 <= shard.budget_bytes {
            return;
        }
        let len = shard.table.len();
        let evict = if len + len / 16 >= shard.max_entries {
            (len / 16).max(1)
        } else {
            0
        };
        let threshold = if evict > 0 {
            shard.scratch.clear();
            shard.scratch.extend(
                shard
                    .table
                    .iter()
                    .map(|e| e.last_used.load(Ordering::Relaxed)),
            );
            let (_, t, _) = shard.scratch.select_nth_unstable(evict - 1);
            *t
        } else {
            0
        };
        let old = std::mem::replace(
            &mut shard.table,
            HashTable::with_capacity(shard.max_entries),
        );
        let mut budget = evict;
        let (mut evicted_entries, mut freed_heap) = (0u64, 0usize);
        let hasher = &self.hasher;
        for e in old {
            if budget > 0 && e.last_used.load(Ordering::Relaxed) <= threshold {
                budget -= 1;
                evicted_entries += e.holders.len() as u64;
                freed_heap += e.holders.heap_bytes();
                continue;
            }
            shard
                .table
                .insert_unique(hasher.hash_one(e.key), e, |x| hasher.hash_one(x.key));
        }
        shard.entries -= evicted_entries;
        shard.heap_bytes -= freed_heap;
        self.stats
            .evictions
            .fetch_add(evicted_entries, Ordering::Relaxed);
    }
}

impl IndexOps for PrefixIndex {
    fn store(&self, pod: PodIdx, tier: Tier, keys: &[BlockKey]) {
        let bit = holders::tier_bit(tier);
        let mut admitted = 0u64;
        for key in keys {
            let h = self.hash(key.0);
            let mut shard = self.shards[self.shard_of(h)].write();
            let now = shard.clock.fetch_add(1, Ordering::Relaxed) + 1;
            if let Some(e) = shard.table.find_mut(h, |e| e.key == key.0) {
                e.last_used.store(now, Ordering::Relaxed);
                let before = e.holders.heap_bytes();
                let added = e.holders.add(pod, bit);
                let after = e.holders.heap_bytes();
                shard.heap_bytes = shard.heap_bytes + after - before;
                if added {
                    shard.entries += 1;
                    admitted += 1;
                }
                continue;
            }
            self.make_room(&mut shard);
            let entry = Entry {
                key: key.0,
                holders: Holders::one(pod, bit),
                last_used: AtomicU64::new(now),
            };
            let hasher = &self.hasher;
            shard
                .table
                .insert_unique(h, entry, |e| hasher.hash_one(e.key));
            shard.entries += 1;
            admitted += 1;
        }
        self.stats.admissions.fetch_add(admitted, Ordering::Relaxed);
    }

    fn remove(&self, pod: PodIdx, tier: Tier, keys: &[BlockKey]) {
        let bit = holders::tier_bit(tier);
        for key in keys {
            let h = self.hash(key.0);
            let mut shard = self.shards[self.shard_of(h)].write();
            let Ok(mut slot) = shard.table.find_entry(h, |e| e.key == key.0) else {
                continue;
            };
            let e = slot.get_mut();
            let before = e.holders.heap_bytes();
            let removed = e.holders.remove(pod, bit);
            let after = e.holders.heap_bytes();
            let empty = e.holders.is_empty();
            if empty {
                slot.remove();
            }
            shard.heap_bytes = shard.heap_bytes + after - before;
            if removed {
                shard.entries -= 1;
                self.stats.removals.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn clear_pod(&self, pod: PodIdx) {
        for shard in self.shards.iter() {
            let mut g = shard.write();
            let mut removed = 0u64;
            let mut heap_delta: isize = 0;
            g.table.retain(|e| {
                let before = e.holders.heap_bytes() as isize;
                if e.holders.remove(pod, holders::ALL_TIERS) {
                    removed += 1;
                }
                heap_delta += e.holders.heap_bytes() as isize - before;
                !e.holders.is_empty()
            });
            g.entries -= removed;
            self.stats.removals.fetch_add(removed, Ordering::Relaxed);
            g.heap_bytes = (g.heap_bytes as isize + heap_delta) as usize;
        }
    }

    fn lookup(&self, keys: &[BlockKey], candidates: &[PodIdx]) -> Vec<u32> {
        self.stats.lookups.fetch_add(1, Ordering::Relaxed);
        let mut counts = vec![0u32; candidates.len()];
        if keys.is_empty() || candidates.is_empty() {
            return counts;
        }
        // Read guards, taken lazily and kept for the whole walk (at most one per shard).
        let mut guards: Vec<Option<RwLockReadGuard<'_, Shard>>> =
            (0..self.shards.len()).map(|_| None).collect();
        // (candidate position, pod) still matching.
        let mut active: Vec<(usize, PodIdx)> = Vec::new();
        // Keys walked before the walk stopped; pods still active matched all of them.
        let mut walked = keys.len();
        // Keys are probed a chunk at a time with no dependency between the probes, so the
        // CPU overlaps their cache misses (the index is far larger than the caches); the chunk
        // is then walked in order.
        const CHUNK: usize = 32;
        'walk: for (c, chunk) in keys.chunks(CHUNK).enumerate() {
            let mut hashes = [0u64; CHUNK];
            for (h, key) in hashes.iter_mut().zip(chunk) {
                *h = self.hash(key.0);
                let s = self.shard_of(*h);
                if guards[s].is_none() {
                    guards[s] = Some(self.shards[s].read());
                }
            }
            let mut found: [Option<&Entry>; CHUNK] = [None; CHUNK];
            for (slot, (h, key)) in found.iter_mut().zip(hashes.iter().zip(chunk)) {
                let s = self.shard_of(*h);
                *slot = guards[s]
                    .as_ref()
                    .and_then(|g| g.table.find(*h, |e| e.key == key.0));
            }
            for (j, e) in found[..chunk.len()].iter().enumerate() {
                let i = c * CHUNK + j;
                let Some(e) = e else {
                    walked = i;
                    break 'walk;
                };
                let now = guards[self.shard_of(hashes[j])]
                    .as_ref()
                    .map_or(0, |g| g.clock.load(Ordering::Relaxed));
                if e.last_used.load(Ordering::Relaxed) != now {
                    e.last_used.store(now, Ordering::Relaxed);
                }
                if i == 0 {
                    active.extend(
                        candidates
                            .iter()
                            .copied()
                            .enumerate()
                            .filter(|(_, p)| e.holders.contains(*p)),
                    );
                    if !active.is_empty() {
                        self.stats.lookup_hits.fetch_add(1, Ordering::Relaxed);
                    }
                } else {
                    active.retain(|&(pos, p)| {
                        let keep = e.holders.contains(p);
                        if !keep {
                            counts[pos] = i as u32;
                        }
                        keep
                    });
                }
                if active.is_empty() {
                    break 'walk;
                }
            }
        }
        for (pos, _) in active {
            counts[pos] = walked as u32;
        }
        let best = counts.iter().copied().max().unwrap_or(0);
        self.stats
            .hit_blocks
            .fetch_add(u64::from(best), Ordering::Relaxed);
        counts
    }
}

#[cfg(test)]
mod tests;
