//! [`Failure`]: why a request of a native client or of a peer was not served, with the HTTP-like [`Status`] the
//! daemon answers it with. The decisions (which status for which case) are taken here; the daemon only maps a
//! [`Status`] to its HTTP code.

use crate::service::ProviderError;
use mimi_protocol::hub::Refusal;

/// The HTTP-like status of a [`Failure`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// 400: malformed input.
    BadRequest,
    /// 401: missing or bad credentials.
    Unauthorized,
    /// 403: not allowed.
    Forbidden,
    /// 404: no such room, user or KeyPackage.
    NotFound,
    /// 409: a conflict (the room moved to a newer epoch, or exists with other parameters).
    Conflict,
    /// 410: log entries removed by retention; the reader must rejoin.
    Gone,
    /// 421: a room we only follow, where its hub is needed.
    Misdirected,
    /// 429: over a quota ([`crate::quota`]).
    TooManyRequests,
    /// 500: our own fault.
    Internal,
    /// 502: a peer gave no usable answer.
    BadGateway,
    /// 503: the store failed.
    Unavailable,
}

impl Status {
    /// The HTTP status code.
    pub fn code(self) -> u16 {
        match self {
            Self::BadRequest => 400,
            Self::Unauthorized => 401,
            Self::Forbidden => 403,
            Self::NotFound => 404,
            Self::Conflict => 409,
            Self::Gone => 410,
            Self::Misdirected => 421,
            Self::TooManyRequests => 429,
            Self::Internal => 500,
            Self::BadGateway => 502,
            Self::Unavailable => 503,
        }
    }
}

/// A request that was not served: its status and a reason for humans.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct Failure {
    /// The status to answer.
    pub status: Status,
    /// Why.
    pub reason: String,
    /// When the same request would be served (a 429 over a quota that refills): HTTP `Retry-After`.
    pub retry_after: Option<std::time::Duration>,
}

impl Failure {
    /// A failure with `status` and `reason`.
    pub fn new(status: Status, reason: impl Into<String>) -> Self {
        Self { status, reason: reason.into(), retry_after: None }
    }

    /// 429: over a quota; the same request would be served after `retry_after`, if it ever would.
    pub fn over_quota(reason: impl Into<String>, retry_after: Option<std::time::Duration>) -> Self {
        Self { retry_after, ..Self::new(Status::TooManyRequests, reason) }
    }

    /// 400.
    pub fn bad_request(reason: impl std::fmt::Display) -> Self {
        Self::new(Status::BadRequest, reason.to_string())
    }

    /// 403.
    pub fn forbidden(reason: impl Into<String>) -> Self {
        Self::new(Status::Forbidden, reason)
    }

    /// 404.
    pub fn not_found(reason: impl Into<String>) -> Self {
        Self::new(Status::NotFound, reason)
    }

    /// 500.
    pub fn internal(reason: impl std::fmt::Display) -> Self {
        Self::new(Status::Internal, reason.to_string())
    }

    /// 502.
    pub fn bad_gateway(reason: impl std::fmt::Display) -> Self {
        Self::new(Status::BadGateway, reason.to_string())
    }
}

impl From<ProviderError> for Failure {
    fn from(e: ProviderError) -> Self {
        let status = match &e {
            ProviderError::UnknownRoom(_) | ProviderError::UnknownUser(_) => Status::NotFound,
            ProviderError::NotHub { .. } => Status::Misdirected,
            ProviderError::Refused(Refusal::Malformed(_)) | ProviderError::BadRequest(_) => Status::BadRequest,
            ProviderError::Refused(Refusal::NotAllowed(_)) => Status::Forbidden,
            ProviderError::Refused(Refusal::EpochTooOld { .. }) | ProviderError::Exists(_) => Status::Conflict,
            ProviderError::Store(_) | ProviderError::Busy(_) => Status::Unavailable,
            ProviderError::Pruned { .. } => Status::Gone,
            ProviderError::Quota(_) => Status::TooManyRequests,
        };
        Self::new(status, e.to_string())
    }
}
