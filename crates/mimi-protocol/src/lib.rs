//! # mimi-protocol
//!
//! The MIMI protocol (draft-ietf-mimi-protocol-06), sans-IO: no sockets, no tokio, no store. State machines that
//! own their state, are fed events and return actions; the `mimi-provider` crate is their IO shell.
//!
//! * [`wire`] — the protocol messages in TLS presentation-language encoding;
//! * [`cbor`] — the compact CBOR encoding of OpenMLS's stored state (byte sequences as byte strings), shared with
//!   the MLS engine;
//! * [`inspect`] — what a hub can read of an MLS message without being a member;
//! * [`hub`] — [`HubRoom`], the hub state machine of one room: checks, sequencing, fan-out actions, retries;
//! * [`public`] — [`public::PublicState`], the public state of a room's MLS group with which the hub validates
//!   every handshake;
//! * [`follower`] — [`FollowerRoom`], the follower state machine: in-order copy of the hub's log, catch-up;
//! * [`notifier`] — [`NotifyQueue`], the hub's notifies owed to one follower: order, backoff, coalescing.

pub mod cbor;
pub mod follower;
pub mod hub;
pub mod inspect;
pub mod notifier;
pub mod public;
pub mod wire;

#[cfg(test)]
mod hub_props;
#[cfg(test)]
pub(crate) mod test_group;

pub use follower::{FollowerAction, FollowerRoom};
pub use hub::{HubAction, HubRoom, JoinPolicy, Origin, Refusal, Sequenced};
pub use notifier::NotifyQueue;

/// The domain of a `mimi://DOMAIN/...` URI.
pub fn uri_domain(uri: &str) -> Option<&str> {
    uri.strip_prefix("mimi://")?.split('/').next().filter(|d| !d.is_empty())
}
