//! The provider-to-provider endpoints we serve (`/v1/...`; see the table in the [module above](super)).

use super::{Fail, MAX_PAGE_BYTES, MimiState, PAGE, bad, encode, log_page, peer_of, query_u64, room_of, tls};
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use mimi_protocol::hub::{Origin, Refusal};
use mimi_protocol::wire::key_material::CIPHERSUITE_1;
use mimi_protocol::wire::{
    ClientKeyMaterial, ClientMaterial, FanoutMessage, GroupInfoRequest, KeyMaterialRequest, KeyMaterialResponse,
    KeyMaterialUserCode, MlsMessageBytes, SequencedFanout, SubmitMessageRequest, SubmitMessageResponse, UpdateRequest,
    UpdateRoomResponse, WireMessage,
};
use mimi_provider::service::{ProviderError, RoomRoute, uri_domain};

/// An encoded answer with our `Mimi-Sequence` header.
fn with_sequence(m: &impl WireMessage, seq: u64) -> Result<Response, Fail> {
    let mut r = encode(m)?;
    r.headers_mut().insert("mimi-sequence", seq.into());
    Ok(r)
}

pub(super) async fn directory(State(s): State<MimiState>) -> Json<serde_json::Value> {
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
    State(s): State<MimiState>,
    Path(room): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Fail> {
    let from = peer_of(&s, &headers)?;
    let req = SubmitMessageRequest::decode(&body).map_err(bad)?;
    let room = room_of(&room);
    match s.provider.submit(&room, req.app_message, &req.sending_uri, Origin::Follower(from)).await {
        Ok(a) => with_sequence(&SubmitMessageResponse::Accepted { accepted_timestamp: a.timestamp }, a.seq),
        Err(ProviderError::Refused(Refusal::EpochTooOld { current_epoch })) => {
            encode(&SubmitMessageResponse::EpochTooOld { current_epoch })
        }
        Err(ProviderError::Refused(Refusal::NotAllowed(_))) => encode(&SubmitMessageResponse::NotAllowed),
        Err(e) => Err(e.into()),
    }
}

pub(super) async fn update(
    State(s): State<MimiState>,
    Path(room): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Fail> {
    let from = peer_of(&s, &headers)?;
    let req = UpdateRequest::decode(&body).map_err(bad)?;
    let room = room_of(&room);
    let requester = headers.get("mimi-user").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    match s.provider.update(&room, req, &requester, Origin::Follower(from)).await {
        Ok(a) => with_sequence(&UpdateRoomResponse::Success { accepted_timestamp: a.timestamp }, a.seq),
        Err(ProviderError::Refused(Refusal::EpochTooOld { current_epoch })) => {
            encode(&UpdateRoomResponse::WrongEpoch { current_epoch, description: "the room moved on".into() })
        }
        Err(ProviderError::Refused(Refusal::NotAllowed(description))) => {
            encode(&UpdateRoomResponse::NotAllowed { description })
        }
        Err(e) => Err(e.into()),
    }
}

pub(super) async fn notify(
    State(s): State<MimiState>,
    Path(room): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Fail> {
    let from = peer_of(&s, &headers)?;
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
        tokio::spawn(async move { super::catch_up(&p, &peers, &room, after).await });
    }
    Ok(StatusCode::CREATED.into_response())
}

pub(super) async fn group_info(
    State(s): State<MimiState>,
    Path(room): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Fail> {
    peer_of(&s, &headers)?;
    let request = verified_group_info_request(&body)?;
    answer_group_info(&s, &room_of(&room), &request).await
}

/// A `GroupInfoRequest` whose signature verifies (400 otherwise).
pub(super) fn verified_group_info_request(body: &[u8]) -> Result<GroupInfoRequest, Fail> {
    let request = GroupInfoRequest::decode(body).map_err(bad)?;
    request.verify().map_err(|e| bad(format!("GroupInfoRequest: {e}")))?;
    Ok(request)
}

/// Our answer, as the room's hub, to a verified `GroupInfoRequest`: a `GroupInfoResponse` (`noSuchRoom` for a
/// room we do not know), 421 for a room we follow.
pub(super) async fn answer_group_info(s: &MimiState, room: &str, request: &GroupInfoRequest) -> Result<Response, Fail> {
    encode(&s.provider.answer_group_info(room, request).await?)
}

/// The GroupInfo MLSMessage of a room we host (for the client API's `GET`).
pub(super) fn local_group_info(s: &MimiState, room: &str) -> Result<Response, Fail> {
    if let RoomRoute::Follower { hub } = s.provider.route(room)? {
        return Err(ProviderError::NotHub { room: room.to_owned(), hub }.into());
    }
    match s.provider.group_info(room)? {
        Some(gi) => Ok(tls(gi)),
        None => Err(Fail(StatusCode::NOT_FOUND, "no GroupInfo for this room yet".into())),
    }
}

pub(super) async fn key_material(
    State(s): State<MimiState>,
    Path(user): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Fail> {
    let from = peer_of(&s, &headers)?;
    let req = KeyMaterialRequest::decode(&body).map_err(bad)?;
    let target = if user.starts_with("mimi:") { user } else { room_of(&user) };
    if req.target_user != target {
        return Err(bad(format!("targetUser {:?} is not the user of the path ({target})", req.target_user)));
    }
    if !req.room_id.is_empty() && uri_domain(&req.room_id) != Some(from.as_str()) {
        return Err(Fail(StatusCode::FORBIDDEN, format!("{from} does not host {}", req.room_id)));
    }
    let answer = |user_status, clients| KeyMaterialResponse { user_status, user_uri: target.clone(), clients };
    if uri_domain(&target) != Some(s.provider.domain()) || s.provider.user(&target)?.is_none() {
        return encode(&answer(KeyMaterialUserCode::UserUnknown, Vec::new()));
    }
    if !req.ciphersuites.contains(&CIPHERSUITE_1) {
        return encode(&answer(KeyMaterialUserCode::NoCompatibleMaterial, Vec::new()));
    }
    let Some(kp) = s.provider.claim_key_package(&target).await? else {
        let exhausted = ClientKeyMaterial { client_uri: target.clone(), material: ClientMaterial::Exhausted };
        return encode(&answer(KeyMaterialUserCode::NoCompatibleMaterial, vec![exhausted]));
    };
    if !req.room_id.is_empty() {
        // The Welcome that uses this KeyPackage will come through the room's log.
        s.provider.follow(&req.room_id, &from).await?;
    }
    let kp = MlsMessageBytes::new(kp).map_err(|e| Fail(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let client = ClientKeyMaterial { client_uri: target.clone(), material: ClientMaterial::Success(kp) };
    encode(&answer(KeyMaterialUserCode::Success, vec![client]))
}

pub(super) async fn log(
    State(s): State<MimiState>,
    Path(room): Path<String>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, Fail> {
    let from = peer_of(&s, &headers)?;
    let room = room_of(&room);
    if !s.provider.has_follower(&room, &from)? {
        return Err(Fail(StatusCode::FORBIDDEN, format!("{from} does not follow {room}")));
    }
    let after = query_u64(&uri, "after")?;
    encode(&log_page(s.provider.entries_after(&room, after, PAGE)?, MAX_PAGE_BYTES))
}
