//! A Matrix user for the benchmark: sends messages through the client-server API and notes the markers of every
//! message event its `/sync` long-poll receives (reader `mx:ROOM_ID`), and the rooms it is invited to.

use crate::measure::Arrivals;
use harness::{MatrixUser, Synapse};
use serde_json::{Value, json};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A registered user with a running sync loop.
pub struct MatrixClient {
    hs: Arc<Synapse>,
    /// The user.
    pub user: MatrixUser,
    invites: Arc<Mutex<Vec<String>>>,
    bodies: Arc<Mutex<Vec<(String, String, String)>>>,
    txn: AtomicU64,
    /// Ends the sync loop.
    stop: Arc<AtomicBool>,
}

impl Drop for MatrixClient {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl MatrixClient {
    /// Registers `localpart` and starts its sync loop: a thread that ends after the client is dropped, and holds
    /// only the homeserver's port (holding the `Synapse` would keep its process alive past the test).
    pub fn register(hs: Arc<Synapse>, localpart: &str, arrivals: Arrivals) -> Result<Self, String> {
        let user = hs.register_user(localpart).map_err(|e| e.to_string())?;
        let (invites, bodies) = (Arc::new(Mutex::new(Vec::new())), Arc::new(Mutex::new(Vec::new())));
        let stop = Arc::new(AtomicBool::new(false));
        let (port, token, inv2, bod2, stop2) =
            (hs.port, user.access_token.clone(), invites.clone(), bodies.clone(), stop.clone());
        std::thread::spawn(move || sync_loop(port, &token, &arrivals, &inv2, &bod2, &stop2));
        Ok(Self { hs, user, invites, bodies, txn: AtomicU64::new(0), stop })
    }

    /// One client-server call; an error unless it answers 200.
    pub fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        let (status, v) =
            self.hs.request(method, path, Some(&self.user.access_token), body.as_ref()).map_err(|e| e.to_string())?;
        if status != 200 {
            return Err(format!("{method} {path}: {status} {v}"));
        }
        Ok(v)
    }

    /// Sends an `m.text` message.
    pub fn say(&self, room: &str, text: &str) -> Result<(), String> {
        let txn = self.txn.fetch_add(1, Ordering::Relaxed);
        let path = format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/b{txn}");
        self.call("PUT", &path, Some(json!({"msgtype": "m.text", "body": text}))).map(|_| ())
    }

    /// Waits (60 s at most) for an invite not in `known`; joins it and returns its id.
    pub fn accept_next_invite(&self, known: &[String]) -> Result<String, String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let next =
                self.invites.lock().unwrap_or_else(|e| e.into_inner()).iter().find(|r| !known.contains(r)).cloned();
            if let Some(room) = next {
                self.call("POST", &format!("/_matrix/client/v3/join/{room}"), Some(json!({})))?;
                return Ok(room);
            }
            if Instant::now() > deadline {
                return Err(format!("{}: no new invite within 60 s", self.user.user_id));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits (60 s at most) until a message in `room` whose body satisfies `pred` has arrived.
    pub fn wait_body(&self, room: &str, what: &str, pred: impl Fn(&str) -> bool) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if self.bodies.lock().unwrap_or_else(|e| e.into_inner()).iter().any(|(r, _, b)| r == room && pred(b)) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("{what}: not seen in {room} within 60 s"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits (60 s at most) until the last 50 events of `room` hold a message whose content satisfies `pred`;
    /// returns that content (read from the room's history, so every field the homeserver kept is there).
    pub fn wait_content(&self, room: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Result<Value, String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let page = self.call("GET", &format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=50"), None)?;
            let found = page["chunk"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|e| e["type"] == "m.room.message" && pred(&e["content"]));
            if let Some(e) = found {
                return Ok(e["content"].clone());
            }
            if Instant::now() > deadline {
                return Err(format!("{what}: not seen in {room} within 60 s"));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits (60 s at most) until `user` is a joined member of `room`.
    pub fn wait_member(&self, room: &str, user: &str) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let v = self.call("GET", &format!("/_matrix/client/v3/rooms/{room}/joined_members"), None)?;
            if v["joined"].get(user).is_some() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("{user} did not join {room} within 60 s"));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

fn sync_loop(
    port: u16,
    token: &str,
    arrivals: &Arrivals,
    invites: &Mutex<Vec<String>>,
    bodies: &Mutex<Vec<(String, String, String)>>,
    stop: &AtomicBool,
) {
    let mut since: Option<String> = None;
    while !stop.load(Ordering::Relaxed) {
        let path = match &since {
            Some(s) => format!("/_matrix/client/v3/sync?timeout=10000&since={s}"),
            None => "/_matrix/client/v3/sync?timeout=0".to_owned(),
        };
        let Ok((200, v)) = harness::synapse::request_to(port, "GET", &path, Some(token), None) else {
            std::thread::sleep(Duration::from_millis(200));
            continue;
        };
        if let Some(rooms) = v["rooms"]["invite"].as_object() {
            invites.lock().unwrap_or_else(|e| e.into_inner()).extend(rooms.keys().cloned());
        }
        for (room, r) in v["rooms"]["join"].as_object().into_iter().flatten() {
            for e in r["timeline"]["events"].as_array().into_iter().flatten() {
                if e["type"] != "m.room.message" {
                    continue;
                }
                let body = e["content"]["body"].as_str().unwrap_or_default();
                // Only the first sync is history; later ones are new events.
                if since.is_some() {
                    arrivals.saw(&format!("mx:{room}"), body);
                }
                let sender = e["sender"].as_str().unwrap_or_default().to_owned();
                bodies.lock().unwrap_or_else(|e| e.into_inner()).push((room.clone(), sender, body.to_owned()));
            }
        }
        since = v["next_batch"].as_str().map(str::to_owned).or(since);
    }
}
