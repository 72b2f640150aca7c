//! Strict CBOR reading on top of `minicbor`, enforcing RFC 8949 §4.2.1
//! (core deterministic encoding) and the MIMI data-model rules of §6.2/§6.3
//! for arbitrary extension values.
//!
//! `minicbor` accepts non-shortest heads and indefinite lengths, so every
//! item's head is inspected here *before* `minicbor` consumes it.

use minicbor::Decoder;

use super::error::ContentError;
use super::model::{ExtensionKey, MAX_EXTENSION_DEPTH, MAX_INT_KEY};

/// CBOR major types.
pub(crate) mod major {
    /// Unsigned integer.
    pub const UINT: u8 = 0;
    /// Negative integer.
    pub const NINT: u8 = 1;
    /// Byte string.
    pub const BYTES: u8 = 2;
    /// Text string.
    pub const TEXT: u8 = 3;
    /// Array.
    pub const ARRAY: u8 = 4;
    /// Map.
    pub const MAP: u8 = 5;
    /// Tag.
    pub const TAG: u8 = 6;
    /// Simple values and floats.
    pub const SIMPLE: u8 = 7;
}

/// A decoded, checked CBOR head.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Head {
    /// Major type (0..=7).
    pub major: u8,
    /// Additional information (low five bits of the initial byte).
    pub ai: u8,
    /// The argument (value, length or tag number; raw bits for floats).
    pub arg: u64,
}

/// Reads a head at `pos`, rejecting ill-formed and non-shortest heads and
/// indefinite lengths.
pub(crate) fn peek_head(input: &[u8], pos: usize) -> Result<Head, ContentError> {
    let ib = *input.get(pos).ok_or(ContentError::Truncated { offset: pos })?;
    let (major, ai) = (ib >> 5, ib & 0x1f);
    let n = match ai {
        0..=23 => 0,
        24 => 1,
        25 => 2,
        26 => 4,
        27 => 8,
        28..=30 => {
            return Err(ContentError::Malformed { offset: pos, reason: "reserved additional information" });
        }
        _ => {
            return Err(match major {
                major::BYTES..=major::MAP => ContentError::IndefiniteLength { offset: pos },
                major::SIMPLE => ContentError::Malformed { offset: pos, reason: "unexpected break" },
                _ => ContentError::Malformed { offset: pos, reason: "indefinite integer or tag" },
            });
        }
    };
    let arg = if n == 0 {
        u64::from(ai)
    } else {
        let b = input.get(pos + 1..pos + 1 + n).ok_or(ContentError::Truncated { offset: pos + 1 })?;
        b.iter().fold(0u64, |acc, &x| (acc << 8) | u64::from(x))
    };
    if major == major::SIMPLE {
        if ai == 24 && arg < 32 {
            return Err(ContentError::Malformed { offset: pos, reason: "two-byte simple value below 32" });
        }
    } else {
        let shortest = match n {
            1 => arg >= 24,
            2 => arg > 0xff,
            4 => arg > 0xffff,
            8 => arg > 0xffff_ffff,
            _ => true,
        };
        if !shortest {
            return Err(ContentError::NonShortestEncoding { offset: pos });
        }
    }
    Ok(Head { major, ai, arg })
}

fn map_mc(e: minicbor::decode::Error, offset: usize) -> ContentError {
    if e.is_end_of_input() {
        ContentError::Truncated { offset }
    } else {
        ContentError::Malformed { offset, reason: "invalid CBOR item" }
    }
}

/// A strict reader: each method checks the head, then lets `minicbor` decode.
pub(crate) struct Reader<'b> {
    d: Decoder<'b>,
}

impl<'b> Reader<'b> {
    /// A reader over `input`.
    pub fn new(input: &'b [u8]) -> Self {
        Self { d: Decoder::new(input) }
    }

    /// Current offset.
    pub fn pos(&self) -> usize {
        self.d.position()
    }

    /// Bytes not consumed yet.
    pub fn remaining(&self) -> usize {
        self.d.input().len().saturating_sub(self.d.position())
    }

    /// The whole input.
    pub fn input(&self) -> &'b [u8] {
        self.d.input()
    }

    /// Peeks at the next head.
    pub fn head(&self) -> Result<Head, ContentError> {
        peek_head(self.d.input(), self.d.position())
    }

    fn expect(&self, m: u8, expected: &'static str) -> Result<Head, ContentError> {
        let h = self.head()?;
        if h.major == m { Ok(h) } else { Err(ContentError::UnexpectedType { offset: self.pos(), expected }) }
    }

    /// Reads an unsigned integer.
    pub fn uint(&mut self, expected: &'static str) -> Result<u64, ContentError> {
        self.expect(major::UINT, expected)?;
        let p = self.pos();
        self.d.u64().map_err(|e| map_mc(e, p))
    }

    /// Reads a byte string.
    pub fn bytes(&mut self, expected: &'static str) -> Result<&'b [u8], ContentError> {
        self.expect(major::BYTES, expected)?;
        let p = self.pos();
        self.d.bytes().map_err(|e| map_mc(e, p))
    }

    /// Reads a text string (must be valid UTF-8).
    pub fn text(&mut self, expected: &'static str) -> Result<&'b str, ContentError> {
        let h = self.expect(major::TEXT, expected)?;
        let p = self.pos();
        if (self.remaining() as u64) < h.arg {
            return Err(ContentError::Truncated { offset: p });
        }
        self.d.str().map_err(|e| {
            if e.is_end_of_input() {
                ContentError::Truncated { offset: p }
            } else {
                ContentError::InvalidUtf8 { offset: p }
            }
        })
    }

    /// Reads an array head and returns its length.
    pub fn array(&mut self, expected: &'static str) -> Result<u64, ContentError> {
        let h = self.expect(major::ARRAY, expected)?;
        let p = self.pos();
        self.d.array().map_err(|e| map_mc(e, p))?;
        Ok(h.arg)
    }

    /// Reads a map head and returns its number of pairs.
    pub fn map(&mut self, expected: &'static str) -> Result<u64, ContentError> {
        let h = self.expect(major::MAP, expected)?;
        let p = self.pos();
        self.d.map().map_err(|e| map_mc(e, p))?;
        Ok(h.arg)
    }

    /// Reads a boolean.
    pub fn bool(&mut self, expected: &'static str) -> Result<bool, ContentError> {
        let h = self.head()?;
        if h.major != major::SIMPLE || !(h.ai == 20 || h.ai == 21) {
            return Err(ContentError::UnexpectedType { offset: self.pos(), expected });
        }
        let p = self.pos();
        self.d.bool().map_err(|e| map_mc(e, p))
    }

    /// Consumes a `null` if one is next; returns whether it did.
    pub fn null(&mut self) -> Result<bool, ContentError> {
        let h = self.head()?;
        if h.major == major::SIMPLE && h.ai == 22 {
            let p = self.pos();
            self.d.null().map_err(|e| map_mc(e, p))?;
            Ok(true)
        } else {
            Ok(false)
        }
    }

    /// Reads an integer map key (major 0 or 1) within ±(2^53 − 1), or a text key.
    /// Returns `None` for any other key type (caller decides).
    pub fn ext_key(&mut self) -> Result<Option<ExtensionKey>, ContentError> {
        let h = self.head()?;
        match h.major {
            major::UINT | major::NINT => {
                if h.arg > MAX_INT_KEY as u64 || (h.major == major::NINT && h.arg >= MAX_INT_KEY as u64) {
                    return Err(ContentError::IntegerKeyOutOfRange);
                }
                let p = self.pos();
                let v = self.d.i64().map_err(|e| map_mc(e, p))?;
                Ok(Some(ExtensionKey::Int(v)))
            }
            major::TEXT => {
                let t = self.text("text key")?;
                if t.is_empty() || t.len() > 255 {
                    return Err(ContentError::ExtensionKeyLength(t.len()));
                }
                Ok(Some(ExtensionKey::Text(t.to_owned())))
            }
            _ => Ok(None),
        }
    }

    /// Validates one arbitrary item (an extension value or part of one) at
    /// nesting `level` (extension values are at level 2) and skips it.
    pub fn any(&mut self, level: u32, in_float_array_tag: bool) -> Result<(), ContentError> {
        let start = self.pos();
        let h = self.head()?;
        let is_container = matches!(h.major, major::ARRAY | major::MAP | major::TAG);
        if is_container && level > MAX_EXTENSION_DEPTH {
            return Err(ContentError::ExtensionTooDeep);
        }
        match h.major {
            major::UINT | major::NINT => {
                self.d.int().map_err(|e| map_mc(e, start))?;
            }
            major::BYTES => {
                self.bytes("bytes")?;
            }
            major::TEXT => {
                self.text("text")?;
            }
            major::ARRAY => {
                let n = self.array("array")?;
                for _ in 0..n {
                    self.any(level + 1, false)?;
                }
            }
            major::MAP => {
                let n = self.map("map")?;
                let mut prev: Option<(usize, usize)> = None;
                for _ in 0..n {
                    let ks = self.pos();
                    let kh = self.head()?;
                    match kh.major {
                        major::UINT | major::NINT => {
                            if kh.arg > MAX_INT_KEY as u64 || (kh.major == major::NINT && kh.arg >= MAX_INT_KEY as u64)
                            {
                                return Err(ContentError::IntegerKeyOutOfRange);
                            }
                        }
                        major::BYTES | major::TEXT => {}
                        _ => return Err(ContentError::InvalidNestedMapKey { offset: ks }),
                    }
                    self.any(level + 1, false)?;
                    let ke = self.pos();
                    check_key_order(self.input(), prev, (ks, ke))?;
                    prev = Some((ks, ke));
                    self.any(level + 1, false)?;
                }
            }
            major::TAG => {
                let p = self.pos();
                let tag = self.d.tag().map_err(|e| map_mc(e, p))?;
                let tag = u64::from(tag);
                if tag == 2 || tag == 3 {
                    let inner = self.pos();
                    let b = self.bytes("bignum byte string")?;
                    if b.len() <= 8 || b[0] == 0 {
                        return Err(ContentError::NonPreferredBignum { offset: inner });
                    }
                } else {
                    self.any(level + 1, (80..=87).contains(&tag))?;
                }
            }
            _ => self.simple(h, start, in_float_array_tag)?,
        }
        Ok(())
    }

    fn simple(&mut self, h: Head, start: usize, nan_ok: bool) -> Result<(), ContentError> {
        match h.ai {
            25 => {
                let bits = h.arg as u16;
                let nan = (bits & 0x7c00) == 0x7c00 && (bits & 0x03ff) != 0;
                if nan && bits != 0x7e00 && !nan_ok {
                    return Err(ContentError::ForbiddenNaN { offset: start });
                }
                self.d.skip().map_err(|e| map_mc(e, start))?;
            }
            26 => {
                let x = f32::from_bits(h.arg as u32);
                if x.is_nan() {
                    if !nan_ok {
                        return Err(ContentError::ForbiddenNaN { offset: start });
                    }
                } else if f32_fits_f16(x) {
                    return Err(ContentError::NonShortestFloat { offset: start });
                }
                self.d.f32().map_err(|e| map_mc(e, start))?;
            }
            27 => {
                let x = f64::from_bits(h.arg);
                if x.is_nan() {
                    if !nan_ok {
                        return Err(ContentError::ForbiddenNaN { offset: start });
                    }
                } else if f64::from(x as f32) == x {
                    return Err(ContentError::NonShortestFloat { offset: start });
                }
                self.d.f64().map_err(|e| map_mc(e, start))?;
            }
            _ => {
                self.d.skip().map_err(|e| map_mc(e, start))?;
            }
        }
        Ok(())
    }
}

/// Checks that the key at `cur` sorts strictly after the key at `prev`.
pub(crate) fn check_key_order(
    input: &[u8],
    prev: Option<(usize, usize)>,
    cur: (usize, usize),
) -> Result<(), ContentError> {
    if let Some((ps, pe)) = prev {
        match input[ps..pe].cmp(&input[cur.0..cur.1]) {
            std::cmp::Ordering::Less => {}
            std::cmp::Ordering::Equal => {
                return Err(ContentError::DuplicateMapKey { offset: cur.0 });
            }
            std::cmp::Ordering::Greater => {
                return Err(ContentError::UnsortedMapKeys { offset: cur.0 });
            }
        }
    }
    Ok(())
}

/// Whether a finite or infinite `f32` is exactly representable as IEEE half.
pub(crate) fn f32_fits_f16(x: f32) -> bool {
    if x == 0.0 || x.is_infinite() {
        return true;
    }
    let bits = x.to_bits();
    let exp = ((bits >> 23) & 0xff) as i32;
    let frac = bits & 0x7f_ffff;
    // x = m * 2^e with m an integer
    let (mut m, mut e) = if exp == 0 { (frac, -149) } else { (frac | 0x80_0000, exp - 150) };
    let tz = m.trailing_zeros();
    m >>= tz;
    e += tz as i32;
    let bit_len = 32 - m.leading_zeros() as i32;
    // half: max 65504, finest step 2^-24, 11 significant bits
    x.abs() <= 65504.0 && e >= -24 && bit_len <= 11
}

/// Checks that `bytes` is exactly one valid extension value.
pub(crate) fn check_extension_value(bytes: &[u8]) -> Result<(), ContentError> {
    let mut r = Reader::new(bytes);
    r.any(2, false)?;
    if r.remaining() != 0 {
        return Err(ContentError::InvalidExtensionValue);
    }
    Ok(())
}

fn head_bytes(major: u8, arg: u64, out: &mut Vec<u8>) {
    let m = major << 5;
    if arg < 24 {
        out.push(m | arg as u8);
    } else if arg <= 0xff {
        out.extend_from_slice(&[m | 24, arg as u8]);
    } else if arg <= 0xffff {
        out.push(m | 25);
        out.extend_from_slice(&(arg as u16).to_be_bytes());
    } else if arg <= 0xffff_ffff {
        out.push(m | 26);
        out.extend_from_slice(&(arg as u32).to_be_bytes());
    } else {
        out.push(m | 27);
        out.extend_from_slice(&arg.to_be_bytes());
    }
}

/// Deterministic encoding of a text string.
pub(crate) fn encode_text(s: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(s.len() + 9);
    head_bytes(major::TEXT, s.len() as u64, &mut v);
    v.extend_from_slice(s.as_bytes());
    v
}

/// Deterministic encoding of an integer in CBOR range (−2^64 ..= 2^64 − 1).
pub(crate) fn encode_int(i: i128) -> Vec<u8> {
    let mut v = Vec::with_capacity(9);
    if i >= 0 {
        head_bytes(major::UINT, i as u64, &mut v);
    } else {
        head_bytes(major::NINT, (-1 - i) as u64, &mut v);
    }
    v
}

/// Deterministic encoding of an extension key.
pub(crate) fn encode_key(k: &ExtensionKey) -> Vec<u8> {
    match k {
        ExtensionKey::Int(i) => encode_int(i128::from(*i)),
        ExtensionKey::Text(t) => encode_text(t),
    }
}

/// The text of an encoded text-string item.
pub(crate) fn as_text(bytes: &[u8]) -> Option<&str> {
    let mut r = Reader::new(bytes);
    let t = r.text("text").ok()?;
    (r.remaining() == 0).then_some(t)
}

/// The value of an encoded integer item.
pub(crate) fn as_int(bytes: &[u8]) -> Option<i128> {
    let h = peek_head(bytes, 0).ok()?;
    let len = match h.ai {
        0..=23 => 1,
        24 => 2,
        25 => 3,
        26 => 5,
        _ => 9,
    };
    if bytes.len() != len {
        return None;
    }
    match h.major {
        major::UINT => Some(i128::from(h.arg)),
        major::NINT => Some(-1 - i128::from(h.arg)),
        _ => None,
    }
}
