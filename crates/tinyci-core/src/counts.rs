//! Counting what each key holds open (connections per address, per identity), so one
//! client's share can be capped without a global limit degrading everyone else.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::Hash;
use std::rc::Rc;

/// How many of something each key holds now. Single-threaded, like the servers that use it.
#[derive(Debug)]
pub struct Counts<K: Hash + Eq>(RefCell<HashMap<K, usize>>);

impl<K: Hash + Eq> Default for Counts<K> {
    fn default() -> Self {
        Self(RefCell::new(HashMap::new()))
    }
}

impl<K: Hash + Eq + Clone> Counts<K> {
    /// Takes one place for `key` if it holds fewer than `limit`; the place is given back when
    /// the returned [`Held`] is dropped.
    pub fn take(self: &Rc<Self>, key: K, limit: usize) -> Option<Held<K>> {
        let mut counts = self.0.borrow_mut();
        let held = counts.entry(key.clone()).or_default();
        if *held >= limit {
            return None;
        }
        *held += 1;
        Some(Held {
            counts: self.clone(),
            key,
        })
    }

    /// How many `key` holds now.
    pub fn held(&self, key: &K) -> usize {
        self.0.borrow().get(key).copied().unwrap_or(0)
    }
}

/// One place taken from [`Counts`], given back on drop. Keys holding nothing are forgotten,
/// so the map holds only keys with something open.
#[derive(Debug)]
pub struct Held<K: Hash + Eq> {
    counts: Rc<Counts<K>>,
    key: K,
}

impl<K: Hash + Eq> Drop for Held<K> {
    fn drop(&mut self) {
        let mut counts = self.counts.0.borrow_mut();
        if let Some(held) = counts.get_mut(&self.key) {
            *held = held.saturating_sub(1);
            if *held == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_key_is_capped_on_its_own_and_places_come_back() {
        let counts = Rc::new(Counts::default());
        let a1 = counts.take("a", 2);
        let a2 = counts.take("a", 2);
        assert!(a1.is_some() && a2.is_some());
        assert!(counts.take("a", 2).is_none());
        assert!(counts.take("b", 2).is_some());
        drop(a1);
        assert_eq!(counts.held(&"a"), 1);
        assert!(counts.take("a", 2).is_some());
        drop(a2);
        assert!(
            counts.0.borrow().is_empty(),
            "keys holding nothing are forgotten"
        );
    }
}
