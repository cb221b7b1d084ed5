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
        // SAFETY: our caller upholds `alloc`'s contract, which we pass on unchanged.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE_BYTES.fetch_add(layout.size() as u64, Relaxed);
            TOTAL_BYTES.fetch_add(layout.size() as u64, Relaxed);
            MALLOCS.fetch_add(1, Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            LIVE_BYTES.fetch_add(layout.size() as u64, Relaxed);
            TOTAL_BYTES.fetch_add(layout.size() as u64, Relaxed);
            MALLOCS.fetch_add(1, Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator, that is from `System`, with this layout.
        unsafe { System.dealloc(ptr, layout) };
        LIVE_BYTES.fetch_sub(layout.size() as u64, Relaxed);
        FREES.fetch_add(1, Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as for `dealloc`; `new_size` is checked by our caller.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
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

/// Allocations of at least this size get pages of their own, returned to the system when freed.
pub const LARGE_BLOCK_BYTES: usize = 64 * 1024;

/// Makes the system allocator (glibc's) give memory back after a burst. By default glibc
/// raises its mmap threshold to the size of the largest block freed (up to 32 MiB), so after
/// one burst of large replies (an Info carries up to a 1 MiB record's properties, in 64 KiB
/// values) every later large block comes from heaps that are never shrunk: the server kept the
/// burst's peak resident for good. A fixed threshold keeps large blocks in their own mappings,
/// and a fixed trim threshold lets the heaps shrink. Call once, before any thread starts.
pub fn return_freed_memory_to_the_system() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called before other threads exist.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, LARGE_BLOCK_BYTES as libc::c_int);
        libc::mallopt(
            libc::M_TRIM_THRESHOLD,
            (2 * LARGE_BLOCK_BYTES) as libc::c_int,
        );
    }
}
