//! The PostgreSQL backend (tokio-postgres 0.7, TLS by rustls), for operators who run the bridge as an
//! active/standby pair on a shared database.
//!
//! One table, `mimi_kv (tree, key, value)`, holds every tree; keys are `bytea`, which PostgreSQL orders bytewise,
//! so prefix scans are index range scans as on the embedded backends. [`KvStore::write`] applies all the batches it
//! is given in **one transaction** (group commit, as with redb): the writes are folded into their final value per
//! key and sent as one `DELETE` and one `INSERT … ON CONFLICT` over arrays, and the writers hear of success only
//! after `COMMIT` returned (`synchronous_commit = on`).
//!
//! Three connections: one for writes (only ever one transaction at a time), one for reads (pipelined, shared by
//! every reader; it sees only committed data, so a writer reads its own writes once its commit returned), and one
//! for the leader lease ([`lease`]). A lost connection is not re-established: [`KvStore::health`] reports it,
//! the store fails (fail-stop) and the daemon exits, and its supervisor restarts it, as after a disk failure with
//! the embedded backends.

mod connect;
pub mod lease;
mod schema_sql;

pub use connect::{NETWORK_TIMEOUT, PostgresConfig};
pub use lease::Lease;

use super::kv::{Batch, Entries, KvStore, Op, StoreError, prefix_end};
use connect::Runtime;
use lease::{LeaseState, Renewal};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_postgres::{Client, Statement};

const GET: &str = "SELECT value FROM mimi_kv WHERE tree = $1 AND key = $2";
const SCAN: &str = "SELECT key, value FROM mimi_kv WHERE tree = $1 AND key >= $2 AND key < $3 ORDER BY key";
const SCAN_OPEN: &str = "SELECT key, value FROM mimi_kv WHERE tree = $1 AND key >= $2 ORDER BY key";
const PAGE: &str = "SELECT key, value FROM mimi_kv WHERE tree = $1 AND key >= $2 AND key < $3 ORDER BY key LIMIT $4";
const PAGE_OPEN: &str = "SELECT key, value FROM mimi_kv WHERE tree = $1 AND key >= $2 ORDER BY key LIMIT $3";
/// Tree names by skip scan: one index probe per tree, not a walk over every key.
const TREES: &str = "WITH RECURSIVE t(tree) AS (
         (SELECT tree FROM mimi_kv ORDER BY tree LIMIT 1)
         UNION ALL
         SELECT (SELECT k.tree FROM mimi_kv k WHERE k.tree > t.tree ORDER BY k.tree LIMIT 1) FROM t
         WHERE t.tree IS NOT NULL
     ) SELECT tree FROM t WHERE tree IS NOT NULL";
const DELETE: &str = "DELETE FROM mimi_kv k USING unnest($1::text[], $2::bytea[]) AS d(tree, key)
     WHERE k.tree = d.tree AND k.key = d.key";
const UPSERT: &str = "INSERT INTO mimi_kv (tree, key, value)
     SELECT * FROM unnest($1::text[], $2::bytea[], $3::bytea[])
     ON CONFLICT (tree, key) DO UPDATE SET value = EXCLUDED.value";

/// The read connection's prepared statements.
struct Reads {
    client: Arc<Client>,
    get: Statement,
    scan: Statement,
    scan_open: Statement,
    page: Statement,
    page_open: Statement,
    trees: Statement,
}

/// The write connection's prepared statements; the mutex keeps one transaction at a time on it.
struct Writes {
    client: Arc<Client>,
    fence: Statement,
    delete: Statement,
    upsert: Statement,
}

/// A PostgreSQL database holding every tree, written only while this daemon holds the leader lease.
pub struct PostgresStore {
    server: String,
    reads: Reads,
    writes: Mutex<Writes>,
    /// How long the lease lasts: also the longest a write transaction may take.
    lease_length: Duration,
    lease: Lease,
    lease_state: Arc<LeaseState>,
    lease_client: Arc<Client>,
    stop_renewing: Option<tokio::sync::oneshot::Sender<()>>,
    rt: Option<Runtime>,
}

impl PostgresStore {
    /// Connects, brings the database schema up to date, takes the leader lease (waiting for it if
    /// [`PostgresConfig::wait_for_lease`], failing at once otherwise) and starts renewing it.
    pub fn open(cfg: &PostgresConfig) -> Result<Self, StoreError> {
        let server = cfg.display();
        let fail = |message: String| StoreError::Backend { backend: "postgres", path: PathBuf::from(&server), message };
        let rt = Runtime::new()?;
        let lease_client = connect::connect(&rt, cfg)?;
        let c = lease_client.clone();
        rt.run(async move { schema_sql::migrate(&c).await })?.map_err(&fail)?;
        let (lease, asked) = acquire(&rt, &lease_client, cfg, &fail)?;
        // Valid from when we asked, not from when the answer came: the server's expiry is later than ours.
        let lease_state = Arc::new(LeaseState::new(cfg.lease, asked));
        // Renewing starts at once: the other connections may take a while (TLS, a slow server).
        let (stop_renewing, stopped) = tokio::sync::oneshot::channel();
        rt.spawn(renew(lease_client.clone(), lease.clone(), lease_state.clone(), cfg.lease, stopped));
        tracing::info!(server = %server, holder = %lease.holder, epoch = lease.epoch, "PostgreSQL store: leader lease taken");
        let connections = connect_data(&rt, cfg).map_err(|e| match e {
            StoreError::Backend { .. } => e,
            other => fail(other.to_string()),
        });
        let (reads, writes) = match connections {
            Ok(c) => c,
            Err(e) => {
                // Hand the lease back instead of leaving it to run out: a standby takes over at once.
                let _ = stop_renewing.send(());
                release(&rt, &lease_client, &lease);
                return Err(e);
            }
        };
        Ok(Self {
            server,
            reads,
            writes: Mutex::new(writes),
            lease_length: cfg.lease,
            lease,
            lease_state,
            lease_client,
            stop_renewing: Some(stop_renewing),
            rt: Some(rt),
        })
    }

    /// The lease this store holds (its epoch is the fencing token).
    pub fn lease(&self) -> &Lease {
        &self.lease
    }

    fn e(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError::Backend { backend: "postgres", path: PathBuf::from(&self.server), message: e.to_string() }
    }

    fn rt(&self) -> Result<&Runtime, StoreError> {
        self.rt.as_ref().ok_or(StoreError::Closed)
    }

    /// Runs a query on the read connection.
    fn read<T: Send + 'static>(
        &self,
        q: impl FnOnce(&Reads) -> (Statement, Vec<Param>),
        map: impl FnOnce(Vec<tokio_postgres::Row>) -> T + Send + 'static,
    ) -> Result<T, StoreError> {
        let (stmt, params) = q(&self.reads);
        let client = self.reads.client.clone();
        let rows = self.rt()?.run(async move {
            let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = params.iter().map(Param::as_sql).collect();
            client.query(&stmt, &refs).await
        })?;
        rows.map(map).map_err(|e| self.e(e))
    }
}

/// An owned query parameter (the query runs on the store's runtime, so it cannot borrow from the caller).
enum Param {
    Text(String),
    Bytes(Vec<u8>),
    Int(i64),
}

impl Param {
    fn as_sql(&self) -> &(dyn tokio_postgres::types::ToSql + Sync) {
        match self {
            Param::Text(s) => s,
            Param::Bytes(b) => b,
            Param::Int(i) => i,
        }
    }
}

fn entries(rows: Vec<tokio_postgres::Row>) -> Entries {
    rows.into_iter().map(|r| (r.get::<_, Vec<u8>>(0), r.get::<_, Vec<u8>>(1))).collect()
}

/// The read and write connections with their prepared statements.
fn connect_data(rt: &Runtime, cfg: &PostgresConfig) -> Result<(Reads, Writes), StoreError> {
    let read_client = connect::connect(rt, cfg)?;
    let write_client = connect::connect(rt, cfg)?;
    let (rc, wc) = (read_client.clone(), write_client.clone());
    // A daemon stopped in the middle of a transaction must not hold the lease row's lock for long: the server ends
    // such a session after a third of the lease; no statement waits longer than the lease for a lock.
    let idle_ms = (cfg.lease.as_millis() / 3).max(100);
    let lock_ms = cfg.lease.as_millis().max(100);
    let prepared = rt.run(async move {
        wc.batch_execute(&format!(
            "SET synchronous_commit = on; SET idle_in_transaction_session_timeout = {idle_ms}; \
             SET lock_timeout = {lock_ms}"
        ))
        .await?;
        let reads = (
            rc.prepare(GET).await?,
            rc.prepare(SCAN).await?,
            rc.prepare(SCAN_OPEN).await?,
            rc.prepare(PAGE).await?,
            rc.prepare(PAGE_OPEN).await?,
            rc.prepare(TREES).await?,
        );
        let writes = (wc.prepare(lease::FENCE).await?, wc.prepare(DELETE).await?, wc.prepare(UPSERT).await?);
        Ok::<_, tokio_postgres::Error>((reads, writes))
    })?;
    let ((get, scan, scan_open, page, page_open, trees), (fence, delete, upsert)) =
        prepared.map_err(|e| StoreError::Backend {
            backend: "postgres",
            path: PathBuf::from(cfg.display()),
            message: format!("preparing statements: {e}"),
        })?;
    Ok((
        Reads { client: read_client, get, scan, scan_open, page, page_open, trees },
        Writes { client: write_client, fence, delete, upsert },
    ))
}

/// Gives the lease up (within 2 s), so that a standby takes over at once.
fn release(rt: &Runtime, client: &Arc<Client>, lease: &Lease) {
    let (c, l) = (client.clone(), lease.clone());
    let released = rt.run(async move {
        tokio::time::timeout(Duration::from_secs(2), c.execute(lease::RELEASE, &[&l.holder, &l.epoch])).await
    });
    match released {
        Ok(Ok(Ok(_))) => tracing::info!(epoch = lease.epoch, "leader lease released"),
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "could not release the leader lease; it runs out by itself"),
        _ => tracing::warn!("could not release the leader lease in time; it runs out by itself"),
    }
}

/// Takes the lease, or waits for it (a standby), or says who holds it.
fn acquire(
    rt: &Runtime,
    client: &Arc<Client>,
    cfg: &PostgresConfig,
    fail: &impl Fn(String) -> StoreError,
) -> Result<(Lease, Instant), StoreError> {
    let holder = Lease::holder_name();
    let secs = cfg.lease.as_secs_f64();
    let mut announced: Option<String> = None;
    loop {
        let (c, h) = (client.clone(), holder.clone());
        let asked = Instant::now();
        let taken = rt.run(async move {
            let row = c.query_opt(lease::ACQUIRE, &[&h, &secs]).await?;
            match row {
                Some(r) => Ok(Ok(r.get::<_, i64>(0))),
                None => {
                    let r = c.query_one(lease::HOLDER, &[]).await?;
                    Ok(Err((r.get::<_, String>(0), r.get::<_, f64>(1))))
                }
            }
        })?;
        match taken.map_err(|e: tokio_postgres::Error| fail(format!("taking the leader lease: {e}")))? {
            Ok(epoch) => return Ok((Lease { holder, epoch }, asked)),
            Err((other, left)) if !cfg.wait_for_lease => {
                return Err(fail(format!(
                    "another mimi-bridge ({other}) is active on this database (its lease runs {left:.1} s more unless \
                     renewed): stop it first (a daemon waits for it instead with `bridge.postgres_standby = true`)"
                )));
            }
            Err((other, _)) => {
                if announced.as_deref() != Some(other.as_str()) {
                    tracing::info!(active = %other, "standby: another mimi-bridge is active; waiting for its lease");
                    announced = Some(other);
                }
                std::thread::sleep(cfg.lease / 5);
            }
        }
    }
}

/// Renews the lease every third of its length until told to stop or the lease is lost.
async fn renew(
    client: Arc<Client>,
    lease: Lease,
    state: Arc<LeaseState>,
    length: Duration,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let secs = length.as_secs_f64();
    let mut wait = state.interval();
    loop {
        tokio::select! {
            _ = &mut stop => return,
            () = tokio::time::sleep(wait) => {}
        }
        let sent = Instant::now();
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 3] = [&lease.holder, &lease.epoch, &secs];
        let result = match tokio::time::timeout(state.interval(), client.execute(lease::RENEW, &params)).await {
            Ok(Ok(n)) => Ok(n == 1),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("no answer".into()),
        };
        match state.renewed(sent, result, Instant::now()) {
            Renewal::Again(next) => wait = next,
            Renewal::Lost => {
                tracing::error!(reason = ?state.lost(), epoch = lease.epoch, "leader lease lost: this daemon writes nothing more");
                return;
            }
        }
    }
}

impl KvStore for PostgresStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    fn get(&self, tree: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let params = vec![Param::Text(tree.to_owned()), Param::Bytes(key.to_vec())];
        self.read(|r| (r.get.clone(), params), |rows| rows.into_iter().next().map(|r| r.get::<_, Vec<u8>>(0)))
    }

    fn scan_prefix(&self, tree: &str, prefix: &[u8]) -> Result<Entries, StoreError> {
        let mut params = vec![Param::Text(tree.to_owned()), Param::Bytes(prefix.to_vec())];
        let end = prefix_end(prefix);
        let open = end.is_none();
        params.extend(end.map(Param::Bytes));
        self.read(|r| (if open { r.scan_open.clone() } else { r.scan.clone() }, params), entries)
    }

    fn scan_prefix_from(&self, tree: &str, prefix: &[u8], from: &[u8], limit: usize) -> Result<Entries, StoreError> {
        let mut params = vec![Param::Text(tree.to_owned()), Param::Bytes(from.max(prefix).to_vec())];
        let end = prefix_end(prefix);
        let open = end.is_none();
        params.extend(end.map(Param::Bytes));
        params.push(Param::Int(i64::try_from(limit).unwrap_or(i64::MAX)));
        self.read(|r| (if open { r.page_open.clone() } else { r.page.clone() }, params), entries)
    }

    fn write(&self, batches: &[Batch]) -> Result<(), StoreError> {
        if let Some(why) = self.lease_state.refused_at(Instant::now()) {
            return Err(self.e(why));
        }
        let (deletes, puts) = fold(batches);
        if deletes.0.is_empty() && puts.0.is_empty() {
            return Ok(());
        }
        let writes = self.writes.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (client, fence, delete, upsert) =
            (writes.client.clone(), writes.fence.clone(), writes.delete.clone(), writes.upsert.clone());
        let (holder, epoch) = (self.lease.holder.clone(), self.lease.epoch);
        let limit = self.lease_length;
        let transaction = async move {
            client.batch_execute("BEGIN").await.map_err(|e| Written::Failed(e.to_string()))?;
            let body = async {
                if client.query_opt(&fence, &[&holder, &epoch]).await?.is_none() {
                    return Ok(false);
                }
                if !deletes.0.is_empty() {
                    client.execute(&delete, &[&deletes.0, &deletes.1]).await?;
                }
                if !puts.0.is_empty() {
                    client.execute(&upsert, &[&puts.0, &puts.1, &puts.2]).await?;
                }
                Ok::<_, tokio_postgres::Error>(true)
            };
            match body.await {
                Ok(true) => client.batch_execute("COMMIT").await.map_err(|e| {
                    Written::Failed(format!("COMMIT failed, so the outcome is unknown (it may be committed): {e}"))
                }),
                Ok(false) => {
                    let _ = client.batch_execute("ROLLBACK").await;
                    Err(Written::Fenced)
                }
                Err(e) => {
                    let _ = client.batch_execute("ROLLBACK").await;
                    Err(Written::Failed(e.to_string()))
                }
            }
        };
        // A write that hangs (a synchronous replica gone, a table lock) holds the lease row: it must not outlast
        // the lease, or no standby could take over. The store then fails and the daemon exits, which ends the
        // connection and its transaction.
        let outcome = self.rt()?.run(async move {
            tokio::time::timeout(limit, transaction).await.unwrap_or_else(|_| {
                Err(Written::Failed(format!(
                    "no answer within {} s, so the outcome is unknown (it may be committed)",
                    limit.as_secs_f64()
                )))
            })
        })?;
        drop(writes);
        match outcome {
            Ok(()) => Ok(()),
            Err(Written::Fenced) => {
                let why = format!(
                    "the leader lease (epoch {}) is no longer this daemon's: another mimi-bridge is active",
                    self.lease.epoch
                );
                self.lease_state.lose(why.clone());
                Err(self.e(why))
            }
            Err(Written::Failed(e)) => Err(self.e(e)),
        }
    }

    fn flush(&self) -> Result<(), StoreError> {
        // Every commit is already durable.
        Ok(())
    }

    fn trees(&self) -> Result<Vec<String>, StoreError> {
        self.read(|r| (r.trees.clone(), Vec::new()), |rows| rows.into_iter().map(|r| r.get::<_, String>(0)).collect())
    }

    fn lease_epoch(&self) -> Option<i64> {
        Some(self.lease.epoch)
    }

    fn health(&self) -> Result<(), StoreError> {
        if let Some(why) = self.lease_state.refused_at(Instant::now()) {
            return Err(self.e(why));
        }
        let writes = self.writes.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if self.reads.client.is_closed() || writes.client.is_closed() || self.lease_client.is_closed() {
            return Err(self.e("the connection to the server was lost"));
        }
        Ok(())
    }
}

/// How a write transaction ended, if not committed.
enum Written {
    /// The fence found the lease gone.
    Fenced,
    /// The server refused or the connection failed.
    Failed(String),
}

/// Column arrays for `DELETE` (trees, keys) and `INSERT` (trees, keys, values).
type Deletes = (Vec<String>, Vec<Vec<u8>>);
type Puts = (Vec<String>, Vec<Vec<u8>>, Vec<Vec<u8>>);

/// The final value of every key the batches touch, in the order they were written: one transaction applies the
/// whole group, so only the last write of a key counts, and an `INSERT … ON CONFLICT` may touch a row only once.
fn fold(batches: &[Batch]) -> (Deletes, Puts) {
    let mut last: BTreeMap<(&str, &[u8]), Option<&[u8]>> = BTreeMap::new();
    for op in batches.iter().flat_map(|b| &b.ops) {
        match op {
            Op::Put { tree, key, value } => last.insert((tree, key), Some(value)),
            Op::Delete { tree, key } => last.insert((tree, key), None),
        };
    }
    let (mut deletes, mut puts): (Deletes, Puts) = Default::default();
    for ((tree, key), value) in last {
        match value {
            Some(v) => {
                puts.0.push(tree.to_owned());
                puts.1.push(key.to_vec());
                puts.2.push(v.to_vec());
            }
            None => {
                deletes.0.push(tree.to_owned());
                deletes.1.push(key.to_vec());
            }
        }
    }
    (deletes, puts)
}

impl Drop for PostgresStore {
    /// Stops renewing and gives the lease up, so that a standby takes over at once; a daemon killed without this
    /// leaves the lease to run out.
    fn drop(&mut self) {
        if let Some(stop) = self.stop_renewing.take() {
            let _ = stop.send(());
        }
        if let Some(rt) = self.rt.take() {
            if self.lease_state.lost().is_none() {
                release(&rt, &self.lease_client, &self.lease);
            }
            drop(rt);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_group_folds_to_the_last_write_of_each_key() {
        let mut a = Batch::new();
        a.put("t", b"k1".to_vec(), b"v1".to_vec()).put("t", b"k2".to_vec(), b"v2".to_vec());
        let mut b = Batch::new();
        b.delete("t", b"k1".to_vec()).put("t", b"k2".to_vec(), b"v3".to_vec()).put("u", b"k1".to_vec(), b"w".to_vec());
        let mut c = Batch::new();
        c.delete("u", b"gone".to_vec());
        let (deletes, puts) = fold(&[a, b, c]);
        assert_eq!(deletes, (vec!["t".to_owned(), "u".to_owned()], vec![b"k1".to_vec(), b"gone".to_vec()]));
        assert_eq!(
            puts,
            (
                vec!["t".to_owned(), "u".to_owned()],
                vec![b"k2".to_vec(), b"k1".to_vec()],
                vec![b"v3".to_vec(), b"w".to_vec()]
            )
        );
    }
}
