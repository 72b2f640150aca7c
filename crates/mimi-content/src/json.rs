//! Lossless JSON form of MIMI content, behind `mimi-bridge content
//! decode|encode|id`.
//!
//! Field names are the CDDL's (`salt`, `replaces`, `topicId`, `expires`,
//! `inReplyTo`, `mimiExtensions`, `nestedPart`; parts: `disposition`,
//! `language`, `cardinality`, then `contentType`/`content`, the thirteen
//! ExternalPart fields, or `partSemantics`/`parts`). Byte strings are
//! lowercase hex, text is a string, integers are numbers, `Expiration` is
//! `{"relative": bool, "time": n}`. `mimiExtensions` is a list of
//! `[key, value]` pairs (key an integer or a string) in wire order; a value is
//! a JSON string or number when it is CBOR text or an integer, and
//! `{"cbor": "<hex of the encoded item>"}` otherwise. Decoding and
//! re-encoding through this form is byte-identical.

use serde::{Deserialize, Serialize};

use super::error::ContentError;
use super::model::{
    Disposition, EncAlg, Expiration, ExtensionKey, ExtensionValue, Extensions, ExternalPart, HashAlg, MimiContent,
    MultiPart, NestedPart, PartBody, PartSemantics, SinglePart,
};
use super::{Message, decode, encode};

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct JContent {
    salt: String,
    replaces: Option<String>,
    #[serde(rename = "topicId")]
    topic_id: String,
    expires: Option<JExpiration>,
    #[serde(rename = "inReplyTo")]
    in_reply_to: Option<String>,
    #[serde(rename = "mimiExtensions")]
    mimi_extensions: Vec<(JKey, JValue)>,
    #[serde(rename = "nestedPart")]
    nested_part: JPart,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct JExpiration {
    relative: bool,
    time: u32,
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum JKey {
    Int(i64),
    Text(String),
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct JCbor {
    cbor: String,
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum JValue {
    Int(i64),
    UInt(u64),
    Text(String),
    Cbor(JCbor),
}

#[derive(Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct JPart {
    disposition: u64,
    language: String,
    cardinality: u64,
    #[serde(rename = "contentType", skip_serializing_if = "Option::is_none", default)]
    content_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    expires: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    size: Option<u64>,
    #[serde(rename = "encAlg", skip_serializing_if = "Option::is_none", default)]
    enc_alg: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    nonce: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    aad: Option<String>,
    #[serde(rename = "hashAlg", skip_serializing_if = "Option::is_none", default)]
    hash_alg: Option<u64>,
    #[serde(rename = "contentHash", skip_serializing_if = "Option::is_none", default)]
    content_hash: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    description: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    filename: Option<String>,
    #[serde(rename = "partSemantics", skip_serializing_if = "Option::is_none", default)]
    part_semantics: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    parts: Option<Vec<JPart>>,
}

/// Decodes MIMI content bytes and renders them as (pretty-printed) lossless JSON.
pub fn decode_to_json(bytes: &[u8]) -> Result<String, ContentError> {
    let c = decode(bytes)?;
    serde_json::to_string_pretty(&to_json(&c)).map_err(|e| ContentError::Json(e.to_string()))
}

/// Parses the JSON form and encodes it as deterministic CBOR.
pub fn encode_from_json(json: &str) -> Result<Vec<u8>, ContentError> {
    let j: JContent = serde_json::from_str(json).map_err(|e| ContentError::Json(e.to_string()))?;
    encode(&from_json(j)?)
}

/// The message ID of encoded content as lowercase hex, using the message's
/// own senderUri/roomUri extensions unless overridden.
pub fn message_id_hex(bytes: &[u8], sender: Option<&str>, room: Option<&str>) -> Result<String, ContentError> {
    Ok(hex::encode(Message::decode(bytes)?.message_id_with(sender, room)?))
}

fn to_json(c: &MimiContent) -> JContent {
    let x = &c.extensions;
    let mut ext = Vec::with_capacity(x.len());
    let mut others = x.others().iter().peekable();
    if let Some(o) = others.next_if(|o| o.key == ExtensionKey::Int(0)) {
        ext.push((JKey::Int(0), value_to_json(&o.value)));
    }
    if let Some(s) = &x.sender_uri {
        ext.push((JKey::Int(1), JValue::Text(s.clone())));
    }
    if let Some(r) = &x.room_uri {
        ext.push((JKey::Int(2), JValue::Text(r.clone())));
    }
    for o in others {
        let k = match &o.key {
            ExtensionKey::Int(i) => JKey::Int(*i),
            ExtensionKey::Text(t) => JKey::Text(t.clone()),
        };
        ext.push((k, value_to_json(&o.value)));
    }
    JContent {
        salt: hex::encode(c.salt),
        replaces: c.replaces.map(hex::encode),
        topic_id: hex::encode(&c.topic_id),
        expires: c.expires.map(|e| JExpiration { relative: e.relative, time: e.time }),
        in_reply_to: c.in_reply_to.map(hex::encode),
        mimi_extensions: ext,
        nested_part: part_to_json(&c.nested_part),
    }
}

fn value_to_json(v: &ExtensionValue) -> JValue {
    if let Some(t) = v.as_text() {
        return JValue::Text(t.to_owned());
    }
    if let Some(i) = v.as_int() {
        if let Ok(i) = i64::try_from(i) {
            return JValue::Int(i);
        }
        if let Ok(u) = u64::try_from(i) {
            return JValue::UInt(u);
        }
    }
    JValue::Cbor(JCbor { cbor: hex::encode(v.as_cbor()) })
}

fn part_to_json(p: &NestedPart) -> JPart {
    let mut j = JPart {
        disposition: u64::from(p.disposition.to_u8()),
        language: p.language.clone(),
        cardinality: p.body.cardinality() as u64,
        ..JPart::default()
    };
    match &p.body {
        PartBody::Null => {}
        PartBody::Single(s) => {
            j.content_type = Some(s.content_type.clone());
            j.content = Some(hex::encode(&s.content));
        }
        PartBody::External(x) => {
            j.content_type = Some(x.content_type.clone());
            j.url = Some(x.url.clone());
            j.expires = Some(u64::from(x.expires));
            j.size = Some(x.size);
            j.enc_alg = Some(u64::from(x.enc_alg.0));
            j.key = Some(hex::encode(&x.key));
            j.nonce = Some(hex::encode(&x.nonce));
            j.aad = Some(hex::encode(&x.aad));
            j.hash_alg = Some(u64::from(x.hash_alg.to_u8()));
            j.content_hash = Some(hex::encode(&x.content_hash));
            j.description = Some(x.description.clone());
            j.filename = Some(x.filename.clone());
        }
        PartBody::Multi(m) => {
            j.part_semantics = Some(m.semantics as u64);
            j.parts = Some(m.parts.iter().map(part_to_json).collect());
        }
    }
    j
}

fn err(msg: impl Into<String>) -> ContentError {
    ContentError::Json(msg.into())
}

fn unhex(field: &str, s: &str) -> Result<Vec<u8>, ContentError> {
    hex::decode(s).map_err(|e| err(format!("{field}: invalid hex: {e}")))
}

fn unhex_fixed<const N: usize>(field: &'static str, s: &str) -> Result<[u8; N], ContentError> {
    let v = unhex(field, s)?;
    v.as_slice().try_into().map_err(|_| match N {
        16 => ContentError::BadSaltLength(v.len()),
        _ => ContentError::BadMessageIdLength { field, len: v.len() },
    })
}

fn from_json(j: JContent) -> Result<MimiContent, ContentError> {
    let mut extensions = Extensions::default();
    for (k, v) in j.mimi_extensions {
        let key = match k {
            JKey::Int(i) => ExtensionKey::Int(i),
            JKey::Text(t) => ExtensionKey::Text(t),
        };
        let value = match v {
            JValue::Int(i) => ExtensionValue::int(i),
            JValue::UInt(u) => ExtensionValue::from_cbor(super::cbor::encode_int(i128::from(u)))?,
            JValue::Text(t) => ExtensionValue::text(&t),
            JValue::Cbor(c) => ExtensionValue::from_cbor(unhex("cbor", &c.cbor)?)?,
        };
        let is_known = matches!(key, ExtensionKey::Int(1 | 2));
        let dup = if is_known {
            let slot = match key {
                ExtensionKey::Int(1) => &extensions.sender_uri,
                _ => &extensions.room_uri,
            };
            slot.is_some()
        } else {
            extensions.get(&key).is_some()
        };
        if dup {
            return Err(ContentError::DuplicateMapKey { offset: 0 });
        }
        extensions.insert(key, value)?;
    }
    Ok(MimiContent {
        salt: unhex_fixed::<16>("salt", &j.salt)?,
        replaces: j.replaces.map(|s| unhex_fixed::<32>("replaces", &s)).transpose()?,
        topic_id: unhex("topicId", &j.topic_id)?,
        expires: j.expires.map(|e| Expiration { relative: e.relative, time: e.time }),
        in_reply_to: j.in_reply_to.map(|s| unhex_fixed::<32>("inReplyTo", &s)).transpose()?,
        extensions,
        nested_part: part_from_json(j.nested_part)?,
    })
}

fn need<T>(v: Option<T>, field: &str, card: u64) -> Result<T, ContentError> {
    v.ok_or_else(|| err(format!("cardinality {card} needs field {field}")))
}

fn range<T: TryFrom<u64>>(v: u64, field: &'static str) -> Result<T, ContentError> {
    T::try_from(v).map_err(|_| ContentError::IntegerOutOfRange { field, value: i128::from(v) })
}

fn part_from_json(j: JPart) -> Result<NestedPart, ContentError> {
    let disposition = u8::try_from(j.disposition)
        .map(Disposition::from_u8)
        .map_err(|_| ContentError::DispositionOutOfRange(j.disposition))?;
    let card = j.cardinality;
    let single_fields = j.content_type.is_some() as u8 + j.content.is_some() as u8;
    let ext_fields = [
        j.url.is_some(),
        j.expires.is_some(),
        j.size.is_some(),
        j.enc_alg.is_some(),
        j.key.is_some(),
        j.nonce.is_some(),
        j.aad.is_some(),
        j.hash_alg.is_some(),
        j.content_hash.is_some(),
        j.description.is_some(),
        j.filename.is_some(),
    ]
    .iter()
    .any(|b| *b);
    let multi_fields = j.part_semantics.is_some() || j.parts.is_some();
    let extra = match card {
        0 => single_fields > 0 || ext_fields || multi_fields,
        1 => ext_fields || multi_fields,
        2 => multi_fields || j.content.is_some(),
        3 => single_fields > 0 || ext_fields,
        c => return Err(ContentError::UnknownCardinality(c)),
    };
    if extra {
        return Err(err(format!("fields not allowed for cardinality {card}")));
    }
    let body = match card {
        0 => PartBody::Null,
        1 => PartBody::Single(SinglePart {
            content_type: need(j.content_type, "contentType", card)?,
            content: unhex("content", &need(j.content, "content", card)?)?,
        }),
        2 => PartBody::External(Box::new(ExternalPart {
            content_type: need(j.content_type, "contentType", card)?,
            url: need(j.url, "url", card)?,
            expires: range(need(j.expires, "expires", card)?, "ExternalPart.expires")?,
            size: need(j.size, "size", card)?,
            enc_alg: EncAlg(range(need(j.enc_alg, "encAlg", card)?, "ExternalPart.encAlg")?),
            key: unhex("key", &need(j.key, "key", card)?)?,
            nonce: unhex("nonce", &need(j.nonce, "nonce", card)?)?,
            aad: unhex("aad", &need(j.aad, "aad", card)?)?,
            hash_alg: HashAlg::from_u8(range(need(j.hash_alg, "hashAlg", card)?, "ExternalPart.hashAlg")?)?,
            content_hash: unhex("contentHash", &need(j.content_hash, "contentHash", card)?)?,
            description: need(j.description, "description", card)?,
            filename: need(j.filename, "filename", card)?,
        })),
        _ => PartBody::Multi(MultiPart {
            semantics: PartSemantics::from_u64(need(j.part_semantics, "partSemantics", card)?)?,
            parts: need(j.parts, "parts", card)?.into_iter().map(part_from_json).collect::<Result<_, _>>()?,
        }),
    };
    Ok(NestedPart { disposition, language: j.language, body })
}
