//! Files through the real daemon between a Matrix room (appservice mode, real Synapse) and a native MLS client: a
//! Matrix user's image is downloaded through authenticated media into the daemon's store and reaches the native
//! client as a MIMI external part whose link and key give back the same bytes; the native client's image (an
//! external part on a file host of its own) is uploaded as its ghost and arrives as an `m.image` with its size,
//! dimensions, media type and name, whose download gives back the same bytes. A file's caption is the text; a file
//! the homeserver does not have is named in the text with the reason.

use crate::common::client::client;
use crate::matrix_daemon::{Bridge, ROOM, await_matrix, hear, send, start_bridge};
use mimi_content::model::{EncAlg, ExternalPart, HashAlg};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;

/// A valid 2×3 RGB PNG.
const PNG: &str = "89504e470d0a1a0a0000000d4948445200000002000000030802000000368849d60000001049444154789c63f8cfc000440c28\
                   140044d005fba4cfde800000000049454e44ae426082";

/// Serves the files of `dir` over HTTP on a loopback port (a native client's file host); the port.
fn serve_dir(dir: PathBuf) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().map_while(Result::ok) {
            let mut line = String::new();
            let _ = BufReader::new(&conn).read_line(&mut line);
            let name = line.split(' ').nth(1).unwrap_or("/").trim_start_matches('/').to_owned();
            let answer = match std::fs::read(dir.join(&name)).ok().filter(|_| !name.contains("..")) {
                Some(body) => {
                    let head =
                        format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
                    [head.into_bytes(), body].concat()
                }
                None => b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec(),
            };
            let _ = conn.write_all(&answer);
        }
    });
    port
}

/// Downloads and decrypts an attachment as `listen --json` describes it.
fn open_attachment(a: &Value) -> Vec<u8> {
    let url = a["url"].as_str().expect("url");
    let (addr, path) = url.strip_prefix("http://").and_then(|r| r.split_once('/')).expect("an http link");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (status, _, ciphertext) = rt.block_on(crate::media::get(addr, &format!("/{path}")));
    assert_eq!(status, 200, "{url}");
    let bytes = |k: &str| hex::decode(a[k].as_str().expect(k)).expect("hex");
    assert_eq!((a["enc_alg"].as_u64(), a["hash_alg"].as_u64()), (Some(1), Some(1)), "AES-128-GCM, SHA-256: {a}");
    let part = ExternalPart {
        content_type: a["content_type"].as_str().expect("type").to_owned(),
        url: url.to_owned(),
        expires: 0,
        size: a["size"].as_u64().expect("size"),
        enc_alg: EncAlg::AES_128_GCM,
        key: bytes("key"),
        nonce: bytes("nonce"),
        aad: Vec::new(),
        hash_alg: HashAlg::Sha256,
        content_hash: bytes("content_hash"),
        description: String::new(),
        filename: a["filename"].as_str().unwrap_or_default().to_owned(),
    };
    mimi_content::attachment::verify_and_decrypt(&part, &ciphertext).expect("the hash matches and it decrypts")
}

#[test]
fn an_image_crosses_both_ways_between_a_matrix_room_and_a_native_client() {
    let Bridge { dir, hs, mx, room, mut d, server, alice, .. } =
        start_bridge("\n[media]\nallow_internal_fetch = true\n");
    let png = hex::decode(PNG).expect("hex");

    // Matrix → native client: uploaded by the Matrix user, sent as m.image.
    let (status, up) = hs
        .request_raw("POST", "/_matrix/media/v3/upload?filename=cat.png", Some(&mx.access_token), "image/png", &png)
        .expect("upload");
    let up: Value = serde_json::from_slice(&up).expect("json");
    assert_eq!(status, 200, "{up}");
    let mxc = up["content_uri"].as_str().expect("content uri");
    let image = json!({"msgtype": "m.image", "body": "cat.png", "url": mxc,
                       "info": {"mimetype": "image/png", "size": png.len(), "w": 2, "h": 3}});
    send(&hs, &mx, &room, "img1", "m.room.message", image);
    let got = hear(&alice, &server, 1);
    let files = got[0]["attachments"].as_array().expect("attachments");
    assert_eq!(files.len(), 1, "{got:?}");
    assert_eq!(
        (files[0]["content_type"].as_str(), files[0]["filename"].as_str()),
        (Some("image/png"), Some("cat.png"))
    );
    assert_eq!(open_attachment(&files[0]), png, "the native client gets the Matrix user's bytes");

    // A file with a caption (Matrix v1.10: a filename other than the body); a file the homeserver does not have is
    // named in the text with the reason, not dropped.
    let (_, up) = hs
        .request_raw("POST", "/_matrix/media/v3/upload", Some(&mx.access_token), "application/pdf", b"%PDF-1.7 report")
        .expect("upload");
    let up: Value = serde_json::from_slice(&up).expect("json");
    let report = json!({"msgtype": "m.file", "body": "the report", "filename": "r.pdf",
                        "url": up["content_uri"], "info": {"mimetype": "application/pdf"}});
    send(&hs, &mx, &room, "file1", "m.room.message", report);
    let gone = json!({"msgtype": "m.image", "body": "gone.png", "url": "mxc://hs.test/nosuchfile",
                      "info": {"mimetype": "image/png"}});
    send(&hs, &mx, &room, "img2", "m.room.message", gone);
    let got = hear(&alice, &server, 2);
    assert_eq!(got[0]["text"], "the report", "{got:?}");
    let files = got[0]["attachments"].as_array().expect("attachments");
    assert_eq!((files.len(), files[0]["filename"].as_str()), (1, Some("r.pdf")), "{got:?}");
    assert_eq!(open_attachment(&files[0]), b"%PDF-1.7 report");
    let note = got[1]["text"].as_str().expect("text");
    assert!(note.starts_with("[attachment gone.png not bridged: ") && note.contains("M_NOT_FOUND"), "{got:?}");
    assert_eq!(got[1]["attachments"], json!([]), "{got:?}");

    // Native client → Matrix: an external part on the client's own file host, sent on as its ghost.
    let host = dir.path().join("files");
    std::fs::create_dir(&host).expect("mkdir");
    let port = serve_dir(host.clone());
    let picture = dir.path().join("dog.png");
    std::fs::write(&picture, &png).expect("write");
    client(
        &alice,
        &server,
        &[
            "send",
            ROOM,
            "a picture",
            "--attach",
            picture.to_str().expect("utf-8"),
            "--attach-type",
            "image/png",
            "--upload-dir",
            host.to_str().expect("utf-8"),
            "--upload-url",
            &format!("http://127.0.0.1:{port}"),
        ],
    );
    let text = await_matrix(&hs, &mx, &room, "the text", |e| e["content"]["body"] == "a picture");
    let ev = await_matrix(&hs, &mx, &room, "the image", |e| {
        e["content"]["msgtype"] == "m.image" && e["sender"] != mx.user_id.as_str()
    });
    assert_eq!(ev["sender"], text["sender"], "both as alice's ghost: {ev}");
    let c = &ev["content"];
    assert_eq!((c["body"].as_str(), c["filename"].as_str()), (Some("dog.png"), Some("dog.png")), "{ev}");
    assert_eq!(c["info"], json!({"mimetype": "image/png", "size": png.len(), "w": 2, "h": 3}), "{ev}");
    let mxc = c["url"].as_str().expect("mxc url");
    let (server_name, media_id) = mxc.strip_prefix("mxc://").and_then(|r| r.split_once('/')).expect("mxc");
    let path = format!("/_matrix/client/v1/media/download/{server_name}/{media_id}");
    let (status, bytes) =
        hs.request_raw("GET", &path, Some(&mx.access_token), "application/json", &[]).expect("download");
    assert_eq!((status, bytes), (200, png), "the Matrix user gets the native client's bytes");
    assert_eq!(d.terminate(std::time::Duration::from_secs(30)), Some(0));
}
