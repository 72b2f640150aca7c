//! Crash test of the write-behind ratchet state ([`mimi_mls::write_behind`]): a child process — the bridge's
//! member of a group of `MLS_CRASH_MEMBERS` members (default 1 000) — decrypts what a native member sent and
//! encrypts messages of its own, and is killed with SIGKILL at random moments, 200 times (`MLS_CRASH_KILLS`).
//!
//! The "hub log" is a directory of files, one per message in sequence order, written by one side at a time: the
//! child while it runs, the native member (this process, which never crashes) between two runs. The child
//! follows the log like the bridge's room worker: `process_and_keep`, the plaintext handed to a "router" (a tree
//! of its store keyed by the message, which counts the offers), then its cursor. Between runs, the native member
//! decrypts every message the child put in the log, sends a few of its own, and now and then commits.
//!
//! The child encodes its state every 2–24 operations (chosen at random per run), so that reservations run out and
//! are renewed, and decrypts trigger encodings, within a run.
//!
//! Checked: every run of the child dies of the SIGKILL (not of a panic); the native member decrypts every message
//! of the child — a generation reused after a crash would be
//! refused there as a replay, and a jump beyond the ratchet's forward distance as undecryptable — and, after a
//! last clean run of the child, every message of the native member reached the child's router.

use crate::mls_support::{Client, open_store};
use mimi_mls::Received;
use mimi_store::{Batch, Store};
use rand::Rng;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const GROUP: &[u8] = b"mimi://bridge.example.org/r/crash";
const CHILD_ENV: &str = "MIMI_MLS_CRASH_CHILD_DIR";
/// Set for the last run of the child, which catches up and exits instead of waiting to be killed.
const CLEAN_ENV: &str = "MIMI_MLS_CRASH_CLEAN";
const TREE: &str = "crash_test";
const KEPT: &[u8] = b"kept/crash";
/// Messages the child encrypts per run (with short pauses), before it idles until killed.
const ENCRYPTS_PER_RUN: usize = 30;

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The log: `log/{seq:08}.{author}` (author `b` for the bridge, `n` for the native member).
fn log_entries(dir: &Path) -> Vec<(u64, char, PathBuf)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir.join("log")).expect("read the log") {
        let path = e.expect("entry").path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
        let Some((seq, author)) = name.split_once('.') else { continue };
        let (Ok(seq), Some(author)) = (seq.parse::<u64>(), author.chars().next()) else { continue };
        if author == 'b' || author == 'n' {
            out.push((seq, author, path));
        }
    }
    out.sort();
    out
}

fn append(dir: &Path, author: char, bytes: &[u8]) -> u64 {
    let seq = log_entries(dir).last().map_or(1, |(s, _, _)| s + 1);
    let tmp = dir.join(format!("log/.tmp.{author}"));
    std::fs::write(&tmp, bytes).expect("write a log entry");
    std::fs::rename(&tmp, dir.join(format!("log/{seq:08}.{author}"))).expect("sequence a log entry");
    seq
}

fn get_u64(store: &Store, key: &[u8]) -> u64 {
    store.get(TREE, key).expect("read").map_or(0, |v| u64::from_be_bytes(v.try_into().expect("8 bytes")))
}

/// The child: the bridge's side. See the module documentation.
#[test]
#[ignore = "child process of the MLS crash test; run by it"]
fn mls_crash_child_process() {
    let Some(dir) = std::env::var_os(CHILD_ENV).map(PathBuf::from) else {
        panic!("{CHILD_ENV} not set: this test is the child of killed_at_random_the_bridge_never_reuses_a_generation");
    };
    let clean = std::env::var_os(CLEAN_ENV).is_some();
    let store = open_store(&dir.join("bridge"));
    let bridge = Client::new(&store, "bridge");
    // A short, random encoding interval: reservations run out, grow and are renewed within a run, and decrypts
    // trigger encodings, not only the burn and the first reservation after a start.
    let mut rng = rand::rng();
    bridge.provider.set_write_behind_ops(rng.random_range(2..=24));
    let mut group = bridge.load(GROUP);
    let router = |seq: u64, text: &[u8]| {
        // The router: counts the offers of each message (the real one drops a repeat by message id).
        let key = text.to_vec();
        let count = get_u64(&store, &key) + 1;
        let mut b = Batch::new();
        b.put(TREE, key, count.to_be_bytes().to_vec());
        b.put(TREE, b"handed_on".to_vec(), seq.to_be_bytes().to_vec());
        store.commit_blocking(b).expect("router write");
    };
    // Whatever was decrypted and kept but not handed on goes to the router again first.
    let handed_on = get_u64(&store, b"handed_on");
    for k in group.kept_messages(KEPT).expect("kept list") {
        if k.seq > handed_on {
            router(k.seq, &k.plaintext);
        }
    }
    println!("READY");
    // Catch up with the log, then encrypt.
    let mut cursor = get_u64(&store, b"cursor");
    for (seq, author, path) in log_entries(&dir) {
        if seq <= cursor {
            continue;
        }
        if author == 'n' {
            let bytes = std::fs::read(&path).expect("read entry");
            let handed_on = get_u64(&store, b"handed_on");
            match group.process_and_keep(&bytes, seq, KEPT, handed_on).durable_blocking() {
                Ok(Received::Application { plaintext, .. }) => router(seq, &plaintext),
                Ok(_) => {}
                // Decrypted before the kill, with the state on disk that consumed it: it is in the kept list.
                Err(e) if e.is_refusal() => eprintln!("entry {seq} not applied: {e}"),
                Err(e) => panic!("entry {seq}: {e}"),
            }
        }
        cursor = seq;
        let mut b = Batch::new();
        b.put(TREE, b"cursor".to_vec(), cursor.to_be_bytes().to_vec());
        store.commit_blocking(b).expect("cursor write");
    }
    if clean {
        println!("CAUGHT UP");
        return;
    }
    let run = std::process::id();
    for i in 0..ENCRYPTS_PER_RUN {
        let ct = group.encrypt(format!("bridge {run}.{i}").as_bytes()).durable_blocking().expect("encrypt");
        append(&dir, 'b', &ct);
        std::thread::sleep(Duration::from_micros(rng.random_range(0..2000)));
    }
    println!("IDLE");
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn spawn_child(dir: &Path, clean: bool) -> std::process::Child {
    let exe = std::env::current_exe().expect("test binary");
    let mut cmd = Command::new(exe);
    cmd.args(["mls_crash::mls_crash_child_process", "--exact", "--ignored", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if clean {
        cmd.env(CLEAN_ENV, "1");
    }
    cmd.spawn().expect("spawn the child")
}

#[test]
fn killed_at_random_the_bridge_never_reuses_a_generation() {
    let members = env_number("MLS_CRASH_MEMBERS", 1000).max(2);
    let kills = env_number("MLS_CRASH_KILLS", 200);
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("log")).expect("mkdir log");
    let native_dir = tempfile::tempdir().expect("tempdir");
    let native = Client::new(&open_store(native_dir.path()), "native");

    // The group: the native member, the silent ones, and the bridge last (it joins from the Welcome with the tree).
    let started = Instant::now();
    let mut g = native.create(GROUP);
    let silent: Vec<Vec<u8>> = (0..members - 2).map(crate::mls_support::silent_member_key_package).collect();
    for chunk in silent.chunks(200) {
        let refs: Vec<&[u8]> = chunk.iter().map(Vec::as_slice).collect();
        g.add_members(&refs).durable_blocking().expect("seat");
        g.merge_pending_commit().durable_blocking().expect("merge");
    }
    {
        let store = open_store(&dir.path().join("bridge"));
        let bridge = Client::new(&store, "bridge");
        let out = g.add_members(&[&bridge.key_package()]).durable_blocking().expect("add the bridge");
        g.merge_pending_commit().durable_blocking().expect("merge");
        let joined = bridge.join(&out.welcome.expect("welcome"), &g);
        assert_eq!(joined.members().len(), members);
    }
    eprintln!("group of {members} seated in {:.1} s", started.elapsed().as_secs_f64());

    let mut rng = rand::rng();
    let mut native_sent: Vec<String> = Vec::new();
    let mut read_up_to = 0u64;
    let mut from_bridge = 0usize;
    let mut check_log = |g: &mut mimi_mls::PortalGroup, read_up_to: &mut u64| {
        for (seq, author, path) in log_entries(dir.path()) {
            if seq <= *read_up_to {
                continue;
            }
            *read_up_to = seq;
            if author != 'b' {
                continue;
            }
            let bytes = std::fs::read(&path).expect("read entry");
            match g.process(&bytes).durable_blocking() {
                Ok(Received::Application { plaintext, .. }) => {
                    assert!(plaintext.starts_with(b"bridge "), "entry {seq}: {plaintext:?}");
                    from_bridge += 1;
                }
                other => panic!("the native member cannot read the bridge's entry {seq}: {other:?}"),
            }
        }
    };
    for kill in 0..kills {
        // The native member's turn: read the bridge's messages, then say something (and now and then commit).
        check_log(&mut g, &mut read_up_to);
        for _ in 0..rng.random_range(0..4) {
            let text = format!("native {}", native_sent.len());
            let ct = g.encrypt(text.as_bytes()).durable_blocking().expect("native encrypt");
            read_up_to = append(dir.path(), 'n', &ct);
            native_sent.push(text);
        }
        if kill % 25 == 24 {
            let out = g.self_update().durable_blocking().expect("native commit");
            g.merge_pending_commit().durable_blocking().expect("merge");
            read_up_to = append(dir.path(), 'n', &out.commit);
        }
        // The bridge's run, killed at a random moment once it has opened the group.
        let mut child = spawn_child(dir.path(), false);
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let ready = lines.by_ref().map_while(Result::ok).any(|l| l.contains("READY"));
        assert!(ready, "run {kill}: the child died before opening the group");
        std::thread::sleep(Duration::from_micros(rng.random_range(0..60_000)));
        child.kill().expect("SIGKILL");
        let status = child.wait().expect("reap");
        // Killed, not dead of its own (a panic in the child would otherwise go unnoticed).
        assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(9), "run {kill}: {status:?}");
    }
    check_log(&mut g, &mut read_up_to);

    // A last, clean run: the bridge catches up with everything.
    let mut child = spawn_child(dir.path(), true);
    let status = child.wait().expect("the clean run");
    assert!(status.success(), "the clean run failed: {status:?}");
    let store = open_store(&dir.path().join("bridge"));
    let mut offered: BTreeMap<String, u64> = BTreeMap::new();
    for (k, v) in store.scan_prefix(TREE, b"native ").expect("scan") {
        offered.insert(String::from_utf8(k).expect("utf8"), u64::from_be_bytes(v.try_into().expect("8 bytes")));
    }
    let missing: Vec<&String> = native_sent.iter().filter(|t| !offered.contains_key(*t)).collect();
    assert!(missing.is_empty(), "never reached the bridge's router: {missing:?}");
    let repeats: u64 = offered.values().map(|c| c - 1).sum();
    eprintln!(
        "{kills} kills in {:.1} s: the native member decrypted all {from_bridge} messages of the bridge; all {} of \
         its own reached the bridge's router ({repeats} offered again after a kill, dropped there by id)",
        started.elapsed().as_secs_f64(),
        native_sent.len()
    );
    assert!(from_bridge > 0 && !native_sent.is_empty(), "the test exchanged nothing");

    // Every value stored in chunks (the tree, the message secrets) has all of them, and no chunk is left over,
    // whichever batch a kill interrupted.
    let chunks = mimi_mls::storage::check_chunks(store.kv().as_ref()).expect("check");
    assert!(chunks.problems.is_empty(), "{:?}", chunks.problems);
    assert!(chunks.manifests >= 2 && chunks.chunks > 0, "nothing was chunked at {members} members: {chunks:?}");
}
