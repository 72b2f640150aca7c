//! The MLS engine (RFC 9420) on OpenMLS 0.9: one MLS group per portal, with the bridge as a member.
//!
//! * [`storage`] — OpenMLS's `StorageProvider` on the bridge's store: compact CBOR values, an in-memory cache,
//!   write-behind through group commit, one atomic batch per MLS operation;
//! * [`backend`] — [`MlsBackend`], the OpenMLS provider ([`verified_signatures::MlsCrypto`] + that storage), and
//!   [`Pending`], the wrapper that hands out an operation's output only once the state behind it is durable;
//! * [`cbor`] — the CBOR serializer of the stored values (byte strings for byte sequences), from mimi-protocol,
//!   whose hub stores its groups' public state with it;
//! * [`config`] — ciphersuites, wire-format policy, ratchet tolerances;
//! * [`member`] — a local MLS member: the bridge's leaf (basic credential = its MIMI URI) or a per-user leaf;
//! * [`key_packages`] — KeyPackages to publish, including the last-resort one;
//! * [`portal_group`] — [`PortalGroup`]: create, join, add, remove, self-update, encrypt, decrypt, process commits,
//!   export GroupInfo and ratchet tree, rejoin by external commit;
//! * [`legacy_sender`] — the MIMI content extension carrying the legacy sender behind a shared leaf;
//! * [`user_leaves`] — [`UserLeaves`]: per-user leaves (`mls_identity = "per-user"`), added lazily, removed when
//!   idle, capped per portal;
//! * [`offload`] — [`offload()`]: MLS operations of big groups run off the async executor, one per core;
//! * [`verified_signatures`] — [`verified_signatures::MlsCrypto`]: leaf and KeyPackage signatures verified once
//!   per process, a ratchet tree's verified on all cores before a join;
//! * [`write_behind`] — when a group's message secrets are encoded (not on every message: that is O(N)), and the
//!   reservations that keep a sender from reusing a generation after a crash;
//! * [`error`] — [`MlsError`], typed so that callers can tell a replay from a non-member from a lost group.
//!
//! Everything is synchronous and IO-free except the durability wait, which is a future ([`Pending::durable`]) or
//! a blocking call ([`Pending::durable_blocking`]).

pub mod backend;
pub use mimi_protocol::cbor;
pub mod config;
pub mod error;
pub mod key_packages;
pub mod legacy_sender;
pub mod member;
pub mod offload;
pub mod portal_group;
pub mod storage;
pub mod user_leaves;
pub mod verified_signatures;
mod verifying_keys;
pub mod write_behind;

pub use backend::{MlsBackend, Pending, WRITE_BEHIND_OPS};
pub use config::{EngineConfig, HandshakeWireFormat};
pub use error::MlsError;
pub use legacy_sender::LegacySender;
pub use member::LocalMember;
pub use offload::{OFFLOAD_MEMBERS, offload};
pub use portal_group::{CommitOutput, KeptMessage, PortalGroup, Received};
pub use storage::{Durability, MLS_TREE, MlsStorage, MlsStorageError};
pub use user_leaves::{AddLeaf, DEFAULT_ADD_BATCH, LeafChange, LeafPolicy, UserLeaves};
