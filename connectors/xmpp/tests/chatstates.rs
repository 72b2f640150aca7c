//! Typing from the MIMI side against a real Prosody: in component mode the puppet sends XEP-0085 `composing` and
//! `paused`.

mod common;

use bridge_api::event::OutboundKind;
use common::{ComponentRoom, ROOM, component_room, message_event, send_like_the_core};
use std::time::Duration;
use xmpp_parsers::stanza::Stanza;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_reaches_the_room_as_the_puppets_chat_states() {
    let ComponentRoom { id, account, mut alice, server: _server, .. } = component_room().await;
    for (n, active) in [(1, true), (2, false)] {
        let mut e = message_event(id.clone(), ROOM, n, "bob", "");
        e.kind = OutboundKind::Typing { active };
        send_like_the_core(account.as_ref(), &e, Duration::from_secs(20)).await.expect("sent");
    }
    let mut states = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while states.len() < 2 {
        let s = tokio::time::timeout_at(deadline, alice.inbound.recv())
            .await
            .unwrap_or_else(|_| panic!("alice sees both chat states: {states:?}"))
            .expect("stream open");
        if let Stanza::Message(m) = s
            && let Some(state) = m.payloads.iter().find(|p| p.ns() == xmpp_parsers::ns::CHATSTATES)
        {
            let from = m.from.as_ref().and_then(|f| f.resource()).map(|r| r.to_string()).unwrap_or_default();
            assert!(m.bodies.is_empty(), "a chat state has no body");
            states.push((from, state.name().to_owned()));
        }
    }
    assert_eq!(states, [("bob".to_owned(), "composing".to_owned()), ("bob".to_owned(), "paused".to_owned())]);
    account.shutdown().await;
}
