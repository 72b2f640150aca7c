//! # bridge-core
//!
//! The domain of mimi-bridge, free of any legacy chat protocol:
//!
//! * [`content`] — the MIMI content format (draft-ietf-mimi-content): model, deterministic CBOR, message ids,
//!   validation, builders, attachments, the shared markdown helper;
//! * [`ids`] and [`uri`] — the names of things (portals, legs, accounts, legacy users, message ids) and how legacy
//!   users become `mimi://` URIs;
//! * [`event`] and [`capability`] — what connectors hand to the core and what the core hands back;
//! * [`connector`] — the API a connector author implements (`Connector`, `Account`);
//! * [`store`] — the key-value trait, its backends and the typed repositories on top;
//! * [`router`] and [`portal`] — ordering, dedup, echo prevention, the ID map and delivery;
//! * [`group`] — the seam between a portal and its room of record (the MLS group).
//!
//! See `ARCHITECTURE.md` at the repository root for the invariants these modules keep.

pub mod capability;
pub mod connector;
pub mod content;
pub mod event;
pub mod group;
pub mod ids;
mod leg;
pub mod lines;
pub mod mls;
pub mod portal;
pub mod provider;
pub mod router;
pub mod store;
pub mod tls;
pub mod uri;

#[cfg(any(test, feature = "testkit"))]
pub mod loopback;
#[cfg(feature = "testkit")]
pub mod testkit;

pub use capability::{Capabilities, Feature, Grade, Limits};
pub use connector::{Account, AccountContext, Connector, ConnectorError, Health, InboundSink};
pub use event::{InboundEvent, InboundKind, OutboundEvent, OutboundKind};
pub use ids::{AccountId, LegId, MessageId, NativeId, PortalId, TxnId};
pub use uri::LegacyUser;
