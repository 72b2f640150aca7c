//! Typed errors of the MLS engine.
//!
//! Incoming messages that are refused get a variant of their own, so that the caller can log them and carry on:
//! a refused message never changes the group's epoch or membership.

use super::storage::MlsStorageError;
use mimi_store::StoreError;
use openmls::framing::errors::{MessageDecryptionError, SecretTreeError};
use openmls::prelude::{ProcessMessageError, ValidationError};

/// Why an MLS operation failed or an incoming message was refused.
#[derive(Debug, thiserror::Error)]
pub enum MlsError {
    /// Reading or encoding the MLS state failed.
    #[error(transparent)]
    Storage(#[from] MlsStorageError),
    /// The state could not be made durable: nothing the operation produced may be released.
    #[error("MLS state not durable: {0}")]
    NotDurable(#[from] StoreError),
    /// The bytes are not an MLS message of the expected kind.
    #[error("malformed MLS message: {0}")]
    Malformed(String),
    /// The message is for another group.
    #[error("message for another group")]
    WrongGroup,
    /// The sender is not a member of the group (unknown leaf, bad membership tag, or a non-member sending an
    /// application message).
    #[error("message from a sender that is not a member of the group: {0}")]
    NotAMember(String),
    /// The message could not be decrypted with this epoch's keys (sent with keys the group never had).
    #[error("message cannot be decrypted with the group's keys")]
    Undecryptable,
    /// The message reuses a generation whose key was already consumed: a replay (or a duplicate delivery).
    #[error("replayed message: its generation was already used")]
    Replay,
    /// The message is for an epoch other than the current one and no secrets of that epoch are kept.
    #[error("message for epoch {message_epoch}; the group is at epoch {group_epoch}")]
    WrongEpoch {
        /// The epoch the message claims.
        message_epoch: u64,
        /// The group's current epoch.
        group_epoch: u64,
    },
    /// The message is from a past epoch older than the secrets kept ([`super::EngineConfig::max_past_epochs`]).
    #[error("message from epoch {message_epoch}, older than the secrets kept (group at {group_epoch})")]
    EpochTooOld {
        /// The epoch the message claims.
        message_epoch: u64,
        /// The group's current epoch.
        group_epoch: u64,
    },
    /// A commit or proposal failed validation (bad signature, invalid proposal, bad confirmation tag…).
    #[error("invalid handshake message: {0}")]
    InvalidHandshake(String),
    /// A commit removed the bridge's leaf: the group is kept (inactive) and can be re-entered by external commit.
    #[error("the bridge was removed from the group at epoch {epoch}")]
    Removed {
        /// The epoch of the commit that removed us.
        epoch: u64,
    },
    /// The group is inactive (we were removed) or has a pending commit that must be merged or cleared first.
    #[error("group cannot do this now: {0}")]
    GroupState(String),
    /// No state for this group in storage.
    #[error("no MLS state for group {0}")]
    UnknownGroup(String),
    /// A KeyPackage is invalid or uses an unsupported ciphersuite.
    #[error("invalid KeyPackage: {0}")]
    InvalidKeyPackage(String),
    /// A Welcome could not be used (no matching KeyPackage, bad secrets, unsupported ciphersuite).
    #[error("cannot join from Welcome: {0}")]
    Welcome(String),
    /// Joining by external commit failed.
    #[error("cannot join by external commit: {0}")]
    ExternalCommit(String),
    /// A member to remove is not in the group.
    #[error("no member {0:?} in the group")]
    NoSuchMember(String),
    /// An internal OpenMLS failure (a bug, or a crypto-provider failure).
    #[error("MLS library error: {0}")]
    Library(String),
}

impl MlsError {
    /// True for refusals of an incoming message (the group state is unchanged and the caller just logs them).
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            MlsError::Malformed(_)
                | MlsError::WrongGroup
                | MlsError::NotAMember(_)
                | MlsError::Undecryptable
                | MlsError::Replay
                | MlsError::WrongEpoch { .. }
                | MlsError::EpochTooOld { .. }
                | MlsError::InvalidHandshake(_)
        )
    }

    /// A short stable name of the variant, for metrics ("errors by kind") and log fields.
    pub fn kind(&self) -> &'static str {
        match self {
            MlsError::Storage(_) => "storage",
            MlsError::NotDurable(_) => "not_durable",
            MlsError::Malformed(_) => "malformed",
            MlsError::WrongGroup => "wrong_group",
            MlsError::NotAMember(_) => "not_a_member",
            MlsError::Undecryptable => "undecryptable",
            MlsError::Replay => "replay",
            MlsError::WrongEpoch { .. } => "wrong_epoch",
            MlsError::EpochTooOld { .. } => "epoch_too_old",
            MlsError::InvalidHandshake(_) => "invalid_handshake",
            MlsError::Removed { .. } => "removed",
            MlsError::GroupState(_) => "group_state",
            MlsError::UnknownGroup(_) => "unknown_group",
            MlsError::InvalidKeyPackage(_) => "invalid_key_package",
            MlsError::Welcome(_) => "welcome",
            MlsError::ExternalCommit(_) => "external_commit",
            MlsError::NoSuchMember(_) => "no_such_member",
            MlsError::Library(_) => "library",
        }
    }

    /// Classifies OpenMLS's error for an incoming message. `message_epoch`/`group_epoch` fill the epoch variants.
    pub(crate) fn from_process(e: ProcessMessageError<MlsStorageError>, message_epoch: u64, group_epoch: u64) -> Self {
        match e {
            ProcessMessageError::StorageError(s) => MlsError::Storage(s),
            ProcessMessageError::LibraryError(l) => MlsError::Library(l.to_string()),
            ProcessMessageError::ValidationError(v) => match v {
                ValidationError::WrongGroupId => MlsError::WrongGroup,
                ValidationError::WrongEpoch => MlsError::WrongEpoch { message_epoch, group_epoch },
                ValidationError::NoPastEpochData => MlsError::EpochTooOld { message_epoch, group_epoch },
                ValidationError::UnknownMember
                | ValidationError::MissingMembershipTag
                | ValidationError::InvalidMembershipTag
                | ValidationError::NonMemberApplicationMessage => MlsError::NotAMember(v.to_string()),
                ValidationError::UnableToDecrypt(d) => match d {
                    // OpenMLS says "too distant in the past" both for an epoch whose secrets are gone and for a
                    // generation older than the out-of-order window; the epochs tell the two apart.
                    MessageDecryptionError::SecretTreeError(SecretTreeError::TooDistantInThePast)
                        if message_epoch < group_epoch =>
                    {
                        MlsError::EpochTooOld { message_epoch, group_epoch }
                    }
                    MessageDecryptionError::SecretTreeError(
                        SecretTreeError::SecretReuseError | SecretTreeError::TooDistantInThePast,
                    ) => MlsError::Replay,
                    MessageDecryptionError::AeadError | MessageDecryptionError::MalformedContent => {
                        MlsError::Undecryptable
                    }
                    other => MlsError::InvalidHandshake(other.to_string()),
                },
                other => MlsError::InvalidHandshake(other.to_string()),
            },
            ProcessMessageError::InvalidCommit(c) => MlsError::InvalidHandshake(c.to_string()),
            ProcessMessageError::GroupStateError(g) => MlsError::GroupState(g.to_string()),
            other => MlsError::InvalidHandshake(other.to_string()),
        }
    }
}
