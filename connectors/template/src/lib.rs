//! # connector-template
//!
//! A complete, small connector for "toychat", a line protocol invented for this template, and the starting point
//! `docs/connector-guide.md` walks through. Copy this crate to start a new network.
//!
//! The layout every connector follows:
//!
//! * [`proto`] — **sans-IO protocol**: parse and serialise the network's wire format. Pure functions, no sockets,
//!   unit-tested exhaustively. Hostile input is an error value, never a panic.
//! * [`translate`] — **sans-IO translation**: native events ⇄ core events ([`bridge_api::InboundEvent`],
//!   [`bridge_api::OutboundEvent`]). Pure functions. Rendering rules (how a reply or a multi-line message looks on
//!   this network) live here and are documented by the capabilities the connector declares.
//! * [`account`] — **the IO shell**: the socket, reconnects with backoff, health, matching sends to their
//!   acknowledgements. No protocol knowledge beyond calling the two modules above.
//! * [`fake_server`] — an in-process toychat server, so the template can run the conformance kit. A real
//!   connector runs the kit against its real server (started by `tests/harness`), never a fake.
//!
//! ## toychat
//!
//! Client → server: `HELLO nick`, `JOIN room`, and tagged commands `TAG SAY room :text`, `TAG REPLY room parent
//! :text`, `TAG EDIT room target :text`, `TAG DEL room target`, `TAG REACT room target :key`, `TAG UNREACT room
//! target :key`. Server → client: `WELCOME nick`, `ACK TAG id`, `ERR TAG :reason`, and `EVT id nick VERB room
//! [target] :text` for everything that happens in a joined room, the sender's own commands included.

pub mod account;
pub mod fake_server;
pub mod proto;
pub mod translate;

use async_trait::async_trait;
use bridge_api::capability::{Capabilities, Feature, Grade, Limits};
use bridge_api::{Account, AccountContext, AccountId, Connector, ConnectorError};
use serde::Deserialize;
use std::sync::Arc;

/// The body of a `[toychat.NAME]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `host:port` of the server.
    pub server: String,
    /// The bridge's nick.
    pub nick: String,
}

/// The toychat connector.
#[derive(Debug, Default)]
pub struct ToychatConnector;

/// What toychat can express: native replies, edits, deletes and reactions; multi-line text is joined with " ⏎ ".
pub fn capabilities() -> Capabilities {
    Capabilities::none()
        .with(Feature::Replies, Grade::Full)
        .with(Feature::Edits, Grade::Full)
        .with(Feature::Deletes, Grade::Full)
        .with(Feature::Reactions, Grade::Full)
        .with(Feature::MultiLine, Grade::Degraded)
        .with(Feature::Formatting, Grade::Degraded)
        .with(Feature::Mentions, Grade::Degraded)
        .with_limits(Limits { max_text_bytes: Some(proto::MAX_TEXT), max_lines: Some(1), max_attachment_bytes: None })
}

#[async_trait]
impl Connector for ToychatConnector {
    type Config = Config;

    fn network(&self) -> &'static str {
        "toychat"
    }

    fn capabilities(&self, _config: &Config) -> Capabilities {
        capabilities()
    }

    fn validate(&self, id: &AccountId, config: &Config) -> Result<(), ConnectorError> {
        proto::check_word(&config.nick)
            .map_err(|e| ConnectorError::Config { account: id.clone(), reason: format!("nick: {e}") })?;
        if !config.server.contains(':') {
            return Err(ConnectorError::Config { account: id.clone(), reason: "server must be host:port".into() });
        }
        Ok(())
    }

    async fn start(
        &self,
        id: AccountId,
        config: Config,
        ctx: AccountContext,
    ) -> Result<Arc<dyn Account>, ConnectorError> {
        self.validate(&id, &config)?;
        Ok(account::ToychatAccount::start(id, config, ctx))
    }
}
