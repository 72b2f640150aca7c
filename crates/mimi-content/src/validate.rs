//! Semantic validation: the draft's "log and discard" conditions (§9.1) and
//! the consistency rules the CDDL cannot express.
//!
//! [`validate`] is run by both the decoder and the encoder, so the codec never
//! accepts or produces content it would reject. Time-dependent checks need
//! the current time and live in [`check_expiry`].

use super::error::ContentError;
use super::model::{
    EncAlg, HashAlg, MAX_PART_DEPTH, MAX_PARTS, MAX_TOPIC_ID_LEN, MessageIdBytes, MimiContent, NestedPart, PartBody,
};

/// One year in seconds (365 days), the horizon of the expiry checks.
pub const ONE_YEAR_SECS: u64 = 365 * 24 * 3600;

/// Checks every context-free rule for a message.
pub fn validate(c: &MimiContent) -> Result<(), ContentError> {
    if c.topic_id.len() > MAX_TOPIC_ID_LEN {
        return Err(ContentError::TopicIdTooLong(c.topic_id.len()));
    }
    check_id("replaces", c.replaces.as_ref())?;
    check_id("inReplyTo", c.in_reply_to.as_ref())?;
    for e in c.extensions.others() {
        e.key.check()?;
    }
    let mut count = 0usize;
    check_part(&c.nested_part, 1, &mut count)?;
    check_cids(&c.nested_part)
}

fn check_id(field: &'static str, id: Option<&MessageIdBytes>) -> Result<(), ContentError> {
    match id {
        Some(id) if !(1..=12).contains(&id[0]) => Err(ContentError::UnknownMessageIdHashAlg { field, alg: id[0] }),
        _ => Ok(()),
    }
}

fn check_part(p: &NestedPart, depth: usize, count: &mut usize) -> Result<(), ContentError> {
    if depth > MAX_PART_DEPTH {
        return Err(ContentError::NestingTooDeep);
    }
    *count += 1;
    if *count > MAX_PARTS {
        return Err(ContentError::TooManyParts);
    }
    match &p.body {
        PartBody::Null | PartBody::Single(_) => Ok(()),
        PartBody::External(x) => {
            check_hash(x.hash_alg, &x.content_hash)?;
            check_aead(x.enc_alg, &x.key, &x.nonce, &x.aad)
        }
        PartBody::Multi(m) => {
            if m.parts.len() < 2 {
                return Err(ContentError::TooFewParts(m.parts.len()));
            }
            m.parts.iter().try_for_each(|q| check_part(q, depth + 1, count))
        }
    }
}

/// hashAlg and contentHash must agree; hashAlg 0 ("none") needs an empty hash.
pub fn check_hash(alg: HashAlg, hash: &[u8]) -> Result<(), ContentError> {
    if hash.len() != alg.digest_len() {
        return Err(ContentError::ContentHashLengthMismatch {
            alg: alg.to_u8(),
            expected: alg.digest_len(),
            found: hash.len(),
        });
    }
    Ok(())
}

/// encAlg 0 needs empty key/nonce/aad; known AEADs need their key/nonce sizes.
pub fn check_aead(alg: EncAlg, key: &[u8], nonce: &[u8], aad: &[u8]) -> Result<(), ContentError> {
    if alg == EncAlg::NONE {
        if !(key.is_empty() && nonce.is_empty() && aad.is_empty()) {
            return Err(ContentError::UnexpectedEncryptionParams);
        }
        return Ok(());
    }
    match alg.key_nonce_len() {
        Some((k, n)) if k != key.len() || n != nonce.len() => {
            Err(ContentError::AeadParamLength { enc_alg: alg.0, key_len: key.len(), nonce_len: nonce.len() })
        }
        _ => Ok(()),
    }
}

/// Every `cid:N@local.invalid` in a (non-plain-text) SinglePart must name a
/// SinglePart or ExternalPart by its implied part index (§4.4).
pub fn check_cids(root: &NestedPart) -> Result<(), ContentError> {
    let mut kinds: Vec<bool> = Vec::new();
    root.walk(&mut |p| {
        kinds.push(matches!(p.body, PartBody::Single(_) | PartBody::External(_)));
    });
    let mut result = Ok(());
    root.walk(&mut |p| {
        if let PartBody::Single(s) = &p.body
            && result.is_ok()
            && !s.content_type.starts_with("text/plain")
        {
            for n in cid_refs(&s.content) {
                let ok = usize::try_from(n).ok().and_then(|i| kinds.get(i)).copied().unwrap_or(false);
                if !ok {
                    result = Err(ContentError::InvalidCidReference(n));
                    break;
                }
            }
        }
    });
    result
}

/// The part indexes referenced as `cid:N@local.invalid` in `content`.
pub fn cid_refs(content: &[u8]) -> Vec<u64> {
    const PRE: &[u8] = b"cid:";
    const POST: &[u8] = b"@local.invalid";
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(off) = content[i..].windows(PRE.len()).position(|w| w == PRE) {
        let start = i + off + PRE.len();
        let digits = content[start..].iter().take_while(|b| b.is_ascii_digit()).count();
        let end = start + digits;
        if digits > 0 && content[end..].starts_with(POST) {
            let n = content[start..end]
                .iter()
                .try_fold(0u64, |acc, d| acc.checked_mul(10)?.checked_add(u64::from(d - b'0')));
            out.push(n.unwrap_or(u64::MAX));
        }
        i = start;
    }
    out
}

/// §9.1 expiry sanity: absolute expiry more than a year in the past, or any
/// expiry more than a year in the future, is a discard condition.
pub fn check_expiry(c: &MimiContent, now_unix_secs: u64) -> Result<(), ContentError> {
    let Some(e) = c.expires else { return Ok(()) };
    let t = u64::from(e.time);
    if e.relative {
        if t > ONE_YEAR_SECS {
            return Err(ContentError::ExpiresTooFarInFuture);
        }
    } else {
        if t.saturating_add(ONE_YEAR_SECS) < now_unix_secs {
            return Err(ContentError::ExpiresTooFarInPast);
        }
        if t > now_unix_secs.saturating_add(ONE_YEAR_SECS) {
            return Err(ContentError::ExpiresTooFarInFuture);
        }
    }
    Ok(())
}
