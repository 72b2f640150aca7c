//! Hostile stanzas from a room occupant, through a real Prosody, in both modes: deeply nested XML, an unknown
//! namespace, a body near the server's stanza size limit, markup in a body. Each is dropped or bridged as text;
//! the bridge's stream stays up (no reconnect) and what is said next still arrives. (Prosody 0.12 relays the
//! deeply nested message to no occupant, the sender included; were it relayed, the component stream's framing
//! would skip it — `framing.rs` — and client mode would read it with tokio-xmpp.)

mod common;

use bridge_api::{AccountContext, AccountId, Connector, Health};
use common::{ROOM, RecordingRoute, join, say};
use connector_xmpp::XmppConnector;
use connector_xmpp::link::Link;
use minidom::Element;
use minidom::rxml::xml_ncname;
use std::time::Duration;
use xmpp_parsers::jid::{BareJid, Jid};
use xmpp_parsers::message::{Id, Lang, Message, MessageType};
use xmpp_parsers::stanza::Stanza;

/// How deep the nested payload goes (the component stream's framing skips anything deeper than 32; Prosody
/// relays it whole).
const DEPTH: usize = 2_000;

/// A groupchat message of the room with `body` and `payload`.
fn message(id: &str, body: &str, payload: Option<Element>) -> Message {
    let room = BareJid::new(ROOM).expect("room jid");
    let mut m = Message::new_with_type(MessageType::Groupchat, Some(Jid::from(room)));
    m.id = Some(Id(id.to_owned()));
    m.bodies.insert(Lang::new(), body.to_owned());
    m.payloads.push(Element::builder("origin-id", xmpp_parsers::ns::SID).attr(xml_ncname!("id").into(), id).build());
    m.payloads.extend(payload);
    m
}

/// `<n xmlns='urn:example:deep'>` nested `depth` times.
fn nested(depth: usize) -> Element {
    let mut e = Element::builder("n", "urn:example:deep").append("bottom").build();
    for _ in 1..depth {
        e = Element::builder("n", "urn:example:deep").append(e).build();
    }
    e
}

async fn send(link: &Link, m: Message) {
    link.outbound.send(Stanza::Message(m)).await.expect("alice's stream takes it");
}

async fn hostile_stanzas_leave_the_stream_up(component: bool) {
    let _ = tracing_subscriber::fmt().with_env_filter("connector_xmpp=info").with_test_writer().try_init();
    let (server, config) = common::server_and_config(component);
    let id = AccountId::new("xmpp", "x").expect("account id");
    let route = RecordingRoute::default();
    let ctx = AccountContext::new(id.clone(), route.clone(), "bridge.test");
    let account = XmppConnector.start(id, config, ctx).await.expect("start");
    common::joined(account.as_ref()).await;
    let mut health = account.health();
    health.borrow_and_update();
    let mut alice = join(&server, "alice").await.expect("alice joins");
    // Alice's own stream gets everything back: read it, or it stalls.
    let mut inbound = std::mem::replace(&mut alice.inbound, tokio::sync::mpsc::channel(1).1);
    tokio::spawn(async move { while inbound.recv().await.is_some() {} });

    say(&alice, "before", "before").await.expect("alice speaks");
    send(&alice, message("deep", "deep", Some(nested(DEPTH)))).await;
    let unknown = Element::builder("surprise", "urn:example:unknown").attr(xml_ncname!("x").into(), "1").build();
    send(&alice, message("unknown", "unknown namespace", Some(unknown))).await;
    // Prosody's c2s stanza limit is 256 KiB by default: just under it.
    send(&alice, message("big", &"big ".repeat(60_000), None)).await;
    send(&alice, message("markup", "<b>not markup</b> &amp; ]]>", None)).await;
    say(&alice, "after", "after").await.expect("alice speaks");

    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !route.bodies().iter().any(|b| b == "after") {
        assert!(tokio::time::Instant::now() < deadline, "\"after\" never reached the core: {:?}", short(&route));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let bodies = route.bodies();
    assert_eq!(bodies.first().map(String::as_str), Some("before"), "{:?}", short(&route));
    assert!(bodies.iter().any(|b| b == "<b>not markup</b> &amp; ]]>"), "text stays text: {:?}", short(&route));
    assert!(!health.has_changed().expect("account alive"), "the stream was replaced: {:?}", *health.borrow());
    assert_eq!(*health.borrow(), Health::Connected);
    account.shutdown().await;
}

/// The bodies, each cut to 40 bytes (the big one would drown an assertion message).
fn short(route: &RecordingRoute) -> Vec<String> {
    route.bodies().into_iter().map(|b| b.chars().take(40).collect()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_mode_hostile_stanzas_leave_the_stream_up() {
    hostile_stanzas_leave_the_stream_up(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn component_mode_hostile_stanzas_leave_the_stream_up() {
    hostile_stanzas_leave_the_stream_up(true).await;
}
