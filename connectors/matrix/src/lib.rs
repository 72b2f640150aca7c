//! The Matrix connector: an application service with ghost users, or one bot account that relays everyone.
//!
//! * Translation, sans-IO (no sockets, no tokio; unit-tested on event JSON): [`inbound`] (Matrix events → core
//!   events), [`outbound`] (core events → client-server API calls), [`format`] (Matrix HTML ⇄ MIMI markdown),
//!   [`ghost`] (ghost user ids), [`translate`] (who is who), [`media`] (media events ⇄ attachments), [`resend`]
//!   (finding an old delivery's earlier attempt in the timeline).
//! * Appservice mode (IO shell): [`server`] (the appservice API the homeserver calls, an axum router),
//!   [`homeserver`] (client-server calls as ghosts), [`account`] (the [`bridge_api::Account`]), [`registration`]
//!   (the registration file), [`config`] (`[matrix.NAME]`), [`media_transfer`] (files between the homeserver and
//!   the daemon's media store), [`e2ee`] (end-to-end encrypted rooms: a device per bridge user).
//! * Bot mode (IO shell): [`bot`] — one ordinary account through matrix-sdk (session, sync, end-to-end
//!   encryption), relaying everyone as `name: text` with the same translation.
//!
//! The appservice API is served on a listener of its own, by the function the daemon gives
//! [`MatrixConnector::new`] (its bounded listener: connection caps, timeouts).

pub mod account;
pub mod bot;
pub mod catchup;
pub mod config;
pub mod e2ee;
pub mod format;
pub mod ghost;
mod handover;
pub mod homeserver;
pub mod inbound;
pub mod media;
pub mod media_transfer;
pub mod outbound;
pub mod registration;
pub mod resend;
pub mod server;
pub mod store_passphrase;
pub mod translate;

pub use config::{Config, Mode};
pub use ghost::{GhostError, GhostNames};
pub use inbound::Skipped;
pub use outbound::{MatrixAction, OutboundError};
pub use translate::Translator;

use async_trait::async_trait;
use bridge_api::capability::{Grade, Limits};
use bridge_api::{Account, AccountContext, AccountId, Capabilities, Connector, ConnectorError, Health};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// A future the serving function runs (and the shutdown signal it is given).
pub type ServeFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Serves an axum router on a bound listener until the shutdown future resolves.
pub type Serve = Arc<dyn Fn(tokio::net::TcpListener, axum::Router, ServeFuture) -> ServeFuture + Send + Sync>;

/// The Matrix network kind.
pub struct MatrixConnector {
    serve: Serve,
}

impl MatrixConnector {
    /// A connector whose appservice listeners are served by `serve` (the daemon passes its bounded listener).
    pub fn new(serve: Serve) -> Self {
        Self { serve }
    }

    /// A connector serving with plain `axum::serve` (for tests of the connector on its own).
    pub fn with_axum_serve() -> Self {
        Self::new(Arc::new(|tcp, app, stop| {
            Box::pin(async move {
                if let Err(e) = axum::serve(tcp, app).with_graceful_shutdown(stop).await {
                    tracing::warn!(error = %e, "appservice listener failed");
                }
            })
        }))
    }
}

/// What an appservice account carries: everything Matrix has natively, files included (through the daemon's media
/// store).
pub fn capabilities() -> Capabilities {
    Capabilities::all(Grade::Full).with_limits(Limits {
        max_text_bytes: Some(32 * 1024),
        max_lines: None,
        max_attachment_bytes: None,
    })
}

/// What a bot-mode account carries: the bot relays everyone, so reactions are notices from it (`bob reacted with
/// 👍`), files are the bot's (after the sender's name), mentions of other networks' users are their names, and
/// joins, leaves and typing are not shown. What Matrix users do themselves — their reactions, mentions, joins and
/// leaves — is said in full.
pub fn bot_capabilities() -> Capabilities {
    use bridge_api::Feature;
    capabilities()
        .with(Feature::Reactions, Grade::Degraded)
        .saying(Feature::Reactions, Grade::Full)
        .with(Feature::Mentions, Grade::Degraded)
        .saying(Feature::Mentions, Grade::Full)
        .with(Feature::Membership, Grade::Unsupported)
        .saying(Feature::Membership, Grade::Full)
        .with(Feature::Typing, Grade::Unsupported)
}

/// What an account of `config` carries.
pub fn capabilities_of(config: &Config) -> Capabilities {
    match config.mode {
        Mode::Appservice => capabilities(),
        Mode::Bot => bot_capabilities(),
    }
}

#[async_trait]
impl Connector for MatrixConnector {
    type Config = Config;

    fn network(&self) -> &'static str {
        "matrix"
    }

    fn capabilities(&self, config: &Config) -> Capabilities {
        capabilities_of(config)
    }

    fn secret_keys(&self) -> &'static [&'static str] {
        &["as_token", "hs_token", "password", "access_token", "store_passphrase"]
    }

    fn validate(&self, id: &AccountId, config: &Config) -> Result<(), ConnectorError> {
        config.check().map_err(|reason| ConnectorError::Config { account: id.clone(), reason })
    }

    async fn start(
        &self,
        id: AccountId,
        config: Config,
        ctx: AccountContext,
    ) -> Result<Arc<dyn Account>, ConnectorError> {
        if config.mode == Mode::Bot {
            let account = bot::BotAccount::start(id.clone(), config, ctx, bot_capabilities())
                .map_err(|reason| ConnectorError::Config { account: id, reason })?;
            return Ok(Arc::new(account));
        }
        let listen = config
            .listen
            .ok_or_else(|| ConnectorError::Config { account: id.clone(), reason: "`listen` must be set".into() })?;
        let tcp = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|e| ConnectorError::Config { account: id.clone(), reason: format!("`listen` {listen}: {e}") })?;
        let hs_token = config.hs_token.clone();
        let account = account::MatrixAccount::start(id.clone(), config, ctx, capabilities())
            .map_err(|reason| ConnectorError::Config { account: id, reason })?;
        let mut health = account.health();
        let stop: ServeFuture = Box::pin(async move {
            let _ = health.wait_for(|h| *h == Health::Stopped).await;
        });
        tokio::spawn((self.serve)(tcp, server::router(&hs_token, account.transactions()), stop));
        Ok(Arc::new(account))
    }
}
