//! Retention of what the provider keeps: room logs ([`Provider::prune_log`]) and the claim and invitation records
//! of native users ([`Provider::prune_claims`], [`Provider::prune_invitations`]). The daemon's pruner (`bridge_core::retention`) calls them.
//!
//! A room's log loses the entries the hub accepted before the cut-off, oldest first, in batches — never its last
//! entry (the log's length is found from it) and never one a local consumer has not read yet (the bridge's own
//! member, by its cursor). Their idempotency keys go with them. The first entry kept is recorded (`'F'`); a
//! client or follower asking for entries before it is answered [`ProviderError::Pruned`] (HTTP 410): it has missed
//! epochs and must rejoin the room. Entries below the recorded first one go too, whatever their age: those of a
//! followed copy that started over, which it removes itself in batches after the start is written, unless a
//! stop cuts that short.

use super::{Provider, ProviderError, Role, lock, now_ms};
use crate::log::{Records, write};
use mimi_protocol::hub::digest;
use mimi_store::{Batch, StoreError};

/// Most log entries removed in one batch.
const BATCH: usize = 1024;

impl Provider {
    /// Removes, in every room here (hosted or followed), the log entries accepted before `before_ms` (see the
    /// module documentation for what is always kept). Returns how many were removed.
    pub async fn prune_log(&self, before_ms: u64) -> Result<u64, ProviderError> {
        let rooms: Vec<(String, bool)> = lock(&self.inner.rooms)
            .iter()
            .map(|(name, r)| (name.clone(), matches!(&r.role, Role::Hub(h) if h.has_portal())))
            .collect();
        let mut removed = 0;
        for (room, has_portal) in rooms {
            removed += self.prune_room(&room, has_portal, before_ms).await?;
        }
        Ok(removed)
    }

    /// Removes the entries of `room` below `below`, its first entry, in batches; how many. Nobody reads them: those
    /// of a copy that started over (a join into a lost copy), or left by a stop in the middle of that removal.
    pub(super) async fn drop_entries_below(&self, room: &str, below: u64) -> Result<u64, ProviderError> {
        let recs = Records(&self.inner.store);
        let mut removed = 0;
        // Most rooms have none: their oldest entry's key tells.
        let mut page = 1;
        loop {
            let old: Vec<u64> = recs.oldest_seqs(room, page)?.into_iter().take_while(|seq| *seq < below).collect();
            if old.is_empty() {
                return Ok(removed);
            }
            let mut b = Batch::new();
            for &seq in &old {
                match recs.entry(room, seq) {
                    Ok(Some(e)) => write::drop_entry(&mut b, room, seq, &digest(&e.fanout.message)),
                    // Unreadable: its key goes all the same (a copy's entries have no idempotency key).
                    Ok(None) | Err(_) => write::drop_entry_key(&mut b, room, seq),
                }
            }
            self.inner.store.commit(b).await?;
            removed += old.len() as u64;
            page = BATCH;
        }
    }

    async fn prune_room(&self, room: &str, has_portal: bool, before_ms: u64) -> Result<u64, ProviderError> {
        let recs = Records(&self.inner.store);
        // Entries a local consumer has not read stay; a portal's room whose member never read anything keeps all.
        let cursors = recs.cursors(room)?;
        let read = match cursors.iter().min() {
            Some(&c) => c,
            None if has_portal => 0,
            None => u64::MAX,
        };
        // Below the room's first entry as stored (durably moved on): what a copy that started over held (see
        // `update_settled`).
        if !lock(&self.inner.rooms).contains_key(room) {
            return Ok(0);
        }
        let mut removed = self.drop_entries_below(room, recs.first(room)?).await?;
        loop {
            // Not beside a followed copy's appends or its start over (`update_settled`), which move its start too.
            let _serial = self.inner.follower_lock.lock().await;
            let (first, last) = match lock(&self.inner.rooms).get(room) {
                Some(r) => (r.first, *r.last.borrow()),
                None => return Ok(removed),
            };
            let keep_from = last.min(read.saturating_add(1));
            if first >= keep_from {
                return Ok(removed);
            }
            let want = usize::try_from(keep_from - first).unwrap_or(usize::MAX).min(BATCH);
            let entries = recs.entries_after(room, first - 1, want)?;
            let old: Vec<_> = entries.iter().take_while(|e| e.fanout.timestamp < before_ms).collect();
            let Some(next_first) = old.last().map(|e| e.seq + 1) else { return Ok(removed) };
            let mut b = Batch::new();
            for e in &old {
                write::drop_entry(&mut b, room, e.seq, &digest(&e.fanout.message));
            }
            write::first(&mut b, room, next_first);
            self.inner.store.commit_later(b).await.unwrap_or(Err(StoreError::Closed))?;
            if let Some(r) = lock(&self.inner.rooms).get_mut(room) {
                r.first = r.first.max(next_first);
                if let Role::Hub(h) = &mut r.role {
                    h.forget_before(next_first);
                }
            }
            removed += old.len() as u64;
            if old.len() < entries.len() || entries.len() < want {
                return Ok(removed);
            }
        }
    }

    /// Removes the claim records of KeyPackages claimed before `before_ms` (an Add with such a KeyPackage is then
    /// refused: the invitation has expired); how many. Claim records of before retention have no time: they are
    /// stamped now and expire a retention period later. Each page is read and written under the KeyPackage lock,
    /// so a claim made meanwhile (a last-resort KeyPackage claimed again) is never lost.
    pub async fn prune_claims(&self, before_ms: u64) -> Result<u64, ProviderError> {
        let recs = Records(&self.inner.store);
        let (mut removed, now) = (0, now_ms());
        let mut from = Vec::new();
        loop {
            let _serial = self.inner.key_package_lock.lock().await;
            let page = recs.claims(&from, BATCH)?;
            let mut b = Batch::new();
            for (kp_ref, claim) in &page {
                match claim.at_ms {
                    None => write::stamp_claim(&mut b, kp_ref, &claim.user, now),
                    Some(at) if at < before_ms => {
                        write::drop_claim(&mut b, kp_ref);
                        removed += 1;
                    }
                    Some(_) => {}
                }
            }
            self.commit(b).await?;
            match page.last() {
                Some((last, _)) if page.len() == BATCH => from = [last.as_slice(), &[0]].concat(),
                _ => return Ok(removed),
            }
        }
    }

    /// Removes the invitations whose Welcome is no longer in the log (retention removed it, or the room is gone);
    /// how many.
    pub async fn prune_invitations(&self) -> Result<u64, ProviderError> {
        let recs = Records(&self.inner.store);
        let mut removed = 0;
        let mut from = b"I".to_vec();
        loop {
            let page = recs.invitations(&from, BATCH)?;
            let mut b = Batch::new();
            {
                let rooms = lock(&self.inner.rooms);
                for (key, room, seq) in &page {
                    if rooms.get(room).is_none_or(|r| *seq < r.first) {
                        write::drop_invite(&mut b, key);
                        removed += 1;
                    }
                }
            }
            self.commit(b).await?;
            match page.last() {
                Some((last, _, _)) if page.len() == BATCH => from = [last.as_slice(), &[0]].concat(),
                _ => return Ok(removed),
            }
        }
    }

    async fn commit(&self, b: Batch) -> Result<(), ProviderError> {
        if !b.is_empty() {
            self.inner.store.commit_later(b).await.unwrap_or(Err(StoreError::Closed))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::Records;
    use crate::tests_support::{group, store};
    use mimi_protocol::hub::{JoinPolicy, Origin};
    use mimi_protocol::wire::MlsMessageBytes;

    const ALICE: &str = "mimi://a.test/u/alice";

    /// A room `name` of ALICE's with `n` messages; the messages' bytes.
    async fn room_with(p: &Provider, name: &str, has_portal: bool, n: usize) -> Vec<MlsMessageBytes> {
        let (_dir, mut g) = group(name.as_bytes());
        let info = MlsMessageBytes::new(g.export_group_info(true).expect("group info")).expect("framed");
        p.create_room(name, &info, None, ALICE, JoinPolicy::Open, has_portal).await.expect("room");
        let mut out = Vec::new();
        for i in 0..n {
            let m = MlsMessageBytes::new(g.encrypt(format!("{i}").as_bytes()).durable().await.expect("encrypt"))
                .expect("framed");
            p.submit(name, m.clone(), ALICE, if has_portal { Origin::Portal } else { Origin::Client(ALICE.into()) })
                .await
                .expect("sequenced");
            out.push(m);
        }
        out
    }

    #[tokio::test]
    async fn old_entries_go_except_the_last_and_the_unread_and_readers_behind_are_told_to_rejoin() {
        let (_d, st) = store();
        let p = Provider::open("a.test", st.clone()).expect("provider");
        let room = "mimi://a.test/r/club";
        let sent = room_with(&p, room, false, 5).await;
        assert_eq!(p.prune_log(0).await.expect("prune"), 0, "nothing is older than the epoch");
        assert_eq!(p.prune_log(now_ms() + 1).await.expect("prune"), 4, "all but the last");
        match p.entries_after(room, 0, 10) {
            Err(ProviderError::Pruned { first: 5, .. }) => {}
            other => panic!("a reader behind retention: {other:?}"),
        }
        assert_eq!(p.entries_after(room, 4, 10).expect("entries").len(), 1);
        assert!(Records(&st).digests(room).expect("digests").iter().all(|(_, s)| *s == 5), "their keys went too");
        // A retry of a removed message is judged anew (it is of the current epoch, so sequenced again).
        let again = p.submit(room, sent[0].clone(), ALICE, Origin::Client(ALICE.into())).await.expect("again");
        assert_eq!((again.seq, again.duplicate), (6, false));

        // The portal's room keeps what its member has not read.
        let portal = "mimi://a.test/r/portal";
        room_with(&p, portal, true, 4).await;
        assert_eq!(p.prune_log(now_ms() + 1).await.expect("prune"), 1, "room: the retried entry 5");
        let mut b = Batch::new();
        write::cursor(&mut b, portal, "bridge", 2);
        st.commit_later(b).await.expect("task").expect("cursor");
        assert_eq!(p.prune_log(now_ms() + 1).await.expect("prune"), 2, "portal: entries 1 and 2, read");

        // Restarted: the cut is remembered, and a user's room (no bridge member in it) is still pruned.
        drop(p);
        let p = Provider::open("a.test", st).expect("reopen");
        assert_eq!(p.last_seq(room).expect("room"), 6);
        p.submit(room, sent[1].clone(), ALICE, Origin::Client(ALICE.into())).await.expect("entry 7");
        assert_eq!(p.prune_log(now_ms() + 1).await.expect("prune"), 1, "entry 6 of the user's room");
        assert!(matches!(p.entries_after(room, 0, 10), Err(ProviderError::Pruned { first: 7, .. })));
        assert!(matches!(p.entries_after(portal, 1, 10), Err(ProviderError::Pruned { first: 3, .. })));
        assert_eq!(p.entries_after(portal, 2, 10).expect("entries").len(), 2);
    }

    #[tokio::test]
    async fn claims_expire_old_records_are_stamped_and_invitations_to_removed_welcomes_go() {
        let (_d, st) = store();
        let p = Provider::open("a.test", st.clone()).expect("provider");
        let room = "mimi://a.test/r/club";
        room_with(&p, room, false, 3).await;
        let mut b = Batch::new();
        write::stamp_claim(&mut b, b"old", ALICE, 1_000);
        write::stamp_claim(&mut b, b"new", ALICE, now_ms());
        b.put(crate::log::MIMI_USERS, b"Rlegacy".to_vec(), ALICE.as_bytes().to_vec()); // as stored before retention
        write::invite(&mut b, ALICE, room, 1);
        write::invite(&mut b, ALICE, room, 3);
        write::invite(&mut b, ALICE, "mimi://a.test/r/gone", 1);
        st.commit_later(b).await.expect("task").expect("records");
        p.prune_log(now_ms() + 1).await.expect("prune");

        assert_eq!(p.prune_claims(now_ms() - 60_000).await.expect("prune"), 1);
        assert_eq!(p.prune_invitations().await.expect("prune"), 2);
        let recs = Records(&st);
        assert_eq!(recs.claimed_by(b"old").expect("read"), None);
        assert_eq!(recs.claimed_by(b"new").expect("read").as_deref(), Some(ALICE));
        let legacy = recs.claims(b"legacy", 1).expect("read");
        assert!(legacy[0].1.at_ms.is_some(), "a record without a time is stamped, not dropped: {legacy:?}");
        assert_eq!(recs.invites(ALICE).expect("read"), vec![(room.to_owned(), 3)]);
    }
}
