//! The pods holding one block: up to three `(pod, tier mask)` pairs inline, a heap list beyond.

use super::PodIdx;
use crate::events::Tier;

/// Every tier bit.
pub(super) const ALL_TIERS: u8 = 0x0f;

/// The bit of a tier in a holder's mask.
pub(super) fn tier_bit(t: Tier) -> u8 {
    match t {
        Tier::Gpu => 1,
        Tier::Cpu => 2,
        Tier::Disk => 4,
        Tier::Other => 8,
    }
}

/// The tiers of a mask.
pub(super) fn tiers_of(mask: u8) -> Vec<Tier> {
    [Tier::Gpu, Tier::Cpu, Tier::Disk, Tier::Other]
        .into_iter()
        .filter(|t| mask & tier_bit(*t) != 0)
        .collect()
}

const INLINE: usize = 3;

/// Packed holder: pod index in the high 24 bits, tier mask in the low 8.
#[inline]
fn pack(pod: PodIdx, mask: u8) -> u32 {
    (pod.0 << 8) | u32::from(mask)
}

#[inline]
fn pod_of(h: u32) -> PodIdx {
    PodIdx(h >> 8)
}

/// 16 bytes: fits the index's 32-byte entry with the key and the recency stamp.
#[allow(clippy::box_collection)] // a thin pointer keeps Holders at 16 bytes (a Vec would make it 24)
pub(super) enum Holders {
    Inline { len: u8, slots: [u32; INLINE] },
    Heap(Box<Vec<u32>>),
}

impl Holders {
    pub(super) fn one(pod: PodIdx, bit: u8) -> Self {
        Holders::Inline {
            len: 1,
            slots: [pack(pod, bit), 0, 0],
        }
    }

    fn as_slice(&self) -> &[u32] {
        match self {
            Holders::Inline { len, slots } => &slots[..usize::from(*len)],
            Holders::Heap(v) => v,
        }
    }

    fn as_mut_slice(&mut self) -> &mut [u32] {
        match self {
            Holders::Inline { len, slots } => &mut slots[..usize::from(*len)],
            Holders::Heap(v) => v,
        }
    }

    pub(super) fn len(&self) -> usize {
        self.as_slice().len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    #[inline]
    pub(super) fn contains(&self, pod: PodIdx) -> bool {
        self.as_slice().iter().any(|h| pod_of(*h) == pod)
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (PodIdx, u8)> + '_ {
        self.as_slice()
            .iter()
            .map(|h| (pod_of(*h), (*h & 0xff) as u8))
    }

    /// Heap bytes owned (the boxed `Vec` header and its buffer).
    pub(super) fn heap_bytes(&self) -> usize {
        match self {
            Holders::Inline { .. } => 0,
            Holders::Heap(v) => std::mem::size_of::<Vec<u32>>() + v.capacity() * 4,
        }
    }

    /// Adds `bit` for `pod`; true when the pod did not hold the block before.
    pub(super) fn add(&mut self, pod: PodIdx, bit: u8) -> bool {
        if let Some(h) = self.as_mut_slice().iter_mut().find(|h| pod_of(**h) == pod) {
            *h |= u32::from(bit);
            return false;
        }
        match self {
            Holders::Inline { len, slots } if usize::from(*len) < INLINE => {
                slots[usize::from(*len)] = pack(pod, bit);
                *len += 1;
            }
            Holders::Inline { slots, .. } => {
                let mut v = Vec::with_capacity(INLINE * 2);
                v.extend_from_slice(slots);
                v.push(pack(pod, bit));
                *self = Holders::Heap(Box::new(v));
            }
            Holders::Heap(v) => v.push(pack(pod, bit)),
        }
        true
    }

    /// Clears `bits` for `pod`; true when that left the pod holding nothing (it is dropped).
    pub(super) fn remove(&mut self, pod: PodIdx, bits: u8) -> bool {
        let Some(i) = self.as_slice().iter().position(|h| pod_of(*h) == pod) else {
            return false;
        };
        let slots = self.as_mut_slice();
        slots[i] &= !u32::from(bits);
        if slots[i] & 0xff != 0 {
            return false;
        }
        match self {
            Holders::Inline { len, slots } => {
                let n = usize::from(*len);
                slots.copy_within(i + 1..n, i);
                *len -= 1;
            }
            Holders::Heap(v) => {
                v.swap_remove(i);
                if v.len() <= INLINE {
                    let mut slots = [0u32; INLINE];
                    slots[..v.len()].copy_from_slice(v);
                    *self = Holders::Inline {
                        len: v.len() as u8,
                        slots,
                    };
                }
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_fits_in_32_bytes() {
        assert_eq!(std::mem::size_of::<Holders>(), 16);
        assert_eq!(std::mem::size_of::<super::super::Entry>(), 32);
    }

    #[test]
    fn add_remove_spill_and_unspill() {
        let mut h = Holders::one(PodIdx(1), 1);
        assert!(
            !h.add(PodIdx(1), 2),
            "same pod, new tier is not a new holder"
        );
        for p in 2..=6 {
            assert!(h.add(PodIdx(p), 1));
        }
        assert_eq!(h.len(), 6);
        assert!(h.heap_bytes() > 0);
        assert!(h.contains(PodIdx(5)));
        assert!(!h.remove(PodIdx(1), 1), "still held on CPU");
        assert!(h.contains(PodIdx(1)));
        assert!(h.remove(PodIdx(1), 2));
        assert!(!h.contains(PodIdx(1)));
        assert!(h.remove(PodIdx(2), ALL_TIERS));
        assert!(h.remove(PodIdx(3), ALL_TIERS));
        assert_eq!(h.heap_bytes(), 0, "back inline");
        assert_eq!(h.iter().map(|(p, _)| p.0).collect::<Vec<_>>().len(), 3);
        assert!(!h.remove(PodIdx(99), ALL_TIERS));
        for p in [4, 5, 6] {
            assert!(h.remove(PodIdx(p), ALL_TIERS));
        }
        assert!(h.is_empty());
    }

    #[test]
    fn tier_masks() {
        assert_eq!(
            tiers_of(tier_bit(Tier::Gpu) | tier_bit(Tier::Cpu)),
            vec![Tier::Gpu, Tier::Cpu]
        );
    }
}
