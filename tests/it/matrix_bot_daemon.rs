//! The daemon binary with a Matrix account in bot mode (real Synapse, no appservice registered): `check-config`
//! takes the table, the bot logs in with a password file, joins the linked room, and a Matrix user and a native MLS
//! client talk through the portal (message, emote, reply, edit, reaction, redactions and a mention from Matrix;
//! message, reply, edit and emote relayed by the bot); its session lives in its own directory (0700, the session
//! file 0600), and after a SIGKILL and a restart the account still has one device and nothing is bridged twice.

use crate::common::client::{client, server_of};
use crate::common::{Daemon, cli, write_config};
use crate::matrix_daemon::{ROOM, await_matrix, call, hear, matrix_events_reach_the_native_client, send};
use harness::Synapse;
use serde_json::json;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

#[test]
fn a_bot_mode_account_bridges_a_room_through_the_real_daemon_and_keeps_one_device() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hs = Synapse::start().expect("synapse starts (installed by ./scripts/test)");
    hs.register_bot_account("relay").expect("bot account");
    let mx = hs.register_user("mxuser").expect("matrix user");
    let room = call(&hs, &mx, "POST", "/_matrix/client/v3/createRoom", Some(json!({"preset": "public_chat"})));
    let room = room["room_id"].as_str().expect("room id").to_owned();
    let password = dir.path().join("bot.password");
    std::fs::write(&password, "pw-relay\n").expect("password file");
    std::fs::set_permissions(&password, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let config = format!(
        "legs = [{{ account = \"matrix.relay\", room = \"{room}\" }}]\n\n[matrix.relay]\nmode = \"bot\"\n\
         homeserver_url = \"{}\"\nserver_name = \"{}\"\nbot_localpart = \"relay\"\npassword_file = {:?}\n",
        hs.url(),
        hs.server_name,
        password.display().to_string()
    );
    let (cfg, _) = write_config(dir.path(), &config);
    let (code, out, err) = cli(&["check-config", cfg.to_str().expect("utf-8")]);
    assert_eq!(code, 0, "{out}{err}");

    let mut d = Daemon::start(&cfg, &[]);
    let bot_id = hs.user_id("relay");
    let members = format!("/_matrix/client/v3/rooms/{room}/joined_members");
    let deadline = Instant::now() + Duration::from_secs(60);
    while call(&hs, &mx, "GET", &members, None)["joined"].get(&bot_id).is_none() {
        assert!(Instant::now() < deadline, "the bot never joined: {}", d.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    let server = server_of(&cfg);
    let alice = dir.path().join("alice");
    client(&alice, &server, &["register", "alice"]);
    client(&alice, &server, &["join", ROOM]);

    // Matrix → native client: message, emote, reply, edit, reaction, redactions (as in appservice mode).
    matrix_events_reach_the_native_client(&hs, &mx, &room, &alice, &server);
    // A mention of a Matrix user is a user link for the native client.
    let mention = json!({"msgtype": "m.text", "body": format!("{bot_id} look"), "m.mentions": {"user_ids": [bot_id]}});
    send(&hs, &mx, &room, "m9", "m.room.message", mention);
    let got = hear(&alice, &server, 1);
    let text = got[0]["text"].as_str().unwrap_or_default();
    assert!(text.starts_with("[@relay\\:") && text.contains("](mimi://") && text.ends_with(") look"), "{got:?}");

    // Native client → Matrix, relayed by the bot as `name: text`: a message, a reply to a Matrix message, an edit
    // (of the bot's own event) and an emote (an ordinary message `* name text`: a Matrix emote would be the bot's).
    let mine = client(&alice, &server, &["send", ROOM, "hello from mls"]).trim().to_owned();
    let relayed = await_matrix(&hs, &mx, &room, "the native message", |e| {
        e["content"]["body"].as_str().is_some_and(|b| b.ends_with(": hello from mls"))
    });
    assert_eq!(relayed["content"]["body"], "alice: hello from mls", "{relayed}");
    assert_eq!(relayed["sender"], bot_id.as_str(), "relayed by the bot: {relayed}");
    let second = send(&hs, &mx, &room, "m7", "m.room.message", json!({"msgtype": "m.text", "body": "second"}));
    let second_id = hear(&alice, &server, 1)[0]["message_id"].as_str().expect("id").to_owned();
    client(&alice, &server, &["send", ROOM, "answer to matrix", "--reply-to", &second_id]);
    let ev = await_matrix(&hs, &mx, &room, "the native reply", |e| {
        e["content"]["body"].as_str().is_some_and(|b| b.ends_with(": answer to matrix"))
    });
    assert_eq!(ev["content"]["m.relates_to"]["m.in_reply_to"]["event_id"], second.as_str(), "{ev}");
    assert_eq!(
        (ev["sender"].as_str(), ev["content"]["body"].as_str()),
        (Some(bot_id.as_str()), Some("alice: answer to matrix"))
    );
    client(&alice, &server, &["send", ROOM, "hello from mls, edited", "--edit", &mine]);
    let ev = await_matrix(&hs, &mx, &room, "the native edit", |e| {
        e["content"]["m.new_content"]["body"].as_str().is_some_and(|b| b.ends_with(": hello from mls, edited"))
    });
    assert_eq!(ev["content"]["m.relates_to"], json!({"rel_type": "m.replace", "event_id": relayed["event_id"]}));
    assert_eq!(ev["content"]["m.new_content"]["body"], "alice: hello from mls, edited", "{ev}");
    client(&alice, &server, &["send", ROOM, "/me dances"]);
    let ev = await_matrix(&hs, &mx, &room, "the native emote", |e| {
        e["content"]["body"].as_str().is_some_and(|b| b.starts_with("* ") && b.ends_with(" dances"))
    });
    assert_eq!(
        (ev["content"]["msgtype"].as_str(), ev["sender"].as_str(), ev["content"]["body"].as_str()),
        (Some("m.text"), Some(bot_id.as_str()), Some("* alice dances"))
    );

    // Its state: a directory of its own, private; the session file readable by the daemon's user only.
    let state = dir.path().join("data").join("accounts").join("matrix.relay");
    let mode = |p: &std::path::Path| std::fs::metadata(p).expect("exists").permissions().mode() & 0o777;
    assert_eq!(mode(&state), 0o700, "{}", state.display());
    assert_eq!(mode(&state.join("session.json")), 0o600);

    // SIGKILL and restart: the same device, and what was bridged is not bridged again.
    d.kill();
    d.restart();
    send(&hs, &mx, &room, "m8", "m.room.message", json!({"msgtype": "m.text", "body": "after the restart"}));
    let got = hear(&alice, &server, 1);
    assert_eq!(got[0]["text"], "after the restart", "nothing before it again: {got:?}");
    let session: serde_json::Value =
        serde_json::from_slice(&std::fs::read(state.join("session.json")).expect("session")).expect("json");
    let token = session["access_token"].as_str().expect("token");
    let (status, devices) = hs.request("GET", "/_matrix/client/v3/devices", Some(token), None).expect("devices");
    assert_eq!(status, 200, "{devices}");
    assert_eq!(devices["devices"].as_array().map(Vec::len), Some(1), "one device: {devices}");
}
