//! The MIMI endpoints (draft-ietf-mimi-protocol-06 §5) and the client API for native MLS users, over axum.
//! Thin: every decision is taken by `mimi_provider` ([`Provider`], [`MlsRooms`]).
//!
//! * [`peer`] — the provider-to-provider endpoints we serve;
//! * [`client_api`] — the native clients' API;
//! * [`outbound`] — what we ask of peers: forwarding to another room's hub, KeyPackages of other providers'
//!   users, catch-up from a hub's log, notifies to our followers;
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
//! | `POST /v1/groupInfo/{roomId}` | `GroupInfoRequest` (signature checked: 400 if bad) → `GroupInfoResponse`: `notAuthorized` for an invite-only room unless the requester's basic credential is a participant, `noSuchRoom` for an unknown room; the GroupInfo keeps its embedded ratchet tree (`RatchetTreeOption` `distributionService`) (hub) |
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
//! | `POST /client/v1/register` | JSON `{"user": NAME-or-URI, "token"?: REG-TOKEN}` → `{"uri","token"}` |
//! | `POST /client/v1/keyPackages` | concatenated KeyPackage MLSMessages → 204 |
//! | `POST /client/v1/rooms` | JSON `{"name", "epoch"}` (group id = room URI) → `{"room"}` (creator's room) |
//! | `POST /client/v1/groupInfo/{roomId}` | the client's own signed `GroupInfoRequest` → the hub's `GroupInfoResponse` (ours, or the remote hub's from its `/v1/groupInfo`, unchanged); the client verifies and decrypts it |
//! | `GET /client/v1/groupInfo/{roomId}` | legacy → GroupInfo MLSMessage (with ratchet tree); for a remote hub the daemon asks with a request signed by its own hub key (`mimi://DOMAIN`), so only open rooms answer |
//! | `PUT /client/v1/groupInfo/{roomId}` | GroupInfo MLSMessage of the current epoch → 204 (hosted rooms; participants only, 403 otherwise) |
//! | `POST /client/v1/keyPackage/{userUri}?room=R` | → one claimed KeyPackage of the user; once claimed, adds them to R's participants (R hosted here; the caller must be a participant, 403 otherwise) |
//! | `POST /client/v1/update/{roomId}` | `UpdateRequest` (commit + Welcome + GroupInfo, or proposals) → `{"seq"}`; 409 `{"error":"epoch_too_old","current_epoch"}` |
//! | `POST /client/v1/submit/{roomId}` | one MLSMessage (application message; here also a proposal, commit or Welcome) → `{"seq"}`; 409 as above |
//! | `GET /client/v1/messages/{roomId}?after=N&wait=SECS` | long-poll → `LogPage` (TLS) of entries after N (bounded as `/v1/log`) |
//! | `GET /client/v1/invites` | → JSON `[{"room","seq"}]`: Welcomes for this user |
//!
//! ## Rooms hosted by another provider
//!
//! For a room whose hub is a configured peer the daemon is its clients' go-between: a client's `GroupInfoRequest` is passed
//! to the hub's `/v1/groupInfo`, `update` goes to the hub's `/v1/update` (we follow the room from then on; a room we
//! did not follow yet is followed tentatively and forgotten again if the hub refuses the update:
//! [`Provider::follow_for_update`]),
//! `submit` — application messages only — to its `/v1/submitMessage`, and `messages` reads our copy of the hub's
//! log. When the hub answers that the room moved to a newer epoch, we catch up from its log before answering 409,
//! so the client finds the commit it missed. `keyPackage` of another provider's user is claimed from that
//! provider (`/v1/keyMaterial`, naming the room). A room on an unconfigured domain is unknown (404).

pub mod client_api;
pub mod http;
pub mod outbound;
pub mod peer;

pub use outbound::{catch_up, resync_followed, run_notifier};

use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bridge_core::mls_rooms::MlsRooms;
use mimi_protocol::hub::Refusal;
use mimi_protocol::wire::{LogPage, SequencedFanout, WireMessage};
use mimi_provider::service::{Provider, ProviderError};
use std::sync::Arc;
use std::time::Duration;

/// Largest request body accepted (413 above).
pub const MAX_BODY: usize = 1 << 20;
/// Longest long-poll wait.
const MAX_WAIT: Duration = Duration::from_secs(60);
/// Most log entries per answer.
const PAGE: usize = 256;
/// Most bytes of log entries per answer (a longer run is cut; the first entry is always served, and is at most
/// about [`MAX_BODY`]).
pub const MAX_PAGE_BYTES: usize = 4 << 20;

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
    pub room: Option<Arc<MlsRooms>>,
    /// Base URL under which this server is reached (`http://127.0.0.1:8448`), for the directory.
    pub public_url: String,
    /// Registration policy.
    pub registration: Registration,
    /// Peers: domain → base URL.
    pub peers: Arc<http::Peers>,
}

/// The router of the MIMI endpoints and the client API.
pub fn router(state: MimiState) -> Router {
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
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

/// An error answer: status and reason.
#[derive(Debug)]
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

/// A log page of the first `entries` that fit in `max_bytes` (encoded), the first one always.
fn log_page(mut entries: Vec<SequencedFanout>, max_bytes: usize) -> LogPage {
    let mut total = 0usize;
    let keep = entries
        .iter()
        .position(|e| {
            total = total.saturating_add(e.encode().map_or(usize::MAX, |v| v.len()));
            total > max_bytes
        })
        .unwrap_or(entries.len())
        .max(1);
    entries.truncate(keep);
    LogPage(entries)
}

fn encode(m: &impl WireMessage) -> Result<Response, Fail> {
    m.encode().map(tls).map_err(|e| Fail(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

/// The client API's answer to an accepted message: its sequence number in the hub's log (`null` if a remote hub
/// did not say).
fn accepted(seq: Option<u64>) -> Response {
    Json(serde_json::json!({ "seq": seq })).into_response()
}

/// The client API's answer when the hub moved past the message's epoch.
fn epoch_too_old(current_epoch: u64) -> Response {
    (StatusCode::CONFLICT, Json(serde_json::json!({ "error": "epoch_too_old", "current_epoch": current_epoch })))
        .into_response()
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

/// The configured peer named by `From: mimi@DOMAIN`, or 403.
fn peer_of(state: &MimiState, headers: &HeaderMap) -> Result<String, Fail> {
    let from = headers.get("from").and_then(|v| v.to_str().ok()).unwrap_or("");
    let domain = from.strip_prefix("mimi@").unwrap_or("");
    if domain.is_empty() || !state.peers.contains_key(domain) {
        return Err(Fail(StatusCode::FORBIDDEN, format!("peer {from:?} is not configured")));
    }
    Ok(domain.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use mimi_protocol::wire::{FanoutMessage, MlsMessageBytes};

    /// Log entry `seq`: a made-up PrivateMessage with `len` bytes of ciphertext.
    pub(super) fn entry(seq: u64, len: usize) -> SequencedFanout {
        // A PrivateMessage (mls10, wire format 2): group id "x", epoch 1, application content, no authenticated
        // data, one byte of sender data, `len` (< 16384) bytes of ciphertext.
        let mut m = vec![0, 1, 0, 2, 1, b'x', 0, 0, 0, 0, 0, 0, 0, 1, 1, 0, 1, 0];
        match u8::try_from(len) {
            Ok(short) if short < 64 => m.push(short),
            _ => m.extend((u16::try_from(len).expect("short") | 0x4000).to_be_bytes()),
        }
        m.extend(std::iter::repeat_n(0u8, len));
        let msg = MlsMessageBytes::new(m).expect("framed");
        SequencedFanout { seq, fanout: FanoutMessage::plain(seq, msg) }
    }

    #[test]
    fn log_pages_are_cut_by_bytes_but_never_empty() {
        let entries: Vec<_> = (1..=10).map(|s| entry(s, 1000)).collect();
        let one = entries[0].encode().expect("encode").len();
        assert_eq!(log_page(entries.clone(), usize::MAX).0.len(), 10);
        assert_eq!(log_page(entries.clone(), 3 * one).0.len(), 3);
        assert_eq!(log_page(entries.clone(), 3 * one - 1).0.len(), 2);
        assert_eq!(log_page(entries.clone(), 10).0.len(), 1, "one entry even if larger");
        assert!(log_page(Vec::new(), 10).0.is_empty());
    }
}
