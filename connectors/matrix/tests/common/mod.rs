//! What the Synapse tests of both modes share: a plain Matrix client of the test users (reqwest on the
//! client-server API), a router on a fresh store, and waits on what an account or a leg shows.
#![allow(dead_code)] // each test crate uses its part

use bridge_api::{Account, Health};
use harness::MatrixUser;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A Matrix user of the tests, on the client-server API.
pub struct Client {
    pub http: reqwest::Client,
    pub base: String,
    pub user: MatrixUser,
    pub since: Option<String>,
}

pub static TXN: AtomicU64 = AtomicU64::new(0);

impl Client {
    pub fn new(base: &str, user: MatrixUser) -> Self {
        Self { http: reqwest::Client::new(), base: base.to_owned(), user, since: None }
    }

    pub async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Result<Value, String> {
        let mut req = self.http.request(method, format!("{}{path}", self.base)).bearer_auth(&self.user.access_token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        if status.is_success() { Ok(v) } else { Err(format!("{path}: {status} {v}")) }
    }

    pub async fn send(&self, room: &str, event_type: &str, content: Value) -> Result<String, String> {
        let txn = TXN.fetch_add(1, Ordering::SeqCst);
        let path = format!("/_matrix/client/v3/rooms/{}/send/{event_type}/t{txn}", enc(room));
        let v = self.call(reqwest::Method::PUT, &path, Some(content)).await?;
        v["event_id"].as_str().map(str::to_owned).ok_or_else(|| format!("no event id: {v}"))
    }

    pub async fn join(&self, room: &str) -> Result<(), String> {
        self.call(reqwest::Method::POST, &format!("/_matrix/client/v3/join/{}", enc(room)), Some(json!({})))
            .await
            .map(drop)
    }

    /// The timeline events of `room` since the last call, waiting up to `wait` for some.
    pub async fn sync(&mut self, room: &str, wait: Duration) -> Result<Vec<Value>, String> {
        let mut path = format!("/_matrix/client/v3/sync?timeout={}", wait.as_millis());
        if let Some(s) = &self.since {
            path.push_str(&format!("&since={}", enc(s)));
        }
        let v = self.call(reqwest::Method::GET, &path, None).await?;
        self.since = v["next_batch"].as_str().map(str::to_owned);
        Ok(v["rooms"]["join"][room]["timeline"]["events"].as_array().cloned().unwrap_or_default())
    }
}

/// Percent-encodes a path segment.
pub fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Waits until `account` reports `want`.
pub async fn wait_health(account: &Arc<dyn Account>, want: impl Fn(&Health) -> bool, what: &str) {
    let mut h = account.health();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !want(&h.borrow_and_update()) {
        tokio::time::timeout_at(deadline, h.changed())
            .await
            .unwrap_or_else(|_| panic!("{what} in time: {:?}", *h.borrow()))
            .expect("health");
    }
}

/// The first message event with `body` in the room, waiting for it.
pub async fn await_body(c: &Client, room: &str, body: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let path = format!("/_matrix/client/v3/rooms/{}/messages?dir=f&limit=200", enc(room));
        let v = c.call(reqwest::Method::GET, &path, None).await.expect("messages");
        if let Some(e) = v["chunk"].as_array().into_iter().flatten().find(|e| e["content"]["body"] == body) {
            return e.clone();
        }
        assert!(tokio::time::Instant::now() < deadline, "{body:?} never arrived");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A router on a fresh store.
pub async fn router() -> (bridge_core::router::RouterHandle, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store =
        bridge_core::open_store(dir.path(), Some(mimi_store::Backend::Redb), mimi_store::CommitConfig::default())
            .expect("store");
    let router = bridge_core::router::RouterHandle::start(
        bridge_core::router::RouterConfig::new("b.test"),
        store,
        Arc::new(bridge_core::room_of_record::LocalRoom),
    )
    .await
    .expect("router");
    (router, dir)
}

/// The message bodies the loopback leg was given, in order.
pub fn delivered_bodies(lb: &bridge_testkit::loopback::LoopbackNetwork) -> Vec<String> {
    use bridge_api::event::OutboundKind;
    lb.delivered()
        .into_iter()
        .filter_map(|e| match e.kind {
            OutboundKind::Message { draft, .. } => Some(draft.body),
            _ => None,
        })
        .collect()
}

/// Waits until the loopback leg was given `body`; returns every body it was given.
pub async fn await_delivered(lb: &bridge_testkit::loopback::LoopbackNetwork, body: &str) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let bodies = delivered_bodies(lb);
        if bodies.iter().any(|b| b == body) {
            return bodies;
        }
        assert!(tokio::time::Instant::now() < deadline, "{body:?} never reached the portal: {bodies:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A valid 2×3 RGB PNG.
pub const PNG: &str = "89504e470d0a1a0a0000000d4948445200000002000000030802000000368849d60000001049444154789c63f8cfc000440c28\
                   140044d005fba4cfde800000000049454e44ae426082";

/// The daemon's media store as an account sees it: what it was given, by the link it answered (the store itself is
/// tested in `bridge-media`; here it only shows which bytes the account fetched).
#[derive(Default)]
pub struct Kept(pub std::sync::Mutex<Vec<(String, Vec<u8>, String)>>);

#[async_trait::async_trait]
impl bridge_api::MediaStore for Kept {
    async fn put(
        &self,
        bytes: Vec<u8>,
        media_type: &str,
        filename: Option<&str>,
    ) -> Result<bridge_api::event::Attachment, bridge_api::MediaError> {
        let mut kept = self.0.lock().expect("lock");
        let url = format!("https://media.test/{}", kept.len());
        kept.push((url.clone(), bytes.clone(), media_type.to_owned()));
        let (media_type, filename) = (media_type.to_owned(), filename.map(str::to_owned));
        Ok(bridge_api::event::Attachment { url, media_type, size: Some(bytes.len() as u64), filename })
    }

    async fn import(
        &self,
        _url: &str,
        _name: Option<&str>,
    ) -> Result<bridge_api::event::Attachment, bridge_api::MediaError> {
        Err(bridge_api::MediaError::Io("no imports in this test".into()))
    }

    async fn get(&self, url: &str) -> Result<Option<(Vec<u8>, String)>, bridge_api::MediaError> {
        let kept = self.0.lock().expect("lock");
        Ok(kept.iter().find(|(u, ..)| u == url).map(|(_, b, t)| (b.clone(), t.clone())))
    }
}

/// `user_id`'s end-to-end-encrypting client (password `pw-` and its localpart, a device of its own, its store in
/// `store`, decrypting what `trust` lets it) and `room`, once it sees `member` in it.
pub async fn encrypting_client(
    hs_url: &str,
    user_id: &str,
    store: &std::path::Path,
    trust: matrix_sdk_crypto::TrustRequirement,
    room: &str,
    member: &str,
) -> (matrix_sdk::Client, matrix_sdk::Room) {
    let share = matrix_sdk_crypto::CollectStrategy::AllDevices;
    encrypting_client_sharing(hs_url, user_id, store, trust, share, room, member).await
}

/// [`encrypting_client`] sharing its room keys as `share` says (`OnlyTrustedDevices`: a device the user has not
/// verified gets an `m.room_key.withheld` instead).
pub async fn encrypting_client_sharing(
    hs_url: &str,
    user_id: &str,
    store: &std::path::Path,
    trust: matrix_sdk_crypto::TrustRequirement,
    share: matrix_sdk_crypto::CollectStrategy,
    room: &str,
    member: &str,
) -> (matrix_sdk::Client, matrix_sdk::Room) {
    use matrix_sdk::config::SyncSettings;
    let settings = matrix_sdk_crypto::DecryptionSettings { sender_device_trust_requirement: trust };
    let client = matrix_sdk::Client::builder()
        .homeserver_url(hs_url)
        .sqlite_store(store, None)
        .with_decryption_settings(settings)
        .with_room_key_recipient_strategy(share)
        .build()
        .await
        .expect("client");
    let localpart = user_id.trim_start_matches('@').split(':').next().unwrap_or_default();
    client.matrix_auth().login_username(user_id, &format!("pw-{localpart}")).send().await.expect("logs in");
    let room_id = matrix_sdk::ruma::OwnedRoomId::try_from(room).expect("room id");
    let member = matrix_sdk::ruma::OwnedUserId::try_from(member).expect("member id");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        client.sync_once(SyncSettings::default().timeout(Duration::from_secs(1))).await.expect("sync");
        if let Some(room) = client.get_room(&room_id)
            && room.get_member_no_sync(&member).await.ok().flatten().is_some()
        {
            return (client, room);
        }
        assert!(tokio::time::Instant::now() < deadline, "{user_id} never saw {member} join");
    }
}

/// Waits until the loopback leg was given a message with a file; returns its first file.
pub async fn await_delivered_file(lb: &bridge_testkit::loopback::LoopbackNetwork) -> bridge_api::event::Attachment {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let file = lb.delivered().into_iter().find_map(|e| match e.kind {
            bridge_api::OutboundKind::Message { draft, .. } => draft.attachments.into_iter().next(),
            _ => None,
        });
        if let Some(f) = file {
            return f;
        }
        assert!(tokio::time::Instant::now() < deadline, "no file reached the portal");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
