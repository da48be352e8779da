//! A part of a flow that many flows hold alike, shared: most flows to one service from one
//! kind of client carry the same classification (name, ALPN, JA4, category, rule, action), so
//! a flow holds a pointer to one interned copy ([`Pool`]) rather than a copy of its own. Read
//! through [`Deref`] it is the empty value until written; written through [`DerefMut`] it is
//! copied first if other flows hold it (copy on write), so a flow never changes another's.
//! ARCHITECTURE.md, "Flow memory and floods".

use std::hash::Hash;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use super::lazy::Empty;

/// `T`, shared with the flows whose `T` is equal once [`Shared::share`]d.
#[derive(Debug, Default, Clone)]
pub struct Shared<T>(Option<Arc<T>>);

impl<T> Shared<T> {
    /// True when written (own or shared).
    pub fn is_set(&self) -> bool {
        self.0.is_some()
    }
}

impl<T: Eq + Hash> Shared<T> {
    /// Replaces this flow's own copy by the pool's equal one (taking it into the pool when
    /// the pool has none and room): flows that say the same then hold one copy.
    pub fn share(&mut self, pool: &mut Pool<T>) {
        if let Some(mine) = self.0.take() {
            self.0 = Some(pool.intern(mine));
        }
    }
}

impl<T: Empty> Deref for Shared<T> {
    type Target = T;
    fn deref(&self) -> &T {
        match self.0.as_deref() {
            Some(v) => v,
            None => T::empty(),
        }
    }
}

impl<T: Empty + Clone> DerefMut for Shared<T> {
    fn deref_mut(&mut self) -> &mut T {
        Arc::make_mut(self.0.get_or_insert_with(Arc::default))
    }
}

impl<T: serde::Serialize + Empty> serde::Serialize for Shared<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (**self).serialize(s)
    }
}

/// The interned values, bounded: past `cap` distinct values (an attacker's unique names, say)
/// new ones stay unshared, as they would be without the pool. Values no flow holds any more
/// leave at [`Pool::purge`].
#[derive(Debug)]
pub struct Pool<T: ?Sized> {
    set: hashbrown::HashSet<Arc<T>>,
    cap: usize,
}

impl<T: ?Sized + Eq + Hash> Pool<T> {
    /// A pool of at most `cap` values.
    pub fn new(cap: usize) -> Self {
        Pool { set: hashbrown::HashSet::new(), cap }
    }

    /// The pool's value equal to `v`, or `v` (then kept when there is room).
    pub fn intern(&mut self, v: Arc<T>) -> Arc<T> {
        if let Some(have) = self.set.get(&*v) {
            return have.clone();
        }
        if self.set.len() < self.cap {
            self.set.insert(v.clone());
        }
        v
    }

    /// The pool's value equal to `v`, or a new one made from it (then kept when there is
    /// room): no allocation when the pool has it.
    pub fn intern_ref(&mut self, v: &T) -> Arc<T>
    where
        for<'a> Arc<T>: From<&'a T>,
    {
        if let Some(have) = self.set.get(v) {
            return have.clone();
        }
        let new = Arc::from(v);
        if self.set.len() < self.cap {
            self.set.insert(new.clone());
        }
        new
    }

    /// Drops the values only the pool holds.
    pub fn purge(&mut self) {
        self.set.retain(|v| Arc::strong_count(v) > 1);
    }

    /// Number of values held.
    pub fn len(&self) -> usize {
        self.set.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, Clone, PartialEq, Eq, Hash)]
    struct V {
        n: u32,
    }
    impl Empty for V {
        fn empty() -> &'static Self {
            static E: V = V { n: 0 };
            &E
        }
    }

    #[test]
    fn equal_values_are_held_once_and_a_write_copies() {
        let mut pool = Pool::new(8);
        let (mut a, mut b) = (Shared::<V>::default(), Shared::<V>::default());
        assert_eq!(a.n, 0);
        assert!(!a.is_set());
        a.n = 7;
        b.n = 7;
        a.share(&mut pool);
        b.share(&mut pool);
        assert!(Arc::ptr_eq(a.0.as_ref().unwrap(), b.0.as_ref().unwrap()));
        assert_eq!(pool.len(), 1);
        // Writing one leaves the other as it was.
        b.n = 8;
        assert_eq!((a.n, b.n), (7, 8));
        drop(a);
        pool.purge();
        assert!(pool.is_empty(), "no flow holds 7 any more");
    }

    #[test]
    fn strings_are_interned_by_reference() {
        let mut pool: Pool<str> = Pool::new(4);
        let a = pool.intern_ref("t13d1516h2_8daaf6152771_e5627efa2ab1");
        let b = pool.intern_ref(&String::from("t13d1516h2_8daaf6152771_e5627efa2ab1"));
        assert!(Arc::ptr_eq(&a, &b));
        drop((a, b));
        pool.purge();
        assert!(pool.is_empty());
    }

    #[test]
    fn past_its_cap_the_pool_keeps_nothing_new() {
        let mut pool = Pool::new(1);
        let mut held = Vec::new();
        for n in 1..=3 {
            let mut s = Shared(Some(Arc::new(V { n })));
            s.share(&mut pool);
            held.push(s);
        }
        assert_eq!(pool.len(), 1);
        assert_eq!(held.iter().map(|s| s.n).collect::<Vec<_>>(), [1, 2, 3]);
    }
}
