//! The daemon binary with a real Matrix appservice account: `generate-registration` writes what Synapse loads, a Matrix
//! room, an IRC channel (ngIRCd) and a native MLS client share one portal. A Matrix user's message, emote, reply, edit,
//! reaction, its redaction, a message's redaction and a mention reach the native client as the right MIMI content; the
//! native client's message, reply, edit and emote reach the Matrix room as its ghost; a transaction delivered twice is
//! processed once; the IRC channel and the Matrix room talk through the portal; an encrypted message the bridge cannot
//! read reaches the portal as a notice.

use crate::common::client::{client, messages, server_of};
use crate::common::{Daemon, cli, write_config};
use harness::{IrcClient, MatrixUser, Ngircd, Synapse, SynapseOptions};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const SERVER_NAME: &str = "hs.test";
pub(crate) const ROOM: &str = "mimi://bridge.example.org/r/rust";

/// The `[matrix.hs]` table (tokens in files the registration command creates) and the `rust` portal's legs.
fn matrix_config(dir: &Path, homeserver: &str, listen: u16, room_id: &str, irc: &str) -> String {
    format!(
        "legs = [{{ account = \"matrix.hs\", room = \"{room_id}\" }}, {{ account = \"irc.t\", room = \"#chan\" }}]\n\n\
         [matrix.hs]\nmode = \"appservice\"\nhomeserver_url = \"{homeserver}\"\nserver_name = \"{SERVER_NAME}\"\n\
         listen = \"127.0.0.1:{listen}\"\nas_token_file = {as_token:?}\nhs_token_file = {hs_token:?}\n\
         registration_id = \"mimi-bridge-it\"\n\n[irc.t]\nserver = \"{irc}\"\nnick = \"bridge\"\n",
        as_token = dir.join("as.token").display().to_string(),
        hs_token = dir.join("hs.token").display().to_string(),
    )
}

/// A Matrix user's client-server call; panics unless it succeeds.
pub(crate) fn call(hs: &Synapse, user: &MatrixUser, method: &str, path: &str, body: Option<Value>) -> Value {
    let (status, v) = hs.request(method, path, Some(&user.access_token), body.as_ref()).expect("homeserver answers");
    assert_eq!(status, 200, "{method} {path}: {v}");
    v
}

/// Sends an event as `user`; its event id.
pub(crate) fn send(hs: &Synapse, user: &MatrixUser, room: &str, txn: &str, event_type: &str, content: Value) -> String {
    let v = call(hs, user, "PUT", &format!("/_matrix/client/v3/rooms/{room}/send/{event_type}/{txn}"), Some(content));
    v["event_id"].as_str().expect("event id").to_owned()
}

/// The room's timeline events of type `m.room.message`, oldest first, as `user` sees them.
pub(crate) fn room_messages(hs: &Synapse, user: &MatrixUser, room: &str) -> Vec<Value> {
    room_events(hs, user, room).into_iter().filter(|e| e["type"] == "m.room.message").collect()
}

/// Every event of `room` (its first 500), as `user` reads them.
fn room_events(hs: &Synapse, user: &MatrixUser, room: &str) -> Vec<Value> {
    let v = call(hs, user, "GET", &format!("/_matrix/client/v3/rooms/{room}/messages?dir=f&limit=500"), None);
    v["chunk"].as_array().cloned().unwrap_or_default()
}

/// Waits until the room has a message event `pred` accepts; returns it.
pub(crate) fn await_matrix(
    hs: &Synapse,
    user: &MatrixUser,
    room: &str,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(e) = room_messages(hs, user, room).into_iter().find(|e| pred(e)) {
            return e;
        }
        assert!(Instant::now() < deadline, "{what} never reached the Matrix room");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The next `n` messages the native client hears.
pub(crate) fn hear(state: &Path, server: &str, n: usize) -> Vec<Value> {
    let got =
        messages(&client(state, server, &["listen", ROOM, "--json", "--count", &n.to_string(), "--timeout", "30"]));
    assert_eq!(got.len(), n, "the native client heard {got:?}");
    got
}

/// A running bridge: Synapse with the generated registration, ngIRCd, the daemon with a `rust` portal linking a
/// Matrix room (created by `mx`) and `#chan`, and alice, a native client who joined the portal.
pub(crate) struct Bridge {
    pub dir: tempfile::TempDir,
    pub hs: Synapse,
    pub irc: Ngircd,
    pub mx: MatrixUser,
    pub room: String,
    pub d: Daemon,
    pub listen: u16,
    pub server: String,
    pub alice: PathBuf,
    pub cfg: PathBuf,
}

/// Starts a [`Bridge`]; `extra` is appended to the daemon's config.
pub(crate) fn start_bridge(extra: &str) -> Bridge {
    let dir = tempfile::tempdir().expect("tempdir");
    let listen = harness::free_port().expect("port");
    // The registration comes first (Synapse loads it at start); the homeserver URL is not in it.
    let (cfg, _) =
        write_config(dir.path(), &matrix_config(dir.path(), "http://127.0.0.1:1", listen, "!x:hs.test", "127.0.0.1:1"));
    let reg = dir.path().join("registration.yaml");
    let (code, out, err) = cli(&[
        "generate-registration",
        "--config",
        cfg.to_str().expect("utf-8"),
        "--out",
        reg.to_str().expect("utf-8"),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let hs = Synapse::start_with(SynapseOptions {
        appservice_registrations: vec![reg],
        server_name: Some(SERVER_NAME.into()),
    })
    .expect("synapse starts (installed by ./scripts/test)");
    let irc = Ngircd::start().expect("ngircd starts (installed by ./scripts/test)");
    let mx = hs.register_user("mxuser").expect("matrix user");
    let room = call(&hs, &mx, "POST", "/_matrix/client/v3/createRoom", Some(json!({"preset": "public_chat"})));
    let room = room["room_id"].as_str().expect("room id").to_owned();
    let config = format!("{}{extra}", matrix_config(dir.path(), &hs.url(), listen, &room, &irc.addr()));
    let (cfg, _) = write_config(dir.path(), &config);
    let cfg_s = cfg.to_str().expect("utf-8");
    let (code, out, err) = cli(&["check-config", cfg_s]);
    assert_eq!(code, 0, "{out}{err}");

    let mut d = Daemon::start(&cfg, &[]);
    let bot = format!("@mimi-bridge:{SERVER_NAME}");
    let deadline = Instant::now() + Duration::from_secs(60);
    let members = format!("/_matrix/client/v3/rooms/{room}/joined_members");
    while call(&hs, &mx, "GET", &members, None)["joined"].get(&bot).is_none() {
        assert!(Instant::now() < deadline, "the appservice user never joined: {}", d.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    let server = server_of(&cfg);
    let alice = dir.path().join("alice");
    client(&alice, &server, &["register", "alice"]);
    client(&alice, &server, &["join", ROOM]);
    Bridge { dir, hs, irc, mx, room, d, listen, server, alice, cfg }
}

/// A Matrix user's message, emote, reply, edit, reaction, the reaction's redaction and the message's redaction, each
/// reaching the native client at `alice` as the right MIMI content (in either mode).
pub(crate) fn matrix_events_reach_the_native_client(
    hs: &Synapse,
    mx: &MatrixUser,
    room: &str,
    alice: &Path,
    server: &str,
) {
    let first = send(hs, mx, room, "m1", "m.room.message", json!({"msgtype": "m.text", "body": "hello from matrix"}));
    let got = hear(alice, server, 1);
    assert_eq!(got[0]["text"], "hello from matrix", "{got:?}");
    assert_eq!(got[0]["legacy_sender"]["network"], "matrix", "{got:?}");
    let first_id = got[0]["message_id"].as_str().expect("id").to_owned();

    send(hs, mx, room, "m2", "m.room.message", json!({"msgtype": "m.emote", "body": "waves"}));
    let reply = json!({"msgtype": "m.text", "body": "a reply", "m.relates_to": {"m.in_reply_to": {"event_id": first}}});
    send(hs, mx, room, "m3", "m.room.message", reply);
    let edit = json!({"msgtype": "m.text", "body": "* hello, edited", "m.new_content": {"msgtype": "m.text", "body": "hello, edited"},
                      "m.relates_to": {"rel_type": "m.replace", "event_id": first}});
    send(hs, mx, room, "m4", "m.room.message", edit);
    let reaction = json!({"m.relates_to": {"rel_type": "m.annotation", "event_id": first, "key": "👍"}});
    let reaction = send(hs, mx, room, "m5", "m.reaction", reaction);
    call(hs, mx, "PUT", &format!("/_matrix/client/v3/rooms/{room}/redact/{reaction}/m5r"), Some(json!({})));
    call(hs, mx, "PUT", &format!("/_matrix/client/v3/rooms/{room}/redact/{first}/m6"), Some(json!({})));
    let got = hear(alice, server, 6);
    assert_eq!(got[0]["text"], "/me waves", "emote: {got:?}");
    assert_eq!(
        (got[1]["text"].as_str(), got[1]["in_reply_to"].as_str()),
        (Some("a reply"), Some(first_id.as_str())),
        "reply: {got:?}"
    );
    assert_eq!(
        (got[2]["text"].as_str(), got[2]["replaces"].as_str()),
        (Some("hello, edited"), Some(first_id.as_str())),
        "edit: {got:?}"
    );
    assert_eq!(
        (got[3]["text"].as_str(), got[3]["in_reply_to"].as_str(), got[3]["disposition"].as_str()),
        (Some("👍"), Some(first_id.as_str()), Some("Reaction")),
        "reaction: {got:?}"
    );
    // The redaction of a reaction withdraws it (the core tells it from a message's deletion).
    assert_eq!(
        (got[4]["text"].as_str(), got[4]["replaces"].as_str(), got[4]["disposition"].as_str()),
        (Some(""), got[3]["message_id"].as_str(), Some("Reaction")),
        "unreact: {got:?}"
    );
    assert_eq!(
        (got[5]["text"].as_str(), got[5]["replaces"].as_str(), got[5]["disposition"].as_str()),
        (Some(""), Some(first_id.as_str()), Some("Render")),
        "delete: {got:?}"
    );
}

#[test]
fn matrix_room_irc_channel_and_native_client_share_a_portal_through_the_real_daemon() {
    let Bridge { dir, hs, irc, mx, room, mut d, listen, server, alice, cfg } = start_bridge("");
    let bot = format!("@mimi-bridge:{SERVER_NAME}");
    assert!(d.wait_line("channel=#chan", Duration::from_secs(30)), "bridge joined #chan: {:?}", d.seen);
    let mut ircuser = IrcClient::connect(&irc.addr(), "ircuser").expect("irc user");
    ircuser.join("#chan").expect("join #chan");

    // Matrix → native client (and IRC): message, emote, reply, edit, reaction, redaction.
    matrix_events_reach_the_native_client(&hs, &mx, &room, &alice, &server);
    let line = ircuser.read_until(|l| l.contains("PRIVMSG #chan")).expect("IRC sees the Matrix message");
    assert!(line.starts_with(":bridge!") && line.ends_with("> hello from matrix"), "{line}");

    // Native client → Matrix, as its ghost: a message, a reply to a Matrix message, an edit.
    let second = send(&hs, &mx, &room, "m7", "m.room.message", json!({"msgtype": "m.text", "body": "second"}));
    let second_id = hear(&alice, &server, 1)[0]["message_id"].as_str().expect("id").to_owned();
    let mine = client(&alice, &server, &["send", ROOM, "hello from mimi"]).trim().to_owned();
    let ev = await_matrix(&hs, &mx, &room, "the native message", |e| e["content"]["body"] == "hello from mimi");
    let ghost = ev["sender"].as_str().expect("sender").to_owned();
    assert!(ghost.starts_with("@mimi_bridge.example.org=2fu=2falice:"), "sent as alice's ghost: {ghost}");
    let mine_event = ev["event_id"].as_str().expect("event id").to_owned();
    client(&alice, &server, &["send", ROOM, "answer to matrix", "--reply-to", &second_id]);
    let ev = await_matrix(&hs, &mx, &room, "the native reply", |e| e["content"]["body"] == "answer to matrix");
    assert_eq!(ev["content"]["m.relates_to"]["m.in_reply_to"]["event_id"], second.as_str(), "{ev}");
    assert_eq!(ev["sender"], ghost.as_str());
    client(&alice, &server, &["send", ROOM, "hello from mimi, edited", "--edit", &mine]);
    let ev = await_matrix(&hs, &mx, &room, "the native edit", |e| {
        e["content"]["m.new_content"]["body"] == "hello from mimi, edited"
    });
    assert_eq!(ev["content"]["m.relates_to"], json!({"rel_type": "m.replace", "event_id": mine_event}), "{ev}");
    client(&alice, &server, &["send", ROOM, "/me dances"]);
    let ev = await_matrix(&hs, &mx, &room, "the native emote", |e| e["content"]["body"] == "dances");
    assert_eq!(
        (ev["content"]["msgtype"].as_str(), ev["sender"].as_str()),
        (Some("m.emote"), Some(ghost.as_str())),
        "{ev}"
    );

    // A Matrix pill of alice's ghost is a mention of alice herself for the native client.
    let pill = json!({"msgtype": "m.text", "body": "alice: look",
                      "format": "org.matrix.custom.html",
                      "formatted_body": format!("<a href=\"https://matrix.to/#/{ghost}\">alice</a>: <b>look</b>"),
                      "m.mentions": {"user_ids": [ghost]}});
    send(&hs, &mx, &room, "m9", "m.room.message", pill);
    let got = hear(&alice, &server, 1);
    assert_eq!(got[0]["text"], "[@alice](mimi://bridge.example.org/u/alice)\\: **look**", "{got:?}");

    // IRC → Matrix, through the portal, as the IRC user's ghost.
    ircuser.send("PRIVMSG #chan :hello from irc").expect("send");
    let ev = await_matrix(&hs, &mx, &room, "the IRC message", |e| e["content"]["body"] == "hello from irc");
    assert!(ev["sender"].as_str().is_some_and(|s| s.starts_with("@mimi_") && s.contains("irc.t=7eircuser")), "{ev}");

    // The same transaction delivered twice is processed once (and its event would be dropped by its id anyway).
    // Its id with other events is another transaction: Synapse on SQLite numbers them afresh after a restart.
    let hs_token = std::fs::read_to_string(dir.path().join("hs.token")).expect("hs token");
    let event = |id: &str, body: &str| {
        json!({"type": "m.room.message", "event_id": id, "sender": mx.user_id, "room_id": room,
               "origin_server_ts": 1, "content": {"msgtype": "m.text", "body": body}})
    };
    for events in [
        vec![event("$dup1", "once only")],
        vec![event("$dup1", "once only")],
        vec![event("$dup2", "same id, new events")],
    ] {
        let (status, body) = put_transaction(listen, hs_token.trim(), "dup-txn", &json!({ "events": events }));
        assert_eq!(status, 200, "{body}");
    }
    send(&hs, &mx, &room, "m8", "m.room.message", json!({"msgtype": "m.text", "body": "after the duplicates"}));
    let texts: Vec<String> =
        hear(&alice, &server, 4).iter().filter_map(|m| m["text"].as_str().map(str::to_owned)).collect();
    assert_eq!(texts, ["hello from irc", "once only", "same id, new events", "after the duplicates"]);

    // The room turns on encryption: what the bridge cannot decrypt (this forged event never will) reaches the
    // portal as a notice, never silence.
    let path = format!("/_matrix/client/v3/rooms/{room}/state/m.room.encryption/");
    call(&hs, &mx, "PUT", &path, Some(json!({"algorithm": "m.megolm.v1.aes-sha2"})));
    let sealed = json!({"algorithm": "m.megolm.v1.aes-sha2", "ciphertext": "AwgAEnAb", "device_id": "DEV",
                        "sender_key": "k", "session_id": "s"});
    send(&hs, &mx, &room, "e1", "m.room.encrypted", sealed);
    let got = hear(&alice, &server, 1);
    assert_eq!(got[0]["text"], connector_matrix::inbound::UNDECRYPTED_NOTICE, "{got:?}");
    assert_eq!(
        got[0]["legacy_sender"]["uri"],
        format!("mimi://bridge.example.org/u/matrix.hs~%40mxuser%3A{SERVER_NAME}")
    );
    // The bridge says in the room where its encryption ends (encrypted itself: connector-matrix's tests read it);
    // after a restart it looks again when it joins, and the notice stays one event (its transaction id comes from
    // the encryption event, sent as a device).
    let is_notice = |e: &Value| e["sender"] == bot.as_str() && e["type"] == "m.room.encrypted";
    let deadline = Instant::now() + Duration::from_secs(30);
    let ev = loop {
        if let Some(e) = room_events(&hs, &mx, &room).into_iter().find(|e| is_notice(e)) {
            break e;
        }
        assert!(Instant::now() < deadline, "the encryption notice never reached the Matrix room");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(d.terminate(Duration::from_secs(30)), Some(0));
    let mut d = Daemon::start(&cfg, &[]);
    assert!(d.wait_line("encrypted room: notice posted", Duration::from_secs(30)), "{}", d.log());
    let line = d.seen.iter().find(|l| l.contains("encrypted room: notice posted")).expect("seen").clone();
    assert!(line.contains(ev["event_id"].as_str().expect("event id")), "the same event again: {line}");
    let notices = room_events(&hs, &mx, &room).iter().filter(|e| is_notice(e)).count();
    assert_eq!(notices, 1, "one notice in the room");

    assert_eq!(d.terminate(Duration::from_secs(30)), Some(0));
}

/// `PUT /_matrix/app/v1/transactions/{txn}` to the appservice listener, as the homeserver would.
fn put_transaction(port: u16, hs_token: &str, txn: &str, body: &Value) -> (u16, String) {
    use std::io::{Read, Write};
    let body = body.to_string();
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to the appservice");
    let req = format!(
        "PUT /_matrix/app/v1/transactions/{txn} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {hs_token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).expect("send");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("answer");
    let status = out.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, out)
}
