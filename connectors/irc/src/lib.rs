//! # connector-irc
//!
//! The IRC connector: relay mode (one bot connection per account, messages shown as `<name> text`), IRCv3 CAP
//! negotiation, SASL PLAIN/EXTERNAL, ISUPPORT-aware nick and channel handling, flood control, reconnect with
//! jittered backoff. Laid out like every connector ([`docs/connector-guide.md`]):
//!
//! * sans IO: [`message`] (wire format), [`session`] (registration/CAP/SASL state machine), [`isupport`],
//!   [`format`] (IRC codes ⇄ markdown), [`render`] (outbound rendering and splitting), [`inbound`] (inbound
//!   translation with the reply/edit conventions), [`flood`] (token bucket);
//! * IO shell: [`account`].
//!
//! [`docs/connector-guide.md`]: https://example.invalid/docs/connector-guide.md

pub mod account;
pub mod flood;
pub mod format;
pub mod inbound;
pub mod isupport;
pub mod message;
pub mod render;
pub mod session;

use async_trait::async_trait;
use bridge_core::capability::{Capabilities, Feature, Grade, Limits};
use bridge_core::{Account, AccountContext, AccountId, Connector, ConnectorError};
use serde::Deserialize;
use std::sync::Arc;

/// How an account reaches IRC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Connections {
    /// One bot connection; other networks' users are shown as `<name> text`.
    #[default]
    Relay,
    /// One connection per active non-IRC user (not built yet: refused by `validate`).
    PerUser,
}

/// The body of an `[irc.NAME]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `host:port`.
    pub server: String,
    /// TLS (not built yet: refused by `validate`).
    #[serde(default)]
    pub tls: bool,
    /// The bridge's nick.
    pub nick: String,
    /// Username (ident); defaults to the nick.
    pub username: Option<String>,
    /// Real name.
    #[serde(default = "default_realname")]
    pub realname: String,
    /// Server password (PASS), if the server needs one. A secret: give it as `password_file = "/path"` or
    /// `password = "env:NAME"` (the daemon resolves both; see [`Connector::secret_keys`]).
    pub password: Option<String>,
    /// SASL account (with `sasl_password`), for SASL PLAIN.
    pub sasl_account: Option<String>,
    /// SASL password; a secret like `password`.
    pub sasl_password: Option<String>,
    /// Relay or per-user connections.
    #[serde(default)]
    pub connections: Connections,
    /// Most lines one bridged message may take before it is shortened.
    #[serde(default = "default_max_lines")]
    pub max_lines: usize,
    /// How edits are shown: "diff" (s/old/new/ when small), "resend" or "suppress".
    #[serde(default)]
    pub edits: render::EditMode,
    /// Show reactions as action lines.
    #[serde(default)]
    pub reactions: bool,
    /// Put a zero-width space into relayed names so they do not highlight IRC users.
    #[serde(default = "yes")]
    pub anti_ping: bool,
    /// `nick: text` is a reply if `nick` spoke within this many seconds (0 disables).
    #[serde(default = "default_reply_window")]
    pub reply_window_secs: u64,
    /// `s/old/new/` is an edit if the user spoke within this many seconds (0 disables).
    #[serde(default = "default_edit_window")]
    pub edit_window_secs: u64,
    /// Lines that may be sent at once.
    #[serde(default = "default_burst")]
    pub flood_burst: u32,
    /// Lines per second after the burst.
    #[serde(default = "default_rate")]
    pub flood_rate: f64,
}

fn default_realname() -> String {
    "mimi-bridge".into()
}
fn default_max_lines() -> usize {
    5
}
fn yes() -> bool {
    true
}
fn default_reply_window() -> u64 {
    600
}
fn default_edit_window() -> u64 {
    300
}
fn default_burst() -> u32 {
    5
}
fn default_rate() -> f64 {
    2.0
}

impl Config {
    /// A relay config for `server` and `nick` with every default.
    pub fn new(server: impl Into<String>, nick: impl Into<String>) -> Self {
        Self {
            server: server.into(),
            tls: false,
            nick: nick.into(),
            username: None,
            realname: default_realname(),
            password: None,
            sasl_account: None,
            sasl_password: None,
            connections: Connections::Relay,
            max_lines: default_max_lines(),
            edits: render::EditMode::Diff,
            reactions: false,
            anti_ping: true,
            reply_window_secs: default_reply_window(),
            edit_window_secs: default_edit_window(),
            flood_burst: default_burst(),
            flood_rate: default_rate(),
        }
    }
}

/// What relay-mode IRC can express.
pub fn capabilities(config: &Config) -> Capabilities {
    Capabilities::none()
        .with(Feature::Formatting, Grade::Degraded)
        .with(Feature::Replies, Grade::Degraded)
        .with(
            Feature::Edits,
            if config.edits == render::EditMode::Suppress { Grade::Unsupported } else { Grade::Degraded },
        )
        .with(Feature::Reactions, if config.reactions { Grade::Degraded } else { Grade::Unsupported })
        .with(Feature::Attachments, Grade::Degraded)
        .with(Feature::MultiLine, Grade::Degraded)
        .with_limits(Limits {
            max_text_bytes: Some(400),
            max_lines: Some(config.max_lines),
            max_attachment_bytes: None,
        })
}

/// The IRC connector.
#[derive(Debug, Default)]
pub struct IrcConnector;

#[async_trait]
impl Connector for IrcConnector {
    type Config = Config;

    fn network(&self) -> &'static str {
        "irc"
    }

    fn capabilities(&self, config: &Config) -> Capabilities {
        capabilities(config)
    }

    fn secret_keys(&self) -> &'static [&'static str] {
        &["password", "sasl_password"]
    }

    fn validate(&self, id: &AccountId, c: &Config) -> Result<(), ConnectorError> {
        let bad = |reason: String| Err(ConnectorError::Config { account: id.clone(), reason });
        if !isupport::valid_nick(&c.nick, 31) {
            return bad(format!("nick {:?} is not a valid IRC nick", c.nick));
        }
        if !c.server.rsplit_once(':').is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok()) {
            return bad(format!("server {:?} must be HOST:PORT", c.server));
        }
        if c.tls {
            return bad("TLS is not built into this connector yet; use a local TLS tunnel or tls = false".into());
        }
        if c.connections == Connections::PerUser {
            return bad("connections = \"per-user\" is not built yet; use \"relay\"".into());
        }
        if c.sasl_account.is_some() != c.sasl_password.is_some() {
            return bad("sasl_account and sasl_password (or sasl_password_file) go together".into());
        }
        if c.max_lines == 0 || c.flood_burst == 0 || c.flood_rate.is_nan() || c.flood_rate <= 0.0 {
            return bad("max_lines, flood_burst and flood_rate must be positive".into());
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
        account::IrcAccount::start(id, config, ctx)
    }
}
