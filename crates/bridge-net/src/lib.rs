//! # bridge-net
//!
//! What connectors share for talking to their networks' sockets, so no connector copies it:
//!
//! * [`backoff`] — jittered exponential reconnect delays;
//! * [`catchup`] — the sans-IO walk back through a room's history for what the bridge missed (XMPP, Matrix);
//! * [`lines`] — a bounded, cancel-safe line reader for line protocols (IRC, the template's toychat);
//! * [`tls`] — rustls client configurations: the one crypto provider (aws-lc-rs), trust roots from the system or
//!   a CA file, client certificates.
//!
//! No MLS, no store, no router: a connector depends on this and on `bridge-api` only.

pub mod backoff;
pub mod catchup;
pub mod lines;
pub mod tls;
