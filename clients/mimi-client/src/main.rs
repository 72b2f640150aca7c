//! `mimi-client`: a native MLS client of a mimi-bridge daemon's client API (see `src/mimi_http/` there).
//!
//! It holds its own keys and group state in `--state DIR` (an embedded store plus `client.json`); the daemon
//! only ever sees MLS messages. Commands: `register USER`, `create-room NAME`, `invite ROOM USER`, `invites`,
//! `join ROOM`, `send ROOM TEXT`, `listen ROOM [--json] [--count N] [--timeout SECS]`. Rooms may be hosted by the
//! client's own server or by another provider it federates with (`mimi://other.example/r/NAME`); the server
//! forwards.
//!
//! Messages decrypted while catching up before a `send` are kept in the state file and printed by the next
//! `listen`, so nothing is skipped. `listen` rides out a server restart: it retries until its timeout.

mod api;
mod room;

use api::Api;
use bridge_core::content::builder::ContentBuilder;
use bridge_core::mls::{BridgeProvider, EngineConfig, LocalMember, PortalGroup, key_packages};
use bridge_core::provider::wire::{LogPage, WireMessage};
use bridge_core::store::{Backend, CommitConfig, Store, open_data_dir};
use clap::{Parser, Subcommand};
use openmls::prelude::SignatureScheme;
use room::{Verdict, catch_up, publish_group_info, room_path};
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
    /// Adds USER (a local name or a mimi:// URI, also of another provider) to ROOM from one of their KeyPackages.
    Invite { room: String, user: String },
    /// Prints the rooms this user was invited to (one `ROOM SEQ` line each; SEQ is the Welcome's place in the log).
    Invites,
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

/// How many times `send`, `invite` and `join` try again after the room moved to a newer epoch.
const EPOCH_RETRIES: usize = 20;

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

/// The Welcomes waiting for this user: `(room, seq)`.
async fn invites(api: &Api) -> Res<Vec<(String, u64)>> {
    let v: serde_json::Value =
        serde_json::from_slice(&api.get("/client/v1/invites").await?).map_err(|e| e.to_string())?;
    Ok(v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| Some((i["room"].as_str()?.to_owned(), i["seq"].as_u64()?)))
        .collect())
}

/// After `epoch_too_old`: wait a little (longer each time), or give up after [`EPOCH_RETRIES`].
async fn epoch_moved(tries: &mut usize) -> Res<()> {
    *tries += 1;
    if *tries > EPOCH_RETRIES {
        return Err("the room keeps moving to newer epochs; try again later".into());
    }
    tokio::time::sleep(Duration::from_millis(50) * u32::try_from(*tries).unwrap_or(u32::MAX)).await;
    Ok(())
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
                let why = serde_json::from_slice::<serde_json::Value>(&kp).unwrap_or_default();
                return Err(format!("no KeyPackage for {target}: HTTP {status}: {}", why["error"]));
            }
            let mut tries = 0;
            loop {
                let mut group = catch_up(&api, &k, &mut st, &room, 0).await?;
                let out = group.add_members(&[&kp]).durable().await.map_err(|e| e.to_string())?;
                match room::update_with(&api, &room, out).await? {
                    Verdict::Accepted(seq) => {
                        st.rooms.entry(room.clone()).or_default().own.extend(seq);
                        group.merge_pending_commit().durable().await.map_err(|e| e.to_string())?;
                        break;
                    }
                    Verdict::EpochTooOld => {
                        group.clear_pending_commit().durable().await.map_err(|e| e.to_string())?;
                        epoch_moved(&mut tries).await?;
                    }
                }
            }
            save_state(dir, &st)?;
            println!("invited {target} to {room}");
        }
        Cmd::Invites => {
            for (room, seq) in invites(&api).await? {
                println!("{room} {seq}");
            }
        }
        Cmd::Join { room } => {
            let room = room_uri(&st, &room);
            let invite = invites(&api).await?.into_iter().find(|(r, _)| *r == room).map(|(_, seq)| seq);
            if let Some(seq) = invite {
                let body = api
                    .get(&format!("/client/v1/messages/{}?after={}&wait=0", room_path(&room), seq.saturating_sub(1)))
                    .await?;
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
                let mut tries = 0;
                loop {
                    let gi = api.get(&format!("/client/v1/groupInfo/{}", room_path(&room))).await?;
                    let (mut group, commit) =
                        PortalGroup::rejoin_by_external_commit(k.provider.clone(), k.member.clone(), &cfg, &gi, None)
                            .durable()
                            .await
                            .map_err(|e| e.to_string())?;
                    // The GroupInfo of the new epoch travels with the commit, so the commit is merged first; if the
                    // hub refuses it, the join starts over from a fresh GroupInfo (which replaces this state).
                    group.merge_pending_commit().durable().await.map_err(|e| e.to_string())?;
                    let next = group.export_group_info(true).map_err(|e| e.to_string())?;
                    match room::update(&api, &room, commit, None, next).await? {
                        Verdict::Accepted(seq) => {
                            st.rooms.entry(room.clone()).or_default().cursor = seq.unwrap_or(0);
                            break;
                        }
                        Verdict::EpochTooOld => epoch_moved(&mut tries).await?,
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
            let mut tries = 0;
            loop {
                let mut group = catch_up(&api, &k, &mut st, &room, 0).await?;
                let ct = group.encrypt(msg.bytes()).durable().await.map_err(|e| e.to_string())?;
                match room::submit(&api, &room, ct).await? {
                    Verdict::Accepted(seq) => {
                        st.rooms.entry(room.clone()).or_default().own.extend(seq);
                        break;
                    }
                    // The room moved on (the server caught up with it): catch up and encrypt again.
                    Verdict::EpochTooOld => epoch_moved(&mut tries).await?,
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
                match catch_up(&api, &k, &mut st, &room, left.as_secs().clamp(1, 25)).await {
                    Ok(_) => {}
                    // The server restarts (or its hub is away): keep what was decrypted, wait, ask again.
                    Err(e) if api::is_unreachable(&e) => {
                        eprintln!("{e}; retrying");
                        tokio::time::sleep(left.min(Duration::from_millis(300))).await;
                    }
                    Err(e) => return Err(e),
                }
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
