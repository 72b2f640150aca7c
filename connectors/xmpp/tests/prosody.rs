//! The conformance kit against a real Prosody (tests/harness starts it), in client and in component mode, and the
//! account's behaviour on refusals. The test users are real XMPP clients: tokio-xmpp streams (the connector's
//! own `client::connect`), logged in as ordinary accounts.

mod common;

use async_trait::async_trait;
use bridge_api::capability::Feature;
use bridge_api::event::{OutboundEvent, OutboundKind};
use bridge_api::{Account, AccountContext, AccountId, Connector};
use bridge_testkit::{Harness, KitOptions, NativeAction, Observed, TestUser};
use connector_xmpp::client::{self, Transport};
use connector_xmpp::link::Link;
use connector_xmpp::{Config, XmppConnector, ns};
use harness::Prosody;
use minidom::Element;
use minidom::rxml::xml_ncname;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use xmpp_parsers::jid::{BareJid, Jid};
use xmpp_parsers::message::{Id, Lang, Message, MessageType};
use xmpp_parsers::presence::Presence;
use xmpp_parsers::stanza::Stanza;

use common::{NoRoute, ROOM, join, login, message_event, room, send_when_ready};

/// A test user: a logged-in stream joined to the room.
struct User {
    nick: String,
    link: Link,
    /// (sender nick, id attribute) → stanza-id, for corrections the user sees.
    ids: HashMap<(String, String), String>,
    /// Our own stanza-ids → the id attribute we gave the message (to correct it).
    own: HashMap<String, String>,
    /// Stanzas read while waiting for a reflection, not yet observed.
    backlog: Vec<Stanza>,
    counter: u64,
}

struct XmppHarness {
    server: Prosody,
    users: HashMap<String, User>,
    component: bool,
}

impl User {
    fn next_id(&mut self) -> String {
        self.counter += 1;
        format!("{}-{}", self.nick, self.counter)
    }

    fn message(&mut self, body: Option<&str>) -> (Message, String) {
        let id = self.next_id();
        let mut m = Message::new_with_type(MessageType::Groupchat, Some(Jid::from(room())));
        m.id = Some(Id(id.clone()));
        if let Some(b) = body {
            m.bodies.insert(Lang::new(), b.to_owned());
        }
        m.payloads.push(
            Element::builder("origin-id", xmpp_parsers::ns::SID).attr(xml_ncname!("id").into(), id.as_str()).build(),
        );
        (m, id)
    }

    /// Sends and waits for the room's reflection; returns its stanza-id. Other stanzas read meanwhile are
    /// kept for `observe`.
    async fn send(&mut self, m: Message, id: &str, seen: &mut Vec<Stanza>) -> Result<String, String> {
        self.link.outbound.send(Stanza::Message(m)).await.map_err(|e| e.to_string())?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let s = tokio::time::timeout_at(deadline, self.link.inbound.recv())
                .await
                .map_err(|_| "no reflection".to_string())?
                .ok_or("stream closed")?;
            if let Stanza::Message(m) = &s
                && m.id.as_ref().map(|i| i.0.as_str()) == Some(id)
            {
                return stanza_id(m).ok_or_else(|| "reflection without stanza-id".into());
            }
            seen.push(s);
        }
    }
}

fn stanza_id(m: &Message) -> Option<String> {
    m.payloads
        .iter()
        .find(|p| p.is("stanza-id", xmpp_parsers::ns::SID) && p.attr("by") == Some(ROOM))?
        .attr("id")
        .map(str::to_owned)
}

fn observed(user: &mut User, s: Stanza) -> Vec<Observed> {
    let Stanza::Message(m) = s else { return vec![] };
    let Some(from) = m.from.as_ref().and_then(|f| f.resource()).map(|r| r.to_string()) else { return vec![] };
    if from == user.nick || m.type_ != MessageType::Groupchat {
        return vec![];
    }
    let sid = stanza_id(&m);
    if let (Some(id), Some(sid)) = (m.id.as_ref(), sid.as_ref()) {
        user.ids.insert((from.clone(), id.0.clone()), sid.clone());
    }
    let p = &m.payloads;
    if let Some(r) = p.iter().find(|e| e.is("retract", ns::RETRACT)) {
        return vec![Observed::Delete { from, target: r.attr("id").unwrap_or_default().to_owned() }];
    }
    if let Some(r) = p.iter().find(|e| e.is("reactions", xmpp_parsers::ns::REACTIONS)) {
        let target = r.attr("id").unwrap_or_default().to_owned();
        return r
            .children()
            .map(|c| Observed::Reaction { from: from.clone(), key: c.text(), target: target.clone() })
            .collect();
    }
    let body = m.bodies.get("").or_else(|| m.bodies.values().next()).cloned().unwrap_or_default();
    if let Some(r) = p.iter().find(|e| e.is("replace", xmpp_parsers::ns::MESSAGE_CORRECT)) {
        let id = r.attr("id").unwrap_or_default().to_owned();
        let target = user.ids.get(&(from.clone(), id.clone())).cloned().unwrap_or(id);
        return vec![Observed::Edit { from, text: body, target }];
    }
    if let Some(r) = p.iter().find(|e| e.is("reply", ns::REPLY)) {
        let text = connector_xmpp::inbound::strip_fallbacks(&body, p, &[ns::REPLY]);
        return vec![Observed::Reply { from, text, to: r.attr("id").unwrap_or_default().to_owned() }];
    }
    if body.is_empty() {
        return vec![];
    }
    vec![Observed::Message { from, text: body, native_id: sid, notice: false }]
}

#[async_trait]
impl Harness for XmppHarness {
    fn account_id(&self) -> AccountId {
        AccountId::new("xmpp", "kit").expect("account id")
    }

    async fn start_account(&mut self, ctx: AccountContext) -> Result<Arc<dyn Account>, String> {
        let config = if self.component {
            let s = &self.server;
            Config::component(s.component_addr(), s.component_domain.clone(), s.component_secret.clone())
        } else {
            self.server.register("bridge", "pw-bridge").map_err(|e| e.to_string())?;
            let mut config = Config::client(self.server.c2s_addr(), "bridge@localhost", "pw-bridge");
            config.transport = Transport::InsecureTcp;
            config
        };
        XmppConnector.start(self.account_id(), config, ctx).await.map_err(|e| e.to_string())
    }

    fn room(&self) -> String {
        ROOM.into()
    }

    async fn create_user(&mut self, name: &str) -> Result<TestUser, String> {
        let nick: String = name.to_lowercase().chars().filter(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        self.server.register(&nick, &format!("pw-{nick}")).map_err(|e| e.to_string())?;
        let link = join(&self.server, &nick).await?;
        let native_id = format!("{ROOM}/{nick}");
        self.users.insert(
            nick.clone(),
            User {
                nick: nick.clone(),
                link,
                ids: HashMap::new(),
                own: HashMap::new(),
                backlog: Vec::new(),
                counter: 0,
            },
        );
        Ok(TestUser { name: nick, native_id })
    }

    async fn act(&mut self, user: &TestUser, action: NativeAction) -> Result<Option<String>, String> {
        let u = self.users.get_mut(&user.name).ok_or("unknown user")?;
        let mut seen = Vec::new();
        let (mut m, id) = match &action {
            NativeAction::Message { text } | NativeAction::Reply { text, .. } | NativeAction::Edit { text, .. } => {
                u.message(Some(text))
            }
            NativeAction::Delete { .. } => u.message(Some("retracted")),
            NativeAction::React { .. } => u.message(None),
        };
        match &action {
            NativeAction::Message { .. } => {}
            NativeAction::Reply { to, .. } => m
                .payloads
                .push(Element::builder("reply", ns::REPLY).attr(xml_ncname!("id").into(), to.as_str()).build()),
            NativeAction::Edit { target, .. } => {
                let original = u.own.get(target).cloned().ok_or("editing a message the user did not send")?;
                m.payloads.push(
                    Element::builder("replace", xmpp_parsers::ns::MESSAGE_CORRECT)
                        .attr(xml_ncname!("id").into(), original)
                        .build(),
                )
            }
            NativeAction::Delete { target } => m
                .payloads
                .push(Element::builder("retract", ns::RETRACT).attr(xml_ncname!("id").into(), target.as_str()).build()),
            NativeAction::React { target, key } => m.payloads.push(
                Element::builder("reactions", xmpp_parsers::ns::REACTIONS)
                    .attr(xml_ncname!("id").into(), target.as_str())
                    .append(Element::builder("reaction", xmpp_parsers::ns::REACTIONS).append(key.as_str()))
                    .build(),
            ),
        }
        // As clients do (XEP-0444 §5): Prosody archives, and gives a stanza-id to, a bodiless message only with it.
        if let NativeAction::React { .. } = &action {
            m.payloads.push(Element::builder("store", ns::HINTS).build());
        }
        let sid = u.send(m, &id, &mut seen).await?;
        u.own.insert(sid.clone(), id);
        u.backlog.extend(seen);
        Ok(Some(sid))
    }

    async fn observe(&mut self, user: &TestUser, wait: Duration) -> Result<Vec<Observed>, String> {
        let u = self.users.get_mut(&user.name).ok_or("unknown user")?;
        let mut out = Vec::new();
        for s in std::mem::take(&mut u.backlog) {
            out.extend(observed(u, s));
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let s = if out.is_empty() {
                match tokio::time::timeout_at(deadline, u.link.inbound.recv()).await {
                    Ok(Some(s)) => s,
                    Ok(None) => return Err("the test user's stream closed".into()),
                    Err(_) => return Ok(out),
                }
            } else {
                match u.link.inbound.try_recv() {
                    Ok(s) => s,
                    Err(_) => return Ok(out),
                }
            };
            out.extend(observed(u, s));
        }
    }

    async fn drop_bridge_connection(&mut self) -> Result<(), String> {
        self.server.restart().map_err(|e| e.to_string())?;
        // Every stream ended with the server: the test users come back too.
        let nicks: Vec<String> = self.users.keys().cloned().collect();
        for nick in nicks {
            let link = join(&self.server, &nick).await?;
            if let Some(u) = self.users.get_mut(&nick) {
                u.link = link;
            }
        }
        Ok(())
    }

    fn degraded_contains(&self, feature: Feature, event: &OutboundEvent) -> Option<String> {
        match (feature, &event.kind) {
            (Feature::Reactions, OutboundKind::ReactionAdd { key, .. }) => Some(format!("reacted with {key}")),
            _ => None,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_mode_passes_the_conformance_kit_against_prosody() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let server = Prosody::start().expect("prosody starts (installed by ./scripts/test)");
    let mut h = XmppHarness { server, users: HashMap::new(), component: false };
    let report = bridge_testkit::run(&mut h, KitOptions::default()).await;
    println!("{report}");
    report.assert_passed();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn component_mode_passes_the_conformance_kit_against_prosody() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let server = Prosody::start().expect("prosody starts (installed by ./scripts/test)");
    let mut h = XmppHarness { server, users: HashMap::new(), component: true };
    let report = bridge_testkit::run(&mut h, KitOptions::default()).await;
    println!("{report}");
    report.assert_passed();
}

/// Starts account `name` with `config` and waits (10 s at most) for `BadCredentials`; returns its reason.
async fn refused(
    config: Config,
    name: &str,
) -> (Arc<dyn Account>, tokio::sync::watch::Receiver<bridge_api::Health>, String) {
    let id = AccountId::new("xmpp", name).expect("account id");
    let account = XmppConnector
        .start(id.clone(), config, AccountContext::new(id, NoRoute, "bridge.test"))
        .await
        .expect("start returns at once");
    let mut health = account.health();
    let reason = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let bridge_api::Health::BadCredentials { reason } = health.borrow_and_update().clone() {
                return reason;
            }
            health.changed().await.expect("health stays observable");
        }
    })
    .await
    .expect("the refusal is reported within 10 s");
    (account, health, reason)
}

/// A wrong component secret is `BadCredentials` with the server's answer, not a reconnect loop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_component_secret_is_a_clear_error_not_a_reconnect_loop() {
    let server = Prosody::start().expect("prosody starts (installed by ./scripts/test)");
    let config = Config::component(server.component_addr(), server.component_domain.clone(), "wrong");
    let (account, mut health, bad) = refused(config, "badsecret").await;
    assert!(bad.contains("component secret"), "{bad}");
    assert!(tokio::time::timeout(Duration::from_secs(3), health.changed()).await.is_err(), "the account retried");
    account.shutdown().await;
}

/// A password the server refuses is `BadCredentials` at once, and the account does not retry it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_password_is_bad_credentials_not_a_reconnect_loop() {
    let server = Prosody::start().expect("prosody starts (installed by ./scripts/test)");
    server.register("bridge", "right").expect("register");
    let mut config = Config::client(server.c2s_addr(), "bridge@localhost", "wrong");
    config.transport = Transport::InsecureTcp;
    let (account, mut health, bad) = refused(config, "badpw").await;
    assert!(bad.contains("not-authorized") || bad.contains("NotAuthorized"), "{bad}");
    // No retry: no new connection reaches the server (a loop would reconnect within about a second), and the
    // health does not change again.
    let connections = || server.log().matches("Client connected").count();
    let before = connections();
    assert!(before >= 1, "the log counts connections:\n{}", server.log());
    assert!(tokio::time::timeout(Duration::from_secs(3), health.changed()).await.is_err(), "the account retried");
    assert_eq!(connections(), before, "the account connected again:\n{}", server.log());
    account.shutdown().await;
}

/// Component mode: a puppet whose nick is taken joins as the next variant, and speaks from there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_puppets_taken_nick_is_resolved_with_a_variant() {
    let server = Prosody::start().expect("prosody starts (installed by ./scripts/test)");
    server.register("alice", "pw-alice").expect("register");
    let mut real = join(&server, "alice").await.expect("the real alice joins");
    let id = AccountId::new("xmpp", "comp").expect("account id");
    let config =
        Config::component(server.component_addr(), server.component_domain.clone(), server.component_secret.clone());
    let account = XmppConnector
        .start(id.clone(), config, AccountContext::new(id.clone(), NoRoute, "bridge.test"))
        .await
        .expect("start");
    account.join(ROOM).await.expect("join");
    let event = message_event(id, ROOM, 9, "alice", "hello from the other alice");
    let delivery = send_when_ready(account.as_ref(), &event).await.expect("delivered");
    assert!(!delivery.native_ids.is_empty());
    let from = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Stanza::Message(m) = real.inbound.recv().await.expect("stream open")
                && m.bodies.values().any(|b| b == "hello from the other alice")
            {
                return m.from.and_then(|f| f.resource().map(|r| r.to_string()));
            }
        }
    })
    .await
    .expect("the real alice sees the puppet's message");
    assert_eq!(from.as_deref(), Some("alice_"));
    account.shutdown().await;
}

/// In a moderated room the bridge, a visitor, may not speak: the room's error becomes `Rejected` (the core then
/// tells the sender "not delivered"), not a silent success.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_the_room_refuses_is_rejected_not_lost() {
    let server = Prosody::start().expect("prosody starts (installed by ./scripts/test)");
    const MODERATED: &str = "quiet@muc.localhost";
    // The owner creates the room and makes it moderated (XEP-0045 §10.2).
    server.register("owner", "pw-owner").expect("register");
    let mut owner = client::connect(&login(&server, "owner")).await.expect("owner logs in");
    let to = BareJid::new(MODERATED).expect("jid").with_resource_str("owner").expect("occupant");
    let mut join = Presence::available().with_to(Jid::from(to));
    join.payloads.push(Element::builder("x", xmpp_parsers::ns::MUC).build());
    owner.outbound.send(Stanza::Presence(join)).await.expect("join");
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Stanza::Presence(p) = owner.inbound.recv().await.expect("owner stream open") {
                assert_ne!(p.type_, xmpp_parsers::presence::Type::Error, "the owner's join failed: {p:?}");
                break;
            }
        }
    })
    .await
    .expect("the room is created");
    let field = |var: &str, value: &str| {
        Element::builder("field", "jabber:x:data")
            .attr(xml_ncname!("var").into(), var)
            .append(Element::builder("value", "jabber:x:data").append(value))
    };
    let form = Element::builder("query", "http://jabber.org/protocol/muc#owner")
        .append(
            Element::builder("x", "jabber:x:data")
                .attr(xml_ncname!("type").into(), "submit")
                .append(field("FORM_TYPE", "http://jabber.org/protocol/muc#roomconfig"))
                .append(field("muc#roomconfig_moderatedroom", "1")),
        )
        .build();
    let iq = xmpp_parsers::iq::Iq::Set {
        from: None,
        to: Some(Jid::new(MODERATED).expect("jid")),
        id: "cfg".into(),
        payload: form,
    };
    owner.outbound.send(Stanza::Iq(iq)).await.expect("configure");
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match owner.inbound.recv().await.expect("owner stream open") {
                Stanza::Iq(xmpp_parsers::iq::Iq::Result { id, .. }) if id == "cfg" => break,
                Stanza::Iq(xmpp_parsers::iq::Iq::Error { id, error, .. }) if id == "cfg" => {
                    panic!("the room refused its configuration: {error:?}")
                }
                _ => {}
            }
        }
    })
    .await
    .expect("the room is configured");

    server.register("bridge", "pw-bridge").expect("register");
    let id = AccountId::new("xmpp", "visitor").expect("account id");
    let mut config = Config::client(server.c2s_addr(), "bridge@localhost", "pw-bridge");
    config.transport = Transport::InsecureTcp;
    let account = XmppConnector
        .start(id.clone(), config, AccountContext::new(id.clone(), NoRoute, "bridge.test"))
        .await
        .expect("start");
    let mut joined = Err(String::new());
    for _ in 0..50 {
        joined = account.join(MODERATED).await.map_err(|e| e.to_string());
        if joined.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    joined.expect("the bridge joins the moderated room as a visitor");
    let event = message_event(id, MODERATED, 7, "alice", "may I?");
    let result = send_when_ready(account.as_ref(), &event).await;
    match result {
        Err(bridge_api::connector::SendError::Rejected(reason)) => {
            assert!(reason.contains("forbidden"), "{reason}")
        }
        other => panic!("a refused message must be Rejected, got {other:?}"),
    }
    account.shutdown().await;
}

/// A taken nick: the bridge joins under the next free variant (`_` appended) and relays from there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_nick_is_resolved_with_a_variant() {
    let server = Prosody::start().expect("prosody starts (installed by ./scripts/test)");
    // A user holds the bridge's nick first (test user names are [a-z0-9_]: register under another name).
    server.register("squatter", "pw-squatter").expect("register");
    let mut squatter = client::connect(&login(&server, "squatter")).await.expect("logs in");
    let to = room().with_resource_str("mimi-bridge").expect("occupant");
    let mut join = Presence::available().with_to(Jid::from(to));
    join.payloads.push(Element::builder("x", xmpp_parsers::ns::MUC).build());
    squatter.outbound.send(Stanza::Presence(join)).await.expect("join");
    tokio::time::timeout(Duration::from_secs(10), async {
        while !matches!(squatter.inbound.recv().await.expect("stream open"), Stanza::Presence(_)) {}
    })
    .await
    .expect("the squatter is in the room");

    server.register("bridge", "pw-bridge").expect("register");
    let id = AccountId::new("xmpp", "nick").expect("account id");
    let mut config = Config::client(server.c2s_addr(), "bridge@localhost", "pw-bridge");
    config.transport = Transport::InsecureTcp;
    let account =
        XmppConnector.start(id.clone(), config, AccountContext::new(id, NoRoute, "bridge.test")).await.expect("start");
    account.join(ROOM).await.expect("join");
    let seen = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            if let Stanza::Presence(p) = squatter.inbound.recv().await.expect("stream open")
                && p.type_ == xmpp_parsers::presence::Type::None
                && let Some(nick) = p.from.as_ref().and_then(|f| f.resource()).map(|r| r.to_string())
                && nick != "mimi-bridge"
            {
                return nick;
            }
        }
    })
    .await
    .expect("the bridge shows up in the room");
    assert_eq!(seen, "mimi-bridge_");
    account.shutdown().await;
}

/// A TCP relay to a server whose established connections can be frozen: bytes stop flowing both ways while the
/// sockets stay open, as on a silently dead network path. Connections made after the freeze work.
struct FreezingRelay {
    addr: String,
    frozen_before: Arc<std::sync::atomic::AtomicU64>,
    next: Arc<std::sync::atomic::AtomicU64>,
}

impl FreezingRelay {
    async fn start(target: String) -> Self {
        use std::sync::atomic::{AtomicU64, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let frozen_before = Arc::new(AtomicU64::new(0));
        let next = Arc::new(AtomicU64::new(1));
        let (fb, nx) = (frozen_before.clone(), next.clone());
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let Ok(outbound) = tokio::net::TcpStream::connect(&target).await else { continue };
                let generation = nx.fetch_add(1, Ordering::SeqCst);
                let (ri, wi) = inbound.into_split();
                let (ro, wo) = outbound.into_split();
                for (mut r, mut w) in [
                    (
                        Box::new(ri) as Box<dyn tokio::io::AsyncRead + Send + Unpin>,
                        Box::new(wo) as Box<dyn tokio::io::AsyncWrite + Send + Unpin>,
                    ),
                    (Box::new(ro), Box::new(wi)),
                ] {
                    let fb = fb.clone();
                    tokio::spawn(async move {
                        let mut buf = [0u8; 4096];
                        while let Ok(n) = r.read(&mut buf).await {
                            if n == 0 {
                                break;
                            }
                            if generation < fb.load(Ordering::SeqCst) {
                                continue; // frozen: swallowed, the socket stays open
                            }
                            if w.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    });
                }
            }
        });
        Self { addr, frozen_before, next }
    }

    /// Freezes every connection made so far.
    fn freeze(&self) {
        use std::sync::atomic::Ordering;
        self.frozen_before.store(self.next.load(Ordering::SeqCst), Ordering::SeqCst);
    }
}

/// A silently dead stream is noticed by the MUC self-ping (XEP-0410): the account reconnects, rejoins and relays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silently_dead_stream_is_noticed_by_the_self_ping_and_replaced() {
    let server = Prosody::start().expect("prosody starts (installed by ./scripts/test)");
    server.register("bridge", "pw-bridge").expect("register");
    let relay = FreezingRelay::start(server.c2s_addr()).await;
    let id = AccountId::new("xmpp", "ping").expect("account id");
    let mut config = Config::client(relay.addr.clone(), "bridge@localhost", "pw-bridge");
    config.transport = Transport::InsecureTcp;
    config.self_ping_secs = 1;
    let account = XmppConnector
        .start(id.clone(), config, AccountContext::new(id.clone(), NoRoute, "bridge.test"))
        .await
        .expect("start");
    account.join(ROOM).await.expect("join");
    send_when_ready(account.as_ref(), &message_event(id.clone(), ROOM, 11, "alice", "before")).await.expect("sent");
    let mut health = account.health();
    health.borrow_and_update();
    relay.freeze();
    let wait_for = |want_connected: bool, mut h: tokio::sync::watch::Receiver<bridge_api::Health>| async move {
        tokio::time::timeout(Duration::from_secs(15), async {
            loop {
                if (*h.borrow_and_update() == bridge_api::Health::Connected) == want_connected {
                    return h;
                }
                h.changed().await.expect("health observable");
            }
        })
        .await
    };
    let health = wait_for(false, health).await.expect("the dead stream is noticed within 15 s");
    wait_for(true, health).await.expect("a new stream is up within 15 s");
    let delivery = send_when_ready(account.as_ref(), &message_event(id, ROOM, 12, "alice", "after")).await;
    assert!(delivery.is_ok_and(|d| d.native_ids.len() == 2), "the room reflects the bridge's message again");
    account.shutdown().await;
}
