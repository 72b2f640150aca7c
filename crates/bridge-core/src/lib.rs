//! # bridge-core
//!
//! The bridge's engine, free of any legacy chat protocol: it takes events from connectors (through
//! `bridge-api`'s `InboundSink`), orders them per portal, publishes them to the portal's room of record (an MLS
//! group), and delivers them to every other leg.
//!
//! * [`router`] and [`portal`] — ordering, dedup, echo prevention, the ID map and fan-out;
//! * `leg` — one delivery worker per leg draining the durable outbox;
//! * [`repo`] — the bridge's trees and their typed records; [`outbox`] — the stored form of a pending delivery;
//! * [`room_of_record`] — the seam between a portal and its room of record;
//! * [`mls_rooms`] — [`MlsRooms`], the room of record of every portal on MLS: one group per portal, hosted by this
//!   daemon's MIMI provider;
//! * [`retention`] — [`retention::Pruner`]: one pruner for everything that grows (`[retention]`);
//! * [`check`] — `store check`: the bridge's records verified offline.
//!
//! See `ARCHITECTURE.md` at the repository root for the invariants these modules keep.

pub mod check;
mod leg;
pub mod mls_rooms;
pub mod outbox;
pub mod portal;
mod refusals;
pub mod repo;
pub mod retention;
pub mod room_of_record;
pub mod router;

pub use mls_rooms::MlsRooms;

/// Every tree a data dir of this build holds, each declared by the crate that owns it (for `store import` and
/// `store check`, which refuse trees they do not know).
pub fn known_trees() -> Vec<&'static str> {
    let mut t = vec![mimi_store::schema::META];
    t.extend_from_slice(repo::TREES);
    t.push(mimi_mls::MLS_TREE);
    t.extend_from_slice(mimi_provider::TREES);
    t
}

/// The shape of the daemon's data directory (every tree in [`known_trees`]) and its migrations.
///
/// * 1 → 2: the outbox and `failed` trees hold records of their own ([`outbox`]) instead of the API's
///   `OutboundEvent`, with the times they were queued and given up on.
/// * 2 → 3: every room this provider hosts gets the public state of its MLS group (`hub_log` `'P'`), with which
///   the hub validates handshakes, built from the room's stored GroupInfo ([`mimi_provider::log::migrate_v2_to_v3`]).
/// * 3 → 4: those public states are stored in CBOR and in content-defined chunks (`hub_log` `'P'` a manifest,
///   `'Q'` the chunks; [`mimi_provider::log::migrate_v3_to_v4`]).
/// * 4 → 5: a hosted room's participants have a key each (`hub_log` `'U'`) instead of being in its record, which
///   is rewritten with every message ([`mimi_provider::log::migrate_v4_to_v5`]).
/// * 5 → 6: a group's ratchet tree, message secrets and group state in the `mls` tree may be stored in
///   content-defined chunks (nothing is rewritten: [`mimi_mls::storage::migrate_to_chunked_values`]).
/// * 6 → 7: a group's message secrets may be two records, its past epochs apart (nothing is rewritten:
///   [`mimi_mls::storage::migrate_to_past_epochs_apart`]).
pub const SCHEMA: mimi_store::schema::Schema = mimi_store::schema::Schema {
    migrations: &[
        outbox::migrate_v1_to_v2,
        mimi_provider::log::migrate_v2_to_v3,
        mimi_provider::log::migrate_v3_to_v4,
        mimi_provider::log::migrate_v4_to_v5,
        mimi_mls::storage::migrate_to_chunked_values,
        mimi_mls::storage::migrate_to_past_epochs_apart,
    ],
};

/// Opens the daemon's store in `data_dir`, migrating it to [`SCHEMA`].
pub fn open_store(
    data_dir: &std::path::Path,
    backend: Option<mimi_store::Backend>,
    commit: mimi_store::CommitConfig,
) -> Result<mimi_store::Store, mimi_store::StoreError> {
    mimi_store::open_data_dir(data_dir, backend, commit, &SCHEMA)
}

/// [`open_store`] for a data directory whose store may be in PostgreSQL (`postgres` says how to reach it).
pub fn open_store_at(
    data_dir: &std::path::Path,
    backend: Option<mimi_store::Backend>,
    postgres: Option<&mimi_store::PostgresConfig>,
    commit: mimi_store::CommitConfig,
) -> Result<mimi_store::Store, mimi_store::StoreError> {
    mimi_store::open_data_dir_at(data_dir, backend, postgres, commit, &SCHEMA)
}

/// The schema version of the daemon's data directory this build writes.
pub const SCHEMA_VERSION: u32 = SCHEMA.version();
