//! Speculative prefix entries (llm-d's `speculativeIndexing`): what the EPP just routed,
//! before the pod says so.
//!
//! A pod publishes the blocks a request stored only once it has computed them: tens to
//! hundreds of milliseconds after the decision, more under load. Requests sharing a new
//! prefix that arrive in that window would find nothing in the index and spread over several
//! pods, each computing the same prefix. So when a decision is made, the prompt's block keys
//! are recorded for each pod it names as *provisional* entries that live `speculativeTTL`
//! (2 s). The pod's own KV events confirm them exactly (our keys are vLLM's block hashes);
//! until then, or if they never come (the request failed), the entry expires.
//!
//! Block keys are chained (each key hashes its parent), so a pod holding key `i` of a prompt
//! provisionally holds keys `0..=i` of it too: a lookup needs no scan, it probes the first
//! block past the confirmed match and, when that is held, binary-searches for the last held
//! one (`O(log n)` probes per candidate). Only keys past a pod's confirmed match are inserted.
//!
//! Memory is bounded twice: entries expire after the TTL (purged on insert), and at most
//! [`MAX_ENTRIES`] (block, pod) entries are kept (the oldest go first).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use llmd_kv_index::hashing::BlockKey;
use parking_lot::RwLock;

/// Most provisional (block, pod) entries kept (~48 MiB with the map's overhead).
pub const MAX_ENTRIES: usize = 1 << 20;

#[derive(Debug, Default)]
struct State {
    pod_ids: HashMap<Arc<str>, u32>,
    /// (block key, pod) → when it expires.
    entries: HashMap<(u64, u32), Instant>,
    /// Inserts in time order: when they expire, the pod, the keys.
    order: VecDeque<(Instant, u32, Vec<u64>)>,
}

/// The provisional entries of one EPP.
#[derive(Debug)]
pub struct Speculative {
    ttl: Duration,
    weight: f64,
    state: RwLock<State>,
}

impl Speculative {
    /// Entries living `ttl`, counting `weight` (0..=1) of a confirmed block when scored.
    pub fn new(ttl: Duration, weight: f64) -> Self {
        Self {
            ttl,
            weight: weight.clamp(0.0, 1.0),
            state: RwLock::new(State::default()),
        }
    }

    /// What a provisional block counts for against a confirmed one.
    pub fn weight(&self) -> f64 {
        self.weight
    }

    /// Records that `pod` is computing `keys` (those from `from` on: the ones before are
    /// confirmed already).
    pub fn insert(&self, pod: &str, keys: &[BlockKey], from: usize) {
        if from >= keys.len() {
            return;
        }
        let now = Instant::now();
        let expires = now + self.ttl;
        let mut s = self.state.write();
        let s = &mut *s;
        purge(s, now);
        let next = u32::try_from(s.pod_ids.len()).unwrap_or(u32::MAX);
        let id = match s.pod_ids.get(pod) {
            Some(id) => *id,
            None => {
                s.pod_ids.insert(pod.into(), next);
                next
            }
        };
        let fresh: Vec<u64> = keys[from..].iter().map(|k| k.0).collect();
        for k in &fresh {
            s.entries.insert((*k, id), expires);
        }
        s.order.push_back((expires, id, fresh));
        while s.entries.len() > MAX_ENTRIES {
            let Some((_, pod, keys)) = s.order.pop_front() else {
                break;
            };
            drop_keys(s, pod, &keys, None);
        }
    }

    /// The blocks of `keys` `pod` holds from block 0, confirmed or provisional, given the
    /// `confirmed` count the index found.
    pub fn matched(&self, pod: &str, keys: &[BlockKey], confirmed: u32) -> u32 {
        let start = confirmed as usize;
        if start >= keys.len() {
            return confirmed;
        }
        let now = Instant::now();
        let s = self.state.read();
        let Some(id) = s.pod_ids.get(pod).copied() else {
            return confirmed;
        };
        let held = |i: usize| {
            s.entries
                .get(&(keys[i].0, id))
                .is_some_and(|exp| *exp > now)
        };
        if !held(start) {
            return confirmed;
        }
        // Held at `lo`; find the last held index in [lo, hi).
        let (mut lo, mut hi) = (start, keys.len());
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if held(mid) {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        u32::try_from(lo + 1).unwrap_or(u32::MAX)
    }

    /// (block, pod) entries kept now (expired ones included until the next insert).
    pub fn len(&self) -> usize {
        self.state.read().entries.len()
    }

    /// True with no entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Drops the inserts that expired by `now`.
fn purge(s: &mut State, now: Instant) {
    while s.order.front().is_some_and(|(exp, _, _)| *exp <= now) {
        if let Some((exp, pod, keys)) = s.order.pop_front() {
            drop_keys(s, pod, &keys, Some(exp));
        }
    }
}

/// Removes an insert's entries, unless a later insert of the same (block, pod) renewed them.
fn drop_keys(s: &mut State, pod: u32, keys: &[u64], expired: Option<Instant>) {
    for k in keys {
        if let Some(exp) = s.entries.get(&(*k, pod)) {
            let renewed = expired.is_some_and(|e| *exp > e);
            if !renewed {
                s.entries.remove(&(*k, pod));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A chain: key i stands for the prefix 0..=i of prompt `p`.
    fn chain(p: u64, n: usize) -> Vec<BlockKey> {
        (0..n as u64).map(|i| BlockKey(p << 32 | i)).collect()
    }

    #[test]
    fn a_routed_prompt_matches_until_it_expires() {
        let s = Speculative::new(Duration::from_millis(40), 1.0);
        let a = chain(1, 100);
        s.insert("p:1", &a, 0);
        assert_eq!(s.matched("p:1", &a, 0), 100);
        assert_eq!(s.matched("p:2", &a, 0), 0);
        // A request sharing the first 60 blocks.
        let mut b = a[..60].to_vec();
        b.extend(chain(2, 40));
        assert_eq!(s.matched("p:1", &b, 0), 60);
        // The confirmed count wins when it is longer.
        assert_eq!(s.matched("p:1", &b, 70), 70);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(s.matched("p:1", &a, 0), 0);
        s.insert("p:2", &chain(3, 1), 0);
        assert_eq!(s.len(), 1, "expired entries purged on insert");
    }

    #[test]
    fn only_keys_past_the_confirmed_match_are_inserted() {
        let s = Speculative::new(Duration::from_secs(5), 1.0);
        let a = chain(1, 10);
        s.insert("p:1", &a, 4);
        assert_eq!(s.len(), 6);
        assert_eq!(s.matched("p:1", &a, 4), 10);
        assert_eq!(
            s.matched("p:1", &a, 0),
            0,
            "blocks 0..4 are the index's to say"
        );
    }
}
