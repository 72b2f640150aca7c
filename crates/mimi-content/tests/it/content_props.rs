//! Property tests: encode → decode → encode identity over arbitrary valid
//! content, and the decoder never panics on arbitrary bytes.

use mimi_content::{
    Disposition, EncAlg, Expiration, ExtensionKey, ExtensionValue, Extensions, ExternalPart, HashAlg, MimiContent,
    MultiPart, NestedPart, PartBody, PartSemantics, SinglePart, json,
};
use proptest::prelude::*;

fn message_id() -> impl Strategy<Value = [u8; 32]> {
    (1u8..=12, any::<[u8; 31]>()).prop_map(|(a, rest)| {
        let mut id = [0u8; 32];
        id[0] = a;
        id[1..].copy_from_slice(&rest);
        id
    })
}

/// Small arbitrary CBOR values that obey the extension rules, encoded
/// deterministically by hand (so the test does not trust the codec).
fn cbor_value() -> impl Strategy<Value = Vec<u8>> {
    fn head(major: u8, arg: u64) -> Vec<u8> {
        let m = major << 5;
        match arg {
            0..=23 => vec![m | arg as u8],
            24..=0xff => vec![m | 24, arg as u8],
            0x100..=0xffff => [vec![m | 25], (arg as u16).to_be_bytes().to_vec()].concat(),
            0x1_0000..=0xffff_ffff => [vec![m | 26], (arg as u32).to_be_bytes().to_vec()].concat(),
            _ => [vec![m | 27], arg.to_be_bytes().to_vec()].concat(),
        }
    }
    let leaf = prop_oneof![
        any::<u64>().prop_map(|u| head(0, u)),
        any::<u64>().prop_map(|u| head(1, u)),
        proptest::collection::vec(any::<u8>(), 0..20).prop_map(|b| [head(2, b.len() as u64), b].concat()),
        "[a-z ]{0,12}".prop_map(|s| [head(3, s.len() as u64), s.into_bytes()].concat()),
        Just(vec![0xf4]),
        Just(vec![0xf6]),
        Just(vec![0xf9, 0x7e, 0x00]),
        Just(vec![0xfa, 0x47, 0xc3, 0x50, 0x00]),
    ];
    leaf.prop_recursive(2, 16, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(|items| [
                head(4, items.len() as u64),
                items.concat()
            ]
            .concat()),
            proptest::collection::btree_map("[a-z]{1,4}", inner.clone(), 0..4).prop_map(|m| {
                // text keys of equal-length-prefix encodings: sort by encoding
                let mut entries: Vec<(Vec<u8>, Vec<u8>)> =
                    m.into_iter().map(|(k, v)| ([head(3, k.len() as u64), k.into_bytes()].concat(), v)).collect();
                entries.sort();
                let n = entries.len() as u64;
                [head(5, n), entries.into_iter().flat_map(|(k, v)| [k, v]).flatten().collect()].concat()
            }),
            (0u64..1000, inner).prop_map(|(t, v)| [head(6, t.max(4)), v].concat()),
        ]
    })
}

fn extensions() -> impl Strategy<Value = Extensions> {
    let key = prop_oneof![
        (-(1i64 << 53) + 1..(1i64 << 53)).prop_map(ExtensionKey::Int),
        (-30i64..300).prop_map(ExtensionKey::Int),
        "[a-zA-Z0-9é-]{1,10}".prop_map(ExtensionKey::Text),
    ];
    (
        proptest::option::of("mimi://[a-z.]{1,12}/u/[a-z-]{1,12}"),
        proptest::option::of("mimi://[a-z.]{1,12}/r/[a-z_]{1,12}"),
        proptest::collection::vec((key, cbor_value()), 0..4),
    )
        .prop_map(|(s, r, others)| {
            let mut x = Extensions::default();
            x.sender_uri = s;
            x.room_uri = r;
            for (k, v) in others {
                if matches!(k, ExtensionKey::Int(1 | 2)) {
                    continue;
                }
                let v = ExtensionValue::from_cbor(v).expect("generated value is valid");
                x.insert(k, v).expect("valid key");
            }
            x
        })
}

fn disposition() -> impl Strategy<Value = Disposition> {
    any::<u8>().prop_map(Disposition::from_u8)
}

fn external() -> impl Strategy<Value = ExternalPart> {
    let hash = (0u8..=12).prop_flat_map(|a| {
        let alg = HashAlg::from_u8(a).expect("known");
        proptest::collection::vec(any::<u8>(), alg.digest_len()).prop_map(move |h| (alg, h))
    });
    let enc =
        prop_oneof![
            Just((EncAlg::NONE, vec![], vec![], vec![])),
            (any::<[u8; 16]>(), any::<[u8; 12]>(), proptest::collection::vec(any::<u8>(), 0..8))
                .prop_map(|(k, n, a)| (EncAlg::AES_128_GCM, k.to_vec(), n.to_vec(), a)),
            (3u16..=u16::MAX, proptest::collection::vec(any::<u8>(), 0..8)).prop_map(|(e, k)| (
                EncAlg(e),
                k.clone(),
                k,
                vec![]
            )),
        ];
    (
        "[a-z/]{0,12}",
        "https://[a-z.]{1,12}/[a-z]{0,8}",
        any::<u32>(),
        any::<u64>(),
        enc,
        hash,
        "[ -~]{0,12}",
        "[a-z.]{0,10}",
    )
        .prop_map(|(ct, url, expires, size, (enc_alg, key, nonce, aad), (hash_alg, content_hash), d, f)| {
            ExternalPart {
                content_type: ct,
                url,
                expires,
                size,
                enc_alg,
                key,
                nonce,
                aad,
                hash_alg,
                content_hash,
                description: d,
                filename: f,
            }
        })
}

fn part() -> impl Strategy<Value = NestedPart> {
    let body_leaf = prop_oneof![
        Just(PartBody::Null),
        ("[a-z/;=-]{0,20}", proptest::collection::vec(any::<u8>(), 0..40))
            .prop_map(|(content_type, content)| PartBody::Single(SinglePart { content_type, content })),
        external().prop_map(|x| PartBody::External(Box::new(x))),
    ];
    let leaf = (disposition(), "[a-z,-]{0,6}", body_leaf).prop_map(|(disposition, language, body)| NestedPart {
        disposition,
        language,
        body,
    });
    // depth ≤ 4 including the top level: at most 3 recursion levels
    leaf.prop_recursive(3, 24, 4, |inner| {
        (disposition(), 0u8..3, proptest::collection::vec(inner, 2..4)).prop_map(|(d, s, parts)| NestedPart {
            disposition: d,
            language: String::new(),
            body: PartBody::Multi(MultiPart { semantics: PartSemantics::from_u64(u64::from(s)).expect("0..3"), parts }),
        })
    })
}

fn content_strategy() -> impl Strategy<Value = MimiContent> {
    (
        any::<[u8; 16]>(),
        proptest::option::of(message_id()),
        proptest::collection::vec(any::<u8>(), 0..40),
        proptest::option::of((any::<bool>(), any::<u32>()).prop_map(|(relative, time)| Expiration { relative, time })),
        proptest::option::of(message_id()),
        extensions(),
        part(),
    )
        .prop_map(|(salt, replaces, topic_id, expires, in_reply_to, extensions, nested_part)| MimiContent {
            salt,
            replaces,
            topic_id,
            expires,
            in_reply_to,
            extensions,
            nested_part,
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn encode_decode_encode_is_identity(c in content_strategy()) {
        let bytes = mimi_content::encode(&c).expect("valid content encodes");
        let d = mimi_content::decode(&bytes).expect("own encoding decodes");
        prop_assert_eq!(&d, &c);
        prop_assert_eq!(mimi_content::encode(&d).expect("re-encode"), bytes.clone());
        let j = json::decode_to_json(&bytes).expect("json");
        prop_assert_eq!(json::encode_from_json(&j).expect("from json"), bytes);
    }
}

fn vectors() -> Vec<Vec<u8>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/mimi-content");
    ["original", "reply", "reaction", "mention", "edit", "delete", "attachment", "multipart-1", "multipart-2"]
        .iter()
        .map(|n| std::fs::read(dir.join(format!("{n}.cbor"))).expect("vector"))
        .collect()
}

/// Random byte strings, and valid vectors with random byte edits, truncations
/// and insertions (which reach much deeper into the decoder).
fn fuzz_input() -> impl Strategy<Value = Vec<u8>> {
    let vs = vectors();
    let mutated = (0..vs.len(), proptest::collection::vec((any::<usize>(), any::<u8>(), 0u8..4), 1..4)).prop_map(
        move |(i, edits)| {
            let mut b = vs[i].clone();
            for (pos, byte, kind) in edits {
                let p = pos % (b.len() + 1);
                match kind {
                    0 if p < b.len() => b[p] = byte,
                    1 => b.insert(p, byte),
                    2 if p < b.len() => {
                        b.remove(p);
                    }
                    _ => b.truncate(p),
                }
            }
            b
        },
    );
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..64),
        proptest::collection::vec(
            prop_oneof![
                Just(0x81u8),
                Just(0xa1),
                Just(0x9f),
                Just(0xbf),
                Just(0xc2),
                Just(0x5f),
                Just(0xff),
                any::<u8>()
            ],
            0..64
        ),
        mutated,
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 100_000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn decode_arbitrary_bytes_never_panics(bytes in fuzz_input()) {
        if let Ok(c) = mimi_content::decode(&bytes) {
            // anything accepted is canonical: it re-encodes to the same bytes
            prop_assert_eq!(mimi_content::encode(&c).expect("re-encode"), bytes.clone());
        }
        let _ = json::decode_to_json(&bytes);
        let _ = json::message_id_hex(&bytes, None, None);
    }
}

#[test]
fn deeply_nested_garbage_does_not_overflow_the_stack() {
    let mut b = vec![0x87, 0x50];
    b.extend([0u8; 16]);
    b.extend([0xf6, 0x40, 0xf6, 0xf6, 0xa1, 0x03]);
    b.extend(std::iter::repeat_n(0x81u8, 1_000_000));
    assert!(mimi_content::decode(&b).is_err());
    let nested_parts: Vec<u8> =
        std::iter::repeat_n([0x85u8, 0x01, 0x60, 0x03, 0x00, 0x82], 100_000).flatten().collect();
    let mut m = vec![0x87, 0x50];
    m.extend([0u8; 16]);
    m.extend([0xf6, 0x40, 0xf6, 0xf6, 0xa0]);
    m.extend(nested_parts);
    assert_eq!(mimi_content::decode(&m), Err(mimi_content::ContentError::NestingTooDeep));
}
