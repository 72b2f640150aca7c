//! # connector-irc
//!
//! The IRC connector: relay mode (one bot connection per account, messages shown as `<name> text`) and per-user
//! mode (one IRC connection per active non-IRC sender, see [`pool`]), TLS with rustls ([`tls`]), IRCv3 CAP
//! negotiation, SASL PLAIN/EXTERNAL, ISUPPORT-aware nick and channel handling, flood control per connection,
//! reconnect with jittered backoff per connection. Laid out like every connector ([`docs/connector-guide.md`]):
//!
//! * sans IO: [`message`] (wire format), [`session`] (registration/CAP/SASL state machine), [`isupport`],
//!   [`format`] (IRC codes ⇄ markdown), [`render`] (outbound rendering and splitting), [`inbound`] (inbound
//!   translation with the reply/edit conventions), [`pace`] (flood control following the server's pace by
//!   PING/PONG), [`flood`] (token bucket, the optional rate cap), [`pool`] (per-user nicks and connection
//!   decisions), [`roster`] (who is in the bot's channels; joins, parts and netsplits damped);
//! * IO shell: [`account`] (the account: bot + per-user pool), `conn` (one connection), [`tls`].
//!
//! [`docs/connector-guide.md`]: https://example.invalid/docs/connector-guide.md

pub mod account;
mod conn;
pub mod flood;
pub mod format;
pub mod inbound;
pub mod isupport;
pub mod message;
pub mod pace;
pub mod pool;
pub mod render;
pub mod roster;
pub mod session;
pub mod tls;

use async_trait::async_trait;
use bridge_api::capability::{Capabilities, Feature, Grade, Limits};
use bridge_api::{Account, AccountContext, AccountId, Connector, ConnectorError};
use serde::Deserialize;
use std::path::PathBuf;
use std::sync::Arc;

/// How an account reaches IRC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Connections {
    /// One bot connection; other networks' users are shown as `<name> text`.
    #[default]
    Relay,
    /// One connection per active non-IRC user (up to `max_user_connections`), reaped when idle; the bot still
    /// reads the channels and relays for senders beyond the cap.
    PerUser,
}

/// The body of an `[irc.NAME]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `host:port`.
    pub server: String,
    /// Connect with TLS (rustls; the server's certificate and name are verified).
    #[serde(default)]
    pub tls: bool,
    /// PEM file of the CA certificates to trust instead of the system store (for a private CA). Needs `tls`.
    pub tls_ca_file: Option<PathBuf>,
    /// PEM file of the TLS client certificate chain (CertFP / SASL EXTERNAL). Needs `tls` and `tls_client_key_file`.
    pub tls_client_cert_file: Option<PathBuf>,
    /// PEM file of the TLS client certificate's private key (PKCS#8, PKCS#1 or SEC1).
    pub tls_client_key_file: Option<PathBuf>,
    /// Log in with SASL EXTERNAL (the client certificate) instead of PLAIN.
    #[serde(default)]
    pub sasl_external: bool,
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
    /// Per-user mode: most connections besides the bot's; senders beyond it are relayed through the bot.
    #[serde(default = "default_max_user_connections")]
    pub max_user_connections: usize,
    /// Per-user mode: a user's connection quits after this many seconds without a message from them.
    #[serde(default = "default_user_idle")]
    pub user_idle_secs: u64,
    /// Per-user mode: appended to the nicks derived from display names (marks them as bridged; "" for none).
    #[serde(default = "default_user_nick_suffix")]
    pub user_nick_suffix: String,
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
    /// Flood control: most lines in flight — written but not yet processed by the server, as a PONG to the
    /// bridge's own PING shows ([`pace`]); with `flood_rate`, also the burst of its token bucket.
    #[serde(default = "default_burst")]
    pub flood_burst: u32,
    /// Optional hard cap in lines per second on top of the window; none by default (the server's pace rules).
    pub flood_rate: Option<f64>,
}

fn default_max_user_connections() -> usize {
    50
}
fn default_user_idle() -> u64 {
    6 * 3600
}
fn default_user_nick_suffix() -> String {
    "[m]".into()
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
    pace::DEFAULT_WINDOW_LINES
}

impl Config {
    /// A relay config for `server` and `nick` with every default.
    pub fn new(server: impl Into<String>, nick: impl Into<String>) -> Self {
        Self {
            server: server.into(),
            tls: false,
            tls_ca_file: None,
            tls_client_cert_file: None,
            tls_client_key_file: None,
            sasl_external: false,
            nick: nick.into(),
            username: None,
            realname: default_realname(),
            password: None,
            sasl_account: None,
            sasl_password: None,
            connections: Connections::Relay,
            max_user_connections: default_max_user_connections(),
            user_idle_secs: default_user_idle(),
            user_nick_suffix: default_user_nick_suffix(),
            max_lines: default_max_lines(),
            edits: render::EditMode::Diff,
            reactions: false,
            anti_ping: true,
            reply_window_secs: default_reply_window(),
            edit_window_secs: default_edit_window(),
            flood_burst: default_burst(),
            flood_rate: None,
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
        .with(Feature::Mentions, Grade::Degraded)
        // Its users' joins, parts, quits and kicks, damped (`roster`); others' are not shown in the channel.
        .saying(Feature::Membership, Grade::Full)
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
        let tls_files = c.tls_ca_file.is_some() || c.tls_client_cert_file.is_some() || c.tls_client_key_file.is_some();
        if tls_files && !c.tls {
            return bad("tls_ca_file and tls_client_*_file need tls = true".into());
        }
        if c.tls
            && let Err(e) = tls::Tls::from_config(c)
        {
            return bad(e);
        }
        if c.sasl_account.is_some() != c.sasl_password.is_some() {
            return bad("sasl_account and sasl_password (or sasl_password_file) go together".into());
        }
        if c.sasl_external && (c.sasl_account.is_some() || c.tls_client_cert_file.is_none()) {
            return bad("sasl_external needs tls_client_cert_file and tls_client_key_file, and no sasl_account".into());
        }
        if c.connections == Connections::PerUser {
            if c.max_user_connections == 0 || c.user_idle_secs == 0 {
                return bad(
                    "max_user_connections and user_idle_secs must be positive (or use connections = \"relay\")".into(),
                );
            }
            let suffix_ok = c.user_nick_suffix.len() <= 10
                && c.user_nick_suffix.chars().all(|ch| ch.is_ascii_alphanumeric() || "[]\\`_^{|}-".contains(ch));
            if !suffix_ok {
                return bad(format!(
                    "user_nick_suffix {:?}: up to 10 of A-Z a-z 0-9 [ ] \\ ` _ ^ {{ | }} -",
                    c.user_nick_suffix
                ));
            }
        }
        if c.max_lines == 0 {
            return bad("`max_lines` must be positive".into());
        }
        if c.flood_burst == 0 {
            return bad("`flood_burst` must be at least 1 (lines in flight)".into());
        }
        if c.flood_rate.is_some_and(|r| r.is_nan() || r <= 0.0) {
            return bad("`flood_rate` must be a positive number of lines per second (leave it out for no cap)".into());
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
