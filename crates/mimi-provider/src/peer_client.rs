//! [`PeerClient`]: what a provider asks of another provider (draft-ietf-mimi-protocol-06 §5, and our `/v1/log`),
//! with typed requests and answers. The daemon implements it over HTTP(S); [`crate::testing`] routes it to other
//! [`Provider`](crate::Provider)s in the same process.

use crate::failure::{Failure, Status};
use async_trait::async_trait;
use mimi_protocol::wire::{
    FanoutMessage, GroupInfoRequest, GroupInfoResponse, KeyMaterialRequest, KeyMaterialResponse, LogPage,
    SubmitMessageRequest, SubmitMessageResponse, UpdateRequest, UpdateRoomResponse,
};

/// A hub's answer to a submitted message or an update, with the sequence number it gave the message in its log
/// (our `Mimi-Sequence` extension; `None` if the hub did not say).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubAnswer<T> {
    /// The answer.
    pub answer: T,
    /// The hub's sequence number of the accepted message.
    pub seq: Option<u64>,
}

/// Why a peer gave no successful answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerError {
    /// The domain is not a configured peer: nothing was sent.
    #[error("{0} is not a configured peer")]
    NotAPeer(String),
    /// The request could not be made (nothing was sent).
    #[error("{0}")]
    Local(String),
    /// No answer, or none we could read (unreachable, timed out, over the size limit, undecodable): the peer
    /// may have acted on the request.
    #[error("{0}")]
    Unclear(String),
    /// The peer answered with this HTTP-like status instead of success, and this reason.
    #[error("the hub answered {status}: {reason}")]
    Status {
        /// The status code.
        status: u16,
        /// The peer's reason (the `error` of its JSON body, or empty).
        reason: String,
        /// When the peer would serve the same request (its `retry_after_ms`, with a 429 over its quota).
        retry_after: Option<std::time::Duration>,
    },
}

impl PeerError {
    /// What our client is answered when its request to the peer failed. The hub's verdicts on the request itself
    /// pass through: malformed (400), not allowed (403), unknown (404), in conflict with the room (409), read
    /// past what the log keeps (410), over the hub's quota (429). The rest is a bad gateway (502): no usable
    /// answer, the hub's own failures, and what the hub holds against this provider rather than the request (401,
    /// 421: it is not the room's hub). `what` names the request (`"update"`).
    pub fn failure(&self, what: &str) -> Failure {
        match self {
            Self::NotAPeer(_) | Self::Unclear(_) => Failure::bad_gateway(self),
            Self::Local(_) => Failure::bad_request(self),
            Self::Status { status, reason, retry_after } => {
                let kind = match status {
                    400 => Status::BadRequest,
                    403 => Status::Forbidden,
                    404 => Status::NotFound,
                    409 => Status::Conflict,
                    410 => Status::Gone,
                    429 => Status::TooManyRequests,
                    _ => Status::BadGateway,
                };
                Failure {
                    retry_after: *retry_after,
                    ..Failure::new(kind, format!("{what}: the hub answered {status}: {reason}"))
                }
            }
        }
    }

    /// True if the peer surely did not act on the request: nothing was sent, or it answered with a 4xx.
    pub fn surely_refused(&self) -> bool {
        match self {
            Self::NotAPeer(_) | Self::Local(_) => true,
            Self::Unclear(_) => false,
            Self::Status { status, .. } => (400..500).contains(status),
        }
    }
}

/// What a provider asks of a peer. `hub`, `peer` and `follower` are the asked provider's domain; the asking
/// provider is the one the client belongs to (it names itself: `From: mimi@DOMAIN` over HTTP).
#[async_trait]
pub trait PeerClient: Send + Sync {
    /// True if `domain` is a peer we talk to (configured): only those are asked, and only those are heard.
    fn is_peer(&self, domain: &str) -> bool;

    /// `POST /v1/submitMessage/{room}`: an application message of one of our users, to the room's hub.
    async fn submit_message(
        &self,
        hub: &str,
        room: &str,
        request: &SubmitMessageRequest,
    ) -> Result<HubAnswer<SubmitMessageResponse>, PeerError>;

    /// `POST /v1/update/{room}`: a commit or proposals of our user `requester`, to the room's hub.
    async fn update(
        &self,
        hub: &str,
        room: &str,
        requester: &str,
        request: &UpdateRequest,
    ) -> Result<HubAnswer<UpdateRoomResponse>, PeerError>;

    /// `POST /v1/groupInfo/{room}`: the room's GroupInfo, asked of its hub with a signed request.
    async fn group_info(
        &self,
        hub: &str,
        room: &str,
        request: &GroupInfoRequest,
    ) -> Result<GroupInfoResponse, PeerError>;

    /// `POST /v1/keyMaterial/{targetUser}`: claims KeyPackages of `request.target_user`, a user of `peer`.
    async fn key_material(&self, peer: &str, request: &KeyMaterialRequest) -> Result<KeyMaterialResponse, PeerError>;

    /// `GET /v1/log/{room}?after=N`: a page of the hub's log of `room` after `after`.
    async fn log(&self, hub: &str, room: &str, after: u64) -> Result<LogPage, PeerError>;

    /// `POST /v1/notify/{room}`: entry `seq` of a room we host, to one of its followers.
    async fn notify(&self, follower: &str, room: &str, seq: u64, fanout: &FanoutMessage) -> Result<(), PeerError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answered(status: u16) -> Status {
        PeerError::Status { status, reason: "why".into(), retry_after: None }.failure("update").status
    }

    #[test]
    fn the_hubs_verdicts_on_a_request_pass_through_the_rest_is_a_bad_gateway() {
        assert_eq!(answered(400), Status::BadRequest);
        assert_eq!(answered(403), Status::Forbidden);
        assert_eq!(answered(404), Status::NotFound);
        assert_eq!(answered(409), Status::Conflict);
        assert_eq!(answered(410), Status::Gone);
        assert_eq!(answered(429), Status::TooManyRequests);
        for status in [401, 421, 500, 503] {
            assert_eq!(answered(status), Status::BadGateway, "{status}");
        }
        let gone = PeerError::Status { status: 410, reason: "entries removed".into(), retry_after: None };
        assert_eq!(gone.failure("update").reason, "update: the hub answered 410: entries removed");
        let wait = Some(std::time::Duration::from_millis(1500));
        let over = PeerError::Status { status: 429, reason: "over quota".into(), retry_after: wait };
        assert_eq!(
            over.failure("submitMessage").retry_after,
            wait,
            "a client over the hub's quota is told when to retry"
        );
        assert_eq!(PeerError::Unclear("timed out".into()).failure("update").status, Status::BadGateway);
    }
}
