//! MLS work of big groups off the async executor: the bridge's member of a portal and the hub validating a
//! room's commits share it.
//!
//! A commit in a group of thousands of members takes tens to hundreds of milliseconds (processing it, merging it,
//! exporting the GroupInfo with the ratchet tree, the hub's validation against the public state). Run inline on a
//! worker thread of the runtime, it would hold up every task queued on that worker — the messages of other
//! portals. So the MLS operations of a group with at least
//! [`OFFLOAD_MEMBERS`] members run in [`tokio::task::block_in_place`]: the worker's queue moves to another thread
//! while the operation runs. At most one such operation per core runs at once ([`OFFLOADED`]); the others wait
//! their turn without blocking anything.
//!
//! On a current-thread runtime (the admin commands, tests) there is no other worker to hand the queue to: the
//! operation runs inline.

use std::sync::LazyLock;
use tokio::sync::Semaphore;

/// Groups with at least this many members run their MLS operations off the executor's workers. Below it, an
/// operation costs less than handing the worker's queue over.
pub const OFFLOAD_MEMBERS: usize = 500;

/// Offloaded operations running at once: one per core.
static OFFLOADED: LazyLock<Semaphore> =
    LazyLock::new(|| Semaphore::new(std::thread::available_parallelism().map_or(2, |n| n.get())));

/// Runs `op`, an MLS operation on a group of `members` members, off the executor if the group is big.
pub async fn offload<R>(members: usize, op: impl FnOnce() -> R) -> R {
    if members < OFFLOAD_MEMBERS || !multi_thread() {
        return op();
    }
    let _turn = OFFLOADED.acquire().await;
    tokio::task::block_in_place(op)
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

    #[tokio::test]
    async fn on_a_current_thread_runtime_it_runs_inline() {
        assert_eq!(offload(OFFLOAD_MEMBERS * 10, || 7).await, 7);
    }
}
