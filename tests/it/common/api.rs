//! The client API over real HTTP/1.1, served in-process on a provider: raw requests with a user's credentials.

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use mimi_bridge::mimi_http::{MimiState, Registration, router};
use mimi_mls::{EngineConfig, LocalMember, MlsBackend, PortalGroup};
use mimi_protocol::wire::MlsMessageBytes;
use mimi_provider::Provider;
use mimi_store::{Backend, CommitConfig};
use std::sync::Arc;

/// A user's URI and API token.
pub type Who = (String, String);

/// Serves the MIMI endpoints and client API of `provider` (open registration) on a free loopback port; its
/// address.
pub async fn serve(provider: &Provider) -> String {
    serve_with(provider, Default::default()).await
}

/// [`serve`] with these per-user quotas.
pub async fn serve_with(provider: &Provider, quotas: mimi_provider::quota::QuotaConfig) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let state = MimiState {
        provider: provider.clone(),
        room: None,
        public_url: format!("http://{addr}"),
        registration: Registration::Open,
        peers: Arc::new(mimi_bridge::mimi_http::http::Peers::default()),
        quotas,
    };
    tokio::spawn(async move { axum::serve(listener, router(state)).await });
    addr
}

/// One request with `body`, as `who` if given; the status and the body of the answer (as text).
pub async fn call(addr: &str, method: &str, path: &str, who: Option<&Who>, body: impl Into<Bytes>) -> (u16, String) {
    let (status, body) = request(addr, method, path, who, body).await;
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// One request with `body`, as `who` if given; the status and the bytes of the answer.
pub async fn request(
    addr: &str,
    method: &str,
    path: &str,
    who: Option<&Who>,
    body: impl Into<Bytes>,
) -> (u16, Vec<u8>) {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.expect("http");
    tokio::spawn(conn);
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr)
        .header("content-type", "application/json");
    if let Some((uri, token)) = who {
        req = req.header("authorization", format!("Bearer {token}")).header("mimi-user", uri);
    }
    let resp = send.send_request(req.body(Full::new(body.into())).expect("request")).await.expect("answer");
    let status = resp.status().as_u16();
    (status, resp.into_body().collect().await.expect("body").to_bytes().to_vec())
}

/// Registers `name`; panics unless it worked.
pub async fn register(addr: &str, name: &str) -> Who {
    let (status, body) = call(addr, "POST", "/client/v1/register", None, format!(r#"{{"user":"{name}"}}"#)).await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    (v["uri"].as_str().expect("uri").to_owned(), v["token"].as_str().expect("token").to_owned())
}

/// The GroupInfo (with the ratchet tree) of a new group `room` of `uri`, its keys in a store under `dir`.
pub async fn group_info(dir: &std::path::Path, uri: &str, room: &str) -> (mimi_store::Store, MlsMessageBytes) {
    let store = mimi_store::open_data_dir(
        &dir.join("keys"),
        Some(Backend::Redb),
        CommitConfig::default(),
        &mimi_store::schema::Schema::FIRST,
    )
    .expect("store");
    let p = Arc::new(MlsBackend::new(store.clone(), "t").expect("provider"));
    let m = LocalMember::load_or_create(&p, uri, openmls::prelude::SignatureScheme::ED25519)
        .expect("member")
        .durable()
        .await
        .expect("durable");
    let g =
        PortalGroup::create(p, Arc::new(m), &EngineConfig::default(), room.as_bytes()).durable().await.expect("group");
    (store, MlsMessageBytes::new(g.export_group_info(true).expect("group info")).expect("framed"))
}
