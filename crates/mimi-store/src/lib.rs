//! Durable storage: one small key-value trait ([`KvStore`]) with three backends (redb, sled, PostgreSQL), group commit
//! ([`Store`]), the data directory's schema version and migrations ([`schema`]), and export/import
//! ([`export`]), and content-defined [`chunks`] for records that are rewritten whole after small changes.
//!
//! Everything durable — portals, legs, ghosts, the ID map, the outbox, the hub log, the OpenMLS state — is
//! written once, on the trait, by the crate that owns it. This crate knows no tree by name except its own `meta`:
//! owners declare their trees ([`export::import`] takes the list of trees a build knows).
//! A backend only has to provide ordered byte keys in named trees, an atomic batch across trees, and durability
//! when [`KvStore::write`] returns.

pub mod chunks;
pub mod commit;
pub mod export;
pub mod kv;
pub mod postgres;
pub mod redb_backend;
pub mod schema;
pub mod sled_backend;

pub use commit::{CommitConfig, CommitStats, Store};
pub use kv::{Batch, Entries, KvStore, Op, StoreError, prefix_end};
pub use postgres::{PostgresConfig, PostgresStore};
pub use schema::{Backend, open_data_dir, open_data_dir_at};
