//! The connector API: what a connector author implements to add a network.
//!
//! A connector crate provides two things:
//!
//! * a [`Connector`] — one per network kind (`irc`, `matrix`, `xmpp`, …): its config type (the body of an
//!   `[irc.NAME]` table), its capabilities, and how to start an account;
//! * an [`Account`] per configured login or connection: it joins and leaves rooms, performs [`OutboundEvent`]s,
//!   reports its [`Health`], and hands what it sees to the core through the [`InboundSink`] in its
//!   [`AccountContext`].
//!
//! Connectors split a sans-IO translation layer (native event ⇄ core event, pure functions, unit-tested) from the
//! IO shell (sockets, reconnects); the API below is what the shell talks to. `docs/connector-guide.md` walks
//! through a complete connector.
//!
//! ## Contract
//!
//! * **Inbound**: call [`InboundSink::submit`] for every event, in the order the network delivered them. It waits
//!   while the portal's queue is full (backpressure: stop reading from the network meanwhile) and returns once the
//!   event is durably accepted; acknowledge to the network (appservice transaction, XMPP stream management) only
//!   then. [`InboundSink::enqueue`] lets a connector pipeline several events and collect the acks later.
//! * **Outbound**: [`Account::send`] performs one event. Return [`SendError::Retry`] when the network is not
//!   reachable right now (the core retries with backoff, in order), [`SendError::Rejected`] when it never will be
//!   (the core reports the message as undeliverable to its sender).
//! * **Echo**: set [`InboundEvent::from_bridge`] for events the network marks as the bridge's own; register the
//!   network users the bridge controls (puppets) with [`AccountContext::register_ghost`].
//! * **Bad input** from the network: log it and drop it; never let it end the connection or panic.

use crate::capability::Capabilities;
use crate::event::{InboundEvent, OutboundEvent};
use crate::ids::{AccountId, LegId, MessageId, NativeId};
use crate::route::{Accepted, RouteError};
use async_trait::async_trait;
use serde::de::DeserializeOwned;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{oneshot, watch};

/// The state of one account, as `mimi-bridge status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum Health {
    /// Connecting or logging in.
    Connecting,
    /// Connected and joined.
    Connected,
    /// The connection failed; the next attempt is in `retry_in`.
    BackingOff {
        /// Time until the next attempt.
        retry_in: Duration,
        /// What went wrong (no secrets).
        reason: String,
    },
    /// The network refused the credentials; the account will not retry until reconfigured.
    BadCredentials {
        /// What the network said (no secrets).
        reason: String,
    },
    /// Stopped (shutdown, or unrecoverable).
    Stopped,
}

impl Health {
    /// Publishes `next` as an account's health, unless it has stopped: [`Health::Stopped`] is final. A task of the
    /// account that finishes a step after [`Account::shutdown`] (a reconnect, a ping answered) cannot make the
    /// stopped account look alive again, and whoever waits for `Stopped` on a [`watch::Receiver`] (which sees only
    /// the latest value) is sure to see it. Receivers are woken only when the value changes.
    pub fn publish(health: &watch::Sender<Health>, next: Health) {
        health.send_if_modified(|cur| {
            if *cur == Health::Stopped || *cur == next {
                return false;
            }
            *cur = next;
            true
        });
    }
}

/// Errors from starting or driving an account.
#[derive(Debug, thiserror::Error)]
pub enum ConnectorError {
    /// The account's configuration is unusable.
    #[error("{account}: bad configuration: {reason}")]
    Config {
        /// The account.
        account: AccountId,
        /// What is wrong.
        reason: String,
    },
    /// A room could not be joined or left.
    #[error("{account}: room {room}: {reason}")]
    Room {
        /// The account.
        account: AccountId,
        /// The room.
        room: String,
        /// Why.
        reason: String,
    },
    /// Anything else.
    #[error("{account}: {reason}")]
    Other {
        /// The account.
        account: AccountId,
        /// What happened.
        reason: String,
    },
}

/// Why an outbound event was not performed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// Not now (disconnected, rate-limited…): the core retries later, keeping order.
    #[error("temporarily unable to send: {0}")]
    Retry(String),
    /// Never (forbidden, too large, unsupported): the core gives up and tells the sender.
    #[error("rejected: {0}")]
    Rejected(String),
}

/// What a connector reports after performing an outbound event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Delivery {
    /// The ids the network gave the result, first one first (a message split into several lines may have
    /// several; the first is the one later references resolve to). Empty for ephemeral events.
    pub native_ids: Vec<NativeId>,
}

/// One network kind. Registered with the daemon once; starts one [`Account`] per config table.
#[async_trait]
pub trait Connector: Send + Sync + 'static {
    /// The body of an account table (`[irc.NAME]`), deserialised with unknown keys rejected.
    type Config: DeserializeOwned + Send + Sync + 'static;

    /// The network kind: the config table prefix and the first part of [`AccountId`]s (`irc`).
    fn network(&self) -> &'static str;

    /// What accounts with this configuration can express. An account may refine it (e.g. after IRCv3 CAP
    /// negotiation) through [`Account::capabilities`].
    fn capabilities(&self, config: &Self::Config) -> Capabilities;

    /// The config keys that hold secrets (passwords, tokens, private keys). The daemon lets operators give each as
    /// `KEY_file = "/path"` (a file not readable by other users; its content becomes `KEY`) or `KEY = "env:NAME"`,
    /// resolves them before deserialising [`Connector::Config`], and never logs them. Other keys ending in
    /// `_file` (a CA bundle, say) are left alone.
    fn secret_keys(&self) -> &'static [&'static str] {
        &[]
    }

    /// Checks a configuration beyond what deserialising it checks (called by `check-config` and before start).
    fn validate(&self, _id: &AccountId, _config: &Self::Config) -> Result<(), ConnectorError> {
        Ok(())
    }

    /// Starts an account. Returns at once: connecting happens in the background, visible through
    /// [`Account::health`]; an unreachable server must never make this fail or crash the daemon.
    async fn start(
        &self,
        id: AccountId,
        config: Self::Config,
        ctx: AccountContext,
    ) -> Result<Arc<dyn Account>, ConnectorError>;
}

/// One login or connection to a network.
#[async_trait]
pub trait Account: Send + Sync + 'static {
    /// Which account this is.
    fn id(&self) -> &AccountId;

    /// What this account can express now.
    fn capabilities(&self) -> Capabilities;

    /// Joins a room (its native name). Idempotent; remembered across reconnects.
    async fn join(&self, room: &str) -> Result<(), ConnectorError>;

    /// Leaves a room. Idempotent.
    async fn leave(&self, room: &str) -> Result<(), ConnectorError>;

    /// Performs one outbound event. Called in order per room, one at a time per room.
    async fn send(&self, event: &OutboundEvent) -> Result<Delivery, SendError>;

    /// A watch on the account's health.
    fn health(&self) -> watch::Receiver<Health>;

    /// Disconnects cleanly (QUIT, stream close). Events already submitted are not affected.
    async fn shutdown(&self);
}

/// The core's side of an [`InboundSink`]: what the router implements, so that connectors depend on this API and
/// not on the router. Connector authors never implement it (tests use the router with a loopback network, or the
/// conformance kit); it is public so that the router crate can.
#[async_trait]
pub trait InboundRoute: Send + Sync + 'static {
    /// Queues `event` on its portal, waiting only for room in the portal's queue; the receiver resolves once the
    /// core has durably accepted (or refused) it.
    async fn route(&self, event: InboundEvent) -> Result<oneshot::Receiver<Result<Accepted, RouteError>>, RouteError>;

    /// Registers a ghost of `account` (see [`AccountContext::register_ghost`]). Durable on return.
    async fn register_ghost(&self, account: &AccountId, native_user: &str, for_uri: &str) -> Result<(), RouteError>;

    /// Forgets a ghost of `account` (see [`AccountContext::unregister_ghost`]). Durable on return.
    async fn unregister_ghost(&self, account: &AccountId, native_user: &str) -> Result<(), RouteError>;

    /// The MIMI message a native id on a leg stands for, if the core knows it.
    fn message_for(&self, leg: &LegId, native: &NativeId) -> Option<MessageId>;

    /// Whether the core took `native` from `leg` (`Some(true)`), delivered it there (`Some(false)`), or does not
    /// know it (`None`); see [`InboundSink::taken_from_leg`]. The default tells the first two apart by nothing: a
    /// known id counts as a delivery.
    fn taken_from_leg(&self, leg: &LegId, native: &NativeId) -> Option<bool> {
        self.message_for(leg, native).map(|_| false)
    }

    /// The rooms of `account` linked to a portal now (see [`InboundSink::linked_rooms`]). The default knows none.
    fn linked_rooms(&self, account: &AccountId) -> Vec<String> {
        let _ = account;
        Vec::new()
    }
}

/// What the core gives an account when it starts.
#[derive(Clone)]
pub struct AccountContext {
    /// Where inbound events go.
    pub inbound: InboundSink,
    /// The bridge's MIMI domain (for building URIs).
    pub domain: String,
    /// The daemon's media blob store, if it runs one (see [`crate::media`]).
    pub media: Option<Arc<dyn crate::media::MediaStore>>,
    /// A directory of this account's own under the daemon's data directory (mode 0700), for state a connector
    /// keeps outside the core's store (a client library's session and keys); `None` where there is none.
    pub state_dir: Option<std::path::PathBuf>,
}

impl AccountContext {
    /// Creates a context for `account` feeding `route` (the router).
    pub fn new(account: AccountId, route: impl InboundRoute, domain: impl Into<String>) -> Self {
        let inbound = InboundSink { account, route: Arc::new(route) };
        Self { inbound, domain: domain.into(), media: None, state_dir: None }
    }

    /// The same context with the account's state directory.
    pub fn with_state_dir(mut self, dir: impl Into<std::path::PathBuf>) -> Self {
        self.state_dir = Some(dir.into());
        self
    }

    /// The same context with the daemon's media store.
    pub fn with_media(mut self, media: Arc<dyn crate::media::MediaStore>) -> Self {
        self.media = Some(media);
        self
    }

    /// Registers `native_user` on this account as a ghost the bridge controls on behalf of `for_uri` (a puppet
    /// nick, a Matrix appservice user…). Events from ghosts are never bridged again. Durable on return.
    pub async fn register_ghost(&self, native_user: &str, for_uri: &str) -> Result<(), RouteError> {
        self.inbound.route.register_ghost(&self.inbound.account, native_user, for_uri).await
    }

    /// Forgets a ghost once the bridge has given the native user name up (a per-user connection that quit), so
    /// a real user who takes the name later is bridged again. Durable on return.
    pub async fn unregister_ghost(&self, native_user: &str) -> Result<(), RouteError> {
        self.inbound.route.unregister_ghost(&self.inbound.account, native_user).await
    }
}

/// Where an account hands inbound events to the core.
#[derive(Clone)]
pub struct InboundSink {
    account: AccountId,
    route: Arc<dyn InboundRoute>,
}

/// An inbound event queued with [`InboundSink::enqueue`]; resolves once the core has durably accepted it.
pub struct PendingAck(oneshot::Receiver<Result<Accepted, RouteError>>);

impl PendingAck {
    /// Waits for the outcome.
    pub async fn wait(self) -> Result<Accepted, RouteError> {
        self.0.await.unwrap_or(Err(RouteError::Closed))
    }
}

impl InboundSink {
    /// The account this sink belongs to.
    pub fn account(&self) -> &AccountId {
        &self.account
    }

    /// The native names of this account's rooms that are linked to a portal now. The core asks the account to
    /// [`Account::join`] each after starting it, so an account that hears of a room before that (a homeserver
    /// retrying a transaction right after a restart) can tell "linked, not joined yet" from "not linked".
    pub fn linked_rooms(&self) -> Vec<String> {
        self.route.linked_rooms(&self.account)
    }

    /// Submits one event and waits until it is durably accepted (or rejected).
    pub async fn submit(&self, event: InboundEvent) -> Result<Accepted, RouteError> {
        self.enqueue(event).await?.wait().await
    }

    /// Queues one event, waiting only for room in the portal's queue, and returns a handle for the outcome.
    pub async fn enqueue(&self, event: InboundEvent) -> Result<PendingAck, RouteError> {
        if event.leg.account != self.account {
            return Err(RouteError::WrongAccount { leg: event.leg, account: self.account.clone() });
        }
        self.route.route(event).await.map(PendingAck)
    }

    /// Looks up the MIMI message a native id on a leg stands for (connectors rarely need this: the core resolves
    /// references itself).
    pub fn message_for(&self, leg: &LegId, native: &NativeId) -> Option<MessageId> {
        self.route.message_for(leg, native)
    }

    /// Whether the core took the event `native` from `leg` (`Some(true)`: it was bridged from there), delivered
    /// it there (`Some(false)`: the network's id of one of the bridge's deliveries), or does not know it. A
    /// network's history read after a crash is complete from the newest event taken from the leg on: deliveries
    /// reflected later say nothing about what the leg said before them.
    pub fn taken_from_leg(&self, leg: &LegId, native: &NativeId) -> Option<bool> {
        self.route.taken_from_leg(leg, native)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The appservice account's ping loop could publish `Connected` after `shutdown` had published `Stopped`: the
    /// appservice listener, waiting for `Stopped`, never saw it and kept the port bound.
    #[test]
    fn a_stopped_account_stays_stopped_whatever_its_tasks_publish_after() {
        let (tx, mut rx) = watch::channel(Health::Connecting);
        Health::publish(&tx, Health::Connected);
        assert_eq!(*rx.borrow_and_update(), Health::Connected);
        Health::publish(&tx, Health::Connected);
        assert!(!rx.has_changed().expect("open"), "an unchanged health wakes nobody");
        Health::publish(&tx, Health::Stopped);
        Health::publish(&tx, Health::Connected);
        Health::publish(&tx, Health::BackingOff { retry_in: Duration::from_secs(1), reason: "late".into() });
        assert_eq!(*rx.borrow_and_update(), Health::Stopped);
    }
}
