//! For tests: an in-memory network of providers in one process. [`MemoryNetwork::join`] gives a provider a
//! [`Federation`] whose [`PeerClient`] calls the other providers' [`PeerApi`] directly, exactly as the daemon's
//! HTTP endpoints would (the asking provider is heard by its domain, as mTLS would vouch for it). A provider can
//! be marked down (every request to or from it gets no answer) and the notifies to one can be held back (they get
//! no answer either, so the hub's notifier keeps retrying them with backoff).
//!
//! Not for production use: nothing here is authenticated.

use crate::failure::Failure;
use crate::federation::Federation;
use crate::peer_api::{HeardPeer, PeerApi};
use crate::peer_client::{HubAnswer, PeerClient, PeerError};
use crate::service::Provider;
use async_trait::async_trait;
use mimi_protocol::wire::{
    FanoutMessage, GroupInfoRequest, GroupInfoResponse, KeyMaterialRequest, KeyMaterialResponse, LogPage,
    SubmitMessageRequest, SubmitMessageResponse, UpdateRequest, UpdateRoomResponse,
};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};

/// Providers in one process, reaching each other by domain.
#[derive(Debug, Default)]
pub struct MemoryNetwork {
    nodes: Mutex<HashMap<String, PeerApi>>,
    down: Mutex<HashSet<String>>,
    held: Mutex<HashSet<String>>,
    lost: Mutex<HashMap<String, usize>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl MemoryNetwork {
    /// An empty network.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Puts `provider` on the network (under its domain, replacing any earlier one); its federation, whose peers
    /// are the other providers on the network.
    pub fn join(self: &Arc<Self>, provider: Provider) -> Federation {
        let domain = provider.domain().to_owned();
        let client = MemoryPeerClient { network: Arc::downgrade(self), from: domain.clone() };
        let federation = Federation::new(provider, Arc::new(client));
        lock(&self.nodes).insert(domain, PeerApi::new(federation.clone()));
        federation
    }

    /// Takes provider `domain` off the network, as when its process stops: it is no peer of the others until it
    /// joins again.
    pub fn leave(&self, domain: &str) {
        lock(&self.nodes).remove(domain);
    }

    /// Marks provider `domain` down (`true`: requests to and from it get no answer) or up again.
    pub fn set_down(&self, domain: &str, down: bool) {
        let mut set = lock(&self.down);
        if down {
            set.insert(domain.to_owned())
        } else {
            set.remove(domain)
        };
    }

    /// Loses the answers of provider `domain` to the next `n` messages submitted to it (`submitMessage`), after
    /// it has acted on them: the sender cannot tell whether they were sequenced.
    pub fn lose_answers(&self, domain: &str, n: usize) {
        lock(&self.lost).insert(domain.to_owned(), n);
    }

    /// Holds back notifies to `domain` (`true`: they get no answer) or lets them through again.
    pub fn hold_notifies(&self, domain: &str, hold: bool) {
        let mut set = lock(&self.held);
        if hold {
            set.insert(domain.to_owned())
        } else {
            set.remove(domain)
        };
    }
}

/// The [`PeerClient`] of one provider on a [`MemoryNetwork`].
#[derive(Debug)]
struct MemoryPeerClient {
    network: Weak<MemoryNetwork>,
    from: String,
}

/// A peer's refusal as the HTTP client would see it.
fn refused(f: Failure) -> PeerError {
    PeerError::Status { status: f.status.code(), reason: f.reason, retry_after: f.retry_after }
}

impl MemoryPeerClient {
    /// The endpoints of provider `to`, and the asking provider as it hears it.
    fn reach(&self, to: &str) -> Result<(PeerApi, HeardPeer), PeerError> {
        let network = self.network.upgrade().ok_or_else(|| PeerError::Unclear("the network is gone".into()))?;
        if to == self.from {
            return Err(PeerError::NotAPeer(to.to_owned()));
        }
        let api = lock(&network.nodes).get(to).cloned().ok_or_else(|| PeerError::NotAPeer(to.to_owned()))?;
        let down = lock(&network.down);
        if down.contains(to) || down.contains(&self.from) {
            return Err(PeerError::Unclear(format!("{to}: no answer (down)")));
        }
        drop(down);
        let heard = api.hear(&format!("mimi@{}", self.from)).map_err(refused)?;
        Ok((api, heard))
    }
}

#[async_trait]
impl PeerClient for MemoryPeerClient {
    fn is_peer(&self, domain: &str) -> bool {
        domain != self.from && self.network.upgrade().is_some_and(|n| lock(&n.nodes).contains_key(domain))
    }

    async fn submit_message(
        &self,
        hub: &str,
        room: &str,
        request: &SubmitMessageRequest,
    ) -> Result<HubAnswer<SubmitMessageResponse>, PeerError> {
        let (api, from) = self.reach(hub)?;
        let answer = api.submit_message(&from, room, request.clone()).await.map_err(refused)?;
        let network = self.network.upgrade().ok_or_else(|| PeerError::Unclear("the network is gone".into()))?;
        if let Some(n) = lock(&network.lost).get_mut(hub).filter(|n| **n > 0) {
            *n -= 1;
            return Err(PeerError::Unclear(format!("{hub}: the answer was lost")));
        }
        Ok(answer)
    }

    async fn update(
        &self,
        hub: &str,
        room: &str,
        requester: &str,
        request: &UpdateRequest,
    ) -> Result<HubAnswer<UpdateRoomResponse>, PeerError> {
        let (api, from) = self.reach(hub)?;
        api.update(&from, room, requester, request.clone()).await.map_err(refused)
    }

    async fn group_info(
        &self,
        hub: &str,
        room: &str,
        request: &GroupInfoRequest,
    ) -> Result<GroupInfoResponse, PeerError> {
        let (api, from) = self.reach(hub)?;
        api.group_info(&from, room, request).await.map_err(refused)
    }

    async fn key_material(&self, peer: &str, request: &KeyMaterialRequest) -> Result<KeyMaterialResponse, PeerError> {
        let (api, from) = self.reach(peer)?;
        api.key_material(&from, &request.target_user, request.clone()).await.map_err(refused)
    }

    async fn log(&self, hub: &str, room: &str, after: u64) -> Result<LogPage, PeerError> {
        let (api, from) = self.reach(hub)?;
        api.log(&from, room, after).map_err(refused)
    }

    async fn notify(&self, follower: &str, room: &str, seq: u64, fanout: &FanoutMessage) -> Result<(), PeerError> {
        let (api, from) = self.reach(follower)?;
        if self.network.upgrade().is_some_and(|n| lock(&n.held).contains(follower)) {
            return Err(PeerError::Unclear(format!("{follower}: notify held back")));
        }
        api.notify(&from, room, seq, fanout.clone()).await.map_err(refused)
    }
}
