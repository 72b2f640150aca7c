//! Retention over real HTTP: a native client asking for log entries the pruner removed is answered 410 and told
//! to rejoin; what is kept is served as before.

use crate::common::api::{call, group_info, register, serve};
use mimi_protocol::wire::MlsMessageBytes;
use mimi_provider::{JoinPolicy, Origin, Provider};
use mimi_store::{Backend, CommitConfig};

#[tokio::test]
async fn a_reader_behind_retention_is_told_to_rejoin() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = bridge_core::open_store(dir.path(), Some(Backend::Redb), CommitConfig::default()).expect("store");
    let provider = Provider::open("a.test", store).expect("provider");
    let (room, alice) = ("mimi://a.test/r/lobby", "mimi://a.test/u/alice");
    let (mut g, info) = group_info(dir.path(), alice, room).await;
    provider.create_room(room, &info, None, alice, JoinPolicy::Open, false).await.expect("room");
    for text in ["one", "two", "three"] {
        let m = MlsMessageBytes::new(g.encrypt(text.as_bytes()).durable().await.expect("encrypt")).expect("framed");
        provider.submit(room, m, alice, Origin::Client(alice.into())).await.expect("sequenced");
    }
    let addr = serve(&provider).await;
    let reader = register(&addr, "bob").await;
    let messages = |after: u64| format!("/client/v1/messages/a.test/r/lobby?after={after}");
    assert_eq!(call(&addr, "GET", &messages(0), Some(&reader), "").await.0, 200, "before retention");

    let removed = provider.prune_log(mimi_provider::service::now_ms() + 1).await.expect("prune");
    assert_eq!(removed, 2, "all but the last entry");
    let (status, body) = call(&addr, "GET", &messages(0), Some(&reader), "").await;
    assert_eq!(status, 410, "{body}");
    assert!(body.contains("rejoin"), "{body}");
    let (status, body) = call(&addr, "GET", &messages(2), Some(&reader), "").await;
    assert_eq!(status, 200, "what is kept is served: {body}");
}
