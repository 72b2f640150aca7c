//! MLS work of big groups off the async executor: the bridge's member of a portal and the hub validating a
//! room's commits share it.
//!
//! A commit in a group of thousands of members takes tens to hundreds of milliseconds (processing it, merging it,
//! exporting the GroupInfo, the hub's validation against the public state). Run inline on a
//! worker thread of the runtime, it would hold up every task queued on that worker — the messages of other
//! portals. So the MLS operations of a group with at least
//! [`OFFLOAD_MEMBERS`] members run in [`tokio::task::block_in_place`]: the worker's queue moves to another thread
//! while the operation runs. At most one such operation per core runs at once ([`OFFLOADED`]); the others wait
//! their turn without blocking anything.
//!
//! The operation itself runs on a pool of threads with a lower scheduling priority ([`set_background_nice`]): on a
//! machine with few cores it still competes for them with the runtime's other worker and the store's committer,
//! and a small room's message, a few hundred microseconds of work, should not wait behind a slice of a big
//! group's commit. When nothing else is runnable it gets the whole core all the same. (On Linux the nice value is
//! a thread's own; the systemd unit lets the daemon raise it.) OpenMLS's own parallel work inside an operation
//! runs on the same pool, where a thread waiting for its part may run another caller's whole operation: so an
//! operation must never hold a lock that another offloaded operation takes.
//!
//! On a current-thread runtime (the admin commands, tests) there is no other worker to hand the queue to: the
//! operation runs inline.

use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{LazyLock, OnceLock};
use tokio::sync::Semaphore;

/// Groups with at least this many members run their MLS operations off the executor's workers. Below it, an
/// operation costs less than handing the worker's queue over.
pub const OFFLOAD_MEMBERS: usize = 500;

/// Offloaded operations running at once: one per core.
static OFFLOADED: LazyLock<Semaphore> = LazyLock::new(|| Semaphore::new(cores()));

/// How much higher the nice value of the threads big groups' operations run on is than the daemon's (at most 19),
/// by default: at 10 above, such a thread weighs about a tenth of a normal one when both want the same core.
pub const BACKGROUND_NICE: i32 = 10;

/// The nice increment in force ([`set_background_nice`]).
static NICE: AtomicI32 = AtomicI32::new(BACKGROUND_NICE);

/// Sets how much lower the priority of big groups' operations is, process-wide (0: they run at the daemon's own
/// priority, on the caller's thread; the benchmarks' baseline). Default [`BACKGROUND_NICE`]. The pool keeps the
/// value it was made with, at the first big group's operation that ran on it.
pub fn set_background_nice(increment: i32) {
    NICE.store(increment.clamp(0, 39), Ordering::Relaxed);
}

/// Runs `op`, an MLS operation on a group of `members` members, off the executor if the group is big.
pub async fn offload<R: Send>(members: usize, op: impl FnOnce() -> R + Send) -> R {
    if members < OFFLOAD_MEMBERS || !multi_thread() {
        return op();
    }
    let _turn = OFFLOADED.acquire().await;
    match NICE.load(Ordering::Relaxed) {
        0 => tokio::task::block_in_place(op),
        nice => tokio::task::block_in_place(|| in_background(nice, op)),
    }
}

/// Runs `op` on the background pool, whose threads' nice value is `nice` above the daemon's, and waits for it (a
/// panic in `op` goes on here). The pool is made at the first use, with that use's `nice`; if it cannot be made,
/// `op` runs on the caller's thread. The pool's threads are kept: a thread made per operation costs a big group's
/// commit more than the priority gains (the small room's p99 beside it went from about 6 to 9–10 ms in
/// `hub_scale`).
fn in_background<R: Send>(nice: i32, op: impl FnOnce() -> R + Send) -> R {
    static POOL: OnceLock<Option<rayon::ThreadPool>> = OnceLock::new();
    let pool = POOL.get_or_init(|| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(cores())
            .thread_name(|i| format!("mls-background-{i}"))
            .start_handler(move |i| lower_priority(i, nice))
            .build()
            .map_err(|e| tracing::warn!(error = %e, "no background threads for big groups' MLS operations"))
            .ok()
    });
    // The operation's events keep the caller's span (its room, its portal).
    let span = tracing::Span::current();
    match pool {
        Some(pool) => pool.install(move || span.in_scope(op)),
        None => op(),
    }
}

/// Raises the calling thread's nice value by `nice` (up to 19); pool thread `i`'s failure is logged once, by the
/// first thread.
fn lower_priority(i: usize, nice: i32) {
    if !cfg!(target_os = "linux") {
        return; // elsewhere the nice value is the whole process's
    }
    let own = rustix::process::getpriority_process(None).unwrap_or(0);
    if let Err(e) = rustix::process::setpriority_process(None, (own + nice).min(19))
        && i == 0
    {
        tracing::warn!(error = %e, "big groups' MLS operations run at the daemon's own priority");
    }
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

fn multi_thread() -> bool {
    tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::{Duration, Instant};

    /// While a big group's operation blocks, a task spawned beside it on the runtime's only worker keeps running:
    /// the operation waits (up to 10 s) until that task has ticked five times. Inline, it would wait in vain.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_long_operation_of_a_big_group_does_not_hold_up_other_tasks() {
        let ticks = Arc::new(AtomicU32::new(0));
        let counter = ticks.clone();
        let other = tokio::spawn(async move {
            loop {
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        });
        // Spawned, so that it runs on the worker (the test's own body runs on another thread).
        let seen = tokio::spawn(async move {
            offload(OFFLOAD_MEMBERS, || {
                let start = ticks.load(Ordering::SeqCst);
                let deadline = Instant::now() + Duration::from_secs(10);
                while ticks.load(Ordering::SeqCst) < start + 5 && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(1));
                }
                ticks.load(Ordering::SeqCst) - start
            })
            .await
        })
        .await
        .expect("the operation's task");
        other.abort();
        assert!(seen >= 5, "the other task ran {seen} times while the operation blocked");
    }

    /// A big group's operation runs at a lower priority than the runtime's threads: the nice value it sees is
    /// [`BACKGROUND_NICE`] above the test's own.
    #[cfg(target_os = "linux")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_big_groups_operation_runs_at_a_lower_priority() {
        let nice = || rustix::process::getpriority_process(None).expect("nice value");
        let own = nice();
        let (seen, after) =
            tokio::spawn(async move { (offload(OFFLOAD_MEMBERS, nice).await, nice()) }).await.expect("task");
        assert_eq!(seen, (own + BACKGROUND_NICE).min(19));
        assert_eq!(after, own, "the calling task's thread keeps its priority");
        let small = tokio::spawn(async move { offload(OFFLOAD_MEMBERS - 1, nice).await }).await.expect("task");
        assert_eq!(small, own, "a small group's operation runs inline");
    }

    #[tokio::test]
    async fn on_a_current_thread_runtime_it_runs_inline() {
        assert_eq!(offload(OFFLOAD_MEMBERS * 10, || 7).await, 7);
    }
}
