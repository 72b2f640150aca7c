//! Helpers the Prosody tests share: test users (real XMPP clients, the connector's own `client::connect`), the
//! events the core would hand the account, and the core side of an account's context.
// Each test file uses a part of these.
#![allow(dead_code)]

use async_trait::async_trait;
use bridge_api::event::OutboundKind;
use bridge_api::event::{MessageDraft, OutboundEvent};
use bridge_api::{Account, AccountId, InboundEvent, LegId, MessageId, NativeId};
use connector_xmpp::client::{self, Login, Transport};
use connector_xmpp::link::Link;
use harness::Prosody;
use minidom::Element;
use minidom::rxml::xml_ncname;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use xmpp_parsers::iq::Iq;
use xmpp_parsers::jid::{BareJid, Jid};
use xmpp_parsers::message::{Id, Lang, Message, MessageType};
use xmpp_parsers::presence::Presence;
use xmpp_parsers::stanza::Stanza;

/// The room the tests use.
pub const ROOM: &str = "kit@muc.localhost";

pub fn login(server: &Prosody, user: &str) -> Login {
    Login {
        server: server.c2s_addr(),
        jid: Jid::new(&format!("{user}@localhost")).expect("jid"),
        password: format!("pw-{user}"),
        transport: Transport::InsecureTcp,
        resource: "test".into(),
    }
}

pub fn room() -> BareJid {
    BareJid::new(ROOM).expect("room jid")
}

/// `nick` logs in and joins the room; returns once the room confirms.
pub async fn join(server: &Prosody, nick: &str) -> Result<Link, String> {
    join_room(server, nick, ROOM).await
}

/// `nick` logs in and joins `room`; returns once the room confirms.
pub async fn join_room(server: &Prosody, nick: &str, room: &str) -> Result<Link, String> {
    let mut link = client::connect(&login(server, nick)).await.map_err(|e| format!("{nick} logs in: {e}"))?;
    let room = BareJid::new(room).map_err(|e| e.to_string())?;
    let to = room.with_resource_str(nick).map_err(|e| e.to_string())?;
    let mut p = Presence::available().with_to(Jid::from(to));
    p.payloads.push(
        Element::builder("x", xmpp_parsers::ns::MUC)
            .append(Element::builder("history", xmpp_parsers::ns::MUC).attr(xml_ncname!("maxstanzas").into(), "0"))
            .build(),
    );
    link.outbound.send(Stanza::Presence(p)).await.map_err(|e| e.to_string())?;
    // Wait for our own presence (status 110).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let s = tokio::time::timeout_at(deadline, link.inbound.recv())
            .await
            .map_err(|_| format!("{nick}: no self-presence from the room"))?
            .ok_or("stream closed while joining")?;
        if let Stanza::Presence(p) = s
            && p.from.as_ref().and_then(|f| f.resource()).map(|r| r.as_str()) == Some(nick)
        {
            return Ok(link);
        }
    }
}

/// The core side of a context for tests that never route anything (every event is refused).
pub struct NoRoute;

#[async_trait]
impl bridge_api::InboundRoute for NoRoute {
    async fn route(
        &self,
        event: bridge_api::InboundEvent,
    ) -> Result<
        tokio::sync::oneshot::Receiver<Result<bridge_api::Accepted, bridge_api::RouteError>>,
        bridge_api::RouteError,
    > {
        Err(bridge_api::RouteError::UnknownLeg(event.leg))
    }
    async fn register_ghost(&self, _: &AccountId, _: &str, _: &str) -> Result<(), bridge_api::RouteError> {
        Ok(())
    }
    async fn unregister_ghost(&self, _: &AccountId, _: &str) -> Result<(), bridge_api::RouteError> {
        Ok(())
    }
    fn message_for(&self, _: &bridge_api::LegId, _: &bridge_api::NativeId) -> Option<bridge_api::MessageId> {
        None
    }
}

/// A message from the MIMI user `name` into `room`, as the core would hand it to the account (`n` makes the ids).
pub fn message_event(account: AccountId, room: &str, n: u8, name: &str, text: &str) -> OutboundEvent {
    let mut mid = [n; 32];
    mid[0] = 1;
    let message_id = bridge_api::MessageId::from_bytes(&mid).expect("message id");
    let leg = bridge_api::LegId::new(account, room).expect("leg");
    OutboundEvent {
        portal: bridge_api::PortalId::new("p").expect("portal"),
        txn_id: bridge_api::TxnId::for_delivery(&message_id, &leg),
        leg,
        message_id,
        sender: bridge_api::event::Sender {
            uri: format!("mimi://bridge.test/u/{name}"),
            display_name: name.into(),
            network: "mimi".into(),
            legacy: None,
        },
        kind: OutboundKind::Message { draft: bridge_api::event::MessageDraft::plain(text), reply_to: None },
        queued_at_ms: 0,
    }
}

/// Sends `event`; until the stream is up and the room joined, send answers Retry (the core would retry later
/// too), so it is tried again for up to 10 s.
pub async fn send_when_ready(
    account: &dyn Account,
    event: &OutboundEvent,
) -> Result<bridge_api::connector::Delivery, bridge_api::connector::SendError> {
    let mut result = account.send(event).await;
    for _ in 0..50 {
        if !matches!(result, Err(bridge_api::connector::SendError::Retry(_))) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        result = account.send(event).await;
    }
    result
}

/// `user` says `text` in the room (with an origin-id of `id`), without waiting for the reflection.
pub async fn say(link: &Link, id: &str, text: &str) -> Result<(), String> {
    say_in(link, ROOM, id, text).await
}

/// As [`say`], in `room`.
pub async fn say_in(link: &Link, room: &str, id: &str, text: &str) -> Result<(), String> {
    let room = BareJid::new(room).map_err(|e| e.to_string())?;
    let mut m = Message::new_with_type(MessageType::Groupchat, Some(Jid::from(room)));
    m.id = Some(Id(id.to_owned()));
    m.bodies.insert(Lang::new(), text.to_owned());
    m.payloads.push(Element::builder("origin-id", xmpp_parsers::ns::SID).attr(xml_ncname!("id").into(), id).build());
    link.outbound.send(Stanza::Message(m)).await.map_err(|e| e.to_string())
}

/// The bodies of the newest 50 messages of the room's archive (XEP-0313), oldest first, read by a fresh stream
/// of `user`.
pub async fn archive_bodies(server: &Prosody, user: &str) -> Result<Vec<String>, String> {
    // A resource of its own: the user's joined stream (resource `test`) must not be replaced.
    let login = Login { resource: "archive".into(), ..login(server, user) };
    let mut link = client::connect(&login).await.map_err(|e| format!("{user} logs in: {e}"))?;
    let rsm = Element::builder("set", xmpp_parsers::ns::RSM)
        .append(Element::builder("max", xmpp_parsers::ns::RSM).append("50"))
        .append(Element::builder("before", xmpp_parsers::ns::RSM))
        .build();
    let q = Element::builder("query", xmpp_parsers::ns::MAM).attr(xml_ncname!("queryid").into(), "all").append(rsm);
    let iq = Iq::Set { from: None, to: Some(Jid::from(room())), id: "all".into(), payload: q.build() };
    link.outbound.send(Stanza::Iq(iq)).await.map_err(|e| e.to_string())?;
    let mut bodies = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let s = tokio::time::timeout_at(deadline, link.inbound.recv())
            .await
            .map_err(|_| "no end of the archive query".to_string())?
            .ok_or("stream closed")?;
        match s {
            Stanza::Message(m) => {
                let body = m
                    .payloads
                    .iter()
                    .find(|p| p.is("result", xmpp_parsers::ns::MAM))
                    .and_then(|r| r.get_child("forwarded", xmpp_parsers::ns::FORWARD))
                    .and_then(|f| f.get_child("message", "jabber:client"))
                    .and_then(|m| m.get_child("body", "jabber:client"))
                    .map(Element::text);
                bodies.extend(body);
            }
            Stanza::Iq(Iq::Result { id, .. }) if id == "all" => return Ok(bodies),
            Stanza::Iq(Iq::Error { id, error, .. }) if id == "all" => return Err(format!("archive query: {error:?}")),
            _ => {}
        }
    }
}

/// The core side of a context, enough for recovery tests: accepts every event, records it, and knows the native
/// ids of what it accepted and of what [`RecordingRoute::delivered`] was told (the core's ID map); events from
/// registered ghosts are the bridge's own, as in the core. Clones share what they record.
#[derive(Default, Clone)]
pub struct RecordingRoute {
    inner: Arc<Mutex<Recorded>>,
}

#[derive(Default)]
struct Recorded {
    events: Vec<InboundEvent>,
    known: HashMap<(LegId, NativeId), MessageId>,
    ghosts: Vec<String>,
    next: u8,
}

impl RecordingRoute {
    /// Bodies of the messages accepted so far, in order.
    pub fn bodies(&self) -> Vec<String> {
        self.drafts().into_iter().map(|d| d.body).collect()
    }

    /// Every event accepted so far, in order.
    pub fn events(&self) -> Vec<InboundEvent> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).events.clone()
    }

    /// The messages accepted so far, in order.
    pub fn drafts(&self) -> Vec<MessageDraft> {
        let r = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        r.events
            .iter()
            .filter_map(|e| match &e.kind {
                bridge_api::InboundKind::Message { draft, .. } => Some(draft.clone()),
                _ => None,
            })
            .collect()
    }

    /// Records a delivery's native ids, as the core does.
    pub fn delivered(&self, event: &OutboundEvent, native_ids: &[NativeId]) {
        let mut r = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        for n in native_ids {
            r.known.insert((event.leg.clone(), n.clone()), event.message_id);
        }
    }
}

#[async_trait]
impl bridge_api::InboundRoute for RecordingRoute {
    async fn route(
        &self,
        event: InboundEvent,
    ) -> Result<
        tokio::sync::oneshot::Receiver<Result<bridge_api::Accepted, bridge_api::RouteError>>,
        bridge_api::RouteError,
    > {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let mut r = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let accepted = if r.ghosts.contains(&event.sender.native_id) {
            bridge_api::Accepted::Echo
        } else {
            r.next = r.next.wrapping_add(1);
            let mut bytes = [0xAA; 32];
            bytes[0] = 1;
            bytes[31] = r.next;
            let id =
                MessageId::from_bytes(&bytes).map_err(|_| bridge_api::RouteError::UnknownLeg(event.leg.clone()))?;
            if let Some(n) = &event.native_id {
                r.known.insert((event.leg.clone(), n.clone()), id);
            }
            r.events.push(event);
            bridge_api::Accepted::Bridged(id)
        };
        let _ = tx.send(Ok(accepted));
        Ok(rx)
    }
    async fn register_ghost(&self, _: &AccountId, native_user: &str, _: &str) -> Result<(), bridge_api::RouteError> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).ghosts.push(native_user.to_owned());
        Ok(())
    }
    async fn unregister_ghost(&self, _: &AccountId, _: &str) -> Result<(), bridge_api::RouteError> {
        Ok(())
    }
    fn message_for(&self, leg: &LegId, native: &NativeId) -> Option<MessageId> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).known.get(&(leg.clone(), native.clone())).copied()
    }
}

/// Sends `event` as the core's leg worker would: `Retry` is retried (every 200 ms, for up to `patience`).
pub async fn send_like_the_core(
    account: &dyn Account,
    event: &OutboundEvent,
    patience: Duration,
) -> Result<bridge_api::connector::Delivery, bridge_api::connector::SendError> {
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        match account.send(event).await {
            Err(bridge_api::connector::SendError::Retry(why)) if tokio::time::Instant::now() < deadline => {
                tracing::debug!(%why, "retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            other => return other,
        }
    }
}

/// A Prosody with the users `alice` and `bridge`, and the bridge's account config for it in either mode (plain
/// TCP).
pub fn server_and_config(component: bool) -> (Prosody, connector_xmpp::Config) {
    let server = Prosody::start().expect("prosody starts (installed by ./scripts/test)");
    server.register("alice", "pw-alice").expect("register");
    server.register("bridge", "pw-bridge").expect("register");
    let mut config = if component {
        connector_xmpp::Config::component(
            server.component_addr(),
            server.component_domain.clone(),
            server.component_secret.clone(),
        )
    } else {
        connector_xmpp::Config::client(server.c2s_addr(), "bridge@localhost", "pw-bridge")
    };
    config.transport = Transport::InsecureTcp;
    (server, config)
}

/// A component-mode account (`xmpp.n`) of `server` feeding `route`, joined to the room.
pub async fn component(server: &Prosody, route: &RecordingRoute) -> (AccountId, Arc<dyn Account>) {
    let id = AccountId::new("xmpp", "n").expect("account id");
    let config = connector_xmpp::Config::component(
        server.component_addr(),
        server.component_domain.clone(),
        server.component_secret.clone(),
    );
    let ctx = bridge_api::AccountContext::new(id.clone(), route.clone(), "bridge.test");
    let account =
        bridge_api::Connector::start(&connector_xmpp::XmppConnector, id.clone(), config, ctx).await.expect("start");
    joined(account.as_ref()).await;
    (id, account)
}

/// Waits until `account` is connected and in the room (`join` before the stream is up returns at once, and what
/// is said before the bridge is in the room is history it does not replay).
pub async fn joined(account: &dyn Account) {
    let mut health = account.health();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while *health.borrow_and_update() != bridge_api::Health::Connected {
        tokio::time::timeout_at(deadline, health.changed()).await.expect("connected in time").expect("health");
    }
    account.join(ROOM).await.expect("the bridge joins");
}

/// A Prosody with the user `alice` and a component-mode account, both in the room.
pub struct ComponentRoom {
    /// The server (stopped when this is dropped).
    pub server: Prosody,
    /// The core side of the account.
    pub route: RecordingRoute,
    /// The account's id.
    pub id: AccountId,
    /// The account, joined.
    pub account: Arc<dyn Account>,
    /// Alice's stream, joined.
    pub alice: Link,
}

/// Starts a [`ComponentRoom`].
pub async fn component_room() -> ComponentRoom {
    let server = Prosody::start().expect("prosody starts (installed by ./scripts/test)");
    server.register("alice", "pw-alice").expect("register");
    let route = RecordingRoute::default();
    let (id, account) = component(&server, &route).await;
    let alice = join(&server, "alice").await.expect("alice joins");
    ComponentRoom { server, route, id, account, alice }
}
