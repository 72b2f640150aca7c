//! # bridge-api
//!
//! What a connector author compiles against: the names of things, the events a connector exchanges with the
//! core, capabilities, and the [`Connector`]/[`Account`] API. Light on purpose — no MLS, no store, no HTTP
//! server — so that a connector crate builds in seconds and cannot reach into the engine.
//!
//! * [`ids`] and [`uri`] — portals, legs, accounts, native ids, message ids, and how legacy users become
//!   `mimi://` URIs;
//! * [`event`] and [`capability`] — what connectors hand to the core and what the core hands back, and what a
//!   network can express;
//! * [`connector`] — the API a connector implements, and the [`InboundSink`] it hands events to;
//! * [`media`] — [`media::MediaStore`], the daemon's blob store for files a connector must download or upload;
//! * [`route`] — the core's answer to an inbound event ([`Accepted`], [`RouteError`]).
//!
//! `docs/connector-guide.md` walks through a complete connector.

pub mod capability;
pub mod connector;
pub mod event;
pub mod ids;
pub mod media;
pub mod route;
pub mod uri;

pub use capability::{Capabilities, Feature, Grade, Limits};
pub use connector::{Account, AccountContext, Connector, ConnectorError, Health, InboundRoute, InboundSink};
pub use event::{InboundEvent, InboundKind, OutboundEvent, OutboundKind};
pub use ids::{AccountId, LegId, MessageId, NativeId, PortalId, TxnId};
pub use media::{MediaError, MediaStore};
pub use route::{Accepted, RoomError, RouteError};
pub use uri::LegacyUser;
