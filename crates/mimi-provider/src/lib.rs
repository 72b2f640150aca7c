//! # mimi-provider
//!
//! The MIMI provider service: the IO shell around `mimi-protocol`'s state machines.
//!
//! * [`service`] — [`Provider`]: rooms this daemon hosts (hub) or follows, native users and their KeyPackages,
//!   wake-ups of long-polls, the notifies owed to followers;
//! * [`log`] — the durable records (`hub_log`, `mimi_users` trees).
//!
//! What crosses the network (HTTP endpoints, requests to peers) lives in the daemon (`src/mimi_http/`).

pub mod log;
pub mod service;

#[cfg(test)]
mod service_tests;
#[cfg(test)]
pub(crate) mod tests_support;

pub use mimi_protocol::{JoinPolicy, Origin, Refusal, Sequenced};
pub use service::{PeerNotify, Provider, ProviderError, RoomRoute};

/// The trees this crate owns.
pub const TREES: &[&str] = &[log::HUB_LOG, log::MIMI_USERS];
