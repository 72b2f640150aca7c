//! OpenMLS's [`StorageProvider`] written on the bridge's store ([`Store`] / [`KvStore`](mimi_store::KvStore)).
//!
//! # Layout
//!
//! Everything lives in the tree [`MLS_TREE`] (`"mls"`), under one namespace per local member (the bridge's shared
//! leaf, or one per per-user leaf: a per-user leaf is in the *same* group as the bridge leaf, so the two must not
//! share keys):
//!
//! ```text
//! key   = lp(namespace) ‖ version (u16 BE) ‖ label (u8) ‖ CBOR(openmls key …)
//! value = CBOR(openmls entity)                      for single values
//!       = (u32 BE length ‖ CBOR(item))*             for lists (own leaf nodes, proposal refs, epoch key pairs)
//! ```
//!
//! `lp(x)` is `x` prefixed with its length as u16 BE. Values are CBOR through serde: openmls's types need a
//! *self-describing* serde format (`tls_codec`'s byte vectors and one of its configs deserialize with
//! `deserialize_any`), which rules out postcard/bincode. They are written by [`super::cbor`], which turns
//! sequences of bytes (serde hands OpenMLS's `Vec<u8>` secrets over one byte at a time) into CBOR byte strings,
//! and read by `ciborium`, which accepts both that and the arrays of integers that `ciborium` itself writes.
//! The CBOR inside *keys* stays `ciborium`'s (keys must not change). A secret tree costs a fraction of the JSON
//! that `openmls_memory_storage` writes.
//!
//! # Chunks
//!
//! A group's ratchet tree, message secrets and group state are O(N) in its size (at 10 000 members: megabytes
//! each) and rewritten after small changes (a commit changes a path of the tree). From [`CHUNKED_FROM`] bytes on,
//! such a value is stored in content-defined chunks ([`mimi_store::chunks`]): the key holds a manifest (the chunks'
//! SHA-256s), each chunk is stored once under
//!
//! ```text
//! key   = lp(namespace) ‖ version ‖ 0x42 ‖ label ‖ CBOR(group id) ‖ SHA-256(chunk)
//! ```
//!
//! and an operation writes the manifest, the chunks it gained and the deletion of those it lost, in its batch: a
//! commit of a 10 000-member group writes what it changed, not the megabytes other groups' batches would queue
//! behind. The chunks are cut and hashed where the value is encoded (a big group's operation runs on the lower
//! priority threads of [`crate::offload`]), outside every lock; sealing only copies the chunks an operation gained
//! (all of them on a value's first write). A value stored whole before is still read, and chunked when it is next
//! written.
//!
//! A group's message secrets are two values: the past epochs' secrets and member lists (O(N) each) under a label of
//! their own, written only when they change (after a commit, or a message of a past epoch), and the rest under
//! another, with the offset at which the past epochs belong (`SECRETS_CUT`). The periodic encoding of
//! application messages' state ([`crate::write_behind`]) thus neither encodes, copies nor compares the past
//! epochs. A record written whole before is still read.
//!
//! # Cache, write-behind and group commit
//!
//! OpenMLS calls the provider synchronously, many times per operation, and rewrites the group's message secrets on
//! every encrypt and decrypt. The provider therefore never writes through: each write updates an in-memory cache
//! (the authoritative copy for this process) and marks the key *dirty* in a partition — the group the key belongs
//! to, or the *global* partition for key packages, signature keys and leaf-update key pairs. Reads are served from
//! the cache, falling back to the store on a miss (and remembering the answer, including "absent"). A closed
//! group's records leave the cache once the store holds them ([`MlsStorage::release_claim`]).
//!
//! After an MLS operation the engine calls [`MlsStorage::submit_group`]: the dirty keys of that group (and the
//! global partition) are **sealed** — their values at the end of the operation are set aside (shared, not copied)
//! under the next sequence number — and the returned [`Durability`] resolves when that state is on disk. Sealing
//! makes no system call: the sealed state is **handed off** to the store's group commit only when someone waits
//! for a [`Durability`] (or the sealed state grows past [`HAND_OFF_BYTES`], or the storage is dropped). One hand-off
//! takes everything sealed so far, keeping the last value of each key, as **one atomic batch**: it is the state
//! after the last sealed operation, so every operation stays all-or-nothing on disk, and a burst of operations (one
//! portal's, or many portals' on the same member) costs one batch, one wake-up of the committer and one fsync.
//! Sealing and hand-offs happen under locks, in order, and the committer writes batches in order: when a batch is
//! durable, every operation sealed before it is too. (Waking the committer thread once per operation cost more CPU
//! than encoding the state: a futex wake and, in a VM, an inter-processor interrupt.)
//!
//! The engine awaits the [`Durability`] of an encrypt *before* releasing the ciphertext (reusing a generation after
//! a crash would reuse an AEAD nonce), and of a commit before sending it.
//!
//! Application messages are the exception to "every write goes into the operation's batch": the engine *defers*
//! their writes of the message secrets (O(N) to encode) and encodes them every so many operations, under the rules
//! of [`crate::write_behind`]. A deferred encrypt waits for its reservation instead; a deferred decrypt waits only
//! for what it did write (its kept plaintext), or not at all.
//!
//! When an operation fails half-way, whatever OpenMLS wrote is submitted all the same: OpenMLS keeps the same
//! state in its in-memory `MlsGroup`, so the durable state must follow it, not the state before the operation.
//!
//! Only one [`MlsStorage`] may exist per namespace and store in a process (the engine keeps it that way): the
//! cache assumes it sees every write.

use futures_util::FutureExt as _;
use futures_util::future::{BoxFuture, Shared};
use mimi_store::chunks::{self, Chunked};
use mimi_store::{Batch, Store, StoreError};
use openmls_traits::storage::{CURRENT_VERSION, Entity, StorageProvider, traits};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

/// The store tree holding all OpenMLS state.
pub const MLS_TREE: &str = "mls";

/// Why the MLS storage failed.
#[derive(Debug, thiserror::Error)]
pub enum MlsStorageError {
    /// The store failed (read, or the durable write of a batch).
    #[error("MLS storage: {0}")]
    Store(#[from] StoreError),
    /// A value could not be encoded.
    #[error("MLS storage: cannot encode {what}: {message}")]
    Encode {
        /// What was being encoded.
        what: &'static str,
        /// The encoder's message.
        message: String,
    },
    /// A stored value could not be decoded: the record is corrupt or from an incompatible version.
    #[error("MLS storage: corrupt {what} record: {message}")]
    Decode {
        /// What was being decoded.
        what: &'static str,
        /// The decoder's message.
        message: String,
    },
}

// Labels: one byte each, stable (they are part of the on-disk format).
const KEY_PACKAGE: u8 = 1;
const PSK: u8 = 2;
const ENCRYPTION_KEY_PAIR: u8 = 3;
const SIGNATURE_KEY_PAIR: u8 = 4;
const EPOCH_KEY_PAIRS: u8 = 5;
const TREE: u8 = 10;
const GROUP_CONTEXT: u8 = 11;
const INTERIM_TRANSCRIPT_HASH: u8 = 12;
const CONFIRMATION_TAG: u8 = 13;
const JOIN_CONFIG: u8 = 20;
const OWN_LEAF_NODES: u8 = 21;
const GROUP_STATE: u8 = 22;
const QUEUED_PROPOSAL: u8 = 23;
const PROPOSAL_QUEUE_REFS: u8 = 24;
const OWN_LEAF_INDEX: u8 = 25;
const EPOCH_SECRETS: u8 = 26;
const RESUMPTION_PSK_STORE: u8 = 27;
const MESSAGE_SECRETS: u8 = 28;
/// The past epochs' part of a group's message secrets, kept apart from the rest ([`SECRETS_CUT`]).
const PAST_EPOCHS: u8 = 29;
/// First byte of a group's message secrets stored without their past epochs: then a u32 BE offset, then the CBOR
/// of OpenMLS's `MessageSecretsStore` with the value of its field `past_epoch_trees` left out; that value (O(N) per
/// past epoch: its member list) is under [`PAST_EPOCHS`], written only when it changes. A value without this byte
/// (a CBOR map) is the whole record, as written before. (CBOR tag 2 could not start a map; a chunk manifest
/// starts with 0xC1.)
const SECRETS_CUT: u8 = 0xC2;
/// OpenMLS's records of a group stored under the group's id alone: they leave the cache once the group is closed
/// and the store holds them ([`MlsStorage::release_claim`]). The group's proposals and epoch key pairs (keyed by
/// more than the id) and the engine's own records about it ([`GROUP_RECORD`]) stay cached: a few hundred bytes.
const GROUP_LABELS: [u8; 13] = [
    TREE,
    GROUP_CONTEXT,
    INTERIM_TRANSCRIPT_HASH,
    CONFIRMATION_TAG,
    JOIN_CONFIG,
    OWN_LEAF_NODES,
    GROUP_STATE,
    PROPOSAL_QUEUE_REFS,
    OWN_LEAF_INDEX,
    EPOCH_SECRETS,
    RESUMPTION_PSK_STORE,
    MESSAGE_SECRETS,
    PAST_EPOCHS,
];
/// A chunk of a chunked value ([`CHUNKED_FROM`]).
const CHUNK: u8 = 0x42;
/// The engine's own records (who the member is), not OpenMLS's.
const APP: u8 = 0x40;
/// The engine's own records about one group, in that group's partition (sealed only by that group's operations).
const GROUP_RECORD: u8 = 0x41;

/// Values of a chunkable label ([`chunkable`]) from this many bytes on are stored in content-defined chunks.
pub const CHUNKED_FROM: usize = 64 << 10;

/// Labels whose values grow with the group (O(N)) and are rewritten after small changes.
fn chunkable(label: Option<&u8>) -> bool {
    matches!(label, Some(&(TREE | MESSAGE_SECRETS | PAST_EPOCHS | GROUP_STATE)))
}

/// The store key of the chunk `hash` of the value under `key` (whose namespace prefix is `prefix_len` bytes).
fn chunk_key(key: &[u8], prefix_len: usize, hash: &[u8; 32]) -> Vec<u8> {
    let (prefix, rest) = key.split_at(prefix_len.min(key.len()));
    let mut k = Vec::with_capacity(key.len() + 33);
    k.extend_from_slice(prefix);
    k.push(CHUNK);
    // `rest` is a label and a CBOR item: it delimits itself, so no two values' chunks share keys.
    k.extend_from_slice(rest);
    k.extend_from_slice(hash);
    k
}

/// The migration to the first schema whose `mls` tree may hold chunked values ([`CHUNKED_FROM`]): nothing to
/// rewrite (a value stored whole is still read, and chunked when it is next written); the new version keeps older
/// builds, which would take a manifest for the value, off the data directory.
pub fn migrate_to_chunked_values(_: &dyn mimi_store::KvStore) -> Result<(), StoreError> {
    Ok(())
}

/// The migration to the first schema whose `mls` tree may hold a group's message secrets in two records, the past
/// epochs apart ([`SECRETS_CUT`]): nothing to rewrite (a record written whole is still read, and written apart at
/// its next encoding); the new version keeps older builds, which could not read the two records, off the data
/// directory.
pub fn migrate_to_past_epochs_apart(_: &dyn mimi_store::KvStore) -> Result<(), StoreError> {
    Ok(())
}

/// What [`check_chunks`] found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ChunkReport {
    /// Values stored as a manifest.
    pub manifests: u64,
    /// Chunks stored.
    pub chunks: u64,
    /// Chunks a manifest lists that are not stored, and chunks stored that no manifest lists.
    pub problems: Vec<String>,
}

/// Verifies the chunked values of the `mls` tree (`store check`): every chunk a manifest lists is stored, and
/// every chunk stored is listed by the manifest of its value (an operation's batch writes both, and deletes what
/// it replaced, so a crash leaves neither a hole nor an orphan).
pub fn check_chunks(kv: &dyn mimi_store::KvStore) -> Result<ChunkReport, StoreError> {
    let mut report = ChunkReport::default();
    let mut listed = HashSet::new();
    let mut stored = Vec::new();
    mimi_store::export::for_each_entry(kv, MLS_TREE, |k, v| {
        // lp(namespace) ‖ version (u16) ‖ label ‖ …
        let prefix_len = k.get(..2).map_or(usize::MAX, |l| 4 + usize::from(u16::from_be_bytes([l[0], l[1]])));
        match k.get(prefix_len) {
            Some(&CHUNK) => {
                report.chunks += 1;
                stored.push(k.to_vec());
            }
            label if chunkable(label) => {
                if let Some((_, hashes)) = chunks::parse_manifest(v) {
                    report.manifests += 1;
                    listed.extend(hashes.iter().map(|h| chunk_key(k, prefix_len, h)));
                }
            }
            _ => {}
        }
        Ok(())
    })?;
    for k in &stored {
        if !listed.remove(k) {
            report.problems.push(format!("mls {}: a chunk no manifest lists", hex::encode(k)));
        }
    }
    for k in listed {
        report.problems.push(format!("mls {}: a chunk a manifest lists is missing", hex::encode(k)));
    }
    report.problems.sort();
    Ok(report)
}

/// Encodes a value as CBOR, sequences of bytes as byte strings ([`super::cbor`]).
pub(crate) fn encode<T: Serialize + ?Sized>(what: &'static str, value: &T) -> Result<Vec<u8>, MlsStorageError> {
    let mut out = Vec::with_capacity(64);
    super::cbor::to_vec_into(value, &mut out).map_err(|e| MlsStorageError::Encode { what, message: e.to_string() })?;
    Ok(out)
}

/// Encodes a value that is part of a store *key* (group ids, public keys, references, epochs) with `ciborium`, as
/// the first version of the format did: keys must not change encoding, or stored state would not be found again.
fn encode_key<T: Serialize + ?Sized>(what: &'static str, value: &T) -> Result<Vec<u8>, MlsStorageError> {
    let mut out = Vec::with_capacity(32);
    ciborium::into_writer(value, &mut out).map_err(|e| MlsStorageError::Encode { what, message: e.to_string() })?;
    Ok(out)
}

fn decode<T: serde::de::DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T, MlsStorageError> {
    ciborium::from_reader(bytes).map_err(|e| MlsStorageError::Decode { what, message: e.to_string() })
}

/// Appends `(u32 BE length ‖ item)` to a list value.
fn push_item(list: &mut Vec<u8>, item: &[u8]) -> Result<(), MlsStorageError> {
    let len = u32::try_from(item.len())
        .map_err(|_| MlsStorageError::Encode { what: "list item", message: "longer than 4 GiB".into() })?;
    list.extend_from_slice(&len.to_be_bytes());
    list.extend_from_slice(item);
    Ok(())
}

/// Splits a list value into its items.
fn items<'a>(what: &'static str, mut list: &'a [u8]) -> Result<Vec<&'a [u8]>, MlsStorageError> {
    let mut out = Vec::new();
    while !list.is_empty() {
        let corrupt = || MlsStorageError::Decode { what, message: "truncated list".into() };
        let (len, rest) = list.split_first_chunk::<4>().ok_or_else(corrupt)?;
        let len = u32::from_be_bytes(*len) as usize;
        if rest.len() < len {
            return Err(corrupt());
        }
        let (item, rest) = rest.split_at(len);
        out.push(item);
        list = rest;
    }
    Ok(out)
}

/// A handle that resolves once the state an operation wrote is durable.
///
/// Await it (or [`Durability::wait_blocking`]) before releasing anything the operation produced — a ciphertext, a
/// commit, a Welcome. Waiting hands the sealed state to group commit if nobody did yet. Dropping the handle
/// unwaited leaves the state sealed in memory until the next wait on the same storage (or [`HAND_OFF_BYTES`], or
/// the storage's drop): the operation's output was then never released, so nothing depends on it being durable.
#[derive(Debug)]
#[must_use = "release the operation's output only after its state is durable"]
pub struct Durability(Vec<Ticket>);

/// The claim of one sealed operation: durable once the writer's flights reach `seq`.
#[derive(Debug)]
struct Ticket {
    writer: Arc<Writer>,
    seq: u64,
}

impl Durability {
    /// A handle that is already resolved (nothing was written).
    pub fn ready() -> Self {
        Self(Vec::new())
    }

    /// A handle that resolves when both `self` and `other` did (an operation that wrote to several local
    /// members' storages, e.g. per-user leaves).
    pub fn and(mut self, other: Durability) -> Durability {
        self.0.extend(other.0);
        self
    }

    /// The flights to wait for, handing the sealed state off first if needed (none: already durable).
    fn flights(self) -> Vec<Flight> {
        self.0.into_iter().filter_map(|t| t.writer.flight_for(t.seq)).collect()
    }

    /// The operation this handle waits for, if it waits for exactly one ([`MlsStorage::ticket_for`]).
    pub(crate) fn seq(&self) -> Option<u64> {
        match self.0.as_slice() {
            [t] => Some(t.seq),
            _ => None,
        }
    }

    /// Waits until the state is durable.
    pub async fn wait(self) -> Result<(), StoreError> {
        for f in self.flights() {
            f.await.map_err(unshare)?;
        }
        Ok(())
    }

    /// Blocking version of [`Durability::wait`], for threads outside the async runtime.
    pub fn wait_blocking(self) -> Result<(), StoreError> {
        for f in self.flights() {
            block_on(f).map_err(unshare)?;
        }
        Ok(())
    }
}

/// The outcome of one hand-off, shared by every handle it covers.
type Flight = Shared<BoxFuture<'static, Result<(), Arc<StoreError>>>>;

/// A shared store error back as an owned one (the error types are not `Clone`).
fn unshare(e: Arc<StoreError>) -> StoreError {
    Arc::try_unwrap(e).unwrap_or_else(|e| match &*e {
        StoreError::Closed => StoreError::Closed,
        StoreError::Backend { backend, path, message } => {
            StoreError::Backend { backend, path: path.clone(), message: message.clone() }
        }
        other => StoreError::Corrupt { tree: MLS_TREE.into(), message: other.to_string() },
    })
}

/// Runs `f` to completion on this thread (it only waits for the committer's reply).
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = std::task::Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = std::task::Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    loop {
        if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

/// Sealed state above this many bytes is handed off at once, without waiting for a waiter.
pub const HAND_OFF_BYTES: usize = 4 << 20;

/// Sealed state and the hand-offs to group commit (shared with the [`Durability`] handles).
struct Writer {
    store: Store,
    /// Length of the namespace prefix of this storage's keys.
    prefix_len: usize,
    state: Mutex<WriterState>,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer").finish_non_exhaustive()
    }
}

#[derive(Default)]
struct WriterState {
    /// Sealed, not yet handed off: key → value at the end of the last operation that sealed it (`None`: delete).
    sealed: BTreeMap<Vec<u8>, Cached>,
    /// Bytes of values in `sealed`.
    sealed_bytes: usize,
    /// Sequence number of the last sealed operation.
    sealed_seq: u64,
    /// Every operation up to this one is handed off.
    handed_seq: u64,
    /// Every operation up to this one is known durable.
    durable_seq: u64,
    /// Hand-offs not known to be durable yet, oldest first, each with the last sequence number it covers.
    flights: VecDeque<(u64, Flight)>,
    /// The chunks of each chunked value as last sealed, or as stored if not sealed since (no entry: none). The
    /// stored ones are recorded when the key first enters the cache — read, or set unread
    /// ([`MlsStorage::set_chunkable`]) — under the cache's lock, which sealing holds too.
    manifests: HashMap<Vec<u8>, HashSet<[u8; 32]>>,
}

impl Writer {
    fn lock(&self) -> MutexGuard<'_, WriterState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Seals `values` as operation `sealed_seq + 1` and returns its number.
    fn seal(&self, values: impl IntoIterator<Item = (Vec<u8>, Cached)>) -> u64 {
        let mut st = self.lock();
        for (k, v) in values {
            let v = if chunkable(k.get(self.prefix_len)) { self.seal_chunks(&mut st, &k, v) } else { v };
            Self::put_sealed(&mut st, k, v);
        }
        st.sealed_seq += 1;
        let seq = st.sealed_seq;
        if st.sealed_bytes > HAND_OFF_BYTES {
            self.hand_off(&mut st);
        }
        seq
    }

    fn put_sealed(st: &mut WriterState, k: Vec<u8>, v: Cached) {
        st.sealed_bytes += v.as_ref().map_or(0, |v| v.bytes.len());
        if let Some(Some(old)) = st.sealed.insert(k, v) {
            st.sealed_bytes -= old.bytes.len();
        }
    }

    /// Seals the chunks that the value `v` of the chunkable key `k` gained since its last manifest, and the
    /// deletion of those it lost; returns what goes under `k` itself: the new manifest, or `v` if it is stored
    /// whole. (Chunks are per key, so a chunk that no manifest of `k` lists any more is nobody's.)
    fn seal_chunks(&self, st: &mut WriterState, k: &[u8], v: Cached) -> Cached {
        let before = st.manifests.remove(k).unwrap_or_default();
        let mut after = HashSet::new();
        let own = match v.as_deref() {
            Some(Value { bytes, chunks: Some(chunked) }) => {
                for (i, hash) in chunked.hashes.iter().enumerate() {
                    if after.insert(*hash) && !before.contains(hash) {
                        let chunk = Value::whole(chunked.chunk(bytes, i).to_vec());
                        Self::put_sealed(st, chunk_key(k, self.prefix_len, hash), Some(Arc::new(chunk)));
                    }
                }
                Some(Arc::new(Value::whole(chunked.manifest())))
            }
            _ => v,
        };
        for gone in before.difference(&after) {
            Self::put_sealed(st, chunk_key(k, self.prefix_len, gone), None);
        }
        if !after.is_empty() {
            st.manifests.insert(k.to_vec(), after);
        }
        own
    }

    /// Hands everything sealed to group commit as one batch (under the lock: batches reach the committer in order).
    fn hand_off(&self, st: &mut WriterState) {
        if st.handed_seq == st.sealed_seq {
            return;
        }
        let mut batch = Batch::new();
        for (key, value) in std::mem::take(&mut st.sealed) {
            match value {
                // Usually the cache holds a newer value by now, and the sealed one moves into the batch uncopied.
                Some(v) => batch.put(MLS_TREE, key, Arc::try_unwrap(v).map_or_else(|v| v.bytes.clone(), |v| v.bytes)),
                None => batch.delete(MLS_TREE, key),
            };
        }
        st.sealed_bytes = 0;
        st.handed_seq = st.sealed_seq;
        let own = if batch.is_empty() { None } else { Some(self.store.commit_later(batch)) };
        // Each flight resolves only after the one before it, with its error if it failed: a batch that did not
        // make it to disk fails every later wait too (their state builds on it), and a resolved flight proves
        // all earlier ones durable.
        let prev = st.flights.back().map(|(_, f)| f.clone());
        let flight: Flight = async move {
            if let Some(prev) = prev {
                prev.await?;
            }
            match own {
                None => Ok(()),
                Some(rx) => match rx.await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(Arc::new(e)),
                    Err(_) => Err(Arc::new(StoreError::Closed)),
                },
            }
        }
        .boxed()
        .shared();
        st.flights.push_back((st.handed_seq, flight));
    }

    /// The flight that makes operation `seq` durable (handing off first if needed), `None` if it already is.
    fn flight_for(&self, seq: u64) -> Option<Flight> {
        let mut st = self.lock();
        if seq <= st.durable_seq {
            return None;
        }
        if st.handed_seq < seq {
            self.hand_off(&mut st);
        }
        Self::settle(&mut st);
        if seq <= st.durable_seq {
            return None;
        }
        st.flights.iter().find(|(s, _)| *s >= seq).map(|(_, f)| f.clone())
    }

    /// Every operation up to this one is known durable (without waiting).
    fn durable_seq(&self) -> u64 {
        let mut st = self.lock();
        Self::settle(&mut st);
        st.durable_seq
    }

    /// Forgets the flights up to the newest one known to be done: done means every earlier one is too.
    fn settle(st: &mut WriterState) {
        if let Some(i) = st.flights.iter().rposition(|(_, f)| f.peek().is_some()) {
            let (s, f) = st.flights[i].clone();
            if matches!(f.peek(), Some(Ok(()))) {
                st.durable_seq = s;
                st.flights.drain(..=i);
            } else {
                // Failed: keep it as the head, so that every later wait fails the same way.
                st.flights.drain(..i);
            }
        }
    }
}

/// What the cache knows about one key (`None`: absent). Shared with the sealed state, so sealing copies nothing.
type Cached = Option<Arc<Value>>;

/// A value in the cache.
#[derive(Debug)]
struct Value {
    bytes: Vec<u8>,
    /// Its chunks, if it is stored in chunks ([`CHUNKED_FROM`]): cut when it was set, outside the locks (or read
    /// with it).
    chunks: Option<Chunked>,
}

impl Value {
    /// A value stored whole.
    fn whole(bytes: Vec<u8>) -> Self {
        Self { bytes, chunks: None }
    }
}

#[derive(Default)]
struct Inner {
    /// Full store key → value (`None`: known to be absent). Authoritative for this process, and never emptied
    /// but for the [`GROUP_LABELS`] records of closed groups, and only where every write of theirs sealed so far
    /// is durable ([`MlsStorage::release_claim`]): the store then holds the same value, so [`MlsStorage::with`]
    /// may read the store outside the lock (a read that overlapped an eviction reads again: [`Inner::evictions`]).
    cache: HashMap<Vec<u8>, Cached>,
    /// Moves on whenever closed groups' records leave [`Inner::cache`]: a store read that started before may have
    /// read a value older than one written, made durable and evicted meanwhile, and must not be cached.
    evictions: u64,
    /// Dirty keys per partition (CBOR of the group id; empty for the global partition).
    dirty: HashMap<Vec<u8>, BTreeSet<Vec<u8>>>,
    /// Partitions whose message-secrets writes are skipped for now ([`MlsStorage::defer_message_secrets`]).
    deferred: BTreeSet<Vec<u8>>,
    /// Partitions whose message secrets were encoded since [`MlsStorage::take_secrets_encoded`] last asked.
    secrets_encoded: BTreeSet<Vec<u8>>,
    /// The last claim on each partition by an open group ([`MlsStorage::claim`]).
    claims: HashMap<Vec<u8>, u64>,
    /// Per partition, what is remembered of the last encoding of its message secrets.
    past_epochs: HashMap<Vec<u8>, SecretsEncoding>,
    /// Partitions whose group was closed, each with the last operation sealed then: once that is durable, the
    /// group's [`GROUP_LABELS`] records leave the cache ([`MlsStorage::release_claim`]).
    closed: Vec<(Vec<u8>, u64)>,
}

/// What [`MlsStorage`] remembers of a group's last encoding of its message secrets.
#[derive(Default)]
struct SecretsEncoding {
    /// Its length, past epochs left out.
    len: usize,
    /// The value under [`PAST_EPOCHS`] is this process's encoding of the group's past epochs, as they are: an
    /// encoding told they did not change may leave them out.
    past_stored: bool,
    /// The next encoding may leave the past epochs as they are ([`MlsStorage::reuse_past_epochs`]).
    reuse: bool,
}

/// OpenMLS storage for one local member (namespace) on the bridge's [`Store`]. See the module documentation.
pub struct MlsStorage {
    store: Store,
    writer: Arc<Writer>,
    /// `lp(namespace) ‖ version`.
    prefix: Vec<u8>,
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for MlsStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MlsStorage").field("prefix", &hex::encode(&self.prefix)).finish_non_exhaustive()
    }
}

/// The global partition (key packages, signature keys, leaf-update key pairs, PSKs).
const GLOBAL: &[u8] = &[];

impl MlsStorage {
    /// Storage for the local member `namespace` (e.g. `"bridge"` or a per-user leaf's URI) on `store`.
    pub fn new(store: Store, namespace: &str) -> Result<Self, MlsStorageError> {
        let ns = namespace.as_bytes();
        let len = u16::try_from(ns.len())
            .map_err(|_| MlsStorageError::Encode { what: "namespace", message: "longer than 65535 bytes".into() })?;
        let mut prefix = Vec::with_capacity(ns.len() + 4);
        prefix.extend_from_slice(&len.to_be_bytes());
        prefix.extend_from_slice(ns);
        prefix.extend_from_slice(&CURRENT_VERSION.to_be_bytes());
        let writer = Arc::new(Writer {
            store: store.clone(),
            prefix_len: prefix.len(),
            state: Mutex::new(WriterState::default()),
        });
        Ok(Self { store, writer, prefix, inner: Mutex::new(Inner::default()) })
    }

    /// The store this storage writes to.
    pub fn store(&self) -> &Store {
        &self.store
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves the cache as consistent as any single write: keep going.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn key(&self, label: u8, key: &[u8]) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.prefix.len() + 1 + key.len());
        k.extend_from_slice(&self.prefix);
        k.push(label);
        k.extend_from_slice(key);
        k
    }

    /// The partition of a group: the CBOR of its id.
    pub fn partition<G: Serialize>(group_id: &G) -> Result<Vec<u8>, MlsStorageError> {
        encode_key("group id", group_id)
    }

    /// Sets `key`, of a label whose values are stored whole.
    fn set(&self, partition: &[u8], key: Vec<u8>, value: Option<Vec<u8>>) {
        debug_assert!(!chunkable(key.get(self.prefix.len())), "a chunkable key set whole");
        Self::put_locked(&mut self.lock(), partition, key, value.map(|v| Arc::new(Value::whole(v))));
    }

    /// Sets `key`, of a chunkable label: a large value is cut into chunks here, outside the locks.
    fn set_chunkable(&self, partition: &[u8], key: Vec<u8>, value: Option<Vec<u8>>) -> Result<(), MlsStorageError> {
        let previous = self.lock().cache.get(&key).cloned();
        // Never read in this process (OpenMLS reads a group's state before it writes it, so this is a new group or
        // a delete): the chunks stored under the key must be known, the write replaces them. Only its manifest is
        // read — a value with a chunk missing can still be overwritten or deleted.
        let stored = match previous {
            Some(_) => None,
            None => Some(self.stored_manifest(&key)?),
        };
        let value = value.map(|bytes| {
            let chunks = (bytes.len() >= CHUNKED_FROM).then(|| match previous.as_ref().and_then(Option::as_deref) {
                // The start that did not change keeps its chunks: it is not hashed again.
                Some(Value { bytes: old, chunks: Some(before) }) => {
                    chunks::split_reusing(&bytes, before, chunks::common_prefix(old, &bytes))
                }
                _ => chunks::split(&bytes),
            });
            Arc::new(Value { bytes, chunks })
        });
        let mut inner = self.lock();
        // What the writer knows of a key comes with its first entry in the cache (sealing happens under this lock).
        if let Some(hashes) = stored.filter(|h| !h.is_empty() && !inner.cache.contains_key(&key)) {
            self.writer.lock().manifests.insert(key.clone(), hashes);
        }
        Self::put_locked(&mut inner, partition, key, value);
        Ok(())
    }

    /// The chunks the manifest stored under `key` lists (none if the value is stored whole, or absent).
    fn stored_manifest(&self, key: &[u8]) -> Result<HashSet<[u8; 32]>, MlsStorageError> {
        let stored = self.store.get(MLS_TREE, key)?;
        Ok(stored
            .and_then(|v| chunks::parse_manifest(&v))
            .map(|(_, hashes)| hashes.into_iter().collect())
            .unwrap_or_default())
    }

    fn put_locked(inner: &mut Inner, partition: &[u8], key: Vec<u8>, value: Cached) {
        match inner.dirty.get_mut(partition) {
            Some(keys) => {
                keys.insert(key.clone());
            }
            None => {
                inner.dirty.insert(partition.to_vec(), BTreeSet::from([key.clone()]));
            }
        }
        inner.cache.insert(key, value);
    }

    /// Runs `f` on the current value of `key` (cache, then store). Neither the store's read nor `f` (decoding a
    /// value, megabytes for a big group's tree) runs under the lock, which every group of the member shares: a big
    /// group's operation runs at a lower priority ([`crate::offload`]) and must not hold up a small one's.
    fn with<R>(
        &self,
        key: &[u8],
        f: impl FnOnce(Option<&[u8]>) -> Result<R, MlsStorageError>,
    ) -> Result<R, MlsStorageError> {
        let value = self.cached(key)?;
        f(value.as_deref().map(|v| v.bytes.as_slice()))
    }

    /// The current value of `key` (cache, then store).
    fn cached(&self, key: &[u8]) -> Result<Cached, MlsStorageError> {
        loop {
            let (cached, evictions) = {
                let inner = self.lock();
                (inner.cache.get(key).cloned(), inner.evictions)
            };
            if let Some(value) = cached {
                return Ok(value);
            }
            let loaded = self.load(key);
            let mut inner = self.lock();
            // A write of the key meanwhile may have deleted chunks the read looked for: its value is newer.
            let loaded = match loaded {
                Err(_) if inner.cache.contains_key(key) => None,
                Err(_) if inner.evictions != evictions => continue,
                loaded => loaded?.map(Arc::new),
            };
            // A value set meanwhile is newer than the store's, and stays — and so does what the writer knows
            // of its chunks (sealing happens under this lock).
            if let Some(newer) = inner.cache.get(key) {
                return Ok(newer.clone());
            }
            // A value set meanwhile may also have been made durable and evicted: read again.
            if inner.evictions != evictions {
                continue;
            }
            if let Some(Value { chunks: Some(chunked), .. }) = loaded.as_deref() {
                self.writer.lock().manifests.insert(key.to_vec(), chunked.hashes.iter().copied().collect());
            }
            inner.cache.insert(key.to_vec(), loaded.clone());
            return Ok(loaded);
        }
    }

    /// The stored value of `key`, put back together from its chunks if it is chunked.
    fn load(&self, key: &[u8]) -> Result<Option<Value>, MlsStorageError> {
        let Some(stored) = self.store.get(MLS_TREE, key)? else { return Ok(None) };
        if !chunkable(key.get(self.prefix.len())) {
            return Ok(Some(Value::whole(stored)));
        }
        let Some((len, hashes)) = chunks::parse_manifest(&stored) else { return Ok(Some(Value::whole(stored))) };
        let corrupt = |message: String| MlsStorageError::Decode { what: "chunked value", message };
        let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0).min(hashes.len() * chunks::MAX));
        let mut ends = Vec::with_capacity(hashes.len());
        for hash in &hashes {
            let chunk = self
                .store
                .get(MLS_TREE, &chunk_key(key, self.prefix.len(), hash))?
                .ok_or_else(|| corrupt(format!("chunk {} missing", hex::encode(hash))))?;
            bytes.extend_from_slice(&chunk);
            ends.push(bytes.len());
        }
        if bytes.len() as u64 != len {
            return Err(corrupt(format!("{} bytes in its chunks, {len} in its manifest", bytes.len())));
        }
        Ok(Some(Value { bytes, chunks: Some(Chunked { ends, hashes }) }))
    }

    fn read<V: Entity<CURRENT_VERSION>>(&self, what: &'static str, key: &[u8]) -> Result<Option<V>, MlsStorageError> {
        self.with(key, |v| v.map(|bytes| decode(what, bytes)).transpose())
    }

    fn read_list<V: Entity<CURRENT_VERSION>>(&self, what: &'static str, key: &[u8]) -> Result<Vec<V>, MlsStorageError> {
        self.with(key, |v| match v {
            None => Ok(Vec::new()),
            Some(list) => items(what, list)?.into_iter().map(|item| decode(what, item)).collect(),
        })
    }

    /// Appends (`remove = false`) or removes the first equal item (`remove = true`) in a list value.
    fn edit_list(&self, partition: &[u8], key: Vec<u8>, item: &[u8], remove: bool) -> Result<(), MlsStorageError> {
        let current = self.with(&key, |v| Ok(v.map(<[u8]>::to_vec)))?;
        let mut list = Vec::new();
        let mut removed = false;
        if let Some(cur) = &current {
            for existing in items("list", cur)? {
                if remove && !removed && existing == item {
                    removed = true;
                    continue;
                }
                push_item(&mut list, existing)?;
            }
        }
        if !remove {
            push_item(&mut list, item)?;
        }
        self.set(partition, key, if list.is_empty() { None } else { Some(list) });
        Ok(())
    }

    fn write_group<G: Serialize, V: Serialize>(
        &self,
        label: u8,
        what: &'static str,
        group_id: &G,
        value: &V,
    ) -> Result<(), MlsStorageError> {
        let partition = Self::partition(group_id)?;
        let key = self.key(label, &partition);
        let value = encode(what, value)?;
        if chunkable(Some(&label)) {
            self.set_chunkable(&partition, key, Some(value))
        } else {
            self.set(&partition, key, Some(value));
            Ok(())
        }
    }

    fn read_group<G: Serialize, V: Entity<CURRENT_VERSION>>(
        &self,
        label: u8,
        what: &'static str,
        group_id: &G,
    ) -> Result<Option<V>, MlsStorageError> {
        let key = self.key(label, &Self::partition(group_id)?);
        self.read(what, &key)
    }

    fn delete_group<G: Serialize>(&self, label: u8, group_id: &G) -> Result<(), MlsStorageError> {
        let partition = Self::partition(group_id)?;
        let key = self.key(label, &partition);
        if chunkable(Some(&label)) {
            return self.set_chunkable(&partition, key, None);
        }
        self.set(&partition, key, None);
        Ok(())
    }

    fn write_global<K: Serialize, V: Serialize>(
        &self,
        label: u8,
        what: &'static str,
        key: &K,
        value: &V,
    ) -> Result<(), MlsStorageError> {
        let key = self.key(label, &encode_key(what, key)?);
        self.set(GLOBAL, key, Some(encode(what, value)?));
        Ok(())
    }

    fn read_global<K: Serialize, V: Entity<CURRENT_VERSION>>(
        &self,
        label: u8,
        what: &'static str,
        key: &K,
    ) -> Result<Option<V>, MlsStorageError> {
        let key = self.key(label, &encode_key(what, key)?);
        self.read(what, &key)
    }

    fn delete_global<K: Serialize>(&self, label: u8, what: &'static str, key: &K) -> Result<(), MlsStorageError> {
        let key = self.key(label, &encode_key(what, key)?);
        self.set(GLOBAL, key, None);
        Ok(())
    }

    fn epoch_key_pairs_key<G: Serialize, E: Serialize>(
        &self,
        group_id: &G,
        epoch: &E,
        leaf_index: u32,
    ) -> Result<(Vec<u8>, Vec<u8>), MlsStorageError> {
        let partition = Self::partition(group_id)?;
        let mut k = partition.clone();
        k.extend_from_slice(&encode_key("epoch", epoch)?);
        k.extend_from_slice(&leaf_index.to_be_bytes());
        Ok((partition, self.key(EPOCH_KEY_PAIRS, &k)))
    }

    /// Seals the dirty keys of the group whose partition is `partition` (see [`MlsStorage::partition`]) and of the
    /// global partition as one operation, and returns the handle that resolves when they are durable (see the
    /// module documentation: the hand-off to group commit happens when someone waits).
    pub fn submit(&self, partition: &[u8]) -> Durability {
        let mut inner = self.lock();
        let keys = Self::take_dirty(&mut inner, partition);
        self.seal(&mut inner, keys, |p| p == partition)
    }

    /// The dirty keys of `partition` and of the global partition, no longer dirty.
    fn take_dirty(inner: &mut Inner, partition: &[u8]) -> BTreeSet<Vec<u8>> {
        let mut keys = inner.dirty.remove(partition).unwrap_or_default();
        if let Some(global) = inner.dirty.remove(GLOBAL) {
            keys.extend(global);
        }
        keys
    }

    /// Seals `keys` — of the partitions for which `written` is true — with their cached values (called with the
    /// cache locked: operations seal in order). A closed group written after all (an object of it that was not the
    /// last one, a failed operation's leftovers) keeps its records in the cache until that write is durable
    /// too; closed groups whose state is durable leave it ([`MlsStorage::release_claim`]).
    fn seal(&self, inner: &mut Inner, keys: BTreeSet<Vec<u8>>, written: impl Fn(&[u8]) -> bool) -> Durability {
        if keys.is_empty() {
            // Nothing new, but the output may rest on state sealed before: wait for that too.
            let seq = self.writer.lock().sealed_seq;
            return if seq == 0 { Durability::ready() } else { self.ticket(seq) };
        }
        let cache = &inner.cache;
        let seq = self.writer.seal(keys.into_iter().map(|k| {
            let v = cache.get(&k).cloned().flatten();
            (k, v)
        }));
        for (p, sealed) in &mut inner.closed {
            if written(p) {
                *sealed = seq;
            }
        }
        self.evict_closed(inner);
        self.ticket(seq)
    }

    fn ticket(&self, seq: u64) -> Durability {
        Durability(vec![Ticket { writer: self.writer.clone(), seq }])
    }

    /// [`MlsStorage::submit`] for a group id.
    pub fn submit_group<G: Serialize>(&self, group_id: &G) -> Result<Durability, MlsStorageError> {
        Ok(self.submit(&Self::partition(group_id)?))
    }

    /// Submits the global partition only (after generating key packages or signature keys).
    pub fn submit_global(&self) -> Durability {
        self.submit(GLOBAL)
    }

    /// Seals every dirty key of every partition as one operation.
    pub fn submit_all(&self) -> Durability {
        let mut inner = self.lock();
        let dirty = std::mem::take(&mut inner.dirty);
        let partitions: BTreeSet<Vec<u8>> = dirty.keys().cloned().collect();
        let keys: BTreeSet<Vec<u8>> = dirty.into_values().flatten().collect();
        self.seal(&mut inner, keys, |p| partitions.contains(p))
    }

    /// Like [`MlsStorage::submit`], but resolved at once when the operation wrote nothing: for operations whose
    /// output does not rest on earlier state being durable (an encrypt under a durable reservation, see
    /// [`crate::write_behind`]).
    pub(crate) fn submit_if_dirty(&self, partition: &[u8]) -> Durability {
        let mut inner = self.lock();
        let keys = Self::take_dirty(&mut inner, partition);
        if keys.is_empty() { Durability::ready() } else { self.seal(&mut inner, keys, |p| p == partition) }
    }

    /// A handle on operation `seq` of this storage (one that [`Durability::seq`] returned).
    pub(crate) fn ticket_for(&self, seq: u64) -> Durability {
        self.ticket(seq)
    }

    /// While `on`, OpenMLS's writes of the message secrets of the group whose partition is `partition` are
    /// skipped: the cache keeps the last encoding, and the group's in-memory state is ahead of it until the next
    /// write that is not skipped ([`crate::write_behind`] decides when, and keeps that safe).
    pub(crate) fn defer_message_secrets(&self, partition: &[u8], on: bool) {
        let mut inner = self.lock();
        if on {
            inner.deferred.insert(partition.to_vec());
        } else {
            inner.deferred.remove(partition);
        }
    }

    /// Claims `partition` for a group object just opened (created, joined, loaded) and returns the claim: a group
    /// object whose claim is no longer the last one (the group was opened again, e.g. rejoined) must not write
    /// its state any more.
    pub(crate) fn claim(&self, partition: &[u8]) -> u64 {
        let mut inner = self.lock();
        inner.closed.retain(|(p, _)| p != partition);
        self.evict_closed(&mut inner);
        let next = inner.claims.get(partition).map_or(1, |c| c + 1);
        inner.claims.insert(partition.to_vec(), next);
        next
    }

    /// Whether the group object holding `claim` may still write `partition`'s state and send in it: its claim is
    /// the last one. (An older object never gets it back, even when the newer one is closed: its ratchet state is
    /// older than what the newer one may have used.)
    pub(crate) fn may_write(&self, partition: &[u8], claim: u64) -> bool {
        self.lock().claims.get(partition) == Some(&claim)
    }

    /// The group object holding `claim` is closed: what is remembered of its message secrets' encoding is dropped,
    /// and its records ([`GROUP_LABELS`]: the tree, message secrets and group state, O(N) each, and the small ones
    /// beside them) leave the cache once everything sealed until now, and whatever of the group is sealed later, is
    /// durable — the store then holds what the cache does, and a group opened again reads it there. That is checked
    /// by the member's later operations (a [`Self::claim`], a submit, a close), not by a timer. With thousands of
    /// portals woken once, the small records alone held tens of megabytes.
    pub(crate) fn release_claim(&self, partition: &[u8], claim: u64) {
        let mut inner = self.lock();
        if inner.claims.get(partition) == Some(&claim) {
            inner.past_epochs.remove(partition);
            let sealed = self.writer.lock().sealed_seq;
            inner.closed.push((partition.to_vec(), sealed));
        }
        self.evict_closed(&mut inner);
    }

    /// Takes the [`GROUP_LABELS`] records of closed groups out of the cache where what was sealed before they
    /// closed is durable (and nothing of theirs is dirty: a group is closed once, but its records may be written
    /// after).
    fn evict_closed(&self, inner: &mut Inner) {
        if inner.closed.is_empty() {
            return;
        }
        let durable = self.writer.durable_seq();
        let (done, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut inner.closed)
            .into_iter()
            .partition(|(p, seq)| *seq <= durable && !inner.dirty.contains_key(p));
        inner.closed = waiting;
        if !done.is_empty() {
            inner.evictions += 1;
        }
        for (partition, _) in done {
            for label in GROUP_LABELS {
                // What the writer knows of a value's chunks stays (32 bytes a chunk): a write that read the
                // value before it left may seal after.
                inner.cache.remove(&self.key(label, &partition));
            }
        }
    }

    /// The next encoding of the message secrets of the group whose partition is `partition` may leave its past
    /// epochs as stored: the group knows they did not change since (it only encrypted and decrypted in the
    /// current epoch). Applies to one write.
    pub(crate) fn reuse_past_epochs(&self, partition: &[u8], on: bool) {
        if let Some(s) = self.lock().past_epochs.get_mut(partition) {
            s.reuse = on;
        }
    }

    /// True if the message secrets of the group whose partition is `partition` were encoded (written, not
    /// skipped) since the last call.
    pub(crate) fn take_secrets_encoded(&self, partition: &[u8]) -> bool {
        self.lock().secrets_encoded.remove(partition)
    }

    /// Writes one of the engine's own records about a group, in the group's partition: it is sealed with that
    /// group's next operation, never with another group's.
    pub(crate) fn group_record_put<V: Serialize>(
        &self,
        partition: &[u8],
        name: &[u8],
        value: &V,
    ) -> Result<(), MlsStorageError> {
        let key = self.group_record_key(partition, name);
        self.set(partition, key, Some(encode("engine group record", value)?));
        Ok(())
    }

    /// Reads one of the engine's own records about a group.
    pub(crate) fn group_record_get<V: serde::de::DeserializeOwned>(
        &self,
        partition: &[u8],
        name: &[u8],
    ) -> Result<Option<V>, MlsStorageError> {
        let key = self.group_record_key(partition, name);
        self.with(&key, |v| v.map(|bytes| decode("engine group record", bytes)).transpose())
    }

    /// Deletes one of the engine's own records about a group.
    pub(crate) fn group_record_delete(&self, partition: &[u8], name: &[u8]) {
        let key = self.group_record_key(partition, name);
        self.set(partition, key, None);
    }

    fn group_record_key(&self, partition: &[u8], name: &[u8]) -> Vec<u8> {
        let mut k = Vec::with_capacity(partition.len() + 2 + name.len());
        k.extend_from_slice(&(partition.len().min(usize::from(u16::MAX)) as u16).to_be_bytes());
        k.extend_from_slice(partition);
        k.extend_from_slice(name);
        self.key(GROUP_RECORD, &k)
    }

    /// Writes one of the engine's own records (global partition; submitted with the next batch).
    pub fn app_put<V: Serialize>(&self, name: &[u8], value: &V) -> Result<(), MlsStorageError> {
        let key = self.key(APP, name);
        self.set(GLOBAL, key, Some(encode("engine record", value)?));
        Ok(())
    }

    /// Reads one of the engine's own records.
    pub fn app_get<V: serde::de::DeserializeOwned>(&self, name: &[u8]) -> Result<Option<V>, MlsStorageError> {
        let key = self.key(APP, name);
        self.with(&key, |v| v.map(|bytes| decode("engine record", bytes)).transpose())
    }

    /// Deletes one of the engine's own records.
    pub fn app_delete(&self, name: &[u8]) {
        let key = self.key(APP, name);
        self.set(GLOBAL, key, None);
    }

    /// Number of bytes of state cached (keys and values), for the memory-per-group figures.
    pub fn cached_bytes(&self) -> usize {
        let inner = self.lock();
        inner.cache.iter().map(|(k, v)| k.len() + v.as_ref().map_or(0, |v| v.bytes.len())).sum()
    }
}

impl Drop for MlsStorage {
    fn drop(&mut self) {
        // Hand off what is sealed (without waiting): a clean shutdown loses nothing that was not in flight.
        let mut st = self.writer.lock();
        self.writer.hand_off(&mut st);
    }
}

impl StorageProvider<CURRENT_VERSION> for MlsStorage {
    type Error = MlsStorageError;

    fn write_mls_join_config<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        MlsGroupJoinConfig: traits::MlsGroupJoinConfig<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        config: &MlsGroupJoinConfig,
    ) -> Result<(), Self::Error> {
        self.write_group(JOIN_CONFIG, "join config", group_id, config)
    }

    fn append_own_leaf_node<GroupId: traits::GroupId<CURRENT_VERSION>, LeafNode: traits::LeafNode<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
        leaf_node: &LeafNode,
    ) -> Result<(), Self::Error> {
        let partition = Self::partition(group_id)?;
        let key = self.key(OWN_LEAF_NODES, &partition);
        self.edit_list(&partition, key, &encode("own leaf node", leaf_node)?, false)
    }

    fn queue_proposal<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        ProposalRef: traits::ProposalRef<CURRENT_VERSION>,
        QueuedProposal: traits::QueuedProposal<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        proposal_ref: &ProposalRef,
        proposal: &QueuedProposal,
    ) -> Result<(), Self::Error> {
        let partition = Self::partition(group_id)?;
        let reference = encode_key("proposal ref", proposal_ref)?;
        let mut k = partition.clone();
        k.extend_from_slice(&reference);
        self.set(&partition, self.key(QUEUED_PROPOSAL, &k), Some(encode("queued proposal", proposal)?));
        let list_key = self.key(PROPOSAL_QUEUE_REFS, &partition);
        self.edit_list(&partition, list_key, &reference, false)
    }

    fn write_tree<GroupId: traits::GroupId<CURRENT_VERSION>, TreeSync: traits::TreeSync<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
        tree: &TreeSync,
    ) -> Result<(), Self::Error> {
        self.write_group(TREE, "tree", group_id, tree)
    }

    fn write_interim_transcript_hash<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        InterimTranscriptHash: traits::InterimTranscriptHash<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        interim_transcript_hash: &InterimTranscriptHash,
    ) -> Result<(), Self::Error> {
        self.write_group(INTERIM_TRANSCRIPT_HASH, "interim transcript hash", group_id, interim_transcript_hash)
    }

    fn write_context<GroupId: traits::GroupId<CURRENT_VERSION>, GroupContext: traits::GroupContext<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
        group_context: &GroupContext,
    ) -> Result<(), Self::Error> {
        self.write_group(GROUP_CONTEXT, "group context", group_id, group_context)
    }

    fn write_confirmation_tag<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        ConfirmationTag: traits::ConfirmationTag<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        confirmation_tag: &ConfirmationTag,
    ) -> Result<(), Self::Error> {
        self.write_group(CONFIRMATION_TAG, "confirmation tag", group_id, confirmation_tag)
    }

    fn write_group_state<GroupState: traits::GroupState<CURRENT_VERSION>, GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
        group_state: &GroupState,
    ) -> Result<(), Self::Error> {
        self.write_group(GROUP_STATE, "group state", group_id, group_state)
    }

    fn write_message_secrets<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        MessageSecrets: traits::MessageSecrets<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        message_secrets: &MessageSecrets,
    ) -> Result<(), Self::Error> {
        let partition = Self::partition(group_id)?;
        let mut last = {
            let mut inner = self.lock();
            if inner.deferred.contains(&partition) {
                return Ok(());
            }
            inner.secrets_encoded.insert(partition.clone());
            inner.past_epochs.remove(&partition).unwrap_or_default()
        };
        // The past epochs' secrets (with their member lists: O(N) each) go under a key of their own, encoded and
        // written only when they may have changed (the group says when they did not), and then only if they did;
        // the rest is small. The buffer starts a little above the last encoding's size.
        let mut value = Vec::with_capacity(last.len + last.len / 16 + 64);
        value.push(SECRETS_CUT);
        value.extend_from_slice(&[0; 4]);
        let reuse = std::mem::take(&mut last.reuse) && last.past_stored;
        let encoded =
            super::cbor::to_vec_cutting(message_secrets, &mut value, "MessageSecretsStore", "past_epoch_trees", reuse);
        let encode_error = |message: String| MlsStorageError::Encode { what: "message secrets", message };
        let cut = match encoded {
            Ok(Some(cut)) => cut,
            Ok(None) => return Err(encode_error("OpenMLS's message secrets have no field past_epoch_trees".into())),
            Err(e) => return Err(encode_error(e.to_string())),
        };
        // The offset counts from the start of the CBOR, after the 5-byte header.
        let at = u32::try_from(cut.at).map_err(|_| encode_error("message secrets over 4 GiB".into()))?;
        value[1..5].copy_from_slice(&at.to_be_bytes());
        last.len = value.len();
        let slack = last.len / 16 + 64;
        if value.capacity() > last.len + slack {
            value.shrink_to(last.len + slack);
        }
        if let Some(past) = cut.field {
            let key = self.key(PAST_EPOCHS, &partition);
            // Compared with the current value (cache, then store): a group opened again does not rewrite them.
            let unchanged = self.cached(&key)?.as_deref().is_some_and(|v| v.bytes == past);
            if !unchanged {
                self.set_chunkable(&partition, key, Some(past))?;
            }
            last.past_stored = true;
        }
        self.lock().past_epochs.insert(partition.clone(), last);
        let key = self.key(MESSAGE_SECRETS, &partition);
        self.set_chunkable(&partition, key, Some(value))
    }

    fn write_resumption_psk_store<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        ResumptionPskStore: traits::ResumptionPskStore<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        resumption_psk_store: &ResumptionPskStore,
    ) -> Result<(), Self::Error> {
        self.write_group(RESUMPTION_PSK_STORE, "resumption psk store", group_id, resumption_psk_store)
    }

    fn write_own_leaf_index<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        LeafNodeIndex: traits::LeafNodeIndex<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        own_leaf_index: &LeafNodeIndex,
    ) -> Result<(), Self::Error> {
        self.write_group(OWN_LEAF_INDEX, "own leaf index", group_id, own_leaf_index)
    }

    fn write_group_epoch_secrets<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        GroupEpochSecrets: traits::GroupEpochSecrets<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        group_epoch_secrets: &GroupEpochSecrets,
    ) -> Result<(), Self::Error> {
        self.write_group(EPOCH_SECRETS, "epoch secrets", group_id, group_epoch_secrets)
    }

    fn write_signature_key_pair<
        SignaturePublicKey: traits::SignaturePublicKey<CURRENT_VERSION>,
        SignatureKeyPair: traits::SignatureKeyPair<CURRENT_VERSION>,
    >(
        &self,
        public_key: &SignaturePublicKey,
        signature_key_pair: &SignatureKeyPair,
    ) -> Result<(), Self::Error> {
        self.write_global(SIGNATURE_KEY_PAIR, "signature key pair", public_key, signature_key_pair)
    }

    fn write_encryption_key_pair<
        EncryptionKey: traits::EncryptionKey<CURRENT_VERSION>,
        HpkeKeyPair: traits::HpkeKeyPair<CURRENT_VERSION>,
    >(
        &self,
        public_key: &EncryptionKey,
        key_pair: &HpkeKeyPair,
    ) -> Result<(), Self::Error> {
        self.write_global(ENCRYPTION_KEY_PAIR, "encryption key pair", public_key, key_pair)
    }

    fn write_encryption_epoch_key_pairs<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        EpochKey: traits::EpochKey<CURRENT_VERSION>,
        HpkeKeyPair: traits::HpkeKeyPair<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        epoch: &EpochKey,
        leaf_index: u32,
        key_pairs: &[HpkeKeyPair],
    ) -> Result<(), Self::Error> {
        let (partition, key) = self.epoch_key_pairs_key(group_id, epoch, leaf_index)?;
        let mut list = Vec::new();
        for kp in key_pairs {
            push_item(&mut list, &encode("epoch key pair", kp)?)?;
        }
        self.set(&partition, key, Some(list));
        Ok(())
    }

    fn write_key_package<
        HashReference: traits::HashReference<CURRENT_VERSION>,
        KeyPackage: traits::KeyPackage<CURRENT_VERSION>,
    >(
        &self,
        hash_ref: &HashReference,
        key_package: &KeyPackage,
    ) -> Result<(), Self::Error> {
        self.write_global(KEY_PACKAGE, "key package", hash_ref, key_package)
    }

    fn write_psk<PskId: traits::PskId<CURRENT_VERSION>, PskBundle: traits::PskBundle<CURRENT_VERSION>>(
        &self,
        psk_id: &PskId,
        psk: &PskBundle,
    ) -> Result<(), Self::Error> {
        self.write_global(PSK, "psk", psk_id, psk)
    }

    fn mls_group_join_config<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        MlsGroupJoinConfig: traits::MlsGroupJoinConfig<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<MlsGroupJoinConfig>, Self::Error> {
        self.read_group(JOIN_CONFIG, "join config", group_id)
    }

    fn own_leaf_nodes<GroupId: traits::GroupId<CURRENT_VERSION>, LeafNode: traits::LeafNode<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<Vec<LeafNode>, Self::Error> {
        let key = self.key(OWN_LEAF_NODES, &Self::partition(group_id)?);
        self.read_list("own leaf nodes", &key)
    }

    fn queued_proposal_refs<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        ProposalRef: traits::ProposalRef<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Vec<ProposalRef>, Self::Error> {
        let key = self.key(PROPOSAL_QUEUE_REFS, &Self::partition(group_id)?);
        self.read_list("proposal refs", &key)
    }

    fn queued_proposals<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        ProposalRef: traits::ProposalRef<CURRENT_VERSION>,
        QueuedProposal: traits::QueuedProposal<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Vec<(ProposalRef, QueuedProposal)>, Self::Error> {
        let partition = Self::partition(group_id)?;
        let refs: Vec<ProposalRef> = self.queued_proposal_refs(group_id)?;
        let mut out = Vec::with_capacity(refs.len());
        for r in refs {
            let mut k = partition.clone();
            k.extend_from_slice(&encode_key("proposal ref", &r)?);
            let key = self.key(QUEUED_PROPOSAL, &k);
            if let Some(p) = self.read("queued proposal", &key)? {
                out.push((r, p));
            }
        }
        Ok(out)
    }

    fn tree<GroupId: traits::GroupId<CURRENT_VERSION>, TreeSync: traits::TreeSync<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<TreeSync>, Self::Error> {
        self.read_group(TREE, "tree", group_id)
    }

    fn group_context<GroupId: traits::GroupId<CURRENT_VERSION>, GroupContext: traits::GroupContext<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<GroupContext>, Self::Error> {
        self.read_group(GROUP_CONTEXT, "group context", group_id)
    }

    fn interim_transcript_hash<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        InterimTranscriptHash: traits::InterimTranscriptHash<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<InterimTranscriptHash>, Self::Error> {
        self.read_group(INTERIM_TRANSCRIPT_HASH, "interim transcript hash", group_id)
    }

    fn confirmation_tag<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        ConfirmationTag: traits::ConfirmationTag<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<ConfirmationTag>, Self::Error> {
        self.read_group(CONFIRMATION_TAG, "confirmation tag", group_id)
    }

    fn group_state<GroupState: traits::GroupState<CURRENT_VERSION>, GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<GroupState>, Self::Error> {
        self.read_group(GROUP_STATE, "group state", group_id)
    }

    fn message_secrets<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        MessageSecrets: traits::MessageSecrets<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<MessageSecrets>, Self::Error> {
        let partition = Self::partition(group_id)?;
        let key = self.key(MESSAGE_SECRETS, &partition);
        let Some(value) = self.cached(&key)? else { return Ok(None) };
        let bytes = value.bytes.as_slice();
        if bytes.first() != Some(&SECRETS_CUT) {
            // Written whole, before the past epochs were kept apart.
            return decode("message secrets", bytes).map(Some);
        }
        let corrupt = |message: &str| MlsStorageError::Decode { what: "message secrets", message: message.into() };
        let (at, rest) = match bytes.get(1..5).zip(bytes.get(5..)) {
            Some((at, rest)) => (u32::from_be_bytes([at[0], at[1], at[2], at[3]]) as usize, rest),
            None => return Err(corrupt("shorter than its header")),
        };
        if at > rest.len() {
            return Err(corrupt("the past epochs' offset is beyond the record"));
        }
        let past = self.cached(&self.key(PAST_EPOCHS, &partition))?;
        let past = past.as_deref().ok_or_else(|| corrupt("the past epochs' record is missing"))?;
        let whole = [&rest[..at], past.bytes.as_slice(), &rest[at..]].concat();
        decode("message secrets", &whole).map(Some)
    }

    fn resumption_psk_store<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        ResumptionPskStore: traits::ResumptionPskStore<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<ResumptionPskStore>, Self::Error> {
        self.read_group(RESUMPTION_PSK_STORE, "resumption psk store", group_id)
    }

    fn own_leaf_index<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        LeafNodeIndex: traits::LeafNodeIndex<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<LeafNodeIndex>, Self::Error> {
        self.read_group(OWN_LEAF_INDEX, "own leaf index", group_id)
    }

    fn group_epoch_secrets<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        GroupEpochSecrets: traits::GroupEpochSecrets<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<GroupEpochSecrets>, Self::Error> {
        self.read_group(EPOCH_SECRETS, "epoch secrets", group_id)
    }

    fn signature_key_pair<
        SignaturePublicKey: traits::SignaturePublicKey<CURRENT_VERSION>,
        SignatureKeyPair: traits::SignatureKeyPair<CURRENT_VERSION>,
    >(
        &self,
        public_key: &SignaturePublicKey,
    ) -> Result<Option<SignatureKeyPair>, Self::Error> {
        self.read_global(SIGNATURE_KEY_PAIR, "signature key pair", public_key)
    }

    fn encryption_key_pair<
        HpkeKeyPair: traits::HpkeKeyPair<CURRENT_VERSION>,
        EncryptionKey: traits::EncryptionKey<CURRENT_VERSION>,
    >(
        &self,
        public_key: &EncryptionKey,
    ) -> Result<Option<HpkeKeyPair>, Self::Error> {
        self.read_global(ENCRYPTION_KEY_PAIR, "encryption key pair", public_key)
    }

    fn encryption_epoch_key_pairs<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        EpochKey: traits::EpochKey<CURRENT_VERSION>,
        HpkeKeyPair: traits::HpkeKeyPair<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        epoch: &EpochKey,
        leaf_index: u32,
    ) -> Result<Vec<HpkeKeyPair>, Self::Error> {
        let (_, key) = self.epoch_key_pairs_key(group_id, epoch, leaf_index)?;
        self.read_list("epoch key pairs", &key)
    }

    fn key_package<
        KeyPackageRef: traits::HashReference<CURRENT_VERSION>,
        KeyPackage: traits::KeyPackage<CURRENT_VERSION>,
    >(
        &self,
        hash_ref: &KeyPackageRef,
    ) -> Result<Option<KeyPackage>, Self::Error> {
        self.read_global(KEY_PACKAGE, "key package", hash_ref)
    }

    fn psk<PskBundle: traits::PskBundle<CURRENT_VERSION>, PskId: traits::PskId<CURRENT_VERSION>>(
        &self,
        psk_id: &PskId,
    ) -> Result<Option<PskBundle>, Self::Error> {
        self.read_global(PSK, "psk", psk_id)
    }

    fn remove_proposal<GroupId: traits::GroupId<CURRENT_VERSION>, ProposalRef: traits::ProposalRef<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
        proposal_ref: &ProposalRef,
    ) -> Result<(), Self::Error> {
        let partition = Self::partition(group_id)?;
        let reference = encode_key("proposal ref", proposal_ref)?;
        let list_key = self.key(PROPOSAL_QUEUE_REFS, &partition);
        self.edit_list(&partition, list_key, &reference, true)?;
        let mut k = partition.clone();
        k.extend_from_slice(&reference);
        self.set(&partition, self.key(QUEUED_PROPOSAL, &k), None);
        Ok(())
    }

    fn delete_own_leaf_nodes<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<(), Self::Error> {
        self.delete_group(OWN_LEAF_NODES, group_id)
    }

    fn delete_group_config<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<(), Self::Error> {
        self.delete_group(JOIN_CONFIG, group_id)
    }

    fn delete_tree<GroupId: traits::GroupId<CURRENT_VERSION>>(&self, group_id: &GroupId) -> Result<(), Self::Error> {
        self.delete_group(TREE, group_id)
    }

    fn delete_confirmation_tag<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<(), Self::Error> {
        self.delete_group(CONFIRMATION_TAG, group_id)
    }

    fn delete_group_state<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<(), Self::Error> {
        self.delete_group(GROUP_STATE, group_id)
    }

    fn delete_context<GroupId: traits::GroupId<CURRENT_VERSION>>(&self, group_id: &GroupId) -> Result<(), Self::Error> {
        self.delete_group(GROUP_CONTEXT, group_id)
    }

    fn delete_interim_transcript_hash<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<(), Self::Error> {
        self.delete_group(INTERIM_TRANSCRIPT_HASH, group_id)
    }

    fn delete_message_secrets<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<(), Self::Error> {
        self.lock().past_epochs.remove(&Self::partition(group_id)?);
        self.delete_group(PAST_EPOCHS, group_id)?;
        self.delete_group(MESSAGE_SECRETS, group_id)
    }

    fn delete_all_resumption_psk_secrets<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<(), Self::Error> {
        self.delete_group(RESUMPTION_PSK_STORE, group_id)
    }

    fn delete_own_leaf_index<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<(), Self::Error> {
        self.delete_group(OWN_LEAF_INDEX, group_id)
    }

    fn delete_group_epoch_secrets<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<(), Self::Error> {
        self.delete_group(EPOCH_SECRETS, group_id)
    }

    fn clear_proposal_queue<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        ProposalRef: traits::ProposalRef<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<(), Self::Error> {
        let partition = Self::partition(group_id)?;
        let refs: Vec<ProposalRef> = self.queued_proposal_refs(group_id)?;
        for r in refs {
            let mut k = partition.clone();
            k.extend_from_slice(&encode_key("proposal ref", &r)?);
            self.set(&partition, self.key(QUEUED_PROPOSAL, &k), None);
        }
        self.delete_group(PROPOSAL_QUEUE_REFS, group_id)
    }

    fn delete_signature_key_pair<SignaturePublicKey: traits::SignaturePublicKey<CURRENT_VERSION>>(
        &self,
        public_key: &SignaturePublicKey,
    ) -> Result<(), Self::Error> {
        self.delete_global(SIGNATURE_KEY_PAIR, "signature public key", public_key)
    }

    fn delete_encryption_key_pair<EncryptionKey: traits::EncryptionKey<CURRENT_VERSION>>(
        &self,
        public_key: &EncryptionKey,
    ) -> Result<(), Self::Error> {
        self.delete_global(ENCRYPTION_KEY_PAIR, "encryption key", public_key)
    }

    fn delete_encryption_epoch_key_pairs<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        EpochKey: traits::EpochKey<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        epoch: &EpochKey,
        leaf_index: u32,
    ) -> Result<(), Self::Error> {
        let (partition, key) = self.epoch_key_pairs_key(group_id, epoch, leaf_index)?;
        self.set(&partition, key, None);
        Ok(())
    }

    fn delete_key_package<KeyPackageRef: traits::HashReference<CURRENT_VERSION>>(
        &self,
        hash_ref: &KeyPackageRef,
    ) -> Result<(), Self::Error> {
        self.delete_global(KEY_PACKAGE, "key package ref", hash_ref)
    }

    fn delete_psk<PskKey: traits::PskId<CURRENT_VERSION>>(&self, psk_id: &PskKey) -> Result<(), Self::Error> {
        self.delete_global(PSK, "psk id", psk_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mimi_store::{CommitConfig, Entries, KvStore, Op};
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    /// A backend in memory that counts its writes and can be told to fail them.
    #[derive(Default)]
    struct Counting {
        writes: AtomicUsize,
        bytes_put: AtomicUsize,
        fail: AtomicBool,
        data: Mutex<BTreeMap<Vec<u8>, Vec<u8>>>,
    }

    impl KvStore for Counting {
        fn backend(&self) -> &'static str {
            "counting"
        }
        fn get(&self, _: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
            Ok(self.data.lock().expect("lock").get(key).cloned())
        }
        fn scan_prefix(&self, _: &str, prefix: &[u8]) -> Result<Entries, StoreError> {
            let data = self.data.lock().expect("lock");
            Ok(data.iter().filter(|(k, _)| k.starts_with(prefix)).map(|(k, v)| (k.clone(), v.clone())).collect())
        }
        fn write(&self, batches: &[Batch]) -> Result<(), StoreError> {
            if self.fail.load(Ordering::SeqCst) {
                return Err(StoreError::Corrupt { tree: "test".into(), message: "disk on fire".into() });
            }
            self.writes.fetch_add(1, Ordering::SeqCst);
            let mut data = self.data.lock().expect("lock");
            for op in batches.iter().flat_map(|b| &b.ops) {
                match op {
                    Op::Put { key, value, .. } => {
                        self.bytes_put.fetch_add(value.len(), Ordering::SeqCst);
                        data.insert(key.clone(), value.clone())
                    }
                    Op::Delete { key, .. } => data.remove(key),
                };
            }
            Ok(())
        }
        fn flush(&self) -> Result<(), StoreError> {
            Ok(())
        }
        fn trees(&self) -> Result<Vec<String>, StoreError> {
            Ok(Vec::new())
        }
    }

    fn storage() -> (Arc<Counting>, MlsStorage) {
        let kv = Arc::new(Counting::default());
        let store = Store::new(kv.clone(), CommitConfig::default());
        (kv, MlsStorage::new(store, "test").expect("storage"))
    }

    /// One "operation": writes record `name` = `value` and seals it.
    fn op(s: &MlsStorage, name: &str, value: u32) -> Durability {
        s.app_put(name.as_bytes(), &value).expect("put");
        s.submit_global()
    }

    fn stored(kv: &Counting, s: &MlsStorage, name: &str) -> Option<u32> {
        let bytes = kv.data.lock().expect("lock").get(&s.key(APP, name.as_bytes())).cloned()?;
        Some(decode("test", &bytes).expect("decode"))
    }

    #[test]
    fn a_burst_of_operations_is_one_batch_handed_off_by_the_first_wait() {
        let (kv, s) = storage();
        let handles: Vec<Durability> = (0..10).map(|i| op(&s, &format!("k{i}"), i)).collect();
        // Sealing makes no write and wakes nobody.
        assert_eq!(kv.writes.load(Ordering::SeqCst), 0);
        let mut handles = handles.into_iter().rev();
        handles.next().expect("last").wait_blocking().expect("durable");
        assert_eq!(kv.writes.load(Ordering::SeqCst), 1, "ten operations, one batch");
        for i in 0..10 {
            assert_eq!(stored(&kv, &s, &format!("k{i}")), Some(i));
        }
        // The earlier handles are durable too, without another write.
        for h in handles {
            h.wait_blocking().expect("durable");
        }
        assert_eq!(kv.writes.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_key_rewritten_by_several_operations_is_written_once_with_its_last_value() {
        let (kv, s) = storage();
        let first = op(&s, "secrets", 1);
        let second = op(&s, "secrets", 2);
        second.wait_blocking().expect("durable");
        first.wait_blocking().expect("durable");
        assert_eq!(stored(&kv, &s, "secrets"), Some(2));
        assert_eq!(kv.writes.load(Ordering::SeqCst), 1);
        // Later operations make later batches.
        op(&s, "secrets", 3).wait_blocking().expect("durable");
        assert_eq!(stored(&kv, &s, "secrets"), Some(3));
        assert_eq!(kv.writes.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn after_a_failed_batch_every_later_wait_fails() {
        let (kv, s) = storage();
        kv.fail.store(true, Ordering::SeqCst);
        assert!(op(&s, "a", 1).wait_blocking().is_err());
        kv.fail.store(false, Ordering::SeqCst);
        // The disk lacks "a": state sealed after it builds on it and must not be reported durable.
        assert!(op(&s, "b", 2).wait_blocking().is_err());
    }

    #[test]
    fn async_and_blocking_waiters_share_one_hand_off() {
        let (kv, s) = storage();
        let a = op(&s, "a", 1);
        let b = op(&s, "b", 2);
        let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        rt.block_on(b.wait()).expect("durable");
        a.wait_blocking().expect("durable");
        assert_eq!(kv.writes.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn dropping_the_storage_hands_off_what_nobody_waited_for() {
        let (kv, s) = storage();
        let unwaited = op(&s, "a", 7);
        drop(unwaited);
        assert_eq!(kv.writes.load(Ordering::SeqCst), 0);
        let key = s.key(APP, b"a");
        drop(s);
        // The store (and its committer) closed with the storage: the batch was written before it stopped.
        assert!(kv.data.lock().expect("lock").contains_key(&key));
    }

    /// `len` pseudo-random bytes, the same for the same seed.
    fn noise(len: usize, seed: u64) -> Vec<u8> {
        use rand::{RngCore as _, SeedableRng as _};
        let mut bytes = vec![0; len];
        rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut bytes);
        bytes
    }

    const GROUP: &[u8] = b"big group";

    /// Writes the group's tree as `value` (a CBOR byte string) and waits until it is durable.
    fn write_tree(s: &MlsStorage, value: &[u8]) {
        s.write_group(TREE, "tree", &GROUP, &value).expect("write");
        s.submit_group(&GROUP).expect("submit").wait_blocking().expect("durable");
    }

    fn tree_key(s: &MlsStorage) -> Vec<u8> {
        s.key(TREE, &MlsStorage::partition(&GROUP).expect("partition"))
    }

    /// The group's tree as a fresh storage on the same store reads it.
    fn reread_tree(kv: &Arc<Counting>, s: &MlsStorage) -> Option<Vec<u8>> {
        let again = MlsStorage::new(Store::new(kv.clone(), CommitConfig::default()), "test").expect("storage");
        again.with(&tree_key(s), |v| Ok(v.map(<[u8]>::to_vec))).expect("read")
    }

    /// The chunk keys in the store, and the hashes the tree's manifest lists (none if it is stored whole).
    fn chunks_stored(kv: &Counting, s: &MlsStorage) -> (BTreeSet<Vec<u8>>, BTreeSet<Vec<u8>>) {
        let data = kv.data.lock().expect("lock");
        let mut prefix = s.prefix.clone();
        prefix.push(CHUNK);
        let stored = data.keys().filter(|k| k.starts_with(&prefix)).cloned().collect();
        let listed = data
            .get(&tree_key(s))
            .and_then(|m| chunks::parse_manifest(m))
            .map(|(_, hashes)| hashes.iter().map(|h| chunk_key(&tree_key(s), s.prefix.len(), h)).collect())
            .unwrap_or_default();
        (stored, listed)
    }

    /// A big tree is stored as a manifest and its chunks; rewritten after a small change, it writes a few chunks,
    /// not the whole; a chunk it no longer has is deleted, and so are all of them when the tree becomes small
    /// again or is deleted. Read back by a fresh storage, it is the value written, every time.
    #[test]
    fn a_big_value_is_stored_in_chunks_and_a_small_change_writes_few() {
        let (kv, s) = storage();
        let mut value = noise(1 << 20, 9);
        write_tree(&s, &value);
        let encoded = encode("tree", &value).expect("encode");
        assert_eq!(reread_tree(&kv, &s), Some(encoded.clone()));
        let (stored, listed) = chunks_stored(&kv, &s);
        assert!(listed.len() > 16, "{} chunks", listed.len());
        assert_eq!(stored, listed);
        let first = kv.bytes_put.swap(0, Ordering::SeqCst);
        assert!(first > 1 << 20, "{first} bytes written");

        // A few bytes changed in the middle, as a commit changes a path of the tree.
        value[600_000..600_040].copy_from_slice(&[7; 40]);
        write_tree(&s, &value);
        assert_eq!(reread_tree(&kv, &s), Some(encode("tree", &value).expect("encode")));
        let (stored, listed) = chunks_stored(&kv, &s);
        assert_eq!(stored, listed, "the chunk the change replaced is gone");
        let second = kv.bytes_put.swap(0, Ordering::SeqCst);
        assert!(second < 3 * chunks::MAX, "{second} bytes written for a change of 40");
        let report = check_chunks(kv.as_ref()).expect("check");
        assert_eq!((report.manifests, report.chunks as usize, report.problems), (1, listed.len(), vec![]));

        // Small again: stored whole, no chunk left; then deleted.
        write_tree(&s, &[1, 2, 3]);
        assert_eq!(reread_tree(&kv, &s), Some(encode("tree", &[1u8, 2, 3][..]).expect("encode")));
        assert_eq!(chunks_stored(&kv, &s), (BTreeSet::new(), BTreeSet::new()));
        write_tree(&s, &value);
        assert!(!chunks_stored(&kv, &s).0.is_empty());
        s.delete_group(TREE, &GROUP).expect("delete");
        s.submit_group(&GROUP).expect("submit").wait_blocking().expect("durable");
        assert_eq!(reread_tree(&kv, &s), None);
        assert_eq!(chunks_stored(&kv, &s), (BTreeSet::new(), BTreeSet::new()));
    }

    /// After a restart, the first write of a chunked value replaces the chunks that are stored (it learns them by
    /// reading the value, which OpenMLS does anyway); a value stored whole by an older build is read and then
    /// chunked.
    #[test]
    fn chunks_stored_before_a_restart_are_replaced_and_whole_values_still_read() {
        let (kv, s) = storage();
        let value = noise(1 << 20, 3);
        write_tree(&s, &value);
        drop(s);
        let s = MlsStorage::new(Store::new(kv.clone(), CommitConfig::default()), "test").expect("storage");
        // Written without being read first: the stored chunks are found all the same.
        write_tree(&s, &noise(1 << 20, 4));
        let (stored, listed) = chunks_stored(&kv, &s);
        assert_eq!(stored, listed, "the first value's chunks are gone");

        // A value stored whole, as before chunking.
        drop(s);
        let s = MlsStorage::new(Store::new(kv.clone(), CommitConfig::default()), "test").expect("storage");
        let whole = encode("tree", &value).expect("encode");
        s.delete_group(TREE, &GROUP).expect("delete");
        s.submit_group(&GROUP).expect("submit").wait_blocking().expect("durable");
        kv.data.lock().expect("lock").insert(tree_key(&s), whole.clone());
        drop(s);
        let s = MlsStorage::new(Store::new(kv.clone(), CommitConfig::default()), "test").expect("storage");
        assert_eq!(reread_tree(&kv, &s), Some(whole));
        write_tree(&s, &value);
        let (stored, listed) = chunks_stored(&kv, &s);
        assert!(!listed.is_empty());
        assert_eq!(stored, listed);
        assert_eq!(reread_tree(&kv, &s), Some(encode("tree", &value).expect("encode")));
    }

    /// A chunk missing from the store is a clear error, not a value with a hole.
    #[test]
    fn a_missing_chunk_is_reported() {
        let (kv, s) = storage();
        write_tree(&s, &noise(1 << 20, 5));
        let (stored, _) = chunks_stored(&kv, &s);
        let victim = stored.into_iter().nth(3).expect("a chunk");
        kv.data.lock().expect("lock").remove(&victim);
        let again = MlsStorage::new(Store::new(kv.clone(), CommitConfig::default()), "test").expect("storage");
        let err = again.with(&tree_key(&s), |_| Ok(())).expect_err("a chunk is missing");
        assert!(err.to_string().contains("missing"), "{err}");
        // `store check` says which, and a chunk nobody lists.
        kv.data.lock().expect("lock").insert(chunk_key(&tree_key(&s), s.prefix.len(), &[7; 32]), vec![1]);
        let problems = check_chunks(kv.as_ref()).expect("check").problems;
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems.iter().any(|p| p.contains(&hex::encode(&victim)) && p.ends_with("is missing")));
        assert!(problems.iter().any(|p| p.contains(&hex::encode([7; 32])) && p.ends_with("no manifest lists")));

        // The value can still be deleted (by a storage that never read it): its other chunks go with it.
        kv.data.lock().expect("lock").remove(&chunk_key(&tree_key(&s), s.prefix.len(), &[7; 32]));
        let again = MlsStorage::new(Store::new(kv.clone(), CommitConfig::default()), "test").expect("storage");
        again.delete_group(TREE, &GROUP).expect("delete");
        again.submit_group(&GROUP).expect("submit").wait_blocking().expect("durable");
        assert_eq!(chunks_stored(&kv, &s), (BTreeSet::new(), BTreeSet::new()));
        assert!(check_chunks(kv.as_ref()).expect("check").problems.is_empty());
    }

    /// A closed group's tree and small records leave the cache once what was sealed before it closed is durable,
    /// and are read back from the store; a group opened again before that keeps them.
    #[test]
    fn a_closed_groups_values_leave_the_cache_once_durable() {
        let (_kv, s) = storage();
        let partition = MlsStorage::partition(&GROUP).expect("partition");
        let cached = |s: &MlsStorage| s.lock().cache.contains_key(&tree_key(s));
        let context_key = s.key(GROUP_CONTEXT, &partition);
        let context_cached = |s: &MlsStorage| s.lock().cache.contains_key(&context_key);
        let claim = s.claim(&partition);
        let value = noise(1 << 20, 21);
        s.write_group(TREE, "tree", &GROUP, &value).expect("write");
        s.write_group(GROUP_CONTEXT, "context", &GROUP, &vec![7u8; 40]).expect("write");
        let sealed = s.submit_group(&GROUP).expect("submit");
        let open = s.cached_bytes();
        s.release_claim(&partition, claim);
        assert!(cached(&s) && context_cached(&s), "sealed, not durable: kept");
        sealed.wait_blocking().expect("durable");
        op(&s, "later", 1).wait_blocking().expect("durable");
        assert!(!cached(&s), "durable: gone");
        assert!(!context_cached(&s), "the small records too");
        let read = s.with(&context_key, |v| Ok(v.map(<[u8]>::to_vec))).expect("read");
        assert_eq!(read, Some(encode("context", &vec![7u8; 40]).expect("encode")));
        assert!(s.cached_bytes() + (1 << 20) < open, "{} of {open} bytes left", s.cached_bytes());
        let read = s.with(&tree_key(&s), |v| Ok(v.map(<[u8]>::to_vec))).expect("read");
        assert_eq!(read, Some(encode("tree", &value).expect("encode")));
        let mut changed = value.clone();
        changed[1000..1010].copy_from_slice(&[9; 10]);
        write_tree(&s, &changed);
        assert!(check_chunks(_kv.as_ref()).expect("check").problems.is_empty());

        // Closed, then opened again before its state was durable: it stays.
        let claim = s.claim(&partition);
        s.write_group(TREE, "tree", &GROUP, &noise(1 << 20, 22)).expect("write");
        let sealed = s.submit_group(&GROUP).expect("submit");
        s.release_claim(&partition, claim);
        let _open_again = s.claim(&partition);
        sealed.wait_blocking().expect("durable");
        op(&s, "later", 2).wait_blocking().expect("durable");
        assert!(cached(&s), "open again: kept");
    }

    /// A closed group's partition written again without a claim (a stale object, a failed operation's leftovers):
    /// its records stay cached until that write is durable too, so the store never serves an older one.
    #[test]
    fn a_write_after_close_keeps_the_values_until_it_is_durable() {
        let (_kv, s) = storage();
        let partition = MlsStorage::partition(&GROUP).expect("partition");
        let claim = s.claim(&partition);
        s.write_group(TREE, "tree", &GROUP, &noise(1 << 20, 31)).expect("write");
        let first = s.submit_group(&GROUP).expect("submit");
        s.release_claim(&partition, claim);
        first.wait_blocking().expect("durable");
        let newer = noise(1 << 20, 32);
        s.write_group(TREE, "tree", &GROUP, &newer).expect("write");
        let second = s.submit_group(&GROUP).expect("submit");
        assert!(s.lock().cache.contains_key(&tree_key(&s)), "the newer value is not durable yet");
        second.wait_blocking().expect("durable");
        op(&s, "later", 1).wait_blocking().expect("durable");
        assert!(!s.lock().cache.contains_key(&tree_key(&s)), "durable: gone");
        let read = s.with(&tree_key(&s), |v| Ok(v.map(<[u8]>::to_vec))).expect("read");
        assert_eq!(read, Some(encode("tree", &newer).expect("encode")));
    }
}
