//! Delivery to one leg: a task per leg that drains the durable outbox in order.
//!
//! The portal writes each outbound event to the `outbox` tree in the same batch that records the message, and
//! only then hands it to this worker. The worker performs it through the leg's account, retrying with backoff
//! while the network is unreachable (order is kept: a later event waits for an earlier one), and records the
//! result (the native ids, the outbox entry removed) in one batch. A restart reloads the outbox, so nothing
//! accepted is lost; a delivery that is refused, or still failing after `give_up_after`, moves to the `failed`
//! tree and is reported to the portal, which tells the sender's leg.

use crate::outbox::{DeliveryRecord, now_ms};
use crate::portal::PortalInput;
use crate::repo::{Repo, write};
use crate::router::Shared;
use bridge_api::connector::SendError;
use bridge_api::event::{OutboundEvent, OutboundKind, ParentRef};
use bridge_api::ids::{LegId, MessageId, NativeId};
use mimi_store::Batch;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tracing::Instrument;

mod queue;

pub(crate) use queue::LegCounters;
use queue::{LegQueue, LegSender, Refused, WorkerGone};

/// One delivery for a leg.
#[derive(Debug, Clone)]
pub(crate) struct LegWork {
    /// Outbox sequence number; `None` for ephemeral events (typing, membership, notices) that are not stored and
    /// not retried.
    pub seq: Option<u64>,
    /// The event.
    pub event: OutboundEvent,
    /// When it was queued (`event.queued_at_ms`, as stored in the outbox across restarts), for the delivery
    /// latency histogram.
    pub queued: Instant,
}

impl LegWork {
    /// Work queued now (or at `event.queued_at_ms`, if set).
    pub fn new(seq: Option<u64>, mut event: OutboundEvent) -> Self {
        if event.queued_at_ms == 0 {
            event.queued_at_ms = now_ms();
        }
        Self { seq, event, queued: Instant::now() }
    }

    /// Work loaded from the outbox, queued at `record.queued_at_ms`.
    fn stored(seq: u64, record: &DeliveryRecord) -> Self {
        let age = Duration::from_millis(now_ms().saturating_sub(record.queued_at_ms));
        let now = Instant::now();
        let queued = now.checked_sub(age).unwrap_or(now);
        Self { seq: Some(seq), event: record.to_event(), queued }
    }
}

/// The portal's handle on a leg's worker.
pub(crate) struct LegWorker {
    /// The worker's queue: dropped, the worker delivers what is queued and ends ([`LegSender`]).
    pub tx: LegSender,
    pub task: tokio::task::JoinHandle<()>,
}

/// A portal's legs and their workers, in leg order: a sorted vector, not a `BTreeMap` (whose first node holds
/// room for 11 entries — a kilobyte per idle portal with one leg).
#[derive(Default)]
pub(crate) struct LegWorkers(Vec<(LegId, LegWorker)>);

impl LegWorkers {
    pub fn insert(&mut self, leg: LegId, worker: LegWorker) {
        match self.0.binary_search_by(|(l, _)| l.cmp(&leg)) {
            Ok(i) => self.0[i].1 = worker,
            Err(i) => {
                self.0.insert(i, (leg, worker));
                // A vector grows to room for four: most portals have one or two legs.
                self.0.shrink_to_fit();
            }
        }
    }

    pub fn get(&self, leg: &LegId) -> Option<&LegWorker> {
        self.0.binary_search_by(|(l, _)| l.cmp(leg)).ok().map(|i| &self.0[i].1)
    }

    pub fn contains_key(&self, leg: &LegId) -> bool {
        self.get(leg).is_some()
    }

    pub fn remove(&mut self, leg: &LegId) -> Option<LegWorker> {
        self.0.binary_search_by(|(l, _)| l.cmp(leg)).ok().map(|i| self.0.remove(i).1)
    }

    pub fn keys(&self) -> impl Iterator<Item = &LegId> {
        self.0.iter().map(|(l, _)| l)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&LegId, &LegWorker)> {
        self.0.iter().map(|(l, w)| (l, w))
    }
}

impl IntoIterator for LegWorkers {
    type Item = (LegId, LegWorker);
    type IntoIter = std::vec::IntoIter<(LegId, LegWorker)>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl LegWorker {
    /// Queues work if the worker's queue has room; gives it back otherwise (then [`LegWorker::push`] it once its
    /// outbox entry is durable: a full queue is caught up from the outbox, which must hold it by then).
    pub fn try_push(&self, work: LegWork) -> Result<(), Box<LegWork>> {
        let stored = work.seq.is_some();
        match self.tx.try_push(Box::new(work)) {
            // (A worker that ended takes nothing more; a stored event waits in the outbox.)
            Ok(()) | Err(Refused::Ended(_)) => {
                if stored {
                    self.counters().pending.fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            }
            Err(Refused::Full(w)) => Err(w),
        }
    }

    /// Queues work; never waits (the outbox is the buffer of record).
    pub fn push(&self, work: LegWork) {
        if work.seq.is_some() {
            self.counters().pending.fetch_add(1, Ordering::Relaxed);
        }
        if let Err(Refused::Full(w) | Refused::Ended(w)) = self.tx.try_push(Box::new(work))
            && w.seq.is_some()
        {
            // Still in the outbox: the worker picks it up when it reloads.
            self.counters().overflow.store(true, Ordering::Release);
        }
    }

    /// Stops this worker alone (an unlink); pending deliveries stay in the outbox.
    pub fn stop(&self) {
        self.tx.stop();
    }

    /// The leg's counters.
    pub fn counters(&self) -> &LegCounters {
        self.tx.counters()
    }
}

/// Starts the worker of `leg`, loading its outbox first.
/// Starts the delivery worker of `leg`. Outbox entries with sequence numbers below `counted_from` were queued
/// before it (a restart, a backlog): it counts them as pending when it loads them; later ones are counted by
/// [`LegWorker::push`].
pub(crate) fn spawn(
    shared: Arc<Shared>,
    leg: LegId,
    portal_tx: mpsc::Sender<Box<PortalInput>>,
    counted_from: u64,
) -> LegWorker {
    let queue = Arc::new(LegQueue::default());
    let w = Worker {
        shared,
        leg,
        portal_tx,
        queue: queue.clone(),
        recent: HashMap::new(),
        high_water: 0,
        more: false,
        counted_from,
        recording: None,
    };
    let span = tracing::info_span!("leg", leg = %w.leg);
    let task = tokio::spawn(w.run().instrument(span));
    LegWorker { tx: LegSender(queue), task }
}

struct Worker {
    shared: Arc<Shared>,
    leg: LegId,
    portal_tx: mpsc::Sender<Box<PortalInput>>,
    /// What the portal hands over, the leg's counters, and its stop ([`LegQueue`]).
    queue: Arc<LegQueue>,
    /// Native ids of recent deliveries on this leg, so a reply to a message delivered a moment ago resolves even
    /// before that delivery's record is durable.
    recent: HashMap<MessageId, NativeId>,
    /// Highest outbox sequence number queued so far.
    high_water: u64,
    /// The last outbox page read was full: read the next one once the queue is empty.
    more: bool,
    /// Outbox entries below this sequence number were not counted by [`LegWorker::push`] ([`spawn`]); the worker
    /// counts them once when it starts.
    counted_from: u64,
    /// The task waiting for the latest delivery record to be durable (group commit is FIFO: once it is, so are
    /// all before it). The worker waits for it before it ends, so an unlink never reads an outbox entry whose
    /// delivery is recorded but not yet written, and lists a delivered event as undeliverable.
    recording: Option<tokio::task::JoinHandle<()>>,
}

/// Most outbox entries read into memory at once.
const OUTBOX_PAGE: usize = 1000;

impl Worker {
    async fn run(mut self) {
        let _gone = WorkerGone(self.queue.clone());
        // Boxed, as what the queue brings: an event held in the task's own state would cost every idle leg its size.
        let mut queue: VecDeque<Box<LegWork>> = VecDeque::new();
        // What waited before this worker started (a restart's backlog, perhaps many pages) is pending too.
        match Repo::new(&self.shared.store).outbox_len_below(&self.leg, self.counted_from) {
            Ok(n) => {
                self.queue.counters.pending.fetch_add(n, Ordering::Relaxed);
            }
            Err(e) => tracing::error!(leg = %self.leg, error = %e, "cannot count the outbox"),
        }
        self.reload(&mut queue);
        let mut shutdown = self.shared.shutdown.clone();
        let handed = self.queue.clone();
        loop {
            if *shutdown.borrow() || handed.is_stopped() {
                break;
            }
            let work = match queue.pop_front() {
                Some(w) => w,
                None => {
                    if handed.counters.overflow.swap(false, Ordering::AcqRel) || self.more {
                        self.reload(&mut queue);
                        if !queue.is_empty() {
                            continue;
                        }
                    }
                    let w = tokio::select! {
                        w = handed.next() => match w {
                            Some(w) => w,
                            None => break,
                        },
                        _ = shutdown.changed() => break,
                        _ = handed.stopped() => break,
                    };
                    if let Some(seq) = w.seq {
                        if seq <= self.high_water {
                            // Already loaded from the outbox.
                            continue;
                        }
                        self.high_water = seq;
                    }
                    w
                }
            };
            let span = tracing::info_span!("deliver", message = %work.event.message_id, kind = work.event.kind.name());
            // Boxed: the delivery's state is large, and an idle leg's task waits above most of its life.
            Box::pin(self.deliver(work).instrument(span)).await;
        }
        if let Some(recording) = self.recording.take() {
            let _ = recording.await;
        }
    }

    /// Loads the next page of outbox entries above the high-water mark (a long backlog — a leg down for days —
    /// is read a page at a time, never whole); sets `more` if there may be more.
    fn reload(&mut self, queue: &mut VecDeque<Box<LegWork>>) {
        match Repo::new(&self.shared.store).outbox_page(&self.leg, self.high_water.saturating_add(1), OUTBOX_PAGE) {
            Ok(items) => {
                self.more = items.len() == OUTBOX_PAGE;
                for (seq, record) in items {
                    if seq > self.high_water {
                        self.high_water = seq;
                        queue.push_back(Box::new(LegWork::stored(seq, &record)));
                    }
                }
            }
            Err(e) => tracing::error!(leg = %self.leg, error = %e, "cannot read the outbox"),
        }
    }

    /// Fills in native ids the portal could not know when it queued the event.
    fn refresh(&self, ev: &mut OutboundEvent) {
        let repo = Repo::new(&self.shared.store);
        let fill = |p: &mut ParentRef| {
            if p.native_id.is_none() {
                p.native_id = self
                    .recent
                    .get(&p.message_id)
                    .cloned()
                    .or_else(|| repo.native_on(&p.message_id, &self.leg).ok().flatten());
            }
        };
        match &mut ev.kind {
            OutboundKind::Message { reply_to: Some(p), .. } => fill(p),
            OutboundKind::Edit { target, .. } | OutboundKind::Delete { target } => fill(target),
            OutboundKind::ReactionAdd { target, .. } => fill(target),
            OutboundKind::ReactionRemove { target, .. } => fill(target),
            _ => {}
        }
        if let OutboundKind::ReactionRemove { reaction, reaction_native_id: r @ None, .. } = &mut ev.kind {
            *r = self.recent.get(reaction).cloned().or_else(|| repo.native_on(reaction, &self.leg).ok().flatten());
        }
    }

    async fn deliver(&mut self, work: Box<LegWork>) {
        let mut work = *work;
        let started = Instant::now();
        let mut delay = self.shared.cfg.retry_initial;
        let mut shutdown = self.shared.shutdown.clone();
        let queue = self.queue.clone();
        let mut warned = false;
        loop {
            if *shutdown.borrow() || queue.is_stopped() {
                return;
            }
            // A store that can write nothing more (a failed write; a PostgreSQL lease lost or run out, as in a
            // daemon resumed after a pause while a standby took over) could not record the delivery, and whoever
            // is active delivers from the outbox: send nothing. The event stays in the outbox.
            if !self.shared.store.healthy() {
                tracing::warn!(leg = %self.leg, message = %work.event.message_id,
                    "not delivered: the store can write nothing more (this daemon stops)");
                return;
            }
            self.refresh(&mut work.event);
            let account = self.shared.accounts.read().ok().and_then(|m| m.get(&self.leg.account).cloned());
            let result = match &account {
                None => Err(SendError::Retry(format!("account {} is not running", self.leg.account))),
                Some(a) => a.send(&work.event).await,
            };
            let reason = match result {
                Ok(delivery) => {
                    self.delivered(&work, &delivery.native_ids);
                    return;
                }
                Err(SendError::Rejected(r)) => r,
                Err(SendError::Retry(r)) => {
                    if work.seq.is_none() {
                        tracing::debug!(leg = %self.leg, reason = %r, "ephemeral event dropped");
                        return;
                    }
                    if started.elapsed() < self.shared.cfg.give_up_after {
                        if !warned {
                            metrics::counter!("mimi_bridge_errors_total", "kind" => "delivery_delayed").increment(1);
                            tracing::warn!(leg = %self.leg, message = %work.event.message_id, reason = %r,
                                "delivery delayed; retrying");
                            warned = true;
                        }
                        let mut health = account.as_ref().map(|a| a.health());
                        tokio::select! {
                            _ = tokio::time::sleep(delay) => {}
                            _ = async { match health.as_mut() { Some(h) => { let _ = h.changed().await; } None => std::future::pending::<()>().await } } => {}
                            _ = shutdown.changed() => return,
                            _ = queue.stopped() => return,
                        }
                        delay = (delay * 2).min(self.shared.cfg.retry_max);
                        continue;
                    }
                    format!("gave up after {:?}: {r}", self.shared.cfg.give_up_after)
                }
            };
            self.failed(&work, &reason).await;
            return;
        }
    }

    fn delivered(&mut self, work: &LegWork, native_ids: &[NativeId]) {
        let ev = &work.event;
        let mut b = Batch::new();
        write::natives(&mut b, &self.leg, native_ids, &ev.message_id, false);
        for n in native_ids {
            self.shared.note_delivery(&self.leg, n, ev.message_id);
        }
        if let Some(first) = native_ids.first() {
            if self.recent.len() > 4096 {
                self.recent.clear();
            }
            self.recent.insert(ev.message_id, first.clone());
        }
        let leg = self.leg.to_string();
        metrics::counter!("mimi_bridge_messages_out_total", "leg" => leg, "result" => "delivered").increment(1);
        metrics::histogram!("mimi_bridge_delivery_latency_seconds", "network" => self.leg.account.network().to_owned())
            .record(work.queued.elapsed().as_secs_f64());
        if let Some(seq) = work.seq {
            write::outbox_done(&mut b, &self.leg, seq);
            self.queue.counters.pending.fetch_sub(1, Ordering::Relaxed);
            self.queue.counters.delivered.fetch_add(1, Ordering::Relaxed);
        }
        if b.is_empty() {
            return;
        }
        // Group commit keeps FIFO order, so the next delivery need not wait for this fsync.
        let done = self.shared.store.commit_later(b);
        let leg = self.leg.clone();
        self.recording = Some(tokio::spawn(async move {
            if let Ok(Err(e)) = done.await {
                tracing::error!(leg = %leg, error = %e, "recording a delivery failed; it may be repeated after a restart");
            }
        }));
    }

    async fn failed(&mut self, work: &LegWork, reason: &str) {
        tracing::warn!(leg = %self.leg, message = %work.event.message_id, kind = work.event.kind.name(), %reason,
            "undeliverable");
        metrics::counter!("mimi_bridge_messages_out_total", "leg" => self.leg.to_string(), "result" => "failed")
            .increment(1);
        metrics::counter!("mimi_bridge_errors_total", "kind" => "undeliverable").increment(1);
        let Some(seq) = work.seq else { return };
        let mut b = Batch::new();
        write::failed(&mut b, seq, &work.event, work.event.queued_at_ms, reason);
        if let Err(e) = self.shared.store.commit(b).await {
            tracing::error!(leg = %self.leg, error = %e, "recording an undeliverable event failed");
        }
        self.queue.counters.pending.fetch_sub(1, Ordering::Relaxed);
        self.queue.counters.failed.fetch_add(1, Ordering::Relaxed);
        // The portal reports it to the sender's leg. Not awaited here: a portal unlinking this leg waits for this
        // worker to end, and with its queue full the two would wait for each other for ever.
        let report =
            Box::new(PortalInput::Undeliverable { event: Box::new(work.event.clone()), reason: reason.to_owned() });
        let portal = self.portal_tx.clone();
        tokio::spawn(async move {
            let _ = portal.send(report).await;
        });
    }
}
