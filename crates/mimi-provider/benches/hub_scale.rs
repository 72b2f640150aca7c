//! The hub beside a big room: what one commit of a `HUB_SCALE_MEMBERS`-member room (default 10 000) costs the
//! hub, what the room's public state holds in memory, and how long a small room's messages wait while the big
//! room's commits are sequenced.
//!
//! Setup (untimed, printed): a redb store and a [`Provider`] hosting the big room from its first member on; the
//! member's group seated with the others in commits of `HUB_SCALE_BATCH` (default 200) adds, each sequenced by
//! the hub (whose participant list grows with them, as a portal's does); bob, one more member, joined from the
//! Welcome; a small room of two members; 2 × `HUB_SCALE_COMMITS` (default 20) commits of the big group made ahead
//! (self-updates: a full update path each, with the GroupInfo of the epoch they make), and application messages
//! of the small room.
//!
//! Timed:
//! * **validate** — [`HubView::judge_update`] on a hub room of its own ([`HubRoom`], the same public state): what
//!   the hub checks of a commit with OpenMLS's `PublicGroup` (signature, path, proposals, the new tree, the
//!   GroupInfo against it) and the encoding of the new public state. Per commit, mean and max.
//! * **update** — [`Provider::update`] of the same commits (those of the nice +10 half, see below): validation, the
//!   batch (entry, room state, the public state's chunks that changed, GroupInfo) durable, fan-out. Per commit;
//!   the size of the encoded public state, and how much of it a commit rewrites, are printed.
//! * **small room p50/p99** — [`Provider::submit`] of the small room's messages, one every 5 ms, until the answer
//!   (durable): alone (the baseline, same run), then while the big room's commits are handed in back to back and
//!   a member of the big group (bob, as the bridge's member of a big portal in the same daemon) processes each
//!   once the hub took it — `HUB_SCALE_COMMITS` of them with the MLS work of both at the daemon's own priority,
//!   then as many more at the lower priority big groups' MLS work runs at by default
//!   ([`mimi_mls::offload::set_background_nice`]).
//! * **big room's messages** — [`Provider::submit`] of the big room's own application messages, one after the
//!   other, until durable (beside the small room's alone: what a message costs the hub in a room of N members).
//! * **written per commit** — the bytes the store wrote during those 2 × `HUB_SCALE_COMMITS` commits (the hub's
//!   batches, bob's state, the small room's messages), per commit.
//! * **RSS** — the process's resident set before and after a second provider opens the big room from its
//!   GroupInfo (the public state of its group), from `/proc/self/status`; and what a member holding the big group
//!   takes: at the end, a process of its own (this program again, with `HUB_SCALE_HOLD` set) opens the first
//!   member's store and loads the group, its resident set read before and after.
//!
//! Run: `cargo bench -p mimi-provider --bench hub_scale`.

use mimi_mls::{EngineConfig, LocalMember, MlsBackend, PortalGroup};
use mimi_protocol::hub::HubRoom;
use mimi_protocol::wire::{GroupInfoOption, MlsMessageBytes, RatchetTreeOption, UpdateRequest};
use mimi_provider::{JoinPolicy, Origin, Provider};
use mimi_store::chunks::split;
use mimi_store::{Backend, CommitConfig, Store, open_data_dir};
use openmls::prelude::{BasicCredential, Ciphersuite, CredentialWithKey, KeyPackage, MlsMessageOut, SignatureScheme};
use openmls_basic_credential::SignatureKeyPair;
use openmls_rust_crypto::OpenMlsRustCrypto;
use std::sync::Arc;
use std::time::{Duration, Instant};

const DOMAIN: &str = "hub.bench";
const BIG: &str = "mimi://hub.bench/r/big";
const SMALL: &str = "mimi://hub.bench/r/small";
const ALICE: &str = "mimi://hub.bench/u/alice";
/// The member of the big group that processes its commits (of the members' provider, like the others).
const BOB: &str = "mimi://members.example/u/bob";
/// The provider of the big room's other members; the seating commits come from it (a follower, so the hub's
/// rule for Adds of users of its own does not apply).
const MEMBERS: &str = "members.example";
const CS: Ciphersuite = Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok()).unwrap_or(default)
}

fn store(dir: &tempfile::TempDir) -> Store {
    open_data_dir(dir.path(), Some(Backend::Redb), CommitConfig::default(), &mimi_store::schema::Schema::FIRST)
        .expect("store")
}

fn framed(v: Vec<u8>) -> MlsMessageBytes {
    MlsMessageBytes::new(v).expect("framed")
}

/// A KeyPackage of a new member `k`, with a signature key of its own (a group refuses duplicate keys).
fn key_package(k: usize) -> Vec<u8> {
    let provider = OpenMlsRustCrypto::default();
    let signer = SignatureKeyPair::new(CS.signature_algorithm()).expect("key");
    let cred = CredentialWithKey {
        credential: BasicCredential::new(format!("mimi://{MEMBERS}/u/m{k}").into_bytes()).into(),
        signature_key: signer.to_public_vec().into(),
    };
    let b = KeyPackage::builder().build(CS, &provider, &signer, cred).expect("kp");
    MlsMessageOut::from(b.key_package().clone()).to_bytes().expect("bytes")
}

/// Alice's group `gid` (on `store`) with `members` members in all, seated in commits of `batch` adds.
fn seated_group(store: &Store, gid: &str, members: usize, batch: usize) -> PortalGroup {
    let p = Arc::new(MlsBackend::new(store.clone(), gid).expect("backend"));
    let me = LocalMember::load_or_create(&p, ALICE, SignatureScheme::ED25519)
        .expect("member")
        .durable_blocking()
        .expect("durable");
    let mut g =
        PortalGroup::create(p, Arc::new(me), &EngineConfig::default(), gid.as_bytes()).durable_blocking().expect("g");
    let mut seated = 1;
    while seated < members {
        let k = batch.min(members - seated);
        let kps: Vec<Vec<u8>> = (seated..seated + k).map(key_package).collect();
        let refs: Vec<&[u8]> = kps.iter().map(Vec::as_slice).collect();
        g.add_members(&refs).durable_blocking().expect("seat");
        g.merge_pending_commit().durable_blocking().expect("merge");
        seated += k;
    }
    g
}

/// A self-update of `g` as an update request (commit and the GroupInfo of its epoch), merged.
fn commit(g: &mut PortalGroup) -> UpdateRequest {
    let out = g.self_update().durable_blocking().expect("commit");
    g.merge_pending_commit().durable_blocking().expect("merge");
    UpdateRequest::Commit {
        commit: framed(out.commit),
        welcome: None,
        group_info: GroupInfoOption(framed(out.group_info.expect("group info"))),
        ratchet_tree: RatchetTreeOption::DistributionService,
    }
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Hands `messages` to the small room, one every 5 ms, until `until` says stop (at least `min` of them); the
/// answer times in ms, sorted.
async fn small_room(
    provider: &Provider,
    messages: &mut impl Iterator<Item = MlsMessageBytes>,
    min: usize,
    until: impl Fn() -> bool,
) -> Vec<f64> {
    let mut answers = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    while answers.len() < min || !until() {
        tick.tick().await;
        let Some(m) = messages.next() else { break };
        let t = Instant::now();
        provider.submit(SMALL, m, ALICE, Origin::Client(ALICE.into())).await.expect("small room");
        answers.push(ms(t.elapsed()));
    }
    answers.sort_by(f64::total_cmp);
    answers
}

/// Hands `updates` (commits of the big room) to the hub back to back, `follower` processing each once the hub took
/// it (as the bridge's member of a big portal in the same daemon does), while the small room's messages go in
/// beside them; the small room's answer times (sorted), the commits' (ms) and the follower.
async fn beside_commits(
    provider: &Provider,
    updates: Vec<UpdateRequest>,
    small_messages: &mut impl Iterator<Item = MlsMessageBytes>,
    mut follower: PortalGroup,
) -> (Vec<f64>, Vec<f64>, PortalGroup) {
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let committer = {
        let (provider, done) = (provider.clone(), done.clone());
        tokio::spawn(async move {
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
            let processing = tokio::spawn(async move {
                while let Some(commit) = rx.recv().await {
                    let members = follower.member_count();
                    let processed = mimi_mls::offload(members, || follower.process(&commit)).await;
                    processed.durable().await.expect("the follower processes the commit");
                }
                follower
            });
            let mut took = Vec::new();
            for u in updates {
                let UpdateRequest::Commit { commit, .. } = &u else { unreachable!("commits only") };
                let commit = commit.as_bytes().to_vec();
                let t = Instant::now();
                provider.update(BIG, u, ALICE, Origin::Client(ALICE.into())).await.expect("commit");
                took.push(ms(t.elapsed()));
                tx.send(commit).expect("the follower runs");
            }
            drop(tx);
            let follower = processing.await.expect("the follower");
            done.store(true, std::sync::atomic::Ordering::SeqCst);
            (took, follower)
        })
    };
    let beside = small_room(provider, small_messages, 10, || done.load(std::sync::atomic::Ordering::SeqCst)).await;
    let (took, follower) = committer.await.expect("committer");
    (beside, took, follower)
}

/// `HUB_SCALE_HOLD=DIR`: in a fresh process, the resident set before and after loading the big group from the
/// first member's store in DIR (the OpenMLS group and the storage's cache of its state).
fn hold(dir: &str) {
    let store = open_data_dir(
        std::path::Path::new(dir),
        Some(Backend::Redb),
        CommitConfig::default(),
        &mimi_store::schema::Schema::FIRST,
    )
    .expect("the first member's store");
    let p = Arc::new(MlsBackend::new(store, BIG).expect("backend"));
    let me = LocalMember::load_or_create(&p, ALICE, SignatureScheme::ED25519)
        .expect("member")
        .durable_blocking()
        .expect("durable");
    let before = rss_kib();
    let t = Instant::now();
    let g = PortalGroup::load(p, Arc::new(me), BIG.as_bytes()).expect("the big group loads");
    let loaded = t.elapsed();
    let after = rss_kib();
    println!(
        "  a member holding the group ({} members; loaded in {:.2} s, a process of its own): RSS {:.1} MiB before, \
         {:.1} MiB after: {:.1} MiB for the group, of which the storage's cache of its encoded state {:.1} MiB",
        g.member_count(),
        loaded.as_secs_f64(),
        before as f64 / 1024.0,
        after as f64 / 1024.0,
        after.saturating_sub(before) as f64 / 1024.0,
        g.cached_state_bytes() as f64 / (1 << 20) as f64
    );
}

fn main() {
    if let Ok(dir) = std::env::var("HUB_SCALE_HOLD") {
        return hold(&dir);
    }
    let members = env_usize("HUB_SCALE_MEMBERS", 10_000);
    let batch = env_usize("HUB_SCALE_BATCH", 200);
    let commits = env_usize("HUB_SCALE_COMMITS", 20);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");

    let member_dir = tempfile::tempdir().expect("tempdir");
    let member_store = store(&member_dir);
    let dir = tempfile::tempdir().expect("tempdir");
    let provider = Provider::open(DOMAIN, store(&dir)).expect("provider");
    // The big room is hosted from its first member on, and every seating commit goes through its hub (which
    // puts the members on its participant list, as in a portal that grew).
    let t = Instant::now();
    let mut big = seated_group(&member_store, BIG, 1, batch);
    let first_info = framed(big.export_group_info(true).expect("group info"));
    rt.block_on(provider.create_room(BIG, &first_info, None, ALICE, JoinPolicy::Open, false)).expect("big room");
    let seater = format!("mimi://{MEMBERS}/u/seater");
    let mut seated = 1;
    while seated < members {
        let k = batch.min(members - seated);
        let kps: Vec<Vec<u8>> = (seated..seated + k).map(key_package).collect();
        let refs: Vec<&[u8]> = kps.iter().map(Vec::as_slice).collect();
        let out = big.add_members(&refs).durable_blocking().expect("seat");
        let update = UpdateRequest::Commit {
            commit: framed(out.commit),
            welcome: out.welcome.map(framed),
            group_info: GroupInfoOption(framed(out.group_info.expect("group info"))),
            ratchet_tree: RatchetTreeOption::DistributionService,
        };
        rt.block_on(provider.update(BIG, update, &seater, Origin::Follower(MEMBERS.into()))).expect("seated");
        big.merge_pending_commit().durable_blocking().expect("merge");
        seated += k;
    }
    println!("seated {members} members in commits of {batch}, through the hub: {:.1} s", t.elapsed().as_secs_f64());
    // Bob, a member of the big group that processes its commits beside the hub, added last and joined from the
    // Welcome. His state is on the hub's store, as the bridge's member's is in a daemon: his writes share its
    // committer with the small room's.
    let bob_backend = Arc::new(MlsBackend::new(provider.store().clone(), "bob").expect("backend"));
    let bob_member = Arc::new(
        LocalMember::load_or_create(&bob_backend, BOB, SignatureScheme::ED25519)
            .expect("member")
            .durable_blocking()
            .expect("durable"),
    );
    let cfg = EngineConfig::default();
    let bob_kp = mimi_mls::key_packages::generate(&bob_backend, &bob_member, &cfg, 1, false)
        .durable_blocking()
        .expect("bob's KeyPackage")
        .remove(0);
    let out = big.add_members(&[&bob_kp]).durable_blocking().expect("add bob");
    let update = UpdateRequest::Commit {
        commit: framed(out.commit),
        welcome: out.welcome.clone().map(framed),
        group_info: GroupInfoOption(framed(out.group_info.expect("group info"))),
        ratchet_tree: RatchetTreeOption::DistributionService,
    };
    rt.block_on(provider.update(BIG, update, &seater, Origin::Follower(MEMBERS.into()))).expect("bob added");
    big.merge_pending_commit().durable_blocking().expect("merge");
    let tree = big.export_ratchet_tree().expect("tree");
    let t = Instant::now();
    let bob =
        PortalGroup::join_from_welcome(bob_backend, bob_member, &cfg, &out.welcome.expect("welcome"), Some(&tree))
            .durable_blocking()
            .expect("bob joins");
    println!("bob joined from the Welcome at {} members: {:.2} s", bob.member_count(), t.elapsed().as_secs_f64());
    let big_info = framed(big.export_group_info(true).expect("group info"));
    let mut small = seated_group(&member_store, SMALL, 2, batch);
    let small_info = framed(small.export_group_info(true).expect("group info"));
    let t = Instant::now();
    // Twice as many as `commits`: each half goes to the hub beside the small room, first with the big room's
    // validation at the daemon's own priority (the baseline), then at the lower one it runs at by default.
    let updates: Vec<UpdateRequest> = (0..2 * commits).map(|_| commit(&mut big)).collect();
    let commit_bytes: usize = updates
        .iter()
        .map(|u| match u {
            UpdateRequest::Commit { commit, .. } => commit.as_bytes().len(),
            _ => 0,
        })
        .sum();
    println!(
        "{} commits made ahead: {:.1} s, {:.0} KiB each (the update path's secrets encrypted to its resolution)",
        2 * commits,
        t.elapsed().as_secs_f64(),
        commit_bytes as f64 / 1024.0 / updates.len().max(1) as f64
    );
    // Enough for both halves beside the commits (one every 5 ms, a commit taking 50–150 ms) and the baseline.
    let small_count = (400 + 2 * commits * 50).max(4000);
    let small_messages: Vec<MlsMessageBytes> = (0..small_count)
        .map(|i| framed(small.encrypt(format!("m{i}").as_bytes()).durable_blocking().expect("enc")))
        .collect();
    let mut small_messages = small_messages.into_iter();
    // Application messages of the big room, in the epoch its last commit makes.
    let big_messages: Vec<MlsMessageBytes> =
        (0..200).map(|i| framed(big.encrypt(format!("b{i}").as_bytes()).durable_blocking().expect("enc"))).collect();

    // Validation alone, on a hub room of its own.
    let mut hub = HubRoom::new(BIG, &big_info, None, ALICE, JoinPolicy::Open, false).expect("hub room");
    let origin = Origin::Client(ALICE.into());
    let mut validate = Vec::new();
    // What each commit rewrites of the stored public state (chunks not stored before, `mimi_store::chunks`).
    let mut stored = split(&hub.public_state().expect("encoded").unwrap_or_default());
    let mut rewritten = Vec::new();
    for u in &updates {
        let t = Instant::now();
        let judged = hub.view().judge_update(u, ALICE, &origin).expect("valid");
        validate.push(ms(t.elapsed()));
        hub.apply(judged, &origin, 0).expect("applied");
        let state = hub.public_state().expect("encoded").unwrap_or_default();
        let now = split(&state);
        let new: usize = (0..now.hashes.len())
            .filter(|&i| !stored.hashes.contains(&now.hashes[i]))
            .map(|i| now.chunk(&state, i).len())
            .sum();
        rewritten.push(new as f64 / 1024.0);
        stored = now;
    }
    let public_bytes = hub.public_state().expect("encoded").map_or(0, |p| p.len());
    drop(hub);

    // The hub's memory for a room of this size: a second provider opening the same room from its GroupInfo.
    let other_dir = tempfile::tempdir().expect("tempdir");
    let other = Provider::open(DOMAIN, store(&other_dir)).expect("provider");
    let before = rss_kib();
    let t = Instant::now();
    rt.block_on(other.create_room(BIG, &big_info, None, ALICE, JoinPolicy::Open, false)).expect("big room");
    let opened = t.elapsed();
    let after = rss_kib();
    drop(other);
    rt.block_on(provider.create_room(SMALL, &small_info, None, ALICE, JoinPolicy::Open, false)).expect("small");

    let alone = rt.block_on(small_room(&provider, &mut small_messages, 400, || true));
    let mut updates = updates.into_iter();
    // `HUB_SCALE_NICE_FIRST=1`: the lower priority's half first (to tell an effect of the order).
    let nice_first = std::env::var("HUB_SCALE_NICE_FIRST").is_ok_and(|v| v == "1");
    let mut halves = [0, mimi_mls::offload::BACKGROUND_NICE];
    if nice_first {
        halves.reverse();
    }
    let (mut beside_same, mut update_same, mut beside, mut update) = Default::default();
    let mut bob = Some(bob);
    let written_before = provider.store().stats().bytes();
    for nice in halves {
        mimi_mls::offload::set_background_nice(nice);
        let half: Vec<UpdateRequest> = updates.by_ref().take(commits).collect();
        let follower = bob.take().expect("bob");
        let (small, took, follower) = rt.block_on(beside_commits(&provider, half, &mut small_messages, follower));
        bob = Some(follower);
        if nice == 0 {
            (beside_same, update_same) = (small, took);
        } else {
            (beside, update) = (small, took);
        }
    }

    let written = provider.store().stats().bytes() - written_before;

    // The big room's own messages, one after the other, once its commits are in.
    let big_room = rt.block_on(async {
        let mut answers = Vec::new();
        for m in big_messages {
            let t = Instant::now();
            provider.submit(BIG, m, ALICE, Origin::Client(ALICE.into())).await.expect("big room message");
            answers.push(ms(t.elapsed()));
        }
        answers.sort_by(f64::total_cmp);
        answers
    });

    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let max = |v: &[f64]| v.iter().copied().fold(f64::NAN, f64::max);
    println!(
        "hub at {members} members ({} self-update commits, {commits} per priority{}; redb, fsync per group commit)",
        2 * commits,
        if nice_first { ", the lower priority first" } else { "" }
    );
    println!("  validate (HubView::judge_update): mean {:.1} ms, max {:.1} ms", mean(&validate), max(&validate));
    println!(
        "  public state rewritten per commit: mean {:.0} KiB, max {:.0} KiB (chunks not stored before)",
        mean(&rewritten),
        max(&rewritten)
    );
    println!(
        "  update at nice +10 (Provider::update, durable, public state of {:.1} MiB): mean {:.1} ms, max {:.1} ms",
        public_bytes as f64 / (1 << 20) as f64,
        mean(&update),
        max(&update)
    );
    println!(
        "  written to the store per commit, the hub's batch and bob's with the small room's messages: {:.0} KiB",
        written as f64 / 1024.0 / (2 * commits).max(1) as f64
    );
    println!(
        "  room opened in {:.2} s; RSS {:.1} MiB before, {:.1} MiB after: {:.1} MiB for the room",
        opened.as_secs_f64(),
        before as f64 / 1024.0,
        after as f64 / 1024.0,
        after.saturating_sub(before) as f64 / 1024.0
    );
    println!(
        "  small room, alone: p50 {:.2} ms, p99 {:.2} ms ({} messages)",
        percentile(&alone, 0.5),
        percentile(&alone, 0.99),
        alone.len()
    );
    println!(
        "  big room's own messages, one at a time: p50 {:.2} ms, p99 {:.2} ms ({} messages)",
        percentile(&big_room, 0.5),
        percentile(&big_room, 0.99),
        big_room.len()
    );
    println!(
        "  small room, beside the commits validated at the same priority: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms \
         ({} messages; update mean {:.1} ms)",
        percentile(&beside_same, 0.5),
        percentile(&beside_same, 0.99),
        max(&beside_same),
        beside_same.len(),
        mean(&update_same)
    );
    println!(
        "  small room, beside the commits validated at nice +{}: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms \
         ({} messages)",
        mimi_mls::offload::BACKGROUND_NICE,
        percentile(&beside, 0.5),
        percentile(&beside, 0.99),
        max(&beside),
        beside.len()
    );
    // What a member holding the big group takes, in a process of its own (this one's heap holds the seating's
    // garbage): the first member's store is closed here first.
    drop((big, small, member_store));
    let out = std::process::Command::new(std::env::current_exe().expect("this program"))
        .env("HUB_SCALE_HOLD", member_dir.path())
        .output()
        .expect("the holding process runs");
    print!("{}", String::from_utf8_lossy(&out.stdout));
    assert!(out.status.success(), "the holding process failed: {}", String::from_utf8_lossy(&out.stderr));
}
