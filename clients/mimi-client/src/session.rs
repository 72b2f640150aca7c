//! What a command works with: the state directory (`client.json` and the key store), the user's keys and the
//! API of their server.

use crate::api::Api;
use crate::transport::Server;
use bridge_core::mls::{BridgeProvider, LocalMember};
use bridge_core::store::{Backend, CommitConfig, Store, open_data_dir};
use openmls::prelude::SignatureScheme;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
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
    /// Per room: how far its log was read.
    pub rooms: BTreeMap<String, RoomState>,
}

/// How far a room's log was read, and what was decrypted but not printed yet.
#[derive(Serialize, Deserialize, Default)]
pub struct RoomState {
    /// The last log entry processed.
    pub cursor: u64,
    /// Log entries that are our own messages (not to be processed).
    pub own: BTreeSet<u64>,
    /// Decrypted messages not printed yet (the JSON of `listen --json`).
    pub inbox: Vec<serde_json::Value>,
}

/// This client's MLS keys.
pub struct Keys {
    /// The crypto and storage provider on the client's store.
    pub provider: Arc<BridgeProvider>,
    /// The user's MLS member (credential and signature key).
    pub member: Arc<LocalMember>,
}

impl Keys {
    /// Opens the store in `dir` and loads (or creates) the keys of `uri`.
    pub async fn open(dir: &Path, uri: &str) -> Res<Self> {
        let store: Store = open_data_dir(&dir.join("store"), Some(Backend::Redb), CommitConfig::default())
            .map_err(|e| e.to_string())?;
        let provider = Arc::new(BridgeProvider::new(store, "client").map_err(|e| e.to_string())?);
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
    /// Loads the state in `dir` (written by `register`).
    pub async fn open(dir: &Path, server: &Server) -> Res<Self> {
        let p = dir.join("client.json");
        let s = std::fs::read(&p).map_err(|e| format!("{}: {e} (run `register` first)", p.display()))?;
        let st: State = serde_json::from_slice(&s).map_err(|e| format!("{}: {e}", p.display()))?;
        Self::with_state(dir, server, st).await
    }

    /// A session for `st` (of a user just registered), keys loaded or created.
    pub async fn with_state(dir: &Path, server: &Server, st: State) -> Res<Self> {
        let keys = Keys::open(dir, &st.uri).await?;
        Ok(Self { dir: dir.to_owned(), api: Api::new(server, &st.uri, &st.token), keys, st })
    }

    /// Writes the state file (atomically).
    pub fn save(&self) -> Res<()> {
        let tmp = self.dir.join("client.json.tmp");
        let bytes = serde_json::to_vec_pretty(&self.st).map_err(|e| e.to_string())?;
        std::fs::write(&tmp, bytes).map_err(|e| format!("{}: {e}", tmp.display()))?;
        std::fs::rename(&tmp, self.dir.join("client.json")).map_err(|e| e.to_string())
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

    /// The last log entry of `room` processed (0: none).
    pub fn cursor(&self, room: &str) -> u64 {
        self.st.rooms.get(room).map_or(0, |r| r.cursor)
    }

    /// The state of `room` (created empty).
    pub fn room(&mut self, room: &str) -> &mut RoomState {
        self.st.rooms.entry(room.to_owned()).or_default()
    }
}
