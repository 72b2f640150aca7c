//! The JSON form used by `mimi-bridge content decode|encode|id`.

use mimi_content::{ContentError, ExtensionKey, ExtensionValue, json};
use serde_json::{Value, json};

fn vector(name: &str) -> Vec<u8> {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/mimi-content").join(name);
    std::fs::read(p).expect("vector")
}

#[test]
fn original_renders_with_cddl_names_and_hex() {
    let j: Value =
        serde_json::from_str(&json::decode_to_json(&vector("original.cbor")).expect("json")).expect("valid json");
    assert_eq!(
        j,
        json!({
            "salt": "5eed9406c2545547ab6f09f20a18b003",
            "replaces": null,
            "topicId": "",
            "expires": null,
            "inReplyTo": null,
            "mimiExtensions": [
                [1, "mimi://example.com/u/alice-smith"],
                [2, "mimi://example.com/r/engineering_team"]
            ],
            "nestedPart": {
                "disposition": 1,
                "language": "",
                "cardinality": 1,
                "contentType": "text/markdown;variant=GFM-MIMI",
                "content": hex::encode("Hi everyone, we just shipped release 2.0. __Good  work__!")
            }
        })
    );
}

#[test]
fn external_and_multipart_fields() {
    let j: Value =
        serde_json::from_str(&json::decode_to_json(&vector("attachment.cbor")).expect("json")).expect("valid json");
    let p = &j["nestedPart"];
    assert_eq!(p["cardinality"], 2);
    assert_eq!(p["size"], 708234961);
    assert_eq!(p["encAlg"], 1);
    assert_eq!(p["key"], "21399320958a6f4c745dde670d95e0d8");
    assert_eq!(p["nonce"], "c86cf2c33f21527d1dd76f5b");
    assert_eq!(p["aad"], "");
    assert_eq!(p["hashAlg"], 1);
    assert_eq!(p["filename"], "bigfile.mp4");
    let j: Value =
        serde_json::from_str(&json::decode_to_json(&vector("multipart-2.cbor")).expect("json")).expect("valid json");
    assert_eq!(j["nestedPart"]["partSemantics"], 2);
    assert_eq!(j["nestedPart"]["parts"].as_array().expect("parts").len(), 3);
    assert_eq!(j["nestedPart"]["parts"][0]["content"], "e29da4");
}

#[test]
fn extensions_as_pairs_with_cbor_values() {
    let mut c = mimi_content::decode(&vector("original.cbor")).expect("decode");
    let x = &mut c.extensions;
    x.insert(ExtensionKey::Int(-1), ExtensionValue::int(-7)).expect("int");
    x.insert(ExtensionKey::Text("x-list".into()), ExtensionValue::from_cbor(vec![0x82, 0x01, 0x02]).expect("cbor"))
        .expect("insert");
    x.insert(ExtensionKey::Int(300), ExtensionValue::text("t")).expect("text");
    x.insert(
        ExtensionKey::Int(0),
        ExtensionValue::from_cbor(vec![0x1b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]).expect("u64"),
    )
    .expect("zero");
    x.insert(
        ExtensionKey::Int(4),
        ExtensionValue::from_cbor(vec![0x3b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]).expect("-2^64"),
    )
    .expect("neg");
    let bytes = mimi_content::encode(&c).expect("encode");
    let text = json::decode_to_json(&bytes).expect("json");
    let j: Value = serde_json::from_str(&text).expect("valid json");
    assert_eq!(
        j["mimiExtensions"],
        json!([
            [0, 18446744073709551615u64],
            [1, "mimi://example.com/u/alice-smith"],
            [2, "mimi://example.com/r/engineering_team"],
            [4, {"cbor": "3bffffffffffffffff"}],
            [300, "t"],
            [-1, -7],
            ["x-list", {"cbor": "820102"}]
        ])
    );
    assert_eq!(json::encode_from_json(&text).expect("encode"), bytes);
}

#[test]
fn json_input_order_is_free_and_output_is_deterministic() {
    let text = json::decode_to_json(&vector("original.cbor")).expect("json");
    let mut j: Value = serde_json::from_str(&text).expect("valid");
    j["mimiExtensions"] =
        json!([["z", 1], [2, "mimi://example.com/r/engineering_team"], [1, "mimi://example.com/u/alice-smith"]]);
    let bytes = json::encode_from_json(&j.to_string()).expect("encode");
    let back: Value = serde_json::from_str(&json::decode_to_json(&bytes).expect("json")).expect("v");
    assert_eq!(back["mimiExtensions"][0][0], 1);
    assert_eq!(back["mimiExtensions"][2][0], "z");
}

#[test]
fn malformed_json_is_a_typed_error() {
    let good: Value =
        serde_json::from_str(&json::decode_to_json(&vector("original.cbor")).expect("json")).expect("valid");
    type Case = (Box<dyn Fn(&mut Value)>, fn(&ContentError) -> bool);
    let variants: Vec<Case> = vec![
        (Box::new(|j| j["salt"] = json!("00")), |e| matches!(e, ContentError::BadSaltLength(1))),
        (Box::new(|j| j["salt"] = json!("zz")), |e| matches!(e, ContentError::Json(_))),
        (Box::new(|j| j["replaces"] = json!("01")), |e| matches!(e, ContentError::BadMessageIdLength { .. })),
        (Box::new(|j| j["extra"] = json!(1)), |e| matches!(e, ContentError::Json(_))),
        (Box::new(|j| j["nestedPart"]["url"] = json!("x")), |e| matches!(e, ContentError::Json(_))),
        (Box::new(|j| j["nestedPart"]["cardinality"] = json!(9)), |e| matches!(e, ContentError::UnknownCardinality(9))),
        (Box::new(|j| j["nestedPart"]["disposition"] = json!(300)), |e| {
            matches!(e, ContentError::DispositionOutOfRange(300))
        }),
        (
            Box::new(|j| {
                j["mimiExtensions"] = json!([[5, 1], [5, 2]]);
            }),
            |e| matches!(e, ContentError::DuplicateMapKey { .. }),
        ),
        (
            Box::new(|j| {
                j["mimiExtensions"] = json!([[1, "a"], [1, "b"]]);
            }),
            |e| matches!(e, ContentError::DuplicateMapKey { .. }),
        ),
        (Box::new(|j| j["mimiExtensions"] = json!([[1, 5]])), |e| {
            matches!(e, ContentError::KnownExtensionNotText { key: 1 })
        }),
        (Box::new(|j| j["mimiExtensions"] = json!([[7, {"cbor": "0102"}]])), |e| {
            matches!(e, ContentError::InvalidExtensionValue)
        }),
        (Box::new(|j| j["mimiExtensions"] = json!([["", 1]])), |e| matches!(e, ContentError::ExtensionKeyLength(0))),
    ];
    for (i, (mutate, expect)) in variants.iter().enumerate() {
        let mut j = good.clone();
        mutate(&mut j);
        let e = json::encode_from_json(&j.to_string()).expect_err("must fail");
        assert!(expect(&e), "case {i}: {e:?}");
    }
}

#[test]
fn message_id_hex_with_overrides() {
    let b = vector("original.cbor");
    assert_eq!(
        json::message_id_hex(&b, None, None).expect("id"),
        "017ce54837404c3696e0c747b985cb172716d0ed0a3d249ca63ace7d82a096f4"
    );
    let other = json::message_id_hex(&b, Some("mimi://example.com/u/mallory"), None).expect("id");
    assert_ne!(other, json::message_id_hex(&b, None, None).expect("id"));
    assert!(json::message_id_hex(b"\x00", None, None).is_err());
}
