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

/// Freed bytes (as [`CountingAlloc`] counts them) after which free heap pages are handed back.
const FREED_BEFORE_RELEASE: u64 = 16 << 20;

/// How often [`release_free_pages_after_churn`] looks at the counters.
const RELEASE_PERIOD: std::time::Duration = std::time::Duration::from_secs(10);

/// Hands the free pages inside the allocator's heaps back to the system. The trim threshold
/// only shrinks a heap from its top; pages freed below a block still in use stay resident.
/// After a round of 250 containers x 4 processes the server held about 100 MB of such pages
/// around 1.4 MB of live heap, more after each round; this gives them back.
pub fn release_free_pages() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns unused memory; it is safe to call from any thread.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Runs for the server's life: releases free heap pages once enough was freed since the last
/// release (a round of containers ending), and never while the heap only grows or idles.
/// Without [`CountingAlloc`] installed nothing is counted, and nothing is released.
pub async fn release_free_pages_after_churn() {
    let mut released_at = freed_bytes();
    let mut tick = tokio::time::interval(RELEASE_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let freed = freed_bytes();
        if freed.saturating_sub(released_at) >= FREED_BEFORE_RELEASE {
            released_at = freed;
            // It walks every heap: not on a thread that serves requests.
            let _ = tokio::task::spawn_blocking(release_free_pages).await;
        }
    }
}

fn freed_bytes() -> u64 {
    let stats = heap_stats();
    stats.total_bytes.saturating_sub(stats.live_bytes)
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    use super::*;

    fn resident_bytes() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").expect("status");
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS");
        kib * 1024
    }

    #[test]
    fn free_pages_below_a_live_block_go_back_to_the_system() {
        // 64 MiB of mid-sized blocks (below the mmap threshold: they come from the heap),
        // touched, each followed by a small block that stays: freeing the large ones leaves
        // free pages the trim threshold cannot reach, under the small ones.
        let mut large = Vec::new();
        let mut pinned = Vec::new();
        for _ in 0..(64 << 20) / (32 << 10) {
            large.push(vec![1u8; 32 << 10]);
            pinned.push(Box::new(0u64));
        }
        drop(large);
        let before = resident_bytes();
        release_free_pages();
        let after = resident_bytes();
        assert!(
            before.saturating_sub(after) >= 32 << 20,
            "resident {before} -> {after} bytes"
        );
        drop(pinned);
    }
}
