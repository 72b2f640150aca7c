//! MIMI content codec: `application/mimi-content` (draft-ietf-mimi-content-08/-09).
//!
//! * [`model`]: the data model (every CDDL field and code table).
//! * [`decode()`] / [`encode()`]: strict, deterministic CBOR (RFC 8949 §4.2.1).
//! * [`message_id()`]: the §3.3 message ID over the exact encoded bytes.
//! * [`validate()`]: the draft's "log and discard" conditions as typed errors.
//! * [`builder`], [`attachment`], [`markdown`], [`json`]: what connectors
//!   and the `mimi-bridge content` subcommand need.
//!
//! # Choice of CBOR crate: `minicbor` (2.x) rather than `ciborium` (0.2)
//!
//! Both are maintained and neither enforces deterministic *decoding*, so the
//! strict checks (shortest heads, definite lengths, sorted and unique map
//! keys, shortest floats, NaN and bignum rules) are done here in the private `cbor` module
//! whatever the crate. `minicbor` fits that job better:
//! * its [`minicbor::Decoder`] is a position-based pull parser over a borrowed
//!   slice (`position()`, `input()`), so we can peek at each raw head before it
//!   is consumed and slice out the exact bytes of unknown extension values;
//!   `ciborium` decodes through serde or an owned `Value` tree, which loses the
//!   head widths and the original bytes (its low-level `ciborium-ll` would
//!   mean writing the item walker ourselves anyway);
//! * it decodes zero-copy (`&str`/`&[u8]` borrowed from the input) and encodes
//!   into a `Vec` with shortest-form heads by construction, with no serde
//!   detour, which matters for the ≥ 500 000 messages/s target;
//! * `ciborium`'s last release (0.2.2) dates from early 2024, while `minicbor`
//!   2.x is actively released.

pub mod attachment;
pub mod builder;
mod cbor;
pub mod decode;
pub mod encode;
pub mod error;
pub mod id;
pub mod json;
pub mod markdown;
pub mod model;
pub mod validate;

pub use decode::decode;
pub use encode::encode;
pub use error::ContentError;
pub use id::message_id;
pub use model::*;
pub use validate::validate;

/// A MIMI content message together with its exact encoded bytes, which are
/// what the message ID is computed over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    content: MimiContent,
    bytes: Vec<u8>,
}

impl Message {
    /// Decodes received bytes, keeping them.
    pub fn decode(bytes: &[u8]) -> Result<Self, ContentError> {
        Ok(Self { content: decode(bytes)?, bytes: bytes.to_vec() })
    }

    /// Encodes content for sending.
    pub fn encode(content: MimiContent) -> Result<Self, ContentError> {
        let bytes = encode(&content)?;
        Ok(Self { content, bytes })
    }

    /// The decoded content.
    pub fn content(&self) -> &MimiContent {
        &self.content
    }

    /// The exact encoded bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Splits into content and bytes.
    pub fn into_parts(self) -> (MimiContent, Vec<u8>) {
        (self.content, self.bytes)
    }

    /// The message ID using the message's own senderUri (1) and roomUri (2).
    pub fn message_id(&self) -> Result<MessageIdBytes, ContentError> {
        self.message_id_with(None, None)
    }

    /// The message ID, with the sender and/or room URI overridden (e.g. by
    /// the values the MLS layer authenticated).
    pub fn message_id_with(&self, sender: Option<&str>, room: Option<&str>) -> Result<MessageIdBytes, ContentError> {
        let x = &self.content.extensions;
        let sender = sender.or(x.sender_uri.as_deref()).ok_or(ContentError::MissingUri("sender"))?;
        let room = room.or(x.room_uri.as_deref()).ok_or(ContentError::MissingUri("room"))?;
        message_id(&self.bytes, sender, room, &self.content.salt)
    }
}
