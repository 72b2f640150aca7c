//! A big group's handshakes stay small: Welcomes and the GroupInfos of commits carry no ratchet tree (it is served
//! out of band, by the room's hub beside its GroupInfo), so that they fit in a request to a provider however many
//! members the group has.

use crate::mls_support::{Client, apply_commit, open_store, send, silent_member_key_package};
use std::time::Instant;

/// The largest request body a provider's listener takes (`mimi_bridge::mimi_http::MAX_BODY`).
const MAX_BODY: usize = 1 << 20;

#[test]
fn in_a_group_of_6000_the_tree_travels_apart_and_handshakes_stay_small() {
    let members = 6000;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_store(dir.path());
    let (alice, bob) = (Client::new(&store, "alice"), Client::new(&store, "bob"));
    let started = Instant::now();
    let mut g = alice.create(b"mimi://example.org/r/big");
    let silent: Vec<Vec<u8>> = (0..members - 2).map(silent_member_key_package).collect();
    for chunk in silent.chunks(250) {
        let refs: Vec<&[u8]> = chunk.iter().map(Vec::as_slice).collect();
        g.add_members(&refs).durable_blocking().expect("seat");
        g.merge_pending_commit().durable_blocking().expect("merge");
    }
    let tree = g.export_ratchet_tree().expect("tree");
    assert!(tree.len() > MAX_BODY, "the tree alone ({} bytes) would not fit in a request", tree.len());

    // bob is added: the Welcome and the GroupInfo of the new epoch are small; he joins with the tree apart.
    let out = g.add_members(&[&bob.key_package()]).durable_blocking().expect("add bob");
    let welcome = out.welcome.clone().expect("welcome");
    let info = out.group_info.clone().expect("the GroupInfo of the new epoch");
    g.merge_pending_commit().durable_blocking().expect("merge");
    for (what, len) in [("Welcome", welcome.len()), ("GroupInfo", info.len()), ("commit", out.commit.len())] {
        assert!(len < 64 << 10, "the {what} is {len} bytes");
    }
    let mut gb = bob.join(&welcome, &g);
    assert_eq!(gb.members().len(), members);
    send(&mut g, &mut [&mut gb], "hello in a big group");

    // A self-update's GroupInfo too, and the member's own export of it without the tree.
    let out = gb.self_update().durable_blocking().expect("update");
    let info = out.group_info.clone().expect("GroupInfo");
    assert!(info.len() < 64 << 10, "the GroupInfo of an update is {} bytes", info.len());
    assert!(gb.export_group_info(false).expect("GroupInfo").len() < 64 << 10);
    eprintln!(
        "{members} members: tree {} bytes, Welcome {} bytes, GroupInfo {} bytes ({:.1} s)",
        tree.len(),
        welcome.len(),
        info.len(),
        started.elapsed().as_secs_f64()
    );
}

/// A big group closed leaves its large state (tree, message secrets, group state) out of the member's cache once
/// the store holds it, and opened again from the store it works on: it sends and receives.
#[test]
fn a_closed_big_group_leaves_the_cache_and_opens_again_from_the_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_store(dir.path());
    let (alice, bob) = (Client::new(&store, "alice"), Client::new(&store, "bob"));
    let id = b"mimi://example.org/r/closed";
    let mut g = alice.create(id);
    let silent: Vec<Vec<u8>> = (0..600).map(silent_member_key_package).collect();
    for chunk in silent.chunks(200) {
        let refs: Vec<&[u8]> = chunk.iter().map(Vec::as_slice).collect();
        g.add_members(&refs).durable_blocking().expect("seat");
        g.merge_pending_commit().durable_blocking().expect("merge");
    }
    let out = g.add_members(&[&bob.key_package()]).durable_blocking().expect("add bob");
    g.merge_pending_commit().durable_blocking().expect("merge");
    let mut gb = bob.join(&out.welcome.expect("welcome"), &g);
    send(&mut g, &mut [&mut gb], "before closing");
    let tree = g.export_ratchet_tree().expect("tree").len();
    let open = g.cached_state_bytes();
    drop(g);

    // alice's other group goes on; the closed one's state is handed off and, once durable, leaves the cache.
    let mut other = alice.create(b"mimi://example.org/r/other");
    for i in 0..3 {
        other.encrypt(format!("other {i}").as_bytes()).durable_blocking().expect("encrypt");
    }
    let closed = other.cached_state_bytes();
    // Left: the other group's state and the closed one's proposals and epoch key pairs (6 KiB of 730 KiB with
    // its small records too, when this was written; 520 KiB stayed before closed groups left the cache).
    assert!(closed < tree, "{closed} bytes cached after closing, {open} before (the tree alone is {tree})");

    let mut g = alice.load(id);
    assert_eq!(g.members().len(), 602);
    send(&mut g, &mut [&mut gb], "after opening again");
    send(&mut gb, &mut [&mut g], "and back");
    // A commit rewrites the values read back from the store: no chunk missing, none left over.
    let out = g.self_update().durable_blocking().expect("update");
    apply_commit(&mut g, &out.commit, &mut [&mut gb]);
    send(&mut gb, &mut [&mut g], "in the new epoch");
    let chunks = mimi_mls::storage::check_chunks(store.kv().as_ref()).expect("check");
    assert!(chunks.problems.is_empty() && chunks.manifests > 0, "{chunks:?}");
}
