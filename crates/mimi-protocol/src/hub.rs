//! The hub of one room, sans-IO: it is fed submitted MLS messages and answers with a verdict and the
//! [`HubAction`]s the caller performs (persist the log entry first, then fan out).
//!
//! The hub keeps the public state of the room's MLS group ([`PublicState`]: OpenMLS's `PublicGroup`), made at
//! creation from a GroupInfo and ratchet tree, and checks, from public data only (it is not a member and never
//! decrypts):
//! * the message is for this room's group;
//! * an application message is a PrivateMessage of the hub's current epoch (older epoch → `epochTooOld` with the
//!   current one, newer → `notAllowed`), sent by a URI on the participant list;
//! * a handshake message is a PublicMessage of the current epoch (PrivateMessage handshakes are refused) that
//!   OpenMLS's `process_message` accepts against the public state: the sender is a member (its leaf's key
//!   verifies the signature over content bound to the current GroupContext) or an external joiner; a commit's
//!   proposals are valid and it applies to the public tree. An external commit or join proposal is allowed only if
//!   the room is open or the joiner was invited, and only under the URI it is sent with; other external senders
//!   are refused;
//! * a commit changes no remaining member's credential (an update path or Update proposal keeps the identity of
//!   the leaf), and every member it adds passes the room's [`AddRule`] (the provider's: a local user only with a
//!   KeyPackage it handed out for that user);
//! * a Welcome comes only in an update ([`HubRoom::update`]) with the commit it belongs to, for exactly the
//!   KeyPackages that commit adds, and is logged right after it;
//! * an update's GroupInfo is signed by its signer's leaf in the group the commit makes and carries that group's
//!   GroupContext and confirmation tag (what external joiners get next);
//! * a follower provider speaks only for its own users (the sender URI's domain is the follower's).
//!
//! What no hub can check, for want of the epoch secrets: the membership tag, the confirmation tag and the path
//! secrets of a commit. A *member* can therefore still sequence a commit the other members cannot process; that
//! is beyond a hub's reach.
//!
//! The participant list follows the group: an Add or an external join puts the new member's identity on it, a
//! removal takes it off (unless another leaf of that identity remains); invites ([`HubRoom::add_participant`])
//! put invitees on it before they are added.
//!
//! A refusal changes nothing: the state after a message is computed on a copy, and taken only when the message
//! is sequenced. Judging ([`HubView`], a snapshot of the room) and sequencing ([`HubRoom::apply`]) are two steps,
//! so that the IO shell can judge without holding the room — validating a commit of a 10 000-member group takes a
//! tenth of a second; the room takes a judgement only if it has not changed since ([`HubRoom::is_current`]).
//! Each [`HubAction::Append`] carries the public state (if it changed) and the GroupInfo (of an update) that must
//! be durable with its entry, with the room state ([`HubRoom::state`] after the apply), before anything else is
//! done. The room state is shared with the views judged against it and copied only when a handshake, an invite
//! or a policy change changes it: an application message in a 10 000-member room costs no copy of it.
//!
//! Sequencing: every accepted message gets the next sequence number (1, 2, …, no gaps) and becomes a
//! [`SequencedFanout`] log entry. The same bytes submitted again (a retry) get the *same* sequence number back and
//! produce no new entry and no fan-out — as long as the entry is kept (the newest [`RECENT`] keys here, older ones
//! in the IO shell's durable index; after retention removed an entry, the same bytes are judged anew, and a
//! message of a past epoch is refused as too old). Every follower provider is notified of every entry, the provider the
//! message came from included (its copy of the log then has no gap).

use super::inspect::{Inspected, PublicSender, inspect};
use super::public::{PublicState, identity};
use super::wire::{FanoutMessage, MlsMessageBytes, SequencedFanout, UpdateRequest};
use crate::uri_domain;
use openmls::prelude::tls_codec::Deserialize as _;
use openmls::prelude::{MlsMessageIn, ProcessedMessageContent, Proposal, ProtocolMessage, Sender};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

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

/// The durable state of a hub room (the IO shell writes it with every batch of log entries; only handshakes,
/// invites and policy change more than its next sequence number).
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
    /// Participant URIs. (The provider stores them one key each, not in the room's record: absent there.)
    #[serde(default)]
    pub participants: BTreeSet<String>,
    /// Follower providers (domains) with participants in the room.
    pub followers: BTreeSet<String>,
    /// Who created the room (for per-user room quotas; absent in rooms stored before it was kept).
    #[serde(default)]
    pub creator: Option<String>,
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
    /// Append `entry` to the durable room log under `digest` (for idempotency), together with the room state
    /// as [`HubRoom::state`] has it after the [`HubRoom::apply`] that made it (an application message moves only
    /// its next sequence number; a handshake may change more). Nothing below may be done before it is durable.
    Append {
        /// The entry.
        entry: SequencedFanout,
        /// Its idempotency key.
        digest: [u8; 32],
        /// The group's public state after it ([`PublicState::encode`]), if the entry changed it (a handshake).
        public: Option<Vec<u8>>,
        /// For a commit sent in an update: the GroupInfo of the epoch it makes (verified), to keep and serve.
        group_info: Option<MlsMessageBytes>,
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
#[derive(Debug)]
pub struct HubRoom {
    /// Shared with the views judged against it; copied only when it changes while a view holds it.
    state: Arc<HubState>,
    /// The group's public state; `None` only for a room stored before the hub kept it, until a member hands in
    /// the current GroupInfo ([`HubRoom::adopt`]), or while it is in the IO shell's store only.
    public: Option<Arc<PublicState>>,
    /// The public state is in the IO shell's store, not loaded yet ([`HubRoom::with_public_in_store`]): a room at
    /// rest costs no memory for it. Nothing that needs it runs until [`HubRoom::install_public`].
    public_in_store: bool,
    /// Idempotency keys of the most recent entries (at most [`RECENT`]): retries that race their own entry's
    /// write. Older ones are the IO shell's to look up in its durable index before submitting.
    seen: RecentDigests,
    has_portal: bool,
    /// Consulted for every member a commit adds (`None`: anyone with a valid KeyPackage).
    add_rule: Option<Arc<dyn AddRule>>,
    /// Moves on with every change a judgement depends on ([`HubRoom::is_current`]).
    version: u64,
}

/// A hub room as it is at one moment ([`HubRoom::view`]). Messages are judged against it without holding the
/// room — a commit of a 10 000-member group takes a tenth of a second to validate, and the rooms beside it must
/// not wait —, and [`HubRoom::apply`] takes the judgement only if the room has not changed since.
#[derive(Debug, Clone)]
pub struct HubView {
    state: Arc<HubState>,
    public: Option<Arc<PublicState>>,
    /// Taken from a room whose public state was not loaded: nothing is judged against it.
    public_in_store: bool,
    add_rule: Option<Arc<dyn AddRule>>,
    version: u64,
}

/// Messages judged against a [`HubView`], to be sequenced by [`HubRoom::apply`]: one, or a commit and its
/// Welcome. The public state after a handshake is encoded already (it is O(N) for the room's N members).
#[derive(Debug)]
pub struct Judgement {
    entries: Vec<JudgedEntry>,
    /// The participants the entries add and remove (computed with the judging, off the IO shell's lock).
    participants: ParticipantsChange,
    /// The room judged against, and its version then.
    room: String,
    version: u64,
}

/// How a judgement changes a room's participant list.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ParticipantsChange {
    /// URIs put on the list.
    pub added: Vec<String>,
    /// URIs taken off it.
    pub removed: Vec<String>,
}

impl Judgement {
    /// How the entries change the participant list (empty for application messages).
    pub fn participants(&self) -> &ParticipantsChange {
        &self.participants
    }

    /// [`Judgement::participants`], taken out (the judgement then changes no participant for the IO shell).
    pub fn take_participants(&mut self) -> ParticipantsChange {
        std::mem::take(&mut self.participants)
    }

    /// For each entry, in order, the encoded public state after it, if it changes it: what each
    /// [`HubAction::Append`] of [`HubRoom::apply`] will carry, here for the IO shell to prepare its write.
    pub fn public_states(&self) -> impl Iterator<Item = Option<&[u8]>> {
        self.entries.iter().map(|e| e.public.as_ref().map(|(_, bytes)| bytes.as_slice()))
    }
}

/// One message of a [`Judgement`].
#[derive(Debug)]
struct JudgedEntry {
    message: MlsMessageBytes,
    digest: [u8; 32],
    /// The room state after it, if it changes more than the next sequence number.
    state: Option<HubState>,
    /// The public state after it, and its encoding, if it changes it.
    public: Option<(Arc<PublicState>, Vec<u8>)>,
    /// For a commit sent in an update: the GroupInfo of the epoch it makes.
    group_info: Option<MlsMessageBytes>,
}

/// Most idempotency keys a hub keeps in memory ([`HubRoom`]'s `seen`).
pub const RECENT: usize = 4096;

/// The idempotency keys of the most recent entries, oldest dropped first.
#[derive(Debug, Default)]
struct RecentDigests {
    seq_of: HashMap<[u8; 32], u64>,
    order: std::collections::VecDeque<[u8; 32]>,
}

impl RecentDigests {
    fn get(&self, d: &[u8; 32]) -> Option<&u64> {
        self.seq_of.get(d)
    }

    fn contains_key(&self, d: &[u8; 32]) -> bool {
        self.seq_of.contains_key(d)
    }

    fn insert(&mut self, d: [u8; 32], seq: u64) {
        if self.seq_of.insert(d, seq).is_none() {
            self.order.push_back(d);
        }
        while self.order.len() > RECENT {
            if let Some(old) = self.order.pop_front() {
                self.seq_of.remove(&old);
            }
        }
    }

    fn retain_from(&mut self, first: u64) {
        self.seq_of.retain(|_, seq| *seq >= first);
        let seq_of = &self.seq_of;
        self.order.retain(|d| seq_of.contains_key(d));
    }
}

/// Who a commit may add to a room: the provider's record of the KeyPackages it handed out, consulted by the hub
/// for every Add of a commit before sequencing it (a lookup; the hub does no IO of its own).
pub trait AddRule: Send + Sync + std::fmt::Debug {
    /// `Err(why)` if a commit handed in by `origin` may not add `identity` with the KeyPackage whose
    /// KeyPackageRef is `kp_ref`.
    fn check(&self, identity: &str, kp_ref: &[u8], origin: &Origin) -> Result<(), String>;
}

/// What the hub decided about one message before sequencing it: the room state and public state after it.
struct Judged {
    /// `None` for an application message: the room state stays as it is.
    state: Option<HubState>,
    /// The public state after the message, if it changes it (handshakes).
    public: Option<PublicState>,
    /// For a commit: the KeyPackageRefs of the members it adds.
    added: Option<BTreeSet<Vec<u8>>>,
}

fn not_allowed(why: impl Into<String>) -> Refusal {
    Refusal::NotAllowed(why.into())
}

/// The IO shell asked the room to judge before it loaded the public state ([`HubRoom::needs_public`]): its bug,
/// refused rather than judged without the group's state.
fn not_loaded() -> Refusal {
    Refusal::NotAllowed("the hub has not loaded the room's group state yet".into())
}

/// The ProtocolMessage of a PublicMessage or PrivateMessage.
fn protocol_message(m: &MlsMessageBytes) -> Result<ProtocolMessage, Refusal> {
    let msg = MlsMessageIn::tls_deserialize_exact(m.as_bytes()).map_err(|e| Refusal::Malformed(e.to_string()))?;
    msg.try_into_protocol_message().map_err(|_| Refusal::Malformed("not a PublicMessage or PrivateMessage".into()))
}

impl HubRoom {
    /// A new room of the group that `group_info` (an MLSMessage) describes, with its ratchet tree (`ratchet_tree`,
    /// the TLS encoding of `optional<Node> ratchet_tree<V>`, or else the GroupInfo's `ratchet_tree` extension):
    /// OpenMLS checks both, and the GroupInfo's signature. The room starts at the GroupInfo's epoch, with
    /// `creator` — who must be a member of that group — as first participant. `has_portal` says whether the
    /// bridge's own member is in the room (it then gets [`HubAction::DeliverPortal`]).
    pub fn new(
        room: &str,
        group_info: &MlsMessageBytes,
        ratchet_tree: Option<&[u8]>,
        creator: &str,
        policy: JoinPolicy,
        has_portal: bool,
    ) -> Result<Self, Refusal> {
        let public = PublicState::from_group_info(group_info, ratchet_tree)?;
        if !public.identities().contains(creator) {
            return Err(not_allowed(format!("{creator} is not a member of the group it hands in")));
        }
        let state = HubState {
            room: room.to_owned(),
            group_id: public.group_id().to_vec(),
            epoch: public.epoch(),
            next_seq: 1,
            policy,
            participants: BTreeSet::from([creator.to_owned()]),
            followers: BTreeSet::new(),
            creator: Some(creator.to_owned()),
        };
        Ok(Self {
            state: Arc::new(state),
            public: Some(Arc::new(public)),
            public_in_store: false,
            seen: RecentDigests::default(),
            has_portal,
            add_rule: None,
            version: 0,
        })
    }

    /// A room restored from its durable state, its public state ([`HubRoom::public_state`]; `None` for a room
    /// stored before the hub kept it) and digests of its latest log entries (`(digest, seq)`; the last [`RECENT`]
    /// are kept — the IO shell finds older retries in its durable index).
    pub fn restore(
        state: HubState,
        public: Option<&[u8]>,
        seen: impl IntoIterator<Item = ([u8; 32], u64)>,
        has_portal: bool,
    ) -> Result<Self, Refusal> {
        let public = public.map(PublicState::decode).transpose()?.map(Arc::new);
        let mut recent = RecentDigests::default();
        for (d, seq) in seen {
            recent.insert(d, seq);
        }
        Ok(Self {
            state: Arc::new(state),
            public,
            public_in_store: false,
            seen: recent,
            has_portal,
            add_rule: None,
            version: 0,
        })
    }

    /// A room restored without its public state, which the IO shell keeps in its store: it is loaded
    /// ([`HubRoom::install_public`]) before the room judges a message or checks a GroupInfo
    /// ([`HubRoom::needs_public`]).
    pub fn with_public_in_store(mut self) -> Self {
        self.public_in_store = self.public.is_none();
        self
    }

    /// True while the public state is in the IO shell's store only: load it before [`HubRoom::view`],
    /// [`HubRoom::submit`], [`HubRoom::update`] or [`HubRoom::check_group_info`].
    pub fn needs_public(&self) -> bool {
        self.public_in_store
    }

    /// Installs the public state read from the IO shell's store ([`PublicState::decode`] of the bytes
    /// [`HubRoom::public_state`] gave). Ignored unless [`HubRoom::needs_public`].
    pub fn install_public(&mut self, public: PublicState) {
        if self.public_in_store {
            self.public = Some(Arc::new(public));
            self.public_in_store = false;
        }
    }

    /// Drops the decoded public state, which the IO shell's store holds as it is now (the shell stores every
    /// change of it): the room costs what a restored one does until [`HubRoom::install_public`] brings it back.
    /// For a room gone quiet; nothing if the hub does not hold it.
    pub fn release_public(&mut self) {
        if self.public.take().is_some() {
            self.public_in_store = true;
        }
    }

    /// The room with `rule` consulted for every member a commit adds.
    pub fn with_add_rule(mut self, rule: Arc<dyn AddRule>) -> Self {
        self.add_rule = Some(rule);
        self
    }

    /// True if the bridge's own member is in the room.
    pub fn has_portal(&self) -> bool {
        self.has_portal
    }

    /// Forgets the idempotency keys of entries before `first` (removed from the log by retention): a retry of
    /// one of them is judged anew.
    pub fn forget_before(&mut self, first: u64) {
        self.seen.retain_from(first);
    }

    /// The room state.
    pub fn state(&self) -> &HubState {
        &self.state
    }

    /// Changes who may join by external commit (the operator changed a portal's `join`); persist
    /// [`HubRoom::state`] afterwards.
    pub fn set_policy(&mut self, policy: JoinPolicy) {
        Arc::make_mut(&mut self.state).policy = policy;
        self.version += 1;
    }

    /// The group's public state as bytes, to persist (`None` if the hub does not know it).
    pub fn public_state(&self) -> Result<Option<Vec<u8>>, Refusal> {
        self.public.as_deref().map(PublicState::encode).transpose()
    }

    /// True if the hub knows the group's public state (rooms stored before it kept one do not).
    pub fn knows_public_state(&self) -> bool {
        self.public.is_some() || self.public_in_store
    }

    /// The current ratchet tree (TLS encoding), if the hub knows the group's public state.
    pub fn ratchet_tree(&self) -> Option<Vec<u8>> {
        self.public.as_deref().map(PublicState::ratchet_tree)
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
    /// Returns whether that changed the state (then persist [`HubRoom::state`]).
    pub fn add_participant(&mut self, uri: &str, follower: Option<&str>) -> bool {
        let known = self.state.participants.contains(uri) && follower.is_none_or(|f| self.state.followers.contains(f));
        // An invite of a participant changes nothing a judgement depends on.
        if !known {
            let state = Arc::make_mut(&mut self.state);
            state.participants.insert(uri.to_owned());
            if let Some(f) = follower {
                state.followers.insert(f.to_owned());
            }
            self.version += 1;
        }
        !known
    }

    /// For a room stored before the hub kept the group's public state: takes it from `group_info` and
    /// `ratchet_tree` (as [`HubRoom::new`]) handed in by the participant `by`, if they are of the room's group and
    /// current epoch. Returns the public state to persist; `None` if the hub knew it already (nothing changes).
    pub fn adopt(
        &mut self,
        group_info: &MlsMessageBytes,
        ratchet_tree: Option<&[u8]>,
        by: &str,
    ) -> Result<Option<Vec<u8>>, Refusal> {
        if self.knows_public_state() {
            return Ok(None);
        }
        if !self.state.participants.contains(by) {
            return Err(not_allowed(format!("{by} is not a participant")));
        }
        let public = PublicState::from_group_info(group_info, ratchet_tree)?;
        self.check_group(public.group_id())?;
        self.check_epoch(public.epoch())?;
        let bytes = public.encode()?;
        self.public = Some(Arc::new(public));
        self.version += 1;
        Ok(Some(bytes))
    }

    /// Checks a GroupInfo (an MLSMessage) handed in for the room's current epoch: of the room's group and epoch
    /// (an older epoch is [`Refusal::EpochTooOld`]), and — if the hub knows the group's public state — signed by
    /// the member at its signer leaf, with the hub's GroupContext and confirmation tag.
    pub fn check_group_info(&self, group_info: &MlsMessageBytes) -> Result<(), Refusal> {
        let Ok(Inspected::GroupInfo { group_id, epoch }) = inspect(group_info) else {
            return Err(Refusal::Malformed("not a GroupInfo".into()));
        };
        if group_id != self.state.group_id {
            return Err(not_allowed("GroupInfo of another group"));
        }
        if epoch != self.state.epoch {
            return Err(Refusal::EpochTooOld { current_epoch: self.state.epoch });
        }
        match &self.public {
            Some(p) => p.check_group_info(group_info),
            None if self.public_in_store => Err(not_loaded()),
            None => Ok(()),
        }
    }

    /// Submits `message` from `origin`. `sending_uri` is the sender's URI (from `SubmitMessageRequest`, or the
    /// requester of an update). `now_ms` is the acceptance time. A Welcome is refused: it travels in an update,
    /// with its commit ([`HubRoom::update`]). The same as [`HubRoom::retry`], then [`HubView::judge_submit`] on
    /// [`HubRoom::view`], then [`HubRoom::apply`], in one step.
    pub fn submit(
        &mut self,
        message: MlsMessageBytes,
        sending_uri: &str,
        origin: &Origin,
        now_ms: u64,
    ) -> Result<(Sequenced, Vec<HubAction>), Refusal> {
        if let Some(seq) = self.retry(&message) {
            return Ok((Sequenced { seq, timestamp: now_ms, duplicate: true }, Vec::new()));
        }
        let judged = self.view().judge_submit(message, sending_uri, origin)?;
        self.apply(judged, origin, now_ms)
    }

    /// Applies an update (`HandshakeBundle`, §5.3) from `origin`, as [`HubView::judge_update`] judges it, in one
    /// step (as [`HubRoom::submit`]). Returns the verdict on the commit (or on the first proposal).
    pub fn update(
        &mut self,
        req: &UpdateRequest,
        sending_uri: &str,
        origin: &Origin,
        now_ms: u64,
    ) -> Result<(Sequenced, Vec<HubAction>), Refusal> {
        if let Some(seq) = self.retry(req.message()) {
            return Ok((Sequenced { seq, timestamp: now_ms, duplicate: true }, Vec::new()));
        }
        let judged = self.view().judge_update(req, sending_uri, origin)?;
        self.apply(judged, origin, now_ms)
    }

    /// The sequence number of `message` (of an update: its commit, [`UpdateRequest::message`]) if it is one of
    /// the newest entries: a retry, answered with that number and not judged again.
    pub fn retry(&self, message: &MlsMessageBytes) -> Option<u64> {
        self.seen.get(&digest(message)).copied()
    }

    /// The room as it is now, to judge messages against ([`HubView`]).
    pub fn view(&self) -> HubView {
        HubView {
            state: self.state.clone(),
            public: self.public.clone(),
            public_in_store: self.public_in_store,
            add_rule: self.add_rule.clone(),
            version: self.version,
        }
    }

    /// True if the room has not changed since the view `judged` was judged against: [`HubRoom::apply`] may take
    /// it. Otherwise judge the message again.
    pub fn is_current(&self, judged: &Judgement) -> bool {
        judged.version == self.version && judged.room == self.state.room
    }

    /// Sequences what a view of this room judged ([`HubView::judge_submit`], [`HubView::judge_update`]): one
    /// [`HubAction::Append`] per entry, then the fan-out; the room takes the last state an entry changed and
    /// moves past the entries. A message
    /// sequenced meanwhile (a retry that raced its first copy) gets its sequence number back and nothing is
    /// appended. Refused if the room changed since the view ([`HubRoom::is_current`]).
    pub fn apply(
        &mut self,
        judged: Judgement,
        origin: &Origin,
        now_ms: u64,
    ) -> Result<(Sequenced, Vec<HubAction>), Refusal> {
        if !self.is_current(&judged) {
            return Err(not_allowed("the room changed while the message was judged: judge it again"));
        }
        let entries = judged.entries;
        if let Some(&seq) = entries.first().and_then(|e| self.seen.get(&e.digest)) {
            return Ok((Sequenced { seq, timestamp: now_ms, duplicate: true }, Vec::new()));
        }
        if entries.iter().skip(1).any(|e| self.seen.contains_key(&e.digest)) {
            return Err(not_allowed("this Welcome was sequenced already"));
        }
        self.sequence(entries, origin, now_ms)
    }

    /// Sequences judged entries, in order: one [`HubAction::Append`] each (numbered from the room's next
    /// sequence number), then the fan-out. The room moves on to the last state an entry changed, and past the
    /// entries.
    fn sequence(
        &mut self,
        entries: Vec<JudgedEntry>,
        origin: &Origin,
        now_ms: u64,
    ) -> Result<(Sequenced, Vec<HubAction>), Refusal> {
        let mut actions = Vec::new();
        let mut seqs = Vec::new();
        let mut last_public = None;
        let mut changed: Option<Arc<HubState>> = None;
        let mut next = self.state.next_seq;
        // A changed state is the room's once all the entries are appended (a commit's, past its Welcome).
        let end = next + entries.len() as u64;
        for JudgedEntry { message, digest: d, state, public, group_info } in entries {
            let seq = next;
            next += 1;
            let state = state.map(|mut s| {
                s.next_seq = end;
                Arc::new(s)
            });
            if state.is_some() {
                changed.clone_from(&state);
            }
            let (public, public_bytes) = public.unzip();
            let entry = SequencedFanout { seq, fanout: FanoutMessage::plain(now_ms, message) };
            actions.push(HubAction::Append { entry, digest: d, public: public_bytes, group_info });
            seqs.push((seq, d));
            if public.is_some() {
                last_public = public;
            }
        }
        let (Some(&(first, _)), Some(&(last, _))) = (seqs.first(), seqs.last()) else {
            return Err(not_allowed("nothing to sequence"));
        };
        match changed {
            Some(s) => self.state = s,
            None => Arc::make_mut(&mut self.state).next_seq = next,
        }
        // Every follower hears of every entry, the origin's provider included: the draft does not expect it
        // (§5.5) but allows it, and it keeps the follower's copy of the log free of gaps for its other clients.
        for &(seq, _) in &seqs {
            for peer in &self.state.followers {
                actions.push(HubAction::Notify { peer: peer.clone(), seq });
            }
        }
        actions.push(HubAction::WakeClients { seq: last });
        if self.has_portal && *origin != Origin::Portal {
            actions.push(HubAction::DeliverPortal { seq: last });
        }
        if let Some(p) = last_public {
            self.public = Some(p);
            self.public_in_store = false;
        }
        for &(seq, d) in &seqs {
            self.seen.insert(d, seq);
        }
        self.version += 1;
        Ok((Sequenced { seq: first, timestamp: now_ms, duplicate: false }, actions))
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
        check_group(&self.state, group_id)
    }

    fn check_epoch(&self, epoch: u64) -> Result<(), Refusal> {
        check_epoch(&self.state, epoch)
    }
}

/// The message is for the room's group.
fn check_group(state: &HubState, group_id: &[u8]) -> Result<(), Refusal> {
    if group_id == state.group_id { Ok(()) } else { Err(Refusal::NotAllowed("message for another group".into())) }
}

/// The message is of the room's epoch: an older one is [`Refusal::EpochTooOld`].
fn check_epoch(state: &HubState, epoch: u64) -> Result<(), Refusal> {
    use std::cmp::Ordering::*;
    match epoch.cmp(&state.epoch) {
        Equal => Ok(()),
        Less => Err(Refusal::EpochTooOld { current_epoch: state.epoch }),
        Greater => Err(Refusal::NotAllowed(format!("epoch {epoch} is ahead of the room ({})", state.epoch))),
    }
}

/// [`check_epoch`] for a message sent as `sending_uri`: the room's epoch is told only to those who may know it —
/// participants, and anyone for an open room (whose GroupInfo anyone reads). Others learn only that the epoch is
/// not the room's, so a probe of an invite-only room tells nothing.
fn check_epoch_for(state: &HubState, epoch: u64, sending_uri: &str) -> Result<(), Refusal> {
    let may_know = state.policy == JoinPolicy::Open || state.participants.contains(sending_uri);
    match check_epoch(state, epoch) {
        Err(_) if !may_know => Err(not_allowed(format!("{sending_uri} is not a participant"))),
        other => other,
    }
}

impl HubView {
    /// How many members the room's group has (the size of the tree a handshake is validated against), as far as
    /// the hub knows: else its participants.
    pub fn members(&self) -> usize {
        self.public.as_ref().map_or(self.state.participants.len(), |p| p.members())
    }

    /// Judges `message` from `origin` as [`HubRoom::submit`] would sequence it, changing nothing.
    pub fn judge_submit(
        &self,
        message: MlsMessageBytes,
        sending_uri: &str,
        origin: &Origin,
    ) -> Result<Judgement, Refusal> {
        let d = digest(&message);
        let judged = self.judge(&message, sending_uri, origin)?;
        let entry = JudgedEntry::new(message, d, judged.state, judged.public, None)?;
        Ok(self.judgement(vec![entry]))
    }

    /// Judges an update (`HandshakeBundle`, §5.3) from `origin`, changing nothing. Proposals: the first is judged
    /// as by [`HubView::judge_submit`]. A commit: judged as there, then its GroupInfo must verify against its
    /// signer's leaf in the group the commit makes and carry that group's GroupContext and confirmation tag, and
    /// its Welcome (if any) must be for exactly the KeyPackages the commit adds. The commit and its Welcome become
    /// two consecutive entries (one [`HubAction::Append`] each, to be made durable together); the commit's
    /// carries the GroupInfo.
    pub fn judge_update(&self, req: &UpdateRequest, sending_uri: &str, origin: &Origin) -> Result<Judgement, Refusal> {
        let UpdateRequest::Commit { commit, welcome, group_info, .. } = req else {
            return self.judge_submit(req.message().clone(), sending_uri, origin);
        };
        check_bundle(req)?;
        let judged = self.judge(commit, sending_uri, origin)?;
        let after = judged.public.as_ref().ok_or_else(|| not_allowed("not a commit"))?;
        after.check_group_info(&group_info.0)?;
        let mut entries = vec![JudgedEntry::new(
            commit.clone(),
            digest(commit),
            judged.state,
            judged.public,
            Some(group_info.0.clone()),
        )?];
        if let Some(w) = welcome {
            let Ok(Inspected::Welcome { new_members }) = inspect(w) else {
                return Err(Refusal::Malformed("the welcome is not a Welcome".into()));
            };
            let refs: BTreeSet<Vec<u8>> = new_members.iter().cloned().collect();
            if refs.is_empty() || refs.len() != new_members.len() || judged.added.as_ref() != Some(&refs) {
                return Err(not_allowed("the Welcome is not for the members its commit adds"));
            }
            // The Welcome changes nothing of the room but its length.
            entries.push(JudgedEntry::new(w.clone(), digest(w), None, None, None)?);
        }
        Ok(self.judgement(entries))
    }

    /// The judgement of `entries` against this view, with the change of participants the last state an entry
    /// changed makes.
    fn judgement(&self, entries: Vec<JudgedEntry>) -> Judgement {
        let participants = match entries.iter().rev().find_map(|e| e.state.as_ref()) {
            Some(after) => ParticipantsChange {
                added: after.participants.difference(&self.state.participants).cloned().collect(),
                removed: self.state.participants.difference(&after.participants).cloned().collect(),
            },
            None => ParticipantsChange::default(),
        };
        Judgement { entries, participants, room: self.state.room.clone(), version: self.version }
    }

    /// Decides on one message (not a Welcome): what the room and its public state become. Changes nothing.
    fn judge(&self, message: &MlsMessageBytes, sending_uri: &str, origin: &Origin) -> Result<Judged, Refusal> {
        if self.public_in_store {
            return Err(not_loaded());
        }
        let info = inspect(message).map_err(|e| Refusal::Malformed(e.to_string()))?;
        if let Origin::Follower(f) = origin
            && uri_domain(sending_uri) != Some(f.as_str())
        {
            return Err(not_allowed(format!("{f} cannot speak for {sending_uri:?}")));
        }
        // Strangers to an invite-only room learn nothing of it, whatever they send (invited joiners are on the
        // list already).
        if self.state.policy == JoinPolicy::Invite && !self.state.participants.contains(sending_uri) {
            return Err(not_allowed(format!("{sending_uri} is not a participant")));
        }
        match info {
            Inspected::Private { group_id, epoch, application } => {
                self.check_group(&group_id)?;
                if !application {
                    return Err(not_allowed("handshake messages must be PublicMessages"));
                }
                self.check_epoch_for(epoch, sending_uri)?;
                if !self.state.participants.contains(sending_uri) {
                    return Err(not_allowed(format!("{sending_uri} is not a participant")));
                }
                Ok(Judged { state: None, public: None, added: None })
            }
            Inspected::Public { group_id, epoch, sender, .. } => {
                self.check_group(&group_id)?;
                let mut next = (*self.state).clone();
                self.check_epoch_for(epoch, sending_uri)?;
                if sender == PublicSender::External {
                    return Err(not_allowed("no external senders are configured"));
                }
                let public = self.public.as_ref().ok_or_else(|| {
                    not_allowed("the hub does not know the room's group yet: a member must hand in its GroupInfo")
                })?;
                let processed = public.process(protocol_message(message)?)?;
                let mut joiner = None;
                if matches!(sender, PublicSender::NewMemberCommit | PublicSender::NewMemberProposal) {
                    let who = identity(processed.credential())
                        .ok_or_else(|| not_allowed("the joiner's credential is not a basic credential"))?;
                    if who != sending_uri {
                        return Err(not_allowed(format!("{sending_uri} cannot join as {who}")));
                    }
                    if self.state.policy == JoinPolicy::Invite && !self.state.participants.contains(&who) {
                        return Err(not_allowed("the room is invite-only"));
                    }
                    joiner = Some(who.clone());
                    next.participants.insert(who);
                    if let Origin::Follower(f) = origin {
                        next.followers.insert(f.clone());
                    }
                }
                match processed.into_content() {
                    ProcessedMessageContent::StagedCommitMessage(staged) => {
                        let adds = PublicState::adds(&staged)?;
                        let mut joined = Vec::with_capacity(adds.len());
                        for (who, kp_ref) in &adds {
                            let who = who.as_deref().ok_or_else(|| {
                                not_allowed("an added member's credential is not a UTF-8 basic credential")
                            })?;
                            if let Some(rule) = &self.add_rule {
                                rule.check(who, kp_ref, origin).map_err(not_allowed)?;
                            }
                            joined.push(who.to_owned());
                        }
                        let added: BTreeSet<Vec<u8>> = adds.into_iter().map(|(_, r)| r).collect();
                        let removed_leaves = PublicState::removed_leaves(&staged);
                        let removed: Vec<String> =
                            removed_leaves.iter().filter_map(|&leaf| public.identity_at(leaf)).collect();
                        // An external commit may remove one member only: the joiner's own old leaf (RFC 9420
                        // §12.4.3.2, a resync). OpenMLS does not check whose leaf it is.
                        if let Some(joiner) = &joiner {
                            let own = removed_leaves.len() == removed.len() && removed.iter().all(|id| id == joiner);
                            if removed_leaves.len() > 1 || !own {
                                return Err(not_allowed(format!(
                                    "{joiner} joining by external commit may remove its own old leaf only"
                                )));
                            }
                        }
                        let after = public.with_commit(*staged)?;
                        for (leaf, who) in public.leaf_identities() {
                            if !removed_leaves.contains(&leaf) && after.identity_at(leaf) != who {
                                return Err(not_allowed(format!(
                                    "the commit changes the credential of the member at leaf {} ({})",
                                    leaf.u32(),
                                    who.as_deref().unwrap_or("?")
                                )));
                            }
                        }
                        let members = after.identities();
                        for gone in removed.iter().filter(|id| !members.contains(*id)) {
                            next.participants.remove(gone);
                        }
                        next.participants.extend(joined);
                        next.epoch = after.epoch();
                        Ok(Judged { state: Some(next), public: Some(after), added: Some(added) })
                    }
                    ProcessedMessageContent::ProposalMessage(p) => {
                        // A proposal sent on its own is judged as the commit that would include it: whoever
                        // commits it later (the bridge's own member, say) does not launder it.
                        match p.proposal() {
                            Proposal::Add(a) => {
                                let (who, kp_ref) = PublicState::add_of(a.key_package())?;
                                let who = who.ok_or_else(|| {
                                    not_allowed("an added member's credential is not a UTF-8 basic credential")
                                })?;
                                if let Some(rule) = &self.add_rule {
                                    rule.check(&who, &kp_ref, origin).map_err(not_allowed)?;
                                }
                            }
                            Proposal::Update(u) => {
                                let leaf = match p.sender() {
                                    Sender::Member(leaf) => *leaf,
                                    _ => return Err(not_allowed("an Update proposal from a non-member")),
                                };
                                if public.identity_at(leaf) != identity(u.leaf_node().credential()) {
                                    return Err(not_allowed(format!(
                                        "the proposal changes the credential of the member at leaf {}",
                                        leaf.u32()
                                    )));
                                }
                            }
                            _ => {}
                        }
                        Ok(Judged { state: Some(next), public: Some(public.with_proposal(*p)?), added: None })
                    }
                    ProcessedMessageContent::ExternalJoinProposalMessage(p) => {
                        Ok(Judged { state: Some(next), public: Some(public.with_proposal(*p)?), added: None })
                    }
                    _ => Err(not_allowed("not a handshake message")),
                }
            }
            Inspected::Welcome { .. } => {
                Err(not_allowed("a Welcome is accepted only in an update, with the commit it belongs to"))
            }
            Inspected::GroupInfo { .. } | Inspected::KeyPackage => {
                Err(Refusal::Malformed("GroupInfo and KeyPackage are not room messages".into()))
            }
        }
    }

    fn check_group(&self, group_id: &[u8]) -> Result<(), Refusal> {
        check_group(&self.state, group_id)
    }

    fn check_epoch_for(&self, epoch: u64, sending_uri: &str) -> Result<(), Refusal> {
        check_epoch_for(&self.state, epoch, sending_uri)
    }
}

impl JudgedEntry {
    fn new(
        message: MlsMessageBytes,
        digest: [u8; 32],
        state: Option<HubState>,
        public: Option<PublicState>,
        group_info: Option<MlsMessageBytes>,
    ) -> Result<Self, Refusal> {
        let public = match public {
            Some(p) => {
                let bytes = p.encode()?;
                Some((Arc::new(p), bytes))
            }
            None => None,
        };
        Ok(Self { message, digest, state, public, group_info })
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
    use crate::test_group::{TestClient, TestGroup, forged_commit, group};
    use crate::wire::{GroupInfoOption, RatchetTreeOption};

    const ROOM: &str = "mimi://a.test/r/x";
    const ALICE: &str = "mimi://a.test/u/alice";
    const BOB: &str = "mimi://a.test/u/bob";
    const CAROL: &str = "mimi://b.test/u/carol";
    const MALLORY: &str = "mimi://a.test/u/mallory";

    fn bytes(v: Vec<u8>) -> MlsMessageBytes {
        MlsMessageBytes::new(v).expect("framed")
    }

    /// The hub room of `g`'s group, created from its GroupInfo (with the ratchet tree).
    fn hub_of(g: &TestGroup, room: &str, policy: JoinPolicy, has_portal: bool) -> HubRoom {
        let gi = bytes(g.export_group_info(true).expect("group info"));
        HubRoom::new(room, &gi, None, ALICE, policy, has_portal).expect("room")
    }

    #[test]
    fn sequences_fans_out_and_answers_retries_with_the_same_number() {
        let (_d, mut g) = group(ROOM.as_bytes());
        let mut hub = hub_of(&g, ROOM, JoinPolicy::Open, true);
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

    /// A judgement is taken only by the room as it was judged against: a change meanwhile (an invite, a policy,
    /// another entry) refuses it, and judged again it is sequenced; two judgements of one message sequence it once.
    #[test]
    fn a_judgement_is_applied_only_to_the_room_it_was_judged_against() {
        let (_d, mut g) = group(ROOM.as_bytes());
        let mut hub = hub_of(&g, ROOM, JoinPolicy::Open, false);
        let from = Origin::Client(ALICE.into());
        let m1 = bytes(g.encrypt(b"one").expect("encrypt"));
        let judged = hub.view().judge_submit(m1.clone(), ALICE, &from).expect("judged");
        let twice = hub.view().judge_submit(m1.clone(), ALICE, &from).expect("judged");
        hub.add_participant("mimi://a.test/u/carol", None);
        assert!(!hub.is_current(&judged), "an invite changes the room");
        let r = hub.apply(judged, &from, 1);
        assert!(matches!(r, Err(Refusal::NotAllowed(_))), "{r:?}");
        assert_eq!(hub.last_seq(), 0, "a refused judgement appends nothing");
        let again = hub.view().judge_submit(m1.clone(), ALICE, &from).expect("judged again");
        let (a, actions) = hub.apply(again, &from, 2).expect("sequenced");
        assert_eq!((a.seq, a.duplicate), (1, false));
        assert!(matches!(&actions[0], HubAction::Append { entry, .. } if entry.seq == 1));
        assert!(!hub.is_current(&twice), "an entry changes the room");
        let copy = hub.view().judge_submit(m1.clone(), ALICE, &from).expect("judged");
        let (a, actions) = hub.apply(copy, &from, 3).expect("a copy judged before the first was applied");
        assert_eq!((a.seq, a.duplicate), (1, true));
        assert!(actions.is_empty(), "sequenced once");
        assert_eq!(hub.retry(&m1), Some(1));
    }

    /// A released public state is gone until it is installed again: nothing is judged meanwhile, and the
    /// encoding the hub gave to store judges as before once installed.
    #[test]
    fn a_released_public_state_judges_nothing_until_installed_again() {
        let (_d, mut g) = group(ROOM.as_bytes());
        let mut hub = hub_of(&g, ROOM, JoinPolicy::Open, false);
        let stored = hub.public_state().expect("encode").expect("known");
        assert!(!hub.needs_public());
        hub.release_public();
        assert!(hub.needs_public() && hub.knows_public_state());
        assert_eq!(hub.ratchet_tree(), None);
        let m = bytes(g.encrypt(b"x").expect("encrypt"));
        let r = hub.submit(m.clone(), ALICE, &Origin::Portal, 1);
        assert!(matches!(r, Err(Refusal::NotAllowed(_))), "{r:?}");
        assert_eq!(hub.last_seq(), 0);
        hub.install_public(PublicState::decode(&stored).expect("decode"));
        assert!(!hub.needs_public());
        assert!(hub.ratchet_tree().is_some());
        hub.submit(m, ALICE, &Origin::Portal, 2).expect("sequenced");
        hub.release_public();
        hub.release_public();
        assert!(hub.needs_public(), "released twice, it is still in the store");
    }

    #[test]
    fn refuses_non_participants_other_groups_and_stale_epochs() {
        let (_d, mut g) = group(ROOM.as_bytes());
        let mut hub = hub_of(&g, ROOM, JoinPolicy::Invite, false);
        let m = bytes(g.encrypt(b"x").expect("encrypt"));
        let r = hub.submit(m.clone(), "mimi://a.test/u/mallory", &Origin::Client("m".into()), 1);
        assert!(matches!(r, Err(Refusal::NotAllowed(_))), "{r:?}");
        let (_d2, y) = group(b"y");
        let mut other = hub_of(&y, "mimi://a.test/r/y", JoinPolicy::Open, false);
        assert!(matches!(other.submit(m, ALICE, &Origin::Portal, 1), Err(Refusal::NotAllowed(_))));
        // A commit moves the hub to the next epoch; a message of the old epoch is then too old.
        let old = bytes(g.encrypt(b"old").expect("encrypt"));
        let commit = g.self_update().expect("commit").commit;
        let (a, _) = hub.submit(bytes(commit), ALICE, &Origin::Portal, 2).expect("commit accepted");
        assert_eq!((a.seq, hub.epoch()), (1, 1));
        assert_eq!(hub.submit(old.clone(), ALICE, &Origin::Portal, 3), Err(Refusal::EpochTooOld { current_epoch: 1 }));
        assert_eq!(hub.last_seq(), 1, "refusals leave no entry");
        // Who is no participant of this invite-only room does not learn its epoch, whatever epoch they try.
        let mallory = Origin::Client(MALLORY.into());
        let current = bytes(forged_commit(ROOM.as_bytes(), 1));
        for probe in
            [old, bytes(forged_commit(ROOM.as_bytes(), 1000)), bytes(forged_commit(ROOM.as_bytes(), 0)), current]
        {
            match hub.submit(probe, MALLORY, &mallory, 4) {
                Err(Refusal::NotAllowed(why)) => assert!(!why.contains('1'), "the epoch leaks: {why}"),
                other => panic!("{other:?}"),
            }
        }
        let probe = bytes(forged_commit(ROOM.as_bytes(), 1000));
        match hub.submit(probe, ALICE, &Origin::Client(ALICE.into()), 4) {
            Err(Refusal::NotAllowed(why)) => assert!(why.contains("ahead of the room (1)"), "a participant may: {why}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_update_carries_the_group_info_of_the_epoch_its_commit_makes() {
        use crate::wire::{GroupInfoOption, RatchetTreeOption};
        let (_d, mut g) = group(ROOM.as_bytes());
        let hub = hub_of(&g, ROOM, JoinPolicy::Open, false);
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

    /// What a refusal must leave untouched: room state, public state, last sequence number.
    fn snapshot(hub: &HubRoom) -> (HubState, Option<Vec<u8>>, u64) {
        (hub.state().clone(), hub.public_state().expect("encodes"), hub.last_seq())
    }

    fn commit_bundle(c: &crate::test_group::TestCommit) -> UpdateRequest {
        UpdateRequest::Commit {
            commit: bytes(c.commit.clone()),
            welcome: c.welcome.clone().map(bytes),
            group_info: GroupInfoOption(bytes(c.group_info.clone().expect("group info"))),
            ratchet_tree: RatchetTreeOption::DistributionService,
        }
    }

    /// Alice's room with Bob added (through an update: commit, Welcome, GroupInfo) and joined.
    fn room_with_bob() -> (TestGroup, TestGroup, HubRoom) {
        let (_d, mut alice) = group(ROOM.as_bytes());
        let mut hub = hub_of(&alice, ROOM, JoinPolicy::Open, false);
        let bob = TestClient::new(BOB);
        let add = alice.add(&[bob.key_package()]);
        let (a, actions) = hub.update(&commit_bundle(&add), ALICE, &Origin::Client(ALICE.into()), 1).expect("add");
        alice.merge();
        assert_eq!((a.seq, hub.last_seq(), hub.epoch()), (1, 2, 1), "the commit, then its Welcome");
        let appended: Vec<_> = actions
            .iter()
            .filter_map(|a| match a {
                HubAction::Append { entry, public, group_info, .. } => {
                    Some((entry.seq, public.is_some(), group_info.is_some()))
                }
                _ => None,
            })
            .collect();
        assert_eq!(appended, vec![(1, true, true), (2, false, false)]);
        assert!(hub.state().participants.contains(BOB), "an Add makes a participant");
        let bob = bob.join_from_welcome(add.welcome.as_ref().expect("welcome"));
        (alice, bob, hub)
    }

    #[test]
    fn a_forged_commit_is_refused_and_changes_nothing() {
        let (_d, mut alice) = group(ROOM.as_bytes());
        let mut hub = hub_of(&alice, ROOM, JoinPolicy::Open, false);
        let before = snapshot(&hub);
        let mallory = Origin::Client(MALLORY.into());
        // Issue #15: member 0, random signature and tags, the room's epoch.
        let forged = bytes(forged_commit(ROOM.as_bytes(), hub.epoch()));
        let r = hub.submit(forged, MALLORY, &mallory, 1);
        assert!(matches!(r, Err(Refusal::NotAllowed(_))), "{r:?}");
        // A genuine commit whose signature was tampered with. (Its last 131 bytes are signature<V> (65),
        // confirmation_tag<V> (33) and membership_tag<V> (33); a hub can check only the first.)
        let mut real = alice.self_update().expect("commit").commit;
        let n = real.len();
        real[n - 100] ^= 1;
        let r = hub.submit(bytes(real), ALICE, &Origin::Client(ALICE.into()), 1);
        assert!(matches!(r, Err(Refusal::NotAllowed(_))), "{r:?}");
        assert_eq!(snapshot(&hub), before, "a refusal changes nothing");
        // The room keeps working: a message and a commit of its member.
        alice.clear();
        let m = bytes(alice.encrypt(b"still here").expect("encrypt"));
        hub.submit(m, ALICE, &Origin::Client(ALICE.into()), 2).expect("message");
        let c = alice.self_update().expect("commit");
        hub.update(&commit_bundle(&c), ALICE, &Origin::Client(ALICE.into()), 3).expect("commit");
        assert_eq!(hub.epoch(), 1);
    }

    #[test]
    fn a_non_member_s_commits_and_proposals_are_refused() {
        let (_d, alice) = group(ROOM.as_bytes());
        let mut hub = hub_of(&alice, ROOM, JoinPolicy::Open, false);
        // Mallory's own group with the room's group id and epoch: well-formed, signed — by no member.
        let mut mallory = TestClient::new(MALLORY).create(ROOM.as_bytes());
        let before = snapshot(&hub);
        let from = Origin::Client(MALLORY.into());
        let c = mallory.self_update().expect("commit");
        assert!(matches!(hub.update(&commit_bundle(&c), MALLORY, &from, 1), Err(Refusal::NotAllowed(_))));
        assert!(matches!(hub.submit(bytes(c.commit), MALLORY, &from, 1), Err(Refusal::NotAllowed(_))));
        mallory.clear();
        let p = bytes(mallory.propose_remove(0));
        assert!(matches!(hub.submit(p, MALLORY, &from, 1), Err(Refusal::NotAllowed(_))));
        assert_eq!(snapshot(&hub), before);
    }

    #[test]
    fn the_hub_keeps_only_the_newest_idempotency_keys() {
        let key = |i: u64| {
            let mut d = [0u8; 32];
            d[..8].copy_from_slice(&i.to_be_bytes());
            d
        };
        let mut recent = RecentDigests::default();
        let n = RECENT as u64 + 10;
        for i in 1..=n {
            recent.insert(key(i), i);
        }
        assert_eq!((recent.seq_of.len(), recent.order.len()), (RECENT, RECENT));
        assert!(!recent.contains_key(&key(10)) && recent.get(&key(11)) == Some(&11));
        recent.retain_from(n);
        assert_eq!((recent.seq_of.len(), recent.order.len()), (1, 1));
    }

    #[test]
    fn a_commit_may_not_change_a_member_s_credential() {
        let (_d, mut alice) = group(ROOM.as_bytes());
        let mut hub = hub_of(&alice, ROOM, JoinPolicy::Open, false);
        let before = snapshot(&hub);
        let c = alice.self_update_as(MALLORY).expect("commit");
        let r = hub.update(&commit_bundle(&c), ALICE, &Origin::Client(ALICE.into()), 1);
        match r {
            Err(Refusal::NotAllowed(why)) => assert!(why.contains("changes the credential"), "{why}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(snapshot(&hub), before);
        alice.clear();
        let c = alice.self_update().expect("commit");
        hub.update(&commit_bundle(&c), ALICE, &Origin::Client(ALICE.into()), 2).expect("same identity, new keys");
    }

    /// An [`AddRule`] that lets `BOB` in only with the KeyPackage `allowed`.
    #[derive(Debug)]
    struct OnlyKeyPackage(Vec<u8>);

    impl AddRule for OnlyKeyPackage {
        fn check(&self, identity: &str, kp_ref: &[u8], _origin: &Origin) -> Result<(), String> {
            if identity != BOB || kp_ref == self.0.as_slice() {
                Ok(())
            } else {
                Err(format!("{identity}'s KeyPackage was not handed out"))
            }
        }
    }

    fn kp_ref(kp: &[u8]) -> Vec<u8> {
        use openmls::prelude::{KeyPackageIn, MlsMessageBodyIn, ProtocolVersion};
        use openmls_rust_crypto::RustCrypto;
        let MlsMessageBodyIn::KeyPackage(k) = MlsMessageIn::tls_deserialize_exact(kp).expect("kp").extract() else {
            panic!("not a KeyPackage")
        };
        let k: KeyPackageIn = k;
        let crypto = RustCrypto::default();
        let k = k.validate(&crypto, ProtocolVersion::Mls10).expect("valid");
        k.hash_ref(&crypto).expect("ref").as_slice().to_vec()
    }

    #[test]
    fn adds_pass_the_room_s_add_rule() {
        let (_d, mut alice) = group(ROOM.as_bytes());
        let bob = TestClient::new(BOB);
        let (handed_out, forged) = (bob.key_package(), TestClient::new(BOB).key_package());
        let mut hub =
            hub_of(&alice, ROOM, JoinPolicy::Open, false).with_add_rule(Arc::new(OnlyKeyPackage(kp_ref(&handed_out))));
        let before = snapshot(&hub);
        let from = Origin::Client(ALICE.into());
        let add = alice.add(&[forged]);
        match hub.update(&commit_bundle(&add), ALICE, &from, 1) {
            Err(Refusal::NotAllowed(why)) => assert!(why.contains("not handed out"), "{why}"),
            other => panic!("an Add under a KeyPackage not handed out: {other:?}"),
        }
        assert_eq!(snapshot(&hub), before);
        alice.clear();
        let add = alice.add(&[handed_out]);
        hub.update(&commit_bundle(&add), ALICE, &from, 2).expect("the KeyPackage handed out");
        assert!(hub.state().participants.contains(BOB));
    }

    #[test]
    fn proposals_sent_alone_pass_the_same_rules_as_commits() {
        let (_alice, mut bob, hub) = room_with_bob();
        let handed_out = TestClient::new(CAROL).key_package();
        let mut hub = hub.with_add_rule(Arc::new(OnlyKeyPackage(kp_ref(&handed_out))));
        let before = snapshot(&hub);
        let from = Origin::Client(BOB.into());
        // An Add of bob's own making for a name the rule guards; then a rename of bob's leaf.
        let forged = bob.propose_add(&TestClient::new(BOB).key_package());
        match hub.submit(bytes(forged), BOB, &from, 2) {
            Err(Refusal::NotAllowed(why)) => assert!(why.contains("not handed out"), "{why}"),
            other => panic!("an Add proposal past the rule: {other:?}"),
        }
        bob.clear_proposals();
        let rename = bob.propose_update_as(MALLORY);
        match hub.submit(bytes(rename), BOB, &from, 2) {
            Err(Refusal::NotAllowed(why)) => assert!(why.contains("changes the credential"), "{why}"),
            other => panic!("a renaming Update proposal: {other:?}"),
        }
        assert_eq!(snapshot(&hub), before, "refusals change nothing");
        bob.clear_proposals();
        let fine = bob.propose_add(&handed_out);
        hub.submit(bytes(fine), BOB, &from, 3).expect("an Add the rule allows");
    }

    #[test]
    fn a_member_s_handshakes_are_applied_and_removals_remove() {
        let (mut alice, mut bob, mut hub) = room_with_bob();
        // Bob's proposal, then Bob's commit (he is member 1).
        assert_eq!(bob.own_index(), 1);
        let p = bob.propose_remove(0);
        let (a, actions) = hub.submit(bytes(p.clone()), BOB, &Origin::Client(BOB.into()), 2).expect("proposal");
        assert!(matches!(&actions[0], HubAction::Append { public: Some(_), .. }), "a proposal changes the state");
        assert_eq!((a.seq, hub.epoch()), (3, 1));
        alice.process(&p);
        bob.clear_proposals();
        alice.clear_proposals();
        let c = bob.self_update().expect("commit");
        hub.update(&commit_bundle(&c), BOB, &Origin::Client(BOB.into()), 3).expect("bob's commit");
        bob.merge();
        alice.process(&c.commit);
        assert_eq!(hub.epoch(), 2);
        // Alice removes Bob: he is no participant any more, his messages are refused.
        let m = bytes(bob.encrypt(b"before").expect("encrypt"));
        hub.submit(m, BOB, &Origin::Client(BOB.into()), 4).expect("a participant's message");
        let r = alice.remove(&[1]);
        hub.update(&commit_bundle(&r), ALICE, &Origin::Client(ALICE.into()), 5).expect("removal");
        assert!(!hub.state().participants.contains(BOB), "removals remove");
        let stale = bytes(bob.encrypt(b"after").expect("encrypt"));
        assert!(hub.submit(stale, BOB, &Origin::Client(BOB.into()), 6).is_err());
    }

    #[test]
    fn welcomes_travel_only_with_the_commit_that_adds_their_members() {
        let (_d, mut alice) = group(ROOM.as_bytes());
        let mut hub = hub_of(&alice, ROOM, JoinPolicy::Open, false);
        let from = Origin::Client(ALICE.into());
        let add_bob = alice.add(&[TestClient::new(BOB).key_package()]);
        let before = snapshot(&hub);
        let welcome = bytes(add_bob.welcome.clone().expect("welcome"));
        let r = hub.submit(welcome, ALICE, &from, 1);
        assert!(matches!(r, Err(Refusal::NotAllowed(_))), "a Welcome without its commit: {r:?}");
        // The same commit with a Welcome for someone else.
        let (_d2, mut other) = group(ROOM.as_bytes());
        let add_carol = other.add(&[TestClient::new(CAROL).key_package()]);
        let mut mismatched = commit_bundle(&add_bob);
        if let UpdateRequest::Commit { welcome, .. } = &mut mismatched {
            *welcome = add_carol.welcome.clone().map(bytes);
        }
        let r = hub.update(&mismatched, ALICE, &from, 1);
        assert!(matches!(r, Err(Refusal::NotAllowed(_))), "a mismatched Welcome: {r:?}");
        // A GroupInfo of the right group and epoch that is not the group the commit makes.
        let mut wrong_info = commit_bundle(&add_bob);
        if let UpdateRequest::Commit { group_info, .. } = &mut wrong_info {
            *group_info = GroupInfoOption(bytes(add_carol.group_info.clone().expect("group info")));
        }
        let r = hub.update(&wrong_info, ALICE, &from, 1);
        assert!(matches!(r, Err(Refusal::NotAllowed(_))), "a foreign GroupInfo: {r:?}");
        assert_eq!(snapshot(&hub), before, "refusals change nothing");
        hub.update(&commit_bundle(&add_bob), ALICE, &from, 1).expect("the real bundle");
        assert_eq!(hub.last_seq(), 2);
    }

    #[test]
    fn external_joiners_follow_the_join_policy_and_join_as_themselves() {
        let (_d, alice) = group(ROOM.as_bytes());
        let gi = alice.export_group_info(true).expect("group info");
        let mut invite_only = hub_of(&alice, ROOM, JoinPolicy::Invite, false);
        let (_, join) = TestClient::new(CAROL).join_by_external_commit(&gi);
        let from_b = Origin::Follower("b.test".into());
        let r = invite_only.update(&commit_bundle(&join), CAROL, &from_b, 1);
        assert!(matches!(r, Err(Refusal::NotAllowed(_))), "not invited: {r:?}");
        invite_only.add_participant(CAROL, Some("b.test"));
        invite_only.update(&commit_bundle(&join), CAROL, &from_b, 1).expect("invited");
        let mut open = hub_of(&alice, ROOM, JoinPolicy::Open, false);
        let (_, join) = TestClient::new(CAROL).join_by_external_commit(&gi);
        let r = open.update(&commit_bundle(&join), "mimi://b.test/u/dave", &from_b, 1);
        assert!(matches!(r, Err(Refusal::NotAllowed(_))), "joining under another name: {r:?}");
        open.update(&commit_bundle(&join), CAROL, &from_b, 1).expect("open room");
        assert!(open.state().participants.contains(CAROL));
        assert!(open.state().followers.contains("b.test"));
    }

    #[test]
    fn a_room_restores_its_public_state_and_adopts_one_only_from_a_participant() {
        let (mut alice, _bob, hub) = room_with_bob();
        let public = hub.public_state().expect("encodes");
        let mut restored = HubRoom::restore(hub.state().clone(), public.as_deref(), [], false).expect("restored");
        let c = alice.self_update().expect("commit");
        restored.update(&commit_bundle(&c), ALICE, &Origin::Client(ALICE.into()), 1).expect("validated after restore");
        // A room stored before the hub kept public state: handshakes wait for a participant's GroupInfo.
        let mut legacy = HubRoom::restore(hub.state().clone(), None, [], false).expect("restored");
        let r = legacy.update(&commit_bundle(&c), ALICE, &Origin::Client(ALICE.into()), 1);
        assert!(matches!(r, Err(Refusal::NotAllowed(_))), "{r:?}");
        let gi = bytes(alice.export_group_info(true).expect("group info"));
        assert!(legacy.adopt(&gi, None, MALLORY).is_err(), "not a participant");
        assert!(legacy.adopt(&gi, None, ALICE).expect("adopted").is_some());
        legacy.update(&commit_bundle(&c), ALICE, &Origin::Client(ALICE.into()), 1).expect("validated now");
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
