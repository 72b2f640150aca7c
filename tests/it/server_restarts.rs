//! Each network's server restarted mid-stream (issue #19 item 5), on the real servers of [`Three`]: ngIRCd, then
//! Prosody, then Synapse is killed while the other sides and a native MLS client go on talking, and started again.
//! The daemon reconnects with backoff and delivers everything it accepted meanwhile, once; the restarted network's
//! users are heard again on every other side; a second native client hears everything once.
//!
//! Where the restarted network keeps no history for a newcomer (IRC), its user rejoins while the daemon is still
//! backing off (the test waits for a retry at least a second away before starting ngIRCd), so that what the daemon
//! delivers after its own rejoin is seen.

use crate::common::client::{client, command, messages};
use crate::common::heavy;
use crate::common::three::{CHANNEL, MUC, ROOM, Three, ThreeOptions};
use crate::xmpp_crash::archive;
use mimi_bench::irc::IrcUser;
use mimi_bench::measure::{marker, markers};
use mimi_bench::xmpp::XmppUser;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Messages each side sends while a server is down.
const EACH: usize = 3;
/// Senders (the marker's first number: phase × 10 + sender).
const MATRIX: usize = 1;
const IRC: usize = 2;
const XMPP: usize = 3;
const ALICE: usize = 4;

/// The markers sender `s` sends in phase `phase`.
fn sent(phase: usize, s: usize) -> Vec<String> {
    (0..EACH).map(|i| marker(phase * 10 + s, i)).collect()
}

/// Waits (up to `secs`) until `reader` has each of `want`; the missing ones, if any.
fn wait_for(t: &Three, reader: &str, want: &[String], secs: u64) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let missing = t.arrivals.missing(reader, want);
        if missing.is_empty() || Instant::now() > deadline {
            return missing;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Notes in `problems` what each of `readers` has not got of `want` within `secs` seconds, `after` what.
fn expect_at(t: &Three, problems: &mut Vec<String>, after: &str, readers: &[&str], want: &[String], secs: u64) {
    for reader in readers {
        let missing = wait_for(t, reader, want, secs);
        if !missing.is_empty() {
            problems.push(format!("after {after}, {reader} never got {missing:?}"));
        }
    }
}

/// How often `reader` got each of `want`, for the ones not got exactly once.
fn not_once(t: &Three, reader: &str, want: &[String]) -> Vec<(String, u32)> {
    want.iter().map(|m| (m.clone(), t.arrivals.get(reader, m).map_or(0, |(_, n)| n))).filter(|(_, n)| *n != 1).collect()
}

/// Waits until the daemon's IRC connection has failed again and its next try is at least a second away.
fn wait_for_a_long_irc_backoff(t: &mut Three, from_line: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let log = t.d.log();
        let long = log.lines().skip(from_line).any(|l| {
            l.contains("IRC connection lost")
                && l.split("retry_in=")
                    .nth(1)
                    .and_then(|r| r.split_whitespace().next())
                    .and_then(|r| r.strip_suffix('s'))
                    .and_then(|r| r.parse::<f64>().ok())
                    .is_some_and(|secs| secs >= 1.0)
        });
        if long {
            return;
        }
        assert!(Instant::now() < deadline, "no IRC backoff of a second or more:\n{log}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn say_on_matrix(t: &Three, phase: usize) {
    for m in sent(phase, MATRIX) {
        t.mx.say(&t.room, &format!("from matrix {m}")).expect("Synapse takes it");
    }
}

fn say_on_irc(t: &Three, phase: usize) {
    for m in sent(phase, IRC) {
        t.rt.block_on(t.ircuser.say(&format!("from irc {m}"))).expect("ngIRCd takes it");
    }
}

fn say_on_xmpp(t: &mut Three, phase: usize) {
    for m in sent(phase, XMPP) {
        t.rt.block_on(t.xavier.say(MUC, &format!("from xmpp {m}"))).expect("Prosody takes it");
    }
}

fn say_as_alice(t: &Three, phase: usize) {
    for m in sent(phase, ALICE) {
        client(&t.alice, &t.server, &["send", ROOM, &format!("from alice {m}")]);
    }
}

#[test]
fn ngircd_prosody_and_synapse_each_restarted_mid_stream_lose_nothing_accepted() {
    let _heavy = heavy();
    let mut t = Three::start_with(&ThreeOptions { irc_no_penalty: true });
    let mx_reader = t.mx_reader();
    let x_reader = Three::xmpp_reader();
    let mut problems: Vec<String> = Vec::new();
    let mut everything: Vec<String> = Vec::new();

    // 1. ngIRCd: down while Matrix, XMPP and alice talk; the IRC user is back in the channel before the daemon.
    let from_line = t.d.log().lines().count();
    t.irc.kill();
    say_on_matrix(&t, 1);
    say_on_xmpp(&mut t, 1);
    say_as_alice(&t, 1);
    wait_for_a_long_irc_backoff(&mut t, from_line);
    t.irc.restart().expect("ngIRCd starts again");
    let irc_addr = t.irc.addr();
    t.ircuser =
        t.rt.block_on(IrcUser::join(&irc_addr, "ircuser", CHANNEL, "irc", t.arrivals.clone()))
            .expect("the IRC user rejoins");
    let to_irc: Vec<String> = [MATRIX, XMPP, ALICE].into_iter().flat_map(|s| sent(1, s)).collect();
    expect_at(&t, &mut problems, "ngIRCd's restart", &["irc"], &to_irc, 90);
    t.rt.block_on(t.ircuser.wait_member("bridge")).expect("the daemon is back in the channel");
    say_on_irc(&t, 1);
    expect_at(&t, &mut problems, "ngIRCd's restart", &[&mx_reader, &x_reader], &sent(1, IRC), 30);
    everything.extend([MATRIX, IRC, XMPP, ALICE].into_iter().flat_map(|s| sent(1, s)));

    // 2. Prosody: down while Matrix, IRC and alice talk; the room's archive shows what the daemon delivered.
    t.prosody.kill();
    say_on_matrix(&t, 2);
    say_on_irc(&t, 2);
    say_as_alice(&t, 2);
    t.prosody.restart().expect("Prosody starts again");
    // A room Prosody was killed with exists again once someone joins: the XMPP user, then the daemon.
    let c2s = t.prosody.c2s_addr();
    t.xavier = t.rt.block_on(XmppUser::login(&c2s, "xavier", "xavier", t.arrivals.clone())).expect("XMPP login");
    t.rt.block_on(t.xavier.join(MUC)).expect("xavier rejoins the MUC");
    t.rt.block_on(t.xavier.wait_occupant(MUC, "mimi-bridge")).expect("the daemon is back in the MUC");
    let to_xmpp: Vec<String> = [MATRIX, IRC, ALICE].into_iter().flat_map(|s| sent(2, s)).collect();
    let deadline = Instant::now() + Duration::from_secs(90);
    let in_archive = loop {
        let mut counts: HashMap<String, u32> = HashMap::new();
        for m in t.rt.block_on(archive(&t.prosody, "xavier")).iter().flat_map(|b| markers(b)) {
            *counts.entry(m).or_default() += 1;
        }
        if to_xmpp.iter().all(|m| counts.contains_key(m)) || Instant::now() > deadline {
            break counts;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let wrong: Vec<(&String, u32)> =
        to_xmpp.iter().map(|m| (m, in_archive.get(m).copied().unwrap_or(0))).filter(|(_, n)| *n != 1).collect();
    if !wrong.is_empty() {
        problems.push(format!("after Prosody's restart, the MUC's archive holds these not once: {wrong:?}"));
    }
    say_on_xmpp(&mut t, 2);
    expect_at(&t, &mut problems, "Prosody's restart", &[&mx_reader, "irc"], &sent(2, XMPP), 30);
    everything.extend([MATRIX, IRC, XMPP, ALICE].into_iter().flat_map(|s| sent(2, s)));

    // 3. Synapse: down while IRC, XMPP and alice talk; its user's sync picks up where it was.
    t.hs.kill();
    say_on_irc(&t, 3);
    say_on_xmpp(&mut t, 3);
    say_as_alice(&t, 3);
    t.hs.restart().expect("Synapse starts again");
    let to_matrix: Vec<String> = [IRC, XMPP, ALICE].into_iter().flat_map(|s| sent(3, s)).collect();
    expect_at(&t, &mut problems, "Synapse's restart", &[&mx_reader], &to_matrix, 120);
    say_on_matrix(&t, 3);
    expect_at(&t, &mut problems, "Synapse's restart", &["irc", &x_reader], &sent(3, MATRIX), 60);
    everything.extend([MATRIX, IRC, XMPP, ALICE].into_iter().flat_map(|s| sent(3, s)));

    // Once each on the live readers (a late duplicate would have come by now), and on the second native client.
    std::thread::sleep(Duration::from_secs(1));
    let not_from = |s: usize, phases: &[usize]| -> Vec<String> {
        phases
            .iter()
            .flat_map(|p| [MATRIX, IRC, XMPP, ALICE].into_iter().filter(|x| *x != s).flat_map(|x| sent(*p, x)))
            .collect()
    };
    // The IRC user rejoined before phase 1's deliveries and Matrix's never left; the XMPP user rejoined after
    // phase 2's (checked in the archive above).
    for (reader, want) in [
        ("irc", not_from(IRC, &[1, 2, 3])),
        (mx_reader.as_str(), not_from(MATRIX, &[1, 2, 3])),
        (x_reader.as_str(), not_from(XMPP, &[1, 3])),
    ] {
        let wrong = not_once(&t, reader, &want);
        if !wrong.is_empty() {
            problems.push(format!("{reader} got these not once: {wrong:?}"));
        }
    }
    let want_bob = everything.len();
    let out =
        command(&t.bob, &t.server, &["listen", ROOM, "--json", "--count", &want_bob.to_string(), "--timeout", "60"])
            .output()
            .expect("mimi-bridge client runs");
    let mut on_bob: HashMap<String, u32> = HashMap::new();
    for m in messages(&String::from_utf8_lossy(&out.stdout))
        .iter()
        .flat_map(|m| markers(m["text"].as_str().unwrap_or_default()))
    {
        *on_bob.entry(m).or_default() += 1;
    }
    let wrong: Vec<(&String, u32)> =
        everything.iter().map(|m| (m, on_bob.get(m).copied().unwrap_or(0))).filter(|(_, n)| *n != 1).collect();
    if !wrong.is_empty() {
        problems.push(format!("bob got these not once: {wrong:?}"));
    }
    if !problems.is_empty() {
        let synapse: Vec<String> =
            t.hs.log()
                .lines()
                .filter(|l| {
                    ["ppservice", "ecover", "transactions", "appservice", "Error", "rror"].iter().any(|k| l.contains(k))
                })
                .map(str::to_owned)
                .collect();
        panic!("{}\n\ndaemon:\n{}\n\nSynapse on appservices:\n{}", problems.join("\n"), t.d.log(), synapse.join("\n"));
    }
}
