//! The daemon killed with SIGKILL while it relays between a native MLS client and an XMPP MUC (client mode, a
//! real Prosody): after the restart, what the native client sent (and the daemon accepted) is in the MUC once,
//! including the message that was on the wire when the daemon died, and what the MUC said while the daemon was
//! down reaches the native client once, in order.

use crate::client_support::{client, texts};
use crate::common::client::server_of;
use crate::common::{Daemon, heavy, write_config};
use crate::xmpp_daemon::{ROOM_JID, XUser, login};
use connector_xmpp::catchup;
use connector_xmpp::client::connect;
use connector_xmpp::xmpp_parsers::iq::Iq;
use connector_xmpp::xmpp_parsers::jid::BareJid;
use connector_xmpp::xmpp_parsers::stanza::Stanza;
use harness::Prosody;
use std::path::Path;
use std::time::Duration;

const PORTAL: &str = "mimi://bridge.example.org/r/rust";

/// How many messages the native client sends just before the crash.
const BURST: usize = 4;

/// The bodies of the room's archive (XEP-0313, the newest page), read by `nick` on a stream of its own.
pub(crate) async fn archive(prosody: &Prosody, nick: &str) -> Vec<String> {
    let mut link = connect(&login(prosody, nick, "archive")).await.expect("logs in");
    let room = BareJid::new(ROOM_JID).expect("room");
    link.outbound.send(Stanza::Iq(catchup::query(&room, "all", None))).await.expect("query");
    let mut bodies = Vec::new();
    loop {
        let s = tokio::time::timeout(Duration::from_secs(10), link.inbound.recv())
            .await
            .expect("the archive answers in time")
            .expect("stream open");
        match s {
            Stanza::Message(m) => {
                if let Some((_, _, inner)) = catchup::archived(&m, &room) {
                    bodies.extend(inner.bodies.values().next().cloned());
                }
            }
            Stanza::Iq(Iq::Result { id, .. }) if id == "all" => return bodies,
            Stanza::Iq(Iq::Error { id, error, .. }) if id == "all" => panic!("archive query refused: {error:?}"),
            _ => {}
        }
    }
}

/// Up to `count` texts the native client hears within about `secs` seconds.
fn hear(state: &Path, server: &str, count: usize, secs: u64) -> Vec<String> {
    let mut got = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    while got.len() < count && std::time::Instant::now() < deadline {
        let left = (count - got.len()).to_string();
        got.extend(texts(&client(state, server, &["listen", PORTAL, "--json", "--count", &left, "--timeout", "3"])));
    }
    got
}

/// A daemon relaying between a native client (`alice`) and a MUC with an archive (client mode, a real Prosody),
/// with an XMPP user in the MUC, once a first message went through.
struct Relaying {
    prosody: Prosody,
    daemon: Daemon,
    server: String,
    alice: std::path::PathBuf,
    rt: tokio::runtime::Runtime,
    x: XUser,
    _dir: tempfile::TempDir,
}

impl Relaying {
    fn start() -> Self {
        let prosody = Prosody::start().expect("prosody starts (installed by ./scripts/test)");
        prosody.register("bridge", "bridge-pw").expect("register the bridge");
        let dir = tempfile::tempdir().expect("tempdir");
        let extra = format!(
            "legs = [{{ account = \"xmpp.t\", room = \"{ROOM_JID}\" }}]\n\n[xmpp.t]\nmode = \"client\"\nserver = \"{}\"\n\
             jid = \"bridge@localhost\"\npassword = \"bridge-pw\"\ntransport = \"insecure-tcp\"\n",
            prosody.c2s_addr()
        );
        let (cfg, _) = write_config(dir.path(), &extra);
        let mut daemon = Daemon::start(&cfg, &[]);
        let server = server_of(&cfg);
        let alice = dir.path().join("alice");
        client(&alice, &server, &["register", "alice"]);
        client(&alice, &server, &["join", PORTAL]);
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
        let mut x = rt.block_on(XUser::join(&prosody, "xavier"));
        // The bridge relays (its join may still be under way at first).
        let mut heard = false;
        for i in 0..20 {
            rt.block_on(x.send(Some(&format!("warm-up {i}")), vec![]));
            if !hear(&alice, &server, 1, 2).is_empty() {
                heard = true;
                break;
            }
        }
        assert!(heard, "the bridge relays before the crash:\n{}", daemon.log());
        while !hear(&alice, &server, 1, 1).is_empty() {}
        Self { prosody, daemon, server, alice, rt, x, _dir: dir }
    }
}

#[test]
fn a_sigkilled_daemon_loses_and_doubles_nothing_between_mls_and_xmpp() {
    let _heavy = heavy();
    let Relaying { prosody, mut daemon, server, alice, rt, mut x, _dir } = Relaying::start();

    // A burst from the native client while the server is paused: the daemon writes the first message to the
    // room and waits for its reflection; it is killed (SIGKILL) before the reflection comes, so it never records
    // the delivery. The server then goes on and takes that message: after the restart, the daemon must find it
    // in the room's archive (by its origin-id) instead of sending it again.
    prosody.pause().expect("pause prosody");
    for n in 1..=BURST {
        client(&alice, &server, &["send", PORTAL, &format!("burst {n}")]);
    }
    std::thread::sleep(Duration::from_millis(500));
    daemon.kill();
    prosody.resume().expect("resume prosody");

    // While the daemon is down.
    rt.block_on(x.send(Some("while down 1"), vec![]));
    rt.block_on(x.send(Some("while down 2"), vec![]));

    daemon.restart();
    let got = hear(&alice, &server, 2, 30);
    assert_eq!(got, ["while down 1", "while down 2"], "each once, in order:\n{}", daemon.log());

    // Every message of the burst reaches the MUC once (the room's archive is the record).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let relayed = |bodies: &[String], n: usize| bodies.iter().filter(|b| b.ends_with(&format!(": burst {n}"))).count();
    let bodies = loop {
        let bodies = rt.block_on(archive(&prosody, "xavier"));
        if (1..=BURST).all(|n| relayed(&bodies, n) >= 1) || std::time::Instant::now() >= deadline {
            break bodies;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    for n in 1..=BURST {
        assert_eq!(relayed(&bodies, n), 1, "burst {n} is in the MUC once: {bodies:?}\n{}", daemon.log());
    }

    let log = daemon.log();
    assert!(log.contains("already in the room's archive"), "the resend was looked up in the archive:\n{log}");
    // Nothing else follows (no old history, no duplicate), and live messages flow again.
    rt.block_on(x.send(Some("after restart"), vec![]));
    assert_eq!(hear(&alice, &server, 1, 15), ["after restart"]);
    assert_eq!(relayed(&rt.block_on(archive(&prosody, "xavier")), BURST), 1, "no late duplicate");
}

/// The daemon killed while an XMPP user keeps talking: after the restart the room goes on talking live while the
/// bridge reads its archive. What was said while the daemon was down still arrives, once and in order: live
/// messages wait for the catch-up. Taken at once, they were bridged before the gap they follow (this test failed
/// 3 of 3 runs so), and when the archive page was read after them they became the walk's anchor and the gap was
/// never replayed (fault_injection lost 14 messages so).
#[test]
fn what_the_muc_said_while_the_daemon_was_down_arrives_though_the_room_keeps_talking() {
    let _heavy = heavy();
    let Relaying { prosody: _prosody, mut daemon, server, alice, rt, mut x, _dir } = Relaying::start();

    // xavier talks every 10 ms (and his round trip) from before the kill until well after the restart: live
    // messages arrive while the bridge reads the archive.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let talking = {
        let stop = stop.clone();
        rt.spawn(async move {
            let mut said = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Acquire) {
                let text = format!("live {}", said.len());
                x.send(Some(&text), vec![]).await;
                said.push(text);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            said
        })
    };
    std::thread::sleep(Duration::from_secs(1));
    daemon.kill();
    std::thread::sleep(Duration::from_secs(2));
    daemon.restart();
    std::thread::sleep(Duration::from_secs(4));
    stop.store(true, std::sync::atomic::Ordering::Release);
    let said = rt.block_on(talking).expect("xavier talked");
    let got = hear(&alice, &server, said.len(), 30);
    let bodies: Vec<&str> = got.iter().map(|t| t.rsplit(": ").next().unwrap_or(t)).collect();
    let missing: Vec<&String> = said.iter().filter(|s| !bodies.contains(&s.as_str())).collect();
    assert!(missing.is_empty(), "{} of {} never arrived: {missing:?}\n{}", missing.len(), said.len(), daemon.log());
    assert_eq!(bodies, said, "each once, in order");
}
