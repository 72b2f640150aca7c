//! What the core answers a connector about an inbound event: [`Accepted`] or a [`RouteError`].

use crate::ids::{AccountId, LegId, MessageId, PortalId};

/// What happened to an inbound event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Accepted {
    /// Sequenced into the group as this message and queued for every other leg.
    Bridged(MessageId),
    /// Seen before (same native id on the same leg): processed once, this is the id it got then.
    Duplicate(MessageId),
    /// The bridge's own event coming back (a delivery's echo or a ghost's message): not bridged again.
    Echo,
    /// Passed to the other legs without being stored (typing, membership).
    Ephemeral,
    /// Valid but without effect (an edit of a message the bridge never saw, a reaction already present…).
    Ignored(&'static str),
}

/// Why an inbound event was refused. Logged once by the router; returned to the connector.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RouteError {
    /// The event's room is not linked to any portal.
    #[error("room {0} is not linked to a portal")]
    UnknownLeg(LegId),
    /// No such portal.
    #[error("no portal named {0}")]
    UnknownPortal(PortalId),
    /// A connector submitted an event for another account's room.
    #[error("account {account} submitted an event for {leg}")]
    WrongAccount {
        /// The event's leg.
        leg: LegId,
        /// The submitting account.
        account: AccountId,
    },
    /// The event is larger than `max_event_bytes`.
    #[error("event of {size} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// An event kind that needs a native id came without one.
    #[error("{0} event without a native id")]
    MissingNativeId(&'static str),
    /// The store failed; the event was not accepted and may be resubmitted.
    #[error("store: {0}")]
    Store(String),
    /// The room of record failed; the event was not accepted and may be resubmitted.
    #[error(transparent)]
    Room(#[from] RoomError),
    /// The leg is already linked to another portal.
    #[error("room {leg} is already linked to portal {portal}")]
    AlreadyLinked {
        /// The leg.
        leg: LegId,
        /// Its portal.
        portal: PortalId,
    },
    /// The bridge is shutting down.
    #[error("the bridge is shutting down")]
    Closed,
}

impl RouteError {
    /// A short, stable name for metrics (`mimi_bridge_errors_total{kind=...}`) and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            RouteError::UnknownLeg(_) => "unknown_leg",
            RouteError::UnknownPortal(_) => "unknown_portal",
            RouteError::WrongAccount { .. } => "wrong_account",
            RouteError::TooLarge { .. } => "too_large",
            RouteError::MissingNativeId(_) => "missing_native_id",
            RouteError::Store(_) => "store",
            RouteError::Room(_) => "room_of_record",
            RouteError::AlreadyLinked { .. } => "already_linked",
            RouteError::Closed => "closed",
        }
    }
}

/// Why the room of record (the portal's MLS group) did not take a message.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RoomError {
    /// The group cannot take messages now (hub unreachable, epoch change in progress): retry.
    #[error("room of record unavailable: {0}")]
    Unavailable(String),
    /// The message can never be published (too large, not allowed).
    #[error("room of record refused the message: {0}")]
    Refused(String),
}
