//! The provider-to-provider endpoints we serve (`/v1/...`; see the table in the [module above](super)): each
//! decodes the request, asks [`PeerApi`](mimi_provider::PeerApi), and encodes its answer.

use super::{Fail, Peer, Served, bad, encode, query_u64, room_of};
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use mimi_protocol::wire::{
    FanoutMessage, GroupInfoRequest, KeyMaterialRequest, SubmitMessageRequest, UpdateRequest, WireMessage,
};
use mimi_provider::{Failure, HubAnswer};

/// An encoded answer of the hub, with our `Mimi-Sequence` header when it sequenced the message.
fn with_sequence(a: Result<HubAnswer<impl WireMessage>, Failure>) -> Result<Response, Fail> {
    let a = a?;
    let mut r = encode(&a.answer)?;
    if let Some(seq) = a.seq {
        r.headers_mut().insert("mimi-sequence", seq.into());
    }
    Ok(r)
}

pub(super) async fn directory(State(s): State<Served>) -> Json<serde_json::Value> {
    let b = s.public_url.trim_end_matches('/');
    Json(serde_json::json!({
        "keyMaterial": format!("{b}/v1/keyMaterial/{{targetUser}}"),
        "update": format!("{b}/v1/update/{{roomId}}"),
        "notify": format!("{b}/v1/notify/{{roomId}}"),
        "submitMessage": format!("{b}/v1/submitMessage/{{roomId}}"),
        "groupInfo": format!("{b}/v1/groupInfo/{{roomId}}"),
    }))
}

pub(super) async fn submit_message(
    State(s): State<Served>,
    Path(room): Path<String>,
    Peer(from): Peer,
    body: Bytes,
) -> Result<Response, Fail> {
    let req = SubmitMessageRequest::decode(&body).map_err(bad)?;
    with_sequence(s.peers.submit_message(&from, &room_of(&room), req).await)
}

pub(super) async fn update(
    State(s): State<Served>,
    Path(room): Path<String>,
    Peer(from): Peer,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Fail> {
    let req = UpdateRequest::decode(&body).map_err(bad)?;
    let requester = headers.get("mimi-user").and_then(|v| v.to_str().ok()).unwrap_or("");
    with_sequence(s.peers.update(&from, &room_of(&room), requester, req).await)
}

pub(super) async fn notify(
    State(s): State<Served>,
    Path(room): Path<String>,
    Peer(from): Peer,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Fail> {
    let seq: u64 = headers
        .get("mimi-sequence")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| bad("missing Mimi-Sequence"))?;
    let fanout = FanoutMessage::decode(&body).map_err(bad)?;
    s.peers.notify(&from, &room_of(&room), seq, fanout).await?;
    Ok(StatusCode::CREATED.into_response())
}

pub(super) async fn group_info(
    State(s): State<Served>,
    Path(room): Path<String>,
    Peer(from): Peer,
    body: Bytes,
) -> Result<Response, Fail> {
    let request = GroupInfoRequest::decode(&body).map_err(bad)?;
    encode(&s.peers.group_info(&from, &room_of(&room), &request).await?)
}

pub(super) async fn key_material(
    State(s): State<Served>,
    Path(user): Path<String>,
    Peer(from): Peer,
    body: Bytes,
) -> Result<Response, Fail> {
    let req = KeyMaterialRequest::decode(&body).map_err(bad)?;
    let target = if user.starts_with("mimi:") { user } else { room_of(&user) };
    encode(&s.peers.key_material(&from, &target, req).await?)
}

pub(super) async fn log(
    State(s): State<Served>,
    Path(room): Path<String>,
    Peer(from): Peer,
    uri: Uri,
) -> Result<Response, Fail> {
    let after = query_u64(&uri, "after")?;
    encode(&s.peers.log(&from, &room_of(&room), after)?)
}
