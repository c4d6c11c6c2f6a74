//! Giving memory back to the system.
//!
//! Loading the embedding model frees about 100 MB of temporary buffers that glibc's allocator
//! would otherwise keep (its threshold for serving large blocks straight from the system rises
//! each time such a block is freed, so later large blocks land in a heap that never shrinks).
//! A fixed threshold sends large blocks back to the system when freed, and a trim after start
//! returns the free pages left in the heap: the default embedded configuration then holds about
//! 160 MB once started instead of 240 MB (`./bot.sh bench footprint`).

/// Large allocations (ONNX Runtime's inference buffers, model bytes) are mapped and unmapped.
const MMAP_THRESHOLD: i32 = 256 * 1024;

/// Fixes the allocator's thresholds; call first thing in `main`.
pub fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; called before other threads allocate.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
    }
}

/// Returns the heap's free pages to the system (after start-up, and now and then).
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim walks the allocator's own free lists; it is thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
}
