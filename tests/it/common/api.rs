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
    let state = state(provider.clone(), format!("http://{addr}"), quotas);
    tokio::spawn(async move { axum::serve(listener, router(state)).await });
    addr
}

/// What the endpoints of a test provider reached at `url` need: open registration, no peers, `quotas`.
pub fn state(provider: Provider, url: String, quotas: mimi_provider::quota::QuotaConfig) -> MimiState {
    MimiState {
        provider,
        room: None,
        public_url: url,
        registration: Registration::Open,
        peers: Arc::new(mimi_bridge::mimi_http::http::Peers::default()),
        quotas,
        media: None,
    }
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

/// A native client's MLS identity `uri`, its keys in a store of their own (a folder per identity under `dir`).
pub async fn client_member(dir: &std::path::Path, uri: &str) -> (Arc<MlsBackend>, LocalMember) {
    let store = mimi_store::open_data_dir(
        &dir.join(uri.replace(['/', ':'], "_")),
        Some(Backend::Redb),
        CommitConfig::default(),
        &mimi_store::schema::Schema::FIRST,
    )
    .expect("client store");
    let backend = Arc::new(MlsBackend::new(store, "client").expect("backend"));
    let m = LocalMember::load_or_create(&backend, uri, openmls::prelude::SignatureScheme::ED25519)
        .expect("member")
        .durable()
        .await
        .expect("durable");
    (backend, m)
}

/// A new MLS group of `uri` for `room` (group id = the room's URI), its keys under `dir`.
pub async fn client_group(dir: &std::path::Path, uri: &str, room: &str) -> PortalGroup {
    let (backend, m) = client_member(dir, uri).await;
    PortalGroup::create(backend, Arc::new(m), &EngineConfig::default(), room.as_bytes()).durable().await.expect("group")
}

/// The GroupInfo (with the ratchet tree) of a new group `room` of `uri`, its keys under `dir`; the group too.
pub async fn group_info(dir: &std::path::Path, uri: &str, room: &str) -> (PortalGroup, MlsMessageBytes) {
    let g = client_group(dir, uri, room).await;
    let info = MlsMessageBytes::new(g.export_group_info(true).expect("group info")).expect("framed");
    (g, info)
}
