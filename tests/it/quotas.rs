//! Per-user quotas over real HTTP: a member who floods a room with 1 MB messages is stopped by the byte quota
//! (429) after a minute's worth, and the log holds only what was accepted.

use crate::common::api::{call, group_info, register, serve};
use mimi_provider::{JoinPolicy, Provider};
use mimi_store::{Backend, CommitConfig};

const ROOM: &str = "mimi://a.test/r/flood";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_flooding_a_room_is_stopped_by_the_byte_quota() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store =
        bridge_core::open_store(&dir.path().join("hub"), Some(Backend::Redb), CommitConfig::default()).expect("store");
    let provider = Provider::open("a.test", store).expect("provider");
    let addr = serve(&provider).await;
    let alice = register(&addr, "alice").await;

    // alice's own group, the room hosted here with her as its first participant.
    let (mut group, info) = group_info(dir.path(), &alice.0, ROOM).await;
    provider.create_room(ROOM, &info, None, &alice.0, JoinPolicy::Invite, false).await.expect("room");

    let path = format!("/client/v1/submit/{}", ROOM.trim_start_matches("mimi://"));
    let quota = mimi_provider::quota::QuotaConfig::default().bytes_per_minute;
    let (mut accepted, mut refused, mut bytes) = (0u64, 0u64, 0u64);
    for _ in 0..20 {
        let m = group.encrypt(&vec![b'x'; 1_000_000]).durable().await.expect("encrypt");
        let len = m.len() as u64;
        let (status, body) = call(&addr, "POST", &path, Some(&alice), m).await;
        match status {
            200 => {
                assert_eq!(refused, 0, "nothing is accepted once the quota refused: {body}");
                accepted += 1;
                bytes += len;
            }
            429 => {
                assert!(body.contains("bytes a minute") && body.contains("retry_after_ms"), "{body}");
                refused += 1;
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert!(bytes <= quota && bytes + 1_000_200 > quota, "a minute's worth accepted: {accepted} ({bytes} bytes)");
    assert_eq!(accepted + refused, 20);
    assert_eq!(provider.last_seq(ROOM).expect("room"), accepted, "the log holds only what was accepted");
}

#[tokio::test]
async fn a_user_creates_at_most_their_quota_of_rooms() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store =
        bridge_core::open_store(&dir.path().join("hub"), Some(Backend::Redb), CommitConfig::default()).expect("store");
    let provider = Provider::open("a.test", store).expect("provider");
    let quotas = mimi_provider::quota::QuotaConfig { rooms: 2, ..Default::default() };
    let addr = crate::common::api::serve_with(&provider, quotas).await;
    let alice = register(&addr, "alice").await;
    let mut statuses = Vec::new();
    for name in ["one", "two", "three"] {
        let room = format!("mimi://a.test/r/{name}");
        let (_keys, info) = group_info(&dir.path().join(name), &alice.0, &room).await;
        let body = serde_json::json!({ "name": name, "group_info": hex::encode(info.as_bytes()) }).to_string();
        let (status, answer) = call(&addr, "POST", "/client/v1/rooms", Some(&alice), body).await;
        statuses.push(status);
        if name == "three" {
            assert!(answer.contains("created 2 rooms"), "{answer}");
        }
    }
    assert_eq!(statuses, [200, 200, 429]);
    assert_eq!(provider.rooms_created_by(&alice.0), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_creates_cannot_pass_the_room_quota_together() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store =
        bridge_core::open_store(&dir.path().join("hub"), Some(Backend::Redb), CommitConfig::default()).expect("store");
    let provider = Provider::open("a.test", store).expect("provider");
    let quotas = mimi_provider::quota::QuotaConfig { rooms: 3, ..Default::default() };
    let addr = crate::common::api::serve_with(&provider, quotas).await;
    let alice = register(&addr, "alice").await;
    // Ten create requests, made ready first, then sent at once.
    let mut bodies = Vec::new();
    for n in 0..10 {
        let (name, room) = (format!("r{n}"), format!("mimi://a.test/r/r{n}"));
        let (_keys, info) = group_info(&dir.path().join(&name), &alice.0, &room).await;
        bodies.push(serde_json::json!({ "name": name, "group_info": hex::encode(info.as_bytes()) }).to_string());
    }
    let sends: Vec<_> = bodies
        .into_iter()
        .map(|body| {
            let (addr, alice) = (addr.clone(), alice.clone());
            tokio::spawn(async move { call(&addr, "POST", "/client/v1/rooms", Some(&alice), body).await.0 })
        })
        .collect();
    let mut statuses = Vec::new();
    for s in sends {
        statuses.push(s.await.expect("task"));
    }
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 200, 200, 429, 429, 429, 429, 429, 429, 429]);
    assert_eq!(provider.rooms_created_by(&alice.0), 3);
}
