//! The redb backend (redb 4).
//!
//! One table, `kv`, holds every tree under composite keys (see [`super::kv`]). [`KvStore::write`] applies all the
//! batches it is given in one write transaction committed with `Durability::Immediate` (one fsync for the group).
//! A transaction is all-or-nothing, so each batch is atomic (the group as a whole is too).

use super::kv::{Batch, Entries, KvStore, Op, StoreError, composite_key, prefix_end, tree_names};
use redb::{Database, Durability, ReadableDatabase, TableDefinition};
use std::path::{Path, PathBuf};

const KV: TableDefinition<&[u8], &[u8]> = TableDefinition::new("kv");

/// redb's page cache. Its default (1 GiB) grows with whatever is read — at a start that reads every room, the whole
/// file — and stays; the kernel's page cache keeps the file's hot pages beyond this.
const CACHE_BYTES: usize = 16 << 20;

/// A redb database file holding every tree.
pub struct RedbStore {
    db: Database,
    path: PathBuf,
}

impl RedbStore {
    /// Opens (or creates) the database file `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = Database::builder().set_cache_size(CACHE_BYTES).create(path).map_err(|e| err(path, e))?;
        let s = Self { db, path: path.to_owned() };
        // Create the table up front so reads never see "table does not exist".
        let tx = s.db.begin_write().map_err(|e| s.e(e))?;
        tx.open_table(KV).map_err(|e| s.e(e))?;
        tx.commit().map_err(|e| s.e(e))?;
        Ok(s)
    }

    fn e(&self, e: impl std::fmt::Display) -> StoreError {
        err(&self.path, e)
    }
}

fn err(path: &Path, e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend { backend: "redb", path: path.to_owned(), message: e.to_string() }
}

impl KvStore for RedbStore {
    fn backend(&self) -> &'static str {
        "redb"
    }

    fn get(&self, tree: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let tx = self.db.begin_read().map_err(|e| self.e(e))?;
        let t = tx.open_table(KV).map_err(|e| self.e(e))?;
        let v = t.get(composite_key(tree, key).as_slice()).map_err(|e| self.e(e))?;
        Ok(v.map(|g| g.value().to_vec()))
    }

    fn scan_prefix(&self, tree: &str, prefix: &[u8]) -> Result<Entries, StoreError> {
        let tx = self.db.begin_read().map_err(|e| self.e(e))?;
        let t = tx.open_table(KV).map_err(|e| self.e(e))?;
        let start = composite_key(tree, prefix);
        let skip = tree.len() + 1;
        let end = prefix_end(&start);
        let range = match &end {
            Some(end) => t.range(start.as_slice()..end.as_slice()),
            None => t.range(start.as_slice()..),
        }
        .map_err(|e| self.e(e))?;
        let mut out = Vec::new();
        for item in range {
            let (k, v) = item.map_err(|e| self.e(e))?;
            out.push((k.value()[skip..].to_vec(), v.value().to_vec()));
        }
        Ok(out)
    }

    fn scan_prefix_from(&self, tree: &str, prefix: &[u8], from: &[u8], limit: usize) -> Result<Entries, StoreError> {
        let tx = self.db.begin_read().map_err(|e| self.e(e))?;
        let t = tx.open_table(KV).map_err(|e| self.e(e))?;
        let start = composite_key(tree, from.max(prefix));
        let skip = tree.len() + 1;
        let end = prefix_end(&composite_key(tree, prefix));
        let range = match &end {
            Some(end) => t.range(start.as_slice()..end.as_slice()),
            None => t.range(start.as_slice()..),
        }
        .map_err(|e| self.e(e))?;
        let mut out = Vec::new();
        for item in range.take(limit) {
            let (k, v) = item.map_err(|e| self.e(e))?;
            out.push((k.value()[skip..].to_vec(), v.value().to_vec()));
        }
        Ok(out)
    }

    fn write(&self, batches: &[Batch]) -> Result<(), StoreError> {
        let mut tx = self.db.begin_write().map_err(|e| self.e(e))?;
        tx.set_durability(Durability::Immediate).map_err(|e| self.e(e))?;
        {
            let mut t = tx.open_table(KV).map_err(|e| self.e(e))?;
            for b in batches {
                for op in &b.ops {
                    match op {
                        Op::Put { tree, key, value } => {
                            t.insert(composite_key(tree, key).as_slice(), value.as_slice()).map_err(|e| self.e(e))?;
                        }
                        Op::Delete { tree, key } => {
                            t.remove(composite_key(tree, key).as_slice()).map_err(|e| self.e(e))?;
                        }
                    }
                }
            }
        }
        tx.commit().map_err(|e| self.e(e))
    }

    fn flush(&self) -> Result<(), StoreError> {
        // Every commit is already durable.
        Ok(())
    }

    fn trees(&self) -> Result<Vec<String>, StoreError> {
        let tx = self.db.begin_read().map_err(|e| self.e(e))?;
        let t = tx.open_table(KV).map_err(|e| self.e(e))?;
        tree_names(|cursor| match t.range(cursor..).map_err(|e| self.e(e))?.next() {
            Some(item) => Ok(Some(item.map_err(|e| self.e(e))?.0.value().to_vec())),
            None => Ok(None),
        })
    }
}
