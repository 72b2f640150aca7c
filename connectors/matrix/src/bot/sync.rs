//! The bot's task: logs in (retrying while the homeserver is away), joins the linked rooms, then syncs. The events
//! of each `/sync` response go to the core, and the stored position moves past them only once the core durably
//! took them: a kill in between syncs the same response again, and the core drops what it has by event id.

use super::Inner;
use super::login::{self, LoginError};
use super::position::{Position, PositionFile, Undecrypted};
use crate::homeserver::HsError;
use crate::media_transfer::{self, Fetch};
use bridge_api::Health;
use bridge_api::connector::PendingAck;
use bridge_api::event::{InboundEvent, InboundKind};
use bridge_net::backoff::Backoff;
use matrix_sdk::config::{SyncSettings, SyncToken};
use matrix_sdk::deserialized_responses::{TimelineEvent, TimelineEventKind, UnableToDecryptReason, WithheldCode};
use matrix_sdk::media::{MediaFormat, MediaRequestParameters};
use matrix_sdk::room::{MessagesOptions, Room};
use matrix_sdk::ruma::events::AnySyncTimelineEvent;
use matrix_sdk::ruma::events::room::MediaSource;
use matrix_sdk::ruma::serde::Raw;
use matrix_sdk::sync::Timeline;
use matrix_sdk::{Client, ruma::OwnedRoomId};
use std::sync::Arc;
use std::time::Duration;

/// How long one `/sync` waits for news.
const POLL: Duration = Duration::from_secs(30);
/// Most `/messages` pages read back to the last event taken after a `limited` timeline.
const BACKFILL_PAGES: usize = 20;

pub(super) async fn run(inner: Arc<Inner>) {
    let mut stop = inner.stop.subscribe();
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
    let client = loop {
        let attempt = tokio::select! {
            r = login::client(&inner.cfg, &inner.dir) => r,
            _ = stop.wait_for(|s| *s) => return,
        };
        match attempt {
            Ok(c) => break c,
            Err(LoginError::BadCredentials(reason)) => {
                tracing::error!(account = %inner.id, %reason, "the Matrix bot cannot log in; fix its credentials");
                inner.set_health(Health::BadCredentials { reason });
                return;
            }
            Err(e) => {
                let retry_in = backoff.next_delay();
                tracing::warn!(account = %inner.id, error = %e, ?retry_in, "the Matrix bot is not logged in yet");
                inner.set_health(Health::BackingOff { retry_in, reason: e.to_string() });
                tokio::select! {
                    _ = tokio::time::sleep(retry_in) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
            }
        }
    };
    let _ = inner.client.set(client.clone());
    let file = PositionFile::new(&inner.dir);
    let mut position = match file.load() {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(account = %inner.id, error = %e, "the Matrix bot's sync position cannot be read; fix or remove it");
            inner.set_health(Health::Stopped);
            return;
        }
    };
    backoff.reset();
    // The first sync returns at once (it catches up); later ones wait for news.
    let mut poll = Duration::ZERO;
    loop {
        join_linked(&inner).await;
        // Never the client's own stored token: only ours says what the core took.
        let token = match &position.token {
            Some(token) => SyncToken::Specific(token.clone()),
            None => SyncToken::NoToken,
        };
        let settings = SyncSettings::default().timeout(poll).token(token);
        let synced = tokio::select! {
            r = client.sync_once(settings) => r,
            _ = stop.wait_for(|s| *s) => return,
        };
        let outcome = match synced {
            Ok(response) => {
                let mut next = position.clone();
                let first = next.token.is_none();
                // Rooms the bot was removed from come under `leave`, with what was said up to its removal.
                let joined = response.rooms.joined.into_iter().map(|(id, u)| (id, u.timeline));
                let rooms = joined.chain(response.rooms.left.into_iter().map(|(id, u)| (id, u.timeline))).collect();
                match take(&inner, &client, rooms, &mut next, first).await {
                    Ok(()) => {
                        next.token = Some(response.next_batch);
                        match file.save(&next) {
                            Ok(()) => Ok(next),
                            Err(e) => Err(e),
                        }
                    }
                    Err(e) => Err(e),
                }
            }
            Err(e) if login::is_unknown_token(&e) => {
                let reason = "the homeserver ended the bot's session; restart the daemon to log in again".to_owned();
                tracing::error!(account = %inner.id, "{reason}");
                inner.set_health(Health::BadCredentials { reason });
                return;
            }
            Err(e) => Err(login::classify(&e).to_string()),
        };
        match outcome {
            Ok(next) => {
                position = next;
                backoff.reset();
                poll = POLL;
                inner.set_health(Health::Connected);
            }
            Err(reason) => {
                let retry_in = backoff.next_delay();
                tracing::warn!(account = %inner.id, error = %reason, ?retry_in, "Matrix bot sync not taken; trying again");
                inner.set_health(Health::BackingOff { retry_in, reason });
                tokio::select! {
                    _ = tokio::time::sleep(retry_in) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
            }
        }
    }
}

/// Joins the linked rooms the bot is not in yet (the first time, or invited since), but not those someone removed
/// it from (kicked or banned: the portal heard it from them), until it is invited back or the room linked again.
async fn join_linked(inner: &Inner) {
    let Some(client) = inner.client.get() else { return };
    let rooms: Vec<(String, Option<OwnedRoomId>)> =
        inner.rooms().iter().map(|(n, id)| (n.clone(), id.clone())).collect();
    let mut missing = Vec::new();
    for (name, id) in rooms {
        match id.as_ref().and_then(|id| client.get_room(id)) {
            Some(room) if room.state() == matrix_sdk::RoomState::Joined => {}
            Some(room) if removed_from(&room, &inner.tr.bot_user_id).await => {
                tracing::debug!(account = %inner.id, room = %name, "the Matrix bot was removed from the room: not rejoined");
            }
            _ => missing.push(name),
        }
    }
    for name in missing {
        if let Err(e) = inner.join_room(&name).await {
            tracing::debug!(account = %inner.id, room = %name, error = %e, "the Matrix bot is not in the room yet");
        }
    }
}

/// Whether someone else removed the bot from `room` (kicked or banned it) and it was not invited back since.
pub(super) async fn removed_from(room: &Room, bot: &str) -> bool {
    if !matches!(room.state(), matrix_sdk::RoomState::Left | matrix_sdk::RoomState::Banned) {
        return false;
    }
    let Ok(bot) = matrix_sdk::ruma::OwnedUserId::try_from(bot) else { return false };
    matches!(room.get_member_no_sync(&bot).await, Ok(Some(m)) if m.event().sender() != bot)
}

/// Hands the events of the linked rooms in `rooms` (joined, or left since the last sync) to the core and records how far they went in `position`;
/// `Ok` once the core durably took them (or refused them for good). What was said before the bridge came is not
/// bridged: the very first sync only marks where the rooms stand, and a room joined later starts after the join.
async fn take(
    inner: &Inner,
    client: &Client,
    rooms: Vec<(OwnedRoomId, Timeline)>,
    position: &mut Position,
    first: bool,
) -> Result<(), String> {
    let mut pending = Vec::new();
    resolve_linked(inner, client).await?;
    for (room_id, timeline) in rooms {
        let Some(leg_room) = inner.linked_as(room_id.as_str()) else {
            // Unlinked: linked again later, the room starts afresh (not read back to what was taken before). Not
            // while a linked alias is unresolved: the room may be that one.
            if inner.rooms().values().all(Option::is_some) {
                position.last_event.remove(room_id.as_str());
            }
            continue;
        };
        let Some(room) = client.get_room(&room_id) else { continue };
        let mut events = timeline.events;
        let bot = inner.tr.bot_user_id.as_str();
        let known = position.last_event.contains_key(room_id.as_str());
        if first {
            // The very first sync marks where the rooms stand: what was said before the bridge came is not bridged.
            if let Some(last) = events.iter().rev().find_map(TimelineEvent::event_id) {
                position.last_event.insert(room_id.to_string(), last.to_string());
            }
            continue;
        }
        // A timeline that reaches back to the last event taken (a room joined again shows its latest events, whatever
        // the sync's token): what it holds up to that one was taken.
        let last = position.last_event.get(room_id.as_str());
        if !drop_taken(&mut events, last.map(String::as_str))
            && known
            && timeline.limited
            && let (Some(last), Some(from)) = (last, timeline.prev_batch)
        {
            // Said after the last sync taken, in a room known before: read back what a `limited` timeline leaves out.
            let mut older = backfill(&room, from, last).await;
            older.append(&mut events);
            events = older;
        }
        // The bot (re)joined: the room starts after its join, whatever it was before (a room linked again is not read
        // back to when it was unlinked) — but what it saw before its removal, and the removal, are taken.
        let newest = events.last().and_then(TimelineEvent::event_id).map(|id| id.to_string());
        skip_while_out(&mut events, bot, known);
        if events.is_empty() && !known {
            // Marked as known from the join on, so that a later `limited` timeline is read back: at the join itself,
            // the newest event of this timeline (not the room's newest as read now, which may have come after this
            // sync and is not taken yet; a room with no event in this sync is marked by its next one).
            if let Some(last) = newest {
                position.last_event.insert(room_id.to_string(), last);
            }
        }
        for ev in events {
            let Some(event_id) = ev.event_id() else { continue };
            let inbound = match &ev.kind {
                TimelineEventKind::UnableToDecrypt { event, utd_info } => {
                    position.wait_for_keys(Undecrypted {
                        room_id: room_id.to_string(),
                        event_id: event_id.to_string(),
                        event: serde_json::from_str(event.json().get()).unwrap_or_default(),
                        at_ms: now_ms(),
                    });
                    let withheld = match &utd_info.reason {
                        UnableToDecryptReason::MissingMegolmSession { withheld_code } => withheld_code.as_ref(),
                        _ => None,
                    };
                    undecrypted_notice(inner, &room, &leg_room, event, withheld).await
                }
                _ => translate(inner, client, &room, &leg_room, ev.raw()).await?,
            };
            if let Some(inbound) = inbound {
                pending.extend(crate::handover::queue(&inner.id, &inner.ctx.inbound, inbound).await?);
            }
            position.last_event.insert(room_id.to_string(), event_id.to_string());
        }
        if matches!(room.state(), matrix_sdk::RoomState::Left | matrix_sdk::RoomState::Banned) {
            // Out of the room: back in it, nothing is read back to before (what is said meanwhile is not bridged).
            position.last_event.remove(room_id.as_str());
        }
    }
    decrypt_waiting(inner, client, position, &mut pending).await?;
    crate::handover::settled(&inner.id, pending).await
}

/// Drops from `events` (oldest first) those up to `last`, the last event taken, if it is among them; false if not.
fn drop_taken(events: &mut Vec<TimelineEvent>, last: Option<&str>) -> bool {
    let Some(last) = last else { return false };
    let Some(i) = events.iter().position(|ev| ev.event_id().is_some_and(|id| id.as_str() == last)) else {
        return false;
    };
    events.drain(..=i);
    true
}

/// Drops from `events` (oldest first, after the last event taken) what came while the bot was out of the room, its
/// joins included, if it joined in them. A room new to it (not `known`: never taken, or left since) starts after
/// its last join. In a room it was in at the last sync taken, it is what came between each removal (kicked, banned,
/// or left) and the join that follows; the removal is kept; a timeline that shows a join before any removal (the
/// removal left out) starts after that first join. So a bot kicked and invited back within one sync (while the
/// bridge was down, say) still bridges what was said before the kick, and the kick.
fn skip_while_out(events: &mut Vec<TimelineEvent>, bot: &str, known: bool) {
    let moves: Vec<Option<Move>> = events.iter().map(|ev| move_of(ev.raw(), bot)).collect();
    if !known {
        if let Some(i) = moves.iter().rposition(|m| *m == Some(Move::Join)) {
            events.drain(..=i);
        }
        return;
    }
    let mut inside = moves.iter().flatten().next() != Some(&Move::Join);
    let mut moves = moves.into_iter();
    events.retain(|_| match moves.next().flatten() {
        Some(Move::Join) => {
            inside = true;
            false
        }
        Some(Move::Removal) if inside => {
            inside = false;
            true
        }
        _ => inside,
    });
}

/// A change of a user's own membership in a room ([`move_of`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Move {
    /// Joined, from not joined (not a profile change of a member who was joined already).
    Join,
    /// Left or banned (kicked, banned, or left).
    Removal,
}

/// The change of `user`'s own membership that `raw` makes, if it is one.
fn move_of(raw: &Raw<AnySyncTimelineEvent>, user: &str) -> Option<Move> {
    let field = |name: &str| raw.get_field::<String>(name).ok().flatten();
    if field("type").as_deref() != Some("m.room.member") || field("state_key").as_deref() != Some(user) {
        return None;
    }
    let value = |name: &str| raw.get_field::<serde_json::Value>(name).ok().flatten().unwrap_or_default();
    match value("content")["membership"].as_str() {
        Some("join") if value("unsigned")["prev_content"]["membership"] != "join" => Some(Move::Join),
        Some("leave" | "ban") => Some(Move::Removal),
        _ => None,
    }
}

/// Learns the room id of every linked room not joined yet (an id is its own; an alias is resolved), so that no
/// event of a linked room is taken for one of an unlinked room. `Err` while an alias cannot be resolved: the sync
/// is taken again.
async fn resolve_linked(inner: &Inner, client: &Client) -> Result<(), String> {
    let unresolved: Vec<String> = inner.rooms().iter().filter(|(_, id)| id.is_none()).map(|(n, _)| n.clone()).collect();
    for name in unresolved {
        let id = match OwnedRoomId::try_from(name.as_str()) {
            Ok(id) => id,
            Err(_) => {
                let Ok(alias) = matrix_sdk::ruma::OwnedRoomAliasId::try_from(name.as_str()) else { continue };
                match client.resolve_room_alias(&alias).await {
                    Ok(r) => r.room_id,
                    Err(e) => match login::classify(&e.into()) {
                        LoginError::BadCredentials(why) => {
                            tracing::warn!(account = %inner.id, room = %name, %why, "a linked alias does not resolve");
                            continue;
                        }
                        other => return Err(format!("resolving {name}: {other}")),
                    },
                }
            }
        };
        inner.rooms().entry(name).and_modify(|slot| *slot = slot.take().or(Some(id)));
    }
    Ok(())
}

/// The events before a `limited` timeline back to `last` (excluded), oldest first: at most [`BACKFILL_PAGES`]
/// pages, beyond which what is older is logged as skipped.
async fn backfill(room: &Room, from: String, last: &str) -> Vec<TimelineEvent> {
    let mut older = Vec::new();
    let mut from = Some(from);
    for _ in 0..BACKFILL_PAGES {
        let Some(token) = from.take() else { break };
        let mut options = MessagesOptions::backward();
        options.from = Some(token);
        options.limit = 100u32.into();
        let page = match room.messages(options).await {
            Ok(page) => page,
            Err(e) => {
                // Stopped where it is: what it read is bridged, the rest is logged (a retry would stall the room).
                tracing::warn!(room = %room.room_id(), error = %e, "backfill failed: older events are not bridged");
                break;
            }
        };
        for ev in page.chunk {
            if ev.event_id().is_some_and(|id| id.as_str() == last) {
                older.reverse();
                return older;
            }
            older.push(ev);
        }
        from = page.end;
    }
    if from.is_some() {
        tracing::warn!(room = %room.room_id(), pages = BACKFILL_PAGES, "backfill stopped short of the last event taken: older events are not bridged");
    }
    older.reverse();
    older
}

/// The core event of one timeline event, with its files kept in the media store; `None` if it is not bridged.
async fn translate(
    inner: &Inner,
    client: &Client,
    room: &Room,
    leg_room: &str,
    raw: &Raw<AnySyncTimelineEvent>,
) -> Result<Option<InboundEvent>, String> {
    let ev = match raw.deserialize() {
        Ok(ev) => ev.into_full_event(room.room_id().to_owned()),
        Err(e) => {
            tracing::debug!(account = %inner.id, error = %e, "undecodable event dropped");
            return Ok(None);
        }
    };
    let name = display_name(room, ev.sender()).await;
    let mut inbound = match inner.tr.inbound(&ev, name.as_deref()) {
        Ok(inbound) => inbound,
        Err(skip) => {
            tracing::debug!(account = %inner.id, event = %ev.event_id(), %skip, "not bridged");
            return Ok(None);
        }
    };
    inbound.leg.room = leg_room.to_owned();
    if inbound.from_bridge {
        return Ok(Some(inbound));
    }
    if let InboundKind::Message { draft, .. } | InboundKind::Edit { draft, .. } = &mut inbound.kind {
        let fetch = ClientFetch(client);
        media_transfer::download_all(&fetch, inner.ctx.media.as_ref(), &inner.cfg.server_name, draft).await?;
    }
    Ok(Some(inbound))
}

/// The notice standing for an event the bot cannot decrypt yet ([`crate::Translator::undecrypted_notice`]).
async fn undecrypted_notice(
    inner: &Inner,
    room: &Room,
    leg_room: &str,
    event: &Raw<AnySyncTimelineEvent>,
    withheld: Option<&WithheldCode>,
) -> Option<InboundEvent> {
    let sender = event.get_field::<String>("sender").ok().flatten()?;
    let event_id = event.get_field::<String>("event_id").ok().flatten()?;
    let user_id = matrix_sdk::ruma::OwnedUserId::try_from(sender.as_str()).ok()?;
    let name = display_name(room, &user_id).await;
    inner.tr.undecrypted_notice(leg_room, &sender, name, &event_id, withheld)
}

/// Tries again the events waiting for their keys; those decrypted now go to the core (and stop waiting).
async fn decrypt_waiting(
    inner: &Inner,
    client: &Client,
    position: &mut Position,
    pending: &mut Vec<PendingAck>,
) -> Result<(), String> {
    let mut still = Vec::new();
    for waiting in std::mem::take(&mut position.undecrypted) {
        let room_id = OwnedRoomId::try_from(waiting.room_id.as_str()).ok();
        let (Some(room), Some(leg_room)) =
            (room_id.and_then(|id| client.get_room(&id)), inner.linked_as(&waiting.room_id))
        else {
            continue; // the room is no longer linked
        };
        let Ok(raw) = serde_json::value::to_raw_value(&waiting.event) else { continue };
        let decrypted = match room.decrypt_event(&Raw::from_json(raw), None).await {
            Ok(ev) if matches!(ev.kind, TimelineEventKind::Decrypted(_)) => ev,
            Ok(_) | Err(_) => {
                still.push(waiting);
                continue;
            }
        };
        tracing::info!(account = %inner.id, event = %waiting.event_id, "an encrypted event is decrypted now");
        if let Some(inbound) = translate(inner, client, &room, &leg_room, decrypted.raw()).await? {
            pending.extend(crate::handover::queue(&inner.id, &inner.ctx.inbound, inbound).await?);
        }
    }
    position.undecrypted = still;
    Ok(())
}

/// A member's display name in `room`, as the client's store knows it.
async fn display_name(room: &Room, user: &matrix_sdk::ruma::UserId) -> Option<String> {
    room.get_member_no_sync(user).await.ok().flatten().and_then(|m| m.display_name().map(str::to_owned))
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Downloads through the bot's client (authenticated media).
struct ClientFetch<'a>(&'a Client);

#[async_trait::async_trait]
impl Fetch for ClientFetch<'_> {
    async fn fetch(&self, mxc: &str, max: u64) -> Result<(String, Vec<u8>), HsError> {
        // A file of an encrypted room carries its key: the client decrypts it (and checks its hash).
        let source = match crate::media::encrypted_file(mxc) {
            Some(file) => MediaSource::Encrypted(Box::new(file)),
            None => MediaSource::Plain(mxc.into()),
        };
        let request = MediaRequestParameters { source, format: MediaFormat::File };
        let bytes = self.0.media().get_media_content(&request, false).await.map_err(|e| {
            // Only the homeserver being away is worth waiting for; a file that does not decrypt, fails its hash or
            // is refused is a note in the text, or one bad file would hold up the whole account.
            let status = e.as_client_api_error().map(|api| api.status_code.as_u16());
            let away = matches!(e, matrix_sdk::Error::Http(ref h) if matches!(**h, matrix_sdk::HttpError::Reqwest(_)))
                || status.is_some_and(|s| s == 429 || s >= 500);
            if away {
                HsError::Unavailable(e.to_string())
            } else {
                HsError::Refused { status: status.unwrap_or(0), errcode: String::new(), error: e.to_string() }
            }
        })?;
        if bytes.len() as u64 > max {
            let error = format!("{} bytes, more than {max}", bytes.len());
            return Err(HsError::Refused { status: 413, errcode: "M_TOO_LARGE".into(), error });
        }
        Ok(("application/octet-stream".into(), bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    const BOT: &str = "@relay:b.test";

    fn ev(id: &str, mut body: Value) -> TimelineEvent {
        body["event_id"] = json!(format!("${id}"));
        body["origin_server_ts"] = json!(1);
        let raw = serde_json::value::to_raw_value(&body).expect("json");
        TimelineEvent::from_plaintext(Raw::from_json(raw))
    }

    fn said(id: &str) -> TimelineEvent {
        ev(
            id,
            json!({"type": "m.room.message", "sender": "@alice:b.test", "content": {"msgtype": "m.text", "body": id}}),
        )
    }

    fn member(id: &str, sender: &str, membership: &str, prev: &str) -> TimelineEvent {
        let content = json!({"membership": membership});
        let unsigned = json!({"prev_content": {"membership": prev}});
        let body = json!({"type": "m.room.member", "sender": sender, "state_key": BOT, "content": content, "unsigned": unsigned});
        ev(id, body)
    }

    fn ids(events: &[TimelineEvent]) -> Vec<String> {
        events
            .iter()
            .filter_map(TimelineEvent::event_id)
            .map(|id| id.as_str().trim_start_matches('$').to_owned())
            .collect()
    }

    fn skipped(mut events: Vec<TimelineEvent>, known: bool) -> Vec<String> {
        skip_while_out(&mut events, BOT, known);
        ids(&events)
    }

    #[test]
    fn kicked_and_invited_back_within_one_sync_keeps_what_came_before_the_kick() {
        let events = vec![
            said("before"),
            member("kick", "@alice:b.test", "leave", "join"),
            said("while-out"),
            member("invite", "@alice:b.test", "invite", "leave"),
            member("join", BOT, "join", "invite"),
            said("after"),
        ];
        assert_eq!(skipped(events, true), ["before", "kick", "after"]);
    }

    #[test]
    fn a_room_new_to_the_bot_starts_after_its_join() {
        let events = vec![
            said("history"),
            member("kick", "@alice:b.test", "leave", "join"),
            member("join", BOT, "join", "invite"),
            said("after"),
        ];
        assert_eq!(skipped(events, false), ["after"]);
    }

    #[test]
    fn left_and_linked_again_within_one_sync_skips_what_was_said_unlinked() {
        let events = vec![
            said("before"),
            member("leave", BOT, "leave", "join"),
            said("unlinked"),
            member("ban", "@alice:b.test", "ban", "leave"),
            member("unban", "@alice:b.test", "leave", "ban"),
            member("join", BOT, "join", "leave"),
            said("after"),
        ];
        assert_eq!(skipped(events, true), ["before", "leave", "after"]);
    }

    #[test]
    fn no_join_or_a_profile_change_skips_nothing() {
        let events = vec![said("a"), member("rename", BOT, "join", "join"), said("b")];
        assert_eq!(skipped(events, true), ["a", "rename", "b"]);
        let events = vec![said("a"), member("kick", "@alice:b.test", "leave", "join")];
        assert_eq!(skipped(events, true), ["a", "kick"]);
    }

    #[test]
    fn each_time_out_is_skipped() {
        let events = vec![
            said("a"),
            member("kick", "@alice:b.test", "leave", "join"),
            said("x"),
            member("join", BOT, "join", "invite"),
            said("b"),
            member("leave", BOT, "leave", "join"),
            said("y"),
            member("join2", BOT, "join", "leave"),
            said("c"),
        ];
        assert_eq!(skipped(events.clone(), true), ["a", "kick", "b", "leave", "c"]);
        assert_eq!(skipped(events, false), ["c"], "a room new to the bot starts after its last join");
    }

    #[test]
    fn a_room_joined_again_shows_what_was_taken_before_and_that_is_dropped() {
        // Synapse's timeline of a room joined again: its latest events, whatever the sync's token.
        let mut events = vec![
            said("taken"),
            said("last-taken"),
            said("before"),
            member("kick", "@alice:b.test", "leave", "join"),
            member("join", BOT, "join", "invite"),
            said("after"),
        ];
        assert!(drop_taken(&mut events, Some("$last-taken")));
        skip_while_out(&mut events, BOT, true);
        assert_eq!(ids(&events), ["before", "kick", "after"]);
        let mut events = vec![said("a"), said("b")];
        assert!(!drop_taken(&mut events, Some("$older")), "not among them: read back instead");
        assert!(!drop_taken(&mut events, None));
        assert_eq!(ids(&events), ["a", "b"]);
    }

    #[test]
    fn a_join_whose_removal_the_timeline_left_out_starts_after_the_join() {
        let events = vec![said("while-out"), member("join", BOT, "join", "invite"), said("after")];
        assert_eq!(skipped(events, true), ["after"]);
    }
}
