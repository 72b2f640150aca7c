//! What a portal and one leg's worker share: the work handed over, the leg's counters, and the signals to close
//! and to stop. One allocation of about two hundred bytes per idle leg (plus the queue's buffer while work waits),
//! where a bounded tokio channel and a watch channel took about 1.1 KiB — most of an idle leg's cost, with
//! thousands of legs linked.

use super::LegWork;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use tokio::sync::Notify;

/// Most work items a leg's queue holds; beyond it, work waits in the outbox ([`LegSender::try_push`]).
const CAPACITY: usize = 1024;

/// Counters of one leg, shared between its worker and status queries.
#[derive(Debug, Default)]
pub(crate) struct LegCounters {
    pub pending: AtomicU64,
    pub delivered: AtomicU64,
    pub failed: AtomicU64,
    /// Set when the portal could not queue work because the queue was full: the worker reloads the outbox.
    pub overflow: AtomicBool,
}

/// The queue between a portal and a leg's worker; see the module documentation.
#[derive(Debug, Default)]
pub(crate) struct LegQueue {
    pub counters: LegCounters,
    /// Boxed: an event is large, and the worker holds what it takes.
    items: Mutex<VecDeque<Box<LegWork>>>,
    /// The portal let go of the leg ([`LegSender`] dropped): the worker ends once the queue is empty.
    closed: AtomicBool,
    /// Stop now (an unlink): what is queued stays in the outbox.
    stopped: AtomicBool,
    /// Work queued, or the queue closed or stopped (a permit is kept when the worker is not waiting).
    wake: Notify,
    /// Stopped (wakes every waiter: the worker may wait for it in a delivery's retry).
    stop: Notify,
    /// The worker's task has ended ([`WorkerGone`]): work handed over now would wait for nobody.
    ended: AtomicBool,
}

/// Why [`LegSender::try_push`] gave work back.
pub(crate) enum Refused {
    /// The queue is full: the work waits in the outbox.
    Full(Box<LegWork>),
    /// The worker has ended (a stop, or a task that died): nobody would take it.
    Ended(Box<LegWork>),
}

impl LegQueue {
    /// The items, whatever a panic elsewhere left: a `VecDeque` is never half-changed.
    fn items(&self) -> MutexGuard<'_, VecDeque<Box<LegWork>>> {
        self.items.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The next item, waiting for one; `None` once the queue is empty and closed.
    pub async fn next(&self) -> Option<Box<LegWork>> {
        loop {
            // Read before the queue: work pushed before a close is still taken.
            let closed = self.closed.load(Ordering::Acquire);
            {
                let mut items = self.items();
                if let Some(w) = items.pop_front() {
                    // After a burst, an idle leg does not keep the burst's buffer.
                    if items.is_empty() && items.capacity() > 16 {
                        items.shrink_to_fit();
                    }
                    return Some(w);
                }
            }
            if closed {
                return None;
            }
            self.wake.notified().await;
        }
    }

    /// Whether the leg's worker was told to stop.
    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }

    /// Waits until the leg's worker is told to stop.
    pub async fn stopped(&self) {
        loop {
            let notified = self.stop.notified();
            tokio::pin!(notified);
            // Registered before the flag is read: a stop in between still wakes it.
            notified.as_mut().enable();
            if self.is_stopped() {
                return;
            }
            notified.await;
        }
    }
}

/// The portal's end of a leg's queue. Dropping it closes the queue: the worker delivers what is queued, then ends.
#[derive(Debug)]
pub(crate) struct LegSender(pub(super) Arc<LegQueue>);

impl LegSender {
    /// Queues work if there is room and a worker to take it; gives it back otherwise.
    pub fn try_push(&self, work: Box<LegWork>) -> Result<(), Refused> {
        if self.0.ended.load(Ordering::Acquire) {
            return Err(Refused::Ended(work));
        }
        let mut items = self.0.items();
        if items.len() >= CAPACITY {
            return Err(Refused::Full(work));
        }
        items.push_back(work);
        drop(items);
        self.0.wake.notify_one();
        Ok(())
    }

    /// Tells the worker to stop now (an unlink); what is queued stays in the outbox.
    pub fn stop(&self) {
        self.0.stopped.store(true, Ordering::Release);
        self.0.stop.notify_waiters();
        self.0.wake.notify_one();
    }

    /// The leg's counters.
    pub fn counters(&self) -> &LegCounters {
        &self.0.counters
    }
}

/// Held by a leg's worker task while it runs: when the task ends, however (a panic included), the queue says so.
pub(crate) struct WorkerGone(pub(crate) Arc<LegQueue>);

impl Drop for WorkerGone {
    fn drop(&mut self) {
        self.0.ended.store(true, Ordering::Release);
    }
}

impl Drop for LegSender {
    fn drop(&mut self) {
        self.0.closed.store(true, Ordering::Release);
        self.0.wake.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn work(seq: u64) -> Box<LegWork> {
        let event = crate::outbox::tests::event(bridge_api::event::OutboundKind::Typing { active: true });
        Box::new(LegWork::new(Some(seq), event))
    }

    #[tokio::test]
    async fn items_come_in_order_then_none_once_closed() {
        let q = Arc::new(LegQueue::default());
        let tx = LegSender(q.clone());
        for i in 1..=3 {
            pushed(&tx, work(i));
        }
        drop(tx);
        for i in 1..=3 {
            assert_eq!(q.next().await.and_then(|w| w.seq), Some(i));
        }
        assert!(q.next().await.is_none(), "closed and empty");
    }

    fn pushed(tx: &LegSender, w: Box<LegWork>) {
        assert!(tx.try_push(w).is_ok(), "refused");
    }

    /// A worker waiting for work, spawned; what it got.
    fn waiting(q: &Arc<LegQueue>) -> tokio::task::JoinHandle<Option<u64>> {
        let q = q.clone();
        tokio::spawn(async move { q.next().await.and_then(|w| w.seq) })
    }

    async fn joined<T>(task: tokio::task::JoinHandle<T>) -> T {
        tokio::time::timeout(Duration::from_secs(5), task).await.expect("woken").expect("joined")
    }

    #[tokio::test]
    async fn a_waiting_worker_wakes_for_work_for_a_close_and_for_a_stop() {
        let q = Arc::new(LegQueue::default());
        let tx = LegSender(q.clone());
        let waiter = waiting(&q);
        tokio::time::sleep(Duration::from_millis(10)).await;
        pushed(&tx, work(7));
        assert_eq!(joined(waiter).await, Some(7));
        let stopped = tokio::spawn({
            let q = q.clone();
            async move { q.stopped().await }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!q.is_stopped());
        tx.stop();
        joined(stopped).await;
        // A stop before anyone waits is seen too.
        tokio::time::timeout(Duration::from_secs(5), q.stopped()).await.expect("already stopped");
        // A close wakes a waiting worker, which ends.
        let waiter = waiting(&q);
        tokio::time::sleep(Duration::from_millis(10)).await;
        drop(tx);
        assert_eq!(joined(waiter).await, None);
    }

    /// Work pushed just before a close is still taken, with the worker waiting or not yet there (on two threads,
    /// many times; the narrowest window, between the worker's look at the queue and at the close, is kept shut
    /// by their order in `next`, which this does not reach reliably).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn work_pushed_before_a_close_is_taken() {
        for _ in 0..2_000 {
            let q = Arc::new(LegQueue::default());
            let tx = LegSender(q.clone());
            let waiter = waiting(&q);
            pushed(&tx, work(1));
            drop(tx);
            assert_eq!(joined(waiter).await, Some(1));
            assert!(q.next().await.is_none());
        }
    }

    #[test]
    fn work_for_a_worker_that_ended_is_given_back() {
        let q = Arc::new(LegQueue::default());
        let tx = LegSender(q.clone());
        drop(WorkerGone(q));
        assert!(matches!(tx.try_push(work(3)), Err(Refused::Ended(w)) if w.seq == Some(3)));
    }

    #[test]
    fn a_full_queue_gives_the_work_back() {
        let tx = LegSender(Arc::new(LegQueue::default()));
        for i in 0..CAPACITY as u64 {
            pushed(&tx, work(i));
        }
        assert!(matches!(tx.try_push(work(9999)), Err(Refused::Full(w)) if w.seq == Some(9999)));
    }
}
