//! [`HttpPeerClient`]: the provider's [`PeerClient`] over HTTP(S) with the configured [`Peers`]: requests in TLS
//! presentation language to the peer's `/v1/...` endpoints, with `From: mimi@OURDOMAIN`, `Mimi-User` for updates
//! and `Mimi-Sequence` for notifies; answers read up to [`MAX_ANSWER`](super::http::MAX_ANSWER) bytes, with the
//! hub's `Mimi-Sequence`. Any status but the expected success is [`PeerError::Status`] with the peer's JSON
//! `error` (and `retry_after_ms`); no answer, or one that does not decode, is [`PeerError::Unclear`].

use super::http::{Answer, Peers};
use super::path_of;
use async_trait::async_trait;
use mimi_protocol::wire::{
    FanoutMessage, GroupInfoRequest, GroupInfoResponse, KeyMaterialRequest, KeyMaterialResponse, LogPage,
    SubmitMessageRequest, SubmitMessageResponse, UpdateRequest, UpdateRoomResponse, WireMessage,
};
use mimi_provider::{HubAnswer, PeerClient, PeerError};
use std::sync::Arc;

/// Our requests to peers, over HTTP(S).
#[derive(Debug)]
pub struct HttpPeerClient {
    peers: Arc<Peers>,
    from: String,
}

impl HttpPeerClient {
    /// Requests of provider `from` (our domain) to `peers`.
    pub fn new(peers: Arc<Peers>, from: &str) -> Self {
        Self { peers, from: from.to_owned() }
    }

    /// Sends `body` to `path` of peer `domain`; its answer if its status is `success`.
    async fn ask(
        &self,
        method: &str,
        domain: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
        success: impl Fn(u16) -> bool,
    ) -> Result<Answer, PeerError> {
        let base = self.peers.get(domain).ok_or_else(|| PeerError::NotAPeer(domain.to_owned()))?;
        let url = format!("{}{path}", base.trim_end_matches('/'));
        let a = self.peers.request(method, &url, &self.from, headers, body).await.map_err(PeerError::Unclear)?;
        if success(a.status) {
            return Ok(a);
        }
        let json = serde_json::from_slice::<serde_json::Value>(&a.body).unwrap_or_default();
        let reason = json["error"].as_str().map(str::to_owned).unwrap_or_default();
        let retry_after = json["retry_after_ms"].as_u64().map(std::time::Duration::from_millis);
        Err(PeerError::Status { status: a.status, reason, retry_after })
    }

    /// POSTs `request` to `path` of peer `domain`; the answer's body (200 only) and `Mimi-Sequence`.
    async fn post(
        &self,
        domain: &str,
        path: &str,
        headers: &[(&str, &str)],
        request: &impl WireMessage,
    ) -> Result<Answer, PeerError> {
        let body = request.encode().map_err(|e| PeerError::Local(e.to_string()))?;
        self.ask("POST", domain, path, headers, body, |s| s == 200).await
    }
}

fn decode<T: WireMessage>(a: &Answer) -> Result<T, PeerError> {
    T::decode(&a.body).map_err(|e| PeerError::Unclear(e.to_string()))
}

#[async_trait]
impl PeerClient for HttpPeerClient {
    fn is_peer(&self, domain: &str) -> bool {
        self.peers.contains_key(domain)
    }

    async fn submit_message(
        &self,
        hub: &str,
        room: &str,
        request: &SubmitMessageRequest,
    ) -> Result<HubAnswer<SubmitMessageResponse>, PeerError> {
        let a = self.post(hub, &format!("/v1/submitMessage/{}", path_of(room)), &[], request).await?;
        Ok(HubAnswer { answer: decode(&a)?, seq: a.sequence })
    }

    async fn update(
        &self,
        hub: &str,
        room: &str,
        requester: &str,
        request: &UpdateRequest,
    ) -> Result<HubAnswer<UpdateRoomResponse>, PeerError> {
        let path = format!("/v1/update/{}", path_of(room));
        let a = self.post(hub, &path, &[("mimi-user", requester)], request).await?;
        Ok(HubAnswer { answer: decode(&a)?, seq: a.sequence })
    }

    async fn group_info(
        &self,
        hub: &str,
        room: &str,
        request: &GroupInfoRequest,
    ) -> Result<GroupInfoResponse, PeerError> {
        decode(&self.post(hub, &format!("/v1/groupInfo/{}", path_of(room)), &[], request).await?)
    }

    async fn key_material(&self, peer: &str, request: &KeyMaterialRequest) -> Result<KeyMaterialResponse, PeerError> {
        let path = format!("/v1/keyMaterial/{}", path_of(&request.target_user));
        decode(&self.post(peer, &path, &[], request).await?)
    }

    async fn log(&self, hub: &str, room: &str, after: u64) -> Result<LogPage, PeerError> {
        let path = format!("/v1/log/{}?after={after}", path_of(room));
        decode(&self.ask("GET", hub, &path, &[], Vec::new(), |s| s == 200).await?)
    }

    async fn notify(&self, follower: &str, room: &str, seq: u64, fanout: &FanoutMessage) -> Result<(), PeerError> {
        let body = fanout.encode().map_err(|e| PeerError::Local(e.to_string()))?;
        let path = format!("/v1/notify/{}", path_of(room));
        let seq = seq.to_string();
        let headers = [("mimi-sequence", seq.as_str())];
        self.ask("POST", follower, &path, &headers, body, |s| (200..300).contains(&s)).await.map(drop)
    }
}
