//! Giving memory back to the system.
//!
//! glibc's threshold for serving large blocks straight from the system rises each time such a
//! block is freed, so after start-up (model loading, the classifier's example embeddings) later
//! large blocks (ONNX Runtime's inference buffers) land in a heap that never shrinks. A fixed
//! threshold sends large blocks back to the system when freed, and a trim after start and with
//! each status write returns the free pages left in the heap. Measured with the original
//! embedding model: 240 MB -> 158 MB once started (`./bot.sh bench footprint`); the rewritten
//! model now starts at 99 MB.

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
