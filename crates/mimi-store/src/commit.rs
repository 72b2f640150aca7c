//! Group commit: many writers' batches coalesced into one durable write.
//!
//! A single committer thread owns the writes. Writers hand it a [`Batch`] and wait; the committer takes every
//! batch that is queued (up to [`CommitConfig::max_batches`], waiting at most [`CommitConfig::max_delay`] for
//! more), writes them with one [`KvStore::write`] — one fsync — and then wakes every writer of the group. While
//! it is writing, the next group queues up, so under load the number of fsyncs per batch falls by itself.
//!
//! A writer's `commit` returns `Ok` only after its data is durable.
//!
//! **Fail-stop.** Once a durable write fails, or the backend says it can write nothing more
//! ([`KvStore::health`]: a lost PostgreSQL connection or leader lease), the store writes nothing more: every later commit fails with
//! [`StoreError::Failed`] and [`Store::failed`] turns `true`. What its users built in memory on the failed batch
//! (a hub's next sequence number, an MLS epoch, a portal's counters) is then ahead of the disk, and a later batch
//! written on top of it would store a state that depends on the lost one (log entry N+1 without N). The daemon
//! stops on it; a restart continues from what is on disk.

use super::kv::{Batch, Entries, KvStore, Op, StoreError};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, TryRecvError};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Tuning of the committer.
#[derive(Debug, Clone)]
pub struct CommitConfig {
    /// How long the committer may hold a group open waiting for more batches after the first arrived. Zero (the
    /// default) means: take what is queued and write at once; coalescing then comes only from writers that queue
    /// while a write is in progress. This is the upper bound on the delay group commit adds to one write.
    pub max_delay: Duration,
    /// Most batches in one group.
    pub max_batches: usize,
}

impl Default for CommitConfig {
    fn default() -> Self {
        Self { max_delay: Duration::ZERO, max_batches: 1024 }
    }
}

/// What the committer has made durable since the store was opened, for metrics: how many durable writes (one
/// fsync, or one transaction, each) carried how many batches, and how many bytes. Writes per batch is what group
/// commit saves; writes per bridged message is what a message costs in fsyncs; bytes per operation is what a
/// large record rewritten costs everyone whose batch shares the write.
#[derive(Debug, Default)]
pub struct CommitStats {
    writes: AtomicU64,
    batches: AtomicU64,
    bytes: AtomicU64,
}

impl CommitStats {
    /// Durable writes made.
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }

    /// Batches those writes carried.
    pub fn batches(&self) -> u64 {
        self.batches.load(Ordering::Relaxed)
    }

    /// Bytes those batches wrote: the keys and values they put, the keys they deleted.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
}

/// The bytes `batches` write ([`CommitStats::bytes`]).
fn bytes_of(batches: &[Batch]) -> u64 {
    let op = |op: &Op| match op {
        Op::Put { key, value, .. } => key.len() + value.len(),
        Op::Delete { key, .. } => key.len(),
    };
    batches.iter().flat_map(|b| &b.ops).map(op).sum::<usize>() as u64
}

/// How often the committer asks the backend whether it can still write ([`KvStore::health`]).
const HEALTH_EVERY: Duration = Duration::from_secs(1);

type Reply = oneshot::Sender<Result<(), StoreError>>;

struct Job {
    batch: Batch,
    reply: Reply,
}

/// The store the rest of the bridge uses: reads go straight to the backend, writes go through group commit.
///
/// Cheap to clone. When the last clone is dropped, the committer writes what was queued, flushes and stops, and
/// the backend is closed before the drop returns (so the data directory can be opened again at once).
#[derive(Clone)]
pub struct Store {
    kv: Arc<dyn KvStore>,
    committer: Arc<Committer>,
}

/// Owns the committer thread; joins it on drop.
struct Committer {
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Set once the committer has written its last batch and stopped ([`Store::closed`]).
    closed: tokio::sync::watch::Sender<bool>,
    /// Set when a durable write failed ([`Store::failed`]).
    failed: Arc<tokio::sync::watch::Sender<bool>>,
    stats: Arc<CommitStats>,
}

impl Drop for Committer {
    fn drop(&mut self) {
        self.jobs.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.closed.send_replace(true);
    }
}

impl Store {
    /// Wraps a backend and starts its committer thread.
    pub fn new(kv: Arc<dyn KvStore>, config: CommitConfig) -> Self {
        let (tx, rx) = mpsc::channel::<Job>();
        let backend = kv.clone();
        let failed = Arc::new(tokio::sync::watch::channel(false).0);
        let failed_flag = failed.clone();
        let stats = Arc::new(CommitStats::default());
        let counted = stats.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("{}-commit", kv.backend()))
            .spawn(move || committer(backend, rx, config, &failed_flag, &counted));
        let thread = match spawned {
            Ok(t) => Some(t),
            Err(e) => {
                // Without a committer every commit reports `Closed`; say why once.
                tracing::error!(error = %e, "could not start the store's commit thread");
                None
            }
        };
        let (closed, _) = tokio::sync::watch::channel(false);
        Self { kv, committer: Arc::new(Committer { jobs: Some(tx), thread, closed, failed, stats }) }
    }

    /// What the committer has made durable so far.
    pub fn stats(&self) -> Arc<CommitStats> {
        self.committer.stats.clone()
    }

    /// Turns `true` when a durable write failed: from then on every commit fails (fail-stop, see the module docs).
    pub fn failed(&self) -> tokio::sync::watch::Receiver<bool> {
        self.committer.failed.subscribe()
    }

    /// Turns `true` once the last clone of this store is gone and its committer has stopped. The backend closes
    /// when the last reference to it goes too (usually the same moment; a backend reference handed out by
    /// [`Store::kv`] keeps it open longer). A daemon that restarts in-process waits for this.
    pub fn closed(&self) -> tokio::sync::watch::Receiver<bool> {
        self.committer.closed.subscribe()
    }

    /// Whether this store may still act: not failed, and the backend says it can write ([`KvStore::health`]: for
    /// PostgreSQL, the leader lease is this daemon's on its own clock). Cheap; asked before anything leaves the
    /// daemon on the strength of the store (a delivery), so that a daemon that lost its lease sends nothing more.
    pub fn healthy(&self) -> bool {
        !*self.committer.failed.borrow() && self.kv.health().is_ok()
    }

    /// The backend, for reads and for tools that need the raw trait.
    pub fn kv(&self) -> &Arc<dyn KvStore> {
        &self.kv
    }

    /// Reads one key.
    pub fn get(&self, tree: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.kv.get(tree, key)
    }

    /// Every entry of `tree` under `prefix`, in key order.
    pub fn scan_prefix(&self, tree: &str, prefix: &[u8]) -> Result<Entries, StoreError> {
        self.kv.scan_prefix(tree, prefix)
    }

    /// A page of a prefix scan ([`KvStore::scan_prefix_from`]).
    pub fn scan_prefix_from(
        &self,
        tree: &str,
        prefix: &[u8],
        from: &[u8],
        limit: usize,
    ) -> Result<Entries, StoreError> {
        self.kv.scan_prefix_from(tree, prefix, from, limit)
    }

    /// Queues `batch` for the next group and returns a handle that resolves once it is durable. Lets a caller
    /// pipeline several batches without waiting for each.
    pub fn commit_later(&self, batch: Batch) -> oneshot::Receiver<Result<(), StoreError>> {
        let (reply, rx) = oneshot::channel();
        let job = Job { batch, reply };
        let failed = match &self.committer.jobs {
            Some(jobs) => jobs.send(job).err().map(|mpsc::SendError(j)| j),
            None => Some(job),
        };
        if let Some(job) = failed {
            let _ = job.reply.send(Err(StoreError::Closed));
        }
        rx
    }

    /// Writes `batch` atomically and returns once it is durable.
    pub async fn commit(&self, batch: Batch) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        self.commit_later(batch).await.unwrap_or(Err(StoreError::Closed))
    }

    /// Blocking version of [`Store::commit`], for threads outside the async runtime.
    pub fn commit_blocking(&self, batch: Batch) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        self.commit_later(batch).blocking_recv().unwrap_or(Err(StoreError::Closed))
    }

    /// Makes everything written so far durable (all commits already are; this flushes backend caches). After a
    /// failed write nothing is flushed: a backend may hold part of the failed group in memory (sled applies a
    /// batch before it syncs), and those writers were told it failed.
    pub fn flush(&self) -> Result<(), StoreError> {
        if *self.committer.failed.borrow() {
            return Err(StoreError::Failed("a durable write failed earlier".into()));
        }
        self.kv.flush()
    }
}

fn committer(
    kv: Arc<dyn KvStore>,
    rx: mpsc::Receiver<Job>,
    config: CommitConfig,
    failed: &tokio::sync::watch::Sender<bool>,
    stats: &CommitStats,
) {
    let max = config.max_batches.max(1);
    let mut failure: Option<String> = None;
    let mut checked = Instant::now();
    loop {
        // Every second, busy or idle: a backend that can write nothing more fails the store even when nothing is
        // written, and even while writes keep coming (a lost read connection does not fail the writes).
        if failure.is_none() && checked.elapsed() >= HEALTH_EVERY {
            checked = Instant::now();
            if let Err(e) = kv.health() {
                tracing::error!(error = %e, "the store can write nothing more: it stops");
                failure = Some(e.to_string());
                failed.send_replace(true);
            }
        }
        let first = match rx.recv_timeout(HEALTH_EVERY) {
            Ok(j) => j,
            Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => continue,
        };
        let mut jobs = vec![first];
        let deadline = Instant::now() + config.max_delay;
        'gather: while jobs.len() < max {
            match rx.try_recv() {
                Ok(j) => {
                    jobs.push(j);
                    continue;
                }
                Err(TryRecvError::Disconnected) => break 'gather,
                Err(TryRecvError::Empty) => {}
            }
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            match rx.recv_timeout(deadline - now) {
                Ok(j) => jobs.push(j),
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
            }
        }
        let (batches, replies): (Vec<Batch>, Vec<Reply>) = jobs.into_iter().map(|j| (j.batch, j.reply)).unzip();
        if let Some(why) = &failure {
            for r in replies {
                let _ = r.send(Err(StoreError::Failed(why.clone())));
            }
            continue;
        }
        match kv.write(&batches) {
            Ok(()) => {
                stats.writes.fetch_add(1, Ordering::Relaxed);
                stats.batches.fetch_add(batches.len() as u64, Ordering::Relaxed);
                stats.bytes.fetch_add(bytes_of(&batches), Ordering::Relaxed);
                for r in replies {
                    let _ = r.send(Ok(()));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, batches = batches.len(), "durable write failed: the store writes nothing more");
                failure = Some(e.to_string());
                failed.send_replace(true);
                for r in replies {
                    let _ = r.send(Err(duplicate(&e, kv.backend())));
                }
            }
        }
    }
    // After a failure nothing more reaches the disk, not even what the backend holds of the failed group.
    if failure.is_none()
        && let Err(e) = kv.flush()
    {
        tracing::error!(error = %e, "final flush failed");
    }
}

/// A copy of `e` for each writer of a failed group (`StoreError` holds an `io::Error`, so it is not `Clone`). Keeps
/// the backend's path and message as they are instead of nesting the whole message in a path-less error.
fn duplicate(e: &StoreError, backend: &'static str) -> StoreError {
    match e {
        StoreError::Backend { backend: b, path, message } => {
            StoreError::Backend { backend: b, path: path.clone(), message: message.clone() }
        }
        StoreError::Io { path, source } => {
            StoreError::Io { path: path.clone(), source: std::io::Error::new(source.kind(), source.to_string()) }
        }
        StoreError::Closed => StoreError::Closed,
        other => StoreError::Backend { backend, path: Default::default(), message: other.to_string() },
    }
}

#[cfg(test)]
mod fail_stop_tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A backend whose first write fails.
    #[derive(Default)]
    struct FailsOnce(AtomicUsize);

    impl KvStore for FailsOnce {
        fn backend(&self) -> &'static str {
            "test"
        }
        fn get(&self, _: &str, _: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
            Ok(None)
        }
        fn scan_prefix(&self, _: &str, _: &[u8]) -> Result<Entries, StoreError> {
            Ok(Vec::new())
        }
        fn write(&self, _: &[Batch]) -> Result<(), StoreError> {
            if self.0.fetch_add(1, Ordering::SeqCst) == 0 {
                return Err(StoreError::Backend { backend: "test", path: "/x".into(), message: "disk full".into() });
            }
            Ok(())
        }
        fn flush(&self) -> Result<(), StoreError> {
            Ok(())
        }
        fn trees(&self) -> Result<Vec<String>, StoreError> {
            Ok(Vec::new())
        }
    }

    #[test]
    fn after_a_failed_write_nothing_more_is_written() {
        let kv = Arc::new(FailsOnce::default());
        let store = Store::new(kv.clone(), CommitConfig::default());
        let failed = store.failed();
        let batch = || {
            let mut b = Batch::new();
            b.put("t", b"k", b"v");
            b
        };
        assert!(matches!(store.commit_blocking(batch()), Err(StoreError::Backend { .. })));
        assert!(*failed.borrow(), "the failure is announced");
        for _ in 0..3 {
            assert!(matches!(store.commit_blocking(batch()), Err(StoreError::Failed(_))), "fail-stop");
        }
        assert_eq!(kv.0.load(Ordering::SeqCst), 1, "the backend was asked to write once");
        assert!(matches!(store.flush(), Err(StoreError::Failed(_))), "nor to flush what it holds of the failed group");
        assert_eq!((store.stats().writes(), store.stats().batches()), (0, 0), "nothing was made durable");
    }

    /// The stats count durable writes and the batches they carried: one each when writers take turns, one write
    /// for several batches queued together; and the bytes they wrote.
    #[test]
    fn the_stats_count_writes_and_the_batches_they_carry() {
        let dir = tempfile::tempdir().expect("tempdir");
        let kv = Arc::new(crate::redb_backend::RedbStore::open(&dir.path().join("s.redb")).expect("open"));
        let config = CommitConfig { max_delay: Duration::from_millis(500), ..CommitConfig::default() };
        let store = Store::new(kv, config);
        let batch = |k: &[u8]| {
            let mut b = Batch::new();
            b.put("t", k, b"v");
            b
        };
        store.commit_blocking(batch(b"a")).expect("commit");
        store.commit_blocking(batch(b"b")).expect("commit");
        assert_eq!((store.stats().writes(), store.stats().batches()), (2, 2));
        let queued: Vec<_> = [b"c", b"d", b"e"].iter().map(|k| store.commit_later(batch(*k))).collect();
        for q in queued {
            q.blocking_recv().expect("reply").expect("commit");
        }
        assert_eq!((store.stats().writes(), store.stats().batches()), (3, 5), "three batches, one write");
        // Five puts of a one-byte key and a one-byte value, and a delete of a three-byte key.
        let mut b = Batch::new();
        b.delete("t", b"abc");
        store.commit_blocking(b).expect("commit");
        assert_eq!(store.stats().bytes(), 5 * 2 + 3);
    }
}
