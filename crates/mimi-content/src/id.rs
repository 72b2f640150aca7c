//! MIMI message IDs (draft-ietf-mimi-content-09 §3.3).
//!
//! ```text
//! hash_output = SHA-256( u16be(len senderUri) || senderUri ||
//!                        u16be(len roomUri)   || roomUri   ||
//!                        encoded message      || salt )
//! messageId   = 0x01 || hash_output[0..31]
//! ```
//! Lengths count octets (UTF-8), not characters; the salt already inside the
//! encoded message is appended once more against length extension.

use sha2::{Digest, Sha256};

use super::error::ContentError;
use super::model::{MESSAGE_ID_LEN, MessageIdBytes, SALT_LEN};

/// The hash-algorithm octet of SHA-256 message IDs.
pub const SHA256_ID_PREFIX: u8 = 0x01;

/// Computes the message ID of `encoded` (the exact received or sent bytes).
pub fn message_id(
    encoded: &[u8],
    sender_uri: &str,
    room_uri: &str,
    salt: &[u8; SALT_LEN],
) -> Result<MessageIdBytes, ContentError> {
    let sl = u16::try_from(sender_uri.len()).map_err(|_| ContentError::UriTooLong("sender"))?;
    let rl = u16::try_from(room_uri.len()).map_err(|_| ContentError::UriTooLong("room"))?;
    let mut h = Sha256::new();
    h.update(sl.to_be_bytes());
    h.update(sender_uri.as_bytes());
    h.update(rl.to_be_bytes());
    h.update(room_uri.as_bytes());
    h.update(encoded);
    h.update(salt);
    let digest = h.finalize();
    let mut id = [0u8; MESSAGE_ID_LEN];
    id[0] = SHA256_ID_PREFIX;
    id[1..].copy_from_slice(&digest[..MESSAGE_ID_LEN - 1]);
    Ok(id)
}
