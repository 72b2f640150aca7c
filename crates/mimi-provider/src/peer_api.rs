//! Serving our peers: the decisions behind the provider-to-provider endpoints (the daemon's `/v1/...`), whatever
//! carries them. Only configured peers are heard ([`PeerApi::hear`]); a hub accepts messages and updates of its
//! followers' users, a follower accepts notifies only from the room's hub, a hub serves its log only to the room's
//! followers, and a `keyMaterial` claim naming a room hosted by the requesting peer makes us follow that room (the
//! Welcome will come through its log).

use crate::failure::Failure;
use crate::federation::Federation;
use crate::native_clients::verified;
use crate::pages::page_after;
use crate::peer_client::HubAnswer;
use crate::service::{Provider, ProviderError, uri_domain};
use mimi_protocol::hub::{Origin, Refusal};
use mimi_protocol::wire::key_material::CIPHERSUITE_1;
use mimi_protocol::wire::{
    ClientKeyMaterial, ClientMaterial, FanoutMessage, GroupInfoRequest, GroupInfoResponse, KeyMaterialRequest,
    KeyMaterialResponse, KeyMaterialUserCode, LogPage, MlsMessageBytes, SequencedFanout, SubmitMessageRequest,
    SubmitMessageResponse, UpdateRequest, UpdateRoomResponse,
};

/// A configured peer a request came from (only [`PeerApi::hear`] makes one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeardPeer {
    domain: String,
}

impl HeardPeer {
    /// The peer's domain.
    pub fn domain(&self) -> &str {
        &self.domain
    }
}

/// What we serve our peers.
#[derive(Debug, Clone)]
pub struct PeerApi {
    federation: Federation,
}

impl PeerApi {
    /// The endpoints of `federation`'s provider.
    pub fn new(federation: Federation) -> Self {
        Self { federation }
    }

    /// The provider and its peers.
    pub fn federation(&self) -> &Federation {
        &self.federation
    }

    fn provider(&self) -> &Provider {
        self.federation.provider()
    }

    /// The peer a request names itself as (`from`: `mimi@DOMAIN`, the `From` header), if it is configured (403
    /// otherwise). The transport vouches for the name (mTLS), or trusts it (loopback development mode).
    pub fn hear(&self, from: &str) -> Result<HeardPeer, Failure> {
        let domain = from.strip_prefix("mimi@").unwrap_or("");
        if domain.is_empty() || !self.federation.peers().is_peer(domain) {
            return Err(Failure::forbidden(format!("peer {from:?} is not configured")));
        }
        Ok(HeardPeer { domain: domain.to_owned() })
    }

    /// `submitMessage`: an application message of a user of `from` to a room we host.
    pub async fn submit_message(
        &self,
        from: &HeardPeer,
        room: &str,
        request: SubmitMessageRequest,
    ) -> Result<HubAnswer<SubmitMessageResponse>, Failure> {
        let origin = Origin::Follower(from.domain.clone());
        let answer = |answer| Ok(HubAnswer { answer, seq: None });
        match self.provider().submit(room, request.app_message, &request.sending_uri, origin).await {
            Ok(a) => Ok(HubAnswer {
                answer: SubmitMessageResponse::Accepted { accepted_timestamp: a.timestamp },
                seq: Some(a.seq),
            }),
            Err(ProviderError::Refused(Refusal::EpochTooOld { current_epoch })) => {
                answer(SubmitMessageResponse::EpochTooOld { current_epoch })
            }
            Err(ProviderError::Refused(Refusal::NotAllowed(_))) => answer(SubmitMessageResponse::NotAllowed),
            Err(e) => Err(e.into()),
        }
    }

    /// `update`: a commit or proposals of `requester`, a user of `from`, to a room we host.
    pub async fn update(
        &self,
        from: &HeardPeer,
        room: &str,
        requester: &str,
        request: UpdateRequest,
    ) -> Result<HubAnswer<UpdateRoomResponse>, Failure> {
        let answer = |answer| Ok(HubAnswer { answer, seq: None });
        match self.provider().update(room, request, requester, Origin::Follower(from.domain.clone())).await {
            Ok(a) => Ok(HubAnswer {
                answer: UpdateRoomResponse::Success { accepted_timestamp: a.timestamp },
                seq: Some(a.seq),
            }),
            Err(ProviderError::Refused(Refusal::EpochTooOld { current_epoch })) => {
                answer(UpdateRoomResponse::WrongEpoch { current_epoch, description: "the room moved on".into() })
            }
            Err(ProviderError::Refused(Refusal::NotAllowed(description))) => {
                answer(UpdateRoomResponse::NotAllowed { description })
            }
            Err(e) => Err(e.into()),
        }
    }

    /// `notify`: entry `seq` of a room we follow, from its hub (403 from anyone else). A gap in our copy starts a
    /// catch-up from the hub's log, in a task of its own.
    pub async fn notify(&self, from: &HeardPeer, room: &str, seq: u64, fanout: FanoutMessage) -> Result<(), Failure> {
        if self.provider().hub_of(room)?.as_deref() != Some(from.domain.as_str()) {
            return Err(Failure::forbidden(format!("{} is not the hub of {room}", from.domain)));
        }
        let fetch = self.provider().accept_entries(room, vec![SequencedFanout { seq, fanout }], false).await?;
        if let Some(after) = fetch {
            self.federation.spawn_catch_up(room, after);
        }
        Ok(())
    }

    /// `groupInfo`: our answer, as the room's hub, to a `GroupInfoRequest` (400 unless its signature verifies;
    /// `noSuchRoom` for a room we do not know, 421 for a room we follow).
    pub async fn group_info(
        &self,
        _from: &HeardPeer,
        room: &str,
        request: &GroupInfoRequest,
    ) -> Result<GroupInfoResponse, Failure> {
        verified(request)?;
        Ok(self.provider().answer_group_info(room, request).await?)
    }

    /// `keyMaterial`: one KeyPackage of our user `target` (the user of the request's path), claimed by `from` for
    /// a room it hosts (403 for a room of another domain) with a request it signed as itself (400 if the signature
    /// does not verify, 403 if its credential is not `mimi://FROM`); we follow that room from then on.
    pub async fn key_material(
        &self,
        from: &HeardPeer,
        target: &str,
        request: KeyMaterialRequest,
    ) -> Result<KeyMaterialResponse, Failure> {
        let from = from.domain.as_str();
        // Signed by the requesting provider as itself (its hub key and credential `mimi://DOMAIN`).
        request.verify().map_err(|e| Failure::bad_request(format!("KeyMaterialRequest: {e}")))?;
        if request.requester_credential.basic_identity().as_deref() != Some(format!("mimi://{from}").as_bytes()) {
            return Err(Failure::forbidden(format!("the KeyMaterialRequest's credential is not {from}'s")));
        }
        if request.target_user != target {
            return Err(Failure::bad_request(format!(
                "targetUser {:?} is not the user of the path ({target})",
                request.target_user
            )));
        }
        if request.room_id.is_empty() {
            return Err(Failure::bad_request("a KeyPackage is claimed to invite its user: the request names no room"));
        }
        if uri_domain(&request.room_id) != Some(from) {
            return Err(Failure::forbidden(format!("{from} does not host {}", request.room_id)));
        }
        let answer = |user_status, clients| KeyMaterialResponse { user_status, user_uri: target.to_owned(), clients };
        if uri_domain(target) != Some(self.provider().domain()) || self.provider().user(target)?.is_none() {
            return Ok(answer(KeyMaterialUserCode::UserUnknown, Vec::new()));
        }
        if !request.ciphersuites.contains(&CIPHERSUITE_1) {
            return Ok(answer(KeyMaterialUserCode::NoCompatibleMaterial, Vec::new()));
        }
        let Some(kp) = self.provider().claim_key_package(target).await? else {
            let exhausted = ClientKeyMaterial { client_uri: target.to_owned(), material: ClientMaterial::Exhausted };
            return Ok(answer(KeyMaterialUserCode::NoCompatibleMaterial, vec![exhausted]));
        };
        // The Welcome that uses this KeyPackage will come through the room's log.
        self.provider().follow(&request.room_id, from).await?;
        let kp = MlsMessageBytes::new(kp).map_err(Failure::internal)?;
        let client = ClientKeyMaterial { client_uri: target.to_owned(), material: ClientMaterial::Success(kp) };
        Ok(answer(KeyMaterialUserCode::Success, vec![client]))
    }

    /// `log`: a page of the log of a room we host after `after`, for one of its followers (403 for others).
    pub fn log(&self, from: &HeardPeer, room: &str, after: u64) -> Result<LogPage, Failure> {
        if !self.provider().has_follower(room, &from.domain)? {
            return Err(Failure::forbidden(format!("{} does not follow {room}", from.domain)));
        }
        page_after(self.provider(), room, after)
    }
}
