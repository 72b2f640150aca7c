//! Typed repositories: the bridge's non-MLS data, written once on [`KvStore`](super::KvStore).
//!
//! | tree | key | value |
//! |---|---|---|
//! | `meta` | `schema_version`, `seq` ‖ portal | u32 / u64, big-endian |
//! | `portals` | portal name | [`PortalRecord`] |
//! | `legs` | lp(leg key) | portal name |
//! | `ghosts` | lp(account) ‖ native user id | URI of the user the ghost stands for |
//! | `msgs` | message id (32 bytes) | [`MessageRecord`] |
//! | `ids` | `m` ‖ message id ‖ lp(leg key) | native ids on that leg, NUL-separated (the first is the one references resolve to) |
//! | `ids` | `n` ‖ lp(leg key) ‖ native id | [`IdEntry`] (message id, and whether the event came *from* that leg) |
//! | `reactions` | target message id ‖ sender URI | [`ReactionSet`] |
//! | `outbox` | lp(leg key) ‖ seq (u64 BE) | pending [`OutboundEvent`] |
//! | `failed` | lp(leg key) ‖ seq (u64 BE) | [`FailedDelivery`] |
//!
//! `lp(x)` is `x` prefixed with its length as u16 BE, so variable-length parts never run into each other and
//! prefix scans stay exact. Values are JSON: readable in `store export`, and small enough at bridge rates.
//!
//! Dedup and echo prevention share one lookup: the `n` entries map a leg's native id to a message id, with
//! `origin = true` for events that came *from* the leg (a redelivery is a duplicate) and `origin = false` for
//! events the bridge delivered *to* it (seeing it come back is an echo).

use crate::outbox::{DeliveryRecord, FailedRecord, now_ms};
use bridge_api::event::{InboundEvent, OutboundEvent, Sender};
use bridge_api::ids::{AccountId, LegId, MessageId, NativeId, PortalId};
use mimi_store::Store;
use mimi_store::schema::META;
use mimi_store::{Batch, Op, StoreError};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use std::collections::BTreeMap;

/// The trees the bridge's records live in (the engine's and the provider's own trees are declared by their crates;
/// [`crate::known_trees`] lists them all).
pub const TREES: &[&str] = &[PORTALS, LEGS, GHOSTS, MSGS, IDS, REACTIONS, OUTBOX, FAILED];
/// Portal records.
pub const PORTALS: &str = "portals";
/// Leg → portal links.
pub const LEGS: &str = "legs";
/// Ghosts: native users the bridge itself controls.
pub const GHOSTS: &str = "ghosts";
/// Message records.
pub const MSGS: &str = "msgs";
/// The ID map, both directions.
pub const IDS: &str = "ids";
/// Reaction sets.
pub const REACTIONS: &str = "reactions";
/// Pending deliveries.
pub const OUTBOX: &str = "outbox";
/// Deliveries given up on.
pub const FAILED: &str = "failed";

/// How a portal's legacy senders appear in the MLS group (design.md §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum MlsIdentity {
    /// One bridge leaf per portal; the legacy sender travels in a MIMI extension.
    #[default]
    Shared,
    /// One leaf per active legacy user.
    PerUser,
}

/// A portal as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortalRecord {
    /// The portal.
    pub id: PortalId,
    /// Identity mode of its legacy senders.
    #[serde(default)]
    pub mls_identity: MlsIdentity,
}

/// What a message record is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum RecordKind {
    /// A message (possibly edited later).
    Message,
    /// An edit of `target`.
    Edit {
        /// The message edited.
        target: MessageId,
    },
    /// A deletion of `target`.
    Delete {
        /// The message deleted.
        target: MessageId,
    },
    /// A reaction to `target`.
    Reaction {
        /// The message reacted to.
        target: MessageId,
        /// The reaction.
        key: String,
    },
    /// Removal of the reaction `reaction`.
    Unreact {
        /// The reaction message removed.
        reaction: MessageId,
    },
}

/// A sequenced message of a portal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageRecord {
    /// The portal.
    pub portal: PortalId,
    /// Position in the portal's order.
    pub seq: u64,
    /// What it is.
    pub kind: RecordKind,
    /// Who sent it.
    pub sender: Sender,
    /// The leg it came from (None for messages from the MLS side).
    pub origin: Option<LegId>,
    /// Start of the text, for reply/edit fallbacks.
    pub excerpt: String,
    /// When the bridge accepted it, ms since the UNIX epoch (for retention; records of before it have none, and
    /// are stamped by the first pass of the pruner).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at_ms: Option<u64>,
}

/// A native id's meaning on one leg.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdEntry {
    /// The message.
    pub message_id: MessageId,
    /// True if the event came from this leg; false if the bridge delivered it here.
    pub origin: bool,
}

/// An inbound event the hub sequenced before the portal recorded it: the `p` entries of `ids`
/// ([`write::sent`]). In a portal whose room another provider hosts, also an event whose message was handed to
/// that room's hub before it answered ([`write::submitted`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SentMarker {
    /// The id the event was published under.
    pub message_id: MessageId,
    /// When, ms since the UNIX epoch (for a marker whose event never comes back).
    pub at_ms: u64,
    /// The event itself, which the router records at its next start ([`Repo::unrecorded`]); absent in markers
    /// written by builds before it was kept (their events are recorded only when the network sends them again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<InboundEvent>,
    /// The portal whose group sequenced it: a marker found by a portal the leg was linked to later is not its.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub portal: Option<PortalId>,
    /// Breaks ties between markers of one millisecond, in the order this process wrote them.
    #[serde(default)]
    pub order: u64,
    /// Its sequence number in the room of record's log, where it has one: the messages of other members sequenced
    /// before it go to the legs before it ([`crate::room_of_record::RoomOfRecord::sequenced_before`]), and the
    /// markers of one portal are recorded in this order, whatever the clock did. Absent in markers of builds before
    /// it was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// The MLS message (hex) handed to the hub of a room hosted elsewhere, which has not answered yet: the hub may
    /// or may not have sequenced it. Until it answers, the event is published again as this same message, which
    /// the hub sequences once (it knows a message it took by its digest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submitted: Option<String>,
    /// Given up ([`write::given_up`]): the hub of a room hosted elsewhere did not take the message in time, and
    /// its sender was told; the event is refused if its network sends it again (until retention prunes this).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub given_up: bool,
}

impl SentMarker {
    /// The message handed to the hub of a room hosted elsewhere, if the hub has not answered yet
    /// ([`SentMarker::submitted`]; `None` also if it does not decode).
    pub fn submitted(&self) -> Option<Vec<u8>> {
        self.submitted.as_deref().and_then(|h| hex::decode(h).ok())
    }
}

/// An event the room of record sequenced, or may have, that its portal has not recorded ([`Repo::unrecorded`]).
#[derive(Debug, Clone)]
pub struct Unrecorded {
    /// The id it was published under.
    pub message_id: MessageId,
    /// The native id the message stands for (the event's own, or one derived from it).
    pub native: NativeId,
    /// The event.
    pub event: InboundEvent,
    /// The portal whose group sequenced it, if the marker says.
    pub portal: Option<PortalId>,
    /// Handed to the hub of a room hosted elsewhere, which has not answered ([`SentMarker::submitted`]): it has
    /// to be published again, once that room is reachable.
    pub submitted: bool,
}

/// One sender's reactions on one message: key → the reaction's message id.
pub type ReactionSet = BTreeMap<String, MessageId>;

fn lp(out: &mut Vec<u8>, b: &[u8]) {
    let n = u16::try_from(b.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&n.to_be_bytes());
    out.extend_from_slice(&b[..n as usize]);
}

/// Splits what [`lp`] wrote off the front of `b`: the part and the rest.
pub(crate) fn split_lp(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let n = u16::from_be_bytes(b.get(..2)?.try_into().ok()?) as usize;
    let part = b.get(2..2 + n)?;
    Some((part, &b[2 + n..]))
}

fn leg_prefix(leg: &LegId) -> Vec<u8> {
    let mut k = Vec::new();
    lp(&mut k, &leg.key());
    k
}

/// The sequence number of an outbox key under `prefix` (the leg's).
fn outbox_seq(prefix: &[u8], key: &[u8]) -> Result<u64, StoreError> {
    key.get(prefix.len()..).and_then(|s| <[u8; 8]>::try_from(s).ok()).map(u64::from_be_bytes).ok_or_else(|| {
        StoreError::Corrupt { tree: OUTBOX.into(), message: "outbox key without sequence number".into() }
    })
}

fn seq_key(leg: &LegId, seq: u64) -> Vec<u8> {
    let mut k = leg_prefix(leg);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn delivered_key(msg: &MessageId, leg: &LegId) -> Vec<u8> {
    let mut k = vec![b'm'];
    k.extend_from_slice(msg.as_bytes());
    lp(&mut k, &leg.key());
    k
}

fn native_key(leg: &LegId, native: &NativeId) -> Vec<u8> {
    let mut k = vec![b'n'];
    lp(&mut k, &leg.key());
    k.extend_from_slice(native.0.as_bytes());
    k
}

/// The marker of an inbound event published but not yet recorded (see [`write::sent`]).
fn sent_key(leg: &LegId, native: &NativeId) -> Vec<u8> {
    let mut k = vec![b'p'];
    lp(&mut k, &leg.key());
    k.extend_from_slice(native.0.as_bytes());
    k
}

fn ghost_key(account: &AccountId, native_user: &str) -> Vec<u8> {
    let mut k = Vec::new();
    lp(&mut k, account.to_string().as_bytes());
    k.extend_from_slice(native_user.as_bytes());
    k
}

fn reaction_key(target: &MessageId, sender_uri: &str) -> Vec<u8> {
    let mut k = target.as_bytes().to_vec();
    k.extend_from_slice(sender_uri.as_bytes());
    k
}

fn seq_meta_key(portal: &PortalId) -> Vec<u8> {
    let mut k = b"seq/".to_vec();
    k.extend_from_slice(portal.as_str().as_bytes());
    k
}

fn enc<T: Serialize>(v: &T) -> Vec<u8> {
    // Our record types serialise infallibly (no maps with non-string keys, no failing Serialize impls).
    serde_json::to_vec(v).unwrap_or_default()
}

fn dec<T: DeserializeOwned>(tree: &str, v: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(v).map_err(|e| StoreError::Corrupt { tree: tree.into(), message: e.to_string() })
}

/// Reads with a pending, not yet committed batch laid over the store, so a portal processing several events
/// before one group commit sees its own writes.
pub struct Repo<'a> {
    store: &'a Store,
    pending: Option<&'a Batch>,
}

impl<'a> Repo<'a> {
    /// Reads straight from the store.
    pub fn new(store: &'a Store) -> Self {
        Self { store, pending: None }
    }

    /// Reads from the store with `pending` laid over it.
    pub fn with_pending(store: &'a Store, pending: &'a Batch) -> Self {
        Self { store, pending: Some(pending) }
    }

    fn get(&self, tree: &'static str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(p) = self.pending {
            for op in p.ops.iter().rev() {
                match op {
                    Op::Put { tree: t, key: k, value } if *t == tree && k == key => return Ok(Some(value.clone())),
                    Op::Delete { tree: t, key: k } if *t == tree && k == key => return Ok(None),
                    _ => {}
                }
            }
        }
        self.store.get(tree, key)
    }

    fn get_json<T: DeserializeOwned>(&self, tree: &'static str, key: &[u8]) -> Result<Option<T>, StoreError> {
        self.get(tree, key)?.map(|v| dec(tree, &v)).transpose()
    }

    // ---- portals and legs ----

    /// Every stored portal.
    pub fn portals(&self) -> Result<Vec<PortalRecord>, StoreError> {
        self.store.scan_prefix(PORTALS, b"")?.iter().map(|(_, v)| dec(PORTALS, v)).collect()
    }

    /// One portal.
    pub fn portal(&self, id: &PortalId) -> Result<Option<PortalRecord>, StoreError> {
        self.get_json(PORTALS, id.as_str().as_bytes())
    }

    /// Every leg with its portal.
    pub fn legs(&self) -> Result<Vec<(LegId, PortalId)>, StoreError> {
        self.store.scan_prefix(LEGS, b"")?.iter().map(|(_, v)| dec(LEGS, v)).collect()
    }

    /// The portal a leg is linked to.
    pub fn portal_of(&self, leg: &LegId) -> Result<Option<PortalId>, StoreError> {
        Ok(self.get_json::<(LegId, PortalId)>(LEGS, &leg_prefix(leg))?.map(|(_, p)| p))
    }

    /// The next sequence number of a portal.
    pub fn next_seq(&self, portal: &PortalId) -> Result<u64, StoreError> {
        match self.get(META, &seq_meta_key(portal))? {
            None => Ok(1),
            Some(v) => {
                let arr: [u8; 8] = v.as_slice().try_into().map_err(|_| StoreError::Corrupt {
                    tree: META.into(),
                    message: "sequence counter is not 8 bytes".into(),
                })?;
                Ok(u64::from_be_bytes(arr))
            }
        }
    }

    // ---- messages and the ID map ----

    /// A message record.
    pub fn message(&self, id: &MessageId) -> Result<Option<MessageRecord>, StoreError> {
        self.get_json(MSGS, id.as_bytes())
    }

    /// What a native id on a leg stands for.
    pub fn lookup_native(&self, leg: &LegId, native: &NativeId) -> Result<Option<IdEntry>, StoreError> {
        self.get_json(IDS, &native_key(leg, native))
    }

    /// The message id an inbound event was published under, if the hub sequenced it and the portal has not
    /// recorded it yet (a restart between the two: [`write::sent`]), or if it was handed to the hub of a room
    /// hosted elsewhere that has not answered yet ([`write::submitted`]).
    pub fn sent(&self, leg: &LegId, native: &NativeId) -> Result<Option<SentMarker>, StoreError> {
        self.get_json::<SentMarker>(IDS, &sent_key(leg, native))
    }

    /// Every inbound event the hub sequenced but the portal never recorded (the daemon stopped between the two),
    /// and every one handed to the hub of a room hosted elsewhere that did not answer
    /// ([`SentMarker::submitted`]): none after a clean stop with every hub reachable. Those of one portal come in
    /// the order of its room's log (markers without a sequence number, from older builds or not answered yet,
    /// after the others, by the time they were written). Markers without their event are left out.
    pub fn unrecorded(&self) -> Result<Vec<Unrecorded>, StoreError> {
        let mut found = Vec::new();
        for (key, value) in self.store.scan_prefix(IDS, b"p")? {
            match serde_json::from_slice::<SentMarker>(&value) {
                Ok(SentMarker {
                    message_id,
                    at_ms,
                    event: Some(event),
                    order,
                    portal,
                    seq,
                    submitted,
                    given_up: false,
                }) => {
                    // The key: `p`, the leg (length-prefixed), the native id the message stands for.
                    let Some((_, native)) = split_lp(&key[1..]) else { continue };
                    let native = NativeId(String::from_utf8_lossy(native).into_owned());
                    let at = (portal.clone(), seq.is_none(), seq, at_ms, order);
                    let submitted = submitted.is_some();
                    found.push((at, Unrecorded { message_id, native, event, portal, submitted }))
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(key = ?String::from_utf8_lossy(&key), error = %e, "unreadable sent marker"),
            }
        }
        found.sort_by(|(a, _), (b, _)| a.cmp(b));
        Ok(found.into_iter().map(|(_, u)| u).collect())
    }

    /// A message's native id on a leg (where it came from or was delivered to).
    pub fn native_on(&self, msg: &MessageId, leg: &LegId) -> Result<Option<NativeId>, StoreError> {
        // The value lists every native id the message got on the leg (a NUL between them); the first is the one
        // later references resolve to.
        Ok(self.get(IDS, &delivered_key(msg, leg))?.map(|v| {
            let first = v.split(|&b| b == 0).next().unwrap_or(&[]);
            NativeId(String::from_utf8_lossy(first).into_owned())
        }))
    }

    /// A sender's reactions on a message.
    pub fn reactions(&self, target: &MessageId, sender_uri: &str) -> Result<ReactionSet, StoreError> {
        Ok(self.get_json(REACTIONS, &reaction_key(target, sender_uri))?.unwrap_or_default())
    }

    // ---- ghosts ----

    /// If `native_user` on `account` is one of the bridge's own ghosts, the URI it stands for.
    pub fn ghost(&self, account: &AccountId, native_user: &str) -> Result<Option<String>, StoreError> {
        Ok(self.get(GHOSTS, &ghost_key(account, native_user))?.map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    // ---- outbox ----

    /// Pending deliveries to a leg, in order.
    pub fn outbox(&self, leg: &LegId) -> Result<Vec<(u64, DeliveryRecord)>, StoreError> {
        self.outbox_page(leg, 0, usize::MAX)
    }

    /// How many deliveries to a leg wait with sequence numbers below `below` (read a page at a time, not decoded).
    pub fn outbox_len_below(&self, leg: &LegId, below: u64) -> Result<u64, StoreError> {
        const PAGE: usize = 1000;
        let prefix = leg_prefix(leg);
        let (mut from, mut n) = (0u64, 0u64);
        loop {
            let page = self.store.scan_prefix_from(OUTBOX, &prefix, &seq_key(leg, from), PAGE)?;
            for (k, _) in &page {
                let seq = outbox_seq(&prefix, k)?;
                if seq >= below {
                    return Ok(n);
                }
                n += 1;
                from = seq + 1;
            }
            if page.len() < PAGE {
                return Ok(n);
            }
        }
    }

    /// At most `limit` pending deliveries to a leg with sequence numbers from `from` on, in order.
    pub fn outbox_page(&self, leg: &LegId, from: u64, limit: usize) -> Result<Vec<(u64, DeliveryRecord)>, StoreError> {
        let prefix = leg_prefix(leg);
        let mut out = Vec::new();
        for (k, v) in self.store.scan_prefix_from(OUTBOX, &prefix, &seq_key(leg, from), limit)? {
            out.push((outbox_seq(&prefix, &k)?, dec(OUTBOX, &v)?));
        }
        Ok(out)
    }

    // ---- retention (crate::retention) ----

    /// At most `limit` message records with keys from `from` on: `(key, record)`.
    pub fn messages_page(&self, from: &[u8], limit: usize) -> Result<Vec<(Vec<u8>, MessageRecord)>, StoreError> {
        self.store.scan_prefix_from(MSGS, b"", from, limit)?.into_iter().map(|(k, v)| Ok((k, dec(MSGS, &v)?))).collect()
    }

    /// Every key a message has in `msgs`, `ids` (both directions, on every leg) and `reactions` (as a target):
    /// `(tree, key)`, to forget it.
    pub fn message_keys(&self, key: &[u8]) -> Result<Vec<(&'static str, Vec<u8>)>, StoreError> {
        let mut out = vec![(MSGS, key.to_vec())];
        let mut delivered = vec![b'm'];
        delivered.extend_from_slice(key);
        for (k, natives) in self.store.scan_prefix(IDS, &delivered)? {
            // 'm' ‖ id ‖ lp(leg) → native ids (NUL between them); each one's reverse is 'n' ‖ lp(leg) ‖ native id.
            for native in natives.split(|&b| b == 0) {
                let mut reverse = vec![b'n'];
                reverse.extend_from_slice(&k[delivered.len()..]);
                reverse.extend_from_slice(native);
                out.push((IDS, reverse));
            }
            out.push((IDS, k));
        }
        out.extend(self.store.scan_prefix(REACTIONS, key)?.into_iter().map(|(k, _)| (REACTIONS, k)));
        Ok(out)
    }

    /// At most `limit` failed deliveries (of every leg) with keys from `from` on: `(key, record)`.
    pub fn failed_page(&self, from: &[u8], limit: usize) -> Result<Vec<(Vec<u8>, FailedRecord)>, StoreError> {
        self.store
            .scan_prefix_from(FAILED, b"", from, limit)?
            .into_iter()
            .map(|(k, v)| Ok((k, dec(FAILED, &v)?)))
            .collect()
    }

    /// Deliveries given up on, for one leg.
    pub fn failed(&self, leg: &LegId) -> Result<Vec<FailedRecord>, StoreError> {
        self.store.scan_prefix(FAILED, &leg_prefix(leg))?.iter().map(|(_, v)| dec(FAILED, v)).collect()
    }
}

/// Writes, added to a [`Batch`] so that what belongs together commits together.
pub mod write {
    use super::*;

    /// Stores a portal record.
    pub fn portal(b: &mut Batch, rec: &PortalRecord) {
        b.put(PORTALS, rec.id.as_str().as_bytes(), enc(rec));
    }

    /// Links a leg to a portal.
    pub fn link(b: &mut Batch, leg: &LegId, portal: &PortalId) {
        b.put(LEGS, leg_prefix(leg), enc(&(leg, portal)));
    }

    /// Unlinks a leg.
    pub fn unlink(b: &mut Batch, leg: &LegId) {
        b.delete(LEGS, leg_prefix(leg));
    }

    /// Removes a portal record (its legs must be unlinked separately).
    pub fn remove_portal(b: &mut Batch, portal: &PortalId) {
        b.delete(PORTALS, portal.as_str().as_bytes());
    }

    /// Records the next sequence number of a portal.
    pub fn next_seq(b: &mut Batch, portal: &PortalId, next: u64) {
        b.put(META, seq_meta_key(portal), next.to_be_bytes());
    }

    /// Stores a message record.
    pub fn message(b: &mut Batch, id: &MessageId, rec: &MessageRecord) {
        b.put(MSGS, id.as_bytes().to_vec(), enc(rec));
    }

    /// Marks the inbound `event` (its native id `native`) as published under `msg`, at `seq` in the room's log:
    /// written in the hub's batch that sequences the message, so that it exists exactly when the message is in the
    /// room's log. If the daemon stops before the portal recorded the event, the router records it at its next
    /// start ([`Repo::unrecorded`]), and a redelivery by the network finds the marker ([`Repo::sent`]): either way
    /// it is recorded under `msg`, never published a second time.
    pub fn sent(
        b: &mut Batch,
        portal: &PortalId,
        event: &InboundEvent,
        native: &NativeId,
        msg: &MessageId,
        seq: Option<u64>,
        at_ms: u64,
    ) {
        marker(b, portal, event, native, msg, at_ms, seq, None, None);
    }

    /// Marks the inbound `event` (its native id `native`) as handed, as the MLS message `message` with id `msg`,
    /// to the hub of a room hosted elsewhere, which has not answered yet. Durable before the message leaves, so
    /// that whatever happens next, the event is published again as this same message, never as another one the
    /// hub would sequence a second time: by a redelivery from the network, or at the next start
    /// ([`Repo::unrecorded`]). The hub's answer replaces it with the marker of [`sent`].
    ///
    /// `turn`: when it was first handed and [`next_order`] then (those of the mark it replaces, for a message
    /// encrypted again), which keep the marks of a portal in the order their messages go to the hub; retention
    /// counts a mark's age from that first handing too.
    pub fn submitted(
        b: &mut Batch,
        portal: &PortalId,
        event: &InboundEvent,
        native: &NativeId,
        msg: &MessageId,
        message: &[u8],
        turn: (u64, u64),
    ) {
        let (at_ms, order) = turn;
        marker(b, portal, event, native, msg, at_ms, None, Some(hex::encode(message)), Some(order));
    }

    /// The next tie-breaker of markers written by this process ([`SentMarker::order`]).
    pub fn next_order() -> u64 {
        ORDER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    static ORDER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

    #[allow(clippy::too_many_arguments)]
    fn marker(
        b: &mut Batch,
        portal: &PortalId,
        event: &InboundEvent,
        native: &NativeId,
        msg: &MessageId,
        at_ms: u64,
        seq: Option<u64>,
        submitted: Option<String>,
        order: Option<u64>,
    ) {
        let order = order.unwrap_or_else(next_order);
        let marker = SentMarker {
            message_id: *msg,
            at_ms,
            event: Some(event.clone()),
            portal: Some(portal.clone()),
            order,
            seq,
            submitted,
            given_up: false,
        };
        b.put(IDS, sent_key(&event.leg, native), enc(&marker));
    }

    /// Replaces the [`submitted`] marker of the event `native` of `leg` by one that says it was given up
    /// ([`SentMarker::given_up`]; without the event, so that no start publishes it again).
    pub fn given_up(b: &mut Batch, portal: &PortalId, leg: &LegId, native: &NativeId, msg: &MessageId) {
        let marker = SentMarker {
            message_id: *msg,
            at_ms: now_ms(),
            event: None,
            portal: Some(portal.clone()),
            order: next_order(),
            seq: None,
            submitted: None,
            given_up: true,
        };
        b.put(IDS, sent_key(leg, native), enc(&marker));
    }

    /// Removes the marker of [`sent`] (the portal recorded the event).
    pub fn forget_sent(b: &mut Batch, leg: &LegId, native: &NativeId) {
        b.delete(IDS, sent_key(leg, native));
    }

    /// Maps `native` on `leg` to `msg` in both directions; `origin` as in [`IdEntry`].
    pub fn native(b: &mut Batch, leg: &LegId, native: &NativeId, msg: &MessageId, origin: bool) {
        natives(b, leg, std::slice::from_ref(native), msg, origin);
    }

    /// Maps every id of `natives` (a message delivered as several, such as IRC lines) on `leg` to `msg`, and
    /// `msg` to all of them, the first first (the one later references resolve to). Retention forgets them all.
    pub fn natives(b: &mut Batch, leg: &LegId, natives: &[NativeId], msg: &MessageId, origin: bool) {
        for n in natives {
            b.put(IDS, native_key(leg, n), enc(&IdEntry { message_id: *msg, origin }));
        }
        let all: Vec<&[u8]> = natives.iter().map(|n| n.0.as_bytes()).collect();
        if !all.is_empty() {
            b.put(IDS, delivered_key(msg, leg), all.join(&0u8));
        }
    }

    /// Stores a sender's reaction set on a message (empty removes the entry).
    pub fn reactions(b: &mut Batch, target: &MessageId, sender_uri: &str, set: &ReactionSet) {
        let k = reaction_key(target, sender_uri);
        if set.is_empty() {
            b.delete(REACTIONS, k);
        } else {
            b.put(REACTIONS, k, enc(set));
        }
    }

    /// Registers a ghost: `native_user` on `account` is the bridge's own stand-in for `for_uri`.
    pub fn ghost(b: &mut Batch, account: &AccountId, native_user: &str, for_uri: &str) {
        b.put(GHOSTS, ghost_key(account, native_user), for_uri.as_bytes());
    }

    /// Forgets a ghost (the bridge gave the native user name up; a real user may take it).
    pub fn unghost(b: &mut Batch, account: &AccountId, native_user: &str) {
        b.delete(GHOSTS, ghost_key(account, native_user));
    }

    /// Queues a delivery (stored as a [`DeliveryRecord`], queued at `ev.queued_at_ms`, or now if that is unknown).
    pub fn outbox(b: &mut Batch, seq: u64, ev: &OutboundEvent) {
        let queued_at_ms = if ev.queued_at_ms == 0 { now_ms() } else { ev.queued_at_ms };
        b.put(OUTBOX, seq_key(&ev.leg, seq), enc(&DeliveryRecord::new(ev, queued_at_ms)));
    }

    /// Removes a delivery from the outbox.
    pub fn outbox_done(b: &mut Batch, leg: &LegId, seq: u64) {
        b.delete(OUTBOX, seq_key(leg, seq));
    }

    /// Moves a delivery from the outbox to `failed` (stored as a [`FailedRecord`], failed now).
    pub fn failed(b: &mut Batch, seq: u64, ev: &OutboundEvent, queued_at_ms: u64, reason: &str) {
        failed_record(b, seq, DeliveryRecord::new(ev, queued_at_ms), reason);
    }

    /// [`failed`] for a delivery read from the outbox as it is stored.
    pub fn failed_record(b: &mut Batch, seq: u64, event: DeliveryRecord, reason: &str) {
        let key = seq_key(&event.leg, seq);
        b.delete(OUTBOX, key.clone());
        b.put(FAILED, key, enc(&FailedRecord { event, reason: reason.to_owned(), failed_at_ms: now_ms() }));
    }
}
