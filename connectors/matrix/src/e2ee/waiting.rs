//! Encrypted events waiting for their room keys, kept in a file of the account's state directory (written
//! atomically before the transaction that brought them is answered): a restart forgets none of them.

use crate::bot::position::{Undecrypted, wait_for_keys, write_atomically};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The waiting events and their file.
pub struct Waiting {
    path: PathBuf,
    events: Mutex<Vec<Undecrypted>>,
}

impl Waiting {
    /// The events waiting in `dir` (none if there is no file yet). An unreadable file is an error: forgetting it
    /// would lose the events it holds.
    pub fn load(dir: &Path) -> Result<Self, String> {
        let path = dir.join("undecrypted.json");
        let events = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        Ok(Self { path, events: Mutex::new(events) })
    }

    fn events(&self) -> std::sync::MutexGuard<'_, Vec<Undecrypted>> {
        self.events.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Keeps `event` until its key arrives, durably.
    pub fn add(&self, event: Undecrypted) -> Result<(), String> {
        let mut events = self.events();
        wait_for_keys(&mut events, event);
        self.save(&events)
    }

    /// The waiting events, oldest first.
    pub fn all(&self) -> Vec<Undecrypted> {
        self.events().clone()
    }

    /// Forgets the events of `event_ids` (bridged now), durably.
    pub fn remove(&self, event_ids: &[String]) -> Result<(), String> {
        let mut events = self.events();
        events.retain(|u| !event_ids.contains(&u.event_id));
        self.save(&events)
    }

    fn save(&self, events: &[Undecrypted]) -> Result<(), String> {
        let json = serde_json::to_vec(events).map_err(|e| e.to_string())?;
        write_atomically(&self.path, &json).map_err(|e| format!("{}: {e}", self.path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(n: usize, session: &str) -> Undecrypted {
        Undecrypted {
            room_id: "!r:hs".into(),
            event_id: format!("$e{n}"),
            event: serde_json::json!({"content": {"session_id": session}}),
            at_ms: 0,
        }
    }

    #[test]
    fn waiting_events_survive_a_restart_and_leave_once_bridged() {
        let dir = tempfile::tempdir().expect("tempdir");
        let w = Waiting::load(dir.path()).expect("none yet");
        w.add(event(1, "s1")).expect("kept");
        w.add(event(2, "s2")).expect("kept");
        w.add(event(1, "s1")).expect("kept once");
        let again = Waiting::load(dir.path()).expect("read back");
        let ids = |v: Vec<Undecrypted>| v.into_iter().map(|u| u.event_id).collect::<Vec<_>>();
        assert_eq!(ids(again.all()), ["$e1", "$e2"]);
        again.remove(&["$e1".into()]).expect("removed");
        let last = Waiting::load(dir.path()).expect("read back");
        assert_eq!(ids(last.all()), ["$e2"]);
        std::fs::write(dir.path().join("undecrypted.json"), b"[").expect("corrupt");
        assert!(Waiting::load(dir.path()).is_err(), "a corrupt file is an error, not an empty list");
    }
}
