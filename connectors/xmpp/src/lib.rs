//! # connector-xmpp
//!
//! The XMPP connector: multi-user chats (XEP-0045) bridged either through an external component (XEP-0114, each
//! bridged user a puppet occupant) or through one ordinary client account. Laid out like every connector
//! (`docs/connector-guide.md`):
//!
//! * sans IO: [`inbound`] (stanzas → core events), [`outbound`] (core events → stanzas), [`styling`] (XEP-0393
//!   ⇄ markdown), [`escape`] (puppet JID localparts), [`ns`];
//! * IO shell: follows.
//!
//! Never enable the `component` feature of `tokio-xmpp` or `xmpp-parsers`: it switches the stanza namespace of
//! the typed parsers for the whole workspace.

pub mod escape;
pub mod inbound;
pub mod ns;
pub mod outbound;
pub mod styling;
