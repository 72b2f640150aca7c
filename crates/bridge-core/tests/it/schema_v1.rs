//! Data directories written by schema version 1 (a7fa083; see `tests/data/schema-v1/README.md`) open with this
//! build, migrate, keep their failed deliveries and deliver their outbox.

use bridge_api::event::OutboundKind;
use bridge_api::{AccountContext, AccountId, LegId};
use bridge_core::repo::Repo;
use bridge_core::room_of_record::LocalRoom;
use bridge_core::router::{RouterConfig, RouterHandle};
use bridge_testkit::loopback::LoopbackNetwork;
use mimi_store::schema::check_schema;
use mimi_store::{Backend, CommitConfig};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read fixture") {
        let e = e.expect("entry");
        let target = to.join(e.file_name());
        if e.file_type().expect("type").is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).expect("copy");
        }
    }
}

async fn migrates_and_delivers(backend: Backend) {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/schema-v1").join(backend.name());
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    copy_dir(&fixture, &dir);
    let leg = |net: &str, room: &str| LegId::new(AccountId::parse(net).expect("account"), room).expect("leg");

    let store = bridge_core::open_store(&dir, Some(backend), CommitConfig::default()).expect("a version-1 store opens");
    assert_eq!(
        check_schema(store.kv().as_ref(), &dir, false, &bridge_core::SCHEMA).expect("schema"),
        bridge_core::SCHEMA_VERSION,
        "migrated to this build's schema"
    );
    assert_eq!(bridge_core::SCHEMA_VERSION, 7);
    let report = bridge_core::check::check(store.kv().as_ref(), &dir).expect("check");
    assert!(report.is_ok(), "{report}");

    let repo = Repo::new(&store);
    let failed = repo.failed(&leg("lb.c", "#c")).expect("failed entries decode");
    assert_eq!(failed.len(), 6, "every refused delivery kept");
    for f in &failed {
        assert!(!f.reason.is_empty());
        assert!(f.failed_at_ms > 0 && f.event.queued_at_ms > 0, "stamped by the migration: {f:?}");
    }
    let pending = repo.outbox(&leg("lb.b", "#b")).expect("outbox entries decode");
    assert_eq!(pending.len(), 6);
    assert!(pending.iter().all(|(_, d)| d.queued_at_ms > 0));

    let router = RouterHandle::start(RouterConfig::new("bridge.test"), store.clone(), Arc::new(LocalRoom))
        .await
        .expect("router starts");
    let mut nets = Vec::new();
    for name in ["lb.a", "lb.b", "lb.c"] {
        let id = AccountId::parse(name).expect("id");
        let net = LoopbackNetwork::new(id.clone(), AccountContext::new(id, router.clone(), "bridge.test"));
        router.add_account(net.clone());
        nets.push(net);
    }
    let got = nets[1].wait_delivered(6, Duration::from_secs(20)).await;
    let kinds: Vec<&str> = got.iter().map(|e| e.kind.name()).collect();
    assert_eq!(kinds, ["message", "message", "edit", "reaction_add", "reaction_remove", "delete"]);
    match (&got[0].kind, &got[1].kind) {
        (
            OutboundKind::Message { draft, reply_to: None },
            OutboundKind::Message { draft: reply, reply_to: Some(p) },
        ) => {
            assert_eq!(draft.body, "first");
            assert_eq!(reply.body, "a reply");
            assert_eq!(p.message_id, got[0].message_id, "the reply still points at its parent");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(got.iter().all(|e| e.sender.display_name == "alice"));
    assert!(nets[2].delivered().is_empty(), "failed deliveries are not retried");
    // The worker records each delivery (and drops it from the outbox) just after the network took it.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !Repo::new(&store).outbox(&leg("lb.b", "#b")).expect("outbox").is_empty() {
        assert!(std::time::Instant::now() < deadline, "delivered entries leave the outbox");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    router.shutdown().await;
}

#[tokio::test]
async fn a_redb_data_dir_of_schema_1_migrates_and_delivers() {
    migrates_and_delivers(Backend::Redb).await;
}

#[tokio::test]
async fn a_sled_data_dir_of_schema_1_migrates_and_delivers() {
    migrates_and_delivers(Backend::Sled).await;
}
