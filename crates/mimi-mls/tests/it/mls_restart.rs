//! Restart test: a child process runs the bridge's side of a group (create, add bob, exchange messages), is
//! killed with SIGKILL, and a new instance on the same data directory continues with bob, who never restarted.
//!
//! If a ciphertext had been released before the ratchet state behind it was durable, the restarted bridge would
//! reuse a generation and bob would refuse its next message as a replay; if a commit's state were lost, the
//! epochs would disagree. Both are checked, also for ciphertexts released after one wait for a burst of
//! encrypts (group commit of the write-behind state).

use crate::mls_support::{Client, apply_commit, open_store, send};
use mimi_mls::Received;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const GROUP: &[u8] = b"mimi://bridge.example.org/r/restart";
const CHILD_ENV: &str = "MIMI_MLS_RESTART_CHILD_DIR";

fn write_file(dir: &Path, name: &str, bytes: &[u8]) {
    let tmp = dir.join(format!("{name}.tmp"));
    std::fs::write(&tmp, bytes).expect("write");
    std::fs::rename(&tmp, dir.join(name)).expect("rename");
}

fn wait_file(dir: &Path, name: &str) -> Vec<u8> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(b) = std::fs::read(dir.join(name)) {
            return b;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {name}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The child's side (run by `restart_after_sigkill_continues_with_the_same_member` in a separate process).
#[test]
#[ignore = "child process of the restart test; run by it"]
fn restart_child_process() {
    let Some(dir) = std::env::var_os(CHILD_ENV).map(PathBuf::from) else {
        panic!("{CHILD_ENV} not set: this test is the child of restart_after_sigkill_continues_with_the_same_member");
    };
    let xfer = dir.join("xfer");
    let store = open_store(&dir.join("data"));
    let bridge = Client::new(&store, "bridge");
    let mut g = bridge.create(GROUP);
    let out = g.add_members(&[&wait_file(&xfer, "bob.kp")]).durable_blocking().expect("add bob");
    g.merge_pending_commit().durable_blocking().expect("merge");
    // The tree first: the parent reads it once the Welcome is there.
    write_file(&xfer, "tree", &g.export_ratchet_tree().expect("tree"));
    write_file(&xfer, "welcome", out.welcome.as_deref().expect("welcome"));
    for i in 0..5 {
        let ct = g.encrypt(format!("bridge {i}").as_bytes()).durable_blocking().expect("encrypt");
        write_file(&xfer, &format!("bridge.{i}"), &ct);
    }
    match g.process(&wait_file(&xfer, "bob.0")).durable_blocking().expect("decrypt bob") {
        Received::Application { plaintext, .. } => assert_eq!(plaintext, b"bob 0"),
        other => panic!("unexpected {other:?}"),
    }
    // A self-update, merged: the epoch the restarted process must come back at.
    let out = g.self_update().durable_blocking().expect("update");
    g.merge_pending_commit().durable_blocking().expect("merge");
    write_file(&xfer, "commit", &out.commit);
    let ct = g.encrypt(b"last before the kill").durable_blocking().expect("encrypt");
    write_file(&xfer, "bridge.last", &ct);
    // Pipelined: ten encrypts and a single wait, on the last. Its state is handed off to group commit together
    // with the nine before it (one batch); durable means all ten are, so all ten may be released.
    let mut cts = Vec::new();
    let mut last = None;
    for i in 0..10 {
        let (ct, durability) = g.encrypt(format!("pipelined {i}").as_bytes()).into_parts();
        cts.push(ct.expect("encrypt"));
        last = Some(durability);
    }
    last.expect("ten").wait_blocking().expect("durable");
    for (i, ct) in cts.iter().enumerate() {
        write_file(&xfer, &format!("pipe.{i}"), ct);
    }
    // Encrypted, never waited for and never released: the kill may lose this state, and nobody saw the output.
    for _ in 0..3 {
        let (ct, _not_durable) = g.encrypt(b"never released").into_parts();
        drop(ct);
    }
    println!("CHILD STATE epoch={} members={}", g.epoch(), g.members().len());
    write_file(&xfer, "state", format!("{}", g.epoch()).as_bytes());
    // Wait to be killed.
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

#[test]
fn restart_after_sigkill_continues_with_the_same_member() {
    let dir = tempfile::tempdir().expect("tempdir");
    let xfer = dir.path().join("xfer");
    std::fs::create_dir_all(&xfer).expect("mkdir");
    let peers_dir = tempfile::tempdir().expect("tempdir");
    let bob = Client::new(&open_store(peers_dir.path()), "bob");
    write_file(&xfer, "bob.kp", &bob.key_package());

    let exe = std::env::current_exe().expect("test binary");
    let mut child = Command::new(exe)
        .args(["mls_restart::restart_child_process", "--exact", "--ignored", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, dir.path())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the child");

    let welcome = wait_file(&xfer, "welcome");
    let mut gb = bob.join_with_tree(&welcome, &wait_file(&xfer, "tree"));
    for i in 0..5 {
        match gb.process(&wait_file(&xfer, &format!("bridge.{i}"))).durable_blocking().expect("bob decrypts") {
            Received::Application { plaintext, .. } => assert_eq!(plaintext, format!("bridge {i}").as_bytes()),
            other => panic!("unexpected {other:?}"),
        }
    }
    write_file(&xfer, "bob.0", &gb.encrypt(b"bob 0").durable_blocking().expect("encrypt"));
    let commit = wait_file(&xfer, "commit");
    assert!(matches!(gb.process(&commit).durable_blocking(), Ok(Received::Commit { .. })));
    assert!(matches!(
        gb.process(&wait_file(&xfer, "bridge.last")).durable_blocking(),
        Ok(Received::Application { .. })
    ));
    for i in 0..10 {
        match gb.process(&wait_file(&xfer, &format!("pipe.{i}"))).durable_blocking().expect("bob decrypts") {
            Received::Application { plaintext, .. } => assert_eq!(plaintext, format!("pipelined {i}").as_bytes()),
            other => panic!("unexpected {other:?}"),
        }
    }
    let child_epoch: u64 = String::from_utf8(wait_file(&xfer, "state")).expect("utf8").parse().expect("epoch");

    // SIGKILL (Child::kill sends SIGKILL on Unix): no destructor, no flush.
    child.kill().expect("SIGKILL the child");
    let status = child.wait().expect("reap the child");
    assert!(!status.success(), "the child was killed, not finished: {status:?}");

    // Restart on the same data directory and continue with bob, who did not restart.
    let store = open_store(&dir.path().join("data"));
    let bridge = Client::new(&store, "bridge");
    let mut g = bridge.load(GROUP);
    assert_eq!(g.epoch(), child_epoch, "the restarted bridge is at the epoch the child reached");
    assert_eq!(g.epoch(), gb.epoch());
    // Bob would refuse a reused generation as a replay: the bridge's ratchet state survived the kill.
    send(&mut g, &mut [&mut gb], "after the restart");
    send(&mut gb, &mut [&mut g], "bob after the restart");
    let out = g.self_update().durable_blocking().expect("commit after restart");
    apply_commit(&mut g, &out.commit, &mut [&mut gb]);
    send(&mut g, &mut [&mut gb], "new epoch after the restart");
}
