//! # connector-xmpp
//!
//! The XMPP connector: multi-user chats (XEP-0045) bridged either through an external component (XEP-0114, each
//! bridged user a puppet occupant with its own JID and nick: component mode) or through one ordinary client
//! account that relays every bridged user as `name: text` (client mode). Laid out like every connector
//! (`docs/connector-guide.md`):
//!
//! * sans IO: [`inbound`] (stanzas → core events), [`outbound`] (core events → stanzas), [`styling`] (XEP-0393
//!   ⇄ markdown), [`oob`] (attachments as XEP-0066 links), [`mentions`] (XEP-0372 references), [`escape`]
//!   (puppet JID localparts), [`puppets`] (puppet JIDs and nicks), [`catchup`] (the archive after a join),
//!   [`selfping`], [`framing`] (component stream → bounded stanzas, namespace rewrite), [`ns`];
//! * IO shell: [`account`] (the account: reconnects, joins, relays, puppets), [`client`] (one client-to-server
//!   stream), [`component`] (one XEP-0114 stream), [`link`] (a stream as the account sees it).
//!
//! Never enable the `component` feature of `tokio-xmpp` or `xmpp-parsers`: it switches the stanza namespace of
//! the typed parsers for the whole workspace.

pub mod account;
pub mod catchup;
pub mod client;
pub mod component;
pub mod escape;
pub mod framing;
pub mod inbound;
pub mod link;
pub mod mentions;
pub mod ns;
pub mod oob;
pub mod outbound;
pub mod puppets;
pub mod selfping;
pub mod styling;

use async_trait::async_trait;
use bridge_api::capability::{Capabilities, Feature, Grade, Limits};
use bridge_api::{Account, AccountContext, AccountId, Connector, ConnectorError};
use serde::Deserialize;
use std::sync::Arc;
use xmpp_parsers::jid::Jid;

pub use client::Transport;
/// The XML and stanza crates of this connector's API (for tests and tools that speak XMPP next to it).
pub use {minidom, xmpp_parsers};

/// How the bridge attaches to the XMPP server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// One ordinary account joins the rooms and relays everyone as `name: text`.
    Client,
    /// An external component (XEP-0114) with a puppet occupant per bridged user.
    Component,
}

/// The body of an `[xmpp.NAME]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `client` or `component`.
    pub mode: Mode,
    /// `host:port` of the server's client port (client mode) or component port (component mode).
    pub server: String,
    /// The component's domain, e.g. `mimi.example.org` (component mode).
    pub domain: Option<String>,
    /// The component's shared secret (component mode). A secret: give it as `secret_file = "/path"` or
    /// `secret = "env:NAME"`.
    pub secret: Option<String>,
    /// The account's JID, `user@domain` (client mode).
    pub jid: Option<String>,
    /// The account's password (client mode). A secret: give it as `password_file = "/path"` or
    /// `password = "env:NAME"`.
    pub password: Option<String>,
    /// `starttls` (default; the certificate is checked against the system roots) or `insecure-tcp` (a server on
    /// the same host or a test server only).
    #[serde(default)]
    pub transport: Transport,
    /// The bridge's nick in the rooms (an underscore is appended while it is taken).
    #[serde(default = "default_nick")]
    pub nick: String,
    /// Seconds between MUC self-pings (XEP-0410) of each joined room: a room that forgot the bridge is joined
    /// again, and a ping unanswered by the next one ends the stream (reconnect). 0: never.
    #[serde(default = "default_self_ping")]
    pub self_ping_secs: u64,
    /// Most live messages of one room held while its archive is read after a join (see `account`): not a
    /// setting of the config file; tests lower it to exercise what happens beyond it.
    #[doc(hidden)]
    #[serde(skip, default = "default_catchup_hold")]
    pub catchup_hold: usize,
}

fn default_catchup_hold() -> usize {
    1000
}

fn default_self_ping() -> u64 {
    300
}

fn default_nick() -> String {
    "mimi-bridge".into()
}

impl Config {
    /// A client-mode config with every default.
    pub fn client(server: impl Into<String>, jid: impl Into<String>, password: impl Into<String>) -> Self {
        Self {
            mode: Mode::Client,
            server: server.into(),
            domain: None,
            secret: None,
            jid: Some(jid.into()),
            password: Some(password.into()),
            transport: Transport::default(),
            nick: default_nick(),
            self_ping_secs: default_self_ping(),
            catchup_hold: default_catchup_hold(),
        }
    }

    /// A component-mode config with every default.
    pub fn component(server: impl Into<String>, domain: impl Into<String>, secret: impl Into<String>) -> Self {
        Self {
            mode: Mode::Component,
            server: server.into(),
            domain: Some(domain.into()),
            secret: Some(secret.into()),
            jid: None,
            password: None,
            transport: Transport::default(),
            nick: default_nick(),
            self_ping_secs: default_self_ping(),
            catchup_hold: default_catchup_hold(),
        }
    }
}

/// What an account can express: messages with styling, attachments (XEP-0066 links; inbound files go through
/// the daemon's media store), XEP-0461 replies, XEP-0308 corrections, XEP-0424 retractions; mentions as XEP-0372
/// references around the mentioned user's nick (in client mode bridged users have no nick in the room, so a
/// mention of one is their name as text: degraded); reactions as XEP-0444 sets from each puppet in component mode, as a text line in client mode
/// (one account cannot hold a reaction set per bridged user); joins and leaves as puppet presence, and typing as
/// the puppet's XEP-0085 chat states, in component mode (in client mode the one relay account would show
/// everyone's typing as its own, so none is sent).
pub fn capabilities(config: &Config) -> Capabilities {
    let component = config.mode == Mode::Component;
    Capabilities::none()
        .with(Feature::Formatting, Grade::Full)
        .with(Feature::Replies, Grade::Full)
        .with(Feature::Edits, Grade::Full)
        .with(Feature::Deletes, Grade::Full)
        .with(Feature::Reactions, if component { Grade::Full } else { Grade::Degraded })
        .with(Feature::Membership, if component { Grade::Full } else { Grade::Unsupported })
        .with(Feature::MultiLine, Grade::Full)
        .with(Feature::Mentions, if component { Grade::Full } else { Grade::Degraded })
        .with(Feature::Attachments, Grade::Full)
        .with(Feature::Typing, if component { Grade::Full } else { Grade::Unsupported })
        .with_limits(Limits { max_text_bytes: Some(inbound::MAX_BODY), max_lines: None, max_attachment_bytes: None })
}

/// The XMPP connector.
#[derive(Debug, Default)]
pub struct XmppConnector;

fn config_error(id: &AccountId, reason: impl Into<String>) -> ConnectorError {
    ConnectorError::Config { account: id.clone(), reason: reason.into() }
}

fn attach(id: &AccountId, config: &Config) -> Result<account::Attach, ConnectorError> {
    if !config.server.contains(':') {
        return Err(config_error(id, format!("server {:?} must be host:port", config.server)));
    }
    match config.mode {
        Mode::Client => login(id, config).map(account::Attach::Client),
        Mode::Component => {
            let domain = config.domain.clone().ok_or_else(|| config_error(id, "component mode needs `domain`"))?;
            let parsed = xmpp_parsers::jid::BareJid::new(&domain)
                .map_err(|e| config_error(id, format!("`domain` {domain:?}: {e}")))?;
            if parsed.node().is_some() {
                return Err(config_error(id, "`domain` is a domain (mimi.example.org), not a JID"));
            }
            let secret = config.secret.clone().ok_or_else(|| config_error(id, "component mode needs `secret`"))?;
            Ok(account::Attach::Component(component::ComponentLogin { server: config.server.clone(), domain, secret }))
        }
    }
}

fn login(id: &AccountId, config: &Config) -> Result<client::Login, ConnectorError> {
    let jid = config.jid.as_deref().ok_or_else(|| config_error(id, "client mode needs `jid`"))?;
    let jid = Jid::new(jid).map_err(|e| config_error(id, format!("jid {jid:?}: {e}")))?;
    if jid.node().is_none() || jid.resource().is_some() {
        return Err(config_error(id, "`jid` must be user@domain (no resource)"));
    }
    let password = config.password.clone().ok_or_else(|| config_error(id, "client mode needs `password`"))?;
    if config.nick.is_empty() || config.nick.len() > 64 {
        return Err(config_error(id, "nick must be 1 to 64 bytes"));
    }
    Ok(client::Login {
        server: config.server.clone(),
        jid,
        password,
        transport: config.transport,
        resource: format!("mimi-bridge-{}", id.name()),
    })
}

#[async_trait]
impl Connector for XmppConnector {
    type Config = Config;

    fn network(&self) -> &'static str {
        "xmpp"
    }

    fn capabilities(&self, config: &Config) -> Capabilities {
        capabilities(config)
    }

    fn secret_keys(&self) -> &'static [&'static str] {
        &["password", "secret"]
    }

    fn validate(&self, id: &AccountId, config: &Config) -> Result<(), ConnectorError> {
        if config.nick.is_empty() || config.nick.len() > 64 {
            return Err(config_error(id, "nick must be 1 to 64 bytes"));
        }
        attach(id, config).map(|_| ())
    }

    async fn start(
        &self,
        id: AccountId,
        config: Config,
        ctx: AccountContext,
    ) -> Result<Arc<dyn Account>, ConnectorError> {
        let settings = account::Settings {
            attach: attach(&id, &config)?,
            nick: config.nick.clone(),
            capabilities: capabilities(&config),
            self_ping: (config.self_ping_secs > 0).then(|| std::time::Duration::from_secs(config.self_ping_secs)),
            catchup_hold: config.catchup_hold,
        };
        Ok(Arc::new(account::XmppAccount::start(id, settings, ctx)))
    }
}
