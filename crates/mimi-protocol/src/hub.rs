//! The hub of one room, sans-IO: it is fed submitted MLS messages and answers with a verdict and the
//! [`HubAction`]s the caller performs (persist the log entry first, then fan out).
//!
//! What the hub checks, from public data only (it is not a member and never decrypts):
//! * the message is for this room's group;
//! * an application message is a PrivateMessage of the hub's current epoch (older epoch → `epochTooOld` with the
//!   current one, newer → `notAllowed`), sent by a URI on the participant list;
//! * a handshake message is a PublicMessage (so the hub follows the epoch) of the current epoch; a commit moves
//!   the hub to the next epoch; an external commit (`new_member_commit`) is allowed only if the room is open or
//!   its sender was invited; other external senders are refused;
//! * a Welcome is logged after the commit that made it;
//! * a follower provider speaks only for its own users (the sender URI's domain is the follower's);
//! * an update's GroupInfo is of the room's group and of the epoch its commit makes ([`check_bundle`]).
//!
//! Sequencing: every accepted message gets the next sequence number (1, 2, …, no gaps) and becomes a
//! [`SequencedFanout`] log entry. The same bytes submitted again (a retry) get the *same* sequence number back and
//! produce no new entry and no fan-out. Every follower provider is notified of every entry, the provider the
//! message came from included (its copy of the log then has no gap).

use super::inspect::{Inspected, PublicSender, inspect};
use super::wire::{FanoutMessage, MlsMessageBytes, SequencedFanout, UpdateRequest};
use crate::uri_domain;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeSet, HashMap};

/// Who may join a room by external commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum JoinPolicy {
    /// Anyone who can fetch the GroupInfo (portal rooms by default).
    #[default]
    Open,
    /// Only URIs on the participant list (added by an invite).
    Invite,
}

/// Who handed the message to the hub; it gets no copy back.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Origin {
    /// The bridge's own member of the room (its portal).
    Portal,
    /// A native client of this provider, by user URI.
    Client(String),
    /// A follower provider, by domain.
    Follower(String),
}

/// The durable state of a hub room (written with every log entry).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HubState {
    /// The room URI.
    pub room: String,
    /// The MLS group id.
    pub group_id: Vec<u8>,
    /// The MLS epoch the hub has accepted a commit for.
    pub epoch: u64,
    /// The next sequence number.
    pub next_seq: u64,
    /// Join policy.
    pub policy: JoinPolicy,
    /// Participant URIs.
    pub participants: BTreeSet<String>,
    /// Follower providers (domains) with participants in the room.
    pub followers: BTreeSet<String>,
}

/// Why the hub refused a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The message is for an epoch the hub has moved past (`epochTooOld` / `wrongEpoch`).
    #[error("epoch too old: the room is at epoch {current_epoch}")]
    EpochTooOld {
        /// The hub's epoch.
        current_epoch: u64,
    },
    /// Policy or a nonsensical input (`notAllowed`).
    #[error("not allowed: {0}")]
    NotAllowed(String),
    /// Not an MLS message of an acceptable kind (HTTP 400).
    #[error("malformed: {0}")]
    Malformed(String),
}

/// What the hub asks its IO shell to do, in this order.
#[allow(clippy::large_enum_variant)] // short-lived, one `Append` per accepted message
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HubAction {
    /// Append `entry` to the durable room log together with `state`, under `digest` (for idempotency). Nothing
    /// below may be done before it is durable.
    Append {
        /// The entry.
        entry: SequencedFanout,
        /// Its idempotency key.
        digest: [u8; 32],
        /// The room state after it.
        state: HubState,
    },
    /// Send the entry to a follower (`POST /notify`), retrying until it answers 201.
    Notify {
        /// The follower's domain.
        peer: String,
        /// The sequence number to send.
        seq: u64,
    },
    /// Wake this provider's native clients waiting on the room.
    WakeClients {
        /// The new last sequence number.
        seq: u64,
    },
    /// Hand the entry to the bridge's own member of the room (its portal).
    DeliverPortal {
        /// The sequence number.
        seq: u64,
    },
}

/// The verdict on an accepted message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sequenced {
    /// Its sequence number.
    pub seq: u64,
    /// Hub acceptance time (ms since the UNIX epoch); for a retry, the time of the retry.
    pub timestamp: u64,
    /// True if this was a retry of a message already sequenced.
    pub duplicate: bool,
}

/// The idempotency key of a message: SHA-256 of its MLSMessage bytes.
pub fn digest(m: &MlsMessageBytes) -> [u8; 32] {
    Sha256::digest(m.as_bytes()).into()
}

/// The hub of one room.
#[derive(Debug, Clone)]
pub struct HubRoom {
    state: HubState,
    seen: HashMap<[u8; 32], u64>,
    has_portal: bool,
}

impl HubRoom {
    /// A new room: group `group_id` at `epoch`, first participant `creator`. `has_portal` says whether the
    /// bridge's own member is in the room (it then gets [`HubAction::DeliverPortal`]).
    pub fn new(room: &str, group_id: &[u8], epoch: u64, creator: &str, policy: JoinPolicy, has_portal: bool) -> Self {
        let state = HubState {
            room: room.to_owned(),
            group_id: group_id.to_vec(),
            epoch,
            next_seq: 1,
            policy,
            participants: BTreeSet::from([creator.to_owned()]),
            followers: BTreeSet::new(),
        };
        Self { state, seen: HashMap::new(), has_portal }
    }

    /// A room restored from its durable state and the digests of its log entries (`(digest, seq)`).
    pub fn restore(state: HubState, seen: impl IntoIterator<Item = ([u8; 32], u64)>, has_portal: bool) -> Self {
        Self { state, seen: seen.into_iter().collect(), has_portal }
    }

    /// The room state.
    pub fn state(&self) -> &HubState {
        &self.state
    }

    /// The epoch the hub is at.
    pub fn epoch(&self) -> u64 {
        self.state.epoch
    }

    /// The last sequence number (0 for an empty log).
    pub fn last_seq(&self) -> u64 {
        self.state.next_seq - 1
    }

    /// Puts `uri` on the participant list (an invite); `follower` is its provider's domain if not ours.
    /// Returns the new state, to persist.
    pub fn add_participant(&mut self, uri: &str, follower: Option<&str>) -> HubState {
        self.state.participants.insert(uri.to_owned());
        if let Some(f) = follower {
            self.state.followers.insert(f.to_owned());
        }
        self.state.clone()
    }

    /// Submits `message` from `origin`. `sending_uri` is the sender's URI (from `SubmitMessageRequest`, or the
    /// requester of an update). `now_ms` is the acceptance time.
    pub fn submit(
        &mut self,
        message: MlsMessageBytes,
        sending_uri: &str,
        origin: &Origin,
        now_ms: u64,
    ) -> Result<(Sequenced, Vec<HubAction>), Refusal> {
        let d = digest(&message);
        if let Some(&seq) = self.seen.get(&d) {
            return Ok((Sequenced { seq, timestamp: now_ms, duplicate: true }, Vec::new()));
        }
        let info = inspect(&message).map_err(|e| Refusal::Malformed(e.to_string()))?;
        if let Origin::Follower(f) = origin
            && uri_domain(sending_uri) != Some(f.as_str())
        {
            return Err(Refusal::NotAllowed(format!("{f} cannot speak for {sending_uri:?}")));
        }
        let mut next = self.state.clone();
        match info {
            Inspected::Private { group_id, epoch, application } => {
                self.check_group(&group_id)?;
                if !application {
                    return Err(Refusal::NotAllowed("handshake messages must be PublicMessages".into()));
                }
                self.check_epoch(epoch)?;
                if !self.state.participants.contains(sending_uri) {
                    return Err(Refusal::NotAllowed(format!("{sending_uri} is not a participant")));
                }
            }
            Inspected::Public { group_id, epoch, commit, sender } => {
                self.check_group(&group_id)?;
                self.check_epoch(epoch)?;
                match sender {
                    PublicSender::Member(_) => {}
                    PublicSender::NewMemberCommit | PublicSender::NewMemberProposal => {
                        if self.state.policy == JoinPolicy::Invite && !self.state.participants.contains(sending_uri) {
                            return Err(Refusal::NotAllowed("the room is invite-only".into()));
                        }
                        next.participants.insert(sending_uri.to_owned());
                        if let Origin::Follower(f) = origin {
                            next.followers.insert(f.clone());
                        }
                    }
                    PublicSender::External => {
                        return Err(Refusal::NotAllowed("no external senders are configured".into()));
                    }
                }
                if commit {
                    next.epoch += 1;
                }
            }
            Inspected::Welcome { .. } => {}
            Inspected::GroupInfo { .. } | Inspected::KeyPackage => {
                return Err(Refusal::Malformed("GroupInfo and KeyPackage are not room messages".into()));
            }
        }
        let seq = next.next_seq;
        next.next_seq += 1;
        let entry = SequencedFanout { seq, fanout: FanoutMessage::plain(now_ms, message) };
        let mut actions = vec![HubAction::Append { entry, digest: d, state: next.clone() }];
        // Every follower hears of every entry, the origin's provider included: the draft does not expect it
        // (§5.5) but allows it, and it keeps the follower's copy of the log free of gaps for its other clients.
        for peer in &next.followers {
            actions.push(HubAction::Notify { peer: peer.clone(), seq });
        }
        actions.push(HubAction::WakeClients { seq });
        if self.has_portal && *origin != Origin::Portal {
            actions.push(HubAction::DeliverPortal { seq });
        }
        self.state = next;
        self.seen.insert(d, seq);
        Ok((Sequenced { seq, timestamp: now_ms, duplicate: false }, actions))
    }

    /// Checks what the hub can see of an update before sequencing it (see [`check_bundle`]) and that it is for
    /// this room's group.
    pub fn check_update(&self, req: &UpdateRequest) -> Result<(), Refusal> {
        check_bundle(req)?;
        if let UpdateRequest::Commit { group_info, .. } = req
            && let Ok(Inspected::GroupInfo { group_id, .. }) = inspect(&group_info.0)
        {
            self.check_group(&group_id)?;
        }
        Ok(())
    }

    fn check_group(&self, group_id: &[u8]) -> Result<(), Refusal> {
        if group_id == self.state.group_id {
            Ok(())
        } else {
            Err(Refusal::NotAllowed("message for another group".into()))
        }
    }

    fn check_epoch(&self, epoch: u64) -> Result<(), Refusal> {
        use std::cmp::Ordering::*;
        match epoch.cmp(&self.state.epoch) {
            Equal => Ok(()),
            Less => Err(Refusal::EpochTooOld { current_epoch: self.state.epoch }),
            Greater => Err(Refusal::NotAllowed(format!("epoch {epoch} is ahead of the room ({})", self.state.epoch))),
        }
    }
}

/// Checks an `UpdateRequest` (HandshakeBundle, §5.3) as far as public data allows: a commit's GroupInfo must be
/// of the commit's group and of the epoch the commit leads to (it is what external joiners get next).
pub fn check_bundle(req: &UpdateRequest) -> Result<(), Refusal> {
    let UpdateRequest::Commit { commit, group_info, .. } = req else { return Ok(()) };
    let malformed = |e: super::wire::WireError| Refusal::Malformed(e.to_string());
    let Inspected::Public { group_id, epoch, commit: true, .. } = inspect(commit).map_err(malformed)? else {
        return Err(Refusal::Malformed("proposalOrCommit is not a commit PublicMessage".into()));
    };
    match inspect(&group_info.0).map_err(malformed)? {
        Inspected::GroupInfo { group_id: g, epoch: e } if g == group_id && e == epoch + 1 => Ok(()),
        Inspected::GroupInfo { epoch: e, .. } => Err(Refusal::NotAllowed(format!(
            "the GroupInfo (epoch {e}) is not of the group and epoch the commit makes ({})",
            epoch + 1
        ))),
        _ => Err(Refusal::Malformed("groupInfo is not a GroupInfo".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_group::group;

    const ROOM: &str = "mimi://a.test/r/x";
    const ALICE: &str = "mimi://a.test/u/alice";

    fn bytes(v: Vec<u8>) -> MlsMessageBytes {
        MlsMessageBytes::new(v).expect("framed")
    }

    #[test]
    fn sequences_fans_out_and_answers_retries_with_the_same_number() {
        let (_d, mut g) = group(ROOM.as_bytes());
        let mut hub = HubRoom::new(ROOM, ROOM.as_bytes(), g.epoch(), ALICE, JoinPolicy::Open, true);
        hub.add_participant("mimi://b.test/u/bob", Some("b.test"));
        let m1 = bytes(g.encrypt(b"one").expect("encrypt"));
        let (a, actions) = hub.submit(m1.clone(), ALICE, &Origin::Client(ALICE.into()), 5).expect("accepted");
        assert_eq!((a.seq, a.duplicate), (1, false));
        assert!(
            matches!(&actions[0], HubAction::Append { entry, .. } if entry.seq == 1 && entry.fanout.timestamp == 5)
        );
        assert!(actions.contains(&HubAction::Notify { peer: "b.test".into(), seq: 1 }));
        assert!(actions.contains(&HubAction::WakeClients { seq: 1 }));
        assert!(actions.contains(&HubAction::DeliverPortal { seq: 1 }));
        let (again, actions) = hub.submit(m1, ALICE, &Origin::Client(ALICE.into()), 6).expect("retry");
        assert_eq!((again.seq, again.duplicate), (1, true));
        assert!(actions.is_empty(), "a retry produces no new entry and no fan-out");
        let m2 = bytes(g.encrypt(b"two").expect("encrypt"));
        let from_b = Origin::Follower("b.test".into());
        let r = hub.submit(m2.clone(), ALICE, &from_b, 7);
        assert!(matches!(r, Err(Refusal::NotAllowed(_))), "a follower speaks only for its own users: {r:?}");
        let (a, actions) = hub.submit(m2, "mimi://b.test/u/bob", &from_b, 7).expect("accepted");
        assert_eq!(a.seq, 2);
        assert!(
            actions.contains(&HubAction::Notify { peer: "b.test".into(), seq: 2 }),
            "the origin's provider hears of it too, so its copy of the log has no gap"
        );
        assert_eq!(hub.last_seq(), 2);
    }

    #[test]
    fn refuses_non_participants_other_groups_and_stale_epochs() {
        let (_d, mut g) = group(ROOM.as_bytes());
        let mut hub = HubRoom::new(ROOM, ROOM.as_bytes(), g.epoch(), ALICE, JoinPolicy::Invite, false);
        let m = bytes(g.encrypt(b"x").expect("encrypt"));
        let r = hub.submit(m.clone(), "mimi://a.test/u/mallory", &Origin::Client("m".into()), 1);
        assert!(matches!(r, Err(Refusal::NotAllowed(_))), "{r:?}");
        let mut other = HubRoom::new("mimi://a.test/r/y", b"y", g.epoch(), ALICE, JoinPolicy::Open, false);
        assert!(matches!(other.submit(m, ALICE, &Origin::Portal, 1), Err(Refusal::NotAllowed(_))));
        // A commit moves the hub to the next epoch; a message of the old epoch is then too old.
        let old = bytes(g.encrypt(b"old").expect("encrypt"));
        let commit = g.self_update().expect("commit").commit;
        let (a, _) = hub.submit(bytes(commit), ALICE, &Origin::Portal, 2).expect("commit accepted");
        assert_eq!((a.seq, hub.epoch()), (1, 1));
        assert_eq!(hub.submit(old, ALICE, &Origin::Portal, 3), Err(Refusal::EpochTooOld { current_epoch: 1 }));
        assert_eq!(hub.last_seq(), 1, "refusals leave no entry");
    }

    #[test]
    fn an_update_carries_the_group_info_of_the_epoch_its_commit_makes() {
        use crate::wire::{GroupInfoOption, RatchetTreeOption};
        let (_d, mut g) = group(ROOM.as_bytes());
        let hub = HubRoom::new(ROOM, ROOM.as_bytes(), g.epoch(), ALICE, JoinPolicy::Open, false);
        let old_info = bytes(g.export_group_info(true).expect("group info"));
        let out = g.self_update().expect("commit");
        let bundle = |gi: MlsMessageBytes| UpdateRequest::Commit {
            commit: bytes(out.commit.clone()),
            welcome: None,
            group_info: GroupInfoOption(gi),
            ratchet_tree: RatchetTreeOption::DistributionService,
        };
        let next_info = bytes(out.group_info.clone().expect("OpenMLS makes the next GroupInfo"));
        assert_eq!(hub.check_update(&bundle(next_info)), Ok(()));
        assert!(matches!(hub.check_update(&bundle(old_info)), Err(Refusal::NotAllowed(_))));
        let (_d2, mut other) = group(b"mimi://a.test/r/other");
        let foreign = other.self_update().expect("commit");
        let foreign = UpdateRequest::Commit {
            commit: bytes(foreign.commit),
            welcome: None,
            group_info: GroupInfoOption(bytes(foreign.group_info.expect("group info"))),
            ratchet_tree: RatchetTreeOption::DistributionService,
        };
        assert_eq!(check_bundle(&foreign), Ok(()), "consistent in itself");
        assert!(matches!(hub.check_update(&foreign), Err(Refusal::NotAllowed(_))), "but for another group");
    }

    #[test]
    fn wire_round_trips_and_refuses_truncated_bodies() {
        use crate::wire::*;
        let (_d, mut g) = group(ROOM.as_bytes());
        let m = bytes(g.encrypt(b"x").expect("encrypt"));
        let req = SubmitMessageRequest { app_message: m.clone(), sending_uri: ALICE.into() };
        let enc = req.encode().expect("encode");
        assert_eq!(SubmitMessageRequest::decode(&enc).expect("decode"), req);
        assert!(SubmitMessageRequest::decode(&enc[..enc.len() - 1]).is_err());
        let mut long = enc.clone();
        long.push(0);
        assert_eq!(SubmitMessageRequest::decode(&long), Err(WireError::Trailing(1)));
        for r in [
            SubmitMessageResponse::Accepted { accepted_timestamp: 9 },
            SubmitMessageResponse::NotAllowed,
            SubmitMessageResponse::EpochTooOld { current_epoch: 4 },
        ] {
            assert_eq!(SubmitMessageResponse::decode(&r.encode().expect("encode")).expect("decode"), r);
        }
        let page = LogPage(vec![SequencedFanout { seq: 3, fanout: FanoutMessage::plain(1, m) }]);
        assert_eq!(LogPage::decode(&page.encode().expect("encode")).expect("decode"), page);
        let out = g.self_update().expect("commit");
        let gi = bytes(g.export_group_info(false).expect("group info"));
        let upd = UpdateRequest::Commit {
            commit: bytes(out.commit),
            welcome: None,
            group_info: GroupInfoOption(gi),
            ratchet_tree: RatchetTreeOption::DistributionService,
        };
        assert_eq!(UpdateRequest::decode(&upd.encode().expect("encode")).expect("decode"), upd);
        let resp = UpdateRoomResponse::WrongEpoch { current_epoch: 2, description: "moved".into() };
        assert_eq!(UpdateRoomResponse::decode(&resp.encode().expect("encode")).expect("decode"), resp);
    }
}
