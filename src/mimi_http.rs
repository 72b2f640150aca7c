//! The MIMI endpoints (draft-ietf-mimi-protocol-06 §5) and the client API for native MLS users, over axum.
//! Thin: every decision is taken by `bridge_core::provider` ([`Provider`], [`MlsRoom`]).
//!
//! # Provider-to-provider (`/v1/...`), bodies in TLS presentation language
//!
//! `{roomId}` is the room URI without `mimi://` (`a.example/r/clubhouse`). The source provider names itself in
//! `From: mimi@DOMAIN`; in the plain-HTTP development mode that header is trusted (loopback only), and a peer
//! must be configured (`[[mimi.peer]]`) to be heard (403 otherwise).
//!
//! | endpoint | body → answer |
//! |---|---|
//! | `GET /.well-known/mimi-protocol-directory` | JSON directory of absolute URLs |
//! | `POST /v1/submitMessage/{roomId}` | `SubmitMessageRequest` → `SubmitMessageResponse` (hub) |
//! | `POST /v1/update/{roomId}` | `UpdateRequest` → `UpdateRoomResponse` (hub) |
//! | `POST /v1/notify/{roomId}` | `FanoutMessage`, header `Mimi-Sequence: N` → 201 (follower) |
//! | `POST /v1/groupInfo/{roomId}` | (body ignored) → the room's GroupInfo MLSMessage, unencrypted (deviation) |
//! | `POST /v1/keyMaterial/{targetUser}` | (body ignored) → one KeyPackage MLSMessage, or 404 (deviation) |
//! | `GET /v1/log/{roomId}?after=N` | our extension: `LogPage` of the hub's log after N (follower catch-up) |
//!
//! Errors: malformed body → 400 with a reason; unknown room → 404; peer not allowed → 403; body over
//! [`MAX_BODY`] → 413.
//!
//! # Client API (`/client/v1/...`) for native MLS clients
//!
//! The daemon never sees a client's private keys or plaintext: clients send MLS messages they made themselves.
//! Authentication: `Authorization: Bearer TOKEN` and `Mimi-User: URI` (from `register`).
//!
//! | request | body → answer |
//! |---|---|
//! | `POST /client/v1/register` | JSON `{"user": NAME-or-URI, "token"?: REG-TOKEN}` → `{"uri","token"}` |
//! | `POST /client/v1/keyPackages` | concatenated KeyPackage MLSMessages → 204 |
//! | `POST /client/v1/rooms` | JSON `{"name", "epoch"}` (group id = room URI) → `{"room"}` (creator's room) |
//! | `GET /client/v1/groupInfo/{roomId}` | → GroupInfo MLSMessage (with ratchet tree) |
//! | `PUT /client/v1/groupInfo/{roomId}` | GroupInfo MLSMessage → 204 (members keep it current) |
//! | `POST /client/v1/keyPackage/{userUri}?room=R` | → one claimed KeyPackage of the user; adds them to R's participants |
//! | `POST /client/v1/submit/{roomId}` | one MLSMessage (application, proposal, commit or Welcome) → `{"seq"}`; 409 `{"error":"epoch_too_old","current_epoch"}` |
//! | `GET /client/v1/messages/{roomId}?after=N&wait=SECS` | long-poll → `LogPage` (TLS) of entries after N |
//! | `GET /client/v1/invites` | → JSON `[{"room","seq"}]`: Welcomes for this user |

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bridge_core::provider::MlsRoom;
use bridge_core::provider::hub::{JoinPolicy, Origin, Refusal};
use bridge_core::provider::service::{Provider, ProviderError, uri_domain};
use bridge_core::provider::wire::{
    FanoutMessage, LogPage, MlsMessageBytes, SequencedFanout, SubmitMessageRequest, SubmitMessageResponse,
    UpdateRequest, UpdateRoomResponse, WireMessage,
};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// Largest request body accepted (413 above).
pub const MAX_BODY: usize = 1 << 20;
/// Longest long-poll wait.
const MAX_WAIT: Duration = Duration::from_secs(60);
/// Most log entries per answer.
const PAGE: usize = 256;

/// Who may register native users.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Registration {
    /// Anyone (development mode on loopback).
    Open,
    /// Whoever presents this token.
    Token(String),
    /// Nobody.
    Closed,
}

/// What the endpoints need.
#[derive(Clone)]
pub struct MimiState {
    /// The provider.
    pub provider: Provider,
    /// The portals' room of record, if the daemon bridges (for status only; may be `None`).
    pub room: Option<Arc<MlsRoom>>,
    /// Base URL under which this server is reached (`http://127.0.0.1:8448`), for the directory.
    pub public_url: String,
    /// Registration policy.
    pub registration: Registration,
    /// Peers: domain → base URL.
    pub peers: Arc<HashMap<String, String>>,
}

/// The router of the MIMI endpoints and the client API.
pub fn router(state: MimiState) -> Router {
    Router::new()
        .route("/.well-known/mimi-protocol-directory", get(directory))
        .route("/v1/submitMessage/{*room}", post(submit_message))
        .route("/v1/update/{*room}", post(update))
        .route("/v1/notify/{*room}", post(notify))
        .route("/v1/groupInfo/{*room}", post(peer_group_info))
        .route("/v1/keyMaterial/{*user}", post(key_material))
        .route("/v1/log/{*room}", get(log))
        .route("/client/v1/register", post(register))
        .route("/client/v1/keyPackages", post(upload_key_packages))
        .route("/client/v1/rooms", post(create_room))
        .route("/client/v1/groupInfo/{*room}", get(client_group_info).put(put_group_info))
        .route("/client/v1/keyPackage/{*user}", post(claim_key_package))
        .route("/client/v1/submit/{*room}", post(client_submit))
        .route("/client/v1/messages/{*room}", get(messages))
        .route("/client/v1/invites", get(invites))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

/// An error answer: status and reason.
struct Fail(StatusCode, String);

impl IntoResponse for Fail {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

impl From<ProviderError> for Fail {
    fn from(e: ProviderError) -> Self {
        let status = match &e {
            ProviderError::UnknownRoom(_) | ProviderError::UnknownUser(_) => StatusCode::NOT_FOUND,
            ProviderError::NotHub { .. } => StatusCode::MISDIRECTED_REQUEST,
            ProviderError::Refused(Refusal::Malformed(_)) | ProviderError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProviderError::Refused(Refusal::NotAllowed(_)) => StatusCode::FORBIDDEN,
            ProviderError::Refused(Refusal::EpochTooOld { .. }) | ProviderError::Exists(_) => StatusCode::CONFLICT,
            ProviderError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        Fail(status, e.to_string())
    }
}

fn bad(e: impl std::fmt::Display) -> Fail {
    Fail(StatusCode::BAD_REQUEST, e.to_string())
}

fn tls(bytes: Vec<u8>) -> Response {
    ([("content-type", "application/mimi-protocol")], bytes).into_response()
}

fn encode(m: &impl WireMessage) -> Result<Response, Fail> {
    m.encode().map(tls).map_err(|e| Fail(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

/// `{roomId}` → room URI.
fn room_of(path: &str) -> String {
    format!("mimi://{}", path.trim_start_matches('/'))
}

fn query(uri: &Uri, key: &str) -> Option<String> {
    uri.query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| v.to_owned())
    })
}

fn query_u64(uri: &Uri, key: &str) -> Result<u64, Fail> {
    query(uri, key).map(|v| v.parse().map_err(|_| bad(format!("bad {key}")))).unwrap_or(Ok(0))
}

/// The configured peer named by `From: mimi@DOMAIN`, or 403.
fn peer(state: &MimiState, headers: &HeaderMap) -> Result<String, Fail> {
    let from = headers.get("from").and_then(|v| v.to_str().ok()).unwrap_or("");
    let domain = from.strip_prefix("mimi@").unwrap_or("");
    if domain.is_empty() || !state.peers.contains_key(domain) {
        return Err(Fail(StatusCode::FORBIDDEN, format!("peer {from:?} is not configured")));
    }
    Ok(domain.to_owned())
}

async fn directory(State(s): State<MimiState>) -> Json<serde_json::Value> {
    let b = s.public_url.trim_end_matches('/');
    Json(serde_json::json!({
        "keyMaterial": format!("{b}/v1/keyMaterial/{{targetUser}}"),
        "update": format!("{b}/v1/update/{{roomId}}"),
        "notify": format!("{b}/v1/notify/{{roomId}}"),
        "submitMessage": format!("{b}/v1/submitMessage/{{roomId}}"),
        "groupInfo": format!("{b}/v1/groupInfo/{{roomId}}"),
    }))
}

async fn submit_message(
    State(s): State<MimiState>,
    Path(room): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Fail> {
    let from = peer(&s, &headers)?;
    let req = SubmitMessageRequest::decode(&body).map_err(bad)?;
    let room = room_of(&room);
    let answer = match s.provider.submit(&room, req.app_message, &req.sending_uri, Origin::Follower(from)).await {
        Ok(a) => SubmitMessageResponse::Accepted { accepted_timestamp: a.timestamp },
        Err(ProviderError::Refused(Refusal::EpochTooOld { current_epoch })) => {
            SubmitMessageResponse::EpochTooOld { current_epoch }
        }
        Err(ProviderError::Refused(Refusal::NotAllowed(_))) => SubmitMessageResponse::NotAllowed,
        Err(e) => return Err(e.into()),
    };
    encode(&answer)
}

async fn update(
    State(s): State<MimiState>,
    Path(room): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Fail> {
    let from = peer(&s, &headers)?;
    let req = UpdateRequest::decode(&body).map_err(bad)?;
    let room = room_of(&room);
    let requester = headers.get("mimi-user").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let answer = match s.provider.submit(&room, req.message().clone(), &requester, Origin::Follower(from.clone())).await
    {
        Ok(a) => {
            if let UpdateRequest::Commit { welcome, group_info, .. } = req {
                s.provider.set_group_info(&room, group_info.0.into_bytes());
                if let Some(w) = welcome {
                    s.provider.submit(&room, w, &requester, Origin::Follower(from)).await?;
                }
            }
            UpdateRoomResponse::Success { accepted_timestamp: a.timestamp }
        }
        Err(ProviderError::Refused(Refusal::EpochTooOld { current_epoch })) => {
            UpdateRoomResponse::WrongEpoch { current_epoch, description: "the room moved on".into() }
        }
        Err(ProviderError::Refused(Refusal::NotAllowed(d))) => UpdateRoomResponse::NotAllowed { description: d },
        Err(e) => return Err(e.into()),
    };
    encode(&answer)
}

async fn notify(
    State(s): State<MimiState>,
    Path(room): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Fail> {
    let from = peer(&s, &headers)?;
    let room = room_of(&room);
    let seq: u64 = headers
        .get("mimi-sequence")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| bad("missing Mimi-Sequence"))?;
    let fanout = FanoutMessage::decode(&body).map_err(bad)?;
    if s.provider.hub_of(&room)?.as_deref() != Some(from.as_str()) {
        return Err(Fail(StatusCode::FORBIDDEN, format!("{from} is not the hub of {room}")));
    }
    let fetch = s.provider.accept_entries(&room, vec![SequencedFanout { seq, fanout }], false).await?;
    if let Some(after) = fetch {
        let (p, peers) = (s.provider.clone(), s.peers.clone());
        tokio::spawn(async move { catch_up(&p, &peers, &room, after).await });
    }
    Ok(StatusCode::CREATED.into_response())
}

async fn peer_group_info(
    State(s): State<MimiState>,
    Path(room): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Fail> {
    peer(&s, &headers)?;
    group_info_of(&s, &room_of(&room))
}

fn group_info_of(s: &MimiState, room: &str) -> Result<Response, Fail> {
    match s.provider.group_info(room)? {
        Some(gi) => Ok(tls(gi)),
        None => Err(Fail(StatusCode::NOT_FOUND, "no GroupInfo for this room yet".into())),
    }
}

async fn key_material(
    State(s): State<MimiState>,
    Path(user): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Fail> {
    peer(&s, &headers)?;
    let user = if user.starts_with("mimi:") { user } else { room_of(&user) };
    match s.provider.claim_key_package(&user).await? {
        Some(kp) => Ok(tls(kp)),
        None => Err(Fail(StatusCode::NOT_FOUND, "no key material".into())),
    }
}

async fn log(
    State(s): State<MimiState>,
    Path(room): Path<String>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, Fail> {
    peer(&s, &headers)?;
    let after = query_u64(&uri, "after")?;
    encode(&LogPage(s.provider.entries_after(&room_of(&room), after, PAGE)?))
}

/// Fetches the hub's log of `room` after `after` until the local copy is complete.
pub async fn catch_up(provider: &Provider, peers: &HashMap<String, String>, room: &str, mut after: u64) {
    let Ok(Some(hub)) = provider.hub_of(room) else { return };
    let Some(base) = peers.get(&hub) else {
        tracing::warn!(room, hub, "the hub of a followed room is not a configured peer");
        return;
    };
    let id = room.trim_start_matches("mimi://");
    loop {
        let url = format!("{}/v1/log/{id}?after={after}", base.trim_end_matches('/'));
        let page = match http::request("GET", &url, provider.domain(), &[], Vec::new()).await {
            Ok((200, body)) => LogPage::decode(&body).map_err(|e| e.to_string()),
            Ok((status, _)) => Err(format!("HTTP {status}")),
            Err(e) => Err(e),
        };
        match page {
            Ok(page) => match provider.accept_entries(room, page.0, true).await {
                Ok(Some(next)) => after = next,
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!(room, error = %e, "catch-up failed");
                    provider.fetch_failed(room);
                    return;
                }
            },
            Err(e) => {
                tracing::info!(room, error = %e, "hub unreachable; catch-up later");
                provider.fetch_failed(room);
                return;
            }
        }
    }
}

/// Sends the hub's notifies to followers, forever (spawn it once). Retries with backoff until 201.
pub async fn run_notifier(provider: Provider, peers: Arc<HashMap<String, String>>) {
    let Some(mut rx) = provider.take_outbound() else { return };
    while let Some(n) = rx.recv().await {
        let Some(base) = peers.get(&n.peer) else { continue };
        let Ok(mut entries) = provider.entries_after(&n.room, n.seq - 1, 1) else { continue };
        let Some(entry) = entries.pop() else { continue };
        let Ok(body) = entry.fanout.encode() else { continue };
        let url = format!("{}/v1/notify/{}", base.trim_end_matches('/'), n.room.trim_start_matches("mimi://"));
        let seq = n.seq.to_string();
        let mut delay = Duration::from_millis(200);
        // A follower that stays down catches up from the log when it returns; give up after a while.
        for _ in 0..8 {
            match http::request("POST", &url, provider.domain(), &[("mimi-sequence", &seq)], body.clone()).await {
                Ok((201, _)) => break,
                Ok((status, _)) => tracing::debug!(peer = %n.peer, status, "notify refused"),
                Err(e) => tracing::debug!(peer = %n.peer, error = %e, "notify failed"),
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }
}

/// On start: catch up every followed room.
pub async fn resync_followed(provider: Provider, peers: Arc<HashMap<String, String>>) {
    for (room, _) in provider.followed() {
        let after = provider.last_seq(&room).unwrap_or(0);
        catch_up(&provider, &peers, &room, after).await;
    }
}

// ---- client API ----

#[derive(Deserialize)]
struct RegisterBody {
    user: String,
    token: Option<String>,
}

fn to_hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn sha256_hex(s: &str) -> String {
    to_hex(&Sha256::digest(s.as_bytes()))
}

async fn register(State(s): State<MimiState>, Json(b): Json<RegisterBody>) -> Result<Response, Fail> {
    match &s.registration {
        Registration::Open => {}
        Registration::Token(t) if b.token.as_deref() == Some(t.as_str()) => {}
        Registration::Token(_) => return Err(Fail(StatusCode::FORBIDDEN, "registration needs a valid token".into())),
        Registration::Closed => return Err(Fail(StatusCode::FORBIDDEN, "registration is closed".into())),
    }
    let uri = if b.user.starts_with("mimi://") {
        b.user.clone()
    } else {
        format!("mimi://{}/u/{}", s.provider.domain(), b.user)
    };
    if b.user.is_empty() || b.user.contains(char::is_whitespace) {
        return Err(bad("bad user name"));
    }
    let token = to_hex(&rand::random::<[u8; 32]>());
    s.provider.register_user(&uri, &sha256_hex(&token)).await?;
    Ok(Json(serde_json::json!({ "uri": uri, "token": token })).into_response())
}

/// The authenticated user of a client request.
fn user(s: &MimiState, headers: &HeaderMap) -> Result<String, Fail> {
    let unauthorized = || Fail(StatusCode::UNAUTHORIZED, "missing or bad credentials".into());
    let uri = headers.get("mimi-user").and_then(|v| v.to_str().ok()).ok_or_else(unauthorized)?;
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(unauthorized)?;
    let rec = s.provider.user(uri)?.ok_or_else(unauthorized)?;
    let given = sha256_hex(token);
    if subtle::ConstantTimeEq::ct_eq(given.as_bytes(), rec.token_sha256.as_bytes()).into() {
        Ok(uri.to_owned())
    } else {
        Err(unauthorized())
    }
}

async fn upload_key_packages(State(s): State<MimiState>, headers: HeaderMap, body: Bytes) -> Result<Response, Fail> {
    let u = user(&s, &headers)?;
    let mut r = bridge_core::provider::wire::Reader::new(&body);
    let mut kps = Vec::new();
    while r.finish().is_err() {
        kps.push(r.mls_message().map_err(bad)?);
    }
    s.provider.upload_key_packages(&u, &kps).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
struct CreateRoom {
    name: String,
    epoch: u64,
    #[serde(default)]
    invite_only: bool,
}

async fn create_room(
    State(s): State<MimiState>,
    headers: HeaderMap,
    Json(b): Json<CreateRoom>,
) -> Result<Response, Fail> {
    let u = user(&s, &headers)?;
    if b.name.is_empty() || b.name.contains(['/', ' ']) {
        return Err(bad("bad room name"));
    }
    let room = format!("mimi://{}/r/{}", s.provider.domain(), b.name);
    let policy = if b.invite_only { JoinPolicy::Invite } else { JoinPolicy::Open };
    s.provider.create_room(&room, room.as_bytes(), b.epoch, &u, policy, false).await?;
    Ok(Json(serde_json::json!({ "room": room })).into_response())
}

async fn client_group_info(
    State(s): State<MimiState>,
    Path(room): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Fail> {
    user(&s, &headers)?;
    group_info_of(&s, &room_of(&room))
}

async fn put_group_info(
    State(s): State<MimiState>,
    Path(room): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Fail> {
    user(&s, &headers)?;
    let room = room_of(&room);
    let gi = MlsMessageBytes::new(body.to_vec()).map_err(bad)?;
    s.provider.last_seq(&room)?;
    s.provider.set_group_info(&room, gi.into_bytes());
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn claim_key_package(
    State(s): State<MimiState>,
    Path(target): Path<String>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, Fail> {
    user(&s, &headers)?;
    let target = if target.starts_with("mimi:") { target } else { room_of(&target) };
    if let Some(room) = query(&uri, "room") {
        s.provider.add_participant(&room_of(room.trim_start_matches("mimi://")), &target).await?;
    }
    if uri_domain(&target) != Some(s.provider.domain()) {
        return Err(Fail(StatusCode::NOT_IMPLEMENTED, "KeyPackages of other providers' users: not yet".into()));
    }
    match s.provider.claim_key_package(&target).await? {
        Some(kp) => Ok(tls(kp)),
        None => Err(Fail(StatusCode::NOT_FOUND, format!("no KeyPackage left for {target}"))),
    }
}

async fn client_submit(
    State(s): State<MimiState>,
    Path(room): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Fail> {
    let u = user(&s, &headers)?;
    let room = room_of(&room);
    let msg = MlsMessageBytes::new(body.to_vec()).map_err(bad)?;
    if let Some(hub) = s.provider.hub_of(&room)? {
        return forward_to_hub(&s, &room, &hub, &u, msg).await;
    }
    match s.provider.submit(&room, msg, &u, Origin::Client(u.clone())).await {
        Ok(a) => Ok(Json(serde_json::json!({ "seq": a.seq })).into_response()),
        Err(ProviderError::Refused(Refusal::EpochTooOld { current_epoch })) => Ok((
            StatusCode::CONFLICT,
            Json(serde_json::json!({ "error": "epoch_too_old", "current_epoch": current_epoch })),
        )
            .into_response()),
        Err(e) => Err(e.into()),
    }
}

/// A client of ours submits to a room hosted elsewhere: `/v1/submitMessage` for application messages,
/// `/v1/update` is not used by our clients (their commits go through their own hub rooms in this version).
async fn forward_to_hub(s: &MimiState, room: &str, hub: &str, u: &str, msg: MlsMessageBytes) -> Result<Response, Fail> {
    let base = s.peers.get(hub).ok_or_else(|| Fail(StatusCode::BAD_GATEWAY, format!("hub {hub} not configured")))?;
    if msg.wire_format() != bridge_core::provider::wire::wire_format::PRIVATE {
        return Err(Fail(StatusCode::NOT_IMPLEMENTED, "handshakes to a remote hub: not yet".into()));
    }
    let body = SubmitMessageRequest { app_message: msg, sending_uri: u.to_owned() }.encode().map_err(bad)?;
    let url = format!("{}/v1/submitMessage/{}", base.trim_end_matches('/'), room.trim_start_matches("mimi://"));
    let (status, answer) = http::request("POST", &url, s.provider.domain(), &[], body)
        .await
        .map_err(|e| Fail(StatusCode::BAD_GATEWAY, e))?;
    if status != 200 {
        return Err(Fail(StatusCode::BAD_GATEWAY, format!("hub answered {status}")));
    }
    match SubmitMessageResponse::decode(&answer).map_err(|e| Fail(StatusCode::BAD_GATEWAY, e.to_string()))? {
        SubmitMessageResponse::Accepted { .. } => Ok(Json(serde_json::json!({ "seq": null })).into_response()),
        SubmitMessageResponse::EpochTooOld { current_epoch } => Ok((
            StatusCode::CONFLICT,
            Json(serde_json::json!({ "error": "epoch_too_old", "current_epoch": current_epoch })),
        )
            .into_response()),
        SubmitMessageResponse::NotAllowed => Err(Fail(StatusCode::FORBIDDEN, "the hub refused".into())),
    }
}

async fn messages(
    State(s): State<MimiState>,
    Path(room): Path<String>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, Fail> {
    user(&s, &headers)?;
    let room = room_of(&room);
    let after = query_u64(&uri, "after")?;
    let wait = Duration::from_secs(query_u64(&uri, "wait")?).min(MAX_WAIT);
    if s.provider.last_seq(&room)? <= after && !wait.is_zero() {
        s.provider.wait(&room, after, wait).await?;
    }
    encode(&LogPage(s.provider.entries_after(&room, after, PAGE)?))
}

async fn invites(State(s): State<MimiState>, headers: HeaderMap) -> Result<Response, Fail> {
    let u = user(&s, &headers)?;
    let list: Vec<_> = s
        .provider
        .invites(&u)?
        .into_iter()
        .map(|(room, seq)| serde_json::json!({ "room": room, "seq": seq }))
        .collect();
    Ok(Json(list).into_response())
}

/// A minimal plain-HTTP/1.1 client for provider-to-provider requests (development mode; mTLS not yet).
pub mod http {
    use http_body_util::{BodyExt, Full};
    use hyper::body::Bytes;
    use hyper_util::rt::TokioIo;
    use std::time::Duration;

    /// Sends one request; returns status and body. `from_domain` goes into `From: mimi@DOMAIN`.
    pub async fn request(
        method: &str,
        url: &str,
        from_domain: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Result<(u16, Vec<u8>), String> {
        let rest = url.strip_prefix("http://").ok_or("only http:// peers in development mode")?;
        let (authority, path) = rest.split_once('/').map(|(a, p)| (a, format!("/{p}"))).unwrap_or((rest, "/".into()));
        let fut = async {
            let stream = tokio::net::TcpStream::connect(authority).await.map_err(|e| e.to_string())?;
            let (mut send, conn) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
            tokio::spawn(conn);
            let mut req = hyper::Request::builder()
                .method(method)
                .uri(path)
                .header("host", authority)
                .header("from", format!("mimi@{from_domain}"))
                .header("content-type", "application/mimi-protocol");
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            let req = req.body(Full::new(Bytes::from(body))).map_err(|e| e.to_string())?;
            let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
            let status = resp.status().as_u16();
            let body = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes().to_vec();
            Ok((status, body))
        };
        tokio::time::timeout(Duration::from_secs(30), fut).await.map_err(|_| "timed out".to_string())?
    }
}
