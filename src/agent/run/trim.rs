//! Handing freed heap memory back to the kernel: after a bulk round, and for every large
//! buffer as soon as it is freed.
//!
//! A round that issues or replaces thousands of SVIDs allocates its batches (CSRs, keys,
//! the server's answers, the old cache state) and frees them when it ends; glibc's
//! allocator keeps those pages for reuse, so without this the agent's RSS stays as high as
//! its busiest round forever (about 10 MB at 10,000 SVIDs, measured with heaptrack as
//! live heap against RSS). After such a round, `malloc_trim(0)` returns the free pages of
//! every arena. It is not called after small rounds: it walks the whole heap.
//!
//! A Workload API answer for a caller holding many SVIDs is one large buffer (about 700
//! KB for 1,000 SVIDs), made and freed per call. glibc serves a buffer that large with its
//! own mapping, returned at once when freed, but only until the first such buffer is
//! freed: it then raises that threshold to the buffer's size (up to 32 MiB), and later
//! ones come from the heap, whose freed pages it keeps. A caller fetching many times thus
//! grew the agent's RSS by about 9 MB at 10,000 SVIDs (the bench's fetch storm).
//! [`tune_allocator`] sets the threshold once at start-up, which turns that raising off:
//! a large buffer costs a mapping and its page faults, and leaves nothing behind.
//!
//! The same answer is built from thousands of small allocations first (each SVID's
//! certificate, key and bundle copied into the message), freed together. glibc gives each
//! thread that meets contention an arena of its own, and each arena keeps the holes such
//! a burst leaves: with the default (8 per core) the storm still grew RSS by about 3.4 MB
//! at 10,000 SVIDs, 1.10x; with one arena, 2 MB (1.06x). The agent therefore uses one
//! arena: most small allocations are served by glibc's per-thread cache without the
//! arena's lock, and the Workload API's latency and calls/s (`cargo bench --bench load
//! -- --only fetch`) showed no difference on 2 cores.

/// Rounds that touched at least this many SVIDs or entries are followed by a trim.
pub(super) const TRIM_AFTER: usize = 256;

/// Buffers of this size or more get a mapping of their own (glibc's default, held fixed).
const MMAP_THRESHOLD: i32 = 128 * 1024;
/// Arenas glibc may use (see the module documentation).
const ARENA_MAX: i32 = 1;

/// Fixes glibc's mmap threshold at its default, so that large buffers are always returned
/// to the kernel when freed, and keeps small allocations in one arena (see the module
/// documentation; elsewhere a no-op).
pub(super) fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[allow(unsafe_code)]
    // SAFETY: mallopt only sets allocator parameters (under the allocator's lock); it is
    // safe to call from any thread at any time.
    unsafe {
        for (param, value) in
            [(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD), (libc::M_ARENA_MAX, ARENA_MAX)]
        {
            if libc::mallopt(param, value) != 1 {
                tracing::debug!(param, value, "could not set an allocator parameter");
            }
        }
    }
}

/// Returns the allocator's free pages to the kernel (glibc only; elsewhere a no-op).
pub(super) fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[allow(unsafe_code)]
    // SAFETY: malloc_trim takes a byte count, touches only the allocator's own free lists
    // (under its locks) and is safe to call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}
