//! Three networks in one room: a Matrix room (appservice, real Synapse), an XMPP MUC (client mode, real Prosody) and
//! an IRC channel (real ngIRCd) linked to one portal, with two native MLS clients in its group. Everyone speaks at
//! once; every message reaches every other side exactly once, and every side sees them in the same order. An edit
//! made on Matrix then arrives on each side in the form the connectors' declared grades promise (the same grades
//! docs/capabilities.md shows): as a correction where the crossing is full, as a text fallback where it is
//! degraded.

use crate::common::client::{client, messages};
use crate::common::three::{CHANNEL, MUC, ROOM, Three};
use bridge_api::AccountId;
use bridge_api::capability::{Feature, Grade};
use mimi_bench::irc::IrcUser;
use mimi_bench::measure::{Arrivals, marker, markers};
use serde_json::json;
use std::path::Path;
use std::time::{Duration, Instant};

const ROUNDS: usize = 2;
/// Senders, in the order they speak in each round.
const MATRIX: usize = 1;
const IRC: usize = 2;
const XMPP: usize = 3;
const ALICE: usize = 4;
const BOB: usize = 5;

/// The grade at which `feature` crosses from account `from` to account `to` of the config, as the connectors
/// declare it.
fn crossing(cfg: &Path, from: &str, to: &str, feature: Feature) -> Grade {
    let cfg = mimi_bridge::config::Config::load(cfg).expect("valid config");
    let accounts = mimi_bridge::capabilities_cmd::accounts(&cfg).expect("capabilities");
    let caps = |name: &str| {
        let id = AccountId::parse(name).expect("account id");
        accounts.iter().find(|(i, _)| *i == id).map(|(_, c)| c.clone()).expect("configured")
    };
    mimi_bridge::capabilities_cmd::crossing(&caps(from), &caps(to), feature)
}

/// Waits until `reader` has seen every marker of `expected`; the markers it saw, in the order they arrived.
fn arrived_in_order(arrivals: &Arrivals, reader: &str, expected: &[String]) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let seen: Vec<(Instant, String)> =
            expected.iter().filter_map(|m| arrivals.get(reader, m).map(|(t, _)| (t, m.clone()))).collect();
        if seen.len() == expected.len() {
            let mut seen = seen;
            seen.sort();
            return seen.into_iter().map(|(_, m)| m).collect();
        }
        assert!(Instant::now() < deadline, "{reader} saw only {seen:?} of {expected:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Every message sent by everyone but `me`, in no particular order.
fn others(me: usize) -> Vec<String> {
    [MATRIX, IRC, XMPP, ALICE, BOB]
        .into_iter()
        .filter(|s| *s != me)
        .flat_map(|s| (0..ROUNDS).map(move |i| marker(s, i)))
        .collect()
}

/// Checks that two sides saw the messages both saw in the same relative order.
fn same_order(a_name: &str, a: &[String], b_name: &str, b: &[String]) {
    let common: Vec<&String> = a.iter().filter(|m| b.contains(m)).collect();
    let b_common: Vec<&String> = b.iter().filter(|m| a.contains(m)).collect();
    assert_eq!(common, b_common, "{a_name} and {b_name} disagree on the order");
}

#[test]
fn matrix_xmpp_irc_and_two_native_clients_in_one_portal_see_every_message_once_in_one_order() {
    let mut t = Three::start();
    let Three { xavier, ircuser, mx, rt, d, arrivals, room, cfg, server, alice, bob, irc, .. } = &mut t;
    // Everyone speaks, without waiting for anyone's message to arrive.
    for i in 0..ROUNDS {
        mx.say(room, &format!("from matrix {}", marker(MATRIX, i))).expect("matrix send");
        rt.block_on(ircuser.say(&format!("from irc {}", marker(IRC, i)))).expect("irc send");
        rt.block_on(xavier.say(MUC, &format!("from xmpp {}", marker(XMPP, i)))).expect("xmpp send");
        client(alice, server, &["send", ROOM, &format!("from alice {}", marker(ALICE, i))]);
        client(bob, server, &["send", ROOM, &format!("from bob {}", marker(BOB, i))]);
    }

    let mx_reader = format!("mx:{room}");
    let on_matrix = arrived_in_order(arrivals, &mx_reader, &others(MATRIX));
    let on_irc = arrived_in_order(arrivals, "irc", &others(IRC));
    let x_reader = format!("xmpp:{MUC}");
    let on_xmpp = arrived_in_order(arrivals, &x_reader, &others(XMPP));
    let native = |state: &Path, me: usize| -> Vec<String> {
        let n = others(me).len().to_string();
        let got = messages(&client(state, server, &["listen", ROOM, "--json", "--count", &n, "--timeout", "60"]));
        got.iter().flat_map(|m| markers(m["text"].as_str().unwrap_or_default())).collect()
    };
    let on_alice = native(alice, ALICE);
    let on_bob = native(bob, BOB);
    for (name, seen, me) in [("alice", &on_alice, ALICE), ("bob", &on_bob, BOB)] {
        let mut sorted = seen.clone();
        sorted.sort();
        let mut want = others(me);
        want.sort();
        assert_eq!(sorted, want, "{name} heard each other message once: {seen:?}");
    }
    // Exactly once on the networks too (a late duplicate would have arrived by now).
    std::thread::sleep(Duration::from_secs(1));
    for (reader, me) in [(mx_reader.as_str(), MATRIX), ("irc", IRC), (x_reader.as_str(), XMPP)] {
        for m in others(me) {
            assert_eq!(arrivals.get(reader, &m).map(|(_, n)| n), Some(1), "{m} at {reader}");
        }
    }
    // One order: the MLS group's. Each side's view, restricted to what two sides share, agrees.
    let views = [("matrix", &on_matrix), ("irc", &on_irc), ("xmpp", &on_xmpp), ("alice", &on_alice), ("bob", &on_bob)];
    for (i, (a_name, a)) in views.iter().enumerate() {
        for (b_name, b) in &views[i + 1..] {
            same_order(a_name, a, b_name, b);
        }
    }
    // Each sender's own messages keep their order everywhere.
    for (name, seen) in views {
        for s in [MATRIX, IRC, XMPP, ALICE, BOB] {
            let mine: Vec<&String> = seen.iter().filter(|m| m.starts_with(&format!("mb{s}x"))).collect();
            let mut sorted = mine.clone();
            sorted.sort();
            assert_eq!(mine, sorted, "{name} reordered sender {s}'s messages");
        }
    }

    // An edit on Matrix arrives as the grades promise: as a correction on XMPP, as a text fallback on IRC.
    let first = mx.call("GET", &format!("/_matrix/client/v3/rooms/{room}/messages?dir=f&limit=100"), None);
    let first = first.expect("history")["chunk"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["content"]["body"].as_str().is_some_and(|b| b.contains(&marker(MATRIX, 0))))
        .and_then(|e| e["event_id"].as_str().map(str::to_owned))
        .expect("the first Matrix message");
    let edited = format!("entirely rewritten {}", marker(6, 0));
    let edit = json!({"msgtype": "m.text", "body": format!("* {edited}"),
                      "m.new_content": {"msgtype": "m.text", "body": edited},
                      "m.relates_to": {"rel_type": "m.replace", "event_id": first}});
    mx.call("PUT", &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/edit1"), Some(edit)).expect("edit");
    assert_eq!(crossing(cfg, "matrix.hs", "xmpp.t", Feature::Edits), Grade::Full);
    let correction = rt
        .block_on(xavier.wait("the correction", |e| {
            e.name() == "message"
                && e.get_child("replace", "urn:xmpp:message-correct:0").is_some()
                && e.get_child("body", "jabber:client").is_some_and(|b| b.text().contains(&marker(6, 0)))
        }))
        .unwrap_or_else(|e| panic!("{e}: {}", d.log()));
    assert!(correction.get_child("replace", "urn:xmpp:message-correct:0").and_then(|r| r.attr("id")).is_some());
    assert_eq!(crossing(cfg, "matrix.hs", "irc.t", Feature::Edits), Grade::Degraded);
    // `edits = "diff"` (the default): a rewrite too large for `s/old/new/` is the new text marked as an edit.
    let edit_line = marker(6, 0);
    rt.block_on(
        ircuser.wait(|l| l.contains(" PRIVMSG #chan ") && l.contains(&edit_line) && l.contains("(edit)"), "the edit"),
    )
    .unwrap_or_else(|e| panic!("{e}: {}", d.log()));
    for (name, state) in [("alice", &alice), ("bob", &bob)] {
        let got = messages(&client(state, server, &["listen", ROOM, "--json", "--count", "1", "--timeout", "30"]));
        assert!(
            got.first().is_some_and(|m| m["replaces"].is_string() && m["text"] == edited.as_str()),
            "{name} got the edit as an edit: {got:?}"
        );
    }

    // Membership: an IRC user who comes into the channel shows up in the Matrix room as a ghost (after the IRC
    // connector's short hold, `roster::CHANGE_HOLD`) and leaves it when they quit.
    assert_eq!(crossing(cfg, "irc.t", "matrix.hs", Feature::Membership), Grade::Full);
    let mut ghost_joined = |want: bool| {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let members = mx.call("GET", &format!("/_matrix/client/v3/rooms/{room}/joined_members"), None);
            let members = members.unwrap_or_else(|e| panic!("{e}: {}", d.log()));
            let there = members["joined"].as_object().is_some_and(|m| m.keys().any(|k| k.contains("newcomer")));
            if there == want {
                return;
            }
            assert!(Instant::now() < deadline, "newcomer's ghost joined: {there}, not {want}: {members}\n{}", d.log());
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let newcomer =
        rt.block_on(IrcUser::join(&irc.addr(), "newcomer", CHANNEL, "irc2", arrivals.clone())).expect("newcomer joins");
    ghost_joined(true);
    rt.block_on(newcomer.quit("bye")).expect("quit");
    ghost_joined(false);
}
