//! [`MlsRooms`]: the room of record of the portals as real MLS groups sequenced by this provider's hub.
//!
//! Outgoing ([`RoomOfRecord::publish`]): the portal's [`GroupMessage`] becomes MIMI content (`senderUri` = the
//! bridge's member, `roomUri` = the portal's room, the legacy author in the `legacySender` extension), is
//! encrypted with the portal's [`PortalGroup`], made durable, and sequenced by the hub; the MIMI message id is
//! returned. If the hub moved to a newer epoch, the group first catches up with the log and the message is
//! encrypted again.
//!
//! Incoming: one worker per open portal follows the room's log (a portal is open only while it is used:
//! [`dormant`]). Each entry not sent by the bridge itself is processed
//! by the group (commits merged, application messages decrypted), decoded and validated as MIMI content, and
//! handed to [`RouterHandle::from_group`] in log order by a forwarder task — never from inside `publish`, which
//! runs on the portal's own task. The worker's position is stored (`hub_log` cursor `bridge`).
//!
//! Nothing decrypted is lost: the MLS ratchet decrypts a message once, so the plaintext is kept (the room's kept
//! list in the bridge's MLS storage) in the same atomic batch as the state change that decrypted it
//! ([`PortalGroup::process_and_keep`]). When the router has taken a message, its entry is dropped from the list
//! with the next one; when the portal's group opens (or a closed portal is registered at start), whatever is still
//! listed goes to the router again,
//! which drops what it already has by message id.
//!
//! Per-user leaves (`mls_identity = "per-user"` in the portal's record): a legacy user's message is sent from a
//! leaf of their own ([`UserLeaves`]), added by the bridge's commit once they speak (new speakers' leaves in
//! batches, [`LeafPolicy::add_batch`]; until theirs is there the shared leaf speaks for them), removed after
//! [`LeafPolicy::idle_after`] of silence by the portal worker's sweep, and capped at [`LeafPolicy::max_leaves`]
//! (beyond it the shared leaf speaks for them, with the `legacySender` extension). Every handshake of the log is
//! fed to the local leaves too. See [`leaves`].
//!
//! Room URI of portal `P` on domain `D`: `mimi://D/r/P`, unless the portal was linked to a room another provider
//! hosts ([`remote`]: its bridge leaf joins that room, and its messages and commits go to that room's hub); the
//! MLS group id is the room URI's bytes.

mod dormant;
mod invite;
mod keys;
mod leaves;
mod order;
mod remote;

pub use dormant::{DEFAULT_IDLE_CLOSE, DEFAULT_MAX_OPEN};
pub use invite::{CLAIM_TIMEOUT, CLAIMS_TIMEOUT, Invited, LeftOut, MAX_INVITED_AT_ONCE};
pub use keys::DEFAULT_KEY_UPDATE;

use crate::repo::{MlsIdentity, Repo};
use crate::room_of_record::{GroupContent, GroupMessage, Published, RoomOfRecord};
use crate::router::RouterHandle;
use async_trait::async_trait;
use bridge_api::RoomError;
use bridge_api::RouteError;
use bridge_api::event::{InboundEvent, MessageDraft, MessageStyle, Sender, TextFormat};
use bridge_api::ids::{LegId, MessageId, NativeId, PortalId};
use mimi_content::builder::ContentBuilder;
use mimi_content::model::{ExternalPart, MultiPart, PartSemantics};
use mimi_content::{Disposition, Message, MimiContent, NestedPart, PartBody};
use mimi_mls::{
    CommitOutput, EngineConfig, LeafPolicy, LegacySender, LocalMember, MlsBackend, MlsError, PortalGroup, Received,
    UserLeaves, offload,
};
use mimi_protocol::hub::{JoinPolicy, Origin, Refusal};
use mimi_protocol::uri_domain;
use mimi_protocol::wire::{GroupInfoOption, MlsMessageBytes, RatchetTreeOption, UpdateRequest, wire_format};
use mimi_provider::Federation;
use mimi_provider::log::{Records, write};
use mimi_provider::service::{Provider, ProviderError};
use mimi_store::Batch;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::mpsc;

/// Name of the bridge's cursor in each room's log.
const CURSOR: &str = "bridge";
/// How long after the portal's own last message its log cursor is written (see [`Slot::stored`]).
const CURSOR_DELAY: Duration = Duration::from_millis(250);
/// How many times `publish` catches up and re-encrypts after `epochTooOld`.
const EPOCH_RETRIES: usize = 3;

/// A native member's message on its way to the router: room, log position, id, content.
type Forward = (String, u64, MessageId, GroupMessage, Vec<ExternalPart>);

/// The name of a room's kept list ([`PortalGroup::process_and_keep`]) in the bridge's MLS storage.
fn kept_list(room: &str) -> Vec<u8> {
    format!("kept/{room}").into_bytes()
}

/// The room URI of a portal.
pub fn room_uri(domain: &str, portal: &PortalId) -> String {
    format!("mimi://{domain}/r/{portal}")
}

struct Slot {
    group: PortalGroup,
    room: String,
    applied: u64,
    /// `applied` as the store has it (the log cursor): behind it only by the portal's own messages, whose cursor
    /// is written [`CURSOR_DELAY`] later (or by [`MlsRooms::shutdown`]) so that it does not hold up the message's
    /// own batch.
    stored: u64,
    own: HashSet<u64>,
    /// The per-user leaves, in a portal with `mls_identity = "per-user"`.
    leaves: Option<UserLeaves>,
    /// New speakers whose leaves the worker adds in one commit ([`LeafPolicy::add_batch`] > 1), in the order they
    /// first spoke, and since when the first of them waits ([`leaves::ADD_GATHER`]).
    wanted: Vec<String>,
    wanted_since: Option<std::time::Instant>,
    /// When the portal last published or applied a log entry ([`dormant`]: it closes after a while without).
    active: std::time::Instant,
    /// Tells the worker that the slot was closed ([`MlsRooms::close_if_unused`]).
    closed: Arc<tokio::sync::Notify>,
    /// Opened for a start or a key update only (`Some` of the room's last log entry then): the worker closes it
    /// once it has applied the log, unless the router publishes into it or someone else's entry after that one
    /// comes in first ([`dormant`]).
    close_when_caught_up: Option<u64>,
    /// In a room hosted elsewhere: messages handed to its hub may be unanswered; new ones wait behind them
    /// ([`remote`]).
    resend: bool,
    /// In a room hosted elsewhere: this provider's copy of its log no longer holds what follows the portal's
    /// position (a restart after its copy started over): the portal joins again ([`remote`]).
    behind_copy: bool,
    /// When the portal last joined its room again for that ([`remote`]).
    lost_rejoin_at: Option<std::time::Instant>,
    /// In a room hosted elsewhere: the portal's messages its hub did not answer, in the order they were handed
    /// (leg, native id, message id); read from the store once an opening needs it, then kept ([`remote`]).
    queue: Option<std::collections::VecDeque<(LegId, NativeId, MessageId)>>,
}

/// The portals' room of record: MLS groups sequenced by the local hub. See the module documentation.
pub struct MlsRooms {
    provider: Provider,
    mls: Arc<MlsBackend>,
    member: Arc<LocalMember>,
    config: EngineConfig,
    policy: JoinPolicy,
    /// The open portals ([`dormant`]).
    slots: Mutex<HashMap<PortalId, Arc<tokio::sync::Mutex<Slot>>>>,
    /// Every portal opened or registered, by room URI: the closed ones among them are woken by their room's log.
    known: Mutex<HashMap<String, PortalId>>,
    /// One gate per portal being opened, so that two callers never load its group twice ([`dormant`]).
    opening: Mutex<HashMap<PortalId, Arc<tokio::sync::Mutex<()>>>>,
    /// Milliseconds without a message after which a portal's group closes; 0: never ([`dormant`]).
    idle_close_ms: std::sync::atomic::AtomicU64,
    /// How many portals may be open at once; 0: no bound ([`dormant`]).
    max_open: std::sync::atomic::AtomicUsize,
    /// A pass closing the least used portals is under way; and whether the bound was found unreachable once.
    evicting: std::sync::atomic::AtomicBool,
    warned_open_bound: std::sync::atomic::AtomicBool,
    /// Interval between key updates of each local member, in milliseconds; 0: never ([`keys`]).
    key_update_ms: std::sync::atomic::AtomicU64,
    /// Per-user leaf limits by portal ([`MlsRooms::set_leaf_policy`]); the default otherwise.
    leaf_policies: Mutex<HashMap<PortalId, LeafPolicy>>,
    /// Join policies by portal ([`MlsRooms::set_join_policy`]); `policy` otherwise.
    join_policies: Mutex<HashMap<PortalId, JoinPolicy>>,
    inbound: mpsc::UnboundedSender<Forward>,
    inbound_rx: Mutex<Option<mpsc::UnboundedReceiver<Forward>>>,
    /// Per room: the last log position whose message the router has taken (or refused for good); kept messages
    /// up to it are dropped from the room's kept list.
    handed_on: Arc<Mutex<HashMap<String, u64>>>,
    /// Set once the router is attached (a flag, not the handle: the router owns this room, so holding its handle
    /// here would be a reference cycle that keeps the store open after shutdown).
    attached: std::sync::atomic::AtomicBool,
    /// Stops the forwarder to the router ([`MlsRooms::shutdown`]).
    stop: tokio::sync::watch::Sender<bool>,
    /// The daemon's media store ([`MlsRooms::set_media`]): files travel to members as MIMI external parts, and
    /// members' external parts reach other networks as its links.
    media: Arc<std::sync::OnceLock<Arc<bridge_media::FileMediaStore>>>,
    /// Portals whose room another provider hosts, by portal: that room's URI ([`remote`]).
    remote_rooms: Mutex<HashMap<PortalId, String>>,
    /// How the hubs of rooms hosted elsewhere are reached ([`MlsRooms::set_federation`]).
    federation: std::sync::OnceLock<Federation>,
    /// The router ([`MlsRooms::attach_router`]), which holds this room of record: not kept alive by it.
    router: std::sync::OnceLock<crate::router::WeakRouter>,
    /// Portals of rooms hosted elsewhere whose unanswered events are being published again ([`remote`]), each
    /// with whether more was queued meanwhile.
    unanswered: Mutex<HashMap<PortalId, bool>>,
    /// Unanswered messages of rooms hosted elsewhere, by id: how many times the hub was tried in vain ([`remote`]).
    failed_tries: Mutex<HashMap<MessageId, u32>>,
    /// Events of remote portals the hub has not taken, by leg and native id: since when this process has been
    /// trying ([`remote`]; removed once the hub answers, or the message is given up).
    unanswered_since: Mutex<HashMap<(LegId, NativeId), std::time::Instant>>,
    me: Weak<MlsRooms>,
}

impl std::fmt::Debug for MlsRooms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MlsRooms").field("member", &self.member.uri()).finish_non_exhaustive()
    }
}

fn unavailable(e: impl std::fmt::Display) -> RoomError {
    RoomError::Unavailable(e.to_string())
}

impl MlsRooms {
    /// The room of record of `member` (the bridge's MLS identity, stored in `mls`) on `provider`. New portal rooms
    /// get join policy `policy`.
    pub fn new(
        provider: Provider,
        mls: Arc<MlsBackend>,
        member: Arc<LocalMember>,
        config: EngineConfig,
        policy: JoinPolicy,
    ) -> Arc<Self> {
        let (inbound, rx) = mpsc::unbounded_channel();
        Arc::new_cyclic(|me| Self {
            provider,
            mls,
            member,
            config,
            policy,
            slots: Mutex::default(),
            known: Mutex::default(),
            opening: Mutex::default(),
            idle_close_ms: std::sync::atomic::AtomicU64::new(DEFAULT_IDLE_CLOSE.as_millis() as u64),
            max_open: std::sync::atomic::AtomicUsize::new(DEFAULT_MAX_OPEN),
            evicting: std::sync::atomic::AtomicBool::new(false),
            warned_open_bound: std::sync::atomic::AtomicBool::new(false),
            leaf_policies: Mutex::default(),
            join_policies: Mutex::default(),
            key_update_ms: std::sync::atomic::AtomicU64::new(DEFAULT_KEY_UPDATE.as_millis() as u64),
            inbound,
            inbound_rx: Mutex::new(Some(rx)),
            handed_on: Arc::default(),
            attached: std::sync::atomic::AtomicBool::new(false),
            stop: tokio::sync::watch::channel(false).0,
            media: Arc::default(),
            remote_rooms: Mutex::default(),
            federation: std::sync::OnceLock::new(),
            router: std::sync::OnceLock::new(),
            unanswered: Mutex::default(),
            failed_tries: Mutex::default(),
            unanswered_since: Mutex::default(),
            me: me.clone(),
        })
    }

    /// Everything the daemon needs in one call: the provider (hub) on `store` for `domain`, the bridge's MLS
    /// identity `mimi://DOMAIN/u/bridge` (created with an Ed25519 key on first start, loaded afterwards) and the
    /// room of record with the default engine configuration. Waits until a newly created identity is durable.
    pub async fn open(store: mimi_store::Store, domain: &str, policy: JoinPolicy) -> Result<Arc<Self>, RoomError> {
        let provider = Provider::open(domain, store.clone()).map_err(unavailable)?;
        let mls = Arc::new(MlsBackend::new(store, "bridge").map_err(unavailable)?);
        let uri = format!("mimi://{domain}/u/bridge");
        let member = LocalMember::load_or_create(&mls, &uri, openmls::prelude::SignatureScheme::ED25519)
            .map_err(unavailable)?
            .durable()
            .await
            .map_err(unavailable)?;
        Ok(Self::new(provider, mls, Arc::new(member), EngineConfig::default(), policy))
    }

    /// The provider.
    pub fn provider(&self) -> &Provider {
        &self.provider
    }

    /// Sets the media store (once): attachments it holds go to members as MIMI external parts, and members'
    /// external parts are fetched into it for other networks. Without one, attachments travel as links in the
    /// text and members' external parts are reported as not bridged.
    pub fn set_media(&self, media: Arc<bridge_media::FileMediaStore>) {
        let _ = self.media.set(media);
    }

    /// Connects the incoming path to the router (call once, after `RouterHandle::start`): messages from native
    /// members go to [`RouterHandle::from_group`] in log order.
    pub fn attach_router(&self, router: RouterHandle) {
        if self.attached.swap(true, std::sync::atomic::Ordering::AcqRel) {
            return;
        }
        let _ = self.router.set(router.downgrade());
        self.spawn_waker();
        self.spawn_key_pass();
        let mut stop = self.stop.subscribe();
        let rx = self.inbound_rx.lock().ok().and_then(|mut g| g.take());
        let handed_on = self.handed_on.clone();
        let media = self.media.clone();
        if let Some(mut rx) = rx {
            tokio::spawn(async move {
                loop {
                    let (room, seq, id, mut msg, parts) = tokio::select! {
                        m = rx.recv() => match m {
                            Some(m) => m,
                            None => break,
                        },
                        _ = stop.wait_for(|s| *s) => break,
                    };
                    if !parts.is_empty() {
                        take_external_parts(media.get(), &mut msg, &parts).await;
                    }
                    // A transient failure (store, room of record) is retried with backoff: the kept plaintext
                    // is dropped only once the router took the message or refused it for good.
                    let mut backoff = std::time::Duration::from_millis(100);
                    loop {
                        match router.from_group(id, msg.clone()).await {
                            Ok(_) => break,
                            // Shutting down: the message stays kept and is handed on after the restart.
                            Err(RouteError::Closed) => return,
                            Err(e @ (RouteError::Store(_) | RouteError::Room(_))) => {
                                tracing::warn!(error = %e, message_id = %id.to_hex(), retry_in = ?backoff, "message from the group not taken yet");
                                tokio::select! {
                                    _ = tokio::time::sleep(backoff) => {}
                                    _ = stop.wait_for(|s| *s) => return,
                                }
                                backoff = (backoff * 2).min(std::time::Duration::from_secs(30));
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, message_id = %id.to_hex(), "message from the group refused by the router");
                                break;
                            }
                        }
                    }
                    if let Ok(mut h) = handed_on.lock() {
                        let last = h.entry(room).or_default();
                        *last = (*last).max(seq);
                    }
                }
            });
        }
    }

    /// Stops forwarding messages from the group to the router and the portal workers, releasing the router (and
    /// with it the store). Call after the router has shut down. Each open portal's log cursor is stored first (a
    /// clean stop leaves none behind, so a portal that was idle stays closed at the next start).
    pub async fn shutdown(&self) {
        let _ = self.stop.send(true);
        let open: Vec<_> = self.slots.lock().map(|mut m| m.drain().map(|(_, slot)| slot).collect()).unwrap_or_default();
        // A publish still holding a slot finishes first; 5 s for all of them, as the daemon's stop is bounded.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        for slot in open {
            let Ok(mut s) = tokio::time::timeout_at(deadline, slot.lock()).await else { continue };
            if let Err(e) = self.store_cursor(&mut s).await {
                tracing::warn!(room = %s.room, error = %e, "storing the room log cursor failed");
            }
        }
    }

    /// Sets the per-user leaf limits of `portal` (used when its slot opens: call before
    /// [`MlsRooms::ensure_portal`]). Portals without one get [`LeafPolicy::default`].
    pub fn set_leaf_policy(&self, portal: &PortalId, policy: LeafPolicy) {
        if let Ok(mut p) = self.leaf_policies.lock() {
            p.insert(portal.clone(), policy);
        }
    }

    /// Sets who may join `portal`'s room by external commit (used when its slot opens: call before
    /// [`MlsRooms::ensure_portal`]); a room made earlier with another policy is changed to it. Portals without one
    /// get the policy [`MlsRooms::open`] was given.
    pub fn set_join_policy(&self, portal: &PortalId, policy: JoinPolicy) {
        if let Ok(mut p) = self.join_policies.lock() {
            p.insert(portal.clone(), policy);
        }
    }

    /// How often each local member of a portal's group (the bridge's leaf, per-user leaves) commits a fresh leaf
    /// key; `None`: never. Default [`DEFAULT_KEY_UPDATE`].
    pub fn set_key_update_interval(&self, every: Option<Duration>) {
        let ms = every.map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1));
        self.key_update_ms.store(ms, std::sync::atomic::Ordering::Relaxed);
    }

    /// The key-update interval ([`MlsRooms::set_key_update_interval`]).
    pub fn key_update_interval(&self) -> Option<Duration> {
        match self.key_update_ms.load(std::sync::atomic::Ordering::Relaxed) {
            0 => None,
            ms => Some(Duration::from_millis(ms)),
        }
    }

    /// Opens (creating if needed) the group and hub room of `portal` and starts its worker. Idempotent.
    pub async fn ensure_portal(&self, portal: &PortalId) -> Result<(), RoomError> {
        self.slot(portal).await.map(|_| ())
    }

    async fn slot(&self, portal: &PortalId) -> Result<Arc<tokio::sync::Mutex<Slot>>, RoomError> {
        self.slot_for(portal, None).await
    }

    /// [`MlsRooms::slot`]; a group it opens gets `close_when_caught_up` ([`Slot::close_when_caught_up`]).
    async fn slot_for(
        &self,
        portal: &PortalId,
        close_when_caught_up: Option<u64>,
    ) -> Result<Arc<tokio::sync::Mutex<Slot>>, RoomError> {
        if let Some(s) = self.slots.lock().map_err(unavailable)?.get(portal) {
            return Ok(s.clone());
        }
        if *self.stop.borrow() {
            return Err(RoomError::Unavailable("the room of record is shutting down".into()));
        }
        // One opener at a time per portal: two loads of one group would leave the first without the right to
        // send (each load takes the group's storage claim).
        let gate = self.opening.lock().map_err(unavailable)?.entry(portal.clone()).or_default().clone();
        let opened = {
            let _open = gate.lock().await;
            let open = self.slots.lock().map_err(unavailable)?.get(portal).cloned();
            match open {
                Some(s) => Ok(s),
                None => self.open_slot(portal, close_when_caught_up).await,
            }
        };
        if let Ok(mut gates) = self.opening.lock()
            && Arc::strong_count(&gate) == 2
        {
            // Nobody else waits at it (a waiter clones it under this lock first).
            gates.remove(portal);
        }
        opened
    }

    /// Loads (or creates) `portal`'s group and starts its worker; see [`MlsRooms::slot`].
    async fn open_slot(
        &self,
        portal: &PortalId,
        close_when_caught_up: Option<u64>,
    ) -> Result<Arc<tokio::sync::Mutex<Slot>>, RoomError> {
        let room = self.room_of(portal);
        let gid = room.as_bytes();
        let store = self.provider.store();
        let per_user = Repo::new(store)
            .portal(portal)
            .map_err(unavailable)?
            .is_some_and(|r| r.mls_identity == MlsIdentity::PerUser);
        let mut applied = Records(store).cursor(&room, CURSOR).map_err(unavailable)?;
        if let Some(hub) = self.remote_hub(&room) {
            if per_user {
                return Err(RoomError::Refused(format!(
                    "portal {portal}: mls_identity = \"per-user\" needs a room hosted here, and {room} is {hub}'s"
                )));
            }
            let group = match PortalGroup::load(self.mls.clone(), self.member.clone(), gid) {
                Ok(g) if g.is_active() => g,
                // Never joined, or removed since: (re)join; what came before the join is not ours to read.
                Ok(_) | Err(MlsError::UnknownGroup(_)) => {
                    let (group, seq) = self.join_remote(&room, &hub).await?;
                    if let Some(seq) = seq.filter(|s| *s > applied) {
                        let mut b = Batch::new();
                        write::cursor(&mut b, &room, CURSOR, seq);
                        store.commit(b).await.map_err(unavailable)?;
                        applied = seq;
                    }
                    group
                }
                Err(e) => return Err(unavailable(e)),
            };
            return self.start_slot(portal, room, group, None, applied, close_when_caught_up).await;
        }
        // Loaded inline: its size is unknown before, and handing the worker over for each of thousands of small
        // portals opening at a start would cost more than the occasional big group's load (once per open).
        let group = match PortalGroup::load(self.mls.clone(), self.member.clone(), gid) {
            Ok(g) => g,
            Err(MlsError::UnknownGroup(_)) => {
                PortalGroup::create(self.mls.clone(), self.member.clone(), &self.config, gid)
                    .durable()
                    .await
                    .map_err(unavailable)?
            }
            Err(e) => return Err(unavailable(e)),
        };
        // The hub keeps the public state of the group from its GroupInfo (with the ratchet tree), and validates
        // every handshake against it, the portal's own included. (A room made by an earlier build, whose hub does
        // not know its group yet, learns it here if the group is at the hub's epoch.)
        let info = offload(group.member_count(), || group.export_group_info(true)).await.map_err(unavailable)?;
        let info = MlsMessageBytes::new(info).map_err(unavailable)?;
        let policy = self.join_policies.lock().map_err(unavailable)?.get(portal).copied().unwrap_or(self.policy);
        match self.provider.create_room(&room, &info, None, self.member.uri(), policy, true).await {
            Ok(()) => self.provider.set_join_policy(&room, policy).await.map_err(unavailable)?,
            Err(ProviderError::Exists(_)) => {
                return Err(RoomError::Refused(format!(
                    "portal {portal}: the room {room} exists on this hub and was not created by the bridge (a native \
                     user made it first); rename the portal or remove that room"
                )));
            }
            Err(e) => return Err(unavailable(e)),
        }
        self.serve_group_info(&room, &group).await;
        let leaves = if per_user {
            let policy = self.leaf_policies.lock().map_err(unavailable)?.get(portal).cloned().unwrap_or_default();
            let open = || UserLeaves::open(store.clone(), self.config.clone(), policy, &group);
            Some(offload(group.member_count(), open).await.map_err(unavailable)?)
        } else {
            None
        };
        self.start_slot(portal, room, group, leaves, applied, close_when_caught_up).await
    }

    /// Makes the slot of `portal`'s opened group (which has applied its room's log up to `applied`) and starts
    /// its worker; see [`MlsRooms::slot`].
    async fn start_slot(
        &self,
        portal: &PortalId,
        room: String,
        group: PortalGroup,
        leaves: Option<UserLeaves>,
        applied: u64,
        close_when_caught_up: Option<u64>,
    ) -> Result<Arc<tokio::sync::Mutex<Slot>>, RoomError> {
        // Messages decrypted before the last stop (or before the portal closed) but maybe never taken by the
        // router go to it again (it drops what it already has by message id).
        let handed_on = self.handed_on.lock().ok().and_then(|h| h.get(&room).copied()).unwrap_or(0);
        for (seq, id, msg, parts) in
            order::decoded_kept(&group, portal, &room, leaves.as_ref(), |k| k > handed_on).map_err(unavailable)?
        {
            let _ = self.inbound.send((room.clone(), seq, id, msg, parts));
        }
        let closed = Arc::new(tokio::sync::Notify::new());
        let slot = Arc::new(tokio::sync::Mutex::new(Slot {
            group,
            room: room.clone(),
            applied,
            stored: applied,
            own: HashSet::new(),
            leaves,
            wanted: Vec::new(),
            wanted_since: None,
            active: std::time::Instant::now(),
            closed: closed.clone(),
            close_when_caught_up,
            resend: self.remote_hub(&room).is_some(),
            behind_copy: false,
            lost_rejoin_at: None,
            queue: None,
        }));
        let slot = {
            let mut slots = self.slots.lock().map_err(unavailable)?;
            if let Some(existing) = slots.get(portal) {
                return Ok(existing.clone());
            }
            // Shut down while it was loading: the map stays empty.
            if *self.stop.borrow() {
                return Err(RoomError::Unavailable("the room of record is shutting down".into()));
            }
            slots.insert(portal.clone(), slot.clone());
            slot
        };
        self.known.lock().map_err(unavailable)?.insert(room.clone(), portal.clone());
        self.spawn_worker(portal.clone(), room, slot.clone(), closed)?;
        Ok(slot)
    }

    fn spawn_worker(
        &self,
        portal: PortalId,
        room: String,
        slot: Arc<tokio::sync::Mutex<Slot>>,
        closed: Arc<tokio::sync::Notify>,
    ) -> Result<(), RoomError> {
        let mut rx = self.provider.subscribe(&room).map_err(unavailable)?;
        let me = self.me.clone();
        let mut stop = self.stop.subscribe();
        tokio::spawn(async move {
            let mut sweep_at: Option<tokio::time::Instant> = None;
            // When to write the cursor the portal's own messages left behind (`Slot::stored`).
            let mut cursor_at: Option<tokio::time::Instant> = None;
            // After a close that could not happen (the slot in use, a message just in): not before this.
            let mut retry_close = tokio::time::Instant::now();
            // After a look at the bound on open portals that left it exceeded: the next not before this, and the
            // pause after the next such look.
            let mut retry_evict = tokio::time::Instant::now();
            let mut evict_backoff = Duration::from_secs(1);
            loop {
                let Some(this) = me.upgrade() else { return };
                let close_at;
                // When to look again at the bound on open portals, exceeded now (`dormant::EVICT_MIN_IDLE`).
                let evict_at;
                let close_now;
                // When to add the leaves of the new speakers gathered so far (`Slot::wanted`).
                let add_at;
                // When a join again for a lost copy, paused, is due (`remote::LOST_REJOIN_PAUSE`).
                let rejoin_at;
                {
                    let mut s = slot.lock().await;
                    // Closed while this worker waited for the lock: the portal's group is another object now.
                    if !this.slots.lock().is_ok_and(|m| m.get(&portal).is_some_and(|o| Arc::ptr_eq(o, &slot))) {
                        return;
                    }
                    if let Err(e) = this.catch_up(&portal, &mut s).await {
                        tracing::warn!(portal = %portal, error = %e, "catching up with the room log failed");
                    }
                    // In a room hosted elsewhere, a leaf removed from it, or whose copy of its log was lost, joins again.
                    if let Err(e) = this.rejoin_if_needed(&mut s).await {
                        tracing::warn!(portal = %portal, error = %e, "joining the room again failed");
                    }
                    rejoin_at = s
                        .lost_rejoin_at
                        .filter(|_| s.behind_copy || this.provider.copy_gone(&s.room))
                        .map(|at| tokio::time::Instant::from_std(at) + remote::LOST_REJOIN_PAUSE)
                        .filter(|at| *at > tokio::time::Instant::now());
                    let orphans = s.leaves.as_mut().map(UserLeaves::take_orphans).unwrap_or_default();
                    for uri in orphans {
                        this.remove_orphan(&portal, &mut s, &uri).await;
                    }
                    add_at = this.add_wanted_leaves_when_due(&portal, &mut s).await;
                    let now = tokio::time::Instant::now();
                    if let Some(every) = leaves::sweep_interval(&s, this.key_update_interval()) {
                        if sweep_at.is_some_and(|t| t <= now) {
                            if let Err(e) = this.sweep_idle_leaves(&portal, &mut s).await {
                                tracing::warn!(portal = %portal, error = %e, "removing idle per-user leaves failed");
                            }
                            if let Err(e) = this.refresh_keys(&portal, &mut s).await {
                                tracing::warn!(portal = %portal, error = %e, "key update failed; retried later");
                            }
                            sweep_at = None;
                        }
                        sweep_at = sweep_at.or(Some(now + every));
                    }
                    // A portal with per-user leaves stays open (their idle sweep runs here).
                    let closable = s.leaves.as_ref().is_none_or(|l| l.is_empty()) && s.wanted.is_empty();
                    close_at = this
                        .idle_close()
                        .filter(|_| closable)
                        .map(|d| (tokio::time::Instant::from_std(s.active) + d).max(retry_close));
                    close_now = s.close_when_caught_up.is_some();
                    evict_at = this
                        .over_open_bound()
                        .then(|| (tokio::time::Instant::from_std(s.active) + dormant::EVICT_MIN_IDLE).max(retry_evict));
                    if s.stored >= s.applied {
                        cursor_at = None;
                    } else if close_now || cursor_at.is_some_and(|t| t <= now) {
                        cursor_at = None;
                        if let Err(e) = this.store_cursor(&mut s).await {
                            tracing::warn!(portal = %portal, error = %e, "storing the room log cursor failed");
                            cursor_at = Some(now + CURSOR_DELAY);
                        }
                    } else {
                        cursor_at = cursor_at.or(Some(now + CURSOR_DELAY));
                    }
                }
                if close_now && this.close_if_unused(&portal, None).await {
                    return;
                }
                // More portals open than the bound: the least used close (this one, maybe; `closed` says so).
                this.close_least_used().await;
                drop(this);
                let due = tokio::select! {
                    r = rx.changed() => if r.is_err() { return } else { Due::Round },
                    _ = sleep_until_some(sweep_at) => Due::Round,
                    _ = sleep_until_some(add_at) => Due::Round,
                    _ = sleep_until_some(rejoin_at) => Due::Round,
                    _ = sleep_until_some(cursor_at) => Due::Round,
                    _ = sleep_until_some(evict_at) => Due::Evict,
                    _ = sleep_until_some(close_at) => Due::Close,
                    _ = closed.notified() => return,
                    // `shutdown` stores the cursor.
                    _ = stop.wait_for(|s| *s) => return,
                };
                let Some(this) = me.upgrade() else { return };
                match due {
                    Due::Round => {}
                    Due::Evict => {
                        this.close_least_used().await;
                        // Still exceeded (portals that cannot close): looked at less and less often.
                        if this.over_open_bound() {
                            retry_evict = tokio::time::Instant::now() + evict_backoff;
                            evict_backoff = (evict_backoff * 2).min(Duration::from_secs(60));
                        } else {
                            evict_backoff = Duration::from_secs(1);
                        }
                    }
                    Due::Close => {
                        if this.close_if_unused(&portal, this.idle_close()).await {
                            return;
                        }
                        retry_close = tokio::time::Instant::now() + Duration::from_secs(1);
                    }
                }
            }
        });
        Ok(())
    }

    /// Applies every log entry after the slot's position, in order.
    async fn catch_up(&self, portal: &PortalId, s: &mut Slot) -> Result<(), RoomError> {
        loop {
            let entries = match self.provider.entries_after(&s.room, s.applied, 256) {
                Ok(entries) => entries,
                // A room hosted elsewhere whose copy no longer reaches back here: joined again
                // (`remote::rejoin_if_needed`), and read from there.
                Err(mimi_provider::ProviderError::Pruned { .. }) if self.remote_hub(&s.room).is_some() => {
                    s.behind_copy = true;
                    return Ok(());
                }
                Err(e) => return Err(unavailable(e)),
            };
            if entries.is_empty() {
                return Ok(());
            }
            let mut commits = false;
            let mut others = false;
            s.active = std::time::Instant::now();
            for e in entries {
                let seq = e.seq;
                if !s.own.remove(&seq) {
                    others = true;
                    // In use (by an entry that came after it was opened): it closes when idle.
                    if s.close_when_caught_up.is_some_and(|last| seq > last) {
                        s.close_when_caught_up = None;
                    }
                    if e.fanout.message.wire_format() != wire_format::WELCOME {
                        commits |= self.apply(portal, s, seq, e.fanout.message.as_bytes()).await;
                    }
                }
                s.applied = seq;
            }
            if commits {
                self.serve_group_info(&s.room, &s.group).await;
            }
            // Only its own messages: nothing was applied that a restart would miss (it would find them its own
            // again), so the cursor waits for the worker (`store_cursor`) instead of queueing its write in
            // front of the batch that records the message for the legs.
            if others {
                self.store_cursor(s).await?;
            }
        }
    }

    /// Writes the slot's log cursor if the store's is behind.
    async fn store_cursor(&self, s: &mut Slot) -> Result<(), RoomError> {
        if s.stored >= s.applied {
            return Ok(());
        }
        let mut b = Batch::new();
        write::cursor(&mut b, &s.room, CURSOR, s.applied);
        self.provider.store().commit(b).await.map_err(unavailable)?;
        s.stored = s.applied;
        Ok(())
    }

    /// Processes one message of the log; true if it was a commit.
    async fn apply(&self, portal: &PortalId, s: &mut Slot, seq: u64, bytes: &[u8]) -> bool {
        let handed_on = self.handed_on.lock().ok().and_then(|h| h.get(&s.room).copied()).unwrap_or(0);
        let list = kept_list(&s.room);
        let processed = offload(s.group.member_count(), || s.group.process_and_keep(bytes, seq, &list, handed_on));
        match processed.await.durable().await {
            Ok(Received::Application { sender_identity, .. }) if leaves::is_local_leaf(s, &sender_identity) => {
                // One of our per-user leaves spoke (an own message seen again after a restart): not bridged again.
                false
            }
            Ok(Received::Application { sender_identity, plaintext, .. }) => {
                match decode_incoming_with_parts(portal, &s.room, &sender_identity, &plaintext) {
                    Ok((id, msg, parts)) => {
                        let _ = self.inbound.send((s.room.clone(), seq, id, msg, parts));
                    }
                    Err(e) => tracing::warn!(portal = %portal, error = %e, "MIMI content discarded"),
                }
                false
            }
            Ok(Received::Commit { .. }) => {
                leaves::feed_handshake(portal, s, bytes).await;
                true
            }
            Ok(Received::Proposal { .. }) => {
                leaves::feed_handshake(portal, s, bytes).await;
                false
            }
            Ok(Received::Own) => false,
            Err(e) => {
                tracing::debug!(portal = %portal, error = %e, "log entry not applied");
                false
            }
        }
    }

    /// Sends a commit of the bridge's leaf (pending on its group) to the hub: merged if accepted (the local
    /// per-user leaves process it and the served GroupInfo is refreshed; `true`), dropped if the hub moved to a
    /// newer epoch first (`false`: catch up and commit again) or refused it (an error).
    async fn submit_own_commit(&self, s: &mut Slot, out: CommitOutput) -> Result<bool, RoomError> {
        let sent = match self.remote_hub(&s.room) {
            Some(hub) => self.commit_remote(&s.room, &hub, &out).await,
            None => self.send_commit(&s.room, &out.commit, self.member.uri()).await,
        };
        self.complete_own_commit(s, out, sent).await
    }

    /// Merges or drops the pending commit `out` of the bridge's leaf after the hub's answer `sent` (see
    /// [`MlsRooms::send_commit`]).
    async fn complete_own_commit(
        &self,
        s: &mut Slot,
        out: CommitOutput,
        sent: Result<Option<u64>, RoomError>,
    ) -> Result<bool, RoomError> {
        match sent {
            Ok(Some(seq)) => {
                // Marked as ours only once merged: if the merge does not happen, the worker meets the commit in
                // the log and merges it then.
                let merged = offload(s.group.member_count(), || s.group.merge_pending_commit()).await;
                merged.durable().await.map_err(unavailable)?;
                s.own.insert(seq);
                leaves::feed_own_commit(s, &out.commit).await;
                self.serve_group_info(&s.room, &s.group).await;
                Ok(true)
            }
            sent => {
                let _ = s.group.clear_pending_commit().durable().await;
                sent.map(|_| false)
            }
        }
    }

    /// Sends a commit (MLSMessage bytes) of the local member `sender` to the room's hub: `Some(seq)` if the hub
    /// sequenced it, `None` if the hub moved to a newer epoch first (catch up and commit again), an error if it
    /// refused the commit or could not be reached. The caller merges or drops its pending commit accordingly.
    async fn send_commit(&self, room: &str, commit: &[u8], sender: &str) -> Result<Option<u64>, RoomError> {
        let commit = MlsMessageBytes::new(commit.to_vec()).map_err(unavailable)?;
        match self.provider.submit(room, commit, sender, Origin::Portal).await {
            Ok(a) => Ok(Some(a.seq)),
            Err(ProviderError::Refused(Refusal::EpochTooOld { .. })) => Ok(None),
            Err(ProviderError::Refused(r)) => Err(RoomError::Refused(r.to_string())),
            Err(e) => Err(unavailable(e)),
        }
    }

    /// Serves `group`'s current GroupInfo for external joins of `room`, and stores it (one small write per
    /// commit: it carries no ratchet tree, the hub sends its own beside it), so that the portal can stay closed
    /// after a restart whatever the group's size ([`dormant`]).
    async fn serve_group_info(&self, room: &str, group: &PortalGroup) {
        if self.remote_hub(room).is_some() {
            // Its hub keeps the GroupInfo each commit carries.
            return;
        }
        let Ok(info) = offload(group.member_count(), || group.export_group_info(false)).await else { return };
        let stored = match MlsMessageBytes::new(info) {
            Ok(info) => self.provider.put_group_info(room, info).await,
            Err(e) => Err(ProviderError::BadRequest(e.to_string())),
        };
        if let Err(e) = stored {
            tracing::debug!(room, error = %e, "GroupInfo not stored");
        }
    }

    /// The portal group's member identities (for tests and status).
    pub async fn members(&self, portal: &PortalId) -> Result<Vec<Vec<u8>>, RoomError> {
        let slot = self.slot(portal).await?;
        let s = slot.lock().await;
        Ok(s.group.members().into_iter().map(|m| m.identity).collect())
    }

    /// The last position of the room's log the portal's worker has applied.
    pub async fn position(&self, portal: &PortalId) -> Result<u64, RoomError> {
        let slot = self.slot(portal).await?;
        let s = slot.lock().await;
        Ok(s.applied)
    }

    /// The users with a per-user leaf in `portal` (empty for a shared-leaf portal).
    pub async fn leaf_users(&self, portal: &PortalId) -> Result<Vec<String>, RoomError> {
        let slot = self.slot(portal).await?;
        let s = slot.lock().await;
        Ok(s.leaves.as_ref().map(leaves::users).unwrap_or_default())
    }
}

#[async_trait]
impl RoomOfRecord for MlsRooms {
    async fn publish(
        &self,
        msg: &GroupMessage,
        source: Option<(&InboundEvent, &NativeId)>,
    ) -> Result<Published, RoomError> {
        let slot = self.slot(&msg.portal).await?;
        let mut s = slot.lock().await;
        s.active = std::time::Instant::now();
        s.close_when_caught_up = None;
        if let Some(hub) = self.remote_hub(&s.room) {
            return self.publish_remote(&hub, msg, source, &mut s).await;
        }
        let domain = self.provider.domain().to_owned();
        for _ in 0..=EPOCH_RETRIES {
            // In a per-user portal the legacy author speaks from their own leaf: added now if they have none, or,
            // with batched adds, added by the worker with other new speakers while the shared leaf speaks for them.
            let leaf = match (&s.leaves, &msg.sender.legacy) {
                (Some(leaves), Some(user)) => {
                    let uri = user.uri(&domain);
                    if leaves.policy().add_batch > 1 {
                        leaves::want_leaf(&mut s, &uri).then_some(uri)
                    } else {
                        self.ensure_leaf(&msg.portal, &mut s, &uri).await?.then_some(uri)
                    }
                }
                _ => None,
            };
            let sender = leaf.as_deref().unwrap_or(self.member.uri());
            let content = encode_outgoing_with(msg, sender, &s.room, &domain, self.media.get().map(|m| &**m))?;
            let id = content.message_id().map_err(|e| RoomError::Refused(e.to_string()))?;
            let id = MessageId::from_bytes(&id).map_err(|e| RoomError::Refused(e.to_string()))?;
            let encrypted = match &leaf {
                Some(uri) => match s.leaves.as_mut().and_then(|l| l.group_mut(uri, std::time::Instant::now())) {
                    Some(g) => offload(g.member_count(), || g.encrypt(content.bytes())).await,
                    // Removed by a commit processed while catching up: add it again on the next round.
                    None => continue,
                },
                None => offload(s.group.member_count(), || s.group.encrypt(content.bytes())).await,
            };
            let ct = encrypted.durable().await.map_err(unavailable)?;
            let ct = MlsMessageBytes::new(ct).map_err(unavailable)?;
            let room = s.room.clone();
            // Marked in the batch that sequences it: a restart before the portal records the event finds it.
            let with = |seq| {
                let mut with = Batch::new();
                if let Some((event, native)) = source {
                    let now = crate::outbox::now_ms();
                    crate::repo::write::sent(&mut with, &msg.portal, event, native, &id, Some(seq), now);
                }
                with
            };
            match self.provider.submit_with(&room, ct, sender, Origin::Portal, with).await {
                Ok(a) => {
                    s.own.insert(a.seq);
                    let earlier = self.kept_before(&msg.portal, &mut s, a.seq).await;
                    return Ok(Published { id, earlier });
                }
                Err(ProviderError::Refused(Refusal::EpochTooOld { .. })) => {
                    self.catch_up(&msg.portal, &mut s).await?;
                }
                Err(ProviderError::Refused(r)) => return Err(RoomError::Refused(r.to_string())),
                Err(e) => return Err(unavailable(e)),
            }
        }
        Err(RoomError::Unavailable("the room's epoch keeps moving".into()))
    }

    /// The sent markers ([`crate::repo::write::sent`]) and the kept lists do that.
    fn keeps_until_recorded(&self) -> bool {
        true
    }

    /// From the kept list, after the log is applied up to now (the portal's room is opened if it was closed).
    async fn sequenced_before(&self, portal: &PortalId, seq: u64) -> Vec<(MessageId, GroupMessage)> {
        let slot = match self.slot(portal).await {
            Ok(slot) => slot,
            Err(e) => {
                tracing::warn!(portal = %portal, error = %e, "messages sequenced earlier not read");
                return Vec::new();
            }
        };
        let mut s = slot.lock().await;
        self.kept_before(portal, &mut s, seq).await
    }
}

/// The `UpdateRequest` of a commit of ours: the commit, its Welcome if any, and the GroupInfo of the epoch it
/// makes (without the ratchet tree, which the hub keeps).
fn update_request(out: &CommitOutput) -> Result<UpdateRequest, RoomError> {
    let framed = |b: Vec<u8>| MlsMessageBytes::new(b).map_err(unavailable);
    let info = out.group_info.clone().ok_or_else(|| unavailable("the MLS engine made no GroupInfo"))?;
    Ok(UpdateRequest::Commit {
        commit: framed(out.commit.clone())?,
        welcome: out.welcome.clone().map(framed).transpose()?,
        group_info: GroupInfoOption(framed(info)?),
        ratchet_tree: RatchetTreeOption::DistributionService,
    })
}

/// What woke a portal's worker: a round of work only, or also a look at the bound on open portals, or its idle
/// time being up.
enum Due {
    Round,
    Evict,
    Close,
}

/// Sleeps until `at`; never wakes when it is `None` (a worker timer that is not armed).
async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// The MIMI content of a portal message, sent from the bridge's leaf `bridge_uri`; attachments as links in the
/// text.
pub fn encode_outgoing(msg: &GroupMessage, bridge_uri: &str, room: &str, domain: &str) -> Result<Message, RoomError> {
    encode_outgoing_with(msg, bridge_uri, room, domain, None)
}

/// [`encode_outgoing`], with the attachments `media` holds as MIMI external parts (the text, then each part, in
/// a `processAll` multipart); other attachments as links in the text.
pub fn encode_outgoing_with(
    msg: &GroupMessage,
    bridge_uri: &str,
    room: &str,
    domain: &str,
    media: Option<&bridge_media::FileMediaStore>,
) -> Result<Message, RoomError> {
    let refused = |e: &dyn std::fmt::Display| RoomError::Refused(e.to_string());
    let mut b = ContentBuilder::new(bridge_uri, room);
    let mut parts = Vec::new();
    let mut text = |b: ContentBuilder, d: &MessageDraft| {
        // MIMI has no emotes: an emote travels as "/me action", which native clients know to show as one.
        let mut body = if d.style == MessageStyle::Emote { format!("/me {}", d.body) } else { d.body.clone() };
        for a in &d.attachments {
            if let Some(part) = media.and_then(|m| m.external_part(&a.url)) {
                parts.push(part);
                continue;
            }
            if !body.is_empty() {
                body.push('\n');
            }
            body.push_str(&a.url);
        }
        match d.format {
            TextFormat::Markdown => b.markdown(&body),
            TextFormat::Plain => b.plain_text(&body),
        }
    };
    b = match &msg.content {
        GroupContent::Message { draft, in_reply_to } => {
            let b = text(b, draft);
            match in_reply_to {
                Some(p) => b.reply_to(*p.as_bytes()),
                None => b,
            }
        }
        GroupContent::Edit { replaces, draft } => text(b, draft).edit(*replaces.as_bytes()),
        GroupContent::Delete { replaces } => b.delete(*replaces.as_bytes()),
        GroupContent::Reaction { in_reply_to, key } => b.reaction(*in_reply_to.as_bytes(), key),
        GroupContent::Unreact { replaces } => b.unreact(*replaces.as_bytes()),
    };
    let mut content = b.build().map_err(|e| refused(&e))?;
    if !parts.is_empty() {
        let text = std::mem::replace(&mut content.nested_part, NestedPart::single("text/plain", Vec::new()));
        let mut all = vec![text];
        all.extend(parts.into_iter().map(|p| NestedPart {
            disposition: Disposition::Attachment,
            language: String::new(),
            body: PartBody::External(Box::new(p)),
        }));
        content.nested_part = NestedPart {
            disposition: Disposition::Render,
            language: String::new(),
            body: PartBody::Multi(MultiPart { semantics: PartSemantics::ProcessAll, parts: all }),
        };
    }
    if let Some(user) = &msg.sender.legacy {
        LegacySender::from_user(user, domain).attach(&mut content.extensions).map_err(|e| refused(&e))?;
    }
    Message::encode(content).map_err(|e| refused(&e))
}

/// Whether the member `sender` may speak for the legacy user `user` (see [`decode_incoming_with_parts`]).
fn speaks_for(sender: &str, user: &str) -> bool {
    let legacy_name = user.rsplit_once("/u/").is_some_and(|(_, name)| name.contains('~') && !name.contains('/'));
    legacy_name && uri_domain(user).is_some_and(|d| sender == format!("mimi://{d}/u/bridge"))
}

/// The first text of a body: `(text, markdown?)`.
fn body_text(part: &NestedPart) -> Option<(String, bool)> {
    let mut found = None;
    part.walk(&mut |p| {
        if found.is_some() {
            return;
        }
        if let PartBody::Single(s) = &p.body {
            let md = s.content_type.starts_with("text/markdown");
            if md || s.content_type.starts_with("text/plain") {
                found = Some((String::from_utf8_lossy(&s.content).into_owned(), md));
            }
        }
    });
    found
}

/// Why an incoming message was discarded.
#[derive(Debug, thiserror::Error)]
pub enum IncomingError {
    /// Not valid MIMI content.
    #[error(transparent)]
    Content(#[from] mimi_content::ContentError),
    /// The content's room is not this room.
    #[error("content for room {0:?}")]
    WrongRoom(Option<String>),
    /// A bad message id.
    #[error("message id: {0}")]
    Id(String),
}

/// Decodes and validates MIMI content `plaintext` received in `room` from the MLS member `sender_identity`
/// (its credential, a MIMI URI), into what the router takes.
pub fn decode_incoming(
    portal: &PortalId,
    room: &str,
    sender_identity: &[u8],
    plaintext: &[u8],
) -> Result<(MessageId, GroupMessage), IncomingError> {
    decode_incoming_with_parts(portal, room, sender_identity, plaintext).map(|(id, msg, _)| (id, msg))
}

/// [`decode_incoming`], with the external parts (attachments) of the content, for [`take_external_parts`].
pub fn decode_incoming_with_parts(
    portal: &PortalId,
    room: &str,
    sender_identity: &[u8],
    plaintext: &[u8],
) -> Result<(MessageId, GroupMessage, Vec<ExternalPart>), IncomingError> {
    let msg = Message::decode(plaintext)?;
    mimi_content::validate(msg.content())?;
    let c: &MimiContent = msg.content();
    if c.extensions.room_uri.as_deref().is_some_and(|r| r != room) {
        return Err(IncomingError::WrongRoom(c.extensions.room_uri.clone()));
    }
    // The MLS-authenticated sender wins over what the content claims.
    let sender_uri = String::from_utf8_lossy(sender_identity).into_owned();
    let id = msg.message_id_with(Some(&sender_uri), Some(room))?;
    let id = MessageId::from_bytes(&id).map_err(|e| IncomingError::Id(e.to_string()))?;
    let sender = match LegacySender::from_extensions(&c.extensions) {
        // Another bridge's leaf (`mimi://DOMAIN/u/bridge`, a name no native user may register) speaking for one of
        // its legacy users, in a room two bridges federate: shown as that user, whose URI must be a legacy user's
        // (`NET.ACCT~…`, which no native user may register either) of the bridge's own domain. Anyone else's claim
        // is not shown.
        Ok(Some(legacy)) if speaks_for(&sender_uri, &legacy.uri) => {
            let shown = legacy.uri.rsplit('/').next().unwrap_or(&legacy.uri);
            let display_name = legacy.display_name.clone().unwrap_or_else(|| shown.to_owned());
            Sender { uri: legacy.uri, display_name, network: legacy.network, legacy: None }
        }
        _ => {
            let display_name = sender_uri.rsplit('/').next().unwrap_or(&sender_uri).to_owned();
            Sender { uri: sender_uri.clone(), display_name, network: "mimi".into(), legacy: None }
        }
    };
    let to_id = |b: &[u8; 32]| MessageId::from_bytes(b).map_err(|e| IncomingError::Id(e.to_string()));
    let disposition = c.nested_part.disposition;
    let null = matches!(c.nested_part.body, PartBody::Null);
    let draft = || {
        let (text, md) = body_text(&c.nested_part).unwrap_or_default();
        // MIMI has no emotes; a native client's "/me waves" is one (the common chat-client convention).
        let (text, style) = match text.strip_prefix("/me ") {
            Some(action) => (action.to_owned(), MessageStyle::Emote),
            None => (text, MessageStyle::Normal),
        };
        let mut d = if md { MessageDraft::markdown(text) } else { MessageDraft::plain(text) };
        d.style = style;
        d
    };
    let content = match (c.replaces, c.in_reply_to) {
        (Some(r), _) if null && disposition == Disposition::Reaction => GroupContent::Unreact { replaces: to_id(&r)? },
        (Some(r), _) if null => GroupContent::Delete { replaces: to_id(&r)? },
        (Some(r), _) => GroupContent::Edit { replaces: to_id(&r)?, draft: draft() },
        (None, Some(p)) if disposition == Disposition::Reaction => {
            GroupContent::Reaction { in_reply_to: to_id(&p)?, key: draft().body }
        }
        (None, p) => GroupContent::Message { draft: draft(), in_reply_to: p.as_ref().map(to_id).transpose()? },
    };
    let mut parts = Vec::new();
    c.nested_part.walk(&mut |p| {
        if let PartBody::External(e) = &p.body {
            parts.push((**e).clone());
        }
    });
    Ok((id, GroupMessage { portal: portal.clone(), sender, content }, parts))
}

/// Turns a member's external parts into attachments of `msg` other networks can open: each is fetched, checked
/// and decrypted into `media`. One that cannot be is not dropped silently: the text says which and why.
pub async fn take_external_parts(
    media: Option<&Arc<bridge_media::FileMediaStore>>,
    msg: &mut GroupMessage,
    parts: &[ExternalPart],
) {
    let draft = match &mut msg.content {
        GroupContent::Message { draft, .. } | GroupContent::Edit { draft, .. } => draft,
        _ => return,
    };
    for part in parts {
        let taken = match media {
            Some(m) => m.import_part(part).await.map_err(|e| e.to_string()),
            None => Err("this bridge keeps no media store".to_owned()),
        };
        match taken {
            Ok(a) => draft.attachments.push(a),
            Err(why) => {
                let name = if part.filename.is_empty() { part.content_type.as_str() } else { part.filename.as_str() };
                tracing::warn!(attachment = name, error = %why, "a member's attachment is not bridged");
                if !draft.body.is_empty() {
                    draft.body.push('\n');
                }
                draft.body.push_str(&format!("[attachment {name} not bridged: {why}]"));
            }
        }
    }
}
