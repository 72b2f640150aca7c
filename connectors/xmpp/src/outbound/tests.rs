//! Events → stanza fixtures.

use super::*;
use bridge_api::event::Sender;
use bridge_api::{AccountId, MessageId, NativeId, PortalId};

const ROOM: &str = "room@muc.example.org";

fn room() -> BareJid {
    BareJid::new(ROOM).expect("jid")
}

fn leg() -> LegId {
    LegId::new(AccountId::new("xmpp", "test").expect("account"), ROOM).expect("leg")
}

fn mid(b: u8) -> MessageId {
    let mut bytes = [b; 32];
    bytes[0] = 1;
    MessageId::from_bytes(&bytes).expect("message id")
}

fn event(kind: OutboundKind) -> OutboundEvent {
    OutboundEvent {
        portal: PortalId::new("p").expect("portal"),
        leg: leg(),
        message_id: mid(7),
        txn_id: TxnId("txn-7".into()),
        sender: Sender {
            uri: "mimi://b.example/u/alice".into(),
            display_name: "Alice".into(),
            network: "mimi".into(),
            legacy: None,
        },
        kind,
        queued_at_ms: 0,
    }
}

fn parent(native: Option<&str>) -> ParentRef {
    ParentRef {
        native_id: native.map(|n| NativeId(n.into())),
        message_id: mid(3),
        sender_name: "Bob".into(),
        excerpt: "the parent".into(),
    }
}

fn xml(r: &Rendered) -> String {
    String::from(&Element::from(r.message.clone()))
}

fn body(r: &Rendered) -> String {
    r.message.bodies.get("").cloned().unwrap_or_default()
}

fn message(draft: MessageDraft) -> OutboundKind {
    OutboundKind::Message { draft, reply_to: None }
}

#[test]
fn a_message_carries_origin_id_and_relay_prefix() {
    let r = render(&event(message(MessageDraft::plain("hi"))), &room(), Voice::Relay).expect("ok").expect("some");
    assert_eq!(body(&r), "Alice: hi");
    assert_eq!(r.origin_id, "txn-7");
    assert!(r.referenceable);
    let x = xml(&r);
    assert!(x.contains("type='groupchat'") && x.contains("<origin-id xmlns='urn:xmpp:sid:0' id='txn-7'/>"), "{x}");
    let p = render(&event(message(MessageDraft::plain("hi"))), &room(), Voice::Puppet).expect("ok").expect("some");
    assert_eq!(body(&p), "hi");
}

#[test]
fn characters_xml_cannot_carry_are_dropped_not_a_broken_stream() {
    let r = render(&event(message(MessageDraft::plain("a\u{0}b\u{1b}[31mc\td"))), &room(), Voice::Puppet)
        .expect("ok")
        .expect("some");
    assert_eq!(body(&r), "ab[31mc\td");
    let back: Element = xml(&r).parse().expect("the stanza serialises and parses");
    assert_eq!(back.get_child("body", ns::CLIENT).map(|b| b.text()).as_deref(), Some("ab[31mc\td"));
}

#[test]
fn hostile_text_stays_text() {
    let evil = "</body></message><message to='x'><body>injected";
    let r = render(&event(message(MessageDraft::plain(evil))), &room(), Voice::Puppet).expect("ok").expect("some");
    let x = xml(&r);
    assert!(!x.contains("<message to="), "{x}");
    let back: Element = x.parse().expect("our output parses");
    assert_eq!(back.get_child("body", ns::CLIENT).map(|b| b.text()).as_deref(), Some(evil));
}

#[test]
fn markdown_becomes_styling_and_styled_looking_plain_text_is_marked_unstyled() {
    let r = render(&event(message(MessageDraft::markdown("**big** deal"))), &room(), Voice::Puppet)
        .expect("ok")
        .expect("some");
    assert_eq!(body(&r), "*big* deal");
    assert!(!xml(&r).contains("unstyled"));
    let r =
        render(&event(message(MessageDraft::plain("*not bold*"))), &room(), Voice::Puppet).expect("ok").expect("some");
    assert!(xml(&r).contains("<unstyled xmlns='urn:xmpp:styling:0'/>"));
}

#[test]
fn emotes() {
    let mut d = MessageDraft::plain("waves");
    d.style = MessageStyle::Emote;
    let r = render(&event(message(d.clone())), &room(), Voice::Puppet).expect("ok").expect("some");
    assert_eq!(body(&r), "/me waves");
    let r = render(&event(message(d)), &room(), Voice::Relay).expect("ok").expect("some");
    assert_eq!(body(&r), "* Alice waves");
}

#[test]
fn a_reply_has_reply_and_a_fallback_that_covers_the_quote_exactly() {
    let kind = OutboundKind::Message { draft: MessageDraft::plain("answer"), reply_to: Some(parent(Some("S-parent"))) };
    let r = render(&event(kind), &room(), Voice::Puppet).expect("ok").expect("some");
    assert_eq!(body(&r), "> Bob: the parent\nanswer");
    let reply = r.message.payloads.iter().find(|p| p.is("reply", ns::REPLY)).expect("reply");
    assert_eq!(reply.attr("id"), Some("S-parent"));
    // Read back by our own inbound side: the fallback range removes exactly the quote.
    let stripped = crate::inbound::strip_fallbacks(&body(&r), &r.message.payloads, &[ns::REPLY]);
    assert_eq!(stripped, "answer");
    let kind = OutboundKind::Message { draft: MessageDraft::plain("answer"), reply_to: Some(parent(None)) };
    let r = render(&event(kind), &room(), Voice::Puppet).expect("ok").expect("some");
    assert_eq!(body(&r), "> Bob: the parent\nanswer");
    assert!(!r.message.payloads.iter().any(|p| p.is("reply", ns::REPLY) || p.is("fallback", ns::FALLBACK)));
}

#[test]
fn an_edit_names_the_original_stanza_id_we_gave_it() {
    let kind = OutboundKind::Edit { target: parent(Some("S-x")), draft: MessageDraft::plain("fixed") };
    let r = render(&event(kind), &room(), Voice::Puppet).expect("ok").expect("some");
    let replace =
        r.message.payloads.iter().find(|p| p.is("replace", xmpp_parsers::ns::MESSAGE_CORRECT)).expect("replace");
    assert_eq!(replace.attr("id"), Some(message_stanza_id(&mid(3), &leg()).as_str()));
    assert_eq!(message_stanza_id(&mid(3), &leg()), TxnId::for_delivery(&mid(3), &leg()).0);
    assert_eq!(body(&r), "fixed");
}

#[test]
fn a_delete_retracts_the_stanza_id() {
    let r = render(&event(OutboundKind::Delete { target: parent(Some("S-x")) }), &room(), Voice::Puppet)
        .expect("ok")
        .expect("some");
    let retract = r.message.payloads.iter().find(|p| p.is("retract", ns::RETRACT)).expect("retract");
    assert_eq!(retract.attr("id"), Some("S-x"));
    assert!(r.message.payloads.iter().any(|p| p.is("fallback", ns::FALLBACK) && p.attr("for") == Some(ns::RETRACT)));
    assert!(!r.referenceable);
    assert_eq!(render(&event(OutboundKind::Delete { target: parent(None) }), &room(), Voice::Puppet), Ok(None));
}

#[test]
fn reactions_send_the_whole_set_from_a_puppet_and_text_from_the_relay() {
    let kind = OutboundKind::ReactionAdd {
        target: parent(Some("S-x")),
        key: "🎉".into(),
        set_after: vec!["👍".into(), "🎉".into()],
    };
    let r = render(&event(kind.clone()), &room(), Voice::Puppet).expect("ok").expect("some");
    let set = r.message.payloads.iter().find(|p| p.is("reactions", xmpp_parsers::ns::REACTIONS)).expect("reactions");
    assert_eq!(set.attr("id"), Some("S-x"));
    assert_eq!(set.children().map(|c| c.text()).collect::<Vec<_>>(), ["👍", "🎉"]);
    assert!(r.message.bodies.is_empty());
    let r = render(&event(kind), &room(), Voice::Relay).expect("ok").expect("some");
    assert!(body(&r).starts_with("Alice reacted with 🎉 to Bob"), "{}", body(&r));
}

#[test]
fn typing_membership_and_attachments() {
    assert_eq!(render(&event(OutboundKind::Typing { active: true }), &room(), Voice::Relay), Ok(None));
    let r = render(&event(OutboundKind::Typing { active: true }), &room(), Voice::Puppet).expect("ok").expect("some");
    assert!(r.message.payloads.iter().any(|p| p.is("composing", xmpp_parsers::ns::CHATSTATES)));
    assert!(r.message.bodies.is_empty() && !r.referenceable);
    let r = render(&event(OutboundKind::Typing { active: false }), &room(), Voice::Puppet).expect("ok").expect("some");
    assert!(r.message.payloads.iter().any(|p| p.is("paused", xmpp_parsers::ns::CHATSTATES)));
    let m = OutboundKind::Membership { change: bridge_api::event::Membership::Join };
    assert_eq!(render(&event(m), &room(), Voice::Puppet), Ok(None));
    let mut d = MessageDraft::plain("");
    d.attachments.push(bridge_api::event::Attachment {
        url: "https://x/y.png".into(),
        media_type: "image/png".into(),
        size: None,
        filename: None,
    });
    let r = render(&event(message(d.clone())), &room(), Voice::Puppet).expect("ok").expect("some");
    assert_eq!(body(&r), "https://x/y.png", "a file alone: its link is the body (clients show it inline)");
    let oob = r.message.payloads.iter().find(|p| p.is("x", crate::oob::OOB)).expect("XEP-0066 element");
    assert_eq!(oob.get_child("url", crate::oob::OOB).map(Element::text).as_deref(), Some("https://x/y.png"));
    let r = render(&event(message(d)), &room(), Voice::Relay).expect("ok").expect("some");
    assert!(body(&r).ends_with(": \nhttps://x/y.png") || body(&r).ends_with(":\nhttps://x/y.png"), "{}", body(&r));
    let empty = MessageDraft::plain(" ");
    assert!(matches!(render(&event(message(empty)), &room(), Voice::Puppet), Err(SendError::Rejected(_))));
}
