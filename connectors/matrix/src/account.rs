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

use crate::config::Config;
use crate::homeserver::{Homeserver, HsError};
use crate::media_transfer;
use crate::outbound::MatrixAction;
use crate::server::Transactions;
use crate::translate::Translator;
use async_trait::async_trait;
use bridge_api::connector::{Delivery, SendError};
use bridge_api::{
    Account, AccountContext, AccountId, Capabilities, ConnectorError, Health, InboundKind, NativeId, OutboundEvent,
    RouteError,
};
use ruma::events::room::member::{MembershipState, RoomMemberEvent};
use ruma::events::{AnyStateEvent, AnyTimelineEvent};
use ruma::serde::Raw;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, watch};

/// The device every ghost sends from (MSC4190), so that the homeserver deduplicates a retried send durably.
pub const GHOST_DEVICE: &str = "MIMIBRIDGE";

/// What the appservice user says in a linked room that is (or becomes) end-to-end encrypted: the bridge is the
/// trust boundary, and appservice mode has no end-to-end encryption.
pub const ENCRYPTED_ROOM_NOTICE: &str = "This room is end-to-end encrypted, but this bridge cannot decrypt or \
    encrypt here: encrypted messages are not bridged (the other side is told), and messages from the other networks \
    arrive unencrypted.";

/// The longest wait between two pings while the homeserver is unavailable.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

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
    stopped: bool,
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
            state: Mutex::new(State::default()),
        });
        tokio::spawn(ping_loop(inner.clone()));
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

    /// Joins `room` as the appservice user and records it as linked.
    async fn join_room(&self, room: &str) -> Result<(), HsError> {
        let bot = self.cfg.bot_user_id();
        self.hs.register(&self.cfg.bot_localpart).await?;
        let room_id = self.hs.join(room, &bot).await?;
        if let Some(encryption) = self.hs.state_event(&room_id, &bot, "m.room.encryption", "").await? {
            let event_id = encryption["event_id"].as_str().unwrap_or_default();
            match self.tell_room_is_not_encrypted_for_us(&room_id, event_id).await {
                Err(HsError::Unavailable(e)) => return Err(HsError::Unavailable(e)),
                Err(e) => {
                    tracing::warn!(account = %self.id, room = %room_id, error = %e, "cannot post the encryption notice")
                }
                Ok(()) => {}
            }
        }
        let mut st = self.state();
        st.rooms.insert(room_id, room.to_owned());
        st.wanted.remove(room);
        Ok(())
    }

    /// Posts [`ENCRYPTED_ROOM_NOTICE`] in `room_id` as the appservice user, once per `m.room.encryption` event
    /// (the transaction id is made from its id, sent from the appservice user's device).
    async fn tell_room_is_not_encrypted_for_us(&self, room_id: &str, encryption_event: &str) -> Result<(), HsError> {
        let bot = self.cfg.bot_user_id();
        if !self.state().devices.contains(&bot) {
            self.ensure_device(&bot).await?;
        }
        let txn = format!("mimi-encrypted-room-{}", encryption_event.trim_start_matches('$'));
        let content = serde_json::json!({"msgtype": "m.notice", "body": ENCRYPTED_ROOM_NOTICE, "m.mentions": {}});
        let notice = self.hs.send(room_id, "m.room.message", &txn, &content, self.actor(&bot)).await?;
        tracing::info!(account = %self.id, room = %room_id, event_id = %notice, "encrypted room: notice posted");
        Ok(())
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
                match self.hs.send(&room, event_type, &txn_id, &content, self.actor(&as_user)).await {
                    // What we knew of the ghost's membership is stale (kicked, banned): look again, once.
                    Err(HsError::Refused { status: 403, .. }) => {
                        self.state().joined.remove(&(room.clone(), as_user.clone()));
                        self.ensure_ghost(&room, &as_user, name, uri).await?;
                        self.hs.send(&room, event_type, &txn_id, &content, self.actor(&as_user)).await.map(Some)
                    }
                    other => other.map(Some),
                }
            }
            MatrixAction::SendMedia { room, as_user, txn_id, attachment, content } => {
                let room = self.room_id(&room);
                self.ensure_ghost(&room, &as_user, name, uri).await?;
                let content =
                    media_transfer::upload(&self.hs, self.ctx.media.as_ref(), &attachment.url, content, &as_user)
                        .await?;
                self.hs.send(&room, "m.room.message", &txn_id, &content, self.actor(&as_user)).await.map(Some)
            }
            MatrixAction::Redact { room, as_user, event_id, txn_id } => {
                let room = self.room_id(&room);
                self.ensure_ghost(&room, &as_user, name, uri).await?;
                self.hs.redact(&room, &event_id, &txn_id, self.actor(&as_user)).await.map(Some)
            }
            MatrixAction::Join { room, as_user, display_name } => {
                let room = self.room_id(&room);
                self.ensure_ghost(&room, &as_user, &display_name, uri).await.map(|()| None)
            }
            MatrixAction::Leave { room, as_user } => {
                let room = self.room_id(&room);
                self.hs.leave(&room, &as_user).await?;
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
        self.health.send_if_modified(|cur| {
            let changed = *cur != h;
            *cur = h;
            changed
        });
    }
}

/// Pings the homeserver until it answers, then (re)joins the rooms waiting for it; again whenever woken.
async fn ping_loop(inner: Arc<Inner>) {
    let mut backoff = Duration::from_secs(1);
    loop {
        if inner.state().stopped {
            return;
        }
        match inner.hs.ping(&inner.cfg.registration_id).await {
            Ok(()) => {
                backoff = Duration::from_secs(1);
                let wanted: Vec<String> = inner.state().wanted.iter().cloned().collect();
                for room in wanted {
                    if let Err(e) = inner.join_room(&room).await {
                        tracing::warn!(account = %inner.id, %room, error = %e, "cannot join the linked room");
                    }
                }
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
            match self.join_room(&room).await {
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

/// Whether the core's refusal is temporary (answer the transaction 500, the homeserver retries it).
fn temporary(e: &RouteError) -> bool {
    matches!(e, RouteError::Store(_) | RouteError::Closed | RouteError::Room(bridge_api::RoomError::Unavailable(_)))
}

#[async_trait]
impl Transactions for Inner {
    async fn handle(&self, events: Vec<Raw<AnyTimelineEvent>>) -> Result<(), String> {
        let mut pending = Vec::new();
        for raw in events {
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
                && let Err(e) = self.tell_room_is_not_encrypted_for_us(&room_id, e.event_id().as_str()).await
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
                        media_transfer::download_all(hs, store, &reader, &self.cfg.server_name, draft).await?;
                    }
                    match self.ctx.inbound.enqueue(inbound).await {
                        Ok(ack) => pending.push(ack),
                        Err(e) if temporary(&e) => return Err(e.to_string()),
                        Err(e) => tracing::warn!(account = %self.id, error = %e, "event refused by the core"),
                    }
                }
                Err(skip) => tracing::debug!(account = %self.id, event = %ev.event_id(), %skip, "not bridged"),
            }
        }
        for ack in pending {
            match ack.wait().await {
                Ok(_) => {}
                Err(e) if temporary(&e) => return Err(e.to_string()),
                Err(e) => tracing::warn!(account = %self.id, error = %e, "event refused by the core"),
            }
        }
        Ok(())
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
        match self.inner.join_room(room).await {
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
                self.inner.state().rooms.remove(&room_id);
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
    }
}
