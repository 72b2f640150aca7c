//! The draft's example messages (../shared/mimi-content, copied into
//! tests/data/mimi-content): decode, byte-identical re-encode through the API
//! and through JSON, and message IDs equal to the expected ones.

use mimi_content::{Message, json};
use serde_json::Value;

fn data_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/mimi-content")
}

fn expected() -> Value {
    let text = std::fs::read_to_string(data_dir().join("expected.json")).expect("expected.json");
    serde_json::from_str(&text).expect("valid json")
}

fn examples() -> Vec<(String, Vec<u8>, Value)> {
    let exp = expected();
    let list = exp["examples"].as_array().expect("examples").clone();
    assert_eq!(list.len(), 9);
    list.into_iter()
        .map(|e| {
            let file = e["file"].as_str().expect("file").to_owned();
            let bytes = std::fs::read(data_dir().join(&file)).expect("vector file");
            (file, bytes, e)
        })
        .collect()
}

#[test]
fn every_example_decodes_and_reencodes_identically() {
    for (file, bytes, e) in examples() {
        assert_eq!(bytes.len() as u64, e["cbor_length"].as_u64().expect("len"), "{file}");
        let c = mimi_content::decode(&bytes).unwrap_or_else(|err| panic!("{file}: {err}"));
        assert_eq!(hex::encode(c.salt), e["salt"].as_str().expect("salt"), "{file}");
        assert_eq!(c.extensions.sender_uri.as_deref(), e["sender_uri"].as_str(), "{file}");
        assert_eq!(c.extensions.room_uri.as_deref(), e["room_uri"].as_str(), "{file}");
        assert_eq!(c.replaces.map(hex::encode).as_deref(), e["replaces"].as_str(), "{file}");
        assert_eq!(c.in_reply_to.map(hex::encode).as_deref(), e["in_reply_to"].as_str(), "{file}");
        let again = mimi_content::encode(&c).expect("encode");
        assert_eq!(again, bytes, "{file}: API re-encode differs");
    }
}

#[test]
fn every_example_round_trips_through_json() {
    for (file, bytes, _) in examples() {
        let j = json::decode_to_json(&bytes).unwrap_or_else(|err| panic!("{file}: {err}"));
        let again = json::encode_from_json(&j).unwrap_or_else(|err| panic!("{file}: {err}"));
        assert_eq!(again, bytes, "{file}: JSON round trip differs\n{j}");
    }
}

#[test]
fn every_example_has_the_expected_message_id() {
    for (file, bytes, e) in examples() {
        let m = Message::decode(&bytes).expect("decode");
        let id = hex::encode(m.message_id().expect("id"));
        assert_eq!(id, e["message_id_computed"].as_str().expect("computed"), "{file}");
        assert_eq!(id, e["message_id_stated"].as_str().expect("stated"), "{file}");
        assert_eq!(json::message_id_hex(&bytes, None, None).expect("id hex"), id, "{file}");
    }
}

#[test]
fn references_between_examples_resolve() {
    let ids: std::collections::HashMap<String, [u8; 32]> = examples()
        .into_iter()
        .map(|(file, bytes, _)| {
            let id = Message::decode(&bytes).expect("decode").message_id().expect("id");
            (file.trim_end_matches(".cbor").to_owned(), id)
        })
        .collect();
    for (file, bytes, e) in examples() {
        let c = mimi_content::decode(&bytes).expect("decode");
        for (field, value) in [("replaces", c.replaces), ("in_reply_to", c.in_reply_to)] {
            match e[format!("{field}_refers_to")].as_str() {
                Some(target) => assert_eq!(value, Some(ids[target]), "{file}.{field}"),
                None => assert_eq!(value, None, "{file}.{field}"),
            }
        }
    }
}

/// implied-original.cbor is a MessageDerivedValues array, not a message: it
/// must be rejected as mimiContent, and (per the README's known discrepancy)
/// carries the stale -07 ID of original rather than the computed one.
#[test]
fn implied_original_is_not_a_message_and_carries_the_stale_id() {
    let exp = expected();
    let imp = &exp["implied"];
    let bytes = std::fs::read(data_dir().join("implied-original.cbor")).expect("file");
    let err = mimi_content::decode(&bytes).expect_err("not mimiContent");
    assert!(matches!(err, mimi_content::ContentError::BadSaltLength(32)), "unexpected error {err:?}");
    // [messageId (bstr 32), ...]: 0x87 0x58 0x20 <32 bytes>
    assert_eq!(&bytes[..3], &[0x87, 0x58, 0x20]);
    let stale = hex::encode(&bytes[3..35]);
    assert_eq!(stale, imp["message_id_in_cbor"].as_str().expect("in cbor"));
    let original = std::fs::read(data_dir().join("original.cbor")).expect("original");
    let id = Message::decode(&original).expect("decode").message_id().expect("id");
    assert_eq!(hex::encode(id), imp["message_id_in_edn_and_draft"].as_str().expect("edn"));
    assert_ne!(hex::encode(id), stale);
}

/// §5.8 Expiring and §5.10 Conferencing are in the draft text only, with hex
/// dumps and stated message IDs; they exercise Expiration, a non-empty topicId
/// and an unencrypted ExternalPart with hashAlg 0 ("none").
#[test]
fn draft_text_only_examples_expiring_and_conferencing() {
    let expiring = concat!(
        "8750",
        "33be993eb39f418f9295afc2ae160d2d",
        "f640",
        "82f41a62036674",
        "f6",
        "a2",
        "0178206d696d693a2f2f6578616d706c652e636f6d2f752f616c6963652d736d697468",
        "0278256d696d693a2f2f6578616d706c652e636f6d2f722f656e67696e656572696e675f7465616d",
        "85016001781e746578742f6d61726b646f776e3b76617269616e743d47464d2d4d494d49",
        "5850",
        "5f5f2a56504e20474f494e4720444f574e2a5f5f2049276d207265626f6f7469",
        "6e67207468652056504e20696e2074656e206d696e7574657320756e6c65737320616e796f6e65206f626a656374732e",
    );
    let conferencing = concat!(
        "8750",
        "678ac6cd54de049c3e9665cd212470fa",
        "f6",
        "47466f6f20313138",
        "f6f6",
        "a2",
        "0178206d696d693a2f2f6578616d706c652e636f6d2f752f616c6963652d736d697468",
        "0278256d696d693a2f2f6578616d706c652e636f6d2f722f656e67696e656572696e675f7465616d",
        "8f",
        "0760",
        "02",
        "60",
        "781e68747470733a2f2f6578616d706c652e636f6d2f6a6f696e2f3132333435",
        "000000",
        "404040",
        "00",
        "40",
        "781b4a6f696e2074686520466f6f2031313820636f6e666572656e6365",
        "60",
    );
    for (name, hx, stated) in [
        ("expiring", expiring, "01e59db8173939facc2c8a4a0f0ae8d0c7a11a81239626630c9464a8d6717a03"),
        ("conferencing", conferencing, "01496d15a8dba28d7397f9868b70768e4a67f765d5b5b1ae9e03848c5fdeb0ba"),
    ] {
        let bytes = hex::decode(hx).expect("hex");
        let c = mimi_content::decode(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(mimi_content::encode(&c).expect("encode"), bytes, "{name}");
        let j = json::decode_to_json(&bytes).expect("json");
        assert_eq!(json::encode_from_json(&j).expect("from json"), bytes, "{name}");
        let id = Message::decode(&bytes).expect("decode").message_id().expect("id");
        assert_eq!(hex::encode(id), stated, "{name}");
    }
}
