//! Native users invited into a portal's room by its bridge (`mimi-bridge portal invite`, the admin API's
//! `POST /v1/invite`): how an invite-only portal (`join = "invite"`) gets its first native members, and how many
//! are seated at once.
//!
//! Users already in the group are skipped. For each other user, one of their KeyPackages is claimed (from this
//! provider's store, or through federation from their provider; a few at a time, each within [`CLAIM_TIMEOUT`], all
//! within [`CLAIMS_TIMEOUT`]), and the user goes on the room's participant list, as a native client's claim does.
//! Then, with the portal's group caught up, the users who joined meanwhile are skipped too, the KeyPackages are
//! checked (each parses, verifies, is of the group's ciphersuite, is the user's, and brings keys new to the group:
//! `PortalGroup::check_key_packages`), and the bridge's leaf adds the rest in one commit, whose Welcome the hub
//! keeps for them (committed again, with the same KeyPackages, if the room moved to a newer epoch meanwhile). A user
//! whose KeyPackage cannot be had or does not check is left out with the reason; the others are added. The caller
//! chooses how many users one call (one commit) takes: every member of the group, local per-user leaves included,
//! processes each commit once, so a few large commits seat many users far faster than one each.

use super::{MlsRooms, Slot, unavailable, update_request};
use crate::repo::Repo;
use bridge_api::RoomError;
use bridge_api::ids::PortalId;
use futures_util::StreamExt as _;
use mimi_mls::offload;
use mimi_protocol::hub::{Origin, Refusal};
use mimi_provider::ProviderError;
use std::collections::HashSet;
use std::time::Duration;

/// Most users one invitation (one commit) takes: a request of the admin API is at most 64 KiB, and each added
/// user's KeyPackage travels in the commit.
pub const MAX_INVITED_AT_ONCE: usize = 500;

/// How long one user's KeyPackage may take to claim (their provider may be slow or unreachable).
pub const CLAIM_TIMEOUT: Duration = Duration::from_secs(20);

/// How long all the claims of one invitation may take: the users not claimed by then are left out.
pub const CLAIMS_TIMEOUT: Duration = Duration::from_secs(240);

/// KeyPackages claimed at once.
const CLAIMS_AT_ONCE: usize = 8;

/// Times the commit is made again after the room moved to a newer epoch before it could be sequenced.
const COMMIT_TRIES: usize = 5;

/// What [`MlsRooms::invite`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Invited {
    /// The users added to the room (their URIs), in the order given.
    pub added: Vec<String>,
    /// The users already in the room's group: nothing was done for them.
    #[serde(default)]
    pub already_members: Vec<String>,
    /// The users left out, with why (no KeyPackage left, their provider unknown or unreachable, ...).
    pub left_out: Vec<LeftOut>,
}

/// A user [`MlsRooms::invite`] did not add, and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LeftOut {
    /// The user's URI.
    pub user: String,
    /// Why they were left out.
    pub error: String,
}

impl MlsRooms {
    /// Adds `users` (URIs, or names of this provider's users) to `portal`'s room in one commit of the bridge's
    /// leaf; users listed twice, or already in the group, are not added again. On an error no user was added
    /// (unless the hub sequenced the commit and only what came after failed), the KeyPackages claimed are used
    /// up, and the users claimed for stay on the room's participant list, as after a native client's failed
    /// invitation (in an invite-only room they may still join by external commit).
    pub async fn invite(&self, portal: &PortalId, users: &[String]) -> Result<Invited, RoomError> {
        if users.len() > MAX_INVITED_AT_ONCE {
            return Err(RoomError::Refused(format!(
                "{} users at once: at most {MAX_INVITED_AT_ONCE} (one commit carries each one's KeyPackage)",
                users.len()
            )));
        }
        // Opening the slot of a portal that does not exist would make its group.
        if Repo::new(self.provider.store()).portal(portal).map_err(unavailable)?.is_none() {
            return Err(RoomError::Refused(format!("there is no portal {portal}")));
        }
        let room = self.room_of(portal);
        if let Some(hub) = self.remote_hub(&room) {
            return Err(RoomError::Refused(format!("{room} is hosted by {hub}: invite its members there")));
        }
        let mut seen = HashSet::new();
        let targets: Vec<String> = users
            .iter()
            .map(|user| match user.starts_with("mimi://") {
                true => user.clone(),
                false => format!("mimi://{}/u/{user}", self.provider.domain()),
            })
            .filter(|uri| seen.insert(uri.clone()))
            .collect();
        let mut done = Invited::default();
        let members: HashSet<Vec<u8>> = {
            let slot = self.slot(portal).await?;
            let mut s = slot.lock().await;
            self.catch_up(portal, &mut s).await?;
            s.group.members().into_iter().map(|m| m.identity).collect()
        };
        let (already, wanted): (Vec<String>, Vec<String>) =
            targets.into_iter().partition(|uri| members.contains(uri.as_bytes()));
        done.already_members = already;
        // Claimed outside the portal's lock (its messages go on meanwhile), a few at a time, in the order given.
        let room = room.as_str();
        let deadline = tokio::time::Instant::now() + CLAIMS_TIMEOUT;
        let claimed: Vec<(String, Result<Vec<u8>, String>)> = futures_util::stream::iter(wanted)
            .map(|user| async move {
                let until = deadline.min(tokio::time::Instant::now() + CLAIM_TIMEOUT);
                let claim = tokio::time::timeout_at(until, self.claim_for(room, &user)).await;
                let claim = claim.unwrap_or_else(|_| Err("no KeyPackage in time".to_owned()));
                (user, claim)
            })
            .buffered(CLAIMS_AT_ONCE)
            .collect()
            .await;
        let mut pairs = Vec::with_capacity(claimed.len());
        for (user, claim) in claimed {
            match claim {
                Ok(kp) => pairs.push((user, kp)),
                Err(error) => done.left_out.push(LeftOut { user, error }),
            }
        }
        if !pairs.is_empty() {
            self.commit_adds(portal, pairs, &mut done).await?;
        }
        Ok(done)
    }

    /// One KeyPackage of `user`, claimed to add them to `room` (hosted here), with `user` put on the room's
    /// participant list; the error says why there is none.
    async fn claim_for(&self, room: &str, user: &str) -> Result<Vec<u8>, String> {
        let domain = mimi_protocol::uri_domain(user).ok_or_else(|| format!("{user:?} is not a user URI"))?;
        let key_package = if domain == self.provider.domain() {
            match self.provider.claim_key_package(user).await {
                Ok(Some(kp)) => kp,
                Ok(None) => return Err(format!("no KeyPackage left for {user}")),
                Err(e) => return Err(e.to_string()),
            }
        } else {
            let federation = self.federation.get().ok_or_else(|| format!("{domain} is not a configured peer"))?;
            federation
                .claim_remote_key_package(self.member.uri(), user, domain, room)
                .await
                .map_err(|e| e.to_string())?
        };
        self.provider.add_participant(room, user).await.map_err(|e| e.to_string())?;
        Ok(key_package)
    }

    /// Commits the adds of `pairs` (users and their KeyPackages, MLSMessages) from the bridge's leaf: commit and
    /// Welcome go through the hub. Made again with the same KeyPackages while the room moves to a newer epoch
    /// first. Each time, with the group caught up, users who joined meanwhile go to `done.already_members` and
    /// KeyPackages that do not check to `done.left_out`; the users committed go to `done.added`.
    async fn commit_adds(
        &self,
        portal: &PortalId,
        mut pairs: Vec<(String, Vec<u8>)>,
        done: &mut Invited,
    ) -> Result<(), RoomError> {
        for _ in 0..COMMIT_TRIES {
            let slot = self.slot(portal).await?;
            let mut s = slot.lock().await;
            self.catch_up(portal, &mut s).await?;
            if s.group.has_pending_commit() {
                // Caught up, a commit of ours the hub sequenced is merged: this one never reached it (an
                // operation stopped between the two). Left pending, it would refuse every commit of the leaf.
                tracing::info!(portal = %portal, "a commit of the bridge's leaf that the hub never took is dropped");
                s.group.clear_pending_commit().durable().await.map_err(unavailable)?;
            }
            let members: HashSet<Vec<u8>> = s.group.members().into_iter().map(|m| m.identity).collect();
            let (already, wanted): (Vec<_>, Vec<_>) =
                pairs.into_iter().partition(|(user, _)| members.contains(user.as_bytes()));
            done.already_members.extend(already.into_iter().map(|(user, _)| user));
            let kps: Vec<&[u8]> = wanted.iter().map(|(_, kp)| kp.as_slice()).collect();
            let checked = s.group.check_key_packages(&kps);
            let mut kept = Vec::with_capacity(wanted.len());
            for ((user, kp), check) in wanted.into_iter().zip(checked) {
                match check {
                    Ok(identity) if identity == user.as_bytes() => kept.push((user, kp)),
                    Ok(_) => {
                        let error = format!("the KeyPackage claimed for {user} is someone else's");
                        done.left_out.push(LeftOut { user, error });
                    }
                    Err(e) => done.left_out.push(LeftOut { user, error: e.to_string() }),
                }
            }
            pairs = kept;
            if pairs.is_empty() {
                return Ok(());
            }
            let kps: Vec<&[u8]> = pairs.iter().map(|(_, kp)| kp.as_slice()).collect();
            if self.try_commit_adds(&mut s, &kps).await? {
                done.added.extend(pairs.into_iter().map(|(user, _)| user));
                return Ok(());
            }
        }
        Err(RoomError::Unavailable(format!(
            "the room kept moving to newer epochs ({COMMIT_TRIES} tries); invite again"
        )))
    }

    /// One try of [`MlsRooms::commit_adds`]: `false` if the hub had moved to a newer epoch.
    async fn try_commit_adds(&self, s: &mut Slot, kps: &[&[u8]]) -> Result<bool, RoomError> {
        let out = offload(s.group.member_count(), || s.group.add_members(kps)).await;
        let out = out.durable().await.map_err(unavailable)?;
        // The Welcome goes to the hub only with the commit it belongs to (and the GroupInfo of the new epoch).
        let bundle = update_request(&out)?;
        let room = s.room.clone();
        let sent = match self.provider.update(&room, bundle, self.member.uri(), Origin::Portal).await {
            Ok(a) => Ok(Some(a.seq)),
            Err(ProviderError::Refused(Refusal::EpochTooOld { .. })) => Ok(None),
            Err(ProviderError::Refused(r)) => Err(RoomError::Refused(r.to_string())),
            Err(e) => Err(unavailable(e)),
        };
        let welcome_seq = match (&sent, &out.welcome) {
            // The Welcome follows its commit in the log: it is ours too.
            (Ok(Some(seq)), Some(_)) => Some(seq + 1),
            _ => None,
        };
        if !self.complete_own_commit(s, out, sent).await? {
            return Ok(false);
        }
        s.own.extend(welcome_seq);
        Ok(true)
    }
}
