//! The connectors compiled into this build, type-erased so the daemon can start accounts from TOML tables.
//!
//! A connector crate implements [`bridge_api::Connector`]; registering it here (`Box::new(Typed(IrcConnector))`
//! in [`built_in`]) and adding its network name to [`crate::config::BUILT_NETWORKS`] is all the daemon needs:
//! accounts start with their resolved tables, show their health in `status` and `/metrics`, and stop politely at
//! shutdown.

use async_trait::async_trait;
use bridge_api::AccountId;
use bridge_api::capability::Capabilities;
use bridge_api::connector::{Account, AccountContext, Connector, ConnectorError};
use std::sync::Arc;

/// One network kind, type-erased.
#[async_trait]
pub trait Network: Send + Sync {
    /// The config table prefix (`irc`).
    fn name(&self) -> &'static str;
    /// Keys of an account table that hold secrets ([`Connector::secret_keys`]).
    fn secret_keys(&self) -> &'static [&'static str];
    /// Deserialises (unknown keys rejected by the connector's config type) and validates an account table.
    fn validate(&self, id: &AccountId, table: &toml::Table) -> Result<(), ConnectorError>;
    /// What an account with this table can express ([`Connector::capabilities`]).
    fn capabilities(&self, id: &AccountId, table: &toml::Table) -> Result<Capabilities, ConnectorError>;
    /// Starts an account; returns at once (connecting happens in the background).
    async fn start(
        &self,
        id: AccountId,
        table: toml::Table,
        ctx: AccountContext,
    ) -> Result<Arc<dyn Account>, ConnectorError>;
}

/// Adapts a [`Connector`] to [`Network`].
pub struct Typed<C>(pub C);

fn config<C: Connector>(id: &AccountId, table: &toml::Table) -> Result<C::Config, ConnectorError> {
    table
        .clone()
        .try_into()
        .map_err(|e: toml::de::Error| ConnectorError::Config { account: id.clone(), reason: e.message().to_owned() })
}

#[async_trait]
impl<C: Connector> Network for Typed<C> {
    fn name(&self) -> &'static str {
        self.0.network()
    }
    fn secret_keys(&self) -> &'static [&'static str] {
        self.0.secret_keys()
    }
    fn validate(&self, id: &AccountId, table: &toml::Table) -> Result<(), ConnectorError> {
        let cfg = config::<C>(id, table)?;
        self.0.validate(id, &cfg)
    }
    fn capabilities(&self, id: &AccountId, table: &toml::Table) -> Result<Capabilities, ConnectorError> {
        Ok(self.0.capabilities(&config::<C>(id, table)?))
    }
    async fn start(
        &self,
        id: AccountId,
        table: toml::Table,
        ctx: AccountContext,
    ) -> Result<Arc<dyn Account>, ConnectorError> {
        let cfg = config::<C>(&id, &table)?;
        self.0.validate(&id, &cfg)?;
        self.0.start(id, cfg, ctx).await
    }
}

/// The networks of this build.
pub fn built_in() -> Vec<Box<dyn Network>> {
    vec![
        Box::new(Typed(connector_irc::IrcConnector)),
        Box::new(Typed(connector_matrix::MatrixConnector::new(Arc::new(serve_appservice)))),
        Box::new(Typed(connector_xmpp::XmppConnector)),
    ]
}

/// Serves a Matrix appservice API on its own listener, under the daemon's bounds (src/listener.rs): only the
/// homeserver connects there, so the caps are the admin listener's.
fn serve_appservice(
    tcp: tokio::net::TcpListener,
    app: axum::Router,
    stop: connector_matrix::ServeFuture,
) -> connector_matrix::ServeFuture {
    let (limits, _) = crate::listener::Limits::ADMIN.within_nofile(crate::listener::ADMIN_NOFILE_DIVISOR);
    Box::pin(crate::listener::serve("matrix", tcp, crate::listener::Plain, app, limits, stop))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_registry_matches_what_the_config_accepts() {
        let mut names: Vec<&str> = super::built_in().iter().map(|n| n.name()).collect();
        names.sort_unstable();
        let mut accepted = crate::config::BUILT_NETWORKS.to_vec();
        accepted.sort_unstable();
        assert_eq!(names, accepted);
    }
}
