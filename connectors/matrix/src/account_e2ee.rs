//! The appservice account's side of end-to-end encryption ([`crate::e2ee`]): encrypted events decrypted on their
//! way in, and those that waited for their keys taken once the keys arrive.

use super::Inner;
use crate::bot::position::Undecrypted;
use crate::e2ee::{Decrypted, Status};
use bridge_api::InboundEvent;
use ruma::OwnedRoomId;
use ruma::events::AnyTimelineEvent;
use ruma::serde::Raw;
use std::time::Duration;

/// What an event of a transaction is taken as.
pub(super) enum Intake {
    /// This event (decrypted if it was encrypted and could be).
    Event(Raw<AnyTimelineEvent>),
    /// Instead of an event that cannot be decrypted yet: the notice that stands for it, if any.
    Instead(Option<Box<InboundEvent>>),
}

impl Inner {
    /// `raw` as the core should get it. An `m.room.encrypted` event of a linked room is decrypted by the appservice
    /// user's device when end-to-end encryption is ready; one that cannot be decrypted yet waits for its key (kept
    /// on disk before the transaction is answered) and the portal gets a notice from its sender in its place.
    /// Without end-to-end encryption it goes to the translation as it is (which gives the notice that the bridge
    /// cannot read it).
    ///
    /// `taken_up`: when the events `raw` came with (a transaction, a catch-up) were taken up.
    pub(super) async fn decrypted(
        &self,
        raw: Raw<AnyTimelineEvent>,
        taken_up: tokio::time::Instant,
    ) -> Result<Intake, String> {
        let (kind, room_id, event_id, sender) = {
            let field = |name| raw.get_field::<String>(name).ok().flatten();
            (field("type"), field("room_id"), field("event_id"), field("sender"))
        };
        if kind.as_deref() != Some("m.room.encrypted") {
            return Ok(Intake::Event(raw));
        }
        // Before the probe has answered (a transaction the homeserver held while the bridge was down comes
        // first), the device decrypts what it can already: only a homeserver known to lack end-to-end encryption
        // leaves encrypted events to the translation.
        let Some(e2ee) = self.e2ee.as_deref().filter(|e| !matches!(e.status(), Status::Unavailable(_))) else {
            return Ok(Intake::Event(raw));
        };
        let (Some(room_id), Some(event_id), Some(sender)) = (room_id, event_id, sender) else {
            return Ok(Intake::Instead(None));
        };
        let (Ok(room), Some(leg_room)) = (OwnedRoomId::try_from(room_id.as_str()), self.leg_of(&room_id).await?) else {
            return Ok(Intake::Instead(None));
        };
        // A room not known to be encrypted yet: it is now, and the ping loop sets up end-to-end encryption.
        if self.state().encrypted.insert(room_id.clone()) {
            self.recheck.notify_one();
        }
        if self.tr.is_bridge_user(&sender) {
            // The bridge's own message coming back (its devices share no keys among themselves): nothing to tell.
            return Ok(Intake::Instead(None));
        }
        let bot = self.cfg.bot_user_id();
        if !self.state().devices.contains(&bot) {
            self.ensure_device(&bot).await.map_err(|e| e.to_string())?;
            if !self.state().devices.contains(&bot) {
                // The homeserver makes no devices for the appservice: nothing here can decrypt.
                return Ok(Intake::Event(raw));
            }
        }
        if let Decrypted::Clear(clear) = e2ee.decrypt(&room, &raw).await? {
            return Ok(Intake::Event(clear));
        }
        // The key may be in the device's inbox, from a transaction the homeserver could not push: read at start
        // (a transaction held while the bridge was down comes as soon as it is back), or now.
        let keys_came = match e2ee.status() {
            Status::Starting => e2ee.start_read().await,
            _ => e2ee.look_for_keys(taken_up).await.unwrap_or_else(|e| {
                tracing::warn!(account = %self.id, error = %e, "cannot read the bridge device's inbox");
                false
            }),
        };
        if keys_came {
            self.retry_waiting.store(true, std::sync::atomic::Ordering::SeqCst);
        }
        // Tried again whatever this read found: another read (at start, or the hourly one) may have given the key
        // to the device meanwhile.
        let (why, withheld) = match e2ee.decrypt(&room, &raw).await? {
            Decrypted::Clear(clear) => return Ok(Intake::Event(clear)),
            Decrypted::NotYet(why, withheld) => (why, withheld),
        };
        tracing::info!(account = %self.id, room = %room_id, event = %event_id, %why,
            "an encrypted event cannot be decrypted yet: it waits for its key");
        let event = serde_json::from_str(raw.json().get()).unwrap_or_default();
        e2ee.waiting.add(Undecrypted {
            room_id: room_id.clone(),
            event_id: event_id.clone(),
            event,
            at_ms: now_ms(),
        })?;
        let name = self.sender_name(&room_id, &sender).await;
        let notice = self.tr.undecrypted_notice(&leg_room, &sender, name, &event_id, withheld.as_ref());
        Ok(Intake::Instead(notice.map(Box::new)))
    }

    /// Reads the inbox of the appservice user's device ([`crate::e2ee::inbox`]; all loaded devices' with `all`),
    /// and takes the waiting events its keys open.
    pub(super) async fn read_inboxes(&self, all: bool) {
        let Some(e2ee) = self.e2ee.as_deref() else { return };
        let read = match all {
            true => e2ee.read_all_inboxes().await,
            false => e2ee.read_bot_inbox().await,
        };
        match read {
            Ok(keys_came) if keys_came || self.retry_waiting.swap(false, std::sync::atomic::Ordering::SeqCst) => {
                let _turn = self.turn.lock().await;
                if let Err(e) = self.take_waiting().await {
                    self.retry_waiting.store(true, std::sync::atomic::Ordering::SeqCst);
                    tracing::warn!(account = %self.id, error = %e, "waiting events not taken yet");
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(account = %self.id, error = %e, "cannot read the bridge devices' inboxes"),
        }
    }

    /// Decrypts the waiting events that the keys in the crypto store open now, and takes them. The caller holds
    /// [`Inner::turn`].
    pub(super) async fn take_waiting(&self) -> Result<(), String> {
        let Some(e2ee) = self.e2ee.as_deref().filter(|e| e.status() == Status::Ready) else {
            // Not now: once end-to-end encryption is ready (the ping loop takes them then).
            self.retry_waiting.store(true, std::sync::atomic::Ordering::SeqCst);
            return Ok(());
        };
        let (mut clear, mut done) = (Vec::new(), Vec::new());
        for waiting in e2ee.waiting.all() {
            let Ok(room) = OwnedRoomId::try_from(waiting.room_id.as_str()) else { continue };
            let Ok(json) = serde_json::value::to_raw_value(&waiting.event) else { continue };
            if let Decrypted::Clear(event) = e2ee.decrypt(&room, &Raw::from_json(json)).await? {
                tracing::info!(account = %self.id, event = %waiting.event_id, "an encrypted event is decrypted now");
                clear.push(event);
                done.push(waiting.event_id);
            }
        }
        if clear.is_empty() {
            return Ok(());
        }
        self.take(clear).await?;
        e2ee.waiting.remove(&done)
    }
}

/// Reads every loaded device's inbox every [`crate::e2ee::inbox::INBOX_EVERY`] until the account stops.
pub(super) async fn inbox_loop(inner: std::sync::Arc<Inner>) {
    // Looks for the account's stop every few seconds meanwhile (a stopped account's devices are let go).
    let mut next = tokio::time::Instant::now() + crate::e2ee::inbox::INBOX_EVERY;
    loop {
        tokio::time::sleep(Duration::from_secs(5).min(next.saturating_duration_since(tokio::time::Instant::now())))
            .await;
        if inner.state().stopped {
            return;
        }
        if tokio::time::Instant::now() >= next {
            inner.read_inboxes(true).await;
            next = tokio::time::Instant::now() + crate::e2ee::inbox::INBOX_EVERY;
        }
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}
