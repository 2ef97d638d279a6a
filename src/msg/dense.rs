//! A map from [`Key`] to a value that costs its entry and five bytes: entries sit in a
//! vector (freed places reused), and the hash table holds only their 4-byte places.
//!
//! A `HashMap<Key, V>` keeps whole entries in its buckets and, at the load factors
//! hashbrown runs between (44% to 87.5% full), pays for 1.1 to 2.3 entries per entry;
//! for the owner's user table (one entry per user known, the largest table a shard
//! has in the messaging mode) that slack was the biggest single cost per idle user.
//! Here the slack is in 4-byte buckets, and the vector grows by doubling only while no
//! freed place is left.
#![forbid(unsafe_code)]

use std::hash::BuildHasher as _;

use hashbrown::{DefaultHashBuilder, HashTable};

use super::Key;
use super::chunked::Chunked;

/// See the module docs.
#[derive(Debug, Default)]
pub struct DenseMap<V> {
    /// In chunks that never move ([`Chunked`]): a doubling `Vec` would keep up to as
    /// many entries again as capacity, and copy them all to grow.
    entries: Chunked<Option<(Key, V)>>,
    /// Places of removed entries, reused first.
    free: Vec<u32>,
    index: HashTable<u32>,
    hasher: DefaultHashBuilder,
}

impl<V> DenseMap<V> {
    /// An empty map.
    pub fn new() -> Self {
        Self {
            entries: Chunked::new(),
            free: Vec::new(),
            index: HashTable::new(),
            hasher: DefaultHashBuilder::default(),
        }
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    fn place(&self, key: &str) -> Option<u32> {
        let hash = self.hasher.hash_one(key);
        let entries = &self.entries;
        self.index
            .find(hash, |&i| {
                entries[i as usize].as_ref().is_some_and(|(k, _)| **k == *key)
            })
            .copied()
    }

    /// Whether `key` has an entry.
    pub fn contains_key(&self, key: &str) -> bool {
        self.place(key).is_some()
    }

    /// `key`'s value.
    pub fn get(&self, key: &str) -> Option<&V> {
        let i = self.place(key)?;
        self.entries[i as usize].as_ref().map(|(_, v)| v)
    }

    /// `key`'s value, to change.
    pub fn get_mut(&mut self, key: &str) -> Option<&mut V> {
        let i = self.place(key)?;
        self.entries[i as usize].as_mut().map(|(_, v)| v)
    }

    /// Sets `key`'s value; returns the one it replaces.
    pub fn insert(&mut self, key: Key, value: V) -> Option<V> {
        if let Some(i) = self.place(&key) {
            let slot = self.entries[i as usize].as_mut().expect("indexed");
            return Some(std::mem::replace(&mut slot.1, value));
        }
        let hash = self.hasher.hash_one(&*key);
        let i = match self.free.pop() {
            Some(i) => {
                self.entries[i as usize] = Some((key, value));
                i
            }
            None => {
                let i = u32::try_from(self.entries.len()).expect("fewer than 2^32 entries");
                self.entries.push(Some((key, value)));
                i
            }
        };
        let (entries, hasher) = (&self.entries, &self.hasher);
        self.index.insert_unique(hash, i, |&j| {
            hasher.hash_one(&*entries[j as usize].as_ref().expect("indexed").0)
        });
        None
    }

    /// Removes `key`'s entry.
    pub fn remove(&mut self, key: &str) -> Option<V> {
        let hash = self.hasher.hash_one(key);
        let entries = &self.entries;
        let found = self
            .index
            .find_entry(hash, |&i| {
                entries[i as usize].as_ref().is_some_and(|(k, _)| **k == *key)
            })
            .ok()?;
        let (i, _) = found.remove();
        let value = self.vacate(i);
        self.release_if_empty();
        value
    }

    fn vacate(&mut self, i: u32) -> Option<V> {
        let (_, value) = self.entries[i as usize].take()?;
        self.free.push(i);
        Some(value)
    }

    /// Nothing left: gives the vectors back.
    fn release_if_empty(&mut self) {
        if self.is_empty() {
            self.entries = Chunked::new();
            self.free = Vec::new();
        }
    }

    /// Keeps the entries for which `keep` says so.
    pub fn retain(&mut self, mut keep: impl FnMut(&Key, &mut V) -> bool) {
        let entries = &mut self.entries;
        let mut gone = Vec::new();
        self.index.retain(|&mut i| {
            let (key, value) = entries[i as usize].as_mut().expect("indexed");
            let kept = keep(key, value);
            if !kept {
                gone.push(i);
            }
            kept
        });
        for i in gone {
            self.vacate(i);
        }
        self.release_if_empty();
    }

    /// Every entry, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&Key, &V)> {
        self.entries.iter().filter_map(|e| e.as_ref().map(|(k, v)| (k, v)))
    }

    /// Every key, in no particular order.
    pub fn keys(&self) -> impl Iterator<Item = &Key> {
        self.iter().map(|(k, _)| k)
    }

    /// Forgets everything.
    pub fn clear(&mut self) {
        *self = Self {
            hasher: self.hasher,
            ..Self::new()
        };
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u8, u32),
        Remove(u8),
        Bump(u8),
        RetainOdd,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (any::<u8>(), any::<u32>()).prop_map(|(k, v)| Op::Insert(k, v)),
            3 => any::<u8>().prop_map(Op::Remove),
            2 => any::<u8>().prop_map(Op::Bump),
            1 => Just(Op::RetainOdd),
        ]
    }

    proptest! {
        #[test]
        fn matches_a_btreemap(ops in proptest::collection::vec(op(), 1..400)) {
            let mut map = DenseMap::new();
            let mut model = BTreeMap::new();
            for op in ops {
                match op {
                    Op::Insert(k, v) => {
                        let key = format!("k{}", k % 64);
                        prop_assert_eq!(map.insert(key.as_str().into(), v), model.insert(key, v));
                    }
                    Op::Remove(k) => {
                        let key = format!("k{}", k % 64);
                        prop_assert_eq!(map.remove(&key), model.remove(&key));
                    }
                    Op::Bump(k) => {
                        let key = format!("k{}", k % 64);
                        if let Some(v) = map.get_mut(&key) {
                            *v = v.wrapping_add(1);
                        }
                        if let Some(v) = model.get_mut(&key) {
                            *v = v.wrapping_add(1);
                        }
                    }
                    Op::RetainOdd => {
                        map.retain(|_, v| *v % 2 == 1);
                        model.retain(|_, v| *v % 2 == 1);
                    }
                }
                prop_assert_eq!(map.len(), model.len());
                let mut got: Vec<(String, u32)> = map.iter().map(|(k, v)| (k.to_string(), *v)).collect();
                got.sort();
                let want: Vec<(String, u32)> = model.iter().map(|(k, v)| (k.clone(), *v)).collect();
                prop_assert_eq!(got, want);
                for k in 0..64 {
                    let key = format!("k{k}");
                    prop_assert_eq!(map.get(&key), model.get(&key));
                    prop_assert_eq!(map.contains_key(&key), model.contains_key(&key));
                }
            }
            // Freed places are reused: the vector never holds more than the peak.
            prop_assert!(map.entries.len() <= 64);
        }
    }

    #[test]
    fn freed_places_are_reused_and_an_empty_map_holds_nothing() {
        let mut map = DenseMap::new();
        for i in 0..100 {
            map.insert(format!("u{i}").into(), i);
        }
        for i in 0..50 {
            assert_eq!(map.remove(&format!("u{i}")), Some(i));
        }
        for i in 100..150 {
            map.insert(format!("u{i}").into(), i);
        }
        assert_eq!(map.entries.len(), 100);
        map.retain(|_, _| false);
        assert!(map.is_empty());
        assert_eq!(map.entries.allocated_bytes(), 0);
    }
}
