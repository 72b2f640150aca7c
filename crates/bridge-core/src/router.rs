//! The router: finds the portal of each inbound event and keeps the set of portals, legs and accounts.
//!
//! One tokio task per portal ([`crate::portal`]) with a bounded queue: a connector that submits faster than a
//! portal can sequence waits in [`InboundSink::submit`](crate::InboundSink::submit) — backpressure, never an
//! unbounded buffer and never a silent drop. Events of one portal are processed in the order they were queued;
//! portals run independently of each other.

use crate::portal::{self, LegStatus, PortalInput};
use crate::repo::{PortalRecord, Repo, Unrecorded, write};
use crate::room_of_record::{GroupMessage, RoomOfRecord};
use bridge_api::connector::{Account, ConnectorError};
use bridge_api::event::{InboundEvent, InboundKind};
use bridge_api::ids::{AccountId, LegId, MessageId, NativeId, PortalId};
pub use bridge_api::{Accepted, RoomError, RouteError};
use mimi_store::{Batch, Store, StoreError};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

/// Counts a refused or failed event in `mimi_bridge_errors_total`.
pub(crate) fn count_error(e: &RouteError) {
    metrics::counter!("mimi_bridge_errors_total", "kind" => e.kind()).increment(1);
}

/// A store failure as the connector sees it: not accepted, may be resubmitted.
pub(crate) fn store_error(e: StoreError) -> RouteError {
    RouteError::Store(e.to_string())
}

/// Router tuning.
#[derive(Debug, Clone)]
pub struct RouterConfig {
    /// The bridge's MIMI domain.
    pub domain: String,
    /// Capacity of each portal's queue.
    pub queue_depth: usize,
    /// Largest inbound event (text plus attachment descriptions) accepted, in bytes.
    pub max_event_bytes: usize,
    /// Most events a portal sequences before one group commit.
    pub drain_max: usize,
    /// First retry delay for a delivery that failed with `Retry`.
    pub retry_initial: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
    /// After this long without success a delivery is given up and reported as undeliverable.
    pub give_up_after: Duration,
    /// After this long without an answer (from when it was first marked for the hub, across restarts), a message for the hub of
    /// a room hosted elsewhere is given up and its sender told: longer than a delivery, since a message the hub
    /// never takes is lost to the whole room, this bridge's other legs included.
    pub hub_give_up_after: Duration,
    /// Hand deliveries to the legs while the portal's record of them is being made durable, where the room of
    /// record makes that safe (see `Portal::settle`): one fsync less on every message's way. `false` waits for
    /// the record first (the benchmarks' baseline).
    pub deliver_before_durable: bool,
}

impl RouterConfig {
    /// Defaults for `domain`.
    pub fn new(domain: impl Into<String>) -> Self {
        Self {
            domain: domain.into(),
            queue_depth: 256,
            max_event_bytes: 64 * 1024,
            drain_max: 64,
            retry_initial: Duration::from_millis(200),
            retry_max: Duration::from_secs(30),
            give_up_after: Duration::from_secs(3600),
            hub_give_up_after: Duration::from_secs(24 * 3600),
            deliver_before_durable: true,
        }
    }
}

/// The accounts the router delivers through, by id.
pub(crate) type Accounts = Arc<RwLock<HashMap<AccountId, Arc<dyn Account>>>>;

struct PortalHandle {
    tx: mpsc::Sender<Box<PortalInput>>,
    task: JoinHandle<()>,
}

pub(crate) struct Shared {
    pub(crate) cfg: RouterConfig,
    pub(crate) store: Store,
    pub(crate) group: Arc<dyn RoomOfRecord>,
    pub(crate) accounts: Accounts,
    pub(crate) shutdown: watch::Receiver<bool>,
    legs: RwLock<HashMap<LegId, PortalId>>,
    /// Native ids of deliveries whose record may not be durable yet (see [`Shared::recent_delivery`]).
    recent: std::sync::Mutex<HashMap<(LegId, NativeId), MessageId>>,
    /// Events refused lately (at intake, or by the room of record), so that their senders are told once
    /// ([`crate::refusals`]).
    refusals: std::sync::Mutex<crate::refusals::Refusals>,
    portals: tokio::sync::Mutex<HashMap<PortalId, PortalHandle>>,
    senders: RwLock<HashMap<PortalId, mpsc::Sender<Box<PortalInput>>>>,
    stop: watch::Sender<bool>,
}

impl Shared {
    /// Remembers that `native` on `leg` is `message` the moment a network accepted a delivery, before its record
    /// is durable: a reply to it from that leg, arriving a few milliseconds later, still resolves.
    pub(crate) fn note_delivery(&self, leg: &LegId, native: &NativeId, message: MessageId) {
        if let Ok(mut m) = self.recent.lock() {
            if m.len() >= 4096 {
                m.clear();
            }
            m.insert((leg.clone(), native.clone()), message);
        }
    }

    /// A delivery noted by [`Shared::note_delivery`].
    pub(crate) fn recent_delivery(&self, leg: &LegId, native: &NativeId) -> Option<MessageId> {
        self.recent.lock().ok()?.get(&(leg.clone(), native.clone())).copied()
    }

    /// Notes that the event `native` of `sender` on `leg` was refused: true if its sender should be told now
    /// (once per event, at most once a minute per sender, never for the bridge's own echoes; [`crate::refusals`]).
    pub(crate) fn tell_refused(&self, leg: &LegId, native: Option<&NativeId>, sender: &str, from_bridge: bool) -> bool {
        !from_bridge
            && self.refusals.lock().is_ok_and(|mut r| r.refused(leg, native, sender, std::time::Instant::now()))
    }

    /// Notes that the event `native` on `leg` was refused: true the first time (no limit per sender; see
    /// [`crate::refusals::Refusals::first`]).
    pub(crate) fn first_refusal(&self, leg: &LegId, native: &NativeId) -> bool {
        self.refusals.lock().is_ok_and(|mut r| r.first(leg, native))
    }
}

/// A handle on the router; cheap to clone.
#[derive(Clone)]
pub struct RouterHandle {
    inner: Arc<Shared>,
}

/// A [`RouterHandle`] that does not keep the router alive: for those the router itself holds, such as its room
/// of record.
#[derive(Clone, Default)]
pub(crate) struct WeakRouter(std::sync::Weak<Shared>);

impl WeakRouter {
    /// The router, while it runs.
    pub(crate) fn upgrade(&self) -> Option<RouterHandle> {
        self.0.upgrade().map(|inner| RouterHandle { inner })
    }
}

/// One portal in [`RouterHandle::status`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct PortalStatus {
    /// The portal.
    pub id: PortalId,
    /// Events waiting in its queue.
    pub queue_depth: usize,
    /// Its legs.
    pub legs: Vec<LegStatus>,
}

impl RouterHandle {
    /// Starts the router: loads portals and legs from the store and starts one task per portal.
    pub async fn start(cfg: RouterConfig, store: Store, group: Arc<dyn RoomOfRecord>) -> Result<Self, RouteError> {
        let (stop, shutdown) = watch::channel(false);
        let inner = Arc::new(Shared {
            cfg,
            store,
            group,
            accounts: Arc::default(),
            shutdown,
            legs: RwLock::default(),
            recent: std::sync::Mutex::default(),
            refusals: std::sync::Mutex::default(),
            portals: tokio::sync::Mutex::default(),
            senders: RwLock::default(),
            stop,
        });
        let me = Self { inner };
        let repo = Repo::new(&me.inner.store);
        // Grouped once: a scan of every leg for each portal is quadratic (half a second at 10 000 of each).
        let mut legs: HashMap<PortalId, Vec<LegId>> = HashMap::new();
        for (leg, portal) in repo.legs().map_err(store_error)? {
            legs.entry(portal).or_default().push(leg);
        }
        for rec in repo.portals().map_err(store_error)? {
            let mine = legs.remove(&rec.id).unwrap_or_default();
            me.spawn_portal(rec, mine).await?;
        }
        me.record_marked(|u| !u.submitted).await?;
        Ok(me)
    }

    /// Records each marked inbound event `which` selects: one the hub sequenced but its portal never recorded
    /// (the daemon stopped between the two, [`crate::repo::write::sent`]) goes through its portal again, which
    /// finds it published and records it under its message id for the other legs; one handed to the hub of a
    /// room hosted elsewhere that did not answer ([`crate::repo::write::submitted`]) is published again. Without
    /// this a network that never sends an event again (IRC) would leave it with the MLS members only. At start,
    /// the first kind, before anything new; the second waits for [`RouterHandle::publish_unanswered`], as
    /// publishing needs the room joined. Returns how many are left for later (unavailable now).
    async fn record_marked(&self, which: impl Fn(&Unrecorded) -> bool) -> Result<usize, RouteError> {
        // Routed all at once (each portal's queue keeps their order), then awaited.
        let mut pending = Vec::new();
        let mut routed_events = std::collections::HashSet::new();
        let marked = Repo::new(&self.inner.store).unrecorded().map_err(store_error)?;
        for u in marked.into_iter().filter(|u| which(u)) {
            let (id, native, event, submitted) = (u.message_id, u.native, u.event, u.submitted);
            let leg = event.leg.clone();
            // The changes of one reaction set share their event: it goes through once, and finds each published.
            let routed = if u.portal.is_some() && u.portal != self.portal_of(&leg) {
                // Its leg is linked to another portal now, which would publish it afresh in its own group.
                Err(RouteError::UnknownLeg(leg.clone()))
            } else if routed_events.insert((leg.clone(), event.native_id.clone())) {
                self.route(event).await.map(Some)
            } else {
                Ok(None)
            };
            pending.push((id, leg, native, routed, submitted));
        }
        let mut kept = 0;
        for (id, leg, native, routed, submitted) in pending {
            let outcome = match routed {
                Ok(Some(rx)) => rx.await.unwrap_or(Err(RouteError::Closed)),
                // Its event went through with an earlier marker (a reaction set's changes share it).
                Ok(None) => Err(RouteError::Closed),
                Err(e) => Err(e),
            };
            // Its portal forgets the marker in the batch that records the message.
            let marker = Repo::new(&self.inner.store).sent(&leg, &native).map_err(store_error)?;
            let recorded = marker.is_none();
            let forget = match outcome {
                // Given up (its sender told): the mark that says so stays, for a redelivery.
                _ if marker.is_some_and(|m| m.given_up) => false,
                // The room refused to publish it for good (its marker is dropped with it, if the room did not
                // already). One it sequenced stays: the room holds it.
                Err(e @ RouteError::Room(bridge_api::RoomError::Refused(_))) if submitted => {
                    tracing::warn!(%leg, message = %id, error = %e, "an event published before is refused; its marker is dropped");
                    true
                }
                _ if recorded => {
                    tracing::info!(%leg, message = %id, "an event published before is recorded");
                    false
                }
                // Transient: the marker stays for the next start (or the network's redelivery).
                Err(e @ (RouteError::Store(_) | RouteError::Closed | RouteError::Room(_))) => {
                    let what = "an event published before is not recorded yet";
                    tracing::warn!(%leg, message = %id, error = %e, "{what}");
                    kept += 1;
                    false
                }
                // Recorded already, or never to be (its leg unlinked, or moved to another portal): nothing to keep.
                other => {
                    let what = "an event published before is not recorded; its marker is dropped";
                    tracing::warn!(%leg, message = %id, outcome = ?other, "{what}");
                    true
                }
            };
            if forget {
                let mut b = Batch::new();
                write::forget_sent(&mut b, &leg, &native);
                self.inner.store.commit(b).await.map_err(store_error)?;
            }
        }
        Ok(kept)
    }

    /// Publishes again each event of `portal` that was handed to the hub of its room, hosted elsewhere, without
    /// an answer ([`crate::repo::write::submitted`]): as the same message, which that hub sequences once, then
    /// recorded for the other legs; and records those of its events the hub sequenced that the portal has not
    /// recorded. Call once the portal's room is joined; returns how many are still waiting (the hub unreachable
    /// again), to be tried later.
    pub async fn publish_unanswered(&self, portal: &PortalId) -> Result<usize, RouteError> {
        self.record_marked(|u| u.portal.as_ref() == Some(portal)).await
    }

    /// Tells every leg of `portal` `body`, as a notice from the bridge (best effort: dropped if the portal's queue
    /// is full).
    pub fn notice(&self, portal: &PortalId, body: String) {
        if let Some(tx) = self.sender(portal) {
            let _ = tx.try_send(Box::new(PortalInput::Notice { body }));
        }
    }

    /// How long a message for the hub of a room hosted elsewhere is tried ([`RouterConfig::hub_give_up_after`]).
    pub(crate) fn hub_give_up_after(&self) -> Duration {
        self.inner.cfg.hub_give_up_after
    }

    /// A handle that does not keep the router alive ([`WeakRouter::upgrade`]).
    pub(crate) fn downgrade(&self) -> WeakRouter {
        WeakRouter(Arc::downgrade(&self.inner))
    }

    async fn spawn_portal(&self, rec: PortalRecord, legs: Vec<LegId>) -> Result<(), RouteError> {
        let (tx, rx) = mpsc::channel(self.inner.cfg.queue_depth.max(1));
        {
            let mut map = self.inner.legs.write().map_err(|_| RouteError::Closed)?;
            for l in &legs {
                map.insert(l.clone(), rec.id.clone());
            }
        }
        let id = rec.id.clone();
        let task = portal::spawn(self.inner.clone(), rec, legs, rx, tx.clone()).await?;
        self.inner.senders.write().map_err(|_| RouteError::Closed)?.insert(id.clone(), tx.clone());
        self.inner.portals.lock().await.insert(id, PortalHandle { tx, task });
        Ok(())
    }

    /// The store the router writes to.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The bridge's MIMI domain.
    pub fn domain(&self) -> &str {
        &self.inner.cfg.domain
    }

    /// Makes an account available for deliveries (replacing one with the same id).
    pub fn add_account(&self, account: Arc<dyn Account>) {
        if let Ok(mut map) = self.inner.accounts.write() {
            map.insert(account.id().clone(), account);
        }
    }

    /// The account with this id, if registered.
    pub fn account(&self, id: &AccountId) -> Option<Arc<dyn Account>> {
        self.inner.accounts.read().ok()?.get(id).cloned()
    }

    /// Every registered account.
    pub fn accounts(&self) -> Vec<Arc<dyn Account>> {
        self.inner.accounts.read().map(|m| m.values().cloned().collect()).unwrap_or_default()
    }

    /// Creates a portal (durably) if it does not exist yet, and starts its task. For an existing portal, a changed
    /// record is stored (see below).
    pub async fn create_portal(&self, rec: PortalRecord) -> Result<(), RouteError> {
        if self.inner.portals.lock().await.contains_key(&rec.id) {
            // An existing portal keeps its history; a changed record (e.g. `mls_identity` in the config) is stored
            // and takes effect when the room of record next opens the portal's group (at start).
            if Repo::new(&self.inner.store).portal(&rec.id).map_err(store_error)?.as_ref() != Some(&rec) {
                let mut b = Batch::new();
                write::portal(&mut b, &rec);
                self.inner.store.commit(b).await.map_err(store_error)?;
            }
            return Ok(());
        }
        let mut b = Batch::new();
        write::portal(&mut b, &rec);
        self.inner.store.commit(b).await.map_err(store_error)?;
        self.spawn_portal(rec, Vec::new()).await
    }

    /// Links a leg to a portal, durably, effective at once.
    pub async fn link(&self, leg: LegId, portal: &PortalId) -> Result<(), RouteError> {
        if let Some(p) = self.portal_of(&leg) {
            if &p == portal {
                return Ok(());
            }
            return Err(RouteError::AlreadyLinked { leg, portal: p });
        }
        let (done, wait) = oneshot::channel();
        self.send_control(portal, PortalInput::Link { leg: leg.clone(), done }).await?;
        wait.await.map_err(|_| RouteError::Closed)??;
        self.inner.legs.write().map_err(|_| RouteError::Closed)?.insert(leg, portal.clone());
        Ok(())
    }

    /// Unlinks a leg, durably, effective at once. Pending deliveries to it stay in the outbox.
    pub async fn unlink(&self, leg: &LegId) -> Result<(), RouteError> {
        let portal = self.portal_of(leg).ok_or_else(|| RouteError::UnknownLeg(leg.clone()))?;
        let (done, wait) = oneshot::channel();
        self.send_control(&portal, PortalInput::Unlink { leg: leg.clone(), done }).await?;
        wait.await.map_err(|_| RouteError::Closed)??;
        self.inner.legs.write().map_err(|_| RouteError::Closed)?.remove(leg);
        Ok(())
    }

    /// Links `leg` to `portal` ([`RouterHandle::link`]) and, if the leg's account is running, has it join the
    /// room: the one way a leg linked at runtime gets its account into the room. The link stands whether or not
    /// the join succeeds (an account rejoins its rooms on reconnect); the join's outcome is returned (`None`: the
    /// account is not running) for callers that report it.
    pub async fn link_and_join(
        &self,
        leg: LegId,
        portal: &PortalId,
    ) -> Result<Option<Result<(), ConnectorError>>, RouteError> {
        self.link(leg.clone(), portal).await?;
        let Some(account) = self.account(&leg.account) else { return Ok(None) };
        let joined = account.join(&leg.room).await;
        if let Err(e) = &joined {
            tracing::warn!(%leg, error = %e, "joining the linked room failed; the account retries on reconnect");
        }
        Ok(Some(joined))
    }

    /// Unlinks `leg` ([`RouterHandle::unlink`]) and, if its account is running, has it leave the room (a failure
    /// to leave is logged).
    pub async fn unlink_and_leave(&self, leg: &LegId) -> Result<(), RouteError> {
        self.unlink(leg).await?;
        if let Some(account) = self.account(&leg.account)
            && let Err(e) = account.leave(&leg.room).await
        {
            tracing::warn!(%leg, error = %e, "leaving the unlinked room failed");
        }
        Ok(())
    }

    /// Registers a started account ([`RouterHandle::add_account`]) and has it join every room linked to it; a
    /// failed join is logged (the account retries on reconnect).
    pub async fn attach_account(&self, account: Arc<dyn Account>) {
        self.add_account(account.clone());
        for (leg, _) in self.legs().into_iter().filter(|(l, _)| l.account == *account.id()) {
            if let Err(e) = account.join(&leg.room).await {
                tracing::warn!(%leg, error = %e, "join failed; the account retries on reconnect");
            }
        }
    }

    async fn send_control(&self, portal: &PortalId, input: PortalInput) -> Result<(), RouteError> {
        if *self.inner.shutdown.borrow() {
            return Err(RouteError::Closed);
        }
        let tx = self.sender(portal).ok_or_else(|| RouteError::UnknownPortal(portal.clone()))?;
        tx.send(Box::new(input)).await.map_err(|_| RouteError::Closed)
    }

    fn sender(&self, portal: &PortalId) -> Option<mpsc::Sender<Box<PortalInput>>> {
        self.inner.senders.read().ok()?.get(portal).cloned()
    }

    /// The portal a leg is linked to.
    pub fn portal_of(&self, leg: &LegId) -> Option<PortalId> {
        self.inner.legs.read().ok()?.get(leg).cloned()
    }

    /// Every linked leg with its portal.
    pub fn legs(&self) -> Vec<(LegId, PortalId)> {
        self.inner.legs.read().map(|m| m.iter().map(|(l, p)| (l.clone(), p.clone())).collect()).unwrap_or_default()
    }

    /// Queues an inbound event on its portal; the receiver yields the outcome once it is durable.
    pub(crate) async fn route(
        &self,
        event: InboundEvent,
    ) -> Result<oneshot::Receiver<Result<Accepted, RouteError>>, RouteError> {
        if *self.inner.shutdown.borrow() {
            // Intake is closed: the connector keeps the event unacknowledged and the network redelivers it.
            return Err(RouteError::Closed);
        }
        let size = event.kind.size();
        let max = self.inner.cfg.max_event_bytes;
        if size > max {
            let e = RouteError::TooLarge { size, max };
            tracing::warn!(leg = %event.leg, error = %e, "inbound event refused");
            count_error(&e);
            // Its sender is told, in the room they wrote in (if the portal has room in its queue for that), once.
            let tell = self.inner.tell_refused(
                &event.leg,
                event.native_id.as_ref(),
                &event.sender.native_id,
                event.from_bridge,
            );
            if tell && let Some(tx) = self.portal_of(&event.leg).and_then(|p| self.sender(&p)) {
                let reason = format!("it is too large ({size} bytes; this bridge takes at most {max})");
                let _ = tx.try_send(Box::new(PortalInput::Refused {
                    leg: event.leg.clone(),
                    sender: event.sender.clone(),
                    reason,
                }));
            }
            return Err(e);
        }
        if event.native_id.is_none()
            && !matches!(event.kind, InboundKind::Typing { .. } | InboundKind::Membership { .. })
        {
            let e = RouteError::MissingNativeId(event.kind.name());
            tracing::warn!(leg = %event.leg, error = %e, "inbound event refused");
            count_error(&e);
            return Err(e);
        }
        let Some(portal) = self.portal_of(&event.leg) else {
            let e = RouteError::UnknownLeg(event.leg.clone());
            tracing::debug!(error = %e, "inbound event for an unlinked room");
            count_error(&e);
            return Err(e);
        };
        let tx = self.sender(&portal).ok_or(RouteError::UnknownPortal(portal))?;
        let (ack, rx) = oneshot::channel();
        tx.send(Box::new(PortalInput::Inbound { event: Box::new(event), ack }))
            .await
            .map_err(|_| RouteError::Closed)?;
        Ok(rx)
    }

    /// Hands a message that arrived from the room of record (a native MLS member, another provider) to its portal
    /// for delivery to every leg. Duplicates (same message id) are dropped.
    pub async fn from_group(&self, id: MessageId, msg: GroupMessage) -> Result<Accepted, RouteError> {
        let tx = self.sender(&msg.portal).ok_or_else(|| RouteError::UnknownPortal(msg.portal.clone()))?;
        let (ack, rx) = oneshot::channel();
        tx.send(Box::new(PortalInput::FromGroup { id, msg: Box::new(msg), ack }))
            .await
            .map_err(|_| RouteError::Closed)?;
        rx.await.map_err(|_| RouteError::Closed)?
    }

    /// The message a native id on a leg stands for.
    pub fn message_for(&self, leg: &LegId, native: &NativeId) -> Option<MessageId> {
        Repo::new(&self.inner.store).lookup_native(leg, native).ok().flatten().map(|e| e.message_id)
    }

    /// Registers a ghost (see [`crate::AccountContext::register_ghost`]).
    pub async fn register_ghost(
        &self,
        account: &AccountId,
        native_user: &str,
        for_uri: &str,
    ) -> Result<(), RouteError> {
        let mut b = Batch::new();
        write::ghost(&mut b, account, native_user, for_uri);
        self.inner.store.commit(b).await.map_err(store_error)?;
        Ok(())
    }

    /// Forgets a ghost (see [`crate::AccountContext::unregister_ghost`]).
    pub async fn unregister_ghost(&self, account: &AccountId, native_user: &str) -> Result<(), RouteError> {
        let mut b = Batch::new();
        write::unghost(&mut b, account, native_user);
        self.inner.store.commit(b).await.map_err(store_error)?;
        Ok(())
    }

    /// Every portal's id, sorted (without asking the portals anything, unlike [`RouterHandle::status`]).
    pub fn portal_ids(&self) -> Vec<PortalId> {
        let mut ids: Vec<PortalId> = self.inner.senders.read().map(|s| s.keys().cloned().collect()).unwrap_or_default();
        ids.sort();
        ids
    }

    /// Status of every portal: queue depth and per-leg pending/failed deliveries.
    pub async fn status(&self) -> Vec<PortalStatus> {
        let portals = self.inner.portals.lock().await;
        let mut out = Vec::new();
        for (id, h) in portals.iter() {
            let (tx, rx) = oneshot::channel();
            let legs = match h.tx.try_send(Box::new(PortalInput::Status { reply: tx })) {
                Ok(()) => rx.await.unwrap_or_default(),
                Err(_) => Vec::new(),
            };
            out.push(PortalStatus { id: id.clone(), queue_depth: h.tx.max_capacity() - h.tx.capacity(), legs });
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    /// Stops intake, lets every portal finish what it has queued, stops delivery workers (undelivered events
    /// stay in the durable outbox) and flushes the store.
    pub async fn shutdown(&self) {
        let _ = self.inner.stop.send(true);
        if let Ok(mut s) = self.inner.senders.write() {
            s.clear();
        }
        let handles: Vec<PortalHandle> = self.inner.portals.lock().await.drain().map(|(_, h)| h).collect();
        for h in handles {
            drop(h.tx);
            if let Err(e) = h.task.await {
                tracing::error!(error = %e, "portal task ended abnormally");
            }
        }
        // Accounts hold handles on the router: drop them so the router (and its store) can be freed.
        let accounts: Vec<Arc<dyn Account>> = match self.inner.accounts.write() {
            Ok(mut m) => m.drain().map(|(_, a)| a).collect(),
            Err(_) => Vec::new(),
        };
        for a in accounts {
            a.shutdown().await;
        }
        if let Err(e) = self.inner.store.flush() {
            tracing::error!(error = %e, "store flush at shutdown failed");
        }
    }
}

/// The router is the core's side of every connector's [`InboundSink`](bridge_api::InboundSink).
#[async_trait::async_trait]
impl bridge_api::InboundRoute for RouterHandle {
    async fn route(&self, event: InboundEvent) -> Result<oneshot::Receiver<Result<Accepted, RouteError>>, RouteError> {
        RouterHandle::route(self, event).await
    }

    async fn register_ghost(&self, account: &AccountId, native_user: &str, for_uri: &str) -> Result<(), RouteError> {
        RouterHandle::register_ghost(self, account, native_user, for_uri).await
    }

    async fn unregister_ghost(&self, account: &AccountId, native_user: &str) -> Result<(), RouteError> {
        RouterHandle::unregister_ghost(self, account, native_user).await
    }

    fn message_for(&self, leg: &LegId, native: &NativeId) -> Option<MessageId> {
        RouterHandle::message_for(self, leg, native)
    }

    fn taken_from_leg(&self, leg: &LegId, native: &NativeId) -> Option<bool> {
        crate::portal::lookup_native(&Repo::new(&self.inner.store), &self.inner, leg, native)
            .ok()
            .flatten()
            .map(|e| e.origin)
    }

    fn linked_rooms(&self, account: &AccountId) -> Vec<String> {
        self.legs().into_iter().filter(|(l, _)| l.account == *account).map(|(l, _)| l.room).collect()
    }
}
