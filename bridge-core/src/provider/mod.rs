//! The MIMI provider (draft-ietf-mimi-protocol-06), sans-IO where it matters:
//!
//! * [`wire`] — the protocol messages in TLS presentation-language encoding;
//! * [`inspect`] — what a hub can read of an MLS message without being a member;
//! * [`hub`] — [`HubRoom`], the hub state machine of one room: checks, sequencing, fan-out actions, retries;
//! * [`follower`] — [`FollowerRoom`], the follower state machine: in-order copy of the hub's log, catch-up;
//! * [`notifier`] — [`NotifyQueue`], the hub's notifies owed to one follower: order, backoff, coalescing;
//! * [`log`] — the durable records (`hub_log`, `mimi_users` trees);
//! * [`service`] — [`Provider`], the in-process shell: store, wake-ups, the notify queue for followers;
//! * [`room`] — [`MlsRoom`], the bridge's room of record on top of it (portal ⇄ MLS group ⇄ hub).
//!
//! Network IO (the `/v1/...` endpoints, the client API, requests to peers, notifies to followers) lives in the
//! daemon (`src/mimi_http/`).

pub mod follower;
pub mod hub;
pub mod inspect;
pub mod log;
pub mod notifier;
pub mod room;
pub mod service;
pub mod wire;

#[cfg(test)]
mod service_tests;
#[cfg(test)]
pub(crate) mod tests_support;

pub use follower::{FollowerAction, FollowerRoom};
pub use hub::{Accepted, HubAction, HubRoom, JoinPolicy, Origin, Refusal};
pub use notifier::NotifyQueue;
pub use room::MlsRoom;
pub use service::{PeerNotify, Provider, ProviderError, Route};
