//! End-to-end encryption in appservice mode (IO shell around matrix-sdk-crypto's [`OlmMachine`], itself a sans-IO
//! state machine: fed what the homeserver pushes, polled for the calls to make).
//!
//! Every user of the bridge that takes part in an encrypted room has its own device (created with MSC4190; its id
//! is made with its store, see [`E2ee::device`]) with its own Olm account, kept in a sqlite crypto store under the
//! account's state directory, and
//! its own cross-signing identity that signs it: a ghost's message is encrypted by the ghost's device, so strict
//! clients see it as the ghost's, never `MismatchedSender`. The appservice user's device decrypts what Matrix users
//! say in the linked rooms.
//!
//! What the homeserver must offer (checked once a linked room is encrypted, see [`E2ee::probe`]; an account
//! without one loads none of this): to-device messages and device list
//! changes pushed in transactions (Synapse `experimental_features: {msc2409_to_device_messages_enabled: true,
//! msc3202_transaction_extensions: true}`; registration `receive_ephemeral: true`, `org.matrix.msc3202: true`) and
//! devices created by the appservice (`io.element.msc4190: true`). Without them [`E2ee::status`] says why, and
//! encrypted rooms get the notice that the bridge cannot read them.
//!
//! An event that cannot be decrypted yet waits for its room key ([`waiting`], kept on disk) and is bridged once,
//! when the key arrives. Keys of transactions the homeserver could not push are read from the device's inbox
//! ([`inbox`]).

pub mod inbox;
pub mod requests;
pub mod waiting;

use crate::account::GHOST_DEVICE;
use crate::homeserver::{Homeserver, HsError};
use matrix_sdk::deserialized_responses::WithheldCode;
use matrix_sdk_crypto::{DecryptionSettings, EncryptionSettings, EncryptionSyncChanges, OlmMachine, TrustRequirement};
use ruma::OneTimeKeyAlgorithm;
use ruma::api::appservice::event::push_events;
use ruma::api::client::sync::sync_events::DeviceLists;
use ruma::events::AnyTimelineEvent;
use ruma::serde::Raw;
use ruma::{DeviceId, OwnedDeviceId, OwnedRoomId, OwnedUserId, RoomId, UInt, UserId};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

/// The to-device event type of the probe (sent by the appservice user's device to itself).
const PROBE_TYPE: &str = "org.mimi_bridge.probe";
/// How long the probe waits for its message to come back in a transaction.
pub const PROBE_WAIT: Duration = Duration::from_secs(30);
/// How often the probe sends its message again meanwhile (a homeserver that thought the appservice down, after a
/// restart, may drop the to-device messages of the transactions it holds back until then).
const PROBE_AGAIN: Duration = Duration::from_secs(5);

/// How the bridge's devices decrypt: from any sender (what the bridge passes on is the other networks' to trust;
/// the clients in the room apply their own trust to what the bridge sends).
const DECRYPTION: DecryptionSettings =
    DecryptionSettings { sender_device_trust_requirement: TrustRequirement::Untrusted };

/// The error code of a crypto store that does not open (as a refusal: trying again does not help).
const CRYPTO_STORE: &str = "M_CRYPTO_STORE";

/// An id the homeserver would refuse.
fn invalid(e: impl std::fmt::Display) -> HsError {
    HsError::Refused { status: 0, errcode: "M_INVALID_PARAM".into(), error: e.to_string() }
}

/// Whether the bridge can take part in encrypted rooms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// Not known yet (the homeserver has not been reached).
    Starting,
    /// Encrypted rooms are decrypted and encrypted.
    Ready,
    /// The homeserver lacks what it takes; the reason says what.
    Unavailable(String),
}

/// One bridge user's device: its Olm machine, and the lock that keeps its calls in turn.
pub struct Device {
    machine: OlmMachine,
    turn: tokio::sync::Mutex<()>,
    /// When it was last asked for (the least recently used are unloaded first, see [`MAX_LOADED`]).
    used: Mutex<std::time::Instant>,
}

/// At most this many devices are loaded (an Olm machine and its sqlite store each); beyond, the least recently
/// used one that nothing is using is unloaded (loaded again from its store when needed).
pub const MAX_LOADED: usize = 256;

/// The one-time keys a device keeps on the homeserver (vodozemac's `PUBLIC_MAX_ONE_TIME_KEYS`): below it,
/// matrix-sdk-crypto 0.18 makes and uploads new ones (`Account::generate_one_time_keys_if_needed`).
const ONE_TIME_KEYS_KEPT: u64 = 50;

/// Most users [`E2ee::note_fed`] remembers before it forgets those fed longer than [`FED_AGAIN`] ago.
const MAX_FED: usize = 65_536;

/// How long an unloaded device whose keys are in stock ([`keys_in_stock`]) goes without being fed a transaction's
/// counts: feeding them is also when matrix-sdk-crypto replaces a fallback key older than a week.
const FED_AGAIN: Duration = Duration::from_secs(24 * 3600);

/// Whether a transaction's one-time key counts and unused fallback keys of a user's devices (`counts`,
/// `fallback`: by device, `None` when not said) ask nothing of the bridge's crypto device `device` of that user:
/// at least [`ONE_TIME_KEYS_KEPT`] signed keys, its fallback key unused. Synapse sends them for every bridge user
/// in a room an event of the transaction is in, changed or not, for each of the user's devices (the keyless one
/// the calls go through too), and leaves a key type out when none is left.
fn keys_in_stock(
    counts: Option<&BTreeMap<OwnedDeviceId, BTreeMap<OneTimeKeyAlgorithm, UInt>>>,
    fallback: Option<&BTreeMap<OwnedDeviceId, Vec<OneTimeKeyAlgorithm>>>,
    device: &DeviceId,
) -> bool {
    let signed = OneTimeKeyAlgorithm::SignedCurve25519;
    let full = |c: Option<&BTreeMap<OneTimeKeyAlgorithm, UInt>>| {
        // A device missing from its user's counts has no keys on the homeserver.
        c.and_then(|c| c.get(&signed)).is_some_and(|n| u64::from(*n) >= ONE_TIME_KEYS_KEPT)
    };
    counts.is_none_or(|d| full(d.get(device)))
        && fallback.is_none_or(|d| d.get(device).is_none_or(|f| f.contains(&signed)))
}

/// Which of `loaded` (user, last use, in use) to unload so that at most `cap` stay: the least recently used ones
/// not in use, never `keep`.
fn to_unload<U: PartialEq + Clone>(loaded: &[(U, std::time::Instant, bool)], cap: usize, keep: &U) -> Vec<U> {
    let mut idle: Vec<&(U, std::time::Instant, bool)> =
        loaded.iter().filter(|(user, _, in_use)| !in_use && user != keep).collect();
    idle.sort_by_key(|(_, used, _)| *used);
    idle.into_iter().take(loaded.len().saturating_sub(cap)).map(|(user, _, _)| user.clone()).collect()
}

/// What one decryption gave.
pub enum Decrypted {
    /// The event in the clear (same id, sender and room).
    Clear(Raw<AnyTimelineEvent>),
    /// Not decryptable now; why, and the code the sender's client gave if it withheld the key.
    NotYet(String, Option<WithheldCode>),
}

/// The appservice's end-to-end encryption.
pub struct E2ee {
    hs: Homeserver,
    /// Where the crypto stores are (one directory per user).
    dir: PathBuf,
    /// The appservice user (it decrypts).
    bot: OwnedUserId,
    /// The ghosts' names: their devices (and the appservice user's) get no room keys from the bridge's devices,
    /// since nothing the bridge says is read back.
    ghosts: crate::GhostNames,
    /// What the crypto stores are encrypted with, if anything.
    passphrase: Option<String>,
    devices: tokio::sync::Mutex<HashMap<OwnedUserId, Arc<Device>>>,
    /// When each user's crypto device was last fed a transaction's counts, and its id ([`E2ee::nothing_asked`]).
    fed: Mutex<HashMap<OwnedUserId, (std::time::Instant, OwnedDeviceId)>>,
    status: Mutex<Status>,
    /// The probe's nonce, and what wakes it when its message came back.
    probe: Mutex<Option<String>>,
    probed: Notify,
    /// When the appservice user's device last read its inbox ([`inbox`]).
    inbox_read: Mutex<Option<tokio::time::Instant>>,
    /// The appservice user's inbox cannot be read (it is the registration's sender user).
    inbox_unreadable: std::sync::atomic::AtomicBool,
    /// Until when events that lack their keys wait for the probe's read of the inbox ([`E2ee::start_read`]): set
    /// when the probe begins, or when the first such event waits, whichever comes first.
    read_deadline: Mutex<Option<tokio::time::Instant>>,
    /// One probe at a time (the ping loop's, a join's).
    probing: tokio::sync::Mutex<()>,
    /// Whether the start is past reading the appservice user's inbox (what came while the bridge was away).
    start_read: tokio::sync::watch::Sender<bool>,
    /// Events waiting for their room keys.
    pub waiting: waiting::Waiting,
}

impl E2ee {
    /// The encryption of the appservice whose user is `bot`, its stores under `dir` (encrypted with `passphrase`
    /// if set; see [`crate::store_passphrase`]).
    pub fn new(
        hs: Homeserver,
        dir: PathBuf,
        bot: &str,
        ghosts: crate::GhostNames,
        passphrase: Option<String>,
    ) -> Result<Self, String> {
        let bot = OwnedUserId::try_from(bot).map_err(|e| format!("appservice user {bot}: {e}"))?;
        crate::store_passphrase::check(&dir.join("devices"), passphrase.as_deref())?;
        // Key material: readable by the daemon's user only.
        std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
            .create(dir.join("devices"))
            .map_err(|e| format!("{}: {e}", dir.display()))?;
        let waiting = waiting::Waiting::load(&dir)?;
        Ok(Self {
            hs,
            dir,
            bot,
            ghosts,
            passphrase,
            devices: Default::default(),
            fed: Default::default(),
            status: Mutex::new(Status::Starting),
            probe: Mutex::new(None),
            probed: Notify::new(),
            inbox_read: Mutex::new(None),
            inbox_unreadable: Default::default(),
            read_deadline: Mutex::new(None),
            probing: tokio::sync::Mutex::new(()),
            start_read: tokio::sync::watch::Sender::new(false),
            waiting,
        })
    }

    /// Whether encrypted rooms can be bridged.
    pub fn status(&self) -> Status {
        self.status.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    fn set_status(&self, status: Status) {
        *self.status.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = status;
    }

    /// Sets up the appservice user's device (keys uploaded, cross-signed) and checks that the homeserver pushes
    /// to-device messages to the appservice: the device sends one to itself and waits for it ([`PROBE_WAIT`]).
    /// `Err` only while the homeserver is unavailable (try again); what it lacks makes [`Status::Unavailable`]. Once
    /// known, the status holds until the account restarts (a homeserver's configuration changes with a restart).
    pub async fn probe(&self) -> Result<Status, HsError> {
        let _one = self.probing.lock().await;
        let known = self.status();
        if known != Status::Starting {
            return Ok(known);
        }
        self.read_deadline();
        let probed = self.probe_once().await;
        // Whatever came of it, events waiting for the start's inbox read wait no longer.
        self.start_read.send_replace(true);
        probed
    }

    /// [`E2ee::probe`], once.
    async fn probe_once(&self) -> Result<Status, HsError> {
        let bot = self.bot.clone();
        // What the homeserver refuses for good (keys, signatures, to-device messages of the appservice user's
        // device) makes encryption unavailable, said once; only its being away is tried again. A crypto store that
        // does not open (a wrong `store_passphrase`) is as final.
        let unavailable = |e: HsError| match e {
            HsError::Refused { errcode, error, .. } if errcode == CRYPTO_STORE => {
                let why = format!("the bridge device's crypto store does not open ({error})");
                self.set_status(Status::Unavailable(why.clone()));
                Ok(Status::Unavailable(why))
            }
            HsError::Refused { status, errcode, error } => {
                let why = format!("the homeserver refused the bridge's device ({status} {errcode}: {error})");
                self.set_status(Status::Unavailable(why.clone()));
                Ok(Status::Unavailable(why))
            }
            e => Err(e),
        };
        let sender = match self.hs.sender().await {
            Ok(sender) => sender,
            Err(e) => return unavailable(e),
        };
        if sender == bot.as_str() {
            // A registration written before the bot was a user of the namespace: everything works but this.
            tracing::error!(%bot, "the appservice registration's `sender_localpart` is the bot: its device cannot read \
                its to-device inbox, so room keys sent while the bridge was down are lost; write the registration \
                again with `mimi-bridge generate-registration` (the sender becomes BOT.appservice)");
            self.inbox_unreadable.store(true, std::sync::atomic::Ordering::SeqCst);
        } else if let Err(e) = self.hs.register(bot.localpart()).await {
            return unavailable(e);
        }
        match self.hs.create_device(bot.as_str(), GHOST_DEVICE).await {
            Err(HsError::Refused { errcode, error, .. }) => {
                let why = format!(
                    "the homeserver creates no devices for the appservice (MSC4190, \
                    `io.element.msc4190: true` in the registration): {errcode} {error}"
                );
                self.set_status(Status::Unavailable(why.clone()));
                return Ok(Status::Unavailable(why));
            }
            other => other?,
        }
        let bot_device = match self.device(&bot).await {
            Ok(device) => device.machine.device_id().to_owned(),
            Err(e) => return unavailable(e),
        };
        // What came while the bridge was away (before the probe's own message, which must come by push).
        // A failure costs the keys read this way (a notice for the events they open, until the next read).
        if let Err(e) = self.read_inbox_now(&bot).await {
            tracing::warn!(%bot, error = %e, "the bridge device cannot read its inbox");
        }
        self.start_read.send_replace(true);
        let nonce = crate::registration::random_token();
        *self.probe.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(nonce.clone());
        let woken = self.probed.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        let to = (bot.as_str(), bot_device.as_str());
        let content = serde_json::json!({"nonce": nonce});
        let deadline = tokio::time::Instant::now() + PROBE_WAIT;
        let mut came_back = false;
        for n in 0.. {
            if let Err(e) = self.hs.send_to_device(to, PROBE_TYPE, &format!("probe-{nonce}-{n}"), to, &content).await {
                return unavailable(e);
            }
            let until = (tokio::time::Instant::now() + PROBE_AGAIN).min(deadline);
            if tokio::time::timeout_at(until, woken.as_mut()).await.is_ok() {
                came_back = true;
                break;
            }
            if until >= deadline {
                break;
            }
        }
        let status = match came_back {
            true => Status::Ready,
            false => Status::Unavailable(format!(
                "the homeserver does not push to-device messages to the appservice (none came back in {PROBE_WAIT:?}): \
                 Synapse needs `experimental_features: {{msc2409_to_device_messages_enabled: true, \
                 msc3202_transaction_extensions: true}}`, and the registration `receive_ephemeral: true` and \
                 `org.matrix.msc3202: true` (`mimi-bridge generate-registration` writes them)"
            )),
        };
        self.set_status(status.clone());
        Ok(status)
    }

    /// The device of `user` (created on the homeserver beforehand), its machine loaded or made: keys uploaded and
    /// cross-signed the first time.
    pub async fn device(&self, user: &UserId) -> Result<Arc<Device>, HsError> {
        let mut devices = self.devices.lock().await;
        if let Some(d) = devices.get(user) {
            *d.used.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = std::time::Instant::now();
            return Ok(d.clone());
        }
        let dir = self.store_dir(user);
        let device_id = match read_device_id(&dir)? {
            Some(id) => id,
            // A store made before each store had a device id of its own.
            None if dir.exists() => GHOST_DEVICE.to_owned(),
            None => self.new_device(user, &dir).await?,
        };
        let fresh = !dir.join("cross-signed").exists();
        if fresh {
            // Made here (or by a start that stopped before its keys went up).
            self.hs.create_device(user.as_str(), &device_id).await?;
        }
        let store = matrix_sdk::SqliteCryptoStore::open(&dir, self.passphrase.as_deref()).await.map_err(|e| {
            HsError::Refused { status: 0, errcode: CRYPTO_STORE.into(), error: format!("{}: {e}", dir.display()) }
        })?;
        let device_id: &ruma::DeviceId = device_id.as_str().into();
        let machine = OlmMachine::with_store(user, device_id, store, None)
            .await
            .map_err(|e| HsError::Unavailable(format!("crypto store {}: {e}", dir.display())))?;
        if !fresh {
            // Device lists that changed while this device was not loaded were given to no one: look again.
            machine.mark_all_tracked_users_as_dirty().await.map_err(requests::store_error)?;
        }
        requests::send_all(&self.hs, &machine).await?;
        if fresh {
            requests::cross_sign(&self.hs, &machine).await?;
            std::fs::write(dir.join("cross-signed"), b"")
                .map_err(|e| HsError::Unavailable(format!("{}: {e}", dir.display())))?;
            tracing::info!(user = %user, "a bridge device is cross-signed");
        }
        let device = Arc::new(Device {
            machine,
            turn: tokio::sync::Mutex::new(()),
            used: Mutex::new(std::time::Instant::now()),
        });
        devices.insert(user.to_owned(), device.clone());
        // Only the map holds a device nothing uses; the map's lock keeps anyone from taking it meanwhile, so no
        // two machines are ever loaded on one store.
        let loaded: Vec<_> = devices
            .iter()
            .map(|(u, d)| {
                let used = *d.used.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                (u.clone(), used, Arc::strong_count(d) > 1)
            })
            .collect();
        for user in to_unload(&loaded, MAX_LOADED, &self.bot) {
            devices.remove(&user);
        }
        Ok(device)
    }

    /// A new store's device: a new id, written into the new store's directory. Members' clients never let the
    /// keys of a device id they knew change, so a device whose store was lost cannot come back under its old id:
    /// the devices of `user` that still have keys on the homeserver (an earlier store's) are deleted, and the one
    /// its calls go through ([`GHOST_DEVICE`]) is made again without keys.
    async fn new_device(&self, user: &UserId, dir: &std::path::Path) -> Result<String, HsError> {
        for old in self.hs.keyed_devices(user.as_str()).await? {
            self.hs.delete_device(user.as_str(), &old).await?;
            tracing::info!(%user, device = %old, "a bridge device whose store is gone is deleted");
        }
        // Made again whether or not it was just deleted (an earlier attempt may have stopped in between; making
        // a device that exists keeps it).
        self.hs.create_device(user.as_str(), GHOST_DEVICE).await?;
        let id = format!("MIMI{}", crate::registration::random_token()[..10].to_uppercase());
        write_device_id(dir, &self.dir.join("new-device"), &id)?;
        Ok(id)
    }

    /// Makes sure `user` has its device, keys uploaded and cross-signed: before it joins an encrypted room, so that
    /// the members' clients know the device before it shares a room key with them.
    pub async fn prepare(&self, user: &str) -> Result<(), HsError> {
        let user = OwnedUserId::try_from(user).map_err(invalid)?;
        self.device(&user).await.map(drop)
    }

    /// The device of `user` if it was ever made (its store is on disk).
    async fn existing_device(&self, user: &UserId) -> Result<Option<Arc<Device>>, HsError> {
        if let Some(d) = self.devices.lock().await.get(user) {
            *d.used.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = std::time::Instant::now();
            return Ok(Some(d.clone()));
        }
        if !self.store_dir(user).exists() {
            return Ok(None);
        }
        self.device(user).await.map(Some)
    }

    /// The directory of `user`'s crypto store (named by a hash: user ids may be longer than a file name).
    fn store_dir(&self, user: &UserId) -> PathBuf {
        use sha2::Digest;
        self.dir.join("devices").join(hex::encode(sha2::Sha256::digest(user.as_str().as_bytes())))
    }

    /// Feeds a transaction's to-device messages, device list changes and key counts to the devices they are for,
    /// and makes the calls they ask for; returns whether the appservice user's device received room keys. `Err` when
    /// the homeserver or a store fails (the transaction is taken again).
    pub async fn receive(&self, txn: &push_events::v1::Request) -> Result<bool, String> {
        let mut to_device: BTreeMap<OwnedUserId, Vec<Raw<ruma::events::AnyToDeviceEvent>>> = BTreeMap::new();
        for raw in &txn.to_device {
            let field = |name: &str| raw.get_field::<String>(name).ok().flatten();
            let Some(to) = field("to_user_id").and_then(|u| OwnedUserId::try_from(u).ok()) else { continue };
            if field("type").as_deref() == Some(PROBE_TYPE)
                && to == self.bot
                && field("sender").as_deref() == Some(self.bot.as_str())
            {
                let nonce = raw.get_field::<Value>("content").ok().flatten().unwrap_or_default()["nonce"].clone();
                let mine = self.probe.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
                if mine.is_some_and(|n| nonce == n.as_str()) {
                    self.probed.notify_one();
                }
            }
            to_device.entry(to).or_default().push(raw.clone().cast_unchecked());
        }
        let mut users: Vec<OwnedUserId> = to_device.keys().cloned().collect();
        users.extend(txn.device_one_time_keys_count.keys().cloned());
        users.extend(txn.device_unused_fallback_key_types.keys().cloned());
        if !txn.device_lists.is_empty() {
            users.extend(self.devices.lock().await.keys().cloned());
        }
        users.sort();
        users.dedup();
        let mut changed = DeviceLists::new();
        changed.changed = txn.device_lists.changed.clone();
        changed.left = txn.device_lists.left.clone();
        let mut keys_came = false;
        for user in users {
            if !to_device.contains_key(&user) && self.nothing_asked(&user, txn).await {
                continue;
            }
            let device = match self.existing_device(&user).await {
                Ok(Some(device)) => device,
                Ok(None) => continue,
                // A device the homeserver will not take (its keys or signatures refused) holds up no one else.
                Err(HsError::Refused { status, errcode, error }) => {
                    tracing::warn!(%user, status, %errcode, %error, "a bridge device is refused: its messages are skipped");
                    continue;
                }
                Err(e) => return Err(e.to_string()),
            };
            let device_id = device.machine.device_id();
            let mut counts = txn.device_one_time_keys_count.get(&user).and_then(|d| d.get(device_id)).cloned();
            // Synapse leaves a key type out when none is left: told as none, or the device never makes new ones.
            if let Some(counts) = &mut counts {
                counts.entry(OneTimeKeyAlgorithm::SignedCurve25519).or_insert(UInt::MIN);
            }
            let fallback = txn.device_unused_fallback_key_types.get(&user).and_then(|d| d.get(device_id));
            let changes = EncryptionSyncChanges {
                to_device_events: to_device.remove(&user).unwrap_or_default(),
                changed_devices: &changed,
                one_time_keys_counts: &counts.unwrap_or_default(),
                unused_fallback_keys: fallback.map(Vec::as_slice),
                next_batch_token: None,
            };
            let _turn = device.turn.lock().await;
            let (_, room_keys) = device
                .machine
                .receive_sync_changes(changes, &DECRYPTION)
                .await
                .map_err(|e| format!("the crypto store of {user}: {e}"))?;
            keys_came |= user == self.bot && !room_keys.is_empty();
            self.note_fed(&user, device_id);
            if let Err(e) = requests::send_all(&self.hs, &device.machine).await {
                // What is still queued goes with the next round.
                tracing::warn!(%user, error = %e, "a bridge device's key calls failed; tried again later");
            }
        }
        Ok(keys_came)
    }

    /// Whether `txn` asks nothing of `user`'s device that cannot wait while it is not loaded: its one-time keys
    /// and fallback key are in stock ([`keys_in_stock`]), and it was fed counts less than [`FED_AGAIN`] ago. A
    /// device is otherwise loaded (an Olm machine and its store opened) for every transaction with an event in a
    /// room its user is in.
    async fn nothing_asked(&self, user: &UserId, txn: &push_events::v1::Request) -> bool {
        let fed = self.fed.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(user).cloned();
        // Its crypto device's id, as it was loaded: not the keyless device its calls go through.
        let Some((_, id)) = fed.filter(|(at, _)| at.elapsed() < FED_AGAIN) else { return false };
        if self.devices.lock().await.contains_key(user) {
            return false;
        }
        let counts = txn.device_one_time_keys_count.get(user);
        keys_in_stock(counts, txn.device_unused_fallback_key_types.get(user), &id)
    }

    /// Notes that `user`'s crypto device `device` was fed a transaction's counts now ([`E2ee::nothing_asked`]).
    fn note_fed(&self, user: &UserId, device: &DeviceId) {
        let mut fed = self.fed.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if fed.len() >= MAX_FED {
            fed.retain(|_, (at, _)| at.elapsed() < FED_AGAIN);
        }
        fed.insert(user.to_owned(), (std::time::Instant::now(), device.to_owned()));
    }

    /// Decrypts an `m.room.encrypted` event of `room_id` with the appservice user's device.
    pub async fn decrypt(&self, room_id: &RoomId, raw: &Raw<AnyTimelineEvent>) -> Result<Decrypted, String> {
        let device = self.device(&self.bot).await.map_err(|e| e.to_string())?;
        match device.machine.decrypt_room_event(raw.cast_ref_unchecked(), room_id, &DECRYPTION).await {
            Ok(clear) => Ok(Decrypted::Clear(clear.event)),
            Err(matrix_sdk_crypto::MegolmError::Store(e)) => Err(format!("the crypto store: {e}")),
            Err(matrix_sdk_crypto::MegolmError::MissingRoomKey(withheld)) => {
                let why = format!("no room key (withheld: {withheld:?})");
                Ok(Decrypted::NotYet(why, withheld))
            }
            Err(e) => Ok(Decrypted::NotYet(e.to_string(), None)),
        }
    }

    /// Encrypts `content` (of `event_type`) for `room_id` with `user`'s device: the devices of the room's joined
    /// members (other than the bridge's users) are looked up, Olm sessions made where missing and the room key
    /// shared with them first. Returns the content of the `m.room.encrypted` event to send.
    pub async fn encrypt(
        &self,
        room_id: &str,
        user: &str,
        event_type: &str,
        content: &Value,
    ) -> Result<Value, HsError> {
        let room = OwnedRoomId::try_from(room_id).map_err(invalid)?;
        let room_id: &RoomId = &room;
        let user = OwnedUserId::try_from(user).map_err(invalid)?;
        let device = self.device(&user).await?;
        let _turn = device.turn.lock().await;
        let machine = &device.machine;
        // The room's members but the bridge's own users: a ghost's room key shared with every other ghost would
        // cost the homeserver a to-device message per ghost pair, for nothing.
        let members: Vec<OwnedUserId> = self
            .hs
            .joined_members(room_id.as_str(), self.bot.as_str())
            .await?
            .into_iter()
            .filter(|m| *m != self.bot.as_str() && !self.ghosts.is_ghost(m))
            .filter_map(|m| OwnedUserId::try_from(m).ok())
            .collect();
        // Owned iterators of references (no closure or `copied()` kept across an await: the future must stay `Send`).
        let members: Vec<&UserId> = members.iter().map(|m| &**m).collect();
        machine.update_tracked_users(members.clone()).await.map_err(requests::store_error)?;
        requests::send_all(&self.hs, machine).await?;
        if let Some((id, claim)) =
            machine.get_missing_sessions(members.clone().into_iter()).await.map_err(requests::store_error)?
        {
            let answer = self.hs.send_ruma(claim, (user.as_str(), Some(machine.device_id().as_str()))).await?;
            machine.mark_request_as_sent(&id, &answer).await.map_err(requests::store_error)?;
        }
        let shares = machine
            .share_room_key(room_id, members.clone().into_iter(), EncryptionSettings::default())
            .await
            .map_err(|e| HsError::Unavailable(format!("sharing the room key: {e}")))?;
        for share in shares {
            requests::to_device(&self.hs, machine, &share).await?;
        }
        let clear = serde_json::value::to_raw_value(content).map_err(|e| HsError::Refused {
            status: 0,
            errcode: "M_BAD_JSON".into(),
            error: e.to_string(),
        })?;
        let encrypted = machine
            .encrypt_room_event_raw(room_id, event_type, &Raw::from_json(clear))
            .await
            .map_err(|e| HsError::Unavailable(format!("encrypting: {e}")))?;
        encrypted.content.deserialize_as_unchecked::<Value>().map_err(|e| HsError::Unavailable(e.to_string()))
    }
}

/// The file in a crypto store's directory that holds its device's id.
const DEVICE_ID_FILE: &str = "device_id";

/// The device id of the store in `dir`, if it has one written.
fn read_device_id(dir: &std::path::Path) -> Result<Option<String>, HsError> {
    match std::fs::read_to_string(dir.join(DEVICE_ID_FILE)) {
        Ok(id) if !id.trim().is_empty() => Ok(Some(id.trim().to_owned())),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(HsError::Unavailable(format!("{}: {e}", dir.join(DEVICE_ID_FILE).display()))),
    }
}

/// Makes the store directory `dir` (mode 0700) with `id` written in it, durably, before anything of the store is
/// made: the directory is made as `tmp` (on the same file system, outside the stores' directory) and renamed, so
/// that `dir` never exists without its id (a directory without one is a store made before ids).
fn write_device_id(dir: &std::path::Path, tmp: &std::path::Path, id: &str) -> Result<(), HsError> {
    let failed = |e: std::io::Error| HsError::Unavailable(format!("{}: {e}", dir.display()));
    if tmp.exists() {
        // Left by an attempt that stopped before its rename.
        std::fs::remove_dir_all(tmp).map_err(failed)?;
    }
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(tmp).map_err(failed)?;
    {
        use std::io::Write as _;
        let mut f = std::fs::File::create(tmp.join(DEVICE_ID_FILE)).map_err(failed)?;
        f.write_all(id.as_bytes()).map_err(failed)?;
        f.sync_all().map_err(failed)?;
    }
    std::fs::File::open(tmp).and_then(|d| d.sync_all()).map_err(failed)?;
    let parent = dir.parent().ok_or_else(|| HsError::Unavailable(format!("{}: no parent", dir.display())))?;
    builder.create(parent).map_err(failed)?;
    std::fs::rename(tmp, dir).map_err(failed)?;
    std::fs::File::open(parent).and_then(|d| d.sync_all()).map_err(failed)
}

#[cfg(test)]
mod tests {
    use super::{keys_in_stock, read_device_id, to_unload, write_device_id};
    use std::time::{Duration, Instant};

    #[test]
    fn a_stores_device_id_is_written_before_the_store_and_read_back() {
        let root = tempfile::tempdir().expect("dir");
        let dir = root.path().join("devices").join("abc");
        assert_eq!(read_device_id(&dir).expect("read"), None, "no store yet");
        let tmp = root.path().join("new-device");
        std::fs::create_dir_all(tmp.join("leftover")).expect("an attempt that stopped");
        write_device_id(&dir, &tmp, "MIMI0123456789").expect("written");
        assert!(!tmp.exists(), "renamed into place");
        assert_eq!(read_device_id(&dir).expect("read").as_deref(), Some("MIMI0123456789"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&dir).expect("dir").permissions().mode() & 0o777;
            assert_eq!(mode, 0o700, "the store's directory is the bridge's alone");
        }
        // A store made before stores had ids of their own: no file (the caller takes the old shared id).
        let old = root.path().join("devices").join("old");
        std::fs::create_dir_all(&old).expect("dir");
        assert_eq!(read_device_id(&old).expect("read"), None);
    }

    #[test]
    fn the_least_recently_used_idle_devices_are_unloaded_never_the_bot_nor_one_in_use() {
        let t = Instant::now();
        let at = |s| t + Duration::from_secs(s);
        let loaded = [
            ("bot", at(0), false),
            ("old", at(1), false),
            ("busy", at(2), true),
            ("mid", at(3), false),
            ("new", at(4), false),
        ];
        assert_eq!(to_unload(&loaded, 5, &"bot"), Vec::<&str>::new(), "within the cap");
        assert_eq!(to_unload(&loaded, 3, &"bot"), vec!["old", "mid"]);
        assert_eq!(to_unload(&loaded, 1, &"bot"), vec!["old", "mid", "new"], "as many as can go");
    }

    #[test]
    fn counts_that_ask_nothing_of_a_device_leave_it_unloaded() {
        use ruma::OneTimeKeyAlgorithm::SignedCurve25519;
        use ruma::{DeviceId, OwnedDeviceId, UInt};
        use std::collections::BTreeMap;
        let mine: &DeviceId = "MIMI0123456789".into();
        // The keyless device the ghost's calls go through is listed beside it, without keys.
        let keyless = || (OwnedDeviceId::from("MIMIBRIDGE"), BTreeMap::new());
        let count = |n: u32| {
            BTreeMap::from([(mine.to_owned(), BTreeMap::from([(SignedCurve25519, UInt::from(n))])), keyless()])
        };
        let fallback = |unused: bool| {
            let keys = if unused { vec![SignedCurve25519] } else { vec![] };
            BTreeMap::from([(mine.to_owned(), keys), (OwnedDeviceId::from("MIMIBRIDGE"), vec![])])
        };
        assert!(keys_in_stock(None, None, mine), "nothing said of it");
        assert!(keys_in_stock(Some(&count(50)), Some(&fallback(true)), mine), "all there");
        assert!(keys_in_stock(Some(&count(51)), None, mine));
        assert!(!keys_in_stock(Some(&count(49)), Some(&fallback(true)), mine), "a one-time key was claimed");
        assert!(!keys_in_stock(Some(&count(50)), Some(&fallback(false)), mine), "its fallback key was used");
        let none = BTreeMap::from([(mine.to_owned(), BTreeMap::new()), keyless()]);
        assert!(!keys_in_stock(Some(&none), None, mine), "no count of signed keys: none left");
        let unlisted = BTreeMap::from([keyless()]);
        assert!(!keys_in_stock(Some(&unlisted), None, mine), "not listed among its user's devices: no keys there");
    }
}
