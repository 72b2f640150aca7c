//! Federation between two `mimi-bridge run` daemons on one machine, through real HTTP on loopback, with the real
//! `mimi-client` binary: a room hosted by a.test, members on b.test who join it by external commit and by
//! invitation, messages both ways, b.test killed with SIGKILL and restarted while a.test's users keep talking,
//! and a b.test user sending for an epoch the hub has left.
//!
//! Each daemon's `[[mimi.peer]]` URL for the other points at a transparent relay the test controls
//! (`crate::client_support::relay`): it lets the test hold back the hub's notifies and see the hub's answers.

use crate::client_support::daemon::{free_port, start, url};
use crate::client_support::relay::Relay;
use crate::client_support::{Spawned, client, texts};
use mimi_bridge::mimi_http::http::request;
use mimi_protocol::wire::{
    DEFAULT_CIPHERSUITE, GroupInfoCode, GroupInfoRequest, GroupInfoResponse, HubSigner, SubmitMessageResponse,
    WireMessage,
};
use std::time::{Duration, Instant};

/// One `listen --json` of up to `count` messages.
fn listen(state: &std::path::Path, server: &str, room: &str, count: usize) -> Vec<String> {
    texts(&client(state, server, &["listen", room, "--json", "--count", &count.to_string(), "--timeout", "15"]))
}

#[test]
fn two_daemons_share_a_room_across_a_crash_and_an_epoch_change() {
    let _heavy = crate::common::heavy();
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (port_a, port_b) = (free_port(), free_port());
    let to_a = Relay::start(&rt, &format!("http://127.0.0.1:{port_a}"));
    let to_b = Relay::start(&rt, &format!("http://127.0.0.1:{port_b}"));
    let a = start(dir.path(), "a.test", port_a, &[("b.test", &to_b.url)]);
    let mut b = start(dir.path(), "b.test", port_b, &[("a.test", &to_a.url)]);
    let (server_a, server_b) = (url(port_a), url(port_b));

    // Bad input at the provider-to-provider endpoints.
    let status = |url: String, from: &str, headers: &[(&str, &str)], body: Vec<u8>| {
        rt.block_on(request("POST", &url, from, headers, body)).expect("answer").status
    };
    let notify = format!("{server_b}/v1/notify/a.test/r/club");
    assert_eq!(status(notify.clone(), "c.test", &[("mimi-sequence", "1")], vec![0]), 403, "unconfigured peer");
    assert_eq!(status(notify, "a.test", &[("mimi-sequence", "1")], vec![0, 1]), 400, "malformed FanoutMessage");
    let key_material = format!("{server_b}/v1/keyMaterial/b.test/u/bob");
    assert_eq!(status(key_material, "a.test", &[], b"\x01junk".to_vec()), 400, "malformed KeyMaterialRequest");
    let group_info = format!("{server_a}/v1/groupInfo/a.test/r/nowhere");
    assert_eq!(status(group_info.clone(), "b.test", &[], Vec::new()), 400, "malformed GroupInfoRequest");
    let key = HubSigner::generate(b"mimi://b.test/u/mallory").expect("key");
    let credential = key.sender.credential.credential().expect("credential");
    let (mut gi_request, _) =
        GroupInfoRequest::new(DEFAULT_CIPHERSUITE, &key, &key.sender.signature_key, &credential, None).expect("req");
    let answer = rt.block_on(request("POST", &group_info, "b.test", &[], gi_request.encode().expect("enc")));
    let answer = GroupInfoResponse::decode(&answer.expect("answer").body).expect("a GroupInfoResponse");
    assert_eq!(answer.status(), GroupInfoCode::NoSuchRoom);
    gi_request.tbs.joining_code = Some(b"tampered".to_vec());
    assert_eq!(status(group_info, "b.test", &[], gi_request.encode().expect("enc")), 400, "bad signature");
    let huge = vec![0; 2 << 20];
    assert_eq!(status(format!("{server_a}/v1/submitMessage/a.test/r/club"), "b.test", &[], huge), 413);

    // alice (a.test) creates a room; a.test is its hub.
    let (alice, bob, carol, dave) =
        (dir.path().join("alice"), dir.path().join("bob"), dir.path().join("carol"), dir.path().join("dave"));
    client(&alice, &server_a, &["register", "alice"]);
    let room = client(&alice, &server_a, &["create-room", "club"]).trim().to_owned();
    assert_eq!(room, "mimi://a.test/r/club");

    // bob (b.test) joins by external commit: b.test fetches the GroupInfo from a.test and forwards the commit.
    assert_eq!(client(&bob, &server_b, &["register", "bob"]).trim(), "mimi://b.test/u/bob");
    assert_eq!(client(&bob, &server_b, &["join", &room]).trim(), format!("joined {room}"));

    // carol (b.test) is invited by alice: a.test claims her KeyPackage from b.test, the Welcome reaches her
    // through b.test's copy of the room's log.
    client(&carol, &server_b, &["register", "carol"]);
    client(&alice, &server_a, &["invite", &room, "mimi://b.test/u/carol"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !client(&carol, &server_b, &["invites"]).contains(&room) {
        assert!(Instant::now() < deadline, "carol's invitation never reached b.test:\n{}", b.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    client(&carol, &server_b, &["join", &room]);

    // Messages both ways.
    client(&alice, &server_a, &["send", &room, "hello from a.test"]);
    assert_eq!(listen(&bob, &server_b, &room, 1), ["hello from a.test"]);
    assert_eq!(listen(&carol, &server_b, &room, 1), ["hello from a.test"]);
    client(&bob, &server_b, &["send", &room, "hello from bob"]);
    let got = client(&alice, &server_a, &["listen", &room, "--json", "--count", "1", "--timeout", "15"]);
    assert_eq!(texts(&got), ["hello from bob"]);
    assert!(got.contains("\"sender\":\"mimi://b.test/u/bob\""), "{got}");
    assert_eq!(listen(&carol, &server_b, &room, 1), ["hello from bob"]);
    client(&carol, &server_b, &["send", &room, "carol here"]);
    assert_eq!(listen(&alice, &server_a, &room, 1), ["carol here"]);
    assert_eq!(listen(&bob, &server_b, &room, 1), ["carol here"]);

    // b.test dies (SIGKILL) while bob listens; alice goes on; b.test comes back on the same data directory and
    // catches up from a.test's log at start — the hub's notifies are held back meanwhile, so that is the only
    // way. bob's listener rides out the outage.
    let listener = Spawned::start(&bob, &server_b, &["listen", &room, "--json", "--count", "3", "--timeout", "40"]);
    std::thread::sleep(Duration::from_millis(300));
    b.kill();
    listener.wait_for_stderr("server unreachable", Duration::from_secs(10));
    for n in 1..=3 {
        client(&alice, &server_a, &["send", &room, &format!("while b.test was down {n}")]);
    }
    to_b.hold_notifies(true);
    let fetches = to_a.passed("/v1/log/").len();
    b.restart();
    let down = ["while b.test was down 1", "while b.test was down 2", "while b.test was down 3"];
    assert_eq!(texts(&listener.finish()), down);
    assert!(to_a.passed("/v1/log/").len() > fetches, "b.test caught up from the hub's log");
    assert_eq!(listen(&carol, &server_b, &room, 3), down);
    to_b.hold_notifies(false);
    assert_eq!(client(&bob, &server_b, &["listen", &room, "--json", "--timeout", "1"]), "", "no duplicates");
    assert_eq!(client(&carol, &server_b, &["listen", &room, "--json", "--timeout", "1"]), "", "no duplicates");

    // The hub moves to a new epoch (alice adds dave) while its notifies to b.test are held back: bob's next
    // message is for the old epoch. The hub answers epochTooOld; b.test catches up and tells bob, who processes
    // the commit and sends again.
    to_b.hold_notifies(true);
    client(&dave, &server_a, &["register", "dave"]);
    client(&alice, &server_a, &["invite", &room, "dave"]);
    client(&dave, &server_a, &["join", &room]);
    let before = to_a.passed("/v1/submitMessage/").len();
    client(&bob, &server_b, &["send", &room, "after the epoch moved"]);
    let answers: Vec<SubmitMessageResponse> = to_a.passed("/v1/submitMessage/")[before..]
        .iter()
        .map(|p| {
            assert_eq!(p.status, 200, "{}", String::from_utf8_lossy(&p.body));
            SubmitMessageResponse::decode(&p.body).expect("SubmitMessageResponse")
        })
        .collect();
    // Epochs: 0 created, 1 bob's external commit, 2 carol added, 3 dave added.
    assert_eq!(answers.len(), 2, "{answers:?}");
    assert_eq!(answers[0], SubmitMessageResponse::EpochTooOld { current_epoch: 3 });
    assert!(matches!(answers[1], SubmitMessageResponse::Accepted { .. }), "{answers:?}");
    assert_eq!(listen(&alice, &server_a, &room, 1), ["after the epoch moved"]);
    assert_eq!(listen(&dave, &server_a, &room, 1), ["after the epoch moved"]);
    assert!(to_b.passed("/v1/notify/").iter().any(|p| p.status == 503), "notifies were held back");
    assert_eq!(client(&bob, &server_b, &["listen", &room, "--json", "--timeout", "1"]), "", "own message not echoed");
    // Released, the held-back notifies arrive (the hub retries with backoff) and carol reads on.
    to_b.hold_notifies(false);
    assert_eq!(listen(&carol, &server_b, &room, 1), ["after the epoch moved"]);

    // The GroupInfo a.test keeps is the one alice's last commit carried: erin (b.test) joins from it.
    let erin = dir.path().join("erin");
    client(&erin, &server_b, &["register", "erin"]);
    client(&erin, &server_b, &["join", &room]);
    client(&alice, &server_a, &["send", &room, "welcome erin"]);
    assert_eq!(listen(&erin, &server_b, &room, 1), ["welcome erin"]);
    assert_eq!(listen(&bob, &server_b, &room, 1), ["welcome erin"]);

    drop(a);
    drop(b);
    let took = started.elapsed();
    eprintln!("federation scenario took {took:?}");
    assert!(took < Duration::from_secs(60), "took {took:?}");
}
