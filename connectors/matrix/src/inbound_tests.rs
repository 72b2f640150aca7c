//! Inbound translation, on event JSON as Synapse delivers it in appservice transactions.

use super::*;
use crate::translate::fixtures::translator;
use bridge_api::event::Attachment;
use serde_json::{Value, json};

const ROOM: &str = "!room:hs.test";

/// A timeline event of `sender` with `content`.
fn event(kind: &str, sender: &str, content: Value) -> AnyTimelineEvent {
    let ev = json!({
        "type": kind, "event_id": "$ev1", "sender": sender, "room_id": ROOM,
        "origin_server_ts": 1_700_000_000_000u64, "content": content, "unsigned": {},
    });
    serde_json::from_value(ev).expect("valid event fixture")
}

fn message(content: Value) -> InboundEvent {
    translator().inbound(&event("m.room.message", "@alice:hs.test", content), Some("Alice")).expect("bridged")
}

fn draft_of(ev: &InboundEvent) -> &MessageDraft {
    match &ev.kind {
        InboundKind::Message { draft, .. } | InboundKind::Edit { draft, .. } => draft,
        other => panic!("not a message: {other:?}"),
    }
}

#[test]
fn a_text_message_keeps_its_sender_room_and_event_id() {
    let ev = message(json!({"msgtype": "m.text", "body": "hello *world*"}));
    assert_eq!(ev.leg.room, ROOM);
    assert_eq!(ev.sender.native_id, "@alice:hs.test");
    assert_eq!(ev.sender.display_name.as_deref(), Some("Alice"));
    assert_eq!(ev.native_id, Some(NativeId("$ev1".into())));
    assert!(!ev.from_bridge);
    assert_eq!(ev.kind, InboundKind::Message { draft: MessageDraft::plain("hello *world*"), reply_to: None });
}

#[test]
fn notices_and_emotes_keep_their_style() {
    let n = message(json!({"msgtype": "m.notice", "body": "bot says"}));
    assert_eq!(draft_of(&n).style, MessageStyle::Notice);
    let e = message(json!({"msgtype": "m.emote", "body": "waves"}));
    assert_eq!(draft_of(&e).style, MessageStyle::Emote);
    assert_eq!(draft_of(&e).body, "waves");
}

#[test]
fn formatted_bodies_become_sanitised_markdown() {
    let ev = message(json!({
        "msgtype": "m.text", "body": "bold <script>",
        "format": "org.matrix.custom.html", "formatted_body": "<b>bold</b> &lt;script&gt;<script>alert(1)</script><iframe src=\"x\"></iframe>",
    }));
    assert_eq!(draft_of(&ev), &MessageDraft::markdown("**bold** \\<script\\>alert\\(1\\)"));
}

#[test]
fn a_reply_names_its_parent_and_loses_both_fallbacks() {
    let ev = message(json!({
        "msgtype": "m.text", "body": "> <@bob:hs.test> original\n> second line\n\nanswer",
        "format": "org.matrix.custom.html",
        "formatted_body": "<mx-reply><blockquote><a href=\"https://matrix.to/#/!room:hs.test/$parent\">In reply to</a> \
                           <a href=\"https://matrix.to/#/@bob:hs.test\">@bob:hs.test</a><br>original</blockquote></mx-reply>answer",
        "m.relates_to": {"m.in_reply_to": {"event_id": "$parent"}},
    }));
    assert_eq!(
        ev.kind,
        InboundKind::Message { draft: MessageDraft::markdown("answer"), reply_to: Some(NativeId("$parent".into())) }
    );
    let plain = message(json!({
        "msgtype": "m.text", "body": "> <@bob:hs.test> original\n\nanswer",
        "m.relates_to": {"m.in_reply_to": {"event_id": "$parent"}},
    }));
    assert_eq!(draft_of(&plain), &MessageDraft::plain("answer"));
}

#[test]
fn an_edit_targets_the_original_with_the_new_content() {
    let ev = message(json!({
        "msgtype": "m.text", "body": "* fixed",
        "m.new_content": {"msgtype": "m.text", "body": "fixed"},
        "m.relates_to": {"rel_type": "m.replace", "event_id": "$orig"},
    }));
    assert_eq!(ev.kind, InboundKind::Edit { target: NativeId("$orig".into()), draft: MessageDraft::plain("fixed") });
}

#[test]
fn a_reaction_and_a_redaction() {
    let t = translator();
    let r = event(
        "m.reaction",
        "@alice:hs.test",
        json!({"m.relates_to": {"rel_type": "m.annotation", "event_id": "$m", "key": "👍"}}),
    );
    assert_eq!(
        t.inbound(&r, None).expect("bridged").kind,
        InboundKind::ReactionAdd { target: NativeId("$m".into()), key: "👍".into() }
    );
    let d = event("m.room.redaction", "@alice:hs.test", json!({"redacts": "$m"}));
    assert_eq!(t.inbound(&d, None).expect("bridged").kind, InboundKind::Delete { target: NativeId("$m".into()) });
}

#[test]
fn pills_and_plain_mentions_become_user_links() {
    let t = translator();
    let ghost = t.matrix_user("mimi://b.test/u/irc.libera~bob").expect("ghost");
    let ev = message(json!({
        "msgtype": "m.text", "body": "Bob: hi",
        "format": "org.matrix.custom.html", "formatted_body": format!("<a href=\"https://matrix.to/#/{ghost}\">Bob</a>: hi"),
        "m.mentions": {"user_ids": [ghost]},
    }));
    assert_eq!(draft_of(&ev).body, "[@Bob](mimi://b.test/u/irc.libera~bob)\\: hi");
    let plain = message(
        json!({"msgtype": "m.text", "body": "@carol:hs.test hi", "m.mentions": {"user_ids": ["@carol:hs.test"]}}),
    );
    assert_eq!(draft_of(&plain).body, format!("[@carol\\:hs\\.test]({}) hi", t.user_uri("@carol:hs.test")));
}

#[test]
fn events_of_ghosts_and_the_bot_are_the_bridges_own() {
    let t = translator();
    let ghost = t.matrix_user("mimi://b.test/u/irc.libera~bob").expect("ghost");
    for sender in [ghost.as_str(), "@mimibot:hs.test"] {
        let ev = t.inbound(&event("m.room.message", sender, json!({"msgtype": "m.text", "body": "x"})), None);
        assert!(ev.expect("translated").from_bridge, "{sender}");
    }
}

#[test]
fn media_become_attachments_with_their_caption_and_other_events_are_not_bridged() {
    let t = translator();
    let img = json!({"msgtype": "m.image", "body": "look at this", "filename": "a.png", "url": "mxc://hs.test/x",
                     "info": {"mimetype": "image/png", "size": 7}});
    let ev = message(img);
    let a = Attachment {
        url: "mxc://hs.test/x".into(),
        media_type: "image/png".into(),
        size: Some(7),
        filename: Some("a.png".into()),
    };
    assert_eq!(draft_of(&ev), &MessageDraft { attachments: vec![a], ..MessageDraft::plain("look at this") });
    let loc = event(
        "m.room.message",
        "@alice:hs.test",
        json!({"msgtype": "m.location", "body": "here", "geo_uri": "geo:1,2"}),
    );
    assert_eq!(t.inbound(&loc, None), Err(Skipped::Unsupported("m.location".into())));
    let topic = event("m.room.topic", "@alice:hs.test", json!({"topic": "t"}));
    assert!(matches!(t.inbound(&topic, None), Err(Skipped::Ignored(_))));
}

/// A membership event of `sender` about `target`, after `prev`.
fn member(sender: &str, target: &str, content: Value, prev: Option<Value>) -> Result<InboundEvent, Skipped> {
    let mut ev = json!({
        "type": "m.room.member", "event_id": "$m1", "sender": sender, "state_key": target, "room_id": ROOM,
        "origin_server_ts": 1_700_000_000_000u64, "content": content, "unsigned": {},
    });
    if let Some(prev) = prev {
        ev["unsigned"]["prev_content"] = prev;
    }
    translator().inbound(&serde_json::from_value(ev).expect("valid member fixture"), None)
}

#[test]
fn membership_changes_and_display_names() {
    let join = member("@alice:hs.test", "@alice:hs.test", json!({"membership": "join", "displayname": "Alice"}), None)
        .expect("join");
    assert_eq!(join.kind, InboundKind::Membership { change: Membership::Join });
    assert_eq!(join.sender.display_name.as_deref(), Some("Alice"));
    let joined = Some(json!({"membership": "join", "displayname": "Alice"}));
    let rename =
        member("@alice:hs.test", "@alice:hs.test", json!({"membership": "join", "displayname": "Al"}), joined.clone())
            .expect("rename");
    assert_eq!(rename.sender.display_name.as_deref(), Some("Al"));
    assert!(
        member(
            "@alice:hs.test",
            "@alice:hs.test",
            json!({"membership": "join", "displayname": "Alice"}),
            joined.clone()
        )
        .is_err()
    );
    let leave =
        member("@alice:hs.test", "@alice:hs.test", json!({"membership": "leave"}), joined.clone()).expect("leave");
    assert_eq!(
        (leave.kind, leave.sender.display_name.as_deref()),
        (InboundKind::Membership { change: Membership::Leave }, Some("Alice"))
    );
    let kick = member("@mod:hs.test", "@alice:hs.test", json!({"membership": "leave"}), joined.clone()).expect("kick");
    assert_eq!(
        (kick.kind, kick.sender.native_id.as_str()),
        (InboundKind::Membership { change: Membership::Kick }, "@alice:hs.test")
    );
    let ban = member("@mod:hs.test", "@alice:hs.test", json!({"membership": "ban"}), joined).expect("ban");
    assert_eq!(ban.kind, InboundKind::Membership { change: Membership::Ban });
    assert!(member("@mod:hs.test", "@alice:hs.test", json!({"membership": "invite"}), None).is_err());
}

#[test]
fn a_kicked_member_is_not_shown_with_the_kickers_name() {
    let ev = serde_json::from_value(json!({
        "type": "m.room.member", "event_id": "$k", "sender": "@mod:hs.test", "state_key": "@alice:hs.test",
        "room_id": ROOM, "origin_server_ts": 1, "content": {"membership": "leave"},
        "unsigned": {"prev_content": {"membership": "join", "displayname": "Alice"}},
    }))
    .expect("valid member fixture");
    let kick = translator().inbound(&ev, Some("Moderator")).expect("kick");
    assert_eq!(kick.sender.display_name.as_deref(), Some("Alice"));
}

#[test]
fn a_ghost_kicked_or_banned_becomes_a_notice_from_whoever_did_it() {
    let t = translator();
    let ghost = t.matrix_user("mimi://b.test/u/irc.libera~bob").expect("ghost");
    for (membership, verb) in [("leave", "removed"), ("ban", "banned")] {
        let ev = serde_json::from_value(json!({
            "type": "m.room.member", "event_id": "$k", "sender": "@mod:hs.test", "state_key": ghost,
            "room_id": ROOM, "origin_server_ts": 1, "content": {"membership": membership, "reason": "spam"},
            "unsigned": {"prev_content": {"membership": "join", "displayname": "bob"}},
        }))
        .expect("valid member fixture");
        let ev = t.inbound(&ev, Some("Moderator")).expect("notice");
        assert!(!ev.from_bridge);
        assert_eq!(
            (ev.sender.native_id.as_str(), ev.sender.display_name.as_deref()),
            ("@mod:hs.test", Some("Moderator"))
        );
        let want = MessageDraft {
            style: MessageStyle::Notice,
            ..MessageDraft::plain(format!("{verb} bob from the Matrix room: spam"))
        };
        assert_eq!(ev.kind, InboundKind::Message { draft: want, reply_to: None });
    }
}

#[test]
fn an_encrypted_message_gives_a_notice_from_its_sender_never_silence() {
    let content = json!({"algorithm": "m.megolm.v1.aes-sha2", "ciphertext": "AwgAEn...", "device_id": "DEV",
                         "sender_key": "abc", "session_id": "s1"});
    let ev =
        translator().inbound(&event("m.room.encrypted", "@alice:hs.test", content), Some("Alice")).expect("bridged");
    assert_eq!((ev.sender.native_id.as_str(), ev.native_id.clone()), ("@alice:hs.test", Some(NativeId("$ev1".into()))));
    let draft = draft_of(&ev);
    assert_eq!((draft.style, draft.body.as_str()), (MessageStyle::Notice, ENCRYPTED_NOTICE));
}

#[test]
fn a_withheld_key_gives_a_notice_that_says_why_and_repeats_no_unknown_code() {
    let tr = translator();
    let notice = |code: Option<&WithheldCode>| {
        let ev = tr.undecrypted_notice(ROOM, "@alice:hs.test", None, "$ev9", code).expect("notice");
        assert_eq!(ev.native_id, Some(NativeId("$ev9#undecrypted".into())));
        draft_of(&ev).body.clone()
    };
    assert_eq!(notice(None), UNDECRYPTED_NOTICE);
    let unverified = notice(Some(&WithheldCode::Unverified));
    assert!(unverified.starts_with(WITHHELD_NOTICE), "{unverified}");
    assert!(unverified.contains("unverified devices"), "{unverified}");
    let custom = notice(Some(&WithheldCode::from("org.example.evil\r\nPRIVMSG #x :hi")));
    assert_eq!(custom, format!("{WITHHELD_NOTICE} (for a reason of its own)"));
}
