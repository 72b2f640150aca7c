//! Store benchmark, every backend in one run (sled, redb, and PostgreSQL on a throw-away local cluster started by
//! tests/harness, default settings: `fsync` and `synchronous_commit` on):
//!
//! * durable batches/s through group commit ([`Store::commit`]) at 1, 8 and 64 concurrent writers, each batch one
//!   bridged message (message record, ID map both ways on two legs, outbox entry, sequence counter: 6 keys,
//!   ~1 KiB);
//! * p50 / p99 commit latency (time from `commit` to its acknowledgement), over every commit criterion timed;
//! * size on disk after 1 000 000 ID-map entries (one entry = a native id ↔ message id mapping, which is two keys:
//!   `n` and `m`), written 1000 mappings per durable batch.
//!
//! `cargo bench -p bridge-core --bench store` prints criterion's report and then a summary table. Data lives in
//! target/tmp (the build's file system), so fsync costs what it costs there; PostgreSQL's cluster lives in the
//! system temp dir and is reached over loopback TCP. PostgreSQL's size is `pg_total_relation_size` of its table
//! (indexes and TOAST included).

use bridge_api::event::{MessageDraft, OutboundEvent, OutboundKind, Sender};
use bridge_api::ids::{AccountId, LegId, MessageId, NativeId, PortalId, TxnId};
use bridge_core::repo::{MessageRecord, RecordKind, write};
use criterion::{Criterion, Throughput};
use mimi_store::{Backend, Batch, CommitConfig, KvStore, Store, schema};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const WRITERS: [usize; 3] = [1, 8, 64];
const ID_MAP_ENTRIES: u64 = 1_000_000;
const ENTRIES_PER_BATCH: u64 = 1000;

fn leg(n: u64) -> LegId {
    LegId::new(AccountId::new("matrix", "main").expect("account"), format!("!room{n}:example.org")).expect("leg")
}

fn msg_id(n: u64) -> MessageId {
    let mut b = [0u8; 32];
    b[0] = 1;
    b[24..].copy_from_slice(&n.to_be_bytes());
    b[1..9].copy_from_slice(&n.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_be_bytes());
    MessageId::from_bytes(&b).expect("message id")
}

fn sender() -> Sender {
    Sender {
        uri: "mimi://example.org/u/alice".into(),
        display_name: "alice".into(),
        network: "mimi".into(),
        legacy: None,
    }
}

/// One bridged message's batch.
fn message_batch(n: u64) -> Batch {
    let id = msg_id(n);
    let portal = PortalId::new("bench").expect("portal");
    let (from, to) = (leg(n % 7), leg(100 + n % 5));
    let mut b = Batch::new();
    let rec = MessageRecord {
        portal: portal.clone(),
        seq: n,
        kind: RecordKind::Message,
        sender: sender(),
        origin: Some(from.clone()),
        excerpt: "the quick brown fox jumps over the lazy dog, again and again".into(),
        at_ms: None,
    };
    write::message(&mut b, &id, &rec);
    write::native(&mut b, &from, &NativeId(format!("$ev{n:040}:example.org")), &id, true);
    write::native(&mut b, &to, &NativeId(format!("$out{n:039}:example.org")), &id, false);
    let ev = OutboundEvent {
        portal: portal.clone(),
        leg: to.clone(),
        message_id: id,
        txn_id: TxnId::for_delivery(&id, &to),
        sender: sender(),
        kind: OutboundKind::Message {
            draft: MessageDraft::plain("the quick brown fox jumps over the lazy dog, again and again"),
            reply_to: None,
        },
        queued_at_ms: 0,
    };
    write::outbox(&mut b, n, &ev);
    write::next_seq(&mut b, &portal, n + 1);
    b
}

#[derive(Default)]
struct Measured {
    batches: u64,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// `iters` commits spread over `writers` concurrent tasks; returns the wall time and records every latency.
async fn run(store: &Store, next: &AtomicU64, writers: usize, iters: u64, m: &Mutex<Measured>) -> Duration {
    let per = iters.div_ceil(writers as u64);
    let start = Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let store = store.clone();
            let count = per.min(iters.saturating_sub(per * w as u64));
            let first = next.fetch_add(count, Ordering::Relaxed);
            tokio::spawn(async move {
                let mut lat = Vec::with_capacity(count as usize);
                for n in first..first + count {
                    let b = message_batch(n);
                    let t = Instant::now();
                    store.commit(b).await.expect("durable commit");
                    lat.push(t.elapsed());
                }
                lat
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("writer task"));
    }
    let elapsed = start.elapsed();
    let mut g = m.lock().expect("measurements");
    g.batches += all.len() as u64;
    g.elapsed += elapsed;
    g.latencies.extend(all);
    elapsed
}

fn dir_size(p: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let (mut len, mut alloc) = (0, 0);
    for e in std::fs::read_dir(p).expect("read_dir") {
        let e = e.expect("entry");
        let md = e.metadata().expect("metadata");
        if md.is_dir() {
            let (l, a) = dir_size(&e.path());
            len += l;
            alloc += a;
        } else {
            len += md.len();
            alloc += md.blocks() * 512;
        }
    }
    (len, alloc)
}

struct SizeRow {
    backend: Backend,
    apparent: u64,
    allocated: u64,
    write_time: Duration,
}

/// The PostgreSQL cluster of this run, and a new database in it for each data directory.
struct Postgres {
    cluster: harness::Postgres,
    databases: AtomicU64,
}

impl Postgres {
    /// A fresh database's connection settings (`None` for the embedded backends); its name.
    fn database(&self, backend: Backend) -> Option<(mimi_store::PostgresConfig, String)> {
        if backend != Backend::Postgres {
            return None;
        }
        let name = format!("bench{}", self.databases.fetch_add(1, Ordering::Relaxed));
        let url = self.cluster.create_database(&name).expect("create a database");
        Some((mimi_store::PostgresConfig::new(url), name))
    }
}

/// Writes 1 000 000 ID-map entries in durable batches and measures the data directory (PostgreSQL: its table).
fn size_on_disk(backend: Backend, pg: &Postgres) -> SizeRow {
    let d = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temporary directory");
    let dir = d.path().join("data");
    let database = pg.database(backend);
    let kv: Arc<dyn KvStore> =
        schema::open_backend_at(&dir, Some(backend), database.as_ref().map(|(c, _)| c)).expect("open");
    schema::check_schema(kv.as_ref(), &dir, true, &bridge_core::SCHEMA).expect("schema");
    let start = Instant::now();
    let mut n = 0u64;
    while n < ID_MAP_ENTRIES {
        let mut b = Batch::new();
        for i in n..(n + ENTRIES_PER_BATCH).min(ID_MAP_ENTRIES) {
            write::native(&mut b, &leg(i % 16), &NativeId(format!("$ev{i:040}:example.org")), &msg_id(i), true);
        }
        kv.write(&[b]).expect("durable write");
        n += ENTRIES_PER_BATCH;
    }
    kv.flush().expect("flush");
    let write_time = start.elapsed();
    drop(kv);
    let (apparent, allocated) = match &database {
        Some((_, name)) => {
            let size = pg.cluster.psql(name, "SELECT pg_total_relation_size('mimi_kv')").expect("table size");
            let bytes = size.trim().parse().expect("a size in bytes");
            (bytes, bytes)
        }
        None => dir_size(&dir),
    };
    SizeRow { backend, apparent, allocated, write_time }
}

fn main() {
    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
        .configure_from_args();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let pg = Postgres {
        cluster: harness::Postgres::start().expect("PostgreSQL (installed by ./scripts/test)"),
        databases: AtomicU64::new(0),
    };
    let backends = [Backend::Sled, Backend::Redb, Backend::Postgres];
    let mut rows: Vec<(Backend, usize, Measured)> = Vec::new();
    let mut dirs = Vec::new();
    for backend in backends {
        let d = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temporary directory");
        let database = pg.database(backend);
        let store = bridge_core::open_store_at(
            &d.path().join("data"),
            Some(backend),
            database.as_ref().map(|(c, _)| c),
            CommitConfig::default(),
        )
        .expect("open");
        let next = AtomicU64::new(0);
        let mut group = c.benchmark_group(format!("commit_{backend}"));
        group.throughput(Throughput::Elements(1));
        for writers in WRITERS {
            let m = Mutex::new(Measured::default());
            group.bench_function(format!("{writers}_writers"), |b| {
                b.iter_custom(|iters| rt.block_on(run(&store, &next, writers, iters, &m)));
            });
            rows.push((backend, writers, m.into_inner().expect("measurements")));
        }
        group.finish();
        drop(store);
        dirs.push(d);
    }
    c.final_summary();

    let sizes: Vec<SizeRow> = backends.into_iter().map(|b| size_on_disk(b, &pg)).collect();

    println!();
    println!("== store summary (durable = acknowledged by group commit; latency = commit → ack) ==");
    println!("{:<8} {:>8} {:>12} {:>10} {:>10} {:>10}", "store", "writers", "batches/s", "p50 ms", "p99 ms", "commits");
    for (backend, writers, mut m) in rows {
        m.latencies.sort();
        let rate = m.batches as f64 / m.elapsed.as_secs_f64().max(f64::EPSILON);
        println!(
            "{:<8} {:>8} {:>12.0} {:>10.3} {:>10.3} {:>10}",
            backend.name(),
            writers,
            rate,
            percentile(&m.latencies, 0.50).as_secs_f64() * 1e3,
            percentile(&m.latencies, 0.99).as_secs_f64() * 1e3,
            m.batches
        );
    }
    println!();
    println!(
        "size on disk after {ID_MAP_ENTRIES} ID-map entries ({} keys), {ENTRIES_PER_BATCH} entries per durable batch:",
        2 * ID_MAP_ENTRIES
    );
    println!("{:<8} {:>14} {:>14} {:>12}", "store", "apparent MiB", "allocated MiB", "write s");
    for s in sizes {
        println!(
            "{:<8} {:>14.1} {:>14.1} {:>12.1}",
            s.backend.name(),
            s.apparent as f64 / 1048576.0,
            s.allocated as f64 / 1048576.0,
            s.write_time.as_secs_f64()
        );
    }
}
