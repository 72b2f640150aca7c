//! The native client inside the daemon binary, as operators and scripts run it: `mimi-bridge client --state DIR
//! --server URL COMMAND` against a running `mimi-bridge run`; and `chat`, the interactive mode, driven through a
//! pipe as a person would type.

use crate::common::client::{client, command, messages, server_of};
use crate::common::{Daemon, cli, lines_of, write_config};
use std::io::Write;
use std::process::{Child, ChildStdin, Stdio};
use std::sync::mpsc::Receiver;
use std::time::Duration;

const ALICE: &str = "mimi://bridge.example.org/u/alice";
const BOB: &str = "mimi://bridge.example.org/u/bob";

/// A running daemon with alice and bob registered and both in room `club`; the server URL and the room.
fn two_users_in_a_room(dir: &std::path::Path) -> (Daemon, String, String) {
    let (cfg, _) = write_config(dir, "");
    let daemon = Daemon::start(&cfg, &[]);
    let server = server_of(&cfg);
    let (alice, bob) = (dir.join("alice"), dir.join("bob"));
    assert_eq!(client(&alice, &server, &["register", "alice"]).trim(), ALICE);
    assert_eq!(client(&bob, &server, &["register", "bob"]).trim(), BOB);
    let room = client(&alice, &server, &["create-room", "club"]).lines().last().expect("room line").to_owned();
    assert_eq!(room, "mimi://bridge.example.org/r/club");
    client(&bob, &server, &["join", &room]);
    (daemon, server, room)
}

/// One message from alice's `listen --json`.
fn alice_hears(dir: &std::path::Path, server: &str, room: &str) -> serde_json::Value {
    let got =
        messages(&client(&dir.join("alice"), server, &["listen", room, "--json", "--count", "1", "--timeout", "15"]));
    got.into_iter().next().expect("alice heard a message")
}

#[test]
fn client_subcommand_registers_creates_a_room_sends_and_listens() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_daemon, server, room) = two_users_in_a_room(dir.path());
    let id = client(&dir.path().join("bob"), &server, &["send", &room, "hello from mimi-bridge client"]);
    let m = alice_hears(dir.path(), &server, &room);
    assert_eq!(m["text"], "hello from mimi-bridge client", "{m}");
    assert_eq!(m["sender"], BOB, "{m}");
    assert_eq!(m["message_id"], id.trim(), "{m}");
}

/// `mimi-bridge client … chat ROOM` with its standard input and output piped.
struct Chat {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
}

impl Chat {
    fn start(state: &std::path::Path, server: &str, room: &str) -> Self {
        let mut child = command(state, server, &["chat", room])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("chat starts");
        let lines = lines_of(child.stdout.take().expect("stdout"));
        Self { stdin: child.stdin.take(), child, lines }
    }

    /// Types `line` (and Enter).
    fn say(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{line}").expect("typed");
    }

    /// The next line the chat printed; panics after a while.
    fn next_line(&self) -> String {
        self.lines.recv_timeout(Duration::from_secs(15)).expect("the chat printed a line")
    }

    /// Waits for it to end; true if it exited 0.
    fn ended_well(mut self) -> bool {
        for _ in 0..100 {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        panic!("the chat did not end within 10 s");
    }
}

#[test]
fn chat_prints_arrivals_and_sends_typed_lines() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_daemon, server, room) = two_users_in_a_room(dir.path());
    let alice = dir.path().join("alice");
    let alice_says = |args: &[&str]| client(&alice, &server, &[&["send", room.as_str()], args].concat());

    // A message sent before the chat started is printed too.
    alice_says(&["hello bob"]);
    let mut chat = Chat::start(&dir.path().join("bob"), &server, "club");
    assert_eq!(chat.next_line(), format!("<{ALICE}> hello bob"));

    // Typed lines are sent; `/me` is an emote the way `send` makes one.
    chat.say("hi alice");
    let hi = alice_hears(dir.path(), &server, &room);
    assert_eq!((hi["text"].as_str(), hi["sender"].as_str()), (Some("hi alice"), Some(BOB)), "{hi}");
    chat.say("/me waves");
    assert_eq!(alice_hears(dir.path(), &server, &room)["text"], "/me waves");
    chat.say("/nonsense is not sent");
    chat.say("//etc is a path");
    assert_eq!(alice_hears(dir.path(), &server, &room)["text"], "/etc is a path");

    // Replies, edits and emotes arriving are marked.
    let hi_id = hi["message_id"].as_str().expect("id");
    let glad = alice_says(&["glad you're here", "--reply-to", hi_id]);
    assert_eq!(chat.next_line(), format!("<{ALICE}> [re {BOB}: hi alice] glad you're here"));
    alice_says(&["glad you are here", "--edit", glad.trim()]);
    assert_eq!(chat.next_line(), format!("<{ALICE}> [edit: glad you're here] glad you are here"));
    alice_says(&["/me waves back"]);
    assert_eq!(chat.next_line(), format!("* {ALICE} waves back"));

    chat.say("/quit");
    assert!(chat.ended_well(), "/quit ends the chat with status 0");

    // The end of the input ends it too.
    let mut chat = Chat::start(&dir.path().join("bob"), &server, &room);
    chat.say("last words");
    chat.stdin = None;
    assert!(chat.ended_well(), "end of input ends the chat with status 0");
    assert_eq!(alice_hears(dir.path(), &server, &room)["text"], "last words");
}

#[test]
fn an_invite_only_portal_refuses_external_joins_and_an_open_one_takes_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cfg, _) = write_config(dir.path(), "\n[[portal]]\nname = \"vip\"\njoin = \"invite\"\n");
    let _daemon = Daemon::start(&cfg, &[]);
    let server = server_of(&cfg);
    let eve = dir.path().join("eve");
    client(&eve, &server, &["register", "eve"]);
    let out = command(&eve, &server, &["join", "mimi://bridge.example.org/r/vip"]).output().expect("runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "eve joined an invite-only portal uninvited: {err}");
    client(&eve, &server, &["join", "mimi://bridge.example.org/r/lobby"]);
}

/// The bridge invites native users into an invite-only portal (`mimi-bridge portal invite`), in commits of at most
/// `--batch` users: one without KeyPackages is named and left out, the others join from their Welcomes and talk.
#[test]
fn the_bridge_invites_native_users_into_an_invite_only_portal_in_batches() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cfg, _) = write_config(dir.path(), "\n[[portal]]\nname = \"vip\"\njoin = \"invite\"\n");
    let _daemon = Daemon::start(&cfg, &[]);
    let server = server_of(&cfg);
    let cfg = cfg.to_str().expect("utf-8 path");
    let room = "mimi://bridge.example.org/r/vip";
    let users = ["eve", "frank", "grace"];
    for u in users {
        client(&dir.path().join(u), &server, &["register", u]);
    }

    let (code, out, err) =
        cli(&["portal", "invite", "vip", "eve", "ghost", "frank", "grace", "eve", "--batch", "2", "--config", cfg]);
    assert_eq!(code, 1, "a user left out fails the command: {out}{err}");
    assert!(err.contains("mimi://bridge.example.org/u/ghost: no KeyPackage left"), "{err}");
    assert!(err.contains("1 not invited to portal vip: mimi://bridge.example.org/u/ghost"), "{err}");
    let invited: Vec<String> =
        users.iter().map(|u| format!("invited mimi://bridge.example.org/u/{u} to portal vip")).collect();
    assert_eq!(out.lines().collect::<Vec<_>>(), invited, "each user once, in order");

    // Batches of two: [eve ghost] [frank grace]: eve's Welcome is not frank's, frank's is grace's.
    let welcome_of = |u: &str| -> u64 {
        let listed = client(&dir.path().join(u), &server, &["invites"]);
        let line = listed.lines().find(|l| l.starts_with(room)).unwrap_or_else(|| panic!("{u} invited: {listed}"));
        line.rsplit(' ').next().and_then(|s| s.parse().ok()).expect("seq")
    };
    let seqs: Vec<u64> = users.iter().map(|u| welcome_of(u)).collect();
    assert!(seqs[0] < seqs[1] && seqs[1] == seqs[2], "two commits: {seqs:?}");

    for u in users {
        client(&dir.path().join(u), &server, &["join", room]);
    }
    client(&dir.path().join("eve"), &server, &["send", room, "inside at last"]);
    for u in ["frank", "grace"] {
        let got = messages(&client(
            &dir.path().join(u),
            &server,
            &["listen", room, "--json", "--count", "1", "--timeout", "15"],
        ));
        assert_eq!(got.first().and_then(|m| m["text"].as_str()), Some("inside at last"), "{u}: {got:?}");
    }

    // Members invited again: said and skipped, not an error (a rerun after a partial failure).
    let (code, out, err) =
        cli(&["portal", "invite", "vip", "mimi://bridge.example.org/u/eve", "grace", "--config", cfg]);
    assert_eq!(code, 0, "{out}{err}");
    let said: Vec<String> =
        ["eve", "grace"].iter().map(|u| format!("mimi://bridge.example.org/u/{u} is already in portal vip")).collect();
    assert_eq!(out.lines().collect::<Vec<_>>(), said);

    // A portal that does not exist is refused, naming it.
    let (code, _, err) = cli(&["portal", "invite", "nope", "eve", "--config", cfg]);
    assert_ne!(code, 0);
    assert!(err.contains("nope"), "{err}");
}

/// A burst of typed lines beyond the server's per-user quota (`[quota] user_messages_per_minute`) is sent late,
/// not dropped: the server says when the quota has room again (429 with `Retry-After` and `retry_after_ms`), and
/// the client waits that long and sends the line again. Every line reaches the room once, in order.
#[test]
fn a_burst_over_the_quota_is_sent_late_not_lost() {
    let dir = tempfile::tempdir().expect("tempdir");
    // 30 a minute: a burst of 30, then one every 2 s.
    let (cfg, _) = write_config(dir.path(), "\n[quota]\nuser_messages_per_minute = 30\n");
    let _daemon = Daemon::start(&cfg, &[]);
    let server = server_of(&cfg);
    let (alice, bob) = (dir.path().join("alice"), dir.path().join("bob"));
    client(&alice, &server, &["register", "alice"]);
    client(&bob, &server, &["register", "bob"]);
    let room = client(&alice, &server, &["create-room", "club"]).lines().last().expect("room line").to_owned();
    client(&bob, &server, &["join", &room]);

    // bob's join took one message of his minute; 33 lines go over by four.
    const LINES: usize = 33;
    let mut chat = command(&bob, &server, &["chat", &room])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("chat starts");
    let errors = lines_of(chat.stderr.take().expect("stderr"));
    {
        let mut stdin = chat.stdin.take().expect("stdin");
        for n in 0..LINES {
            writeln!(stdin, "line {n}").expect("typed");
        }
    }
    let heard = messages(&client(
        &alice,
        &server,
        &["listen", &room, "--json", "--count", &LINES.to_string(), "--timeout", "40"],
    ));
    let texts: Vec<&str> = heard.iter().filter_map(|m| m["text"].as_str()).collect();
    let said: Vec<String> = (0..LINES).map(|n| format!("line {n}")).collect();
    assert_eq!(texts, said, "every line once, in order");
    let status = chat.wait().expect("chat ends at the end of its input");
    assert!(status.success(), "{status}");
    let errors: Vec<String> = errors.iter().collect();
    assert!(errors.iter().any(|e| e.contains("over the server's quota")), "the quota was met: {errors:?}");
    assert!(!errors.iter().any(|e| e.contains("not sent")), "{errors:?}");
}
