//! The legacy-sender extension: who on a legacy network wrote a message the bridge sends from its shared leaf.
//!
//! With `mls_identity = "shared"` every legacy user speaks through the bridge's one leaf, so the MLS sender is
//! the bridge. The real author travels inside the MIMI content (draft-ietf-mimi-content §4.3), in the
//! `extensions` map, under a private-use **text key**:
//!
//! ```cddl
//! ; key in the MimiContent extensions map
//! "legacySender" => legacySender
//! legacySender = {
//!   "uri": tstr,        ; the legacy user's stable URI, mimi://BRIDGE-DOMAIN/u/NETWORK.ACCOUNT~ESCAPED-ID
//!   ? "name": tstr,     ; display name (IRC nick, Matrix display name, MUC nick), absent when unknown
//!   "network": tstr,    ; "irc", "xmpp", "matrix"…, the network part of the account id
//! }
//! ```
//!
//! The map is encoded deterministically (RFC 8949 §4.2.1: keys in bytewise order of their encodings, so
//! `"uri"`, `"name"`, `"network"`). Receivers show "name (network)" and may resolve `uri` with
//! [`bridge_api::uri::LegacyUser::from_uri`]. `senderUri` (key 1) stays the bridge's URI, the MLS sender; a receiver
//! must only believe `legacySender` when the MLS sender is a bridge it trusts to speak for that domain (the URI's
//! domain equals the MLS sender's domain). Unknown keys inside the map are ignored (room for later fields).

use bridge_api::uri::LegacyUser;
use mimi_content::{ContentError, ExtensionKey, ExtensionValue, Extensions};
use minicbor::data::Type;
use minicbor::{Decoder, Encoder};

/// The key of the extension in the MIMI extensions map.
pub const LEGACY_SENDER_KEY: &str = "legacySender";

/// The legacy author of a message sent from a shared leaf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegacySender {
    /// The user's stable URI under the bridge's domain.
    pub uri: String,
    /// Display name, if known.
    pub display_name: Option<String>,
    /// The network kind (`irc`, `xmpp`, `matrix`).
    pub network: String,
}

/// Why a legacy-sender extension could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LegacySenderError {
    /// The value is not the documented map.
    #[error("legacySender extension: {0}")]
    Shape(String),
    /// The content model refused the value.
    #[error(transparent)]
    Content(#[from] ContentError),
}

fn shape(e: impl std::fmt::Display) -> LegacySenderError {
    LegacySenderError::Shape(e.to_string())
}

impl LegacySender {
    /// The extension for `user` on the bridge of `domain`.
    pub fn from_user(user: &LegacyUser, domain: &str) -> Self {
        Self {
            uri: user.uri(domain),
            display_name: user.display_name.clone(),
            network: user.account.network().to_owned(),
        }
    }

    /// The deterministic CBOR value.
    pub fn encode(&self) -> Result<ExtensionValue, LegacySenderError> {
        let mut e = Encoder::new(Vec::new());
        let len = 2 + u64::from(self.display_name.is_some());
        e.map(len).map_err(shape)?;
        e.str("uri").map_err(shape)?.str(&self.uri).map_err(shape)?;
        if let Some(name) = &self.display_name {
            e.str("name").map_err(shape)?.str(name).map_err(shape)?;
        }
        e.str("network").map_err(shape)?.str(&self.network).map_err(shape)?;
        Ok(ExtensionValue::from_cbor(e.into_writer())?)
    }

    /// Puts the extension into a content's extensions map.
    pub fn attach(&self, extensions: &mut Extensions) -> Result<(), LegacySenderError> {
        extensions.insert(ExtensionKey::Text(LEGACY_SENDER_KEY.to_owned()), self.encode()?)?;
        Ok(())
    }

    /// Reads the extension from an extensions map (`Ok(None)` if absent).
    pub fn from_extensions(extensions: &Extensions) -> Result<Option<Self>, LegacySenderError> {
        extensions.get(&ExtensionKey::Text(LEGACY_SENDER_KEY.to_owned())).map(Self::decode).transpose()
    }

    /// Decodes the CBOR value.
    pub fn decode(value: &ExtensionValue) -> Result<Self, LegacySenderError> {
        let mut d = Decoder::new(value.as_cbor());
        let n = d.map().map_err(shape)?.ok_or_else(|| shape("indefinite map"))?;
        let (mut uri, mut name, mut network) = (None, None, None);
        for _ in 0..n {
            let key = d.str().map_err(shape)?;
            match key {
                "uri" => uri = Some(d.str().map_err(shape)?.to_owned()),
                "name" => name = Some(d.str().map_err(shape)?.to_owned()),
                "network" => network = Some(d.str().map_err(shape)?.to_owned()),
                _ => d.skip().map_err(shape)?,
            }
        }
        if d.datatype().map(|t| t != Type::Break).unwrap_or(false) {
            return Err(shape("trailing data"));
        }
        Ok(Self {
            uri: uri.ok_or_else(|| shape("missing \"uri\""))?,
            display_name: name,
            network: network.ok_or_else(|| shape("missing \"network\""))?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bridge_api::ids::AccountId;

    #[test]
    fn round_trips_through_a_content_extensions_map() {
        let mut user = LegacyUser::new(AccountId::new("irc", "libera").expect("account"), "alice");
        user.display_name = Some("Alice".into());
        let ls = LegacySender::from_user(&user, "bridge.example.org");
        assert_eq!(ls.uri, "mimi://bridge.example.org/u/irc.libera~alice");
        assert_eq!(ls.network, "irc");
        let mut ext = Extensions::with_uris("mimi://bridge.example.org/u/bridge", "mimi://bridge.example.org/r/x");
        ls.attach(&mut ext).expect("attach");
        assert_eq!(LegacySender::from_extensions(&ext).expect("decode"), Some(ls.clone()));
        // Deterministic: "uri" < "name" < "network" by encoded bytes.
        let bytes = ls.encode().expect("encode");
        let b = bytes.as_cbor();
        assert_eq!(b[0], 0xa3);
        assert_eq!(&b[1..5], b"\x63uri");
        let no_name = LegacySender { display_name: None, ..ls };
        assert_eq!(LegacySender::decode(&no_name.encode().expect("encode")).expect("decode"), no_name);
    }

    #[test]
    fn refuses_a_value_without_uri() {
        let v = ExtensionValue::text("alice");
        assert!(LegacySender::decode(&v).is_err());
    }
}
