//! Portals opened on demand: a portal's group is open — in memory, with a worker following the room's log — only
//! while it is used, so that thousands of idle portals cost the daemon neither memory nor start-up time.
//!
//! At start ([`MlsRooms::register_portal`]) a portal stays closed if the hub holds its room, made by the bridge,
//! with the group's public state and a stored GroupInfo of the current epoch, and the portal has applied the whole
//! log; messages it kept for the router (decrypted before the last stop) are handed on without opening it. Any
//! other portal opens at once — creating its group and room if needed, applying the log — and closes again as
//! soon as that is done, so that a first start holds about one group at a time; every per-user portal opens at
//! start and stays open until idle (its leaves' idle sweep and orphans' removal run on the worker).
//!
//! A closed portal opens when the router publishes into it, when its room's log grows past what it applied (the
//! waker follows [`Provider::appended`]; if it falls behind, it compares every closed portal's cursor with its
//! room's log), and when the bridge leaf's key update is due ([`super::keys`]: a key pass looks at closed portals'
//! update times every eighth of the interval, at most every 15 minutes; each closes again once it has applied its
//! update). One opener at a time per portal: two loads of one group would leave the first unable to send.
//!
//! An open portal closes after [`MlsRooms::set_idle_close`] without a message, unless it has per-user leaves or
//! has not applied its room's whole log and stored its cursor there. With more portals open than
//! [`MlsRooms::set_max_open`] (traffic waking thousands of portals within their idle time), those used least
//! recently close, under the same conditions, once they have been idle for [`EVICT_MIN_IDLE`] (a portal in use is
//! not closed between two of its messages), and not while messages for a remote room's hub wait in them. The
//! workers look whenever they have done a round of work, and [`EVICT_MIN_IDLE`] after one while the bound is
//! exceeded (then less and less often, up to a minute, while it stays exceeded): memory stays bounded, at the
//! price of loading a group again if its portal is used again soon. Closing flushes the group's message secrets
//! to the store, as a stop does, before the slot leaves the map — a portal used again before its worker has
//! dropped the closed group then loads what it sent and received, and skips no generation — and the hub drops its
//! decoded public state of the room, which stays in the store ([`Provider::release_public`]). Closing is safe
//! against a concurrent open: the closer flushes with the slot locked, then the slot leaves the map only under the
//! map's lock, when nobody but its worker and the closer holds it, so nobody can be holding a group that is no
//! longer the portal's. An entry appended meanwhile is seen either by the close (which then does not happen) or by
//! the waker, after it.
//!
//! [`Provider::appended`]: mimi_provider::service::Provider::appended
//! [`Provider::release_public`]: mimi_provider::service::Provider::release_public

use super::{CURSOR, MlsRooms, Slot, decode_incoming_with_parts, kept_list, keys, unavailable};
use crate::repo::{MlsIdentity, Repo};
use bridge_api::RoomError;
use bridge_api::ids::PortalId;
use mimi_mls::{KeptMessage, offload};
use mimi_provider::PortalRoom;
use mimi_provider::log::Records;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;

/// How long an open portal stays open without a message by default ([`MlsRooms::set_idle_close`]).
pub const DEFAULT_IDLE_CLOSE: Duration = Duration::from_secs(300);
/// How many portals may be open at once by default ([`MlsRooms::set_max_open`]): 40–45 MiB of small groups, as
/// measured in docs/benchmarks.md ("Portals woken by traffic").
pub const DEFAULT_MAX_OPEN: usize = 1000;
/// How long a portal has been idle at least before the bound on open portals closes it.
pub(super) const EVICT_MIN_IDLE: Duration = Duration::from_secs(2);
/// The longest pause between two looks at closed portals' key-update times.
const MAX_KEY_PASS: Duration = Duration::from_secs(15 * 60);

impl MlsRooms {
    /// Closes a portal's group after `after` without a message (`None`: never, unless the bound on open portals,
    /// [`MlsRooms::set_max_open`], closes it sooner). Default [`DEFAULT_IDLE_CLOSE`].
    pub fn set_idle_close(&self, after: Option<Duration>) {
        let ms = after.map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1));
        self.idle_close_ms.store(ms, Ordering::Relaxed);
    }

    /// The idle time after which a portal's group closes ([`MlsRooms::set_idle_close`]).
    pub fn idle_close(&self) -> Option<Duration> {
        match self.idle_close_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(Duration::from_millis(ms)),
        }
    }

    /// Closes the portals used least recently while more than `max` are open (`None`: no bound); portals with
    /// per-user leaves, busy, holding messages for a remote room's hub, or idle for less than [`EVICT_MIN_IDLE`]
    /// stay open. Default [`DEFAULT_MAX_OPEN`].
    pub fn set_max_open(&self, max: Option<usize>) {
        self.max_open.store(max.map_or(0, |m| m.max(1)), Ordering::Relaxed);
    }

    /// The bound on open portals ([`MlsRooms::set_max_open`]).
    pub fn max_open(&self) -> Option<usize> {
        Some(self.max_open.load(Ordering::Relaxed)).filter(|m| *m > 0)
    }

    /// Whether more portals are open than [`MlsRooms::set_max_open`] allows.
    pub(super) fn over_open_bound(&self) -> bool {
        self.max_open().is_some_and(|max| self.open_count() > max)
    }

    /// How many portals' groups are open now.
    pub fn open_count(&self) -> usize {
        self.slots.lock().map_or(0, |s| s.len())
    }

    /// Sending generations the portals' groups skipped since the process started: after an unclean stop, those
    /// their lost state may have used; none after a clean stop or a close
    /// ([`mimi_mls::MlsBackend::skipped_generations`]).
    pub fn skipped_generations(&self) -> u64 {
        self.mls.skipped_generations()
    }

    /// Whether `portal`'s group is open now (for tests and status).
    pub fn is_open(&self, portal: &PortalId) -> bool {
        self.slots.lock().is_ok_and(|s| s.contains_key(portal))
    }

    /// Makes `portal` known at start: its group opens now only if it has to (see the module documentation);
    /// otherwise when it is used. Call after [`MlsRooms::set_join_policy`] and [`MlsRooms::set_leaf_policy`].
    pub async fn register_portal(&self, portal: &PortalId) -> Result<(), RoomError> {
        let room = self.room_of(portal);
        let store = self.provider.store();
        let per_user = Repo::new(store)
            .portal(portal)
            .map_err(unavailable)?
            .is_some_and(|r| r.mls_identity == MlsIdentity::PerUser);
        // Known before anything is read: an append from now on wakes it.
        self.known.lock().map_err(unavailable)?.insert(room.clone(), portal.clone());
        if self.remote_hub(&room).is_some() {
            self.open_remote_in_background(portal);
            return Ok(());
        }
        if per_user {
            return self.ensure_portal(portal).await;
        }
        let PortalRoom::Ready { last, group_info_current: true } = self.provider.portal_room(&room, self.member.uri())
        else {
            return self.open_for_start(portal).await;
        };
        let applied = Records(store).cursor(&room, CURSOR).map_err(unavailable)?;
        if applied < last {
            return self.open_for_start(portal).await;
        }
        let policy = self.join_policies.lock().map_err(unavailable)?.get(portal).copied();
        if let Some(policy) = policy {
            self.provider.set_join_policy(&room, policy).await.map_err(unavailable)?;
        }
        // Decrypted before the last stop but maybe never taken: to the router again (it drops what it has).
        let kept: Vec<KeptMessage> = self.mls.app_record(&kept_list(&room)).map_err(unavailable)?.unwrap_or_default();
        for k in kept {
            match decode_incoming_with_parts(portal, &room, &k.sender_identity, &k.plaintext) {
                Ok((id, msg, parts)) => {
                    let _ = self.inbound.send((room.clone(), k.seq, id, msg, parts));
                }
                Err(e) => tracing::debug!(portal = %portal, error = %e, "kept message discarded"),
            }
        }
        Ok(())
    }

    /// Opens `portal` for what a start needs of it — its group and room made, its GroupInfo served, the log
    /// applied — and closes it again as soon as that is done, unless it is used meanwhile (then it closes when
    /// idle, as any open portal). A first start of thousands of portals then holds about one group at a time, not
    /// all of them until their idle time is up.
    async fn open_for_start(&self, portal: &PortalId) -> Result<(), RoomError> {
        if self.is_open(portal) {
            // Opened by a use already: it closes when idle.
            return Ok(());
        }
        // The entries in the log now are what the start applies: not a use.
        let last = self.provider.last_seq(&self.room_of(portal)).unwrap_or(0);
        let slot = self.slot_for(portal, Some(last)).await?;
        // Not if another opened it meanwhile (it closes when idle), nor while its worker holds it: its worker
        // closes it once the log is applied.
        let ours = slot.try_lock().is_ok_and(|s| s.close_when_caught_up.is_some());
        drop(slot);
        if ours {
            self.close_if_unused(portal, None).await;
        }
        Ok(())
    }

    /// Starts the waker of closed portals (once; with the incoming path, [`MlsRooms::attach_router`]).
    pub(super) fn spawn_waker(&self) {
        let mut appended = self.provider.appended();
        let me = self.me.clone();
        let mut stop = self.stop.subscribe();
        tokio::spawn(async move {
            loop {
                let event = tokio::select! {
                    r = appended.recv() => r,
                    _ = stop.wait_for(|s| *s) => return,
                };
                let Some(this) = me.upgrade() else { return };
                match event {
                    Ok(room) => this.wake(&room),
                    Err(RecvError::Lagged(_)) => this.wake_behind(),
                    Err(RecvError::Closed) => return,
                }
            }
        });
    }

    /// Starts the key pass over closed portals (once, beside the waker): every eighth of the key-update
    /// interval, at most every 15 minutes.
    pub(super) fn spawn_key_pass(&self) {
        let me = self.me.clone();
        let mut stop = self.stop.subscribe();
        tokio::spawn(async move {
            loop {
                let Some(this) = me.upgrade() else { return };
                let pass = this.key_update_interval().map(|k| (k / 8).clamp(Duration::from_millis(50), MAX_KEY_PASS));
                drop(this);
                tokio::select! {
                    _ = tokio::time::sleep(pass.unwrap_or(MAX_KEY_PASS)) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
                let Some(this) = me.upgrade() else { return };
                if pass.is_some() {
                    this.update_closed_keys().await;
                }
            }
        });
    }

    /// Opens the portal of `room` (in a task of its own) if it is known, closed, and behind the room's log (a
    /// closed portal that applied it all — its own key update, say — stays closed), or if the room is hosted
    /// elsewhere and this provider's copy of its log was lost.
    fn wake(&self, room: &str) {
        let Some(portal) = self.known.lock().ok().and_then(|k| k.get(room).cloned()) else { return };
        if self.is_open(&portal) {
            return;
        }
        let last = self.provider.last_seq(room).unwrap_or(u64::MAX);
        // (A copy of a room hosted elsewhere that was lost wakes its portal too: it joins the room again.)
        if Records(self.provider.store()).cursor(room, CURSOR).is_ok_and(|applied| applied >= last)
            && !self.provider.copy_gone(room)
        {
            return;
        }
        let Some(this) = self.me.upgrade() else { return };
        tokio::spawn(async move {
            if let Err(e) = this.ensure_portal(&portal).await {
                tracing::warn!(portal = %portal, error = %e, "opening the portal for a new message failed");
            }
        });
    }

    /// After the waker fell behind: every known room as if it had grown ([`MlsRooms::wake`] opens those whose
    /// closed portal is behind the log).
    fn wake_behind(&self) {
        let known: Vec<String> = self.known.lock().map(|k| k.keys().cloned().collect()).unwrap_or_default();
        for room in known {
            self.wake(&room);
        }
    }

    /// Opens each closed portal whose bridge leaf is due for a key update, updates it, and closes it again.
    async fn update_closed_keys(&self) {
        let Some(every) = self.key_update_interval() else { return };
        let closed: Vec<(String, PortalId)> =
            self.known.lock().map(|k| k.iter().map(|(r, p)| (r.clone(), p.clone())).collect()).unwrap_or_default();
        for (room, portal) in closed {
            if self.is_open(&portal) || !keys::due(&self.mls, &room, self.member.uri(), every) {
                continue;
            }
            let slot = match self.slot(&portal).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(portal = %portal, error = %e, "opening the portal for its key update failed");
                    continue;
                }
            };
            let mut s = slot.lock().await;
            if let Err(e) = self.refresh_keys(&portal, &mut s).await {
                tracing::warn!(portal = %portal, error = %e, "key update failed; retried later");
            }
            // Its worker closes it once it has applied the log (the update's commit among it).
            s.close_when_caught_up = Some(self.provider.last_seq(&s.room).unwrap_or(0));
            drop(s);
            drop(slot);
            self.close_if_unused(&portal, None).await;
        }
    }

    /// Closes `portal`'s group if nobody but its worker holds it, it is not locked, it has no per-user leaves, it
    /// has applied its room's whole log and stored its cursor, and (with `idle`) it has seen no message for that
    /// long. True if it was closed. (An entry appended after the check finds the portal closed and wakes it
    /// again: the waker looks under the same lock.)
    ///
    /// The group's state is flushed to the store before the slot leaves the map: the worker drops the group only
    /// later, and a portal opened again meanwhile loads its group from the store — which then holds what the
    /// closed object sent and received, so the new one skips no generation and decrypts nothing twice.
    pub(super) async fn close_if_unused(&self, portal: &PortalId, idle: Option<Duration>) -> bool {
        let Some((slot, mut s)) = self.closable_slot(portal, idle) else { return false };
        let flushed = offload(s.group.member_count(), || s.group.flush()).await;
        // Sealed, not waited for: the store's cache holds it, where an opening reads it.
        drop(flushed);
        let (closed, room) = {
            let Ok(mut slots) = self.slots.lock() else { return false };
            // The map's reference, the worker's, this one and the guard's: a caller of `slot` since holds a fifth.
            // (And still the portal's slot: not drained by a shutdown meanwhile.)
            let ours = slots.get(portal).is_some_and(|o| Arc::ptr_eq(o, &slot));
            if !ours || Arc::strong_count(&slot) > 4 || !self.may_close(&s, idle) {
                return false;
            }
            keys::note_member(&s, self.member.uri());
            let closed = s.closed.clone();
            let room = s.room.clone();
            drop(s);
            slots.remove(portal);
            (closed, room)
        };
        closed.notify_one();
        tracing::debug!(portal = %portal, "portal closed until it is used again");
        // The hub's decoded state of the room goes too (a hosted room's; it stays in the store).
        let provider = self.provider.clone();
        tokio::spawn(async move {
            if let Err(e) = provider.release_public(&room).await {
                tracing::debug!(%room, error = %e, "the hub keeps the room's public state in memory");
            }
        });
        true
    }

    /// `portal`'s slot, locked, if it may close ([`MlsRooms::close_if_unused`]) and nobody but the map and its
    /// worker holds it (besides the reference this returns).
    fn closable_slot(
        &self,
        portal: &PortalId,
        idle: Option<Duration>,
    ) -> Option<(Arc<tokio::sync::Mutex<Slot>>, tokio::sync::OwnedMutexGuard<Slot>)> {
        let slots = self.slots.lock().ok()?;
        let slot = slots.get(portal)?.clone();
        // A caller of `slot` holds one more until it is done.
        if Arc::strong_count(&slot) > 3 {
            return None;
        }
        let s = slot.clone().try_lock_owned().ok()?;
        self.may_close(&s, idle).then_some((slot, s))
    }

    /// Whether the open slot `s` may close: no per-user leaves, no new speakers waiting, idle for `idle`, its
    /// room's whole log applied and its cursor stored.
    fn may_close(&self, s: &Slot, idle: Option<Duration>) -> bool {
        closable(s, idle)
            && s.stored >= s.applied
            && !self.provider.last_seq(&s.room).is_ok_and(|last| s.applied < last)
    }
}

impl MlsRooms {
    /// While more portals are open than [`MlsRooms::max_open`]: closes those that can close
    /// ([`MlsRooms::close_if_unused`]) and have been idle for [`EVICT_MIN_IDLE`], least recently active first,
    /// until the bound is met or none is left that can. One pass at a time: a caller finding one under way returns.
    pub(super) async fn close_least_used(&self) {
        let Some(max) = self.max_open() else { return };
        if self.evicting.swap(true, Ordering::Acquire) {
            return;
        }
        let _done = ResetOnDrop(&self.evicting);
        let mut candidates: Vec<(std::time::Instant, PortalId)> = {
            let Ok(slots) = self.slots.lock() else { return };
            if slots.len() <= max {
                return;
            }
            let mut stuck = 0;
            let mut candidates = Vec::new();
            for (portal, slot) in slots.iter() {
                let Ok(s) = slot.try_lock() else { continue };
                // Messages waiting for a remote room's hub: closed, the portal would open again for each try.
                let waiting = s.queue.as_ref().is_some_and(|q| !q.is_empty());
                if waiting || !closable(&s, None) {
                    stuck += 1;
                } else if Arc::strong_count(slot) <= 2 && s.active.elapsed() >= EVICT_MIN_IDLE {
                    candidates.push((s.active, portal.clone()));
                }
            }
            if stuck > max && !self.warned_open_bound.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    stuck,
                    max,
                    "more portals that cannot close (per-user leaves, messages waiting for a \
                    remote room's hub) are open than max_open_portals allows"
                );
            }
            candidates
        };
        candidates.sort_unstable_by_key(|(active, _)| *active);
        let mut closed = 0;
        for (_, portal) in candidates {
            if self.open_count() <= max {
                break;
            }
            closed += usize::from(self.close_if_unused(&portal, Some(EVICT_MIN_IDLE)).await);
        }
        if closed > 0 {
            tracing::debug!(closed, max, "portals used least recently closed: more were open than the bound");
        }
    }
}

/// Clears a flag when dropped (however the pass holding it ends).
struct ResetOnDrop<'a>(&'a std::sync::atomic::AtomicBool);

impl Drop for ResetOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

fn closable(s: &Slot, idle: Option<Duration>) -> bool {
    s.leaves.as_ref().is_none_or(|l| l.is_empty())
        && s.wanted.is_empty()
        && idle.is_none_or(|d| s.active.elapsed() >= d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::room_of_record::{GroupContent, GroupMessage, RoomOfRecord};
    use bridge_api::event::{MessageDraft, Sender};
    use mimi_protocol::hub::JoinPolicy;

    /// A portal closed by someone other than its worker (the bound on open portals, a start, a key pass) and
    /// used again before the worker has dropped the closed group: the group opened again reads what the closed
    /// one sent from the store, so its next message skips no generation.
    #[tokio::test]
    async fn a_portal_used_again_before_its_closed_group_is_dropped_skips_no_generation() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = crate::open_store(dir.path(), Some(mimi_store::Backend::Redb), Default::default()).expect("store");
        let rooms = MlsRooms::open(store, "bridge.example.org", JoinPolicy::Open).await.expect("room of record");
        let portal = PortalId::new("p").expect("portal id");
        let say = |text: &str| GroupMessage {
            portal: portal.clone(),
            sender: Sender {
                uri: "mimi://bridge.example.org/u/irc.libera~bob".into(),
                display_name: "bob".into(),
                network: "irc".into(),
                legacy: None,
            },
            content: GroupContent::Message { draft: MessageDraft::plain(text), in_reply_to: None },
        };
        for i in 0..3 {
            rooms.publish(&say(&format!("line {i}")), None).await.expect("published");
        }
        // Closed once its cursor is stored (a moment after its own messages), by this task, not by its worker.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !rooms.close_if_unused(&portal, None).await {
            assert!(tokio::time::Instant::now() < deadline, "the portal did not close");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Used again at once: on this single-threaded runtime its worker, and the closed group, are still there.
        rooms.publish(&say("line 3"), None).await.expect("published after the close");
        assert_eq!(rooms.mls.skipped_generations(), 0, "generations skipped by the group opened again");
        rooms.shutdown().await;
    }
}
