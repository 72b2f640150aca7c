//! The MIMI content data model (draft-ietf-mimi-content-09, Appendix A.1).
//!
//! The types mirror the CDDL one to one. Field numbers in curly braces refer
//! to the draft's `{n}` annotations.

use super::error::ContentError;

/// Length of the per-message salt.
pub const SALT_LEN: usize = 16;
/// Length of a MIMI message ID.
pub const MESSAGE_ID_LEN: usize = 32;
/// A 32-byte MIMI message ID: hash algorithm octet followed by 31 hash octets.
pub type MessageIdBytes = [u8; MESSAGE_ID_LEN];
/// Maximum `topicId` length accepted (§9.1).
pub const MAX_TOPIC_ID_LEN: usize = 4096;
/// Maximum number of body parts accepted (§9.1).
pub const MAX_PARTS: usize = 1024;
/// Maximum NestedPart nesting depth; the top-level part is level 1 (§6.3).
pub const MAX_PART_DEPTH: usize = 4;
/// Maximum nesting of tags/maps/arrays in extensions, the map itself being level 1 (§6.3).
pub const MAX_EXTENSION_DEPTH: u32 = 4;
/// Largest magnitude of an integer map key (§6.2: 2^53 − 1).
pub const MAX_INT_KEY: i64 = (1 << 53) - 1;
/// Media type of a MIMI markdown body.
pub const MIME_MARKDOWN: &str = "text/markdown;variant=GFM-MIMI";
/// Media type of a plain-text body.
pub const MIME_PLAIN: &str = "text/plain;charset=utf-8";
/// Media type of an HTML body.
pub const MIME_HTML: &str = "text/html;charset=utf-8";

/// A complete MIMI content message (`mimiContent`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MimiContent {
    /// Per-message random salt.
    pub salt: [u8; SALT_LEN],
    /// {1} Message replaced by this one (edit, delete, unreact).
    pub replaces: Option<MessageIdBytes>,
    /// {2} Topic identifier; empty means no topic.
    pub topic_id: Vec<u8>,
    /// {3} Expiration hint.
    pub expires: Option<Expiration>,
    /// {4} Message this one replies or reacts to.
    pub in_reply_to: Option<MessageIdBytes>,
    /// {6} Extensions map.
    pub extensions: Extensions,
    /// {7} The body.
    pub nested_part: NestedPart,
}

/// {3} `Expiration = [relative: bool, time: uint .size 4]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expiration {
    /// `true`: `time` is seconds after reading; `false`: seconds since the UNIX epoch.
    pub relative: bool,
    /// Seconds (relative or absolute).
    pub time: u32,
}

/// The key of an extension (`name = int / tstr .size (1..255)`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ExtensionKey {
    /// Integer key (positive: IANA registry, negative: private use).
    Int(i64),
    /// Text key (private use), 1..=255 octets.
    Text(String),
}

impl ExtensionKey {
    /// Well-known key of the sender's user URI.
    pub const SENDER_URI: i64 = 1;
    /// Well-known key of the room URI.
    pub const ROOM_URI: i64 = 2;

    /// Checks the data-model rules of §4.3 and §6.2 for this key.
    pub fn check(&self) -> Result<(), ContentError> {
        match self {
            Self::Int(i) if i.unsigned_abs() > MAX_INT_KEY.unsigned_abs() => Err(ContentError::IntegerKeyOutOfRange),
            Self::Text(t) if t.is_empty() || t.len() > 255 => Err(ContentError::ExtensionKeyLength(t.len())),
            _ => Ok(()),
        }
    }
}

/// An extension value: exactly one deterministically encoded CBOR item,
/// kept as its encoded bytes so that unknown extensions survive a round trip.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ExtensionValue(Vec<u8>);

impl ExtensionValue {
    /// Wraps encoded CBOR after checking that it is one deterministic item
    /// obeying the extension rules of §6.2/§6.3.
    pub fn from_cbor(bytes: Vec<u8>) -> Result<Self, ContentError> {
        super::cbor::check_extension_value(&bytes)?;
        Ok(Self(bytes))
    }

    /// Wraps bytes already validated by the decoder.
    pub(crate) fn from_validated(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }

    /// A text value.
    pub fn text(s: &str) -> Self {
        Self(super::cbor::encode_text(s))
    }

    /// An integer value.
    pub fn int(i: i64) -> Self {
        Self(super::cbor::encode_int(i128::from(i)))
    }

    /// The encoded CBOR item.
    pub fn as_cbor(&self) -> &[u8] {
        &self.0
    }

    /// The value if it is a text string.
    pub fn as_text(&self) -> Option<&str> {
        super::cbor::as_text(&self.0)
    }

    /// The value if it is an integer (major type 0 or 1).
    pub fn as_int(&self) -> Option<i128> {
        super::cbor::as_int(&self.0)
    }
}

/// One extension other than senderUri/roomUri.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extension {
    /// Its key.
    pub key: ExtensionKey,
    /// Its value.
    pub value: ExtensionValue,
}

/// {6} The extensions map. senderUri (1) and roomUri (2) have their own
/// fields; every other entry is kept in deterministic key order, unique.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Extensions {
    /// Key 1: the sender's user URI (used for the message ID).
    pub sender_uri: Option<String>,
    /// Key 2: the room URI (used for the message ID).
    pub room_uri: Option<String>,
    others: Vec<Extension>,
}

impl Extensions {
    /// Extensions with senderUri and roomUri set.
    pub fn with_uris(sender: &str, room: &str) -> Self {
        Self { sender_uri: Some(sender.to_owned()), room_uri: Some(room.to_owned()), others: Vec::new() }
    }

    /// The extensions other than 1 and 2, in deterministic (wire) order.
    pub fn others(&self) -> &[Extension] {
        &self.others
    }

    /// Looks up an extension other than 1 and 2.
    pub fn get(&self, key: &ExtensionKey) -> Option<&ExtensionValue> {
        self.others.iter().find(|e| &e.key == key).map(|e| &e.value)
    }

    /// Inserts or replaces an entry; keys 1 and 2 must carry text and set
    /// the dedicated fields. Returns the previous value of a non-1/2 key.
    pub fn insert(&mut self, key: ExtensionKey, value: ExtensionValue) -> Result<Option<ExtensionValue>, ContentError> {
        key.check()?;
        if let ExtensionKey::Int(k @ (ExtensionKey::SENDER_URI | ExtensionKey::ROOM_URI)) = key {
            let text = value.as_text().ok_or(ContentError::KnownExtensionNotText { key: k })?.to_owned();
            let slot = if k == ExtensionKey::SENDER_URI { &mut self.sender_uri } else { &mut self.room_uri };
            return Ok(slot.replace(text).map(|t| ExtensionValue::text(&t)));
        }
        let enc = super::cbor::encode_key(&key);
        let pos = self.others.binary_search_by(|e| super::cbor::encode_key(&e.key).cmp(&enc));
        match pos {
            Ok(i) => Ok(Some(std::mem::replace(&mut self.others[i].value, value))),
            Err(i) => {
                self.others.insert(i, Extension { key, value });
                Ok(None)
            }
        }
    }

    /// Appends an entry the decoder has already checked to be in order and unique.
    pub(crate) fn push_sorted(&mut self, key: ExtensionKey, value: ExtensionValue) {
        self.others.push(Extension { key, value });
    }

    /// Removes an extension other than 1 and 2.
    pub fn remove(&mut self, key: &ExtensionKey) -> Option<ExtensionValue> {
        let i = self.others.iter().position(|e| &e.key == key)?;
        Some(self.others.remove(i).value)
    }

    /// Number of entries the encoded map has.
    pub fn len(&self) -> usize {
        usize::from(self.sender_uri.is_some()) + usize::from(self.room_uri.is_some()) + self.others.len()
    }

    /// Whether the map is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// {10} Part disposition (IANA "MIMI Content Disposition" registry).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Disposition {
    /// 0: no hint.
    Unspecified,
    /// 1: render according to local policy.
    Render,
    /// 2: a single reaction to another message.
    Reaction,
    /// 3: a profile of a participant or room.
    Profile,
    /// 4: rendered inline in the chat.
    Inline,
    /// 5: an icon such as an avatar.
    Icon,
    /// 6: to be downloaded rather than rendered.
    Attachment,
    /// 7: a multimedia session description or join URI.
    Session,
    /// 8: a sender-generated preview.
    Preview,
    /// 9..=255: unknown or extension disposition (treat as render, §9.1).
    Other(u8),
}

impl Disposition {
    /// From the wire value.
    pub fn from_u8(v: u8) -> Self {
        match v {
            0 => Self::Unspecified,
            1 => Self::Render,
            2 => Self::Reaction,
            3 => Self::Profile,
            4 => Self::Inline,
            5 => Self::Icon,
            6 => Self::Attachment,
            7 => Self::Session,
            8 => Self::Preview,
            v => Self::Other(v),
        }
    }

    /// The wire value.
    pub fn to_u8(self) -> u8 {
        match self {
            Self::Unspecified => 0,
            Self::Render => 1,
            Self::Reaction => 2,
            Self::Profile => 3,
            Self::Inline => 4,
            Self::Icon => 5,
            Self::Attachment => 6,
            Self::Session => 7,
            Self::Preview => 8,
            Self::Other(v) => v,
        }
    }
}

/// Cardinality code (the third NestedPart element).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cardinality {
    /// 0: NullPart.
    NullPart = 0,
    /// 1: SinglePart.
    Single = 1,
    /// 2: ExternalPart.
    External = 2,
    /// 3: MultiPart.
    Multi = 3,
}

/// {9} How the parts of a MultiPart relate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PartSemantics {
    /// 0: receiver picks exactly one part (like multipart/alternative).
    ChooseOne = 0,
    /// 1: all parts form one unit (like multipart/related).
    SingleUnit = 1,
    /// 2: process each part individually (like multipart/mixed).
    ProcessAll = 2,
}

impl PartSemantics {
    /// From the wire value.
    pub fn from_u64(v: u64) -> Result<Self, ContentError> {
        match v {
            0 => Ok(Self::ChooseOne),
            1 => Ok(Self::SingleUnit),
            2 => Ok(Self::ProcessAll),
            v => Err(ContentError::UnknownPartSemantics(v)),
        }
    }
}

/// IANA Named Information Hash Algorithm Registry (RFC 6920), plus 0 = none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types)]
pub enum HashAlg {
    /// 0: no hash (the draft's attachment example uses it with an empty hash).
    None = 0,
    /// 1: sha-256 (the draft's default).
    Sha256 = 1,
    /// 2: sha-256 truncated to 128 bits.
    Sha256_128 = 2,
    /// 3: sha-256 truncated to 120 bits.
    Sha256_120 = 3,
    /// 4: sha-256 truncated to 96 bits.
    Sha256_96 = 4,
    /// 5: sha-256 truncated to 64 bits.
    Sha256_64 = 5,
    /// 6: sha-256 truncated to 32 bits.
    Sha256_32 = 6,
    /// 7: sha-384.
    Sha384 = 7,
    /// 8: sha-512.
    Sha512 = 8,
    /// 9: sha3-224.
    Sha3_224 = 9,
    /// 10: sha3-256.
    Sha3_256 = 10,
    /// 11: sha3-384.
    Sha3_384 = 11,
    /// 12: sha3-512.
    Sha3_512 = 12,
}

impl HashAlg {
    /// From the wire value; unknown values are a discard condition.
    pub fn from_u8(v: u8) -> Result<Self, ContentError> {
        Ok(match v {
            0 => Self::None,
            1 => Self::Sha256,
            2 => Self::Sha256_128,
            3 => Self::Sha256_120,
            4 => Self::Sha256_96,
            5 => Self::Sha256_64,
            6 => Self::Sha256_32,
            7 => Self::Sha384,
            8 => Self::Sha512,
            9 => Self::Sha3_224,
            10 => Self::Sha3_256,
            11 => Self::Sha3_384,
            12 => Self::Sha3_512,
            v => return Err(ContentError::UnknownHashAlgorithm(v)),
        })
    }

    /// The wire value.
    pub fn to_u8(self) -> u8 {
        self as u8
    }

    /// Length of the digest in octets (0 for [`HashAlg::None`]).
    pub fn digest_len(self) -> usize {
        match self {
            Self::None => 0,
            Self::Sha256 | Self::Sha3_256 => 32,
            Self::Sha256_128 => 16,
            Self::Sha256_120 => 15,
            Self::Sha256_96 => 12,
            Self::Sha256_64 => 8,
            Self::Sha256_32 => 4,
            Self::Sha384 | Self::Sha3_384 => 48,
            Self::Sha512 | Self::Sha3_512 => 64,
            Self::Sha3_224 => 28,
        }
    }
}

/// AEAD algorithm numbers (IANA AEAD registry, RFC 5116) used by `encAlg`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EncAlg(pub u16);

impl EncAlg {
    /// 0: not encrypted.
    pub const NONE: Self = Self(0);
    /// 1: AEAD_AES_128_GCM (mandatory to implement).
    pub const AES_128_GCM: Self = Self(1);
    /// 2: AEAD_AES_256_GCM.
    pub const AES_256_GCM: Self = Self(2);

    /// (key length, nonce length) for the algorithms this crate knows.
    pub fn key_nonce_len(self) -> Option<(usize, usize)> {
        match self.0 {
            1 => Some((16, 12)),
            2 => Some((32, 12)),
            _ => None,
        }
    }
}

/// {7}/`NestedPart`: disposition, language and one of four bodies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NestedPart {
    /// {10} Disposition.
    pub disposition: Disposition,
    /// {11} Empty or comma-separated RFC 5646 language tags.
    pub language: String,
    /// The cardinality-specific body.
    pub body: PartBody,
}

/// The cardinality-specific part of a NestedPart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartBody {
    /// Cardinality 0: no content (delete, unreact).
    Null,
    /// Cardinality 1: inline content.
    Single(SinglePart),
    /// Cardinality 2: content at a URL.
    External(Box<ExternalPart>),
    /// Cardinality 3: several parts.
    Multi(MultiPart),
}

impl PartBody {
    /// The cardinality code of this body.
    pub fn cardinality(&self) -> Cardinality {
        match self {
            Self::Null => Cardinality::NullPart,
            Self::Single(_) => Cardinality::Single,
            Self::External(_) => Cardinality::External,
            Self::Multi(_) => Cardinality::Multi,
        }
    }
}

/// `SinglePart`: inline content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinglePart {
    /// {8} Media type with parameters.
    pub content_type: String,
    /// The content octets.
    pub content: Vec<u8>,
}

/// `ExternalPart`: content stored at a URL, optionally encrypted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalPart {
    /// {8} Media type of the (decrypted) content.
    pub content_type: String,
    /// Where to fetch the content.
    pub url: String,
    /// Seconds since the epoch after which the URL is invalid; 0 = never.
    pub expires: u32,
    /// Size of the content at the URL in octets; 0 = unknown.
    pub size: u64,
    /// AEAD algorithm; [`EncAlg::NONE`] = not encrypted.
    pub enc_alg: EncAlg,
    /// AEAD key.
    pub key: Vec<u8>,
    /// AEAD nonce.
    pub nonce: Vec<u8>,
    /// AEAD additional authenticated data (default empty).
    pub aad: Vec<u8>,
    /// Hash algorithm of `content_hash`.
    pub hash_alg: HashAlg,
    /// Hash of the content at the URL.
    pub content_hash: Vec<u8>,
    /// Optional text description.
    pub description: String,
    /// Optional suggested file name.
    pub filename: String,
}

/// `MultiPart`: two or more nested parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MultiPart {
    /// {9} How the parts relate.
    pub semantics: PartSemantics,
    /// The parts (at least two).
    pub parts: Vec<NestedPart>,
}

impl NestedPart {
    /// A SinglePart with disposition render and no language.
    pub fn single(content_type: &str, content: impl Into<Vec<u8>>) -> Self {
        Self {
            disposition: Disposition::Render,
            language: String::new(),
            body: PartBody::Single(SinglePart { content_type: content_type.to_owned(), content: content.into() }),
        }
    }

    /// A NullPart with the given disposition.
    pub fn null(disposition: Disposition) -> Self {
        Self { disposition, language: String::new(), body: PartBody::Null }
    }

    /// Visits this part and all nested parts in depth-first order, which is
    /// the order of the implied part index (part 0 is `self`).
    pub fn walk<'a>(&'a self, f: &mut impl FnMut(&'a NestedPart)) {
        f(self);
        if let PartBody::Multi(m) = &self.body {
            for p in &m.parts {
                p.walk(f);
            }
        }
    }

    /// The part with implied part index `index` (§4.4).
    pub fn by_index(&self, index: usize) -> Option<&NestedPart> {
        let mut i = 0usize;
        let mut found = None;
        self.walk(&mut |p| {
            if i == index {
                found = Some(p);
            }
            i += 1;
        });
        found
    }
}
