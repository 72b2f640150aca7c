//! Catch-up from a room's timeline, for what the homeserver never pushed (the walk itself is the connectors'
//! shared one, [`bridge_net::catchup`]).
//!
//! Synapse can lose an appservice transaction for good after a failed push (a race in its scheduler marks the
//! appservice up again while a transaction is being stored for the recoverer that just ended), so the bridge does
//! not depend on being pushed everything. After a (re)join, and a while after a transaction was refused or the
//! homeserver came back, the account reads each linked room's timeline backwards (`/messages?dir=b`, [`PAGE`]
//! events a page) until a page holds an anchor, the timeline's start, or [`MAX_PAGES`] pages. It then replays
//! every event after the newest anchor that the core does not know, oldest first, through the same path as a
//! transaction (the core drops duplicates by event id, and the ghosts' echoes).
//!
//! An anchor is an event the core took from this room ([`Known::FromLeg`]) before the catch-up was called for.
//! An event taken live while a catch-up is pending ([`Known::Live`]) is none: later pushes go through while the
//! lost one never comes, so a newer taken event says nothing about what came before it. A delivery of the
//! bridge's own ([`Known::Delivery`]) anchors only when nothing taken from the room was found: what the room said
//! just before it may have been missed. Without any anchor (the bridge's first join of the room, or more than
//! [`MAX_PAGES`] pages missed) nothing is replayed: a first link must not flood the portal with old history (the
//! gap is logged).

/// How many events one page asks for.
pub const PAGE: usize = 50;
/// How many pages one catch-up reads at most (1 000 events).
pub const MAX_PAGES: usize = 20;

pub use bridge_net::catchup::{Done, Known, Step, Walk};
