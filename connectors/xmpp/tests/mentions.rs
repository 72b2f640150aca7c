//! Mentions against a real Prosody (component mode): an XMPP user's XEP-0372 reference to a puppet becomes a
//! MIMI mention of the user the puppet stands for, and a MIMI mention of an XMPP user becomes their nick with a
//! reference.

mod common;

use common::{ComponentRoom, ROOM, component_room, message_event, room, send_like_the_core};
use minidom::Element;
use minidom::rxml::xml_ncname;
use std::time::Duration;
use xmpp_parsers::jid::Jid;
use xmpp_parsers::message::{Lang, Message, MessageType};
use xmpp_parsers::stanza::Stanza;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reference_to_a_puppet_is_a_mention_of_its_user() {
    let ComponentRoom { route, id, account, alice, server: _server } = component_room().await;
    // Bob (a MIMI user) speaks: his puppet `bob` joins the room.
    let hello = message_event(id.clone(), ROOM, 1, "bob", "hello");
    send_like_the_core(account.as_ref(), &hello, Duration::from_secs(20)).await.expect("sent");

    let mut m = Message::new_with_type(MessageType::Groupchat, Some(Jid::from(room())));
    m.bodies.insert(Lang::new(), "hi @bob!".into());
    m.payloads.push(
        Element::builder("reference", "urn:xmpp:reference:0")
            .attr(xml_ncname!("type").into(), "mention")
            .attr(xml_ncname!("begin").into(), "3")
            .attr(xml_ncname!("end").into(), "7")
            .attr(xml_ncname!("uri").into(), format!("xmpp:{ROOM}/bob"))
            .build(),
    );
    alice.outbound.send(Stanza::Message(m)).await.expect("alice speaks");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while route.drafts().is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "alice's message reached the core");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let draft = &route.drafts()[0];
    assert_eq!(
        mimi_content::markdown::mentions(&draft.body),
        [("@bob".to_owned(), "mimi://bridge.test/u/bob".to_owned())],
        "{}",
        draft.body
    );
    account.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mimi_mention_of_an_xmpp_user_is_their_nick_with_a_reference() {
    let ComponentRoom { id, account, mut alice, server: _server, .. } = component_room().await;
    let alice_uri = bridge_api::LegacyUser::new(id.clone(), format!("{ROOM}/alice")).uri("bridge.test");
    let mut e = message_event(id.clone(), ROOM, 2, "bob", "");
    e.kind = bridge_api::event::OutboundKind::Message {
        draft: bridge_api::event::MessageDraft::markdown(format!(
            "{} look at **this**",
            mimi_content::markdown::mention_link("Alice", &alice_uri)
        )),
        reply_to: None,
    };
    send_like_the_core(account.as_ref(), &e, Duration::from_secs(20)).await.expect("sent");
    let got = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Some(Stanza::Message(m)) = alice.inbound.recv().await
                && !m.bodies.is_empty()
            {
                return m;
            }
        }
    })
    .await
    .expect("alice sees bob's message");
    let body = got.bodies.values().next().cloned().unwrap_or_default();
    assert_eq!(body, "alice look at *this*", "her nick, not a mimi: link");
    let r = got.payloads.iter().find(|p| p.is("reference", "urn:xmpp:reference:0")).expect("a XEP-0372 reference");
    let room_jid = format!("xmpp:{ROOM}/alice");
    assert_eq!(
        (r.attr("type"), r.attr("begin"), r.attr("end"), r.attr("uri")),
        (Some("mention"), Some("0"), Some("5"), Some(room_jid.as_str()))
    );
    account.shutdown().await;
}
