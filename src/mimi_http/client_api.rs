//! The client API for native MLS clients (`/client/v1/...`; see the table in the [module above](super)): each
//! handler decodes the request, asks [`NativeClients`](mimi_provider::NativeClients), and encodes its answer.

use super::{ClientUser, Fail, Served, bad, encode, query, query_u64, room_of, tls, verdict};
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use mimi_protocol::wire::{GroupInfoRequest, MlsMessageBytes, UpdateRequest, WireMessage};
use serde::Deserialize;
use std::time::Duration;

#[derive(Deserialize)]
pub(super) struct RegisterBody {
    user: String,
    token: Option<String>,
}

pub(super) async fn register(State(s): State<Served>, Json(b): Json<RegisterBody>) -> Result<Response, Fail> {
    let r = s.clients.register(&b.user, b.token.as_deref()).await?;
    Ok(Json(serde_json::json!({ "uri": r.uri, "token": r.token })).into_response())
}

pub(super) async fn upload_key_packages(
    State(s): State<Served>,
    ClientUser(c): ClientUser,
    body: Bytes,
) -> Result<Response, Fail> {
    let mut r = mimi_protocol::wire::Reader::new(&body);
    let mut kps = Vec::new();
    while r.finish().is_err() {
        kps.push(r.mls_message().map_err(bad)?);
    }
    s.clients.upload_key_packages(&c, &kps).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
pub(super) struct CreateRoom {
    name: String,
    /// The GroupInfo MLSMessage of the room's group, hex.
    group_info: String,
    /// The ratchet tree (TLS), hex; if absent, the GroupInfo's `ratchet_tree` extension.
    #[serde(default)]
    ratchet_tree: Option<String>,
    #[serde(default)]
    invite_only: bool,
}

pub(super) async fn create_room(
    State(s): State<Served>,
    ClientUser(c): ClientUser,
    Json(b): Json<CreateRoom>,
) -> Result<Response, Fail> {
    let group_info = MlsMessageBytes::new(hex::decode(&b.group_info).map_err(bad)?).map_err(bad)?;
    let tree = b.ratchet_tree.as_deref().map(hex::decode).transpose().map_err(bad)?;
    let room = s.clients.create_room(&c, &b.name, &group_info, tree.as_deref(), b.invite_only).await?;
    Ok(Json(serde_json::json!({ "room": room })).into_response())
}

pub(super) async fn group_info(
    State(s): State<Served>,
    Path(room): Path<String>,
    ClientUser(c): ClientUser,
) -> Result<Response, Fail> {
    Ok(tls(s.clients.group_info(&c, &room_of(&room)).await?))
}

/// `POST /client/v1/groupInfo/{roomId}`: a client's own signed `GroupInfoRequest` → the hub's
/// `GroupInfoResponse` (ours, or the remote hub's unchanged).
pub(super) async fn post_group_info(
    State(s): State<Served>,
    Path(room): Path<String>,
    ClientUser(c): ClientUser,
    body: Bytes,
) -> Result<Response, Fail> {
    let request = GroupInfoRequest::decode(&body).map_err(bad)?;
    encode(&s.clients.request_group_info(&c, &room_of(&room), &request).await?)
}

pub(super) async fn put_group_info(
    State(s): State<Served>,
    Path(room): Path<String>,
    ClientUser(c): ClientUser,
    body: Bytes,
) -> Result<Response, Fail> {
    s.clients.put_group_info(&c, &room_of(&room), body.to_vec()).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub(super) async fn claim_key_package(
    State(s): State<Served>,
    Path(target): Path<String>,
    ClientUser(c): ClientUser,
    uri: Uri,
) -> Result<Response, Fail> {
    let target = if target.starts_with("mimi:") { target } else { room_of(&target) };
    let room = query(&uri, "room").map(|r| room_of(r.trim_start_matches("mimi://")));
    Ok(tls(s.clients.claim_key_package(&c, &target, room.as_deref()).await?))
}

pub(super) async fn update(
    State(s): State<Served>,
    Path(room): Path<String>,
    ClientUser(c): ClientUser,
    body: Bytes,
) -> Result<Response, Fail> {
    let req = UpdateRequest::decode(&body).map_err(bad)?;
    verdict(s.clients.update(&c, &room_of(&room), req).await)
}

pub(super) async fn submit(
    State(s): State<Served>,
    Path(room): Path<String>,
    ClientUser(c): ClientUser,
    body: Bytes,
) -> Result<Response, Fail> {
    let msg = MlsMessageBytes::new(body.to_vec()).map_err(bad)?;
    verdict(s.clients.submit(&c, &room_of(&room), msg).await)
}

pub(super) async fn messages(
    State(s): State<Served>,
    Path(room): Path<String>,
    ClientUser(c): ClientUser,
    uri: Uri,
) -> Result<Response, Fail> {
    let after = query_u64(&uri, "after")?;
    let wait = Duration::from_secs(query_u64(&uri, "wait")?);
    encode(&s.clients.messages(&c, &room_of(&room), after, wait).await?)
}

pub(super) async fn invites(State(s): State<Served>, ClientUser(c): ClientUser) -> Result<Response, Fail> {
    let list: Vec<_> =
        s.clients.invites(&c)?.into_iter().map(|(room, seq)| serde_json::json!({ "room": room, "seq": seq })).collect();
    Ok(Json(list).into_response())
}
