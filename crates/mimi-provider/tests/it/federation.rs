//! A room hosted by a.test with members on b.test: an invite across providers (keyMaterial), an external join
//! through b.test, messages both ways, b.test down while a.test sequences messages and catching up afterwards (in
//! order, no duplicates), and the hub's "epoch too old" making b.test catch up before it answers its client.

use crate::support::{Node, User, two_providers, until};
use mimi_provider::{RoomRoute, Status, Verdict};
use std::time::Duration;

fn accepted(seq: u64) -> Verdict {
    Verdict::Accepted { seq: Some(seq) }
}

/// alice (a.test) creates an open room; bob (b.test) joins it by external commit through b.test. The room's URI.
async fn room_with_bob(a: &Node, b: &Node, alice: &mut User, bob: &mut User) -> String {
    let room = alice.create_room(a, "club").await;
    let gi = bob.group_info(b, &room).await;
    let join = bob.external_commit(&gi).await;
    let seq = a.last_seq(&room) + 1;
    assert_eq!(b.clients.update(&bob.client, &room, join).await, Ok(accepted(seq)), "the hub's number, through b.test");
    bob.joined_at(seq);
    assert_eq!(b.provider.route(&room).expect("route"), RoomRoute::Follower { hub: "a.test".into() });
    room
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_providers_share_a_room_across_an_invite_a_join_and_an_outage() {
    let (net, a, b) = two_providers();
    let mut alice = User::register(&a, "alice").await;
    let room = alice.create_room(&a, "club").await;

    // carol (b.test) is invited by alice: a.test claims her KeyPackage from b.test, which follows the room from
    // then on (the Welcome will come through the room's log).
    let mut carol = User::register(&b, "carol").await;
    carol.upload_key_packages(&b, 2).await;
    assert_eq!(b.provider.route(&room).expect("route"), RoomRoute::Remote { domain: "a.test".into() });
    let kp = a.clients.claim_key_package(&alice.client, &carol.uri, Some(&room)).await.expect("carol's KeyPackage");
    assert_eq!(b.provider.route(&room).expect("route"), RoomRoute::Follower { hub: "a.test".into() });
    assert!(a.provider.is_participant(&room, &carol.uri).expect("room"));
    assert!(a.provider.has_follower(&room, "b.test").expect("room"));
    let out = alice.group().add_members(&[&kp]).durable().await.expect("add");
    let invite = crate::support::commit_request(out.commit, out.welcome, out.group_info.expect("group info"));
    let verdict = a.clients.update(&alice.client, &room, invite).await;
    assert_eq!(verdict, Ok(accepted(1)));
    alice.settle_commit(&verdict).await;
    until("carol's invitation reaches b.test", || {
        b.clients.invites(&carol.client).expect("invites").contains(&(room.clone(), 2))
    })
    .await;
    carol.join_from_welcome(&b, &room, 2).await;
    assert_eq!(carol.epoch(), 1);

    // An update for a room a.test does not have: b.test followed it only while the update was on its way.
    let mut bob = User::register(&b, "bob").await;
    let gi = bob.group_info(&b, &room).await;
    let legacy = b.clients.group_info(&bob.client, &room).await.expect("GroupInfo with b.test's own request");
    assert_eq!(legacy, gi.0, "both ways of asking a.test give its current GroupInfo");
    let join = bob.external_commit(&gi).await;
    let nowhere = "mimi://a.test/r/nowhere";
    let refused = b.clients.update(&bob.client, nowhere, join.clone()).await.expect_err("no such room");
    assert_eq!(refused.status, Status::NotFound, "{refused:?}");
    assert_eq!(b.provider.route(nowhere).expect("route"), RoomRoute::Remote { domain: "a.test".into() }, "forgotten");

    // b.test's copy of the room is for those of its users the hub let in: carol (a Welcome), not yet bob.
    assert!(b.provider.may_read(&room, &carol.uri).expect("followed"));
    assert!(!b.provider.may_read(&room, &bob.uri).expect("followed"), "bob has not joined yet");

    // bob (b.test) joins by external commit through b.test.
    assert_eq!(b.clients.update(&bob.client, &room, join).await, Ok(accepted(3)));
    assert!(b.provider.may_read(&room, &bob.uri).expect("followed"), "the hub sequenced bob's join");
    bob.joined_at(3);
    assert_eq!(alice.read(&a, &room).await, Vec::<String>::new());
    until("b.test has bob's commit", || b.last_seq(&room) == 3).await;
    assert_eq!(carol.read(&b, &room).await, Vec::<String>::new());
    assert_eq!((alice.epoch(), bob.epoch(), carol.epoch()), (2, 2, 2));

    // Messages both ways.
    assert_eq!(alice.say(&a, &room, "hello from a.test").await, Ok(accepted(4)));
    assert_eq!(bob.say(&b, &room, "hello from b.test").await, Ok(accepted(5)));
    until("b.test has both messages", || b.last_seq(&room) == 5).await;
    assert_eq!(bob.read(&b, &room).await, ["hello from a.test"]);
    assert_eq!(carol.read(&b, &room).await, ["hello from a.test", "hello from b.test"]);
    assert_eq!(alice.read(&a, &room).await, ["hello from b.test"]);

    // b.test is down while a.test sequences messages; its users' messages get no answer meanwhile.
    net.set_down("b.test", true);
    let down = ["while b.test was down 1", "while b.test was down 2", "while b.test was down 3"];
    for (i, text) in down.iter().enumerate() {
        assert_eq!(alice.say(&a, &room, text).await, Ok(accepted(6 + i as u64)));
    }
    let lost = bob.say(&b, &room, "lost").await.expect_err("the hub is unreachable");
    assert_eq!(lost.status, Status::BadGateway, "{lost:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!((a.last_seq(&room), b.last_seq(&room)), (8, 5));

    // Back up: the notifier's next try shows b.test a gap, which it fills from a.test's log.
    net.set_down("b.test", false);
    until("b.test caught up", || b.last_seq(&room) == 8).await;
    assert_eq!(b.log(&room), a.log(&room), "the same entries, in the same order");
    assert_eq!(b.log(&room).iter().map(|(s, _)| *s).collect::<Vec<_>>(), (1..=8).collect::<Vec<_>>());
    assert_eq!(carol.read(&b, &room).await, down);
    assert_eq!(bob.read(&b, &room).await, down);

    // Notifies held back: a resync (as at b.test's start) fetches what they would have brought; the late
    // notifies then add nothing.
    net.hold_notifies("b.test", true);
    assert_eq!(alice.say(&a, &room, "held 1").await, Ok(accepted(9)));
    assert_eq!(alice.say(&a, &room, "held 2").await, Ok(accepted(10)));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(b.last_seq(&room), 8, "notifies held back");
    b.federation.resync_followed().await;
    assert_eq!(b.last_seq(&room), 10, "the resync fetched the log");
    net.hold_notifies("b.test", false);
    assert_eq!(carol.read(&b, &room).await, ["held 1", "held 2"]);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(b.log(&room), a.log(&room));
    assert_eq!(carol.read(&b, &room).await, Vec::<String>::new(), "no duplicates from the late notifies");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_epoch_too_old_from_the_hub_makes_the_follower_catch_up_before_it_answers() {
    let (net, a, b) = two_providers();
    let mut alice = User::register(&a, "alice").await;
    let mut bob = User::register(&b, "bob").await;
    let room = room_with_bob(&a, &b, &mut alice, &mut bob).await;
    until("b.test has bob's commit", || b.last_seq(&room) == 1).await;
    assert_eq!(alice.read(&a, &room).await, Vec::<String>::new());

    // alice commits while b.test hears nothing of it: bob's message is for the old epoch.
    net.hold_notifies("b.test", true);
    let update = alice.self_update().await;
    let verdict = a.clients.update(&alice.client, &room, update).await;
    assert_eq!(verdict, Ok(accepted(2)));
    alice.settle_commit(&verdict).await;
    assert_eq!(b.last_seq(&room), 1);
    let old = bob.say(&b, &room, "for the old epoch").await;
    assert_eq!(old, Ok(Verdict::EpochTooOld { current_epoch: 2 }));
    assert_eq!(b.last_seq(&room), 2, "b.test caught up before answering (its notifies are held back)");
    assert_eq!(bob.read(&b, &room).await, Vec::<String>::new());
    assert_eq!(bob.epoch(), 2);
    assert_eq!(bob.say(&b, &room, "for the new epoch").await, Ok(accepted(3)));
    assert_eq!(alice.read(&a, &room).await, ["for the new epoch"]);

    // The same for an update: the hub answers wrongEpoch, b.test catches up, bob is told 409.
    let update = alice.self_update().await;
    let verdict = a.clients.update(&alice.client, &room, update).await;
    assert_eq!(verdict, Ok(accepted(4)));
    alice.settle_commit(&verdict).await;
    let stale = bob.self_update().await;
    let verdict = b.clients.update(&bob.client, &room, stale).await;
    assert_eq!(verdict, Ok(Verdict::EpochTooOld { current_epoch: 3 }));
    bob.settle_commit(&verdict).await;
    assert_eq!(b.last_seq(&room), 4, "caught up before answering");
    assert_eq!(bob.read(&b, &room).await, Vec::<String>::new());
    assert_eq!(bob.say(&b, &room, "after the catch-up").await, Ok(accepted(5)));
    assert_eq!(alice.read(&a, &room).await, ["after the catch-up"]);
    net.hold_notifies("b.test", false);
    until("b.test has every entry", || b.last_seq(&room) == 5).await;
    assert_eq!(b.log(&room), a.log(&room));
}

#[tokio::test]
async fn a_key_material_request_must_be_signed_by_the_peer_it_comes_from() {
    use mimi_protocol::wire::{HubSigner, KeyMaterialRequest, KeyMaterialUserCode};
    let (_net, a, b) = two_providers();
    let carol = User::register(&b, "carol").await;
    carol.upload_key_packages(&b, 2).await;
    let api = mimi_provider::PeerApi::new(b.federation.clone());
    let from = api.hear("mimi@a.test").expect("a.test is b.test's peer");
    let (alice, room) = ("mimi://a.test/u/alice", "mimi://a.test/r/club");

    // Signed by a key that says it is c.test: a.test's transport brought it, so it is not a.test's request.
    let stranger = HubSigner::generate(b"mimi://c.test").expect("key");
    let req = KeyMaterialRequest::new(alice, &carol.uri, room, &stranger).expect("signed");
    let e = api.key_material(&from, &carol.uri, req).await.expect_err("someone else's request");
    assert_eq!(e.status, Status::Forbidden, "{e}");
    // a.test's own, altered after signing.
    let own = a.provider.hub_signer().await.expect("a.test's key");
    let mut req = KeyMaterialRequest::new(alice, &carol.uri, room, &own).expect("signed");
    req.requesting_user = "mimi://a.test/u/mallory".into();
    let e = api.key_material(&from, &carol.uri, req).await.expect_err("tampered");
    assert_eq!(e.status, Status::BadRequest, "{e}");
    // a.test's own, as signed: carol's KeyPackage.
    let req = KeyMaterialRequest::new(alice, &carol.uri, room, &own).expect("signed");
    let answer = api.key_material(&from, &carol.uri, req).await.expect("served");
    assert_eq!(answer.user_status, KeyMaterialUserCode::Success);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_after_the_largest_sequence_number_is_empty_not_a_panic() {
    let (_net, a, _b) = two_providers();
    let mut alice = User::register(&a, "alice").await;
    let room = alice.create_room(&a, "club").await;
    // `after` comes from clients and peers as they please.
    assert!(a.provider.entries_after(&room, u64::MAX, 10).expect("a page").is_empty());
    assert!(a.provider.entries_after(&room, u64::MAX - 1, 10).expect("a page").is_empty());
}
