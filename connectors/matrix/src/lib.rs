//! The Matrix connector.
//!
//! * Translation, sans-IO (no sockets, no tokio; unit-tested on event JSON): [`inbound`] (Matrix events → core
//!   events), [`outbound`] (core events → client-server API calls), [`format`] (Matrix HTML ⇄ MIMI markdown),
//!   [`ghost`] (ghost user ids), [`translate`] (who is who).
//!
//! Appservice mode (the IO shell) builds on these.

pub mod format;
pub mod ghost;
pub mod inbound;
pub mod outbound;
pub mod translate;

pub use ghost::{GhostError, GhostNames};
pub use inbound::Skipped;
pub use outbound::{MatrixAction, OutboundError};
pub use translate::Translator;
