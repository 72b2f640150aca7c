//! The retention pruner on a filled store: old message records go with their ID-map entries and reactions, old
//! failed deliveries go, pending deliveries stay, records from before retention are stamped (not dropped), and
//! registered kinds are pruned in the same pass. What it leaves passes `store check`.

use crate::store_backends::{fill_repo, leg, msg_id, open_store, tmp};
use bridge_api::event::{InboundEvent, InboundKind, MessageDraft};
use bridge_api::ids::NativeId;
use bridge_api::uri::LegacyUser;
use bridge_core::check;
use bridge_core::repo::Repo;
use bridge_core::retention::{Pruner, Retained, RetentionConfig};
use mimi_provider::Provider;
use mimi_store::Backend;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

const DAY_MS: u64 = 24 * 3600 * 1000;

/// A registered kind that records when it was asked to prune.
struct Blobs(AtomicU64);

/// A registered kind that always fails.
struct Broken;

#[async_trait::async_trait]
impl Retained for Broken {
    fn name(&self) -> &str {
        "broken"
    }
    async fn prune(&self, _: u64) -> Result<u64, String> {
        Err("disk on fire".into())
    }
}

#[async_trait::async_trait]
impl Retained for Blobs {
    fn name(&self) -> &str {
        "blobs"
    }
    async fn prune(&self, now_ms: u64) -> Result<u64, String> {
        self.0.store(now_ms, Ordering::SeqCst);
        Ok(3)
    }
}

/// A filled store (written with blocking commits, before the runtime) and a runtime to prune it on.
fn filled() -> (tempfile::TempDir, mimi_store::Store, tokio::runtime::Runtime) {
    let dir = tmp();
    let store = open_store(Backend::Redb, dir.path());
    fill_repo(&store);
    // One message delivered to leg 3 as two native ids (two IRC lines).
    let mut b = mimi_store::Batch::new();
    let lines = [NativeId("line-1".into()), NativeId("line-2".into())];
    bridge_core::repo::write::natives(&mut b, &leg(3), &lines, &msg_id(5), false);
    store.commit_blocking(b).expect("two lines");
    (dir, store, tokio::runtime::Runtime::new().expect("runtime"))
}

#[test]
fn old_messages_go_with_their_id_map_and_reactions_and_pending_deliveries_stay() {
    let (dir, store, rt) = filled();
    rt.block_on(async {
        let provider = Provider::open("example.org", store.clone()).expect("provider");
        let mut pruner = Pruner::new(store.clone(), provider, RetentionConfig::default());
        let blobs = Arc::new(Blobs(AtomicU64::new(0)));
        pruner.register(Arc::new(Broken));
        pruner.register(blobs.clone());
        let now = bridge_core::outbox::now_ms();

        // First pass: the 20 messages of before retention are stamped, nothing is old enough to go.
        let r = pruner.prune(now).await;
        assert_eq!((r.stamped, r.messages, r.failed), (20, 0, 0), "{r:?}");
        assert_eq!(r.failures, vec![("broken".to_owned(), "disk on fire".to_owned())], "reported; the pass went on");
        assert_eq!(r.others, vec![("blobs".to_owned(), 3)]);
        assert_eq!(blobs.0.load(Ordering::SeqCst), now);
        let repo = Repo::new(&store);
        assert!(repo.message(&msg_id(1)).expect("read").is_some());
        assert_eq!(
            repo.native_on(&msg_id(5), &leg(3)).expect("read"),
            Some(NativeId("line-1".into())),
            "the first line"
        );
        assert_eq!(
            repo.lookup_native(&leg(3), &NativeId("line-2".into())).expect("read").map(|e| e.message_id),
            Some(msg_id(5))
        );

        // 89 days on, messages stay; the failed delivery (30 days) goes.
        let r = pruner.prune(now + 89 * DAY_MS).await;
        assert_eq!((r.stamped, r.messages, r.failed), (0, 0, 1), "{r:?}");
        assert!(repo.failed(&leg(2)).expect("read").is_empty());

        // 91 days on: every message goes, with both directions of its ID map and the reactions on it.
        let r = pruner.prune(now + 91 * DAY_MS).await;
        assert_eq!(r.messages, 20, "{r:?}");
        assert!(repo.message(&msg_id(1)).expect("read").is_none());
        assert!(repo.lookup_native(&leg(1), &NativeId("irc-1".into())).expect("read").is_none());
        assert!(repo.lookup_native(&leg(2), &NativeId("$ev1:example.org".into())).expect("read").is_none());
        assert!(repo.native_on(&msg_id(1), &leg(2)).expect("read").is_none());
        assert!(repo.reactions(&msg_id(1), "mimi://example.org/u/bob").expect("read").is_empty());
        assert_eq!(repo.outbox(&leg(2)).expect("read").len(), 20, "pending deliveries are never pruned");
        for tree in [bridge_core::repo::MSGS, bridge_core::repo::IDS, bridge_core::repo::REACTIONS] {
            assert!(store.scan_prefix(tree, b"").expect("scan").is_empty(), "{tree} is empty");
        }
    });
    let report = check::check(store.kv().as_ref(), dir.path()).expect("check");
    assert!(report.is_ok(), "{report:?}");
}

/// A marker of an event published but never recorded, whose network never redelivered it, goes after the failed
/// deliveries' retention (30 days); a recent one stays, and `store check` accepts both.
#[test]
fn published_but_never_recorded_markers_go_after_a_while() {
    let (dir, store, rt) = filled();
    let now = bridge_core::outbox::now_ms();
    let mut b = mimi_store::Batch::new();
    for (native, id, at) in [("old", 90, now - 31 * DAY_MS), ("new", 91, now)] {
        let native = NativeId(native.into());
        let event = InboundEvent {
            leg: leg(1),
            sender: LegacyUser::new(leg(1).account, "bob"),
            native_id: Some(native.clone()),
            from_bridge: false,
            kind: InboundKind::Message { draft: MessageDraft::plain("hi"), reply_to: None },
        };
        let portal = bridge_api::ids::PortalId::new("p").expect("portal");
        bridge_core::repo::write::sent(&mut b, &portal, &event, &native, &msg_id(id), None, at);
    }
    store.commit_blocking(b).expect("markers");
    assert!(check::check(store.kv().as_ref(), dir.path()).expect("check").is_ok(), "markers are valid entries");
    rt.block_on(async {
        let provider = Provider::open("example.org", store.clone()).expect("provider");
        let pruner = Pruner::new(store.clone(), provider, RetentionConfig::default());
        let r = pruner.prune(now).await;
        assert_eq!(r.sent_markers, 1, "{r:?}");
    });
    let repo = Repo::new(&store);
    assert_eq!(repo.sent(&leg(1), &NativeId("old".into())).expect("read"), None);
    assert_eq!(repo.sent(&leg(1), &NativeId("new".into())).expect("read").map(|m| m.message_id), Some(msg_id(91)));
}

/// The mark of a message still waiting for the hub of a room hosted elsewhere stays past the retention for a day
/// after the pruner started (its portal tries it again at start, and gives it up, telling its sender, if the hub
/// still does not take it: a daemon stopped for longer than the retention would otherwise lose it without a
/// word); then it goes. Other old marks go at once, a given-up one counted from its give-up.
#[test]
fn a_mark_still_waiting_for_a_hub_stays_for_a_day_after_the_start() {
    let (_dir, store, rt) = filled();
    let now = bridge_core::outbox::now_ms();
    let old = now - 31 * DAY_MS;
    let portal = bridge_api::ids::PortalId::new("remote").expect("portal");
    let event = |native: &NativeId| InboundEvent {
        leg: leg(1),
        sender: LegacyUser::new(leg(1).account, "bob"),
        native_id: Some(native.clone()),
        from_bridge: false,
        kind: InboundKind::Message { draft: MessageDraft::plain("hi"), reply_to: None },
    };
    let mut b = mimi_store::Batch::new();
    for (native, id) in [("waiting", 92), ("given-up", 94)] {
        let native = NativeId(native.into());
        let turn = (old, bridge_core::repo::write::next_order());
        bridge_core::repo::write::submitted(&mut b, &portal, &event(&native), &native, &msg_id(id), b"mls", turn);
    }
    let sent = NativeId("sequenced".into());
    bridge_core::repo::write::sent(&mut b, &portal, &event(&sent), &sent, &msg_id(93), Some(7), old);
    store.commit_blocking(b).expect("marks");
    // Given up now (after a month of waiting).
    let mut b = mimi_store::Batch::new();
    bridge_core::repo::write::given_up(&mut b, &portal, &leg(1), &NativeId("given-up".into()), &msg_id(94));
    store.commit_blocking(b).expect("given up");
    let repo = Repo::new(&store);
    let kept = |native: &str| repo.sent(&leg(1), &NativeId(native.into())).expect("read").map(|m| m.message_id);
    rt.block_on(async {
        let provider = Provider::open("example.org", store.clone()).expect("provider");
        let pruner = Pruner::new(store.clone(), provider, RetentionConfig::default());
        let r = pruner.prune(now + DAY_MS / 2).await;
        assert_eq!(r.sent_markers, 1, "half a day after the start: {r:?}");
        assert_eq!(kept("sequenced"), None, "an old mark of a message the hub took");
        assert_eq!(kept("waiting"), Some(msg_id(92)), "the old mark still waiting, in the grace");
        assert_eq!(kept("given-up"), Some(msg_id(94)), "the mark given up now");
        let r = pruner.prune(now + 31 * DAY_MS).await;
        assert_eq!(r.sent_markers, 2, "a month later: {r:?}");
    });
    assert_eq!(kept("waiting"), None, "the mark still waiting, after the grace");
    assert_eq!(kept("given-up"), None, "the mark given up a month ago");
}

#[test]
fn a_kind_set_to_none_is_kept_forever() {
    let (_dir, store, rt) = filled();
    rt.block_on(async {
        let provider = Provider::open("example.org", store.clone()).expect("provider");
        let config = RetentionConfig { messages: None, failed: None, ..RetentionConfig::default() };
        let pruner = Pruner::new(store.clone(), provider, config);
        let r = pruner.prune(bridge_core::outbox::now_ms() + 3650 * DAY_MS).await;
        assert_eq!((r.stamped, r.messages, r.failed), (0, 0, 0), "{r:?}");
        assert_eq!(Repo::new(&store).failed(&leg(2)).expect("read").len(), 1);
    });
}
