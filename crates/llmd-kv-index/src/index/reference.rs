//! A deliberately simple index (a `HashMap` under one mutex, no eviction) that the real one is
//! compared against with seeded random event streams.

use std::collections::{BTreeMap, HashMap};

use parking_lot::Mutex;

use super::{IndexOps, PodIdx, holders};
use crate::events::Tier;
use crate::hashing::BlockKey;

/// The reference model of [`super::PrefixIndex`].
#[derive(Debug, Default)]
pub struct ReferenceIndex {
    map: Mutex<HashMap<u64, BTreeMap<PodIdx, u8>>>,
}

impl IndexOps for ReferenceIndex {
    fn store(&self, pod: PodIdx, tier: Tier, keys: &[BlockKey]) {
        let mut m = self.map.lock();
        for k in keys {
            *m.entry(k.0).or_default().entry(pod).or_default() |= holders::tier_bit(tier);
        }
    }

    fn remove(&self, pod: PodIdx, tier: Tier, keys: &[BlockKey]) {
        let mut m = self.map.lock();
        for k in keys {
            if let Some(pods) = m.get_mut(&k.0) {
                if let Some(mask) = pods.get_mut(&pod) {
                    *mask &= !holders::tier_bit(tier);
                    if *mask == 0 {
                        pods.remove(&pod);
                    }
                }
                if pods.is_empty() {
                    m.remove(&k.0);
                }
            }
        }
    }

    fn clear_pod(&self, pod: PodIdx) {
        let mut m = self.map.lock();
        m.retain(|_, pods| {
            pods.remove(&pod);
            !pods.is_empty()
        });
    }

    fn lookup(&self, keys: &[BlockKey], candidates: &[PodIdx]) -> Vec<u32> {
        let m = self.map.lock();
        candidates
            .iter()
            .map(|p| {
                keys.iter()
                    .take_while(|k| m.get(&k.0).is_some_and(|pods| pods.contains_key(p)))
                    .count() as u32
            })
            .collect()
    }
}
