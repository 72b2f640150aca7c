//! [`Federation`]: a [`Provider`] together with the way it reaches its peers ([`PeerClient`]), and the
//! federation procedures that need both, whatever carries them (HTTP in the daemon, in-process in tests):
//!
//! * [`forward`] — what our native clients send to rooms hosted elsewhere: application messages
//!   and updates forwarded to the room's hub (with the tentative follow of an update, and the catch-up when the
//!   hub says the room moved on), GroupInfo fetched from the hub, KeyPackages claimed from other providers;
//! * [`catch_up`] — copying a followed room's log from its hub after a gap or a restart;
//! * [`notify`] — as a hub, notifying our followers of every entry, one worker per follower.

pub mod catch_up;
pub mod forward;
pub mod notify;

pub use forward::{HubVerdict, Verdict};

use crate::failure::Failure;
use crate::peer_client::PeerClient;
use crate::service::{Provider, RoomRoute};
use std::sync::Arc;

/// A provider and its peers.
#[derive(Clone)]
pub struct Federation {
    provider: Provider,
    peers: Arc<dyn PeerClient>,
}

impl std::fmt::Debug for Federation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Federation").field("provider", &self.provider).finish_non_exhaustive()
    }
}

impl Federation {
    /// `provider`, reaching its peers through `peers`.
    pub fn new(provider: Provider, peers: Arc<dyn PeerClient>) -> Self {
        Self { provider, peers }
    }

    /// The provider.
    pub fn provider(&self) -> &Provider {
        &self.provider
    }

    /// How the provider reaches its peers.
    pub fn peers(&self) -> &dyn PeerClient {
        self.peers.as_ref()
    }

    /// The hub of a room hosted elsewhere (`None` if we host it): the one we follow it from, or the domain it is
    /// named after if that is a configured peer. An unknown room (404) otherwise.
    pub fn remote_hub(&self, room: &str) -> Result<Option<String>, Failure> {
        match self.provider.route(room)? {
            RoomRoute::Hub => Ok(None),
            RoomRoute::Follower { hub } => Ok(Some(hub)),
            RoomRoute::Remote { domain } if self.peers.is_peer(&domain) => Ok(Some(domain)),
            RoomRoute::Remote { domain } => {
                Err(Failure::not_found(format!("unknown room {room} ({domain} is not a configured peer)")))
            }
        }
    }
}
