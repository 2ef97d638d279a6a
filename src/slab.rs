//! One generational slab and its key: how the server's shards and the bench's workers
//! name a connection.
//!
//! A [`Slab`] is a vector of slots plus a free list. [`Slab::insert`] takes the most
//! recently freed slot (or a new one at the end) and returns a [`Key`]: the slot's index
//! and its generation. [`Slab::remove`] drops the value and bumps the slot's generation,
//! so every key handed out for the old value is stale from then on: [`Slab::get`] and
//! [`Slab::get_mut`] answer `None` for it, and a late io_uring completion or timer entry
//! carrying it can never reach the slot's next owner.
//!
//! The same [`Key`] is every name a connection has:
//!
//! - the shard's and the bench worker's slab key;
//! - the timer wheel's entry (`server::wheel`);
//! - the io_uring request tag: [`Key::to_user_data`] packs the index into the low 32
//!   bits and the generation into the next 30, leaving the top 2 bits for the caller's
//!   request kind; [`Key::from_user_data`] ignores them;
//! - messaging's [`ConnId`](crate::msg::ConnId) (a type alias: messaging treats it as
//!   opaque);
//! - with a shard number, a connection in its user's directory entry at the owner
//!   (which the per-user limit closes by).
//!
//! Generations are 30 bits wide (what fits in a `user_data` tag) and wrap: a key goes
//! stale for good unless its slot is freed 2^30 times while the key is still held, which
//! for a connection means a billion connections through one slot during the life of one
//! completion or timer entry.
//!
//! Memory: a slot costs exactly its value ([`Slab::SLOT_BYTES`], asserted by the size
//! tests of the server's and the bench's connection structs). That is why the value keeps
//! the generation itself ([`Generational`]): a `u32` beside a 128-byte connection struct
//! would round the slot up to 136 bytes, while inside the struct it takes 4 bytes of what
//! would be padding. A vacant slot holds its next generation in the bytes beside the
//! value's niche. The free list is 4 bytes per freed slot.
#![forbid(unsafe_code)]

use std::hash::{Hash, Hasher};
use std::ops::{Index, IndexMut};

/// Bits of a [`Key`]'s generation (what the `user_data` packing leaves room for).
pub const GENERATION_BITS: u32 = 30;

/// The generation mask: generations count modulo 2^30.
pub const GENERATION_MASK: u32 = (1 << GENERATION_BITS) - 1;

/// A slot of a [`Slab`] and its generation when the key was made.
///
/// Ordered by generation, then index (the order of the packed `u64`), and hashed as the
/// packed `u64` (one word for the hasher, as `ConnId` was before it became a `Key`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Key {
    generation: u32,
    index: u32,
}

impl Key {
    /// The key of slot `index` at `generation` (taken modulo 2^30).
    pub const fn new(index: u32, generation: u32) -> Self {
        Self {
            generation: generation & GENERATION_MASK,
            index,
        }
    }

    /// The slot index.
    pub const fn index(self) -> u32 {
        self.index
    }

    /// The slot's generation when the key was made.
    pub const fn generation(self) -> u32 {
        self.generation
    }

    /// The io_uring tag: the index in the low 32 bits, the generation in the next 30,
    /// the top 2 bits zero (the caller ORs its request kind in there).
    pub const fn to_user_data(self) -> u64 {
        ((self.generation as u64) << 32) | self.index as u64
    }

    /// The key of a tag made by [`Key::to_user_data`], whatever its top 2 bits hold.
    pub const fn from_user_data(user_data: u64) -> Self {
        Self {
            generation: (user_data >> 32) as u32 & GENERATION_MASK,
            index: user_data as u32,
        }
    }
}

/// A value that keeps its slot's generation for the slab, so the slab costs no byte per
/// slot beyond the value (a generation beside a connection struct would cost 8 bytes of
/// alignment; inside it, it fills what would otherwise be padding). The slab sets it at
/// [`Slab::insert`] and reads it at every look-up; nothing else may change it.
pub trait Generational {
    /// The generation [`Slab::insert`] gave the value.
    fn generation(&self) -> u32;
    /// Called by [`Slab::insert`] only.
    fn set_generation(&mut self, generation: u32);
}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.to_user_data().hash(state);
    }
}

/// One slot: a value, or the generation its next value will get. The vacant variant
/// fits beside the value's niche (an enum or `bool` field), so a slot costs what the
/// value does ([`Slab::SLOT_BYTES`]).
#[derive(Debug)]
enum Slot<T> {
    Occupied(T),
    Vacant { generation: u32 },
}

/// Values named by generation-checked [`Key`]s (see the module docs).
#[derive(Debug)]
pub struct Slab<T> {
    slots: Vec<Slot<T>>,
    /// Indices of vacant slots; the last one is reused first.
    free: Vec<u32>,
    /// Occupied slots.
    len: usize,
}

impl<T: Generational> Default for Slab<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Generational> Slab<T> {
    /// What one slot costs (the size tests assert it).
    pub const SLOT_BYTES: usize = size_of::<Slot<T>>();

    /// An empty slab.
    pub const fn new() -> Self {
        Self {
            slots: Vec::new(),
            free: Vec::new(),
            len: 0,
        }
    }

    /// An empty slab with room reserved for `capacity` slots (address space: pages are
    /// touched only as slots are used).
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            slots: Vec::with_capacity(capacity),
            free: Vec::new(),
            len: 0,
        }
    }

    /// Stores `value` in the most recently freed slot, or in a new one, and returns its
    /// key.
    pub fn insert(&mut self, mut value: T) -> Key {
        let (index, generation) = match self.free.pop() {
            Some(index) => match self.slots[index as usize] {
                Slot::Vacant { generation } => (index, generation),
                Slot::Occupied(_) => unreachable!("the free list holds vacant slots"),
            },
            None => {
                let index = u32::try_from(self.slots.len()).expect("a slab holds at most 2^32 slots");
                self.slots.push(Slot::Vacant { generation: 0 });
                (index, 0)
            }
        };
        value.set_generation(generation);
        self.slots[index as usize] = Slot::Occupied(value);
        self.len += 1;
        Key::new(index, generation)
    }

    /// The value of `key`, `None` if the key is stale (its value was removed).
    pub fn get(&self, key: Key) -> Option<&T> {
        match self.slots.get(key.index as usize)? {
            Slot::Occupied(value) if value.generation() == key.generation => Some(value),
            _ => None,
        }
    }

    /// The value of `key`, mutably; `None` if the key is stale.
    pub fn get_mut(&mut self, key: Key) -> Option<&mut T> {
        match self.slots.get_mut(key.index as usize)? {
            Slot::Occupied(value) if value.generation() == key.generation => Some(value),
            _ => None,
        }
    }

    /// Whether `key` names a value (is not stale).
    pub fn contains(&self, key: Key) -> bool {
        self.get(key).is_some()
    }

    /// Takes the value of `key` out and bumps the slot's generation, so `key` and every
    /// copy of it are stale from now on. `None` (and nothing changes) if already stale.
    pub fn remove(&mut self, key: Key) -> Option<T> {
        self.get(key)?;
        let vacant = Slot::Vacant {
            generation: (key.generation + 1) & GENERATION_MASK,
        };
        let Slot::Occupied(value) = std::mem::replace(&mut self.slots[key.index as usize], vacant) else {
            unreachable!("checked above");
        };
        self.free.push(key.index);
        self.len -= 1;
        Some(value)
    }

    /// Values held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no value is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Slots the slab can hold before its vector grows.
    pub fn capacity(&self) -> usize {
        self.slots.capacity()
    }

    /// Every value with its key, in slot order.
    pub fn iter(&self) -> impl Iterator<Item = (Key, &T)> {
        self.slots.iter().enumerate().filter_map(|(index, slot)| match slot {
            Slot::Occupied(value) => Some((Key::new(index as u32, value.generation()), value)),
            Slot::Vacant { .. } => None,
        })
    }

    /// Every value with its key, mutably, in slot order.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (Key, &mut T)> {
        self.slots
            .iter_mut()
            .enumerate()
            .filter_map(|(index, slot)| match slot {
                Slot::Occupied(value) => Some((Key::new(index as u32, value.generation()), value)),
                Slot::Vacant { .. } => None,
            })
    }

    /// The key of every value, in slot order.
    pub fn keys(&self) -> impl Iterator<Item = Key> + '_ {
        self.iter().map(|(key, _)| key)
    }
}

/// The value of a key the caller knows is live.
///
/// # Panics
///
/// If the key is stale: looking a connection up after freeing it is a bug.
impl<T: Generational> Index<Key> for Slab<T> {
    type Output = T;

    fn index(&self, key: Key) -> &T {
        self.get(key).expect("a live slab key")
    }
}

/// The value of a key the caller knows is live, mutably.
///
/// # Panics
///
/// If the key is stale.
impl<T: Generational> IndexMut<Key> for Slab<T> {
    fn index_mut(&mut self, key: Key) -> &mut T {
        self.get_mut(key).expect("a live slab key")
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;

    /// A value and the generation the slab keeps in it.
    #[derive(Clone, Copy, Debug)]
    struct Tagged<V> {
        value: V,
        generation: u32,
    }

    impl<V> Generational for Tagged<V> {
        fn generation(&self) -> u32 {
            self.generation
        }

        fn set_generation(&mut self, generation: u32) {
            self.generation = generation;
        }
    }

    fn tagged<V>(value: V) -> Tagged<V> {
        Tagged {
            value,
            // Whatever the caller puts here, the slab overwrites it.
            generation: 12345,
        }
    }

    fn value<V: Copy>(slab: &Slab<Tagged<V>>, key: Key) -> Option<V> {
        slab.get(key).map(|t| t.value)
    }

    #[test]
    fn a_removed_key_is_stale_and_its_slot_is_reused_under_a_new_key() {
        let mut slab = Slab::new();
        let a = slab.insert(tagged("a"));
        assert_eq!(a.generation(), 0);
        assert_eq!(value(&slab, a), Some("a"));
        assert_eq!(slab.remove(a).map(|t| t.value), Some("a"));
        assert_eq!(value(&slab, a), None);
        assert!(slab.get_mut(a).is_none());
        assert!(!slab.contains(a));
        assert!(slab.remove(a).is_none(), "removing twice does nothing");
        assert!(slab.is_empty());
        let b = slab.insert(tagged("b"));
        assert_eq!(b.index(), a.index());
        assert_eq!(b.generation(), a.generation() + 1);
        assert_eq!(value(&slab, a), None, "the old key does not reach the new value");
        assert!(slab.remove(a).is_none(), "nor can it remove the new value");
        assert_eq!(slab[b].value, "b");
        assert_eq!(slab[b].generation(), b.generation());
        assert_eq!(slab.len(), 1);
    }

    #[test]
    #[should_panic(expected = "a live slab key")]
    fn indexing_with_a_stale_key_panics() {
        let mut slab = Slab::new();
        let a = slab.insert(tagged(1));
        slab.remove(a);
        let _ = slab[a];
    }

    #[test]
    fn the_most_recently_freed_slot_is_reused_first() {
        let mut slab = Slab::with_capacity(4);
        assert!(slab.capacity() >= 4);
        let keys: Vec<Key> = (0..4).map(|i| slab.insert(tagged(i))).collect();
        assert_eq!(keys.iter().map(|k| k.index()).collect::<Vec<_>>(), [0, 1, 2, 3]);
        slab.remove(keys[1]);
        slab.remove(keys[3]);
        assert_eq!(slab.insert(tagged(10)).index(), 3);
        assert_eq!(slab.insert(tagged(11)).index(), 1);
        assert_eq!(slab.insert(tagged(12)).index(), 4, "no free slot left: a new one");
        assert_eq!(slab.len(), 5);
    }

    #[test]
    fn generations_wrap_within_30_bits() {
        let mut slab = Slab::new();
        let first = slab.insert(tagged(0u8));
        slab.remove(first);
        // Slot 0 at its last generation, as 2^30 - 1 frees would leave it.
        slab.slots[0] = Slot::Vacant {
            generation: GENERATION_MASK,
        };
        let last = slab.insert(tagged(1));
        assert_eq!(last.generation(), GENERATION_MASK);
        assert_eq!(value(&slab, last), Some(1));
        slab.remove(last);
        let wrapped = slab.insert(tagged(2));
        assert_eq!((wrapped.index(), wrapped.generation()), (0, 0));
        assert_eq!(value(&slab, last), None);
        assert_eq!(value(&slab, wrapped), Some(2));
        assert_eq!(
            Key::new(7, GENERATION_MASK + 1).generation(),
            0,
            "generations count modulo 2^30"
        );
        assert_eq!(last.to_user_data() >> 62, 0, "the top 2 bits stay free for the kind");
    }

    #[test]
    fn user_data_keeps_index_and_generation_and_ignores_the_kind_bits() {
        let key = Key::new(0xdead_beef, 0x2bad_cafe);
        assert_eq!(key.generation(), 0x2bad_cafe & GENERATION_MASK);
        for kind in [0, 1 << 62, 2 << 62, 3 << 62] {
            assert_eq!(Key::from_user_data(kind | key.to_user_data()), key);
        }
        assert_eq!(Key::new(5, 3).to_user_data(), (3 << 32) | 5);
        // Keys order as their packed form does: generation, then index.
        assert!(Key::new(9, 0) < Key::new(0, 1));
    }

    #[test]
    fn iteration_visits_the_live_values_in_slot_order() {
        let mut slab = Slab::new();
        let keys: Vec<Key> = (0..5).map(|i| slab.insert(tagged(i * 10))).collect();
        slab.remove(keys[2]);
        for (_, t) in slab.iter_mut() {
            t.value += 1;
        }
        let seen: Vec<(Key, i32)> = slab.iter().map(|(k, t)| (k, t.value)).collect();
        assert_eq!(seen, [(keys[0], 1), (keys[1], 11), (keys[3], 31), (keys[4], 41)]);
        assert_eq!(slab.keys().collect::<Vec<_>>(), [keys[0], keys[1], keys[3], keys[4]]);
    }

    #[test]
    fn a_slot_costs_what_its_value_does() {
        /// Shaped like a connection struct: a niche (`bool`) and room for the vacant
        /// slot's generation.
        struct Conn {
            _fd: Option<Box<u8>>,
            _generation: u32,
            _open: bool,
        }
        impl Generational for Conn {
            fn generation(&self) -> u32 {
                self._generation
            }
            fn set_generation(&mut self, generation: u32) {
                self._generation = generation;
            }
        }
        assert_eq!(Slab::<Conn>::SLOT_BYTES, size_of::<Conn>());
        assert_eq!(size_of::<Key>(), 8);
    }

    #[derive(Clone, Debug)]
    enum Op {
        Insert(u16),
        Remove(usize),
        Set(usize, u16),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            any::<u16>().prop_map(Op::Insert),
            any::<usize>().prop_map(Op::Remove),
            (any::<usize>(), any::<u16>()).prop_map(|(i, v)| Op::Set(i, v)),
        ]
    }

    proptest! {
        /// The slab behaves like a map from the keys it handed out: live keys find their
        /// value, removed keys find nothing, and no two live values share a key.
        #[test]
        fn matches_a_hashmap_model(ops in proptest::collection::vec(op(), 0..200)) {
            let mut slab = Slab::new();
            let mut model: HashMap<Key, u16> = HashMap::new();
            let mut issued: Vec<Key> = Vec::new();
            for op in ops {
                match op {
                    Op::Insert(v) => {
                        let key = slab.insert(tagged(v));
                        prop_assert!(!model.contains_key(&key), "a key handed out twice");
                        model.insert(key, v);
                        issued.push(key);
                    }
                    Op::Remove(i) if !issued.is_empty() => {
                        let key = issued[i % issued.len()];
                        prop_assert_eq!(slab.remove(key).map(|t| t.value), model.remove(&key));
                    }
                    Op::Set(i, v) if !issued.is_empty() => {
                        let key = issued[i % issued.len()];
                        match (slab.get_mut(key), model.get_mut(&key)) {
                            (Some(a), Some(b)) => {
                                a.value = v;
                                *b = v;
                            }
                            (None, None) => {}
                            (a, b) => prop_assert!(false, "slab {:?}, model {:?}", a, b),
                        }
                    }
                    Op::Remove(_) | Op::Set(..) => {}
                }
                prop_assert_eq!(slab.len(), model.len());
                prop_assert_eq!(slab.is_empty(), model.is_empty());
                for key in &issued {
                    prop_assert_eq!(value(&slab, *key), model.get(key).copied());
                    prop_assert_eq!(slab.contains(*key), model.contains_key(key));
                }
                let mut live: Vec<(Key, u16)> = slab.iter().map(|(k, t)| (k, t.value)).collect();
                let mut expected: Vec<(Key, u16)> = model.iter().map(|(k, v)| (*k, *v)).collect();
                live.sort_unstable();
                expected.sort_unstable();
                prop_assert_eq!(live, expected);
            }
        }
    }
}
