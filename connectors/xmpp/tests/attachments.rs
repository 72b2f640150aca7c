//! Attachments through the daemon's media store against a real Prosody: an XMPP user's upload (XEP-0363 style:
//! the URL as body and as XEP-0066 OOB) is fetched into the store and reaches the core as the store's file; a
//! file too large for the store stays a link with the reason; a MIMI attachment reaches the room as its public
//! link, as body and OOB; a slow download holds up the messages after it, in order, but not the stream.

mod common;

use bridge_api::event::{Attachment, MessageDraft, OutboundKind};
use bridge_api::media::MediaStore;
use bridge_api::{AccountContext, AccountId, Connector};
use bridge_media::fetch::Fetcher;
use bridge_media::{FileMediaStore, MediaConfig};
use common::{ROOM, RecordingRoute, join, message_event, room, send_like_the_core};
use connector_xmpp::client::Transport;
use connector_xmpp::{Config, XmppConnector, oob};
use harness::Prosody;
use minidom::Element;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use xmpp_parsers::jid::Jid;
use xmpp_parsers::message::{Lang, Message, MessageType};
use xmpp_parsers::stanza::Stanza;

/// An HTTP server on loopback answering every request with `content` as `image/png`; its URL for `name`.
async fn serve(content: Vec<u8>, name: &str) -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = l.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let mut buf = [0u8; 2048];
            let _ = s.read(&mut buf).await;
            let head =
                format!("HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: {}\r\n\r\n", content.len());
            let _ = s.write_all(head.as_bytes()).await;
            let _ = s.write_all(&content).await;
        }
    });
    format!("http://127.0.0.1:{port}/up/{name}")
}

/// An HTTP server on loopback that answers every request with `content` only after `delay`; its URL for `name`.
async fn serve_slowly(content: Vec<u8>, name: &str, delay: Duration) -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = l.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let content = content.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 2048];
                let _ = s.read(&mut buf).await;
                tokio::time::sleep(delay).await;
                let head =
                    format!("HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: {}\r\n\r\n", content.len());
                let _ = s.write_all(head.as_bytes()).await;
                let _ = s.write_all(&content).await;
            });
        }
    });
    format!("http://127.0.0.1:{port}/up/{name}")
}

/// The daemon's media store in `dir`, fetching from loopback (the test's file servers).
fn media_store(dir: &std::path::Path) -> Arc<FileMediaStore> {
    let roots = bridge_net::tls::roots(None, "media").expect("roots");
    Arc::new(
        FileMediaStore::open(
            MediaConfig {
                dir: dir.join("media"),
                public_url: "https://bridge.example/".into(),
                max_bytes: 1000,
                quota_bytes: 100_000,
                retention: None,
            },
            // The test's file server is on loopback: the guard's internal-address check is off for this test only.
            Fetcher::new(roots, true).expect("fetcher"),
        )
        .expect("media store"),
    )
}

/// A Prosody with users `alice` and `bridge`, and a client-mode account of the bridge on it with a media store,
/// joined to the room.
struct MediaBridge {
    server: Prosody,
    _dir: tempfile::TempDir,
    store: Arc<FileMediaStore>,
    id: AccountId,
    route: RecordingRoute,
    account: Arc<dyn bridge_api::Account>,
}

async fn bridge_with_media() -> MediaBridge {
    let server = Prosody::start().expect("prosody starts (installed by ./scripts/test)");
    server.register("alice", "pw-alice").expect("register");
    server.register("bridge", "pw-bridge").expect("register");
    let dir = tempfile::tempdir().expect("tempdir");
    let store = media_store(dir.path());
    let id = AccountId::new("xmpp", "m").expect("account id");
    let mut config = Config::client(server.c2s_addr(), "bridge@localhost", "pw-bridge");
    config.transport = Transport::InsecureTcp;
    let route = RecordingRoute::default();
    let ctx = AccountContext::new(id.clone(), route.clone(), "bridge.test").with_media(store.clone());
    let account = XmppConnector.start(id.clone(), config, ctx).await.expect("start");
    common::joined(account.as_ref()).await;
    MediaBridge { server, _dir: dir, store, id, route, account }
}

/// An upload announcement: the URL as body and as OOB.
fn upload(url: &str) -> Message {
    let mut m = Message::new_with_type(MessageType::Groupchat, Some(Jid::from(room())));
    m.bodies.insert(Lang::new(), url.to_owned());
    m.payloads.push(Element::builder("x", oob::OOB).append(Element::builder("url", oob::OOB).append(url)).build());
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_travel_through_the_media_store_both_ways() {
    let MediaBridge { server, _dir, store, id, route, account } = bridge_with_media().await;
    let mut alice = join(&server, "alice").await.expect("alice joins");

    // XMPP → MIMI: the file is fetched into the store.
    let png = b"\x89PNG fake image bytes".to_vec();
    let url = serve(png.clone(), "cat.png").await;
    alice.outbound.send(Stanza::Message(upload(&url))).await.expect("alice uploads");
    let big = serve(vec![7u8; 5000], "big.bin").await;
    alice.outbound.send(Stanza::Message(upload(&big))).await.expect("alice uploads a large file");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while route.drafts().len() < 2 {
        assert!(tokio::time::Instant::now() < deadline, "the uploads reached the core: {:?}", route.drafts());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let drafts = route.drafts();
    assert_eq!(drafts[0].body, "", "the upload's URL body is not kept as text");
    assert_eq!(drafts[0].attachments.len(), 1, "{drafts:?}");
    let stored = &drafts[0].attachments[0];
    assert!(stored.url.starts_with("https://bridge.example/media/v1/"), "the store's link: {stored:?}");
    assert_eq!(stored.filename.as_deref(), Some("cat.png"));
    let (bytes, media_type) = store.get(&stored.url).await.expect("get").expect("the store holds the file");
    assert_eq!((bytes, media_type.as_str()), (png, "image/png"));
    assert!(drafts[1].attachments.is_empty(), "too large for the store: {drafts:?}");
    assert!(drafts[1].body.contains(&big) && drafts[1].body.contains("not bridged"), "{}", drafts[1].body);

    // MIMI → XMPP: the store's public link, as the body and as OOB.
    let file: Attachment = store.put(b"report".to_vec(), "text/plain", Some("report.txt")).await.expect("put");
    let mut event = message_event(id.clone(), ROOM, 3, "bob", "");
    event.kind = OutboundKind::Message {
        draft: MessageDraft { attachments: vec![file.clone()], ..MessageDraft::plain("") },
        reply_to: None,
    };
    send_like_the_core(account.as_ref(), &event, Duration::from_secs(20)).await.expect("delivered");
    let got = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Some(Stanza::Message(m)) = alice.inbound.recv().await
                && m.from.as_ref().and_then(|f| f.resource()).map(|r| r.as_str()) == Some("mimi-bridge")
                && m.payloads.iter().any(|p| p.is("x", oob::OOB))
            {
                return m;
            }
        }
    })
    .await
    .expect("alice sees the file");
    let body = got.bodies.values().next().cloned().unwrap_or_default();
    assert!(body.ends_with(&file.url), "the link is in the body: {body}");
    let x = got.payloads.iter().find(|p| p.is("x", oob::OOB)).expect("oob");
    assert_eq!(x.get_child("url", oob::OOB).map(Element::text), Some(file.url.clone()));
    account.shutdown().await;
}

/// While an XMPP user's file takes 5 s to download, the stream goes on: a message from MIMI reaches the room (its
/// reflection is read from the stream) long before the download ends. The user's next message still reaches the
/// core after the file's, in order. When the download held up the stream, the send waited for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_download_holds_up_the_messages_after_it_but_not_the_stream() {
    let MediaBridge { server, _dir, store: _, id, route, account } = bridge_with_media().await;
    let alice = join(&server, "alice").await.expect("alice joins");
    // The stream is up and the room caught up: a first send goes through.
    let first = message_event(id.clone(), ROOM, 1, "bob", "hello");
    send_like_the_core(account.as_ref(), &first, Duration::from_secs(20)).await.expect("delivered");

    let download = Duration::from_secs(5);
    let url = serve_slowly(b"\x89PNG slow".to_vec(), "slow.png", download).await;
    let started = tokio::time::Instant::now();
    alice.outbound.send(Stanza::Message(upload(&url))).await.expect("alice uploads");
    let mut after = Message::new_with_type(MessageType::Groupchat, Some(Jid::from(room())));
    after.bodies.insert(Lang::new(), "after the file".to_owned());
    alice.outbound.send(Stanza::Message(after)).await.expect("alice speaks");
    tokio::time::sleep(Duration::from_millis(500)).await;

    let during = message_event(id.clone(), ROOM, 2, "bob", "while the file downloads");
    account.send(&during).await.expect("delivered while the file downloads");
    let sent_after = started.elapsed();
    assert!(sent_after < Duration::from_secs(3), "the send waited {sent_after:?} for the download");
    assert!(route.drafts().is_empty(), "nothing overtook the file: {:?}", route.drafts());

    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while route.drafts().len() < 2 {
        assert!(tokio::time::Instant::now() < deadline, "alice's messages reached the core: {:?}", route.drafts());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let drafts = route.drafts();
    assert_eq!(drafts[0].attachments.len(), 1, "the file first: {drafts:?}");
    assert!(started.elapsed() >= download, "the file was fetched, not passed on as a link: {drafts:?}");
    assert_eq!(drafts[1].body, "after the file", "then the message after it: {drafts:?}");
    account.shutdown().await;
}
