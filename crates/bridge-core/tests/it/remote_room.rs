//! A portal whose room another provider hosts ([`MlsRooms::set_remote_room`]): two bridges in one process on a
//! [`MemoryNetwork`], a.test hosting the room of its portal, b.test's portal joining it. Lines cross both ways under
//! their authors' names, b.test's bridge leaf commits its key updates through a.test's hub, joins again after a
//! member removed it, and a line whose answer was lost on the way back is sequenced once, also across a restart
//! (and reaches the bridge's other legs then, even while the hub is unreachable at first), a line the hub does not
//! take in time (counted across restarts) is given up and its sender told, and a bridge away longer than the hub keeps its log joins the room
//! again. Only another
//! bridge's leaf is shown as the legacy user it speaks for, and only for a user of its own domain.

use crate::provider_portal::Native;
use bridge_api::event::{InboundKind, MessageDraft, MessageStyle, OutboundEvent, OutboundKind};
use bridge_api::{AccountContext, AccountId, LegacyUser, PortalId, RoomError, RouteError};
use bridge_core::MlsRooms;
use bridge_core::mls_rooms::decode_incoming;
use bridge_core::repo::{MlsIdentity, PortalRecord};
use bridge_core::router::{RouterConfig, RouterHandle};
use bridge_testkit::loopback::LoopbackNetwork;
use mimi_content::Message;
use mimi_content::builder::ContentBuilder;
use mimi_mls::{EngineConfig, LegacySender, LocalMember, MlsBackend};
use mimi_protocol::inspect::{Inspected, PublicSender, inspect};
use mimi_protocol::wire::MlsMessageBytes;
use mimi_provider::testing::MemoryNetwork;
use mimi_provider::{JoinPolicy, Origin, Provider, ProviderError};
use mimi_store::{Backend, CommitConfig, Store};
use openmls::prelude::SignatureScheme;
use std::sync::Arc;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);
const ROOM: &str = "mimi://a.test/r/rust";

/// One bridge of the federation: provider, room of record, router and a loopback leg `#rust` of portal `rust`.
struct Side {
    dir: tempfile::TempDir,
    store: Store,
    notifier: tokio::task::JoinHandle<()>,
    resync: tokio::task::JoinHandle<()>,
    provider: Provider,
    rooms: Arc<MlsRooms>,
    router: RouterHandle,
    net: Arc<LoopbackNetwork>,
}

impl Side {
    /// Starts the bridge of `domain` on `network`; its portal joins `remote` if given, else hosts its room.
    async fn start(network: &Arc<MemoryNetwork>, domain: &str, remote: Option<&str>, key_update: Duration) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        Self::start_in(dir, network, domain, remote, key_update).await
    }

    /// [`Side::start`] with a router that gives messages for the hub up after `give_up` (a day by default).
    async fn start_giving_up(
        network: &Arc<MemoryNetwork>,
        domain: &str,
        remote: Option<&str>,
        give_up: Duration,
    ) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = RouterConfig { hub_give_up_after: give_up, ..RouterConfig::new(domain) };
        Self::launch(dir, network, domain, remote, Duration::from_secs(3600), config).await
    }

    /// [`Side::start`] on the data in `dir` (a restart when it holds a stopped side's).
    async fn start_in(
        dir: tempfile::TempDir,
        network: &Arc<MemoryNetwork>,
        domain: &str,
        remote: Option<&str>,
        key_update: Duration,
    ) -> Self {
        Self::launch(dir, network, domain, remote, key_update, RouterConfig::new(domain)).await
    }

    async fn launch(
        dir: tempfile::TempDir,
        network: &Arc<MemoryNetwork>,
        domain: &str,
        remote: Option<&str>,
        key_update: Duration,
        config: RouterConfig,
    ) -> Self {
        let st = bridge_core::open_store(dir.path(), Some(Backend::Redb), CommitConfig::default()).expect("store");
        let provider = Provider::open(domain, st.clone()).expect("provider");
        let federation = network.join(provider.clone());
        let notifier = tokio::spawn(federation.clone().run_notifier());
        // As the daemon does at start: every followed room's copy caught up.
        let resync = tokio::spawn({
            let federation = federation.clone();
            async move { federation.resync_followed().await }
        });
        let mls = Arc::new(MlsBackend::new(st.clone(), "bridge").expect("mls"));
        let me = LocalMember::load_or_create(&mls, &format!("mimi://{domain}/u/bridge"), SignatureScheme::ED25519)
            .expect("member")
            .durable()
            .await
            .expect("durable");
        let rooms = MlsRooms::new(provider.clone(), mls, Arc::new(me), EngineConfig::default(), JoinPolicy::Open);
        rooms.set_federation(federation);
        rooms.set_key_update_interval(Some(key_update));
        let router = RouterHandle::start(config, st.clone(), rooms.clone()).await.expect("router");
        rooms.attach_router(router.clone());
        let id = AccountId::parse("lb.irc").expect("account");
        let net = LoopbackNetwork::new(id.clone(), AccountContext::new(id, router.clone(), domain));
        router.add_account(net.clone());
        let portal = PortalId::new("rust").expect("portal id");
        router.create_portal(PortalRecord { id: portal.clone(), mls_identity: MlsIdentity::Shared }).await.expect("p");
        router.link(net.leg("#rust"), &portal).await.expect("link");
        if let Some(room) = remote {
            rooms.set_remote_room(&portal, room.to_owned());
        }
        rooms.register_portal(&portal).await.expect("registered");
        Side { dir, store: st, notifier, resync, provider, rooms, router, net }
    }

    /// Stops the side (it leaves `network`) and waits until its store is closed; its data, for
    /// [`Side::start_in`].
    async fn stop(self, network: &MemoryNetwork) -> tempfile::TempDir {
        let mut closed = self.store.closed();
        self.router.shutdown().await;
        self.rooms.shutdown().await;
        self.notifier.abort();
        self.resync.abort();
        network.leave(self.provider.domain());
        let Side { dir, store, notifier, resync, provider, rooms, router, net } = self;
        drop((store, notifier, resync, provider, rooms, router, net));
        tokio::time::timeout(WAIT, closed.wait_for(|c| *c)).await.expect("store closes").expect("closed");
        dir
    }

    async fn members(&self) -> usize {
        self.rooms.members(&PortalId::new("rust").expect("portal id")).await.expect("members").len()
    }
}

/// Waits until b.test's bridge leaf, which joins in the background, is in `a`'s group beside a.test's.
async fn joined(a: &Side) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while a.members().await < 2 {
        assert!(tokio::time::Instant::now() < deadline, "b.test never joined");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The text and shown author of the `n`-th line delivered to `side`'s leg.
async fn delivered(side: &Side, n: usize) -> (String, String) {
    let got = side.net.wait_delivered(n, WAIT).await;
    assert_eq!(got.len(), n, "{got:?}");
    match &got[n - 1].kind {
        OutboundKind::Message { draft, .. } => (got[n - 1].sender.display_name.clone(), draft.body.clone()),
        other => panic!("not a message: {other:?}"),
    }
}

/// The bodies of the messages among `deliveries`, in order.
fn bodies<'a>(deliveries: impl IntoIterator<Item = &'a OutboundEvent>) -> Vec<String> {
    let messages = deliveries.into_iter().filter_map(|d| match &d.kind {
        OutboundKind::Message { draft, .. } => Some(draft.body.clone()),
        _ => None,
    });
    messages.collect()
}

/// The bodies of the messages delivered to `side`'s leg `room` so far.
fn bodies_on(side: &Side, room: &str) -> Vec<String> {
    let leg = side.net.leg(room);
    bodies(side.net.delivered().iter().filter(|d| d.leg == leg))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_portal_joins_a_room_hosted_elsewhere_talks_both_ways_and_updates_its_key_there() {
    let network = MemoryNetwork::new();
    let a = Side::start(&network, "a.test", None, Duration::from_secs(3600)).await;
    a.net.say("#rust", "alice", "before b.test came").await.1.expect("bridged");
    let b = Side::start(&network, "b.test", Some(ROOM), Duration::from_secs(1)).await;
    assert_eq!(b.rooms.room_of(&PortalId::new("rust").expect("id")), ROOM);
    joined(&a).await;
    assert!(b.provider.hub_of(ROOM).expect("followed").as_deref() == Some("a.test"), "b.test follows the room");
    // Its copy of the log starts at its join: what came before is not its to read (nor fetched from a.test).
    let first = |side: &Side| {
        let after = side.provider.entries_after(ROOM, 0, 1).err().and_then(|e| match e {
            ProviderError::Pruned { first, .. } => Some(first - 1),
            _ => None,
        });
        side.provider.entries_after(ROOM, after.unwrap_or(0), 1).expect("log").first().map(|e| e.seq)
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    while first(&b).is_none() {
        assert!(tokio::time::Instant::now() < deadline, "b.test's copy stays empty");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (a_first, b_first) = (first(&a).expect("a.test's log"), first(&b).expect("b.test's copy"));
    assert!(b_first > a_first, "b.test's copy starts at {b_first}, a.test's log at {a_first}");

    a.net.say("#rust", "alice", "hello b.test").await.1.expect("bridged");
    assert_eq!(delivered(&b, 1).await, ("alice".to_owned(), "hello b.test".to_owned()));
    b.net.say("#rust", "bob", "hello a.test").await.1.expect("bridged");
    assert_eq!(delivered(&a, 1).await, ("bob".to_owned(), "hello a.test".to_owned()));

    // Within a few intervals b.test's bridge leaf has committed a key update, sequenced by a.test's hub.
    let b_leaf = {
        let members = a.rooms.members(&PortalId::new("rust").expect("id")).await.expect("members");
        let index = members.iter().position(|m| m.as_slice() == b"mimi://b.test/u/bridge").expect("b's leaf");
        u32::try_from(index).expect("index")
    };
    let from_epoch = a.provider.epoch(ROOM).expect("hosted");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let updated = a.provider.entries_after(ROOM, 0, 1000).expect("log").iter().any(|e| {
            matches!(inspect(&e.fanout.message),
                     Ok(Inspected::Public { commit: true, sender: PublicSender::Member(i), .. }) if i == b_leaf)
        });
        if updated {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "b.test's leaf never updated its key");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(a.provider.epoch(ROOM).expect("hosted") > from_epoch);

    // Both groups followed the new epoch: lines still cross both ways.
    a.net.say("#rust", "alice", "after the update").await.1.expect("bridged");
    assert_eq!(delivered(&b, 2).await.1, "after the update");
    b.net.say("#rust", "bob", "still here").await.1.expect("bridged");
    assert_eq!(delivered(&a, 2).await.1, "still here");
    a.router.shutdown().await;
    b.router.shutdown().await;
}

/// A member's message with the `legacySender` extension naming `user` as a legacy user of the bridge of `domain`.
fn speaking_for(member: &str, user: &str, domain: &str) -> Vec<u8> {
    let mut content = ContentBuilder::new(member, ROOM).plain_text("hi").build().expect("content");
    let mut legacy = LegacyUser::new(AccountId::parse("xmpp.t").expect("account"), user);
    legacy.display_name = Some(user.to_owned());
    LegacySender::from_user(&legacy, domain).attach(&mut content.extensions).expect("extension");
    Message::encode(content).expect("encoded").bytes().to_vec()
}

#[test]
fn a_member_speaks_for_legacy_users_of_its_own_domain_only() {
    let portal = PortalId::new("rust").expect("id");
    let bridge = "mimi://b.test/u/bridge";
    let (_, msg) =
        decode_incoming(&portal, ROOM, bridge.as_bytes(), &speaking_for(bridge, "xavier", "b.test")).expect("decoded");
    assert_eq!((msg.sender.display_name.as_str(), msg.sender.network.as_str()), ("xavier", "xmpp"));
    assert!(msg.sender.uri.starts_with("mimi://b.test/u/xmpp.t~"), "{}", msg.sender.uri);
    // A user of another domain: the member itself is shown, not the name it claims.
    let (_, msg) =
        decode_incoming(&portal, ROOM, bridge.as_bytes(), &speaking_for(bridge, "xavier", "a.test")).expect("decoded");
    assert_eq!((msg.sender.uri.as_str(), msg.sender.display_name.as_str()), (bridge, "bridge"));
    // A bridge speaks for legacy users only, not for its provider's native users.
    let mut content = ContentBuilder::new(bridge, ROOM).plain_text("hi").build().expect("content");
    let native = LegacySender { uri: "mimi://b.test/u/alice".into(), display_name: None, network: "mimi".into() };
    native.attach(&mut content.extensions).expect("extension");
    let claim = Message::encode(content).expect("encoded").bytes().to_vec();
    let (_, msg) = decode_incoming(&portal, ROOM, bridge.as_bytes(), &claim).expect("decoded");
    assert_eq!(msg.sender.uri, bridge);
    // A native user is shown as themselves, whoever they claim to speak for.
    let mallory = "mimi://b.test/u/mallory";
    let (_, msg) = decode_incoming(&portal, ROOM, mallory.as_bytes(), &speaking_for(mallory, "xavier", "b.test"))
        .expect("decoded");
    assert_eq!((msg.sender.uri.as_str(), msg.sender.display_name.as_str()), (mallory, "mallory"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_portal_removed_from_a_room_hosted_elsewhere_joins_it_again_at_its_next_line() {
    let network = MemoryNetwork::new();
    let a = Side::start(&network, "a.test", None, Duration::from_secs(3600)).await;
    let b = Side::start(&network, "b.test", Some(ROOM), Duration::from_secs(3600)).await;
    joined(&a).await;
    // carol, a native user of a.test, removes b.test's bridge leaf.
    let carol_dir = tempfile::tempdir().expect("tempdir");
    let mut carol = Native::join_as(&a.provider, carol_dir.path(), "mimi://a.test/u/carol", ROOM).await;
    let b_leaf = carol.group.member_index(b"mimi://b.test/u/bridge").expect("b.test's leaf");
    let removal = carol.group.remove_members(&[b_leaf]).durable().await.expect("removal");
    let commit = MlsMessageBytes::new(removal.commit).expect("framed");
    let carol_uri = "mimi://a.test/u/carol".to_owned();
    a.provider.submit(ROOM, commit, &carol_uri, Origin::Client(carol_uri.clone())).await.expect("hub accepts");
    carol.group.merge_pending_commit().durable().await.expect("merged");
    let deadline = tokio::time::Instant::now() + WAIT;
    while a.members().await != 2 {
        assert!(tokio::time::Instant::now() < deadline, "a.test's group never saw the removal");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // bob's next line finds b.test out of the room: it joins again, and the line arrives.
    b.net.say("#rust", "bob", "am I still here?").await.1.expect("bridged");
    assert_eq!(delivered(&a, 1).await, ("bob".to_owned(), "am I still here?".to_owned()));
    assert_eq!(a.members().await, 3, "a.test's bridge, carol and b.test's new leaf");
    a.net.say("#rust", "alice", "welcome back").await.1.expect("bridged");
    assert_eq!(delivered(&b, 1).await.1, "welcome back");
    a.router.shutdown().await;
    b.router.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_whose_answer_was_lost_is_sent_again_as_the_same_message_and_sequenced_once() {
    let network = MemoryNetwork::new();
    let a = Side::start(&network, "a.test", None, Duration::from_secs(3600)).await;
    let b = Side::start(&network, "b.test", Some(ROOM), Duration::from_secs(3600)).await;
    joined(&a).await;
    // a.test sequences bob's line, but its answer never reaches b.test: the line is not accepted there.
    network.lose_answers("a.test", 1);
    let line = || InboundKind::Message { draft: MessageDraft::plain("did you get this?"), reply_to: None };
    let first = b.net.say_with_id("#rust", "bob", "line-1", line()).await;
    assert!(first.is_err(), "accepted without the hub's answer: {first:?}");
    // The network delivers the line again: it goes as the same message, which a.test sequences once.
    b.net.say_with_id("#rust", "bob", "line-1", line()).await.expect("bridged");
    assert_eq!(delivered(&a, 1).await.1, "did you get this?");
    b.net.say("#rust", "bob", "and this").await.1.expect("bridged");
    let got = a.net.wait_delivered(2, WAIT).await;
    let texts = bodies(&got);
    assert_eq!(texts, ["did you get this?", "and this"], "each line once");
    a.router.shutdown().await;
    b.router.shutdown().await;
}

/// Lines that never reached the hub (unreachable): kept with their ciphertexts, they go again in the background
/// once the hub answers, without the network sending them again, and reach the bridge's other leg; the portal's
/// next line waits behind them. Everywhere in the order they were said.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_the_hub_never_got_go_again_in_the_background_in_order() {
    let network = MemoryNetwork::new();
    let a = Side::start(&network, "a.test", None, Duration::from_secs(3600)).await;
    let b = Side::start(&network, "b.test", Some(ROOM), Duration::from_secs(3600)).await;
    let portal = PortalId::new("rust").expect("portal id");
    b.router.link(b.net.leg("#also"), &portal).await.expect("link");
    joined(&a).await;
    network.set_down("a.test", true);
    for line in ["while a.test was down", "still down"] {
        let said = b.net.say("#rust", "bob", line).await.1;
        assert!(said.is_err(), "accepted without the hub: {said:?}");
    }
    network.set_down("a.test", false);
    // Marked and queued behind the first (so answered as not bridged yet), or sent after it.
    let _ = b.net.say("#rust", "bob", "next").await.1;
    let got = a.net.wait_delivered(3, WAIT).await;
    let texts = bodies(&got);
    assert_eq!(texts, ["while a.test was down", "still down", "next"], "in the order they were said, once each");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let also = bodies_on(&b, "#also");
        if also.len() >= 3 {
            assert_eq!(also, ["while a.test was down", "still down", "next"], "in order, once each");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "b.test's other leg got {also:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    a.router.shutdown().await;
    b.router.shutdown().await;
}

/// Lines the hub does not take (it is unreachable) before the router gives such messages up are given up: their
/// sender is told on their leg, once for each, naming it; the network sending one again is refused; they do not
/// go once the hub is back, and the next line does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_the_hub_does_not_take_in_time_are_given_up_and_their_sender_told() {
    let network = MemoryNetwork::new();
    let a = Side::start(&network, "a.test", None, Duration::from_secs(3600)).await;
    let b = Side::start_giving_up(&network, "b.test", Some(ROOM), Duration::from_secs(2)).await;
    joined(&a).await;
    network.set_down("a.test", true);
    let line = |text: &str| InboundKind::Message { draft: MessageDraft::plain(text), reply_to: None };
    for (native, text) in [("lost-1", "lost to the outage"), ("lost-2", "also lost")] {
        let said = b.net.say_with_id("#rust", "bob", native, line(text)).await;
        assert!(said.is_err(), "accepted without the hub: {said:?}");
    }
    // Tried again in the background until this process has tried for 2 s; each named to bob (a minute apart
    // would be the limit of other refusals).
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut notices = loop {
        let told: Vec<_> = b.net.delivered().into_iter().filter(|d| d.leg == b.net.leg("#rust")).collect();
        if told.len() >= 2 {
            break told
                .iter()
                .map(|d| match &d.kind {
                    OutboundKind::Message { draft, .. } if draft.style == MessageStyle::Notice => draft.body.clone(),
                    other => panic!("not a notice: {other:?}"),
                })
                .collect::<Vec<_>>();
        }
        assert!(tokio::time::Instant::now() < deadline, "bob was told {told:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    notices.sort();
    let told = "⚠ bob: your message was not bridged: the room's hub has not taken it in 2 s: ";
    assert_eq!(notices, [format!("{told}“also lost”"), format!("{told}“lost to the outage”")]);
    // Sent again by its network (as Matrix does with a transaction that failed), before and after the hub is back.
    let again = b.net.say_with_id("#rust", "bob", "lost-1", line("lost to the outage")).await;
    assert!(matches!(again, Err(RouteError::Room(RoomError::Refused(_)))), "{again:?}");
    network.set_down("a.test", false);
    let again = b.net.say_with_id("#rust", "bob", "lost-1", line("lost to the outage")).await;
    assert!(matches!(again, Err(RouteError::Room(RoomError::Refused(_)))), "{again:?}");
    let said = b.net.say("#rust", "bob", "after the outage").await.1;
    assert!(said.is_ok(), "{said:?}");
    assert_eq!(delivered(&a, 1).await.1, "after the outage");
    // The background had its chance to send the given-up line after the hub came back.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(bodies(&a.net.delivered()), ["after the outage"], "a given-up line went after all");
    assert_eq!(b.net.delivered().len(), 2, "told more than once");
    a.router.shutdown().await;
    b.router.shutdown().await;
}

/// The time a line for the hub is tried counts across restarts: a line handed to the unreachable hub longer ago than
/// the give-up time, before the bridge stopped, is given up after a few seconds of tries after its next start (not
/// a whole give-up time later), its sender told; it never reaches the room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_tried_longer_than_the_give_up_time_across_a_restart_is_given_up() {
    let network = MemoryNetwork::new();
    let a = Side::start(&network, "a.test", None, Duration::from_secs(3600)).await;
    let give_up = Duration::from_secs(120);
    let b = Side::start_giving_up(&network, "b.test", Some(ROOM), give_up).await;
    joined(&a).await;
    network.set_down("a.test", true);
    let line = InboundKind::Message { draft: MessageDraft::plain("said before a long outage"), reply_to: None };
    let said = b.net.say_with_id("#rust", "bob", "old-1", line).await;
    assert!(said.is_err(), "accepted without the hub: {said:?}");
    let dir = b.stop(&network).await;

    // The bridge was down for a while: the line's mark is older than the give-up time.
    let st = bridge_core::open_store(dir.path(), Some(Backend::Redb), CommitConfig::default()).expect("store");
    let marks = st.scan_prefix(bridge_core::repo::IDS, b"p").expect("marks");
    assert_eq!(marks.len(), 1, "one mark");
    let (key, value) = &marks[0];
    let mut mark: bridge_core::repo::SentMarker = serde_json::from_slice(value).expect("mark");
    assert!(mark.submitted.is_some(), "handed to the hub: {mark:?}");
    mark.at_ms -= 2 * give_up.as_millis() as u64;
    let mut batch = mimi_store::Batch::new();
    batch.put(bridge_core::repo::IDS, key.clone(), serde_json::to_vec(&mark).expect("json"));
    st.commit(batch).await.expect("aged");
    let mut closed = st.closed();
    drop(st);
    tokio::time::timeout(WAIT, closed.wait_for(|c| *c)).await.expect("store closes").expect("closed");

    let config = RouterConfig { hub_give_up_after: give_up, ..RouterConfig::new("b.test") };
    let b = Side::launch(dir, &network, "b.test", Some(ROOM), Duration::from_secs(3600), config).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    let notice = loop {
        if let Some(d) = b.net.delivered().into_iter().find(|d| d.leg == b.net.leg("#rust")) {
            break d;
        }
        assert!(tokio::time::Instant::now() < deadline, "bob was never told (within {WAIT:?} of the start)");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let told =
        "⚠ bob: your message was not bridged: the room's hub has not taken it in 2 min: “said before a long outage”";
    assert!(matches!(&notice.kind, OutboundKind::Message { draft, .. } if draft.body == told), "{notice:?}");
    network.set_down("a.test", false);
    b.net.say("#rust", "bob", "after the outage").await.1.expect("bridged");
    assert_eq!(delivered(&a, 1).await.1, "after the outage");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(bodies(&a.net.delivered()), ["after the outage"], "a given-up line went after all");
    a.router.shutdown().await;
    b.router.shutdown().await;
}

/// A line whose answer was lost, then the bridge stopped: at its next start, with the hub unreachable at first, the
/// line goes again as the same message (which the hub had sequenced): it reaches the bridge's other leg once, as
/// soon as the hub answers, without the network sending it again; and when the network does send it again, it is
/// neither published nor delivered a second time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_whose_answer_was_lost_before_a_restart_is_sequenced_once_and_reaches_the_other_legs() {
    let network = MemoryNetwork::new();
    let a = Side::start(&network, "a.test", None, Duration::from_secs(3600)).await;
    let b = Side::start(&network, "b.test", Some(ROOM), Duration::from_secs(3600)).await;
    let portal = PortalId::new("rust").expect("portal id");
    b.router.link(b.net.leg("#also"), &portal).await.expect("link");
    joined(&a).await;
    // Every answer lost, those of the background's tries too, until b.test stops.
    network.lose_answers("a.test", 1000);
    let line = || InboundKind::Message { draft: MessageDraft::plain("did you get this?"), reply_to: None };
    let first = b.net.say_with_id("#rust", "bob", "line-1", line()).await;
    assert!(first.is_err(), "accepted without the hub's answer: {first:?}");
    assert_eq!(delivered(&a, 1).await.1, "did you get this?", "a.test's hub sequenced it");

    // b.test stops; a.test is unreachable when it starts again.
    let dir = b.stop(&network).await;
    network.lose_answers("a.test", 0);
    network.set_down("a.test", true);
    let b = Side::start_in(dir, &network, "b.test", Some(ROOM), Duration::from_secs(3600)).await;
    let on_also = |b: &Side| bodies_on(b, "#also");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(on_also(&b).is_empty(), "recorded before the hub answered: {:?}", on_also(&b));
    network.set_down("a.test", false);
    let deadline = tokio::time::Instant::now() + WAIT;
    while on_also(&b).is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "the line never reached b.test's other leg");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(on_also(&b), ["did you get this?"]);

    // The network sends the line again: found recorded, neither published nor delivered again.
    b.net.say_with_id("#rust", "bob", "line-1", line()).await.expect("answered");
    b.net.say("#rust", "bob", "and this").await.1.expect("bridged");
    let got = a.net.wait_delivered(2, WAIT).await;
    let texts = bodies(&got);
    assert_eq!(texts, ["did you get this?", "and this"], "each line once in the room");
    let deadline = tokio::time::Instant::now() + WAIT;
    while on_also(&b).len() < 2 {
        assert!(tokio::time::Instant::now() < deadline, "the second line never reached b.test's other leg");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(on_also(&b), ["did you get this?", "and this"], "each line once on the other leg");
    a.router.shutdown().await;
    b.router.shutdown().await;
}

/// b.test stops, and stays away longer than a.test keeps its log: at its next start a.test no longer holds what its
/// copy of the room misses (410). Its bridge leaf joins the room again, in place of its old leaf, its copy starts
/// over at that join, and lines cross both ways again; what was said meanwhile is not bridged, and its legs are
/// told so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bridge_away_longer_than_the_hub_keeps_its_log_joins_the_room_again() {
    let network = MemoryNetwork::new();
    let a = Side::start(&network, "a.test", None, Duration::from_secs(3600)).await;
    let b = Side::start(&network, "b.test", Some(ROOM), Duration::from_secs(3600)).await;
    joined(&a).await;
    a.net.say("#rust", "alice", "before").await.1.expect("bridged");
    assert_eq!(delivered(&b, 1).await.1, "before");
    let b_last = b.provider.last_seq(ROOM).expect("b.test's copy");
    let dir = b.stop(&network).await;

    for i in 0..3 {
        a.net.say("#rust", "alice", &format!("missed {i}")).await.1.expect("bridged");
    }
    // a.test's retention removes all it may (never what its own bridge has not read: waited for).
    let deadline = tokio::time::Instant::now() + WAIT;
    while !matches!(a.provider.entries_after(ROOM, b_last, 1), Err(ProviderError::Pruned { .. })) {
        assert!(tokio::time::Instant::now() < deadline, "a.test's log never lost what b.test misses");
        a.provider.prune_log(u64::MAX).await.expect("prune");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let b = Side::start_in(dir, &network, "b.test", Some(ROOM), Duration::from_secs(3600)).await;
    // Joined again: b.test's copy starts over at the join.
    let deadline = tokio::time::Instant::now() + WAIT;
    let started_over = |b: &Side| {
        !b.provider.copy_gone(ROOM)
            && mimi_provider::log::Records(&b.store).first(ROOM).is_ok_and(|first| first > b_last + 1)
    };
    while !started_over(&b) {
        assert!(tokio::time::Instant::now() < deadline, "b.test's copy never started over");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(matches!(b.provider.entries_after(ROOM, b_last, 1), Err(ProviderError::Pruned { .. })));
    // What the copy held before goes from b.test's store (in batches, after the start is written).
    let records = mimi_provider::log::Records(&b.store);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let first = records.first(ROOM).expect("first");
        let oldest = records.oldest_seqs(ROOM, 1).expect("read");
        if oldest.first().is_none_or(|seq| *seq >= first) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "entry {} below the start {first} stayed", oldest[0]);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    a.net.say("#rust", "alice", "after the gap").await.1.expect("bridged");
    // b.test's leg gets the line, and a notice of what it missed (in either order: the notice is best effort).
    let (notices, texts) = {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let (notices, texts): (Vec<_>, Vec<_>) = b
                .net
                .delivered()
                .into_iter()
                .filter_map(|d| match d.kind {
                    OutboundKind::Message { draft, .. } => Some((draft.style == MessageStyle::Notice, draft.body)),
                    _ => None,
                })
                .partition(|(notice, _)| *notice);
            if !texts.is_empty() && !notices.is_empty() || tokio::time::Instant::now() > deadline {
                break (notices, texts.into_iter().map(|(_, t)| t).collect::<Vec<_>>());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    assert_eq!(texts, ["after the gap"], "what the hub no longer held is not made up");
    assert!(notices.len() == 1 && notices[0].1.contains("not bridged"), "{notices:?}");
    b.net.say("#rust", "bob", "back").await.1.expect("bridged");
    assert_eq!(delivered(&a, 1).await, ("bob".to_owned(), "back".to_owned()));
    assert_eq!(a.members().await, 2, "the old leaf was replaced");
    // What the old copy held is gone from b.test's store too.
    let stored = mimi_provider::log::Records(&b.store);
    assert!(stored.entry(ROOM, b_last).expect("read").is_none(), "the old copy's last entry is still stored");
    let first = stored.first(ROOM).expect("read");
    assert!(first > b_last + 1 && stored.entry(ROOM, first).expect("read").is_some(), "the copy starts at {first}");
    a.router.shutdown().await;
    b.router.shutdown().await;
}
