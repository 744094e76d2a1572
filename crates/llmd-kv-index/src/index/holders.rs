//! Who holds which blocks of one run: a list of spans `(pod, tier mask, [start, end))` over the
//! run's logical offsets, sorted by pod then start. A pod's spans never overlap; adjacent spans of
//! one pod differ in their mask (equal masks are merged). A run whose blocks are all held by the
//! same pods therefore has one span per pod, however long it is.

use crate::events::Tier;

/// Every tier bit.
#[cfg(test)]
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

/// One pod's hold on the run offsets `[start, end)`, in the tiers of `mask`. 12 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Span {
    /// Pod index in the high 24 bits, tier mask in the low 8.
    packed: u32,
    pub(super) start: u32,
    pub(super) end: u32,
}

impl Span {
    fn new(pod: u32, mask: u8, start: u32, end: u32) -> Self {
        Self {
            packed: (pod << 8) | u32::from(mask),
            start,
            end,
        }
    }

    #[inline]
    pub(super) fn pod(&self) -> u32 {
        self.packed >> 8
    }

    #[inline]
    pub(super) fn mask(&self) -> u8 {
        self.packed as u8
    }

    #[inline]
    pub(super) fn covers(&self, off: u32) -> bool {
        self.start <= off && off < self.end
    }
}

/// The spans of one run.
#[derive(Debug, Default)]
pub(super) struct Holders(Vec<Span>);

impl Holders {
    pub(super) fn spans(&self) -> &[Span] {
        &self.0
    }

    #[cfg(test)]
    pub(super) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Heap bytes owned.
    pub(super) fn heap_bytes(&self) -> usize {
        self.0.capacity() * std::mem::size_of::<Span>()
    }

    /// Index range of `pod`'s spans.
    #[inline]
    pub(super) fn pod_range(spans: &[Span], pod: u32) -> std::ops::Range<usize> {
        let lo = spans.partition_point(|s| s.pod() < pod);
        let hi = lo + spans[lo..].partition_point(|s| s.pod() == pod);
        lo..hi
    }

    /// How far `pod`'s hold runs from `off` (in any tier), starting at its span `idx` which
    /// covers `off`: the end of that span, extended over the pod's adjacent spans.
    #[inline]
    pub(super) fn covered_from(spans: &[Span], idx: usize, off: u32) -> u32 {
        let pod = spans[idx].pod();
        let mut end = spans[idx].end;
        for s in &spans[idx + 1..] {
            if s.pod() != pod || s.start != end {
                break;
            }
            end = s.end;
        }
        end - off
    }

    /// Smallest start and largest end over all spans (`None`: nobody holds anything).
    pub(super) fn extent(&self) -> Option<(u32, u32)> {
        let lo = self.0.iter().map(|s| s.start).min()?;
        let hi = self.0.iter().map(|s| s.end).max()?;
        Some((lo, hi))
    }

    /// The pods holding offset `off`, with their masks, by pod.
    pub(super) fn at(&self, off: u32) -> impl Iterator<Item = (u32, u8)> + '_ {
        self.0
            .iter()
            .filter(move |s| s.covers(off))
            .map(|s| (s.pod(), s.mask()))
    }

    /// Adds the tiers `bits` to `pod` over `[a, b)`; returns how many of those offsets the pod
    /// did not hold before (in any tier). `scratch` is reused between calls.
    pub(super) fn add(
        &mut self,
        pod: u32,
        bits: u8,
        a: u32,
        b: u32,
        scratch: &mut Vec<Span>,
    ) -> u64 {
        debug_assert!(a < b && bits != 0);
        let range = Self::pod_range(&self.0, pod);
        // Fast paths: the pod holds nothing here yet, or extends its last span with the same
        // tiers (a store continuing a chain), or already holds all of [a, b) in these tiers.
        if range.is_empty() {
            self.0.insert(range.start, Span::new(pod, bits, a, b));
            return u64::from(b - a);
        }
        let last = &mut self.0[range.end - 1];
        if last.end == a && last.mask() == bits {
            last.end = b;
            return u64::from(b - a);
        }
        if let Some(s) = self.0[range.clone()].iter().find(|s| s.covers(a))
            && s.end >= b
            && s.mask() & bits == bits
        {
            return 0;
        }
        scratch.clear();
        let mut newly = 0u64;
        let mut cur = a;
        for s in &self.0[range.clone()] {
            if s.end <= cur || s.start >= b {
                if s.start >= b && cur < b {
                    scratch.push(Span::new(pod, bits, cur, b));
                    newly += u64::from(b - cur);
                    cur = b;
                }
                scratch.push(*s);
                continue;
            }
            if s.start > cur {
                scratch.push(Span::new(pod, bits, cur, s.start));
                newly += u64::from(s.start - cur);
                cur = s.start;
            }
            if s.start < cur {
                scratch.push(Span::new(pod, s.mask(), s.start, cur));
            }
            let ov_end = s.end.min(b);
            scratch.push(Span::new(pod, s.mask() | bits, cur, ov_end));
            cur = ov_end;
            if s.end > b {
                scratch.push(Span::new(pod, s.mask(), b, s.end));
            }
        }
        if cur < b {
            scratch.push(Span::new(pod, bits, cur, b));
            newly += u64::from(b - cur);
        }
        merge_adjacent(scratch);
        self.0.splice(range, scratch.drain(..));
        newly
    }

    /// Clears the tiers `bits` of `pod` over `[a, b)`; returns how many offsets the pod no longer
    /// holds in any tier.
    pub(super) fn remove(
        &mut self,
        pod: u32,
        bits: u8,
        a: u32,
        b: u32,
        scratch: &mut Vec<Span>,
    ) -> u64 {
        let range = Self::pod_range(&self.0, pod);
        if !self.0[range.clone()]
            .iter()
            .any(|s| s.start < b && s.end > a && s.mask() & bits != 0)
        {
            return 0;
        }
        scratch.clear();
        let mut gone = 0u64;
        for s in &self.0[range.clone()] {
            if s.end <= a || s.start >= b || s.mask() & bits == 0 {
                scratch.push(*s);
                continue;
            }
            if s.start < a {
                scratch.push(Span::new(pod, s.mask(), s.start, a));
            }
            let (lo, hi) = (s.start.max(a), s.end.min(b));
            let left = s.mask() & !bits;
            if left == 0 {
                gone += u64::from(hi - lo);
            } else {
                scratch.push(Span::new(pod, left, lo, hi));
            }
            if s.end > b {
                scratch.push(Span::new(pod, s.mask(), b, s.end));
            }
        }
        merge_adjacent(scratch);
        self.0.splice(range, scratch.drain(..));
        gone
    }

    /// Drops every span of `pod`; returns the offsets it held.
    pub(super) fn remove_pod(&mut self, pod: u32) -> u64 {
        let range = Self::pod_range(&self.0, pod);
        let held = self.0[range.clone()]
            .iter()
            .map(|s| u64::from(s.end - s.start))
            .sum();
        self.0.drain(range);
        held
    }

    /// (block, pod) entries: the offsets held, summed over pods.
    pub(super) fn entries(&self) -> u64 {
        self.0.iter().map(|s| u64::from(s.end - s.start)).sum()
    }

    /// Frees spare capacity when most of it is unused.
    pub(super) fn shrink(&mut self) {
        if self.0.capacity() > 2 * self.0.len() + 4 {
            self.0.shrink_to_fit();
        }
    }
}

/// Merges adjacent spans of equal mask and drops empty ones (one pod's spans, in order).
fn merge_adjacent(spans: &mut Vec<Span>) {
    spans.retain(|s| s.start < s.end);
    spans.dedup_by(|next, prev| {
        if prev.end == next.start && prev.mask() == next.mask() {
            prev.end = next.end;
            true
        } else {
            false
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spans(h: &Holders) -> Vec<(u32, u8, u32, u32)> {
        h.0.iter()
            .map(|s| (s.pod(), s.mask(), s.start, s.end))
            .collect()
    }

    #[test]
    fn add_merges_and_counts_only_new_offsets() {
        let mut h = Holders::default();
        let mut sc = Vec::new();
        assert_eq!(h.add(5, 1, 0, 10, &mut sc), 10);
        assert_eq!(h.add(5, 1, 10, 20, &mut sc), 10, "chain continued");
        assert_eq!(h.add(5, 1, 3, 7, &mut sc), 0, "already held");
        assert_eq!(h.add(2, 1, 5, 8, &mut sc), 3);
        assert_eq!(spans(&h), vec![(2, 1, 5, 8), (5, 1, 0, 20)]);
        // CPU on 15..25: 15..20 gains a tier, 20..25 is new.
        assert_eq!(h.add(5, 2, 15, 25, &mut sc), 5);
        assert_eq!(
            spans(&h),
            vec![(2, 1, 5, 8), (5, 1, 0, 15), (5, 3, 15, 20), (5, 2, 20, 25)]
        );
        assert_eq!(Holders::covered_from(h.spans(), 1, 4), 21);
        // Filling a gap between two spans of the same mask merges them.
        assert_eq!(h.add(2, 1, 10, 12, &mut sc), 2);
        assert_eq!(h.add(2, 1, 8, 10, &mut sc), 2);
        assert_eq!(spans(&h)[0], (2, 1, 5, 12));
        assert_eq!(h.entries(), 7 + 25);
        assert_eq!(h.extent(), Some((0, 25)));
    }

    #[test]
    fn remove_clears_tiers_then_offsets() {
        let mut h = Holders::default();
        let mut sc = Vec::new();
        h.add(1, 1, 0, 10, &mut sc);
        h.add(1, 2, 0, 4, &mut sc);
        assert_eq!(h.remove(1, 1, 2, 6, &mut sc), 2, "2..4 still on CPU");
        assert_eq!(spans(&h), vec![(1, 3, 0, 2), (1, 2, 2, 4), (1, 1, 6, 10)]);
        assert_eq!(h.remove(1, 1, 2, 6, &mut sc), 0, "nothing left to clear");
        assert_eq!(h.remove(9, ALL_TIERS, 0, 10, &mut sc), 0);
        assert_eq!(h.remove(1, ALL_TIERS, 0, 10, &mut sc), 8);
        assert!(h.is_empty());
        h.add(3, 1, 0, 4, &mut sc);
        h.add(4, 1, 2, 4, &mut sc);
        assert_eq!(h.remove_pod(3), 4);
        assert_eq!(h.at(3).collect::<Vec<_>>(), vec![(4, 1)]);
    }

    #[test]
    fn tier_masks() {
        assert_eq!(
            tiers_of(tier_bit(Tier::Gpu) | tier_bit(Tier::Cpu)),
            vec![Tier::Gpu, Tier::Cpu]
        );
    }
}
