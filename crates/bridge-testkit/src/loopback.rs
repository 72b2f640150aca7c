//! An in-memory connector for unit tests of the core. **Never** the evidence that a real connector works.
//!
//! A [`LoopbackNetwork`] is a fake network: tests make legacy users "say" things with [`LoopbackNetwork::say`]
//! and read what the bridge delivered with [`LoopbackNetwork::delivered`]. Native ids are `lb-N`.

use async_trait::async_trait;
use bridge_api::capability::{Capabilities, Grade};
use bridge_api::connector::{Account, AccountContext, ConnectorError, Delivery, Health, SendError};
use bridge_api::event::{InboundEvent, InboundKind, OutboundEvent};
use bridge_api::ids::{AccountId, LegId, NativeId};
use bridge_api::uri::LegacyUser;
use bridge_core::router::{Accepted, RouteError};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{Notify, watch};

/// A fake network account.
pub struct LoopbackNetwork {
    id: AccountId,
    ctx: AccountContext,
    delivered: Mutex<Vec<OutboundEvent>>,
    /// Woken at every delivery.
    arrived: Notify,
    next: AtomicU64,
    /// While set, `send` answers `Retry` (the network is "down").
    pub down: AtomicBool,
    /// While set, `send` answers `Rejected`.
    pub reject: AtomicBool,
    health: watch::Sender<Health>,
}

impl LoopbackNetwork {
    /// Creates the account; register it with the router with `router.add_account(net.clone())`.
    pub fn new(id: AccountId, ctx: AccountContext) -> Arc<Self> {
        let (health, _) = watch::channel(Health::Connected);
        Arc::new(Self {
            id,
            ctx,
            delivered: Mutex::default(),
            arrived: Notify::new(),
            next: AtomicU64::new(1),
            down: AtomicBool::new(false),
            reject: AtomicBool::new(false),
            health,
        })
    }

    /// A legacy user of this network.
    pub fn user(&self, nick: &str) -> LegacyUser {
        LegacyUser { account: self.id.clone(), native_id: nick.to_owned(), display_name: Some(nick.to_owned()) }
    }

    /// A leg of this network.
    pub fn leg(&self, room: &str) -> LegId {
        LegId { account: self.id.clone(), room: room.to_owned() }
    }

    /// Makes `nick` do `kind` in `room` with the given native id, and waits for the core's verdict.
    pub async fn say_with_id(
        &self,
        room: &str,
        nick: &str,
        native: &str,
        kind: InboundKind,
    ) -> Result<Accepted, RouteError> {
        let ev = InboundEvent {
            leg: self.leg(room),
            sender: self.user(nick),
            native_id: Some(NativeId(native.to_owned())),
            from_bridge: false,
            kind,
        };
        self.ctx.inbound.submit(ev).await
    }

    /// Makes `nick` post `text` in `room`; returns the native id it got and the verdict.
    pub async fn say(&self, room: &str, nick: &str, text: &str) -> (NativeId, Result<Accepted, RouteError>) {
        let n = format!("lb-in-{}", self.next.fetch_add(1, Ordering::Relaxed));
        let kind = InboundKind::Message { draft: bridge_api::event::MessageDraft::plain(text), reply_to: None };
        let r = self.say_with_id(room, nick, &n, kind).await;
        (NativeId(n), r)
    }

    /// The sink, for tests that build events themselves.
    pub fn context(&self) -> &AccountContext {
        &self.ctx
    }

    /// Everything delivered so far.
    pub fn delivered(&self) -> Vec<OutboundEvent> {
        self.delivered.lock().map(|v| v.clone()).unwrap_or_default()
    }

    /// Waits (up to `timeout`) until at least `n` events were delivered; returns them.
    pub async fn wait_delivered(&self, n: usize, timeout: std::time::Duration) -> Vec<OutboundEvent> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let arrived = self.arrived.notified();
            let d = self.delivered();
            if d.len() >= n || tokio::time::Instant::now() >= deadline {
                return d;
            }
            // Registered before the check above: a delivery in between still wakes it.
            let _ = tokio::time::timeout_at(deadline, arrived).await;
        }
    }
}

#[async_trait]
impl Account for LoopbackNetwork {
    fn id(&self) -> &AccountId {
        &self.id
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities::all(Grade::Full)
    }
    async fn join(&self, _room: &str) -> Result<(), ConnectorError> {
        Ok(())
    }
    async fn leave(&self, _room: &str) -> Result<(), ConnectorError> {
        Ok(())
    }
    async fn send(&self, event: &OutboundEvent) -> Result<Delivery, SendError> {
        if self.reject.load(Ordering::Relaxed) {
            return Err(SendError::Rejected("loopback told to reject".into()));
        }
        if self.down.load(Ordering::Relaxed) {
            return Err(SendError::Retry("loopback is down".into()));
        }
        let n = NativeId(format!("lb-out-{}", self.next.fetch_add(1, Ordering::Relaxed)));
        if let Ok(mut v) = self.delivered.lock() {
            v.push(event.clone());
        }
        self.arrived.notify_waiters();
        Ok(Delivery { native_ids: vec![n] })
    }
    fn health(&self) -> watch::Receiver<Health> {
        self.health.subscribe()
    }
    async fn shutdown(&self) {
        let _ = self.health.send(Health::Stopped);
    }
}
