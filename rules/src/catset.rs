//! A fixed-size set of category ids: copyable, allocation-free, so that a domain lookup and a
//! rule match on the hot path never touch the heap.

/// Most categories a rule set may declare.
pub const MAX_CATEGORIES: usize = 256;

/// A set of category ids below [`MAX_CATEGORIES`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CatSet([u64; MAX_CATEGORIES / 64]);

impl CatSet {
    /// Adds `id` (ids at or above [`MAX_CATEGORIES`] are ignored; validation refuses them).
    pub fn insert(&mut self, id: usize) {
        if id < MAX_CATEGORIES {
            self.0[id / 64] |= 1 << (id % 64);
        }
    }

    /// True if `id` is in the set.
    pub fn contains(&self, id: usize) -> bool {
        id < MAX_CATEGORIES && self.0[id / 64] & (1 << (id % 64)) != 0
    }

    /// Adds every member of `other`.
    pub fn union_with(&mut self, other: &CatSet) {
        for (a, b) in self.0.iter_mut().zip(other.0.iter()) {
            *a |= b;
        }
    }

    /// Members of both sets.
    pub fn intersection(&self, other: &CatSet) -> CatSet {
        let mut out = *self;
        for (a, b) in out.0.iter_mut().zip(other.0.iter()) {
            *a &= b;
        }
        out
    }

    /// True if every member of `other` is in `self`.
    pub fn is_superset(&self, other: &CatSet) -> bool {
        self.0.iter().zip(other.0.iter()).all(|(a, b)| b & !a == 0)
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|w| *w == 0)
    }

    /// The lowest member.
    pub fn first(&self) -> Option<usize> {
        self.0
            .iter()
            .enumerate()
            .find(|(_, w)| **w != 0)
            .map(|(i, w)| i * 64 + w.trailing_zeros() as usize)
    }

    /// Members in increasing order.
    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        (0..MAX_CATEGORIES).filter(|i| self.contains(*i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_operations() {
        let mut a = CatSet::default();
        assert!(a.is_empty() && a.first().is_none());
        a.insert(3);
        a.insert(200);
        a.insert(999);
        assert!(a.contains(3) && a.contains(200) && !a.contains(999));
        let mut b = CatSet::default();
        b.insert(200);
        assert!(a.is_superset(&b) && !b.is_superset(&a));
        assert_eq!(a.intersection(&b).first(), Some(200));
        b.union_with(&a);
        assert_eq!(b.iter().collect::<Vec<_>>(), vec![3, 200]);
    }
}
