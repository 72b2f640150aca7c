//! The data directory: which backend it holds, its schema version, and migrations.
//!
//! Layout of `data_dir` (created with mode 0700):
//!
//! ```text
//! data_dir/
//!   BACKEND          "sled", "redb" or "postgres": written on first start, checked on every start
//!   store.redb       the redb database file          (backend redb)
//!   sled/            the sled database directory     (backend sled)
//! ```
//!
//! With `postgres` the data lives in the PostgreSQL database the connection string names
//! ([`crate::postgres::PostgresConfig`]); the data directory keeps the marker (and the daemon's other files).
//!
//! The schema version lives in the `meta` tree. A store from a newer mimi-bridge is refused; an older one is
//! migrated step by step by the [`Schema`]'s migrations; a directory that holds something else is refused, never reset.

use super::commit::{CommitConfig, Store};
use super::kv::{Batch, KvStore, StoreError};
use super::postgres::{PostgresConfig, PostgresStore};
use super::redb_backend::RedbStore;
use super::sled_backend::SledStore;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Tree holding the schema version.
pub const META: &str = "meta";
const VERSION_KEY: &[u8] = b"schema_version";
const MARKER: &str = "BACKEND";

/// One migration: brings a store from version `n` to `n + 1` (index `n - 1` in [`Schema::migrations`]).
pub type Migration = fn(&dyn KvStore) -> Result<(), StoreError>;

/// The shape of one kind of data directory (the daemon's, a native client's), owned by the program whose data
/// directory it is: the migrations from its first version on, in order. Its version is one more than their
/// number, so a schema change is one appended migration.
#[derive(Clone, Copy)]
pub struct Schema {
    /// Migrations, in order: index `n - 1` brings version `n` to `n + 1`.
    pub migrations: &'static [Migration],
}

impl Schema {
    /// A kind of data directory that never changed shape (version 1).
    pub const FIRST: Schema = Schema { migrations: &[] };

    /// The version this build writes.
    pub const fn version(&self) -> u32 {
        self.migrations.len() as u32 + 1
    }
}

/// A storage backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// sled 0.34.
    Sled,
    /// redb 4.
    Redb,
    /// A PostgreSQL server (tokio-postgres 0.7).
    Postgres,
}

impl Backend {
    /// The name used in config and in the `BACKEND` marker.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Sled => "sled",
            Backend::Redb => "redb",
            Backend::Postgres => "postgres",
        }
    }

    /// Parses a backend name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "sled" => Some(Backend::Sled),
            "redb" => Some(Backend::Redb),
            "postgres" => Some(Backend::Postgres),
            _ => None,
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io { path: path.to_owned(), source }
}

/// Reads the backend recorded in `data_dir`, if any.
pub fn recorded_backend(data_dir: &Path) -> Result<Option<Backend>, StoreError> {
    let marker = data_dir.join(MARKER);
    match std::fs::read_to_string(&marker) {
        Ok(s) => Backend::parse(s.trim())
            .map(Some)
            .ok_or_else(|| StoreError::Foreign { path: marker, why: format!("unknown backend {:?}", s.trim()) }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io(&marker)(e)),
    }
}

/// Opens the raw backend in `data_dir`, creating the directory (0700) and recording `wanted` on first use.
///
/// With `wanted = None` the recorded backend is used (tools like `store export` do this); it is an error if
/// there is none.
pub fn open_backend(data_dir: &Path, wanted: Option<Backend>) -> Result<Arc<dyn KvStore>, StoreError> {
    open_backend_at(data_dir, wanted, None)
}

/// [`open_backend`] for a data directory whose store may be in PostgreSQL: `postgres` says how to reach the server
/// (needed only when the backend is, or is to be, `postgres`).
pub fn open_backend_at(
    data_dir: &Path,
    wanted: Option<Backend>,
    postgres: Option<&PostgresConfig>,
) -> Result<Arc<dyn KvStore>, StoreError> {
    let recorded = if data_dir.exists() { recorded_backend(data_dir)? } else { None };
    let backend = match (recorded, wanted) {
        (Some(r), Some(w)) if r != w => {
            return Err(StoreError::BackendMismatch {
                path: data_dir.to_owned(),
                found: r.to_string(),
                wanted: w.to_string(),
            });
        }
        (Some(r), _) => r,
        (None, Some(w)) => {
            create_dir_private(data_dir)?;
            let non_empty = std::fs::read_dir(data_dir).map_err(io(data_dir))?.next().is_some();
            if non_empty {
                return Err(StoreError::Foreign {
                    path: data_dir.to_owned(),
                    why: "the directory is not empty and has no BACKEND marker".into(),
                });
            }
            // An embedded database's marker goes on disk before the database it describes; PostgreSQL's only once
            // the server was reached (below), so that a first start that could not connect leaves no marker.
            if w != Backend::Postgres {
                let marker = data_dir.join(MARKER);
                write_synced(&marker, w.name().as_bytes()).map_err(io(&marker))?;
            }
            w
        }
        (None, None) => {
            let why = if data_dir.exists() {
                "no BACKEND marker: it was never opened by mimi-bridge"
            } else {
                "it does not exist"
            };
            return Err(StoreError::Foreign { path: data_dir.to_owned(), why: why.into() });
        }
    };
    let db_path = backend_path(data_dir, backend);
    if recorded.is_some() && backend != Backend::Postgres && !db_path.exists() {
        // The marker says a database was created here: opening would silently start an empty one.
        return Err(StoreError::Foreign {
            path: db_path,
            why: format!(
                "the BACKEND marker says {backend} but the database is missing; restore it from a backup, or, if \
                 this data directory never held data, remove {}",
                data_dir.join(MARKER).display()
            ),
        });
    }
    let kv: Arc<dyn KvStore> = match backend {
        Backend::Sled => Arc::new(SledStore::open(&db_path)?),
        Backend::Redb => Arc::new(RedbStore::open(&db_path)?),
        Backend::Postgres => {
            let Some(cfg) = postgres else {
                return Err(StoreError::Backend {
                    backend: "postgres",
                    path: data_dir.to_owned(),
                    message: "this data directory's store is in PostgreSQL, but no connection string is set: set \
                              bridge.store = \"postgres\" and bridge.postgres_url_file or bridge.postgres_url"
                        .into(),
                });
            };
            let store = PostgresStore::open(cfg)?;
            if recorded.is_none() {
                let marker = data_dir.join(MARKER);
                write_synced(&marker, backend.name().as_bytes()).map_err(io(&marker))?;
            }
            Arc::new(store)
        }
    };
    Ok(kv)
}

/// Opens the store in `data_dir`: backend check, schema check and migrations to `schema`, group commit.
pub fn open_data_dir(
    data_dir: &Path,
    wanted: Option<Backend>,
    commit: CommitConfig,
    schema: &Schema,
) -> Result<Store, StoreError> {
    open_data_dir_at(data_dir, wanted, None, commit, schema)
}

/// [`open_data_dir`] for a data directory whose store may be in PostgreSQL (see [`open_backend_at`]).
pub fn open_data_dir_at(
    data_dir: &Path,
    wanted: Option<Backend>,
    postgres: Option<&PostgresConfig>,
    commit: CommitConfig,
    schema: &Schema,
) -> Result<Store, StoreError> {
    let recorded = if data_dir.exists() { recorded_backend(data_dir)? } else { None };
    let kv = open_backend_at(data_dir, wanted, postgres)?;
    // An embedded store that vanished is caught by its missing file; a PostgreSQL one by an empty database
    // behind a data directory that was used before (a wrong database name, a server moved without its data).
    if recorded == Some(Backend::Postgres) && kv.get(META, VERSION_KEY)?.is_none() {
        return Err(StoreError::Foreign {
            path: data_dir.to_owned(),
            why: format!(
                "this data directory's store is in PostgreSQL, but the database at {} holds no mimi-bridge store: \
                 check bridge.postgres_url_file; to start an empty store on purpose, use a new data directory",
                postgres.map(|p| p.display()).unwrap_or_default()
            ),
        });
    }
    check_schema(kv.as_ref(), data_dir, true, schema)?;
    Ok(Store::new(kv, commit))
}

/// Checks the schema version; with `migrate`, brings an older store up to date (and stamps a new one).
pub fn check_schema(kv: &dyn KvStore, data_dir: &Path, migrate: bool, schema: &Schema) -> Result<u32, StoreError> {
    let current = schema.version();
    let found = match kv.get(META, VERSION_KEY)? {
        None => None,
        Some(v) => {
            let arr: [u8; 4] = v.as_slice().try_into().map_err(|_| StoreError::Corrupt {
                tree: META.into(),
                message: format!("schema_version has {} bytes, expected 4", v.len()),
            })?;
            Some(u32::from_be_bytes(arr))
        }
    };
    let mut version = match found {
        Some(v) => v,
        None => {
            if !kv.trees()?.is_empty() {
                return Err(StoreError::Foreign {
                    path: data_dir.to_owned(),
                    why: "the store holds data but no schema version".into(),
                });
            }
            if migrate {
                stamp(kv, current)?;
            }
            return Ok(current);
        }
    };
    if version > current {
        return Err(StoreError::NewerSchema { path: data_dir.to_owned(), found: version, supported: current });
    }
    if version == 0 {
        return Err(StoreError::Corrupt { tree: META.into(), message: "schema version 0".into() });
    }
    while migrate && version < current {
        let step = schema.migrations.get(version as usize - 1).ok_or_else(|| StoreError::Corrupt {
            tree: META.into(),
            message: format!("no migration from schema version {version}"),
        })?;
        step(kv)?;
        version += 1;
        stamp(kv, version)?;
        tracing::info!(version, "store migrated");
    }
    Ok(version)
}

fn stamp(kv: &dyn KvStore, version: u32) -> Result<(), StoreError> {
    let mut b = Batch::new();
    b.put(META, VERSION_KEY, version.to_be_bytes());
    kv.write(&[b])
}

/// Writes a small file and fsyncs it, so the marker is on disk before the database it describes.
fn write_synced(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::create(path)?;
    f.write_all(data)?;
    f.sync_all()
}

/// Creates `dir` (and parents) with mode 0700 on Unix; leaves an existing directory's mode alone.
pub fn create_dir_private(dir: &Path) -> Result<(), StoreError> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o700);
    }
    b.create(dir).map_err(io(dir))
}

/// Where the backend's files are inside `data_dir` (`data_dir` itself for PostgreSQL, whose data is elsewhere).
pub fn backend_path(data_dir: &Path, backend: Backend) -> PathBuf {
    match backend {
        Backend::Sled => data_dir.join("sled"),
        Backend::Redb => data_dir.join("store.redb"),
        Backend::Postgres => data_dir.to_owned(),
    }
}
