//! Mentions against a real Prosody (component mode): an XMPP user's XEP-0372 reference to a puppet becomes a
//! MIMI mention of the user the puppet stands for.

mod common;

use common::{ROOM, RecordingRoute, component, join, message_event, room, send_like_the_core};
use harness::Prosody;
use minidom::Element;
use minidom::rxml::xml_ncname;
use std::time::Duration;
use xmpp_parsers::jid::Jid;
use xmpp_parsers::message::{Lang, Message, MessageType};
use xmpp_parsers::stanza::Stanza;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reference_to_a_puppet_is_a_mention_of_its_user() {
    let server = Prosody::start().expect("prosody starts (installed by ./scripts/test)");
    server.register("alice", "pw-alice").expect("register");
    let route = RecordingRoute::default();
    let (id, account) = component(&server, &route).await;
    let alice = join(&server, "alice").await.expect("alice joins");
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
