//! Handing freed memory back to the operating system, and measuring what is in use.
//!
//! glibc keeps memory a program frees inside its arenas (one per thread that ever allocated, so
//! several under tokio) for reuse; only the top of the main heap shrinks by itself. After a burst
//! (thousands of sessions, a password storm) the heap in use goes back down but RSS stays where
//! the burst left it, which looks like a leak to every operator watching a dashboard. Two knobs:
//! big blocks go straight to mmap (so freeing them unmaps them at once), and a periodic
//! `malloc_trim` releases the free pages inside every arena.

use std::time::Duration;

/// How often freed arena pages are handed back: rare enough to cost nothing (a trim of a few
/// tens of MiB takes well under a millisecond), often enough that RSS follows the load.
pub const TRIM_INTERVAL: Duration = Duration::from_secs(30);

/// glibc serves allocations above a *dynamic* threshold with mmap, and raises the threshold
/// each time such a block is freed, up to 32 MiB. After the first argon2 hash (~19 MiB, freed)
/// every later one came from the heap arenas instead, and freed arena memory mostly stays in
/// the process: a register/login storm left RSS hundreds of MiB high for good. Pinning the
/// threshold at 1 MiB keeps big, short-lived blocks on mmap, so freeing them returns the memory.
/// Small allocations (everything else the server does) are unaffected. Call it first in `main`.
pub fn return_large_allocations_to_the_os() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

/// Release the free pages of every arena now (glibc); elsewhere a no-op.
pub fn trim_free_pages() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim is thread-safe (it locks each arena in turn) and takes a plain size.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Trim every `TRIM_INTERVAL` for as long as the runtime lives. On the blocking pool: a trim
/// waits for each arena's lock, and must never hold up a worker thread that runs sessions.
pub fn spawn_periodic_trim() -> tokio::task::JoinHandle<()> {
    tokio::spawn(async {
        let mut every = tokio::time::interval(TRIM_INTERVAL);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        every.tick().await;
        loop {
            every.tick().await;
            let _ = tokio::task::spawn_blocking(trim_free_pages).await;
        }
    })
}

/// Bytes in use on glibc's heap (arenas + mmapped blocks): what RSS cannot show, because freed
/// memory may stay mapped. `mallinfo2` locks each arena briefly; fine at scrape time.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn heap_in_use_bytes() -> Option<usize> {
    // SAFETY: mallinfo2 takes no arguments and returns a plain struct by value.
    let info = unsafe { libc::mallinfo2() };
    Some(info.uordblks + info.hblkhd)
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn heap_in_use_bytes() -> Option<usize> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn heap_in_use_follows_a_big_allocation_and_trim_keeps_it() {
        // 64 MiB: above glibc's largest dynamic mmap threshold, so always its own mapping.
        // Other tests allocate and free concurrently (the counters are process-wide): the
        // checks leave them 16 MiB of slack either way.
        const BLOCK: usize = 64 << 20;
        const SLACK: usize = 16 << 20;
        let before = heap_in_use_bytes().unwrap();
        let block = vec![1u8; BLOCK];
        let during = heap_in_use_bytes().unwrap();
        assert!(during + SLACK >= before + BLOCK, "{before} -> {during}");
        drop(block);
        trim_free_pages();
        let after = heap_in_use_bytes().unwrap();
        assert!(after + BLOCK <= during + SLACK, "{during} -> {after}");
    }
}
