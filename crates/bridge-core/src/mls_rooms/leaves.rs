//! Per-user leaves in a portal's room ([`UserLeaves`] wired to the hub): adding leaves for new speakers,
//! feeding every handshake of the log to the local leaves, and the idle sweep.
//!
//! When a leaf is added ([`LeafPolicy::add_batch`](mimi_mls::LeafPolicy::add_batch)):
//! * **batched** (the default, batch > 1): a new speaker's first messages go out from the shared leaf at once,
//!   with the `legacySender` extension, and the portal's worker adds the leaves of the new speakers gathered over
//!   [`ADD_GATHER`] (or as soon as a batch is full) in one commit; their later messages come from their own
//!   leaves. A commit costs one processing per local leaf and a message waiting for a commit cannot let the
//!   portal's later messages pass it, so one commit per new speaker, before their first line, would hold every
//!   line of the portal behind it (100 new speakers: 63 lines/s, a first line's p50 at 63 ms).
//! * **before the first message** (batch = 1): the first message waits for its user's own leaf.
//!
//! Order of an add: the bridge's leaf commits the add ([`UserLeaves::add`], durable with the new leaf's
//! KeyPackage keys), the user becomes a participant of the hub room (so the hub takes the leaf's messages), the
//! hub sequences the commit, then [`UserLeaves::complete`] merges it and joins the leaf from the Welcome (which
//! never leaves the process: nobody else needs it). If the hub moved to a newer epoch first, the change is
//! abandoned, the slot catches up and the add is tried again. If the leaf cannot join after the bridge merged the
//! add, its now ownerless slot in the group is removed by another commit and the message goes out from the shared
//! leaf, so nothing is lost and no dead member stays behind.

use super::{EPOCH_RETRIES, MlsRooms, Slot, unavailable};
use bridge_api::RoomError;
use bridge_api::ids::PortalId;
use mimi_mls::offload;
use mimi_mls::{AddLeaf, UserLeaves};
use std::time::{Duration, Instant};

/// Longest pause between two idle sweeps of a portal.
const MAX_SWEEP: Duration = Duration::from_secs(30);

/// How long the worker gathers new speakers before it adds their leaves in one commit (unless a batch is full
/// first).
pub(super) const ADD_GATHER: Duration = Duration::from_millis(50);

/// Batched adds: true if `uri` speaks from their own leaf now; otherwise they are gathered for the worker's next
/// add (if the cap leaves room) and the shared leaf speaks for them meanwhile.
pub(super) fn want_leaf(s: &mut Slot, uri: &str) -> bool {
    let Some(leaves) = s.leaves.as_ref() else { return false };
    if leaves.contains(uri) {
        return true;
    }
    let room = leaves.policy().max_leaves.saturating_sub(leaves.len());
    // A member under the user's name without a local leaf (a join that failed and whose removal did too) is not
    // added twice: the shared leaf speaks for them.
    let orphan = s.group.member_index(uri.as_bytes()).is_some();
    if !orphan && !s.wanted.iter().any(|w| w == uri) && s.wanted.len() < room {
        s.wanted.push(uri.to_owned());
        s.wanted_since.get_or_insert_with(Instant::now);
    }
    false
}

/// How often the portal worker sweeps (idle leaves, key updates): a quarter of the leaves' idle time or an eighth
/// of the key-update interval, whichever is shorter, at most [`MAX_SWEEP`]; `None` if there is nothing to sweep.
pub(super) fn sweep_interval(s: &Slot, key_update: Option<Duration>) -> Option<Duration> {
    let idle = s.leaves.as_ref().map(|l| l.policy().idle_after / 4);
    let keys = key_update.map(|k| k / 8);
    let every = match (idle, keys) {
        (Some(a), Some(b)) => a.min(b),
        (a, b) => a.or(b)?,
    };
    Some(every.clamp(Duration::from_millis(50), MAX_SWEEP))
}

/// True if `identity` (an MLS sender's credential) is one of the portal's local per-user leaves.
pub(super) fn is_local_leaf(s: &Slot, identity: &[u8]) -> bool {
    s.leaves.as_ref().is_some_and(|l| std::str::from_utf8(identity).is_ok_and(|u| l.contains(u)))
}

/// A handshake message someone else sent (already processed by the bridge's leaf) goes to every local leaf.
pub(super) async fn feed_handshake(portal: &PortalId, s: &mut Slot, bytes: &[u8]) {
    let members = s.group.member_count();
    let Some(leaves) = s.leaves.as_mut() else { return };
    let before = leaves.len();
    // K leaves each process the handshake: offloaded by the work, K times the group's size.
    let processed = offload(members.saturating_mul(leaves.len()), || leaves.process_handshake(bytes)).await;
    match processed.durable().await {
        Ok(results) => {
            for (user, r) in results {
                if let Err(e) = r {
                    tracing::warn!(portal = %portal, user = %user, error = %e, "a per-user leaf could not process a handshake");
                }
            }
        }
        Err(e) => tracing::warn!(portal = %portal, error = %e, "per-user leaves' state not stored"),
    }
    if leaves.len() < before {
        tracing::info!(portal = %portal, removed = before - leaves.len(), "per-user leaves removed by a member's commit");
    }
}

/// The bridge's own commit (merged) goes to every local leaf.
pub(super) async fn feed_own_commit(s: &mut Slot, commit: &[u8]) {
    let members = s.group.member_count();
    let Some(leaves) = s.leaves.as_mut() else { return };
    if leaves.is_empty() {
        return;
    }
    let processed = offload(members.saturating_mul(leaves.len()), || leaves.process_handshake(commit)).await;
    if let Err(e) = processed.durable().await {
        tracing::warn!(error = %e, "per-user leaves could not process the bridge's commit");
    }
}

/// What one attempt to add leaves came to.
enum Attempt {
    /// The commit went through: the users listed have a leaf now.
    Ready(Vec<String>),
    /// Send from the shared leaf (cap reached, or the change could not be stored).
    Shared,
    /// The hub moved on: catch up and try again.
    Retry,
}

impl MlsRooms {
    /// Makes sure the legacy user `uri` has a leaf in the per-user portal of slot `s`: true if they have one
    /// (now), false if their message must go out from the shared leaf (the portal is at its cap).
    pub(super) async fn ensure_leaf(&self, portal: &PortalId, s: &mut Slot, uri: &str) -> Result<bool, RoomError> {
        for _ in 0..=EPOCH_RETRIES {
            match self.try_add_leaves(portal, s, &[uri]).await? {
                Attempt::Ready(_) => return Ok(s.leaves.as_ref().is_some_and(|l| l.contains(uri))),
                Attempt::Shared => return Ok(false),
                Attempt::Retry => self.catch_up(portal, s).await?,
            }
        }
        Err(RoomError::Unavailable("the room's epoch keeps moving".into()))
    }

    /// Batched adds: if the new speakers gathered in the slot waited [`ADD_GATHER`] or fill a batch, adds their
    /// leaves (one commit per batch). Returns when to look again, if some still wait.
    pub(super) async fn add_wanted_leaves_when_due(
        &self,
        portal: &PortalId,
        s: &mut Slot,
    ) -> Option<tokio::time::Instant> {
        let batch = s.leaves.as_ref()?.policy().add_batch.max(1);
        loop {
            let since = s.wanted_since?;
            if s.wanted.len() < batch && since.elapsed() < ADD_GATHER {
                return Some(tokio::time::Instant::from_std(since + ADD_GATHER));
            }
            let wanted = std::mem::take(&mut s.wanted);
            s.wanted_since = None;
            let uris: Vec<&str> = wanted.iter().map(String::as_str).collect();
            let mut added = self.add_leaves(portal, s, &uris).await;
            if added == 0 && uris.len() > 1 {
                // One user the hub or the engine refuses must not keep the others out: one at a time.
                for uri in &uris {
                    added += self.add_leaves(portal, s, &[uri]).await;
                }
            }
            if added == 0 {
                // Full, refused or unreachable: they are gathered again when they next speak.
                return None;
            }
            // Those a full batch left out go in the next commit.
            let rest: Vec<String> =
                wanted.into_iter().filter(|u| s.leaves.as_ref().is_some_and(|l| !l.contains(u))).collect();
            if rest.is_empty() {
                return None;
            }
            s.wanted = rest;
            s.wanted_since = Some(Instant::now().checked_sub(ADD_GATHER).unwrap_or_else(Instant::now));
        }
    }

    /// Adds leaves for `uris` in one commit (as many as the batch and the cap allow), catching up and trying
    /// again if the epoch moved; returns how many were added. Failures are logged.
    async fn add_leaves(&self, portal: &PortalId, s: &mut Slot, uris: &[&str]) -> usize {
        for _ in 0..=EPOCH_RETRIES {
            match self.try_add_leaves(portal, s, uris).await {
                Ok(Attempt::Ready(added)) => return added.len(),
                Ok(Attempt::Shared) => return 0,
                Ok(Attempt::Retry) => {
                    if let Err(e) = self.catch_up(portal, s).await {
                        tracing::warn!(portal = %portal, error = %e, "per-user leaves not added");
                        return 0;
                    }
                }
                Err(e) => {
                    tracing::warn!(portal = %portal, users = uris.len(), error = %e, "per-user leaves not added");
                    return 0;
                }
            }
        }
        tracing::warn!(portal = %portal, "per-user leaves not added: the room's epoch keeps moving");
        0
    }

    async fn try_add_leaves(&self, portal: &PortalId, s: &mut Slot, uris: &[&str]) -> Result<Attempt, RoomError> {
        let Slot { group, leaves, room, own, .. } = s;
        let Some(leaves) = leaves.as_mut() else { return Ok(Attempt::Shared) };
        let pending = match offload(group.member_count(), || leaves.add_many(group, uris)).await.map_err(unavailable)? {
            AddLeaf::Present => return Ok(Attempt::Ready(Vec::new())),
            AddLeaf::Full => {
                tracing::debug!(portal = %portal, users = uris.len(), "per-user leaf cap reached: the shared leaf speaks");
                return Ok(Attempt::Shared);
            }
            AddLeaf::Committed(p) => p,
        };
        let change = match pending.durable().await {
            Ok(c) => c,
            Err(e) => {
                let _ = leaves.cancel(group).durable().await;
                return Err(unavailable(e));
            }
        };
        let mut sent = Ok(None);
        for uri in &change.added {
            if let Err(e) = self.provider.add_participant(room, uri).await {
                sent = Err(unavailable(e));
                break;
            }
        }
        if sent.is_ok() {
            sent = self.send_commit(room, &change.commit.commit, self.member.uri()).await;
        }
        let added = change.added.clone();
        match sent {
            Ok(Some(seq)) => {
                let completed = offload(group.member_count().saturating_mul(added.len() + leaves.len()), || {
                    leaves.complete(group, change, Instant::now())
                })
                .await;
                let failed = match completed.durable().await {
                    Ok(failed) => failed,
                    // Not known to be merged: the log's copy of the commit is applied as anyone's (catching up
                    // merges a pending commit of the bridge's own), and the shared leaf speaks meanwhile.
                    Err(e) => {
                        tracing::warn!(portal = %portal, error = %e, "per-user leaves' state not stored");
                        return Ok(Attempt::Shared);
                    }
                };
                // Marked as ours only once merged.
                own.insert(seq);
                self.serve_group_info(room, group).await;
                let ready: Vec<String> = added.into_iter().filter(|u| leaves.contains(u)).collect();
                tracing::info!(portal = %portal, added = ready.len(), leaves = leaves.len(), "per-user leaves added");
                for uri in &failed {
                    tracing::warn!(portal = %portal, user = %uri, "the per-user leaf could not join: removing its slot, the shared leaf speaks");
                    self.remove_orphan(portal, s, uri).await;
                }
                Ok(Attempt::Ready(ready))
            }
            sent => {
                let _ = leaves.abandon(group, change).durable().await;
                sent.map(|_| Attempt::Retry)
            }
        }
    }

    /// Removes the member `uri` from the group when it is there without a local leaf (its join failed after the
    /// bridge merged the add). Best effort: a failure is logged.
    pub(super) async fn remove_orphan(&self, portal: &PortalId, s: &mut Slot, uri: &str) {
        if s.leaves.as_ref().is_some_and(|l| l.contains(uri)) {
            return;
        }
        let Some(index) = s.group.member_index(uri.as_bytes()) else { return };
        let removed = match offload(s.group.member_count(), || s.group.remove_members(&[index])).await.durable().await {
            Ok(out) => self.submit_own_commit(s, out).await,
            Err(e) => Err(unavailable(e)),
        };
        if !matches!(removed, Ok(true)) {
            tracing::warn!(portal = %portal, user = %uri, result = ?removed.err(), "the ownerless leaf stays in the group for now");
        }
    }

    /// Saves the leaves' activity, then removes the leaves silent for longer than the portal's idle time, in one
    /// commit by the bridge's leaf.
    pub(super) async fn sweep_idle_leaves(&self, portal: &PortalId, s: &mut Slot) -> Result<(), RoomError> {
        if let Slot { group, leaves: Some(leaves), .. } = s
            && let Err(e) = leaves.save_activity(group)
        {
            tracing::warn!(portal = %portal, error = %e, "per-user leaves' activity not saved");
        }
        let now = Instant::now();
        if s.leaves.as_ref().is_none_or(|l| l.idle(now).is_empty()) {
            return Ok(());
        }
        self.catch_up(portal, s).await?;
        let Slot { group, leaves, room, own, .. } = s;
        let Some(leaves) = leaves.as_mut() else { return Ok(()) };
        let idle = leaves.idle(now);
        if idle.is_empty() {
            return Ok(());
        }
        let change = offload(group.member_count(), || leaves.remove(group, &idle)).await;
        let change = change.durable().await.map_err(unavailable)?;
        match self.send_commit(room, &change.commit.commit, self.member.uri()).await {
            Ok(Some(seq)) => {
                let completed = offload(group.member_count(), || leaves.complete(group, change, now)).await;
                completed.durable().await.map_err(unavailable)?;
                own.insert(seq);
                tracing::info!(portal = %portal, removed = idle.len(), left = leaves.len(), "idle per-user leaves removed");
                self.serve_group_info(room, group).await;
                Ok(())
            }
            // Another commit won the epoch (or the hub is unreachable): the next sweep tries again.
            sent => {
                let _ = leaves.abandon(group, change).durable().await;
                sent.and(Err(RoomError::Unavailable("the room moved to a newer epoch; the next sweep retries".into())))
            }
        }
    }
}

/// The per-user leaves of a slot, for tests and status.
pub(super) fn users(leaves: &UserLeaves) -> Vec<String> {
    leaves.users().map(str::to_owned).collect()
}
