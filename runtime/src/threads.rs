//! How many threads the runtime's own parallel work (decoding, decryption, the gate's scans)
//! may use: below every module that uses it, so none of them imports another for it.

/// The machine's cores (at least one).
pub(crate) fn parallelism() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Turns transparent huge pages off for this process (Linux's `PR_SET_THP_DISABLE`; children
/// inherit it). Called first by the binaries: with huge pages each fault in memory the allocator
/// takes fresh or back from the kernel zeroes 2 MiB, however little of it is used; for a
/// 10M-row gated job that was a quarter of all samples and twice the kernel time
/// (BENCHMARKS.md (w)). A kernel that refuses is answered with its error; the process runs on.
pub fn without_huge_pages() -> std::io::Result<()> {
    // SAFETY: PR_SET_THP_DISABLE takes integer arguments only and touches no memory of ours.
    let rc = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The CPU time the calling thread has used, in nanoseconds.
pub(crate) fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_THREAD_CPUTIME_ID is always available
    // on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return 0;
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Runs the future `work` makes on a thread named `name` with a runtime of `workers` worker
/// threads made for it, and answers its outcome and the CPU time (ns) of every thread of that
/// runtime: each adds its own CPU clock when it stops. An error says why no outcome came (no
/// thread, no runtime, or a thread that ended without one).
pub(crate) async fn run_counted<T, F>(
    name: &str,
    workers: usize,
    work: impl FnOnce() -> F + Send + 'static,
) -> Result<(T, u64), String>
where
    T: Send + 'static,
    F: std::future::Future<Output = T>,
{
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    let (done, answer) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(name.to_string())
        .stack_size(8 << 20)
        .spawn(move || {
            let cpu = Arc::new(AtomicU64::new(0));
            let on_stop = Arc::clone(&cpu);
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(workers)
                .thread_stack_size(8 << 20)
                .on_thread_stop(move || {
                    on_stop.fetch_add(thread_cpu_ns(), Ordering::Relaxed);
                })
                .enable_all()
                .build();
            let outcome = match runtime {
                Ok(runtime) => {
                    let before = thread_cpu_ns();
                    let outcome = runtime.block_on(work());
                    cpu.fetch_add(thread_cpu_ns().saturating_sub(before), Ordering::Relaxed);
                    // Stopping the workers runs their stop hooks.
                    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
                    Ok((outcome, cpu.load(Ordering::Relaxed)))
                }
                Err(e) => Err(format!("its runtime: {e}")),
            };
            let _ = done.send(outcome);
        })
        .map_err(|e| format!("its thread: {e}"))?;
    answer
        .await
        .unwrap_or_else(|_| Err("its thread ended without an answer".into()))
}
