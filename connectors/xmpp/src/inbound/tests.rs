//! Stanza fixtures → events.

use super::*;
use bridge_api::event::TextFormat;

const ROOM: &str = "room@muc.example.org";

fn room() -> RoomState {
    let account = AccountId::new("xmpp", "test").expect("account id");
    let leg = LegId::new(account, ROOM).expect("leg");
    RoomState::new(leg, BareJid::new(ROOM).expect("jid"))
}

fn msg(xml: &str) -> Message {
    let el: Element = xml.parse().expect("fixture parses");
    Message::try_from(el).expect("fixture is a message")
}

fn pres(xml: &str) -> Presence {
    let el: Element = xml.parse().expect("fixture parses");
    Presence::try_from(el).expect("fixture is a presence")
}

fn none(_: &str) -> bool {
    false
}

fn event(o: Outcome) -> InboundEvent {
    match o {
        Outcome::Event(e) => *e,
        other => panic!("expected an event, got {other:?}"),
    }
}

fn groupchat(from_nick: &str, id: &str, sid: &str, inner: &str) -> String {
    format!(
        "<message xmlns='jabber:client' type='groupchat' from='{ROOM}/{from_nick}' id='{id}'>{inner}\
         <stanza-id xmlns='urn:xmpp:sid:0' by='{ROOM}' id='{sid}'/></message>"
    )
}

#[test]
fn a_message_carries_the_rooms_stanza_id_and_the_occupant() {
    let mut r = room();
    let e = event(r.message(msg(&groupchat("Alice", "m1", "S1", "<body>hello &lt;b&gt;</body>")), none, none));
    assert_eq!(e.native_id, Some(NativeId("S1".into())));
    assert_eq!(e.sender.native_id, format!("{ROOM}/Alice"));
    assert_eq!(e.sender.display_name.as_deref(), Some("Alice"));
    assert!(!e.from_bridge);
    match e.kind {
        InboundKind::Message { draft, reply_to: None } => {
            assert_eq!(draft.body, "hello <b>");
            assert_eq!(draft.format, TextFormat::Plain);
        }
        k => panic!("{k:?}"),
    }
}

#[test]
fn a_stanza_id_claimed_by_someone_else_is_not_trusted() {
    let mut r = room();
    let xml = format!(
        "<message xmlns='jabber:client' type='groupchat' from='{ROOM}/Eve' id='x'><body>hi</body>\
         <stanza-id xmlns='urn:xmpp:sid:0' by='evil.example.org' id='FORGED'/></message>"
    );
    assert_eq!(r.message(msg(&xml), none, none), Outcome::Ignored("message without stanza-id or origin-id"));
}

#[test]
fn styled_bodies_become_markdown_and_emotes_are_marked() {
    let mut r = room();
    let e = event(r.message(msg(&groupchat("a", "1", "S", "<body>*loud* news</body>")), none, none));
    assert!(
        matches!(&e.kind, InboundKind::Message { draft, .. } if draft.format == TextFormat::Markdown && draft.body == "**loud** news")
    );
    let e = event(r.message(msg(&groupchat("a", "2", "S2", "<body>/me waves</body>")), none, none));
    assert!(
        matches!(&e.kind, InboundKind::Message { draft, .. } if draft.style == MessageStyle::Emote && draft.body == "waves")
    );
}

#[test]
fn a_reply_names_the_parent_stanza_id_and_loses_its_fallback() {
    let mut r = room();
    let inner = "<body>&gt; Bob: parent text\nmy answer</body>\
                 <reply xmlns='urn:xmpp:reply:0' to='room@muc.example.org/Bob' id='PARENT'/>\
                 <fallback xmlns='urn:xmpp:fallback:0' for='urn:xmpp:reply:0'><body start='0' end='19'/></fallback>";
    let e = event(r.message(msg(&groupchat("Alice", "m2", "S2", inner)), none, none));
    match e.kind {
        InboundKind::Message { draft, reply_to } => {
            assert_eq!(reply_to, Some(NativeId("PARENT".into())));
            assert_eq!(draft.body, "my answer");
        }
        k => panic!("{k:?}"),
    }
}

#[test]
fn fallback_offsets_count_code_points_and_bad_ranges_are_ignored() {
    let fb = |s: &str, e: &str| -> Vec<Element> {
        vec![
            format!(
                "<fallback xmlns='urn:xmpp:fallback:0' for='urn:xmpp:reply:0'><body start='{s}' end='{e}'/></fallback>"
            )
            .parse()
            .expect("xml"),
        ]
    };
    assert_eq!(strip_fallbacks("> ü😀\nok", &fb("0", "5"), &[ns::REPLY]), "ok");
    assert_eq!(strip_fallbacks("short", &fb("0", "99"), &[ns::REPLY]), "short");
    assert_eq!(strip_fallbacks("short", &fb("3", "1"), &[ns::REPLY]), "short");
    assert_eq!(strip_fallbacks("short", &fb("0", "2"), &[ns::RETRACT]), "short");
}

#[test]
fn a_correction_is_accepted_only_from_the_original_sender() {
    let mut r = room();
    event(r.message(msg(&groupchat("Alice", "orig", "S-orig", "<body>teh</body>")), none, none));
    let fix = "<body>the</body><replace xmlns='urn:xmpp:message-correct:0' id='orig'/>";
    let e = event(r.message(msg(&groupchat("Alice", "fix1", "S-fix", fix)), none, none));
    assert_eq!(e.native_id, Some(NativeId("S-fix".into())));
    assert!(matches!(&e.kind, InboundKind::Edit { target, draft } if target.0 == "S-orig" && draft.body == "the"));
    let o = r.message(msg(&groupchat("Mallory", "fix2", "S-fix2", fix)), none, none);
    assert!(matches!(o, Outcome::Ignored(_)), "{o:?}");
}

#[test]
fn reactions_are_the_senders_whole_set() {
    let mut r = room();
    let inner = "<reactions xmlns='urn:xmpp:reactions:0' id='S1'><reaction>👍</reaction><reaction>🎉</reaction>\
                 <reaction>👍</reaction></reactions><store xmlns='urn:xmpp:hints'/>";
    let e = event(r.message(msg(&groupchat("Alice", "r1", "S-r1", inner)), none, none));
    assert!(matches!(&e.kind, InboundKind::ReactionSet { target, keys } if target.0 == "S1" && keys == &["👍", "🎉"]));
    let cleared = "<reactions xmlns='urn:xmpp:reactions:0' id='S1'/>";
    let e = event(r.message(msg(&groupchat("Alice", "r2", "S-r2", cleared)), none, none));
    assert!(matches!(&e.kind, InboundKind::ReactionSet { keys, .. } if keys.is_empty()));
    let many: String = (0..40).map(|i| format!("<reaction>{i}</reaction>")).collect();
    let flood = format!("<reactions xmlns='urn:xmpp:reactions:0' id='S1'>{many}</reactions>");
    assert!(matches!(r.message(msg(&groupchat("Alice", "r3", "S-r3", &flood)), none, none), Outcome::Ignored(_)));
}

#[test]
fn retractions_in_both_forms_are_deletes() {
    let mut r = room();
    let new = "<retract xmlns='urn:xmpp:message-retract:1' id='S1'/><body>fallback</body>\
               <fallback xmlns='urn:xmpp:fallback:0' for='urn:xmpp:message-retract:1'/>";
    let e = event(r.message(msg(&groupchat("Alice", "d1", "S-d1", new)), none, none));
    assert!(matches!(&e.kind, InboundKind::Delete { target } if target.0 == "S1"));
    let old = "<apply-to xmlns='urn:xmpp:fasten:0' id='S2'><retract xmlns='urn:xmpp:message-retract:0'/></apply-to>";
    let e = event(r.message(msg(&groupchat("Alice", "d2", "S-d2", old)), none, none));
    assert!(matches!(&e.kind, InboundKind::Delete { target } if target.0 == "S2"));
}

#[test]
fn moderation_from_the_room_is_a_delete_by_the_moderator() {
    let mut r = room();
    let xml = format!(
        "<message xmlns='jabber:client' type='groupchat' from='{ROOM}' id='mod1'>\
         <retract xmlns='urn:xmpp:message-retract:1' id='S9'>\
         <moderated xmlns='urn:xmpp:message-moderate:1' by='{ROOM}/Mod'/><reason>spam</reason></retract>\
         <stanza-id xmlns='urn:xmpp:sid:0' by='{ROOM}' id='S-mod'/></message>"
    );
    let e = event(r.message(msg(&xml), none, none));
    assert!(matches!(&e.kind, InboundKind::Delete { target } if target.0 == "S9"));
    assert_eq!(e.sender.display_name.as_deref(), Some("Mod"));
    let old = format!(
        "<message xmlns='jabber:client' type='groupchat' from='{ROOM}' id='mod2'>\
         <apply-to xmlns='urn:xmpp:fasten:0' id='S8'><moderated xmlns='urn:xmpp:message-moderate:0' by='{ROOM}/Mod'>\
         <retract xmlns='urn:xmpp:message-retract:0'/></moderated></apply-to></message>"
    );
    let e = event(r.message(msg(&old), none, none));
    assert!(matches!(&e.kind, InboundKind::Delete { target } if target.0 == "S8"));
    let subject =
        format!("<message xmlns='jabber:client' type='groupchat' from='{ROOM}'><subject>t</subject></message>");
    assert!(matches!(r.message(msg(&subject), none, none), Outcome::Ignored(_)));
}

#[test]
fn the_bridges_own_stanzas_are_reflections_or_marked() {
    let mut r = room();
    let inner = "<body>x</body><origin-id xmlns='urn:xmpp:sid:0' id='txn1'/>";
    let o = r.message(msg(&groupchat("bridge", "txn1", "S-own", inner)), |n| n == "bridge", |o| o == "txn1");
    assert_eq!(o, Outcome::Reflection { origin_id: "txn1".into(), stanza_id: Some("S-own".into()) });
    let e = event(r.message(msg(&groupchat("bridge", "other", "S-o2", "<body>y</body>")), |n| n == "bridge", none));
    assert!(e.from_bridge);
}

#[test]
fn encrypted_messages_become_a_notice_not_silence() {
    let mut r = room();
    let inner = "<encrypted xmlns='eu.siacs.conversations.axolotl'><header sid='1'/></encrypted>\
                 <body>I sent you an OMEMO encrypted message</body>";
    let e = event(r.message(msg(&groupchat("Alice", "e1", "S-e1", inner)), none, none));
    assert!(
        matches!(&e.kind, InboundKind::Message { draft, .. } if draft.style == MessageStyle::Notice && draft.body.contains("encrypted"))
    );
}

#[test]
fn history_chat_states_and_hostile_bodies() {
    let mut r = room();
    let delayed = "<body>old</body><delay xmlns='urn:xmpp:delay' stamp='2020-01-01T00:00:00Z'/>";
    assert!(matches!(r.message(msg(&groupchat("a", "h", "S-h", delayed)), none, none), Outcome::Ignored(_)));
    let typing = "<composing xmlns='http://jabber.org/protocol/chatstates'/>";
    let e = event(r.message(msg(&groupchat("a", "t", "S-t", typing)), none, none));
    assert_eq!(e.kind, InboundKind::Typing { active: true });
    // A body over what the connector sends goes to the core all the same: its `max_event_bytes` decides, and tells
    // the sender when it refuses.
    let huge = format!("<body>{}</body>", "x".repeat(MAX_BODY + 1));
    let e = event(r.message(msg(&groupchat("a", "big", "S-big", &huge)), none, none));
    assert!(matches!(&e.kind, InboundKind::Message { draft, .. } if draft.body.len() == MAX_BODY + 1));
    let other =
        "<message xmlns='jabber:client' type='groupchat' from='other@muc.example.org/a'><body>x</body></message>";
    assert!(matches!(r.message(msg(other), none, none), Outcome::Ignored(_)));
    let chat = format!("<message xmlns='jabber:client' type='chat' from='{ROOM}/a'><body>x</body></message>");
    assert!(matches!(r.message(msg(&chat), none, none), Outcome::Ignored(_)));
}

#[test]
fn occupants_present_at_join_are_not_announced_later_ones_are() {
    let mut r = room();
    let avail = |nick: &str, status: &str| {
        pres(&format!(
            "<presence xmlns='jabber:client' from='{ROOM}/{nick}'><x xmlns='http://jabber.org/protocol/muc#user'>\
             <item affiliation='none' role='participant'/>{status}</x></presence>"
        ))
    };
    let gone = |nick: &str, status: &str| {
        pres(&format!(
            "<presence xmlns='jabber:client' type='unavailable' from='{ROOM}/{nick}'>\
             <x xmlns='http://jabber.org/protocol/muc#user'><item affiliation='none' role='none'/>{status}</x></presence>"
        ))
    };
    assert!(matches!(r.presence(avail("early", ""), none), Outcome::Ignored(_)));
    assert_eq!(r.presence(avail("bridge", "<status code='110'/>"), none), Outcome::Joined);
    assert!(r.is_joined());
    let e = event(r.presence(avail("late", ""), none));
    assert_eq!(e.kind, InboundKind::Membership { change: Membership::Join });
    assert!(e.native_id.is_none());
    assert!(matches!(r.presence(avail("late", ""), none), Outcome::Ignored(_)), "a status update is not a join");
    assert!(matches!(r.presence(gone("late", "<status code='303'/>"), none), Outcome::Ignored("nick change")));
    let e = event(r.presence(gone("early", "<status code='307'/>"), none));
    assert_eq!(e.kind, InboundKind::Membership { change: Membership::Kick });
    let e = event(r.presence(gone("x", "<status code='301'/>"), none));
    assert_eq!(e.kind, InboundKind::Membership { change: Membership::Ban });
    r.reset();
    assert!(!r.is_joined());
}

#[test]
fn a_rooms_error_about_our_stanza_is_a_refusal_with_its_reason() {
    let mut r = room();
    let xml = format!(
        "<message xmlns='jabber:client' type='error' from='{ROOM}' id='txn9'><body>x</body>\
         <error type='auth'><forbidden xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>\
         <text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'>You are not currently connected to this chat</text></error></message>"
    );
    match r.message(msg(&xml), none, |o| o == "txn9") {
        Outcome::Refused { origin_id, reason } => {
            assert_eq!(origin_id, "txn9");
            assert_eq!(reason, "forbidden: You are not currently connected to this chat");
        }
        o => panic!("{o:?}"),
    }
    assert!(matches!(r.message(msg(&xml), none, none), Outcome::Ignored(_)), "not ours: ignored");
}

#[test]
fn a_refused_join_says_whether_the_nick_was_taken() {
    let mut r = room();
    let refusal = |condition: &str| {
        pres(&format!(
            "<presence xmlns='jabber:client' type='error' from='{ROOM}/bridge'><x xmlns='http://jabber.org/protocol/muc'/>\
             <error type='cancel'><{condition} xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></presence>"
        ))
    };
    assert_eq!(
        r.presence(refusal("conflict"), none),
        Outcome::JoinRefused { nick_conflict: true, reason: "conflict".into() }
    );
    assert_eq!(
        r.presence(refusal("registration-required"), none),
        Outcome::JoinRefused { nick_conflict: false, reason: "registration-required".into() }
    );
}

#[test]
fn an_http_upload_becomes_an_attachment_without_its_url_body() {
    let url = "https://upload.example.org/x1/photo.jpg";
    let inner = format!("<body>{url}</body><x xmlns='jabber:x:oob'><url>{url}</url></x>");
    let e = event(room().message(msg(&groupchat("Alice", "m1", "S1", &inner)), none, none));
    match e.kind {
        InboundKind::Message { draft, .. } => {
            assert_eq!(draft.body, "");
            assert_eq!(draft.attachments.len(), 1);
            assert_eq!(draft.attachments[0].url, url);
            assert_eq!(draft.attachments[0].filename.as_deref(), Some("photo.jpg"));
        }
        k => panic!("{k:?}"),
    }
    let inner = "<body> </body><x xmlns='jabber:x:oob'><url>file:///etc/passwd</url></x>";
    assert!(matches!(room().message(msg(&groupchat("Alice", "m2", "S2", inner)), none, none), Outcome::Ignored(_)));
}

#[test]
fn an_occupant_that_changes_nick_stays_the_same_bridged_user() {
    let mut r = room();
    let presence = |nick: &str, kind: &str, item: &str, status: &str| {
        pres(&format!(
            "<presence xmlns='jabber:client' {kind} from='{ROOM}/{nick}'><x xmlns='http://jabber.org/protocol/muc#user'>\
             <item affiliation='none' role='participant'{item}/>{status}</x></presence>"
        ))
    };
    assert_eq!(r.presence(presence("bridge", "", "", "<status code='110'/>"), none), Outcome::Joined);
    assert!(matches!(event(r.presence(presence("Alice", "", "", ""), none)).kind, InboundKind::Membership { .. }));
    let e = event(r.message(msg(&groupchat("Alice", "m1", "S1", "<body>hi</body>")), none, none));
    assert_eq!(e.sender.native_id, format!("{ROOM}/Alice"));
    // Alice becomes Alicia, then Ally: the unavailable presence with 303 names the new nick.
    for (old, new) in [("Alice", "Alicia"), ("Alicia", "Ally")] {
        let change = presence(old, "type='unavailable'", &format!(" nick='{new}'"), "<status code='303'/>");
        assert_eq!(r.presence(change, none), Outcome::Ignored("nick change"));
        assert!(matches!(r.presence(presence(new, "", "", ""), none), Outcome::Ignored(_)), "{new} is no newcomer");
    }
    let e = event(r.message(msg(&groupchat("Ally", "m2", "S2", "<body>renamed</body>")), none, none));
    assert_eq!(e.sender.native_id, format!("{ROOM}/Alice"), "the same bridged user");
    assert_eq!(e.sender.display_name.as_deref(), Some("Ally"), "shown with the new nick");
    let fix = "<body>hello</body><replace xmlns='urn:xmpp:message-correct:0' id='m1'/>";
    let e = event(r.message(msg(&groupchat("Ally", "m3", "S3", fix)), none, none));
    assert_eq!(e.kind, InboundKind::Edit { target: NativeId("S1".into()), draft: MessageDraft::plain("hello") });
    // Someone new who takes the old nick is someone else.
    let joined = event(r.presence(presence("Alice", "", "", ""), none));
    assert!(matches!(joined.kind, InboundKind::Membership { .. }));
    let e = event(r.message(msg(&groupchat("Alice", "m4", "S4", "<body>I am new</body>")), none, none));
    assert_ne!(e.sender.native_id, format!("{ROOM}/Alice"), "not the renamed occupant");
    assert_eq!(e.sender.native_id, joined.sender.native_id);
    assert_eq!(e.sender.display_name.as_deref(), Some("Alice"));
    let e = event(r.message(msg(&groupchat("Ally", "m6", "S6", "<body>still me</body>")), none, none));
    assert_eq!(e.sender.native_id, format!("{ROOM}/Alice"), "the renamed occupant keeps theirs");
    // A departure ends the identity: whoever takes Ally later is a new user.
    let e = event(r.presence(presence("Ally", "type='unavailable'", "", ""), none));
    assert_eq!(e.sender.native_id, format!("{ROOM}/Alice"));
    assert!(matches!(event(r.presence(presence("Ally", "", "", ""), none)).kind, InboundKind::Membership { .. }));
    let e = event(r.message(msg(&groupchat("Ally", "m5", "S5", "<body>another</body>")), none, none));
    assert_eq!(e.sender.native_id, format!("{ROOM}/Ally"));
}

#[test]
fn xep_0372_mentions_become_mimi_mentions_after_a_cut_reply_fallback() {
    let mut r = room().with_domain("bridge.test");
    r.set_bridged("Bob", Some("mimi://bridge.test/u/bob"));
    let mut without_dan = room().with_domain("bridge.test");
    without_dan.set_bridged("Bob", Some("mimi://bridge.test/u/bob"));
    let dan_here = format!(
        "<presence xmlns='jabber:client' from='{ROOM}/Dan'><x xmlns='http://jabber.org/protocol/muc#user'>\
         <item affiliation='none' role='participant'/></x></presence>"
    );
    let _ = r.presence(pres(&dan_here), none);
    // "> Carol: hi\n" (12 code points) is the reply fallback; the mentions follow it.
    let inner = format!(
        "<body>&gt; Carol: hi\n@Bob and Dan, ok?</body>\
         <reply xmlns='urn:xmpp:reply:0' id='S0'/>\
         <fallback xmlns='urn:xmpp:fallback:0' for='urn:xmpp:reply:0'><body start='0' end='12'/></fallback>\
         <reference xmlns='urn:xmpp:reference:0' type='mention' begin='12' end='16' uri='xmpp:{ROOM}/Bob'/>\
         <reference xmlns='urn:xmpp:reference:0' type='mention' begin='21' end='24' uri='xmpp:{ROOM}/Dan'/>\
         <reference xmlns='urn:xmpp:reference:0' type='mention' begin='0' end='3' uri='xmpp:{ROOM}/Carol'/>"
    );
    let e = event(r.message(msg(&groupchat("Alice", "m1", "S1", &inner)), none, none));
    let InboundKind::Message { draft, .. } = e.kind else { panic!("a message") };
    assert_eq!(draft.format, TextFormat::Markdown);
    let dan = LegacyUser::new(AccountId::new("xmpp", "test").expect("id"), format!("{ROOM}/Dan")).uri("bridge.test");
    assert_eq!(
        mimi_content::markdown::mentions(&draft.body),
        [("@Bob".to_owned(), "mimi://bridge.test/u/bob".to_owned()), ("@Dan".to_owned(), dan)],
        "{}",
        draft.body
    );
    // A reference to a nick no occupant holds names no one: it stays text.
    let e = event(without_dan.message(msg(&groupchat("Alice", "m3", "S3", &inner)), none, none));
    let InboundKind::Message { draft, .. } = e.kind else { panic!("a message") };
    assert_eq!(
        mimi_content::markdown::mentions(&draft.body),
        [("@Bob".to_owned(), "mimi://bridge.test/u/bob".to_owned())],
        "{}",
        draft.body
    );
    // Without a domain (or references) the body is what it was.
    let e = event(room().message(msg(&groupchat("Alice", "m2", "S2", &inner)), none, none));
    let InboundKind::Message { draft, .. } = e.kind else { panic!("a message") };
    assert_eq!((draft.body.as_str(), draft.format), ("@Bob and Dan, ok?", TextFormat::Plain));
}
