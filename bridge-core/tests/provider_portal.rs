//! A native MLS client joins a portal's group (external commit from the GroupInfo the hub serves) and talks
//! with a loopback leg through the portal: legacy → MLS arrives decrypted at the client, MLS → legacy arrives
//! at the leg. All in process, on real MLS groups and a real store; no sockets.

use bridge_core::content::builder::ContentBuilder;
use bridge_core::content::{Message, PartBody};
use bridge_core::event::OutboundKind;
use bridge_core::loopback::LoopbackNetwork;
use bridge_core::mls::{BridgeProvider, EngineConfig, LegacySender, LocalMember, PortalGroup, Received};
use bridge_core::provider::room::room_uri;
use bridge_core::provider::wire::MlsMessageBytes;
use bridge_core::provider::{JoinPolicy, MlsRoom, Origin, Provider, ProviderError, Refusal};
use bridge_core::router::{RouterConfig, RouterHandle};
use bridge_core::store::repo::{MlsIdentity, PortalRecord};
use bridge_core::store::{Backend, CommitConfig, Store, open_data_dir};
use bridge_core::{AccountContext, AccountId, PortalId};
use openmls::prelude::SignatureScheme;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

const DOMAIN: &str = "bridge.test";
const WAIT: Duration = Duration::from_secs(20);

fn store(dir: &Path) -> Store {
    open_data_dir(dir, Some(Backend::Redb), CommitConfig::default()).expect("store opens")
}

async fn member(store: &Store, ns: &str, uri: &str) -> (Arc<BridgeProvider>, Arc<LocalMember>) {
    let p = Arc::new(BridgeProvider::new(store.clone(), ns).expect("provider"));
    let m = LocalMember::load_or_create(&p, uri, SignatureScheme::ED25519)
        .expect("member")
        .durable()
        .await
        .expect("durable");
    (p, Arc::new(m))
}

/// A native client: its own store, keys and group; reads the hub's log like the client API does.
struct Native {
    uri: String,
    group: PortalGroup,
    cursor: u64,
}

impl Native {
    async fn join(provider: &Provider, dir: &Path, user: &str, room: &str) -> Self {
        let uri = format!("mimi://{DOMAIN}/u/{user}");
        let st = store(dir);
        let (p, m) = member(&st, user, &uri).await;
        let info = provider.group_info(room).expect("room").expect("group info served");
        let (mut group, commit) = PortalGroup::rejoin_by_external_commit(p, m, &EngineConfig::default(), &info, None)
            .durable()
            .await
            .expect("external commit");
        let commit = MlsMessageBytes::new(commit).expect("framed");
        let a = provider.submit(room, commit.clone(), &uri, Origin::Client(uri.clone())).await.expect("hub accepts");
        group.merge_pending_commit().durable().await.expect("merge");
        // A retry of the same commit gets the same sequence number and adds nothing.
        let again = provider.submit(room, commit, &uri, Origin::Client(uri.clone())).await.expect("retry accepted");
        assert_eq!((again.seq, again.duplicate), (a.seq, true));
        assert_eq!(provider.last_seq(room).expect("room"), a.seq);
        Self { uri, group, cursor: a.seq }
    }

    async fn send(&mut self, provider: &Provider, room: &str, text: &str) -> Result<u64, ProviderError> {
        let msg = ContentBuilder::new(&self.uri, room).plain_text(text).build_message().expect("content");
        let ct = self.group.encrypt(msg.bytes()).durable().await.expect("encrypt");
        let ct = MlsMessageBytes::new(ct).expect("framed");
        let a = provider.submit(room, ct, &self.uri, Origin::Client(self.uri.clone())).await?;
        Ok(a.seq)
    }

    /// Next application message from the log: (sender identity, content).
    async fn next(&mut self, provider: &Provider, room: &str) -> (String, Message) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            for e in provider.entries_after(room, self.cursor, 16).expect("log") {
                self.cursor = e.seq;
                match self.group.process(e.fanout.message.as_bytes()).durable().await {
                    Ok(Received::Application { sender_identity, plaintext, .. }) => {
                        let m = Message::decode(&plaintext).expect("MIMI content");
                        return (String::from_utf8(sender_identity).expect("utf-8"), m);
                    }
                    Ok(_) => {}
                    Err(e) => panic!("native client cannot process entry {}: {e}", self.cursor),
                }
            }
            assert!(tokio::time::Instant::now() < deadline, "no message for the native client");
            provider.wait(room, self.cursor, Duration::from_millis(500)).await.expect("wait");
        }
    }
}

fn text(m: &Message) -> String {
    match &m.content().nested_part.body {
        PartBody::Single(s) => String::from_utf8_lossy(&s.content).into_owned(),
        other => format!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_client_and_irc_leg_talk_through_a_portal() {
    let bridge_dir = tempfile::tempdir().expect("tempdir");
    let client_dir = tempfile::tempdir().expect("tempdir");
    let st = store(bridge_dir.path());
    let provider = Provider::open(DOMAIN, st.clone()).expect("provider");
    let (mls, me) = member(&st, "bridge", &format!("mimi://{DOMAIN}/u/bridge")).await;
    let room_of_record = MlsRoom::new(provider.clone(), mls, me, EngineConfig::default(), JoinPolicy::Open);
    let router =
        RouterHandle::start(RouterConfig::new(DOMAIN), st.clone(), room_of_record.clone()).await.expect("router");
    room_of_record.attach_router(router.clone());
    let id = AccountId::parse("lb.irc").expect("account");
    let net = LoopbackNetwork::new(id.clone(), AccountContext::new(id, router.clone(), DOMAIN));
    router.add_account(net.clone());
    let portal = PortalId::new("rust").expect("portal id");
    router.create_portal(PortalRecord { id: portal.clone(), mls_identity: MlsIdentity::Shared }).await.expect("portal");
    router.link(net.leg("#rust"), &portal).await.expect("link");
    room_of_record.ensure_portal(&portal).await.expect("group");
    let room = room_uri(DOMAIN, &portal);

    let mut alice = Native::join(&provider, client_dir.path(), "alice", &room).await;
    // The bridge's portal worker applies alice's external commit from the hub log asynchronously.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut members = room_of_record.members(&portal).await.expect("members");
    while members.len() < 2 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        members = room_of_record.members(&portal).await.expect("members");
    }
    assert_eq!(members.len(), 2, "the bridge and alice");

    // Legacy → MLS: the IRC user's line arrives decrypted at the native client, attributed to the legacy sender.
    let (_, verdict) = net.say("#rust", "bob", "hello from irc").await;
    verdict.expect("bridged");
    let (sender, m) = alice.next(&provider, &room).await;
    assert_eq!(sender, format!("mimi://{DOMAIN}/u/bridge"));
    assert_eq!(text(&m), "hello from irc");
    let legacy = LegacySender::from_extensions(&m.content().extensions).expect("extension").expect("legacy sender");
    assert_eq!(legacy.uri, format!("mimi://{DOMAIN}/u/lb.irc~bob"));
    assert_eq!(m.content().extensions.room_uri.as_deref(), Some(room.as_str()));

    // MLS → legacy: the native client's message reaches the IRC leg.
    alice.send(&provider, &room, "hi from mls").await.expect("hub accepts");
    let delivered = net.wait_delivered(1, WAIT).await;
    assert_eq!(delivered.len(), 1, "one delivery to the leg");
    match &delivered[0].kind {
        OutboundKind::Message { draft, .. } => assert_eq!(draft.body, "hi from mls"),
        other => panic!("unexpected delivery {other:?}"),
    }

    // A message for an epoch the hub has moved past is refused with the current epoch.
    let stale = ContentBuilder::new(&alice.uri, &room).plain_text("late").build_message().expect("content");
    let stale_ct = alice.group.encrypt(stale.bytes()).durable().await.expect("encrypt");
    let mut bob = Native::join(&provider, tempfile::tempdir().expect("tempdir").path(), "carol", &room).await;
    let r = provider
        .submit(&room, MlsMessageBytes::new(stale_ct).expect("framed"), &alice.uri, Origin::Client(alice.uri.clone()))
        .await;
    assert!(matches!(r, Err(ProviderError::Refused(Refusal::EpochTooOld { .. }))), "{r:?}");
    // Both natives follow the bridge's next line, sent in the new epoch.
    net.say("#rust", "bob", "second").await.1.expect("bridged");
    let (_, m) = alice.next(&provider, &room).await;
    assert_eq!(text(&m), "second");
    let (_, m) = bob.next(&provider, &room).await;
    assert_eq!(text(&m), "second");
    router.shutdown().await;
}
