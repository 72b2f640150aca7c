//! Durable storage: one small key-value trait ([`KvStore`]) with two backends (sled and redb), group commit
//! ([`Store`]), and typed repositories for the bridge's data ([`repo`]).
//!
//! Everything durable — portals, legs, ghosts, the ID map, the outbox, dedup, and later the OpenMLS state — is
//! written once, on the trait. A backend only has to provide ordered byte keys in named trees, an atomic batch
//! across trees, and durability when [`KvStore::write`] returns.

pub mod commit;
pub mod export;
pub mod kv;
pub mod redb_backend;
pub mod repo;
pub mod schema;
pub mod sled_backend;

pub use commit::{CommitConfig, Store};
pub use kv::{Batch, Entries, KvStore, Op, StoreError};
pub use schema::{Backend, open_data_dir};
