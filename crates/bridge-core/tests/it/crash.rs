//! Crash consistency: a child process writes a stream of batches through group commit and reports each one that
//! was acknowledged; the parent kills it with SIGKILL at random moments, 200 times per backend, reopens the store
//! and checks that every acknowledged batch is complete and that no batch is half-applied.
//!
//! `cargo test crash` runs `crash_redb` and `crash_postgres` (and `crash_sled` with `--include-ignored`). The child is this test binary itself, re-executed with
//! `--ignored --exact child_writer` and the job in an environment variable.
//!
//! Each batch is one bridged message: its record (`msgs`), its ID map entries in both directions on its origin leg
//! and on a leg it was delivered to (`ids`, which is also the dedup lookup), a pending delivery (`outbox`, which
//! also removes the writer's previous one), and the writer's sequence counter (`meta`) — five trees, one batch.
//! The ids encode (iteration, writer, k), so the parent knows exactly what each batch consists of.

use bridge_api::event::{MessageDraft, OutboundEvent, OutboundKind, Sender};
use bridge_api::ids::{AccountId, LegId, MessageId, NativeId, PortalId, TxnId};
use bridge_core::SCHEMA_VERSION;
use bridge_core::check;
use bridge_core::repo::{self, MessageRecord, MlsIdentity, PortalRecord, RecordKind, Repo, write};
use mimi_store::schema;
use mimi_store::{Backend, Batch, CommitConfig, KvStore, PostgresConfig};
use rand::Rng;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const ITERATIONS: u32 = 200;
const WRITERS: u8 = 4;
const CHILD_ENV: &str = "MIMI_BRIDGE_CRASH_CHILD";
/// The child's PostgreSQL connection string, for `crash_postgres`.
const CHILD_PG_ENV: &str = "MIMI_BRIDGE_CRASH_PG_URL";

/// How the child and the parent reach the PostgreSQL database (`None` for the embedded backends).
fn child_postgres() -> Option<PostgresConfig> {
    std::env::var(CHILD_PG_ENV).ok().filter(|u| !u.is_empty()).map(PostgresConfig::new)
}

fn account() -> AccountId {
    AccountId::new("irc", "libera").expect("valid account")
}

/// Writer `w`'s origin leg (linked; its outbox is used).
fn origin_leg(w: u8) -> LegId {
    LegId::new(account(), format!("#origin{w}")).expect("valid leg")
}

/// Writer `w`'s delivery leg (only ID map entries).
fn delivered_leg(w: u8) -> LegId {
    LegId::new(account(), format!("!delivered{w}:example.org")).expect("valid leg")
}

fn portal() -> PortalId {
    PortalId::new("crash").expect("valid portal")
}

fn counter_portal(w: u8) -> PortalId {
    PortalId::new(format!("counter{w}")).expect("valid portal")
}

/// The message id of batch (iteration, writer, k): `01 000000 iter(4) w(1) k(4) 00…`.
fn msg_id(iter: u32, w: u8, k: u32) -> MessageId {
    let mut b = [0u8; 32];
    b[0] = 1;
    b[4..8].copy_from_slice(&iter.to_be_bytes());
    b[8] = w;
    b[9..13].copy_from_slice(&k.to_be_bytes());
    MessageId::from_bytes(&b).expect("valid message id")
}

fn decode_id(id: &[u8]) -> (u32, u8, u32) {
    let iter = u32::from_be_bytes(id[4..8].try_into().expect("4 bytes"));
    let k = u32::from_be_bytes(id[9..13].try_into().expect("4 bytes"));
    (iter, id[8], k)
}

/// A batch's position in the global order of writer `w` (sequence numbers grow across iterations).
fn seq_of(iter: u32, k: u32) -> u64 {
    (u64::from(iter) << 32) | u64::from(k)
}

fn origin_native(iter: u32, w: u8, k: u32) -> NativeId {
    NativeId(format!("o{iter:08}-{w}-{k:08}"))
}

fn delivered_native(iter: u32, w: u8, k: u32) -> NativeId {
    NativeId(format!("d{iter:08}-{w}-{k:08}"))
}

fn sender() -> Sender {
    Sender {
        uri: "mimi://example.org/u/alice".into(),
        display_name: "alice".into(),
        network: "mimi".into(),
        legacy: None,
    }
}

fn lp(b: &[u8]) -> Vec<u8> {
    let mut k = (b.len() as u16).to_be_bytes().to_vec();
    k.extend_from_slice(b);
    k
}

/// The whole batch of message (iteration, writer, k); `previous` is the writer's outbox entry to remove.
fn message_batch(iter: u32, w: u8, k: u32, previous: &[u64]) -> Batch {
    let id = msg_id(iter, w, k);
    let seq = seq_of(iter, k);
    let mut b = Batch::new();
    let rec = MessageRecord {
        portal: portal(),
        seq,
        kind: RecordKind::Message,
        sender: sender(),
        origin: Some(origin_leg(w)),
        excerpt: format!("message {iter}/{w}/{k}: the quick brown fox jumps over the lazy dog"),
        at_ms: None,
    };
    write::message(&mut b, &id, &rec);
    write::native(&mut b, &origin_leg(w), &origin_native(iter, w, k), &id, true);
    write::native(&mut b, &delivered_leg(w), &delivered_native(iter, w, k), &id, false);
    for p in previous {
        write::outbox_done(&mut b, &origin_leg(w), *p);
    }
    let ev = OutboundEvent {
        portal: portal(),
        leg: origin_leg(w),
        message_id: id,
        txn_id: TxnId::for_delivery(&id, &origin_leg(w)),
        sender: sender(),
        kind: OutboundKind::Message { draft: MessageDraft::plain(rec.excerpt.clone()), reply_to: None },
        queued_at_ms: 0,
    };
    write::outbox(&mut b, seq, &ev);
    write::next_seq(&mut b, &counter_portal(w), seq);
    b
}

/// The child: `MIMI_BRIDGE_CRASH_CHILD="<backend> <iteration> <data dir>"`. Writes until killed.
#[test]
#[ignore = "helper process of crash_sled / crash_redb, not a test by itself"]
fn child_writer() {
    let Some(job) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let job = job.to_string_lossy().into_owned();
    let mut parts = job.splitn(3, ' ');
    let backend = Backend::parse(parts.next().expect("backend")).expect("known backend");
    let iter: u32 = parts.next().expect("iteration").parse().expect("iteration number");
    let dir = PathBuf::from(parts.next().expect("data dir"));
    let store = bridge_core::open_store_at(&dir, Some(backend), child_postgres().as_ref(), CommitConfig::default())
        .expect("open the store after a crash");
    println!("READY");
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let store = store.clone();
            std::thread::spawn(move || {
                let mut previous: Vec<u64> = Repo::new(&store)
                    .outbox(&origin_leg(w))
                    .expect("read outbox")
                    .into_iter()
                    .map(|(s, _)| s)
                    .collect();
                for k in 0.. {
                    let batch = message_batch(iter, w, k, &previous);
                    store.commit_blocking(batch).expect("commit");
                    // Acknowledged: durable. Report it in one line (one write to the pipe).
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "ACK {w} {k}").expect("report");
                    out.flush().expect("flush");
                    previous = vec![seq_of(iter, k)];
                }
            })
        })
        .collect();
    for w in writers {
        w.join().expect("writer");
    }
}

fn setup(backend: Backend, dir: &Path, pg: Option<&PostgresConfig>) {
    let store = bridge_core::open_store_at(dir, Some(backend), pg, CommitConfig::default()).expect("create the store");
    let mut b = Batch::new();
    write::portal(&mut b, &PortalRecord { id: portal(), mls_identity: MlsIdentity::Shared });
    for w in 0..WRITERS {
        write::portal(&mut b, &PortalRecord { id: counter_portal(w), mls_identity: MlsIdentity::Shared });
        write::link(&mut b, &origin_leg(w), &portal());
    }
    store.commit_blocking(b).expect("setup");
}

/// Checks iteration `iter`'s batches against what the child acknowledged; returns violations.
fn verify(kv: &dyn KvStore, iter: u32, acked: &BTreeMap<u8, BTreeSet<u32>>) -> Vec<String> {
    let mut v = Vec::new();
    let mut prefix = msg_id(iter, 0, 0).as_bytes()[..8].to_vec();
    // Per writer: the ks whose part is present, per part.
    let mut parts: BTreeMap<(u8, &str), BTreeSet<u32>> = BTreeMap::new();
    for (k, _) in kv.scan_prefix(repo::MSGS, &prefix).expect("scan msgs") {
        let (i, w, k) = decode_id(&k);
        assert_eq!(i, iter);
        parts.entry((w, "msgs")).or_default().insert(k);
    }
    prefix.insert(0, b'm');
    for (key, val) in kv.scan_prefix(repo::IDS, &prefix).expect("scan ids m") {
        let (_, w, k) = decode_id(&key[1..33]);
        let leg_part = &key[33..];
        let (which, want) = if leg_part == lp(&origin_leg(w).key()) {
            ("ids m origin", origin_native(iter, w, k))
        } else if leg_part == lp(&delivered_leg(w).key()) {
            ("ids m delivered", delivered_native(iter, w, k))
        } else {
            v.push(format!("iteration {iter}: ids m entry for an unexpected leg: {key:02x?}"));
            continue;
        };
        if val != want.0.as_bytes() {
            v.push(format!("iteration {iter}: {which} {w}/{k} holds {:?}", String::from_utf8_lossy(&val)));
        }
        parts.entry((w, which)).or_default().insert(k);
    }
    let repo_kv = |leg: &LegId, tag: char| {
        let mut p = vec![b'n'];
        p.extend_from_slice(&lp(&leg.key()));
        p.extend_from_slice(format!("{tag}{iter:08}-").as_bytes());
        p
    };
    for w in 0..WRITERS {
        for (leg, tag, which) in [(origin_leg(w), 'o', "ids n origin"), (delivered_leg(w), 'd', "ids n delivered")] {
            let p = repo_kv(&leg, tag);
            for (key, val) in kv.scan_prefix(repo::IDS, &p).expect("scan ids n") {
                let text = String::from_utf8_lossy(&key[p.len()..]).into_owned();
                let k: u32 = match text.rsplit('-').next().and_then(|s| s.parse().ok()) {
                    Some(k) => k,
                    None => {
                        v.push(format!("iteration {iter}: malformed {which} key {key:02x?}"));
                        continue;
                    }
                };
                match serde_json::from_slice::<repo::IdEntry>(&val) {
                    Ok(e) if e.message_id == msg_id(iter, w, k) && e.origin == (tag == 'o') => {}
                    other => v.push(format!("iteration {iter}: {which} {w}/{k} holds {other:?}")),
                }
                parts.entry((w, which)).or_default().insert(k);
            }
        }
    }
    let names = ["msgs", "ids m origin", "ids m delivered", "ids n origin", "ids n delivered"];
    for w in 0..WRITERS {
        let present = parts.get(&(w, "msgs")).cloned().unwrap_or_default();
        // No half-applied batch: every part holds exactly the same batches.
        for n in &names[1..] {
            let got = parts.get(&(w, *n)).cloned().unwrap_or_default();
            if got != present {
                let diff: Vec<_> = got.symmetric_difference(&present).take(5).collect();
                v.push(format!("iteration {iter} writer {w}: {n} differs from msgs at k = {diff:?} (half-applied)"));
            }
        }
        // Every acknowledged batch is there.
        if let Some(acks) = acked.get(&w) {
            let lost: Vec<_> = acks.difference(&present).take(5).collect();
            if !lost.is_empty() {
                v.push(format!("iteration {iter} writer {w}: acknowledged batches lost: k = {lost:?}…"));
            }
        }
        // A writer commits one batch after the other, so what is durable is a prefix 0..=K.
        if let Some(max) = present.iter().next_back()
            && present.len() as u64 != u64::from(*max) + 1
        {
            v.push(format!("iteration {iter} writer {w}: {} batches present but the last is k = {max}", present.len()));
        }
        // The outbox holds exactly the writer's last batch, and the counter points at it.
        let outbox: Vec<u64> = {
            let p = lp(&origin_leg(w).key());
            kv.scan_prefix(repo::OUTBOX, &p)
                .expect("scan outbox")
                .into_iter()
                .map(|(k, _)| u64::from_be_bytes(k[p.len()..].try_into().expect("8-byte seq")))
                .collect()
        };
        let counter =
            kv.get("meta", &[b"seq/".as_slice(), counter_portal(w).as_str().as_bytes()].concat()).expect("get");
        let counter = counter.map(|c| u64::from_be_bytes(c.as_slice().try_into().expect("8-byte counter")));
        if let Some(max) = present.iter().next_back() {
            let last = seq_of(iter, *max);
            if outbox != [last] {
                v.push(format!("iteration {iter} writer {w}: outbox {outbox:?}, expected only [{last}]"));
            }
            if counter != Some(last) {
                v.push(format!("iteration {iter} writer {w}: counter {counter:?}, expected {last}"));
            }
        } else if outbox.len() > 1 {
            v.push(format!("iteration {iter} writer {w}: {} outbox entries, expected at most 1", outbox.len()));
        } else if outbox.first().copied() != counter && counter.is_some() {
            v.push(format!("iteration {iter} writer {w}: outbox {outbox:?} but counter {counter:?}"));
        }
    }
    v
}

fn crash_run(backend: Backend) {
    let started = Instant::now();
    let d = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temporary directory");
    let dir = d.path().join("data");
    let pg = (backend == Backend::Postgres).then(|| super::store_backends::postgres_for(&dir));
    setup(backend, &dir, pg.as_ref());
    let exe = std::env::current_exe().expect("the test binary");
    let mut rng = rand::rng();
    let mut violations: Vec<String> = Vec::new();
    let (mut acked_total, mut present_total, mut during_startup) = (0u64, 0u64, 0u32);
    for iter in 0..ITERATIONS {
        let mut child = Command::new(&exe)
            .args(["--ignored", "--exact", "crash::child_writer", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, format!("{} {iter} {}", backend.name(), dir.display()))
            .env(CHILD_PG_ENV, pg.as_ref().map(|c| c.url.as_str()).unwrap_or_default())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the child");
        let stdout = child.stdout.take().expect("child stdout");
        let reader = std::thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            let mut acks: BTreeMap<u8, BTreeSet<u32>> = BTreeMap::new();
            let mut ready = false;
            let mut line = Vec::new();
            loop {
                line.clear();
                match r.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                // Only complete lines count: a line cut by the kill is not an acknowledgement.
                if line.last() != Some(&b'\n') {
                    break;
                }
                let text = String::from_utf8_lossy(&line);
                // libtest prints `test child_writer ... ` without a newline just before the child's first line.
                if text.trim_end().ends_with("READY") {
                    ready = true;
                    continue;
                }
                let mut f = text.split_whitespace();
                if f.next() == Some("ACK") {
                    let w: u8 = f.next().and_then(|s| s.parse().ok()).expect("writer");
                    let k: u32 = f.next().and_then(|s| s.parse().ok()).expect("k");
                    acks.entry(w).or_default().insert(k);
                }
            }
            (ready, acks)
        });
        // Mostly while batches stream; one kill in ten lands while the child is still opening (recovering) the store.
        let delay = if rng.random_range(0..10) == 0 { rng.random_range(0..40) } else { rng.random_range(40..160) };
        std::thread::sleep(Duration::from_millis(delay));
        let exited = child.try_wait().expect("try_wait");
        child.kill().expect("SIGKILL the child");
        let status = child.wait().expect("wait");
        let (ready, acks) = reader.join().expect("reader");
        let mut stderr = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut stderr);
        }
        if let Some(st) = exited {
            violations.push(format!("iteration {iter}: the child exited by itself ({st}) before the kill: {stderr}"));
        }
        assert!(
            exited.is_some() || std::os::unix::process::ExitStatusExt::signal(&status) == Some(9),
            "child ended with {status}"
        );
        if !ready {
            during_startup += 1;
        }
        acked_total += acks.values().map(|s| s.len() as u64).sum::<u64>();

        // Reopen: must work, without any repair, and hold every acknowledged batch, whole. The killed child's
        // PostgreSQL lease would run out by itself; the parent, which saw it die, ends it at once.
        if let Some(cfg) = &pg {
            let db = cfg.url.rsplit('/').next().and_then(|s| s.split('?').next()).unwrap_or_default();
            super::store_backends::postgres_cluster()
                .psql(db, "UPDATE mimi_leader SET expires_at = 'epoch'")
                .expect("end the killed child's lease");
        }
        let kv = match schema::open_backend_at(&dir, Some(backend), pg.as_ref()) {
            Ok(kv) => kv,
            Err(e) => {
                violations.push(format!("iteration {iter}: the store does not reopen after SIGKILL: {e}"));
                break;
            }
        };
        match schema::check_schema(kv.as_ref(), &dir, false, &bridge_core::SCHEMA) {
            Ok(SCHEMA_VERSION) => {}
            other => violations.push(format!("iteration {iter}: schema check after SIGKILL: {other:?}")),
        }
        violations.extend(verify(kv.as_ref(), iter, &acks));
        present_total += kv.scan_prefix(repo::MSGS, &msg_id(iter, 0, 0).as_bytes()[..8]).expect("scan").len() as u64;
        drop(kv);
    }
    // Finally, the whole store satisfies every invariant `store check` knows.
    if let Ok(kv) = schema::open_backend_at(&dir, Some(backend), pg.as_ref()) {
        let report = check::check(kv.as_ref(), &dir).expect("check");
        if !report.is_ok() {
            violations.push(format!("store check after {ITERATIONS} kills:\n{report}"));
        }
    }
    let wall = started.elapsed();
    eprintln!(
        "crash_{backend}: {ITERATIONS} SIGKILLs ({during_startup} before the store was open), {acked_total} acknowledged \
         batches checked, {present_total} batches found durable, {} violations, {:.1} s",
        violations.len(),
        wall.as_secs_f64()
    );
    assert!(acked_total > u64::from(ITERATIONS), "the child acknowledged too little to test anything: {acked_total}");
    assert!(violations.is_empty(), "{} violations:\n{}", violations.len(), violations.join("\n"));
}

/// Opt-in (`cargo test crash -- --include-ignored`): sled 0.34.7 sometimes cannot reopen its database after a
/// SIGKILL ("Read corrupted data at file offset …", the open upstream bugs spacejam/sled#1509 and #1533). We saw
/// it in 1 of about 10 runs of this test (200 kills each); the other runs had zero violations. A gate that fails
/// one CI run in ten for a known upstream defect would block every change, so this measurement is opt-in; the
/// defect is why redb is the default backend and why the daemon warns when sled is configured. The check itself
/// is as strict as redb's.
#[test]
#[ignore = "sled 0.34.7 intermittently fails to reopen after SIGKILL (spacejam/sled#1509); run with --include-ignored"]
fn crash_sled() {
    crash_run(Backend::Sled);
}

#[test]
fn crash_redb() {
    crash_run(Backend::Redb);
}

/// The same on PostgreSQL: every acknowledged group was committed, no batch is half-applied after the writer's
/// connections died with it.
#[test]
fn crash_postgres() {
    crash_run(Backend::Postgres);
}
