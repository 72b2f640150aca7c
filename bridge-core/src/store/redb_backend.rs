//! The redb backend (redb 4).
//!
//! One table, `kv`, holds every tree under composite keys (see [`super::kv`]). [`KvStore::write`] applies all the
//! batches it is given in one write transaction committed with `Durability::Immediate` (one fsync for the group).
//! A transaction is all-or-nothing, so each batch is atomic (the group as a whole is too).

use super::kv::{Batch, Entries, KvStore, Op, StoreError, composite_key, prefix_end, split_key};
use redb::{Database, Durability, ReadableDatabase, TableDefinition};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

const KV: TableDefinition<&[u8], &[u8]> = TableDefinition::new("kv");

/// A redb database file holding every tree.
pub struct RedbStore {
    db: Database,
    path: PathBuf,
}

impl RedbStore {
    /// Opens (or creates) the database file `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = Database::create(path).map_err(|e| err(path, e))?;
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
        let mut names = BTreeSet::new();
        let mut cursor: Vec<u8> = Vec::new();
        loop {
            let next = t.range(cursor.as_slice()..).map_err(|e| self.e(e))?.next();
            let Some(item) = next else { break };
            let (k, _) = item.map_err(|e| self.e(e))?;
            let Some((tree, _)) = split_key(k.value()) else {
                return Err(StoreError::Corrupt { tree: "?".into(), message: "key without tree prefix".into() });
            };
            names.insert(tree.to_owned());
            let mut p = tree.as_bytes().to_vec();
            p.push(0);
            match prefix_end(&p) {
                Some(end) => cursor = end,
                None => break,
            }
        }
        Ok(names.into_iter().collect())
    }
}
