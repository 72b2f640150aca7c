//! The first vertical slice, end to end: an IRC channel on a real ngIRCd ⇄ the daemon (portal, MLS group, its own
//! MIMI hub) ⇄ a native MLS client holding its own keys (the real `mimi-client` binary over the client API).

use crate::client_support::client;

use harness::{IrcClient, Ngircd};
use mimi_bridge::config::Config;
use mimi_bridge::daemon::Daemon;

fn messages(listen_json: &str) -> Vec<serde_json::Value> {
    listen_json.lines().map(|l| serde_json::from_str(l).expect("json line")).collect()
}

/// The config of a daemon in `dir` bridging `#lobby` on `ircd` to portal `lobby` (`portal_extra`: more keys).
fn lobby_config(dir: &std::path::Path, ircd: &Ngircd, portal_extra: &str) -> Config {
    let text = format!(
        "[bridge]\ndomain = \"bridge.test\"\ndata_dir = {:?}\n\n[mimi]\nlisten = \"127.0.0.1:0\"\n\n[admin]\nlisten = \
         \"127.0.0.1:0\"\n\n[irc.t]\nserver = \"{}\"\nnick = \"bridge\"\n\n[[portal]]\nname = \"lobby\"\n{portal_extra}legs = \
         [{{ account = \"irc.t\", room = \"#lobby\" }}]\n",
        dir.join("data").display().to_string(),
        ircd.addr()
    );
    let cfg_path = dir.join("config.toml");
    std::fs::write(&cfg_path, &text).expect("config");
    Config::parse(&cfg_path, &text).expect("valid config")
}

/// Says `line` in `#lobby` until the native client `state` hears a message (the bridge joins in the
/// background), and returns what it heard.
fn say_until_heard(
    irc: &mut IrcClient,
    state: &std::path::Path,
    server: &str,
    room: &str,
    line: &str,
) -> serde_json::Value {
    for _ in 0..20 {
        irc.send(&format!("PRIVMSG #lobby :{line}")).expect("send");
        let heard = messages(&client(state, server, &["listen", room, "--json", "--count", "1", "--timeout", "2"]));
        if let Some(m) = heard.into_iter().next() {
            return m;
        }
    }
    panic!("the native client never heard {line:?}")
}

#[test]
fn irc_channel_to_native_mls_client_and_back() {
    let ircd = Ngircd::start().expect("ngircd starts (installed by ./scripts/test)");
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = lobby_config(dir.path(), &ircd, "");

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let daemon = rt.block_on(Daemon::start(&cfg, &mimi_bridge::networks::built_in())).expect("daemon starts");
    let server = format!("http://{}", daemon.mimi_addr());
    let room = "mimi://bridge.test/r/lobby";

    // A native MLS user joins the portal's group by external commit (portal rooms are open).
    let alice = dir.path().join("alice");
    assert_eq!(client(&alice, &server, &["register", "alice"]).trim(), "mimi://bridge.test/u/alice");
    client(&alice, &server, &["join", room]);

    // IRC → MLS: the line arrives encrypted in the group and the native client decrypts it.
    let mut ircuser = IrcClient::connect(&ircd.addr(), "ircbob").expect("irc user connects");
    ircuser.join("#lobby").expect("joins");
    // The bridge joins #lobby in the background; say it until the bridge is there to hear it.
    let m = say_until_heard(&mut ircuser, &alice, &server, room, "hello from irc");
    let irc_message_id = m["message_id"].as_str().expect("message id").to_owned();
    assert_eq!(m["text"], "hello from irc", "{m}");
    assert_eq!(m["room"], room, "{m}");
    assert!(m.to_string().contains("irc.t~ircbob"), "the legacy sender travels with the message: {m}");

    // MLS → IRC: the native client's message reaches the channel through the bridge.
    client(&alice, &server, &["send", room, "hello from mimi"]);
    let line = ircuser.read_until(|l| l.contains("hello from mimi")).expect("the IRC user reads it");
    assert!(
        line.starts_with(":bridge!") && line.ends_with("PRIVMSG #lobby :<a\u{200B}lice> hello from mimi"),
        "{line}"
    );

    // IRC's conventions reach the MLS side as MIMI structure: `alice: …` is a reply to alice's message
    // (inReplyTo), `s/old/new/` an edit of the IRC user's previous message (replaces).
    ircuser.send("PRIVMSG #lobby :alice: nice to meet you").expect("send");
    let m = messages(&client(&alice, &server, &["listen", room, "--json", "--count", "1", "--timeout", "10"]));
    let m = m.first().expect("the reply arrived");
    assert_eq!(m["text"], "nice to meet you", "{m}");
    assert!(m["in_reply_to"].is_string(), "a MIMI reply: {m}");
    ircuser.send("PRIVMSG #lobby :s/meet/see/").expect("send");
    let m = messages(&client(&alice, &server, &["listen", room, "--json", "--count", "1", "--timeout", "10"]));
    let m = m.first().expect("the edit arrived");
    assert_eq!(m["text"], "nice to see you", "{m}");
    assert!(m["replaces"].is_string(), "a MIMI edit: {m}");
    // A long IRC line arrives whole.
    let long = format!("long {}", "word ".repeat(80).trim_end());
    ircuser.send(&format!("PRIVMSG #lobby :{long}")).expect("send");
    let m = messages(&client(&alice, &server, &["listen", room, "--json", "--count", "1", "--timeout", "10"]));
    assert_eq!(m.first().expect("the long line arrived")["text"], long.as_str());

    // A multi-line, long message from the native client becomes several IRC lines, none over the limit.
    let text = format!("first line\nsecond line\n{}", "x".repeat(600));
    client(&alice, &server, &["send", room, &text]);
    let l1 = ircuser.read_until(|l| l.contains("first line")).expect("line 1");
    let l2 = ircuser.read_until(|l| l.contains("second line")).expect("line 2");
    let l3 = ircuser.read_until(|l| l.contains("xxxx")).expect("line 3");
    let l4 = ircuser.read_until(|l| l.contains("xxxx")).expect("line 4: the 600 x are split");
    for l in [&l1, &l2, &l3, &l4] {
        assert!(l.len() + 2 <= 512, "{} bytes: {l}", l.len());
        assert!(l.starts_with(":bridge!"), "{l}");
    }

    // A reply and an edit from the native side, in IRC's fallback forms.
    client(&alice, &server, &["send", room, "welcome aboard", "--reply-to", &irc_message_id]);
    let line = ircuser.read_until(|l| l.contains("welcome aboard")).expect("the reply");
    assert!(line.ends_with(":<a\u{200B}lice> ircbob: welcome aboard"), "{line}");
    let mine = client(&alice, &server, &["send", room, "the meeting is at noon"]);
    ircuser.read_until(|l| l.contains("the meeting is at noon")).expect("the original");
    client(&alice, &server, &["send", room, "the meeting is at ten", "--edit", mine.trim()]);
    let line = ircuser.read_until(|l| l.contains("s/") || l.contains("(edit)")).expect("the edit");
    assert!(line.ends_with(":<a\u{200B}lice> s/noon/ten/"), "{line}");

    // Emotes: MIMI has none, so they travel as "/me …" and come out as IRC actions on the other side.
    ircuser.send("PRIVMSG #lobby :\u{1}ACTION waves\u{1}").expect("send");
    let m = messages(&client(&alice, &server, &["listen", room, "--json", "--count", "1", "--timeout", "10"]));
    assert_eq!(m.first().expect("the emote arrived")["text"], "/me waves");
    client(&alice, &server, &["send", room, "/me waves back"]);
    let line = ircuser.read_until(|l| l.contains("waves back")).expect("the emote");
    assert!(line.ends_with(":* a\u{200B}lice waves back"), "{line}");

    rt.block_on(daemon.shutdown()).expect("clean shutdown");
}

/// `mls_identity = "per-user"`: the IRC user is a member of the MLS group in their own right — the native client
/// sees their URI as the MLS sender once their leaf is added (their first line comes from the bridge's shared leaf,
/// naming them, while it is) — and their leaf survives a restart of the daemon.
#[test]
fn per_user_portal_irc_user_is_an_mls_member() {
    let ircd = Ngircd::start().expect("ngircd starts (installed by ./scripts/test)");
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = lobby_config(dir.path(), &ircd, "mls_identity = \"per-user\"\n");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let daemon = rt.block_on(Daemon::start(&cfg, &mimi_bridge::networks::built_in())).expect("daemon starts");
    let server = format!("http://{}", daemon.mimi_addr());
    let room = "mimi://bridge.test/r/lobby";
    let alice = dir.path().join("alice");
    client(&alice, &server, &["register", "alice"]);
    client(&alice, &server, &["join", room]);

    let mut ircuser = IrcClient::connect(&ircd.addr(), "ircbob").expect("irc user connects");
    ircuser.join("#lobby").expect("joins");
    let m = say_until_heard(&mut ircuser, &alice, &server, room, "hello from a new speaker");
    assert_eq!(m["text"], "hello from a new speaker", "{m}");
    assert_eq!(m["sender"], "mimi://bridge.test/u/bridge", "the shared leaf speaks until the user's is added: {m}");
    assert_eq!(m["legacy_sender"]["uri"], "mimi://bridge.test/u/irc.t~ircbob", "{m}");
    let lobby = bridge_api::PortalId::new("lobby").expect("portal id");
    let leaves = |d: &Daemon| rt.block_on(d.room_of_record().leaf_users(&lobby)).expect("leaves");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while leaves(&daemon).is_empty() {
        assert!(std::time::Instant::now() < deadline, "the IRC user's leaf was never added");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let m = say_until_heard(&mut ircuser, &alice, &server, room, "hello as a member");
    assert_eq!(m["text"], "hello as a member", "{m}");
    assert_eq!(m["sender"], "mimi://bridge.test/u/irc.t~ircbob", "the IRC user's own leaf sent it: {m}");
    client(&alice, &server, &["send", room, "welcome, member"]);
    let line = ircuser.read_until(|l| l.contains("welcome, member")).expect("the IRC user reads the reply");
    assert!(line.starts_with(":bridge!"), "{line}");
    let epoch = |d: &Daemon| d.room_of_record().provider().epoch(room).expect("epoch");
    assert_eq!(leaves(&daemon), vec!["mimi://bridge.test/u/irc.t~ircbob".to_owned()]);
    let epoch_before = epoch(&daemon);
    let mut closed = daemon.store_closed();
    rt.block_on(daemon.shutdown()).expect("clean shutdown");
    rt.block_on(closed.wait_for(|c| *c)).expect("store closed");

    // After a restart the leaf is still there: the next line comes from it again.
    let daemon = rt.block_on(Daemon::start(&cfg, &mimi_bridge::networks::built_in())).expect("daemon restarts");
    let server = format!("http://{}", daemon.mimi_addr());
    let m = say_until_heard(&mut ircuser, &alice, &server, room, "still a member");
    assert_eq!(leaves(&daemon), vec!["mimi://bridge.test/u/irc.t~ircbob".to_owned()], "the leaf was reloaded");
    assert_eq!(epoch(&daemon), epoch_before, "no new commit: the same leaf spoke");
    assert_eq!(
        (m["text"].as_str(), m["sender"].as_str()),
        (Some("still a member"), Some("mimi://bridge.test/u/irc.t~ircbob")),
        "{m}"
    );
    rt.block_on(daemon.shutdown()).expect("clean shutdown");
}
