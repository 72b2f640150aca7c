//! What a command works with: the state directory (`client.json` and the key store), the user's keys and the
//! API of their server.
//!
//! `client.json` holds only the user's URI and token; it is written once (at `register`) and durably (temporary
//! file, fsync, rename, fsync of the directory). Everything that changes as rooms are read lives in the embedded
//! store, next to the MLS state it goes with: per room, a [`RoomState`] record, and the list of messages decrypted
//! but not printed yet, which [`PortalGroup::process_and_keep`] extends in the same atomic batch as the ratchet
//! step that decrypted them. So a crash or an error at any point loses no message: whatever the ratchet consumed is
//! in the store until `listen` or `chat` has printed it.

use crate::api::Api;
use crate::transport::Server;
use mimi_mls::{LocalMember, MlsBackend, PortalGroup};
use mimi_store::schema::Schema;
use mimi_store::{Backend, CommitConfig, Store, open_data_dir};
use openmls::prelude::{OpenMlsProvider, SignatureScheme};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A `Result` whose error is the message printed to the user.
pub type Res<T> = Result<T, String>;

/// What `client.json` holds.
#[derive(Serialize, Deserialize, Default)]
pub struct State {
    /// This user's URI.
    pub uri: String,
    /// Their bearer token.
    pub token: String,
    /// Per room, what earlier versions of the client kept here (now in the store): read once, moved to the store
    /// by [`Session::open`], never written again.
    #[serde(default, skip_serializing)]
    pub rooms: BTreeMap<String, RoomState>,
}

/// How far a room's log was read and printed (a record in the store, see the module documentation).
#[derive(Serialize, Deserialize, Default, Clone, Debug, PartialEq, Eq)]
pub struct RoomState {
    /// The last log entry processed.
    pub cursor: u64,
    /// Log entries that are our own messages (not to be processed).
    pub own: BTreeSet<u64>,
    /// The last log entry whose message was printed (kept messages up to it are handed on).
    #[serde(default)]
    pub printed: u64,
    /// Messages decrypted by an earlier version of the client and not printed yet (the JSON of `listen --json`);
    /// printed before the kept ones.
    #[serde(default, alias = "inbox")]
    pub earlier: Vec<serde_json::Value>,
}

/// A decrypted message not printed yet.
#[derive(Debug, Clone)]
pub struct Unprinted {
    /// Its log entry (`None`: one of [`RoomState::earlier`]).
    pub seq: Option<u64>,
    /// The JSON of `listen --json`.
    pub json: serde_json::Value,
}

/// The name of `room`'s [`RoomState`] record in the store.
fn room_record(room: &str) -> Vec<u8> {
    format!("mimi-client/room/{room}").into_bytes()
}

/// The name of `room`'s kept list (see [`PortalGroup::process_and_keep`]).
pub fn kept_list(room: &str) -> Vec<u8> {
    format!("mimi-client/inbox/{room}").into_bytes()
}

/// Writes `bytes` to `dir/name` so that a crash or a power loss leaves either the old or the new file: a
/// temporary file, fsynced, renamed over it, then the directory fsynced (so the rename is durable too).
pub fn write_durably(dir: &Path, name: &str, bytes: &[u8]) -> Res<()> {
    let path = dir.join(name);
    let tmp = dir.join(format!("{name}.tmp"));
    let err = |p: &Path, e: std::io::Error| format!("{}: {e}", p.display());
    let mut f = std::fs::File::create(&tmp).map_err(|e| err(&tmp, e))?;
    f.write_all(bytes).and_then(|()| f.sync_all()).map_err(|e| err(&tmp, e))?;
    drop(f);
    std::fs::rename(&tmp, &path).map_err(|e| err(&path, e))?;
    sync_dir(dir).map_err(|e| err(dir, e))
}

/// Makes the entries of `dir` (a rename into it) durable.
#[cfg(unix)]
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Directories cannot be opened for an fsync here; the rename is as durable as the platform makes it.
#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> std::io::Result<()> {
    Ok(())
}

/// This client's MLS keys.
pub struct Keys {
    /// The crypto and storage provider on the client's store.
    pub provider: Arc<MlsBackend>,
    /// The user's MLS member (credential and signature key).
    pub member: Arc<LocalMember>,
}

/// The shape of the client's store (its MLS state, decrypted messages not printed yet). 1 → 2: a big group's
/// state may be stored in chunks ([`mimi_mls::storage::migrate_to_chunked_values`]); 2 → 3: a group's message
/// secrets may be two records ([`mimi_mls::storage::migrate_to_past_epochs_apart`]).
const STORE_SCHEMA: Schema = Schema {
    migrations: &[mimi_mls::storage::migrate_to_chunked_values, mimi_mls::storage::migrate_to_past_epochs_apart],
};

impl Keys {
    /// Opens the store in `dir` and loads (or creates) the keys of `uri`.
    pub async fn open(dir: &Path, uri: &str) -> Res<Self> {
        let store: Store =
            open_data_dir(&dir.join("store"), Some(Backend::Redb), CommitConfig::default(), &STORE_SCHEMA)
                .map_err(|e| e.to_string())?;
        let provider = Arc::new(MlsBackend::new(store, "client").map_err(|e| e.to_string())?);
        let member = LocalMember::load_or_create(&provider, uri, SignatureScheme::ED25519)
            .map_err(|e| e.to_string())?
            .durable()
            .await
            .map_err(|e| e.to_string())?;
        Ok(Self { provider, member: Arc::new(member) })
    }
}

/// A registered user's state, keys and API.
pub struct Session {
    dir: PathBuf,
    /// The server's API with the user's credentials.
    pub api: Api,
    /// The keys.
    pub keys: Keys,
    /// The state file's content.
    pub st: State,
}

impl Session {
    /// Loads the state in `dir` (written by `register`); moves what an earlier version kept per room in
    /// `client.json` to the store.
    pub async fn open(dir: &Path, server: &Server) -> Res<Self> {
        let p = dir.join("client.json");
        let s = std::fs::read(&p).map_err(|e| format!("{}: {e} (run `register` first)", p.display()))?;
        let st: State = serde_json::from_slice(&s).map_err(|e| format!("{}: {e}", p.display()))?;
        let mut s = Self::with_state(dir, server, st).await?;
        if !s.st.rooms.is_empty() {
            for (room, rs) in std::mem::take(&mut s.st.rooms) {
                if s.stored_room(&room)?.is_none() {
                    s.put_room(&room, &rs)?;
                }
            }
            s.flush().await?;
            s.save()?;
        }
        Ok(s)
    }

    /// A session for `st` (of a user just registered), keys loaded or created.
    pub async fn with_state(dir: &Path, server: &Server, st: State) -> Res<Self> {
        let keys = Keys::open(dir, &st.uri).await?;
        Ok(Self { dir: dir.to_owned(), api: Api::new(server, &st.uri, &st.token), keys, st })
    }

    /// Writes the state file (durably, see [`write_durably`]).
    pub fn save(&self) -> Res<()> {
        let bytes = serde_json::to_vec_pretty(&self.st).map_err(|e| e.to_string())?;
        write_durably(&self.dir, "client.json", &bytes)
    }

    /// The URI of `room`: as given if it is one, else the room of that name on the user's provider.
    pub fn room_uri(&self, room: &str) -> String {
        if room.starts_with("mimi://") {
            room.to_owned()
        } else {
            let domain = self.st.uri.trim_start_matches("mimi://").split('/').next().unwrap_or("");
            format!("mimi://{domain}/r/{room}")
        }
    }

    fn stored_room(&self, room: &str) -> Res<Option<RoomState>> {
        self.keys.provider.storage().app_get(&room_record(room)).map_err(|e| e.to_string())
    }

    /// The state of `room` (empty if it has none yet).
    pub fn room(&self, room: &str) -> Res<RoomState> {
        Ok(self.stored_room(room)?.unwrap_or_default())
    }

    /// Sets the state of `room`; it becomes durable with the next MLS operation's batch (so, written just before
    /// one, atomically with it), or with [`Session::flush`].
    pub fn put_room(&self, room: &str, rs: &RoomState) -> Res<()> {
        self.keys.provider.storage().app_put(&room_record(room), rs).map_err(|e| e.to_string())
    }

    /// Makes what [`Session::put_room`] set durable.
    pub async fn flush(&self) -> Res<()> {
        self.keys.provider.storage().submit_global().wait().await.map_err(|e| e.to_string())
    }

    /// [`Session::put_room`], then [`Session::flush`].
    pub async fn save_room(&self, room: &str, rs: &RoomState) -> Res<()> {
        self.put_room(room, rs)?;
        self.flush().await
    }

    /// The messages of `room` decrypted and not printed yet, oldest first: those of an earlier version of the
    /// client, then the kept ones (skipping any that is not MIMI content: [`crate::room::catch_up`] said so).
    pub fn unprinted(&self, room: &str) -> Res<Vec<Unprinted>> {
        let rs = self.room(room)?;
        let group = PortalGroup::load(self.keys.provider.clone(), self.keys.member.clone(), room.as_bytes())
            .map_err(|e| e.to_string())?;
        let kept = group.kept_messages(&kept_list(room)).map_err(|e| e.to_string())?;
        let earlier = rs.earlier.into_iter().map(|json| Unprinted { seq: None, json });
        let printed = rs.printed;
        let kept = kept.into_iter().filter(|k| k.seq > printed).filter_map(|k| {
            let json = crate::room::describe_kept(&k, room)?;
            Some(Unprinted { seq: Some(k.seq), json })
        });
        Ok(earlier.chain(kept).collect())
    }

    /// Records (durably) that log entry `seq` of `room` (if the server said where) is a message of ours: not to be
    /// processed when it comes back.
    pub async fn sent(&self, room: &str, seq: Option<u64>) -> Res<()> {
        let Some(seq) = seq else { return Ok(()) };
        let mut rs = self.room(room)?;
        rs.own.insert(seq);
        self.save_room(room, &rs).await
    }

    /// Records (durably) that `done`, a prefix of what [`Session::unprinted`] returned, was printed.
    pub async fn printed(&self, room: &str, done: &[Unprinted]) -> Res<()> {
        if done.is_empty() {
            return Ok(());
        }
        let mut rs = self.room(room)?;
        let earlier = done.iter().filter(|u| u.seq.is_none()).count();
        rs.earlier.drain(..earlier.min(rs.earlier.len()));
        if let Some(seq) = done.iter().filter_map(|u| u.seq).max() {
            rs.printed = rs.printed.max(seq);
        }
        self.save_room(room, &rs).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durable_writes_replace_the_file_and_leave_no_temporary() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_durably(dir.path(), "client.json", b"old").expect("first write");
        write_durably(dir.path(), "client.json", b"new").expect("second write");
        assert_eq!(std::fs::read(dir.path().join("client.json")).expect("read"), b"new");
        assert!(!dir.path().join("client.json.tmp").exists());
        assert!(write_durably(&dir.path().join("missing"), "client.json", b"x").is_err());
    }

    #[test]
    fn state_files_of_earlier_versions_still_load() {
        let old = r#"{"uri": "mimi://a.test/u/bob", "token": "t",
            "rooms": {"mimi://a.test/r/club": {"cursor": 7, "own": [5], "inbox": [{"text": "hi"}]}}}"#;
        let st: State = serde_json::from_str(old).expect("old state");
        let rs = &st.rooms["mimi://a.test/r/club"];
        assert_eq!((rs.cursor, rs.printed, rs.earlier.len()), (7, 0, 1));
        assert!(rs.own.contains(&5));
        let now = serde_json::to_value(&st).expect("json");
        assert_eq!(now, serde_json::json!({"uri": "mimi://a.test/u/bob", "token": "t"}));
    }

    #[test]
    fn opening_moves_rooms_of_earlier_versions_to_the_store() {
        let dir = tempfile::tempdir().expect("tempdir");
        let old = r#"{"uri": "mimi://a.test/u/bob", "token": "t",
            "rooms": {"mimi://a.test/r/club": {"cursor": 7, "own": [5], "inbox": [{"text": "hi"}]}}}"#;
        std::fs::write(dir.path().join("client.json"), old).expect("old state");
        let server = Server::new("http://127.0.0.1:1", None).expect("url");
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let s = rt.block_on(Session::open(dir.path(), &server)).expect("open");
        let rs = s.room("mimi://a.test/r/club").expect("room");
        assert_eq!((rs.cursor, rs.own.len(), rs.earlier.len()), (7, 1, 1));
        drop(s);
        let now: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("client.json")).expect("read")).expect("json");
        assert_eq!(now, serde_json::json!({"uri": "mimi://a.test/u/bob", "token": "t"}));
        let s = rt.block_on(Session::open(dir.path(), &server)).expect("reopen");
        assert_eq!(s.room("mimi://a.test/r/club").expect("room").cursor, 7, "the store kept it");
    }
}
