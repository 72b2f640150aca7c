//! # mimi-provider
//!
//! The MIMI provider service: the IO shell around `mimi-protocol`'s state machines, and everything a provider
//! decides, whatever carries its requests (HTTP in the daemon, in-process in tests).
//!
//! * [`service`] — [`Provider`]: rooms this daemon hosts (hub) or follows, native users and their KeyPackages,
//!   wake-ups of long-polls, the notifies owed to followers;
//! * [`add_rule`] — [`add_rule::LocalAdds`]: who a commit may add (a local user only with a KeyPackage we handed
//!   out for them);
//! * [`log`] — the durable records (`hub_log`, `mimi_users` trees);
//! * [`peer_client`] — [`PeerClient`]: what a provider asks of a peer, typed (the daemon implements it over HTTP);
//! * [`federation`] — [`Federation`]: a provider with its peers, and the federation procedures: forwarding our
//!   clients' messages and updates to other hubs, GroupInfo and KeyPackages from other providers, catch-up from a
//!   hub's log, notifies to our followers;
//! * [`native_clients`] — [`NativeClients`]: the client API's policy (registration, authentication, names,
//!   participants, where a request goes);
//! * [`peer_api`] — [`PeerApi`]: what we serve our peers, and who may ask what;
//! * [`pages`] — pages of a room's log;
//! * [`failure`] — [`Failure`]: a request not served, with its HTTP-like status;
//! * [`testing`] — [`testing::MemoryNetwork`]: providers of one process reaching each other, for tests.
//!
//! The daemon (`src/mimi_http/`) only decodes requests, calls one method here, and encodes the answer.

pub mod add_rule;
pub mod failure;
pub mod federation;
pub mod key_packages;
pub mod log;
pub mod native_clients;
pub mod pages;
pub mod peer_api;
pub mod peer_client;
pub mod quota;
pub mod service;
pub mod testing;

#[cfg(test)]
mod service_tests;
#[cfg(test)]
pub(crate) mod tests_support;

pub use failure::{Failure, Status};
pub use federation::{Federation, HubVerdict, Verdict};
pub use mimi_protocol::{JoinPolicy, Origin, Refusal, Sequenced};
pub use native_clients::{Client, NativeClients, Registered, Registration};
pub use peer_api::{HeardPeer, PeerApi};
pub use peer_client::{HubAnswer, PeerClient, PeerError};
pub use service::{PeerNotify, PortalRoom, Provider, ProviderError, RoomRoute};

/// The trees this crate owns.
pub const TREES: &[&str] = &[log::HUB_LOG, log::MIMI_USERS];
