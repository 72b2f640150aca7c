//! The client API's membership checks, over real HTTP: only a participant of a room may invite into it (claim a
//! KeyPackage "for" the room, which puts the invitee on the participant list) or publish its GroupInfo; an
//! invitee goes on the list only once a KeyPackage was actually claimed.

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use mimi_bridge::mimi_http::{MimiState, Registration, router};
use mimi_provider::{JoinPolicy, Provider};
use mimi_store::{Backend, CommitConfig};
use std::sync::Arc;

const ROOM: &str = "mimi://a.test/r/private";

async fn call(addr: &str, method: &str, path: &str, who: Option<&(String, String)>, body: &str) -> (u16, String) {
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
    let resp =
        send.send_request(req.body(Full::new(Bytes::from(body.to_owned()))).expect("request")).await.expect("answer");
    let status = resp.status().as_u16();
    (status, String::from_utf8_lossy(&resp.into_body().collect().await.expect("body").to_bytes()).into_owned())
}

async fn register(addr: &str, name: &str) -> (String, String) {
    let (status, body) = call(addr, "POST", "/client/v1/register", None, &format!(r#"{{"user":"{name}"}}"#)).await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    (v["uri"].as_str().expect("uri").to_owned(), v["token"].as_str().expect("token").to_owned())
}

#[tokio::test]
async fn only_participants_invite_or_publish_group_info() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = bridge_core::open_store(dir.path(), Some(Backend::Redb), CommitConfig::default()).expect("store");
    let provider = Provider::open("a.test", store).expect("provider");
    let alice = "mimi://a.test/u/alice";
    provider.create_room(ROOM, ROOM.as_bytes(), 0, alice, JoinPolicy::Invite, false).await.expect("room");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let state = MimiState {
        provider: provider.clone(),
        room: None,
        public_url: format!("http://{addr}"),
        registration: Registration::Open,
        peers: Arc::new(mimi_bridge::mimi_http::http::Peers::default()),
    };
    tokio::spawn(async move { axum::serve(listener, router(state)).await });
    let a = register(&addr, "alice").await;
    let m = register(&addr, "mallory").await;
    let path = |user: &str| format!("/client/v1/keyPackage/{user}?room={}", ROOM.trim_start_matches("mimi://"));

    // mallory, not a participant, cannot put herself (or anyone) on the invite-only room's list.
    let (status, body) = call(&addr, "POST", &path(&m.0), Some(&m), "").await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("not a participant"), "{body}");
    assert!(!provider.is_participant(ROOM, &m.0).expect("room"), "mallory stays off the list");
    // Nor publish the room's GroupInfo.
    let (status, body) =
        call(&addr, "PUT", &format!("/client/v1/groupInfo/{}", ROOM.trim_start_matches("mimi://")), Some(&m), "x")
            .await;
    assert_eq!(status, 403, "{body}");

    // alice may invite, but bob has no KeyPackage: no claim, so bob is not put on the list either.
    let bob = register(&addr, "bob").await;
    let (status, body) = call(&addr, "POST", &path(&bob.0), Some(&a), "").await;
    assert_eq!(status, 404, "{body}");
    assert!(!provider.is_participant(ROOM, &bob.0).expect("room"), "no KeyPackage claimed, no invite");
}
