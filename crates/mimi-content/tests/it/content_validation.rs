//! Every validation / determinism error variant, triggered by a crafted input.

use mimi_content::{
    ContentError, ContentError as E, Expiration, ExtensionKey, ExtensionValue, Message, attachment, json, validate,
};

/// A tiny CBOR writer for crafting (possibly invalid) test inputs.
#[derive(Clone)]
enum V {
    U(u64),
    N(u64),
    B(Vec<u8>),
    T(&'static str),
    A(Vec<V>),
    M(Vec<(V, V)>),
    Null,
    Bool(bool),
    /// Raw bytes, spliced in verbatim.
    Raw(Vec<u8>),
}

fn head(major: u8, arg: u64, out: &mut Vec<u8>) {
    let m = major << 5;
    match arg {
        0..=23 => out.push(m | arg as u8),
        24..=0xff => out.extend([m | 24, arg as u8]),
        0x100..=0xffff => {
            out.push(m | 25);
            out.extend((arg as u16).to_be_bytes());
        }
        0x1_0000..=0xffff_ffff => {
            out.push(m | 26);
            out.extend((arg as u32).to_be_bytes());
        }
        _ => {
            out.push(m | 27);
            out.extend(arg.to_be_bytes());
        }
    }
}

impl V {
    fn enc(&self, out: &mut Vec<u8>) {
        match self {
            V::U(u) => head(0, *u, out),
            V::N(n) => head(1, *n, out),
            V::B(b) => {
                head(2, b.len() as u64, out);
                out.extend(b);
            }
            V::T(t) => {
                head(3, t.len() as u64, out);
                out.extend(t.as_bytes());
            }
            V::A(a) => {
                head(4, a.len() as u64, out);
                a.iter().for_each(|v| v.enc(out));
            }
            V::M(m) => {
                head(5, m.len() as u64, out);
                for (k, v) in m {
                    k.enc(out);
                    v.enc(out);
                }
            }
            V::Null => out.push(0xf6),
            V::Bool(b) => out.push(if *b { 0xf5 } else { 0xf4 }),
            V::Raw(r) => out.extend(r),
        }
    }
    fn bytes(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.enc(&mut v);
        v
    }
}

fn x(s: &str) -> Vec<u8> {
    hex::decode(s.replace(' ', "")).expect("hex")
}

fn exts() -> V {
    V::M(vec![(V::U(1), V::T("mimi://example.com/u/a")), (V::U(2), V::T("mimi://example.com/r/b"))])
}

fn text_part() -> V {
    V::A(vec![V::U(1), V::T(""), V::U(1), V::T("text/plain"), V::B(b"hi".to_vec())])
}

fn null_part() -> V {
    V::A(vec![V::U(1), V::T(""), V::U(0)])
}

/// [salt, replaces, topic, expires, inReplyTo, ext, part]
fn msg(fields: [V; 7]) -> Vec<u8> {
    V::A(fields.to_vec()).bytes()
}

fn base() -> [V; 7] {
    [V::B(vec![7; 16]), V::Null, V::B(vec![]), V::Null, V::Null, exts(), text_part()]
}

fn with(i: usize, v: V) -> Vec<u8> {
    let mut f = base();
    f[i] = v;
    msg(f)
}

fn err(bytes: &[u8]) -> ContentError {
    mimi_content::decode(bytes).expect_err("must be rejected")
}

fn external(f: impl FnOnce(&mut Vec<V>)) -> Vec<u8> {
    let mut p = vec![
        V::U(6),
        V::T(""),
        V::U(2),
        V::T("video/mp4"),
        V::T("https://example.com/x"),
        V::U(0),
        V::U(0),
        V::U(0),
        V::B(vec![]),
        V::B(vec![]),
        V::B(vec![]),
        V::U(0),
        V::B(vec![]),
        V::T(""),
        V::T(""),
    ];
    f(&mut p);
    with(6, V::A(p))
}

fn multi(semantics: u64, parts: Vec<V>) -> V {
    V::A(vec![V::U(1), V::T(""), V::U(3), V::U(semantics), V::A(parts)])
}

fn ext_value(v: V) -> Vec<u8> {
    with(
        5,
        V::M(vec![(V::U(1), V::T("mimi://example.com/u/a")), (V::U(2), V::T("mimi://example.com/r/b")), (V::U(3), v)]),
    )
}

#[test]
fn the_crafted_base_message_is_valid() {
    let b = msg(base());
    let c = mimi_content::decode(&b).expect("valid");
    assert_eq!(mimi_content::encode(&c).expect("enc"), b);
    // hashAlg = 0 with an empty contentHash and encAlg 0 is valid
    mimi_content::decode(&external(|_| {})).expect("valid external");
}

#[test]
fn cbor_level_errors() {
    let good = msg(base());
    assert!(matches!(err(&good[..good.len() - 3]), E::Truncated { .. }));
    assert!(matches!(err(&with(2, V::Raw(vec![0x5c]))), E::Malformed { .. }));
    assert!(matches!(err(&with(2, V::Raw(vec![0xff]))), E::Malformed { .. }));
    assert!(matches!(err(&with(3, V::Raw(vec![0xf8, 0x10]))), E::Malformed { .. }));
    assert!(matches!(err(&with(2, V::Raw(vec![0x5f, 0x41, 0x00, 0xff]))), E::IndefiniteLength { .. }));
    // disposition 1 written as 0x18 0x01
    let p = V::A(vec![V::Raw(vec![0x18, 0x01]), V::T(""), V::U(0)]);
    assert!(matches!(err(&with(6, p)), E::NonShortestEncoding { .. }));
    // a 16-byte salt with a 2-byte length head
    assert!(matches!(err(&with(0, V::Raw([vec![0x58, 0x10], vec![0; 16]].concat()))), E::NonShortestEncoding { .. }));
    assert!(matches!(err(&with(6, V::A(vec![V::U(1), V::Raw(vec![0x61, 0xff]), V::U(0)]))), E::InvalidUtf8 { .. }));
    let mut trailing = good.clone();
    trailing.push(0);
    assert_eq!(err(&trailing), E::TrailingBytes { count: 1 });
    assert!(matches!(err(&with(0, V::T("0123456789abcdef"))), E::UnexpectedType { .. }));
}

#[test]
fn map_key_order_and_duplicates() {
    let unsorted = V::M(vec![(V::U(2), V::T("r")), (V::U(1), V::T("s"))]);
    assert!(matches!(err(&with(5, unsorted)), E::UnsortedMapKeys { .. }));
    let dup = V::M(vec![(V::U(1), V::T("s")), (V::U(1), V::T("s"))]);
    assert!(matches!(err(&with(5, dup)), E::DuplicateMapKey { .. }));
    // length-first (RFC 7049 canonical) order is not bytewise order
    let canonical7049 = V::M(vec![(V::T("b"), V::U(0)), (V::U(100_000), V::U(0))]);
    assert!(matches!(err(&with(5, canonical7049)), E::UnsortedMapKeys { .. }));
    // inside an extension value too
    let nested = V::M(vec![(V::T("b"), V::U(0)), (V::T("a"), V::U(0))]);
    assert!(matches!(err(&ext_value(nested)), E::UnsortedMapKeys { .. }));
    let nested_dup = V::M(vec![(V::T("a"), V::U(0)), (V::T("a"), V::U(1))]);
    assert!(matches!(err(&ext_value(nested_dup)), E::DuplicateMapKey { .. }));
}

#[test]
fn extension_value_rules() {
    // 1.0 as f32 fits f16; 1.0 as f64 fits f32
    assert!(matches!(err(&ext_value(V::Raw(x("fa3f800000")))), E::NonShortestFloat { .. }));
    assert!(matches!(err(&ext_value(V::Raw(x("fb3ff0000000000000")))), E::NonShortestFloat { .. }));
    mimi_content::decode(&ext_value(V::Raw(x("f93c00")))).expect("f16 1.0 ok");
    mimi_content::decode(&ext_value(V::Raw(x("fa47c35000")))).expect("f32 100000.0 ok");
    mimi_content::decode(&ext_value(V::Raw(x("f97e00")))).expect("quiet NaN ok");
    assert!(matches!(err(&ext_value(V::Raw(x("f97e01")))), E::ForbiddenNaN { .. }));
    assert!(matches!(err(&ext_value(V::Raw(x("fa7fc00000")))), E::ForbiddenNaN { .. }));
    // NaN payloads are fine inside tags 80..=87
    mimi_content::decode(&ext_value(V::Raw(x("d850fa7fc00000")))).expect("NaN in tag 80");
    assert!(matches!(err(&ext_value(V::Raw(x("c24101")))), E::NonPreferredBignum { .. }));
    mimi_content::decode(&ext_value(V::Raw(x("c249010000000000000000")))).expect("2^64 bignum");
    assert!(matches!(err(&ext_value(V::M(vec![(V::A(vec![]), V::U(1))]))), E::InvalidNestedMapKey { .. }));
    // levels: ext map 1, arrays 2, 3, 4 ok; a fourth array (level 5) is too deep
    mimi_content::decode(&ext_value(V::Raw(x("818181 01")))).expect("depth 4");
    mimi_content::decode(&ext_value(V::Raw(x("8181 d820 6161")))).expect("draft 6.3 example shape");
    assert_eq!(err(&ext_value(V::Raw(x("81818181 01")))), E::ExtensionTooDeep);
    assert_eq!(err(&ext_value(V::Raw(x("818181 d820 01")))), E::ExtensionTooDeep);
    assert_eq!(ExtensionValue::from_cbor(vec![0x01, 0x02]), Err(E::InvalidExtensionValue));
    assert!(ExtensionValue::from_cbor(vec![0x81, 0x01]).is_ok());
}

#[test]
fn extension_key_rules() {
    let with_key = |k: V| {
        with(
            5,
            V::M(vec![
                (V::U(1), V::T("mimi://example.com/u/a")),
                (V::U(2), V::T("mimi://example.com/r/b")),
                (k, V::U(0)),
            ]),
        )
    };
    assert!(matches!(err(&with_key(V::B(vec![1]))), E::InvalidExtensionKeyType { .. }));
    assert_eq!(err(&with_key(V::T(""))), E::ExtensionKeyLength(0));
    let long: &'static str = Box::leak("k".repeat(256).into_boxed_str());
    assert_eq!(err(&with_key(V::T(long))), E::ExtensionKeyLength(256));
    assert_eq!(err(&with_key(V::U(1 << 53))), E::IntegerKeyOutOfRange);
    assert_eq!(err(&with_key(V::N((1 << 53) - 1))), E::IntegerKeyOutOfRange);
    mimi_content::decode(&with_key(V::N((1 << 53) - 2))).expect("-(2^53-1) ok");
    mimi_content::decode(&with_key(V::U((1 << 53) - 1))).expect("2^53-1 ok");
    let not_text = V::M(vec![(V::U(1), V::U(5))]);
    assert_eq!(err(&with(5, not_text)), E::KnownExtensionNotText { key: 1 });
    let not_text2 = V::M(vec![(V::U(2), V::B(vec![]))]);
    assert_eq!(err(&with(5, not_text2)), E::KnownExtensionNotText { key: 2 });
    let mut e = mimi_content::Extensions::default();
    assert_eq!(e.insert(ExtensionKey::Int(1 << 53), ExtensionValue::int(0)), Err(E::IntegerKeyOutOfRange));
}

#[test]
fn top_level_field_errors() {
    assert!(matches!(err(&V::A(base()[..6].to_vec()).bytes()), E::WrongArrayLength { expected: 7, found: 6, .. }));
    assert_eq!(err(&with(0, V::B(vec![0; 15]))), E::BadSaltLength(15));
    assert_eq!(err(&with(1, V::B(vec![1; 31]))), E::BadMessageIdLength { field: "replaces", len: 31 });
    assert_eq!(err(&with(4, V::B(vec![1; 33]))), E::BadMessageIdLength { field: "inReplyTo", len: 33 });
    assert_eq!(err(&with(1, V::B(vec![0; 32]))), E::UnknownMessageIdHashAlg { field: "replaces", alg: 0 });
    assert_eq!(err(&with(4, V::B(vec![13; 32]))), E::UnknownMessageIdHashAlg { field: "inReplyTo", alg: 13 });
    assert_eq!(err(&with(2, V::B(vec![0; 4097]))), E::TopicIdTooLong(4097));
    mimi_content::decode(&with(2, V::B(vec![0; 4096]))).expect("4096 ok");
    assert!(matches!(
        err(&with(3, V::A(vec![V::Bool(true), V::U(1 << 32)]))),
        E::IntegerOutOfRange { field: "Expiration.time", .. }
    ));
    assert!(matches!(err(&with(3, V::A(vec![V::Bool(true)]))), E::WrongArrayLength { what: "Expiration", .. }));
}

#[test]
fn expiry_policy() {
    let now = 1_700_000_000u64;
    let year = validate::ONE_YEAR_SECS;
    let mut c = mimi_content::decode(&msg(base())).expect("valid");
    let mut check = |relative, time: u64| {
        c.expires = Some(Expiration { relative, time: time as u32 });
        validate::check_expiry(&c, now)
    };
    assert_eq!(check(false, now + 600), Ok(()));
    assert_eq!(check(false, now - year - 1), Err(E::ExpiresTooFarInPast));
    assert_eq!(check(false, now + year + 1), Err(E::ExpiresTooFarInFuture));
    assert_eq!(check(true, year + 1), Err(E::ExpiresTooFarInFuture));
    assert_eq!(check(true, 3600), Ok(()));
}

#[test]
fn body_errors() {
    let p = V::A(vec![V::U(256), V::T(""), V::U(0)]);
    assert_eq!(err(&with(6, p)), E::DispositionOutOfRange(256));
    let p = V::A(vec![V::U(200), V::T(""), V::U(0)]);
    mimi_content::decode(&with(6, p)).expect("unknown disposition 200 is legitimate");
    let p = V::A(vec![V::U(1), V::T(""), V::U(4)]);
    assert_eq!(err(&with(6, p)), E::UnknownCardinality(4));
    assert_eq!(err(&with(6, multi(3, vec![null_part(), null_part()]))), E::UnknownPartSemantics(3));
    assert_eq!(err(&with(6, multi(0, vec![text_part()]))), E::TooFewParts(1));
    assert!(matches!(
        err(&with(6, V::A(vec![V::U(1), V::T(""), V::U(1), V::T("x")]))),
        E::WrongArrayLength { what: "SinglePart", .. }
    ));
    // nesting: 4 levels ok, 5 too deep
    let mut p = multi(0, vec![text_part(), text_part()]);
    for _ in 0..2 {
        p = multi(0, vec![p, text_part()]);
    }
    mimi_content::decode(&with(6, p.clone())).expect("4 levels ok");
    assert_eq!(err(&with(6, multi(0, vec![p, text_part()]))), E::NestingTooDeep);
    // 1 + 1023 parts ok, 1 + 1024 too many
    mimi_content::decode(&with(6, multi(2, vec![null_part(); 1023]))).expect("1024 parts ok");
    assert_eq!(err(&with(6, multi(2, vec![null_part(); 1024]))), E::TooManyParts);
}

#[test]
fn cid_references() {
    let html = |s: &'static str| V::A(vec![V::U(1), V::T(""), V::U(1), V::T("text/html"), V::B(s.as_bytes().to_vec())]);
    let ok = multi(1, vec![html("<img src=\"cid:2@local.invalid\">"), text_part()]);
    mimi_content::decode(&with(6, ok)).expect("cid to a single part");
    let bad = multi(1, vec![html("<img src=\"cid:0@local.invalid\">"), text_part()]);
    assert_eq!(err(&with(6, bad)), E::InvalidCidReference(0));
    let bad = multi(1, vec![html("<img src=\"cid:9@local.invalid\">"), text_part()]);
    assert_eq!(err(&with(6, bad)), E::InvalidCidReference(9));
}

#[test]
fn external_part_errors() {
    assert_eq!(err(&external(|p| p[11] = V::U(13))), E::UnknownHashAlgorithm(13));
    assert!(matches!(
        err(&external(|p| p[11] = V::U(256))),
        E::IntegerOutOfRange { field: "ExternalPart.hashAlg", .. }
    ));
    assert_eq!(
        err(&external(|p| p[12] = V::B(vec![1]))),
        E::ContentHashLengthMismatch { alg: 0, expected: 0, found: 1 }
    );
    assert_eq!(
        err(&external(|p| {
            p[11] = V::U(1);
            p[12] = V::B(vec![1; 31]);
        })),
        E::ContentHashLengthMismatch { alg: 1, expected: 32, found: 31 }
    );
    assert_eq!(err(&external(|p| p[8] = V::B(vec![1; 16]))), E::UnexpectedEncryptionParams);
    assert_eq!(
        err(&external(|p| {
            p[7] = V::U(1);
            p[8] = V::B(vec![1; 15]);
            p[9] = V::B(vec![1; 12]);
        })),
        E::AeadParamLength { enc_alg: 1, key_len: 15, nonce_len: 12 }
    );
    assert!(matches!(
        err(&external(|p| p[5] = V::U(1 << 32))),
        E::IntegerOutOfRange { field: "ExternalPart.expires", .. }
    ));
    assert!(matches!(
        err(&external(|p| p[7] = V::U(1 << 16))),
        E::IntegerOutOfRange { field: "ExternalPart.encAlg", .. }
    ));
    // an unknown AEAD is not a discard condition
    mimi_content::decode(&external(|p| {
        p[7] = V::U(30);
        p[8] = V::B(vec![1; 3]);
    }))
    .expect("unknown encAlg accepted");
}

#[test]
fn message_id_errors() {
    let no_uris = with(5, V::M(vec![]));
    let m = Message::decode(&no_uris).expect("valid without uris");
    assert_eq!(m.message_id(), Err(E::MissingUri("sender")));
    assert_eq!(m.message_id_with(Some("mimi://a/u/b"), None), Err(E::MissingUri("room")));
    assert!(m.message_id_with(Some("mimi://a/u/b"), Some("mimi://a/r/c")).is_ok());
    let long = "x".repeat(65_536);
    assert_eq!(mimi_content::message_id(b"", &long, "r", &[0; 16]), Err(E::UriTooLong("sender")));
    assert_eq!(mimi_content::message_id(b"", "s", &long, &[0; 16]), Err(E::UriTooLong("room")));
    assert!(mimi_content::message_id(b"", &long[1..], "r", &[0; 16]).is_ok());
}

#[test]
fn misc_errors() {
    assert!(matches!(json::encode_from_json("{"), Err(E::Json(_))));
    assert!(matches!(json::decode_to_json(&[0xff]), Err(E::Malformed { .. })));
    let single = mimi_content::decode(&msg(base())).expect("valid");
    assert_eq!(attachment::verify_and_decrypt_part(&single.nested_part, b""), Err(E::NotExternal));
}
