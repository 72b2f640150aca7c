//! The key-value trait every backend implements, and the batch type.

use std::path::PathBuf;

/// Why a store operation failed. Every variant names what to do about it in its message.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend reported an error (I/O, corruption, full disk…).
    #[error("{backend} store at {path}: {message}")]
    Backend {
        /// `sled`, `redb` or `postgres`.
        backend: &'static str,
        /// The data directory or file, or the PostgreSQL server (without password).
        path: PathBuf,
        /// The backend's message.
        message: String,
    },
    /// The data directory was written by a newer mimi-bridge.
    #[error(
        "data directory {path} has schema version {found}, this mimi-bridge understands up to {supported}: \
         upgrade mimi-bridge or restore a backup made with `mimi-bridge store export`"
    )]
    NewerSchema {
        /// The data directory.
        path: PathBuf,
        /// Version found on disk.
        found: u32,
        /// Newest version this build knows.
        supported: u32,
    },
    /// The data directory holds something that is not a mimi-bridge store.
    #[error("{path} is not a mimi-bridge data directory ({why}); point data_dir at an empty or existing store")]
    Foreign {
        /// The path.
        path: PathBuf,
        /// What was wrong.
        why: String,
    },
    /// The configured backend differs from the one the data directory was created with.
    #[error(
        "data directory {path} was created with the {found} backend but the config asks for {wanted}: \
         set `store = \"{found}\"` or move the data with `mimi-bridge store export` / `store import`"
    )]
    BackendMismatch {
        /// The data directory.
        path: PathBuf,
        /// Backend recorded in the directory.
        found: String,
        /// Backend the config asks for.
        wanted: String,
    },
    /// A stored value could not be decoded.
    #[error("corrupt record in tree {tree:?}: {message}")]
    Corrupt {
        /// The tree.
        tree: String,
        /// What failed.
        message: String,
    },
    /// An I/O error outside the backend (creating the directory, the marker file…).
    #[error("{path}: {source}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// An export file given to `store import` is malformed or does not fit the target store.
    #[error("import, line {line}: {message}")]
    Import {
        /// The line of the input (1-based; 0 when the problem is not a line's).
        line: u64,
        /// What is wrong and what to do.
        message: String,
    },
    /// The group-commit thread is gone (the store was closed).
    #[error("the store is closed")]
    Closed,
    /// An earlier durable write failed, so this store writes nothing more ([`crate::Store::failed`]).
    #[error("the store refuses writes since a durable write failed ({0}); restart to continue from what is on disk")]
    Failed(String),
}

/// Entries returned by a prefix scan: `(key without tree prefix, value)`, in key order.
pub type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// One write in a [`Batch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Set `key` in `tree` to `value`.
    Put {
        /// Tree name.
        tree: &'static str,
        /// Key.
        key: Vec<u8>,
        /// Value.
        value: Vec<u8>,
    },
    /// Remove `key` from `tree`.
    Delete {
        /// Tree name.
        tree: &'static str,
        /// Key.
        key: Vec<u8>,
    },
}

/// Writes that belong together: applied all or none, across trees.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch {
    /// The writes, applied in order.
    pub ops: Vec<Op>,
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }
    /// Adds a put.
    pub fn put(&mut self, tree: &'static str, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> &mut Self {
        self.ops.push(Op::Put { tree, key: key.into(), value: value.into() });
        self
    }
    /// Adds a delete.
    pub fn delete(&mut self, tree: &'static str, key: impl Into<Vec<u8>>) -> &mut Self {
        self.ops.push(Op::Delete { tree, key: key.into() });
        self
    }
    /// True if there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
    /// Appends another batch's writes.
    pub fn extend(&mut self, other: Batch) {
        self.ops.extend(other.ops);
    }
}

/// A key-value store with named trees and ordered keys. Implemented by [`super::sled_backend::SledStore`],
/// [`super::redb_backend::RedbStore`] and [`super::postgres::PostgresStore`]; everything else is written on this
/// trait.
///
/// Methods block: call them from a blocking thread (the [`super::Store`] wrapper does).
pub trait KvStore: Send + Sync + 'static {
    /// The backend's name, `sled`, `redb` or `postgres`.
    fn backend(&self) -> &'static str;

    /// Reads one key.
    fn get(&self, tree: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;

    /// Every entry of `tree` whose key starts with `prefix`, in key order.
    fn scan_prefix(&self, tree: &str, prefix: &[u8]) -> Result<Entries, StoreError>;

    /// At most `limit` entries of `tree` whose key starts with `prefix` and is not before `from`, in key order:
    /// a page of a prefix scan, for trees too large to read whole (`from` starts with `prefix`, or is it).
    /// Backends read only the page; this default (for test doubles) filters a whole prefix scan.
    fn scan_prefix_from(&self, tree: &str, prefix: &[u8], from: &[u8], limit: usize) -> Result<Entries, StoreError> {
        Ok(self.scan_prefix(tree, prefix)?.into_iter().filter(|(k, _)| k.as_slice() >= from).take(limit).collect())
    }

    /// Applies `batches` in order, each atomically (a crash leaves each batch either fully applied or not at
    /// all), and returns only once all of them are durable. Backends make one flush/fsync for the whole slice:
    /// this is what group commit builds on.
    fn write(&self, batches: &[Batch]) -> Result<(), StoreError>;

    /// Makes everything written so far durable.
    fn flush(&self) -> Result<(), StoreError>;

    /// Every tree name that holds at least one key (for export and checks).
    fn trees(&self) -> Result<Vec<String>, StoreError>;

    /// Whether the backend can still write: an error once it cannot, for good (a lost server connection, a lost
    /// or run-out leader lease). The group-commit thread asks every second and fails the store on an error
    /// (fail-stop), so a daemon that can write nothing more stops even when it has nothing to write; the
    /// daemon's delivery workers ask before each delivery ([`crate::Store::healthy`]). Must be cheap (no I/O).
    /// Embedded backends never fail it.
    fn health(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// The epoch of the leader lease this store writes under (PostgreSQL: the fencing token, see
    /// [`crate::postgres::lease`]); `None` for the embedded backends, which one process holds by file lock.
    fn lease_epoch(&self) -> Option<i64> {
        None
    }

    /// Convenience: one durable put.
    fn put(&self, tree: &'static str, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        let mut b = Batch::new();
        b.put(tree, key, value);
        self.write(&[b])
    }

    /// Convenience: one durable delete.
    fn delete(&self, tree: &'static str, key: &[u8]) -> Result<(), StoreError> {
        let mut b = Batch::new();
        b.delete(tree, key);
        self.write(&[b])
    }
}

/// Both backends keep all trees in one keyspace, with keys `tree-name \0 key`: a batch across trees is then a
/// single-keyspace atomic batch, and a prefix scan stays a range scan.
pub(crate) fn composite_key(tree: &str, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(tree.len() + 1 + key.len());
    k.extend_from_slice(tree.as_bytes());
    k.push(0);
    k.extend_from_slice(key);
    k
}

/// Splits a composite key into tree name and key.
pub(crate) fn split_key(k: &[u8]) -> Option<(&str, &[u8])> {
    let nul = k.iter().position(|b| *b == 0)?;
    let tree = std::str::from_utf8(&k[..nul]).ok()?;
    Some((tree, &k[nul + 1..]))
}

/// Every tree name in a composite keyspace, jumping from tree to tree instead of walking every key.
/// `first_from(cursor)` returns the first key ≥ `cursor`, if any.
pub(crate) fn tree_names(
    mut first_from: impl FnMut(&[u8]) -> Result<Option<Vec<u8>>, StoreError>,
) -> Result<Vec<String>, StoreError> {
    let mut names = std::collections::BTreeSet::new();
    let mut cursor: Vec<u8> = Vec::new();
    while let Some(k) = first_from(&cursor)? {
        let Some((tree, _)) = split_key(&k) else {
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

/// The exclusive upper bound of all keys starting with `prefix`, or `None` if there is none (all 0xFF).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xFF {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn composite_keys_split_back() {
        let k = composite_key("ids", b"a\0b");
        assert_eq!(split_key(&k), Some(("ids", &b"a\0b"[..])));
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff\xff"), None);
    }
}
