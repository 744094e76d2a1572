//! The prefix index: block key → the pods (and tiers) holding that block, built so that a lookup
//! costs one hash probe per *run* of blocks rather than one per block.
//!
//! # Data structure
//!
//! - **Runs.** Keys are stored in runs: arrays of block keys in chain order. A store whose first
//!   key continues the last key of a run (its parent, or the previous key of the same store) is
//!   appended to that run, so a prompt stored in many events (chunked prefill, decode) is one
//!   run. Each key sits in exactly one run, at one offset. A run's holders are **spans**
//!   `(pod, tier mask, [start, end))` over its offsets (`holders.rs`): a run held whole by the
//!   same pods has one span per pod, however long it is.
//! - **Map.** `N` shards (a power of two, 256 by default) of `hashbrown::HashTable`s of 16-byte
//!   entries `{ key, run, offset }`; a key's shard comes from bits 32.. of its seeded hash.
//! - **Lookup.** Probe `keys[i]`, then compare the request's following keys with the run's
//!   following keys (a sequential scan, 8 keys per compare); every pod still matching is checked
//!   once per run, against that run's spans. Runs end where chains branch, so a 2,000-block
//!   request under a shared prefix crosses a handful of runs. Candidates are mapped to their
//!   position through a small per-thread table (no sort, no allocation after warm-up).
//!
//! # Concurrency: reads wait only for short, bounded writes
//!
//! One `parking_lot::RwLock` guards the whole structure. Lookups take the read lock, so any
//! number run together, and mark a run as recently used with a relaxed atomic store (one per run
//! crossed, only when not already marked). Writers hold the write lock for at most
//! [`WRITE_CHUNK`] keys of one event (longer events are applied in chunks), or [`CLEAR_CHUNK`]
//! runs of a pod clear, or the eviction of one run; a map shard's rebuild is bounded by the shard
//! size (1/256 of the map by default). The bench measures lookups while a writer thread applies
//! events (`cargo bench -p llmd-kv-index --bench index`).
//!
//! # Memory bound
//!
//! `max_bytes` bounds the map tables, the runs' key arrays and span lists, and the run slab.
//! Two thirds of it caps the map (split evenly over the shards, each table growing by doubling up
//! to its share). When the total would pass the budget, or a shard at its cap is full, runs are
//! evicted whole, least recently used first: the least recently used (by a lookup or a store) of
//! the next 32 runs from a moving hand, an approximation of LRU that needs no list to maintain. Entries cost about 16/0.875 + 1 bytes of map
//! and 8 bytes of run per block at the cap, shared by all the pods holding the block.

mod holders;
mod pods;
mod reference;

pub use pods::{PodIdx, PodRegistry, TooManyPods};
pub use reference::ReferenceIndex;

use std::cell::RefCell;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};

use hashbrown::HashTable;
use parking_lot::RwLock;

use crate::events::Tier;
use crate::hashing::BlockKey;
use holders::{Holders, Span};

/// Default byte budget of the index.
pub const DEFAULT_MAX_BYTES: usize = 512 << 20;
/// Default number of map shards.
pub const DEFAULT_SHARDS: usize = 256;
/// Most keys of one store or remove applied under one hold of the write lock.
pub const WRITE_CHUNK: usize = 256;
/// Runs compared when choosing one to evict (the least recently used of them goes).
pub const EVICT_WINDOW: usize = 32;
/// Most runs one hold of the write lock visits while clearing a pod.
pub const CLEAR_CHUNK: usize = 1024;

/// Index settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexConfig {
    /// Upper bound of the memory the index accounts for, in bytes.
    pub max_bytes: usize,
    /// Number of map shards (rounded up to a power of two, at most 4096).
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
    /// Records that `pod` holds `keys` in `tier`, where `keys[0]` follows `parent` in its chain
    /// (a `BlockStored` event's `parent_block_hash`). The parent only helps the index lay the
    /// keys out (after the parent's run, when it ends there); what is stored is the same.
    fn store_after(&self, pod: PodIdx, tier: Tier, parent: Option<BlockKey>, keys: &[BlockKey]) {
        let _ = parent;
        self.store(pod, tier, keys);
    }
    /// Records that `pod` no longer holds `keys` in `tier`.
    fn remove(&self, pod: PodIdx, tier: Tier, keys: &[BlockKey]);
    /// Drops every entry of `pod`.
    fn clear_pod(&self, pod: PodIdx);
    /// For each candidate, the number of consecutive `keys` from `keys[0]` it holds (any tier).
    fn lookup(&self, keys: &[BlockKey], candidates: &[PodIdx]) -> Vec<u32>;
}

/// Counters of the index (cumulative).
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
    /// Distinct blocks indexed. A block no pod holds any more stays indexed while it sits
    /// between held blocks of its run (it is dropped when the run is trimmed or evicted).
    pub blocks: u64,
    /// (block, pod) entries held.
    pub entries: u64,
    /// Runs (chains of blocks stored together).
    pub runs: u64,
    /// Bytes accounted (map tables, runs' keys and spans, the run slab).
    pub bytes: u64,
}

/// A map entry: where a key sits.
#[derive(Clone, Copy)]
struct Slot {
    key: u64,
    run: u32,
    off: u32,
}

/// Keys stored together in chain order, and who holds them.
struct Run {
    /// Logical offset of `keys[0]` (offsets stay valid when the front is trimmed).
    base: u32,
    keys: Vec<u64>,
    holders: Holders,
    /// Value of the index's clock when a lookup or a store last used the run.
    last_used: AtomicU64,
}

impl Run {
    #[inline]
    fn end(&self) -> u32 {
        self.base + self.keys.len() as u32
    }

    fn bytes(&self) -> usize {
        self.keys.capacity() * 8 + self.holders.heap_bytes()
    }

    /// How many of `keys` follow the run from offset `off` (at least 1 when `off` holds
    /// `keys[0]`).
    #[inline]
    fn match_len(&self, off: u32, keys: &[u64]) -> usize {
        common_prefix(&self.keys[(off - self.base) as usize..], keys)
    }

    #[inline]
    fn touch(&self, now: u64) {
        if self.last_used.load(Ordering::Relaxed) != now {
            self.last_used.store(now, Ordering::Relaxed);
        }
    }
}

/// Length of the common prefix of `a` and `b`, comparing 8 keys at a time.
#[inline]
fn common_prefix(a: &[u64], b: &[u64]) -> usize {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut i = 0;
    for (x, y) in a.chunks_exact(8).zip(b.chunks_exact(8)) {
        if x != y {
            break;
        }
        i += 8;
    }
    while i < n && a[i] == b[i] {
        i += 1;
    }
    i
}

/// [`common_prefix`] of a request's keys and a run's keys.
#[inline]
fn common_prefix_keys(a: &[BlockKey], b: &[u64]) -> usize {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut i = 0;
    for (x, y) in a.chunks_exact(8).zip(b.chunks_exact(8)) {
        if !x.iter().zip(y).fold(true, |eq, (x, y)| eq & (x.0 == *y)) {
            break;
        }
        i += 8;
    }
    while i < n && a[i].0 == b[i] {
        i += 1;
    }
    i
}

struct Inner {
    shards: Box<[HashTable<Slot>]>,
    /// Entries a shard may hold at its largest table, and that table's allocation.
    shard_cap: usize,
    shard_cap_bytes: usize,
    runs: Vec<Option<Run>>,
    free: Vec<u32>,
    /// Where the next eviction starts looking.
    hand: usize,
    /// Logical clock: bumped by every store, read by lookups to stamp the runs they cross.
    clock: u64,
    map_bytes: usize,
    run_bytes: usize,
    entries: u64,
    budget: usize,
    hasher: foldhash::fast::FixedState,
    shard_shift: u32,
    scratch: Vec<Span>,
}

/// The concurrent, memory-bounded prefix index.
pub struct PrefixIndex {
    inner: RwLock<Inner>,
    hasher: foldhash::fast::FixedState,
    shard_mask: usize,
    stats: IndexStats,
}

impl std::fmt::Debug for PrefixIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrefixIndex")
            .field("snapshot", &self.snapshot())
            .finish()
    }
}

const SHARD_SHIFT: u32 = 32;

impl Inner {
    #[inline]
    fn shard_of(&self, hash: u64) -> usize {
        (hash >> self.shard_shift) as usize & (self.shards.len() - 1)
    }

    fn slab_bytes(&self) -> usize {
        self.runs.capacity() * std::mem::size_of::<Option<Run>>() + self.free.capacity() * 4
    }

    fn bytes(&self) -> usize {
        self.map_bytes + self.run_bytes + self.slab_bytes()
    }

    fn blocks(&self) -> u64 {
        self.shards.iter().map(|s| s.len() as u64).sum()
    }

    fn run(&self, r: u32) -> Option<&Run> {
        self.runs.get(r as usize).and_then(Option::as_ref)
    }

    fn find(&self, key: u64) -> Option<Slot> {
        let h = self.hasher.hash_one(key);
        self.shards[self.shard_of(h)]
            .find(h, |e| e.key == key)
            .copied()
    }

    fn new_run(&mut self) -> u32 {
        let run = Run {
            base: 0,
            keys: Vec::new(),
            holders: Holders::default(),
            last_used: AtomicU64::new(self.clock),
        };
        match self.free.pop() {
            Some(r) => {
                self.runs[r as usize] = Some(run);
                r
            }
            None => {
                self.runs.push(Some(run));
                (self.runs.len() - 1) as u32
            }
        }
    }

    /// Removes the map entries of `keys` (all in run `r`).
    fn unmap(&mut self, keys: &[u64]) {
        for &k in keys {
            let h = self.hasher.hash_one(k);
            let s = self.shard_of(h);
            if let Ok(e) = self.shards[s].find_entry(h, |e| e.key == k) {
                e.remove();
            }
        }
    }

    /// Drops run `r` and its map entries; returns the (block, pod) entries it held.
    fn free_run(&mut self, r: u32) -> u64 {
        let Some(run) = self.runs.get_mut(r as usize).and_then(Option::take) else {
            return 0;
        };
        let held = run.holders.entries();
        self.unmap(&run.keys);
        self.run_bytes -= run.bytes();
        self.entries -= held;
        self.free.push(r);
        held
    }

    /// Drops the keys at the ends of run `r` that no pod holds (the whole run when nobody holds
    /// any of it).
    fn trim(&mut self, r: u32) {
        let Some(run) = self.runs.get_mut(r as usize).and_then(Option::as_mut) else {
            return;
        };
        let Some((lo, hi)) = run.holders.extent() else {
            self.free_run(r);
            return;
        };
        let before = run.bytes();
        let tail: Vec<u64> = if hi < run.end() {
            run.keys.split_off((hi - run.base) as usize)
        } else {
            Vec::new()
        };
        let head: Vec<u64> = if lo > run.base {
            let n = (lo - run.base) as usize;
            run.base = lo;
            run.keys.drain(..n).collect()
        } else {
            Vec::new()
        };
        if run.keys.capacity() > 2 * run.keys.len() + 8 {
            run.keys.shrink_to_fit();
        }
        run.holders.shrink();
        let after = run.bytes();
        self.run_bytes = self.run_bytes + after - before;
        self.unmap(&tail);
        self.unmap(&head);
    }

    /// Evicts the least recently used of the next [`EVICT_WINDOW`] runs from the hand (all of
    /// them when there are fewer), skipping `pinned`. Returns the (block, pod) entries evicted,
    /// or `None` when nothing can be evicted.
    fn evict_one(&mut self, pinned: u32) -> Option<u64> {
        let n = self.runs.len();
        let mut best: Option<(u64, usize)> = None;
        let mut seen = 0;
        for step in 0..n {
            let r = (self.hand + step) % n;
            let Some(run) = self.runs[r].as_ref() else {
                continue;
            };
            if r as u32 == pinned || run.keys.is_empty() {
                continue;
            }
            let used = run.last_used.load(Ordering::Relaxed);
            if best.is_none_or(|(b, _)| used < b) {
                best = Some((used, r));
            }
            seen += 1;
            if seen == EVICT_WINDOW {
                break;
            }
        }
        let (_, r) = best?;
        self.hand = r + 1;
        Some(self.free_run(r as u32))
    }

    /// Makes room in shard `s` for one more entry without letting its table outgrow its cap.
    ///
    /// hashbrown doubles a table whose free slots are used up (by entries or by tombstones left
    /// from removals) when it is more than half full. Below the cap that is fine; at the cap,
    /// runs are evicted until the shard is at most 15/16 full, and the table is rebuilt at the
    /// same size (dropping the tombstones).
    fn make_room(&mut self, s: usize, pinned: u32, evicted: &mut u64) {
        let t = &self.shards[s];
        if t.len() < t.capacity() || t.allocation_size() < self.shard_cap_bytes {
            return;
        }
        while self.shards[s].len() >= self.shard_cap - self.shard_cap / 16 {
            match self.evict_one(pinned) {
                Some(n) => *evicted += n,
                None => return,
            }
        }
        let hasher = self.hasher.clone();
        let old = std::mem::replace(
            &mut self.shards[s],
            HashTable::with_capacity(self.shard_cap),
        );
        for e in old {
            self.shards[s].insert_unique(hasher.hash_one(e.key), e, |x| hasher.hash_one(x.key));
        }
    }

    fn account_shard(&mut self, s: usize, before: usize) {
        self.map_bytes = self.map_bytes + self.shards[s].allocation_size() - before;
    }

    /// Evicts runs until the accounted bytes fit the budget.
    fn enforce_budget(&mut self, pinned: u32) -> u64 {
        let mut evicted = 0;
        while self.bytes() > self.budget {
            match self.evict_one(pinned) {
                Some(n) => evicted += n,
                None => break,
            }
        }
        evicted
    }

    /// Where the next stored key should go after `prev` (a run and the offset of the key just
    /// before): appended to that run when `prev` is its last key.
    fn resolve_prev(&self, prev: Option<(u32, u32, u64)>) -> Option<(u32, u32)> {
        let (r, off, key) = prev?;
        let run = self.run(r)?;
        (off >= run.base && off < run.end() && run.keys[(off - run.base) as usize] == key)
            .then_some((r, off))
    }

    /// Stores `keys` for `pod`; `prev` is the key before `keys[0]` in its chain, as
    /// `(run, offset, key)`, updated to the last key stored. Returns (admitted, evicted).
    fn store(
        &mut self,
        pod: u32,
        bits: u8,
        prev: &mut Option<(u32, u32, u64)>,
        keys: &[u64],
    ) -> (u64, u64) {
        self.clock += 1;
        let mut at = self.resolve_prev(*prev);
        let (mut admitted, mut evicted) = (0u64, 0u64);
        let mut last_run = u32::MAX;
        let mut i = 0;
        while i < keys.len() {
            let k = keys[i];
            if let Some(e) = self.find(k) {
                let Some(run) = self.runs[e.run as usize].as_mut() else {
                    i += 1;
                    continue;
                };
                let j = run.match_len(e.off, &keys[i..]);
                if j == 0 {
                    // The map and the run disagree (never expected): skip the key.
                    i += 1;
                    continue;
                }
                let before = run.bytes();
                admitted += run
                    .holders
                    .add(pod, bits, e.off, e.off + j as u32, &mut self.scratch);
                *run.last_used.get_mut() = self.clock;
                self.run_bytes = self.run_bytes + run.bytes() - before;
                at = Some((e.run, e.off + j as u32 - 1));
                last_run = e.run;
                i += j;
                continue;
            }
            // New keys: after `at` when it ends its run, else in a new run.
            let r = match at {
                Some((r, off)) if self.run(r).is_some_and(|run| run.end() == off + 1) => r,
                _ => self.new_run(),
            };
            last_run = r;
            let start = self.run(r).map_or(0, Run::end);
            let mut n = 0u32;
            while i + (n as usize) < keys.len() && start.checked_add(n + 1).is_some() {
                let k = keys[i + n as usize];
                let h = self.hasher.hash_one(k);
                let s = self.shard_of(h);
                let before = self.shards[s].allocation_size();
                self.make_room(s, r, &mut evicted);
                let hasher = self.hasher.clone();
                // One probe: the key is either found (a later key of this store that is already
                // indexed: continue from it) or inserted where the probe ended.
                match self.shards[s].entry(h, |e| e.key == k, |x| hasher.hash_one(x.key)) {
                    hashbrown::hash_table::Entry::Occupied(_) => break,
                    hashbrown::hash_table::Entry::Vacant(v) => {
                        v.insert(Slot {
                            key: k,
                            run: r,
                            off: start + n,
                        });
                    }
                }
                self.account_shard(s, before);
                n += 1;
            }
            // The new keys go to the run in one copy (the map already points at their offsets;
            // nothing reads the run in between: the write lock is held).
            if let Some(run) = self.runs[r as usize].as_mut() {
                let before = run.bytes();
                run.keys.extend_from_slice(&keys[i..i + n as usize]);
                self.run_bytes = self.run_bytes + run.bytes() - before;
            }
            if n == 0 {
                // Only when a run's offsets are exhausted: start a fresh run next time.
                at = None;
                if self.run(r).is_some_and(|run| run.keys.is_empty()) {
                    self.free_run(r);
                }
                continue;
            }
            if let Some(run) = self.runs[r as usize].as_mut() {
                let before = run.bytes();
                admitted += run
                    .holders
                    .add(pod, bits, start, start + n, &mut self.scratch);
                *run.last_used.get_mut() = self.clock;
                self.run_bytes = self.run_bytes + run.bytes() - before;
            }
            at = Some((r, start + n - 1));
            i += n as usize;
        }
        self.entries += admitted;
        evicted += self.enforce_budget(last_run);
        *prev = at.and_then(|(r, off)| {
            let run = self.run(r)?;
            Some((r, off, run.keys[(off - run.base) as usize]))
        });
        (admitted, evicted)
    }

    /// Removes `bits` of `pod` from `keys`; returns the (block, pod) entries dropped.
    fn remove(&mut self, pod: u32, bits: u8, keys: &[u64]) -> u64 {
        let mut removed = 0;
        let mut touched: Vec<u32> = Vec::new();
        let mut i = 0;
        while i < keys.len() {
            let Some(e) = self.find(keys[i]) else {
                i += 1;
                continue;
            };
            let Some(run) = self.runs[e.run as usize].as_mut() else {
                i += 1;
                continue;
            };
            let j = run.match_len(e.off, &keys[i..]);
            if j == 0 {
                i += 1;
                continue;
            }
            let before = run.bytes();
            let gone = run
                .holders
                .remove(pod, bits, e.off, e.off + j as u32, &mut self.scratch);
            self.run_bytes = self.run_bytes + run.bytes() - before;
            if gone > 0 {
                removed += gone;
                if !touched.contains(&e.run) {
                    touched.push(e.run);
                }
            }
            i += j;
        }
        self.entries -= removed;
        for r in touched {
            self.trim(r);
        }
        removed
    }
}

impl PrefixIndex {
    /// A new, empty index.
    pub fn new(config: IndexConfig) -> Self {
        let shards = config.shards.clamp(1, 4096).next_power_of_two();
        // Largest table each shard may grow to: two thirds of the budget over the shards.
        let per_shard = config.max_bytes / 3 * 2 / shards;
        let mut cap = 7usize;
        loop {
            let next = HashTable::<Slot>::with_capacity(cap * 2 + 1);
            if next.allocation_size() > per_shard {
                break;
            }
            cap = next.capacity();
        }
        let shard_cap_bytes = HashTable::<Slot>::with_capacity(cap).allocation_size();
        let seed = foldhash::fast::RandomState::default().hash_one(0x6c6c_6d64_u64);
        let hasher = foldhash::fast::FixedState::with_seed(seed);
        Self {
            inner: RwLock::new(Inner {
                shards: (0..shards).map(|_| HashTable::new()).collect(),
                shard_cap: cap,
                shard_cap_bytes,
                runs: Vec::new(),
                free: Vec::new(),
                hand: 0,
                clock: 1,
                map_bytes: 0,
                run_bytes: 0,
                entries: 0,
                budget: config.max_bytes,
                hasher: hasher.clone(),
                shard_shift: SHARD_SHIFT,
                scratch: Vec::new(),
            }),
            hasher,
            shard_mask: shards - 1,
            stats: IndexStats::default(),
        }
    }

    /// Most distinct blocks the index can hold (its map tables at their caps, full).
    pub fn max_blocks(&self) -> usize {
        let g = self.inner.read();
        g.shard_cap * g.shards.len()
    }

    /// Counters and size now.
    pub fn snapshot(&self) -> IndexSnapshot {
        let g = self.inner.read();
        IndexSnapshot {
            admissions: self.stats.admissions.load(Ordering::Relaxed),
            evictions: self.stats.evictions.load(Ordering::Relaxed),
            removals: self.stats.removals.load(Ordering::Relaxed),
            lookups: self.stats.lookups.load(Ordering::Relaxed),
            lookup_hits: self.stats.lookup_hits.load(Ordering::Relaxed),
            hit_blocks: self.stats.hit_blocks.load(Ordering::Relaxed),
            blocks: g.blocks(),
            entries: g.entries,
            runs: (g.runs.len() - g.free.len()) as u64,
            bytes: g.bytes() as u64,
        }
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

    /// The pods holding `key`, with their tiers, by pod (diagnostics; `llmd-kv` uses it).
    pub fn holders(&self, key: BlockKey) -> Vec<(PodIdx, Vec<Tier>)> {
        let g = self.inner.read();
        let Some(e) = g.find(key.0) else {
            return Vec::new();
        };
        g.run(e.run)
            .map(|run| {
                run.holders
                    .at(e.off)
                    .map(|(p, mask)| (PodIdx(p), holders::tiers_of(mask)))
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
        let pods: Vec<PodIdx> = {
            let g = self.inner.read();
            g.find(first.0)
                .and_then(|e| {
                    g.run(e.run)
                        .map(|run| run.holders.at(e.off).map(|(p, _)| PodIdx(p)).collect())
                })
                .unwrap_or_default()
        };
        let counts = self.lookup(keys, &pods);
        pods.into_iter().zip(counts).collect()
    }

    fn store_keys(&self, pod: PodIdx, tier: Tier, parent: Option<BlockKey>, keys: &[BlockKey]) {
        let bits = holders::tier_bit(tier);
        let mut prev: Option<(u32, u32, u64)> = None;
        let mut first = true;
        let mut raw = [0u64; WRITE_CHUNK];
        for chunk in keys.chunks(WRITE_CHUNK) {
            for (r, k) in raw.iter_mut().zip(chunk) {
                *r = k.0;
            }
            let mut g = self.inner.write();
            if first {
                first = false;
                prev = parent
                    .and_then(|p| g.find(p.0))
                    .map(|e| (e.run, e.off, parent.map_or(0, |p| p.0)));
            }
            let (admitted, evicted) = g.store(pod.0, bits, &mut prev, &raw[..chunk.len()]);
            drop(g);
            self.stats.admissions.fetch_add(admitted, Ordering::Relaxed);
            if evicted > 0 {
                self.stats.evictions.fetch_add(evicted, Ordering::Relaxed);
            }
        }
    }
}

/// Per-thread scratch of [`PrefixIndex::lookup`]: candidate pods mapped to their state through a
/// small open-addressing table; entries are valid when their stamp is the current lookup's.
#[derive(Default)]
struct LookupScratch {
    stamp: u32,
    /// (stamp, pod, candidate index).
    table: Vec<(u32, u32, u32)>,
    cands: Vec<Cand>,
    /// Candidate index of each position of the caller's list.
    pos: Vec<u32>,
    /// Candidates still matching.
    active: Vec<u32>,
}

#[derive(Clone, Copy, Default)]
struct Cand {
    pod: u32,
    /// Stamp of the last run crossing that found this pod holding the walk's offset.
    seen: u32,
    /// Offsets held from there.
    cov: u32,
    /// Final count (`u32::MAX` while active).
    count: u32,
}

const ACTIVE: u32 = u32::MAX;

impl LookupScratch {
    fn next_stamp(&mut self) -> u32 {
        if self.stamp >= u32::MAX - 2 {
            self.stamp = 0;
            self.table.iter_mut().for_each(|e| e.0 = 0);
            self.cands.iter_mut().for_each(|c| c.seen = 0);
        }
        self.stamp += 1;
        self.stamp
    }

    #[inline]
    fn slot(pod: u32, bits: u32) -> usize {
        (pod.wrapping_mul(0x9e37_79b9) >> (32 - bits)) as usize
    }

    /// Maps the candidates; returns the lookup's stamp and the table's size in bits.
    fn begin(&mut self, candidates: &[PodIdx]) -> (u32, u32) {
        let lookup = self.next_stamp();
        let bits = (candidates.len() * 2)
            .next_power_of_two()
            .max(16)
            .trailing_zeros();
        let size = 1usize << bits;
        if self.table.len() < size {
            self.table.resize(size, (0, 0, 0));
        }
        self.cands.clear();
        self.pos.clear();
        self.active.clear();
        let mask = size - 1;
        for p in candidates {
            let mut i = Self::slot(p.0, bits);
            let idx = loop {
                let e = &mut self.table[i];
                if e.0 != lookup {
                    let idx = self.cands.len() as u32;
                    *e = (lookup, p.0, idx);
                    self.cands.push(Cand {
                        pod: p.0,
                        seen: 0,
                        cov: 0,
                        count: ACTIVE,
                    });
                    self.active.push(idx);
                    break idx;
                }
                if e.1 == p.0 {
                    break e.2;
                }
                i = (i + 1) & mask;
            };
            self.pos.push(idx);
        }
        (lookup, bits)
    }

    #[inline]
    fn find(&self, pod: u32, lookup: u32, bits: u32) -> Option<u32> {
        let mask = (1usize << bits) - 1;
        let mut i = Self::slot(pod, bits);
        loop {
            let e = self.table[i];
            if e.0 != lookup {
                return None;
            }
            if e.1 == pod {
                return Some(e.2);
            }
            i = (i + 1) & mask;
        }
    }

    /// One run crossed: the walk is at request position `i`, run offset `off`, and the next
    /// `n` keys follow the run. Candidates not holding all of them stop. Returns whether any
    /// candidate held `off`.
    fn cross(
        &mut self,
        spans: &[Span],
        off: u32,
        i: usize,
        n: usize,
        lookup: u32,
        bits: u32,
    ) -> bool {
        let crossing = self.next_stamp();
        let mut any = false;
        if self.active.len() * 8 < spans.len() {
            // Few candidates, many holders: find each candidate's spans by binary search.
            for &a in &self.active {
                let c = &mut self.cands[a as usize];
                let range = Holders::pod_range(spans, c.pod);
                if let Some(idx) = range.clone().find(|&x| spans[x].covers(off)) {
                    c.seen = crossing;
                    c.cov = Holders::covered_from(spans, idx, off);
                    any = true;
                }
            }
        } else {
            for (idx, s) in spans.iter().enumerate() {
                if !s.covers(off) {
                    continue;
                }
                let Some(a) = self.find(s.pod(), lookup, bits) else {
                    continue;
                };
                let c = &mut self.cands[a as usize];
                if c.count == ACTIVE {
                    c.seen = crossing;
                    c.cov = Holders::covered_from(spans, idx, off);
                    any = true;
                }
            }
        }
        let cands = &mut self.cands;
        self.active.retain(|&a| {
            let c = &mut cands[a as usize];
            if c.seen != crossing {
                c.count = i as u32;
                false
            } else if (c.cov as usize) < n {
                c.count = (i + c.cov as usize) as u32;
                false
            } else {
                true
            }
        });
        any
    }
}

thread_local! {
    static SCRATCH: RefCell<LookupScratch> = RefCell::new(LookupScratch::default());
}

impl IndexOps for PrefixIndex {
    fn store(&self, pod: PodIdx, tier: Tier, keys: &[BlockKey]) {
        self.store_keys(pod, tier, None, keys);
    }

    fn store_after(&self, pod: PodIdx, tier: Tier, parent: Option<BlockKey>, keys: &[BlockKey]) {
        self.store_keys(pod, tier, parent, keys);
    }

    fn remove(&self, pod: PodIdx, tier: Tier, keys: &[BlockKey]) {
        let bits = holders::tier_bit(tier);
        let mut raw = [0u64; WRITE_CHUNK];
        for chunk in keys.chunks(WRITE_CHUNK) {
            for (r, k) in raw.iter_mut().zip(chunk) {
                *r = k.0;
            }
            let removed = self.inner.write().remove(pod.0, bits, &raw[..chunk.len()]);
            self.stats.removals.fetch_add(removed, Ordering::Relaxed);
        }
    }

    fn clear_pod(&self, pod: PodIdx) {
        let mut start = 0usize;
        loop {
            let mut g = self.inner.write();
            let end = (start + CLEAR_CHUNK).min(g.runs.len());
            let mut removed = 0u64;
            for r in start..end {
                let Some(run) = g.runs[r].as_mut() else {
                    continue;
                };
                let before = run.bytes();
                let held = run.holders.remove_pod(pod.0);
                if held == 0 {
                    continue;
                }
                let after = run.bytes();
                g.run_bytes = g.run_bytes + after - before;
                g.entries -= held;
                removed += held;
                g.trim(r as u32);
            }
            let done = end >= g.runs.len();
            drop(g);
            self.stats.removals.fetch_add(removed, Ordering::Relaxed);
            if done {
                break;
            }
            start = end;
        }
    }

    fn lookup(&self, keys: &[BlockKey], candidates: &[PodIdx]) -> Vec<u32> {
        self.stats.lookups.fetch_add(1, Ordering::Relaxed);
        let mut counts = vec![0u32; candidates.len()];
        if keys.is_empty() || candidates.is_empty() {
            return counts;
        }
        SCRATCH.with(|cell| {
            let mut scratch = cell.borrow_mut();
            let s = &mut *scratch;
            let (lookup, bits) = s.begin(candidates);
            let g = self.inner.read();
            let mut i = 0usize;
            while i < keys.len() && !s.active.is_empty() {
                let k = keys[i].0;
                let h = self.hasher.hash_one(k);
                let shard = (h >> SHARD_SHIFT) as usize & self.shard_mask;
                let Some(e) = g.shards[shard].find(h, |e| e.key == k) else {
                    break;
                };
                let Some(run) = g.run(e.run) else {
                    break;
                };
                run.touch(g.clock);
                let n = common_prefix_keys(&keys[i..], &run.keys[(e.off - run.base) as usize..]);
                if n == 0 {
                    break;
                }
                let any = s.cross(run.holders.spans(), e.off, i, n, lookup, bits);
                if i == 0 && any {
                    self.stats.lookup_hits.fetch_add(1, Ordering::Relaxed);
                }
                i += n;
            }
            drop(g);
            for &a in &s.active {
                s.cands[a as usize].count = i as u32;
            }
            for (out, &idx) in counts.iter_mut().zip(&s.pos) {
                *out = s.cands[idx as usize].count;
            }
        });
        let best = counts.iter().copied().max().unwrap_or(0);
        self.stats
            .hit_blocks
            .fetch_add(u64::from(best), Ordering::Relaxed);
        counts
    }
}

#[cfg(test)]
mod tests;
