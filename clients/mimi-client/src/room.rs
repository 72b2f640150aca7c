//! One room as its members see it through the client API: catching up with the room's log (decrypted messages
//! kept in the store until printed), and sending MLS messages — application messages with `submit`, commits with
//! `update` (the draft's HandshakeBundle: commit, Welcome, GroupInfo of the new epoch). Works the same whether the
//! server hosts the room or forwards to its hub.

use crate::api::Api;
use crate::session::{Res, Session, kept_list};
use mimi_content::{Message, PartBody};
use mimi_mls::{CommitOutput, KeptMessage, LegacySender, MlsError, PortalGroup, Received};
use mimi_protocol::wire::{
    GroupInfoOption, LogPage, MlsMessageBytes, RatchetTreeOption, UpdateRequest, WireMessage, wire_format,
};
use std::time::Duration;

/// The `{roomId}` of a room URI in the API's paths.
pub fn room_path(room: &str) -> &str {
    room.trim_start_matches("mimi://")
}

/// The JSON line of a received message.
fn describe(sender: &str, m: &Message, room: &str) -> serde_json::Value {
    let c = m.content();
    let mut text = String::new();
    let mut attachments = Vec::new();
    c.nested_part.walk(&mut |p| match &p.body {
        PartBody::Single(s) if text.is_empty() && s.content_type.starts_with("text/") => {
            text = String::from_utf8_lossy(&s.content).into_owned();
        }
        // What it takes to fetch and decrypt the file (the message's own content, shown to its reader).
        PartBody::External(e) => attachments.push(serde_json::json!({
            "url": e.url, "content_type": e.content_type, "filename": e.filename, "size": e.size,
            "enc_alg": e.enc_alg.0, "key": hex::encode(&e.key), "nonce": hex::encode(&e.nonce),
            "hash_alg": e.hash_alg as u8, "content_hash": hex::encode(&e.content_hash),
        })),
        _ => {}
    });
    let id = m.message_id_with(Some(sender), Some(room)).map(hex::encode).unwrap_or_default();
    let legacy = LegacySender::from_extensions(&c.extensions).ok().flatten();
    serde_json::json!({
        "sender": sender,
        "legacy_sender": legacy.as_ref().map(|l| serde_json::json!({"uri": l.uri, "name": l.display_name, "network": l.network})),
        "message_id": id,
        "text": text,
        "room": c.extensions.room_uri,
        "in_reply_to": c.in_reply_to.map(hex::encode),
        "replaces": c.replaces.map(hex::encode),
        "disposition": format!("{:?}", c.nested_part.disposition),
        "attachments": attachments,
    })
}

/// The JSON line of kept message `k` of `room`; `None` if it is not MIMI content ([`catch_up`] says so).
pub fn describe_kept(k: &KeptMessage, room: &str) -> Option<serde_json::Value> {
    let m = Message::decode(&k.plaintext).ok()?;
    Some(describe(&String::from_utf8_lossy(&k.sender_identity), &m, room))
}

/// Up to one page of the room's log after `after`; `wait`: how long the server may wait for news (seconds).
pub async fn fetch(api: &Api, room: &str, after: u64, wait: u64) -> Res<LogPage> {
    let body = api.get(&format!("/client/v1/messages/{}?after={after}&wait={wait}", room_path(room))).await?;
    LogPage::decode(&body).map_err(|e| e.to_string())
}

/// Processes the room's log after the cursor; decrypted messages are kept in the store until printed (see
/// [`crate::session`]). Returns the group. `wait`: how long the first request may wait for news.
pub async fn catch_up(s: &Session, room: &str, wait: u64) -> Res<PortalGroup> {
    let page = fetch(&s.api, room, s.room(room)?.cursor, wait).await?;
    catch_up_from(s, room, page).await
}

/// [`catch_up`] with its first page already fetched.
///
/// Each entry's ratchet step, the plaintext it yields and the cursor past the entry are one atomic batch of the
/// store, durable before the next entry is looked at: an error or a crash at any point (a page that cannot be
/// fetched, a `send` whose submit fails afterwards) loses no decrypted message and processes no entry twice.
pub async fn catch_up_from(s: &Session, room: &str, mut page: LogPage) -> Res<PortalGroup> {
    let (provider, member) = (s.keys.provider.clone(), s.keys.member.clone());
    let mut group = PortalGroup::load(provider, member, room.as_bytes()).map_err(|e| e.to_string())?;
    let list = kept_list(room);
    let mut rs = s.room(room)?;
    while !page.0.is_empty() {
        for e in page.0 {
            rs.cursor = e.seq;
            // Our own messages, and Welcomes (for those who join, not for members), are not for us to process.
            if rs.own.remove(&e.seq) || e.fanout.message.wire_format() == wire_format::WELCOME {
                continue;
            }
            // The cursor joins the batch of the ratchet step (and of the kept plaintext).
            s.put_room(room, &rs)?;
            match group.process_and_keep(e.fanout.message.as_bytes(), e.seq, &list, rs.printed).durable().await {
                Ok(Received::Application { plaintext, .. }) => {
                    if let Err(err) = Message::decode(&plaintext) {
                        eprintln!("discarded a message that is not MIMI content: {err}");
                    }
                }
                Ok(_) => {}
                Err(err @ (MlsError::NotDurable(_) | MlsError::Storage(_))) => {
                    return Err(format!("the client's store: {err}"));
                }
                Err(err) => eprintln!("entry {}: {err}", e.seq),
            }
        }
        // The cursor past entries skipped at the end of the page.
        s.save_room(room, &rs).await?;
        page = fetch(&s.api, room, rs.cursor, 0).await?;
    }
    Ok(group)
}

/// What the server said to a message: accepted at this sequence number (`None` if the hub did not say), or the
/// room moved to a newer epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Accepted.
    Accepted(Option<u64>),
    /// `epoch_too_old`: catch up and try again.
    EpochTooOld,
}

/// The longest a request waits in all for the server's quota (which refills a minute's worth in a minute).
const QUOTA_WAIT: Duration = Duration::from_secs(120);

/// Posts `body` to `path`; over the server's quota (429 with `retry_after_ms`), says so on standard error
/// ("`doing` again in N ms"), waits that long and posts it again, for at most [`QUOTA_WAIT`] in all, so that a
/// burst is served late rather than not at all. Any other answer: its status, body, and body as JSON (`Null` if it
/// is not).
pub async fn post_within_quota(
    api: &Api,
    path: &str,
    body: Vec<u8>,
    doing: &str,
) -> Res<(u16, Vec<u8>, serde_json::Value)> {
    let mut waited = Duration::ZERO;
    loop {
        let (status, answer) = api.post_raw(path, body.clone()).await?;
        let v: serde_json::Value = serde_json::from_slice(&answer).unwrap_or_default();
        match (status, v["retry_after_ms"].as_u64().map(Duration::from_millis)) {
            (429, Some(after)) if waited + after <= QUOTA_WAIT => {
                eprintln!("over the server's quota ({}): {doing} again in {} ms", v["error"], after.as_millis());
                // A few ms more: the bucket is full again exactly then, by the server's clock.
                let after = after + Duration::from_millis(20);
                tokio::time::sleep(after).await;
                waited += after;
            }
            _ => return Ok((status, answer, v)),
        }
    }
}

/// Posts `body` to `path` ([`post_within_quota`]), so that a burst of lines is sent late rather than not at all.
async fn post(api: &Api, path: &str, body: Vec<u8>) -> Res<Verdict> {
    match post_within_quota(api, path, body, "sending").await? {
        (200, _, v) => Ok(Verdict::Accepted(v["seq"].as_u64())),
        (409, _, v) if v["error"] == "epoch_too_old" => Ok(Verdict::EpochTooOld),
        (s, _, v) => Err(format!("{path}: HTTP {s}: {}", v["error"])),
    }
}

/// Submits an application message (MLSMessage).
pub async fn submit(api: &Api, room: &str, msg: Vec<u8>) -> Res<Verdict> {
    post(api, &format!("/client/v1/submit/{}", room_path(room)), msg).await
}

/// Sends a commit with what new members and external joiners need: the Welcome (if any) and the GroupInfo of
/// the epoch the commit makes.
pub async fn update(
    api: &Api,
    room: &str,
    commit: Vec<u8>,
    welcome: Option<Vec<u8>>,
    group_info: Vec<u8>,
) -> Res<Verdict> {
    let framed = |b: Vec<u8>| MlsMessageBytes::new(b).map_err(|e| e.to_string());
    let req = UpdateRequest::Commit {
        commit: framed(commit)?,
        welcome: welcome.map(framed).transpose()?,
        group_info: GroupInfoOption(framed(group_info)?),
        ratchet_tree: RatchetTreeOption::DistributionService,
    };
    let body = req.encode().map_err(|e| e.to_string())?;
    post(api, &format!("/client/v1/update/{}", room_path(room)), body).await
}

/// Sends an own commit (as [`update`]) made by [`PortalGroup::add_members`] and friends.
pub async fn update_with(api: &Api, room: &str, out: CommitOutput) -> Res<Verdict> {
    let gi = out.group_info.ok_or("the MLS engine made no GroupInfo for the new epoch")?;
    update(api, room, out.commit, out.welcome, gi).await
}

/// How many times `send`, `invite` and `join` try again after the room moved to a newer epoch.
const EPOCH_RETRIES: usize = 20;

/// After `epoch_too_old`: wait a little (longer each time), or give up after [`EPOCH_RETRIES`].
pub async fn epoch_moved(tries: &mut usize) -> Res<()> {
    *tries += 1;
    if *tries > EPOCH_RETRIES {
        return Err("the room keeps moving to newer epochs; try again later".into());
    }
    tokio::time::sleep(std::time::Duration::from_millis(50) * u32::try_from(*tries).unwrap_or(u32::MAX)).await;
    Ok(())
}
