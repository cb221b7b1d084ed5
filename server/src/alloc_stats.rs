//! A counting global allocator, so `/debug/vars` can report real heap figures (the binary
//! installs it; a library user that does not gets figures from /proc only).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

pub struct CountingAlloc;

static LIVE_BYTES: AtomicU64 = AtomicU64::new(0);
static TOTAL_BYTES: AtomicU64 = AtomicU64::new(0);
static MALLOCS: AtomicU64 = AtomicU64::new(0);
static FREES: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator; only counters are added.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() {
            LIVE_BYTES.fetch_add(layout.size() as u64, Relaxed);
            TOTAL_BYTES.fetch_add(layout.size() as u64, Relaxed);
            MALLOCS.fetch_add(1, Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc_zeroed(layout);
        if !p.is_null() {
            LIVE_BYTES.fetch_add(layout.size() as u64, Relaxed);
            TOTAL_BYTES.fetch_add(layout.size() as u64, Relaxed);
            MALLOCS.fetch_add(1, Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        LIVE_BYTES.fetch_sub(layout.size() as u64, Relaxed);
        FREES.fetch_add(1, Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = System.realloc(ptr, layout, new_size);
        if !p.is_null() {
            let old = layout.size() as u64;
            let new = new_size as u64;
            if new > old {
                LIVE_BYTES.fetch_add(new - old, Relaxed);
                TOTAL_BYTES.fetch_add(new - old, Relaxed);
            } else {
                LIVE_BYTES.fetch_sub(old - new, Relaxed);
            }
            MALLOCS.fetch_add(1, Relaxed);
            FREES.fetch_add(1, Relaxed);
        }
        p
    }
}

/// Heap figures, as counted by [`CountingAlloc`] (all zero when it is not installed).
#[derive(Debug, Clone, Copy, Default)]
pub struct HeapStats {
    pub live_bytes: u64,
    pub total_bytes: u64,
    pub mallocs: u64,
    pub frees: u64,
}

pub fn heap_stats() -> HeapStats {
    HeapStats {
        live_bytes: LIVE_BYTES.load(Relaxed),
        total_bytes: TOTAL_BYTES.load(Relaxed),
        mallocs: MALLOCS.load(Relaxed),
        frees: FREES.load(Relaxed),
    }
}
