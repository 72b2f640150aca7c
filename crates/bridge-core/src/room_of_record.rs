//! The seam between a portal and its room of record.
//!
//! Invariant (ARCHITECTURE.md): the MLS group is the room of record. A portal hands every message it accepts
//! from a leg to a [`RoomOfRecord`] and uses the [`MessageId`] it gets back; only then do other legs see it.
//!
//! One order: a [`RoomOfRecord`] returns, with the id of what a portal published, the messages of other members
//! the hub sequenced before it that the portal has not been handed yet ([`Published::earlier`]). The portal records
//! those first, so that every leg gets the group's order, not the order in which the portal happened to learn of
//! the messages (a native member's message sequenced just before a bridged one would otherwise reach the legs
//! after it, while native members see it before).
//!
//! This trait is deliberately small — one call — so that the MLS engine (encode as MIMI content, encrypt,
//! submit to the hub, wait for sequencing) replaces [`LocalRoom`] without touching the router or portals.
//! [`LocalRoom`] is the stand-in until then: it sequences locally and derives message ids the MIMI way
//! (`0x01 ‖ SHA-256(…)[..31]`) over a JSON encoding of the content.

use async_trait::async_trait;
use bridge_api::RoomError;
use bridge_api::event::{InboundEvent, MessageDraft, Sender};
use bridge_api::ids::{MessageId, NativeId, PortalId};
use serde::Serialize;

/// What a portal publishes into its group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GroupMessage {
    /// The portal (room) it belongs to.
    pub portal: PortalId,
    /// The sender, as the MIMI `senderUri` extension and the legacy-sender extension will carry it.
    pub sender: Sender,
    /// The content.
    pub content: GroupContent,
}

/// The MIMI shapes a portal produces (draft-ietf-mimi-content §5).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum GroupContent {
    /// A message, optionally `inReplyTo` another.
    Message {
        /// The body.
        draft: MessageDraft,
        /// inReplyTo.
        in_reply_to: Option<MessageId>,
    },
    /// An edit: `replaces` the target, new body.
    Edit {
        /// The message replaced.
        replaces: MessageId,
        /// The new body.
        draft: MessageDraft,
    },
    /// A deletion: `replaces` the target, null body.
    Delete {
        /// The message deleted.
        replaces: MessageId,
    },
    /// A reaction: `inReplyTo` the target, disposition reaction.
    Reaction {
        /// The message reacted to.
        in_reply_to: MessageId,
        /// The reaction.
        key: String,
    },
    /// Removal of a reaction: `replaces` the reaction message, null body.
    Unreact {
        /// The reaction removed.
        replaces: MessageId,
    },
}

impl GroupContent {
    /// How a notice names it: its text, or what it does.
    pub fn shown(&self) -> String {
        match self {
            Self::Message { draft, .. } => draft.body.clone(),
            Self::Edit { draft, .. } => format!("(edit) {}", draft.body),
            Self::Delete { .. } => "(a deletion)".into(),
            Self::Reaction { key, .. } => format!("(reaction {key})"),
            Self::Unreact { .. } => "(a reaction taken back)".into(),
        }
    }
}

/// A message the room of record sequenced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// Its MIMI message id.
    pub id: MessageId,
    /// Messages of other members sequenced before it that were not yet handed to the router, in the group's
    /// order. The portal records them before `id`; when they reach it again later it drops them by message id.
    pub earlier: Vec<(MessageId, GroupMessage)>,
}

/// The room of record of the portals: publishes a message and returns its id once it is sequenced.
#[async_trait]
pub trait RoomOfRecord: Send + Sync + 'static {
    /// Publishes `msg`; returns its message id once the hub has sequenced it, with the messages sequenced before
    /// it that the portal has not seen yet. `source` is the inbound event `msg` carries, with the native id `msg`
    /// stands for (the event's own, or one derived from it for one of several changes the event makes): a
    /// durable room keeps it, marked published under that id, in the batch that sequences `msg`
    /// ([`crate::repo::write::sent`]; a room hosted elsewhere marks it before it hands `msg` to the hub,
    /// [`crate::repo::write::submitted`]), so that a restart before the portal recorded `msg` records it then
    /// ([`crate::router::RouterHandle::start`]) instead of losing it for the other legs.
    async fn publish(
        &self,
        msg: &GroupMessage,
        source: Option<(&InboundEvent, &NativeId)>,
    ) -> Result<Published, RoomError>;

    /// The messages of other members sequenced before `seq` in `portal`'s room that the portal may not have been
    /// handed yet, in the group's order: for a message found published before a restart (its marker,
    /// [`crate::repo::SentMarker::seq`]), which the portal records then, after them. Best effort: none where the
    /// room cannot say (they then come by their usual path). None by default.
    async fn sequenced_before(&self, _portal: &PortalId, _seq: u64) -> Vec<(MessageId, GroupMessage)> {
        Vec::new()
    }

    /// True if the room keeps, durably, what it sequenced until the router has recorded it: each published
    /// message with its source (marked when `publish` returns), and each message of another member until the
    /// router took it. A crash before the router's record is durable then loses nothing, and the portals hand
    /// deliveries to the legs without waiting for that record (one fsync less per message). False by default.
    fn keeps_until_recorded(&self) -> bool {
        false
    }
}

/// Stand-in room of record: sequences locally, ids as MIMI does (over a JSON encoding, with a random salt).
#[derive(Debug, Default)]
pub struct LocalRoom;

#[async_trait]
impl RoomOfRecord for LocalRoom {
    async fn publish(
        &self,
        msg: &GroupMessage,
        _source: Option<(&InboundEvent, &NativeId)>,
    ) -> Result<Published, RoomError> {
        use sha2::{Digest, Sha256};
        let encoded = serde_json::to_vec(&msg.content).map_err(|e| RoomError::Refused(e.to_string()))?;
        let salt = rand_salt();
        let room = format!("r/{}", msg.portal);
        let mut h = Sha256::new();
        for part in [msg.sender.uri.as_bytes(), room.as_bytes()] {
            let len = u16::try_from(part.len()).map_err(|_| RoomError::Refused("URI too long".into()))?;
            h.update(len.to_be_bytes());
            h.update(part);
        }
        h.update(&encoded);
        h.update(salt);
        let digest = h.finalize();
        let mut id = [0u8; 32];
        id[0] = 0x01;
        id[1..].copy_from_slice(&digest[..31]);
        let id = MessageId::from_bytes(&id).map_err(|e| RoomError::Refused(e.to_string()))?;
        Ok(Published { id, earlier: Vec::new() })
    }
}

/// A fresh random salt (draft-ietf-mimi-content §3.3: 16 bytes from a CSPRNG).
fn rand_salt() -> [u8; 16] {
    rand::random()
}
