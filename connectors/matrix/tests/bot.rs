//! The Matrix connector in bot mode against a real Synapse (no appservice registered): one ordinary account logs
//! in, relays the other side as `name: text`, keeps one device across restarts, bridges once and in order what was
//! said while it was down, reads and writes an end-to-end-encrypted room (the Matrix user there is a matrix-sdk
//! client with its own device), and, kicked, says by whom, even when it was down then and invited back meanwhile.

use bridge_api::event::{InboundKind, MessageDraft};
use bridge_api::{Account, AccountContext, AccountId, Connector, Health, LegId, PortalId};
use bridge_core::repo::{MlsIdentity, PortalRecord};
use bridge_core::router::RouterHandle;
use bridge_testkit::loopback::LoopbackNetwork;
use connector_matrix::{Config, MatrixConnector, Mode};
use harness::Synapse;
use matrix_sdk::config::SyncSettings;
use matrix_sdk::deserialized_responses::TimelineEventKind;
use matrix_sdk::ruma::events::room::message::RoomMessageEventContent;
use serde_json::{Value, json};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

mod common;
use common::{
    Client, Kept, PNG, await_body, await_delivered, delivered_bodies, enc, encrypting_client, router, wait_health,
};

const BOT: &str = "relay";

/// Synapse with the bot's account (its registration device logged out: the bot's own login is its one device),
/// alice, and a room of alice's (`initial_state` added to its creation).
struct World {
    hs: Synapse,
    alice: Client,
    room: String,
}

fn world(initial_state: Value) -> World {
    let hs = Synapse::start().expect("synapse starts (installed by ./scripts/test)");
    hs.register_bot_account(BOT).expect("bot account");
    let alice = Client::new(&hs.url(), hs.register_user("alice").expect("alice"));
    let body = json!({"preset": "public_chat", "name": "bot test", "initial_state": initial_state});
    let (status, v) =
        hs.request("POST", "/_matrix/client/v3/createRoom", Some(&alice.user.access_token), Some(&body)).expect("room");
    assert_eq!(status, 200, "{v}");
    let room = v["room_id"].as_str().expect("room id").to_owned();
    World { hs, alice, room }
}

fn config(hs: &Synapse) -> Config {
    Config {
        mode: Mode::Bot,
        homeserver_url: hs.url(),
        server_name: hs.server_name.clone(),
        listen: None,
        url: None,
        registration_id: String::new(),
        ghost_prefix: "mimi_".into(),
        bot_localpart: BOT.into(),
        as_token: String::new(),
        hs_token: String::new(),
        password: Some(format!("pw-{BOT}")),
        access_token: None,
        relay_format: "{name}: {text}".into(),
        // Bot mode's matrix-sdk store encrypted (the restarts open it again); the daemon's test has none.
        store_passphrase: Some("a bot passphrase".into()),
        encryption: true,
    }
}

/// A router with a loopback leg `#lb` and the bot, linked to the Matrix room in one portal.
struct Bridge {
    router: RouterHandle,
    lb: Arc<LoopbackNetwork>,
    bot: Arc<dyn Account>,
    media: Arc<Kept>,
    _store: tempfile::TempDir,
}

async fn bridge(w: &World, state: &Path) -> Bridge {
    let (router, store) = router().await;
    let lb_id = AccountId::parse("lb.irc").expect("id");
    let lb = LoopbackNetwork::new(lb_id.clone(), AccountContext::new(lb_id, router.clone(), "b.test"));
    router.add_account(lb.clone());
    let portal = PortalId::new("p").expect("portal");
    router.create_portal(PortalRecord { id: portal.clone(), mls_identity: MlsIdentity::Shared }).await.expect("portal");
    router.link(lb.leg("#lb"), &portal).await.expect("link");
    let media = Arc::new(Kept::default());
    let bot = start_bot(w, state, &router, &media).await;
    let leg = LegId::new(bot.id().clone(), w.room.clone()).expect("leg");
    router.link_and_join(leg, &portal).await.expect("link").expect("running").expect("join");
    Bridge { router, lb, bot, media, _store: store }
}

/// The bot account on `state` (as after a daemon restart), attached to `router`, connected.
async fn start_bot(w: &World, state: &Path, router: &RouterHandle, media: &Arc<Kept>) -> Arc<dyn Account> {
    let id = AccountId::parse("matrix.hs").expect("id");
    let ctx = AccountContext::new(id.clone(), router.clone(), "b.test").with_state_dir(state).with_media(media.clone());
    let bot = MatrixConnector::with_axum_serve().start(id, config(&w.hs), ctx).await.expect("bot starts");
    router.attach_account(bot.clone()).await;
    wait_health(&bot, |h| *h == Health::Connected, "the bot connected").await;
    bot
}

/// The bot's devices, as the homeserver lists them (with the token of its kept session).
fn bot_devices(w: &World, state: &Path) -> Vec<Value> {
    let session: Value =
        serde_json::from_slice(&std::fs::read(state.join("session.json")).expect("session kept")).expect("json");
    let token = session["access_token"].as_str().expect("token");
    let (status, v) = w.hs.request("GET", "/_matrix/client/v3/devices", Some(token), None).expect("devices");
    assert_eq!(status, 200, "{v}");
    v["devices"].as_array().cloned().unwrap_or_default()
}

/// alice kicks or invites (`action`) the bot, with `reason` if given.
async fn bot_membership(w: &World, action: &str, reason: Option<&str>) {
    let path = format!("/_matrix/client/v3/rooms/{}/{action}", enc(&w.room));
    let mut body = json!({"user_id": w.hs.user_id(BOT)});
    if let Some(reason) = reason {
        body["reason"] = json!(reason);
    }
    w.alice.call(reqwest::Method::POST, &path, Some(body)).await.expect(action);
}

/// bob says `text` on the loopback leg, with native id `id`.
async fn say(lb: &LoopbackNetwork, id: &str, text: &str) {
    let kind = InboundKind::Message { draft: MessageDraft::plain(text), reply_to: None };
    lb.say_with_id("#lb", "bob", id, kind).await.expect("accepted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bot_relays_both_ways_keeps_one_device_and_bridges_what_was_said_while_down_once_in_order() {
    let w = world(json!([]));
    let before = json!({"msgtype": "m.text", "body": "said before the bridge came"});
    w.alice.send(&w.room, "m.room.message", before).await.expect("send");
    let state = tempfile::tempdir().expect("state dir");
    let b = bridge(&w, state.path()).await;

    // Matrix → the other side, under alice's name; the other side → Matrix, as the bot with bob's name.
    w.alice
        .send(&w.room, "m.room.message", json!({"msgtype": "m.text", "body": "hello from matrix"}))
        .await
        .expect("send");
    await_delivered(&b.lb, "hello from matrix").await;
    say(&b.lb, "l1", "hi from irc").await;
    let relayed = await_body(&w.alice, &w.room, "bob: hi from irc").await;
    assert_eq!(relayed["sender"], w.hs.user_id(BOT), "{relayed}");
    let from_alice = b.lb.delivered().into_iter().find(|e| delivered_is(e, "hello from matrix")).expect("delivered");
    let alice_id = bridge_api::LegacyUser::new(AccountId::parse("matrix.hs").expect("id"), &w.alice.user.user_id);
    assert_eq!(from_alice.sender.uri, alice_id.uri("b.test"), "alice herself, not the bot");

    // Down: 50 messages (five times what a sync's timeline shows — Synapse's default limit of 10, the bot syncs
    // without a filter — so the bot reads back from /messages), then up again.
    b.bot.shutdown().await;
    for i in 0..50 {
        let body = format!("while down {i}");
        w.alice.send(&w.room, "m.room.message", json!({"msgtype": "m.text", "body": body})).await.expect("send");
    }
    let bot = start_bot(&w, state.path(), &b.router, &b.media).await;
    await_delivered(&b.lb, "while down 49").await;
    let down: Vec<String> = delivered_bodies(&b.lb).into_iter().filter(|t| t.starts_with("while down")).collect();
    let said: Vec<String> = (0..50).map(|i| format!("while down {i}")).collect();
    assert_eq!(down, said, "each once, in order");

    // Two more restarts: still one device, and nothing bridged again.
    for _ in 0..2 {
        bot.shutdown().await;
        start_bot(&w, state.path(), &b.router, &b.media).await;
    }
    w.alice
        .send(&w.room, "m.room.message", json!({"msgtype": "m.text", "body": "after restarts"}))
        .await
        .expect("send");
    await_delivered(&b.lb, "after restarts").await;
    let bodies = delivered_bodies(&b.lb);
    assert_eq!(bodies.iter().filter(|t| t.starts_with("while down")).count(), 50, "nothing bridged twice: {bodies:?}");
    assert_eq!(bodies.iter().filter(|t| *t == "hello from matrix").count(), 1, "{bodies:?}");
    let devices = bot_devices(&w, state.path());
    assert_eq!(devices.len(), 1, "one device after three restarts: {devices:?}");
    assert_eq!(devices[0]["display_name"], "mimi-bridge");

    // Unlinked, the bot leaves; what is said then is not bridged when the room is linked again.
    let leg = LegId::new(AccountId::parse("matrix.hs").expect("id"), w.room.clone()).expect("leg");
    b.router.unlink_and_leave(&leg).await.expect("unlinked");
    let members = format!("/_matrix/client/v3/rooms/{}/joined_members", enc(&w.room));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while w.alice.call(reqwest::Method::GET, &members, None).await.expect("members")["joined"]
        .get(w.hs.user_id(BOT))
        .is_some()
    {
        assert!(tokio::time::Instant::now() < deadline, "the bot never left");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    w.alice
        .send(&w.room, "m.room.message", json!({"msgtype": "m.text", "body": "while unlinked"}))
        .await
        .expect("send");
    let portal = PortalId::new("p").expect("portal");
    b.router.link_and_join(leg, &portal).await.expect("link").expect("running").expect("join");
    w.alice.send(&w.room, "m.room.message", json!({"msgtype": "m.text", "body": "linked again"})).await.expect("send");
    let bodies = await_delivered(&b.lb, "linked again").await;
    for never in ["said before the bridge came", "while unlinked"] {
        assert!(!bodies.iter().any(|t| t == never), "{never:?} was bridged: {bodies:?}");
    }
    b.router.shutdown().await;
}

fn delivered_is(e: &bridge_api::OutboundEvent, body: &str) -> bool {
    matches!(&e.kind, bridge_api::OutboundKind::Message { draft, .. } if draft.body == body)
}

/// A world whose room is end-to-end encrypted.
fn encrypted_world() -> World {
    world(json!([{"type": "m.room.encryption", "state_key": "", "content": {"algorithm": "m.megolm.v1.aes-sha2"}}]))
}

/// alice's end-to-end-encrypting client (a device of her own, its store in `store`) and the room, once she sees
/// the bot in it.
async fn alice_encrypting(w: &World, store: &Path) -> (matrix_sdk::Client, matrix_sdk::Room) {
    let trust = matrix_sdk_crypto::TrustRequirement::Untrusted;
    encrypting_client(&w.hs.url(), &w.alice.user.user_id, store, trust, &w.room, &w.hs.user_id(BOT)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bot_reads_and_writes_an_encrypted_room() {
    let w = encrypted_world();
    let state = tempfile::tempdir().expect("state dir");
    let b = bridge(&w, state.path()).await;
    let alice_store = tempfile::tempdir().expect("alice's store");
    let (alice, room) = alice_encrypting(&w, alice_store.path()).await;
    let room_id = room.room_id().to_owned();
    room.send(RoomMessageEventContent::text_plain("a secret hello")).await.expect("alice sends, encrypted");
    await_delivered(&b.lb, "a secret hello").await;
    // The bot's device is cross-signed: its identity is published.
    let query = json!({"device_keys": {w.hs.user_id(BOT): []}});
    let keys = w.alice.call(reqwest::Method::POST, "/_matrix/client/v3/keys/query", Some(query)).await.expect("keys");
    assert!(keys["master_keys"][w.hs.user_id(BOT)].is_object(), "cross-signing keys published: {keys}");
    assert!(keys["self_signing_keys"][w.hs.user_id(BOT)].is_object(), "{keys}");

    // The answer reaches alice encrypted, and she decrypts it.
    say(&b.lb, "s1", "a secret reply").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    'found: loop {
        let r = alice.sync_once(SyncSettings::default().timeout(Duration::from_secs(1))).await.expect("sync");
        for ev in r.rooms.joined.get(&room_id).map(|u| u.timeline.events.clone()).unwrap_or_default() {
            let body = ev.raw().get_field::<Value>("content").ok().flatten().map(|c| c["body"].clone());
            if body == Some(json!("bob: a secret reply")) {
                assert!(matches!(ev.kind, TimelineEventKind::Decrypted(_)), "sent encrypted: {:?}", ev.kind);
                break 'found;
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "alice never read the bot's answer");
    }
    // A file from the other side is the bot's, uploaded encrypted: alice downloads and decrypts the same bytes.
    let png = hex::decode(PNG).expect("png");
    let attachment =
        bridge_api::MediaStore::put(&*b.media, png.clone(), "image/png", Some("from-irc.png")).await.expect("kept");
    let draft = MessageDraft { attachments: vec![attachment], ..MessageDraft::plain("") };
    b.lb.say_with_id("#lb", "bob", "f1", InboundKind::Message { draft, reply_to: None }).await.expect("accepted");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let image = 'image: loop {
        let r = alice.sync_once(SyncSettings::default().timeout(Duration::from_secs(1))).await.expect("sync");
        for ev in r.rooms.joined.get(&room_id).map(|u| u.timeline.events.clone()).unwrap_or_default() {
            use matrix_sdk::ruma::events::room::message::{MessageType, SyncRoomMessageEvent};
            use matrix_sdk::ruma::events::{AnySyncMessageLikeEvent, AnySyncTimelineEvent};
            if let Ok(AnySyncTimelineEvent::MessageLike(AnySyncMessageLikeEvent::RoomMessage(
                SyncRoomMessageEvent::Original(m),
            ))) = ev.raw().deserialize()
                && let MessageType::Image(image) = m.content.msgtype
            {
                assert!(matches!(ev.kind, TimelineEventKind::Decrypted(_)), "sent encrypted");
                break 'image image;
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "the bot's file never reached alice");
    };
    assert!(matches!(image.source, matrix_sdk::ruma::events::room::MediaSource::Encrypted(_)), "an EncryptedFile");
    let request = matrix_sdk::media::MediaRequestParameters {
        source: image.source.clone(),
        format: matrix_sdk::media::MediaFormat::File,
    };
    let got = alice.media().get_media_content(&request, false).await.expect("alice downloads it");
    assert_eq!((got, image.body.as_str()), (png, "from-irc.png"), "the same bytes, decrypted by alice");

    // A file alice sends (uploaded encrypted, its key in the encrypted event) is decrypted by the bot.
    let png = hex::decode(PNG).expect("png");
    room.send_attachment("secret.png", &mime::IMAGE_PNG, png.clone(), Default::default()).await.expect("file sent");
    let file = common::await_delivered_file(&b.lb).await;
    assert_eq!((file.filename.as_deref(), file.media_type.as_str()), (Some("secret.png"), "image/png"));
    let kept = b.media.0.lock().expect("lock").iter().find(|(u, ..)| *u == file.url).map(|(_, bytes, _)| bytes.clone());
    assert_eq!(kept, Some(png), "the decrypted bytes, not the ciphertext");

    // In the room itself it is an `m.room.encrypted` event: the homeserver never saw the text.
    let path = format!("/_matrix/client/v3/rooms/{}/messages?dir=b&limit=20", enc(&w.room));
    let v = w.alice.call(reqwest::Method::GET, &path, None).await.expect("messages");
    let from_bot: Vec<&Value> =
        v["chunk"].as_array().into_iter().flatten().filter(|e| e["sender"] == w.hs.user_id(BOT).as_str()).collect();
    assert!(from_bot.iter().any(|e| e["type"] == "m.room.encrypted"), "{from_bot:?}");
    assert!(!v.to_string().contains("a secret reply"), "no plaintext on the homeserver");
    b.router.shutdown().await;
}

/// The keys of an encrypted message reach the bot only after the message: the portal hears at once that alice
/// said something the bridge cannot decrypt yet, and the message itself once its keys arrive — once.
///
/// How the keys come late: alice starts a new room key while the bot is stopped and sends; the to-device message
/// carrying the key to the bot's device is taken out of Synapse's inbox before the bot syncs, and sent to it again
/// (the same Olm-encrypted content, from alice) after the bot has seen the message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encrypted_message_whose_keys_come_late_is_a_notice_then_bridged_once() {
    let w = encrypted_world();
    let state = tempfile::tempdir().expect("state dir");
    let b = bridge(&w, state.path()).await;
    let alice_store = tempfile::tempdir().expect("alice's store");
    let (_alice, room) = alice_encrypting(&w, alice_store.path()).await;
    room.send(RoomMessageEventContent::text_plain("keys on time")).await.expect("sent");
    await_delivered(&b.lb, "keys on time").await;

    b.bot.shutdown().await;
    room.discard_room_key().await.expect("a new room key for the next message");
    room.send(RoomMessageEventContent::text_plain("keys come late")).await.expect("sent");
    let session: Value =
        serde_json::from_slice(&std::fs::read(state.path().join("session.json")).expect("session")).expect("json");
    let device = session["device_id"].as_str().expect("device").to_owned();
    let inbox = format!("FROM device_inbox WHERE user_id = '{}' AND device_id = '{device}'", w.hs.user_id(BOT));
    let held = w.hs.sql(&format!("SELECT message_json {inbox}")).expect("inbox");
    w.hs.sql(&format!("DELETE {inbox}")).expect("held back");
    let held: Vec<Value> = held.lines().map(|l| serde_json::from_str(l).expect("a to-device message")).collect();
    assert!(held.iter().any(|m| m["type"] == "m.room.encrypted"), "the key was on its way: {held:?}");

    // The bot comes back: the message is there, its key is not.
    start_bot(&w, state.path(), &b.router, &b.media).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !delivered_bodies(&b.lb).iter().any(|t| t.contains("cannot decrypt yet")) {
        assert!(tokio::time::Instant::now() < deadline, "no notice: {:?}", delivered_bodies(&b.lb));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let notice = b.lb.delivered().into_iter().find(|e| delivered_is(e, connector_matrix::bot::UNDECRYPTED_NOTICE));
    let notice = notice.expect("the notice");
    let alice_id = bridge_api::LegacyUser::new(AccountId::parse("matrix.hs").expect("id"), &w.alice.user.user_id);
    assert_eq!(notice.sender.uri, alice_id.uri("b.test"), "from alice");
    assert!(!delivered_bodies(&b.lb).iter().any(|t| t == "keys come late"), "not decrypted without its key");

    // The key comes: the message follows, once.
    for (n, m) in held.iter().filter(|m| m["type"] == "m.room.encrypted").enumerate() {
        let body = json!({"messages": {w.hs.user_id(BOT): {&device: m["content"]}}});
        let path = format!("/_matrix/client/v3/sendToDevice/m.room.encrypted/late{n}");
        w.alice.call(reqwest::Method::PUT, &path, Some(body)).await.expect("sent to the bot's device");
    }
    await_delivered(&b.lb, "keys come late").await;
    w.alice.send(&w.room, "m.room.message", json!({"msgtype": "m.text", "body": "then on"})).await.expect("send");
    await_delivered(&b.lb, "then on").await;
    let bodies = delivered_bodies(&b.lb);
    assert_eq!(bodies.iter().filter(|t| *t == "keys come late").count(), 1, "{bodies:?}");
    assert_eq!(bodies.iter().filter(|t| t.contains("cannot decrypt yet")).count(), 1, "{bodies:?}");
    b.router.shutdown().await;
}

/// Kicked from the room, the bot bridges what was said up to its removal (a sync gives it under `leave`), the
/// portal hears from alice that she removed it and why, and the bot does not come back by itself; invited back, it
/// joins and bridges both ways again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kicked_bot_says_who_removed_it_and_waits_to_be_invited_back() {
    let w = world(json!([]));
    let state = tempfile::tempdir().expect("state dir");
    let b = bridge(&w, state.path()).await;
    let bot = w.hs.user_id(BOT);
    let text = |body: &str| json!({"msgtype": "m.text", "body": body});
    w.alice.send(&w.room, "m.room.message", text("just before the kick")).await.expect("send");
    bot_membership(&w, "kick", Some("too chatty")).await;

    let bodies = await_delivered(&b.lb, "just before the kick").await;
    assert_eq!(bodies.iter().filter(|t| *t == "just before the kick").count(), 1, "{bodies:?}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let notice = loop {
        if let Some(n) = b.lb.delivered().into_iter().find(|e| {
            matches!(&e.kind, bridge_api::OutboundKind::Message { draft, .. }
                if draft.body.ends_with("from the Matrix room: too chatty"))
        }) {
            break n;
        }
        assert!(tokio::time::Instant::now() < deadline, "no notice: {:?}", delivered_bodies(&b.lb));
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let alice_id = bridge_api::LegacyUser::new(AccountId::parse("matrix.hs").expect("id"), &w.alice.user.user_id);
    assert_eq!(notice.sender.uri, alice_id.uri("b.test"), "from alice, who removed it");

    // What the other side says meanwhile is refused, not held until the bot is back (that would hold up the leg).
    say(&b.lb, "k0", "said while the bot is out").await;

    // Not back by itself, over several rounds of its sync loop.
    let members = format!("/_matrix/client/v3/rooms/{}/joined_members", enc(&w.room));
    for _ in 0..30 {
        let joined = w.alice.call(reqwest::Method::GET, &members, None).await.expect("members");
        assert!(joined["joined"].get(&bot).is_none(), "the bot rejoined by itself");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Invited back: it joins, and bridges both ways.
    bot_membership(&w, "invite", None).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while w.alice.call(reqwest::Method::GET, &members, None).await.expect("members")["joined"].get(&bot).is_none() {
        assert!(tokio::time::Instant::now() < deadline, "the bot never came back after the invite");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    w.alice.send(&w.room, "m.room.message", text("welcome back")).await.expect("send");
    await_delivered(&b.lb, "welcome back").await;
    say(&b.lb, "k1", "thanks").await;
    await_body(&w.alice, &w.room, "bob: thanks").await;
    let path = format!("/_matrix/client/v3/rooms/{}/messages?dir=b&limit=50", enc(&w.room));
    let recent = w.alice.call(reqwest::Method::GET, &path, None).await.expect("messages");
    let said_out = recent["chunk"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|e| e["content"]["body"].as_str().is_some_and(|b| b.contains("said while the bot is out")));
    assert!(!said_out, "a line refused while the bot was out arrived later: {recent}");
    b.router.shutdown().await;
}

/// Kicked and invited back while the bridge is down, the bot still bridges what was said before the kick, and the
/// kick (its next sync shows the room joined again, with the kick and the rejoin in one timeline); what was said
/// while it was out is not bridged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bot_kicked_and_invited_back_while_down_bridges_what_came_before_the_kick() {
    let w = world(json!([]));
    let state = tempfile::tempdir().expect("state dir");
    let b = bridge(&w, state.path()).await;
    let text = |body: &str| json!({"msgtype": "m.text", "body": body});
    w.alice.send(&w.room, "m.room.message", text("while up")).await.expect("send");
    await_delivered(&b.lb, "while up").await;

    b.bot.shutdown().await;
    w.alice.send(&w.room, "m.room.message", text("down, before the kick")).await.expect("send");
    bot_membership(&w, "kick", Some("be right back")).await;
    w.alice.send(&w.room, "m.room.message", text("down, the bot out")).await.expect("send");
    bot_membership(&w, "invite", None).await;

    start_bot(&w, state.path(), &b.router, &b.media).await;
    await_delivered(&b.lb, "down, before the kick").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !delivered_bodies(&b.lb).iter().any(|t| t.ends_with("from the Matrix room: be right back")) {
        assert!(tokio::time::Instant::now() < deadline, "no kick notice: {:?}", delivered_bodies(&b.lb));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    w.alice.send(&w.room, "m.room.message", text("back again")).await.expect("send");
    let bodies = await_delivered(&b.lb, "back again").await;
    for once in ["while up", "down, before the kick", "back again"] {
        assert_eq!(bodies.iter().filter(|t| *t == once).count(), 1, "{once:?}: {bodies:?}");
    }
    assert!(!bodies.iter().any(|t| t == "down, the bot out"), "said while the bot was out: {bodies:?}");
    let order: Vec<&String> =
        bodies.iter().filter(|t| t.starts_with("down, before") || t.ends_with("be right back")).collect();
    assert!(order.len() == 2 && order[0] == "down, before the kick", "in order: {bodies:?}");
    b.router.shutdown().await;
}
