//! Identifiers: the names the core gives to portals, legs, accounts and messages.
//!
//! All of them are cheap to clone, ordered, hashable and serialisable, and each validates its input on construction
//! so that a bad name is rejected at the edge (config, connector) rather than deep inside the router.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Why an identifier was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The string was empty.
    #[error("{what} must not be empty")]
    Empty {
        /// Which kind of identifier.
        what: &'static str,
    },
    /// The string contained a character outside the allowed set.
    #[error("{what} {value:?} may only contain a-z, 0-9, '-' and '_' (found {found:?})")]
    BadChar {
        /// Which kind of identifier.
        what: &'static str,
        /// The rejected value.
        value: String,
        /// The first offending character.
        found: char,
    },
    /// The string was too long.
    #[error("{what} is {len} bytes long, the limit is {max}")]
    TooLong {
        /// Which kind of identifier.
        what: &'static str,
        /// Actual length.
        len: usize,
        /// Maximum length.
        max: usize,
    },
    /// An account id was not of the form `network.name`.
    #[error("account id {0:?} must look like NETWORK.NAME, e.g. \"irc.libera\"")]
    AccountShape(String),
    /// A message id did not have the expected length or version byte.
    #[error("message id must be 32 bytes starting with 0x01, got {0} bytes")]
    MessageIdShape(usize),
}

/// Checks a "slug": the lowercase ASCII names used in config keys and URIs.
fn check_slug(what: &'static str, s: &str, max: usize) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty { what });
    }
    if s.len() > max {
        return Err(IdError::TooLong { what, len: s.len(), max });
    }
    if let Some(found) = s.chars().find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-' || *c == '_')) {
        return Err(IdError::BadChar { what, value: s.to_owned(), found });
    }
    Ok(())
}

/// A portal: one bridged room, i.e. one MLS group, named by its config name (`[[portal]] name = "rust"`).
///
/// The portal's room URI is `mimi://<domain>/r/<name>`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PortalId(String);

impl PortalId {
    /// Validates and wraps a portal name (`a-z 0-9 - _`, at most 64 bytes).
    pub fn new(name: impl Into<String>) -> Result<Self, IdError> {
        let name = name.into();
        check_slug("portal name", &name, 64)?;
        Ok(Self(name))
    }
    /// The name as configured.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for PortalId {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, IdError> {
        Self::new(s)
    }
}
impl From<PortalId> for String {
    fn from(p: PortalId) -> String {
        p.0
    }
}
impl fmt::Display for PortalId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One login or connection to a legacy network: `network.name`, e.g. `irc.libera` for the `[irc.libera]` table.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AccountId {
    network: String,
    name: String,
}

impl AccountId {
    /// Builds an account id from its network kind (`irc`, `matrix`, `xmpp`, …) and its configured name.
    pub fn new(network: &str, name: &str) -> Result<Self, IdError> {
        check_slug("network kind", network, 32)?;
        check_slug("account name", name, 64)?;
        Ok(Self { network: network.to_owned(), name: name.to_owned() })
    }
    /// Parses `network.name`.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        let (network, name) = s.split_once('.').ok_or_else(|| IdError::AccountShape(s.to_owned()))?;
        Self::new(network, name)
    }
    /// The network kind, e.g. `irc`.
    pub fn network(&self) -> &str {
        &self.network
    }
    /// The account's configured name, e.g. `libera`.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl TryFrom<String> for AccountId {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, IdError> {
        Self::parse(&s)
    }
}
impl From<AccountId> for String {
    fn from(a: AccountId) -> String {
        a.to_string()
    }
}
impl fmt::Display for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.network, self.name)
    }
}

/// A leg: one legacy room (IRC channel, XMPP MUC, Matrix room) reached through one account.
///
/// `room` is the network's own name for the room (`#rust`, `room@muc.example.org`, `!abc:example.org`), kept
/// verbatim; connectors compare it with the network's case rules before they hand events to the core, so the core
/// compares legs byte for byte.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct LegId {
    /// The account the room is reached through.
    pub account: AccountId,
    /// The room's native name.
    pub room: String,
}

impl LegId {
    /// Builds a leg id; the room name must be non-empty and at most 512 bytes.
    pub fn new(account: AccountId, room: impl Into<String>) -> Result<Self, IdError> {
        let room = room.into();
        if room.is_empty() {
            return Err(IdError::Empty { what: "room" });
        }
        if room.len() > 512 {
            return Err(IdError::TooLong { what: "room", len: room.len(), max: 512 });
        }
        Ok(Self { account, room })
    }

    /// A stable byte key for the store: `account \0 room`.
    pub fn key(&self) -> Vec<u8> {
        let mut k = self.account.to_string().into_bytes();
        k.push(0);
        k.extend_from_slice(self.room.as_bytes());
        k
    }
}

impl fmt::Display for LegId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.account, self.room)
    }
}

/// The id a legacy network gives a message or event (Matrix event id, XMPP stanza/origin id, IRC msgid tag or a
/// connector-made id where the network has none).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NativeId(pub String);

impl fmt::Display for NativeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A transaction id the core gives each outbound delivery, stable across retries, so that a network with
/// idempotent sends (Matrix `txnId`, XMPP `origin-id`) never shows a retried message twice.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TxnId(pub String);

impl TxnId {
    /// The transaction id of `message` delivered to `leg`: hex of SHA-256(message id ‖ leg key), truncated to 16
    /// bytes. Deterministic, so a retry after a crash reuses it.
    pub fn for_delivery(message: &MessageId, leg: &LegId) -> Self {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update(message.as_bytes());
        h.update(leg.key());
        let d = h.finalize();
        TxnId(hex::encode(&d[..16]))
    }
}

impl fmt::Display for TxnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A MIMI message id (draft-ietf-mimi-content §4.1): 32 bytes, a version byte `0x01` then 31 bytes of a SHA-256
/// hash over sender URI, room URI, the encoded message and its salt.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct MessageId([u8; 32]);

impl MessageId {
    /// Wraps 32 bytes; the first must be the version byte 0x01.
    pub fn from_bytes(b: &[u8]) -> Result<Self, IdError> {
        let arr: [u8; 32] = b.try_into().map_err(|_| IdError::MessageIdShape(b.len()))?;
        if arr[0] != 0x01 {
            return Err(IdError::MessageIdShape(b.len()));
        }
        Ok(Self(arr))
    }
    /// The 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
    /// Lowercase hex, 64 characters.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
    /// Parses 64 hex characters.
    pub fn from_hex(s: &str) -> Result<Self, IdError> {
        let v = hex::decode(s).map_err(|_| IdError::MessageIdShape(s.len() / 2))?;
        Self::from_bytes(&v)
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MessageId({})", &self.to_hex()[..16])
    }
}
impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_ids_parse_and_reject() {
        let a = AccountId::parse("irc.libera").expect("valid");
        assert_eq!(a.network(), "irc");
        assert_eq!(a.name(), "libera");
        assert_eq!(a.to_string(), "irc.libera");
        assert!(matches!(AccountId::parse("irclibera"), Err(IdError::AccountShape(_))));
        assert!(matches!(AccountId::parse("irc.Libera"), Err(IdError::BadChar { found: 'L', .. })));
        assert!(matches!(AccountId::parse("irc."), Err(IdError::Empty { .. })));
    }

    #[test]
    fn portal_ids_validate() {
        assert!(PortalId::new("rust-lang_1").is_ok());
        assert!(PortalId::new("Rust").is_err());
        assert!(PortalId::new("a".repeat(65)).is_err());
    }

    #[test]
    fn message_id_shape() {
        let mut b = [7u8; 32];
        assert!(MessageId::from_bytes(&b).is_err());
        b[0] = 1;
        let id = MessageId::from_bytes(&b).expect("valid");
        assert_eq!(MessageId::from_hex(&id.to_hex()).expect("hex"), id);
        assert!(MessageId::from_bytes(&b[..31]).is_err());
    }

    #[test]
    fn txn_ids_are_stable_and_leg_specific() {
        let mut b = [0u8; 32];
        b[0] = 1;
        let m = MessageId::from_bytes(&b).expect("valid");
        let a = AccountId::parse("irc.x").expect("valid");
        let l1 = LegId::new(a.clone(), "#a").expect("valid");
        let l2 = LegId::new(a, "#b").expect("valid");
        assert_eq!(TxnId::for_delivery(&m, &l1), TxnId::for_delivery(&m, &l1));
        assert_ne!(TxnId::for_delivery(&m, &l1), TxnId::for_delivery(&m, &l2));
    }
}
