//! A device's to-device inbox on the homeserver, read with `/sync` (to-device messages only) as the device.
//!
//! The homeserver pushes to-device messages to the appservice in transactions, but a transaction it could not
//! deliver (the bridge was down, or answered an error) is pushed again with its events only: Synapse's appservice
//! catch-up keeps no to-device messages. They stay in the device's inbox, though, which the homeserver empties only
//! when the device syncs past them. So the appservice user's device reads its inbox at start, and whenever an event
//! arrives without its room key; every loaded device reads its own every [`INBOX_EVERY`], which also keeps the
//! homeserver's inbox from growing. Messages pushed before come again this way: the Olm machine knows them as
//! replays (it keeps the hashes of what it decrypted) and drops them.

use super::{DECRYPTION, Device, E2ee, Status, requests};
use crate::homeserver::HsError;
use matrix_sdk_crypto::EncryptionSyncChanges;
use ruma::UserId;
use ruma::api::client::filter::FilterDefinition;
use ruma::api::client::sync::sync_events::v3 as sync;
use ruma::presence::PresenceState;
use std::time::Duration;

/// How often every loaded device reads its inbox.
pub const INBOX_EVERY: Duration = Duration::from_secs(3600);
/// At most this many `/sync` rounds per read (the homeserver gives up to 100 messages a round).
const MAX_ROUNDS: usize = 100;
/// How long events that lack their keys wait for the probe's read of the inbox.
pub const START_READ_WAIT: Duration = Duration::from_secs(15);

impl E2ee {
    /// Reads the inbox of `user`'s device, if it was ever made, and gives what is there to its machine; returns
    /// whether room keys came. Each round acknowledges the one before (the homeserver deletes what the device has
    /// synced past), so a read ends with the inbox empty up to where it stopped. Only once the probe has
    /// answered: its message, read from the inbox, would never be pushed.
    pub async fn read_inbox(&self, user: &UserId) -> Result<bool, HsError> {
        if self.status() != Status::Ready {
            return Ok(false);
        }
        self.read_inbox_now(user).await
    }

    /// [`E2ee::read_inbox`] whatever the status: at start, before the probe sends its message.
    pub(super) async fn read_inbox_now(&self, user: &UserId) -> Result<bool, HsError> {
        if user == self.bot && self.inbox_unreadable.load(std::sync::atomic::Ordering::SeqCst) {
            return Ok(false);
        }
        let Some(device) = self.existing_device(user).await? else { return Ok(false) };
        let started = tokio::time::Instant::now();
        let mut since = None;
        let mut keys_came = false;
        for _ in 0..MAX_ROUNDS {
            let (more, next, keys) = self.inbox_round(user, &device, since.take()).await?;
            keys_came |= keys;
            if !more {
                break;
            }
            since = Some(next);
        }
        if user == self.bot {
            let mut read = self.inbox_read.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            *read = Some(read.map_or(started, |at| at.max(started)));
        }
        Ok(keys_came)
    }

    /// Waits until the appservice user's device has read its inbox when the probe began (see [`E2ee::probe`]), or
    /// the probe ended otherwise, at most until [`START_READ_WAIT`] after the probe or the first wait began (one
    /// deadline for all the events that wait); returns whether it did.
    pub async fn start_read(&self) -> bool {
        let mut done = self.start_read.subscribe();
        let deadline = self.read_deadline();
        tokio::time::timeout_at(deadline, done.wait_for(|d| *d)).await.is_ok_and(|r| r.is_ok())
    }

    /// The deadline of [`E2ee::start_read`], set now if it was not.
    pub(super) fn read_deadline(&self) -> tokio::time::Instant {
        let mut deadline = self.read_deadline.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        *deadline.get_or_insert_with(|| tokio::time::Instant::now() + START_READ_WAIT)
    }

    /// Reads the appservice user's inbox for a key an event lacks, unless a read began since `taken_up`, when the
    /// transaction (or catch-up) the event came in was taken up: its events share one read. A read that began
    /// before may have missed the key, which the sender's client sends just before the event. Returns whether room
    /// keys came.
    pub async fn look_for_keys(&self, taken_up: tokio::time::Instant) -> Result<bool, HsError> {
        let read_since =
            self.inbox_read.lock().unwrap_or_else(std::sync::PoisonError::into_inner).is_some_and(|at| at >= taken_up);
        if read_since {
            return Ok(false);
        }
        // A failing read is not tried again for the rest of the transaction either.
        *self.inbox_read.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(tokio::time::Instant::now());
        self.read_bot_inbox().await
    }

    /// [`E2ee::read_inbox`] of the appservice user's device.
    pub async fn read_bot_inbox(&self) -> Result<bool, HsError> {
        self.read_inbox(&self.bot).await
    }

    /// Reads every loaded device's inbox (housekeeping: what a lost transaction carried, and the homeserver's
    /// inbox emptied); returns whether room keys came to the appservice user's device. A device the homeserver
    /// refuses is skipped.
    pub async fn read_all_inboxes(&self) -> Result<bool, HsError> {
        let users: Vec<_> = self.devices.lock().await.keys().cloned().collect();
        let mut keys_came = false;
        for user in users {
            match self.read_inbox(&user).await {
                Err(HsError::Refused { status, errcode, error }) => {
                    tracing::warn!(%user, status, %errcode, %error, "a bridge device cannot read its inbox");
                }
                Ok(keys) => keys_came |= keys && user == self.bot,
                Err(e) => return Err(e),
            }
        }
        Ok(keys_came)
    }

    /// One `/sync` round; returns whether it brought messages, the position to acknowledge them with, and whether
    /// room keys came.
    async fn inbox_round(
        &self,
        user: &UserId,
        device: &Device,
        since: Option<String>,
    ) -> Result<(bool, String, bool), HsError> {
        let mut request = sync::Request::new();
        // Synapse answers a `/sync` the same as one with the same parameters in the last two minutes
        // (`sync_response_cache_duration`): a field of the bridge's own makes each read's filter its own.
        let mut filter = serde_json::to_value(FilterDefinition::ignore_all()).map_err(requests::store_error)?;
        filter["org.mimi_bridge.read"] = crate::registration::random_token().into();
        request.filter = Some(sync::Filter::FilterId(filter.to_string()));
        request.since = since;
        request.set_presence = PresenceState::Offline;
        request.timeout = Some(Duration::ZERO);
        let answer = self.hs.send_ruma(request, (user.as_str(), Some(device.machine.device_id().as_str()))).await?;
        let events = answer.to_device.events;
        let more = !events.is_empty();
        tracing::debug!(%user, messages = events.len(), next = %answer.next_batch, "a bridge device's inbox read");
        let counts = answer.device_one_time_keys_count;
        let changes = EncryptionSyncChanges {
            to_device_events: events,
            changed_devices: &answer.device_lists,
            one_time_keys_counts: &counts,
            unused_fallback_keys: answer.device_unused_fallback_key_types.as_deref(),
            next_batch_token: Some(answer.next_batch.clone()),
        };
        let keys_came = {
            let _turn = device.turn.lock().await;
            let (_, room_keys) =
                device.machine.receive_sync_changes(changes, &DECRYPTION).await.map_err(requests::store_error)?;
            !room_keys.is_empty()
        };
        if let Err(e) = requests::send_all(&self.hs, &device.machine).await {
            tracing::warn!(%user, error = %e, "a bridge device's key calls failed; tried again later");
        }
        Ok((more, answer.next_batch, keys_came))
    }
}
