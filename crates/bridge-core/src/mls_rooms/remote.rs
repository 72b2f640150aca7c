//! Portals whose room another MIMI provider hosts (`[[portal]] room = "mimi://other.example/r/NAME"`): two
//! bridges federating one room, each with its own legs.
//!
//! Such a portal's bridge leaf joins the room by external commit from the GroupInfo (and ratchet tree) the hub
//! serves, through [`Federation::update_through_hub`], which follows the room first: the hub's notifies and log
//! pages fill this provider's copy of the room's log, and the portal's worker follows that copy as it follows a
//! hosted room's log. Messages go to the hub with `submitMessage` ([`Federation::forward_submit`]), the bridge
//! leaf's commits (key updates) with `update`, carrying the GroupInfo of the epoch they make. The portal's group
//! is stored like any other, so a restart loads it and catches up from the hub's log; a leaf removed from the
//! room joins it again (the portal's worker, or its next message, finds the group inactive).
//!
//! What differs from a hosted room: the hub, not this provider, judges handshakes and serves the GroupInfo; the
//! portal has the shared leaf only (`mls_identity = "per-user"` needs the hub's participant list, which only a
//! hosted room has here); and a message's sent marker cannot be written in the batch that sequences it. Instead,
//! the event is marked with the message it was encrypted as ([`crate::repo::write::submitted`]), durably, before
//! the message leaves (a write of its own: the engine's write-behind rarely has one for an application message);
//! the hub's answer turns the mark into the sent marker ([`crate::repo::write::sent`]). Until then the same
//! message goes again: when its network delivers the event again; in the background, with backoff, after the hub
//! could not be reached; and at the next start, once the portal's room is open. Those go through the router
//! ([`crate::router::RouterHandle::publish_unanswered`]), in the order they were first handed, and are recorded
//! for the other legs. Meanwhile the portal's new messages are encrypted, marked and wait behind them: sent before
//! an older one, a message would put it behind newer ones of the same sender, maybe further back than the other
//! members' ratchets reach (a restart skips generations), and the legs would get them out of order. The hub, which
//! knows a message it took by its digest whatever its epoch now (as long as its log holds the entry), sequences it
//! once and answers with its place; a hub that says the message's epoch is too old never took it, and the event
//! is encrypted again. So a crash or a lost answer neither loses the message on this bridge's other legs nor puts
//! it twice in the room. A message first marked for the hub longer than the router's `hub_give_up_after` ago (a day
//! by default, counted across restarts from its mark) without an answer is given up: its mark says so
//! ([`crate::repo::write::given_up`]), the portal tells its sender that it was not bridged, and refuses the event if
//! its network sends it again (a hub that took it and then only failed to answer has it in the room, without this
//! bridge's other legs).

use super::{MlsRooms, Slot, unavailable};
use crate::room_of_record::{GroupMessage, Published};
use bridge_api::RoomError;
use bridge_api::event::InboundEvent;
use bridge_api::ids::{LegId, MessageId, NativeId, PortalId};
use mimi_mls::{CommitOutput, EngineConfig, OFFLOAD_MEMBERS, PortalGroup, offload};
use mimi_protocol::wire::{GroupInfoOption, MlsMessageBytes, RatchetTreeOption, UpdateRequest};
use mimi_provider::{Failure, Federation, Status, Verdict};
use mimi_store::Batch;
use std::time::Duration;

/// How many times a join or a commit starts over when the hub moved to a newer epoch meanwhile.
const EPOCH_RETRIES: usize = 3;

/// How long a publish waits for the entries the hub sequenced before its message to reach this provider's copy
/// of the log (so that the legs get them first).
const ORDER_WAIT: Duration = Duration::from_secs(2);

/// The shortest time between two joins of a portal whose copy of the room's log was lost: a hub that answers a
/// join without its place in the log leaves the copy lost, and joining again at once would only repeat it.
pub(super) const LOST_REJOIN_PAUSE: Duration = Duration::from_secs(60);

/// Tries (in this process) after which an unanswered message no longer holds the portal's later ones back: the
/// hub answering one message with errors that may pass, again and again, must not stop the portal for good.
const HOLD_TRIES: u32 = 8;

/// How long this process tries a message whose give-up time is up already (it waited that long before a restart)
/// before it gives it up.
const GIVE_UP_GRACE: Duration = Duration::from_secs(5);

/// How much of a given-up message its sender's notice quotes, in characters.
const NOTICE_EXCERPT_CHARS: usize = 60;

/// Most unanswered events [`MlsRooms::unanswered`] keeps the first failed try of.
const MAX_UNANSWERED: usize = 65_536;

/// A task of [`MlsRooms::spawn_unanswered`]: removes its portal's entry when it ends, unless it did so itself.
struct Running {
    me: std::sync::Weak<MlsRooms>,
    portal: PortalId,
    armed: bool,
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.armed
            && let Some(this) = self.me.upgrade()
            && let Ok(mut entries) = this.unanswered.lock()
        {
            entries.remove(&self.portal);
        }
    }
}

/// The hub's answer to a message forwarded to it.
pub(super) enum Forwarded {
    /// Sequenced, at this position of its log if it said.
    Accepted(Option<u64>),
    /// The hub moved to a newer epoch: catch up and encrypt again.
    EpochTooOld,
}

impl MlsRooms {
    /// Links `portal` to `room`, hosted by another provider (a configured peer): its group joins that room
    /// instead of this hub creating one. Call before [`MlsRooms::register_portal`], with
    /// [`MlsRooms::set_federation`].
    pub fn set_remote_room(&self, portal: &PortalId, room: String) {
        if let Ok(mut r) = self.remote_rooms.lock() {
            r.insert(portal.clone(), room);
        }
    }

    /// How this provider reaches the hubs of rooms hosted elsewhere (once).
    pub fn set_federation(&self, federation: Federation) {
        let _ = self.federation.set(federation);
    }

    /// The room URI of `portal`: the room it was linked to elsewhere ([`MlsRooms::set_remote_room`]), else
    /// `mimi://DOMAIN/r/PORTAL` on this hub.
    pub fn room_of(&self, portal: &PortalId) -> String {
        match self.remote_rooms.lock().ok().and_then(|r| r.get(portal).cloned()) {
            Some(room) => room,
            None => super::room_uri(self.provider.domain(), portal),
        }
    }

    /// The hub of `room` if another provider hosts it (`None`: this one does).
    pub(super) fn remote_hub(&self, room: &str) -> Option<String> {
        let domain = mimi_protocol::uri_domain(room)?;
        (domain != self.provider.domain()).then(|| domain.to_owned())
    }

    fn federation(&self) -> Result<&Federation, RoomError> {
        self.federation
            .get()
            .ok_or_else(|| RoomError::Unavailable("rooms hosted elsewhere are not reachable yet".into()))
    }

    /// Joins `room`, hosted by `hub`, by external commit from the GroupInfo the hub serves; returns the group
    /// and the commit's position in the hub's log. A join the hub did not take leaves no group behind (the next
    /// open joins again rather than load a group the room never had).
    pub(super) async fn join_remote(&self, room: &str, hub: &str) -> Result<(PortalGroup, Option<u64>), RoomError> {
        let federation = self.federation()?;
        for _ in 0..=EPOCH_RETRIES {
            let (info, tree) = federation.fetch_group_info_and_tree(room, hub).await.map_err(|e| match e.status {
                // The other bridge may not have made its room yet: tried again.
                Status::NotFound => RoomError::Unavailable(format!("joining {room}: {hub} has no such room (yet)")),
                _ => hub_error(room, hub, "joining: the GroupInfo", e),
            })?;
            let (mls, member, config) = (self.mls.clone(), self.member.clone(), EngineConfig::default());
            // Off the executor whatever the room's size (not known before the tree is read): verifying a big
            // room's tree takes seconds, and a join is rare.
            let joined = offload(OFFLOAD_MEMBERS, || {
                PortalGroup::rejoin_by_external_commit(mls, member, &config, &info, tree.as_deref())
            })
            .await;
            let (group, commit) = joined.durable().await.map_err(|e| unavailable(format!("joining {room}: {e}")))?;
            match self.send_join(room, hub, federation, group, commit).await {
                Ok(Some(joined)) => return Ok(joined),
                Ok(None) => tokio::time::sleep(Duration::from_millis(100)).await,
                Err(e) => return Err(e),
            }
        }
        Err(RoomError::Unavailable(format!("joining {room}: its epoch keeps moving")))
    }

    /// Sends the external commit `commit` of `group` to the hub: the group and the commit's position once the
    /// hub took it, `None` if the room moved to a newer epoch first. Unless the hub took it, the group is deleted.
    async fn send_join(
        &self,
        room: &str,
        hub: &str,
        federation: &Federation,
        mut group: PortalGroup,
        commit: Vec<u8>,
    ) -> Result<Option<(PortalGroup, Option<u64>)>, RoomError> {
        // The GroupInfo of the new epoch travels with the commit, so the commit is merged first.
        let sent = async {
            group.merge_pending_commit().durable().await.map_err(unavailable)?;
            let next = group.export_group_info(false).map_err(unavailable)?;
            let framed = |b: Vec<u8>| MlsMessageBytes::new(b).map_err(unavailable);
            let request = UpdateRequest::Commit {
                commit: framed(commit)?,
                welcome: None,
                group_info: GroupInfoOption(framed(next)?),
                ratchet_tree: RatchetTreeOption::DistributionService,
            };
            // Without a clear answer the hub may have taken it: the same commit goes again (the hub answers a
            // commit it took with its place), a few times, before the join is given up.
            let mut pause = Duration::from_millis(200);
            loop {
                let verdict = federation.update_through_hub(room, hub, self.member.uri(), request.clone()).await;
                match verdict.map_err(|e| hub_error(room, hub, "joining", e)) {
                    Err(RoomError::Unavailable(_)) if pause < Duration::from_secs(2) => {
                        tokio::time::sleep(pause).await;
                        pause *= 3;
                    }
                    answered => return answered,
                }
            }
        }
        .await;
        match sent {
            Ok(Verdict::Accepted { seq }) => {
                tracing::info!(room, hub, epoch = group.epoch(), "joined a room hosted elsewhere");
                Ok(Some((group, seq)))
            }
            other => {
                if let Err(e) = group.delete().durable().await {
                    tracing::warn!(room, error = %e, "the state of a join the hub did not take is not deleted");
                }
                other.map(|_| None)
            }
        }
    }

    /// Joins the slot's room again if the bridge leaf was removed from it (by a member's commit, maybe while this
    /// bridge was down), or if this provider's copy of the room's log no longer reaches back to where the portal
    /// is (the bridge was away longer than the hub keeps its log, [`mimi_provider::Provider::copy_gone`]; the copy
    /// then starts over at this join): a portal linked to a room stays in it. What was sequenced before the new
    /// join is not read; the new join replaces the old leaf (an external commit removes the member with the same
    /// key). The log cursor moves to the join at once (or, if the hub did not say where the join is, to where the
    /// copy starts): a restart must not look for what the copy no longer holds. A portal that joined again for a
    /// lost copy does not do so again for [`LOST_REJOIN_PAUSE`] while its leaf is in the room (its messages still
    /// go; only reading stops).
    pub(super) async fn rejoin_if_needed(&self, s: &mut Slot) -> Result<(), RoomError> {
        let Some(hub) = self.remote_hub(&s.room) else { return Ok(()) };
        let lost = s.behind_copy || self.provider.copy_gone(&s.room);
        if s.group.is_active() && !lost {
            return Ok(());
        }
        // Joined again for that lately: not again yet while the leaf is in the room (the hub still takes its
        // messages; only reading stops), whatever happens to the copy.
        let paused = s.lost_rejoin_at.is_some_and(|at| !LOST_REJOIN_PAUSE.saturating_sub(at.elapsed()).is_zero());
        if lost && paused && s.group.is_active() {
            return Ok(());
        }
        if lost {
            tracing::warn!(room = %s.room, hub, after = s.applied,
                "the room's log no longer holds what this bridge missed; joining again (what was said meanwhile is not bridged)");
            metrics::counter!("mimi_bridge_errors_total", "kind" => "room_log_gone").increment(1);
        } else {
            tracing::warn!(room = %s.room, hub, "the bridge leaf was removed from the room; joining again");
        }
        let (group, seq) = self.join_remote(&s.room, &hub).await?;
        s.group = group;
        s.behind_copy = false;
        if lost {
            s.lost_rejoin_at = Some(std::time::Instant::now());
            let router = self.router.get().and_then(|r| r.upgrade());
            let portal = self.known.lock().ok().and_then(|k| k.get(&s.room).cloned());
            if let (Some(router), Some(portal)) = (router, portal) {
                router.notice(&portal, format!(
                    "⚠ this bridge was away longer than {hub} keeps the room's history: what was said there meanwhile is not bridged"
                ));
            }
        }
        // Read from the join on; or, if the hub did not say where it is, from where the copy starts now.
        let start =
            || mimi_provider::log::Records(self.provider.store()).first(&s.room).ok().map(|f| f.saturating_sub(1));
        let from = seq.or_else(|| lost.then(start).flatten());
        if let Some(from) = from.filter(|from| *from > s.applied) {
            s.applied = from;
            self.store_cursor(s).await?;
        }
        Ok(())
    }

    /// [`RoomOfRecord::publish`] into a room hosted by `hub`, from the bridge's shared leaf.
    ///
    /// [`RoomOfRecord::publish`]: crate::room_of_record::RoomOfRecord::publish
    pub(super) async fn publish_remote(
        &self,
        hub: &str,
        msg: &GroupMessage,
        source: Option<(&InboundEvent, &NativeId)>,
        s: &mut Slot,
    ) -> Result<Published, RoomError> {
        let published = self.publish_remote_in_order(hub, msg, source, s).await;
        let Some((event, native)) = source else { return published };
        match published {
            // Whatever failed that may pass, once the event may be marked: it goes again in the background, and
            // the portal's next messages wait behind it; unless it has waited too long.
            Err(RoomError::Unavailable(why)) => {
                let e = self.unanswered(&msg.portal, (&event.leg, native), &msg.content.shown(), why).await;
                if matches!(e, RoomError::Unavailable(_)) {
                    s.resend = true;
                    self.spawn_unanswered(&msg.portal);
                }
                Err(e)
            }
            answered => {
                self.answered(&event.leg, native);
                answered
            }
        }
    }

    async fn publish_remote_in_order(
        &self,
        hub: &str,
        msg: &GroupMessage,
        source: Option<(&InboundEvent, &NativeId)>,
        s: &mut Slot,
    ) -> Result<Published, RoomError> {
        let (domain, room) = (self.provider.domain().to_owned(), s.room.clone());
        // The hub said the message handed to it last is of an epoch it left: encrypted again.
        let mut stale = false;
        for _ in 0..=EPOCH_RETRIES {
            if let Err(e) = self.rejoin_if_needed(s).await {
                // A leaf still in the room (its copy lost) can still send: the message is marked and goes, or
                // waits in the queue; a removed one cannot.
                if !s.group.is_active() {
                    return Err(e);
                }
                tracing::warn!(portal = %msg.portal, error = %e, "joining the room again failed; the message goes on");
            }
            // The event's mark, if it was handed to the hub before: the same message goes again (even in a later
            // epoch: the hub looks a message up by its digest before it judges its epoch), unless the hub said its
            // epoch is too old; encrypted again, it keeps the mark's turn.
            let mark = match source {
                Some((e, native)) => self.marked(&msg.portal, &e.leg, native)?,
                None => None,
            };
            let again = match &mark {
                Some(m) if !stale => m.submitted().map(|ct| MlsMessageBytes::new(ct).map(|ct| (m.message_id, ct))),
                _ => None,
            };
            let again = again.transpose().map_err(unavailable)?;
            // Messages go to the hub in the order they were encrypted: one that came behind newer messages of the
            // same sender could be further back than the other members' ratchets reach (a restart skips
            // generations). So while older ones wait for an answer, this one waits behind them.
            let waiting = match source {
                Some(event) if s.resend => self.waits_behind(&msg.portal, event, s)?,
                _ => false,
            };
            let (id, message) = match again {
                Some(again) => again,
                None => {
                    let media = self.media.get().map(|m| &**m);
                    let content = super::encode_outgoing_with(msg, self.member.uri(), &room, &domain, media)?;
                    let id = content.message_id().map_err(|e| RoomError::Refused(e.to_string()))?;
                    let id = MessageId::from_bytes(&id).map_err(|e| RoomError::Refused(e.to_string()))?;
                    let encrypted = offload(s.group.member_count(), || s.group.encrypt(content.bytes())).await;
                    let (ct, durability) = encrypted.into_parts();
                    let ct = ct.map_err(unavailable)?;
                    // Marked, queued right behind the ratchet step's write (if it has one), both durable before
                    // the message leaves; in the place of the mark it replaces (encrypted again for a newer
                    // epoch), so that it keeps its turn.
                    let marked = source.map(|(e, native)| {
                        let mut b = Batch::new();
                        let turn = mark.as_ref().map(|m| (m.at_ms, m.order));
                        let turn = turn.unwrap_or_else(|| (crate::outbox::now_ms(), crate::repo::write::next_order()));
                        crate::repo::write::submitted(&mut b, &msg.portal, e, native, &id, &ct, turn);
                        self.provider.store().commit_later(b)
                    });
                    durability.wait().await.map_err(unavailable)?;
                    if let Some(marked) = marked {
                        marked.await.unwrap_or(Err(mimi_store::StoreError::Closed)).map_err(unavailable)?;
                    }
                    if let (Some((e, native)), Some(queue)) = (source, s.queue.as_mut()) {
                        match queue.iter_mut().find(|(leg, n, _)| *leg == e.leg && n == native) {
                            // Encrypted again (a newer epoch): its turn, its new id.
                            Some(entry) => entry.2 = id,
                            None => queue.push_back((e.leg.clone(), native.clone(), id)),
                        }
                    }
                    (id, MlsMessageBytes::new(ct).map_err(unavailable)?)
                }
            };
            // Marked: the background hands it on after the older ones (a message without an event to mark goes
            // now: it could not wait).
            if waiting && source.is_some() {
                self.spawn_unanswered(&msg.portal);
                return Err(RoomError::Unavailable(
                    "queued behind earlier messages the room's hub has not answered yet".into(),
                ));
            }
            let submitted = self.submit_remote(&room, hub, message, self.member.uri()).await;
            if let Ok(held) = self.failed_tries.lock().as_deref_mut() {
                match &submitted {
                    Err(RoomError::Unavailable(_)) => *held.entry(id).or_default() += 1,
                    _ => _ = held.remove(&id),
                }
            }
            // Answered (taken, or refused for good): out of the queue.
            if let (Some((e, native)), Some(queue)) = (source, s.queue.as_mut())
                && matches!(submitted, Ok(Forwarded::Accepted(_)) | Err(RoomError::Refused(_)))
            {
                queue.retain(|(leg, n, _)| !(*leg == e.leg && n == native));
            }
            match submitted {
                Ok(Forwarded::Accepted(seq)) => {
                    // Now marked as sequenced (see the module documentation).
                    if let Some((e, native)) = source {
                        let mut b = Batch::new();
                        crate::repo::write::sent(&mut b, &msg.portal, e, native, &id, seq, crate::outbox::now_ms());
                        if let Err(e) = self.provider.store().commit(b).await {
                            tracing::warn!(portal = %msg.portal, error = %e, "sent marker not stored");
                        }
                    }
                    if let Some(seq) = seq {
                        // (A message sequenced before, sent again, may be behind the worker already.)
                        if seq > s.applied {
                            s.own.insert(seq);
                        }
                        let _ = self.provider.wait(&room, seq.saturating_sub(1), ORDER_WAIT).await;
                    }
                    let earlier = self.kept_before(&msg.portal, s, seq.unwrap_or(u64::MAX)).await;
                    return Ok(Published { id, earlier });
                }
                Ok(Forwarded::EpochTooOld) => {
                    stale = true;
                    self.catch_up(&msg.portal, s).await?;
                }
                // The marker stays: the event goes again as this message, in the background until the hub
                // answers, and the portal's next messages wait behind it (`publish_remote`).
                Err(e @ RoomError::Unavailable(_)) => return Err(e),
                Err(e) => {
                    // Refused for good: the hub did not take it, and will not.
                    if let Some((e, native)) = source {
                        let mut b = Batch::new();
                        crate::repo::write::forget_sent(&mut b, &e.leg, native);
                        if let Err(e) = self.provider.store().commit(b).await {
                            // Dropped by retention, or sent again (and refused again) at the next start.
                            tracing::warn!(portal = %msg.portal, error = %e, "a refused message's marker is kept");
                        }
                    }
                    return Err(e);
                }
            }
        }
        Err(RoomError::Unavailable("the room's epoch keeps moving".into()))
    }

    /// Whether a message of `portal` that its room's hub did not answer comes before the one of `event` (any, for
    /// an event not handed to the hub yet) and holds it back; one tried [`HOLD_TRIES`] times in vain does not.
    /// The portal's queue of them ([`Slot::queue`]) is read from the store once per opening, then kept as
    /// messages are marked and answered; an entry whose mark is gone meanwhile (refused at a start, pruned) is
    /// dropped when met. Clears [`Slot::resend`] once the queue is empty.
    fn waits_behind(
        &self,
        portal: &PortalId,
        (event, native): (&InboundEvent, &NativeId),
        s: &mut Slot,
    ) -> Result<bool, RoomError> {
        let queue = match &mut s.queue {
            Some(queue) => queue,
            None => {
                let marked = crate::repo::Repo::new(self.provider.store()).unrecorded().map_err(unavailable)?;
                let mine = marked.into_iter().filter(|u| u.submitted && u.portal.as_ref() == Some(portal));
                s.queue.insert(mine.map(|u| (u.event.leg, u.native, u.message_id)).collect())
            }
        };
        let tried = |id: &MessageId| self.failed_tries.lock().ok().and_then(|h| h.get(id).copied()).unwrap_or(0);
        let mut i = 0;
        let mut waits = false;
        while let Some((leg, n, queued)) = queue.get(i) {
            if *leg == event.leg && n == native {
                break;
            }
            // Tries are counted under the id the mark has now (one encrypted again has a new one).
            match self.marked(portal, leg, n)?.filter(|m| m.submitted.is_some()) {
                None => {
                    if let Ok(mut held) = self.failed_tries.lock() {
                        held.remove(queued);
                    }
                    self.answered(leg, n);
                    queue.remove(i);
                    continue;
                }
                Some(m) if tried(&m.message_id) < HOLD_TRIES => {
                    waits = true;
                    break;
                }
                Some(_) => i += 1,
            }
        }
        if queue.is_empty() {
            s.resend = false;
        }
        Ok(waits)
    }

    /// Notes that the event `native` of `leg` was not answered by the hub now; gives it up if it was first marked for
    /// the hub longer than [`crate::router::RouterConfig::hub_give_up_after`] ago (and tried for [`GIVE_UP_GRACE`]
    /// in this process, unless its map of tries is full): its mark becomes a
    /// given-up one ([`crate::repo::write::given_up`]), and the refusal returned makes the portal tell its sender.
    async fn unanswered(
        &self,
        portal: &PortalId,
        (leg, native): (&LegId, &NativeId),
        what: &str,
        why: String,
    ) -> RoomError {
        let limit = self.router.get().and_then(|r| r.upgrade()).map(|r| r.hub_give_up_after());
        let since = self.unanswered_since.lock().ok().and_then(|mut since| {
            let key = (leg.clone(), native.clone());
            // Full: the clocks running go on (their messages are given up first, making room); this one starts
            // once there is room.
            if since.len() >= MAX_UNANSWERED && !since.contains_key(&key) {
                return None;
            }
            Some(*since.entry(key).or_insert_with(std::time::Instant::now))
        });
        let Some(mark) = self.marked(portal, leg, native).ok().flatten().filter(|m| m.submitted.is_some()) else {
            return RoomError::Unavailable(why);
        };
        // Counted from when the message was first marked for the hub, which its mark keeps across restarts (a bridge
        // restarted daily during a week's outage gives up all the same) — once this process has tried for a few
        // seconds itself, so that one passing failure at a start does not end it —, or, if the wall clock went back
        // since, from this process's first failed try.
        let age = Duration::from_millis(crate::outbox::now_ms().saturating_sub(mark.at_ms));
        let tried_here = since.map(|since| since.elapsed());
        let overdue = limit.is_some_and(|limit| {
            tried_here.is_some_and(|t| t >= limit)
                || (age >= limit && tried_here.is_none_or(|t| t >= GIVE_UP_GRACE.min(limit)))
        });
        if !overdue {
            return RoomError::Unavailable(why);
        }
        let mut b = Batch::new();
        crate::repo::write::given_up(&mut b, portal, leg, native, &mark.message_id);
        if let Err(e) = self.provider.store().commit(b).await {
            // Tried again with the next pass.
            tracing::warn!(portal = %portal, error = %e, "a message given up is not marked so");
            return RoomError::Unavailable(why);
        }
        self.answered(leg, native);
        metrics::counter!("mimi_bridge_errors_total", "kind" => "hub_gave_up").increment(1);
        let after = limit.unwrap_or_default();
        tracing::warn!(portal = %portal, %leg, message = %mark.message_id, ?after, error = %why,
            "the room's hub has not taken a message: given up");
        // The error itself stays in the log: the notice is read by everyone in the room.
        RoomError::Refused(format!(
            "the room's hub has not taken it in {}: “{}”",
            humane(after),
            crate::portal::excerpt(what, NOTICE_EXCERPT_CHARS)
        ))
    }

    /// Forgets since when the event `native` of `leg` has been unanswered (the hub answered it, or it was given up).
    fn answered(&self, leg: &LegId, native: &NativeId) {
        if let Ok(mut since) = self.unanswered_since.lock() {
            since.remove(&(leg.clone(), native.clone()));
        }
    }

    /// The marker of the event `native` of `leg` in `portal`, if it has one ([`crate::repo::SentMarker`]).
    fn marked(
        &self,
        portal: &PortalId,
        leg: &LegId,
        native: &NativeId,
    ) -> Result<Option<crate::repo::SentMarker>, RoomError> {
        let marker = crate::repo::Repo::new(self.provider.store()).sent(leg, native).map_err(unavailable)?;
        Ok(marker.filter(|m| m.portal.as_ref() == Some(portal)))
    }

    /// Publishes `portal`'s unanswered and unrecorded events through the router
    /// ([`crate::router::RouterHandle::publish_unanswered`]) in the background, with backoff, until none is left
    /// (one such task per portal at a time).
    pub(super) fn spawn_unanswered(&self, portal: &PortalId) {
        let Some(router) = self.router.get().cloned() else {
            tracing::warn!(portal = %portal, "no router attached: unanswered messages wait for the next start");
            return;
        };
        // One task per portal; one that is running passes once more before it ends (what was queued meanwhile).
        let started = self.unanswered.lock().is_ok_and(|mut running| match running.get_mut(portal) {
            Some(again) => {
                *again = true;
                false
            }
            None => {
                running.insert(portal.clone(), false);
                true
            }
        });
        if !started {
            return;
        }
        let (me, portal) = (self.me.clone(), portal.clone());
        let mut stop = self.stop.subscribe();
        tokio::spawn(async move {
            // However the task ends (a panic included), the portal's entry goes, so that a later one can start.
            let mut running = Running { me: me.clone(), portal: portal.clone(), armed: true };
            let mut backoff = Duration::from_millis(200);
            loop {
                let left = match router.upgrade() {
                    Some(router) => router.publish_unanswered(&portal).await,
                    None => return,
                };
                match left {
                    Ok(0) => {
                        // Done, unless more was queued during the pass (decided under the lock spawns take).
                        let Some(this) = me.upgrade() else { return };
                        let Ok(mut entries) = this.unanswered.lock() else { return };
                        if entries.get_mut(&portal).is_some_and(std::mem::take) {
                            continue;
                        }
                        entries.remove(&portal);
                        running.armed = false;
                        return;
                    }
                    Ok(left) => tracing::warn!(portal = %portal, left, retry_in = ?backoff,
                        "messages the hub did not answer are not all published yet"),
                    Err(e) => tracing::warn!(portal = %portal, error = %e, retry_in = ?backoff,
                        "messages the hub did not answer are not published yet"),
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.wait_for(|s| *s) => break,
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        });
    }

    /// Forwards an application message of `sender` (a local member) to `hub`, the hub of `room`.
    pub(super) async fn submit_remote(
        &self,
        room: &str,
        hub: &str,
        message: MlsMessageBytes,
        sender: &str,
    ) -> Result<Forwarded, RoomError> {
        let verdict = self.federation()?.forward_submit(room, hub, sender, message).await;
        match verdict.map_err(|e| hub_error(room, hub, "a message", e))? {
            Verdict::Accepted { seq } => Ok(Forwarded::Accepted(seq)),
            Verdict::EpochTooOld { .. } => Ok(Forwarded::EpochTooOld),
        }
    }

    /// Sends a commit of the bridge's leaf to `hub`, the hub of `room`, with the GroupInfo of the epoch it makes:
    /// as [`MlsRooms::send_commit`] for a hosted room. A hub that accepts without saying where (no
    /// `mimi-sequence`) gets position 0, which no entry has: the worker then meets the commit in the log and
    /// drops it as of an epoch the group has left.
    pub(super) async fn commit_remote(
        &self,
        room: &str,
        hub: &str,
        out: &CommitOutput,
    ) -> Result<Option<u64>, RoomError> {
        let request = super::update_request(out)?;
        let verdict = self.federation()?.update_through_hub(room, hub, self.member.uri(), request).await;
        match verdict.map_err(|e| hub_error(room, hub, "a commit", e))? {
            Verdict::Accepted { seq } => Ok(Some(seq.unwrap_or(0))),
            Verdict::EpochTooOld { .. } => Ok(None),
        }
    }

    /// Opens a portal whose room is hosted elsewhere at start, retrying with backoff while its hub cannot be
    /// reached (the daemon starts anyway; the portal's legs wait meanwhile, as for any unavailable room). Once
    /// it is open, the events handed to the hub without an answer before the stop are published again
    /// ([`MlsRooms::spawn_unanswered`]).
    pub(super) fn open_remote_in_background(&self, portal: &PortalId) {
        let (me, portal) = (self.me.clone(), portal.clone());
        let mut stop = self.stop.subscribe();
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(200);
            loop {
                let Some(this) = me.upgrade() else { return };
                match this.ensure_portal(&portal).await {
                    Ok(()) => {
                        this.spawn_unanswered(&portal);
                        return;
                    }
                    Err(e @ RoomError::Refused(_)) => {
                        // For good (an invite-only room, an unknown one): said once; a message published into
                        // the portal tries again, and is refused with the same reason.
                        tracing::error!(portal = %portal, error = %e, "the portal's room refused the bridge");
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(portal = %portal, error = %e, retry_in = ?backoff, "portal's room not joined yet")
                    }
                }
                drop(this);
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        });
    }
}

/// `d` in whole hours, or minutes, or seconds.
fn humane(d: Duration) -> String {
    match d.as_secs() {
        s if s >= 3600 && s % 3600 == 0 => format!("{} h", s / 3600),
        s if s >= 60 && s % 60 == 0 => format!("{} min", s / 60),
        s => format!("{s} s"),
    }
}

/// The portal's error for `what` failing at `hub`, the hub of `room`: a refusal for good (the hub refused, found
/// our request malformed, does not know the room, or no longer keeps what we read) is [`RoomError::Refused`];
/// anything else (unreachable, 5xx, over a quota, in conflict with a room that moved on) may pass,
/// [`RoomError::Unavailable`].
fn hub_error(room: &str, hub: &str, what: &str, e: Failure) -> RoomError {
    let why = format!("{what} in {room} (hosted by {hub}): {}", e.reason);
    match e.status {
        Status::BadRequest | Status::Forbidden | Status::NotFound | Status::Gone => RoomError::Refused(why),
        _ => RoomError::Unavailable(why),
    }
}
