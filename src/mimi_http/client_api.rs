//! The client API for native MLS clients (`/client/v1/...`; see the table in the [module above](super)). Requests
//! about rooms hosted by a peer go to the [outbound module](super::outbound).

use super::outbound::HubVerdict;
use super::{
    Fail, MAX_PAGE_BYTES, MAX_WAIT, MimiState, PAGE, Registration, accepted, bad, encode, epoch_too_old, log_page,
    outbound, query, query_u64, room_of,
};
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use mimi_protocol::hub::{JoinPolicy, Origin, Refusal, Sequenced};
use mimi_protocol::wire::{MlsMessageBytes, UpdateRequest, WireMessage};
use mimi_provider::service::{ProviderError, RoomRoute, uri_domain};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::time::Duration;

#[derive(Deserialize)]
pub(super) struct RegisterBody {
    user: String,
    token: Option<String>,
}

fn to_hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn sha256_hex(s: &str) -> String {
    to_hex(&Sha256::digest(s.as_bytes()))
}

/// The answer to a message our hub sequenced (or refused).
fn verdict(r: Result<Sequenced, ProviderError>) -> Result<Response, Fail> {
    match r {
        Ok(a) => Ok(accepted(Some(a.seq))),
        Err(ProviderError::Refused(Refusal::EpochTooOld { current_epoch })) => Ok(epoch_too_old(current_epoch)),
        Err(e) => Err(e.into()),
    }
}

/// The hub of a room hosted elsewhere (`None` if we host it): the one we follow it from, or the domain it is named
/// after if that is a configured peer. An unknown room otherwise.
fn remote_hub(s: &MimiState, room: &str) -> Result<Option<String>, Fail> {
    match s.provider.route(room)? {
        RoomRoute::Hub => Ok(None),
        RoomRoute::Follower { hub } => Ok(Some(hub)),
        RoomRoute::Remote { domain } if s.peers.contains_key(&domain) => Ok(Some(domain)),
        RoomRoute::Remote { domain } => {
            Err(Fail(StatusCode::NOT_FOUND, format!("unknown room {room} ({domain} is not a configured peer)")))
        }
    }
}

pub(super) async fn register(State(s): State<MimiState>, Json(b): Json<RegisterBody>) -> Result<Response, Fail> {
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

pub(super) async fn upload_key_packages(
    State(s): State<MimiState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Fail> {
    let u = user(&s, &headers)?;
    let mut r = mimi_protocol::wire::Reader::new(&body);
    let mut kps = Vec::new();
    while r.finish().is_err() {
        kps.push(r.mls_message().map_err(bad)?);
    }
    s.provider.upload_key_packages(&u, &kps).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
pub(super) struct CreateRoom {
    name: String,
    epoch: u64,
    #[serde(default)]
    invite_only: bool,
}

pub(super) async fn create_room(
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

pub(super) async fn group_info(
    State(s): State<MimiState>,
    Path(room): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Fail> {
    user(&s, &headers)?;
    let room = room_of(&room);
    match remote_hub(&s, &room)? {
        None => super::peer::local_group_info(&s, &room),
        Some(hub) => outbound::group_info(&s, &room, &hub).await,
    }
}

/// `POST /client/v1/groupInfo/{roomId}`: a client's own signed `GroupInfoRequest` → the hub's
/// `GroupInfoResponse` (ours, or the remote hub's unchanged).
pub(super) async fn post_group_info(
    State(s): State<MimiState>,
    Path(room): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Fail> {
    user(&s, &headers)?;
    let room = room_of(&room);
    let request = super::peer::verified_group_info_request(&body)?;
    match remote_hub(&s, &room) {
        Ok(None) | Err(Fail(StatusCode::NOT_FOUND, _)) => super::peer::answer_group_info(&s, &room, &request).await,
        Ok(Some(hub)) => outbound::group_info_request(&s, &room, &hub, body.to_vec()).await,
        Err(e) => Err(e),
    }
}

pub(super) async fn put_group_info(
    State(s): State<MimiState>,
    Path(room): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Fail> {
    let u = user(&s, &headers)?;
    let room = room_of(&room);
    require_participant(&s, &room, &u)?;
    let gi = MlsMessageBytes::new(body.to_vec()).map_err(bad)?;
    s.provider.put_group_info(&room, gi).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub(super) async fn claim_key_package(
    State(s): State<MimiState>,
    Path(target): Path<String>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, Fail> {
    let u = user(&s, &headers)?;
    let target = if target.starts_with("mimi:") { target } else { room_of(&target) };
    let room = query(&uri, "room").map(|r| room_of(r.trim_start_matches("mimi://")));
    if let Some(room) = &room {
        require_participant(&s, room, &u)?;
    }
    let domain = uri_domain(&target).ok_or_else(|| bad(format!("bad user URI {target:?}")))?;
    let answer = if domain != s.provider.domain() {
        outbound::key_package(&s, &u, &target, domain, room.as_deref().unwrap_or("")).await?
    } else {
        match s.provider.claim_key_package(&target).await? {
            Some(kp) => super::tls(kp),
            None => return Err(Fail(StatusCode::NOT_FOUND, format!("no KeyPackage left for {target}"))),
        }
    };
    // The invitee goes on the participant list only once there is a KeyPackage to add them with.
    if let Some(room) = &room {
        s.provider.add_participant(room, &target).await?;
    }
    Ok(answer)
}

/// 403 unless `user` is a participant of `room` (hosted here): only members invite or publish GroupInfo.
fn require_participant(s: &MimiState, room: &str, user: &str) -> Result<(), Fail> {
    if s.provider.is_participant(room, user)? {
        Ok(())
    } else {
        Err(Fail(StatusCode::FORBIDDEN, format!("{user} is not a participant of {room}")))
    }
}

pub(super) async fn update(
    State(s): State<MimiState>,
    Path(room): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Fail> {
    let u = user(&s, &headers)?;
    let room = room_of(&room);
    let req = UpdateRequest::decode(&body).map_err(bad)?;
    let Some(hub) = remote_hub(&s, &room)? else {
        return verdict(s.provider.update(&room, req, &u, Origin::Client(u.clone())).await);
    };
    // Follow before the hub hears of us, so that its first notify finds the room; a room we did not follow yet is
    // followed tentatively, and forgotten again if the hub refuses (else anyone could make us keep follow records
    // of any room). In a task of its own, so that a client hanging up cannot leave the follow unsettled.
    let task = tokio::spawn(async move {
        if let Err(e) = s.provider.follow_for_update(&room, &hub).await {
            let _ = s.provider.update_settled(&room, false).await;
            return Err(e.into());
        }
        let (verdict, answer) = outbound::update(&s, &room, &hub, &u, body.to_vec()).await;
        if let Err(e) = s.provider.update_settled(&room, verdict != HubVerdict::Refused).await {
            tracing::warn!(room, error = %e, "could not forget a room the hub refused us");
        }
        answer
    });
    task.await.unwrap_or_else(|e| Err(Fail(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())))
}

pub(super) async fn submit(
    State(s): State<MimiState>,
    Path(room): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Fail> {
    let u = user(&s, &headers)?;
    let room = room_of(&room);
    let msg = MlsMessageBytes::new(body.to_vec()).map_err(bad)?;
    match s.provider.route(&room)? {
        RoomRoute::Hub => verdict(s.provider.submit(&room, msg, &u, Origin::Client(u.clone())).await),
        RoomRoute::Follower { hub } => outbound::submit(&s, &room, &hub, &u, msg).await,
        RoomRoute::Remote { .. } => Err(ProviderError::UnknownRoom(room).into()),
    }
}

pub(super) async fn messages(
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
    encode(&log_page(s.provider.entries_after(&room, after, PAGE)?, MAX_PAGE_BYTES))
}

pub(super) async fn invites(State(s): State<MimiState>, headers: HeaderMap) -> Result<Response, Fail> {
    let u = user(&s, &headers)?;
    let list: Vec<_> = s
        .provider
        .invites(&u)?
        .into_iter()
        .map(|(room, seq)| serde_json::json!({ "room": room, "seq": seq }))
        .collect();
    Ok(Json(list).into_response())
}
