//! Test builds only: a global allocator that counts live heap bytes per thread, so a
//! test can check that a shard's memory returns to where it started after connections
//! come and go (shards allocate and free on their own thread: shared-nothing).
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

thread_local! {
    static LIVE: Cell<i64> = const { Cell::new(0) };
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

/// Heap bytes allocated and not yet freed by the calling thread (frees of memory that
/// came from another thread count against the freeing thread).
pub fn thread_live_bytes() -> i64 {
    LIVE.with(Cell::get)
}

/// Allocations (and reallocations) the calling thread has made so far: a test of a path
/// that must not allocate compares it before and after.
pub fn thread_allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

struct Counting;

fn add(delta: i64) {
    // `try_with`: the allocator may run while a thread's locals are being destroyed.
    let _ = LIVE.try_with(|live| live.set(live.get() + delta));
}

fn count_allocation() {
    let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
}

// SAFETY: every method forwards to the system allocator with the same arguments and
// only adds bookkeeping that does not allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        add(layout.size() as i64);
        count_allocation();
        // SAFETY: forwarded unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        add(-(layout.size() as i64));
        // SAFETY: forwarded unchanged.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        add(layout.size() as i64);
        count_allocation();
        // SAFETY: forwarded unchanged.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        add(new_size as i64 - layout.size() as i64);
        count_allocation();
        // SAFETY: forwarded unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

/// Bytes the C heap (glibc malloc) has handed out, process-wide: what C libraries such
/// as aws-lc allocate, which the counting allocator above does not see. 0 where the C
/// library is not glibc.
pub fn c_heap_bytes() -> i64 {
    #[cfg(target_env = "gnu")]
    {
        // SAFETY: mallinfo2 only reads the allocator's statistics.
        let info = unsafe { libc::mallinfo2() };
        info.uordblks as i64
    }
    #[cfg(not(target_env = "gnu"))]
    {
        0
    }
}
