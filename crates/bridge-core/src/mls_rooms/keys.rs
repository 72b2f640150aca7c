//! Key updates (post-compromise security, RFC 9420 §16.6): every local member of a portal's group — the bridge's
//! leaf and each per-user leaf — commits a fresh leaf key once its last one is older than the room of record's
//! key-update interval ([`MlsRooms::set_key_update_interval`], `[bridge] mls_key_update_secs`, default one day).
//!
//! The portal worker's sweep does at most one update per round, the member whose key is oldest first, so a
//! portal with many leaves spreads its commits out. When each member last updated is an engine record in the
//! bridge's MLS storage (`updated/<room>`): a daemon restarted more often than the interval still updates. A
//! member seen for the first time counts as updated now.

use super::{MlsRooms, Slot, unavailable};
use bridge_api::RoomError;
use bridge_api::ids::PortalId;
use mimi_mls::{MlsBackend, offload};
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Default interval between two key updates of a local member.
pub const DEFAULT_KEY_UPDATE: Duration = Duration::from_secs(24 * 3600);

fn record_name(room: &str) -> Vec<u8> {
    format!("updated/{room}").into_bytes()
}

fn unix_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// True if the stored update time of the local member `member` in `room` is older than `every`. A room without
/// one is not due: the time is set when its group opens.
pub(super) fn due(mls: &MlsBackend, room: &str, member: &str, every: Duration) -> bool {
    let times: Option<BTreeMap<String, u64>> = mls.app_record(&record_name(room)).ok().flatten();
    times.and_then(|t| t.get(member).copied()).is_some_and(|t| unix_secs().saturating_sub(t) >= every.as_secs())
}

/// Makes sure the stored update times of `s` know the bridge leaf `member` (as updated now if they did not), so
/// that [`due`] can tell when its key is due while the portal is closed.
pub(super) fn note_member(s: &Slot, member: &str) {
    let name = record_name(&s.room);
    let mut times: BTreeMap<String, u64> = match s.group.storage_record(&name) {
        Ok(t) => t.unwrap_or_default(),
        Err(_) => return,
    };
    if !times.contains_key(member) {
        times.insert(member.to_owned(), unix_secs());
        // Goes to disk with the member's next operation in any portal.
        let _ = s.group.put_storage_record(&name, &times);
    }
}

impl MlsRooms {
    /// Commits a fresh leaf key for the local member of `s` whose key is the oldest, if it is older than the
    /// key-update interval.
    pub(super) async fn refresh_keys(&self, portal: &PortalId, s: &mut Slot) -> Result<(), RoomError> {
        let Some(every) = self.key_update_interval() else { return Ok(()) };
        let now = unix_secs();
        let name = record_name(&s.room);
        let mut times: BTreeMap<String, u64> = s.group.storage_record(&name).map_err(unavailable)?.unwrap_or_default();
        let mut members = vec![self.member.uri().to_owned()];
        members.extend(s.leaves.iter().flat_map(|l| l.users().map(str::to_owned)));
        let before = times.len();
        times.retain(|uri, _| members.contains(uri));
        let mut changed = times.len() != before;
        for m in &members {
            if !times.contains_key(m) {
                times.insert(m.clone(), now);
                changed = true;
            }
        }
        let due = members
            .iter()
            .filter_map(|m| times.get(m).map(|t| (*t, m)))
            .filter(|(t, _)| now.saturating_sub(*t) >= every.as_secs())
            .min()
            .map(|(_, m)| m.clone());
        if let Some(uri) = due {
            self.catch_up(portal, s).await?;
            let updated = if uri == self.member.uri() {
                let out = offload(s.group.member_count(), || s.group.self_update()).await;
                let out = out.durable().await.map_err(unavailable)?;
                self.submit_own_commit(s, out).await?
            } else {
                self.update_leaf(s, &uri).await?
            };
            if updated {
                tracing::info!(portal = %portal, member = %uri, epoch = s.group.epoch(), "leaf key updated");
                times.insert(uri, now);
                changed = true;
            }
        }
        if changed {
            // Goes to disk with the group's next operation; if that never comes, the worst case is an early update.
            s.group.put_storage_record(&name, &times).map_err(unavailable)?;
        }
        Ok(())
    }

    /// `uri`'s own leaf commits its key update; the bridge's leaf and the other leaves process it. False if the
    /// hub moved to a newer epoch first (the next round tries again) or the leaf is gone.
    async fn update_leaf(&self, s: &mut Slot, uri: &str) -> Result<bool, RoomError> {
        let Slot { group, leaves, room, own, .. } = s;
        let Some(leaves) = leaves.as_mut().filter(|l| l.contains(uri)) else { return Ok(false) };
        let out = offload(group.member_count(), || leaves.update(uri)).await.durable().await.map_err(unavailable)?;
        match self.send_commit(room, &out.commit, uri).await {
            Ok(Some(seq)) => {
                offload(group.member_count(), || group.process(&out.commit))
                    .await
                    .durable()
                    .await
                    .map_err(unavailable)?;
                let members = group.member_count().saturating_mul(leaves.len());
                offload(members, || leaves.complete_update(uri, &out.commit))
                    .await
                    .durable()
                    .await
                    .map_err(unavailable)?;
                own.insert(seq);
                self.serve_group_info(room, group).await;
                Ok(true)
            }
            sent => {
                let _ = leaves.abandon_update(uri).durable().await;
                sent.map(|_| false)
            }
        }
    }
}
