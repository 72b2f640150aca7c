//! The appservice account (IO shell): pings the homeserver, joins the linked rooms as the appservice user, hands
//! transactions to the core and performs outbound events as ghosts created and joined on demand.
//!
//! A ghost that someone kicked or banned is not rejoined: what it would send is refused (the core reports it to
//! the sender as undelivered).
//!
//! Health: `Connecting` until the homeserver answers the appservice ping (it calls our ping endpoint, so this
//! proves both directions), `BackingOff` while it is unreachable or cannot reach us (retried with backoff),
//! `BadCredentials` when it refuses the `as_token`. A send that finds the homeserver down returns `Retry` (the core
//! keeps it in its outbox and retries in order) and starts pinging again.
//!
//! Catch-up (see [`crate::catchup`]): the homeserver may never push some events (Synapse can lose a transaction
//! after a failed push), so each joined linked room's timeline is read back and what the core missed is replayed
//! through the transaction path: after a room is joined, when the ping loop has (re)connected, and again
//! [`CATCH_UP_AFTER`] after that or after the last transaction answered with an error (debounced, one task).
//! A replay takes turns with the transactions (the walk before it does not hold them up); an event pushed while
//! the walk reads may reach the core before the older events it replays.

use crate::catchup::{self, Known};
use crate::config::Config;
use crate::e2ee::{E2ee, Status};
use crate::homeserver::{Homeserver, HsError};
use crate::media_transfer;
use crate::outbound::MatrixAction;
use crate::resend;
use crate::server::Transactions;
use crate::translate::Translator;
use async_trait::async_trait;
use bridge_api::connector::{Delivery, SendError};
use bridge_api::{
    Account, AccountContext, AccountId, Capabilities, ConnectorError, Health, InboundKind, LegId, NativeId,
    OutboundEvent,
};
use ruma::api::appservice::event::push_events;
use ruma::events::room::member::{MembershipState, RoomMemberEvent};
use ruma::events::{AnyStateEvent, AnyTimelineEvent};
use ruma::serde::Raw;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, watch};

#[path = "account_e2ee.rs"]
mod account_e2ee;
use account_e2ee::Intake;

/// The device every ghost sends from (MSC4190), so that the homeserver deduplicates a retried send durably.
pub const GHOST_DEVICE: &str = "MIMIBRIDGE";

/// What the appservice user says in a linked room that is (or becomes) end-to-end encrypted where the bridge cannot
/// take part in the encryption (the homeserver lacks what it takes: the reason follows).
pub const ENCRYPTED_ROOM_NOTICE: &str = "This room is end-to-end encrypted, but this bridge cannot decrypt or \
    encrypt here: encrypted messages are not bridged (the other side is told), and messages from the other networks \
    arrive unencrypted.";

/// Why an encrypted room is not bridged by an account with `encryption = false` (said in its notice).
pub const ENCRYPTION_OFF: &str = "end-to-end encryption is off in the bridge's configuration: `encryption = false`";

/// What the appservice user says in a linked room that is (or becomes) end-to-end encrypted, where the bridge
/// decrypts and encrypts: the bridge is the trust boundary, and says so.
pub const ENCRYPTED_ROOM_BRIDGED_NOTICE: &str = "This room is end-to-end encrypted. The bridge decrypts what is said \
    here to pass it on to the other networks of this portal, where it may not be end-to-end encrypted, and encrypts \
    what comes from them: the encryption of this room ends at the bridge.";

/// The longest wait between two pings while the homeserver is unavailable.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// How long after (re)connecting, or after the last transaction answered with an error, the rooms are caught up
/// (again): the homeserver has retried what it still holds by then.
pub const CATCH_UP_AFTER: Duration = Duration::from_secs(30);

/// The most events of one room remembered as taken live while its catch-up is pending.
const MAX_LIVE: usize = 10_000;
/// Most walks remembered at once ([`State::walks`]).
const MAX_WALKS: usize = 1_000;

/// One Matrix appservice account.
pub struct MatrixAccount {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    id: AccountId,
    cfg: Config,
    hs: Homeserver,
    tr: Translator,
    ctx: AccountContext,
    caps: Capabilities,
    health: watch::Sender<Health>,
    /// Wakes the ping loop (a send found the homeserver down, or shutdown).
    recheck: Notify,
    /// Wakes the catch-up task (a catch-up was called for, or shutdown).
    catch_up: Notify,
    /// How long after a refused transaction or a (re)connect the rooms are caught up (again).
    catch_up_after: Duration,
    /// Transactions and catch-ups take turns: what a catch-up replays is taken before what comes live after it.
    turn: tokio::sync::Mutex<()>,
    /// End-to-end encryption ([`crate::e2ee`]); `None` without a state directory to keep its keys in, or with
    /// `encryption = false`.
    e2ee: Option<Arc<E2ee>>,
    /// The events waiting for their keys are to be tried again (keys arrived, or the account started).
    retry_waiting: std::sync::atomic::AtomicBool,
    /// The log said whether end-to-end encryption is available ([`Inner::probe_e2ee`]).
    e2ee_told: std::sync::atomic::AtomicBool,
    state: Mutex<State>,
}

/// What the account remembers (rooms, ghosts, names); rebuilt from the homeserver after a restart.
#[derive(Default)]
struct State {
    /// Linked rooms: room id → the name the leg uses (an id or an alias as configured).
    rooms: HashMap<String, String>,
    /// Rooms as configured whose join has not succeeded yet.
    wanted: HashSet<String>,
    /// Linked rooms the bot could not join from a transaction, and when (not tried from one again for a minute).
    join_failed: HashMap<String, Instant>,
    /// Ghosts registered (and handed to the core as ghosts), with the display name set.
    ghosts: HashMap<String, String>,
    /// (room id, ghost) pairs joined.
    joined: HashSet<(String, String)>,
    /// Display names seen in member events: (room id, user) → name.
    names: HashMap<(String, String), String>,
    /// Ghosts that have their device ([`GHOST_DEVICE`]).
    devices: HashSet<String>,
    /// The homeserver refused to create a device: ghosts send without one.
    no_devices: bool,
    /// Linked rooms that are end-to-end encrypted.
    encrypted: HashSet<String>,
    /// Encrypted rooms whose notice waits for end-to-end encryption's status: (room id, `m.room.encryption` id).
    notices_pending: Vec<(String, String)>,
    /// Joined rooms whose catch-up is pending: room id → what was taken live meanwhile.
    pending: HashMap<String, Pending>,
    /// Counts the calls for a catch-up (tells a room called for again during its catch-up).
    calls: u64,
    /// A catch-up is due at once.
    catch_up_now: bool,
    /// A catch-up is due then.
    catch_up_at: Option<Instant>,
    /// Recent walks of a timeline for old deliveries' earlier attempts, by (room id, ghost) ([`resend::Walk`]).
    walks: HashMap<(String, String), resend::Walk>,
    stopped: bool,
}

impl State {
    /// Marks `rooms` as pending a catch-up, for a new call (see [`State::calls`]).
    fn call_for(&mut self, rooms: Vec<String>) {
        self.calls += 1;
        for room in rooms {
            self.pending.entry(room).or_default().call = self.calls;
        }
    }
}

/// With `encryption = false` where encryption was used before: says what stays behind in `dir` — the devices'
/// stores, and the events that wait for their keys, bridged only if encryption is turned on again.
fn warn_encryption_off(id: &AccountId, dir: &std::path::Path) {
    let devices = std::fs::read_dir(dir.join("devices")).map(|d| d.count()).unwrap_or(0);
    let waiting = match crate::e2ee::waiting::Waiting::load(dir) {
        Ok(w) => w.all().len(),
        Err(e) => {
            tracing::warn!(account = %id, error = %e, "`encryption = false`: the events waiting for keys are unreadable");
            0
        }
    };
    if devices == 0 && waiting == 0 {
        return;
    }
    tracing::warn!(account = %id, dir = %dir.display(), devices, waiting,
        "`encryption = false`, but end-to-end encryption was used before: its devices and their stores are kept, \
        and the events waiting for their keys are bridged only if it is turned on again");
}

/// A room whose catch-up is pending.
#[derive(Default)]
struct Pending {
    /// Events taken live since it was called for: they anchor nothing (see [`Known::Live`]).
    live: HashSet<String>,
    /// The call it is pending for (see [`State::calls`]).
    call: u64,
}

impl MatrixAccount {
    /// Creates the account and starts its ping loop; the caller serves [`MatrixAccount::transactions`].
    pub(crate) fn start(id: AccountId, cfg: Config, ctx: AccountContext, caps: Capabilities) -> Result<Self, String> {
        let hs = Homeserver::new(&cfg.homeserver_url, &cfg.as_token)?;
        let tr = Translator {
            account: id.clone(),
            domain: ctx.domain.clone(),
            ghosts: crate::GhostNames::new(cfg.ghost_prefix.clone(), cfg.server_name.clone()),
            bot_user_id: cfg.bot_user_id(),
            relay: None,
        };
        let e2ee = match &ctx.state_dir {
            Some(dir) if cfg.encryption => {
                let passphrase = cfg.store_passphrase.clone();
                Some(Arc::new(E2ee::new(
                    hs.clone(),
                    dir.join("e2ee"),
                    &cfg.bot_user_id(),
                    tr.ghosts.clone(),
                    passphrase,
                )?))
            }
            Some(dir) => {
                warn_encryption_off(&id, &dir.join("e2ee"));
                None
            }
            None => None,
        };
        let (health, _) = watch::channel(Health::Connecting);
        let inner = Arc::new(Inner {
            id,
            cfg,
            hs,
            tr,
            ctx,
            caps,
            health,
            recheck: Notify::new(),
            catch_up: Notify::new(),
            catch_up_after: CATCH_UP_AFTER,
            turn: tokio::sync::Mutex::new(()),
            e2ee,
            retry_waiting: std::sync::atomic::AtomicBool::new(true),
            e2ee_told: std::sync::atomic::AtomicBool::new(false),
            state: Mutex::new(State::default()),
        });
        tokio::spawn(ping_loop(inner.clone()));
        tokio::spawn(catch_up_loop(inner.clone()));
        if inner.e2ee.is_some() {
            tokio::spawn(account_e2ee::inbox_loop(inner.clone()));
        }
        Ok(Self { inner })
    }

    /// The handler of the appservice API for this account.
    pub(crate) fn transactions(&self) -> Arc<dyn Transactions> {
        self.inner.clone()
    }
}

impl Inner {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The room id a leg's room name stands for.
    fn room_id(&self, leg_room: &str) -> String {
        let st = self.state();
        st.rooms
            .iter()
            .find(|(_, name)| name.as_str() == leg_room)
            .map_or_else(|| leg_room.to_owned(), |(id, _)| id.clone())
    }

    /// Joins `room` as the appservice user and records it as linked. `prepare`: in an encrypted room, make the
    /// bridge's device (keys uploaded) before returning, so that the members' next messages share their keys with
    /// it; the rest of end-to-end encryption's set-up (the probe) is the ping loop's, woken by the room's notice.
    async fn join_room(&self, room: &str, prepare: bool) -> Result<(), HsError> {
        let bot = self.cfg.bot_user_id();
        self.hs.register(&self.cfg.bot_localpart).await?;
        let room_id = self.hs.join(room, &bot).await?;
        // Linked from now on (a transaction for it finds it).
        {
            let mut st = self.state();
            st.rooms.insert(room_id.clone(), room.to_owned());
            st.wanted.remove(room);
        }
        let unlinked = |e: HsError| {
            let mut st = self.state();
            st.rooms.remove(&room_id);
            st.wanted.insert(room.to_owned());
            e
        };
        let encryption = self.hs.state_event(&room_id, &bot, "m.room.encryption", "").await.map_err(unlinked)?;
        if let Some(encryption) = encryption {
            let event_id = encryption["event_id"].as_str().unwrap_or_default();
            match self.tell_about_encryption(&room_id, event_id).await {
                Err(HsError::Unavailable(e)) => return Err(unlinked(HsError::Unavailable(e))),
                Err(e) => {
                    tracing::warn!(account = %self.id, room = %room_id, error = %e, "cannot post the encryption notice")
                }
                Ok(()) => {}
            }
            if let Some(e2ee) = self.e2ee.as_ref().filter(|e| prepare && e.status() == Status::Starting)
                && let Err(e) = e2ee.prepare(bot.as_str()).await
            {
                tracing::warn!(account = %self.id, room = %room_id, error = %e, "the bridge's device is not made yet");
            }
        }
        let mut st = self.state();
        st.call_for(vec![room_id]);
        st.catch_up_now = true;
        drop(st);
        self.catch_up.notify_one();
        Ok(())
    }

    /// Records `room_id` as encrypted and says in it what the bridge does there ([`ENCRYPTED_ROOM_BRIDGED_NOTICE`],
    /// or [`ENCRYPTED_ROOM_NOTICE`] and why not), as the appservice user, once per `m.room.encryption` event (the
    /// transaction id is made from its id, sent from the appservice user's device). Until end-to-end encryption's
    /// status is known, the notice waits ([`Inner::post_pending_notices`]).
    async fn tell_about_encryption(&self, room_id: &str, encryption_event: &str) -> Result<(), HsError> {
        self.state().encrypted.insert(room_id.to_owned());
        let bot = self.cfg.bot_user_id();
        let id = encryption_event.trim_start_matches('$');
        let (txn, body) = match self.e2ee.as_ref().map(|e| e.status()) {
            Some(Status::Starting) => {
                self.state().notices_pending.push((room_id.to_owned(), encryption_event.to_owned()));
                // The first encrypted room: the ping loop probes end-to-end encryption now.
                self.recheck.notify_one();
                return Ok(());
            }
            Some(Status::Ready) => (format!("mimi-e2ee-room-{id}"), ENCRYPTED_ROOM_BRIDGED_NOTICE.to_owned()),
            Some(Status::Unavailable(why)) => {
                (format!("mimi-encrypted-room-{id}"), format!("{ENCRYPTED_ROOM_NOTICE} ({why})"))
            }
            // A transaction id of its own: a notice of before (unavailable, and why) is not answered instead.
            None if !self.cfg.encryption => {
                (format!("mimi-encryption-off-room-{id}"), format!("{ENCRYPTED_ROOM_NOTICE} ({ENCRYPTION_OFF})"))
            }
            None => (format!("mimi-encrypted-room-{id}"), ENCRYPTED_ROOM_NOTICE.to_owned()),
        };
        if !self.state().devices.contains(&bot) {
            self.ensure_device(&bot).await?;
        }
        let content = serde_json::json!({"msgtype": "m.notice", "body": body, "m.mentions": {}});
        let notice = self.send_as(room_id, "m.room.message", &txn, &content, &bot).await?;
        tracing::info!(account = %self.id, room = %room_id, event_id = %notice, "encrypted room: notice posted");
        Ok(())
    }

    /// Once a linked room is encrypted: probes end-to-end encryption (once; [`E2ee::probe`]), takes the events
    /// that waited for keys, and posts the notices of encrypted rooms that waited for its answer. Until then the
    /// account loads none of the crypto machinery. `Err` while the homeserver is not ready (tried again).
    async fn probe_e2ee(&self) -> Result<(), HsError> {
        let Some(e2ee) = self.e2ee.as_ref().filter(|_| !self.state().encrypted.is_empty()) else { return Ok(()) };
        let status = e2ee.probe().await?;
        if !self.e2ee_told.swap(true, std::sync::atomic::Ordering::SeqCst) {
            match status {
                Status::Unavailable(why) => tracing::error!(account = %self.id, %why,
                    "end-to-end encryption is not available: encrypted rooms are not bridged"),
                _ => {
                    tracing::info!(account = %self.id, "end-to-end encryption is available");
                    // Events that waited for keys (the probe read the inbox before it sent its message).
                    self.retry_waiting.store(true, std::sync::atomic::Ordering::SeqCst);
                    self.read_inboxes(false).await;
                }
            }
        }
        self.post_pending_notices().await;
        Ok(())
    }

    /// Posts the notices of encrypted rooms that waited for end-to-end encryption's status.
    async fn post_pending_notices(&self) {
        let pending = std::mem::take(&mut self.state().notices_pending);
        for (room_id, event_id) in pending {
            if let Err(e) = self.tell_about_encryption(&room_id, &event_id).await {
                tracing::warn!(account = %self.id, room = %room_id, error = %e, "cannot post the encryption notice");
            }
        }
    }

    /// Whether what the bridge sends in `room_id` is encrypted: `Some` where the room is encrypted and the bridge
    /// can; `None` where the room is not, or the homeserver lacks what it takes, or the config turned encryption
    /// off (the room was told). While the probe has not answered yet, an encrypted room's sends wait
    /// (`Unavailable`: the core retries), so that nothing goes into it in the clear that could have been encrypted.
    fn encrypts(&self, room_id: &str) -> Result<Option<&E2ee>, HsError> {
        let Some(e2ee) = self.e2ee.as_deref() else { return Ok(None) };
        if !self.state().encrypted.contains(room_id) {
            return Ok(None);
        }
        match e2ee.status() {
            Status::Ready => Ok(Some(e2ee)),
            Status::Unavailable(_) => Ok(None),
            Status::Starting => Err(HsError::Unavailable("end-to-end encryption is still being set up".into())),
        }
    }

    /// Sends an event of `event_type` as `user` in `room_id` with `txn_id`, encrypted by `user`'s device where the
    /// room is encrypted and the bridge can; returns its event id.
    async fn send_as(
        &self,
        room_id: &str,
        event_type: &str,
        txn_id: &str,
        content: &serde_json::Value,
        user: &str,
    ) -> Result<String, HsError> {
        match self.encrypts(room_id)? {
            Some(e2ee) => {
                let encrypted = e2ee.encrypt(room_id, user, event_type, content).await?;
                self.hs.send(room_id, "m.room.encrypted", txn_id, &encrypted, self.actor(user)).await
            }
            None => self.hs.send(room_id, event_type, txn_id, content, self.actor(user)).await,
        }
    }

    /// Makes sure `ghost` exists with `name` and is in `room_id` (invited by the appservice user if need be).
    async fn ensure_ghost(&self, room_id: &str, ghost: &str, name: &str, uri: &str) -> Result<(), HsError> {
        let known = self.state().ghosts.get(ghost).cloned();
        if known.is_none() {
            let localpart = ghost.trim_start_matches('@').split(':').next().unwrap_or_default();
            self.hs.register(localpart).await?;
            if let Err(e) = self.ctx.register_ghost(ghost, uri).await {
                return Err(HsError::Unavailable(format!("recording the ghost: {e}")));
            }
            self.ensure_device(ghost).await?;
        }
        if known.as_deref() != Some(name) {
            self.hs.set_display_name(ghost, name).await?;
            self.state().ghosts.insert(ghost.to_owned(), name.to_owned());
        }
        let key = (room_id.to_owned(), ghost.to_owned());
        if self.state().joined.contains(&key) {
            return Ok(());
        }
        // A ghost someone kicked or banned stays out: the room's members decided (checked on the homeserver, so
        // it holds across restarts). Sends as it are refused; the core tells the sender.
        let bot = self.cfg.bot_user_id();
        if let Some((membership, by)) = self.hs.membership(room_id, &bot, ghost).await?
            && (membership == "ban" || (membership == "leave" && by != ghost && by != bot))
        {
            return Err(HsError::Refused {
                status: 403,
                errcode: "M_FORBIDDEN".into(),
                error: format!("{by} removed {ghost} from the room ({membership}); the bridge does not rejoin it"),
            });
        }
        if let Some(e2ee) = self.encrypts(room_id)? {
            e2ee.prepare(ghost).await?;
        }
        match self.hs.join(room_id, ghost).await {
            Err(HsError::Refused { status: 403, .. }) => {
                self.hs.invite(room_id, &self.cfg.bot_user_id(), ghost).await?;
                self.hs.join(room_id, ghost).await?;
            }
            other => {
                other?;
            }
        }
        self.state().joined.insert(key);
        Ok(())
    }

    /// Gives `ghost` its device ([`GHOST_DEVICE`]), so that the homeserver keeps its transaction ids durably. A
    /// homeserver that refuses (no MSC4190) is told once in the log; the ghost's sends then go without a device and
    /// the homeserver's deduplication of a retried send lasts only until it restarts.
    async fn ensure_device(&self, ghost: &str) -> Result<(), HsError> {
        if self.state().no_devices {
            return Ok(());
        }
        match self.hs.create_device(ghost, GHOST_DEVICE).await {
            Ok(()) => {
                self.state().devices.insert(ghost.to_owned());
                Ok(())
            }
            Err(HsError::Refused { status, errcode, error }) => {
                tracing::warn!(account = %self.id, status, %errcode, %error, "the homeserver creates no devices for \
                    ghosts (MSC4190): a send retried after it restarts may appear twice");
                self.state().no_devices = true;
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Who a call is made as: `user_id`, on its device if it has one.
    fn actor<'a>(&self, user_id: &'a str) -> (&'a str, Option<&'a str>) {
        (user_id, self.state().devices.contains(user_id).then_some(GHOST_DEVICE))
    }

    /// Performs one translated call; returns the event id it created, if any.
    async fn perform(&self, action: MatrixAction, ev: &OutboundEvent) -> Result<Option<String>, HsError> {
        let (name, uri) = (ev.sender.display_name.as_str(), ev.sender.uri.as_str());
        match action {
            MatrixAction::Send { room, as_user, event_type, txn_id, content } => {
                let room = self.room_id(&room);
                self.ensure_ghost(&room, &as_user, name, uri).await?;
                if let Some(earlier) = self.earlier_attempt(&room, &as_user, &txn_id, ev).await? {
                    return Ok(Some(earlier));
                }
                match self.send_as(&room, event_type, &txn_id, &content, &as_user).await {
                    // What we knew of the ghost's membership is stale (kicked, banned): look again, once.
                    Err(HsError::Refused { status: 403, .. }) => {
                        self.state().joined.remove(&(room.clone(), as_user.clone()));
                        self.ensure_ghost(&room, &as_user, name, uri).await?;
                        self.send_as(&room, event_type, &txn_id, &content, &as_user).await.map(Some)
                    }
                    other => other.map(Some),
                }
            }
            MatrixAction::SendMedia { room, as_user, txn_id, attachment, content } => {
                let room = self.room_id(&room);
                self.ensure_ghost(&room, &as_user, name, uri).await?;
                if let Some(earlier) = self.earlier_attempt(&room, &as_user, &txn_id, ev).await? {
                    return Ok(Some(earlier));
                }
                let encrypted = self.encrypts(&room)?.is_some();
                let store = self.ctx.media.as_ref();
                let content =
                    media_transfer::upload(&self.hs, store, &attachment.url, content, (as_user.as_str(), encrypted))
                        .await?;
                self.send_as(&room, "m.room.message", &txn_id, &content, &as_user).await.map(Some)
            }
            MatrixAction::Redact { room, as_user, event_id, txn_id } => {
                let room = self.room_id(&room);
                self.ensure_ghost(&room, &as_user, name, uri).await?;
                if let Some(earlier) = self.earlier_attempt(&room, &as_user, &txn_id, ev).await? {
                    return Ok(Some(earlier));
                }
                self.hs.redact(&room, &event_id, &txn_id, self.actor(&as_user)).await.map(Some)
            }
            MatrixAction::Join { room, as_user, display_name } => {
                let room = self.room_id(&room);
                self.ensure_ghost(&room, &as_user, &display_name, uri).await.map(|()| None)
            }
            MatrixAction::Leave { room, as_user } => {
                let room = self.room_id(&room);
                match self.hs.leave(&room, &as_user).await {
                    // Not in the room (someone from another network who never spoke here, so whose ghost never
                    // joined; or a ghost never created): there is nothing to leave.
                    Err(HsError::Refused { status: 403 | 404, errcode, error }) => {
                        tracing::debug!(account = %self.id, room = %room, ghost = %as_user, %errcode, %error,
                            "leave: the ghost is not in the room");
                    }
                    other => other?,
                }
                self.state().joined.remove(&(room, as_user));
                Ok(None)
            }
            MatrixAction::Typing { room, as_user, active } => {
                let room = self.room_id(&room);
                self.ensure_ghost(&room, &as_user, name, uri).await?;
                self.hs.typing(&room, &as_user, active).await.map(|()| None)
            }
        }
    }

    /// The event an earlier attempt of `ev` made in `room_id` as `as_user` with `txn_id`, if `ev` was queued long
    /// enough ago that the homeserver may have forgotten the transaction id ([`resend`]); `None` if it is not in
    /// the timeline, `ev` is recent, or the ghost has no device (the homeserver shows transaction ids to the
    /// sending device only). Only an unreachable homeserver is an error: a walk refused otherwise sends anyway.
    async fn earlier_attempt(
        &self,
        room_id: &str,
        as_user: &str,
        txn_id: &str,
        ev: &OutboundEvent,
    ) -> Result<Option<String>, HsError> {
        let now_ms = u64::try_from(
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis(),
        )
        .unwrap_or(u64::MAX);
        let actor = self.actor(as_user);
        if !resend::due(ev.queued_at_ms, now_ms) || actor.1.is_none() {
            return Ok(None);
        }
        let key = (room_id.to_owned(), as_user.to_owned());
        let now = Instant::now();
        let known = self.state().walks.get(&key).and_then(|w| w.answer(txn_id, ev.queued_at_ms, now));
        let found = match known {
            Some(answer) => answer,
            None => {
                let Some(walk) = self.walk_for_attempts(room_id, actor, ev.queued_at_ms).await? else {
                    return Ok(None);
                };
                let found = walk.attempts.get(txn_id).cloned();
                let mut st = self.state();
                st.walks.retain(|_, w| now.saturating_duration_since(w.at) < resend::WALK_KEPT);
                if st.walks.len() < MAX_WALKS {
                    st.walks.insert(key, walk);
                }
                found
            }
        };
        if let Some(event_id) = &found {
            tracing::info!(account = %self.id, room = %room_id, %txn_id, %event_id,
                "an old delivery was already in the room: not sent again");
        }
        Ok(found)
    }

    /// Reads `room_id`'s timeline back as `actor` to `since_ms` ([`resend::scan`]), at most [`resend::MAX_PAGES`];
    /// `None` if the homeserver refused.
    async fn walk_for_attempts(
        &self,
        room_id: &str,
        actor: (&str, Option<&str>),
        since_ms: u64,
    ) -> Result<Option<resend::Walk>, HsError> {
        let mut walk = resend::Walk::new(Instant::now());
        let mut from = None;
        for _ in 0..resend::MAX_PAGES {
            let page = match self.hs.messages(room_id, actor, from.as_deref(), resend::PAGE).await {
                Ok(page) => page,
                Err(HsError::Unavailable(e)) => return Err(HsError::Unavailable(e)),
                Err(e) => {
                    tracing::warn!(account = %self.id, room = %room_id, error = %e,
                        "cannot read the timeline back for an old delivery's earlier attempt: sent again");
                    return Ok(None);
                }
            };
            if resend::scan(&mut walk, &page.chunk, actor.0, &self.cfg.server_name, since_ms) {
                return Ok(Some(walk));
            }
            match page.end {
                Some(end) => from = Some(end),
                None => {
                    // The room's first event: everything the ghost ever sent here was seen.
                    walk.covers_from_ms = 0;
                    return Ok(Some(walk));
                }
            }
        }
        tracing::warn!(account = %self.id, room = %room_id, pages = resend::MAX_PAGES,
            "the timeline's newest pages do not reach back to an old delivery: what is not among them is sent \
            again, perhaps a second time");
        Ok(Some(walk))
    }

    /// The display name of `user` in `room_id`: from member events seen, else asked once.
    async fn sender_name(&self, room_id: &str, user: &str) -> Option<String> {
        let key = (room_id.to_owned(), user.to_owned());
        if let Some(n) = self.state().names.get(&key) {
            return Some(n.clone());
        }
        if self.tr.is_bridge_user(user) {
            return None;
        }
        let name = self.hs.member_name(room_id, &self.cfg.bot_user_id(), user).await.ok().flatten()?;
        self.state().names.insert(key, name.clone());
        Some(name)
    }

    fn set_health(&self, h: Health) {
        Health::publish(&self.health, h);
    }
}

/// Pings the homeserver until it answers, then (re)joins the rooms waiting for it and, once a linked room is
/// encrypted, probes end-to-end encryption (the bridge's crypto machinery, its devices and their stores stay
/// unloaded until then); again whenever woken.
async fn ping_loop(inner: Arc<Inner>) {
    let mut backoff = Duration::from_secs(1);
    loop {
        if inner.state().stopped {
            return;
        }
        match inner.hs.ping(&inner.cfg.registration_id).await {
            Ok(()) => {
                backoff = Duration::from_secs(1);
                // Joining a room reads whether it is encrypted (its notice waits for the probe's answer).
                let wanted: Vec<String> = inner.state().wanted.iter().cloned().collect();
                for room in wanted {
                    if let Err(e) = inner.join_room(&room, true).await {
                        tracing::warn!(account = %inner.id, %room, error = %e, "cannot join the linked room");
                    }
                }
                if let Err(e) = inner.probe_e2ee().await {
                    let reason = format!("setting up end-to-end encryption: {e}");
                    tracing::warn!(account = %inner.id, %reason, retry_in = ?backoff, "homeserver not ready");
                    inner.set_health(Health::BackingOff { retry_in: backoff, reason });
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
                inner.call_for_catch_up(true);
                inner.set_health(Health::Connected);
                inner.recheck.notified().await;
            }
            Err(HsError::Refused { status: 401 | 403, errcode, error }) => {
                let reason = format!("the homeserver refused the appservice token ({errcode}: {error})");
                tracing::error!(account = %inner.id, %reason, "check as_token and the registration file");
                inner.set_health(Health::BadCredentials { reason });
                return;
            }
            Err(e) => {
                let reason = match &e {
                    HsError::Refused { errcode, error, .. } => format!("appservice ping refused ({errcode}: {error})"),
                    // Synapse answers 502 M_CONNECTION_FAILED / M_CONNECTION_TIMEOUT when it cannot call us.
                    HsError::Unavailable(m) if m.contains("M_CONNECTION_") => {
                        format!("the homeserver cannot reach the appservice at {}: {m}", inner.cfg.appservice_url())
                    }
                    HsError::Unavailable(m) => format!("appservice ping to {} failed: {m}", inner.cfg.homeserver_url),
                };
                tracing::warn!(account = %inner.id, %reason, retry_in = ?backoff, "homeserver not ready for the appservice");
                inner.set_health(Health::BackingOff { retry_in: backoff, reason });
                // Sends failing meanwhile wake nothing: the backoff runs its course (shutdown is seen at the next round).
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

impl Inner {
    /// The leg room of `room_id`, or `None` if it is not linked. A transaction can come before the core has asked
    /// for the joins of the linked rooms (the homeserver retries the one a crash interrupted as soon as the
    /// listener is back). So a linked room not joined yet that may be this one — its id, or an alias the directory
    /// resolves to it — is joined first, and while the homeserver cannot let the bot in, the transaction is
    /// refused (500) so that it comes again rather than being dropped. Events of other rooms (anyone can invite
    /// the bot somewhere) never wait on a linked room's join: those are the ping loop's.
    async fn leg_of(&self, room_id: &str) -> Result<Option<String>, String> {
        if let Some(r) = self.state().rooms.get(room_id).cloned() {
            return Ok(Some(r));
        }
        let pending: Vec<String> = {
            let st = self.state();
            let recent = |r: &String| st.join_failed.get(r).is_some_and(|t| t.elapsed() < JOIN_RETRY);
            self.ctx
                .inbound
                .linked_rooms()
                .into_iter()
                .filter(|r| !st.rooms.values().any(|v| v == r) && !recent(r))
                .collect()
        };
        let bot = self.cfg.bot_user_id();
        for room in pending {
            let this_one = if room.starts_with('#') {
                match self.hs.resolve_alias(&room, &bot).await {
                    Ok(id) => id == room_id,
                    // Cannot tell now: assume it may be, and leave it alone for a while if the join fails too.
                    Err(HsError::Unavailable(_)) => true,
                    Err(_) => false,
                }
            } else {
                room == room_id
            };
            if !this_one {
                continue;
            }
            match self.join_room(&room, false).await {
                Ok(()) => {}
                Err(HsError::Unavailable(e)) => {
                    if room != room_id {
                        self.state().join_failed.insert(room.clone(), Instant::now());
                    }
                    return Err(format!("linked room {room} not joined yet: {e}"));
                }
                Err(e) => {
                    tracing::warn!(account = %self.id, %room, error = %e, "cannot join the linked room");
                    self.state().join_failed.insert(room, Instant::now());
                }
            }
        }
        Ok(self.state().rooms.get(room_id).cloned())
    }
}

/// How long a linked room the bot could not join from a transaction is left to the ping loop.
const JOIN_RETRY: Duration = Duration::from_secs(60);

#[async_trait]
impl Transactions for Inner {
    async fn handle(&self, txn: push_events::v1::Request) -> Result<(), String> {
        let _turn = self.turn.lock().await;
        let keys_came = match &self.e2ee {
            Some(e2ee) => e2ee.receive(&txn).await?,
            None => false,
        };
        let mut taken = self.take(txn.events).await;
        // The keys are in the crypto store now, whatever happens next: the events they open are tried until they
        // are taken (and at the first transaction after a start, for a crash between the two).
        if keys_came {
            self.retry_waiting.store(true, std::sync::atomic::Ordering::SeqCst);
        }
        if taken.is_ok() && self.retry_waiting.swap(false, std::sync::atomic::Ordering::SeqCst) {
            taken = self.take_waiting().await;
            if taken.is_err() {
                self.retry_waiting.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
        if taken.is_err() {
            // The homeserver retries it; what it may lose meanwhile is read back from the timeline.
            self.call_for_catch_up(false);
        }
        taken
    }

    async fn query_user(&self, user_id: &str) -> bool {
        let Some(uri) = self.tr.ghosts.identity(user_id) else { return false };
        let localpart = user_id.trim_start_matches('@').split(':').next().unwrap_or_default();
        if self.hs.register(localpart).await.is_err() {
            return false;
        }
        self.ctx.register_ghost(user_id, &uri).await.is_ok()
    }
}

impl Inner {
    /// Translates events (of a transaction or a catch-up) and hands them to the core; `Ok` once they are durably
    /// accepted (or deliberately dropped). The caller holds [`Inner::turn`].
    async fn take(&self, events: Vec<Raw<AnyTimelineEvent>>) -> Result<(), String> {
        let mut pending = Vec::new();
        let taken_up = tokio::time::Instant::now();
        for raw in events {
            let raw = match self.decrypted(raw, taken_up).await? {
                Intake::Event(raw) => raw,
                Intake::Instead(notice) => {
                    if let Some(notice) = notice
                        && let Some(ack) = crate::handover::queue(&self.id, &self.ctx.inbound, *notice).await?
                    {
                        pending.push(ack);
                    }
                    continue;
                }
            };
            let ev = match raw.deserialize() {
                Ok(ev) => ev,
                Err(e) => {
                    tracing::debug!(account = %self.id, error = %e, "undecodable event dropped");
                    continue;
                }
            };
            let room_id = ev.room_id().to_string();
            let Some(leg_room) = self.leg_of(&room_id).await? else {
                tracing::debug!(account = %self.id, room = %room_id, event = %ev.event_id(), "event of an unlinked room");
                continue;
            };
            if let AnyTimelineEvent::State(AnyStateEvent::RoomEncryption(e)) = &ev
                && let Err(e) = self.tell_about_encryption(&room_id, e.event_id().as_str()).await
            {
                tracing::warn!(account = %self.id, room = %room_id, error = %e, "cannot post the encryption notice");
            }
            if let AnyTimelineEvent::State(AnyStateEvent::RoomMember(RoomMemberEvent::Original(m))) = &ev {
                let key = (room_id.clone(), m.state_key.to_string());
                let mut st = self.state();
                match (&m.content.membership, &m.content.displayname) {
                    (MembershipState::Join, Some(name)) => {
                        st.names.insert(key, name.clone());
                    }
                    (MembershipState::Join, None) => {}
                    // A ghost that left or was removed is in the room no more: the next send checks why.
                    _ => {
                        st.joined.remove(&key);
                    }
                }
            }
            let name = self.sender_name(&room_id, ev.sender().as_str()).await;
            match self.tr.inbound(&ev, name.as_deref()) {
                Ok(mut inbound) => {
                    inbound.leg.room = leg_room;
                    if let InboundKind::Message { draft, .. } | InboundKind::Edit { draft, .. } = &mut inbound.kind {
                        let reader = self.cfg.bot_user_id();
                        let (hs, store) = (&self.hs, self.ctx.media.as_ref());
                        let fetch = media_transfer::AsUser { hs, reader: &reader };
                        media_transfer::download_all(&fetch, store, &self.cfg.server_name, draft).await?;
                    }
                    if let Some(ack) = crate::handover::queue(&self.id, &self.ctx.inbound, inbound).await? {
                        self.taken_live(&room_id, ev.event_id().as_str());
                        pending.push(ack);
                    }
                }
                Err(skip) => tracing::debug!(account = %self.id, event = %ev.event_id(), %skip, "not bridged"),
            }
        }
        crate::handover::settled(&self.id, pending).await
    }
}

#[async_trait]
impl Account for MatrixAccount {
    fn id(&self) -> &AccountId {
        &self.inner.id
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.caps.clone()
    }

    async fn join(&self, room: &str) -> Result<(), ConnectorError> {
        self.inner.state().wanted.insert(room.to_owned());
        match self.inner.join_room(room, true).await {
            Ok(()) => Ok(()),
            // Joined once the homeserver is back (the ping loop retries).
            Err(HsError::Unavailable(e)) => {
                tracing::warn!(account = %self.inner.id, %room, error = %e, "room joined once the homeserver is back");
                self.inner.recheck.notify_one();
                Ok(())
            }
            Err(e) => Err(ConnectorError::Room {
                account: self.inner.id.clone(),
                room: room.to_owned(),
                reason: e.to_string(),
            }),
        }
    }

    async fn leave(&self, room: &str) -> Result<(), ConnectorError> {
        let room_id = self.inner.room_id(room);
        self.inner.state().wanted.remove(room);
        match self.inner.hs.leave(&room_id, &self.inner.cfg.bot_user_id()).await {
            Ok(()) | Err(HsError::Refused { .. }) => {
                let mut st = self.inner.state();
                st.rooms.remove(&room_id);
                st.pending.remove(&room_id);
                Ok(())
            }
            Err(e) => Err(ConnectorError::Room {
                account: self.inner.id.clone(),
                room: room.to_owned(),
                reason: e.to_string(),
            }),
        }
    }

    async fn send(&self, event: &OutboundEvent) -> Result<Delivery, SendError> {
        let actions = self.inner.tr.outbound(event).map_err(|e| SendError::Rejected(e.to_string()))?;
        let mut native_ids = Vec::new();
        for action in actions {
            match self.inner.perform(action, event).await {
                Ok(Some(id)) => native_ids.push(NativeId(id)),
                Ok(None) => {}
                Err(HsError::Unavailable(e)) => {
                    self.inner.recheck.notify_one();
                    return Err(SendError::Retry(e));
                }
                Err(e) => return Err(SendError::Rejected(e.to_string())),
            }
        }
        Ok(Delivery { native_ids })
    }

    fn health(&self) -> watch::Receiver<Health> {
        self.inner.health.subscribe()
    }

    async fn shutdown(&self) {
        self.inner.state().stopped = true;
        self.inner.set_health(Health::Stopped);
        self.inner.recheck.notify_one();
        self.inner.catch_up.notify_one();
    }
}

impl Inner {
    /// Calls for a catch-up of every joined room [`Inner::catch_up_after`] from now (a later call puts it off), and
    /// at once as well if `now`.
    fn call_for_catch_up(&self, now: bool) {
        let mut st = self.state();
        let rooms: Vec<String> = st.rooms.keys().cloned().collect();
        st.call_for(rooms);
        st.catch_up_now |= now;
        st.catch_up_at = Some(Instant::now() + self.catch_up_after);
        drop(st);
        self.catch_up.notify_one();
    }

    /// Remembers that `event_id` of `room_id` was taken while the room's catch-up is pending.
    fn taken_live(&self, room_id: &str, event_id: &str) {
        if let Some(p) = self.state().pending.get_mut(room_id)
            && p.live.len() < MAX_LIVE
        {
            p.live.insert(event_id.to_owned());
        }
    }

    /// How long until a catch-up is due: `None` if none is called for.
    fn catch_up_due_in(&self) -> Option<Duration> {
        let st = self.state();
        if st.catch_up_now {
            return Some(Duration::ZERO);
        }
        st.catch_up_at.map(|at| at.saturating_duration_since(Instant::now()))
    }

    /// Marks the catch-up due now as begun.
    fn catch_up_begins(&self) {
        let mut st = self.state();
        st.catch_up_now = false;
        if st.catch_up_at.is_some_and(|at| at <= Instant::now()) {
            st.catch_up_at = None;
        }
    }

    /// Catches up every joined room whose catch-up is pending; one that fails is tried again later.
    async fn catch_up_rooms(&self) {
        let rooms: Vec<(String, String)> = {
            let st = self.state();
            st.rooms
                .iter()
                .filter(|(id, _)| st.pending.contains_key(*id))
                .map(|(i, r)| (i.clone(), r.clone()))
                .collect()
        };
        for (room_id, leg_room) in rooms {
            if self.state().stopped {
                return;
            }
            match self.catch_up_room(&room_id, &leg_room).await {
                Ok(0) => tracing::debug!(account = %self.id, room = %room_id, "caught up: nothing missed"),
                Ok(n) => {
                    tracing::info!(account = %self.id, room = %room_id, replayed = n, "caught up from the timeline")
                }
                Err(e) => {
                    tracing::warn!(account = %self.id, room = %room_id, error = %e, retry_in = ?self.catch_up_after,
                        "catch-up from the timeline failed");
                    let mut st = self.state();
                    st.catch_up_at.get_or_insert_with(|| Instant::now() + self.catch_up_after);
                }
            }
        }
    }

    /// Reads `room_id`'s timeline back to an anchor and replays what the core missed (see [`crate::catchup`]);
    /// returns how many events were replayed.
    ///
    /// The walk runs beside the transactions (pushes are not held up by it: a push that waits too long is one the
    /// homeserver counts as failed); what they take meanwhile is live, read from the state at each look. Only the
    /// replay takes the turn, and leaves out what was taken in the meantime.
    async fn catch_up_room(&self, room_id: &str, leg_room: &str) -> Result<usize, String> {
        let leg = LegId::new(self.id.clone(), leg_room).map_err(|e| e.to_string())?;
        let call = self.state().pending.get(room_id).map_or(0, |p| p.call);
        let taken = |id: &str| self.ctx.inbound.taken_from_leg(&leg, &NativeId(id.to_owned()));
        let known = |id: &str| match taken(id) {
            Some(true) if self.state().pending.get(room_id).is_some_and(|p| p.live.contains(id)) => Some(Known::Live),
            Some(true) => Some(Known::FromLeg),
            Some(false) => Some(Known::Delivery),
            None => None,
        };
        let done = match self.walk(room_id, known).await {
            Ok(done) => done,
            // The homeserver will not let the bot read the room (it was kicked, the room is gone): trying again
            // changes nothing until the room is joined again, which calls for a catch-up of its own.
            Err(HsError::Refused { status, errcode, error }) => {
                tracing::warn!(account = %self.id, room = %room_id, status, %errcode, %error,
                    "the homeserver refuses to let the bot read the room: no catch-up");
                self.state().pending.remove(room_id);
                return Ok(0);
            }
            Err(e) => return Err(e.to_string()),
        };
        if done.no_anchor {
            tracing::warn!(account = %self.id, room = %room_id, read = done.seen, "catch-up found nothing the core \
                took from or delivered to the room (first link, or more missed than it reads): nothing replayed");
        }
        // State events (joins, leaves, the encryption switch) are not replayed: the core keeps no record of the
        // membership changes it passes on, so every catch-up would pass the same ones on again.
        let replay: Vec<_> = done.replay.into_iter().filter(|raw| !raw_is_state(raw)).collect();
        let replayed = {
            let _turn = self.turn.lock().await;
            let replay: Vec<_> =
                replay.into_iter().filter(|raw| raw_event_id(raw).is_some_and(|id| taken(&id).is_none())).collect();
            let n = replay.len();
            if n > 0 {
                self.take(replay).await?;
            }
            n
        };
        // Pending still if called for since it began, or if a later catch-up is due (what is taken live until then
        // anchors nothing).
        let mut st = self.state();
        if st.catch_up_at.is_none() && st.pending.get(room_id).is_some_and(|p| p.call == call) {
            st.pending.remove(room_id);
        }
        Ok(replayed)
    }

    /// Walks `room_id`'s timeline backwards, as the appservice user, page by page (see [`catchup::Walk`]).
    async fn walk(
        &self,
        room_id: &str,
        known: impl Fn(&str) -> Option<Known>,
    ) -> Result<catchup::Done<Raw<AnyTimelineEvent>>, HsError> {
        let bot = self.cfg.bot_user_id();
        let mut walk = catchup::Walk::new(catchup::MAX_PAGES);
        let mut from: Option<String> = None;
        loop {
            let page = self.hs.messages(room_id, (&bot, None), from.as_deref(), catchup::PAGE).await?;
            // `dir=b` gives the newest first; the walk takes pages oldest first.
            let events = page.chunk.into_iter().rev().filter_map(|raw| Some((raw_event_id(&raw)?, raw))).collect();
            match walk.page(events, page.end, &known) {
                catchup::Step::More(token) => from = Some(token),
                catchup::Step::Done(done) => return Ok(done),
            }
        }
    }
}

/// Whether an event as the homeserver gave it is a state event (it has a `state_key`).
fn raw_is_state(raw: &Raw<AnyTimelineEvent>) -> bool {
    raw.get_field::<serde_json::Value>("state_key").ok().flatten().is_some()
}

/// The `event_id` of an event as the homeserver gave it, if it has one.
fn raw_event_id(raw: &Raw<AnyTimelineEvent>) -> Option<String> {
    raw.get_field::<String>("event_id").ok().flatten()
}

/// Runs the catch-ups called for (see [`Inner::call_for_catch_up`]), one at a time, until the account stops.
async fn catch_up_loop(inner: Arc<Inner>) {
    loop {
        if inner.state().stopped {
            return;
        }
        match inner.catch_up_due_in() {
            None => {
                inner.catch_up.notified().await;
                continue;
            }
            Some(wait) if !wait.is_zero() => {
                tokio::select! {
                    () = inner.catch_up.notified() => continue,
                    () = tokio::time::sleep(wait) => {}
                }
            }
            Some(_) => {}
        }
        inner.catch_up_begins();
        inner.catch_up_rooms().await;
    }
}
