//! Nick changes against a real Prosody: an XMPP user who changes nick stays the same bridged user (no leave, no
//! join, the same native id), and in component mode a bridged user whose display name changes has their puppet
//! change nick in the room.

mod common;

use bridge_api::InboundKind;
use bridge_api::event::OutboundEvent;
use common::{ComponentRoom, ROOM, component_room, message_event, room, say, send_like_the_core};
use minidom::Element;
use std::time::Duration;
use xmpp_parsers::jid::Jid;
use xmpp_parsers::presence::Presence;
use xmpp_parsers::stanza::Stanza;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_xmpp_user_who_changes_nick_stays_the_same_bridged_user() {
    let ComponentRoom { route, account, alice, server: _server, .. } = component_room().await;
    say(&alice, "a-1", "as alice").await.expect("alice speaks");
    let to = room().with_resource_str("alicia").expect("occupant");
    let mut rename = Presence::available().with_to(Jid::from(to));
    rename.payloads.push(Element::builder("x", xmpp_parsers::ns::MUC).build());
    alice.outbound.send(Stanza::Presence(rename)).await.expect("nick change");
    tokio::time::sleep(Duration::from_millis(300)).await;
    say(&alice, "a-2", "as alicia").await.expect("alicia speaks");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while route.bodies().len() < 2 {
        assert!(tokio::time::Instant::now() < deadline, "both messages arrive: {:?}", route.events());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let events = route.events();
    let senders: Vec<(String, Option<String>)> = events
        .iter()
        .filter(|e| matches!(e.kind, InboundKind::Message { .. }))
        .map(|e| (e.sender.native_id.clone(), e.sender.display_name.clone()))
        .collect();
    assert_eq!(
        senders,
        [(format!("{ROOM}/alice"), Some("alice".to_owned())), (format!("{ROOM}/alice"), Some("alicia".to_owned()))],
        "the same bridged user, shown with the new nick"
    );
    let alice_joined = events.iter().filter(|e| matches!(e.kind, InboundKind::Membership { .. })).count();
    assert_eq!(alice_joined, 1, "alice's arrival only; the nick change is no leave and no join: {events:?}");
    account.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renamed_bridged_users_puppet_changes_nick() {
    let ComponentRoom { id, account, mut alice, server: _server, .. } = component_room().await;
    let said = |n: u8, name: &str, text: &str| -> OutboundEvent {
        let mut e = message_event(id.clone(), ROOM, n, "bob", text);
        e.sender.display_name = name.to_owned();
        e
    };
    send_like_the_core(account.as_ref(), &said(1, "Bob", "first"), Duration::from_secs(20)).await.expect("sent");
    send_like_the_core(account.as_ref(), &said(2, "Robert", "second"), Duration::from_secs(20)).await.expect("sent");
    let mut seen: Vec<(String, String)> = Vec::new();
    let mut renamed = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while seen.len() < 2 {
        let s = tokio::time::timeout_at(deadline, alice.inbound.recv())
            .await
            .unwrap_or_else(|_| panic!("alice sees both messages: {seen:?}"))
            .expect("stream open");
        match s {
            Stanza::Message(m) if !m.bodies.is_empty() => {
                let from = m.from.and_then(|f| f.resource().map(|r| r.to_string())).unwrap_or_default();
                seen.push((from, m.bodies.values().next().cloned().unwrap_or_default()));
            }
            Stanza::Presence(p) => {
                let from = p.from.as_ref().and_then(|f| f.resource()).map(|r| r.to_string());
                let xml = String::from(&Element::from(p));
                renamed |= from.as_deref() == Some("Bob") && xml.contains("303") && xml.contains("Robert");
            }
            _ => {}
        }
    }
    assert_eq!(seen, [("Bob".to_owned(), "first".to_owned()), ("Robert".to_owned(), "second".to_owned())]);
    assert!(renamed, "the room announced the puppet's nick change (303), not a leave and a new join");
    account.shutdown().await;
}
