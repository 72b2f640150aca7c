//! Strict decoding of `application/mimi-content`.
//!
//! Only deterministically encoded input (RFC 8949 §4.2.1) that matches the
//! CDDL and passes [`super::validate::validate`] is accepted; everything else
//! is a typed [`ContentError`].

use super::cbor::{Reader, check_key_order, major};
use super::error::ContentError;
use super::model::{
    Disposition, EncAlg, Expiration, ExtensionKey, ExtensionValue, Extensions, ExternalPart, HashAlg, MAX_PART_DEPTH,
    MAX_PARTS, MessageIdBytes, MimiContent, MultiPart, NestedPart, PartBody, PartSemantics, SALT_LEN, SinglePart,
};

/// Decodes and validates one MIMI content message.
///
/// The input must be exactly one deterministic CBOR item; because every
/// accepted encoding is the deterministic one, re-encoding the result
/// reproduces `bytes` exactly (use [`super::Message`] to keep them).
pub fn decode(bytes: &[u8]) -> Result<MimiContent, ContentError> {
    let mut r = Reader::new(bytes);
    let content = read_content(&mut r)?;
    if r.remaining() != 0 {
        return Err(ContentError::TrailingBytes { count: r.remaining() });
    }
    super::validate::validate(&content)?;
    Ok(content)
}

fn check_len(what: &'static str, expected: usize, found: u64) -> Result<(), ContentError> {
    if found == expected as u64 { Ok(()) } else { Err(ContentError::WrongArrayLength { what, expected, found }) }
}

fn read_content(r: &mut Reader<'_>) -> Result<MimiContent, ContentError> {
    let n = r.array("mimiContent array")?;
    check_len("mimiContent", 7, n)?;
    let salt_b = r.bytes("salt (bstr)")?;
    let salt: [u8; SALT_LEN] = salt_b.try_into().map_err(|_| ContentError::BadSaltLength(salt_b.len()))?;
    let replaces = read_message_id(r, "replaces")?;
    let topic_id = r.bytes("topicId (bstr)")?.to_vec();
    let expires = if r.null()? {
        None
    } else {
        let n = r.array("expires (null or array)")?;
        check_len("Expiration", 2, n)?;
        let relative = r.bool("Expiration.relative (bool)")?;
        let time = uint_max(r, "Expiration.time", u64::from(u32::MAX))? as u32;
        Some(Expiration { relative, time })
    };
    let in_reply_to = read_message_id(r, "inReplyTo")?;
    let extensions = read_extensions(r)?;
    let mut count = 0usize;
    let nested_part = read_part(r, 1, &mut count)?;
    Ok(MimiContent { salt, replaces, topic_id, expires, in_reply_to, extensions, nested_part })
}

fn read_message_id(r: &mut Reader<'_>, field: &'static str) -> Result<Option<MessageIdBytes>, ContentError> {
    if r.null()? {
        return Ok(None);
    }
    let b = r.bytes("message id (null or bstr)")?;
    let id: MessageIdBytes = b.try_into().map_err(|_| ContentError::BadMessageIdLength { field, len: b.len() })?;
    Ok(Some(id))
}

fn uint_max(r: &mut Reader<'_>, field: &'static str, max: u64) -> Result<u64, ContentError> {
    let v = r.uint(field)?;
    if v > max {
        return Err(ContentError::IntegerOutOfRange { field, value: i128::from(v) });
    }
    Ok(v)
}

fn read_extensions(r: &mut Reader<'_>) -> Result<Extensions, ContentError> {
    let n = r.map("mimiExtensions (map)")?;
    let mut ext = Extensions::default();
    let mut prev: Option<(usize, usize)> = None;
    for _ in 0..n {
        let ks = r.pos();
        let key = r.ext_key()?.ok_or(ContentError::InvalidExtensionKeyType { offset: ks })?;
        let ke = r.pos();
        check_key_order(r.input(), prev, (ks, ke))?;
        prev = Some((ks, ke));
        match key {
            ExtensionKey::Int(k @ (ExtensionKey::SENDER_URI | ExtensionKey::ROOM_URI)) => {
                if r.head()?.major != major::TEXT {
                    return Err(ContentError::KnownExtensionNotText { key: k });
                }
                let t = r.text("extension text")?.to_owned();
                if k == ExtensionKey::SENDER_URI {
                    ext.sender_uri = Some(t);
                } else {
                    ext.room_uri = Some(t);
                }
            }
            key => {
                let vs = r.pos();
                r.any(2, false)?;
                let raw = r.input()[vs..r.pos()].to_vec();
                ext.push_sorted(key, ExtensionValue::from_validated(raw));
            }
        }
    }
    Ok(ext)
}

fn read_part(r: &mut Reader<'_>, depth: usize, count: &mut usize) -> Result<NestedPart, ContentError> {
    if depth > MAX_PART_DEPTH {
        return Err(ContentError::NestingTooDeep);
    }
    *count += 1;
    if *count > MAX_PARTS {
        return Err(ContentError::TooManyParts);
    }
    let n = r.array("NestedPart (array)")?;
    let disp = r.uint("disposition (uint)")?;
    let disposition =
        u8::try_from(disp).map(Disposition::from_u8).map_err(|_| ContentError::DispositionOutOfRange(disp))?;
    let language = r.text("language (tstr)")?.to_owned();
    let card = r.uint("cardinality (uint)")?;
    let body = match card {
        0 => {
            check_len("NullPart", 3, n)?;
            PartBody::Null
        }
        1 => {
            check_len("SinglePart", 5, n)?;
            let content_type = r.text("contentType (tstr)")?.to_owned();
            let content = r.bytes("content (bstr)")?.to_vec();
            PartBody::Single(SinglePart { content_type, content })
        }
        2 => {
            check_len("ExternalPart", 15, n)?;
            PartBody::External(Box::new(read_external(r)?))
        }
        3 => {
            check_len("MultiPart", 5, n)?;
            let semantics = PartSemantics::from_u64(r.uint("partSemantics (uint)")?)?;
            let k = r.array("parts (array)")?;
            let mut parts = Vec::new();
            for _ in 0..k {
                parts.push(read_part(r, depth + 1, count)?);
            }
            PartBody::Multi(MultiPart { semantics, parts })
        }
        c => return Err(ContentError::UnknownCardinality(c)),
    };
    Ok(NestedPart { disposition, language, body })
}

fn read_external(r: &mut Reader<'_>) -> Result<ExternalPart, ContentError> {
    let content_type = r.text("contentType (tstr)")?.to_owned();
    let url = r.text("url (tstr)")?.to_owned();
    let expires = uint_max(r, "ExternalPart.expires", u64::from(u32::MAX))? as u32;
    let size = r.uint("ExternalPart.size")?;
    let enc_alg = EncAlg(uint_max(r, "ExternalPart.encAlg", u64::from(u16::MAX))? as u16);
    let key = r.bytes("key (bstr)")?.to_vec();
    let nonce = r.bytes("nonce (bstr)")?.to_vec();
    let aad = r.bytes("aad (bstr)")?.to_vec();
    let hash_alg = HashAlg::from_u8(uint_max(r, "ExternalPart.hashAlg", 255)? as u8)?;
    let content_hash = r.bytes("contentHash (bstr)")?.to_vec();
    let description = r.text("description (tstr)")?.to_owned();
    let filename = r.text("filename (tstr)")?.to_owned();
    Ok(ExternalPart {
        content_type,
        url,
        expires,
        size,
        enc_alg,
        key,
        nonce,
        aad,
        hash_alg,
        content_hash,
        description,
        filename,
    })
}
