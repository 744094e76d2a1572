//! The approximate prefix index of GIE's `prefix-cache-scorer` (llm-d's
//! `approx-prefix-cache-producer`), for pools without KV events: it remembers which pods it
//! sent which prompt prefixes to.
//!
//! A prompt's user input (the completions prompt, or the chat `messages` as JSON) is cut into
//! blocks of `block_chars` characters, at most `max_blocks`; block `i`'s hash chains the
//! previous one (seeded by the model and `cache_salt`), so equal hashes mean equal prefixes.
//! After each decision the chosen pods (the primary, and the prefill pod) record the prompt's
//! hashes in a per-pod LRU of `capacity` blocks (the pod's `num_gpu_blocks` with `autoTune`);
//! an evicted block is forgotten for that pod. A lookup counts, per pod, the blocks it holds
//! from block 0 until a block no pod holds, as GIE does.
//!
//! Reads take a read lock on the hash → pods map; recording takes the write lock.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use xxhash_rust::xxh3::xxh3_64;

use crate::request::{InferenceRequest, Prompt};

/// One pod's LRU of block hashes.
#[derive(Debug, Default)]
struct PodLru {
    capacity: usize,
    stamp_of: HashMap<u64, u64>,
    order: BTreeMap<u64, u64>,
    next: u64,
}

impl PodLru {
    /// Touches `hash`; returns the hash evicted to make room, if any.
    fn touch(&mut self, hash: u64) -> Option<u64> {
        self.next += 1;
        if let Some(old) = self.stamp_of.insert(hash, self.next) {
            self.order.remove(&old);
            self.order.insert(self.next, hash);
            return None;
        }
        self.order.insert(self.next, hash);
        if self.stamp_of.len() > self.capacity {
            let (_, evicted) = self.order.pop_first()?;
            self.stamp_of.remove(&evicted);
            return Some(evicted);
        }
        None
    }
}

/// The index.
#[derive(Debug)]
pub struct ApproxIndex {
    hash_to_pods: RwLock<HashMap<u64, HashSet<Arc<str>>>>,
    pods: Mutex<HashMap<Arc<str>, PodLru>>,
    last_prune: Mutex<Instant>,
}

impl Default for ApproxIndex {
    fn default() -> Self {
        Self {
            hash_to_pods: RwLock::new(HashMap::new()),
            pods: Mutex::new(HashMap::new()),
            last_prune: Mutex::new(Instant::now()),
        }
    }
}

/// How often pods that left the pool are forgotten (GIE: every 2 minutes).
pub const PRUNE_INTERVAL: Duration = Duration::from_secs(120);

/// The user input GIE hashes: the completions prompt, or the chat messages as JSON.
pub fn user_input(req: &InferenceRequest) -> Vec<u8> {
    match &req.prompt {
        Prompt::Text(t) => t.as_bytes().to_vec(),
        Prompt::Tokens(ids) => ids.iter().flat_map(|t| t.to_le_bytes()).collect(),
        Prompt::Chat(_) => req
            .body
            .get("messages")
            .and_then(|m| serde_json::to_vec(m).ok())
            .unwrap_or_default(),
    }
}

/// The chained block hashes of a request's user input.
pub fn hash_prompt(req: &InferenceRequest, block_chars: usize, max_blocks: usize) -> Vec<u64> {
    let input = user_input(req);
    let block_chars = block_chars.max(1);
    let usable = input.len().min(block_chars.saturating_mul(max_blocks));
    let mut seed = req.model.as_bytes().to_vec();
    if let Some(salt) = &req.cache_salt {
        // Length-prefixed, so that model "ab" + salt "c" is not model "a" + salt "bc".
        seed.extend_from_slice(&(salt.len() as u64).to_le_bytes());
        seed.extend_from_slice(salt.as_bytes());
    }
    let mut prev = xxh3_64(&seed);
    let mut out = Vec::with_capacity(usable / block_chars);
    let mut buf = Vec::with_capacity(block_chars + 8);
    for block in input[..usable].chunks_exact(block_chars) {
        buf.clear();
        buf.extend_from_slice(block);
        buf.extend_from_slice(&prev.to_le_bytes());
        prev = xxh3_64(&buf);
        out.push(prev);
    }
    out
}

impl ApproxIndex {
    /// Per pod, the blocks of `hashes` it holds, counted until a block no pod holds.
    pub fn match_longest(&self, hashes: &[u64]) -> HashMap<String, u32> {
        let map = self.hash_to_pods.read();
        let mut out: HashMap<String, u32> = HashMap::new();
        for h in hashes {
            match map.get(h) {
                Some(pods) if !pods.is_empty() => {
                    for p in pods {
                        *out.entry(p.to_string()).or_default() += 1;
                    }
                }
                _ => break,
            }
        }
        out
    }

    /// Records that `pod` now holds `hashes` (its LRU holds `capacity` blocks).
    pub fn add(&self, hashes: &[u64], pod: &str, capacity: usize) {
        let pod: Arc<str> = pod.into();
        let mut evicted = Vec::new();
        {
            let mut pods = self.pods.lock();
            let lru = pods.entry(pod.clone()).or_insert_with(|| PodLru {
                capacity: capacity.max(1),
                ..Default::default()
            });
            for h in hashes {
                if let Some(e) = lru.touch(*h) {
                    evicted.push(e);
                }
            }
        }
        let mut map = self.hash_to_pods.write();
        for e in evicted {
            if let Some(set) = map.get_mut(&e) {
                set.remove(&pod);
                if set.is_empty() {
                    map.remove(&e);
                }
            }
        }
        for h in hashes {
            map.entry(*h).or_default().insert(pod.clone());
        }
    }

    /// Forgets pods not in `live` (at most every [`PRUNE_INTERVAL`]).
    pub fn prune(&self, live: &dyn Fn(&str) -> bool) {
        {
            let mut last = self.last_prune.lock();
            if last.elapsed() < PRUNE_INTERVAL {
                return;
            }
            *last = Instant::now();
        }
        let gone: Vec<(Arc<str>, PodLru)> = {
            let mut pods = self.pods.lock();
            let ids: Vec<Arc<str>> = pods.keys().filter(|p| !live(p)).cloned().collect();
            ids.into_iter()
                .filter_map(|id| pods.remove(&id).map(|l| (id, l)))
                .collect()
        };
        if gone.is_empty() {
            return;
        }
        let mut map = self.hash_to_pods.write();
        for (pod, lru) in gone {
            for h in lru.stamp_of.keys() {
                if let Some(set) = map.get_mut(h) {
                    set.remove(&pod);
                    if set.is_empty() {
                        map.remove(h);
                    }
                }
            }
        }
    }

    /// Entries (block, pod) held.
    pub fn size(&self) -> usize {
        self.pods.lock().values().map(|l| l.stamp_of.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(prompt: &str) -> InferenceRequest {
        crate::request::parse(
            "/v1/completions",
            serde_json::json!({"model": "m", "prompt": prompt})
                .to_string()
                .as_bytes(),
        )
        .unwrap()
    }

    #[test]
    fn shared_prefixes_share_hashes() {
        let a = hash_prompt(&req(&"x".repeat(200)), 64, 256);
        let b = hash_prompt(&req(&format!("{}y", "x".repeat(199))), 64, 256);
        assert_eq!(a.len(), 3, "200 chars: 3 full blocks of 64");
        assert_eq!(a[..3], b[..3], "the first 192 characters are equal");
        let c = hash_prompt(&req(&format!("y{}", "x".repeat(199))), 64, 256);
        assert!(
            a.iter().zip(&c).all(|(x, y)| x != y),
            "a chain differs from block 0 on"
        );
        assert_eq!(hash_prompt(&req(&"x".repeat(1000)), 64, 4).len(), 4);
    }

    #[test]
    fn lookups_stop_at_the_first_unknown_block_and_lrus_evict() {
        let idx = ApproxIndex::default();
        idx.add(&[1, 2, 3], "a", 10);
        idx.add(&[1, 2], "b", 10);
        let m = idx.match_longest(&[1, 2, 3, 4]);
        assert_eq!((m["a"], m["b"]), (3, 2));
        assert!(idx.match_longest(&[9, 1]).is_empty());
        // Capacity 2: adding 4 and 5 evicts 1 and 2 for pod c.
        idx.add(&[1, 2], "c", 2);
        idx.add(&[4, 5], "c", 2);
        assert_eq!(idx.match_longest(&[4, 5]).get("c"), Some(&2));
        assert_eq!(idx.match_longest(&[1]).get("c"), None);
        assert_eq!(idx.size(), 3 + 2 + 2);
        *idx.last_prune.lock() = Instant::now() - PRUNE_INTERVAL;
        idx.prune(&|p| p != "a");
        assert_eq!(idx.match_longest(&[1, 2, 3]).get("a"), None);
        assert_eq!(idx.size(), 4);
    }
}
