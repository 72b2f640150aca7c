use super::*;
use ruma::events::room::message::RoomMessageEventContent;

fn msgtype_of(content: Value) -> MessageType {
    serde_json::from_value::<RoomMessageEventContent>(content).expect("valid content").msgtype
}

#[test]
fn an_image_event_gives_its_mxc_uri_type_size_and_name() {
    let m = msgtype_of(json!({"msgtype": "m.image", "body": "cat.png", "url": "mxc://hs.test/abc",
                              "info": {"mimetype": "image/png", "size": 1234, "w": 2, "h": 3}}));
    let (a, caption) = inbound(&m).expect("media");
    assert_eq!(
        a,
        Attachment {
            url: "mxc://hs.test/abc".into(),
            media_type: "image/png".into(),
            size: Some(1234),
            filename: Some("cat.png".into()),
        }
    );
    assert_eq!(caption, None);
}

#[test]
fn a_filename_other_than_the_body_makes_the_body_a_caption() {
    let m = msgtype_of(json!({"msgtype": "m.file", "body": "the report", "filename": "r.pdf",
                              "url": "mxc://hs.test/r"}));
    let (a, caption) = inbound(&m).expect("media");
    assert_eq!((a.filename.as_deref(), caption.as_deref()), (Some("r.pdf"), Some("the report")));
    assert_eq!((a.media_type.as_str(), a.size), ("application/octet-stream", None), "no info: a generic file");
    for t in ["m.video", "m.audio"] {
        let m =
            msgtype_of(json!({"msgtype": t, "body": "x", "url": "mxc://hs.test/x", "info": {"mimetype": "video/mp4"}}));
        assert_eq!(inbound(&m).expect("media").0.media_type, "video/mp4", "{t}");
    }
}

#[test]
fn an_encrypted_file_keeps_its_key_to_the_download_and_text_is_no_file() {
    let file = json!({"url": "mxc://hs.test/e", "key": {"kty": "oct", "key_ops": ["encrypt", "decrypt"], "alg": "A256CTR",
                      "k": "qcHVMSgYg-71CauWBezXI5qkaRb0LuIy-Wx5kIaHMIA", "ext": true},
                      "iv": "X85+XgHN+HEAAAAAAAAAAA", "hashes": {"sha256": "5qG4fFnbbVdlAB1Q72JDKwCagV6Dbkx9uds4rSak37c"},
                      "v": "v2"});
    let m = msgtype_of(json!({"msgtype": "m.image", "body": "secret.png", "file": file}));
    assert!(inbound(&msgtype_of(json!({"msgtype": "m.text", "body": "hi"}))).is_none());
    // The file's key travels with its URI to the download, and back out of it.
    let (a, _) = inbound(&m).expect("media");
    assert!(is_mxc(&a.url) && a.url.starts_with("mxc://hs.test/e#"), "{}", a.url);
    assert_eq!(shown_url(&a.url), "mxc://hs.test/e", "the key is never shown");
    let back = encrypted_file(&a.url).expect("the encrypted file");
    assert_eq!(serde_json::to_value(&back).expect("json")["hashes"], file["hashes"]);
    assert!(encrypted_file("mxc://hs.test/plain").is_none());
}

#[test]
fn mxc_uris_split_into_server_and_media_id() {
    assert_eq!(mxc_parts("mxc://hs.test/abc"), Some(("hs.test", "abc")));
    for bad in ["https://hs.test/abc", "mxc://hs.test", "mxc:///abc", "mxc://hs.test/a/b", "mxc://hs.test/a?b"] {
        assert_eq!(mxc_parts(bad), None, "{bad}");
    }
    assert!(is_mxc("mxc://hs.test/abc") && !is_mxc("https://bridge.example.org/media/v1/t/x"));
}

#[test]
fn attachments_are_sent_as_the_message_type_of_their_media_type() {
    let a = |t: &str| Attachment { url: "u".into(), media_type: t.into(), size: Some(9), filename: None };
    let got: Vec<Value> = ["image/png", "video/webm", "audio/ogg", "application/pdf"]
        .iter()
        .map(|t| content(&a(t))["msgtype"].clone())
        .collect();
    assert_eq!(got, [json!("m.image"), json!("m.video"), json!("m.audio"), json!("m.file")]);
    let c = content(&Attachment { filename: Some("cat.png".into()), ..a("image/png") });
    assert_eq!(
        c,
        json!({"msgtype": "m.image", "body": "cat.png", "filename": "cat.png",
               "info": {"mimetype": "image/png", "size": 9}, "m.mentions": {}})
    );
}

#[test]
fn completing_adds_the_url_size_and_image_dimensions() {
    let mut png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
    png.extend_from_slice(&640u32.to_be_bytes());
    png.extend_from_slice(&480u32.to_be_bytes());
    let a = Attachment { url: "u".into(), media_type: "image/png".into(), size: None, filename: None };
    let mut c = content(&a);
    complete(&mut c, "mxc://hs.test/up", png.len(), image_size(&png));
    assert_eq!(c["url"], "mxc://hs.test/up");
    assert_eq!(c["info"], json!({"mimetype": "image/png", "size": png.len(), "w": 640, "h": 480}));
    assert_eq!(image_size(b"GIF89a\x10\x00\x20\x00rest"), Some((16, 32)));
    assert_eq!(image_size(b"\x89PNG\r\n\x1a\n"), None, "truncated");
    // A JPEG: SOI, an APP0 segment, then SOF0 (length 17, precision 8, height 480, width 640).
    let jpeg = b"\xff\xd8\xff\xe0\x00\x04ab\xff\xc0\x00\x11\x08\x01\xe0\x02\x80\x03";
    assert_eq!(image_size(jpeg), Some((640, 480)));
    assert_eq!(image_size(b"\xff\xd8\xff\xe0\x00\x04ab\xff\xda\x00\x02"), None, "no frame header before the scan");
    assert_eq!(image_size(b"\xff\xd8\xff\xe0\xff\xff"), None, "a segment longer than the file");
    assert_eq!(image_size(b"\xff\xd8\xff"), None, "truncated");
    let mut file = content(&Attachment { media_type: "application/pdf".into(), ..a });
    complete(&mut file, "mxc://hs.test/f", png.len(), Some((1, 1)));
    assert!(file["info"].get("w").is_none(), "only images have a size");
}

proptest::proptest! {
    /// Headers read from files of other networks never panic, whatever the bytes.
    #[test]
    fn any_bytes_give_a_size_or_none(tail in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64)) {
        for head in [&b"\xff\xd8"[..], b"\xff\xd8\xff\xc0", b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR", b"GIF89a"] {
            let _ = image_size(&[head, &tail].concat());
        }
    }
}
