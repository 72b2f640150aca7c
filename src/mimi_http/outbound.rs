//! What this provider asks of its peers: forwarding our clients' messages to the hub of a room hosted elsewhere,
//! fetching its GroupInfo, claiming KeyPackages of other providers' users, catching up from a hub's log, and — as a
//! hub — notifying our followers (one [`NotifyQueue`] per follower).

use super::http::{Answer, Peers};
use super::{Fail, MimiState, accepted, epoch_too_old, path_of, tls};
use axum::http::StatusCode;
use axum::response::Response;
use mimi_protocol::NotifyQueue;
use mimi_protocol::follower::{CatchUpBackoff, CatchUpStep};
use mimi_protocol::notifier::Outcome;
use mimi_protocol::wire::{
    DEFAULT_CIPHERSUITE, GroupInfoCode, GroupInfoRequest, GroupInfoResponse, KeyMaterialRequest, KeyMaterialResponse,
    KeyMaterialUserCode, LogPage, MlsMessageBytes, SubmitMessageRequest, SubmitMessageResponse, UpdateRoomResponse,
    WireMessage, wire_format,
};
use mimi_provider::PeerNotify;
use mimi_provider::service::Provider;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::mpsc;

fn bad_gateway(e: impl std::fmt::Display) -> Fail {
    Fail(StatusCode::BAD_GATEWAY, e.to_string())
}

/// The base URL of the configured peer `domain`.
fn base<'a>(s: &'a MimiState, domain: &str) -> Result<&'a str, Fail> {
    s.peers
        .get(domain)
        .map(|b| b.trim_end_matches('/'))
        .ok_or_else(|| bad_gateway(format!("{domain} is not a configured peer")))
}

/// A peer's answer that is not the success we expected: 404 and 403 pass through, the rest is a bad gateway.
fn unexpected(a: &Answer, what: &str) -> Fail {
    let reason = serde_json::from_slice::<serde_json::Value>(&a.body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_owned))
        .unwrap_or_default();
    let status = match a.status {
        403 => StatusCode::FORBIDDEN,
        404 => StatusCode::NOT_FOUND,
        _ => StatusCode::BAD_GATEWAY,
    };
    Fail(status, format!("{what}: the hub answered {}: {reason}", a.status))
}

/// Submits a client's application message to the hub of `room` (`/v1/submitMessage`).
pub(super) async fn submit(
    s: &MimiState,
    room: &str,
    hub: &str,
    user: &str,
    msg: MlsMessageBytes,
) -> Result<Response, Fail> {
    if msg.wire_format() != wire_format::PRIVATE {
        return Err(super::bad(format!(
            "{room} is hosted by {hub}: submit carries application messages there; commits and proposals go \
             through /client/v1/update"
        )));
    }
    let body = SubmitMessageRequest { app_message: msg, sending_uri: user.to_owned() }.encode().map_err(super::bad)?;
    let url = format!("{}/v1/submitMessage/{}", base(s, hub)?, path_of(room));
    let a = s.peers.request("POST", &url, s.provider.domain(), &[], body).await.map_err(bad_gateway)?;
    if a.status != 200 {
        return Err(unexpected(&a, "submitMessage"));
    }
    match SubmitMessageResponse::decode(&a.body).map_err(bad_gateway)? {
        SubmitMessageResponse::Accepted { .. } => Ok(accepted(a.sequence)),
        SubmitMessageResponse::EpochTooOld { current_epoch } => {
            catch_up_now(s, room).await;
            Ok(epoch_too_old(current_epoch))
        }
        SubmitMessageResponse::NotAllowed => Err(Fail(StatusCode::FORBIDDEN, "the hub refused the message".into())),
    }
}

/// What the hub made of an update we forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum HubVerdict {
    /// Sequenced.
    Accepted,
    /// Refused (or never sent): the hub did not sequence it.
    Refused,
    /// No clear answer (unreachable, 5xx, unreadable): it may have been sequenced.
    Unclear,
}

/// Sends a client's update (a verified `UpdateRequest`, as received) to the hub of `room` (`/v1/update`).
pub(super) async fn update(
    s: &MimiState,
    room: &str,
    hub: &str,
    user: &str,
    body: Vec<u8>,
) -> (HubVerdict, Result<Response, Fail>) {
    let url = match base(s, hub) {
        Ok(b) => format!("{b}/v1/update/{}", path_of(room)),
        Err(e) => return (HubVerdict::Refused, Err(e)),
    };
    let a = match s.peers.request("POST", &url, s.provider.domain(), &[("mimi-user", user)], body).await {
        Ok(a) => a,
        Err(e) => return (HubVerdict::Unclear, Err(bad_gateway(e))),
    };
    if a.status != 200 {
        let verdict = if (400..500).contains(&a.status) { HubVerdict::Refused } else { HubVerdict::Unclear };
        return (verdict, Err(unexpected(&a, "update")));
    }
    match UpdateRoomResponse::decode(&a.body) {
        Err(e) => (HubVerdict::Unclear, Err(bad_gateway(e))),
        Ok(UpdateRoomResponse::Success { .. }) => (HubVerdict::Accepted, Ok(accepted(a.sequence))),
        Ok(UpdateRoomResponse::WrongEpoch { current_epoch, .. }) => {
            catch_up_now(s, room).await;
            (HubVerdict::Refused, Ok(epoch_too_old(current_epoch)))
        }
        Ok(UpdateRoomResponse::NotAllowed { description } | UpdateRoomResponse::InvalidProposal { description }) => {
            let refusal = Fail(StatusCode::FORBIDDEN, format!("the hub refused the update: {description}"));
            (HubVerdict::Refused, Err(refusal))
        }
    }
}

/// Passes a client's `GroupInfoRequest` for a room hosted by `hub` to its `/v1/groupInfo` and answers the hub's
/// `GroupInfoResponse` unchanged (checked to decode; the client verifies and decrypts it).
pub(super) async fn group_info_request(
    s: &MimiState,
    room: &str,
    hub: &str,
    request: Vec<u8>,
) -> Result<Response, Fail> {
    let url = format!("{}/v1/groupInfo/{}", base(s, hub)?, path_of(room));
    let a = s.peers.request("POST", &url, s.provider.domain(), &[], request).await.map_err(bad_gateway)?;
    if a.status != 200 {
        return Err(unexpected(&a, "groupInfo"));
    }
    GroupInfoResponse::decode(&a.body).map_err(bad_gateway)?;
    Ok(tls(a.body))
}

/// The GroupInfo MLSMessage of a room hosted by `hub`, fetched with a `GroupInfoRequest` signed by this provider's
/// own key and credential (`mimi://DOMAIN`; so only open rooms answer) — for the client API's legacy `GET`.
pub(super) async fn group_info(s: &MimiState, room: &str, hub: &str) -> Result<Response, Fail> {
    let signer = s.provider.hub_signer().await?;
    let internal = |e: &dyn std::fmt::Display| Fail(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
    let credential = signer.sender.credential.credential().map_err(|e| internal(&e))?;
    let (request, secret) =
        GroupInfoRequest::new(DEFAULT_CIPHERSUITE, &signer, &signer.sender.signature_key, &credential, None)
            .map_err(|e| internal(&e))?;
    let body = request.encode().map_err(|e| internal(&e))?;
    let url = format!("{}/v1/groupInfo/{}", base(s, hub)?, path_of(room));
    let a = s.peers.request("POST", &url, s.provider.domain(), &[], body).await.map_err(bad_gateway)?;
    if a.status != 200 {
        return Err(unexpected(&a, "groupInfo"));
    }
    let response = GroupInfoResponse::decode(&a.body).map_err(bad_gateway)?;
    match response.status() {
        GroupInfoCode::Success => {}
        GroupInfoCode::NotAuthorized => {
            return Err(Fail(StatusCode::FORBIDDEN, "the hub refused the GroupInfo".into()));
        }
        GroupInfoCode::NoSuchRoom => return Err(Fail(StatusCode::NOT_FOUND, format!("unknown room {room}"))),
    }
    let tbe = response.open(room.as_bytes(), &secret).map_err(bad_gateway)?;
    Ok(tls(tbe.group_info.into_bytes()))
}

/// Claims a KeyPackage of `target`, another provider's user, for `room` on behalf of our `requester`
/// (`/v1/keyMaterial`).
pub(super) async fn key_package(
    s: &MimiState,
    requester: &str,
    target: &str,
    domain: &str,
    room: &str,
) -> Result<Response, Fail> {
    let base =
        s.peers.get(domain).ok_or_else(|| Fail(StatusCode::NOT_FOUND, format!("{domain} is not a configured peer")))?;
    let url = format!("{}/v1/keyMaterial/{}", base.trim_end_matches('/'), path_of(target));
    let body = KeyMaterialRequest::new(requester, target, room).encode().map_err(super::bad)?;
    let a = s.peers.request("POST", &url, s.provider.domain(), &[], body).await.map_err(bad_gateway)?;
    if a.status != 200 {
        return Err(unexpected(&a, "keyMaterial"));
    }
    let resp = KeyMaterialResponse::decode(&a.body).map_err(bad_gateway)?;
    match (resp.user_status, resp.first_key_package()) {
        (KeyMaterialUserCode::Success | KeyMaterialUserCode::PartialSuccess, Some(kp)) => {
            Ok(tls(kp.as_bytes().to_vec()))
        }
        (status, _) => Err(Fail(StatusCode::NOT_FOUND, format!("no KeyPackage of {target} ({status:?})"))),
    }
}

/// Catches up `room` from its hub now (the hub said it moved on), so the client finds the commit it missed.
async fn catch_up_now(s: &MimiState, room: &str) {
    if let Ok(after) = s.provider.last_seq(room) {
        catch_up(&s.provider, &s.peers, room, after).await;
    }
}

/// Fetches the hub's log of `room` after `after` until the local copy is complete. A page that makes no progress
/// (the hub's log does not hold what the follower waits for, yet) is asked for again after a backoff
/// ([`CatchUpBackoff`]); after too many such pages the catch-up stops and leaves the gap to the next notify or
/// resync.
pub async fn catch_up(provider: &Provider, peers: &Peers, room: &str, mut after: u64) {
    let Ok(Some(hub)) = provider.hub_of(room) else { return };
    let Some(base) = peers.get(&hub) else {
        tracing::warn!(room, hub, "the hub of a followed room is not a configured peer");
        return;
    };
    let mut pace = CatchUpBackoff::default();
    loop {
        let url = format!("{}/v1/log/{}?after={after}", base.trim_end_matches('/'), path_of(room));
        let page = match peers.request("GET", &url, provider.domain(), &[], Vec::new()).await {
            Ok(a) if a.status == 200 => LogPage::decode(&a.body).map_err(|e| e.to_string()),
            Ok(a) => Err(format!("HTTP {}", a.status)),
            Err(e) => Err(e),
        };
        match page {
            Ok(page) => match provider.accept_entries(room, page.0, true).await {
                Ok(Some(next)) => match pace.on_page(after, next) {
                    CatchUpStep::Now => after = next,
                    CatchUpStep::Wait(wait) => {
                        tracing::debug!(room, after, ?wait, "the hub's log page made no progress; asking again later");
                        tokio::time::sleep(wait).await;
                        after = next;
                    }
                    CatchUpStep::GiveUp => {
                        tracing::warn!(room, after, "the hub's log makes no progress; catch-up at the next notify");
                        provider.fetch_failed(room);
                        return;
                    }
                },
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

/// On start: catch up every followed room.
pub async fn resync_followed(provider: Provider, peers: Arc<Peers>) {
    for (room, _) in provider.followed() {
        let after = provider.last_seq(&room).unwrap_or(0);
        catch_up(&provider, &peers, &room, after).await;
    }
}

/// Sends the hub's notifies to followers, forever (spawn it once): one task per follower, each draining its
/// [`NotifyQueue`] in order, with backoff while the follower is unreachable. Aborting this task stops them all.
pub async fn run_notifier(provider: Provider, peers: Arc<Peers>) {
    let Some(mut rx) = provider.take_outbound() else { return };
    let mut workers: HashMap<String, mpsc::UnboundedSender<(String, u64)>> = HashMap::new();
    let mut tasks = tokio::task::JoinSet::new();
    while let Some(PeerNotify { peer, room, seq }) = rx.recv().await {
        let Some(base) = peers.get(&peer) else {
            tracing::warn!(peer, room, "a follower of the room is not a configured peer; not notified");
            continue;
        };
        let tx = workers.entry(peer.clone()).or_insert_with(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            let base = base.trim_end_matches('/').to_owned();
            tasks.spawn(notify_peer(provider.clone(), peers.clone(), peer, base, rx));
            tx
        });
        let _ = tx.send((room, seq));
    }
}

/// The notifies of one follower.
async fn notify_peer(
    provider: Provider,
    peers: Arc<Peers>,
    peer: String,
    base: String,
    mut rx: mpsc::UnboundedReceiver<(String, u64)>,
) {
    let mut queue = NotifyQueue::default();
    loop {
        while let Ok((room, seq)) = rx.try_recv() {
            queue.push(&room, seq);
        }
        let Some((room, seq)) = queue.next().map(|(r, s)| (r.to_owned(), s)) else {
            match rx.recv().await {
                Some((room, seq)) => queue.push(&room, seq),
                None => return,
            }
            continue;
        };
        let outcome = send_notify(&provider, &peers, &base, &room, seq).await;
        if outcome != Outcome::Delivered {
            tracing::debug!(peer, room, seq, ?outcome, "notify not delivered");
        }
        if let Some(wait) = queue.on_result(outcome) {
            let until = tokio::time::Instant::now() + wait;
            loop {
                tokio::select! {
                    () = tokio::time::sleep_until(until) => break,
                    m = rx.recv() => match m {
                        Some((room, seq)) => queue.push(&room, seq),
                        None => return,
                    },
                }
            }
        }
    }
}

async fn send_notify(provider: &Provider, peers: &Peers, base: &str, room: &str, seq: u64) -> Outcome {
    let Some(body) = provider.entry(room, seq).ok().flatten().and_then(|e| e.fanout.encode().ok()) else {
        tracing::warn!(room, seq, "a log entry to notify is unreadable; skipped");
        return Outcome::Refused;
    };
    let url = format!("{base}/v1/notify/{}", path_of(room));
    match peers.request("POST", &url, provider.domain(), &[("mimi-sequence", &seq.to_string())], body).await {
        Ok(a) => Outcome::of_status(a.status),
        Err(_) => Outcome::Unreachable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mimi_http::tests::entry;
    use axum::routing::get;
    use mimi_store::{Backend, CommitConfig};
    use std::sync::atomic::{AtomicUsize, Ordering};

    const ROOM: &str = "mimi://a.test/r/x";

    #[tokio::test]
    async fn a_catch_up_whose_pages_make_no_progress_backs_off_instead_of_spinning() {
        // A hub whose log is empty, although it notified entry 2.
        let asked = Arc::new(AtomicUsize::new(0));
        let counter = asked.clone();
        let hub = axum::Router::new().route(
            "/v1/log/{*room}",
            get(move || {
                counter.fetch_add(1, Ordering::SeqCst);
                async { LogPage(Vec::new()).encode().expect("encode") }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let server = tokio::spawn(async move { axum::serve(listener, hub).await });

        let dir = tempfile::tempdir().expect("tempdir");
        let store = bridge_core::open_store(dir.path(), Some(Backend::Redb), CommitConfig::default()).expect("store");
        let provider = Provider::open("b.test", store).expect("provider");
        provider.follow(ROOM, "a.test").await.expect("follow");
        let fetch = provider.accept_entries(ROOM, vec![entry(2, 10)], false).await.expect("notify");
        assert_eq!(fetch, Some(0), "a gap");
        let peers = Peers::new(HashMap::from([("a.test".to_owned(), url)]), None);

        let p = provider.clone();
        let task = tokio::spawn(async move { catch_up(&p, &peers, ROOM, 0).await });
        tokio::time::sleep(std::time::Duration::from_millis(1000)).await;
        let n = asked.load(Ordering::SeqCst);
        assert!((2..=4).contains(&n), "200 ms, then 400 ms between pages that make no progress: {n} requests");
        assert!(!task.is_finished(), "still trying");
        task.abort();
        server.abort();
    }
}
