//! Scenarios of the router and portals with in-memory loopback networks and the local room of record.
//! (Loopback legs test the core only; real connectors are tested against real servers.)

use bridge_api::event::{InboundKind, MessageDraft, MessageStyle, OutboundKind};
use bridge_api::{AccountContext, AccountId, LegId, NativeId, PortalId};
use bridge_core::repo::Repo;
use bridge_core::repo::{MlsIdentity, PortalRecord};
use bridge_core::room_of_record::LocalRoom;
use bridge_core::router::{Accepted, RouteError, RouterConfig, RouterHandle};
use bridge_testkit::loopback::LoopbackNetwork;
use mimi_store::{Backend, CommitConfig, Store};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);

struct World {
    store: Store,
    router: RouterHandle,
    a: Arc<LoopbackNetwork>,
    b: Arc<LoopbackNetwork>,
}

async fn world(dir: &Path, backend: Backend, cfg: impl FnOnce(&mut RouterConfig)) -> World {
    let store = bridge_core::open_store(dir, Some(backend), CommitConfig::default()).expect("store opens");
    let mut c = RouterConfig::new("bridge.test");
    cfg(&mut c);
    let router = RouterHandle::start(c, store.clone(), Arc::new(LocalRoom)).await.expect("router starts");
    let mk = |name: &str| {
        let id = AccountId::parse(name).expect("account id");
        let net = LoopbackNetwork::new(id.clone(), AccountContext::new(id, router.clone(), "bridge.test"));
        router.add_account(net.clone());
        net
    };
    let (a, b) = (mk("lb.a"), mk("lb.b"));
    World { store, router, a, b }
}

async fn portal(w: &World, name: &str, rooms: &[(&Arc<LoopbackNetwork>, &str)]) -> PortalId {
    let id = PortalId::new(name).expect("portal id");
    w.router.create_portal(PortalRecord { id: id.clone(), mls_identity: MlsIdentity::Shared }).await.expect("portal");
    for (net, room) in rooms {
        w.router.link(net.leg(room), &id).await.expect("link");
    }
    id
}

fn body(ev: &bridge_api::OutboundEvent) -> String {
    match &ev.kind {
        OutboundKind::Message { draft, .. } => draft.body.clone(),
        other => format!("<{}>", other.name()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_portals_times_1000_interleaved_events_keep_per_portal_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let w = world(dir.path(), Backend::Redb, |_| {}).await;
    let mut rooms = Vec::new();
    for p in 0..10 {
        let room = format!("#p{p}");
        portal(&w, &format!("p{p}"), &[(&w.a, &room), (&w.b, &room)]).await;
        rooms.push(room);
    }
    // Interleave: round-robin over portals, pipelined (enqueue returns before the commit).
    let mut acks = Vec::new();
    for i in 0..1000 {
        for room in &rooms {
            let ev = bridge_api::InboundEvent {
                leg: w.a.leg(room),
                sender: w.a.user("alice"),
                native_id: Some(NativeId(format!("{room}-{i}"))),
                from_bridge: false,
                kind: InboundKind::Message { draft: MessageDraft::plain(format!("{i}")), reply_to: None },
            };
            acks.push(w.a.context().inbound.enqueue(ev).await.expect("queued"));
        }
    }
    for ack in acks {
        assert!(matches!(ack.wait().await.expect("accepted"), Accepted::Bridged(_)));
    }
    let got = w.b.wait_delivered(10_000, Duration::from_secs(60)).await;
    assert_eq!(got.len(), 10_000, "every event delivered exactly once");
    for room in &rooms {
        let seq: Vec<String> = got.iter().filter(|e| &e.leg.room == room).map(body).collect();
        let want: Vec<String> = (0..1000).map(|i| i.to_string()).collect();
        assert_eq!(seq, want, "order in {room}");
    }
    assert!(w.a.delivered().is_empty(), "nothing echoed back to the source leg");
    w.router.shutdown().await;
}

#[tokio::test]
async fn duplicates_are_processed_once_and_echoes_are_suppressed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let w = world(dir.path(), Backend::Sled, |_| {}).await;
    portal(&w, "dup", &[(&w.a, "#x"), (&w.b, "#x")]).await;
    let kind = || InboundKind::Message { draft: MessageDraft::plain("hi"), reply_to: None };
    let first = w.a.say_with_id("#x", "alice", "n1", kind()).await.expect("ok");
    let Accepted::Bridged(id) = first else { panic!("not bridged: {first:?}") };
    let again = w.a.say_with_id("#x", "alice", "n1", kind()).await.expect("ok");
    assert_eq!(again, Accepted::Duplicate(id));
    let out = w.b.wait_delivered(1, WAIT).await;
    assert_eq!(out.len(), 1);
    // The delivered copy comes back on leg b (a network echoing our own send): suppressed.
    tokio::time::sleep(Duration::from_millis(100)).await; // let the delivery record commit
    let echo_id = format!("lb-out-{}", 1);
    let echo = w.b.say_with_id("#x", "alice", &echo_id, kind()).await.expect("ok");
    assert_eq!(echo, Accepted::Echo, "a native id the bridge delivered is an echo");
    // Marked by the connector as our own.
    let mut ev = bridge_api::InboundEvent {
        leg: w.b.leg("#x"),
        sender: w.b.user("bridgebot"),
        native_id: Some(NativeId("other".into())),
        from_bridge: true,
        kind: kind(),
    };
    assert_eq!(w.b.context().inbound.submit(ev.clone()).await.expect("ok"), Accepted::Echo);
    // A registered ghost.
    w.b.context().register_ghost("alice_", "mimi://bridge.test/u/lb.a~alice").await.expect("ghost");
    ev.from_bridge = false;
    ev.sender = w.b.user("alice_");
    assert_eq!(w.b.context().inbound.submit(ev.clone()).await.expect("ok"), Accepted::Echo);
    // Once the bridge gives the name up, a real user with that name is bridged again.
    w.b.context().unregister_ghost("alice_").await.expect("unghost");
    ev.native_id = Some(NativeId("after-unghost".into()));
    assert!(matches!(w.b.context().inbound.submit(ev).await.expect("ok"), Accepted::Bridged(_)));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(w.a.delivered().len(), 1, "no echo reached leg a, only the real user's message");
    assert_eq!(w.b.delivered().len(), 1);
    w.router.shutdown().await;
}

#[tokio::test]
async fn replies_edits_deletes_and_reactions_resolve_through_the_id_map() {
    let dir = tempfile::tempdir().expect("tempdir");
    let w = world(dir.path(), Backend::Redb, |_| {}).await;
    portal(&w, "refs", &[(&w.a, "#r"), (&w.b, "#r")]).await;
    let msg = |t: &str, reply: Option<&str>| InboundKind::Message {
        draft: MessageDraft::plain(t),
        reply_to: reply.map(|r| NativeId(r.into())),
    };
    w.a.say_with_id("#r", "alice", "a1", msg("hello world", None)).await.expect("ok");
    let d = w.b.wait_delivered(1, WAIT).await;
    assert_eq!(d.len(), 1);
    // Bob on b replies to the copy he sees (its native id on b is lb-out-1).
    tokio::time::sleep(Duration::from_millis(50)).await;
    w.b.say_with_id("#r", "bob", "b1", msg("hi alice", Some("lb-out-1"))).await.expect("ok");
    let d = w.a.wait_delivered(1, WAIT).await;
    let OutboundKind::Message { reply_to: Some(parent), .. } = &d[0].kind else { panic!("not a reply: {:?}", d[0]) };
    assert_eq!(parent.native_id, Some(NativeId("a1".into())), "reply resolves to alice's own native id");
    assert_eq!(parent.excerpt, "hello world");
    assert_eq!(parent.sender_name, "alice");
    // Alice edits, reacts twice (set shape), removes one, deletes her message.
    let r =
        w.a.say_with_id(
            "#r",
            "alice",
            "a2",
            InboundKind::Edit { target: NativeId("a1".into()), draft: MessageDraft::plain("hello there") },
        )
        .await;
    assert!(matches!(r, Ok(Accepted::Bridged(_))), "{r:?}");
    let set = InboundKind::ReactionSet { target: NativeId("a1".into()), keys: vec!["👍".into(), "🎉".into()] };
    assert!(matches!(w.a.say_with_id("#r", "alice", "a3", set).await, Ok(Accepted::Bridged(_))));
    let rm = InboundKind::ReactionRemove { target: NativeId("a1".into()), key: "👍".into() };
    assert!(matches!(w.a.say_with_id("#r", "alice", "a4", rm).await, Ok(Accepted::Bridged(_))));
    let del = InboundKind::Delete { target: NativeId("a1".into()) };
    assert!(matches!(w.a.say_with_id("#r", "alice", "a5", del).await, Ok(Accepted::Bridged(_))));
    let unknown = InboundKind::Edit { target: NativeId("nope".into()), draft: MessageDraft::plain("x") };
    assert!(matches!(w.a.say_with_id("#r", "alice", "a6", unknown).await, Ok(Accepted::Ignored(_))));
    let d = w.b.wait_delivered(6, WAIT).await;
    let kinds: Vec<&str> = d.iter().map(|e| e.kind.name()).collect();
    assert_eq!(kinds, ["message", "edit", "reaction_add", "reaction_add", "reaction_remove", "delete"]);
    for e in &d[1..] {
        let t = match &e.kind {
            OutboundKind::Edit { target, .. } | OutboundKind::Delete { target } => target,
            OutboundKind::ReactionAdd { target, .. } | OutboundKind::ReactionRemove { target, .. } => target,
            other => panic!("unexpected {other:?}"),
        };
        assert_eq!(t.native_id, Some(NativeId("lb-out-1".into())), "{} targets b's copy", e.kind.name());
    }
    let OutboundKind::ReactionRemove { key, set_after, reaction_native_id, .. } = &d[4].kind else { panic!() };
    assert_eq!(key, "👍");
    assert_eq!(set_after, &vec!["🎉".to_string()]);
    assert!(reaction_native_id.is_some(), "the reaction's own id on b is known, for redaction");
    w.router.shutdown().await;
}

#[tokio::test]
async fn bad_input_gets_typed_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let w = world(dir.path(), Backend::Sled, |c| c.max_event_bytes = 100).await;
    portal(&w, "bad", &[(&w.a, "#b"), (&w.b, "#b")]).await;
    let (_, r) = w.a.say("#unlinked", "alice", "hi").await;
    assert!(matches!(r, Err(RouteError::UnknownLeg(_))), "{r:?}");
    let (_, r) = w.a.say("#b", "alice", &"x".repeat(101)).await;
    assert!(matches!(r, Err(RouteError::TooLarge { size: 101, max: 100 })), "{r:?}");
    // alice is told in #b, as a notice from the bridge; b gets nothing.
    let told = w.a.wait_delivered(1, Duration::from_secs(5)).await;
    match told.first().map(|e| &e.kind) {
        Some(OutboundKind::Message { draft, .. }) => {
            assert_eq!(draft.style, MessageStyle::Notice);
            assert!(draft.body.contains("alice") && draft.body.contains("too large (101 bytes"), "{}", draft.body);
        }
        other => panic!("no refusal notice: {other:?}"),
    }
    assert_eq!(told[0].leg, w.a.leg("#b"));
    // The same event again (a network redelivering it), and another one at once: no second notice. Then a message
    // that fits crosses: b gets only that one.
    let big = "x".repeat(101);
    let again = bridge_api::InboundEvent {
        leg: w.a.leg("#b"),
        sender: w.a.user("alice"),
        native_id: Some(NativeId("big-1".into())),
        from_bridge: false,
        kind: InboundKind::Message { draft: MessageDraft::plain(big.clone()), reply_to: None },
    };
    for _ in 0..2 {
        let r = w.a.context().inbound.submit(again.clone()).await;
        assert!(matches!(r, Err(RouteError::TooLarge { .. })), "{r:?}");
    }
    let (_, r) = w.a.say("#b", "alice", &big).await;
    assert!(matches!(r, Err(RouteError::TooLarge { .. })), "{r:?}");
    let (_, r) = w.a.say("#b", "alice", "fits").await;
    assert!(matches!(r, Ok(Accepted::Bridged(_))), "{r:?}");
    let got = w.b.wait_delivered(1, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 1, "b gets the message that fits, and no notice: {got:?}");
    assert_eq!(w.a.delivered().len(), 1, "one notice to alice");
    let ev = bridge_api::InboundEvent {
        leg: w.a.leg("#b"),
        sender: w.a.user("alice"),
        native_id: None,
        from_bridge: false,
        kind: InboundKind::Message { draft: MessageDraft::plain("x"), reply_to: None },
    };
    let r = w.a.context().inbound.submit(ev.clone()).await;
    assert!(matches!(r, Err(RouteError::MissingNativeId("message"))), "{r:?}");
    // Another account's room through a's sink.
    let mut other = ev;
    other.leg = w.b.leg("#b");
    other.native_id = Some(NativeId("z".into()));
    assert!(matches!(w.a.context().inbound.submit(other).await, Err(RouteError::WrongAccount { .. })));
    // Linking a leg that is already in another portal.
    let p2 = portal(&w, "bad2", &[]).await;
    assert!(matches!(w.router.link(w.a.leg("#b"), &p2).await, Err(RouteError::AlreadyLinked { .. })));
    w.router.shutdown().await;
}

#[tokio::test]
async fn undelivered_messages_survive_restart_and_refusals_are_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let w = world(dir.path(), Backend::Redb, |c| c.retry_initial = Duration::from_millis(20)).await;
        portal(&w, "keep", &[(&w.a, "#k"), (&w.b, "#k")]).await;
        w.b.down.store(true, Ordering::Relaxed);
        for i in 0..5 {
            let (_, r) = w.a.say("#k", "alice", &format!("m{i}")).await;
            assert!(matches!(r, Ok(Accepted::Bridged(_))));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(w.b.delivered().is_empty());
        let st = w.router.status().await;
        let pending: u64 = st[0].legs.iter().map(|l| l.pending).sum();
        assert_eq!(pending, 5, "status shows the backlog: {st:?}");
        w.router.shutdown().await;
    }
    // Restart: the same store, b is up now.
    let w = world(dir.path(), Backend::Redb, |_| {}).await;
    let got = w.b.wait_delivered(5, WAIT).await;
    let bodies: Vec<String> = got.iter().map(body).collect();
    assert_eq!(bodies, ["m0", "m1", "m2", "m3", "m4"], "outbox redelivered in order after restart");
    // Portals and links came back from the store; dedup state too: the new loopback numbers its native ids from
    // lb-in-1 again, which the bridge saw before the restart.
    let (n, r) = w.a.say("#k", "alice", "again").await;
    assert_eq!(n, NativeId("lb-in-1".into()));
    assert!(matches!(r, Ok(Accepted::Duplicate(_))), "{r:?}");
    for _ in 0..5 {
        let (_, r) = w.a.say("#k", "alice", "skip the used ids").await;
        assert!(r.is_ok(), "{r:?}");
    }
    // A refused delivery is reported to the sender's leg as a notice.
    w.b.reject.store(true, Ordering::Relaxed);
    let (_, r) = w.a.say("#k", "alice", "doomed").await;
    assert!(matches!(r, Ok(Accepted::Bridged(_))), "{r:?}");
    let notes = w.a.wait_delivered(1, WAIT).await;
    assert_eq!(notes.len(), 1);
    assert!(body(&notes[0]).contains("not delivered to lb.b/#k"), "{}", body(&notes[0]));
    w.router.shutdown().await;
}

#[tokio::test]
async fn unlink_takes_effect_at_once_and_persists() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let w = world(dir.path(), Backend::Sled, |_| {}).await;
        portal(&w, "u", &[(&w.a, "#u"), (&w.b, "#u")]).await;
        w.router.unlink(&w.b.leg("#u")).await.expect("unlink");
        let (_, r) = w.a.say("#u", "alice", "after unlink").await;
        assert!(matches!(r, Ok(Accepted::Bridged(_))));
        let (_, r) = w.b.say("#u", "bob", "unlinked room").await;
        assert!(matches!(r, Err(RouteError::UnknownLeg(_))));
        w.router.shutdown().await;
        assert!(w.b.delivered().is_empty());
    }
    let w = world(dir.path(), Backend::Sled, |_| {}).await;
    assert_eq!(
        w.router.legs(),
        vec![(LegId::new(w.a.leg("#u").account, "#u").expect("leg"), PortalId::new("u").expect("id"))]
    );
    w.router.shutdown().await;
}

#[tokio::test]
async fn an_unlinked_legs_undelivered_events_move_to_failed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let w = world(dir.path(), Backend::Redb, |c| c.retry_initial = Duration::from_millis(20)).await;
    portal(&w, "gone", &[(&w.a, "#g"), (&w.b, "#g")]).await;
    let leg = w.b.leg("#g");
    w.b.down.store(true, Ordering::Relaxed);
    for i in 0..3 {
        let (_, r) = w.a.say("#g", "alice", &format!("m{i}")).await;
        assert!(matches!(r, Ok(Accepted::Bridged(_))), "{r:?}");
    }
    assert_eq!(Repo::new(&w.store).outbox(&leg).expect("outbox").len(), 3);
    w.router.unlink(&leg).await.expect("unlink");
    let repo = Repo::new(&w.store);
    assert!(repo.outbox(&leg).expect("outbox").is_empty(), "nothing left that no worker would ever drain");
    let failed = repo.failed(&leg).expect("failed");
    assert_eq!(failed.len(), 3);
    assert!(failed.iter().all(|f| f.reason.contains("unlinked")), "{failed:?}");
    w.b.down.store(false, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(w.b.delivered().is_empty(), "an unlinked room gets nothing");
    let report = bridge_core::check::check(w.store.kv().as_ref(), dir.path()).expect("check");
    assert!(report.is_ok(), "{report}");
    w.router.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_backlog_is_delivered_in_order_a_page_at_a_time() {
    const N: usize = 2500;
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let w = world(dir.path(), Backend::Redb, |_| {}).await;
        portal(&w, "backlog", &[(&w.a, "#l"), (&w.b, "#l")]).await;
        w.b.down.store(true, Ordering::Relaxed);
        for i in 0..N {
            let (_, r) = w.a.say("#l", "alice", &format!("m{i}")).await;
            assert!(matches!(r, Ok(Accepted::Bridged(_))), "{r:?}");
        }
        w.router.shutdown().await;
    }
    // Restarted with more than two pages waiting: every one arrives, in order, once; status counts them all.
    let w = world(dir.path(), Backend::Redb, |c| c.retry_initial = Duration::from_millis(20)).await;
    w.b.down.store(true, Ordering::Relaxed);
    let pending = |st: Vec<bridge_core::router::PortalStatus>| st[0].legs.iter().map(|l| l.pending).sum::<u64>();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while pending(w.router.status().await) != N as u64 {
        assert!(std::time::Instant::now() < deadline, "status: {:?}", w.router.status().await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    w.b.down.store(false, Ordering::Relaxed);
    let got = w.b.wait_delivered(N, Duration::from_secs(60)).await;
    let bodies: Vec<String> = got.iter().map(body).collect();
    assert_eq!(bodies, (0..N).map(|i| format!("m{i}")).collect::<Vec<_>>());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(w.b.delivered().len(), N, "nothing twice");
    assert_eq!(pending(w.router.status().await), 0, "every delivery counted off");
    w.router.shutdown().await;
}
