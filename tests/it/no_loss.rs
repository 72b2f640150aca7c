//! A native client loses no message when a command fails after its catch-up decrypted it: the plaintext is kept
//! in the store with the ratchet step that consumed it, and the next `listen` prints it.

use crate::client_support::{client, texts, try_client};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Starts a TCP relay to `target` (`http://HOST:PORT`) that passes every request through except
/// `POST /client/v1/submit/…`, which it answers with a 500 of its own; returns its base URL.
fn refusing_submits(rt: &tokio::runtime::Runtime, target: &str) -> String {
    let target = target.trim_start_matches("http://").to_owned();
    rt.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                tokio::spawn(relay(conn, target.clone()));
            }
        });
        url
    })
}

/// Relays one connection (the client makes one per request).
async fn relay(mut conn: TcpStream, target: String) {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(2).any(|w| w == b"\r\n") {
        match conn.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    if head.starts_with(b"POST /client/v1/submit/") {
        let body = "refused by the test";
        let answer = format!("HTTP/1.1 500 Internal Server Error\r\ncontent-length: {}\r\n\r\n{body}", body.len());
        let _ = conn.write_all(answer.as_bytes()).await;
        return;
    }
    let Ok(mut upstream) = TcpStream::connect(&target).await else { return };
    if upstream.write_all(&head).await.is_ok() {
        let _ = tokio::io::copy_bidirectional(&mut conn, &mut upstream).await;
    }
}

#[test]
fn a_failed_send_keeps_what_its_catch_up_decrypted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let server = crate::client_support::server::serve(&rt, &dir.path().join("daemon"), "a.test", None);
    let refusing = refusing_submits(&rt, &server);
    let (a, b) = (dir.path().join("alice"), dir.path().join("bob"));
    client(&a, &server, &["register", "alice"]);
    client(&b, &server, &["register", "bob"]);
    let room = client(&a, &server, &["create-room", "club"]).lines().last().expect("room line").to_owned();
    client(&a, &server, &["invite", &room, "bob"]);
    client(&b, &server, &["join", &room]);
    client(&a, &server, &["send", &room, "first"]);
    client(&a, &server, &["send", &room, "second"]);

    // Bob's send catches up (decrypting alice's two messages), then the submit fails.
    let failed = try_client(&b, &refusing, &["send", &room, "never arrives"]);
    assert!(!failed.status.success(), "the send through the refusing relay failed");
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(stderr.contains("HTTP 500"), "{stderr}");

    // What the catch-up decrypted is still there, once (a `--count` that stops early leaves the rest).
    let got = client(&b, &server, &["listen", &room, "--json", "--count", "1", "--timeout", "2"]);
    assert_eq!(texts(&got), ["first"]);
    assert_eq!(texts(&client(&b, &server, &["listen", &room, "--json", "--timeout", "2"])), ["second"]);
    assert_eq!(client(&b, &server, &["listen", &room, "--json", "--timeout", "1"]), "");

    // Bob's group goes on: his next message arrives, and so do alice's.
    client(&b, &server, &["send", &room, "made it"]);
    assert_eq!(
        texts(&client(&a, &server, &["listen", &room, "--json", "--count", "1", "--timeout", "10"])),
        ["made it"]
    );
    client(&a, &server, &["send", &room, "third"]);
    assert_eq!(texts(&client(&b, &server, &["listen", &room, "--json", "--count", "1", "--timeout", "10"])), ["third"]);
    drop(rt);
}
