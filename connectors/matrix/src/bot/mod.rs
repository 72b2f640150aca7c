//! Bot mode (IO shell): one ordinary Matrix account, driven through matrix-sdk, joins the linked rooms and relays
//! everyone as `name: text` ([`crate::Translator::relay`]). For homeservers where no appservice can be registered.
//!
//! * [`login`]: the client and its store under the account's state directory; logged in once, restored after.
//! * [`position`]: where the sync stands, advanced only once the core durably took what came before it.
//! * [`sync`]: the sync loop — events translated as in appservice mode, a `limited` timeline backfilled from
//!   `/messages` back to the last event taken, encrypted rooms decrypted by the client (an event whose keys have
//!   not arrived gives the portal a notice, and is bridged once they do).
//!
//! Sends go through the same sans-IO translation as the appservice's, with the bot as the sender; in an encrypted
//! room the client encrypts them.

pub mod login;
pub mod position;
mod sync;

pub use crate::inbound::UNDECRYPTED_NOTICE;

use crate::config::Config;
use crate::outbound::MatrixAction;
use crate::translate::Translator;
use async_trait::async_trait;
use bridge_api::connector::{Delivery, SendError};
use bridge_api::{Account, AccountContext, AccountId, Capabilities, ConnectorError, Health, NativeId, OutboundEvent};
use matrix_sdk::Client;
use matrix_sdk::ruma::{OwnedRoomId, OwnedTransactionId};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tokio::sync::{OnceCell, watch};

/// A Matrix account in bot mode.
pub struct BotAccount {
    inner: Arc<Inner>,
}

struct Inner {
    id: AccountId,
    cfg: Config,
    ctx: AccountContext,
    tr: Translator,
    caps: Capabilities,
    dir: PathBuf,
    client: OnceCell<Client>,
    health: watch::Sender<Health>,
    stop: watch::Sender<bool>,
    /// True once the account's task has ended (after a shutdown: nothing more is taken or written).
    ended: watch::Sender<bool>,
    /// The linked rooms: each native name (a room id or an alias) and the room id it resolved to.
    rooms: Mutex<BTreeMap<String, Option<OwnedRoomId>>>,
}

impl BotAccount {
    /// Creates the account and starts its task (login, joins, sync); its state lives in `ctx.state_dir`.
    pub fn start(id: AccountId, cfg: Config, ctx: AccountContext, caps: Capabilities) -> Result<Self, String> {
        let dir = ctx.state_dir.clone().ok_or("bot mode needs a state directory for its session and keys")?;
        let tr = Translator {
            account: id.clone(),
            domain: ctx.domain.clone(),
            ghosts: crate::GhostNames::none(),
            bot_user_id: cfg.bot_user_id(),
            relay: Some(cfg.relay_format.clone()),
        };
        let inner = Arc::new(Inner {
            id,
            cfg,
            ctx,
            tr,
            caps,
            dir,
            client: OnceCell::new(),
            health: watch::channel(Health::Connecting).0,
            stop: watch::channel(false).0,
            ended: watch::channel(false).0,
            rooms: Mutex::default(),
        });
        let task = inner.clone();
        tokio::spawn(async move {
            sync::run(task.clone()).await;
            task.ended.send_replace(true);
        });
        Ok(Self { inner })
    }
}

impl Inner {
    fn rooms(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Option<OwnedRoomId>>> {
        self.rooms.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The native name a room id is linked under.
    fn linked_as(&self, room_id: &str) -> Option<String> {
        self.rooms().iter().find(|(_, id)| id.as_ref().is_some_and(|id| id.as_str() == room_id)).map(|(n, _)| n.clone())
    }

    fn set_health(&self, h: Health) {
        Health::publish(&self.health, h);
    }

    /// Joins the linked room `name` (a room id or an alias), if the client is ready; remembers its id.
    async fn join_room(&self, name: &str) -> Result<(), String> {
        let Some(client) = self.client.get() else { return Ok(()) };
        let alias_or_id = matrix_sdk::ruma::OwnedRoomOrAliasId::try_from(name).map_err(|e| format!("{name:?}: {e}"))?;
        let room = client.join_room_by_id_or_alias(&alias_or_id, &[]).await.map_err(|e| e.to_string())?;
        self.rooms().insert(name.to_owned(), Some(room.room_id().to_owned()));
        tracing::info!(account = %self.id, room = %name, room_id = %room.room_id(), "Matrix bot joined the room");
        Ok(())
    }

    /// Performs one translated call as the bot; the event id it made, if any.
    async fn perform(&self, action: MatrixAction) -> Result<Option<String>, SendError> {
        let client = self.client.get().ok_or_else(|| SendError::Retry("the Matrix bot is not logged in yet".into()))?;
        let room_of = |name: &str| {
            let id = self.rooms().get(name).cloned().flatten();
            id.and_then(|id| client.get_room(&id)).ok_or_else(|| SendError::Retry(format!("not in {name} yet")))
        };
        let failed = |e: matrix_sdk::Error| match login::classify(&e) {
            // A session the homeserver ended is the account's problem, not the message's: it waits.
            login::LoginError::BadCredentials(r) if !login::is_unknown_token(&e) => SendError::Rejected(r),
            other => SendError::Retry(other.to_string()),
        };
        // A room someone removed the bot from takes nothing until it is invited back: refused at once (the core
        // tells the sender) rather than retried for the hour a delivery may take, holding up the leg's queue.
        let bot = &self.tr.bot_user_id;
        let room_of = async |name: &str| {
            let room = room_of(name)?;
            if sync::removed_from(&room, bot).await {
                return Err(SendError::Rejected(format!(
                    "the Matrix bot was removed from {name} and not invited back"
                )));
            }
            Ok(room)
        };
        match action {
            MatrixAction::Send { room, event_type, txn_id, content, .. } => {
                let room = room_of(&room).await?;
                let txn: OwnedTransactionId = txn_id.into();
                let sent = room.send_raw(event_type, content).with_transaction_id(&txn).await.map_err(failed)?;
                Ok(Some(sent.response.event_id.to_string()))
            }
            MatrixAction::Redact { room, event_id, txn_id, .. } => {
                let room = room_of(&room).await?;
                let event_id = matrix_sdk::ruma::OwnedEventId::try_from(event_id.as_str())
                    .map_err(|e| SendError::Rejected(format!("{event_id:?}: {e}")))?;
                room.redact(&event_id, None, Some(txn_id.into())).await.map_err(|e| failed(e.into()))?;
                Ok(None)
            }
            MatrixAction::SendMedia { room, txn_id, attachment, .. } => {
                let room = room_of(&room).await?;
                let kept = match &self.ctx.media {
                    Some(store) => store.get(&attachment.url).await.map_err(|e| SendError::Retry(e.to_string()))?,
                    None => None,
                };
                let label = attachment.filename.clone().unwrap_or_else(|| attachment.media_type.clone());
                let txn: OwnedTransactionId = txn_id.into();
                let Some((bytes, media_type)) = kept else {
                    // A file the store does not hold (any more): its link, so that nothing is silently lost.
                    let content =
                        serde_json::json!({"msgtype": "m.text", "body": format!("{label}: {}", attachment.url)});
                    let sent =
                        room.send_raw("m.room.message", content).with_transaction_id(&txn).await.map_err(failed)?;
                    return Ok(Some(sent.response.event_id.to_string()));
                };
                // The client uploads it (encrypted, as an `EncryptedFile`, in an encrypted room).
                let mime = media_type.parse().unwrap_or(mime::APPLICATION_OCTET_STREAM);
                let config = matrix_sdk::attachment::AttachmentConfig::new().txn_id(txn);
                let sent = room.send_attachment(label, &mime, bytes, config).await.map_err(failed)?;
                Ok(Some(sent.event_id.to_string()))
            }
            // Not made in bot mode: other networks' joins, leaves and typing are not shown.
            MatrixAction::Join { .. } | MatrixAction::Leave { .. } | MatrixAction::Typing { .. } => Ok(None),
        }
    }
}

#[async_trait]
impl Account for BotAccount {
    fn id(&self) -> &AccountId {
        &self.inner.id
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.caps.clone()
    }

    async fn join(&self, room: &str) -> Result<(), ConnectorError> {
        self.inner.rooms().entry(room.to_owned()).or_insert(None);
        match self.inner.join_room(room).await {
            Ok(()) => Ok(()),
            Err(e) => {
                // Tried again before every sync (an invite may come later).
                tracing::warn!(account = %self.inner.id, %room, error = %e, "the Matrix bot could not join the room yet");
                Ok(())
            }
        }
    }

    async fn leave(&self, room: &str) -> Result<(), ConnectorError> {
        let id = self.inner.rooms().remove(room).flatten();
        if let (Some(client), Some(id)) = (self.inner.client.get(), id)
            && let Some(r) = client.get_room(&id)
            && let Err(e) = r.leave().await
        {
            return Err(ConnectorError::Room {
                account: self.inner.id.clone(),
                room: room.to_owned(),
                reason: e.to_string(),
            });
        }
        Ok(())
    }

    async fn send(&self, event: &OutboundEvent) -> Result<Delivery, SendError> {
        let actions = self.inner.tr.outbound(event).map_err(|e| SendError::Rejected(e.to_string()))?;
        let mut native_ids = Vec::new();
        for action in actions {
            if let Some(id) = self.inner.perform(action).await? {
                native_ids.push(NativeId(id));
            }
        }
        Ok(Delivery { native_ids })
    }

    fn health(&self) -> watch::Receiver<Health> {
        self.inner.health.subscribe()
    }

    /// Stops the task and waits (up to 10 s) until it has ended: a response being taken is finished first.
    async fn shutdown(&self) {
        self.inner.set_health(Health::Stopped);
        self.inner.stop.send_replace(true);
        let mut ended = self.inner.ended.subscribe();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(10), ended.wait_for(|e| *e)).await;
    }
}
