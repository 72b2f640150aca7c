//! Per-user leaves (`mls_identity = "per-user"`): a leaf per active legacy user, added lazily by the bridge's
//! leaf, seen by native members as a real member, removed when idle, capped per portal, found again after a
//! restart.

use crate::mls_support::{Client, open_store, send};
use mimi_mls::{AddLeaf, EngineConfig, LeafChange, LeafPolicy, PortalGroup, Received, UserLeaves};
use mimi_store::Store;
use std::time::{Duration, Instant};

const GROUP: &[u8] = b"mimi://bridge.example.org/r/leaves";
const ALICE: &str = "mimi://bridge.example.org/u/irc.libera~alice";
const CAROL: &str = "mimi://bridge.example.org/u/irc.libera~carol";

/// The bridge's group with bob (a native member on another store) in it.
fn portal(bridge_store: &Store, peers: &Store) -> (PortalGroup, PortalGroup) {
    let bridge = Client::new(bridge_store, "bridge");
    let bob = Client::new(peers, "bob");
    let mut g = bridge.create(GROUP);
    let out = g.add_members(&[&bob.key_package()]).durable_blocking().expect("add bob");
    g.merge_pending_commit().durable_blocking().expect("merge");
    let gb = bob.join(out.welcome.as_deref().expect("welcome"), &g);
    (g, gb)
}

/// Adds `uri`'s leaf: the bridge commits, bob (the hub's other recipient) processes, the bridge completes.
fn add_leaf(leaves: &mut UserLeaves, bridge: &mut PortalGroup, bob: &mut PortalGroup, uri: &str) {
    let change = match leaves.add(bridge, uri).expect("add") {
        AddLeaf::Committed(p) => p.durable_blocking().expect("commit durable"),
        other => panic!("expected a commit, got {other:?}"),
    };
    accept(leaves, bridge, bob, change);
}

/// The hub accepted `change`: bob processes the commit, the bridge completes it.
fn accept(leaves: &mut UserLeaves, bridge: &mut PortalGroup, bob: &mut PortalGroup, change: LeafChange) {
    match bob.process(&change.commit.commit).durable_blocking() {
        Ok(Received::Commit { .. }) => {}
        other => panic!("bob expected a commit, got {other:?}"),
    }
    let failed = leaves.complete(bridge, change, Instant::now()).durable_blocking().expect("complete");
    assert!(failed.is_empty(), "leaves that could not join: {failed:?}");
    assert_eq!(bob.epoch(), bridge.epoch());
}

/// `uri`'s leaf sends `text`; bob and the bridge's leaf see it from `uri`.
fn leaf_says(leaves: &mut UserLeaves, uri: &str, text: &str, to: &mut [&mut PortalGroup]) {
    let g = leaves.group_mut(uri, Instant::now()).expect("leaf");
    let ct = g.encrypt(text.as_bytes()).durable_blocking().expect("encrypt");
    for r in to.iter_mut() {
        match r.process(&ct).durable_blocking().expect("decrypt") {
            Received::Application { plaintext, sender_identity, .. } => {
                assert_eq!(plaintext, text.as_bytes());
                assert_eq!(sender_identity, uri.as_bytes(), "the sender is the user's own leaf");
            }
            other => panic!("expected an application message, got {other:?}"),
        }
    }
}

#[test]
fn a_user_leaf_is_added_lazily_and_native_members_see_the_user_as_a_member() {
    let (bd, pd) = (tempfile::tempdir().expect("dir"), tempfile::tempdir().expect("dir"));
    let (bs, ps) = (open_store(bd.path()), open_store(pd.path()));
    let (mut g, mut gb) = portal(&bs, &ps);
    let mut leaves = UserLeaves::open(bs.clone(), EngineConfig::default(), LeafPolicy::default(), &g).expect("open");
    assert!(leaves.is_empty());

    add_leaf(&mut leaves, &mut g, &mut gb, ALICE);
    assert!(matches!(leaves.add(&mut g, ALICE).expect("again"), AddLeaf::Present));
    assert!(gb.member_index(ALICE.as_bytes()).is_some(), "bob sees alice as a member");
    leaf_says(&mut leaves, ALICE, "hi from irc", &mut [&mut gb, &mut g]);

    // A second user: alice's leaf processes the bridge's commit.
    add_leaf(&mut leaves, &mut g, &mut gb, CAROL);
    assert_eq!(leaves.users().collect::<Vec<_>>(), vec![ALICE, CAROL]);
    assert_eq!(gb.members().len(), 4);
    leaf_says(&mut leaves, ALICE, "alice, epoch 3", &mut [&mut gb]);
    leaf_says(&mut leaves, CAROL, "carol, epoch 3", &mut [&mut gb, &mut g]);

    // A commit by a native member: the bridge's leaf and every user leaf process it.
    let out = gb.self_update().durable_blocking().expect("bob updates");
    assert!(matches!(g.process(&out.commit).durable_blocking(), Ok(Received::Commit { .. })));
    let results = leaves.process_handshake(&out.commit).durable_blocking().expect("leaves process");
    assert_eq!(results.len(), 2);
    assert!(results.iter().all(|(_, r)| matches!(r, Ok(Received::Commit { .. }))), "{results:?}");
    gb.merge_pending_commit().durable_blocking().expect("bob merges");
    leaf_says(&mut leaves, CAROL, "after bob's update", &mut [&mut gb]);
    send(&mut gb, &mut [&mut g], "bob to the bridge");
}

/// Several new speakers in one commit: at most `add_batch` of them, no more than the cap leaves room for; each
/// added leaf joins from the same Welcome and speaks as its user.
#[test]
fn one_commit_adds_a_batch_of_leaves() {
    const DAVE: &str = "mimi://bridge.example.org/u/irc.libera~dave";
    const ERIN: &str = "mimi://bridge.example.org/u/irc.libera~erin";
    let (bd, pd) = (tempfile::tempdir().expect("dir"), tempfile::tempdir().expect("dir"));
    let (bs, ps) = (open_store(bd.path()), open_store(pd.path()));
    let (mut g, mut gb) = portal(&bs, &ps);
    let policy = LeafPolicy { max_leaves: 3, add_batch: 2, ..LeafPolicy::default() };
    let mut leaves = UserLeaves::open(bs.clone(), EngineConfig::default(), policy, &g).expect("open");

    let AddLeaf::Committed(p) = leaves.add_many(&mut g, &[ALICE, CAROL, DAVE]).expect("add") else {
        panic!("expected a commit")
    };
    let change = p.durable_blocking().expect("durable");
    assert_eq!(change.added, vec![ALICE.to_owned(), CAROL.to_owned()], "a batch is two leaves");
    accept(&mut leaves, &mut g, &mut gb, change);
    assert_eq!(gb.members().len(), 4, "bridge, bob, alice, carol: one commit");
    leaf_says(&mut leaves, ALICE, "alice from the batch", &mut [&mut gb, &mut g]);
    leaf_says(&mut leaves, CAROL, "carol from the batch", &mut [&mut gb, &mut g]);

    // Those who have a leaf are skipped; the cap leaves room for one more.
    let AddLeaf::Committed(p) = leaves.add_many(&mut g, &[ALICE, DAVE, ERIN]).expect("add") else {
        panic!("expected a commit")
    };
    let change = p.durable_blocking().expect("durable");
    assert_eq!(change.added, vec![DAVE.to_owned()], "the cap is three leaves");
    accept(&mut leaves, &mut g, &mut gb, change);
    leaf_says(&mut leaves, DAVE, "dave", &mut [&mut gb]);
    assert!(matches!(leaves.add_many(&mut g, &[ERIN]).expect("add"), AddLeaf::Full));
    assert!(matches!(leaves.add_many(&mut g, &[ALICE, DAVE]).expect("add"), AddLeaf::Present));
}

#[test]
fn leaves_are_capped_per_portal_and_a_refused_add_can_be_retried() {
    let (bd, pd) = (tempfile::tempdir().expect("dir"), tempfile::tempdir().expect("dir"));
    let (bs, ps) = (open_store(bd.path()), open_store(pd.path()));
    let (mut g, mut gb) = portal(&bs, &ps);
    let policy = LeafPolicy { max_leaves: 1, ..LeafPolicy::default() };
    let mut leaves = UserLeaves::open(bs.clone(), EngineConfig::default(), policy, &g).expect("open");

    // The hub refuses the first attempt: the bridge drops its commit and tries again.
    let AddLeaf::Committed(p) = leaves.add(&mut g, ALICE).expect("add") else { panic!("expected a commit") };
    let change = p.durable_blocking().expect("durable");
    leaves.abandon(&mut g, change).durable_blocking().expect("abandon");
    assert_eq!(g.members().len(), 2);
    add_leaf(&mut leaves, &mut g, &mut gb, ALICE);

    assert!(matches!(leaves.add(&mut g, CAROL).expect("add"), AddLeaf::Full), "at the cap: use the shared leaf");
    assert_eq!(gb.members().len(), 3);
}

#[test]
fn idle_leaves_are_removed_by_one_bridge_commit() {
    let (bd, pd) = (tempfile::tempdir().expect("dir"), tempfile::tempdir().expect("dir"));
    let (bs, ps) = (open_store(bd.path()), open_store(pd.path()));
    let (mut g, mut gb) = portal(&bs, &ps);
    let policy = LeafPolicy { idle_after: Duration::from_secs(60), ..LeafPolicy::default() };
    let mut leaves = UserLeaves::open(bs.clone(), EngineConfig::default(), policy, &g).expect("open");
    add_leaf(&mut leaves, &mut g, &mut gb, ALICE);
    add_leaf(&mut leaves, &mut g, &mut gb, CAROL);

    let now = Instant::now();
    assert!(leaves.idle(now).is_empty());
    // Carol speaks later than alice: only alice is idle at the sweep.
    leaves.group_mut(CAROL, now + Duration::from_secs(50)).expect("carol");
    let idle = leaves.idle(now + Duration::from_secs(100));
    assert_eq!(idle, vec![ALICE.to_owned()]);
    let change = leaves.remove(&mut g, &idle).durable_blocking().expect("remove");
    accept(&mut leaves, &mut g, &mut gb, change);
    assert_eq!(leaves.users().collect::<Vec<_>>(), vec![CAROL]);
    assert!(gb.member_index(ALICE.as_bytes()).is_none(), "alice's leaf is gone for bob");
    leaf_says(&mut leaves, CAROL, "still here", &mut [&mut gb]);

    // Alice speaks again: a new leaf.
    add_leaf(&mut leaves, &mut g, &mut gb, ALICE);
    leaf_says(&mut leaves, ALICE, "back", &mut [&mut gb, &mut g]);
}

#[test]
fn leaves_are_found_again_after_a_restart() {
    let (bd, pd) = (tempfile::tempdir().expect("dir"), tempfile::tempdir().expect("dir"));
    let ps = open_store(pd.path());
    let mut gb = {
        let bs = open_store(bd.path());
        let (mut g, mut gb) = portal(&bs, &ps);
        let mut leaves =
            UserLeaves::open(bs.clone(), EngineConfig::default(), LeafPolicy::default(), &g).expect("open");
        add_leaf(&mut leaves, &mut g, &mut gb, ALICE);
        leaf_says(&mut leaves, ALICE, "before the restart", &mut [&mut gb]);
        gb
    };
    let bs = open_store(bd.path());
    let bridge = Client::new(&bs, "bridge");
    let mut g = bridge.load(GROUP);
    let mut leaves = UserLeaves::open(bs.clone(), EngineConfig::default(), LeafPolicy::default(), &g).expect("reopen");
    assert_eq!(leaves.users().collect::<Vec<_>>(), vec![ALICE]);
    leaf_says(&mut leaves, ALICE, "after the restart", &mut [&mut gb, &mut g]);
    add_leaf(&mut leaves, &mut g, &mut gb, CAROL);
    leaf_says(&mut leaves, ALICE, "alice still works", &mut [&mut gb]);
}

/// The idle clock survives a restart: a leaf silent for 50 s before it is past a 40 s idle time right after.
#[test]
fn a_leafs_silence_counts_across_a_restart() {
    let (bd, pd) = (tempfile::tempdir().expect("dir"), tempfile::tempdir().expect("dir"));
    let ps = open_store(pd.path());
    let policy = LeafPolicy { idle_after: Duration::from_secs(40), max_leaves: 10, ..LeafPolicy::default() };
    let _gb = {
        let bs = open_store(bd.path());
        let (mut g, mut gb) = portal(&bs, &ps);
        let mut leaves = UserLeaves::open(bs.clone(), EngineConfig::default(), policy.clone(), &g).expect("open");
        add_leaf(&mut leaves, &mut g, &mut gb, ALICE);
        add_leaf(&mut leaves, &mut g, &mut gb, CAROL);
        let long_ago = Instant::now().checked_sub(Duration::from_secs(50)).expect("clock");
        leaves.group_mut(ALICE, long_ago).expect("alice");
        leaves.group_mut(CAROL, Instant::now()).expect("carol");
        assert_eq!(leaves.idle(Instant::now()), vec![ALICE.to_owned()]);
        leaves.save_activity(&g).expect("saved");
        // The record goes to disk with the bridge's next operation.
        g.encrypt(b"x").durable_blocking().expect("an operation");
        gb
    };
    let bs = open_store(bd.path());
    let g = Client::new(&bs, "bridge").load(GROUP);
    let leaves = UserLeaves::open(bs.clone(), EngineConfig::default(), policy, &g).expect("reopen");
    assert_eq!(leaves.idle(Instant::now()), vec![ALICE.to_owned()], "alice was silent before the restart too");
}
