//! Outbound translation: the exact client-server API calls for each core event.

use super::*;
use crate::translate::fixtures::translator;
use bridge_api::event::{Attachment, Sender};
use bridge_api::{LegId, MessageId, NativeId, PortalId, TxnId};

const ROOM: &str = "!room:hs.test";
const BOB: &str = "mimi://b.test/u/irc.libera~bob";

/// A MIMI message id (version byte 1, then `n`s).
fn mid(n: u8) -> MessageId {
    let mut b = [n; 32];
    b[0] = 1;
    MessageId::from_bytes(&b).expect("valid message id")
}

fn ghost() -> String {
    translator().matrix_user(BOB).expect("ghost")
}

fn event(kind: OutboundKind) -> OutboundEvent {
    let t = translator();
    let leg = LegId::new(t.account.clone(), ROOM).expect("leg");
    let message_id = mid(1);
    OutboundEvent {
        portal: PortalId::new("p").expect("portal"),
        txn_id: TxnId::for_delivery(&message_id, &leg),
        leg,
        message_id,
        sender: Sender { uri: BOB.into(), display_name: "bob".into(), network: "irc".into(), legacy: None },
        kind,
        queued_at_ms: 0,
    }
}

/// The single `Send` an event gives: (event type, txn id, content).
fn sent(kind: OutboundKind) -> (&'static str, String, Value) {
    let ev = event(kind);
    match translator().outbound(&ev).expect("translated").as_slice() {
        [MatrixAction::Send { room, as_user, event_type, txn_id, content }] => {
            assert_eq!((room.as_str(), as_user.as_str()), (ROOM, ghost().as_str()));
            assert_eq!(txn_id, &ev.txn_id.0, "the txn id is the core's, derived from the message id");
            (event_type, txn_id.clone(), content.clone())
        }
        other => panic!("expected one send, got {other:?}"),
    }
}

fn parent(native: Option<&str>) -> ParentRef {
    ParentRef {
        native_id: native.map(|n| NativeId(n.into())),
        message_id: mid(2),
        sender_name: "alice".into(),
        excerpt: "the question".into(),
    }
}

fn message(draft: MessageDraft) -> OutboundKind {
    OutboundKind::Message { draft, reply_to: None }
}

#[test]
fn plain_text_is_sent_as_is_with_no_markup() {
    let (ty, _, content) = sent(message(MessageDraft::plain("<b>not bold</b>")));
    assert_eq!(ty, "m.room.message");
    assert_eq!(content, json!({"msgtype": "m.text", "body": "<b>not bold</b>", "m.mentions": {}}));
}

#[test]
fn markdown_becomes_escaped_html_and_plain_body() {
    let (_, _, content) = sent(message(MessageDraft::markdown("**hi** <script>x</script>")));
    assert_eq!(content["body"], "hi <script>x</script>");
    assert_eq!(content["format"], "org.matrix.custom.html");
    assert_eq!(content["formatted_body"], "<p><strong>hi</strong> &lt;script&gt;x&lt;/script&gt;</p>");
}

#[test]
fn markdown_without_formatting_has_no_formatted_body() {
    let (_, _, content) = sent(message(MessageDraft::markdown("just words\\.")));
    assert_eq!(content, json!({"msgtype": "m.text", "body": "just words.", "m.mentions": {}}));
}

#[test]
fn styles_map_to_msgtypes() {
    let emote = MessageDraft { style: MessageStyle::Emote, ..MessageDraft::plain("waves") };
    assert_eq!(sent(message(emote)).2["msgtype"], "m.emote");
    let notice = MessageDraft { style: MessageStyle::Notice, ..MessageDraft::plain("note") };
    assert_eq!(sent(message(notice)).2["msgtype"], "m.notice");
}

#[test]
fn a_reply_relates_to_its_parent_without_a_fallback() {
    let (_, _, content) =
        sent(OutboundKind::Message { draft: MessageDraft::plain("answer"), reply_to: Some(parent(Some("$p"))) });
    assert_eq!(content["m.relates_to"], json!({"m.in_reply_to": {"event_id": "$p"}}));
    assert_eq!(content["body"], "answer");
}

#[test]
fn a_reply_to_a_message_not_in_the_room_quotes_it() {
    let (_, _, content) =
        sent(OutboundKind::Message { draft: MessageDraft::plain("answer"), reply_to: Some(parent(None)) });
    assert!(content.get("m.relates_to").is_none());
    assert_eq!(content["body"], "> alice: the question\nanswer");
    assert_eq!(
        content["formatted_body"],
        "<blockquote>\n<p><strong>alice</strong>: the question</p>\n</blockquote>\n<p>answer</p>"
    );
}

#[test]
fn an_edit_replaces_the_original() {
    let (_, _, content) =
        sent(OutboundKind::Edit { target: parent(Some("$orig")), draft: MessageDraft::plain("fixed") });
    assert_eq!(
        content,
        json!({
            "msgtype": "m.text", "body": "* fixed", "m.mentions": {},
            "m.new_content": {"msgtype": "m.text", "body": "fixed", "m.mentions": {}},
            "m.relates_to": {"rel_type": "m.replace", "event_id": "$orig"},
        })
    );
    let (_, _, fallback) = sent(OutboundKind::Edit { target: parent(None), draft: MessageDraft::plain("fixed") });
    assert_eq!(fallback, json!({"msgtype": "m.text", "body": "* fixed", "m.mentions": {}}));
}

#[test]
fn reactions_annotate_and_their_removal_redacts() {
    let (ty, _, content) =
        sent(OutboundKind::ReactionAdd {
            target: parent(Some("$m")), key: "👍".into(), set_after: vec!["👍".into()]
        });
    assert_eq!(ty, "m.reaction");
    assert_eq!(content, json!({"m.relates_to": {"rel_type": "m.annotation", "event_id": "$m", "key": "👍"}}));
    let ev = event(OutboundKind::ReactionRemove {
        target: parent(Some("$m")),
        key: "👍".into(),
        reaction: mid(3),
        reaction_native_id: Some(NativeId("$r".into())),
        set_after: vec![],
    });
    let actions = translator().outbound(&ev).expect("translated");
    assert_eq!(
        actions,
        [MatrixAction::Redact {
            room: ROOM.into(),
            as_user: ghost(),
            event_id: "$r".into(),
            txn_id: ev.txn_id.0.clone()
        }]
    );
}

#[test]
fn deletes_redact_and_what_never_reached_the_room_needs_nothing() {
    let ev = event(OutboundKind::Delete { target: parent(Some("$m")) });
    assert!(
        matches!(translator().outbound(&ev).expect("ok").as_slice(), [MatrixAction::Redact { event_id, .. }] if event_id == "$m")
    );
    for kind in [
        OutboundKind::Delete { target: parent(None) },
        OutboundKind::ReactionAdd { target: parent(None), key: "x".into(), set_after: vec![] },
    ] {
        assert_eq!(translator().outbound(&event(kind)).expect("ok"), []);
    }
}

#[test]
fn mentions_become_pills_and_m_mentions() {
    let alice = translator().user_uri("@alice:hs.test");
    let md = format!("hi {}", markdown::mention_link("alice", &alice));
    let (_, _, content) = sent(message(MessageDraft::markdown(md)));
    assert_eq!(content["m.mentions"], json!({"user_ids": ["@alice:hs.test"]}));
    assert_eq!(content["body"], "hi @alice");
    assert_eq!(content["formatted_body"], "<p>hi <a href=\"https://matrix.to/#/@alice:hs.test\">@alice</a></p>");
}

#[test]
fn membership_and_typing_act_as_the_ghost() {
    let join = translator().outbound(&event(OutboundKind::Membership { change: Membership::Join })).expect("ok");
    assert_eq!(join, [MatrixAction::Join { room: ROOM.into(), as_user: ghost(), display_name: "bob".into() }]);
    let leave = translator().outbound(&event(OutboundKind::Membership { change: Membership::Kick })).expect("ok");
    assert_eq!(leave, [MatrixAction::Leave { room: ROOM.into(), as_user: ghost() }]);
    let typing = translator().outbound(&event(OutboundKind::Typing { active: true })).expect("ok");
    assert_eq!(typing, [MatrixAction::Typing { room: ROOM.into(), as_user: ghost(), active: true }]);
}

fn png(url: &str) -> Attachment {
    Attachment { url: url.into(), media_type: "image/png".into(), size: Some(5), filename: Some("a.png".into()) }
}

#[test]
fn attachments_follow_the_text_one_media_event_each_and_a_reply_relates_the_first() {
    let ev = event(OutboundKind::Message {
        draft: MessageDraft {
            attachments: vec![png("https://b.test/media/v1/t1/a.png")],
            ..MessageDraft::plain("pic")
        },
        reply_to: None,
    });
    let actions = translator().outbound(&ev).expect("translated");
    let txn = ev.txn_id.0.clone();
    assert_eq!(actions.len(), 2, "{actions:?}");
    assert!(
        matches!(&actions[0], MatrixAction::Send { content, txn_id, .. } if content["body"] == "pic" && *txn_id == txn)
    );
    assert_eq!(
        actions[1],
        MatrixAction::SendMedia {
            room: ROOM.into(),
            as_user: ghost(),
            txn_id: format!("{txn}-a0"),
            attachment: png("https://b.test/media/v1/t1/a.png"),
            content: json!({"msgtype": "m.image", "body": "a.png", "filename": "a.png",
                            "info": {"mimetype": "image/png", "size": 5}, "m.mentions": {}}),
        }
    );

    // A file alone is one media event; as a reply, it carries the relation.
    let draft = MessageDraft { attachments: vec![png("u1"), png("u2")], ..MessageDraft::default() };
    let ev = event(OutboundKind::Message { draft, reply_to: Some(parent(Some("$q"))) });
    let actions = translator().outbound(&ev).expect("translated");
    let contents: Vec<&Value> = actions
        .iter()
        .map(|a| match a {
            MatrixAction::SendMedia { content, .. } => content,
            other => panic!("media only: {other:?}"),
        })
        .collect();
    assert_eq!(contents.len(), 2);
    assert_eq!(contents[0]["m.relates_to"], json!({"m.in_reply_to": {"event_id": "$q"}}));
    assert!(contents[1].get("m.relates_to").is_none());
}

#[test]
fn an_edit_changing_attachments_is_refused_not_dropped() {
    let draft = MessageDraft { attachments: vec![png("u")], ..MessageDraft::plain("pic") };
    let target = ParentRef { native_id: Some(NativeId("$orig".into())), ..parent(None) };
    let ev = event(OutboundKind::Edit { target, draft });
    assert_eq!(translator().outbound(&ev), Err(OutboundError::EditedAttachments));
}

/// Bot mode: the translator of a bot account relaying as `{name}: {text}`.
fn bot_actions(kind: OutboundKind) -> Vec<MatrixAction> {
    let t = Translator { relay: Some("{name}: {text}".into()), ..translator() };
    t.outbound(&event(kind)).expect("translated")
}

/// The one `Send` of a bot-mode event, checked to be the bot's: (event type, content).
fn bot_sent(kind: OutboundKind) -> (&'static str, Value) {
    match bot_actions(kind).as_slice() {
        [MatrixAction::Send { as_user, event_type, content, .. }] => {
            assert_eq!(as_user, "@mimibot:hs.test", "the bot sends");
            (event_type, content.clone())
        }
        other => panic!("expected one send, got {other:?}"),
    }
}

#[test]
fn a_bot_relays_texts_with_the_senders_name_and_emotes_as_text() {
    let (ty, content) = bot_sent(message(MessageDraft::plain("hello")));
    assert_eq!(ty, "m.room.message");
    assert_eq!(content, json!({"msgtype": "m.text", "body": "bob: hello", "m.mentions": {}}));
    let emote = MessageDraft { style: MessageStyle::Emote, ..MessageDraft::plain("waves") };
    assert_eq!(bot_sent(message(emote)).1, json!({"msgtype": "m.text", "body": "* bob waves", "m.mentions": {}}));
    let (_, md) = bot_sent(message(MessageDraft::markdown("**hi**")));
    assert_eq!(
        (md["body"].as_str(), md["formatted_body"].as_str()),
        (Some("bob: hi"), Some("<p>bob: <strong>hi</strong></p>"))
    );
    // A name that looks like markup stays text.
    let mut ev = event(message(MessageDraft::markdown("*x*")));
    ev.sender.display_name = "<b>eve</b>".into();
    let t = Translator { relay: Some("{name}: {text}".into()), ..translator() };
    match t.outbound(&ev).expect("translated").as_slice() {
        [MatrixAction::Send { content, .. }] => {
            assert_eq!(content["formatted_body"], "<p>&lt;b&gt;eve&lt;/b&gt;: <em>x</em></p>");
        }
        other => panic!("expected one send, got {other:?}"),
    }
}

#[test]
fn a_bot_edits_with_the_name_reacts_with_a_notice_and_shows_no_membership_or_typing() {
    let (_, edit) = bot_sent(OutboundKind::Edit { target: parent(Some("$orig")), draft: MessageDraft::plain("fixed") });
    assert_eq!(
        (edit["body"].as_str(), edit["m.new_content"]["body"].as_str()),
        (Some("* bob: fixed"), Some("bob: fixed"))
    );
    let (ty, reaction) =
        bot_sent(OutboundKind::ReactionAdd { target: parent(Some("$m")), key: "👍".into(), set_after: vec![] });
    assert_eq!(ty, "m.room.message");
    assert_eq!(reaction["body"], "bob reacted with 👍");
    assert_eq!(reaction["m.relates_to"], json!({"m.in_reply_to": {"event_id": "$m"}}));
    assert!(bot_actions(OutboundKind::Membership { change: Membership::Join }).is_empty());
    assert!(bot_actions(OutboundKind::Typing { active: true }).is_empty());
}

#[test]
fn a_bot_sends_files_after_the_senders_name() {
    let draft = MessageDraft { attachments: vec![png("https://media.test/0")], ..MessageDraft::plain("") };
    match bot_actions(message(draft)).as_slice() {
        [MatrixAction::Send { as_user, content, .. }, MatrixAction::SendMedia { as_user: file_as, attachment, .. }] => {
            assert_eq!((as_user.as_str(), file_as.as_str()), ("@mimibot:hs.test", "@mimibot:hs.test"));
            assert_eq!(content["body"], "bob:");
            assert_eq!(attachment.url, "https://media.test/0");
        }
        other => panic!("expected the name, then the file: {other:?}"),
    }
}

#[test]
fn a_relay_line_fills_its_format_once() {
    assert_eq!(relay_line("<{name}> {text}", "bob", "hi", false), "<bob> hi");
    assert_eq!(relay_line("{name}: {text}", "{text}", "hi {name}", false), "{text}: hi {name}");
    assert_eq!(relay_line("{x} {name}", "bob", "", false), "{x} bob");
    assert_eq!(relay_line("{name}: {text}", "bob", "waves", true), "* bob waves");
}
