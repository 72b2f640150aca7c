//! Two providers on one in-memory network, and native users with real MLS groups (as `mimi-client` makes them).

use mimi_mls::{CommitOutput, EngineConfig, LocalMember, MlsBackend, PortalGroup, Received, key_packages};
use mimi_protocol::wire::{
    DEFAULT_CIPHERSUITE, GroupInfoCode, GroupInfoOption, GroupInfoRequest, MlsMessageBytes, RatchetTreeOption,
    UpdateRequest, wire_format,
};
use mimi_provider::testing::MemoryNetwork;
use mimi_provider::{Client, Failure, Federation, NativeClients, Provider, Registration, Verdict};
use mimi_store::{Backend, CommitConfig, Store, open_data_dir};
use openmls::prelude::SignatureScheme;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store =
        open_data_dir(dir.path(), Some(Backend::Redb), CommitConfig::default(), &mimi_store::schema::Schema::FIRST)
            .expect("store");
    (dir, store)
}

/// One provider on the network: its federation (with a running notifier) and its client API.
pub struct Node {
    _dir: tempfile::TempDir,
    pub provider: Provider,
    pub federation: Federation,
    pub clients: NativeClients,
}

impl Node {
    fn open(net: &Arc<MemoryNetwork>, domain: &str) -> Self {
        let (dir, store) = store();
        let provider = Provider::open(domain, store).expect("provider");
        let federation = net.join(provider.clone());
        tokio::spawn(federation.clone().run_notifier());
        let clients = NativeClients::new(federation.clone(), Registration::Open);
        Self { _dir: dir, provider, federation, clients }
    }

    /// The sequence numbers and messages of the room's log here.
    pub fn log(&self, room: &str) -> Vec<(u64, Vec<u8>)> {
        let entries = self.provider.entries_after(room, 0, 10_000).expect("room");
        entries.into_iter().map(|e| (e.seq, e.fanout.message.into_bytes())).collect()
    }

    pub fn last_seq(&self, room: &str) -> u64 {
        self.provider.last_seq(room).unwrap_or(0)
    }
}

/// a.test and b.test on one network.
pub fn two_providers() -> (Arc<MemoryNetwork>, Node, Node) {
    let net = MemoryNetwork::new();
    let a = Node::open(&net, "a.test");
    let b = Node::open(&net, "b.test");
    (net, a, b)
}

/// Waits up to 10 s for `done`.
pub async fn until(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn framed(b: Vec<u8>) -> MlsMessageBytes {
    MlsMessageBytes::new(b).expect("framed")
}

/// A commit with the GroupInfo of the epoch it makes, as the client API takes it.
pub fn commit_request(commit: Vec<u8>, welcome: Option<Vec<u8>>, group_info: Vec<u8>) -> UpdateRequest {
    UpdateRequest::Commit {
        commit: framed(commit),
        welcome: welcome.map(framed),
        group_info: GroupInfoOption(framed(group_info)),
        ratchet_tree: RatchetTreeOption::DistributionService,
    }
}

/// A native user of one provider, with its own MLS keys and (once in a room) group.
pub struct User {
    _dir: tempfile::TempDir,
    backend: Arc<MlsBackend>,
    member: Arc<LocalMember>,
    pub client: Client,
    pub uri: String,
    group: Option<PortalGroup>,
    /// The last log entry read.
    cursor: u64,
    /// Entries the user sent (not processed again).
    own: HashSet<u64>,
}

impl User {
    /// Registers `name` with `node` and makes the user's MLS keys.
    pub async fn register(node: &Node, name: &str) -> Self {
        let reg = node.clients.register(name, None).await.expect("register");
        let client = node.clients.authenticate(Some(&reg.uri), Some(&reg.token)).expect("authenticated");
        assert!(node.clients.authenticate(Some(&reg.uri), Some("not the token")).is_err(), "a bad token is refused");
        let (dir, store) = store();
        let backend = Arc::new(MlsBackend::new(store, "client").expect("backend"));
        let member = LocalMember::load_or_create(&backend, &reg.uri, SignatureScheme::ED25519)
            .expect("member")
            .durable()
            .await
            .expect("durable");
        Self {
            _dir: dir,
            backend,
            member: Arc::new(member),
            client,
            uri: reg.uri,
            group: None,
            cursor: 0,
            own: HashSet::new(),
        }
    }

    pub fn group(&mut self) -> &mut PortalGroup {
        self.group.as_mut().expect("in the room")
    }

    pub fn epoch(&self) -> u64 {
        self.group.as_ref().expect("in the room").epoch()
    }

    /// Uploads `n` KeyPackages to the user's provider.
    pub async fn upload_key_packages(&self, node: &Node, n: usize) {
        let kps = key_packages::generate(&self.backend, &self.member, &EngineConfig::default(), n, false)
            .durable()
            .await
            .expect("key packages");
        let kps: Vec<_> = kps.into_iter().map(framed).collect();
        node.clients.upload_key_packages(&self.client, &kps).await.expect("upload");
    }

    /// Creates room `name` at `node` (the user's provider), with its GroupInfo; the room's URI.
    pub async fn create_room(&mut self, node: &Node, name: &str) -> String {
        let room = format!("mimi://{}/r/{name}", node.provider.domain());
        let group =
            PortalGroup::create(self.backend.clone(), self.member.clone(), &EngineConfig::default(), room.as_bytes())
                .durable()
                .await
                .expect("group");
        let gi = group.export_group_info(true).expect("group info");
        let created =
            node.clients.create_room(&self.client, name, &framed(gi.clone()), None, false).await.expect("room");
        assert_eq!(created, room);
        node.clients.put_group_info(&self.client, &room, gi).await.expect("group info");
        self.group = Some(group);
        room
    }

    /// The room's GroupInfo and the ratchet tree the hub sends beside it (commits' GroupInfos carry none), through
    /// the user's provider, asked for with the user's own signed request.
    pub async fn group_info(&self, node: &Node, room: &str) -> (Vec<u8>, Option<Vec<u8>>) {
        let cwk = self.member.credential();
        let (request, secret) = GroupInfoRequest::new(
            DEFAULT_CIPHERSUITE,
            self.member.signer(),
            cwk.signature_key.as_slice(),
            &cwk.credential,
            None,
        )
        .expect("request");
        let response = node.clients.request_group_info(&self.client, room, &request).await.expect("answer");
        assert_eq!(response.status(), GroupInfoCode::Success);
        let tbe = response.open(room.as_bytes(), &secret).expect("opens");
        let tree = match tbe.ratchet_tree {
            RatchetTreeOption::Full(tree) => Some(tree),
            _ => None,
        };
        (tbe.group_info.into_bytes(), tree)
    }

    /// An external commit into the room from its GroupInfo (merged at once, as `mimi-client` does): the update to
    /// send.
    pub async fn external_commit(&mut self, (group_info, tree): &(Vec<u8>, Option<Vec<u8>>)) -> UpdateRequest {
        let (mut group, commit) = PortalGroup::rejoin_by_external_commit(
            self.backend.clone(),
            self.member.clone(),
            &EngineConfig::default(),
            group_info,
            tree.as_deref(),
        )
        .durable()
        .await
        .expect("external commit");
        group.merge_pending_commit().durable().await.expect("merged");
        let next = group.export_group_info(false).expect("group info");
        self.group = Some(group);
        commit_request(commit, None, next)
    }

    /// Joins from the Welcome at `seq` of the room's log at `node`, with the tree its hub serves.
    pub async fn join_from_welcome(&mut self, node: &Node, room: &str, seq: u64) {
        let page = node.clients.messages(&self.client, room, seq - 1, Duration::ZERO).await.expect("log");
        let welcome = &page.0.first().expect("the Welcome").fanout.message;
        assert_eq!(welcome.wire_format(), wire_format::WELCOME);
        let tree = self.group_info(node, room).await.1.expect("the hub sends its tree");
        let group = PortalGroup::join_from_welcome(
            self.backend.clone(),
            self.member.clone(),
            &EngineConfig::default(),
            welcome.as_bytes(),
            Some(&tree),
        )
        .durable()
        .await
        .expect("joined");
        self.group = Some(group);
        self.cursor = seq;
    }

    /// From now on the user reads the log after `seq` (it joined there).
    pub fn joined_at(&mut self, seq: u64) {
        self.cursor = seq;
        self.own.insert(seq);
    }

    /// Settles the user's pending commit after the hub's `verdict`: merged once accepted, else dropped.
    pub async fn settle_commit(&mut self, verdict: &Result<Verdict, Failure>) {
        match verdict {
            Ok(Verdict::Accepted { seq }) => {
                self.own.insert(seq.expect("the hub's sequence number"));
                self.group().merge_pending_commit().durable().await.expect("merged");
            }
            _ => self.group().clear_pending_commit().durable().await.expect("cleared"),
        }
    }

    /// Commits a fresh leaf key (pending): the update to send.
    pub async fn self_update(&mut self) -> UpdateRequest {
        let out: CommitOutput = self.group().self_update().durable().await.expect("commit");
        commit_request(out.commit, out.welcome, out.group_info.expect("group info"))
    }

    /// Encrypts and submits `text` through `node` (the user's provider).
    pub async fn say(&mut self, node: &Node, room: &str, text: &str) -> Result<Verdict, Failure> {
        let msg = self.group().encrypt(text.as_bytes()).durable().await.expect("encrypt");
        let verdict = node.clients.submit(&self.client, room, framed(msg)).await;
        if let Ok(Verdict::Accepted { seq: Some(seq) }) = verdict {
            self.own.insert(seq);
        }
        verdict
    }

    /// Reads the room's log at `node` from where the user left off: processes commits, returns the texts of
    /// others' application messages in log order.
    pub async fn read(&mut self, node: &Node, room: &str) -> Vec<String> {
        let mut texts = Vec::new();
        loop {
            let page = node.clients.messages(&self.client, room, self.cursor, Duration::ZERO).await.expect("log");
            if page.0.is_empty() {
                return texts;
            }
            for e in page.0 {
                assert_eq!(e.seq, self.cursor + 1, "{}: the log is read in order, without gaps", self.uri);
                self.cursor = e.seq;
                let m = &e.fanout.message;
                if self.own.contains(&e.seq) || m.wire_format() == wire_format::WELCOME {
                    continue;
                }
                match self.group().process(m.as_bytes()).durable().await.expect("processed") {
                    Received::Application { plaintext, .. } => {
                        texts.push(String::from_utf8(plaintext).expect("utf-8"));
                    }
                    Received::Own => panic!("{}: own message at {} not marked", self.uri, e.seq),
                    _ => {}
                }
            }
        }
    }
}
