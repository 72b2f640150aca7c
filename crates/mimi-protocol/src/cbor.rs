//! A serde serializer writing CBOR (RFC 8949) that `ciborium` reads back, with one difference from `ciborium`'s
//! own serializer: a non-empty sequence (or tuple) whose elements are all `u8` is written as one CBOR **byte
//! string** instead of an array of integers.
//!
//! OpenMLS's secrets and keys are `Vec<u8>` inside serde-derived structs (`VLBytes { vec: Vec<u8> }`), which
//! serde hands to a serializer one byte at a time; `ciborium` then writes (and decodes) an integer per byte. Byte
//! strings make the message secrets, rewritten on every encrypt and decrypt, about half as large and several
//! times cheaper to encode. `ciborium`'s deserializer accepts a byte string wherever a sequence of `u8` is
//! expected (`deserialize_seq`/`deserialize_tuple`, and `deserialize_any` visitors that take bytes), so records
//! written by either serializer decode the same way.
//!
//! Everything else is written exactly as `ciborium` writes it: structs as maps keyed by field name, `None` and
//! `()` as null, unit variants as text, other variants as a one-entry map `{variant: content}`, integers in their
//! shortest form. Empty sequences stay empty arrays (a byte string would only be accepted where `u8` elements are
//! expected).

use serde::ser::{self, Serialize};

/// Encoding error (only for values CBOR cannot carry here: integers beyond 64 bits, or a serializer message).
#[derive(Debug)]
pub struct Error(String);

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

impl ser::Error for Error {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        Error(msg.to_string())
    }
}

/// Appends the CBOR of `value` to `out`.
pub fn to_vec_into<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) -> Result<(), Error> {
    value.serialize(&mut Encoder { out, cutting: None })
}

/// Where [`to_vec_cutting`] left its field out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cut {
    /// The offset in the output (from where the value's encoding starts) at which the field's bytes belong.
    pub at: usize,
    /// The field's encoding, or `None` if it was not serialized (`reuse`: the caller keeps it from before).
    pub field: Option<Vec<u8>>,
}

/// [`to_vec_into`] with the value of field `field` of struct `name` left out (its key stays): it is serialized
/// apart into [`Cut::field`], or not at all if `reuse` says the caller keeps its unchanged encoding from before.
/// CBOR items are self-delimiting, so the field's bytes put back at [`Cut::at`] give the encoding of the whole
/// value. `None` if the value has no such field.
pub fn to_vec_cutting<T: Serialize + ?Sized>(
    value: &T,
    out: &mut Vec<u8>,
    name: &'static str,
    field: &'static str,
    reuse: bool,
) -> Result<Option<Cut>, Error> {
    let start = out.len();
    let mut cut = None;
    value.serialize(&mut Encoder { out, cutting: Some((name, field, reuse, &mut cut)) })?;
    Ok(cut.map(|c: Cut| Cut { at: c.at - start, ..c }))
}

const POS: u8 = 0;
const NEG: u8 = 1;
const BYTES: u8 = 2;
const TEXT: u8 = 3;
const ARRAY: u8 = 4;
const MAP: u8 = 5;
const FALSE: u8 = 0xf4;
const TRUE: u8 = 0xf5;
const NULL: u8 = 0xf6;
const BREAK: u8 = 0xff;

struct Encoder<'a> {
    out: &'a mut Vec<u8>,
    /// The field left out ([`to_vec_cutting`]): struct name, field name, whether to serialize it, and the cut.
    cutting: Option<(&'static str, &'static str, bool, &'a mut Option<Cut>)>,
}

impl Encoder<'_> {
    /// A header: major type and argument, in the shortest form.
    fn head(&mut self, major: u8, arg: u64) {
        let m = major << 5;
        if arg < 24 {
            self.out.push(m | arg as u8);
        } else if let Ok(a) = u8::try_from(arg) {
            self.out.extend_from_slice(&[m | 24, a]);
        } else if let Ok(a) = u16::try_from(arg) {
            self.out.push(m | 25);
            self.out.extend_from_slice(&a.to_be_bytes());
        } else if let Ok(a) = u32::try_from(arg) {
            self.out.push(m | 26);
            self.out.extend_from_slice(&a.to_be_bytes());
        } else {
            self.out.push(m | 27);
            self.out.extend_from_slice(&arg.to_be_bytes());
        }
    }

    /// A definite header, or an indefinite-length one (`0x1f`) when the length is unknown.
    fn collection(&mut self, major: u8, len: Option<usize>) {
        match len {
            Some(n) => self.head(major, n as u64),
            None => self.out.push((major << 5) | 0x1f),
        }
    }

    fn text(&mut self, s: &str) {
        self.head(TEXT, s.len() as u64);
        self.out.extend_from_slice(s.as_bytes());
    }

    fn int(&mut self, v: i64) {
        if v >= 0 {
            self.head(POS, v as u64);
        } else {
            self.head(NEG, !(v as u64));
        }
    }
}

/// Answers "is this element a `u8`?" without writing anything.
struct ByteProbe;

/// Not a `u8` (the probe's only error).
#[derive(Debug)]
struct NotByte;

impl std::fmt::Display for NotByte {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("not a byte")
    }
}

impl std::error::Error for NotByte {}

impl ser::Error for NotByte {
    fn custom<T: std::fmt::Display>(_: T) -> Self {
        NotByte
    }
}

macro_rules! not_byte {
    ($($f:ident($($t:ty),*)),* $(,)?) => {
        $(fn $f(self, $(_: $t),*) -> Result<u8, NotByte> { Err(NotByte) })*
    };
}

impl ser::Serializer for ByteProbe {
    type Ok = u8;
    type Error = NotByte;
    type SerializeSeq = ser::Impossible<u8, NotByte>;
    type SerializeTuple = ser::Impossible<u8, NotByte>;
    type SerializeTupleStruct = ser::Impossible<u8, NotByte>;
    type SerializeTupleVariant = ser::Impossible<u8, NotByte>;
    type SerializeMap = ser::Impossible<u8, NotByte>;
    type SerializeStruct = ser::Impossible<u8, NotByte>;
    type SerializeStructVariant = ser::Impossible<u8, NotByte>;

    fn serialize_u8(self, v: u8) -> Result<u8, NotByte> {
        Ok(v)
    }
    not_byte!(
        serialize_bool(bool),
        serialize_i8(i8),
        serialize_i16(i16),
        serialize_i32(i32),
        serialize_i64(i64),
        serialize_i128(i128),
        serialize_u16(u16),
        serialize_u32(u32),
        serialize_u64(u64),
        serialize_u128(u128),
        serialize_f32(f32),
        serialize_f64(f64),
        serialize_char(char),
        serialize_str(&str),
        serialize_bytes(&[u8]),
        serialize_none(),
        serialize_unit(),
        serialize_unit_struct(&'static str),
        serialize_unit_variant(&'static str, u32, &'static str),
    );
    fn serialize_some<T: Serialize + ?Sized>(self, _: &T) -> Result<u8, NotByte> {
        Err(NotByte)
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(self, _: &'static str, _: &T) -> Result<u8, NotByte> {
        Err(NotByte)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<u8, NotByte> {
        Err(NotByte)
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq, NotByte> {
        Err(NotByte)
    }
    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, NotByte> {
        Err(NotByte)
    }
    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Self::SerializeTupleStruct, NotByte> {
        Err(NotByte)
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, NotByte> {
        Err(NotByte)
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, NotByte> {
        Err(NotByte)
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Self::SerializeStruct, NotByte> {
        Err(NotByte)
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant, NotByte> {
        Err(NotByte)
    }
    fn is_human_readable(&self) -> bool {
        false
    }
}

/// A sequence being written: bytes while every element so far was a `u8`, an array from the first one that was
/// not.
struct Seq<'a, 'b> {
    enc: &'b mut Encoder<'a>,
    len: Option<usize>,
    /// `Some` while all elements were bytes (kept here until the end, when the length is known).
    bytes: Option<Vec<u8>>,
}

impl Seq<'_, '_> {
    fn element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        if let Some(bytes) = &mut self.bytes {
            if let Ok(b) = value.serialize(ByteProbe) {
                bytes.push(b);
                return Ok(());
            }
            // Not all bytes after all: an array, with the bytes so far as integers.
            let bytes = self.bytes.take().unwrap_or_default();
            self.enc.collection(ARRAY, self.len);
            for b in bytes {
                self.enc.head(POS, u64::from(b));
            }
        }
        value.serialize(&mut *self.enc)
    }

    fn finish(self) -> Result<(), Error> {
        match self.bytes {
            Some(bytes) if !bytes.is_empty() => {
                self.enc.head(BYTES, bytes.len() as u64);
                self.enc.out.extend_from_slice(&bytes);
            }
            Some(_) => self.enc.head(ARRAY, 0),
            None if self.len.is_none() => self.enc.out.push(BREAK),
            None => {}
        }
        Ok(())
    }
}

impl ser::SerializeSeq for Seq<'_, '_> {
    type Ok = ();
    type Error = Error;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        self.element(value)
    }
    fn end(self) -> Result<(), Error> {
        self.finish()
    }
}

impl ser::SerializeTuple for Seq<'_, '_> {
    type Ok = ();
    type Error = Error;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        self.element(value)
    }
    fn end(self) -> Result<(), Error> {
        self.finish()
    }
}

/// Maps, structs, tuple structs and variants with content: written straight through.
struct Compound<'a, 'b> {
    enc: &'b mut Encoder<'a>,
    /// Indefinite length: write a break at the end.
    ending: bool,
    /// The struct's name (structs only).
    name: Option<&'static str>,
}

impl ser::SerializeTupleStruct for Compound<'_, '_> {
    type Ok = ();
    type Error = Error;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        value.serialize(&mut *self.enc)
    }
    fn end(self) -> Result<(), Error> {
        Ok(())
    }
}

impl ser::SerializeTupleVariant for Compound<'_, '_> {
    type Ok = ();
    type Error = Error;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        value.serialize(&mut *self.enc)
    }
    fn end(self) -> Result<(), Error> {
        Ok(())
    }
}

impl ser::SerializeMap for Compound<'_, '_> {
    type Ok = ();
    type Error = Error;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), Error> {
        key.serialize(&mut *self.enc)
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        value.serialize(&mut *self.enc)
    }
    fn end(self) -> Result<(), Error> {
        if self.ending {
            self.enc.out.push(BREAK);
        }
        Ok(())
    }
}

impl ser::SerializeStruct for Compound<'_, '_> {
    type Ok = ();
    type Error = Error;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, key: &'static str, value: &T) -> Result<(), Error> {
        self.enc.text(key);
        let cut_here = match &self.enc.cutting {
            Some((name, field, _, _)) => Some(*name) == self.name && *field == key,
            None => false,
        };
        if !cut_here {
            return value.serialize(&mut *self.enc);
        }
        // The field left out: serialized (without cutting inside it) and taken out, unless the caller keeps it.
        // One cut: taken out for good, so that a field of the same name further in (a nested struct of the same
        // name) stays in.
        let Some((_, _, reuse, cut)) = self.enc.cutting.take() else { return value.serialize(&mut *self.enc) };
        let at = self.enc.out.len();
        if reuse {
            *cut = Some(Cut { at, field: None });
            return Ok(());
        }
        let r = value.serialize(&mut *self.enc);
        let bytes = self.enc.out.split_off(at);
        *cut = r.is_ok().then_some(Cut { at, field: Some(bytes) });
        r
    }
    fn end(self) -> Result<(), Error> {
        Ok(())
    }
}

impl ser::SerializeStructVariant for Compound<'_, '_> {
    type Ok = ();
    type Error = Error;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, key: &'static str, value: &T) -> Result<(), Error> {
        self.enc.text(key);
        value.serialize(&mut *self.enc)
    }
    fn end(self) -> Result<(), Error> {
        Ok(())
    }
}

impl<'a, 'b> ser::Serializer for &'b mut Encoder<'a> {
    type Ok = ();
    type Error = Error;
    type SerializeSeq = Seq<'a, 'b>;
    type SerializeTuple = Seq<'a, 'b>;
    type SerializeTupleStruct = Compound<'a, 'b>;
    type SerializeTupleVariant = Compound<'a, 'b>;
    type SerializeMap = Compound<'a, 'b>;
    type SerializeStruct = Compound<'a, 'b>;
    type SerializeStructVariant = Compound<'a, 'b>;

    fn serialize_bool(self, v: bool) -> Result<(), Error> {
        self.out.push(if v { TRUE } else { FALSE });
        Ok(())
    }
    fn serialize_i8(self, v: i8) -> Result<(), Error> {
        self.int(v.into());
        Ok(())
    }
    fn serialize_i16(self, v: i16) -> Result<(), Error> {
        self.int(v.into());
        Ok(())
    }
    fn serialize_i32(self, v: i32) -> Result<(), Error> {
        self.int(v.into());
        Ok(())
    }
    fn serialize_i64(self, v: i64) -> Result<(), Error> {
        self.int(v);
        Ok(())
    }
    fn serialize_i128(self, v: i128) -> Result<(), Error> {
        let v = i64::try_from(v).map_err(|_| Error("integer beyond 64 bits".into()))?;
        self.int(v);
        Ok(())
    }
    fn serialize_u8(self, v: u8) -> Result<(), Error> {
        self.head(POS, v.into());
        Ok(())
    }
    fn serialize_u16(self, v: u16) -> Result<(), Error> {
        self.head(POS, v.into());
        Ok(())
    }
    fn serialize_u32(self, v: u32) -> Result<(), Error> {
        self.head(POS, v.into());
        Ok(())
    }
    fn serialize_u64(self, v: u64) -> Result<(), Error> {
        self.head(POS, v);
        Ok(())
    }
    fn serialize_u128(self, v: u128) -> Result<(), Error> {
        let v = u64::try_from(v).map_err(|_| Error("integer beyond 64 bits".into()))?;
        self.head(POS, v);
        Ok(())
    }
    fn serialize_f32(self, v: f32) -> Result<(), Error> {
        self.out.push(0xfa);
        self.out.extend_from_slice(&v.to_be_bytes());
        Ok(())
    }
    fn serialize_f64(self, v: f64) -> Result<(), Error> {
        self.out.push(0xfb);
        self.out.extend_from_slice(&v.to_be_bytes());
        Ok(())
    }
    fn serialize_char(self, v: char) -> Result<(), Error> {
        self.text(v.encode_utf8(&mut [0; 4]));
        Ok(())
    }
    fn serialize_str(self, v: &str) -> Result<(), Error> {
        self.text(v);
        Ok(())
    }
    fn serialize_bytes(self, v: &[u8]) -> Result<(), Error> {
        self.head(BYTES, v.len() as u64);
        self.out.extend_from_slice(v);
        Ok(())
    }
    fn serialize_none(self) -> Result<(), Error> {
        self.out.push(NULL);
        Ok(())
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), Error> {
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result<(), Error> {
        self.out.push(NULL);
        Ok(())
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<(), Error> {
        self.serialize_unit()
    }
    fn serialize_unit_variant(self, _: &'static str, _: u32, variant: &'static str) -> Result<(), Error> {
        self.text(variant);
        Ok(())
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(self, _: &'static str, value: &T) -> Result<(), Error> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        self.head(MAP, 1);
        self.text(variant);
        value.serialize(self)
    }
    fn serialize_seq(self, len: Option<usize>) -> Result<Seq<'a, 'b>, Error> {
        Ok(Seq { enc: self, len, bytes: Some(Vec::with_capacity(len.unwrap_or(0).min(1 << 16))) })
    }
    fn serialize_tuple(self, len: usize) -> Result<Seq<'a, 'b>, Error> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_struct(self, _: &'static str, len: usize) -> Result<Compound<'a, 'b>, Error> {
        self.head(ARRAY, len as u64);
        Ok(Compound { enc: self, ending: false, name: None })
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Compound<'a, 'b>, Error> {
        self.head(MAP, 1);
        self.text(variant);
        self.head(ARRAY, len as u64);
        Ok(Compound { enc: self, ending: false, name: None })
    }
    fn serialize_map(self, len: Option<usize>) -> Result<Compound<'a, 'b>, Error> {
        self.collection(MAP, len);
        Ok(Compound { enc: self, ending: len.is_none(), name: None })
    }
    fn serialize_struct(self, name: &'static str, len: usize) -> Result<Compound<'a, 'b>, Error> {
        self.head(MAP, len as u64);
        Ok(Compound { enc: self, ending: false, name: Some(name) })
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Compound<'a, 'b>, Error> {
        self.head(MAP, 1);
        self.text(variant);
        self.head(MAP, len as u64);
        Ok(Compound { enc: self, ending: false, name: None })
    }
    fn is_human_readable(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::{Deserialize, Serialize};
    use std::collections::BTreeMap;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Store {
        max: u32,
        past: Vec<Kind>,
        current: Vec<u8>,
    }

    /// The value with its cut field's bytes put back at their place.
    fn put_back(out: &[u8], at: usize, field: &[u8]) -> Vec<u8> {
        [&out[..at], field, &out[at..]].concat()
    }

    #[test]
    fn a_cut_field_is_serialized_apart_unless_the_caller_keeps_it() {
        let mut value = Store { max: 2, past: vec![Kind::New(vec![1, 2, 3]), Kind::Unit], current: vec![9; 40] };
        let mut plain = Vec::new();
        to_vec_into(&value, &mut plain).expect("encode");
        let mut past = Vec::new();
        to_vec_into(&value.past, &mut past).expect("encode");
        // Written after something else: the offset counts from where the value starts.
        let mut first = vec![0xAA, 0xBB];
        let cut = to_vec_cutting(&value, &mut first, "Store", "past", false).expect("encode").expect("cut");
        assert_eq!(cut.field.as_deref(), Some(&past[..]));
        assert_eq!(put_back(&first[2..], cut.at, &past), plain, "put back, the field gives the plain encoding");
        assert_eq!(first.len(), 2 + plain.len() - past.len(), "the field is left out");

        // Kept by the caller: not serialized, the rest is encoded anew around its place.
        value.current = vec![7; 3];
        let mut second = Vec::new();
        let cut = to_vec_cutting(&value, &mut second, "Store", "past", true).expect("encode").expect("cut");
        assert_eq!(cut.field, None);
        let back: Store = ciborium::from_reader(&put_back(&second, cut.at, &past)[..]).expect("decode");
        assert_eq!(back, value);

        // A value without the field: nothing is cut.
        assert_eq!(to_vec_cutting(&value, &mut Vec::new(), "Other", "past", false).expect("encode"), None);
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    enum Kind {
        Unit,
        New(Vec<u8>),
        Tuple(u8, String),
        Struct { a: i64, b: Option<Vec<u16>> },
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Sample {
        bytes: Vec<u8>,
        empty: Vec<u8>,
        array: [u8; 4],
        words: Vec<u32>,
        nested: Vec<Vec<u8>>,
        kinds: Vec<Kind>,
        map: BTreeMap<String, (u8, i32)>,
        neg: i64,
        big: u64,
        float: f64,
        flag: bool,
        none: Option<u8>,
        unit: (),
        text: String,
        ch: char,
    }

    fn sample() -> Sample {
        Sample {
            bytes: (0..=255).collect(),
            empty: vec![],
            array: [1, 2, 200, 255],
            words: vec![1, 70_000, 5],
            nested: vec![vec![1, 2], vec![], vec![9; 40]],
            kinds: vec![
                Kind::Unit,
                Kind::New(vec![7; 33]),
                Kind::Tuple(3, "x".into()),
                Kind::Struct { a: -1_000_000, b: Some(vec![1, 500]) },
            ],
            map: [("k".to_string(), (1, -2))].into(),
            neg: i64::MIN,
            big: u64::MAX,
            float: 1.5,
            flag: true,
            none: None,
            unit: (),
            text: "héllo".into(),
            ch: 'ß',
        }
    }

    #[test]
    fn ciborium_reads_what_we_write() {
        let v = sample();
        let mut out = Vec::new();
        to_vec_into(&v, &mut out).expect("encode");
        let back: Sample = ciborium::from_reader(&out[..]).expect("decode");
        assert_eq!(back, v);
    }

    #[test]
    fn byte_sequences_are_byte_strings_and_smaller_than_ciborium() {
        let v = sample();
        let mut ours = Vec::new();
        to_vec_into(&v, &mut ours).expect("encode");
        let mut theirs = Vec::new();
        ciborium::into_writer(&v, &mut theirs).expect("encode");
        assert!(ours.len() < theirs.len(), "{} vs {}", ours.len(), theirs.len());
        // The 256-byte vector: a byte string header (0x59 0x01 0x00) followed by the raw bytes.
        let raw: Vec<u8> = (0..=255).collect();
        let mut needle = vec![0x59, 0x01, 0x00];
        needle.extend_from_slice(&raw);
        assert!(ours.windows(needle.len()).any(|w| w == needle));
    }

    #[test]
    fn records_written_by_ciborium_still_decode() {
        // The on-disk format before this encoder: ciborium's arrays of integers. Both decode to the same value.
        let v = sample();
        let mut theirs = Vec::new();
        ciborium::into_writer(&v, &mut theirs).expect("encode");
        let back: Sample = ciborium::from_reader(&theirs[..]).expect("decode");
        assert_eq!(back, v);
    }
}
