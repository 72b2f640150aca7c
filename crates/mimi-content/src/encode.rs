//! Deterministic encoding (RFC 8949 §4.2.1) of MIMI content.
//!
//! `minicbor`'s encoder always writes shortest heads and definite lengths;
//! the only thing left to us is the bytewise key order of the extensions map.

use std::convert::Infallible;

use minicbor::Encoder;

use super::cbor::encode_key;
use super::error::ContentError;
use super::model::{MimiContent, NestedPart, PartBody};

type Enc = Encoder<Vec<u8>>;
type EncResult = Result<(), minicbor::encode::Error<Infallible>>;

/// Validates `content` and encodes it deterministically.
pub fn encode(content: &MimiContent) -> Result<Vec<u8>, ContentError> {
    super::validate::validate(content)?;
    let mut e = Encoder::new(Vec::with_capacity(256));
    write_content(&mut e, content).map_err(|err| ContentError::Encode(err.to_string()))?;
    Ok(e.into_writer())
}

fn write_content(e: &mut Enc, c: &MimiContent) -> EncResult {
    e.array(7)?.bytes(&c.salt)?;
    match &c.replaces {
        Some(id) => e.bytes(id)?,
        None => e.null()?,
    };
    e.bytes(&c.topic_id)?;
    match &c.expires {
        Some(x) => e.array(2)?.bool(x.relative)?.u32(x.time)?,
        None => e.null()?,
    };
    match &c.in_reply_to {
        Some(id) => e.bytes(id)?,
        None => e.null()?,
    };
    write_extensions(e, c)?;
    write_part(e, &c.nested_part)
}

fn write_extensions(e: &mut Enc, c: &MimiContent) -> EncResult {
    let x = &c.extensions;
    e.map(x.len() as u64)?;
    // Keys 0x01 and 0x02 sort before every other key except 0 (0x00).
    let mut others = x.others().iter().peekable();
    if let Some(o) = others.next_if(|o| o.key == super::model::ExtensionKey::Int(0)) {
        e.u8(0)?;
        e.writer_mut().extend_from_slice(o.value.as_cbor());
    }
    if let Some(s) = &x.sender_uri {
        e.u8(1)?.str(s)?;
    }
    if let Some(r) = &x.room_uri {
        e.u8(2)?.str(r)?;
    }
    for o in others {
        e.writer_mut().extend_from_slice(&encode_key(&o.key));
        e.writer_mut().extend_from_slice(o.value.as_cbor());
    }
    Ok(())
}

fn write_part(e: &mut Enc, p: &NestedPart) -> EncResult {
    let len = match &p.body {
        PartBody::Null => 3,
        PartBody::Single(_) | PartBody::Multi(_) => 5,
        PartBody::External(_) => 15,
    };
    e.array(len)?.u8(p.disposition.to_u8())?.str(&p.language)?.u8(p.body.cardinality() as u8)?;
    match &p.body {
        PartBody::Null => {}
        PartBody::Single(s) => {
            e.str(&s.content_type)?.bytes(&s.content)?;
        }
        PartBody::External(x) => {
            e.str(&x.content_type)?
                .str(&x.url)?
                .u32(x.expires)?
                .u64(x.size)?
                .u16(x.enc_alg.0)?
                .bytes(&x.key)?
                .bytes(&x.nonce)?
                .bytes(&x.aad)?
                .u8(x.hash_alg.to_u8())?
                .bytes(&x.content_hash)?
                .str(&x.description)?
                .str(&x.filename)?;
        }
        PartBody::Multi(m) => {
            e.u8(m.semantics as u8)?.array(m.parts.len() as u64)?;
            for q in &m.parts {
                write_part(e, q)?;
            }
        }
    }
    Ok(())
}
