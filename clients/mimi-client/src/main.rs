//! `mimi-client`: a native MLS client of a mimi-bridge daemon's client API (see `src/mimi_http.rs` there).
//!
//! It holds its own keys and group state in `--state DIR` (an embedded store plus `client.json`); the daemon
//! only ever sees MLS messages. Commands: `register USER`, `create-room NAME`, `invite ROOM USER`, `join ROOM`,
//! `send ROOM TEXT`, `listen ROOM [--json] [--count N] [--timeout SECS]`.
//!
//! Messages decrypted while catching up before a `send` are kept in the state file and printed by the next
//! `listen`, so nothing is skipped.

mod api;

use api::Api;
use bridge_core::content::builder::ContentBuilder;
use bridge_core::content::{Message, PartBody};
use bridge_core::mls::{BridgeProvider, EngineConfig, LegacySender, LocalMember, PortalGroup, Received, key_packages};
use bridge_core::provider::wire::{LogPage, WireMessage};
use bridge_core::store::{Backend, CommitConfig, Store, open_data_dir};
use clap::{Parser, Subcommand};
use openmls::prelude::SignatureScheme;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Command line.
#[derive(Parser)]
#[command(name = "mimi-client", about = "Native MLS client for mimi-bridge")]
struct Cli {
    /// Directory holding this client's keys and state.
    #[arg(long)]
    state: PathBuf,
    /// Base URL of the daemon's client API (e.g. http://127.0.0.1:8448).
    #[arg(long)]
    server: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Registers USER (a local name or a mimi:// URI) and uploads KeyPackages.
    Register { user: String },
    /// Creates a room hosted by the server; prints its URI on the last line.
    CreateRoom { name: String },
    /// Adds USER to ROOM from one of their KeyPackages.
    Invite { room: String, user: String },
    /// Joins ROOM: from a Welcome if invited, else by external commit.
    Join { room: String },
    /// Sends TEXT to ROOM; prints the message id. `--reply-to ID` makes it a reply, `--edit ID` a new version of
    /// your message ID (ids in hex, as `send` and `listen --json` print them).
    Send {
        room: String,
        text: String,
        /// Reply to this message.
        #[arg(long, value_name = "ID", conflicts_with = "edit")]
        reply_to: Option<String>,
        /// Replace (edit) this message of yours.
        #[arg(long, value_name = "ID")]
        edit: Option<String>,
    },
    /// Prints messages of ROOM not seen yet, then new ones.
    Listen {
        room: String,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
        /// Stop after N messages.
        #[arg(long)]
        count: Option<usize>,
        /// Stop after SECS seconds.
        #[arg(long, default_value_t = 30)]
        timeout: u64,
    },
}

/// What `client.json` holds.
#[derive(Serialize, Deserialize, Default)]
struct State {
    uri: String,
    token: String,
    rooms: BTreeMap<String, RoomState>,
}

#[derive(Serialize, Deserialize, Default)]
struct RoomState {
    cursor: u64,
    own: BTreeSet<u64>,
    inbox: Vec<serde_json::Value>,
}

type Res<T> = Result<T, String>;

fn load_state(dir: &Path) -> Res<State> {
    let p = dir.join("client.json");
    let s = std::fs::read(&p).map_err(|e| format!("{}: {e} (run `register` first)", p.display()))?;
    serde_json::from_slice(&s).map_err(|e| format!("{}: {e}", p.display()))
}

fn save_state(dir: &Path, s: &State) -> Res<()> {
    let tmp = dir.join("client.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(s).map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
    std::fs::rename(&tmp, dir.join("client.json")).map_err(|e| e.to_string())
}

struct Keys {
    provider: Arc<BridgeProvider>,
    member: Arc<LocalMember>,
}

async fn keys(dir: &Path, uri: &str) -> Res<Keys> {
    let store: Store =
        open_data_dir(&dir.join("store"), Some(Backend::Redb), CommitConfig::default()).map_err(|e| e.to_string())?;
    let provider = Arc::new(BridgeProvider::new(store, "client").map_err(|e| e.to_string())?);
    let member = LocalMember::load_or_create(&provider, uri, SignatureScheme::ED25519)
        .map_err(|e| e.to_string())?
        .durable()
        .await
        .map_err(|e| e.to_string())?;
    Ok(Keys { provider, member: Arc::new(member) })
}

fn room_uri(s: &State, room: &str) -> String {
    if room.starts_with("mimi://") {
        room.to_owned()
    } else {
        let domain = s.uri.trim_start_matches("mimi://").split('/').next().unwrap_or("");
        format!("mimi://{domain}/r/{room}")
    }
}

fn room_path(room: &str) -> &str {
    room.trim_start_matches("mimi://")
}

/// The JSON line of a received message.
fn describe(sender: &str, m: &Message, room: &str) -> serde_json::Value {
    let c = m.content();
    let mut text = String::new();
    c.nested_part.walk(&mut |p| {
        if let PartBody::Single(s) = &p.body
            && text.is_empty()
            && s.content_type.starts_with("text/")
        {
            text = String::from_utf8_lossy(&s.content).into_owned();
        }
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
    })
}

/// Processes the room's log after the cursor; decrypted messages go to the inbox. Returns the group.
async fn catch_up(api: &Api, k: &Keys, st: &mut State, room: &str, wait: u64) -> Res<PortalGroup> {
    let mut group =
        PortalGroup::load(k.provider.clone(), k.member.clone(), room.as_bytes()).map_err(|e| e.to_string())?;
    let mut first = true;
    loop {
        let rs = st.rooms.entry(room.to_owned()).or_default();
        let w = if first { wait } else { 0 };
        first = false;
        let body = api.get(&format!("/client/v1/messages/{}?after={}&wait={w}", room_path(room), rs.cursor)).await?;
        let page = LogPage::decode(&body).map_err(|e| e.to_string())?;
        if page.0.is_empty() {
            return Ok(group);
        }
        for e in page.0 {
            rs.cursor = e.seq;
            if rs.own.remove(&e.seq) {
                continue;
            }
            match group.process(e.fanout.message.as_bytes()).durable().await {
                Ok(Received::Application { sender_identity, plaintext, .. }) => {
                    let sender = String::from_utf8_lossy(&sender_identity).into_owned();
                    match Message::decode(&plaintext) {
                        Ok(m) => rs.inbox.push(describe(&sender, &m, room)),
                        Err(e) => eprintln!("discarded a message that is not MIMI content: {e}"),
                    }
                }
                Ok(_) => {}
                Err(e) => eprintln!("entry {}: {e}", e_seq(&e, rs.cursor)),
            }
        }
    }
}

fn e_seq<E>(_: &E, seq: u64) -> u64 {
    seq
}

/// Submits an MLS message; `Ok(Some(seq))` if accepted, `Ok(None)` on epoch_too_old.
async fn submit(api: &Api, room: &str, msg: Vec<u8>) -> Res<Option<u64>> {
    let (status, body) = api.post_raw(&format!("/client/v1/submit/{}", room_path(room)), msg).await?;
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    match status {
        200 => Ok(Some(v["seq"].as_u64().unwrap_or(0))),
        409 if v["error"] == "epoch_too_old" => Ok(None),
        s => Err(format!("submit: HTTP {s}: {}", v["error"])),
    }
}

async fn publish_group_info(api: &Api, group: &PortalGroup, room: &str) -> Res<()> {
    let gi = group.export_group_info(true).map_err(|e| e.to_string())?;
    api.put(&format!("/client/v1/groupInfo/{}", room_path(room)), gi).await.map(|_| ())
}

async fn run(cli: Cli) -> Res<()> {
    std::fs::create_dir_all(&cli.state).map_err(|e| e.to_string())?;
    let dir = cli.state.as_path();
    if let Cmd::Register { user } = &cli.cmd {
        let api = Api::new(&cli.server, "", "");
        let v = api.post_json("/client/v1/register", serde_json::json!({ "user": user })).await?;
        let st = State {
            uri: v["uri"].as_str().unwrap_or_default().to_owned(),
            token: v["token"].as_str().unwrap_or_default().to_owned(),
            rooms: BTreeMap::new(),
        };
        let k = keys(dir, &st.uri).await?;
        let api = Api::new(&cli.server, &st.uri, &st.token);
        let kps = key_packages::generate(&k.provider, &k.member, &EngineConfig::default(), 10, true)
            .durable()
            .await
            .map_err(|e| e.to_string())?;
        api.post_raw_ok("/client/v1/keyPackages", kps.concat()).await?;
        save_state(dir, &st)?;
        println!("{}", st.uri);
        return Ok(());
    }
    let mut st = load_state(dir)?;
    let api = Api::new(&cli.server, &st.uri, &st.token);
    let k = keys(dir, &st.uri).await?;
    let cfg = EngineConfig::default();
    match cli.cmd {
        Cmd::Register { .. } => {}
        Cmd::CreateRoom { name } => {
            let room = room_uri(&st, &name);
            let group = PortalGroup::create(k.provider.clone(), k.member.clone(), &cfg, room.as_bytes())
                .durable()
                .await
                .map_err(|e| e.to_string())?;
            api.post_json("/client/v1/rooms", serde_json::json!({ "name": name, "epoch": group.epoch() })).await?;
            publish_group_info(&api, &group, &room).await?;
            st.rooms.entry(room.clone()).or_default();
            save_state(dir, &st)?;
            println!("{room}");
        }
        Cmd::Invite { room, user } => {
            let room = room_uri(&st, &room);
            let target = if user.starts_with("mimi://") {
                user
            } else {
                format!("{}/u/{user}", st.uri.rsplit_once("/u/").map_or("", |x| x.0))
            };
            let path =
                format!("/client/v1/keyPackage/{}?room={}", target.trim_start_matches("mimi://"), room_path(&room));
            let (status, kp) = api.post_raw(&path, Vec::new()).await?;
            if status != 200 {
                return Err(format!("no KeyPackage for {target}: HTTP {status}"));
            }
            loop {
                let mut group = catch_up(&api, &k, &mut st, &room, 0).await?;
                let out = group.add_members(&[&kp]).durable().await.map_err(|e| e.to_string())?;
                match submit(&api, &room, out.commit).await? {
                    Some(seq) => {
                        st.rooms.entry(room.clone()).or_default().own.insert(seq);
                        group.merge_pending_commit().durable().await.map_err(|e| e.to_string())?;
                        if let Some(w) = out.welcome
                            && let Some(seq) = submit(&api, &room, w).await?
                        {
                            st.rooms.entry(room.clone()).or_default().own.insert(seq);
                        }
                        publish_group_info(&api, &group, &room).await?;
                        break;
                    }
                    None => {
                        group.clear_pending_commit().durable().await.map_err(|e| e.to_string())?;
                    }
                }
            }
            save_state(dir, &st)?;
            println!("invited {target} to {room}");
        }
        Cmd::Join { room } => {
            let room = room_uri(&st, &room);
            let invites: serde_json::Value =
                serde_json::from_slice(&api.get("/client/v1/invites").await?).map_err(|e| e.to_string())?;
            let invite = invites
                .as_array()
                .into_iter()
                .flatten()
                .find(|i| i["room"] == room.as_str())
                .and_then(|i| i["seq"].as_u64());
            if let Some(seq) = invite {
                let body =
                    api.get(&format!("/client/v1/messages/{}?after={}&wait=0", room_path(&room), seq - 1)).await?;
                let page = LogPage::decode(&body).map_err(|e| e.to_string())?;
                let entry = page.0.into_iter().next().ok_or("the Welcome is gone from the log")?;
                PortalGroup::join_from_welcome(
                    k.provider.clone(),
                    k.member.clone(),
                    &cfg,
                    entry.fanout.message.as_bytes(),
                    None,
                )
                .durable()
                .await
                .map_err(|e| e.to_string())?;
                st.rooms.entry(room.clone()).or_default().cursor = seq;
            } else {
                loop {
                    let gi = api.get(&format!("/client/v1/groupInfo/{}", room_path(&room))).await?;
                    let (mut group, commit) =
                        PortalGroup::rejoin_by_external_commit(k.provider.clone(), k.member.clone(), &cfg, &gi, None)
                            .durable()
                            .await
                            .map_err(|e| e.to_string())?;
                    match submit(&api, &room, commit).await? {
                        Some(seq) => {
                            group.merge_pending_commit().durable().await.map_err(|e| e.to_string())?;
                            let rs = st.rooms.entry(room.clone()).or_default();
                            rs.cursor = seq;
                            publish_group_info(&api, &group, &room).await?;
                            break;
                        }
                        None => tokio::time::sleep(Duration::from_millis(200)).await,
                    }
                }
            }
            save_state(dir, &st)?;
            println!("joined {room}");
        }
        Cmd::Send { room, text, reply_to, edit } => {
            let room = room_uri(&st, &room);
            let id_arg = |s: &str| -> Result<[u8; 32], String> {
                hex::decode(s).ok().and_then(|v| v.try_into().ok()).ok_or_else(|| format!("{s:?} is not a message id"))
            };
            let mut b = ContentBuilder::new(&st.uri, &room).plain_text(&text);
            if let Some(r) = &reply_to {
                b = b.reply_to(id_arg(r)?);
            }
            if let Some(e) = &edit {
                b = b.edit(id_arg(e)?);
            }
            let msg = b.build_message().map_err(|e| e.to_string())?;
            loop {
                let mut group = catch_up(&api, &k, &mut st, &room, 0).await?;
                let ct = group.encrypt(msg.bytes()).durable().await.map_err(|e| e.to_string())?;
                if let Some(seq) = submit(&api, &room, ct).await? {
                    if seq > 0 {
                        st.rooms.entry(room.clone()).or_default().own.insert(seq);
                    }
                    break;
                }
            }
            save_state(dir, &st)?;
            let id = msg.message_id_with(Some(&st.uri), Some(&room)).map(hex::encode).unwrap_or_default();
            println!("{id}");
        }
        Cmd::Listen { room, json, count, timeout } => {
            let room = room_uri(&st, &room);
            let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
            let mut printed = 0;
            loop {
                let rs = st.rooms.entry(room.clone()).or_default();
                for m in std::mem::take(&mut rs.inbox) {
                    if count.is_some_and(|c| printed >= c) {
                        rs.inbox.push(m);
                        continue;
                    }
                    if json {
                        println!("{m}");
                    } else {
                        let who = m["legacy_sender"]["name"]
                            .as_str()
                            .map(str::to_owned)
                            .unwrap_or_else(|| m["sender"].as_str().unwrap_or("").to_owned());
                        println!("<{who}> {}", m["text"].as_str().unwrap_or(""));
                    }
                    printed += 1;
                }
                save_state(dir, &st)?;
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                if count.is_some_and(|c| printed >= c) || left.is_zero() {
                    break;
                }
                catch_up(&api, &k, &mut st, &room, left.as_secs().clamp(1, 25)).await?;
            }
        }
    }
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mimi-client: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
