//! The media store's files over real HTTP: served decrypted as downloads with safe headers, unknown or malformed
//! links 404; the daemon opens the store at start and warns when its links would point at loopback.

use crate::common::{Daemon, write_config};
use bridge_api::media::MediaStore;
use bridge_media::fetch::Fetcher;
use bridge_media::{FileMediaStore, MediaConfig};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use mimi_bridge::mimi_http::router;
use mimi_provider::Provider;
use mimi_store::{Backend, CommitConfig};
use std::sync::Arc;
use std::time::Duration;

/// GET `path` from `addr`: status, headers, body.
pub(crate) async fn get(addr: &str, path: &str) -> (u16, hyper::HeaderMap, Vec<u8>) {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.expect("http");
    tokio::spawn(conn);
    let req = hyper::Request::get(path).header("host", addr).body(Empty::<Bytes>::new()).expect("request");
    let resp = send.send_request(req).await.expect("answer");
    let (status, headers) = (resp.status().as_u16(), resp.headers().clone());
    (status, headers, resp.into_body().collect().await.expect("body").to_bytes().to_vec())
}

#[tokio::test]
async fn stored_files_are_served_as_downloads_and_unknown_links_are_not() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store =
        bridge_core::open_store(&dir.path().join("data"), Some(Backend::Redb), CommitConfig::default()).expect("store");
    let provider = Provider::open("a.test", store).expect("provider");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let config = MediaConfig {
        dir: dir.path().join("media"),
        public_url: format!("http://{addr}"),
        max_bytes: 1 << 20,
        quota_bytes: 1 << 24,
        retention: None,
    };
    let fetcher = Fetcher::new(rustls::RootCertStore::empty(), false).expect("fetcher");
    let media = Arc::new(FileMediaStore::open(config, fetcher).expect("media"));
    let mut state = crate::common::api::state(provider, format!("http://{addr}"), Default::default());
    state.media = Some(media.clone());
    tokio::spawn(async move { axum::serve(listener, router(state)).await });

    let png = media.put(b"\x89PNG pixels".to_vec(), "image/png", Some("cat.png")).await.expect("put");
    let path = png.url.strip_prefix(&format!("http://{addr}")).expect("our link");
    let (status, h, body) = get(&addr, path).await;
    assert_eq!((status, body.as_slice()), (200, &b"\x89PNG pixels"[..]));
    assert_eq!(h["content-type"], "image/png");
    assert_eq!(h["content-disposition"], "attachment; filename=\"cat.png\"");
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert!(h["content-security-policy"].to_str().expect("ascii").starts_with("sandbox"));

    // HTML from another network is never served as HTML from the daemon's origin.
    let html = media.put(b"<script>alert(1)</script>".to_vec(), "text/html", Some("x.html")).await.expect("put");
    let (status, h, _) = get(&addr, html.url.strip_prefix(&format!("http://{addr}")).expect("ours")).await;
    assert_eq!((status, h["content-type"].to_str().expect("ascii")), (200, "application/octet-stream"));

    for bad in ["/media/v1/0123456789abcdef0123456789abcdef/x", "/media/v1/..%2F..%2Fetc/passwd", "/media/v1/x/y"] {
        assert_eq!(get(&addr, bad).await.0, 404, "{bad}");
    }
}

#[test]
fn the_daemon_warns_when_media_links_would_point_at_loopback() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cfg, _) = write_config(dir.path(), "");
    let mut d = Daemon::start(&cfg, &[]);
    assert!(d.wait_line("media links point at a loopback address", Duration::from_secs(5)), "{}", d.log());
    assert!(dir.path().join("data/media").is_dir(), "the store is under the data dir");
}
