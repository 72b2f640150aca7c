//! The MIMI endpoints (draft-ietf-mimi-protocol-06 §5) and the client API for native MLS users, over axum.
//! Thin: every decision is taken by `mimi_provider` — [`PeerApi`] for what peers ask of us, [`NativeClients`] for
//! what native clients ask, [`Federation`] for what we ask of peers (forwarding to another room's hub, GroupInfo
//! and KeyPackages from other providers, catch-up from a hub's log, notifies to our followers). Each handler
//! decodes the request, calls one method of theirs, and encodes the answer; the extractors `Peer` and
//! `ClientUser` ask them who a request is from.
//!
//! * [`peer`] — the provider-to-provider endpoints we serve;
//! * [`client_api`] — the native clients' API;
//! * [`peer_client`] — [`HttpPeerClient`], the provider's [`PeerClient`](mimi_provider::PeerClient) over HTTP(S):
//!   how our requests to peers are encoded, sent and their answers read;
//! * [`http`] — the configured peers and the small HTTP(S) client that reaches them.
//!
//! # Provider-to-provider (`/v1/...`), bodies in TLS presentation language
//!
//! `{roomId}` is the room URI without `mimi://` (`a.example/r/clubhouse`). The source provider names itself in
//! `From: mimi@DOMAIN`, and a peer must be configured (`[[mimi.peer]]`) to be heard (403 otherwise). With TLS
//! (`[mimi] tls_cert`), the peer must present a client certificate valid for that domain and chaining to
//! `mimi.trust_anchors` ([`crate::mimi_tls`]); in the plain-HTTP development mode (loopback only) the header is
//! trusted.
//!
//! | endpoint | body → answer |
//! |---|---|
//! | `GET /.well-known/mimi-protocol-directory` | JSON directory of absolute URLs |
//! | `POST /v1/submitMessage/{roomId}` | `SubmitMessageRequest` → `SubmitMessageResponse`; accepted: header `Mimi-Sequence: N` (hub) |
//! | `POST /v1/update/{roomId}` | `UpdateRequest`, header `Mimi-User: REQUESTER` → `UpdateRoomResponse`; success: `Mimi-Sequence: N` (hub) |
//! | `POST /v1/notify/{roomId}` | `FanoutMessage`, header `Mimi-Sequence: N` → 201 (follower; only from the room's hub) |
//! | `POST /v1/groupInfo/{roomId}` | `GroupInfoRequest` (signature checked: 400 if bad) → `GroupInfoResponse`: `notAuthorized` for an invite-only room unless the requester's basic credential is a participant, `noSuchRoom` for an unknown room; the hub's ratchet tree of the GroupInfo's epoch goes beside it (`RatchetTreeOption` `full`; commits' GroupInfos and Welcomes carry no tree, so they stay small in big rooms) (hub) |
//! | `POST /v1/keyMaterial/{targetUser}` | `KeyMaterialRequest` (unsigned: deviation) → `KeyMaterialResponse` |
//! | `GET /v1/log/{roomId}?after=N` | our extension: `LogPage` of the hub's log after N (at most 256 entries and [`MAX_PAGE_BYTES`], one entry at least), for the room's followers |
//!
//! `Mimi-Sequence` in answers is our extension: the hub's sequence number of the accepted message, so the
//! follower can tell its client where the message is in the log. A `KeyMaterialRequest` that names a room hosted
//! by the requesting peer makes us follow that room (the Welcome will come through its log). Errors: malformed
//! body → 400 with a reason; unknown room → 404; peer not allowed (or not a follower of the room, for `/log`) →
//! 403; a room we only follow where its hub is needed (e.g. `/v1/log`, `/v1/submitMessage` sent to a follower) → 421;
//! body over [`MAX_BODY`] → 413. Answers we read from peers are limited to [`http::MAX_ANSWER`] bytes.
//!
//! # Client API (`/client/v1/...`) for native MLS clients
//!
//! The daemon never sees a client's private keys or plaintext: clients send MLS messages they made themselves.
//! Authentication: `Authorization: Bearer TOKEN` and `Mimi-User: URI` (from `register`).
//!
//! | request | body → answer |
//! |---|---|
//! | `POST /client/v1/register` | JSON `{"user": NAME-or-URI, "token"?: REG-TOKEN}` → `{"uri","token"}`; a name is 1 to 64 of `A-Z a-z 0-9 . _ -` (400 otherwise: legacy users' `NET.ACCT~…` identities are the bridge's), `bridge` is reserved (403), a URI must be of this domain |
//! | `POST /client/v1/keyPackages` | concatenated KeyPackage MLSMessages → 204; 400 unless each validates (signature, lifetime) and its credential is the caller's URI; at most 256 stored per user |
//! | `POST /client/v1/rooms` | JSON `{"name", "group_info", "ratchet_tree"?, "invite_only"?}`: the GroupInfo MLSMessage of the room's group (group id = room URI, the creator a member) and its ratchet tree (TLS), both hex; without `ratchet_tree`, the GroupInfo's `ratchet_tree` extension → `{"room"}` (creator's room; the hub keeps the group's public state and validates every handshake against it); 409 if the room exists and is not the caller's (a portal's room is never handed to a user, and a room a user made first is never adopted as a portal's: the daemon refuses to start that portal) |
//! | `POST /client/v1/groupInfo/{roomId}` | the client's own signed `GroupInfoRequest` → the hub's `GroupInfoResponse` (ours, or the remote hub's from its `/v1/groupInfo`, unchanged); the client verifies and decrypts it; 403 unless the request's credential is the caller's URI |
//! | `GET /client/v1/groupInfo/{roomId}` | legacy → GroupInfo MLSMessage as the hub keeps it (since commits carry no tree, usually without one: the signed `POST` above brings the tree); for a remote hub the daemon asks with a request signed by its own hub key (`mimi://DOMAIN`), so only open rooms answer; a hosted invite-only room only for its participants (403) |
//! | `PUT /client/v1/groupInfo/{roomId}` | GroupInfo MLSMessage of the current epoch → 204 (hosted rooms; participants only, 403 otherwise) |
//! | `POST /client/v1/keyPackage/{userUri}?room=R` | → one claimed KeyPackage of the user; once claimed, adds them to R's participants (R hosted here; the caller must be a participant, 403 otherwise); the oldest valid one, removed — KeyPackages that no longer validate are dropped, and a last-resort one is served only when no other is left, and kept |
//! | `POST /client/v1/update/{roomId}` | `UpdateRequest` (commit + Welcome + GroupInfo, or proposals) → `{"seq"}`; 409 `{"error":"epoch_too_old","current_epoch"}` |
//! | `POST /client/v1/submit/{roomId}` | one MLSMessage (application message; here also a proposal, commit or Welcome) → `{"seq"}`; 409 as above |
//! | `GET /client/v1/messages/{roomId}?after=N&wait=SECS` | long-poll → `LogPage` (TLS) of entries after N (bounded as `/v1/log`); an invite-only room only for its participants (403) |
//! | `GET /client/v1/invites` | → JSON `[{"room","seq"}]`: Welcomes for this user |
//!
//! ## Rooms hosted by another provider
//!
//! For a room whose hub is a configured peer the daemon is its clients' go-between: a client's `GroupInfoRequest` is passed
//! to the hub's `/v1/groupInfo`, `update` goes to the hub's `/v1/update` (we follow the room from then on; a room we
//! did not follow yet is followed tentatively and forgotten again if the hub refuses the update:
//! [`Federation::update_through_hub`]),
//! `submit` — application messages only — to its `/v1/submitMessage`, and `messages` reads our copy of the hub's
//! log. When the hub answers that the room moved to a newer epoch, we catch up from its log before answering 409,
//! so the client finds the commit it missed. `keyPackage` of another provider's user is claimed from that
//! provider (`/v1/keyMaterial`, naming the room). A room on an unconfigured domain is unknown (404).

pub mod client_api;
pub mod http;
mod media;
pub mod peer;
pub mod peer_client;

pub use mimi_provider::Registration;
pub use mimi_provider::pages::MAX_PAGE_BYTES;
pub use peer_client::HttpPeerClient;

use axum::extract::{DefaultBodyLimit, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bridge_core::mls_rooms::MlsRooms;
use mimi_protocol::wire::WireMessage;
use mimi_provider::{Client, Failure, Federation, HeardPeer, NativeClients, PeerApi, Provider, Verdict};
use std::sync::Arc;

/// Largest request body accepted (413 above).
pub const MAX_BODY: usize = 1 << 20;

/// What the endpoints need.
#[derive(Clone)]
pub struct MimiState {
    /// The provider.
    pub provider: Provider,
    /// The portals' room of record, if the daemon bridges (for status only; may be `None`).
    pub room: Option<Arc<MlsRooms>>,
    /// Base URL under which this server is reached (`http://127.0.0.1:8448`), for the directory.
    pub public_url: String,
    /// Registration policy.
    pub registration: Registration,
    /// Peers: domain → base URL.
    pub peers: Arc<http::Peers>,
    /// What one native user may put into rooms' logs per minute.
    pub quotas: mimi_provider::quota::QuotaConfig,
    /// The media store whose files `/media/v1/…` serves (`None`: 404).
    pub media: Option<Arc<bridge_media::FileMediaStore>>,
}

impl MimiState {
    /// The provider with its peers reached over HTTP(S): for the notifier and the resync at start.
    pub fn federation(&self) -> Federation {
        Federation::new(
            self.provider.clone(),
            Arc::new(HttpPeerClient::new(self.peers.clone(), self.provider.domain())),
        )
    }
}

/// The state of the handlers: the provider's services.
#[derive(Clone)]
struct Served {
    clients: NativeClients,
    peers: PeerApi,
    public_url: Arc<str>,
    media: Option<Arc<bridge_media::FileMediaStore>>,
}

/// The router of the MIMI endpoints and the client API.
pub fn router(state: MimiState) -> Router {
    let federation = state.federation();
    let served = Served {
        clients: NativeClients::new(federation.clone(), state.registration.clone()).with_quotas(state.quotas),
        peers: PeerApi::new(federation),
        public_url: state.public_url.as_str().into(),
        media: state.media.clone(),
    };
    // Over TLS, a peer's certificate must be valid for the domain it claims (`mimi_tls::require_peer`).
    let peer_routes = Router::new()
        .route("/v1/submitMessage/{*room}", post(peer::submit_message))
        .route("/v1/update/{*room}", post(peer::update))
        .route("/v1/notify/{*room}", post(peer::notify))
        .route("/v1/groupInfo/{*room}", post(peer::group_info))
        .route("/v1/keyMaterial/{*user}", post(peer::key_material))
        .route("/v1/log/{*room}", get(peer::log))
        .layer(axum::middleware::from_fn(crate::mimi_tls::require_peer));
    Router::new()
        .merge(peer_routes)
        .route("/.well-known/mimi-protocol-directory", get(peer::directory))
        .route("/client/v1/register", post(client_api::register))
        .route("/client/v1/keyPackages", post(client_api::upload_key_packages))
        .route("/client/v1/rooms", post(client_api::create_room))
        .route(
            "/client/v1/groupInfo/{*room}",
            get(client_api::group_info).post(client_api::post_group_info).put(client_api::put_group_info),
        )
        .route("/client/v1/keyPackage/{*user}", post(client_api::claim_key_package))
        .route("/client/v1/update/{*room}", post(client_api::update))
        .route("/client/v1/submit/{*room}", post(client_api::submit))
        .route("/client/v1/messages/{*room}", get(client_api::messages))
        .route("/client/v1/invites", get(client_api::invites))
        .route("/media/v1/{token}", get(media::ciphertext))
        .route("/media/v1/{token}/{name}", get(media::file))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(served)
}

/// An error answer: status and reason; over a quota, when to try again.
#[derive(Debug)]
struct Fail(StatusCode, String, Option<std::time::Duration>);

impl IntoResponse for Fail {
    /// `{"error"}`; with a retry time, also `"retry_after_ms"` and the `Retry-After` header (whole seconds,
    /// rounded up).
    fn into_response(self) -> Response {
        match self.2 {
            None => (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response(),
            Some(after) => {
                let ms = u64::try_from(after.as_millis()).unwrap_or(u64::MAX);
                let body = Json(serde_json::json!({ "error": self.1, "retry_after_ms": ms }));
                (self.0, [("retry-after", ms.div_ceil(1000).to_string())], body).into_response()
            }
        }
    }
}

impl From<Failure> for Fail {
    fn from(f: Failure) -> Self {
        let status = StatusCode::from_u16(f.status.code()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        Fail(status, f.reason, f.retry_after)
    }
}

/// A request we could not decode: 400.
fn bad(e: impl std::fmt::Display) -> Fail {
    Fail(StatusCode::BAD_REQUEST, e.to_string(), None)
}

fn tls(bytes: Vec<u8>) -> Response {
    ([("content-type", "application/mimi-protocol")], bytes).into_response()
}

fn encode(m: &impl WireMessage) -> Result<Response, Fail> {
    m.encode().map(tls).map_err(|e| Fail(StatusCode::INTERNAL_SERVER_ERROR, e.to_string(), None))
}

/// The client API's answer to a message: `{"seq"}` once sequenced (`null` if a remote hub did not say), or 409
/// `{"error":"epoch_too_old","current_epoch"}` when the hub moved past the message's epoch.
fn verdict(v: Result<Verdict, Failure>) -> Result<Response, Fail> {
    Ok(match v? {
        Verdict::Accepted { seq } => Json(serde_json::json!({ "seq": seq })).into_response(),
        Verdict::EpochTooOld { current_epoch } => (
            StatusCode::CONFLICT,
            Json(serde_json::json!({ "error": "epoch_too_old", "current_epoch": current_epoch })),
        )
            .into_response(),
    })
}

/// `{roomId}` (or `{targetUser}`) → URI.
fn room_of(path: &str) -> String {
    format!("mimi://{}", path.trim_start_matches('/'))
}

/// `{roomId}` of a room URI.
fn path_of(uri: &str) -> &str {
    uri.trim_start_matches("mimi://")
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

fn header<'a>(parts: &'a Parts, name: &str) -> Option<&'a str> {
    parts.headers.get(name).and_then(|v| v.to_str().ok())
}

/// The configured peer a provider-to-provider request comes from (`From: mimi@DOMAIN`), as [`PeerApi::hear`]
/// hears it (403 otherwise). Taken before the body is read, so an unknown peer learns nothing of its body.
struct Peer(HeardPeer);

impl FromRequestParts<Served> for Peer {
    type Rejection = Fail;

    async fn from_request_parts(parts: &mut Parts, s: &Served) -> Result<Self, Fail> {
        Ok(Self(s.peers.hear(header(parts, "from").unwrap_or(""))?))
    }
}

/// The native user of a client request (`Mimi-User` and `Authorization: Bearer`), as
/// [`NativeClients::authenticate`] finds it (401 otherwise). Taken before the body is read.
struct ClientUser(Client);

impl FromRequestParts<Served> for ClientUser {
    type Rejection = Fail;

    async fn from_request_parts(parts: &mut Parts, s: &Served) -> Result<Self, Fail> {
        let token = header(parts, "authorization").and_then(|v| v.strip_prefix("Bearer "));
        Ok(Self(s.clients.authenticate(header(parts, "mimi-user"), token)?))
    }
}
