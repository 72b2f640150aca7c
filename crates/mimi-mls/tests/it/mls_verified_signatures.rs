//! Leaf signatures verified once per process (`mimi_mls::verified_signatures`): the signed content rebuilt from a
//! ratchet tree is exactly what OpenMLS verifies, a join (from a Welcome or by external commit) verifies the tree
//! ahead of OpenMLS, which then verifies none of its leaves itself, and a tree with a forged leaf is refused as
//! before. Only one test of this binary forgets what was verified (`forget`), so the others, running beside it,
//! cannot disturb what it counts.

use crate::mls_support::{Client, apply_commit, open_store};
use mimi_mls::verified_signatures::{PREVERIFY_FROM_LEAVES, answered_from_memory, forget, preverify_tree};
use mimi_mls::{EngineConfig, PortalGroup};
use openmls::prelude::SignatureScheme;

const GROUP: &[u8] = b"mimi://bridge.example.org/r/verified";

/// A group of `n` members made by alice, then two removed (their leaves stay blank: the next two added fill them),
/// with leaves from KeyPackages and from commits (alice's and a later member's self-updates) at several places.
fn group_with_blank_and_commit_leaves(store: &mimi_store::Store, n: usize) -> PortalGroup {
    let alice = Client::new(store, "alice");
    let mut ga = alice.create(GROUP);
    let clients: Vec<Client> = (1..n + 2).map(|i| Client::new(store, &format!("m{i}"))).collect();
    let kps: Vec<Vec<u8>> = clients.iter().map(Client::key_package).collect();
    let refs: Vec<&[u8]> = kps.iter().map(Vec::as_slice).collect();
    let out = ga.add_members(&refs).durable_blocking().expect("add");
    ga.merge_pending_commit().durable_blocking().expect("merge");
    let welcome = out.welcome.expect("welcome");
    // Member 5 joins and updates its leaf (a commit-source leaf at index 5).
    let mut g5 = clients[4].join(&welcome, &ga);
    // Members 2 and 3 leave blank leaves before it.
    let out = ga.remove_members(&[2, 3]).durable_blocking().expect("remove");
    g5.process(&out.commit).durable_blocking().expect("process remove");
    ga.merge_pending_commit().durable_blocking().expect("merge remove");
    let out = g5.self_update().durable_blocking().expect("update 5");
    apply_commit(&mut g5, &out.commit, &mut [&mut ga]);
    let out = ga.self_update().durable_blocking().expect("update alice");
    apply_commit(&mut ga, &out.commit, &mut [&mut g5]);
    ga
}

#[test]
fn every_leaf_signature_rebuilt_from_a_tree_verifies_and_a_join_verifies_none_itself() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_store(dir.path());
    let n = PREVERIFY_FROM_LEAVES + 8;
    let mut ga = group_with_blank_and_commit_leaves(&store, n);
    let carol = Client::new(&store, "carol");
    let out = ga.add_members(&[&carol.key_package()]).durable_blocking().expect("add carol");
    ga.merge_pending_commit().durable_blocking().expect("merge");
    let tree = ga.export_ratchet_tree().expect("tree");
    let leaves = ga.member_count();
    assert_eq!(leaves, n + 1, "alice and n + 1 members, two removed, carol added");

    // Every leaf's signed content is rebuilt as OpenMLS builds it: each one verifies (whether OpenMLS had
    // already verified it here, when alice added or processed it, or not).
    let p = preverify_tree(SignatureScheme::ED25519, GROUP, &tree);
    assert_eq!(p.leaves, leaves);
    assert!(!p.refused, "{p:?}");
    assert_eq!(p.known + p.verified, leaves, "{p:?}");

    // Carol's join verifies the tree ahead of OpenMLS, which then finds every leaf verified.
    forget();
    let before = answered_from_memory();
    let gc = carol.join_with_tree(out.welcome.as_deref().expect("welcome"), &tree);
    assert_eq!(answered_from_memory() - before, leaves as u64, "one answer from memory per leaf");
    assert_eq!(gc.epoch(), ga.epoch());

    // So does a join by external commit (erin's, from the GroupInfo and the tree).
    let erin = Client::new(&store, "erin");
    let info = ga.export_group_info(false).expect("group info");
    forget();
    let before = answered_from_memory();
    let (ge, _commit) = PortalGroup::rejoin_by_external_commit(
        erin.provider.clone(),
        erin.member.clone(),
        &EngineConfig::default(),
        &info,
        Some(&tree),
    )
    .durable_blocking()
    .expect("external join");
    assert_eq!(answered_from_memory() - before, leaves as u64, "one answer from memory per leaf");
    assert_eq!(ge.member_count(), leaves + 1);
}

#[test]
fn a_tree_with_a_forged_leaf_signature_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_store(dir.path());
    let mut ga = group_with_blank_and_commit_leaves(&store, PREVERIFY_FROM_LEAVES + 4);
    let dave = Client::new(&store, "dave");
    let out = ga.add_members(&[&dave.key_package()]).durable_blocking().expect("add dave");
    ga.merge_pending_commit().durable_blocking().expect("merge");
    let mut tree = ga.export_ratchet_tree().expect("tree");
    // The last node of a tree is a leaf, and a leaf's last field its signature.
    *tree.last_mut().expect("a tree") ^= 1;

    let p = preverify_tree(SignatureScheme::ED25519, GROUP, &tree);
    assert!(p.refused, "{p:?}");
    let joined = PortalGroup::join_from_welcome(
        dave.provider.clone(),
        dave.member.clone(),
        &EngineConfig::default(),
        out.welcome.as_deref().expect("welcome"),
        Some(&tree),
    )
    .durable_blocking();
    let Err(e) = joined else { panic!("a join with a forged leaf in the tree must fail") };
    let e = e.to_string();
    assert!(e.to_lowercase().contains("signature"), "refused for the leaf's signature: {e}");
}

#[test]
fn no_prefix_of_a_tree_makes_the_reading_fail_other_than_cleanly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_store(dir.path());
    let ga = group_with_blank_and_commit_leaves(&store, PREVERIFY_FROM_LEAVES + 2);
    let tree = ga.export_ratchet_tree().expect("tree");
    for end in 0..tree.len() {
        let p = preverify_tree(SignatureScheme::ED25519, GROUP, &tree[..end]);
        assert_eq!(p.leaves, 0, "a prefix of {end} bytes is not a tree");
    }
    let mut garbled = tree.clone();
    for i in (4..garbled.len()).step_by(7) {
        garbled[i] = garbled[i].wrapping_mul(31).wrapping_add(7);
    }
    let _ = preverify_tree(SignatureScheme::ED25519, GROUP, &garbled);
}
