//! Pod identities: the names the world uses (`10.0.0.7:8000`) interned to small indexes the
//! index stores.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::RwLock;

/// A pod's index in the [`super::PrefixIndex`]. Never reused while the registry lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PodIdx(pub(crate) u32);

impl PodIdx {
    /// Largest index (24 bits: the rest of a holder word is the tier mask).
    pub const MAX: u32 = (1 << 24) - 1;

    /// The raw index.
    pub fn get(self) -> u32 {
        self.0
    }

    /// An index from a raw value, if in range (tests and reference models).
    pub fn new(raw: u32) -> Option<Self> {
        (raw <= Self::MAX).then_some(Self(raw))
    }
}

/// Too many distinct pods over the registry's lifetime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("more than {} pods registered over the index's lifetime", PodIdx::MAX)]
pub struct TooManyPods;

#[derive(Default)]
struct Inner {
    by_name: HashMap<Arc<str>, PodIdx, foldhash::fast::RandomState>,
    names: Vec<Option<Arc<str>>>,
}

/// Name ↔ index table.
#[derive(Default)]
pub struct PodRegistry {
    inner: RwLock<Inner>,
}

impl std::fmt::Debug for PodRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodRegistry")
            .field("pods", &self.inner.read().by_name.len())
            .finish()
    }
}

impl PodRegistry {
    /// The index of `name`, registering it if new.
    pub fn intern(&self, name: &str) -> Result<PodIdx, TooManyPods> {
        if let Some(idx) = self.get(name) {
            return Ok(idx);
        }
        let mut inner = self.inner.write();
        if let Some(idx) = inner.by_name.get(name) {
            return Ok(*idx);
        }
        let raw = u32::try_from(inner.names.len()).map_err(|_| TooManyPods)?;
        let idx = PodIdx::new(raw).ok_or(TooManyPods)?;
        let name: Arc<str> = Arc::from(name);
        inner.names.push(Some(name.clone()));
        inner.by_name.insert(name, idx);
        Ok(idx)
    }

    /// The index of `name`, if registered.
    pub fn get(&self, name: &str) -> Option<PodIdx> {
        self.inner.read().by_name.get(name).copied()
    }

    /// The indexes of `names` (`None` for unknown ones), in order, under one read lock (a
    /// lookup over many pods resolves them all at once).
    pub fn get_many(&self, names: &[&str], out: &mut Vec<Option<PodIdx>>) {
        let inner = self.inner.read();
        out.extend(names.iter().map(|n| inner.by_name.get(*n).copied()));
    }

    /// The name of `idx`, if registered and not forgotten.
    pub fn name(&self, idx: PodIdx) -> Option<Arc<str>> {
        self.inner
            .read()
            .names
            .get(idx.0 as usize)
            .cloned()
            .flatten()
    }

    /// Forgets `name` (its index is not reused); returns the index it had.
    pub fn forget(&self, name: &str) -> Option<PodIdx> {
        let mut inner = self.inner.write();
        let idx = inner.by_name.remove(name)?;
        if let Some(slot) = inner.names.get_mut(idx.0 as usize) {
            *slot = None;
        }
        Some(idx)
    }

    /// Registered pods.
    pub fn len(&self) -> usize {
        self.inner.read().by_name.len()
    }

    /// True when no pod is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intern_get_forget() {
        let r = PodRegistry::default();
        let a = r.intern("10.0.0.1:8000").unwrap();
        let b = r.intern("10.0.0.2:8000").unwrap();
        assert_ne!(a, b);
        assert_eq!(r.intern("10.0.0.1:8000").unwrap(), a);
        assert_eq!(r.name(b).as_deref(), Some("10.0.0.2:8000"));
        assert_eq!(r.forget("10.0.0.1:8000"), Some(a));
        assert_eq!(r.get("10.0.0.1:8000"), None);
        assert_eq!(r.name(a), None);
        let a2 = r.intern("10.0.0.1:8000").unwrap();
        assert_ne!(a2, a, "indexes are not reused");
        assert_eq!(r.len(), 2);
        let mut got = Vec::new();
        r.get_many(&["10.0.0.2:8000", "nope", "10.0.0.1:8000"], &mut got);
        assert_eq!(got, vec![Some(b), None, Some(a2)]);
    }
}
