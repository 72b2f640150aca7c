//! The store test suite, run against every backend (sled, redb, and PostgreSQL on a throw-away cluster): the key-value trait, group commit, the data
//! directory's schema and backend checks, bad input (corrupted, foreign, missing, full), and `store export` /
//! `import` / `check`, including moving a store between backends.
//!
//! Every test is a generic function over [`Backend`]; the `suite!` macro instantiates it once per backend, so the
//! tests are named `on_sled::NAME`, `on_redb::NAME` and `on_postgres::NAME`. Three are for the embedded backends
//! only: a corrupted or missing database file and a full disk are about files in the data directory.

use bridge_api::event::{MessageDraft, OutboundEvent, OutboundKind, Sender};
use bridge_api::ids::{AccountId, LegId, MessageId, NativeId, PortalId, TxnId};
use bridge_core::SCHEMA_VERSION;
use bridge_core::check::{self, CheckReport};
use bridge_core::repo::{self, MessageRecord, MlsIdentity, PortalRecord, ReactionSet, RecordKind, write};
use mimi_store::export;
use mimi_store::schema;
use mimi_store::{Backend, Batch, CommitConfig, KvStore, Store, StoreError};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

// ---------------------------------------------------------------------------------------------------------------
// Helpers

pub(crate) fn tmp() -> tempfile::TempDir {
    // Inside target/: the same file system as the build, so fsync behaves as it would for a real data dir.
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("create a temporary directory")
}

/// The PostgreSQL cluster of this test binary, started on first use (it stops when the binary exits).
pub(crate) fn postgres_cluster() -> &'static harness::Postgres {
    static CLUSTER: std::sync::OnceLock<harness::Postgres> = std::sync::OnceLock::new();
    CLUSTER.get_or_init(|| harness::Postgres::start().unwrap_or_else(|e| panic!("PostgreSQL: {e}")))
}

/// The PostgreSQL database of data directory `dir`: one per directory, named after it, created on first use.
pub(crate) fn postgres_for(dir: &Path) -> mimi_store::PostgresConfig {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    dir.hash(&mut h);
    let name = format!("d{:016x}", h.finish());
    let pg = postgres_cluster();
    if let Err(e) = pg.create_database(&name)
        && !e.to_string().contains("already exists")
    {
        panic!("creating database {name}: {e}");
    }
    mimi_store::PostgresConfig::new(pg.url(&name))
}

/// How to reach the PostgreSQL database of `dir`, when `wanted` or the directory's marker says PostgreSQL.
fn postgres_if_needed(dir: &Path, wanted: Option<Backend>) -> Option<mimi_store::PostgresConfig> {
    let recorded = schema::recorded_backend(dir).ok().flatten();
    (wanted == Some(Backend::Postgres) || recorded == Some(Backend::Postgres)).then(|| postgres_for(dir))
}

/// Opens the raw backend of `dir` (PostgreSQL included).
pub(crate) fn open_raw(dir: &Path, wanted: Option<Backend>) -> Result<Arc<dyn KvStore>, StoreError> {
    schema::open_backend_at(dir, wanted, postgres_if_needed(dir, wanted).as_ref())
}

/// Opens the daemon's store in `dir` (PostgreSQL included).
pub(crate) fn open_store_res(backend: Backend, dir: &Path) -> Result<Store, StoreError> {
    bridge_core::open_store_at(
        dir,
        Some(backend),
        postgres_if_needed(dir, Some(backend)).as_ref(),
        CommitConfig::default(),
    )
}

fn open_kv(backend: Backend, dir: &Path) -> Arc<dyn KvStore> {
    let kv = open_raw(dir, Some(backend)).expect("open the backend");
    schema::check_schema(kv.as_ref(), dir, true, &bridge_core::SCHEMA).expect("stamp the schema");
    kv
}

pub(crate) fn open_store(backend: Backend, dir: &Path) -> Store {
    open_store_res(backend, dir).expect("open the data dir")
}

fn other(backend: Backend) -> Backend {
    match backend {
        Backend::Sled => Backend::Redb,
        Backend::Redb => Backend::Sled,
        Backend::Postgres => Backend::Redb,
    }
}

/// Every entry of every tree.
fn dump(kv: &dyn KvStore) -> BTreeMap<(String, Vec<u8>), Vec<u8>> {
    let mut all = BTreeMap::new();
    for t in kv.trees().expect("trees") {
        for (k, v) in kv.scan_prefix(&t, b"").expect("scan") {
            all.insert((t.clone(), k), v);
        }
    }
    all
}

pub(crate) fn account() -> AccountId {
    AccountId::new("irc", "libera").expect("valid account")
}

pub(crate) fn leg(n: usize) -> LegId {
    LegId::new(account(), format!("#room{n}")).expect("valid leg")
}

pub(crate) fn portal() -> PortalId {
    PortalId::new("rust").expect("valid portal")
}

pub(crate) fn msg_id(n: u64) -> MessageId {
    let mut b = [0u8; 32];
    b[0] = 1;
    b[24..].copy_from_slice(&n.to_be_bytes());
    MessageId::from_bytes(&b).expect("valid message id")
}

pub(crate) fn sender() -> Sender {
    Sender {
        uri: "mimi://example.org/u/alice".into(),
        display_name: "alice".into(),
        network: "mimi".into(),
        legacy: None,
    }
}

pub(crate) fn outbound(leg: &LegId, msg: MessageId) -> OutboundEvent {
    OutboundEvent {
        portal: portal(),
        leg: leg.clone(),
        message_id: msg,
        txn_id: TxnId::for_delivery(&msg, leg),
        sender: sender(),
        kind: OutboundKind::Message { draft: MessageDraft::plain("hello"), reply_to: None },
        queued_at_ms: 0,
    }
}

/// A small but complete bridge store: a portal with two legs, messages with their ID map entries, pending and
/// failed deliveries, reactions, a ghost, a sequence counter.
pub(crate) fn fill_repo(store: &Store) {
    let mut b = Batch::new();
    write::portal(&mut b, &PortalRecord { id: portal(), mls_identity: MlsIdentity::Shared });
    write::link(&mut b, &leg(1), &portal());
    write::link(&mut b, &leg(2), &portal());
    write::ghost(&mut b, &account(), "alice[m]", "mimi://example.org/u/alice");
    for n in 1..=20u64 {
        let id = msg_id(n);
        let rec = MessageRecord {
            portal: portal(),
            seq: n,
            kind: RecordKind::Message,
            sender: sender(),
            origin: Some(leg(1)),
            excerpt: format!("message {n}"),
            at_ms: None,
        };
        write::message(&mut b, &id, &rec);
        write::native(&mut b, &leg(1), &NativeId(format!("irc-{n}")), &id, true);
        write::native(&mut b, &leg(2), &NativeId(format!("$ev{n}:example.org")), &id, false);
        write::outbox(&mut b, n, &outbound(&leg(2), id));
    }
    write::failed(&mut b, 21, &outbound(&leg(2), msg_id(21)), 7, "gave up after 10 attempts");
    let mut set = ReactionSet::new();
    set.insert("👍".into(), msg_id(30));
    write::reactions(&mut b, &msg_id(1), "mimi://example.org/u/bob", &set);
    write::next_seq(&mut b, &portal(), 21);
    store.commit_blocking(b).expect("commit the fixture");
}

/// Keys chosen to hit the edges of the byte order: empty, 0x00 and 0xFF runs.
fn edge_keys() -> Vec<Vec<u8>> {
    vec![
        vec![],
        vec![0x00],
        vec![0x00, 0x00],
        vec![0x00, 0x01],
        vec![0x00, 0xFF],
        vec![0x01],
        vec![0x7F, 0x00, 0xFF],
        vec![0xFF],
        vec![0xFF, 0x00],
        vec![0xFF, 0xFF],
        vec![0xFF, 0xFF, 0xFF],
    ]
}

// ---------------------------------------------------------------------------------------------------------------
// Key-value trait

fn get_put_delete(b: Backend) {
    let d = tmp();
    let kv = open_kv(b, d.path());
    assert_eq!(kv.backend(), b.name());
    assert_eq!(kv.get("outbox", b"k").expect("get"), None);
    kv.put("outbox", b"k", b"v1").expect("put");
    assert_eq!(kv.get("outbox", b"k").expect("get"), Some(b"v1".to_vec()));
    kv.put("outbox", b"k", b"v2").expect("overwrite");
    assert_eq!(kv.get("outbox", b"k").expect("get"), Some(b"v2".to_vec()));
    // Same key in another tree is another entry.
    assert_eq!(kv.get("failed", b"k").expect("get"), None);
    kv.put("failed", b"k", b"").expect("put an empty value");
    assert_eq!(kv.get("failed", b"k").expect("get"), Some(Vec::new()));
    kv.put("failed", b"", b"empty key").expect("put an empty key");
    assert_eq!(kv.get("failed", b"").expect("get"), Some(b"empty key".to_vec()));
    kv.delete("outbox", b"k").expect("delete");
    assert_eq!(kv.get("outbox", b"k").expect("get"), None);
    kv.delete("outbox", b"never-there").expect("deleting a missing key is fine");
    assert_eq!(kv.get("failed", b"k").expect("get"), Some(Vec::new()), "delete touched another tree");
    let big = vec![0xABu8; 1 << 20];
    kv.put("msgs", b"big", &big).expect("put 1 MiB");
    assert_eq!(kv.get("msgs", b"big").expect("get").as_deref(), Some(&big[..]));
}

fn prefix_scan_ordered(b: Backend) {
    let d = tmp();
    let kv = open_kv(b, d.path());
    // Trees whose names are prefixes of each other or sort right next to each other.
    let trees: [&'static str; 4] = ["t", "tt", "t\u{1}", "s"];
    let mut batch = Batch::new();
    // Insert in reverse to make sure order comes from the store.
    for t in trees {
        for k in edge_keys().into_iter().rev() {
            let mut v = t.as_bytes().to_vec();
            v.extend_from_slice(&k);
            batch.put(t, k, v);
        }
    }
    kv.write(&[batch]).expect("write");
    for t in trees {
        let all = kv.scan_prefix(t, b"").expect("scan");
        let keys: Vec<Vec<u8>> = all.iter().map(|(k, _)| k.clone()).collect();
        assert_eq!(keys, edge_keys(), "tree {t:?}: whole-tree scan in byte order, nothing from other trees");
        for (k, v) in &all {
            assert!(v.starts_with(t.as_bytes()) && v[t.len()..] == k[..], "tree {t:?}: value belongs to key");
        }
        for prefix in [vec![0x00], vec![0xFF], vec![0xFF, 0xFF], vec![0x00, 0x00], vec![0x7F], vec![0x02]] {
            let got: Vec<Vec<u8>> = kv.scan_prefix(t, &prefix).expect("scan").into_iter().map(|(k, _)| k).collect();
            let want: Vec<Vec<u8>> = edge_keys().into_iter().filter(|k| k.starts_with(&prefix)).collect();
            assert_eq!(got, want, "tree {t:?} prefix {prefix:02x?}");
        }
    }
    let mut names = kv.trees().expect("trees");
    names.retain(|n| n != "meta");
    let mut want: Vec<String> = trees.iter().map(|t| t.to_string()).collect();
    want.sort();
    assert_eq!(names, want);
}

fn atomic_multi_tree_batch(b: Backend) {
    let d = tmp();
    let kv = open_kv(b, d.path());
    let mut batch = Batch::new();
    batch.put("msgs", b"m", b"1").put("ids", b"i", b"1").put("outbox", b"o", b"1").put("failed", b"gone", b"x");
    kv.write(&[batch]).expect("write");
    let mut batch = Batch::new();
    batch.delete("failed", b"gone").put("msgs", b"m", b"2").put("ids", b"i", b"2").put("outbox", b"o", b"2");
    kv.write(&[batch]).expect("write");
    assert_eq!(kv.get("failed", b"gone").expect("get"), None);
    for t in ["msgs", "ids", "outbox"] {
        assert_eq!(kv.scan_prefix(t, b"").expect("scan").len(), 1);
    }

    // Readers racing a writer never see half a batch. The writer sets `a` and `b` (two trees) to i in one batch.
    // Reading b then a: atomic in-order batches give b <= a; reading a then b gives a <= b.
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(AtomicU64::new(0));
    let readers: Vec<_> = [true, false]
        .into_iter()
        .map(|b_first| {
            let kv = kv.clone();
            let stop = stop.clone();
            let seen = seen.clone();
            std::thread::spawn(move || {
                let read = |t: &str| -> u64 {
                    kv.get(t, b"x")
                        .expect("get")
                        .map_or(0, |v| u64::from_be_bytes(v.as_slice().try_into().expect("8 bytes")))
                };
                while !stop.load(Ordering::Relaxed) {
                    if b_first {
                        let bv = read("ids");
                        let av = read("msgs");
                        assert!(bv <= av, "saw ids = {bv} before msgs = {av}: half a batch");
                    } else {
                        let av = read("msgs");
                        let bv = read("ids");
                        assert!(av <= bv, "saw msgs = {av} before ids = {bv}: half a batch");
                    }
                    seen.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for i in 1..=300u64 {
        let mut batch = Batch::new();
        batch.put("msgs", b"x", i.to_be_bytes()).put("ids", b"x", i.to_be_bytes());
        kv.write(&[batch]).expect("write");
    }
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.join().expect("reader saw only whole batches");
    }
    assert!(seen.load(Ordering::Relaxed) > 0, "the readers did run");
}

fn reopen_after_drop(b: Backend) {
    let d = tmp();
    let store = open_store(b, d.path());
    fill_repo(&store);
    for i in 0..200u32 {
        let mut batch = Batch::new();
        batch.put("ids", i.to_be_bytes(), b"x").put("outbox", i.to_be_bytes(), b"y");
        store.commit_blocking(batch).expect("commit");
    }
    let before = dump(store.kv().as_ref());
    drop(store);
    // Dropping the last Store clone closes the backend: reopening at once must work (file locks released).
    let store = open_store(b, d.path());
    assert_eq!(dump(store.kv().as_ref()), before);
    let r = repo::Repo::new(&store);
    assert_eq!(r.portal_of(&leg(1)).expect("portal_of"), Some(portal()));
    assert_eq!(r.outbox(&leg(2)).expect("outbox").len(), 20);
    assert_eq!(
        r.lookup_native(&leg(1), &NativeId("irc-7".into())).expect("lookup").map(|e| e.message_id),
        Some(msg_id(7))
    );
    assert_eq!(r.next_seq(&portal()).expect("seq"), 21);
    drop(store);
    let store = open_store(b, d.path());
    assert_eq!(dump(store.kv().as_ref()), before, "a second reopen changes nothing");
}

fn prefix_scan_in_pages(b: Backend) {
    let d = tmp();
    let kv = open_kv(b, d.path());
    let mut batch = Batch::new();
    for k in [&b"a\x00"[..], b"a\x01", b"a\x02", b"a\x03", b"a\xff", b"b", b"\xff"] {
        batch.put("outbox", k, b"v");
    }
    batch.put("portals", b"a\x02", b"other tree");
    kv.write(&[batch]).expect("write");
    let keys = |e: mimi_store::Entries| e.into_iter().map(|(k, _)| k).collect::<Vec<_>>();
    let page = |from: &[u8], limit| keys(kv.scan_prefix_from("outbox", b"a", from, limit).expect("scan"));
    assert_eq!(page(b"a", 2), [b"a\x00".to_vec(), b"a\x01".to_vec()], "from the prefix itself");
    assert_eq!(page(b"a\x02", 2), [b"a\x02".to_vec(), b"a\x03".to_vec()], "from a key, inclusive");
    assert_eq!(page(b"a\x03", 10), [b"a\x03".to_vec(), b"a\xff".to_vec()], "never past the prefix");
    assert!(page(b"a\xff\x00", 10).is_empty());
    assert_eq!(keys(kv.scan_prefix_from("outbox", b"\xff", b"\xff", 10).expect("scan")), [b"\xff".to_vec()]);
    assert_eq!(
        keys(kv.scan_prefix_from("outbox", b"", b"", 3).expect("scan")).len(),
        3,
        "an empty prefix pages the tree"
    );
}

fn trees_lists_non_empty(b: Backend) {
    let d = tmp();
    let kv = open_kv(b, d.path());
    assert_eq!(kv.trees().expect("trees"), vec!["meta".to_string()]);
    let mut batch = Batch::new();
    batch.put("portals", b"p", b"1").put("legs", b"\xff", b"1").put("outbox", b"", b"1");
    kv.write(&[batch]).expect("write");
    assert_eq!(kv.trees().expect("trees"), vec!["legs", "meta", "outbox", "portals"]);
    kv.delete("legs", b"\xff").expect("delete");
    assert_eq!(kv.trees().expect("trees"), vec!["meta", "outbox", "portals"]);
}

/// Counts durable writes, to see group commit coalesce.
struct Counting {
    inner: Arc<dyn KvStore>,
    writes: AtomicU64,
}

impl KvStore for Counting {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
    fn get(&self, tree: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.get(tree, key)
    }
    fn scan_prefix(&self, tree: &str, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StoreError> {
        self.inner.scan_prefix(tree, prefix)
    }
    fn write(&self, batches: &[Batch]) -> Result<(), StoreError> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.inner.write(batches)
    }
    fn flush(&self) -> Result<(), StoreError> {
        self.inner.flush()
    }
    fn trees(&self) -> Result<Vec<String>, StoreError> {
        self.inner.trees()
    }
}

fn group_commit_many_writers(b: Backend) {
    const WRITERS: u32 = 32;
    const EACH: u32 = 40;
    let d = tmp();
    let kv = open_kv(b, d.path());
    let counting = Arc::new(Counting { inner: kv, writes: AtomicU64::new(0) });
    let store = Store::new(counting.clone(), CommitConfig::default());
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let acked: Vec<(u32, u32)> = rt.block_on(async {
        let tasks: Vec<_> = (0..WRITERS)
            .map(|w| {
                let store = store.clone();
                tokio::spawn(async move {
                    let mut acked = Vec::new();
                    for i in 0..EACH {
                        let mut batch = Batch::new();
                        let key = [w.to_be_bytes(), i.to_be_bytes()].concat();
                        batch.put("ids", key.clone(), b"id").put("outbox", key.clone(), b"ob").put("msgs", key, b"m");
                        store.commit(batch).await.expect("commit");
                        acked.push((w, i));
                    }
                    acked
                })
            })
            .collect();
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.expect("writer task"));
        }
        all
    });
    // A few more from plain threads, through commit_blocking.
    let threads: Vec<_> = (0..4u32)
        .map(|w| {
            let store = store.clone();
            std::thread::spawn(move || {
                for i in 0..EACH {
                    let key = [(1000 + w).to_be_bytes(), i.to_be_bytes()].concat();
                    let mut batch = Batch::new();
                    batch.put("ids", key.clone(), b"id").put("outbox", key.clone(), b"ob").put("msgs", key, b"m");
                    store.commit_blocking(batch).expect("commit_blocking");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("writer thread");
    }
    let commits = u64::from(WRITERS * EACH + 4 * EACH);
    assert_eq!(acked.len() as u64, u64::from(WRITERS * EACH));
    let writes = counting.writes.load(Ordering::Relaxed);
    assert!(writes < commits, "group commit coalesced nothing: {writes} durable writes for {commits} commits");
    drop(store);
    drop(counting);
    drop(rt);
    let kv = open_kv(b, d.path());
    for (w, i) in acked.into_iter().chain((0..4u32).flat_map(|w| (0..EACH).map(move |i| (1000 + w, i)))) {
        let key = [w.to_be_bytes(), i.to_be_bytes()].concat();
        for t in ["ids", "outbox", "msgs"] {
            assert!(kv.get(t, &key).expect("get").is_some(), "acknowledged commit {w}/{i} missing from {t}");
        }
    }
    eprintln!("{b}: {commits} commits in {writes} durable writes");
}

fn empty_batch_and_read_your_write(b: Backend) {
    let d = tmp();
    let store = open_store(b, d.path());
    let mut batch = Batch::new();
    batch.put("ids", b"k", b"v");
    // An empty batch is a no-op, not an error.
    store.commit_blocking(Batch::new()).expect("empty batch");
    store.commit_blocking(batch).expect("commit");
    assert_eq!(store.get("ids", b"k").expect("get"), Some(b"v".to_vec()));
}

// ---------------------------------------------------------------------------------------------------------------
// Data directory: schema, backend marker, bad input

fn newer_schema_refused(b: Backend) {
    let d = tmp();
    let kv = open_kv(b, d.path());
    kv.put("meta", b"schema_version", &(SCHEMA_VERSION + 1).to_be_bytes()).expect("put");
    drop(kv);
    let err = open_store_res(b, d.path()).err().expect("a newer schema is refused");
    match &err {
        StoreError::NewerSchema { path, found, supported } => {
            assert_eq!(path, d.path());
            assert_eq!((*found, *supported), (SCHEMA_VERSION + 1, SCHEMA_VERSION));
        }
        other => panic!("expected NewerSchema, got {other}"),
    }
    assert!(err.to_string().contains(&d.path().display().to_string()), "{err}");
    // Refusing did not rewrite anything.
    let kv = open_raw(d.path(), None).expect("open raw");
    assert_eq!(kv.get("meta", b"schema_version").expect("get"), Some((SCHEMA_VERSION + 1).to_be_bytes().to_vec()));
}

fn foreign_dir_refused(b: Backend) {
    let d = tmp();
    std::fs::write(d.path().join("notes.txt"), "my files").expect("write");
    let err = open_store_res(b, d.path()).err().expect("a foreign dir is refused");
    assert!(matches!(err, StoreError::Foreign { ref path, .. } if path == d.path()), "{err}");
    assert!(err.to_string().contains(&d.path().display().to_string()), "{err}");
    assert_eq!(std::fs::read_to_string(d.path().join("notes.txt")).expect("still there"), "my files");
    assert!(!d.path().join("BACKEND").exists(), "nothing written into a foreign dir");

    // A store with data but no schema version is not ours either.
    let d = tmp();
    let kv = open_raw(d.path(), Some(b)).expect("open raw");
    kv.put("portals", b"p", b"{}").expect("put");
    drop(kv);
    let err = open_store_res(b, d.path()).err().expect("unversioned data refused");
    assert!(matches!(err, StoreError::Foreign { .. }), "{err}");

    // A BACKEND marker naming something unknown.
    let d = tmp();
    std::fs::write(d.path().join("BACKEND"), "lmdb").expect("write");
    let err = open_store_res(b, d.path()).err().expect("unknown marker refused");
    assert!(err.to_string().contains("lmdb") && err.to_string().contains("BACKEND"), "{err}");
}

fn backend_mismatch_refused(b: Backend) {
    let d = tmp();
    drop(open_store(b, d.path()));
    let err = open_store_res(other(b), d.path()).err().expect("mismatch refused");
    match &err {
        StoreError::BackendMismatch { path, found, wanted } => {
            assert_eq!(path, d.path());
            assert_eq!((found.as_str(), wanted.as_str()), (b.name(), other(b).name()));
        }
        other => panic!("expected BackendMismatch, got {other}"),
    }
    // Without a wish, the recorded backend is used.
    let kv = open_raw(d.path(), None).expect("detect the backend");
    assert_eq!(kv.backend(), b.name());
}

fn missing_dir_created_private(b: Backend) {
    use std::os::unix::fs::PermissionsExt;
    let d = tmp();
    let dir = d.path().join("a").join("data");
    // Tools that only read (export, check) do not create anything.
    let err = open_raw(&dir, None).err().expect("nothing to read");
    assert!(err.to_string().contains("does not exist") && err.to_string().contains(&dir.display().to_string()));
    assert!(!dir.exists());
    drop(open_store(b, &dir));
    let mode = std::fs::metadata(&dir).expect("metadata").permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "data dir mode {mode:o}");
    assert_eq!(std::fs::read_to_string(dir.join("BACKEND")).expect("marker"), b.name());
}

/// The marker says there is a database in the data directory, but it is gone: refuse, never start an empty one.
/// (Embedded backends only: a PostgreSQL store is not in the data directory.)
fn missing_database_refused(b: Backend) {
    let d = tmp();
    let dir = d.path().join("data");
    drop(open_store(b, &dir));
    let db = schema::backend_path(&dir, b);
    if db.is_dir() {
        std::fs::remove_dir_all(&db).expect("remove");
    } else {
        std::fs::remove_file(&db).expect("remove");
    }
    let err = open_store_res(b, &dir).err().expect("a missing database is refused");
    assert!(err.to_string().contains(&db.display().to_string()) && err.to_string().contains("missing"), "{err}");
    assert!(!db.exists(), "no empty database created");
}

/// Overwrites a backend's files with garbage; opening must fail naming the path, and leave the files alone.
fn corrupted_store_refused(b: Backend) {
    let d = tmp();
    let store = open_store(b, d.path());
    fill_repo(&store);
    drop(store);
    let db = schema::backend_path(d.path(), b);
    let garbage: Vec<u8> = (0..64 * 1024u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let mut damaged = Vec::new();
    if db.is_dir() {
        for e in std::fs::read_dir(&db).expect("read_dir") {
            let p = e.expect("entry").path();
            if p.is_file() {
                std::fs::write(&p, &garbage).expect("overwrite");
                damaged.push(p);
            }
        }
    } else {
        std::fs::write(&db, &garbage).expect("overwrite");
        damaged.push(db.clone());
    }
    assert!(!damaged.is_empty());
    let res = std::panic::catch_unwind(|| open_store_res(b, d.path()).err());
    let err = res.expect("opening a corrupted store must return an error, not panic").expect("corruption detected");
    let msg = err.to_string();
    assert!(msg.contains(&db.display().to_string()), "error does not name {}: {msg}", db.display());
    for p in damaged {
        assert_eq!(std::fs::read(&p).expect("read"), garbage, "{} was rewritten", p.display());
    }
    eprintln!("{b}: corrupted store: {msg}");
}

/// A full disk: a 2 MiB tmpfs. Writes fail with an error naming the path; what was acknowledged before stays.
fn full_disk(b: Backend) {
    let d = tmp();
    let mnt = d.path().join("small");
    std::fs::create_dir(&mnt).expect("mkdir");
    let status = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"])
        .arg(&mnt)
        .stderr(std::process::Stdio::piped())
        .output();
    let mounted = matches!(&status, Ok(o) if o.status.success());
    if !mounted {
        let why = match &status {
            Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_owned(),
            Err(e) => e.to_string(),
        };
        if std::env::var_os("MIMI_BRIDGE_SKIP_TMPFS").is_some() {
            eprintln!("SKIPPED full_disk({b}): cannot mount a tmpfs ({why}); MIMI_BRIDGE_SKIP_TMPFS is set");
            return;
        }
        panic!(
            "full_disk({b}) needs to mount a 2 MiB tmpfs (run as root) and could not: {why}. Set MIMI_BRIDGE_SKIP_TMPFS=1 to skip this one case explicitly."
        );
    }
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(mnt.clone());
    let dir = mnt.join("data");
    let store = open_store(b, &dir);
    let mut acked = 0u32;
    let err = loop {
        let mut batch = Batch::new();
        batch.put("msgs", acked.to_be_bytes(), vec![0x5Au8; 16 * 1024]);
        match store.commit_blocking(batch) {
            Ok(()) => acked += 1,
            Err(e) => break e,
        }
        assert!(acked < 10_000, "wrote {} MiB to a 2 MiB file system without an error", acked / 64);
    };
    let msg = err.to_string();
    eprintln!("{b}: full disk after {acked} commits: {msg}");
    assert!(acked > 0, "nothing could be written at all: {msg}");
    assert!(msg.contains(&dir.display().to_string()), "error does not name the data dir: {msg}");
    // Later commits keep failing with an error (not a hang, not a silent success).
    let mut batch = Batch::new();
    batch.put("msgs", b"after", b"x");
    assert!(store.commit_blocking(batch).is_err(), "a commit on a full disk reported success");
    drop(store);
    // Make room and check that every acknowledged commit survived.
    let grown = std::process::Command::new("mount").args(["-o", "remount,size=64m"]).arg(&mnt).status();
    assert!(matches!(grown, Ok(s) if s.success()), "remount with more room");
    let store = open_store(b, &dir);
    for i in 0..acked {
        assert!(store.get("msgs", &i.to_be_bytes()).expect("get").is_some(), "acknowledged commit {i} lost");
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Export, import, check

fn export_to_vec(kv: &dyn KvStore) -> (Vec<u8>, u64) {
    let mut out = Vec::new();
    let n = export::export(kv, &mut out, &bridge_core::SCHEMA).expect("export");
    (out, n)
}

fn export_import_roundtrip(from: Backend, to: Backend) {
    let src = tmp();
    let store = open_store(from, src.path());
    fill_repo(&store);
    // Odd bytes in keys and values (within what `check` accepts for the tree: a ghost key is the length-prefixed
    // account then any bytes, its value UTF-8).
    let mut batch = Batch::new();
    for (i, k) in edge_keys().into_iter().enumerate() {
        let mut key = vec![0x00, 0x03];
        key.extend_from_slice(b"a.b");
        key.extend_from_slice(&k);
        batch.put("ghosts", key, format!("\u{0}\u{7f}{i}"));
    }
    store.commit_blocking(batch).expect("commit");
    let before = dump(store.kv().as_ref());
    let (file, n) = export_to_vec(store.kv().as_ref());
    assert_eq!(n, before.len() as u64);
    let lines: Vec<&str> = std::str::from_utf8(&file).expect("utf-8").lines().collect();
    assert_eq!(lines.len() as u64, n + 2, "header, one line per entry, end line");
    let header: serde_json::Value = serde_json::from_str(lines[0]).expect("header is JSON");
    assert_eq!(header["format"], "mimi-bridge-store");
    assert_eq!(header["backend"], from.name());
    assert_eq!(header["schema_version"], SCHEMA_VERSION);
    drop(store);

    let dst = tmp();
    let store = open_store(to, dst.path());
    let imported =
        export::import(store.kv().as_ref(), &mut file.as_slice(), &bridge_core::SCHEMA, &bridge_core::known_trees())
            .expect("import");
    assert_eq!(imported, n);
    assert_eq!(dump(store.kv().as_ref()), before, "{from} → {to}: identical content");
    drop(store);
    // The imported store opens as a daemon store, checks clean, and exports to the same lines.
    let store = open_store(to, dst.path());
    let report = check::check(store.kv().as_ref(), dst.path()).expect("check");
    assert!(report.is_ok(), "{report}");
    let (again, _) = export_to_vec(store.kv().as_ref());
    let body = |f: &[u8]| String::from_utf8(f.to_vec()).expect("utf-8").lines().skip(1).collect::<Vec<_>>().join("\n");
    assert_eq!(body(&again), body(&file), "{from} → {to} → export: same entries");
}

fn import_refuses_bad_input(b: Backend) {
    let src = tmp();
    let store = open_store(b, src.path());
    fill_repo(&store);
    let (file, _) = export_to_vec(store.kv().as_ref());
    let text = String::from_utf8(file).expect("utf-8");
    let lines: Vec<&str> = text.lines().collect();

    // Importing into a store that holds data.
    let err =
        export::import(store.kv().as_ref(), &mut text.as_bytes(), &bridge_core::SCHEMA, &bridge_core::known_trees())
            .expect_err("non-empty target refused");
    assert!(err.to_string().contains("not empty"), "{err}");
    drop(store);

    let try_import = |input: String| -> (StoreError, tempfile::TempDir) {
        let dst = tmp();
        let store = open_store(b, dst.path());
        let err = export::import(
            store.kv().as_ref(),
            &mut input.as_bytes(),
            &bridge_core::SCHEMA,
            &bridge_core::known_trees(),
        )
        .expect_err("bad input refused");
        (err, dst)
    };
    let line_of = |e: &StoreError| match e {
        StoreError::Import { line, .. } => *line,
        other => panic!("expected an Import error, got {other}"),
    };

    // Unknown tree on line 3.
    let mut l = lines.clone();
    let evil = r#"{"tree":"nonsense","key":"00","value":"00"}"#;
    l.insert(2, evil);
    let (err, _d) = try_import(l.join("\n"));
    assert_eq!(line_of(&err), 3, "{err}");
    assert!(err.to_string().contains("unknown tree \"nonsense\""), "{err}");

    // Bad hex on line 2.
    let mut l = lines.clone();
    let bad_hex = r#"{"tree":"ids","key":"zz","value":"00"}"#;
    l[1] = bad_hex;
    let (err, _d) = try_import(l.join("\n"));
    assert_eq!(line_of(&err), 2, "{err}");
    assert!(err.to_string().contains("hex"), "{err}");

    // Not an export at all.
    let (err, _d) = try_import("hello\n".into());
    assert_eq!(line_of(&err), 1);
    let (err, _d) = try_import(String::new());
    assert!(err.to_string().contains("empty"), "{err}");
    let (err, _d) = try_import(lines[0].replace("mimi-bridge-store", "other") + "\n");
    assert!(err.to_string().contains("format"), "{err}");

    // A newer schema.
    let newer = lines[0].replace(
        &format!("\"schema_version\":{SCHEMA_VERSION}"),
        &format!("\"schema_version\":{}", SCHEMA_VERSION + 1),
    );
    assert_ne!(newer, lines[0]);
    let (err, _d) = try_import(newer + "\n");
    assert!(err.to_string().contains("schema version"), "{err}");

    // Truncated: no end line. With more than one import batch written before the end, the partial import is
    // not usable as a store.
    let mut l = lines[..lines.len() - 1].to_vec();
    let extra: Vec<String> = (0..2 * export::IMPORT_BATCH)
        .map(|i| format!(r#"{{"tree":"failed","key":"{:016x}","value":"00"}}"#, i))
        .collect();
    l.extend(extra.iter().map(String::as_str));
    let truncated = l.join("\n");
    let (err, dst) = try_import(truncated);
    assert!(err.to_string().contains("truncated") && err.to_string().contains("partial"), "{err}");
    let refused = open_store_res(b, dst.path()).err().expect("partial import refused");
    assert!(matches!(refused, StoreError::Foreign { .. }), "{refused}");

    // End line with the wrong count, and data after the end line.
    let mut l = lines.clone();
    l.remove(1);
    let (err, _d) = try_import(l.join("\n"));
    assert_eq!(line_of(&err), lines.len() as u64 - 1, "{err}");
    assert!(err.to_string().contains("counts"), "{err}");
    let mut l = lines.clone();
    l.push(lines[1]);
    let (err, _d) = try_import(l.join("\n"));
    assert_eq!(line_of(&err), lines.len() as u64 + 1, "{err}");
}

fn problems(r: &CheckReport) -> String {
    r.problems.join("\n")
}

fn check_finds_violations(b: Backend) {
    let d = tmp();
    let store = open_store(b, d.path());
    let empty = check::check(store.kv().as_ref(), d.path()).expect("check");
    assert!(empty.is_ok(), "{empty}");
    fill_repo(&store);
    let clean = check::check(store.kv().as_ref(), d.path()).expect("check");
    assert!(clean.is_ok(), "{clean}");
    assert_eq!(clean.schema_version, Some(SCHEMA_VERSION));
    assert_eq!(clean.entries.get("outbox"), Some(&20));
    assert_eq!(clean.entries.get("ids"), Some(&80));

    let mut batch = Batch::new();
    // A leg linked to a portal that does not exist.
    write::link(&mut batch, &leg(3), &PortalId::new("ghost-town").expect("portal"));
    // A pending delivery to a leg that is not linked.
    write::outbox(&mut batch, 99, &outbound(&leg(4), msg_id(99)));
    // A native id without its reverse entry, and an undecodable one.
    let mut n = vec![b'n'];
    let lk = leg(1).key();
    n.extend_from_slice(&(lk.len() as u16).to_be_bytes());
    n.extend_from_slice(&lk);
    let mut n2 = n.clone();
    n.extend_from_slice(b"orphan");
    n2.extend_from_slice(b"garbled");
    batch.put(
        repo::IDS,
        n,
        format!("{{\"message_id\":{},\"origin\":true}}", serde_json::to_string(&msg_id(77)).expect("json")),
    );
    batch.put(repo::IDS, n2, b"not json".to_vec());
    // A message record that does not decode, and a tree nobody knows.
    batch.put(repo::MSGS, msg_id(55).as_bytes().to_vec(), b"{}".to_vec());
    batch.put("mystery", b"k", b"v");
    // The MLS state: a chunk that no manifest lists, and a tree whose manifest lists a chunk that is not stored.
    let member = [&[0, 6][..], b"bridge", &[0, 1]].concat();
    batch.put("mls", [&member[..], &[0x42, 10], b"\x45group", &[0xAA; 32]].concat(), vec![1]);
    let manifest = mimi_store::chunks::split(&[3; 100]).manifest();
    batch.put("mls", [&member[..], &[10], b"\x45group"].concat(), manifest);
    store.commit_blocking(batch).expect("commit");
    let r = check::check(store.kv().as_ref(), d.path()).expect("check");
    let p = problems(&r);
    assert_eq!(r.problem_count, 8, "{r}");
    assert!(p.contains("ghost-town"), "{p}");
    assert!(p.contains("#room4") && p.contains("not linked"), "{p}");
    assert!(p.contains("orphan") && p.contains("missing"), "{p}");
    assert!(p.contains("garbled") && p.contains("decode"), "{p}");
    assert!(p.contains("msgs") && p.contains("decode"), "{p}");
    assert!(p.contains("unknown tree \"mystery\""), "{p}");
    assert!(p.contains("a chunk no manifest lists") && p.contains("a chunk a manifest lists is missing"), "{p}");
    assert!(r.to_string().contains("8 problem(s)"));

    // A newer schema is a problem for check, not an error: the report still lists the rest.
    store.kv().put("meta", b"schema_version", &(SCHEMA_VERSION + 1).to_be_bytes()).expect("put");
    let r = check::check(store.kv().as_ref(), d.path()).expect("check");
    assert_eq!(r.problem_count, 9, "{r}");
    assert!(problems(&r).contains("upgrade mimi-bridge"), "{r}");
}

// ---------------------------------------------------------------------------------------------------------------

/// Instantiates every common test for `$backend` in module `$module`, plus the tests listed in brackets (those
/// that apply to some backends only).
macro_rules! suite {
    ($module:ident, $backend:expr, [$($only:ident),*]) => {
        mod $module {
            use super::*;
            #[test]
            fn get_put_delete() {
                super::get_put_delete($backend)
            }
            #[test]
            fn prefix_scan_ordered() {
                super::prefix_scan_ordered($backend)
            }
            #[test]
            fn atomic_multi_tree_batch() {
                super::atomic_multi_tree_batch($backend)
            }
            #[test]
            fn reopen_after_drop() {
                super::reopen_after_drop($backend)
            }
            #[test]
            fn prefix_scan_in_pages() {
                super::prefix_scan_in_pages($backend)
            }
            #[test]
            fn trees_lists_non_empty() {
                super::trees_lists_non_empty($backend)
            }
            #[test]
            fn group_commit_many_writers() {
                super::group_commit_many_writers($backend)
            }
            #[test]
            fn empty_batch_and_read_your_write() {
                super::empty_batch_and_read_your_write($backend)
            }
            #[test]
            fn newer_schema_refused() {
                super::newer_schema_refused($backend)
            }
            #[test]
            fn foreign_dir_refused() {
                super::foreign_dir_refused($backend)
            }
            #[test]
            fn backend_mismatch_refused() {
                super::backend_mismatch_refused($backend)
            }
            #[test]
            fn missing_dir_created_private() {
                super::missing_dir_created_private($backend)
            }
            #[test]
            fn export_import_same_backend() {
                super::export_import_roundtrip($backend, $backend)
            }
            #[test]
            fn export_import_to_other_backend() {
                super::export_import_roundtrip($backend, super::other($backend))
            }
            #[test]
            fn import_refuses_bad_input() {
                super::import_refuses_bad_input($backend)
            }
            #[test]
            fn check_finds_violations() {
                super::check_finds_violations($backend)
            }
            $(
                #[test]
                fn $only() {
                    super::$only($backend)
                }
            )*
        }
    };
}

suite!(on_sled, Backend::Sled, [corrupted_store_refused, full_disk, missing_database_refused]);
suite!(on_redb, Backend::Redb, [corrupted_store_refused, full_disk, missing_database_refused]);
suite!(on_postgres, Backend::Postgres, []);
