//! Background threads (device reads, state writes) run at a lower scheduling
//! priority than the threads a connect passes through (drain, pipeline, delivery):
//! on a small host the serialisation of a 100k-peer state or the parse of a 50k-peer
//! device read otherwise holds a core while a handshake's notice waits for it.

/// The nice value background threads take (the others keep the process's, 0 by
/// default): under CFS a thread at 10 gets about a tenth of the CPU of one at 0
/// when both want it, and all of it when nothing else does.
pub const BACKGROUND_NICE: i32 = 10;

/// Lowers the calling thread's priority to [`BACKGROUND_NICE`], or leaves it if it
/// is lower already (Linux schedules threads one by one: `setpriority` on a thread
/// id changes only that thread). Failing to is logged and harmless: the work is the
/// same, only less polite.
pub fn lower_this_thread(what: &str) {
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() } as libc::id_t;
    // SAFETY: getpriority and setpriority on our own thread id; no memory is passed.
    let current = unsafe { libc::getpriority(libc::PRIO_PROCESS, tid) };
    let nice = current.max(BACKGROUND_NICE);
    // SAFETY: as above.
    let result = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, nice) };
    if result != 0 {
        tracing::debug!(
            "{what}: could not lower the thread's priority: {}",
            std::io::Error::last_os_error()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_calling_thread_is_lowered() {
        let nice_of = |tid: libc::pid_t| {
            // SAFETY: getpriority on a thread of this process.
            unsafe { libc::getpriority(libc::PRIO_PROCESS, tid as libc::id_t) }
        };
        // SAFETY: gettid has no preconditions.
        let main_tid = unsafe { libc::gettid() };
        let before = nice_of(main_tid);
        let lowered = std::thread::spawn(move || {
            lower_this_thread("test");
            // SAFETY: as above.
            nice_of(unsafe { libc::gettid() })
        })
        .join()
        .expect("the thread ran");
        assert_eq!(lowered, BACKGROUND_NICE.max(before));
        assert_eq!(
            nice_of(main_tid),
            before,
            "the caller's thread is untouched"
        );
    }
}
