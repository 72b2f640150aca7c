//! The daemon binary with a Matrix account in bot mode (real Synapse, no appservice registered): `check-config`
//! takes the table, the bot logs in with a password file, joins the linked room, and a Matrix user and a native MLS
//! client talk through the portal; its session lives in its own directory (0700, the session file 0600), and after
//! a SIGKILL and a restart the account still has one device and nothing is bridged twice.

use crate::common::client::{client, server_of};
use crate::common::{Daemon, cli, write_config};
use crate::matrix_daemon::{ROOM, await_matrix, call, hear, send};
use harness::Synapse;
use serde_json::json;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

#[test]
fn a_bot_mode_account_bridges_a_room_through_the_real_daemon_and_keeps_one_device() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hs = Synapse::start().expect("synapse starts (installed by ./scripts/test)");
    let bot = hs.register_user("relay").expect("bot account");
    call(&hs, &bot, "POST", "/_matrix/client/v3/logout", Some(json!({})));
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

    send(&hs, &mx, &room, "m1", "m.room.message", json!({"msgtype": "m.text", "body": "hello from matrix"}));
    let got = hear(&alice, &server, 1);
    assert_eq!(
        (got[0]["text"].as_str(), got[0]["legacy_sender"]["network"].as_str()),
        (Some("hello from matrix"), Some("matrix"))
    );
    client(&alice, &server, &["send", ROOM, "hello from mls"]);
    let relayed = await_matrix(&hs, &mx, &room, "the native message", |e| {
        e["content"]["body"].as_str().is_some_and(|b| b.ends_with(": hello from mls"))
    });
    assert_eq!(relayed["sender"], bot_id.as_str(), "relayed by the bot: {relayed}");

    // Its state: a directory of its own, private; the session file readable by the daemon's user only.
    let state = dir.path().join("data").join("accounts").join("matrix.relay");
    let mode = |p: &std::path::Path| std::fs::metadata(p).expect("exists").permissions().mode() & 0o777;
    assert_eq!(mode(&state), 0o700, "{}", state.display());
    assert_eq!(mode(&state.join("session.json")), 0o600);

    // SIGKILL and restart: the same device, and what was bridged is not bridged again.
    d.kill();
    d.restart();
    send(&hs, &mx, &room, "m2", "m.room.message", json!({"msgtype": "m.text", "body": "after the restart"}));
    let got = hear(&alice, &server, 1);
    assert_eq!(got[0]["text"], "after the restart", "nothing before it again: {got:?}");
    let session: serde_json::Value =
        serde_json::from_slice(&std::fs::read(state.join("session.json")).expect("session")).expect("json");
    let token = session["access_token"].as_str().expect("token");
    let (status, devices) = hs.request("GET", "/_matrix/client/v3/devices", Some(token), None).expect("devices");
    assert_eq!(status, 200, "{devices}");
    assert_eq!(devices["devices"].as_array().map(Vec::len), Some(1), "one device: {devices}");
}
