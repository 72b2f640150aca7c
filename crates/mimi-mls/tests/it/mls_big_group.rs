//! A big group's handshakes stay small: Welcomes and the GroupInfos of commits carry no ratchet tree (it is served
//! out of band, by the room's hub beside its GroupInfo), so that they fit in a request to a provider however many
//! members the group has.

use crate::mls_support::{Client, open_store, send, silent_member_key_package};
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
