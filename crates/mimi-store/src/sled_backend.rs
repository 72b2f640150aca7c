//! The sled backend (sled 0.34.7).
//!
//! All trees live in sled's default tree under composite keys (see [`super::kv`]), so a [`Batch`] is one
//! `sled::Batch` — atomic without sled's multi-tree transactions. sled makes writes durable only on `flush()`, so
//! [`KvStore::write`] applies every batch and then flushes once.

use super::kv::{Batch, Entries, KvStore, Op, StoreError, composite_key, prefix_end, tree_names};
use std::path::{Path, PathBuf};

/// How long [`SledStore::open`] waits for sled's file lock (sled lets go of it only after its I/O threads end, which
/// took over 2 s on a loaded 2-core machine).
pub const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// A sled database holding every tree.
pub struct SledStore {
    db: sled::Db,
    path: PathBuf,
}

impl SledStore {
    /// Opens (or creates) the database in directory `path`.
    ///
    /// sled releases its file lock only when its last internal reference goes, which can be a moment after the
    /// previous `Db` was dropped (its I/O threads finish first). So a lock held in this process or by a process
    /// that is exiting is waited for, up to [`LOCK_WAIT`]; after that the error says the directory is in use.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let deadline = std::time::Instant::now() + LOCK_WAIT;
        loop {
            let opened = sled::Config::new()
                .path(path)
                // We flush explicitly after every group of batches; the background flusher would only add fsyncs.
                .flush_every_ms(None)
                .open();
            match opened {
                Ok(db) => return Ok(Self { db, path: path.to_owned() }),
                // sled reports a held lock either as WouldBlock or wrapped as "could not acquire lock on …".
                Err(sled::Error::Io(e))
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.to_string().contains("could not acquire lock") =>
                {
                    if std::time::Instant::now() >= deadline {
                        return Err(StoreError::Backend {
                            backend: "sled",
                            path: path.to_owned(),
                            message: format!(
                                "the database is locked by another process (is mimi-bridge already running on this \
                                 data directory?): {e}"
                            ),
                        });
                    }
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(e) => return Err(err(path, e)),
            }
        }
    }

    fn e(&self, e: sled::Error) -> StoreError {
        err(&self.path, e)
    }
}

fn err(path: &Path, e: sled::Error) -> StoreError {
    StoreError::Backend { backend: "sled", path: path.to_owned(), message: e.to_string() }
}

impl KvStore for SledStore {
    fn backend(&self) -> &'static str {
        "sled"
    }

    fn get(&self, tree: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.db.get(composite_key(tree, key)).map_err(|e| self.e(e))?.map(|v| v.to_vec()))
    }

    fn scan_prefix(&self, tree: &str, prefix: &[u8]) -> Result<Entries, StoreError> {
        let start = composite_key(tree, prefix);
        let skip = tree.len() + 1;
        let mut out = Vec::new();
        for item in self.db.scan_prefix(&start) {
            let (k, v) = item.map_err(|e| self.e(e))?;
            out.push((k[skip..].to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    fn scan_prefix_from(&self, tree: &str, prefix: &[u8], from: &[u8], limit: usize) -> Result<Entries, StoreError> {
        let start = composite_key(tree, from.max(prefix));
        let skip = tree.len() + 1;
        let mut out = Vec::new();
        let items: Box<dyn Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>> =
            match prefix_end(&composite_key(tree, prefix)) {
                Some(end) => Box::new(self.db.range(start..end)),
                None => Box::new(self.db.range(start..)),
            };
        for item in items.take(limit) {
            let (k, v) = item.map_err(|e| self.e(e))?;
            out.push((k[skip..].to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    fn write(&self, batches: &[Batch]) -> Result<(), StoreError> {
        for b in batches {
            let mut sb = sled::Batch::default();
            for op in &b.ops {
                match op {
                    Op::Put { tree, key, value } => sb.insert(composite_key(tree, key), value.as_slice()),
                    Op::Delete { tree, key } => sb.remove(composite_key(tree, key)),
                }
            }
            self.db.apply_batch(sb).map_err(|e| self.e(e))?;
        }
        self.flush()
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().map_err(|e| self.e(e))?;
        Ok(())
    }

    fn trees(&self) -> Result<Vec<String>, StoreError> {
        tree_names(|cursor| match self.db.range(cursor.to_vec()..).next() {
            Some(item) => Ok(Some(item.map_err(|e| self.e(e))?.0.to_vec())),
            None => Ok(None),
        })
    }
}
