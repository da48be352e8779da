//! A part of a flow most flows never need, allocated when first written: read through
//! [`std::ops::Deref`] it is the empty value (no allocation), written through
//! [`std::ops::DerefMut`] it is allocated. A SYN flood's flows then hold none of it.

use std::ops::{Deref, DerefMut};

/// A type with a shared empty value.
pub trait Empty: Default + 'static {
    /// The empty value.
    fn empty() -> &'static Self;
}

/// `T`, allocated at its first write.
#[derive(Debug, Default, Clone)]
pub struct Lazy<T>(Option<Box<T>>);

impl<T> Lazy<T> {
    /// The value, if it was ever written.
    pub fn get_mut(&mut self) -> Option<&mut T> {
        self.0.as_deref_mut()
    }

    /// Takes the value out, if it was ever written (the field is empty again).
    pub fn take(&mut self) -> Option<Box<T>> {
        self.0.take()
    }

    /// Back to the empty value (the allocation is freed).
    pub fn clear(&mut self) {
        self.0 = None;
    }

    /// True when allocated.
    pub fn is_allocated(&self) -> bool {
        self.0.is_some()
    }
}

impl<T: Empty> Deref for Lazy<T> {
    type Target = T;
    fn deref(&self) -> &T {
        match self.0.as_deref() {
            Some(v) => v,
            None => T::empty(),
        }
    }
}

impl<T: Empty> DerefMut for Lazy<T> {
    fn deref_mut(&mut self) -> &mut T {
        self.0.get_or_insert_with(Box::default)
    }
}

impl<T: serde::Serialize + Empty> serde::Serialize for Lazy<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (**self).serialize(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, PartialEq)]
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
    fn reads_do_not_allocate_writes_do() {
        let mut l = Lazy::<V>::default();
        assert_eq!(l.n, 0);
        assert!(!l.is_allocated() && l.get_mut().is_none());
        l.n = 7;
        assert!(l.is_allocated());
        assert_eq!(*l, V { n: 7 });
        l.clear();
        assert_eq!(l.n, 0);
    }
}
