//! Where the bot's sync stands, kept in its state directory: the `/sync` token after the last response whose events
//! the core durably took, the last event taken in each room (where a backfill after a `limited` timeline stops),
//! and the encrypted events not decrypted yet (bridged once their keys arrive). Written atomically (a temporary
//! file, fsync, rename), so a kill leaves the old position or the new one, never half of one: events between the
//! two are taken again, and the core drops what it has by event id.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Most undecrypted events kept waiting for their keys; beyond it the oldest are given up (their notice stays).
pub const MAX_UNDECRYPTED: usize = 1000;

/// One encrypted event waiting for its room key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Undecrypted {
    /// The room id.
    pub room_id: String,
    /// The event id.
    pub event_id: String,
    /// The `m.room.encrypted` event as received (sync form).
    pub event: serde_json::Value,
    /// When it was received, ms since the UNIX epoch.
    pub at_ms: u64,
}

/// The sync position.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// The `next_batch` to sync from; `None` before the first sync.
    pub token: Option<String>,
    /// The last event taken per room id.
    #[serde(default)]
    pub last_event: BTreeMap<String, String>,
    /// Encrypted events waiting for their keys, oldest first.
    #[serde(default)]
    pub undecrypted: Vec<Undecrypted>,
}

impl Position {
    /// Keeps `event` until its keys arrive; past [`MAX_UNDECRYPTED`] the oldest is given up.
    pub fn wait_for_keys(&mut self, event: Undecrypted) {
        wait_for_keys(&mut self.undecrypted, event);
    }
}

/// Adds `event` to `waiting` (oldest first) unless it is there; past [`MAX_UNDECRYPTED`] the oldest is given up.
pub fn wait_for_keys(waiting: &mut Vec<Undecrypted>, event: Undecrypted) {
    if waiting.iter().any(|u| u.event_id == event.event_id) {
        return;
    }
    waiting.push(event);
    if waiting.len() > MAX_UNDECRYPTED {
        let over = waiting.len() - MAX_UNDECRYPTED;
        for u in waiting.drain(..over) {
            tracing::warn!(room = %u.room_id, event = %u.event_id, "an undecrypted event is given up (too many wait)");
        }
    }
}

/// The file a [`Position`] lives in.
#[derive(Debug, Clone)]
pub struct PositionFile {
    path: PathBuf,
}

impl PositionFile {
    /// The position file in `dir`.
    pub fn new(dir: &Path) -> Self {
        Self { path: dir.join("sync-position.json") }
    }

    /// The stored position; the default if there is none. An unreadable file is an error (never silently reset:
    /// that would skip what was said while the daemon was down).
    pub fn load(&self) -> Result<Position, String> {
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", self.path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Position::default()),
            Err(e) => Err(format!("{}: {e}", self.path.display())),
        }
    }

    /// Stores `position` atomically and durably.
    pub fn save(&self, position: &Position) -> Result<(), String> {
        let json = serde_json::to_vec(position).map_err(|e| e.to_string())?;
        write_atomically(&self.path, &json).map_err(|e| format!("{}: {e}", self.path.display()))
    }
}

/// Writes `bytes` to `path` through a temporary file in the same directory (mode 0600), fsynced, renamed over
/// `path`, with the directory fsynced after.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiting(n: usize) -> Undecrypted {
        Undecrypted { room_id: "!r:hs".into(), event_id: format!("$e{n}"), event: serde_json::json!({}), at_ms: 0 }
    }

    #[test]
    fn a_position_round_trips_and_a_missing_file_is_the_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = PositionFile::new(dir.path());
        assert_eq!(file.load().expect("none yet"), Position::default());
        let mut p = Position { token: Some("s1".into()), ..Position::default() };
        p.last_event.insert("!r:hs".into(), "$last".into());
        p.wait_for_keys(waiting(1));
        file.save(&p).expect("saved");
        assert_eq!(file.load().expect("read"), p);
        std::fs::write(dir.path().join("sync-position.json"), b"{").expect("corrupt");
        assert!(file.load().is_err(), "a corrupt position is an error, not the start");
    }

    #[test]
    fn undecrypted_events_are_kept_once_and_bounded() {
        let mut p = Position::default();
        p.wait_for_keys(waiting(0));
        p.wait_for_keys(waiting(0));
        assert_eq!(p.undecrypted.len(), 1);
        for n in 1..=MAX_UNDECRYPTED {
            p.wait_for_keys(waiting(n));
        }
        assert_eq!(p.undecrypted.len(), MAX_UNDECRYPTED);
        assert_eq!(p.undecrypted[0].event_id, "$e1", "the oldest given up");
    }
}
