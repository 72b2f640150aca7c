//! Two bridges federating one room, one network linked on each: a.test hosts the portal `club` linked to an IRC
//! channel (real ngIRCd); b.test's portal `club` joins that room (`[[portal]] room = "mimi://a.test/r/club"`) and
//! links an XMPP MUC (real Prosody); a native MLS client of a.test is in the room too. Every message crosses from
//! each side to the two others once, shown under its author's name, across b.test killed with SIGKILL and
//! restarted while the IRC side and the native client go on talking.

use crate::client_support::daemon::{free_port, url};
use crate::common::Daemon;
use crate::common::client::{client, messages};
use crate::common::three::irc_and_xmpp_users;
use harness::{Ngircd, Prosody};
use mimi_bench::measure::{Arrivals, marker, markers};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const ROOM: &str = "mimi://a.test/r/club";
const CHANNEL: &str = "#club";
const MUC: &str = "club@muc.localhost";
/// Senders.
const IRC: usize = 1;
const XMPP: usize = 2;
const ALICE: usize = 3;

/// The config of the daemon for `domain`: MIMI endpoints on `port`, `peer` reached on `peer_port`, portal `club`
/// (its table's other keys in `portal`) and the accounts `accounts`.
fn config(
    dir: &Path,
    domain: &str,
    port: u16,
    (peer, peer_port): (&str, u16),
    portal: &str,
    accounts: &str,
) -> PathBuf {
    let text = format!(
        "[bridge]\ndomain = \"{domain}\"\ndata_dir = {data:?}\nshutdown_timeout = 20\n\n[mimi]\nlisten = \
         \"127.0.0.1:{port}\"\n\n[[mimi.peer]]\ndomain = \"{peer}\"\nurl = \"{peer_url}\"\n\n[admin]\nlisten = \
         \"127.0.0.1:0\"\n\n[log]\nformat = \"text\"\n\n[[portal]]\nname = \"club\"\n{portal}\n\n{accounts}",
        data = dir.join(domain).display().to_string(),
        peer_url = url(peer_port),
    );
    let path = dir.join(format!("{domain}.toml"));
    std::fs::write(&path, text).expect("config");
    path
}

/// Waits until `reader` has seen every marker of `want`; the markers in the order they arrived.
fn arrived(arrivals: &Arrivals, reader: &str, want: &[String], (a, b): (&mut Daemon, &mut Daemon)) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut seen: Vec<(Instant, String)> =
            want.iter().filter_map(|m| arrivals.get(reader, m).map(|(t, _)| (t, m.clone()))).collect();
        if seen.len() == want.len() {
            seen.sort();
            return seen.into_iter().map(|(_, m)| m).collect();
        }
        assert!(Instant::now() < deadline, "{reader} saw only {seen:?} of {want:?}; logs:\n{}", logs(a, b));
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Both daemons' output.
fn logs(a: &mut Daemon, b: &mut Daemon) -> String {
    format!("a.test:\n{}\nb.test:\n{}", a.log(), b.log())
}

/// What the native client `state` reads next: the markers of `count` messages.
fn native(state: &Path, server: &str, count: usize) -> Vec<String> {
    let got = client(state, server, &["listen", ROOM, "--json", "--count", &count.to_string(), "--timeout", "60"]);
    messages(&got).iter().flat_map(|m| markers(m["text"].as_str().unwrap_or_default())).collect()
}

#[test]
fn two_bridges_federate_one_room_with_irc_on_one_and_xmpp_on_the_other() {
    let _heavy = crate::common::heavy();
    let dir = tempfile::tempdir().expect("tempdir");
    let irc = Ngircd::start().expect("ngircd starts (installed by ./scripts/test)");
    let prosody = Prosody::start().expect("prosody starts (installed by ./scripts/test)");
    prosody.register("bridge", "bridge-pw").expect("bridge account");
    prosody.register("xavier", "pw").expect("xmpp user");
    let (port_a, port_b) = (free_port(), free_port());
    let cfg_a = config(
        dir.path(),
        "a.test",
        port_a,
        ("b.test", port_b),
        &format!("legs = [{{ account = \"irc.t\", room = \"{CHANNEL}\" }}]"),
        &format!("[irc.t]\nserver = \"{}\"\nnick = \"bridge\"\n", irc.addr()),
    );
    let cfg_b = config(
        dir.path(),
        "b.test",
        port_b,
        ("a.test", port_a),
        &format!("room = \"{ROOM}\"\nlegs = [{{ account = \"xmpp.t\", room = \"{MUC}\" }}]"),
        &format!(
            "[xmpp.t]\nmode = \"client\"\nserver = \"{}\"\njid = \"bridge@localhost\"\npassword = \"bridge-pw\"\n\
             transport = \"insecure-tcp\"\n",
            prosody.c2s_addr()
        ),
    );
    let mut a = Daemon::start(&cfg_a, &[]);
    let mut b = Daemon::start(&cfg_b, &[]);

    let arrivals = Arrivals::default();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (ircuser, mut xavier) = rt.block_on(irc_and_xmpp_users(&irc, CHANNEL, &prosody, MUC, &arrivals));
    let server_a = url(port_a);
    let alice = dir.path().join("alice");
    client(&alice, &server_a, &["register", "alice"]);
    client(&alice, &server_a, &["join", ROOM]);
    // b.test's bridge leaf joins the room in the background at its start.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !b.log().contains("joined a room hosted elsewhere") {
        assert!(Instant::now() < deadline, "b.test never joined {ROOM}:\n{}", logs(&mut a, &mut b));
        std::thread::sleep(Duration::from_millis(100));
    }

    // Each side speaks; each message reaches the two others once.
    rt.block_on(ircuser.say(&format!("from irc {}", marker(IRC, 0)))).expect("irc send");
    rt.block_on(xavier.say(MUC, &format!("from xmpp {}", marker(XMPP, 0)))).expect("xmpp send");
    client(&alice, &server_a, &["send", ROOM, &format!("from alice {}", marker(ALICE, 0))]);
    let x_reader = format!("xmpp:{MUC}");
    arrived(&arrivals, &x_reader, &[marker(IRC, 0), marker(ALICE, 0)], (&mut a, &mut b));
    arrived(&arrivals, "irc", &[marker(XMPP, 0), marker(ALICE, 0)], (&mut a, &mut b));
    let mut heard = native(&alice, &server_a, 2);
    heard.sort();
    assert_eq!(heard, [marker(IRC, 0), marker(XMPP, 0)], "alice heard IRC and XMPP once");
    // On IRC, the XMPP user's line carries their name (with the zero-width space that keeps it from highlighting
    // anyone), not the other bridge's.
    let line = ircuser.lines().into_iter().find(|l| l.contains(&marker(XMPP, 0))).expect("the XMPP line on IRC");
    assert!(line.replace('\u{200b}', "").contains(&format!("<xavier> from xmpp {}", marker(XMPP, 0))), "{line}");

    // b.test dies; IRC and alice go on; b.test comes back on the same data directory, catches up from a.test's
    // log and hands the XMPP side what it missed, in order.
    b.kill();
    let mut missed = Vec::new();
    for i in 1..=3 {
        rt.block_on(ircuser.say(&format!("while b.test was down {}", marker(IRC, i)))).expect("irc send");
        missed.push(marker(IRC, i));
    }
    // Once alice has read them (so the room's order is known), she speaks too.
    assert_eq!(native(&alice, &server_a, 3), missed);
    client(&alice, &server_a, &["send", ROOM, &format!("alice, meanwhile {}", marker(ALICE, 1))]);
    missed.push(marker(ALICE, 1));
    b.restart();
    assert_eq!(arrived(&arrivals, &x_reader, &missed, (&mut a, &mut b)), missed, "in the room's order");
    // And b.test still speaks into the room from the group it stored.
    rt.block_on(xavier.say(MUC, &format!("after the restart {}", marker(XMPP, 1)))).expect("xmpp send");
    arrived(&arrivals, "irc", &[marker(XMPP, 1)], (&mut a, &mut b));
    assert_eq!(native(&alice, &server_a, 1), [marker(XMPP, 1)]);

    // b.test joined once: after the restart it spoke from the group it stored, not from a new join.
    assert_eq!(b.log().matches("joined a room hosted elsewhere").count(), 1, "{}", b.log());
    // Exactly once everywhere (a late duplicate would have arrived by now).
    std::thread::sleep(Duration::from_secs(1));
    for m in [marker(IRC, 0), marker(ALICE, 0)].iter().chain(&missed) {
        assert_eq!(arrivals.get(&x_reader, m).map(|(_, n)| n), Some(1), "{m} on XMPP");
    }
    for m in [marker(XMPP, 0), marker(ALICE, 0), marker(XMPP, 1)] {
        assert_eq!(arrivals.get("irc", &m).map(|(_, n)| n), Some(1), "{m} on IRC");
    }
    assert_eq!(client(&alice, &server_a, &["listen", ROOM, "--json", "--timeout", "1"]), "", "no duplicates");
}
