//! What every fuzz binary shares: its allocator.

use std::alloc::{GlobalAlloc, Layout, System};

/// The global allocator of the fuzz binaries: the system's, aborting on any single allocation
/// over [`CappedAlloc::LIMIT`] (libFuzzer's `-malloc_limit_mb` needs a sanitizer's allocator,
/// and these targets run without one, on the stable toolchain).
pub struct CappedAlloc;

impl CappedAlloc {
    /// The largest allocation a fuzz input may cause: 1 GiB.
    pub const LIMIT: usize = 1 << 30;

    fn check(size: usize) {
        if size > Self::LIMIT {
            // (nothing allocated here: a fixed message on the raw stderr, then abort, which
            // libFuzzer reports as a crash with the input that caused it)
            use std::io::Write;
            let _ = std::io::stderr().write_all(b"wedge-fuzz: an allocation over 1 GiB\n");
            std::process::abort();
        }
    }
}

// SAFETY: every call goes to the system allocator unchanged, after a size check.
unsafe impl GlobalAlloc for CappedAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        Self::check(layout.size());
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        Self::check(layout.size());
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        Self::check(new_size);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}
