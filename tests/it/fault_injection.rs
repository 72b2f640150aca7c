//! Faults under load (issue #19 item 5): the daemon is killed with SIGKILL three times, at random points, while a
//! stream of 2 000 messages runs through one portal from a Matrix room (real Synapse), an XMPP MUC with an archive
//! (real Prosody), an IRC channel (real ngIRCd, penalties off so the stream is not throttled to a person's pace)
//! and a native MLS client; it is restarted each time.
//!
//! What must hold, on every reader (a Matrix user, an IRC user, an XMPP user and a second native client):
//! * nothing accepted is lost: every message Synapse took, every message sent to the MUC (the bridge catches up
//!   from its archive), every message the hub acknowledged to the native client, arrives;
//! * an IRC line can only be lost if it was on its way when the daemon died (IRC keeps no history): every IRC line
//!   arrives everywhere or nowhere, and one that arrives nowhere was sent in the second before a kill;
//! * no duplicates on Matrix (transaction ids), on XMPP (the archive is searched before a resend) and on the MLS
//!   side (message ids); at most one per crash on IRC.

use crate::common::client::{command, messages};
use crate::common::heavy;
use crate::common::three::{MUC, ROOM, Three, ThreeOptions};
use mimi_bench::measure::{marker, markers};
use rand::Rng;
use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

/// Messages per sender (four senders: 2 000 in all).
const PER_SENDER: usize = 500;
/// Time between two messages of one sender.
const PACE: Duration = Duration::from_millis(80);
/// Kills, each at a random point of the stream's first 36 seconds, at least 9 s apart.
const KILLS: usize = 3;
/// Senders.
const MATRIX: usize = 1;
const IRC: usize = 2;
const XMPP: usize = 3;
const ALICE: usize = 4;

/// Random kill offsets from the start of the stream: `KILLS` points in [3 s, 36 s), at least 9 s apart.
fn kill_points() -> Vec<Duration> {
    let mut rng = rand::rng();
    let slack = 33_000 - 9_000 * (KILLS as u64 - 1);
    let mut extra: Vec<u64> = (0..KILLS).map(|_| rng.random_range(0..slack)).collect();
    extra.sort_unstable();
    extra.iter().enumerate().map(|(k, e)| Duration::from_millis(3_000 + 9_000 * k as u64 + e)).collect()
}

/// Whether the bridge's IRC connection is in the channel, from what the IRC user saw last (JOIN or QUIT).
fn bridge_in_channel(lines: &[String]) -> bool {
    lines
        .iter()
        .rev()
        .filter(|l| l.starts_with(":bridge!"))
        .find_map(|l| match l.split(' ').nth(1) {
            Some("JOIN") => Some(true),
            Some("QUIT" | "PART") => Some(false),
            _ => None,
        })
        .unwrap_or(true)
}

/// Everything the native client `state` hears until it has heard nothing for 10 s: marker → times heard.
fn drain_native(state: &Path, server: &str) -> HashMap<String, u32> {
    let mut heard: HashMap<String, u32> = HashMap::new();
    loop {
        let out = command(state, server, &["listen", ROOM, "--json", "--count", "500", "--timeout", "10"])
            .output()
            .expect("mimi-bridge client runs");
        assert!(out.status.success(), "listen: {}", String::from_utf8_lossy(&out.stderr));
        let got = messages(&String::from_utf8_lossy(&out.stdout));
        if got.is_empty() {
            return heard;
        }
        for m in got.iter().flat_map(|m| markers(m["text"].as_str().unwrap_or_default())) {
            *heard.entry(m).or_default() += 1;
        }
    }
}

#[test]
fn three_sigkills_during_a_stream_across_three_networks_and_mls_lose_nothing_accepted() {
    let _heavy = heavy();
    // The IRC account keeps its default flood control: it follows the server's pace.
    let opts = ThreeOptions { irc_no_penalty: true };
    let mut t = Three::start_with(&opts);
    let kills = kill_points();
    eprintln!("kill points: {kills:?}");
    let handle = t.rt.handle().clone();
    let Three { xavier, ircuser, mx, d, arrivals, room, server, alice, bob, .. } = &mut t;
    let (xavier, ircuser, mx, room, server, alice) = (xavier, &*ircuser, &*mx, &*room, &*server, &*alice);
    let start = Instant::now();
    let mut killed_at: Vec<Instant> = Vec::new();
    let (irc_sent, alice_sent) = std::thread::scope(|s| {
        let h = handle.clone();
        let m = s.spawn(move || {
            for i in 0..PER_SENDER {
                // A call takes about as long as the pace: no pause.
                mx.say(room, &format!("from matrix {}", marker(MATRIX, i))).expect("Synapse takes it");
            }
        });
        let h2 = handle.clone();
        let x = s.spawn(move || {
            for i in 0..PER_SENDER {
                h2.block_on(xavier.say(MUC, &format!("from xmpp {}", marker(XMPP, i)))).expect("Prosody takes it");
                std::thread::sleep(PACE);
            }
        });
        let i = s.spawn(move || {
            let mut sent = Vec::new();
            for i in 0..PER_SENDER {
                // Nobody relays a line sent while the bridge is not in the channel: wait for it, as people do.
                while !bridge_in_channel(&ircuser.lines()) {
                    std::thread::sleep(Duration::from_millis(50));
                }
                h.block_on(ircuser.say(&format!("from irc {}", marker(IRC, i)))).expect("ngIRCd takes it");
                sent.push((marker(IRC, i), Instant::now()));
                std::thread::sleep(PACE);
            }
            sent
        });
        let a = s.spawn(move || {
            let mut accepted = Vec::new();
            for i in 0..PER_SENDER {
                let text = format!("from alice {}", marker(ALICE, i));
                let out = command(alice, server, &["send", ROOM, &text]).output().expect("mimi-bridge client runs");
                // A process per message takes longer than the pace: no pause, but after a refusal (the daemon is
                // down), as a person would.
                accepted.push((marker(ALICE, i), out.status.success()));
                if !out.status.success() {
                    std::thread::sleep(PACE);
                }
            }
            accepted
        });
        for at in &kills {
            std::thread::sleep((start + *at).saturating_duration_since(Instant::now()));
            d.kill();
            killed_at.push(Instant::now());
            std::thread::sleep(Duration::from_secs(1));
            d.restart();
        }
        m.join().expect("matrix sender");
        x.join().expect("xmpp sender");
        (i.join().expect("irc sender"), a.join().expect("native sender"))
    });
    eprintln!("stream sent in {:?}", start.elapsed());

    let mx_reader = format!("mx:{room}");
    let x_reader = format!("xmpp:{MUC}");
    let all = |s: usize| (0..PER_SENDER).map(move |i| marker(s, i));
    let accepted_alice: Vec<String> = alice_sent.iter().filter(|(_, ok)| *ok).map(|(m, _)| m.clone()).collect();
    let refused_alice = alice_sent.len() - accepted_alice.len();
    // An IRC line is in the stream if any reader got it (checked below: then every reader did).
    let irc_arrived = |m: &str| [mx_reader.as_str(), x_reader.as_str()].iter().any(|r| arrivals.get(r, m).is_some());

    // Every reader gets everything accepted (the slowest path — Synapse retrying its transactions after a crash —
    // may take a while).
    let expect: Vec<(&str, Vec<String>)> = vec![
        (mx_reader.as_str(), all(XMPP).chain(accepted_alice.iter().cloned()).collect()),
        ("irc", all(MATRIX).chain(all(XMPP)).chain(accepted_alice.iter().cloned()).collect()),
        (x_reader.as_str(), all(MATRIX).chain(accepted_alice.iter().cloned()).collect()),
    ];
    let deadline = Instant::now() + Duration::from_secs(120);
    while expect.iter().any(|(r, want)| !arrivals.missing(r, want).is_empty()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
    }
    // Every finding is collected, so that one run shows them all.
    let mut problems: Vec<String> = Vec::new();
    for (reader, want) in &expect {
        let missing = arrivals.missing(reader, want);
        if !missing.is_empty() {
            problems.push(format!("{reader} never got {} messages: {missing:?}", missing.len()));
        }
    }
    std::thread::sleep(Duration::from_secs(2));
    let on_bob = drain_native(bob, server);

    // IRC lines: everywhere or nowhere; nowhere only for a line sent in the second before a kill.
    let kills_in_stream: Vec<Duration> = killed_at.iter().map(|k| *k - start).collect();
    let mut irc_lost = Vec::new();
    for (m, at) in &irc_sent {
        let seen: Vec<bool> = [mx_reader.as_str(), x_reader.as_str()]
            .iter()
            .map(|r| arrivals.get(r, m).is_some())
            .chain([on_bob.contains_key(m)])
            .collect();
        if seen.iter().all(|s| !s) {
            let in_flight =
                killed_at.iter().any(|k| *at + Duration::from_secs(1) >= *k && *at <= *k + Duration::from_millis(500));
            if !in_flight {
                problems.push(format!("IRC line {m} sent {:?} into the stream was lost", *at - start));
            }
            irc_lost.push(m.clone());
        } else if !seen.iter().all(|s| *s) {
            problems.push(format!("IRC line {m} reached only some readers (matrix, xmpp, bob): {seen:?}"));
        }
    }
    if irc_lost.len() > KILLS * 2 {
        problems.push(format!("{} IRC lines lost in flight: {irc_lost:?}", irc_lost.len()));
    }

    // The native reader: everything accepted, from every side.
    let want_bob: Vec<String> = all(MATRIX)
        .chain(all(XMPP))
        .chain(accepted_alice.iter().cloned())
        .chain(irc_sent.iter().map(|(m, _)| m.clone()).filter(|m| irc_arrived(m)))
        .collect();
    let bob_missing: Vec<&String> = want_bob.iter().filter(|m| !on_bob.contains_key(*m)).collect();
    if !bob_missing.is_empty() {
        problems.push(format!("bob never got {} messages: {bob_missing:?}", bob_missing.len()));
    }

    // Duplicates: none on Matrix, XMPP and the MLS side; at most one per crash on IRC.
    let everything: Vec<String> = [MATRIX, IRC, XMPP, ALICE].into_iter().flat_map(all).collect();
    for reader in [mx_reader.as_str(), x_reader.as_str()] {
        let doubled: Vec<(&String, u32)> = everything
            .iter()
            .filter_map(|m| arrivals.get(reader, m).map(|(_, n)| (m, n)))
            .filter(|(_, n)| *n > 1)
            .collect();
        if !doubled.is_empty() {
            problems.push(format!("duplicates at {reader}: {doubled:?}"));
        }
    }
    let doubled: Vec<(&String, &u32)> = on_bob.iter().filter(|(_, n)| **n > 1).collect();
    if !doubled.is_empty() {
        problems.push(format!("duplicates at bob: {doubled:?}"));
    }
    let irc_dups: u32 = everything.iter().filter_map(|m| arrivals.get("irc", m)).map(|(_, n)| n - 1).sum();
    if irc_dups as usize > KILLS {
        problems.push(format!("{irc_dups} duplicates on IRC after {KILLS} crashes"));
    }
    eprintln!(
        "{} messages sent, {KILLS} SIGKILLs at {kills_in_stream:?}: IRC lines lost in flight {}, native sends refused \
         while down {refused_alice}, duplicates on IRC {irc_dups}",
        4 * PER_SENDER,
        irc_lost.len()
    );
    assert!(problems.is_empty(), "{}\n\nkills at {kills_in_stream:?}\n{}", problems.join("\n"), d.log());
}
