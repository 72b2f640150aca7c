//! Issue #15 through the real client API over HTTP: the hub validates every handshake before sequencing it. A
//! registered non-member who learns the room's epoch from a refused probe and submits a forged commit (a
//! PublicMessage "from member 0" with random signature, confirmation tag and membership tag) is refused, and the
//! room keeps working for its members; a non-member's Welcome (1 MB of it) is refused too.

use crate::client_support::{client, texts};
use crate::common::api::{call, register, request};
use mimi_protocol::wire::{GroupInfoOption, MlsMessageBytes, RatchetTreeOption, UpdateRequest, WireMessage};

/// `opaque x<V>` (RFC 9420 §2.1.2).
fn vl(out: &mut Vec<u8>, b: &[u8]) {
    let n = b.len();
    if n < 64 {
        out.push(n as u8);
    } else if n < 16384 {
        out.extend_from_slice(&(n as u16 | 0x4000).to_be_bytes());
    } else {
        out.extend_from_slice(&(n as u32 | 0x8000_0000).to_be_bytes());
    }
    out.extend_from_slice(b);
}

fn random(n: usize) -> Vec<u8> {
    (0..n).map(|_| rand::random::<u8>()).collect()
}

/// The forged commit of the issue: a PublicMessage of group `gid` at `epoch`, sender member 0, an empty commit,
/// random signature, confirmation tag and membership tag.
fn forged_commit(gid: &[u8], epoch: u64) -> Vec<u8> {
    let mut m = vec![0, 1, 0, 1]; // mls10, mls_public_message
    vl(&mut m, gid);
    m.extend_from_slice(&epoch.to_be_bytes());
    m.extend_from_slice(&[1, 0, 0, 0, 0]); // sender: member, leaf 0
    vl(&mut m, b""); // authenticated_data
    m.push(3); // content type: commit
    vl(&mut m, b""); // proposals
    m.push(0); // no update path
    vl(&mut m, &random(64)); // signature
    vl(&mut m, &random(32)); // confirmation_tag
    vl(&mut m, &random(32)); // membership_tag
    m
}

/// A Welcome MLSMessage of about `size` bytes for a made-up KeyPackageRef: random "encrypted" contents.
pub(crate) fn junk_welcome(size: usize) -> Vec<u8> {
    let mut m = vec![0, 1, 0, 3, 0, 1]; // mls10, mls_welcome, cipher suite 1
    let mut secret = Vec::new();
    vl(&mut secret, &random(16)); // new_member
    vl(&mut secret, &random(32)); // kem_output
    vl(&mut secret, &random(48)); // ciphertext
    vl(&mut m, &secret);
    let rest = random(size.saturating_sub(m.len() + 4));
    vl(&mut m, &rest); // encrypted_group_info
    m
}

#[test]
fn a_non_members_forged_commit_and_welcome_are_refused_and_the_room_keeps_working() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let server = crate::client_support::server::serve(&rt, &dir.path().join("daemon"), "a.test", None);
    let (a, b, c) = (dir.path().join("alice"), dir.path().join("bob"), dir.path().join("carol"));
    client(&a, &server, &["register", "alice"]);
    client(&b, &server, &["register", "bob"]);
    let room = client(&a, &server, &["create-room", "club"]).lines().last().expect("room line").to_owned();
    client(&a, &server, &["invite", &room, "bob"]);
    client(&b, &server, &["join", &room]);
    let path = |what: &str| format!("/client/v1/{what}/{}", room.trim_start_matches("mimi://"));

    // Mallory, registered but no member, learns the room's epoch from a refused probe.
    let addr = server.trim_start_matches("http://").to_owned();
    let mallory = rt.block_on(register(&addr, "mallory"));
    let probe = forged_commit(room.as_bytes(), 1000);
    let (status, body) = rt.block_on(call(&addr, "POST", &path("submit"), Some(&mallory), probe));
    assert_eq!(status, 403, "{body}");
    let epoch: u64 = body
        .split("ahead of the room (")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the probe's answer names the epoch: {body}"));
    assert_eq!(epoch, 1, "alice's invite of bob made epoch 1");

    // The forged commit of the room's epoch: refused, with no sequence number, by submit and by update.
    let forged = forged_commit(room.as_bytes(), epoch);
    assert!(forged.len() < 200, "a small message: {} bytes", forged.len());
    let (status, body) = rt.block_on(call(&addr, "POST", &path("submit"), Some(&mallory), forged.clone()));
    assert_eq!(status, 403, "forged commit submitted: {body}");
    assert!(!body.contains("seq"), "{body}");

    // A non-member's 1 MB Welcome: refused alone, and refused with the forged commit as an update.
    let welcome = junk_welcome(1_000_000);
    let (status, body) = rt.block_on(call(&addr, "POST", &path("submit"), Some(&mallory), welcome.clone()));
    assert_eq!(status, 403, "a Welcome on its own: {body}");
    let (status, info) = rt.block_on(request(&addr, "GET", &path("groupInfo"), Some(&mallory), Vec::new()));
    assert_eq!(status, 200, "the open room's GroupInfo");
    let framed = |b: Vec<u8>| MlsMessageBytes::new(b).expect("framed");
    let update = UpdateRequest::Commit {
        commit: framed(forged.clone()),
        welcome: Some(framed(welcome)),
        group_info: GroupInfoOption(framed(info)),
        ratchet_tree: RatchetTreeOption::DistributionService,
    };
    let update = update.encode().expect("encode");
    let (status, body) = rt.block_on(call(&addr, "POST", &path("update"), Some(&mallory), update));
    assert!((400..500).contains(&status), "forged commit with a 1 MB Welcome: {status} {body}");
    assert!(!body.contains("seq"), "{body}");

    // The room keeps working for its members: a message, a member's commit (an invite), an external join.
    client(&a, &server, &["send", &room, "still here"]);
    let got = client(&b, &server, &["listen", &room, "--json", "--count", "1", "--timeout", "10"]);
    assert_eq!(texts(&got), ["still here"]);
    client(&c, &server, &["register", "carol"]);
    client(&b, &server, &["invite", &room, "carol"]);
    client(&c, &server, &["join", &room]);
    let d = dir.path().join("dave");
    client(&d, &server, &["register", "dave"]);
    client(&d, &server, &["join", &room]);
    client(&c, &server, &["send", &room, "hi all"]);
    for who in [&a, &b, &d] {
        let got = client(who, &server, &["listen", &room, "--json", "--count", "1", "--timeout", "10"]);
        assert_eq!(texts(&got), ["hi all"], "{}", who.display());
    }
    drop(rt);
}
