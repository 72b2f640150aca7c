//! The error type of the MIMI content codec.
//!
//! Every "log and discard" condition of draft-ietf-mimi-content (§6 and §9.1)
//! and every deviation from RFC 8949 §4.2.1 deterministic encoding has its own
//! variant, so callers can log precisely why a message was dropped.

use thiserror::Error;

/// Everything that can go wrong while decoding, validating, encoding or
/// processing MIMI content.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ContentError {
    // ---- CBOR well-formedness and determinism (RFC 8949 §4.2.1) ----
    /// The input ended in the middle of a CBOR item.
    #[error("truncated CBOR at offset {offset}")]
    Truncated {
        /// Byte offset where more input was expected.
        offset: usize,
    },
    /// A CBOR head that is not well-formed (reserved additional info, a
    /// stray "break", a two-byte simple value below 32 ...).
    #[error("malformed CBOR at offset {offset}: {reason}")]
    Malformed {
        /// Byte offset of the offending head.
        offset: usize,
        /// What is wrong.
        reason: &'static str,
    },
    /// An integer, length or tag not in its shortest form.
    #[error("non-shortest CBOR head at offset {offset}")]
    NonShortestEncoding {
        /// Byte offset of the offending head.
        offset: usize,
    },
    /// A floating-point value that could be encoded in a shorter float.
    #[error("non-shortest float at offset {offset}")]
    NonShortestFloat {
        /// Byte offset of the offending float.
        offset: usize,
    },
    /// A NaN other than the half-precision quiet NaN `f97e00`.
    #[error("forbidden NaN encoding at offset {offset}")]
    ForbiddenNaN {
        /// Byte offset of the offending float.
        offset: usize,
    },
    /// A bignum (tag 2/3) whose value fits a plain CBOR integer, or with leading zeros.
    #[error("bignum not in preferred form at offset {offset}")]
    NonPreferredBignum {
        /// Byte offset of the tag.
        offset: usize,
    },
    /// An indefinite-length string, array or map.
    #[error("indefinite-length item at offset {offset}")]
    IndefiniteLength {
        /// Byte offset of the offending head.
        offset: usize,
    },
    /// A text string that is not valid UTF-8.
    #[error("invalid UTF-8 in text string at offset {offset}")]
    InvalidUtf8 {
        /// Byte offset of the text string.
        offset: usize,
    },
    /// Map keys not in bytewise lexicographic order of their encodings.
    #[error("map keys not in deterministic order at offset {offset}")]
    UnsortedMapKeys {
        /// Byte offset of the out-of-order key.
        offset: usize,
    },
    /// The same key appears twice in one map.
    #[error("duplicate map key at offset {offset}")]
    DuplicateMapKey {
        /// Byte offset of the repeated key.
        offset: usize,
    },
    /// Bytes left over after the top-level item.
    #[error("{count} trailing byte(s) after the message")]
    TrailingBytes {
        /// How many bytes follow the message.
        count: usize,
    },
    /// A CBOR item of the wrong type for its position in the schema.
    #[error("expected {expected} at offset {offset}")]
    UnexpectedType {
        /// Byte offset of the item.
        offset: usize,
        /// What the schema wants there.
        expected: &'static str,
    },
    /// An integer that does not fit its CDDL `.size` (e.g. `uint .size 4`).
    #[error("{field} out of range: {value}")]
    IntegerOutOfRange {
        /// Schema field name.
        field: &'static str,
        /// Received value (saturated to `i128`).
        value: i128,
    },

    // ---- mimiContent structure ----
    /// An array with the wrong number of elements.
    #[error("{what} must have {expected} elements, has {found}")]
    WrongArrayLength {
        /// Which structure.
        what: &'static str,
        /// Required length.
        expected: usize,
        /// Received length.
        found: u64,
    },
    /// `salt` is not exactly 16 bytes.
    #[error("salt must be 16 bytes, is {0}")]
    BadSaltLength(usize),
    /// `replaces` or `inReplyTo` is not exactly 32 bytes.
    #[error("{field} message id must be 32 bytes, is {len}")]
    BadMessageIdLength {
        /// `replaces` or `inReplyTo`.
        field: &'static str,
        /// Received length.
        len: usize,
    },
    /// A message id whose first octet is not a known hash algorithm.
    #[error("{field} message id uses unknown hash algorithm {alg}")]
    UnknownMessageIdHashAlg {
        /// `replaces` or `inReplyTo`.
        field: &'static str,
        /// The first octet.
        alg: u8,
    },
    /// `topicId` longer than 4096 octets (§9.1).
    #[error("topicId too long: {0} octets (max 4096)")]
    TopicIdTooLong(usize),
    /// An absolute expiry more than a year in the past (§9.1).
    #[error("expires more than a year in the past")]
    ExpiresTooFarInPast,
    /// An expiry more than a year in the future (§9.1).
    #[error("expires more than a year in the future")]
    ExpiresTooFarInFuture,

    // ---- extensions ----
    /// An extension key that is neither an integer nor a text string.
    #[error("extension key at offset {offset} is neither int nor tstr")]
    InvalidExtensionKeyType {
        /// Byte offset of the key.
        offset: usize,
    },
    /// A text extension key that is empty or longer than 255 octets.
    #[error("text extension key must be 1..=255 octets, is {0}")]
    ExtensionKeyLength(usize),
    /// An integer map key outside ±(2^53 − 1) (§6.2).
    #[error("integer map key outside ±(2^53-1)")]
    IntegerKeyOutOfRange,
    /// A map key inside an extension value that is not int, tstr or bstr (§6.2).
    #[error("map key inside an extension at offset {offset} is not int/tstr/bstr")]
    InvalidNestedMapKey {
        /// Byte offset of the key.
        offset: usize,
    },
    /// senderUri (1) or roomUri (2) with a non-text value.
    #[error("extension {key} must be a text string")]
    KnownExtensionNotText {
        /// 1 or 2.
        key: i64,
    },
    /// An extension value with tags/maps/arrays nested more than 4 levels,
    /// counting the extensions map itself as level 1 (§6.3).
    #[error("extension value nested too deeply (max 4 levels incl. the extensions map)")]
    ExtensionTooDeep,
    /// Bytes given as an extension value that are not exactly one CBOR item.
    #[error("extension value is not exactly one deterministic CBOR item")]
    InvalidExtensionValue,

    // ---- body ----
    /// A disposition outside 0..=255.
    #[error("disposition {0} out of range 0..=255")]
    DispositionOutOfRange(u64),
    /// A cardinality other than 0..=3.
    #[error("unknown cardinality {0}")]
    UnknownCardinality(u64),
    /// A partSemantics value other than 0..=2 (§9.1).
    #[error("unknown partSemantics {0}")]
    UnknownPartSemantics(u64),
    /// A MultiPart with fewer than two parts (CDDL `[2* NestedPart]`).
    #[error("multipart has {0} part(s), needs at least 2")]
    TooFewParts(usize),
    /// A `cid:N@local.invalid` reference that names no SinglePart/ExternalPart.
    #[error("cid:{0}@local.invalid does not name a SinglePart or ExternalPart")]
    InvalidCidReference(u64),
    /// NestedParts nested more than 4 levels deep (§6.3, §9.1).
    #[error("body nested more than 4 levels deep")]
    NestingTooDeep,
    /// More than 1024 body parts (§9.1).
    #[error("more than 1024 body parts")]
    TooManyParts,
    /// An ExternalPart hashAlg not in the Named Information registry.
    #[error("unknown hash algorithm {0}")]
    UnknownHashAlgorithm(u8),
    /// contentHash length inconsistent with hashAlg (including hashAlg 0 with a hash).
    #[error("contentHash of {found} bytes does not match hashAlg {alg} ({expected} bytes)")]
    ContentHashLengthMismatch {
        /// The hashAlg.
        alg: u8,
        /// Digest length of that algorithm.
        expected: usize,
        /// Received length.
        found: usize,
    },
    /// encAlg 0 (not encrypted) with a non-empty key, nonce or aad.
    #[error("encAlg 0 requires empty key, nonce and aad")]
    UnexpectedEncryptionParams,
    /// key or nonce length wrong for a known AEAD algorithm.
    #[error("encAlg {enc_alg}: key/nonce lengths {key_len}/{nonce_len} are wrong")]
    AeadParamLength {
        /// AEAD algorithm number.
        enc_alg: u16,
        /// Received key length.
        key_len: usize,
        /// Received nonce length.
        nonce_len: usize,
    },

    // ---- message id ----
    /// No sender or room URI available to compute the message id.
    #[error("cannot compute message id: no {0} URI")]
    MissingUri(&'static str),
    /// A sender or room URI longer than 65535 octets.
    #[error("{0} URI longer than 65535 octets")]
    UriTooLong(&'static str),

    // ---- attachments ----
    /// The downloaded blob does not match the advertised contentHash.
    #[error("attachment hash mismatch")]
    AttachmentHashMismatch,
    /// The downloaded blob does not match the advertised size.
    #[error("attachment size mismatch: expected {expected}, got {found}")]
    AttachmentSizeMismatch {
        /// Advertised size.
        expected: u64,
        /// Downloaded size.
        found: u64,
    },
    /// AEAD decryption failed (wrong key or tampered blob).
    #[error("attachment decryption failed")]
    AttachmentDecryptFailed,
    /// An AEAD or hash algorithm this implementation cannot compute.
    #[error("unsupported {what} algorithm {alg}")]
    UnsupportedAlgorithm {
        /// "encryption" or "hash".
        what: &'static str,
        /// The algorithm number.
        alg: u16,
    },
    /// Not an ExternalPart.
    #[error("not an external part")]
    NotExternal,

    /// The CBOR encoder failed (cannot happen when writing to memory).
    #[error("cbor encoder: {0}")]
    Encode(String),

    // ---- JSON ----
    /// The JSON form could not be parsed or does not describe valid content.
    #[error("json: {0}")]
    Json(String),
}
