//! The MLS engine on the store: the lifecycle OpenMLS's memory storage supports (create, add, remove,
//! self-update, others' commits, reopen mid-life, continue with a member that did not restart), and the security
//! behaviour (non-member, replay, wrong and too-old epochs, removal of the bridge).

use crate::mls_support::{Client, apply_commit, open_store, send};
use mimi_mls::{EngineConfig, MlsError, PortalGroup, Received};

const GROUP: &[u8] = b"mimi://bridge.example.org/r/rust";

#[test]
fn lifecycle_survives_reopening_the_store_mid_life() {
    let bridge_dir = tempfile::tempdir().expect("tempdir");
    let peers_dir = tempfile::tempdir().expect("tempdir");
    let peers = open_store(peers_dir.path());
    let bob = Client::new(&peers, "bob");
    let carol = Client::new(&peers, "carol");

    let (bridge_uri, epoch_before) = {
        let store = open_store(bridge_dir.path());
        let bridge = Client::new(&store, "bridge");
        let mut g = bridge.create(GROUP);
        assert_eq!(g.epoch(), 0);

        // Add bob.
        let out = g.add_members(&[&bob.key_package()]).durable_blocking().expect("add bob");
        g.merge_pending_commit().durable_blocking().expect("merge");
        let mut gb = bob.join(out.welcome.as_deref().expect("welcome"), &g);
        send(&mut g, &mut [&mut gb], "hello bob");
        send(&mut gb, &mut [&mut g], "hello bridge");

        // Add carol; bob processes the commit.
        let out = g.add_members(&[&carol.key_package()]).durable_blocking().expect("add carol");
        apply_commit(&mut g, &out.commit, &mut [&mut gb]);
        let mut gc = carol.join(out.welcome.as_deref().expect("welcome"), &g);
        assert_eq!(gc.members().len(), 3);
        send(&mut gc, &mut [&mut g, &mut gb], "hi from carol");

        // Bob updates his leaf; the bridge processes a commit by someone else.
        let out = gb.self_update().durable_blocking().expect("bob self-update");
        apply_commit(&mut gb, &out.commit, &mut [&mut g, &mut gc]);
        // The bridge updates its own leaf.
        let out = g.self_update().durable_blocking().expect("bridge self-update");
        apply_commit(&mut g, &out.commit, &mut [&mut gb, &mut gc]);

        // Remove carol.
        let carol_leaf = g.member_index(carol.member.uri().as_bytes()).expect("carol is a member");
        let out = g.remove_members(&[carol_leaf]).durable_blocking().expect("remove carol");
        apply_commit(&mut g, &out.commit, &mut [&mut gb]);
        let removed = gc.process(&out.commit).durable_blocking();
        assert!(matches!(removed, Err(MlsError::Removed { .. })), "carol learns she was removed: {removed:?}");
        assert_eq!(g.members().len(), 2);

        // Messages in flight, then the bridge's process state is dropped (store closed) without anything else.
        send(&mut g, &mut [&mut gb], "before reopening");
        let pending_from_bob = gb.encrypt(b"sent while the bridge was down").durable_blocking().expect("encrypt");
        std::mem::forget(gc);
        (bridge.member.uri().to_owned(), (g.epoch(), pending_from_bob))
    };

    // Reopen: same store, same namespace, the group loads at the same epoch and continues with bob.
    let store = open_store(bridge_dir.path());
    let bridge = Client::new(&store, "bridge");
    assert_eq!(bridge.member.uri(), bridge_uri, "the member (and its signature key) is found again");
    let mut g = bridge.load(GROUP);
    let (epoch, pending_from_bob) = epoch_before;
    assert_eq!(g.epoch(), epoch);
    let mut gb = bob.load(GROUP);
    match g.process(&pending_from_bob).durable_blocking().expect("decrypt after reopening") {
        Received::Application { plaintext, .. } => assert_eq!(plaintext, b"sent while the bridge was down"),
        other => panic!("unexpected {other:?}"),
    }
    send(&mut g, &mut [&mut gb], "after reopening");
    send(&mut gb, &mut [&mut g], "welcome back");
    let out = gb.self_update().durable_blocking().expect("bob commits again");
    apply_commit(&mut gb, &out.commit, &mut [&mut g]);
    let out = g.self_update().durable_blocking().expect("bridge commits again");
    apply_commit(&mut g, &out.commit, &mut [&mut gb]);
    send(&mut g, &mut [&mut gb], "new epoch after reopening");
    assert_eq!(g.export_ratchet_tree().expect("tree"), gb.export_ratchet_tree().expect("tree"));
}

/// A group of the bridge and bob, at epoch 1.
fn pair(store_dir: &std::path::Path, peers: &Client) -> (Client, PortalGroup, PortalGroup) {
    let store = open_store(store_dir);
    let bridge = Client::new(&store, "bridge");
    let mut g = bridge.create(GROUP);
    let out = g.add_members(&[&peers.key_package()]).durable_blocking().expect("add bob");
    g.merge_pending_commit().durable_blocking().expect("merge");
    let gb = peers.join(out.welcome.as_deref().expect("welcome"), &g);
    (bridge, g, gb)
}

/// KeyPackages checked before they are added together: one whose keys a member has (a member's own, again) or
/// an earlier one of the list has (the same KeyPackage twice) is refused, with a reason, and the others pass with
/// the identity they would add; a commit of those that passed is taken.
#[test]
fn key_packages_whose_keys_the_group_has_already_are_refused_before_the_commit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let peers = open_store(tempfile::tempdir().expect("tempdir").path());
    let bob = Client::new(&peers, "bob");
    let carol = Client::new(&peers, "carol");
    let (_bridge, mut g, mut gb) = pair(dir.path(), &bob);
    let (bob_again, carol_kp) = (bob.key_package(), carol.key_package());
    let checked = g.check_key_packages(&[&bob_again, &carol_kp, &carol_kp, b"not a KeyPackage"]);
    assert!(matches!(&checked[0], Err(MlsError::InvalidKeyPackage(m)) if m.contains("already")), "{checked:?}");
    assert_eq!(checked[1].as_deref().ok(), Some(carol.member.uri().as_bytes()), "{checked:?}");
    assert!(matches!(&checked[2], Err(MlsError::InvalidKeyPackage(m)) if m.contains("already")), "{checked:?}");
    assert!(checked[3].is_err(), "{checked:?}");
    let out = g.add_members(&[&carol_kp]).durable_blocking().expect("carol added");
    apply_commit(&mut g, &out.commit, &mut [&mut gb]);
    assert_eq!(g.member_count(), 3);
}

#[test]
fn a_message_from_a_non_member_is_refused_and_the_group_continues() {
    let dir = tempfile::tempdir().expect("tempdir");
    let peers_dir = tempfile::tempdir().expect("tempdir");
    let peers = open_store(peers_dir.path());
    let bob = Client::new(&peers, "bob");
    let eve = Client::new(&peers, "eve");
    let (_bridge, mut g, mut gb) = pair(dir.path(), &bob);

    // Eve forges a group with the same id and advances it to the same epoch.
    let mut ge = eve.create(GROUP);
    let mallory = Client::new(&peers, "mallory");
    let out = ge.add_members(&[&mallory.key_package()]).durable_blocking().expect("eve adds");
    ge.merge_pending_commit().durable_blocking().expect("merge");
    assert_eq!(ge.epoch(), g.epoch());
    let forged = ge.encrypt(b"let me in").durable_blocking().expect("encrypt");
    let r = g.process(&forged).durable_blocking();
    assert!(matches!(r, Err(MlsError::Undecryptable)), "non-member application message: {r:?}");
    // A forged commit (public handshake message) fails the membership tag.
    let forged_commit = ge.self_update().durable_blocking().expect("eve commits").commit;
    let r = g.process(&forged_commit).durable_blocking();
    assert!(matches!(r, Err(MlsError::NotAMember(_))), "non-member commit: {r:?}");
    assert!(r.as_ref().err().is_some_and(MlsError::is_refusal));
    drop(out);

    assert_eq!(g.epoch(), 1, "epoch unchanged");
    send(&mut gb, &mut [&mut g], "still fine");
    send(&mut g, &mut [&mut gb], "still fine too");
}

#[test]
fn a_replayed_message_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let peers_dir = tempfile::tempdir().expect("tempdir");
    let bob = Client::new(&open_store(peers_dir.path()), "bob");
    let (_bridge, mut g, mut gb) = pair(dir.path(), &bob);

    let ct = gb.encrypt(b"once").durable_blocking().expect("encrypt");
    assert!(matches!(g.process(&ct).durable_blocking(), Ok(Received::Application { .. })));
    let r = g.process(&ct).durable_blocking();
    assert!(matches!(r, Err(MlsError::Replay)), "replay: {r:?}");
    send(&mut gb, &mut [&mut g], "next generation works");
}

#[test]
fn messages_for_an_unknown_or_too_old_epoch_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let peers_dir = tempfile::tempdir().expect("tempdir");
    let bob = Client::new(&open_store(peers_dir.path()), "bob");
    let (_bridge, mut g, mut gb) = pair(dir.path(), &bob);

    // Old: bob encrypts at epoch 1, then the group moves on by more than max_past_epochs.
    let old = gb.encrypt(b"from epoch 1").durable_blocking().expect("encrypt");
    let max_past = EngineConfig::default().max_past_epochs as u64;
    for _ in 0..=max_past {
        let out = g.self_update().durable_blocking().expect("update");
        apply_commit(&mut g, &out.commit, &mut [&mut gb]);
    }
    let r = g.process(&old).durable_blocking();
    assert!(matches!(r, Err(MlsError::EpochTooOld { message_epoch: 1, .. })), "too old: {r:?}");

    // Future: bob commits, the bridge has not seen the commit, bob sends in the new epoch.
    let out = gb.self_update().durable_blocking().expect("bob update");
    gb.merge_pending_commit().durable_blocking().expect("merge");
    let future = gb.encrypt(b"from the future").durable_blocking().expect("encrypt");
    let now = g.epoch();
    let r = g.process(&future).durable_blocking();
    let expected = (now + 1, now);
    assert!(
        matches!(r, Err(MlsError::WrongEpoch { message_epoch, group_epoch }) if (message_epoch, group_epoch) == expected),
        "future: {r:?}"
    );
    assert_eq!(g.epoch(), now);

    // Not corrupted: the commit still applies and messages flow.
    assert!(matches!(g.process(&out.commit).durable_blocking(), Ok(Received::Commit { .. })));
    send(&mut gb, &mut [&mut g], "caught up");
    // Garbage is a typed refusal too.
    assert!(matches!(g.process(b"\x00\x01garbage").durable_blocking(), Err(MlsError::Malformed(_))));
}

#[test]
fn a_commit_removing_the_bridge_is_reported_and_the_bridge_can_rejoin_by_external_commit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let peers_dir = tempfile::tempdir().expect("tempdir");
    let bob = Client::new(&open_store(peers_dir.path()), "bob");
    let (bridge, mut g, mut gb) = pair(dir.path(), &bob);

    let bridge_leaf = gb.member_index(bridge.member.uri().as_bytes()).expect("bridge leaf");
    let out = gb.remove_members(&[bridge_leaf]).durable_blocking().expect("bob removes the bridge");
    gb.merge_pending_commit().durable_blocking().expect("merge");
    let r = g.process(&out.commit).durable_blocking();
    assert!(matches!(r, Err(MlsError::Removed { epoch: 2 })), "removed: {r:?}");
    assert!(!g.is_active());
    assert!(matches!(g.encrypt(b"x").durable_blocking(), Err(MlsError::GroupState(_))));
    // The state on disk says the same after a reload.
    let reloaded = bridge.load(GROUP);
    assert!(!reloaded.is_active());
    drop((g, reloaded));

    // Rejoin from bob's GroupInfo.
    let info = gb.export_group_info(true).expect("group info");
    let (mut g, commit) = PortalGroup::rejoin_by_external_commit(
        bridge.provider.clone(),
        bridge.member.clone(),
        &EngineConfig::default(),
        &info,
        None,
    )
    .durable_blocking()
    .expect("external commit");
    assert!(matches!(gb.process(&commit).durable_blocking(), Ok(Received::Commit { .. })));
    g.merge_pending_commit().durable_blocking().expect("merge external commit");
    assert_eq!(g.epoch(), gb.epoch());
    send(&mut g, &mut [&mut gb], "back again");
    send(&mut gb, &mut [&mut g], "welcome back");
}

#[test]
fn state_lost_entirely_rejoin_by_external_commit() {
    let peers_dir = tempfile::tempdir().expect("tempdir");
    let bob = Client::new(&open_store(peers_dir.path()), "bob");
    let dir = tempfile::tempdir().expect("tempdir");
    let (_bridge, _g, mut gb) = pair(dir.path(), &bob);
    let info = gb.export_group_info(false).expect("group info");
    let tree = gb.export_ratchet_tree().expect("tree");

    // A new, empty data directory: everything lost.
    let fresh = tempfile::tempdir().expect("tempdir");
    let bridge = Client::new(&open_store(fresh.path()), "bridge");
    let (mut g, commit) = PortalGroup::rejoin_by_external_commit(
        bridge.provider.clone(),
        bridge.member.clone(),
        &EngineConfig::default(),
        &info,
        Some(&tree),
    )
    .durable_blocking()
    .expect("external commit");
    match gb.process(&commit).durable_blocking().expect("bob processes") {
        Received::Commit { added, .. } => assert!(added.is_empty(), "an external commit adds by path, not proposal"),
        other => panic!("unexpected {other:?}"),
    }
    g.merge_pending_commit().durable_blocking().expect("merge");
    // The old leaf (lost signature key) is still there; the bridge removes it in a follow-up commit.
    assert_eq!(g.members().len(), 3);
    let stale = g.stale_own_leaves();
    assert_eq!(stale, vec![0]);
    let out = g.remove_members(&stale).durable_blocking().expect("remove stale leaf");
    apply_commit(&mut g, &out.commit, &mut [&mut gb]);
    assert_eq!(g.members().len(), 2);
    assert!(g.stale_own_leaves().is_empty());
    send(&mut g, &mut [&mut gb], "new state");
    send(&mut gb, &mut [&mut g], "seen");
}

#[test]
fn key_packages_include_a_last_resort_one_and_are_consumed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_store(dir.path());
    let bridge = Client::new(&store, "bridge");
    let bob = Client::new(&store, "bob");
    let kps = mimi_mls::key_packages::generate(&bob.provider, &bob.member, &EngineConfig::default(), 2, true)
        .durable_blocking()
        .expect("key packages");
    assert_eq!(kps.len(), 3);
    let last = kps[2].clone();
    // The last-resort package can be used twice (two groups); a one-time package only once.
    let mut g1 = bridge.create(b"g1");
    let mut g2 = bridge.create(b"g2");
    for g in [&mut g1, &mut g2] {
        let out = g.add_members(&[&last]).durable_blocking().expect("add");
        g.merge_pending_commit().durable_blocking().expect("merge");
        bob.join(out.welcome.as_deref().expect("welcome"), g);
    }
    let mut g3 = bridge.create(b"g3");
    let mut g4 = bridge.create(b"g4");
    let w3 = g3.add_members(&[&kps[0]]).durable_blocking().expect("add").welcome.expect("welcome");
    let w4 = g4.add_members(&[&kps[0]]).durable_blocking().expect("add").welcome.expect("welcome");
    g3.merge_pending_commit().durable_blocking().expect("merge");
    g4.merge_pending_commit().durable_blocking().expect("merge");
    bob.join(&w3, &g3);
    let tree = g4.export_ratchet_tree().expect("tree");
    let r = PortalGroup::join_from_welcome(
        bob.provider.clone(),
        bob.member.clone(),
        &EngineConfig::default(),
        &w4,
        Some(&tree),
    )
    .durable_blocking();
    assert!(matches!(r, Err(MlsError::Welcome(_))), "a consumed one-time KeyPackage: {r:?}");
}

/// Rewrites every single-CBOR value of the MLS tree the way `ciborium` writes it (byte strings as arrays of
/// integers): the format before the byte-string encoder. Returns how many values were rewritten.
fn rewrite_as_ciborium_arrays(store: &mimi_store::Store) -> usize {
    fn arrays(v: ciborium::Value) -> ciborium::Value {
        use ciborium::Value;
        match v {
            Value::Bytes(b) => Value::Array(b.into_iter().map(|x| Value::Integer(x.into())).collect()),
            Value::Array(a) => Value::Array(a.into_iter().map(arrays).collect()),
            Value::Map(m) => Value::Map(m.into_iter().map(|(k, v)| (arrays(k), arrays(v))).collect()),
            Value::Tag(t, v) => Value::Tag(t, Box::new(arrays(*v))),
            other => other,
        }
    }
    let mut batch = mimi_store::Batch::new();
    for (key, value) in store.scan_prefix(mimi_mls::MLS_TREE, b"").expect("scan") {
        let mut rest = &value[..];
        // Lists (length-prefixed items) do not parse as exactly one CBOR item: left as they are.
        let Ok(parsed) = ciborium::from_reader::<ciborium::Value, _>(&mut rest) else { continue };
        if !rest.is_empty() {
            continue;
        }
        let mut old = Vec::new();
        ciborium::into_writer(&arrays(parsed), &mut old).expect("encode");
        if old != value {
            batch.put(mimi_mls::MLS_TREE, key, old);
        }
    }
    let n = batch.ops.len();
    store.commit_blocking(batch).expect("rewrite");
    n
}

#[test]
fn state_written_in_the_earlier_integer_array_format_still_loads() {
    let bridge_dir = tempfile::tempdir().expect("tempdir");
    let peers_dir = tempfile::tempdir().expect("tempdir");
    let peers = open_store(peers_dir.path());
    let bob = Client::new(&peers, "bob");
    let mut gb = {
        let store = open_store(bridge_dir.path());
        let (_bridge, mut g, mut gb) = {
            let bridge = Client::new(&store, "bridge");
            let mut g = bridge.create(GROUP);
            let out = g.add_members(&[&bob.key_package()]).durable_blocking().expect("add bob");
            g.merge_pending_commit().durable_blocking().expect("merge");
            let gb = bob.join(out.welcome.as_deref().expect("welcome"), &g);
            (bridge, g, gb)
        };
        send(&mut g, &mut [&mut gb], "before the rewrite");
        gb
    };
    let store = open_store(bridge_dir.path());
    assert!(rewrite_as_ciborium_arrays(&store) > 5, "the group's records were rewritten");
    let bridge = Client::new(&store, "bridge");
    let mut g = bridge.load(GROUP);
    send(&mut g, &mut [&mut gb], "after the rewrite");
    send(&mut gb, &mut [&mut g], "bob after the rewrite");
    let out = g.self_update().durable_blocking().expect("commit");
    apply_commit(&mut g, &out.commit, &mut [&mut gb]);
    send(&mut g, &mut [&mut gb], "next epoch");
}

/// The hub sequenced our commit but the process stopped before merging it: reading the commit back from the log
/// (after a reload of the state) merges it, so the group does not stay an epoch behind.
#[test]
fn an_own_commit_read_back_before_its_merge_is_merged() {
    let (bd, pd) = (tempfile::tempdir().expect("dir"), tempfile::tempdir().expect("dir"));
    let peers = Client::new(&open_store(pd.path()), "carol");
    let (bridge, mut g, mut bob) = pair(bd.path(), &peers);
    let update = g.self_update().durable_blocking().expect("commit");
    let before = g.epoch();
    drop(g);
    // The state is reloaded as after a restart; the commit is still pending there.
    let mut g = bridge.load(GROUP);
    assert_eq!(g.epoch(), before);
    match g.process(&update.commit).durable_blocking() {
        Ok(Received::Commit { epoch, .. }) => assert_eq!(epoch, before + 1),
        other => panic!("expected our commit merged, got {other:?}"),
    }
    assert!(matches!(bob.process(&update.commit).durable_blocking(), Ok(Received::Commit { .. })));
    assert_eq!(bob.epoch(), g.epoch());
    send(&mut g, &mut [&mut bob], "after the late merge");
    send(&mut bob, &mut [&mut g], "and back");
}

#[test]
fn a_group_object_opened_again_elsewhere_changes_nothing_any_more() {
    let dir = tempfile::tempdir().expect("tempdir");
    let peers_dir = tempfile::tempdir().expect("tempdir");
    let peers = open_store(peers_dir.path());
    let bob = Client::new(&peers, "bob");
    let (bridge, mut old, mut gb) = pair(dir.path(), &bob);
    let ct = gb.encrypt(b"for the bridge").durable_blocking().expect("bob encrypts");
    let update = gb.self_update().durable_blocking().expect("bob commits").commit;
    // The group is loaded again: the first object may neither read, commit, merge, forget, encrypt nor delete.
    let mut new = bridge.load(GROUP);
    let stale = |r: Result<(), MlsError>, what: &str| {
        assert!(matches!(&r, Err(MlsError::GroupState(m)) if m.contains("stale")), "{what}: {r:?}");
    };
    stale(old.process(&ct).durable_blocking().map(|_| ()), "process");
    stale(old.self_update().durable_blocking().map(|_| ()), "commit");
    stale(old.merge_pending_commit().durable_blocking(), "merge");
    stale(old.clear_pending_commit().durable_blocking(), "clear");
    stale(old.encrypt(b"x").durable_blocking().map(|_| ()), "encrypt");
    stale(old.delete().durable_blocking(), "delete");
    // The new one carries on where the group was.
    match new.process(&ct).durable_blocking().expect("decrypt") {
        Received::Application { plaintext, .. } => assert_eq!(plaintext, b"for the bridge"),
        other => panic!("expected the message, got {other:?}"),
    }
    let mut gb_view = [&mut new];
    apply_commit(&mut gb, &update, &mut gb_view);
    send(&mut new, &mut [&mut gb], "still here");
}

/// A group opened again while its older object is still alive (a portal closed and used again before the closed
/// object is dropped): what the older one sent and received is in the store only if it was flushed first.
/// Unflushed, the new object skips the generations the old one reserved, and decrypts again what it decrypted;
/// flushed, it skips none and picks up where the old one was.
#[test]
fn a_group_flushed_before_it_is_opened_again_skips_nothing_and_decrypts_nothing_twice() {
    let dir = tempfile::tempdir().expect("tempdir");
    let peers_dir = tempfile::tempdir().expect("tempdir");
    let peers = open_store(peers_dir.path());
    let bob = Client::new(&peers, "bob");
    let (bridge, mut old, mut gb) = pair(dir.path(), &bob);
    // Each round: the bridge sends three lines (deferred: the store is behind) and decrypts one of bob's.
    let round = |g: &mut PortalGroup, gb: &mut PortalGroup, text: &str| {
        for i in 0..3 {
            send(g, &mut [&mut *gb], &format!("{text} {i}"));
        }
        let ct = gb.encrypt(text.as_bytes()).durable_blocking().expect("bob encrypts");
        assert!(matches!(g.process(&ct).durable_blocking(), Ok(Received::Application { .. })), "{text}");
        ct
    };

    let ct = round(&mut old, &mut gb, "unflushed");
    let mut new = bridge.load(GROUP);
    drop(old);
    send(&mut new, &mut [&mut gb], "after a load beside an unflushed copy");
    assert!(bridge.provider.skipped_generations() > 0, "the reserved generations are skipped");
    assert!(
        matches!(new.process(&ct).durable_blocking(), Ok(Received::Application { .. })),
        "the stale copy decrypts again what the old object had"
    );

    let skipped = bridge.provider.skipped_generations();
    let mut old = new;
    let ct = round(&mut old, &mut gb, "flushed");
    old.flush().durable_blocking().expect("flushed");
    let mut new = bridge.load(GROUP);
    drop(old);
    send(&mut new, &mut [&mut gb], "after a load beside a flushed copy");
    assert_eq!(bridge.provider.skipped_generations(), skipped, "no generation skipped");
    assert!(new.process(&ct).durable_blocking().is_err(), "what the old object decrypted is not decrypted again");
}

/// The bridge's record of `label` for its one group in `store` (28: the message secrets, 29: their past epochs,
/// kept apart): its key and value, found by the keys' layout `lp(namespace) ‖ version ‖ label ‖ CBOR(group id)`.
fn bridge_secrets(store: &mimi_store::Store, label: u8) -> Option<(Vec<u8>, Vec<u8>)> {
    let mut prefix = vec![0, 6];
    prefix.extend_from_slice(b"bridge");
    prefix.extend_from_slice(&openmls_traits::storage::CURRENT_VERSION.to_be_bytes());
    prefix.push(label);
    let mut found = store.scan_prefix(mimi_mls::MLS_TREE, &prefix).expect("scan");
    assert!(found.len() <= 1, "one group");
    found.pop()
}

/// Message secrets stored whole, as before their past epochs were kept apart, still load — the past epochs with
/// them: a message of the epoch before the last commit decrypts — and the next write stores them apart.
#[test]
fn message_secrets_stored_whole_before_the_past_epochs_were_kept_apart_still_load() {
    const SECRETS: u8 = 28;
    const PAST_EPOCHS: u8 = 29;
    let bridge_dir = tempfile::tempdir().expect("tempdir");
    let peers_dir = tempfile::tempdir().expect("tempdir");
    let bob = Client::new(&open_store(peers_dir.path()), "bob");
    let (late, mut gb) = {
        let (_bridge, mut g, mut gb) = pair(bridge_dir.path(), &bob);
        send(&mut gb, &mut [&mut g], "in the first epoch");
        // A message of this epoch that reaches the bridge only after the next commit.
        let late = gb.encrypt(b"late, from the epoch before").durable_blocking().expect("bob encrypts");
        let out = g.self_update().durable_blocking().expect("commit");
        apply_commit(&mut g, &out.commit, &mut [&mut gb]);
        send(&mut g, &mut [&mut gb], "in the second epoch");
        (late, gb)
    };

    // As stored now: apart, the offset of the past epochs in the header.
    let store = open_store(bridge_dir.path());
    let (key, value) = bridge_secrets(&store, SECRETS).expect("message secrets");
    let (past_key, past) = bridge_secrets(&store, PAST_EPOCHS).expect("past epochs stored apart");
    assert_eq!(value[0], 0xC2, "the message secrets without their past epochs");
    let at = u32::from_be_bytes(value[1..5].try_into().expect("offset")) as usize;
    let whole = [&value[5..5 + at], &past[..], &value[5 + at..]].concat();
    let parsed: ciborium::Value = ciborium::from_reader(&whole[..]).expect("put back together: one CBOR map");
    assert!(parsed.is_map());

    // Stored as before: whole, nothing apart.
    let mut b = mimi_store::Batch::new();
    b.put(mimi_mls::MLS_TREE, key, whole);
    b.delete(mimi_mls::MLS_TREE, past_key);
    store.commit_blocking(b).expect("rewrite");
    assert!(bridge_secrets(&store, PAST_EPOCHS).is_none());

    let bridge = Client::new(&store, "bridge");
    let mut g = bridge.load(GROUP);
    match g.process(&late).durable_blocking().expect("the late message decrypts") {
        Received::Application { plaintext, .. } => assert_eq!(plaintext, b"late, from the epoch before"),
        other => panic!("expected the message, got {other:?}"),
    }
    send(&mut gb, &mut [&mut g], "after the reload");
    let out = g.self_update().durable_blocking().expect("commit");
    apply_commit(&mut g, &out.commit, &mut [&mut gb]);
    send(&mut g, &mut [&mut gb], "in the third epoch");
    drop(g);
    let (_, value) = bridge_secrets(&store, SECRETS).expect("message secrets");
    assert_eq!(value[0], 0xC2, "written apart again");
    assert!(bridge_secrets(&store, PAST_EPOCHS).is_some());
}
