//! The provider's durable records, on the bridge's store.
//!
//! Tree [`HUB_LOG`] (`hub_log`), keys prefixed by the room URI (`lp(room)`, u16 BE length + bytes):
//!
//! ```text
//! lp(room) 'L' seq(u64 BE)  → SequencedFanout (TLS)       the room log (hub: the original; follower: the copy)
//! lp(room) 'D' sha256       → seq (u64 BE)                idempotency index of the hub
//! lp(room) 'S'              → RoomRecord (JSON)           hub state (without its participants, schema 5 on),
//!                                                         or the hub a follower follows
//! lp(room) 'U' user-uri     → ()                          hub: a participant (schema 5 on)
//! lp(room) 'C' name         → seq (u64 BE)                cursor of a local consumer (the bridge's member)
//! lp(room) 'G'              → GroupInfo (MLSMessage)      hub: the GroupInfo members last handed in
//! lp(room) 'P'              → public group state          hub: a manifest of chunks (`mimi_store::chunks`) of
//!                                                         `PublicState::encode` (schema 4 on; in schema 3,
//!                                                         that encoding whole, still read)
//! lp(room) 'Q' sha256       → chunk                       hub: a chunk of the public state, by its hash
//! lp(room) 'F'              → seq (u64 BE)                the first entry retention kept (absent: 1)
//! lp(room) 'M' user-uri     → ()                          follower: a local user the hub let in (may read the copy)
//! ```
//!
//! The hub's public state of a room's group (`P`, and its chunks `Q`) is written in the same batch as the log
//! entry that changed it (a handshake), next to the room state (`S`): the manifest, the chunks it gained, and the
//! removal of those it lost — a commit of a 10 000-member room rewrites a few dozen chunks of 8 KiB, not the
//! whole 4.8 MiB. Rooms stored before schema 3 get it from their stored GroupInfo
//! ([`migrate_v2_to_v3`]).
//!
//! Tree [`MIMI_USERS`] (`mimi_users`): native users of this provider.
//!
//! ```text
//! 'U' user-uri                       → UserRecord (JSON)
//! 'K' lp(user-uri) id(u64 BE)        → KeyPackage (MLSMessage)
//! 'R' key-package-ref                → user-uri [0 ms BE]  claimed KeyPackages (and when), to route Welcomes and
//!                                                          check Adds; records of before retention have no time
//! 'I' lp(user-uri) lp(room) seq      → ()                  Welcomes waiting for the user
//! ```

use mimi_protocol::hub::HubState;
use mimi_protocol::public::PublicState;
use mimi_protocol::wire::{MlsMessageBytes, SequencedFanout, WireMessage};
use mimi_store::chunks::{self, Chunked};
use mimi_store::{Batch, KvStore, Store, StoreError};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeSet, HashSet};

/// Tree of room logs and room state.
pub const HUB_LOG: &str = "hub_log";

/// The hub's public state of a room's group as read back ([`Records::public_state`]): the encoding, and the
/// hashes of the chunks it is stored in (empty when it is stored whole).
pub type StoredPublic = (Vec<u8>, Vec<[u8; 32]>);
/// Tree of native users, KeyPackages and invitations.
pub const MIMI_USERS: &str = "mimi_users";

/// What this provider is for a room.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "role")]
pub enum RoomRecord {
    /// We host it.
    Hub(HubState),
    /// We follow it; `hub` is the hub's domain.
    Follower {
        /// The room URI.
        room: String,
        /// The hub's domain.
        hub: String,
    },
}

/// The `'S'` key and value of every room in `hub_log`, by a skip scan over the rooms' key prefixes: `first_from`
/// gives the first entry at or after a key, `get` reads one; one record is read per room, never a room's log.
#[allow(clippy::type_complexity)]
fn room_records(
    first_from: impl Fn(&[u8]) -> Result<Option<(Vec<u8>, Vec<u8>)>, StoreError>,
    get: impl Fn(&[u8]) -> Result<Option<Vec<u8>>, StoreError>,
) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StoreError> {
    let mut out = Vec::new();
    let mut from = Vec::new();
    while let Some((k, _)) = first_from(&from)? {
        let len = k.get(..2).map(|l| usize::from(u16::from_be_bytes([l[0], l[1]])));
        let Some(room_prefix) = len.and_then(|len| k.get(..2 + len)) else {
            // Not a room's key (the hub's signing key): the next key.
            from = k;
            from.push(0);
            continue;
        };
        let mut state = room_prefix.to_vec();
        state.push(b'S');
        if let Some(v) = get(&state)? {
            out.push((state, v));
        }
        match mimi_store::prefix_end(room_prefix) {
            Some(next) => from = next,
            None => break,
        }
    }
    Ok(out)
}

/// How a hub's [`RoomRecord`] is written: its [`HubState`] without the participants (read back as an empty list,
/// filled from their keys, [`Records::participants`]).
#[derive(Serialize)]
#[serde(tag = "role", rename = "hub")]
struct HubRecord<'a> {
    room: &'a str,
    group_id: &'a [u8],
    epoch: u64,
    next_seq: u64,
    policy: mimi_protocol::hub::JoinPolicy,
    followers: &'a BTreeSet<String>,
    creator: &'a Option<String>,
}

impl<'a> HubRecord<'a> {
    fn of(s: &'a HubState) -> Self {
        Self {
            room: &s.room,
            group_id: &s.group_id,
            epoch: s.epoch,
            next_seq: s.next_seq,
            policy: s.policy,
            followers: &s.followers,
            creator: &s.creator,
        }
    }
}

/// A native user of this provider.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    /// The user's URI.
    pub uri: String,
    /// SHA-256 of the user's API token (hex).
    pub token_sha256: String,
}

/// `lp(x)`.
pub fn lp(x: &[u8]) -> Vec<u8> {
    let len = u16::try_from(x.len()).unwrap_or(u16::MAX);
    let mut k = Vec::with_capacity(2 + x.len());
    k.extend_from_slice(&len.to_be_bytes());
    k.extend_from_slice(&x[..usize::from(len)]);
    k
}

fn room_key(room: &str, tag: u8, rest: &[u8]) -> Vec<u8> {
    let mut k = lp(room.as_bytes());
    k.push(tag);
    k.extend_from_slice(rest);
    k
}

fn decode_err(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt { tree: HUB_LOG.to_owned(), message: format!("{what}: {e}") }
}

fn be64(v: &[u8]) -> Option<u64> {
    v.try_into().ok().map(u64::from_be_bytes)
}

/// Writes into a batch.
pub mod write {
    use super::*;

    /// A log entry.
    pub fn entry(b: &mut Batch, room: &str, e: &SequencedFanout) -> Result<(), StoreError> {
        let v = e.encode().map_err(|e| decode_err("log entry", e))?;
        b.put(HUB_LOG, room_key(room, b'L', &e.seq.to_be_bytes()), v);
        Ok(())
    }

    /// The idempotency index.
    pub fn digest(b: &mut Batch, room: &str, digest: &[u8; 32], seq: u64) {
        b.put(HUB_LOG, room_key(room, b'D', digest), seq.to_be_bytes().to_vec());
    }

    /// The room record.
    pub fn room(b: &mut Batch, rec: &RoomRecord) -> Result<(), StoreError> {
        match rec {
            RoomRecord::Hub(s) => hub(b, s),
            RoomRecord::Follower { room, .. } => {
                let v = serde_json::to_vec(rec).map_err(|e| decode_err("room record", e))?;
                b.put(HUB_LOG, room_key(room, b'S', b""), v);
                Ok(())
            }
        }
    }

    /// The record of a room we host. Its participants are not in it ([`write::participants`]): the record of a
    /// 10 000-member room stays small enough to write with every message.
    pub fn hub(b: &mut Batch, state: &HubState) -> Result<(), StoreError> {
        let v = serde_json::to_vec(&HubRecord::of(state)).map_err(|e| decode_err("room record", e))?;
        b.put(HUB_LOG, room_key(&state.room, b'S', b""), v);
        Ok(())
    }

    /// Participants put on a hub's list (`added`) and taken off it (`removed`).
    pub fn participants<S: AsRef<str>>(
        b: &mut Batch,
        room: &str,
        added: impl IntoIterator<Item = S>,
        removed: impl IntoIterator<Item = S>,
    ) {
        for gone in removed {
            b.delete(HUB_LOG, room_key(room, b'U', gone.as_ref().as_bytes()));
        }
        for new in added {
            b.put(HUB_LOG, room_key(room, b'U', new.as_ref().as_bytes()), Vec::new());
        }
    }

    /// For a Welcome logged as entry `seq` of `room`: the invitations of the users of ours it is for, who may
    /// then read the room's copy of the log.
    pub fn welcomed(b: &mut Batch, room: &str, seq: u64, users: &[String]) {
        for user in users {
            invite(b, user, room, seq);
            reader(b, room, user);
        }
    }

    /// Forgets the record of a room (a follow undone before any entry came).
    pub fn forget_room(b: &mut Batch, room: &str) {
        b.delete(HUB_LOG, room_key(room, b'S', b""));
    }

    /// The GroupInfo external joiners get.
    pub fn group_info(b: &mut Batch, room: &str, group_info: &[u8]) {
        b.put(HUB_LOG, room_key(room, b'G', b""), group_info.to_vec());
    }

    /// The hub's public state of the room's group, whole (as schema 3 first wrote it; read still).
    pub fn public_state(b: &mut Batch, room: &str, state: &[u8]) {
        b.put(HUB_LOG, room_key(room, b'P', b""), state.to_vec());
    }

    /// The hub's public state of the room's group, `state` cut into `chunked`: its manifest, and the chunks of
    /// it not among `stored` (the chunks of the state it replaces), whose chunks not in it are removed.
    pub fn public_chunks(b: &mut Batch, room: &str, state: &[u8], chunked: &Chunked, stored: &[[u8; 32]]) {
        let old: HashSet<&[u8; 32]> = stored.iter().collect();
        let new: HashSet<&[u8; 32]> = chunked.hashes.iter().collect();
        for (i, h) in chunked.hashes.iter().enumerate() {
            if !old.contains(h) {
                b.put(HUB_LOG, room_key(room, b'Q', h), chunked.chunk(state, i).to_vec());
            }
        }
        for h in old.difference(&new) {
            b.delete(HUB_LOG, room_key(room, b'Q', *h));
        }
        b.put(HUB_LOG, room_key(room, b'P', b""), chunked.manifest());
    }

    /// A consumer's cursor.
    pub fn cursor(b: &mut Batch, room: &str, name: &str, seq: u64) {
        b.put(HUB_LOG, room_key(room, b'C', name.as_bytes()), seq.to_be_bytes().to_vec());
    }

    /// A user.
    pub fn user(b: &mut Batch, u: &UserRecord) -> Result<(), StoreError> {
        let mut k = vec![b'U'];
        k.extend_from_slice(u.uri.as_bytes());
        b.put(MIMI_USERS, k, serde_json::to_vec(u).map_err(|e| decode_err("user", e))?);
        Ok(())
    }

    /// A KeyPackage of `user`.
    pub fn key_package(b: &mut Batch, user: &str, id: u64, kp: &[u8]) {
        let mut k = vec![b'K'];
        k.extend(lp(user.as_bytes()));
        k.extend_from_slice(&id.to_be_bytes());
        b.put(MIMI_USERS, k, kp.to_vec());
    }

    /// A claimed KeyPackage's ref → its user; the KeyPackage itself is removed unless `keep` (a last-resort one).
    pub fn claimed(b: &mut Batch, user: &str, id: u64, kp_ref: &[u8], keep: bool) {
        if !keep {
            drop_key_package(b, user, id);
        }
        stamp_claim(b, kp_ref, user, crate::service::now_ms());
    }

    /// A claim record as kept by [`claimed`], now stamped `at_ms` (records of before retention have no time).
    pub fn stamp_claim(b: &mut Batch, kp_ref: &[u8], user: &str, at_ms: u64) {
        let mut v = user.as_bytes().to_vec();
        v.push(0);
        v.extend_from_slice(&at_ms.to_be_bytes());
        b.put(MIMI_USERS, claim_key(kp_ref), v);
    }

    /// Forgets a claim (retention).
    pub fn drop_claim(b: &mut Batch, kp_ref: &[u8]) {
        b.delete(MIMI_USERS, claim_key(kp_ref));
    }

    /// Forgets an invitation (its Welcome was removed by retention).
    pub fn drop_invite(b: &mut Batch, key: &[u8]) {
        b.delete(MIMI_USERS, key.to_vec());
    }

    /// Removes log entry `seq` of `room` and its idempotency key (retention).
    pub fn drop_entry(b: &mut Batch, room: &str, seq: u64, digest: &[u8; 32]) {
        drop_entry_key(b, room, seq);
        b.delete(HUB_LOG, room_key(room, b'D', digest));
    }

    /// Removes log entry `seq` of `room` whose message is unreadable (its idempotency key, if any, stays).
    pub fn drop_entry_key(b: &mut Batch, room: &str, seq: u64) {
        b.delete(HUB_LOG, room_key(room, b'L', &seq.to_be_bytes()));
    }

    /// `user` (ours) may read our copy of followed `room`: the hub sequenced their join or a Welcome for them.
    pub fn reader(b: &mut Batch, room: &str, user: &str) {
        b.put(HUB_LOG, room_key(room, b'M', user.as_bytes()), Vec::new());
    }

    /// The first entry of `room` retention kept.
    pub fn first(b: &mut Batch, room: &str, seq: u64) {
        b.put(HUB_LOG, room_key(room, b'F', b""), seq.to_be_bytes().to_vec());
    }

    /// Removes a stored KeyPackage of `user` (claimed, or no longer valid).
    pub fn drop_key_package(b: &mut Batch, user: &str, id: u64) {
        let mut k = vec![b'K'];
        k.extend(lp(user.as_bytes()));
        k.extend_from_slice(&id.to_be_bytes());
        b.delete(MIMI_USERS, k);
    }

    /// A Welcome for `user` at `seq` of `room`.
    pub fn invite(b: &mut Batch, user: &str, room: &str, seq: u64) {
        let mut k = vec![b'I'];
        k.extend(lp(user.as_bytes()));
        k.extend(lp(room.as_bytes()));
        k.extend_from_slice(&seq.to_be_bytes());
        b.put(MIMI_USERS, k, Vec::new());
    }
}

/// Typed reads.
#[derive(Clone)]
pub struct Records<'a>(pub &'a Store);

impl std::fmt::Debug for Records<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Records")
    }
}

impl Records<'_> {
    /// One log entry.
    pub fn entry(&self, room: &str, seq: u64) -> Result<Option<SequencedFanout>, StoreError> {
        self.0
            .get(HUB_LOG, &room_key(room, b'L', &seq.to_be_bytes()))?
            .map(|v| SequencedFanout::decode(&v).map_err(|e| decode_err("log entry", e)))
            .transpose()
    }

    /// Up to `max` entries after `after`, in order.
    pub fn entries_after(&self, room: &str, after: u64, max: usize) -> Result<Vec<SequencedFanout>, StoreError> {
        let mut out = Vec::new();
        let mut next = after.checked_add(1);
        while let Some(seq) = next
            && out.len() < max
        {
            match self.entry(room, seq)? {
                Some(e) => out.push(e),
                None => break,
            }
            next = seq.checked_add(1);
        }
        Ok(out)
    }

    /// The sequence numbers of up to `max` of the room's oldest stored entries, in order, wherever they start (a
    /// scan of their keys, where [`Records::entries_after`] reads from a known place).
    pub fn oldest_seqs(&self, room: &str, max: usize) -> Result<Vec<u64>, StoreError> {
        let prefix = room_key(room, b'L', b"");
        Ok(self
            .0
            .scan_prefix_from(HUB_LOG, &prefix, &prefix, max)?
            .into_iter()
            .filter_map(|(k, _)| be64(k.get(prefix.len()..)?))
            .collect())
    }

    /// The last sequence number in the room's log (0 if empty), found from `hint` onwards.
    pub fn last_seq(&self, room: &str, hint: u64) -> Result<u64, StoreError> {
        let mut seq = hint;
        while self.0.get(HUB_LOG, &room_key(room, b'L', &(seq + 1).to_be_bytes()))?.is_some() {
            seq += 1;
        }
        Ok(seq)
    }

    /// The sequence number of the entry of `room` whose idempotency key is `digest`, if it is in the log.
    pub fn digest_seq(&self, room: &str, digest: &[u8; 32]) -> Result<Option<u64>, StoreError> {
        Ok(self.0.get(HUB_LOG, &room_key(room, b'D', digest))?.as_deref().and_then(be64))
    }

    /// The idempotency index of a room.
    pub fn digests(&self, room: &str) -> Result<Vec<([u8; 32], u64)>, StoreError> {
        let prefix = room_key(room, b'D', b"");
        let mut out = Vec::new();
        for (k, v) in self.0.scan_prefix(HUB_LOG, &prefix)? {
            let d: [u8; 32] = k[prefix.len()..].try_into().map_err(|_| decode_err("digest key", "length"))?;
            out.push((d, be64(&v).ok_or_else(|| decode_err("digest value", "length"))?));
        }
        Ok(out)
    }

    /// Every room record. Reads one key per room (a skip scan over the rooms' key prefixes), never the rooms'
    /// logs: a provider with a long log starts without reading it.
    pub fn rooms(&self) -> Result<Vec<RoomRecord>, StoreError> {
        let first_from = |from: &[u8]| Ok(self.0.scan_prefix_from(HUB_LOG, b"", from, 1)?.into_iter().next());
        let records = room_records(first_from, |k| self.0.get(HUB_LOG, k))?;
        records.iter().map(|(_, v)| serde_json::from_slice(v).map_err(|e| decode_err("room record", e))).collect()
    }

    /// A hosted room's participants (schema 5 on; before, they were in the room's record).
    pub fn participants(&self, room: &str) -> Result<BTreeSet<String>, StoreError> {
        let prefix = room_key(room, b'U', b"");
        let mut out = BTreeSet::new();
        for (k, _) in self.0.scan_prefix(HUB_LOG, &prefix)? {
            let uri = String::from_utf8(k[prefix.len()..].to_vec()).map_err(|e| decode_err("participant", e))?;
            out.insert(uri);
        }
        Ok(out)
    }

    /// The stored GroupInfo of a room.
    pub fn group_info(&self, room: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.0.get(HUB_LOG, &room_key(room, b'G', b""))
    }

    /// The hashes of the chunks the hub's public state of `room` is stored in (empty for a state stored whole),
    /// without reading the chunks; `None` if none is stored.
    pub fn public_manifest(&self, room: &str) -> Result<Option<Vec<[u8; 32]>>, StoreError> {
        let Some(value) = self.0.get(HUB_LOG, &room_key(room, b'P', b""))? else { return Ok(None) };
        Ok(Some(chunks::parse_manifest(&value).map(|(_, hashes)| hashes).unwrap_or_default()))
    }

    /// The hub's public state of a room's group (`None` for a room stored before schema 3 and not migrated),
    /// with the hashes of the chunks it is stored in (none if it is stored whole). Every chunk is checked
    /// against its hash.
    pub fn public_state(&self, room: &str) -> Result<Option<StoredPublic>, StoreError> {
        let Some(value) = self.0.get(HUB_LOG, &room_key(room, b'P', b""))? else { return Ok(None) };
        let Some((len, hashes)) = chunks::parse_manifest(&value) else { return Ok(Some((value, Vec::new()))) };
        // The length is the manifest's word: no more than its chunks can hold is reserved.
        let mut state = Vec::with_capacity(usize::try_from(len).unwrap_or(0).min(hashes.len() * chunks::MAX));
        for h in &hashes {
            let chunk = self
                .0
                .get(HUB_LOG, &room_key(room, b'Q', h))?
                .ok_or_else(|| decode_err("public state", format!("{room}: a chunk is missing")))?;
            if <[u8; 32]>::from(Sha256::digest(&chunk)) != *h {
                return Err(decode_err("public state", format!("{room}: a chunk does not match its hash")));
            }
            state.extend_from_slice(&chunk);
        }
        if state.len() as u64 != len {
            return Err(decode_err("public state", format!("{room}: {} bytes, the manifest says {len}", state.len())));
        }
        Ok(Some((state, hashes)))
    }

    /// A consumer's cursor (0 if none).
    pub fn cursor(&self, room: &str, name: &str) -> Result<u64, StoreError> {
        Ok(self.0.get(HUB_LOG, &room_key(room, b'C', name.as_bytes()))?.as_deref().and_then(be64).unwrap_or(0))
    }

    /// A user.
    pub fn user(&self, uri: &str) -> Result<Option<UserRecord>, StoreError> {
        let mut k = vec![b'U'];
        k.extend_from_slice(uri.as_bytes());
        self.0.get(MIMI_USERS, &k)?.map(|v| serde_json::from_slice(&v).map_err(|e| decode_err("user", e))).transpose()
    }

    /// The unclaimed KeyPackages of `user`, `(id, MLSMessage)`.
    pub fn key_packages(&self, user: &str) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let mut prefix = vec![b'K'];
        prefix.extend(lp(user.as_bytes()));
        let mut out = Vec::new();
        for (k, v) in self.0.scan_prefix(MIMI_USERS, &prefix)? {
            out.push((be64(&k[prefix.len()..]).ok_or_else(|| decode_err("key package id", "length"))?, v));
        }
        Ok(out)
    }

    /// The user who claimed-for KeyPackage `kp_ref`.
    pub fn claimed_by(&self, kp_ref: &[u8]) -> Result<Option<String>, StoreError> {
        Ok(self.0.get(MIMI_USERS, &claim_key(kp_ref))?.map(|v| Claim::parse(&v).user))
    }

    /// Up to `limit` claim records from the one for `from` on: `(kp_ref, claim)`.
    pub fn claims(&self, from: &[u8], limit: usize) -> Result<Vec<(Vec<u8>, Claim)>, StoreError> {
        Ok(self
            .0
            .scan_prefix_from(MIMI_USERS, b"R", &claim_key(from), limit)?
            .into_iter()
            .map(|(k, v)| (k[1..].to_vec(), Claim::parse(&v)))
            .collect())
    }

    /// Up to `limit` invitations from key `from` on: `(key, room, seq)`.
    pub fn invitations(&self, from: &[u8], limit: usize) -> Result<Vec<(Vec<u8>, String, u64)>, StoreError> {
        let mut out = Vec::new();
        for (k, _) in self.0.scan_prefix_from(MIMI_USERS, b"I", from, limit)? {
            if let Some((room, seq)) = parse_invite(&k[1..]) {
                out.push((k, room, seq));
            }
        }
        Ok(out)
    }

    /// The first entry of `room`'s log that retention kept (1 if it never removed any).
    pub fn first(&self, room: &str) -> Result<u64, StoreError> {
        Ok(self.0.get(HUB_LOG, &room_key(room, b'F', b""))?.as_deref().and_then(be64).unwrap_or(1))
    }

    /// True if `user` may read our copy of followed `room` ([`write::reader`]).
    pub fn is_reader(&self, room: &str, user: &str) -> Result<bool, StoreError> {
        Ok(self.0.get(HUB_LOG, &room_key(room, b'M', user.as_bytes()))?.is_some())
    }

    /// The cursors of the local consumers of `room`.
    pub fn cursors(&self, room: &str) -> Result<Vec<u64>, StoreError> {
        Ok(self.0.scan_prefix(HUB_LOG, &room_key(room, b'C', b""))?.into_iter().filter_map(|(_, v)| be64(&v)).collect())
    }

    /// Welcomes waiting for `user`: `(room, seq)`.
    pub fn invites(&self, user: &str) -> Result<Vec<(String, u64)>, StoreError> {
        let mut prefix = vec![b'I'];
        prefix.extend(lp(user.as_bytes()));
        let mut out = Vec::new();
        for (k, _) in self.0.scan_prefix(MIMI_USERS, &prefix)? {
            if let Some(i) = parse_invite(&k[1..]) {
                out.push(i);
            }
        }
        Ok(out)
    }
}

fn claim_key(kp_ref: &[u8]) -> Vec<u8> {
    let mut k = vec![b'R'];
    k.extend_from_slice(kp_ref);
    k
}

/// `lp(user) lp(room) seq` of an invitation key (after its `'I'`): the room and the seq.
fn parse_invite(k: &[u8]) -> Option<(String, u64)> {
    let field = |at: usize| -> Option<(&[u8], usize)> {
        let len = usize::from(u16::from_be_bytes(k.get(at..at + 2)?.try_into().ok()?));
        Some((k.get(at + 2..at + 2 + len)?, at + 2 + len))
    };
    let (_user, at) = field(0)?;
    let (room, at) = field(at)?;
    Some((String::from_utf8_lossy(room).into_owned(), k.get(at..).and_then(be64)?))
}

/// A claim record: who claimed the KeyPackage, and when (`None` for records of before retention).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The user it was claimed for.
    pub user: String,
    /// When, ms since the UNIX epoch.
    pub at_ms: Option<u64>,
}

impl Claim {
    fn parse(v: &[u8]) -> Self {
        match v.iter().position(|&b| b == 0) {
            Some(nul) => Self { user: String::from_utf8_lossy(&v[..nul]).into_owned(), at_ms: be64(&v[nul + 1..]) },
            None => Self { user: String::from_utf8_lossy(v).into_owned(), at_ms: None },
        }
    }
}

/// Schema migration 2 → 3 of the daemon's store: every hosted room gets the public state of its group
/// (`'P'`), built from its stored GroupInfo (which embeds the ratchet tree) if that GroupInfo is of the room's group
/// and current epoch and verifies. Rooms without one (the room of a big portal kept its GroupInfo in memory only) are
/// left without: the hub then refuses their handshakes until a participant hands in the current GroupInfo again
/// ([`crate::Provider::create_room`], which every portal calls at start). One atomic batch.
pub fn migrate_v2_to_v3(kv: &dyn KvStore) -> Result<(), StoreError> {
    let mut b = Batch::new();
    for (k, v) in kv.scan_prefix(HUB_LOG, b"")? {
        let Some(len) = k.get(..2).map(|l| usize::from(u16::from_be_bytes([l[0], l[1]]))) else { continue };
        if k.get(2 + len) != Some(&b'S') || k.len() != 3 + len {
            continue;
        }
        let Ok(RoomRecord::Hub(state)) = serde_json::from_slice::<RoomRecord>(&v) else { continue };
        let Some(gi) = kv.get(HUB_LOG, &room_key(&state.room, b'G', b""))? else { continue };
        let public = MlsMessageBytes::new(gi)
            .ok()
            .and_then(|gi| PublicState::from_group_info(&gi, None).ok())
            .filter(|p| p.group_id() == state.group_id.as_slice() && p.epoch() == state.epoch)
            .and_then(|p| p.encode().ok());
        match public {
            Some(p) => write::public_state(&mut b, &state.room, &p),
            None => tracing::warn!(room = %state.room, "no current GroupInfo: the room's handshakes wait for one"),
        }
    }
    if b.is_empty() { Ok(()) } else { kv.write(&[b]) }
}

/// Schema migration 3 → 4 of the daemon's store: the public state of every hosted room (`'P'`, stored whole) is
/// written again in this build's form — its OpenMLS values in CBOR ([`PublicState`]'s second format) and cut
/// into chunks (`'Q'`, [`mimi_store::chunks`]). A build that knows neither then refuses the data directory as newer
/// instead of failing on a record it cannot read. A record that does not decode is left as it is (the hub
/// refuses the room's handshakes until a participant hands in the current GroupInfo). One atomic batch.
pub fn migrate_v3_to_v4(kv: &dyn KvStore) -> Result<(), StoreError> {
    let mut b = Batch::new();
    // One record per room ('S', then its 'P'), not the logs.
    let first_from = |from: &[u8]| Ok(kv.scan_prefix_from(HUB_LOG, b"", from, 1)?.into_iter().next());
    for (mut k, _) in room_records(first_from, |k| kv.get(HUB_LOG, k))? {
        k.pop();
        let room = String::from_utf8_lossy(&k[2..]).into_owned();
        k.push(b'P');
        let Some(v) = kv.get(HUB_LOG, &k)? else { continue };
        if chunks::parse_manifest(&v).is_some() {
            continue;
        }
        match PublicState::decode(&v).and_then(|p| p.encode()) {
            Ok(state) => write::public_chunks(&mut b, &room, &state, &chunks::split(&state), &[]),
            Err(e) => tracing::warn!(%room, error = %e, "the room's public state does not decode: left as it is"),
        }
    }
    if b.is_empty() { Ok(()) } else { kv.write(&[b]) }
}

/// Schema migration 4 → 5 of the daemon's store: the participants of every hosted room move from the room's
/// record (`'S'`, rewritten with every message: 400 KB of JSON at 10 000 participants) to one key each (`'U'`).
/// One atomic batch.
pub fn migrate_v4_to_v5(kv: &dyn KvStore) -> Result<(), StoreError> {
    let mut b = Batch::new();
    // One record per room, not the logs and public states.
    let first_from = |from: &[u8]| Ok(kv.scan_prefix_from(HUB_LOG, b"", from, 1)?.into_iter().next());
    for (_, v) in room_records(first_from, |k| kv.get(HUB_LOG, k))? {
        let Ok(RoomRecord::Hub(state)) = serde_json::from_slice::<RoomRecord>(&v) else { continue };
        write::participants(&mut b, &state.room, &state.participants, []);
        write::hub(&mut b, &state)?;
    }
    if b.is_empty() { Ok(()) } else { kv.write(&[b]) }
}
