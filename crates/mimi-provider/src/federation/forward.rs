//! What our native clients send to rooms hosted by another provider, through our [`PeerClient`]: application
//! messages (`submitMessage`) and updates to the room's hub, GroupInfo requests to it, and KeyPackage claims
//! (`keyMaterial`) for users of other providers. When the hub answers that the room moved to a newer epoch, we
//! catch up from its log before answering, so the client finds the commit it missed.
//!
//! [`PeerClient`]: crate::PeerClient

use super::Federation;
use crate::failure::Failure;
use crate::service::ProviderError;
use mimi_protocol::hub::{Refusal, Sequenced};
use mimi_protocol::wire::{
    DEFAULT_CIPHERSUITE, GroupInfoCode, GroupInfoRequest, GroupInfoResponse, KeyMaterialRequest, KeyMaterialUserCode,
    MlsMessageBytes, RatchetTreeOption, SubmitMessageRequest, SubmitMessageResponse, UpdateRequest, UpdateRoomResponse,
    wire_format,
};

/// What a client is told of a message it sent (to our hub or, through us, to another).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Sequenced, at this number of the hub's log (`None` if a remote hub did not say).
    Accepted {
        /// The sequence number.
        seq: Option<u64>,
    },
    /// The hub moved past the message's epoch: catch up and try again.
    EpochTooOld {
        /// The hub's epoch.
        current_epoch: u64,
    },
}

impl Verdict {
    /// The verdict on a message our own hub sequenced (or refused).
    pub fn of_local(r: Result<Sequenced, ProviderError>) -> Result<Self, Failure> {
        match r {
            Ok(a) => Ok(Self::Accepted { seq: Some(a.seq) }),
            Err(ProviderError::Refused(Refusal::EpochTooOld { current_epoch })) => {
                Ok(Self::EpochTooOld { current_epoch })
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// What the hub made of an update we forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HubVerdict {
    /// Sequenced.
    Accepted,
    /// Refused (or never sent): the hub did not sequence it.
    Refused,
    /// No clear answer (unreachable, 5xx, unreadable): it may have been sequenced.
    Unclear,
}

impl Federation {
    /// Submits our `user`'s application message to `hub`, the hub of `room` (`/v1/submitMessage`).
    pub async fn forward_submit(
        &self,
        room: &str,
        hub: &str,
        user: &str,
        msg: MlsMessageBytes,
    ) -> Result<Verdict, Failure> {
        if msg.wire_format() != wire_format::PRIVATE {
            return Err(Failure::bad_request(format!(
                "{room} is hosted by {hub}: submit carries application messages there; commits and proposals go \
                 through /client/v1/update"
            )));
        }
        let request = SubmitMessageRequest { app_message: msg, sending_uri: user.to_owned() };
        let a = self.peers.submit_message(hub, room, &request).await.map_err(|e| e.failure("submitMessage"))?;
        match a.answer {
            SubmitMessageResponse::Accepted { .. } => {
                // The hub takes our user's messages: they are in the room, and may read our copy of it.
                if let Err(e) = self.provider.add_reader(room, user).await {
                    tracing::warn!(room, user, error = %e, "could not record a reader of a followed room");
                }
                Ok(Verdict::Accepted { seq: a.seq })
            }
            SubmitMessageResponse::EpochTooOld { current_epoch } => {
                self.catch_up_now(room).await;
                Ok(Verdict::EpochTooOld { current_epoch })
            }
            SubmitMessageResponse::NotAllowed => Err(Failure::forbidden("the hub refused the message")),
        }
    }

    /// Sends our `user`'s update to `hub`, the hub of `room` (`/v1/update`), following the room first: the hub's
    /// first notify must find it. A room we did not follow yet is followed tentatively and forgotten again if the
    /// hub refuses the update (else anyone could make us keep follow records of any room). All this runs in a task
    /// of its own, so that a client hanging up cannot leave the follow unsettled.
    pub async fn update_through_hub(
        &self,
        room: &str,
        hub: &str,
        user: &str,
        request: UpdateRequest,
    ) -> Result<Verdict, Failure> {
        let (this, room, hub, user) = (self.clone(), room.to_owned(), hub.to_owned(), user.to_owned());
        let task = tokio::spawn(async move {
            if let Err(e) = this.provider.follow_for_update(&room, &hub).await {
                let _ = this.provider.update_settled(&room, false, None).await;
                return Err(e.into());
            }
            // Settles the follow even if this task panics (as an unclear answer: the room is kept).
            let mut guard = Settle { federation: this.clone(), room: Some(room.clone()) };
            let (verdict, answer) = this.forward_update(&room, &hub, &user, &request).await;
            // The hub sequenced our user's handshake (an external join, or a commit of a member): they may read
            // our copy of the room.
            if verdict == HubVerdict::Accepted
                && let Err(e) = this.provider.add_reader(&room, &user).await
            {
                tracing::warn!(room, user, error = %e, "could not record a reader of a followed room");
            }
            // A copy made for this join starts at it: nothing before it is ours to read.
            let at = match &answer {
                Ok(Verdict::Accepted { seq }) => *seq,
                _ => None,
            };
            guard.settled();
            this.settle(&room, verdict != HubVerdict::Refused, at).await;
            answer
        });
        task.await.unwrap_or_else(|e| Err(Failure::internal(e)))
    }

    /// [`Provider::update_settled`], and the catch-up it asks for.
    ///
    /// [`Provider::update_settled`]: crate::Provider::update_settled
    async fn settle(&self, room: &str, accepted: bool, at: Option<u64>) {
        match self.provider.update_settled(room, accepted, at).await {
            Ok(Some(after)) => self.spawn_catch_up(room, after),
            Ok(None) => {}
            Err(e) => tracing::warn!(room, error = %e, "could not settle the follow of a room"),
        }
    }

    /// Sends our `user`'s update to `hub` (`/v1/update`); what the hub made of it, and the client's answer.
    pub async fn forward_update(
        &self,
        room: &str,
        hub: &str,
        user: &str,
        request: &UpdateRequest,
    ) -> (HubVerdict, Result<Verdict, Failure>) {
        let a = match self.peers.update(hub, room, user, request).await {
            Ok(a) => a,
            Err(e) => {
                let verdict = if e.surely_refused() { HubVerdict::Refused } else { HubVerdict::Unclear };
                return (verdict, Err(e.failure("update")));
            }
        };
        match a.answer {
            UpdateRoomResponse::Success { .. } => (HubVerdict::Accepted, Ok(Verdict::Accepted { seq: a.seq })),
            UpdateRoomResponse::WrongEpoch { current_epoch, .. } => {
                self.catch_up_now(room).await;
                (HubVerdict::Refused, Ok(Verdict::EpochTooOld { current_epoch }))
            }
            UpdateRoomResponse::NotAllowed { description } | UpdateRoomResponse::InvalidProposal { description } => {
                (HubVerdict::Refused, Err(Failure::forbidden(format!("the hub refused the update: {description}"))))
            }
        }
    }

    /// Passes a client's own (verified) `GroupInfoRequest` to `hub`, the hub of `room`, and answers the hub's
    /// `GroupInfoResponse` unchanged (the client verifies and decrypts it).
    pub async fn relay_group_info_request(
        &self,
        room: &str,
        hub: &str,
        request: &GroupInfoRequest,
    ) -> Result<GroupInfoResponse, Failure> {
        self.peers.group_info(hub, room, request).await.map_err(|e| e.failure("groupInfo"))
    }

    /// The GroupInfo MLSMessage of `room`, hosted by `hub`, fetched with a `GroupInfoRequest` signed by this
    /// provider's own key and credential (`mimi://DOMAIN`; so only open rooms answer).
    pub async fn fetch_group_info(&self, room: &str, hub: &str) -> Result<Vec<u8>, Failure> {
        self.fetch_group_info_and_tree(room, hub).await.map(|(info, _)| info)
    }

    /// [`Federation::fetch_group_info`], with the ratchet tree if the hub sent it beside the GroupInfo (TLS
    /// encoding): what a join by external commit needs.
    pub async fn fetch_group_info_and_tree(
        &self,
        room: &str,
        hub: &str,
    ) -> Result<(Vec<u8>, Option<Vec<u8>>), Failure> {
        let signer = self.provider.hub_signer().await?;
        let credential = signer.sender.credential.credential().map_err(Failure::internal)?;
        let (request, secret) =
            GroupInfoRequest::new(DEFAULT_CIPHERSUITE, &signer, &signer.sender.signature_key, &credential, None)
                .map_err(Failure::internal)?;
        let response = self.relay_group_info_request(room, hub, &request).await?;
        match response.status() {
            GroupInfoCode::Success => {}
            GroupInfoCode::NotAuthorized => return Err(Failure::forbidden("the hub refused the GroupInfo")),
            GroupInfoCode::NoSuchRoom => return Err(Failure::not_found(format!("unknown room {room}"))),
        }
        let tbe = response.open(room.as_bytes(), &secret).map_err(Failure::bad_gateway)?;
        let tree = match tbe.ratchet_tree {
            RatchetTreeOption::Full(tree) => Some(tree),
            _ => None,
        };
        Ok((tbe.group_info.into_bytes(), tree))
    }

    /// Claims a KeyPackage (MLSMessage) of `target`, a user of the provider `domain`, for `room` on behalf of our
    /// `requester` (`/v1/keyMaterial`).
    pub async fn claim_remote_key_package(
        &self,
        requester: &str,
        target: &str,
        domain: &str,
        room: &str,
    ) -> Result<Vec<u8>, Failure> {
        if !self.peers.is_peer(domain) {
            return Err(Failure::not_found(format!("{domain} is not a configured peer")));
        }
        let signer = self.provider.hub_signer().await?;
        let request = KeyMaterialRequest::new(requester, target, room, &signer).map_err(Failure::internal)?;
        let resp = self.peers.key_material(domain, &request).await.map_err(|e| e.failure("keyMaterial"))?;
        match (resp.user_status, resp.first_key_package()) {
            (KeyMaterialUserCode::Success | KeyMaterialUserCode::PartialSuccess, Some(kp)) => {
                // Recorded like a claim of our own users' KeyPackages: our users may add `target` with it, and
                // with no KeyPackage of theirs not handed out this way (crate::add_rule).
                let kp_ref = crate::key_packages::hash_ref_of(kp.as_bytes())
                    .map_err(|e| Failure::bad_gateway(format!("{domain}'s KeyPackage for {target}: {e}")))?;
                self.provider.record_claim(&kp_ref, target).await?;
                Ok(kp.as_bytes().to_vec())
            }
            (status, _) => Err(Failure::not_found(format!("no KeyPackage of {target} ({status:?})"))),
        }
    }
}

/// Settles the follow of an update whose task ended without doing it (a panic): as an unclear answer.
struct Settle {
    federation: Federation,
    /// The room, until the task settles the follow itself.
    room: Option<String>,
}

impl Settle {
    /// The task settles the follow itself.
    fn settled(&mut self) {
        self.room = None;
    }
}

impl Drop for Settle {
    fn drop(&mut self) {
        let Some(room) = self.room.take() else { return };
        let federation = self.federation.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move { federation.settle(&room, true, None).await });
        }
    }
}
