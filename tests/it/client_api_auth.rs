//! The client API's membership checks, over real HTTP: only a participant of a room may invite into it (claim a
//! KeyPackage "for" the room, which puts the invitee on the participant list) or publish its GroupInfo; an
//! invitee goes on the list only once a KeyPackage was actually claimed; only participants read an invite-only room.

use crate::common::api::{call, group_info, register, serve};
use mimi_provider::{JoinPolicy, Provider};
use mimi_store::{Backend, CommitConfig};

const ROOM: &str = "mimi://a.test/r/private";

#[tokio::test]
async fn only_participants_invite_or_publish_group_info() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = bridge_core::open_store(dir.path(), Some(Backend::Redb), CommitConfig::default()).expect("store");
    let provider = Provider::open("a.test", store).expect("provider");
    let alice = "mimi://a.test/u/alice";
    let (_keys, info) = group_info(dir.path(), alice, ROOM).await;
    provider.create_room(ROOM, &info, None, alice, JoinPolicy::Invite, false).await.expect("room");
    let addr = serve(&provider).await;
    let a = register(&addr, "alice").await;
    let m = register(&addr, "mallory").await;
    let path = |user: &str| format!("/client/v1/keyPackage/{user}?room={}", ROOM.trim_start_matches("mimi://"));

    // mallory, not a participant, cannot put herself (or anyone) on the invite-only room's list.
    let (status, body) = call(&addr, "POST", &path(&m.0), Some(&m), "").await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("not a participant"), "{body}");
    assert!(!provider.is_participant(ROOM, &m.0).expect("room"), "mallory stays off the list");
    // Nor publish the room's GroupInfo.
    let (status, body) =
        call(&addr, "PUT", &format!("/client/v1/groupInfo/{}", ROOM.trim_start_matches("mimi://")), Some(&m), "x")
            .await;
    assert_eq!(status, 403, "{body}");

    // alice may invite, but bob has no KeyPackage: no claim, so bob is not put on the list either.
    let bob = register(&addr, "bob").await;
    let (status, body) = call(&addr, "POST", &path(&bob.0), Some(&a), "").await;
    assert_eq!(status, 404, "{body}");
    assert!(!provider.is_participant(ROOM, &bob.0).expect("room"), "no KeyPackage claimed, no invite");
}

#[tokio::test]
async fn only_participants_read_an_invite_only_room() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = bridge_core::open_store(dir.path(), Some(Backend::Redb), CommitConfig::default()).expect("store");
    let provider = Provider::open("a.test", store).expect("provider");
    let (open, alice) = ("mimi://a.test/r/lobby", "mimi://a.test/u/alice");
    let (_k1, info) = group_info(&dir.path().join("k1"), alice, ROOM).await;
    provider.create_room(ROOM, &info, None, alice, JoinPolicy::Invite, false).await.expect("room");
    let (_k2, info) = group_info(&dir.path().join("k2"), alice, open).await;
    provider.create_room(open, &info, None, alice, JoinPolicy::Open, false).await.expect("room");
    let addr = serve(&provider).await;
    let a = register(&addr, "alice").await;
    let m = register(&addr, "mallory").await;
    let id = |room: &str| room.trim_start_matches("mimi://").to_owned();
    for path in [format!("/client/v1/messages/{}?after=0", id(ROOM)), format!("/client/v1/groupInfo/{}", id(ROOM))] {
        let (status, body) = call(&addr, "GET", &path, Some(&m), "").await;
        assert_eq!(status, 403, "{path}: {body}");
        assert!(body.contains("invite-only"), "{body}");
    }
    // Its participants read it; an open room anyone registered reads.
    let (status, body) = call(&addr, "GET", &format!("/client/v1/messages/{}?after=0", id(ROOM)), Some(&a), "").await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = call(&addr, "GET", &format!("/client/v1/messages/{}?after=0", id(open)), Some(&m), "").await;
    assert_eq!(status, 200, "{body}");
}
