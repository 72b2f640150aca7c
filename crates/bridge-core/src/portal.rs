//! A portal: one bridged room. One task per portal sequences everything that happens in it.
//!
//! For each inbound event the portal, in order:
//! 1. drops the bridge's own echoes (`from_bridge`, ghosts, native ids it recorded for a delivery) and
//!    duplicates (a native id already seen from that leg);
//! 2. resolves native references (reply parent, edit/delete/reaction target) through the ID map;
//! 3. publishes the message to the room of record ([`crate::room_of_record::RoomOfRecord`]) and gets its
//!    [`MessageId`], with the group's messages sequenced before it that the portal has not recorded yet (recorded
//!    first, so that every leg sees the group's order);
//! 4. writes — in one batch, shared with the other events of the same drain, committed once — the message
//!    record, the ID-map entry of the source, the reaction set, the sequence counter and an outbox entry for every
//!    *other* leg;
//! 5. acknowledges to the connector, then hands the outbox entries to the legs' delivery workers ([`crate::leg`]).
//!
//! Typing and membership events are ephemeral: passed to the other legs, never stored.

use crate::leg::{self, LegWork, LegWorkers};
use crate::repo::{IdEntry, MessageRecord, ReactionSet, RecordKind, Repo, write};
use crate::room_of_record::{GroupContent, GroupMessage, Published};
use crate::router::{Shared, count_error, store_error};
use bridge_api::event::{
    InboundEvent, InboundKind, MessageDraft, MessageStyle, OutboundEvent, OutboundKind, ParentRef, Sender,
};
use bridge_api::ids::{LegId, MessageId, NativeId, TxnId};
use bridge_api::uri::LegacyUser;
use bridge_api::{Accepted, RoomError, RouteError};
use mimi_store::Batch;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

pub use crate::repo::PortalRecord;

/// One leg in a status report.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LegStatus {
    /// The leg.
    pub leg: LegId,
    /// Deliveries waiting (in the outbox).
    pub pending: u64,
    /// Deliveries done since start.
    pub delivered: u64,
    /// Deliveries given up since start.
    pub failed: u64,
}

/// What a portal task receives, boxed: a queue's memory is allocated in blocks of 32 slots when it is made, and
/// a slot of the largest input's size would cost every idle portal kilobytes.
pub(crate) enum PortalInput {
    Inbound {
        event: Box<InboundEvent>,
        ack: oneshot::Sender<Result<Accepted, RouteError>>,
    },
    FromGroup {
        id: MessageId,
        msg: Box<GroupMessage>,
        ack: oneshot::Sender<Result<Accepted, RouteError>>,
    },
    Link {
        leg: LegId,
        done: oneshot::Sender<Result<(), RouteError>>,
    },
    Unlink {
        leg: LegId,
        done: oneshot::Sender<Result<(), RouteError>>,
    },
    Undeliverable {
        event: Box<OutboundEvent>,
        reason: String,
    },
    /// An inbound event refused before it reached the portal (too large): its sender is told on its leg.
    Refused {
        leg: LegId,
        sender: LegacyUser,
        reason: String,
    },
    Status {
        reply: oneshot::Sender<Vec<LegStatus>>,
    },
    /// Something every leg's room should know from the bridge itself (what the portal missed, say).
    Notice {
        body: String,
    },
}

/// Outbox entries moved to `failed` per batch when a leg is unlinked.
const UNLINK_PAGE: usize = 1000;

/// Longest excerpt kept for reply/edit fallbacks, in characters.
const EXCERPT_CHARS: usize = 100;

struct Portal {
    shared: Arc<Shared>,
    rec: PortalRecord,
    legs: LegWorkers,
    next_seq: u64,
    self_tx: mpsc::Sender<Box<PortalInput>>,
    /// A message of the drain being processed was published without a source for the room of record to keep
    /// (an event without a native id): its deliveries wait for the portal's record ([`Portal::settle`]).
    unmarked: bool,
}

/// A result waiting for the drain's commit.
type Ack = (oneshot::Sender<Result<Accepted, RouteError>>, Result<Accepted, RouteError>);

/// Starts a portal's task (and its legs' delivery workers).
pub(crate) async fn spawn(
    shared: Arc<Shared>,
    rec: PortalRecord,
    legs: Vec<LegId>,
    rx: mpsc::Receiver<Box<PortalInput>>,
    self_tx: mpsc::Sender<Box<PortalInput>>,
) -> Result<tokio::task::JoinHandle<()>, RouteError> {
    let next_seq = Repo::new(&shared.store).next_seq(&rec.id).map_err(store_error)?;
    let span = tracing::info_span!("portal", portal = %rec.id);
    let mut p = Portal { shared, rec, legs: LegWorkers::default(), next_seq, self_tx, unmarked: false };
    for l in legs {
        p.start_leg(l);
    }
    Ok(tokio::spawn(p.run(rx).instrument(span)))
}

/// The first `chars` characters of `s`, with an ellipsis if there were more.
pub(crate) fn excerpt(s: &str, chars: usize) -> String {
    let mut out: String = s.chars().take(chars).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out
}

/// What a native id on a leg stands for: the ID map, or a delivery the network accepted a moment ago whose record
/// is still on its way to disk (so an echo of it, or a quick reply to it, is recognised).
pub(crate) fn lookup_native(
    repo: &Repo<'_>,
    shared: &Shared,
    leg: &LegId,
    n: &NativeId,
) -> Result<Option<IdEntry>, RouteError> {
    if let Some(e) = repo.lookup_native(leg, n).map_err(store_error)? {
        return Ok(Some(e));
    }
    Ok(shared.recent_delivery(leg, n).map(|message_id| IdEntry { message_id, origin: false }))
}

/// The inbound event a published message carries (kept with it until the portal records it, see
/// [`RoomOfRecord::publish`]), and the native id the message stands for: the event's own, or, for each change of
/// a reaction set but the last, one derived from it.
#[derive(Debug, Clone)]
struct Carried {
    event: InboundEvent,
    native: NativeId,
}

/// `origin` for one change of several an event makes (`tag` names the change).
fn part(origin: &Option<(LegId, Option<Carried>)>, tag: &str) -> Option<(LegId, Option<Carried>)> {
    origin.as_ref().map(|(leg, c)| {
        let c =
            c.as_ref().map(|c| Carried { event: c.event.clone(), native: NativeId(format!("{}#{tag}", c.native.0)) });
        (leg.clone(), c)
    })
}

fn ephemeral_id() -> MessageId {
    let mut b: [u8; 32] = rand::random();
    b[0] = 0x01;
    // 32 bytes starting with 0x01 are always a valid id.
    MessageId::from_bytes(&b).unwrap_or_else(|_| unreachable!())
}

impl Portal {
    fn start_leg(&mut self, leg: LegId) {
        let w = leg::spawn(self.shared.clone(), leg.clone(), self.self_tx.clone(), self.next_seq);
        self.legs.insert(leg, w);
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Box<PortalInput>>) {
        let mut shutdown = self.shared.shutdown.clone();
        loop {
            let first = tokio::select! {
                biased;
                i = rx.recv() => match i { Some(i) => *i, None => break },
                _ = shutdown.changed() => {
                    // Finish what was queued, then stop.
                    let mut rest = Vec::new();
                    while let Ok(i) = rx.try_recv() { rest.push(*i); }
                    if !rest.is_empty() { Box::pin(self.drain(rest)).await; }
                    break;
                }
            };
            let mut inputs = vec![first];
            while inputs.len() < self.shared.cfg.drain_max {
                match rx.try_recv() {
                    Ok(i) => inputs.push(*i),
                    Err(_) => break,
                }
            }
            // Boxed: the drain's state is large, and a portal's task waits here most of its life (thousands of idle
            // portals would each hold it).
            Box::pin(self.drain(inputs)).await;
            let depth = self.self_tx.max_capacity() - self.self_tx.capacity();
            metrics::gauge!("mimi_bridge_portal_queue_depth", "portal" => self.rec.id.to_string()).set(depth as f64);
        }
        for (_, w) in std::mem::take(&mut self.legs) {
            drop(w.tx);
            let _ = w.task.await;
        }
    }

    /// Processes a group of inputs with one commit.
    async fn drain(&mut self, inputs: Vec<PortalInput>) {
        let mut batch = Batch::new();
        let mut acks: Vec<Ack> = Vec::new();
        let mut work: Vec<(LegId, LegWork)> = Vec::new();
        for input in inputs {
            match input {
                PortalInput::Inbound { event, ack } => {
                    let leg = event.leg.to_string();
                    let span = tracing::info_span!("inbound", leg = %leg,
                        native = event.native_id.as_ref().map(|n| n.0.as_str()), message = tracing::field::Empty);
                    // Who to tell if the room refuses it.
                    let from = (event.leg.clone(), event.native_id.clone(), event.sender.clone(), event.from_bridge);
                    let r = self.inbound(*event, &mut batch, &mut work).instrument(span.clone()).await;
                    let outcome = match &r {
                        Ok(Accepted::Bridged(id)) => {
                            span.record("message", tracing::field::display(id));
                            "bridged"
                        }
                        Ok(Accepted::Duplicate(_)) => "duplicate",
                        Ok(Accepted::Echo) => "echo",
                        Ok(Accepted::Ephemeral) => "ephemeral",
                        Ok(Accepted::Ignored(_)) => "ignored",
                        Err(e) => {
                            span.in_scope(|| tracing::warn!(error = %e, "inbound event not bridged"));
                            count_error(e);
                            if let RouteError::Room(RoomError::Refused(reason)) = e {
                                self.tell_sender(from, reason, &mut work);
                            }
                            "refused"
                        }
                    };
                    metrics::counter!("mimi_bridge_messages_in_total", "leg" => leg, "outcome" => outcome).increment(1);
                    acks.push((ack, r));
                }
                PortalInput::FromGroup { id, msg, ack } => {
                    let r = self.group_message(id, *msg, &mut batch, &mut work);
                    acks.push((ack, r));
                }
                PortalInput::Undeliverable { event, reason } => self.report_undeliverable(&event, &reason, &mut work),
                PortalInput::Refused { leg, sender, reason } => self.refused(leg, &sender, &reason, &mut work),
                PortalInput::Status { reply } => {
                    let _ = reply.send(self.status());
                }
                PortalInput::Notice { body } => {
                    let id = ephemeral_id();
                    let legs: Vec<LegId> = self.legs.keys().cloned().collect();
                    for leg in legs {
                        self.notice(leg, id, TxnId(format!("notice-{}", id.to_hex())), body.clone(), &mut work);
                    }
                }
                control @ (PortalInput::Link { .. } | PortalInput::Unlink { .. }) => {
                    // Links change who gets what: settle everything before them first.
                    self.settle(std::mem::take(&mut batch), std::mem::take(&mut acks), std::mem::take(&mut work)).await;
                    self.control(control).await;
                }
            }
        }
        self.settle(batch, acks, work).await;
    }

    /// Commits, acknowledges, and hands work to the legs.
    ///
    /// Where the room of record keeps what it sequenced until the router has recorded it
    /// ([`crate::room_of_record::RoomOfRecord::keeps_until_recorded`]; not for a message published without its
    /// source event) and [`RouterConfig::deliver_before_durable`] is on, the work goes to the legs while the batch
    /// is being made durable, not after: a crash before it is loses nothing (the next start records the messages
    /// again, and their deliveries go again: repeated on a network without transaction ids, as a crash right after
    /// a delivery repeats it anyway), and a delivery saves the wait for one fsync. Acknowledgements still wait for
    /// it.
    ///
    /// [`RouterConfig::deliver_before_durable`]: crate::router::RouterConfig::deliver_before_durable
    async fn settle(&mut self, batch: Batch, acks: Vec<Ack>, mut work: Vec<(LegId, LegWork)>) {
        let durable = (!batch.is_empty()).then(|| self.shared.store.commit_later(batch));
        let unmarked = std::mem::take(&mut self.unmarked);
        let kept = self.shared.group.keeps_until_recorded() && !unmarked;
        if durable.is_some() && self.shared.cfg.deliver_before_durable && kept {
            work = self.hand_over_now(work);
        }
        let committed = match durable {
            Some(d) => d.await.unwrap_or(Err(mimi_store::StoreError::Closed)),
            None => Ok(()),
        };
        if let Err(e) = committed {
            tracing::error!(error = %e, "commit failed; events of this group are not accepted");
            metrics::counter!("mimi_bridge_errors_total", "kind" => "store_commit").increment(1);
            for (ack, r) in acks {
                let _ = ack.send(r.and(Err(RouteError::Store(e.to_string()))));
            }
            return;
        }
        for (ack, r) in acks {
            let _ = ack.send(r);
        }
        for (leg, w) in work {
            if let Some(worker) = self.legs.get(&leg) {
                worker.push(w);
            }
        }
    }

    /// Hands `work` to the legs' queues while they have room, in order; returns what is left from the first item
    /// a full queue refused on (pushed after the commit, so that the order holds).
    fn hand_over_now(&self, work: Vec<(LegId, LegWork)>) -> Vec<(LegId, LegWork)> {
        let mut left = Vec::new();
        for (leg, w) in work {
            if !left.is_empty() {
                left.push((leg, w));
                continue;
            }
            let Some(worker) = self.legs.get(&leg) else { continue };
            if let Err(w) = worker.try_push(w) {
                left.push((leg, *w));
            }
        }
        left
    }

    async fn control(&mut self, input: PortalInput) {
        match input {
            PortalInput::Link { leg, done } => {
                let mut b = Batch::new();
                write::link(&mut b, &leg, &self.rec.id);
                let r = self.shared.store.commit(b).await.map_err(store_error);
                if r.is_ok() && !self.legs.contains_key(&leg) {
                    tracing::info!(%leg, "leg linked");
                    self.start_leg(leg);
                }
                let _ = done.send(r);
            }
            PortalInput::Unlink { leg, done } => {
                // The leg's worker stops first, so nothing it still holds is delivered after the unlink.
                if let Some(w) = self.legs.remove(&leg) {
                    w.stop();
                    let _ = w.task.await;
                }
                let r = self.unlink(&leg).await;
                if r.is_err() {
                    // Still linked: its deliveries go on.
                    self.start_leg(leg);
                }
                let _ = done.send(r);
            }
            _ => {}
        }
    }

    /// Unlinks `leg`. What is still in its outbox moves to `failed` ("unlinked before delivery") a page at a time,
    /// the last page in the unlink's own batch: an unlinked leg keeps no outbox that nothing would ever drain.
    async fn unlink(&self, leg: &LegId) -> Result<(), RouteError> {
        let reason = format!("{leg} was unlinked from portal {} before this was delivered", self.rec.id);
        let mut moved = 0usize;
        loop {
            let page = Repo::new(&self.shared.store).outbox_page(leg, 0, UNLINK_PAGE).map_err(store_error)?;
            let last = page.len() < UNLINK_PAGE;
            let mut b = Batch::new();
            moved += page.len();
            for (seq, d) in page {
                write::failed_record(&mut b, seq, d, &reason);
            }
            if last {
                write::unlink(&mut b, leg);
                self.shared.store.commit(b).await.map_err(store_error)?;
                break;
            }
            self.shared.store.commit(b).await.map_err(store_error)?;
        }
        if moved > 0 {
            tracing::warn!(%leg, moved, "leg unlinked; its undelivered events moved to `failed`");
        } else {
            tracing::info!(%leg, "leg unlinked");
        }
        Ok(())
    }

    fn status(&self) -> Vec<LegStatus> {
        self.legs
            .iter()
            .map(|(leg, w)| LegStatus {
                leg: leg.clone(),
                pending: w.counters().pending.load(Ordering::Relaxed),
                delivered: w.counters().delivered.load(Ordering::Relaxed),
                failed: w.counters().failed.load(Ordering::Relaxed),
            })
            .collect()
    }

    fn sender_of(&self, u: &LegacyUser) -> Sender {
        Sender {
            uri: u.uri(&self.shared.cfg.domain),
            display_name: u.shown_name().to_owned(),
            network: u.account.network().to_owned(),
            legacy: Some(u.clone()),
        }
    }

    async fn inbound(
        &mut self,
        ev: InboundEvent,
        batch: &mut Batch,
        work: &mut Vec<(LegId, LegWork)>,
    ) -> Result<Accepted, RouteError> {
        if ev.from_bridge {
            return Ok(Accepted::Echo);
        }
        let store = self.shared.store.clone();
        let shared = self.shared.clone();
        {
            let repo = Repo::with_pending(&store, batch);
            if repo.ghost(&ev.sender.account, &ev.sender.native_id).map_err(store_error)?.is_some() {
                return Ok(Accepted::Echo);
            }
            if let Some(n) = &ev.native_id
                && let Some(entry) = lookup_native(&repo, &self.shared, &ev.leg, n)?
            {
                return Ok(if entry.origin { Accepted::Duplicate(entry.message_id) } else { Accepted::Echo });
            }
        }
        let sender = self.sender_of(&ev.sender);
        // The event goes with the message it maps to, kept until recorded (`RoomOfRecord::publish`).
        let carried = ev.native_id.clone().map(|native| Carried { event: ev.clone(), native });
        let origin = Some((ev.leg.clone(), carried));
        // Resolve a native id on the source leg to a message, following edits to the original.
        let resolve = |batch: &Batch, n: &NativeId| -> Result<Option<(MessageId, Option<MessageRecord>)>, RouteError> {
            let repo = Repo::with_pending(&store, batch);
            let Some(e) = lookup_native(&repo, &shared, &ev.leg, n)? else { return Ok(None) };
            let rec = repo.message(&e.message_id).map_err(store_error)?;
            Ok(Some(match rec {
                Some(MessageRecord { kind: RecordKind::Edit { target }, .. }) => {
                    let orig = repo.message(&target).map_err(store_error)?;
                    (target, orig)
                }
                other => (e.message_id, other),
            }))
        };
        let content = match ev.kind {
            InboundKind::Typing { .. } | InboundKind::Membership { .. } => {
                self.ephemeral(&ev.leg, sender, ev.kind, work);
                return Ok(Accepted::Ephemeral);
            }
            InboundKind::Message { draft, reply_to } => {
                let in_reply_to = match &reply_to {
                    Some(n) => resolve(batch, n)?.map(|(id, _)| id),
                    None => None,
                };
                GroupContent::Message { draft, in_reply_to }
            }
            InboundKind::Edit { target, draft } => {
                let Some((replaces, _)) = resolve(batch, &target)? else {
                    return Ok(Accepted::Ignored("edit of a message the bridge never saw"));
                };
                GroupContent::Edit { replaces, draft }
            }
            InboundKind::Delete { target } => match resolve(batch, &target)? {
                None => return Ok(Accepted::Ignored("delete of a message the bridge never saw")),
                Some((rid, Some(MessageRecord { kind: RecordKind::Reaction { target, key }, .. }))) => {
                    let _ = rid;
                    return self.unreact(&target, &key, &sender, origin, batch, work).await;
                }
                Some((replaces, _)) => GroupContent::Delete { replaces },
            },
            InboundKind::ReactionAdd { target, key } => {
                let Some((t, _)) = resolve(batch, &target)? else {
                    return Ok(Accepted::Ignored("reaction to a message the bridge never saw"));
                };
                return self.react(&t, &key, &sender, origin, batch, work).await;
            }
            InboundKind::ReactionRemove { target, key } => {
                let Some((t, _)) = resolve(batch, &target)? else {
                    return Ok(Accepted::Ignored("reaction to a message the bridge never saw"));
                };
                return self.unreact(&t, &key, &sender, origin, batch, work).await;
            }
            InboundKind::ReactionSet { target, keys } => {
                let Some((t, _)) = resolve(batch, &target)? else {
                    return Ok(Accepted::Ignored("reaction to a message the bridge never saw"));
                };
                let current = Repo::with_pending(&store, batch).reactions(&t, &sender.uri).map_err(store_error)?;
                let mut last = Accepted::Ignored("reaction set unchanged");
                // Only the last change maps the event's native id (for dedup of a redelivery); each other change
                // stands for an id derived from it, so that a replay after a restart finds it published. A change
                // that fails fails the event: a redelivery finds the changes made before it done, and makes the
                // rest (a later change's success must not hide it).
                let removed: Vec<String> = current.keys().filter(|k| !keys.contains(k)).cloned().collect();
                let added: Vec<String> = keys.iter().filter(|k| !current.contains_key(*k)).cloned().collect();
                let n = removed.len() + added.len();
                for (i, k) in removed.iter().enumerate() {
                    let o = if i + 1 == n { origin.clone() } else { part(&origin, &format!("-{k}")) };
                    last = self.unreact(&t, k, &sender, o, batch, work).await?;
                }
                for (i, k) in added.iter().enumerate() {
                    let o = if removed.len() + i + 1 == n { origin.clone() } else { part(&origin, &format!("+{k}")) };
                    last = self.react(&t, k, &sender, o, batch, work).await?;
                }
                return Ok(last);
            }
        };
        let kind = match &content {
            GroupContent::Edit { replaces, .. } => RecordKind::Edit { target: *replaces },
            GroupContent::Delete { replaces } => RecordKind::Delete { target: *replaces },
            _ => RecordKind::Message,
        };
        let id = self.publish(sender, content, kind, origin, None, batch, work).await?;
        Ok(Accepted::Bridged(id))
    }

    async fn react(
        &mut self,
        target: &MessageId,
        key: &str,
        sender: &Sender,
        origin: Option<(LegId, Option<Carried>)>,
        batch: &mut Batch,
        work: &mut Vec<(LegId, LegWork)>,
    ) -> Result<Accepted, RouteError> {
        let mut set =
            Repo::with_pending(&self.shared.store, batch).reactions(target, &sender.uri).map_err(store_error)?;
        if set.contains_key(key) {
            return Ok(Accepted::Ignored("reaction already present"));
        }
        let content = GroupContent::Reaction { in_reply_to: *target, key: key.to_owned() };
        let kind = RecordKind::Reaction { target: *target, key: key.to_owned() };
        let mut after: Vec<String> = set.keys().cloned().collect();
        after.push(key.to_owned());
        after.sort();
        let id = self.publish(sender.clone(), content, kind, origin, Some(after), batch, work).await?;
        set.insert(key.to_owned(), id);
        write::reactions(batch, target, &sender.uri, &set);
        Ok(Accepted::Bridged(id))
    }

    async fn unreact(
        &mut self,
        target: &MessageId,
        key: &str,
        sender: &Sender,
        origin: Option<(LegId, Option<Carried>)>,
        batch: &mut Batch,
        work: &mut Vec<(LegId, LegWork)>,
    ) -> Result<Accepted, RouteError> {
        let mut set: ReactionSet =
            Repo::with_pending(&self.shared.store, batch).reactions(target, &sender.uri).map_err(store_error)?;
        let Some(reaction) = set.remove(key) else {
            return Ok(Accepted::Ignored("no such reaction"));
        };
        let after: Vec<String> = set.keys().cloned().collect();
        let content = GroupContent::Unreact { replaces: reaction };
        let kind = RecordKind::Unreact { reaction };
        let id = self.publish(sender.clone(), content, kind, origin, Some(after), batch, work).await?;
        write::reactions(batch, target, &sender.uri, &set);
        Ok(Accepted::Bridged(id))
    }

    /// Publishes to the room of record, then records and queues deliveries. `origin` is the source leg (and the
    /// inbound event, if this message is the one its native id maps to); its leg gets no delivery.
    #[allow(clippy::too_many_arguments)]
    async fn publish(
        &mut self,
        sender: Sender,
        content: GroupContent,
        kind: RecordKind,
        origin: Option<(LegId, Option<Carried>)>,
        set_after: Option<Vec<String>>,
        batch: &mut Batch,
        work: &mut Vec<(LegId, LegWork)>,
    ) -> Result<MessageId, RouteError> {
        let msg = GroupMessage { portal: self.rec.id.clone(), sender, content };
        let carried = origin.as_ref().and_then(|(_, c)| c.as_ref());
        let source = carried.map(|c| (&c.event.leg, &c.native));
        // Published before a restart that came before its record: record it under that id, never publish twice.
        let sent = match source {
            Some((leg, native)) => Repo::with_pending(&self.shared.store, batch)
                .sent(leg, native)
                .map_err(store_error)?
                // Sequenced in another portal's group, which the leg left since: not this portal's message.
                .filter(|m| m.portal.as_ref().is_none_or(|p| *p == self.rec.id)),
            None => None,
        };
        // Given up before (its sender was told then): not published now, when its network sends it again, and
        // not told again.
        if let (Some(m), Some((leg, native))) = (&sent, source)
            && m.given_up
        {
            self.shared.first_refusal(leg, native);
            let why = "the room's hub did not take it in time, and it was given up";
            return Err(RouteError::Room(RoomError::Refused(why.into())));
        }
        // Handed to a hub that has not answered: published again (as the same message, by the room).
        let sent = sent.filter(|m| m.submitted.is_none());
        let published = match sent {
            Some(marker) => {
                let id = marker.message_id;
                tracing::info!(message = %id, "an event published before a restart is recorded, not published again");
                // What the group sequenced before it, and the portal was not handed before the restart, first.
                let earlier = match marker.seq {
                    Some(seq) => self.shared.group.sequenced_before(&self.rec.id, seq).await,
                    None => Vec::new(),
                };
                Published { id, earlier }
            }
            None => {
                self.unmarked |= carried.is_none();
                self.shared.group.publish(&msg, carried.map(|c| (&c.event, &c.native))).await?
            }
        };
        // What the group sequenced before this message goes to the legs before it (see `room_of_record`).
        for (earlier, m) in published.earlier {
            if let Err(e) = self.group_message(earlier, m, batch, work) {
                tracing::warn!(error = %e, message = %earlier, "a message sequenced earlier is left to its own turn");
            }
        }
        let id = published.id;
        let mut b = Batch::new();
        self.record(id, &msg, kind, origin.as_ref().map(|(l, _)| l.clone()), set_after, batch, &mut b, work)?;
        if let Some(c) = carried {
            if c.event.native_id.as_ref() == Some(&c.native) {
                write::native(&mut b, &c.event.leg, &c.native, &id, true);
            }
            write::forget_sent(&mut b, &c.event.leg, &c.native);
        }
        batch.extend(b);
        Ok(id)
    }

    /// Writes the message record and one outbox entry per leg other than `origin` into `b`.
    #[allow(clippy::too_many_arguments)]
    fn record(
        &mut self,
        id: MessageId,
        msg: &GroupMessage,
        kind: RecordKind,
        origin: Option<LegId>,
        set_after: Option<Vec<String>>,
        pending: &Batch,
        b: &mut Batch,
        work: &mut Vec<(LegId, LegWork)>,
    ) -> Result<(), RouteError> {
        let seq = self.next_seq;
        self.next_seq += 1;
        let body = match &msg.content {
            GroupContent::Message { draft, .. } | GroupContent::Edit { draft, .. } => {
                excerpt(&draft.body, EXCERPT_CHARS)
            }
            _ => String::new(),
        };
        // One time for the record and its deliveries' queue time.
        let now = crate::outbox::now_ms();
        let rec = MessageRecord {
            portal: self.rec.id.clone(),
            seq,
            kind,
            sender: msg.sender.clone(),
            origin: origin.clone(),
            excerpt: body,
            at_ms: Some(now),
        };
        write::message(b, &id, &rec);
        write::next_seq(b, &self.rec.id, self.next_seq);
        let repo = Repo::with_pending(&self.shared.store, pending);
        let targets: Vec<LegId> = self.legs.keys().filter(|l| Some(*l) != origin.as_ref()).cloned().collect();
        for leg in targets {
            let kind = self.outbound_kind(&repo, &leg, &msg.content, set_after.clone())?;
            let event = OutboundEvent {
                portal: self.rec.id.clone(),
                txn_id: TxnId::for_delivery(&id, &leg),
                leg: leg.clone(),
                message_id: id,
                sender: msg.sender.clone(),
                kind,
                queued_at_ms: now,
            };
            write::outbox(b, seq, &event);
            work.push((leg, LegWork::new(Some(seq), event)));
        }
        Ok(())
    }

    fn parent_ref(&self, repo: &Repo<'_>, leg: &LegId, id: MessageId) -> Result<ParentRef, RouteError> {
        let rec = repo.message(&id).map_err(store_error)?;
        Ok(ParentRef {
            native_id: repo.native_on(&id, leg).map_err(store_error)?,
            message_id: id,
            sender_name: rec.as_ref().map(|r| r.sender.display_name.clone()).unwrap_or_default(),
            excerpt: rec.map(|r| r.excerpt).unwrap_or_default(),
        })
    }

    fn outbound_kind(
        &self,
        repo: &Repo<'_>,
        leg: &LegId,
        content: &GroupContent,
        set_after: Option<Vec<String>>,
    ) -> Result<OutboundKind, RouteError> {
        Ok(match content {
            GroupContent::Message { draft, in_reply_to } => OutboundKind::Message {
                draft: draft.clone(),
                reply_to: in_reply_to.map(|p| self.parent_ref(repo, leg, p)).transpose()?,
            },
            GroupContent::Edit { replaces, draft } => {
                OutboundKind::Edit { target: self.parent_ref(repo, leg, *replaces)?, draft: draft.clone() }
            }
            GroupContent::Delete { replaces } => {
                OutboundKind::Delete { target: self.parent_ref(repo, leg, *replaces)? }
            }
            GroupContent::Reaction { in_reply_to, key } => OutboundKind::ReactionAdd {
                target: self.parent_ref(repo, leg, *in_reply_to)?,
                key: key.clone(),
                set_after: set_after.unwrap_or_else(|| vec![key.clone()]),
            },
            GroupContent::Unreact { replaces } => {
                let (target, key) = match repo.message(replaces).map_err(store_error)? {
                    Some(MessageRecord { kind: RecordKind::Reaction { target, key }, .. }) => (target, key),
                    _ => (*replaces, String::new()),
                };
                OutboundKind::ReactionRemove {
                    target: self.parent_ref(repo, leg, target)?,
                    key,
                    reaction: *replaces,
                    reaction_native_id: repo.native_on(replaces, leg).map_err(store_error)?,
                    set_after: set_after.unwrap_or_default(),
                }
            }
        })
    }

    /// A message from the room of record (a native MLS member): delivered to every leg.
    fn group_message(
        &mut self,
        id: MessageId,
        msg: GroupMessage,
        batch: &mut Batch,
        work: &mut Vec<(LegId, LegWork)>,
    ) -> Result<Accepted, RouteError> {
        if Repo::with_pending(&self.shared.store, batch).message(&id).map_err(store_error)?.is_some() {
            return Ok(Accepted::Duplicate(id));
        }
        let kind = match &msg.content {
            GroupContent::Message { .. } => RecordKind::Message,
            GroupContent::Edit { replaces, .. } => RecordKind::Edit { target: *replaces },
            GroupContent::Delete { replaces } => RecordKind::Delete { target: *replaces },
            GroupContent::Reaction { in_reply_to, key } => {
                RecordKind::Reaction { target: *in_reply_to, key: key.clone() }
            }
            GroupContent::Unreact { replaces } => RecordKind::Unreact { reaction: *replaces },
        };
        let mut b = Batch::new();
        self.record(id, &msg, kind, None, None, batch, &mut b, work)?;
        batch.extend(b);
        Ok(Accepted::Bridged(id))
    }

    fn ephemeral(&self, origin: &LegId, sender: Sender, kind: InboundKind, work: &mut Vec<(LegId, LegWork)>) {
        let out = match kind {
            InboundKind::Typing { active } => OutboundKind::Typing { active },
            InboundKind::Membership { change } => OutboundKind::Membership { change },
            _ => return,
        };
        let id = ephemeral_id();
        for leg in self.legs.keys().filter(|l| *l != origin) {
            let event = OutboundEvent {
                portal: self.rec.id.clone(),
                leg: leg.clone(),
                message_id: id,
                txn_id: TxnId::for_delivery(&id, leg),
                sender: sender.clone(),
                kind: out.clone(),
                queued_at_ms: crate::outbox::now_ms(),
            };
            work.push((leg.clone(), LegWork::new(None, event)));
        }
    }

    /// Tells `sender`, on `leg`, that their message was not bridged, and why.
    fn refused(&self, leg: LegId, sender: &LegacyUser, reason: &str, work: &mut Vec<(LegId, LegWork)>) {
        let body = format!("⚠ {}: your message was not bridged: {reason}", sender.shown_name());
        let id = ephemeral_id();
        self.notice(leg, id, TxnId(format!("refused-{}", id.to_hex())), body, work);
    }

    /// Tells the sender of an inbound event the room refused for good (the hub of a room hosted elsewhere
    /// refused it, or did not take it in time), unless they were told of it, or of another refusal lately: of one
    /// given up, whose mark says so, each is told once.
    fn tell_sender(
        &self,
        (leg, native, sender, from_bridge): (LegId, Option<NativeId>, LegacyUser, bool),
        reason: &str,
        work: &mut Vec<(LegId, LegWork)>,
    ) {
        let given_up = native
            .as_ref()
            .is_some_and(|n| Repo::new(&self.shared.store).sent(&leg, n).ok().flatten().is_some_and(|m| m.given_up));
        let tell = match &native {
            Some(n) if given_up => !from_bridge && self.shared.first_refusal(&leg, n),
            _ => self.shared.tell_refused(&leg, native.as_ref(), &sender.native_id, from_bridge),
        };
        if tell {
            self.refused(leg, &sender, reason, work);
        }
    }

    /// Tells the leg a message came from that it could not be delivered somewhere.
    fn report_undeliverable(&self, event: &OutboundEvent, reason: &str, work: &mut Vec<(LegId, LegWork)>) {
        let origin = match Repo::new(&self.shared.store).message(&event.message_id) {
            Ok(Some(MessageRecord { origin: Some(o), .. })) => o,
            _ => return,
        };
        if origin == event.leg {
            return;
        }
        let body = format!("⚠ not delivered to {}: {}", event.leg, reason);
        self.notice(origin, event.message_id, TxnId(format!("undeliverable-{}", event.txn_id)), body, work);
    }

    /// Queues a notice from the bridge itself to `leg` (not stored: a notice lost in a crash is not re-sent).
    fn notice(&self, leg: LegId, message_id: MessageId, txn_id: TxnId, body: String, work: &mut Vec<(LegId, LegWork)>) {
        let domain = &self.shared.cfg.domain;
        let draft = MessageDraft { body, style: MessageStyle::Notice, ..MessageDraft::default() };
        let notice = OutboundEvent {
            portal: self.rec.id.clone(),
            leg: leg.clone(),
            message_id,
            txn_id,
            sender: Sender {
                uri: format!("mimi://{domain}/u/bridge"),
                display_name: "mimi-bridge".into(),
                network: "mimi".into(),
                legacy: None,
            },
            kind: OutboundKind::Message { draft, reply_to: None },
            queued_at_ms: crate::outbox::now_ms(),
        };
        work.push((leg, LegWork::new(None, notice)));
    }
}
