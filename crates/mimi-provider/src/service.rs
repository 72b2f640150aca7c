//! [`Provider`]: the in-process shell around the hub and follower state machines — the store, the wake-ups of
//! waiting clients, the queue of notifies for followers. It does no network IO itself: the
//! [federation procedures](crate::federation) ask [`Provider::route`] where a request goes, forward what belongs
//! to another hub, drain [`Provider::take_outbound`], and call [`Provider::accept_entries`] for notifies and log
//! pages they receive.
//!
//! A room is followed ([`Provider::follow`]) when one of our KeyPackages is handed out for it, or — tentatively,
//! until the hub accepts it ([`Provider::follow_for_update`]) — when one of our users sends it an update (an
//! external commit); from then on its hub notifies us of every entry, and we catch up from its log after a gap or
//! a restart. On open, the hub announces each room's last entry to its followers again (notifies queued
//! by the previous run are not kept).
//!
//! Every accepted message is durable (log entry, idempotency index and room state in one batch) before anyone
//! hears of it. A room's GroupInfo only moves forward: one is kept only if it is of the hub's current epoch (checked
//! and written in one step), and the copy served is never replaced by an older epoch's.

use super::log::{HUB_LOG, Records, RoomRecord, UserRecord, write};
use crate::add_rule::LocalAdds;
use crate::key_packages;
use mimi_protocol::follower::{FollowerAction, FollowerRoom};
use mimi_protocol::hub::{HubAction, HubRoom, HubView, JoinPolicy, Judgement, Origin, Refusal, Sequenced};
use mimi_protocol::inspect::{Inspected, inspect};
use mimi_protocol::public::PublicState;
use mimi_protocol::wire::{
    GroupInfoCode, GroupInfoRatchetTreeTbe, GroupInfoRequest, GroupInfoResponse, HubSigner, MlsMessageBytes,
    RatchetTreeOption, SequencedFanout, UpdateRequest, WireMessage, wire_format,
};
use mimi_store::chunks::{self, Chunked};
use mimi_store::{Batch, Store, StoreError};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, watch};

/// Why a provider operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// No such room here (HTTP 404).
    #[error("unknown room {0}")]
    UnknownRoom(String),
    /// We follow this room; submissions go to its hub.
    #[error("room {room} is hosted by {hub}")]
    NotHub {
        /// The room.
        room: String,
        /// The hub's domain.
        hub: String,
    },
    /// The hub refused the message.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// A user or room already exists with other parameters.
    #[error("{0} already exists")]
    Exists(String),
    /// No such user.
    #[error("unknown user {0}")]
    UnknownUser(String),
    /// Bad input (HTTP 400).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Over a per-user quota (HTTP 429).
    #[error("{0}")]
    Quota(String),
    /// The entries asked for were removed by retention (HTTP 410): the reader must rejoin the room.
    #[error(
        "the log of {room} before entry {first} was removed by retention ([retention] hub_log_days): rejoin the \
         room (external commit from its GroupInfo) to go on"
    )]
    Pruned {
        /// The room.
        room: String,
        /// The first entry kept.
        first: u64,
    },
    /// The room changed every time the message was judged (HTTP 503): send it again.
    #[error("{0} changed {JUDGED_AGAIN} times while a message was judged: send it again")]
    Busy(String),
}

/// A notify to send to a follower: the log entry `seq` of `room`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerNotify {
    /// The follower's domain.
    pub peer: String,
    /// The room.
    pub room: String,
    /// The entry.
    pub seq: u64,
}

/// Where requests about a room go, as far as this provider knows ([`Provider::route`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoomRoute {
    /// We host it.
    Hub,
    /// We follow it; its hub is this domain.
    Follower {
        /// The hub's domain.
        hub: String,
    },
    /// We neither host nor follow it; it is named after this other provider's domain (its hub, if it exists).
    Remote {
        /// The domain of the room's URI.
        domain: String,
    },
}

enum Role {
    Hub(HubRoom),
    Follower { state: FollowerRoom, hub: String },
}

struct Room {
    role: Role,
    last: watch::Sender<u64>,
    /// The GroupInfo served to external joiners, with its epoch (the one in the store); replaced only by one of
    /// the same or a newer epoch.
    group_info: Option<(u64, Vec<u8>)>,
    /// For a room followed only for our clients' updates still on their way to the hub: how many, and whether the
    /// hub accepted one ([`Provider::follow_for_update`]).
    tentative: Option<Tentative>,
    /// The newest log entries (at most [`TAIL`], contiguous, in order), so that long-polling clients woken by a
    /// new entry read it from memory instead of each opening a store transaction. Entries are added in sequence
    /// order when they are appended; readers never see past `last`, which moves only once they are durable.
    tail: VecDeque<SequencedFanout>,
    /// Bytes of the messages in `tail`.
    tail_bytes: usize,
    /// The first log entry retention kept (1 until it removes any).
    first: u64,
    /// The chunks the hub's public state is stored in (`log.rs`: `'Q'`; none while it is stored whole).
    public_chunks: Vec<[u8; 32]>,
    /// Held while a message of the room is judged and sequenced ([`Provider::sequence`]): one at a time per room,
    /// in the order they come, while other rooms go on.
    turn: Arc<tokio::sync::Mutex<()>>,
}

/// Most log entries kept in memory per room.
const TAIL: usize = 1024;
/// How many times a message is judged again because its room changed meanwhile (by invites or policy changes:
/// messages take their turn) before it is refused.
const JUDGED_AGAIN: usize = 8;
/// Most bytes of messages kept in memory per room (a tail of 1 MB messages would otherwise hold a gigabyte).
const TAIL_BYTES: usize = 4 << 20;

/// A follow that holds only while our clients' updates to the room's hub are in flight.
#[derive(Debug, Clone, Copy, Default)]
struct Tentative {
    in_flight: usize,
    accepted: bool,
    /// The lowest place in the log the hub gave one of them: where the copy starts ([`FollowerRoom::joined`]).
    first: Option<u64>,
}

/// True if the hub of `room` holds its public state in the store only ([`HubRoom::needs_public`]).
fn needs_public(rooms: &HashMap<String, Room>, room: &str) -> bool {
    rooms.get(room).is_some_and(needs_public_in)
}

/// True if `r` is a hub room whose public state is in the store only.
fn needs_public_in(r: &Room) -> bool {
    matches!(&r.role, Role::Hub(h) if h.needs_public())
}

/// Reads of a room's public state a write may overtake before [`Provider::load_public`] gives up.
const LOAD_PUBLIC_TRIES: usize = 8;

/// How many of `rooms` we host were created by `uri`.
fn created_by(rooms: &HashMap<String, Room>, uri: &str) -> usize {
    rooms.values().filter(|r| matches!(&r.role, Role::Hub(h) if h.state().creator.as_deref() == Some(uri))).count()
}

/// The epoch of a GroupInfo MLSMessage, if it is one.
fn group_info_epoch(group_info: &[u8]) -> Option<u64> {
    let m = MlsMessageBytes::new(group_info.to_vec()).ok()?;
    match inspect(&m) {
        Ok(Inspected::GroupInfo { epoch, .. }) => Some(epoch),
        _ => None,
    }
}

impl Room {
    fn new(role: Role, last: watch::Sender<u64>) -> Self {
        Self {
            role,
            last,
            group_info: None,
            tentative: None,
            tail: VecDeque::new(),
            tail_bytes: 0,
            first: 1,
            public_chunks: Vec::new(),
            turn: Arc::default(),
        }
    }

    /// Serves `group_info` of `epoch`, now durable, from now on unless the one served is of a newer epoch.
    fn install_group_info(&mut self, epoch: u64, group_info: Vec<u8>) {
        if self.group_info.as_ref().is_some_and(|(e, _)| *e > epoch) {
            return;
        }
        self.group_info = Some((epoch, group_info));
    }

    /// Remembers a newly appended entry; the tail restarts if it would not be contiguous, and keeps at most
    /// [`TAIL`] entries and [`TAIL_BYTES`] bytes.
    fn remember(&mut self, entry: &SequencedFanout) {
        if self.tail.back().is_some_and(|e| e.seq + 1 != entry.seq) {
            self.tail.clear();
            self.tail_bytes = 0;
        }
        let size = entry.fanout.message.as_bytes().len();
        while self.tail.len() == TAIL || (!self.tail.is_empty() && self.tail_bytes + size > TAIL_BYTES) {
            if let Some(e) = self.tail.pop_front() {
                self.tail_bytes -= e.fanout.message.as_bytes().len();
            }
        }
        self.tail_bytes += size;
        self.tail.push_back(entry.clone());
    }

    /// Entries `after+1 ..= up_to` (at most `max`) if the tail holds them all.
    fn tail_entries(&self, after: u64, up_to: u64, max: usize) -> Option<Vec<SequencedFanout>> {
        let first = self.tail.front()?.seq;
        if after + 1 < first {
            return None;
        }
        let skip = usize::try_from(after + 1 - first).ok()?;
        let out: Vec<_> = self.tail.iter().skip(skip).take_while(|e| e.seq <= up_to).take(max).cloned().collect();
        let want = usize::try_from(up_to - after).unwrap_or(usize::MAX).min(max);
        (out.len() == want).then_some(out)
    }
}

struct Inner {
    domain: String,
    store: Store,
    rooms: Mutex<HashMap<String, Room>>,
    outbound: mpsc::UnboundedSender<PeerNotify>,
    outbound_rx: Mutex<Option<mpsc::UnboundedReceiver<PeerNotify>>>,
    /// Serialises follower appends per process (they are rare and short).
    follower_lock: tokio::sync::Mutex<()>,
    /// Serialises KeyPackage uploads and claims (read, decide, write), so that two claims never hand out the same
    /// one-time KeyPackage and two uploads never pass the cap together.
    key_package_lock: tokio::sync::Mutex<()>,
    /// The key `GroupInfoResponse`s are signed with (loaded or made on first use).
    hub_signer: tokio::sync::OnceCell<HubSigner>,
    /// The name of every room whose log grew ([`Provider::appended`]).
    appended: broadcast::Sender<Arc<str>>,
}

/// Room names [`Provider::appended`] holds for a slow receiver before it lags.
const APPENDED_BACKLOG: usize = 1024;

/// What the hub knows of a portal's room ([`Provider::portal_room`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortalRoom {
    /// No room of that name here, or one the hub cannot judge handshakes in yet (stored before the hub kept
    /// public state), or one someone else made: the portal's group has to be opened to create or adopt it.
    Open,
    /// A room `creator` made, with its public state.
    Ready {
        /// The last sequence number of its log.
        last: u64,
        /// Whether the GroupInfo served to external joiners is stored and of the hub's current epoch.
        group_info_current: bool,
    },
}

/// The MIMI provider of this daemon: hub of its rooms, follower of others, home of native users.
#[derive(Clone)]
pub struct Provider {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider").field("domain", &self.inner.domain).finish_non_exhaustive()
    }
}

/// Milliseconds since the UNIX epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

pub use mimi_protocol::uri_domain;

mod retention;

impl Provider {
    /// Opens the provider of `domain` on `store`, restoring its rooms.
    pub fn open(domain: &str, store: Store) -> Result<Self, ProviderError> {
        let (outbound, rx) = mpsc::unbounded_channel();
        let recs = Records(&store);
        let mut rooms = HashMap::new();
        for rec in recs.rooms()? {
            match rec {
                RoomRecord::Hub(mut state) => {
                    let name = state.room.clone();
                    // Participants have keys of their own (schema 5); a record of before holds them itself.
                    state.participants.extend(recs.participants(&name)?);
                    let last = state.next_seq - 1;
                    // The bridge's own member is in the rooms it created (rooms stored before creators were kept:
                    // every room of our domain, as before).
                    let bridge = format!("mimi://{domain}/u/bridge");
                    let has_portal = match &state.creator {
                        Some(c) => *c == bridge,
                        None => uri_domain(&name) == Some(domain),
                    };
                    // Followers may have missed notifies the previous run had queued: announce the last entry
                    // (a follower that has it ignores it; one that lacks it fetches the log).
                    if last > 0 {
                        for peer in &state.followers {
                            let _ = outbound.send(PeerNotify { peer: peer.clone(), room: name.clone(), seq: last });
                        }
                    }
                    let group_info = recs.group_info(&name)?;
                    // The public state stays in the store until a message or a GroupInfo needs it
                    // ([`Provider::load_public`]): idle rooms cost no memory or start-up time for it.
                    let public_chunks = recs.public_manifest(&name)?;
                    // No idempotency keys are read: retries of older entries are found in the store ([`Provider::retry_of`]).
                    let mut hub = HubRoom::restore(state, None, [], has_portal)
                        .map_err(|e| StoreError::Corrupt { tree: HUB_LOG.to_owned(), message: format!("{name}: {e}") })?
                        .with_add_rule(Arc::new(LocalAdds::new(store.clone(), domain)));
                    if public_chunks.is_some() {
                        hub = hub.with_public_in_store();
                    }
                    let (tx, _) = watch::channel(last);
                    let mut r = Room::new(Role::Hub(hub), tx);
                    r.group_info = group_info.map(|g| (group_info_epoch(&g).unwrap_or(0), g));
                    r.first = recs.first(&name)?;
                    r.public_chunks = public_chunks.unwrap_or_default();
                    rooms.insert(name, r);
                }
                RoomRecord::Follower { room, hub } => {
                    let first = recs.first(&room)?;
                    let last = recs.last_seq(&room, first.saturating_sub(1))?;
                    let (tx, _) = watch::channel(last);
                    let state = FollowerRoom::new(&room, last);
                    let mut r = Room::new(Role::Follower { state, hub }, tx);
                    r.first = first;
                    rooms.insert(room, r);
                }
            }
        }
        Ok(Self {
            inner: Arc::new(Inner {
                domain: domain.to_owned(),
                store,
                rooms: Mutex::new(rooms),
                outbound,
                outbound_rx: Mutex::new(Some(rx)),
                follower_lock: tokio::sync::Mutex::new(()),
                key_package_lock: tokio::sync::Mutex::new(()),
                hub_signer: tokio::sync::OnceCell::new(),
                appended: broadcast::channel(APPENDED_BACKLOG).0,
            }),
        })
    }

    /// This provider's domain.
    pub fn domain(&self) -> &str {
        &self.inner.domain
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The queue of notifies for followers (once; [`Federation::run_notifier`](crate::Federation::run_notifier) owns it).
    pub fn take_outbound(&self) -> Option<mpsc::UnboundedReceiver<PeerNotify>> {
        lock(&self.inner.outbound_rx).take()
    }

    /// Creates a room we host (idempotent) from the GroupInfo (MLSMessage) of its MLS group and its ratchet tree
    /// (`ratchet_tree`, TLS `optional<Node> ratchet_tree<V>`; else the GroupInfo's `ratchet_tree` extension): the
    /// hub keeps the group's public state, checked by OpenMLS, and validates every handshake against it. The room
    /// starts at the GroupInfo's epoch with first participant `creator`, who must be a member of the group; the
    /// GroupInfo is served to external joiners. `has_portal`: the bridge's own member is in it.
    ///
    /// For a room that exists with this group: nothing changes — except for a room stored before the hub kept
    /// public state, which takes it from here if `creator` is a participant and the GroupInfo is of the current
    /// epoch ([`HubRoom::adopt`]; if not, the room stays as it is and its handshakes keep being refused).
    pub async fn create_room(
        &self,
        room: &str,
        group_info: &MlsMessageBytes,
        ratchet_tree: Option<&[u8]>,
        creator: &str,
        policy: JoinPolicy,
        has_portal: bool,
    ) -> Result<(), ProviderError> {
        self.create(room, group_info, ratchet_tree, creator, policy, has_portal, None).await
    }

    /// [`Provider::create_room`] for a native user's room: refused ([`ProviderError::Quota`]) if `creator` made
    /// `max_rooms` rooms already — counted and created under one lock, so parallel requests cannot both pass.
    pub async fn create_user_room(
        &self,
        room: &str,
        group_info: &MlsMessageBytes,
        ratchet_tree: Option<&[u8]>,
        creator: &str,
        policy: JoinPolicy,
        max_rooms: usize,
    ) -> Result<(), ProviderError> {
        self.create(room, group_info, ratchet_tree, creator, policy, false, Some(max_rooms)).await
    }

    #[allow(clippy::too_many_arguments)]
    async fn create(
        &self,
        room: &str,
        group_info: &MlsMessageBytes,
        ratchet_tree: Option<&[u8]>,
        creator: &str,
        policy: JoinPolicy,
        has_portal: bool,
        max_rooms: Option<usize>,
    ) -> Result<(), ProviderError> {
        let Ok(Inspected::GroupInfo { group_id, epoch }) = inspect(group_info) else {
            return Err(ProviderError::BadRequest("not a GroupInfo".into()));
        };
        let durable = {
            let mut rooms = lock(&self.inner.rooms);
            if let Some(r) = rooms.get_mut(room) {
                let adopted = match &mut r.role {
                    // Best effort: the room exists, and works for application messages, either way.
                    // Creating again is a no-op only for its creator (for rooms stored before creators were kept:
                    // a participant): a room someone else made first — a user squatting a portal's name — is never
                    // adopted.
                    Role::Hub(h)
                        if h.state().group_id == group_id
                            && match &h.state().creator {
                                Some(c) => c == creator,
                                None => h.state().participants.contains(creator),
                            } =>
                    {
                        h.adopt(group_info, ratchet_tree, creator).unwrap_or_else(|e| {
                            tracing::warn!(room, error = %e, "the room's group state is still unknown");
                            None
                        })
                    }
                    _ => return Err(ProviderError::Exists(room.to_owned())),
                };
                let Some(public) = adopted else { return Ok(()) };
                let mut b = Batch::new();
                let chunked = chunks::split(&public);
                if let Some(r) = rooms.get_mut(room) {
                    write::public_chunks(&mut b, room, &public, &chunked, &r.public_chunks);
                    r.public_chunks = chunked.hashes;
                }
                self.inner.store.commit_later(b)
            } else {
                if let Some(max) = max_rooms
                    && created_by(&rooms, creator) >= max
                {
                    return Err(ProviderError::Quota(format!("{creator} created {max} rooms already")));
                }
                let hub = HubRoom::new(room, group_info, ratchet_tree, creator, policy, has_portal)?
                    .with_add_rule(Arc::new(LocalAdds::new(self.inner.store.clone(), &self.inner.domain)));
                let mut b = Batch::new();
                write::hub(&mut b, hub.state())?;
                write::participants(&mut b, room, &hub.state().participants, []);
                let mut public_chunks = Vec::new();
                if let Some(public) = hub.public_state()? {
                    let chunked = chunks::split(&public);
                    write::public_chunks(&mut b, room, &public, &chunked, &[]);
                    public_chunks = chunked.hashes;
                }
                write::group_info(&mut b, room, group_info.as_bytes());
                let (tx, _) = watch::channel(0);
                let mut r = Room::new(Role::Hub(hub), tx);
                r.public_chunks = public_chunks;
                r.group_info = Some((epoch, group_info.as_bytes().to_vec()));
                rooms.insert(room.to_owned(), r);
                self.inner.store.commit_later(b)
            }
        };
        durable.await.unwrap_or(Err(StoreError::Closed))?;
        Ok(())
    }

    /// Starts following `room` hosted by `hub` (idempotent; a follow for updates in flight becomes a lasting one).
    pub async fn follow(&self, room: &str, hub: &str) -> Result<(), ProviderError> {
        self.follow_as(room, hub, false).await
    }

    /// [`Provider::follow`], or with `for_update` [`Provider::follow_for_update`].
    async fn follow_as(&self, room: &str, hub: &str, for_update: bool) -> Result<(), ProviderError> {
        let durable = {
            let mut rooms = lock(&self.inner.rooms);
            if let Some(r) = rooms.get_mut(room) {
                let lost = matches!(&r.role, Role::Follower { state, .. } if state.is_gone() && !state.is_joining());
                match (&mut r.tentative, for_update) {
                    (Some(t), true) => t.in_flight += 1,
                    // A join into a copy that was lost: the copy starts over at the join's place
                    // ([`FollowerRoom::restart`]).
                    (t @ None, true) if lost => {
                        if let Role::Follower { state, .. } = &mut r.role {
                            state.restart();
                        }
                        *t = Some(Tentative { in_flight: 1, accepted: false, first: None });
                    }
                    (t, false) => {
                        // A lasting follow (an invitation): the copy is every entry's, not only a join's; what it
                        // holds is fetched for at the next notify.
                        *t = None;
                        if let Role::Follower { state, .. } = &mut r.role {
                            state.joined(None);
                        }
                    }
                    (None, true) => {}
                }
                return Ok(());
            }
            let mut b = Batch::new();
            write::room(&mut b, &RoomRecord::Follower { room: room.to_owned(), hub: hub.to_owned() })?;
            let (tx, _) = watch::channel(0);
            let state = if for_update { FollowerRoom::joining(room) } else { FollowerRoom::new(room, 0) };
            let mut r = Room::new(Role::Follower { state, hub: hub.to_owned() }, tx);
            r.tentative = for_update.then_some(Tentative { in_flight: 1, accepted: false, first: None });
            rooms.insert(room.to_owned(), r);
            self.inner.store.commit_later(b)
        };
        durable.await.unwrap_or(Err(StoreError::Closed))?;
        Ok(())
    }

    /// The rooms we follow, with their hubs.
    pub fn followed(&self) -> Vec<(String, String)> {
        lock(&self.inner.rooms)
            .iter()
            .filter_map(|(k, r)| match &r.role {
                Role::Follower { hub, .. } => Some((k.clone(), hub.clone())),
                Role::Hub(_) => None,
            })
            .collect()
    }

    /// True if we host `room`.
    pub fn is_hub(&self, room: &str) -> Result<bool, ProviderError> {
        let rooms = lock(&self.inner.rooms);
        let r = rooms.get(room).ok_or_else(|| ProviderError::UnknownRoom(room.to_owned()))?;
        Ok(matches!(r.role, Role::Hub(_)))
    }

    /// The hub's domain of a followed room (`None` if we are its hub).
    pub fn hub_of(&self, room: &str) -> Result<Option<String>, ProviderError> {
        let rooms = lock(&self.inner.rooms);
        let r = rooms.get(room).ok_or_else(|| ProviderError::UnknownRoom(room.to_owned()))?;
        Ok(match &r.role {
            Role::Hub(_) => None,
            Role::Follower { hub, .. } => Some(hub.clone()),
        })
    }

    /// Where requests about `room` go: we host it, we follow it, or it is another provider's. An unknown room
    /// of our own domain is [`ProviderError::UnknownRoom`].
    pub fn route(&self, room: &str) -> Result<RoomRoute, ProviderError> {
        let rooms = lock(&self.inner.rooms);
        match rooms.get(room).map(|r| &r.role) {
            Some(Role::Hub(_)) => Ok(RoomRoute::Hub),
            Some(Role::Follower { hub, .. }) => Ok(RoomRoute::Follower { hub: hub.clone() }),
            None => match uri_domain(room) {
                Some(d) if d != self.inner.domain && room.len() > "mimi://".len() + d.len() + 1 => {
                    Ok(RoomRoute::Remote { domain: d.to_owned() })
                }
                _ => Err(ProviderError::UnknownRoom(room.to_owned())),
            },
        }
    }

    /// True if provider `domain` follows `room`, which we host (it has participants there and may read the log).
    pub fn has_follower(&self, room: &str, domain: &str) -> Result<bool, ProviderError> {
        let rooms = lock(&self.inner.rooms);
        match rooms.get(room).map(|r| &r.role) {
            Some(Role::Hub(h)) => Ok(h.state().followers.contains(domain)),
            Some(Role::Follower { hub, .. }) => Err(ProviderError::NotHub { room: room.to_owned(), hub: hub.clone() }),
            None => Err(ProviderError::UnknownRoom(room.to_owned())),
        }
    }

    /// True if native user `uri` may read `room` (its log and GroupInfo): anyone for an open room we host, only
    /// its participants for an invite-only one. A room we follow has its participant list at its hub: our copy of
    /// its log is readable by those of our users the hub let in — whose join through us it sequenced, or for whom
    /// it sequenced a Welcome ([`Provider::add_reader`]).
    pub fn may_read(&self, room: &str, uri: &str) -> Result<bool, ProviderError> {
        {
            let rooms = lock(&self.inner.rooms);
            match rooms.get(room).map(|r| &r.role) {
                Some(Role::Hub(h)) => {
                    return Ok(h.state().policy == JoinPolicy::Open || h.state().participants.contains(uri));
                }
                Some(Role::Follower { .. }) => {}
                None => return Err(ProviderError::UnknownRoom(room.to_owned())),
            }
        }
        // Readers of before the record existed: an invitation (a Welcome routed to them) lets them in too.
        let recs = Records(&self.inner.store);
        Ok(recs.is_reader(room, uri)? || recs.invites(uri)?.iter().any(|(r, _)| r == room))
    }

    /// Records that the KeyPackage `kp_ref` of `user` (another provider's) was handed to one of our users, durably:
    /// the add rule lets our users add `user` only with KeyPackages recorded so.
    pub async fn record_claim(&self, kp_ref: &[u8], user: &str) -> Result<(), ProviderError> {
        let mut b = Batch::new();
        write::stamp_claim(&mut b, kp_ref, user, now_ms());
        Ok(self.inner.store.commit_later(b).await.unwrap_or(Err(StoreError::Closed))?)
    }

    /// Our user `uri` may read our copy of followed `room` from now on: its hub sequenced their join (durable on
    /// return).
    pub async fn add_reader(&self, room: &str, uri: &str) -> Result<(), ProviderError> {
        let mut b = Batch::new();
        write::reader(&mut b, room, uri);
        Ok(self.inner.store.commit_later(b).await.unwrap_or(Err(StoreError::Closed))?)
    }

    /// Sets who may join `room` (hosted here) by external commit; durable on return. A no-op if it already is.
    pub async fn set_join_policy(&self, room: &str, policy: JoinPolicy) -> Result<(), ProviderError> {
        let durable = {
            let mut rooms = lock(&self.inner.rooms);
            match rooms.get_mut(room).map(|r| &mut r.role) {
                Some(Role::Hub(h)) if h.state().policy == policy => return Ok(()),
                Some(Role::Hub(h)) => {
                    h.set_policy(policy);
                    let mut b = Batch::new();
                    write::hub(&mut b, h.state())?;
                    self.inner.store.commit_later(b)
                }
                Some(Role::Follower { hub, .. }) => {
                    return Err(ProviderError::NotHub { room: room.to_owned(), hub: hub.clone() });
                }
                None => return Err(ProviderError::UnknownRoom(room.to_owned())),
            }
        };
        durable.await.unwrap_or(Err(StoreError::Closed))?;
        Ok(())
    }

    /// How many rooms hosted here `uri` created.
    pub fn rooms_created_by(&self, uri: &str) -> usize {
        created_by(&lock(&self.inner.rooms), uri)
    }

    /// True if `uri` is on the participant list of `room`, which we host.
    pub fn is_participant(&self, room: &str, uri: &str) -> Result<bool, ProviderError> {
        let rooms = lock(&self.inner.rooms);
        match rooms.get(room).map(|r| &r.role) {
            Some(Role::Hub(h)) => Ok(h.state().participants.contains(uri)),
            Some(Role::Follower { hub, .. }) => Err(ProviderError::NotHub { room: room.to_owned(), hub: hub.clone() }),
            None => Err(ProviderError::UnknownRoom(room.to_owned())),
        }
    }

    /// The hub's epoch of a room we host.
    pub fn epoch(&self, room: &str) -> Result<u64, ProviderError> {
        let rooms = lock(&self.inner.rooms);
        match rooms.get(room).map(|r| &r.role) {
            Some(Role::Hub(h)) => Ok(h.epoch()),
            Some(Role::Follower { hub, .. }) => Err(ProviderError::NotHub { room: room.to_owned(), hub: hub.clone() }),
            None => Err(ProviderError::UnknownRoom(room.to_owned())),
        }
    }

    /// Submits a message to a room we host. Returns once the entry is durable (or was already sequenced).
    pub async fn submit(
        &self,
        room: &str,
        message: MlsMessageBytes,
        sending_uri: &str,
        origin: Origin,
    ) -> Result<Sequenced, ProviderError> {
        self.submit_with(room, message, sending_uri, origin, |_| Batch::new()).await
    }

    /// [`Provider::submit`], writing the batch `with` makes of the entry's sequence number in the same atomic
    /// batch as the entry, only if the message is appended (not when refused, nor when it is a retry of an entry
    /// already in the log). The store is the caller's too: the bridge marks there which inbound event the entry
    /// carries, and where in the log.
    pub async fn submit_with(
        &self,
        room: &str,
        message: MlsMessageBytes,
        sending_uri: &str,
        origin: Origin,
        with: impl FnOnce(u64) -> Batch,
    ) -> Result<Sequenced, ProviderError> {
        if let Some(again) = self.retry_of(room, &message)? {
            return Ok(again);
        }
        let judge = |view: &HubView| view.judge_submit(message.clone(), sending_uri, &origin);
        self.sequence(room, with, &message, &origin, &[], judge).await
    }

    /// A retry of a message already in `room`'s log: its verdict from the durable idempotency index (the hub
    /// keeps only the newest keys in memory, [`mimi_protocol::hub::RECENT`]).
    fn retry_of(&self, room: &str, message: &MlsMessageBytes) -> Result<Option<Sequenced>, ProviderError> {
        let seq = Records(&self.inner.store).digest_seq(room, &mimi_protocol::hub::digest(message))?;
        Ok(seq.map(|seq| Sequenced { seq, timestamp: now_ms(), duplicate: true }))
    }

    /// Applies an update (`HandshakeBundle`, draft §5.3) to a room we host ([`HubRoom::update`]: the commit is
    /// validated against the group's public state, its GroupInfo against the group it makes, its Welcome against
    /// its Adds). The commit, its Welcome and its GroupInfo (kept for external joiners) are durable in one batch
    /// before anyone hears of them. Returns the verdict on the proposal or commit.
    pub async fn update(
        &self,
        room: &str,
        req: UpdateRequest,
        requester: &str,
        origin: Origin,
    ) -> Result<Sequenced, ProviderError> {
        if let Some(again) = self.retry_of(room, req.message())? {
            return Ok(again);
        }
        // Read before the room is changed: nothing that can fail comes after it (see `sequence`).
        let welcomed = match &req {
            UpdateRequest::Commit { welcome: Some(w), .. } => self.welcomed(w)?,
            _ => Vec::new(),
        };
        let judge = |view: &HubView| view.judge_update(&req, requester, &origin);
        self.sequence(room, |_| Batch::new(), req.message(), &origin, &welcomed, judge).await
    }

    /// Lets the hub of `room` drop its decoded public state, which stays in the store, as a restart leaves it: a
    /// room gone quiet (its portal closed) then costs what it costs after a restart, and the next message or
    /// GroupInfo loads the state again ([`Provider::load_public`]). Waits for the room's turn (nothing is being
    /// sequenced) and for what was written before to be durable, so that the store holds the state dropped.
    pub async fn release_public(&self, room: &str) -> Result<(), ProviderError> {
        let turn = match lock(&self.inner.rooms).get(room) {
            Some(r @ Room { role: Role::Hub(h), .. }) if h.knows_public_state() && !h.needs_public() => r.turn.clone(),
            _ => return Ok(()),
        };
        let _turn = turn.lock_owned().await;
        let chunks = match lock(&self.inner.rooms).get(room) {
            Some(r) if !r.public_chunks.is_empty() => r.public_chunks.clone(),
            // Not stored in chunks (stored whole by an older build, or not at all): kept.
            _ => return Ok(()),
        };
        // The committer writes batches in the order they came: once this empty one is durable, so is every
        // write of the public state queued before it (each is queued under the rooms lock with its change).
        self.inner.store.commit_later(Batch::new()).await.unwrap_or(Err(StoreError::Closed))?;
        let mut rooms = lock(&self.inner.rooms);
        if let Some(r) = rooms.get_mut(room)
            && r.public_chunks == chunks
            && let Role::Hub(h) = &mut r.role
        {
            h.release_public();
        }
        Ok(())
    }

    /// Whether the hub holds the decoded public state of `room` in memory ([`Provider::release_public`]; for
    /// tests and status).
    pub fn holds_public(&self, room: &str) -> bool {
        matches!(lock(&self.inner.rooms).get(room).map(|r| &r.role), Some(Role::Hub(h)) if h.knows_public_state() && !h.needs_public())
    }

    /// Loads the hub's public state of `room` if it is still in the store only (a room restored at start keeps it
    /// there until a message or a GroupInfo needs it), reading and decoding it off the rooms lock.
    async fn load_public(&self, room: &str) -> Result<(), ProviderError> {
        // A read that a write overtook (the room loaded, changed and released again meanwhile) is read again.
        for _ in 0..LOAD_PUBLIC_TRIES {
            let manifest = match lock(&self.inner.rooms).get(room) {
                Some(r) if needs_public_in(r) => r.public_chunks.clone(),
                _ => return Ok(()),
            };
            let (store, name) = (self.inner.store.clone(), room.to_owned());
            let corrupt = |message: String| StoreError::Corrupt { tree: HUB_LOG.to_owned(), message };
            let read = tokio::task::spawn_blocking(move || {
                let (bytes, hashes) = Records(&store)
                    .public_state(&name)?
                    .ok_or_else(|| corrupt(format!("{name}: the public state is gone from the store")))?;
                let public = PublicState::decode(&bytes).map_err(|e| corrupt(format!("{name}: {e}")))?;
                Ok::<_, StoreError>((public, hashes))
            })
            .await
            .map_err(|e| StoreError::Corrupt { tree: HUB_LOG.to_owned(), message: format!("{room}: {e}") })?;
            let mut rooms = lock(&self.inner.rooms);
            let Some(r) = rooms.get_mut(room).filter(|r| needs_public_in(r)) else { return Ok(()) };
            if r.public_chunks != manifest {
                continue;
            }
            let (public, hashes) = read?;
            // The store's state is the one the room was released with (its chunks name it).
            if hashes == manifest
                && let Role::Hub(h) = &mut r.role
            {
                h.install_public(public);
                return Ok(());
            }
        }
        Err(ProviderError::Store(StoreError::Corrupt {
            tree: HUB_LOG.to_owned(),
            message: format!("{room}: the public state in the store is not the one the hub stored last"),
        }))
    }

    /// `f` of the rooms, under their lock, with `room`'s public state loaded ([`Provider::load_public`]); if it was
    /// released again between the load and the lock ([`Provider::release_public`]), it is loaded again first.
    async fn with_public<R>(
        &self,
        room: &str,
        f: impl FnOnce(&HashMap<String, Room>) -> R,
    ) -> Result<R, ProviderError> {
        loop {
            self.load_public(room).await?;
            let rooms = lock(&self.inner.rooms);
            if !needs_public(&rooms, room) {
                return Ok(f(&rooms));
            }
        }
    }

    /// The room `room` of `rooms`, which must be one we host.
    fn hosted<'a>(rooms: &'a mut HashMap<String, Room>, room: &str) -> Result<&'a mut Room, ProviderError> {
        let r = rooms.get_mut(room).ok_or_else(|| ProviderError::UnknownRoom(room.to_owned()))?;
        Self::hub_in(r, room)?;
        Ok(r)
    }

    /// The hub of `r`, the room `room`, if we host it.
    fn hub_in<'a>(r: &'a mut Room, room: &str) -> Result<&'a mut HubRoom, ProviderError> {
        match &mut r.role {
            Role::Hub(h) => Ok(h),
            Role::Follower { hub, .. } => Err(ProviderError::NotHub { room: room.to_owned(), hub: hub.clone() }),
        }
    }

    /// Sequences `message` (of an update: its commit) in `room`, which we host, as `judge` judges it on a view of
    /// the room; makes what it appends durable (entries, idempotency index, room state, public state, GroupInfo,
    /// and what `with` makes of the entry's sequence number: one batch), then fans out.
    ///
    /// `welcomed`: the users of ours a Welcome in it is for, read by the caller (no store read is made once the
    /// room has changed; what follows `apply` only builds the batch).
    ///
    /// The room's messages take their turn one at a time, but the judging runs outside the lock over all rooms —
    /// off the executor's workers for big groups ([`mimi_mls::offload`]) — so a commit of a 10 000-member room
    /// holds up no other room. The room is changed only under the lock, by a judgement of its current state (an
    /// invite or a policy change that slipped in meanwhile has the message judged again).
    async fn sequence(
        &self,
        room: &str,
        with: impl FnOnce(u64) -> Batch,
        message: &MlsMessageBytes,
        origin: &Origin,
        welcomed: &[String],
        judge: impl Fn(&HubView) -> Result<Judgement, Refusal> + Sync,
    ) -> Result<Sequenced, ProviderError> {
        let turn = Self::hosted(&mut lock(&self.inner.rooms), room)?.turn.clone();
        let my_turn = turn.lock_owned().await;
        self.load_public(room).await?;
        let mut with = Some(with);
        let mut judged_again = 0;
        let (accepted, actions, durable, group_info) = loop {
            let view = {
                let mut rooms = lock(&self.inner.rooms);
                let hub = Self::hub_in(Self::hosted(&mut rooms, room)?, room)?;
                match hub.retry(message) {
                    // A retry that raced its first copy: answered as that one, appending nothing.
                    Some(seq) => {
                        break (Sequenced { seq, timestamp: now_ms(), duplicate: true }, Vec::new(), None, None);
                    }
                    None => hub.view(),
                }
            };
            // The public state after a handshake is cut into chunks here too, off the lock (hashing megabytes).
            let (judged, chunked) = mimi_mls::offload(view.members(), || {
                judge(&view).map(|j| {
                    let chunked: Vec<Option<Chunked>> = j.public_states().map(|p| p.map(chunks::split)).collect();
                    (j, chunked)
                })
            })
            .await?;
            // The view shares the room's state: gone, the room moves on without copying it.
            drop(view);
            let mut rooms = lock(&self.inner.rooms);
            let r = Self::hosted(&mut rooms, room)?;
            let hub = Self::hub_in(r, room)?;
            if !hub.is_current(&judged) {
                judged_again += 1;
                if judged_again > JUDGED_AGAIN {
                    return Err(ProviderError::Busy(room.to_owned()));
                }
                continue;
            }
            // A handshake may change the participants: their keys follow the list.
            let mut judged = judged;
            let participants = judged.take_participants();
            let (accepted, actions) = hub.apply(judged, origin, now_ms())?;
            let mut b = Batch::new();
            let epoch = hub.epoch();
            if !actions.is_empty() {
                write::hub(&mut b, hub.state())?;
                write::participants(&mut b, room, &participants.added, &participants.removed);
            }
            let mut kept = None;
            let mut chunked = chunked.into_iter();
            // The chunks the public state will be stored in, once this batch is built.
            let mut public_chunks: Option<Vec<[u8; 32]>> = None;
            for a in &actions {
                if let HubAction::Append { entry, digest, public, group_info } = a {
                    r.remember(entry);
                    write::entry(&mut b, room, entry)?;
                    write::digest(&mut b, room, digest, entry.seq);
                    let chunks = chunked.next().flatten();
                    if let Some(p) = public {
                        let chunks = chunks.unwrap_or_else(|| chunks::split(p));
                        let stored = public_chunks.as_deref().unwrap_or(&r.public_chunks);
                        write::public_chunks(&mut b, room, p, &chunks, stored);
                        public_chunks = Some(chunks.hashes);
                    }
                    // A commit's, of the epoch it made (a Welcome after it changes none).
                    if let Some(gi) = group_info {
                        write::group_info(&mut b, room, gi.as_bytes());
                        kept = Some((epoch, gi.as_bytes().to_vec()));
                    }
                    if entry.fanout.message.wire_format() == wire_format::WELCOME {
                        write::welcomed(&mut b, room, entry.seq, welcomed);
                    }
                }
            }
            if let Some(c) = public_chunks {
                r.public_chunks = c;
            }
            if !b.is_empty()
                && let Some(with) = with.take()
            {
                b.extend(with(accepted.seq));
            }
            let durable = (!b.is_empty()).then(|| self.inner.store.commit_later(b));
            break (accepted, actions, durable, kept);
        };
        // The batch's place in the store's order is taken: the next message's turn may come before this one is
        // durable (they are committed together).
        drop(my_turn);
        if let Some(d) = durable {
            d.await.unwrap_or(Err(StoreError::Closed))?;
        } else if accepted.duplicate {
            // A retry of an entry whose batch may still be in flight: wait until it is readable.
            self.wait(room, accepted.seq - 1, Duration::from_secs(5)).await?;
        }
        if let Some((epoch, gi)) = group_info
            && let Some(r) = lock(&self.inner.rooms).get_mut(room)
        {
            r.install_group_info(epoch, gi);
        }
        for a in actions {
            match a {
                HubAction::Append { .. } => {}
                HubAction::Notify { peer, seq } => {
                    let _ = self.inner.outbound.send(PeerNotify { peer, room: room.to_owned(), seq });
                }
                HubAction::WakeClients { seq } | HubAction::DeliverPortal { seq } => self.wake(room, seq),
            }
        }
        Ok(accepted)
    }

    /// A member hands in the GroupInfo of a room we host (as the client API's `PUT groupInfo`): it must be of the
    /// room's group and current epoch. Kept durably.
    pub async fn put_group_info(&self, room: &str, group_info: MlsMessageBytes) -> Result<(), ProviderError> {
        self.store_group_info(room, group_info).await
    }

    /// Keeps `group_info` of a room we host, durably, if it is of the room's group and current epoch. The check
    /// and the write to the store are one step under the rooms lock (the hub's epoch only moves on, so the store
    /// never goes back to an older GroupInfo); once durable it is served, unless a newer one is already.
    async fn store_group_info(&self, room: &str, group_info: MlsMessageBytes) -> Result<(), ProviderError> {
        let Ok(Inspected::GroupInfo { epoch, .. }) = inspect(&group_info) else {
            return Err(ProviderError::BadRequest("not a GroupInfo".into()));
        };
        let stored = |rooms: &HashMap<String, Room>| {
            rooms.get(room).is_some_and(|r| r.group_info.as_ref().is_some_and(|(_, g)| g == group_info.as_bytes()))
        };
        if stored(&lock(&self.inner.rooms)) {
            // Served and stored already (a portal's group opening again hands in the same one): nothing to check,
            // and the room's public state can stay in the store.
            return Ok(());
        }
        // Not `with_public`: a GroupInfo stored meanwhile is answered from the lock at once, without loading the
        // public state again if it was released between the load and the lock.
        let durable = loop {
            self.load_public(room).await?;
            let rooms = lock(&self.inner.rooms);
            if stored(&rooms) {
                return Ok(());
            }
            // Released again between the load and the lock ([`Provider::release_public`]): loaded again.
            if needs_public(&rooms, room) {
                continue;
            }
            match rooms.get(room).map(|r| &r.role) {
                Some(Role::Hub(h)) => h.check_group_info(&group_info)?,
                Some(Role::Follower { hub, .. }) => {
                    return Err(ProviderError::NotHub { room: room.to_owned(), hub: hub.clone() });
                }
                None => return Err(ProviderError::UnknownRoom(room.to_owned())),
            }
            let mut b = Batch::new();
            write::group_info(&mut b, room, group_info.as_bytes());
            break self.inner.store.commit_later(b);
        };
        durable.await.unwrap_or(Err(StoreError::Closed))?;
        if let Some(r) = lock(&self.inner.rooms).get_mut(room) {
            r.install_group_info(epoch, group_info.into_bytes());
        }
        Ok(())
    }

    /// Which of our users `message`, if it is a Welcome, is for (by the KeyPackageRefs they handed out).
    fn welcomed(&self, message: &MlsMessageBytes) -> Result<Vec<String>, StoreError> {
        let Ok(Inspected::Welcome { new_members }) = inspect(message) else { return Ok(Vec::new()) };
        let mut users = Vec::new();
        for r in new_members {
            users.extend(Records(&self.inner.store).claimed_by(&r)?);
        }
        Ok(users)
    }

    fn wake(&self, room: &str, seq: u64) {
        let grew = lock(&self.inner.rooms).get(room).is_some_and(|r| {
            r.last.send_if_modified(|l| {
                let grew = seq > *l;
                if grew {
                    *l = seq;
                }
                grew
            })
        });
        if grew {
            let _ = self.inner.appended.send(Arc::from(room));
        }
    }

    /// The names of the rooms whose log grows from now on, once per wake-up of their subscribers (a receiver that
    /// falls more than 1024 names behind gets `Lagged` and should look at every room it cares about). For whoever
    /// follows many rooms without a [`Provider::subscribe`] watch on each: the portals' room of record wakes a
    /// portal that is not open.
    pub fn appended(&self) -> broadcast::Receiver<Arc<str>> {
        self.inner.appended.subscribe()
    }

    /// Whether `room` is one `creator` made here and the hub can judge its handshakes without the creator's
    /// group being opened ([`PortalRoom`]).
    pub fn portal_room(&self, room: &str, creator: &str) -> PortalRoom {
        let rooms = lock(&self.inner.rooms);
        match rooms.get(room) {
            Some(r @ Room { role: Role::Hub(h), .. })
                if h.state().creator.as_deref() == Some(creator) && h.knows_public_state() =>
            {
                let group_info_current = r.group_info.as_ref().is_some_and(|(epoch, _)| *epoch == h.epoch());
                PortalRoom::Ready { last: h.last_seq(), group_info_current }
            }
            _ => PortalRoom::Open,
        }
    }

    /// Puts `uri` on a hosted room's participant list (an invite); `follower` is its provider if not us.
    pub async fn add_participant(&self, room: &str, uri: &str) -> Result<(), ProviderError> {
        let durable = {
            let mut rooms = lock(&self.inner.rooms);
            let r = rooms.get_mut(room).ok_or_else(|| ProviderError::UnknownRoom(room.to_owned()))?;
            let Role::Hub(h) = &mut r.role else {
                return Err(ProviderError::BadRequest("invite through the room's hub".into()));
            };
            let follower = uri_domain(uri).filter(|d| *d != self.inner.domain);
            // Written even when the list had them: the caller learns the invite is durable only from this batch.
            h.add_participant(uri, follower);
            let mut b = Batch::new();
            write::hub(&mut b, h.state())?;
            write::participants(&mut b, room, [uri], []);
            self.inner.store.commit_later(b)
        };
        durable.await.unwrap_or(Err(StoreError::Closed))?;
        Ok(())
    }

    /// The last sequence number of a room's log here.
    pub fn last_seq(&self, room: &str) -> Result<u64, ProviderError> {
        let rooms = lock(&self.inner.rooms);
        rooms.get(room).map(|r| *r.last.borrow()).ok_or_else(|| ProviderError::UnknownRoom(room.to_owned()))
    }

    /// Log entry `seq`, once it is durable (even before local clients were woken for it).
    pub fn entry(&self, room: &str, seq: u64) -> Result<Option<SequencedFanout>, ProviderError> {
        Ok(Records(&self.inner.store).entry(room, seq)?)
    }

    /// Up to `max` log entries after `after`: every durable one, even those local readers were not woken for yet
    /// (so that what a reader learnt elsewhere — an invitation stored with its Welcome — is in the log it reads).
    pub fn entries_after(&self, room: &str, after: u64, max: usize) -> Result<Vec<SequencedFanout>, ProviderError> {
        let max = {
            let rooms = lock(&self.inner.rooms);
            let r = rooms.get(room).ok_or_else(|| ProviderError::UnknownRoom(room.to_owned()))?;
            let last = *r.last.borrow();
            // `after` comes from clients and peers: nothing follows the largest sequence number.
            let Some(next) = after.checked_add(1) else { return Ok(Vec::new()) };
            // A copy that cannot be completed ([`Provider::fetch_gone`]): its readers get what it holds, then are
            // told to join again.
            let lost = matches!(&r.role, Role::Follower { state, .. } if state.is_gone());
            if lost && after >= last {
                return Err(ProviderError::Pruned { room: room.to_owned(), first: last.saturating_add(1) });
            }
            if next < r.first {
                return Err(ProviderError::Pruned { room: room.to_owned(), first: r.first });
            }
            if after < last {
                if let Some(entries) = r.tail_entries(after, last, max) {
                    return Ok(entries);
                }
                max.min(usize::try_from(last - after).unwrap_or(usize::MAX))
            } else {
                // `last` moves just after entries are durable: ask the store what it already has.
                max
            }
        };
        Ok(Records(&self.inner.store).entries_after(room, after, max)?)
    }

    /// Waits until the room's log goes past `after` or `timeout` passes; returns the last sequence number.
    pub async fn wait(&self, room: &str, after: u64, timeout: Duration) -> Result<u64, ProviderError> {
        let mut rx = {
            let rooms = lock(&self.inner.rooms);
            rooms.get(room).map(|r| r.last.subscribe()).ok_or_else(|| ProviderError::UnknownRoom(room.to_owned()))?
        };
        // Also ends when our copy of a followed room is lost ([`Provider::fetch_gone`]): its readers are answered
        // 410 at once.
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if *rx.borrow_and_update() > after || self.copy_gone(room) {
                break;
            }
            if !matches!(tokio::time::timeout_at(deadline, rx.changed()).await, Ok(Ok(()))) {
                break;
            }
        }
        let last = *rx.borrow();
        Ok(last)
    }

    /// A watch on the room's last sequence number.
    pub fn subscribe(&self, room: &str) -> Result<watch::Receiver<u64>, ProviderError> {
        let rooms = lock(&self.inner.rooms);
        rooms.get(room).map(|r| r.last.subscribe()).ok_or_else(|| ProviderError::UnknownRoom(room.to_owned()))
    }

    /// This provider's signing identity as a hub (`hub_sender` of `GroupInfoResponse`s): an Ed25519 key made once
    /// and kept in the store, with a basic credential `mimi://DOMAIN`.
    pub async fn hub_signer(&self) -> Result<HubSigner, ProviderError> {
        const KEY: &[u8] = b"\0hub_signer";
        let signer = self
            .inner
            .hub_signer
            .get_or_try_init(|| async {
                if let Some(bytes) = self.inner.store.get(HUB_LOG, KEY)? {
                    return HubSigner::decode(&bytes)
                        .map_err(|e| ProviderError::BadRequest(format!("stored hub key: {e}")));
                }
                let identity = format!("mimi://{}", self.inner.domain);
                let signer = HubSigner::generate(identity.as_bytes())
                    .map_err(|e| ProviderError::BadRequest(format!("hub key: {e}")))?;
                let bytes = signer.encode().map_err(|e| ProviderError::BadRequest(format!("hub key: {e}")))?;
                let mut b = Batch::new();
                b.put(HUB_LOG, KEY.to_vec(), bytes);
                self.inner.store.commit(b).await?;
                Ok::<_, ProviderError>(signer)
            })
            .await?;
        Ok(signer.clone())
    }

    /// The hub's answer to a `GroupInfoRequest` for `room` (draft-ietf-mimi-protocol-06 §5.6), whose signature
    /// the caller has checked. Open rooms answer anyone; invite-only rooms only a requester whose basic
    /// credential's identity is on the participant list (else `notAuthorized`). Unknown rooms, and rooms without
    /// a GroupInfo yet, answer `noSuchRoom`; a room we follow is [`ProviderError::NotHub`]. The hub's ratchet tree
    /// of the GroupInfo's epoch goes beside it (`RatchetTreeOption::Full`: GroupInfos carry none); no pending
    /// proposals are listed.
    pub async fn answer_group_info(
        &self,
        room: &str,
        request: &GroupInfoRequest,
    ) -> Result<GroupInfoResponse, ProviderError> {
        let failure = |status| GroupInfoResponse::Failure { room_id: room.as_bytes().to_vec(), status };
        let identity = request.tbs.requesting_credential.basic_identity().and_then(|i| String::from_utf8(i).ok());
        // The ratchet tree goes with the GroupInfo: from the public state.
        let answer = self
            .with_public(room, |rooms| {
                let Some(r) = rooms.get(room) else { return Ok(Err(GroupInfoCode::NoSuchRoom)) };
                match &r.role {
                    Role::Follower { hub, .. } => {
                        return Err(ProviderError::NotHub { room: room.to_owned(), hub: hub.clone() });
                    }
                    Role::Hub(h) => {
                        let st = h.state();
                        let allowed = st.policy == JoinPolicy::Open
                            || identity.as_ref().is_some_and(|i| st.participants.contains(i));
                        if !allowed {
                            return Ok(Err(GroupInfoCode::NotAuthorized));
                        }
                    }
                }
                let Some((epoch, gi)) = r.group_info.clone() else { return Ok(Err(GroupInfoCode::NoSuchRoom)) };
                let gi = MlsMessageBytes::new(gi).map_err(|e| ProviderError::BadRequest(e.to_string()))?;
                // The hub's own tree of that epoch goes with it, whether or not the GroupInfo embeds one (commits'
                // and the bridge's GroupInfos do not; a joiner need not look inside the GroupInfo for it).
                let tree = match &r.role {
                    Role::Hub(h) if h.epoch() == epoch => h.ratchet_tree(),
                    _ => None,
                };
                Ok(Ok((gi, tree)))
            })
            .await??;
        let (group_info, tree) = match answer {
            Ok(answer) => answer,
            Err(code) => return Ok(failure(code)),
        };
        let tbe = GroupInfoRatchetTreeTbe {
            group_info,
            ratchet_tree: tree.map_or(RatchetTreeOption::DistributionService, RatchetTreeOption::Full),
            pending_proposals: Vec::new(),
        };
        let signer = self.hub_signer().await?;
        signer.respond(request, room.as_bytes(), &tbe).map_err(|e| ProviderError::BadRequest(e.to_string()))
    }

    /// The room's current GroupInfo, if known.
    pub fn group_info(&self, room: &str) -> Result<Option<Vec<u8>>, ProviderError> {
        let rooms = lock(&self.inner.rooms);
        rooms
            .get(room)
            .map(|r| r.group_info.as_ref().map(|(_, g)| g.clone()))
            .ok_or_else(|| ProviderError::UnknownRoom(room.to_owned()))
    }

    /// The ratchet tree of a room this provider is the hub of, at its current epoch (GroupInfos carry none; a
    /// `GroupInfoRequest`'s answer brings it the same way). `None` for a room it only follows.
    pub async fn ratchet_tree(&self, room: &str) -> Result<Option<Vec<u8>>, ProviderError> {
        self.with_public(room, |rooms| {
            let r = rooms.get(room).ok_or_else(|| ProviderError::UnknownRoom(room.to_owned()))?;
            Ok(match &r.role {
                Role::Hub(h) => h.ratchet_tree(),
                _ => None,
            })
        })
        .await?
    }

    /// Entries of a followed room from the hub (notify or log page). Appends what continues the local copy,
    /// durably and in order; returns `Some(after)` if the hub's log must be fetched after `after`.
    pub async fn accept_entries(
        &self,
        room: &str,
        entries: Vec<SequencedFanout>,
        page: bool,
    ) -> Result<Option<u64>, ProviderError> {
        let _serial = self.inner.follower_lock.lock().await;
        // Read before the room moves on: nothing that can fail but the write comes after it.
        let mut welcomed = HashMap::new();
        for e in &entries {
            let users = self.welcomed(&e.fanout.message)?;
            if !users.is_empty() {
                welcomed.insert(e.seq, users);
            }
        }
        let actions = {
            let mut rooms = lock(&self.inner.rooms);
            let r = rooms.get_mut(room).ok_or_else(|| ProviderError::UnknownRoom(room.to_owned()))?;
            let Role::Follower { state, .. } = &mut r.role else {
                return Err(ProviderError::BadRequest("we are the hub of this room".into()));
            };
            if page { state.on_log_page(entries) } else { state.on_notify(entries) }
        };
        let mut fetch = None;
        for a in actions {
            match a {
                FollowerAction::Append(run) => {
                    let mut b = Batch::new();
                    let mut last = 0;
                    for e in &run {
                        write::entry(&mut b, room, e)?;
                        if let Some(users) = welcomed.get(&e.seq) {
                            write::welcomed(&mut b, room, e.seq, users);
                        }
                        last = e.seq;
                    }
                    self.inner.store.commit(b).await?;
                    if let Some(r) = lock(&self.inner.rooms).get_mut(room) {
                        run.iter().for_each(|e| r.remember(e));
                    }
                    self.wake(room, last);
                }
                FollowerAction::Fetch { after } => fetch = Some(after),
            }
        }
        Ok(fetch)
    }

    /// Whether `room` is followed for a join still on its way to its hub, with nothing of the log before it held
    /// ([`FollowerRoom::joining`]): a catch-up would fetch the log from its start.
    pub fn is_joining(&self, room: &str) -> bool {
        matches!(lock(&self.inner.rooms).get(room).map(|r| &r.role), Some(Role::Follower { state, .. }) if state.is_joining())
    }

    /// A failed fetch of a followed room's log (the hub is unreachable).
    pub fn fetch_failed(&self, room: &str) {
        if let Some(Room { role: Role::Follower { state, .. }, .. }) = lock(&self.inner.rooms).get_mut(room) {
            state.on_fetch_failed();
        }
    }

    /// The hub of a followed room no longer holds the entries after `after` that our copy misses (it answered 410:
    /// this provider was away longer than the hub keeps its log). The copy cannot be completed: its readers are
    /// answered [`ProviderError::Pruned`] and woken, to join the room again; the first join of one of our members
    /// makes the copy start over at its place ([`Provider::follow_for_update`]). A 410 for a copy that moved past
    /// `after` since (it started over) is stale, and ignored.
    pub fn fetch_gone(&self, room: &str, after: u64) {
        let mut rooms = lock(&self.inner.rooms);
        let Some(r) = rooms.get_mut(room) else { return };
        let Role::Follower { state, .. } = &mut r.role else { return };
        if after < state.last() {
            return;
        }
        if !state.is_gone() {
            tracing::warn!(room, after, "the hub no longer holds what our copy of the room misses");
        }
        state.on_fetch_gone();
        r.last.send_modify(|_| {});
        drop(rooms);
        let _ = self.inner.appended.send(Arc::from(room));
    }

    /// Whether our copy of the followed room `room` cannot be completed ([`Provider::fetch_gone`]) and has not
    /// started over since.
    pub fn copy_gone(&self, room: &str) -> bool {
        matches!(lock(&self.inner.rooms).get(room).map(|r| &r.role), Some(Role::Follower { state, .. }) if state.is_gone())
    }

    /// Registers a native user with the SHA-256 (hex) of its API token. Re-registering with the same token is a
    /// no-op; another token is refused.
    pub async fn register_user(&self, uri: &str, token_sha256: &str) -> Result<(), ProviderError> {
        if uri_domain(uri) != Some(self.inner.domain.as_str()) {
            return Err(ProviderError::BadRequest(format!("{uri} is not a user of {}", self.inner.domain)));
        }
        if let Some(u) = Records(&self.inner.store).user(uri)? {
            return if u.token_sha256 == token_sha256 { Ok(()) } else { Err(ProviderError::Exists(uri.to_owned())) };
        }
        let mut b = Batch::new();
        write::user(&mut b, &UserRecord { uri: uri.to_owned(), token_sha256: token_sha256.to_owned() })?;
        self.inner.store.commit(b).await?;
        Ok(())
    }

    /// The user record.
    pub fn user(&self, uri: &str) -> Result<Option<UserRecord>, ProviderError> {
        Ok(Records(&self.inner.store).user(uri)?)
    }

    /// Stores KeyPackages (MLSMessages) of a user: each must validate and name the user in its credential
    /// ([`crate::key_packages`]); at most [`key_packages::MAX_STORED`] per user.
    pub async fn upload_key_packages(&self, user: &str, kps: &[MlsMessageBytes]) -> Result<(), ProviderError> {
        let _serial = self.inner.key_package_lock.lock().await;
        if Records(&self.inner.store).user(user)?.is_none() {
            return Err(ProviderError::UnknownUser(user.to_owned()));
        }
        let stored = Records(&self.inner.store).key_packages(user)?.len();
        if stored + kps.len() > key_packages::MAX_STORED {
            return Err(ProviderError::BadRequest(format!(
                "{user} keeps {stored} KeyPackages; at most {} are stored",
                key_packages::MAX_STORED
            )));
        }
        for (i, kp) in kps.iter().enumerate() {
            key_packages::check(kp.as_bytes(), user)
                .map_err(|why| ProviderError::BadRequest(format!("KeyPackage {i}: {why}")))?;
        }
        // Ids order KeyPackages oldest first; the random middle keeps two uploads in the same millisecond apart.
        let base = (now_ms() << 24) | (u64::from(rand::random::<u16>()) << 8);
        let mut b = Batch::new();
        for (i, kp) in kps.iter().enumerate() {
            write::key_package(&mut b, user, base + i as u64, kp.as_bytes());
        }
        self.inner.store.commit(b).await?;
        Ok(())
    }

    /// Claims one KeyPackage of `user`, remembering its ref to route the Welcome: the oldest valid one, removed;
    /// a last-resort one only when no other is left, and kept. KeyPackages that no longer validate are dropped.
    pub async fn claim_key_package(&self, user: &str) -> Result<Option<Vec<u8>>, ProviderError> {
        let _serial = self.inner.key_package_lock.lock().await;
        let stored = Records(&self.inner.store).key_packages(user)?;
        let checked: Vec<_> = stored.iter().map(|(id, bytes)| (*id, key_packages::check(bytes, user))).collect();
        let summary: Vec<_> =
            checked.iter().map(|(id, c)| (*id, c.as_ref().map(|c| c.last_resort).map_err(Clone::clone))).collect();
        let plan = key_packages::plan(&summary);
        let mut b = Batch::new();
        for id in &plan.drop {
            tracing::info!(user, id, "a stored KeyPackage no longer validates; dropped");
            write::drop_key_package(&mut b, user, *id);
        }
        let mut chosen = None;
        if let Some((id, remove)) = plan.chosen
            && let Some((_, Ok(c))) = checked.iter().find(|(i, _)| *i == id)
            && let Some((_, bytes)) = stored.iter().find(|(i, _)| *i == id)
        {
            write::claimed(&mut b, user, id, &c.hash_ref, !remove);
            chosen = Some(bytes.clone());
        }
        if !b.is_empty() {
            self.inner.store.commit(b).await?;
        }
        Ok(chosen)
    }

    /// Welcomes waiting for `user`: `(room, seq of the Welcome)`.
    pub fn invites(&self, user: &str) -> Result<Vec<(String, u64)>, ProviderError> {
        Ok(Records(&self.inner.store).invites(user)?)
    }

    /// Follows `room` hosted by `hub` for an update one of our clients is about to send there, so that the hub's
    /// first notify finds the room. A room we did not follow yet is followed tentatively: unless the hub accepts
    /// one of the updates in flight ([`Provider::update_settled`]), or we receive an entry of the room, or it is
    /// followed for good meanwhile ([`Provider::follow`]), the follow is undone when the last one settles.
    pub async fn follow_for_update(&self, room: &str, hub: &str) -> Result<(), ProviderError> {
        self.follow_as(room, hub, true).await
    }

    /// The hub answered an update announced with [`Provider::follow_for_update`]: `accepted` (at `at` in its log,
    /// if it said), or refused. When the last update in flight settles and the hub accepted none (and no entry
    /// came), the follow is undone; if it accepted one, a copy that holds nothing yet starts at the lowest place
    /// the hub gave them ([`FollowerRoom::joined`]). `Some(after)` if the hub's log must be fetched after `after`
    /// (as [`Provider::accept_entries`]).
    pub async fn update_settled(
        &self,
        room: &str,
        accepted: bool,
        at: Option<u64>,
    ) -> Result<Option<u64>, ProviderError> {
        /// What became of the follow.
        enum Settled {
            /// Kept: the start of its copy if it moved (and where what it held before started), and whether the copy
            /// has entries to append or fetch.
            Kept { start: Option<(u64, Option<u64>)>, work: bool },
            /// Forgotten once this is durable.
            Forgotten(tokio::sync::oneshot::Receiver<Result<(), StoreError>>),
        }
        // Serialised with the appends of notified entries (`accept_entries`): a copy that starts over writes its
        // new start before any entry at or after that start is written (its old entries go after, below it).
        let serial = self.inner.follower_lock.lock().await;
        let settled = {
            let mut rooms = lock(&self.inner.rooms);
            let Some(r) = rooms.get_mut(room) else { return Ok(None) };
            let Some(t) = &mut r.tentative else { return Ok(None) };
            t.in_flight = t.in_flight.saturating_sub(1);
            t.accepted |= accepted;
            if accepted && let Some(at) = at {
                t.first = Some(t.first.map_or(at, |f| f.min(at)));
            }
            if t.in_flight > 0 {
                return Ok(None);
            }
            let keep = t.accepted || *r.last.borrow() > 0;
            let first = t.first;
            r.tentative = None;
            if keep {
                let (moved, work) = match &mut r.role {
                    Role::Follower { state, .. } => state.joined(first),
                    Role::Hub(_) => (false, false),
                };
                let start = first.filter(|_| moved);
                // A copy that started over (a join into a lost copy, [`Provider::fetch_gone`]): what it held goes,
                // and its readers are past it.
                let held = (*r.last.borrow() > 0).then_some(r.first);
                if let Some(start) = start {
                    r.first = start;
                    r.tail.clear();
                    r.tail_bytes = 0;
                    if held.is_some() {
                        r.last.send_if_modified(|l| {
                            let moved = start - 1 > *l;
                            if moved {
                                *l = start - 1;
                            }
                            moved
                        });
                    }
                }
                Settled::Kept { start: start.map(|s| (s, held)), work }
            } else {
                rooms.remove(room);
                let mut b = Batch::new();
                write::forget_room(&mut b, room);
                Settled::Forgotten(self.inner.store.commit_later(b))
            }
        };
        match settled {
            Settled::Forgotten(durable) => {
                durable.await.unwrap_or(Err(StoreError::Closed))?;
                Ok(None)
            }
            Settled::Kept { start, work } => {
                let mut started_over = None;
                if let Some((start, held)) = start {
                    // Where the copy starts, for readers now and after a restart (as retention records it).
                    let mut b = Batch::new();
                    write::first(&mut b, room, start);
                    self.inner.store.commit(b).await?;
                    started_over = held.map(|_| start);
                }
                drop(serial);
                // What it held before goes, in batches, off the lock and without holding up the update that made
                // it start over (nobody reads below the start; the pruner finishes what a stop interrupts).
                if let Some(start) = started_over {
                    let (this, room) = (self.clone(), room.to_owned());
                    tokio::spawn(async move {
                        if let Err(e) = this.drop_entries_below(&room, start).await {
                            tracing::warn!(%room, error = %e,
                                "the entries of a copy that started over stay until log retention prunes them");
                        }
                    });
                }
                // What it holds goes to the store the way a notify's entries do, or is fetched for.
                if work { self.accept_entries(room, Vec::new(), false).await } else { Ok(None) }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests_support::private_message;
    use mimi_protocol::wire::FanoutMessage;

    fn room_with(seqs: impl IntoIterator<Item = u64>) -> Room {
        let msg = MlsMessageBytes::new(private_message()).expect("framed");
        let mut r = Room::new(
            Role::Follower { state: FollowerRoom::new("mimi://a.test/r/x", 0), hub: "a".into() },
            watch::channel(0).0,
        );
        for seq in seqs {
            r.remember(&SequencedFanout { seq, fanout: FanoutMessage::plain(seq, msg.clone()) });
        }
        r
    }

    fn seqs(v: Option<Vec<SequencedFanout>>) -> Option<Vec<u64>> {
        v.map(|v| v.into_iter().map(|e| e.seq).collect())
    }

    #[test]
    fn the_tail_serves_contiguous_runs_up_to_last_and_max() {
        let r = room_with(1..=10);
        assert_eq!(seqs(r.tail_entries(0, 10, 256)), Some((1..=10).collect()));
        assert_eq!(seqs(r.tail_entries(4, 7, 256)), Some(vec![5, 6, 7]), "never past `last`");
        assert_eq!(seqs(r.tail_entries(4, 10, 2)), Some(vec![5, 6]), "at most max");
        assert_eq!(seqs(r.tail_entries(9, 10, 256)), Some(vec![10]));
        assert_eq!(seqs(r.tail_entries(3, 12, 256)), None, "entries it does not hold: read the store");
    }

    #[test]
    fn the_tail_holds_at_most_its_bytes() {
        let (_dir, mut g) = crate::tests_support::group(b"mimi://a.test/r/x");
        let big =
            MlsMessageBytes::new(g.encrypt(&vec![7; 500_000]).durable_blocking().expect("encrypt")).expect("framed");
        let mut r = room_with([]);
        for seq in 1..=20 {
            r.remember(&SequencedFanout { seq, fanout: FanoutMessage::plain(seq, big.clone()) });
        }
        assert!(r.tail_bytes <= TAIL_BYTES, "{} bytes held", r.tail_bytes);
        assert_eq!(r.tail.len(), TAIL_BYTES / big.as_bytes().len(), "as many as fit");
        assert_eq!(seqs(r.tail_entries(18, 20, 256)), Some(vec![19, 20]));
        assert_eq!(seqs(r.tail_entries(0, 20, 256)), None, "the older ones are read from the store");
    }

    #[test]
    fn the_tail_forgets_the_oldest_and_restarts_on_a_gap() {
        let r = room_with(1..=(TAIL as u64 + 5));
        assert_eq!(seqs(r.tail_entries(0, 3, 256)), None, "evicted: read the store");
        assert_eq!(seqs(r.tail_entries(5, 7, 256)), Some(vec![6, 7]));
        let r = room_with([1, 2, 3, 7, 8]);
        assert_eq!(seqs(r.tail_entries(2, 8, 256)), None, "3 is gone with the gap");
        assert_eq!(seqs(r.tail_entries(6, 8, 256)), Some(vec![7, 8]));
    }
}

#[cfg(test)]
mod turn_tests {
    use super::*;
    use crate::tests_support::{group, store};
    use std::sync::atomic::{AtomicBool, Ordering};

    const ALICE: &str = "mimi://a.test/u/alice";

    /// While a message of one room is being judged (here: held until the other room's message is sequenced, at
    /// most 10 s), a message of another room is sequenced. Under one lock over all rooms, it would wait the 10 s.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_message_being_judged_holds_up_no_other_room() {
        let (_d, st) = store();
        let p = Provider::open("a.test", st).expect("provider");
        let mut messages = Vec::new();
        let mut dirs = Vec::new();
        for room in ["mimi://a.test/r/big", "mimi://a.test/r/small"] {
            let (dir, mut g) = group(room.as_bytes());
            let info = MlsMessageBytes::new(g.export_group_info(true).expect("group info")).expect("framed");
            p.create_room(room, &info, None, ALICE, JoinPolicy::Open, false).await.expect("room");
            let m = MlsMessageBytes::new(g.encrypt(b"hello").durable_blocking().expect("encrypt")).expect("framed");
            messages.push((room, m));
            dirs.push((dir, g));
        }
        let [(big, slow), (small, fast)] = <[_; 2]>::try_from(messages).expect("two rooms");
        let (sequenced, heard) = std::sync::mpsc::channel::<()>();
        let heard = Mutex::new(heard);
        let (started, judging_now) = tokio::sync::oneshot::channel::<()>();
        let started = Mutex::new(Some(started));
        let waited = Arc::new(AtomicBool::new(false));
        let judging = {
            let (p, waited) = (p.clone(), waited.clone());
            tokio::spawn(async move {
                let judge = |view: &HubView| {
                    if let Some(s) = lock(&started).take() {
                        let _ = s.send(());
                    }
                    let heard = lock(&heard).recv_timeout(Duration::from_secs(10));
                    waited.store(heard.is_ok(), Ordering::SeqCst);
                    view.judge_submit(slow.clone(), ALICE, &Origin::Portal)
                };
                p.sequence(big, |_| Batch::new(), &slow, &Origin::Portal, &[], judge).await
            })
        };
        // The other room's message comes while the judgement is under way.
        judging_now.await.expect("the judgement started");
        let other = p.submit(small, fast, ALICE, Origin::Portal).await.expect("the other room's message");
        sequenced.send(()).expect("the judge waits");
        let first = judging.await.expect("task").expect("the judged message");
        assert!(waited.load(Ordering::SeqCst), "the other room waited for the judgement");
        assert_eq!((other.seq, first.seq), (1, 1));
    }
}
