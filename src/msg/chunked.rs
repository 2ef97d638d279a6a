//! A vector that grows by whole chunks of about 16 KiB, which never move once made.
//!
//! A `Vec` grows by doubling: it allocates twice its capacity, copies, and frees the
//! old block. For the tables a shard keeps one record per connection or per user in
//! (the hub's connection records, the owner's user entries) that costs twice over at
//! idle: the capacity beyond the length is up to as large again as the records (and
//! the allocator hands it out from pages it has already touched, so it is resident),
//! and the freed generations stay with the allocator. Measured at 10,000 users on two
//! shards: 105 B of owner table per user for 64 B of entries, and 52 B of hub records
//! for 32 B. Here the slack is at most one chunk per table, and growing copies nothing.
//!
//! Entries are never removed: the tables reuse freed places themselves (the slab hands
//! out slot numbers from 0 up and reuses freed ones; `DenseMap` keeps a free list).
#![forbid(unsafe_code)]

use std::ops::{Index, IndexMut};

/// Bytes a chunk holds at most (entries per chunk are the largest power of two that
/// fits, so indexing is a shift and a mask). Small enough that a shard's last, partly
/// filled chunk is a few bytes per connection at 10,000; large enough that the list of
/// chunks is a few kilobytes at a million.
const CHUNK_BYTES: usize = 16 * 1024;

/// See the module docs.
#[derive(Debug)]
pub struct Chunked<T> {
    chunks: Vec<Vec<T>>,
    len: usize,
}

impl<T> Default for Chunked<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Chunked<T> {
    /// Entries per chunk: a power of two, at least 1.
    const PER_CHUNK: usize = {
        let size = if size_of::<T>() == 0 { 1 } else { size_of::<T>() };
        let mut n = 1;
        while n * 2 * size <= CHUNK_BYTES {
            n *= 2;
        }
        n
    };
    const SHIFT: u32 = Self::PER_CHUNK.trailing_zeros();

    /// An empty vector (allocates nothing).
    pub const fn new() -> Self {
        Self {
            chunks: Vec::new(),
            len: 0,
        }
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends `value`; a full last chunk gets a new one after it (nothing moves).
    pub fn push(&mut self, value: T) {
        if self.len & (Self::PER_CHUNK - 1) == 0 {
            self.chunks.push(Vec::with_capacity(Self::PER_CHUNK));
        }
        self.chunks.last_mut().expect("a chunk with room").push(value);
        self.len += 1;
    }

    /// Entry `i`, if there is one.
    pub fn get(&self, i: usize) -> Option<&T> {
        (i < self.len).then(|| &self.chunks[i >> Self::SHIFT][i & (Self::PER_CHUNK - 1)])
    }

    /// Entry `i`, to change, if there is one.
    pub fn get_mut(&mut self, i: usize) -> Option<&mut T> {
        (i < self.len).then(|| &mut self.chunks[i >> Self::SHIFT][i & (Self::PER_CHUNK - 1)])
    }

    /// Every entry in order.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.chunks.iter().flatten()
    }

    /// Bytes allocated for entries (the chunks' capacity), for the memory tests.
    pub fn allocated_bytes(&self) -> usize {
        self.chunks.len() * Self::PER_CHUNK * size_of::<T>()
    }
}

impl<T> Index<usize> for Chunked<T> {
    type Output = T;

    fn index(&self, i: usize) -> &T {
        match self.get(i) {
            Some(value) => value,
            None => panic!("index {i} out of bounds ({} entries)", self.len),
        }
    }
}

impl<T> IndexMut<usize> for Chunked<T> {
    fn index_mut(&mut self, i: usize) -> &mut T {
        let len = self.len;
        match self.get_mut(i) {
            Some(value) => value,
            None => panic!("index {i} out of bounds ({len} entries)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_hold_a_power_of_two_entries_within_16_kib() {
        assert_eq!(Chunked::<[u8; 64]>::PER_CHUNK, 256);
        assert_eq!(Chunked::<[u8; 48]>::PER_CHUNK, 256);
        assert_eq!(Chunked::<[u8; 32]>::PER_CHUNK, 512);
        assert_eq!(Chunked::<[u8; 100_000]>::PER_CHUNK, 1);
        assert_eq!(Chunked::<()>::PER_CHUNK, 16384);
    }

    #[test]
    fn indexes_across_chunks_like_a_vec_and_never_moves_an_entry() {
        let mut v = Chunked::new();
        let mut model = Vec::new();
        let mut addresses = Vec::new();
        for i in 0..5000u64 {
            v.push([i; 8]);
            model.push([i; 8]);
            addresses.push(std::ptr::from_ref(&v[i as usize]) as usize);
        }
        assert_eq!(v.len(), model.len());
        for (i, want) in model.iter().enumerate() {
            assert_eq!(&v[i], want);
            // Growth never moved what was already there.
            assert_eq!(std::ptr::from_ref(&v[i]) as usize, addresses[i]);
        }
        assert!(v.iter().eq(model.iter()));
        v[4321][0] = 7;
        assert_eq!(v.get(4321).map(|e| e[0]), Some(7));
        assert_eq!(v.get(5000), None);
        // 5,000 entries of 64 bytes: 20 chunks of 256, not a doubled 8,192.
        assert_eq!(v.allocated_bytes(), 20 * 256 * 64);
    }

    #[test]
    #[should_panic(expected = "out of bounds")]
    fn indexing_past_the_end_panics() {
        let mut v = Chunked::new();
        v.push(1u32);
        let _ = v[1];
    }
}
