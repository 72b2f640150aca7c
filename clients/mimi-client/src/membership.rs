//! Who is in which room: registering, creating rooms, inviting, listing invitations, joining.

use crate::api::Api;
use crate::room::{self, Verdict, catch_up, epoch_moved, room_path};
use crate::session::{Res, Session, State};
use crate::transport::Server;
use mimi_mls::{EngineConfig, PortalGroup, key_packages};
use mimi_protocol::wire::{
    DEFAULT_CIPHERSUITE, GroupInfoCode, GroupInfoRequest, GroupInfoResponse, LogPage, RatchetTreeOption, WireMessage,
};
use std::collections::HashSet;
use std::path::Path;

/// Registers `user` with the server, creates their keys in `dir` and uploads KeyPackages; prints the URI.
pub async fn register(dir: &Path, server: &Server, user: &str) -> Res<()> {
    let v = Api::new(server, "", "").post_json("/client/v1/register", serde_json::json!({ "user": user })).await?;
    let field =
        |k: &str| v[k].as_str().map(str::to_owned).ok_or_else(|| format!("the server's answer has no {k}: {v}"));
    let st = State { uri: field("uri")?, token: field("token")?, rooms: Default::default() };
    let s = Session::with_state(dir, server, st).await?;
    let kps = key_packages::generate(&s.keys.provider, &s.keys.member, &EngineConfig::default(), 10, true)
        .durable()
        .await
        .map_err(|e| e.to_string())?;
    s.api.post_raw_ok("/client/v1/keyPackages", kps.concat()).await?;
    s.save()?;
    println!("{}", s.st.uri);
    Ok(())
}

/// Creates room `name` on the server; prints its URI.
pub async fn create_room(s: &mut Session, name: &str) -> Res<()> {
    let room = s.room_uri(name);
    let (provider, member) = (s.keys.provider.clone(), s.keys.member.clone());
    let group = PortalGroup::create(provider, member, &EngineConfig::default(), room.as_bytes())
        .durable()
        .await
        .map_err(|e| e.to_string())?;
    // The hub keeps the group's public state from its GroupInfo (with the ratchet tree) and serves that GroupInfo.
    let gi = group.export_group_info(true).map_err(|e| e.to_string())?;
    s.api.post_json("/client/v1/rooms", serde_json::json!({ "name": name, "group_info": hex::encode(gi) })).await?;
    println!("{room}");
    Ok(())
}

/// Adds `users` (local names or mimi:// URIs, also of other providers) to `room` from one KeyPackage each, in
/// commits of at most `batch` adds; users already in the room's group are said so and skipped. A user the server
/// has no KeyPackage of (or whose KeyPackage does not check) is named on standard error and left out, the others
/// are added; the answer is then an error that names them all. Any other failure (the server's, the network's, a
/// commit's) ends the command with an error that names every user not invited.
pub async fn invite(s: &mut Session, room: &str, users: &[String], batch: usize) -> Res<()> {
    let room = s.room_uri(room);
    let mut seen = HashSet::new();
    let targets: Vec<String> = users.iter().map(|u| user_uri(s, u)).filter(|u| seen.insert(u.clone())).collect();
    let batches: Vec<&[String]> = targets.chunks(batch.max(1)).collect();
    let mut left_out: Vec<&str> = Vec::new();
    for (i, chunk) in batches.iter().enumerate() {
        let before = left_out.len();
        if let Err(e) = invite_batch(s, &room, chunk, &mut left_out).await {
            // This batch's users are named once, with the batches after it (but for those already in the room).
            left_out.truncate(before);
            let group = catch_up(s, &room, 0).await.ok();
            let member = |u: &str| group.as_ref().is_some_and(|g| g.member_index(u.as_bytes()).is_some());
            left_out.extend(batches[i..].iter().flat_map(|b| b.iter().map(String::as_str)).filter(|u| !member(u)));
            return Err(format!(
                "{e}; not invited to {room}: {} ({} of {})",
                left_out.join(", "),
                left_out.len(),
                targets.len()
            ));
        }
    }
    if left_out.is_empty() {
        Ok(())
    } else {
        Err(format!("{} of {} not invited to {room}: {}", left_out.len(), targets.len(), left_out.join(", ")))
    }
}

/// One commit of [`invite`]: the users of `chunk` not in the group yet, those without a KeyPackage that checks
/// put in `left_out`.
async fn invite_batch<'a>(s: &mut Session, room: &str, chunk: &'a [String], left_out: &mut Vec<&'a str>) -> Res<()> {
    let group = catch_up(s, room, 0).await?;
    let mut got = Vec::with_capacity(chunk.len());
    for target in chunk {
        if group.member_index(target.as_bytes()).is_some() {
            println!("{target} is already in {room}");
            continue;
        }
        match claim_key_package(s, room, target).await? {
            Ok(kp) => got.push((target, kp)),
            Err(why) => {
                eprintln!("{why}");
                left_out.push(target.as_str());
            }
        }
    }
    // Checked together: a KeyPackage that would make the commit fail (a key already in the group or the batch)
    // leaves out its user, not the batch.
    let kps: Vec<&[u8]> = got.iter().map(|(_, kp)| kp.as_slice()).collect();
    let checked = group.check_key_packages(&kps);
    drop(group);
    let mut claimed = Vec::with_capacity(got.len());
    for ((target, kp), check) in got.into_iter().zip(checked) {
        let why = match check {
            Ok(id) if id == target.as_bytes() => {
                claimed.push((target, kp));
                continue;
            }
            Ok(_) => format!("the KeyPackage the server gave for {target} is someone else's"),
            Err(e) => format!("the KeyPackage the server gave for {target} does not check: {e}"),
        };
        eprintln!("{why}");
        left_out.push(target.as_str());
    }
    if claimed.is_empty() {
        return Ok(());
    }
    for target in commit_adds(s, room, claimed).await? {
        println!("invited {target} to {room}");
    }
    Ok(())
}

/// `user` as a URI: a local name is a user of the client's own provider.
fn user_uri(s: &Session, user: &str) -> String {
    if user.starts_with("mimi://") {
        user.to_owned()
    } else {
        format!("{}/u/{user}", s.st.uri.rsplit_once("/u/").map_or("", |x| x.0))
    }
}

/// One KeyPackage of `target`, claimed for `room`; over the server's quota (each claim counts as a message), after
/// waiting as long as it says. The inner error says that the server has none for this user (404, or 400 for a URI
/// it cannot use); the outer one is any other failure.
async fn claim_key_package(s: &Session, room: &str, target: &str) -> Res<Res<Vec<u8>>> {
    let path = format!("/client/v1/keyPackage/{}?room={}", target.trim_start_matches("mimi://"), room_path(room));
    match room::post_within_quota(&s.api, &path, Vec::new(), "claiming").await? {
        (200, kp, _) => Ok(Ok(kp)),
        (status @ (400 | 404), _, why) => {
            Ok(Err(format!("no KeyPackage for {target}: HTTP {status}: {}", why["error"])))
        }
        (status, _, why) => Err(format!("a KeyPackage of {target}: HTTP {status}: {}", why["error"])),
    }
}

/// Commits the adds of `claimed` (users and their KeyPackages) to `room`, catching up and committing again while
/// the room moves to newer epochs; users who joined meanwhile are said so and left out. The users added.
async fn commit_adds<'a>(s: &mut Session, room: &str, mut claimed: Vec<(&'a String, Vec<u8>)>) -> Res<Vec<&'a String>> {
    let mut tries = 0;
    loop {
        let mut group = catch_up(s, room, 0).await?;
        claimed.retain(|(target, _)| {
            let member = group.member_index(target.as_bytes()).is_some();
            if member {
                println!("{target} is already in {room}");
            }
            !member
        });
        if claimed.is_empty() {
            return Ok(Vec::new());
        }
        let kps: Vec<&[u8]> = claimed.iter().map(|(_, kp)| kp.as_slice()).collect();
        let out = group.add_members(&kps).durable().await.map_err(|e| e.to_string())?;
        match room::update_with(&s.api, room, out).await? {
            Verdict::Accepted(seq) => {
                s.sent(room, seq).await?;
                group.merge_pending_commit().durable().await.map_err(|e| e.to_string())?;
                return Ok(claimed.into_iter().map(|(target, _)| target).collect());
            }
            Verdict::EpochTooOld => {
                group.clear_pending_commit().durable().await.map_err(|e| e.to_string())?;
                epoch_moved(&mut tries).await?;
            }
        }
    }
}

/// The Welcomes waiting for this user: `(room, seq)`.
pub async fn invites(api: &Api) -> Res<Vec<(String, u64)>> {
    let v: serde_json::Value =
        serde_json::from_slice(&api.get("/client/v1/invites").await?).map_err(|e| e.to_string())?;
    Ok(v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| Some((i["room"].as_str()?.to_owned(), i["seq"].as_u64()?)))
        .collect())
}

/// Joins `room`: from the Welcome if invited, else by external commit.
pub async fn join(s: &mut Session, room: &str) -> Res<()> {
    let room = s.room_uri(room);
    let invite = invites(&s.api).await?.into_iter().find(|(r, _)| *r == room).map(|(_, seq)| seq);
    let cursor = match invite {
        Some(seq) => match join_from_welcome(s, &room, seq).await? {
            Ok(cursor) => cursor,
            // The room moved on since the Welcome (its hub serves the tree of the current epoch only): an invited
            // user may join by external commit instead.
            Err(e) => {
                eprintln!("the invitation to {room} cannot be taken ({e}); joining by external commit");
                join_by_external_commit(s, &room).await?
            }
        },
        None => join_by_external_commit(s, &room).await?,
    };
    let mut rs = s.room(&room)?;
    rs.cursor = cursor;
    s.save_room(&room, &rs).await?;
    println!("joined {room}");
    Ok(())
}

/// Joins from the Welcome at `seq` in the room's log; the cursor after it. Welcomes carry no ratchet tree (it would
/// make them megabytes in a big room): the tree comes from the room's hub with its GroupInfo, and it is the one of
/// the Welcome's epoch as long as the room has not moved on. The outer error is the server's or the network's; the
/// inner one, the MLS join's (a tree of another epoch, or none).
async fn join_from_welcome(s: &mut Session, room: &str, seq: u64) -> Res<Res<u64>> {
    let page: LogPage = room::fetch(&s.api, room, seq.saturating_sub(1), 0).await?;
    let entry = page.0.into_iter().next().ok_or("the Welcome is gone from the log")?;
    let (_, tree) = fetch_group_info(s, room).await?;
    let (provider, member) = (s.keys.provider.clone(), s.keys.member.clone());
    let welcome = entry.fanout.message.as_bytes();
    let joined = PortalGroup::join_from_welcome(provider, member, &EngineConfig::default(), welcome, tree.as_deref())
        .durable()
        .await;
    Ok(joined.map(|_| seq).map_err(|e| e.to_string()))
}

/// The room's GroupInfo MLSMessage and ratchet tree, claimed from the hub with a
/// `GroupInfoRequest` signed by our member key (draft-ietf-mimi-protocol-06 §5.6): the answer is checked against
/// the signature key the hub names in it (trusting that key rests on TLS to our provider and the provider-to-provider
/// mTLS to the room's hub) and decrypted with the request's one-time HPKE key.
/// The hub sends its own ratchet tree along when the GroupInfo it keeps does not embed one.
async fn fetch_group_info(s: &Session, room: &str) -> Res<(Vec<u8>, Option<Vec<u8>>)> {
    let member = &s.keys.member;
    let cwk = member.credential();
    let (request, secret) = GroupInfoRequest::new(
        DEFAULT_CIPHERSUITE,
        member.signer(),
        cwk.signature_key.as_slice(),
        &cwk.credential,
        None,
    )
    .map_err(|e| e.to_string())?;
    let body = request.encode().map_err(|e| e.to_string())?;
    let answer = s.api.post_raw_ok(&format!("/client/v1/groupInfo/{}", room_path(room)), body).await?;
    let response = GroupInfoResponse::decode(&answer).map_err(|e| format!("the GroupInfo answer: {e}"))?;
    match response.status() {
        GroupInfoCode::Success => {}
        GroupInfoCode::NotAuthorized => return Err(format!("not allowed to join {room}")),
        GroupInfoCode::NoSuchRoom => return Err(format!("no such room {room}")),
    }
    let tbe = response.open(room.as_bytes(), &secret).map_err(|e| format!("the GroupInfo answer: {e}"))?;
    let tree = match tbe.ratchet_tree {
        RatchetTreeOption::Full(tree) => Some(tree),
        _ => None,
    };
    Ok((tbe.group_info.into_bytes(), tree))
}

/// Joins by external commit from the room's GroupInfo; the cursor after the commit.
async fn join_by_external_commit(s: &mut Session, room: &str) -> Res<u64> {
    let mut tries = 0;
    loop {
        let (gi, tree) = fetch_group_info(s, room).await?;
        let (provider, member) = (s.keys.provider.clone(), s.keys.member.clone());
        let (mut group, commit) =
            PortalGroup::rejoin_by_external_commit(provider, member, &EngineConfig::default(), &gi, tree.as_deref())
                .durable()
                .await
                .map_err(|e| e.to_string())?;
        // The GroupInfo of the new epoch travels with the commit, so the commit is merged first; if the hub
        // refuses it, the join starts over from a fresh GroupInfo (which replaces this state).
        group.merge_pending_commit().durable().await.map_err(|e| e.to_string())?;
        // Without the tree: the hub has its own, and with it a big room's GroupInfo would outgrow a request.
        let next = group.export_group_info(false).map_err(|e| e.to_string())?;
        match room::update(&s.api, room, commit, None, next).await? {
            Verdict::Accepted(seq) => return Ok(seq.unwrap_or(0)),
            Verdict::EpochTooOld => epoch_moved(&mut tries).await?,
        }
    }
}
