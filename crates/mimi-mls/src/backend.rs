//! The OpenMLS provider of one local member, and [`Pending`]: an operation's output held back until the state
//! behind it is durable.

use super::error::MlsError;
use super::storage::{Durability, MlsStorage};
use super::verified_signatures::MlsCrypto;
use mimi_store::Store;
use openmls_rust_crypto::RustCrypto;
use openmls_traits::OpenMlsProvider;

/// Operations between two encodings of a group's message secrets by default ([`crate::write_behind`]). Well
/// below the ratchets' `maximum_forward_distance` (1000 by default), which bounds how far a receiver can skip.
pub const WRITE_BEHIND_OPS: u64 = 200;

/// [`MlsCrypto`] for crypto (RustCrypto, verified leaf signatures remembered), RustCrypto for randomness,
/// [`MlsStorage`] for state. One per local member (namespace).
#[derive(Debug)]
pub struct MlsBackend {
    crypto: MlsCrypto,
    storage: MlsStorage,
    write_behind_ops: std::sync::atomic::AtomicU64,
    /// Generations thrown away by this member's groups since the process started ([`Self::skipped_generations`]).
    skipped: std::sync::atomic::AtomicU64,
}

impl MlsBackend {
    /// The provider of local member `namespace` on `store`.
    pub fn new(store: Store, namespace: &str) -> Result<Self, MlsError> {
        Ok(Self {
            crypto: MlsCrypto::default(),
            storage: MlsStorage::new(store, namespace)?,
            write_behind_ops: WRITE_BEHIND_OPS.into(),
            skipped: 0.into(),
        })
    }

    /// Sets how many application messages a group may encrypt or decrypt between two encodings of its message
    /// secrets ([`crate::write_behind`]); 0 writes them through on every message (O(N) each, the behaviour before
    /// write-behind). Capped at 250. Takes effect for groups opened afterwards.
    pub fn set_write_behind_ops(&self, ops: u64) {
        self.write_behind_ops.store(ops.min(250), std::sync::atomic::Ordering::Relaxed);
    }

    /// Reads one of the engine's own records ([`crate::PortalGroup::storage_record`]) without opening a group.
    pub fn app_record<V: serde::de::DeserializeOwned>(&self, name: &[u8]) -> Result<Option<V>, MlsError> {
        Ok(self.storage.app_get(name)?)
    }

    /// How many sending generations this member's groups have thrown away since the process started: after an
    /// unclean stop, a group loaded from the store skips those its lost state may have used ([`crate::write_behind`]).
    /// Zero after clean stops and closes.
    pub fn skipped_generations(&self) -> u64 {
        self.skipped.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub(crate) fn count_skipped(&self, n: u64) {
        self.skipped.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }

    pub(crate) fn write_behind_ops(&self) -> u64 {
        self.write_behind_ops.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl OpenMlsProvider for MlsBackend {
    type CryptoProvider = MlsCrypto;
    type RandProvider = RustCrypto;
    type StorageProvider = MlsStorage;

    fn storage(&self) -> &Self::StorageProvider {
        &self.storage
    }

    fn crypto(&self) -> &Self::CryptoProvider {
        &self.crypto
    }

    fn rand(&self) -> &Self::RandProvider {
        self.crypto.rust_crypto()
    }
}

/// The output of an MLS operation (or its error) together with the durability of the state the operation wrote.
///
/// The output is reachable only through [`Pending::durable`] / [`Pending::durable_blocking`], which wait for the
/// state first: a ciphertext, commit or Welcome can therefore not be sent before the epoch and ratchet state
/// behind it would survive a crash. Errors wait too, because a refused message may have consumed ratchet state.
/// [`Pending::into_parts`] exists for measurements and for callers that pipeline the wait themselves; they take
/// over that duty.
#[derive(Debug)]
#[must_use = "the output is only available once the state is durable"]
pub struct Pending<T> {
    value: Result<T, MlsError>,
    durability: Durability,
}

impl<T> Pending<T> {
    pub(crate) fn new(value: T, durability: Durability) -> Self {
        Self { value: Ok(value), durability }
    }

    pub(crate) fn from_result(value: Result<T, MlsError>, durability: Durability) -> Self {
        Self { value, durability }
    }

    pub(crate) fn failed(e: MlsError) -> Self {
        Self { value: Err(e), durability: Durability::ready() }
    }

    /// Waits until the state is durable, then returns the output (or the operation's error).
    pub async fn durable(self) -> Result<T, MlsError> {
        self.durability.wait().await?;
        self.value
    }

    /// Blocking version of [`Pending::durable`] (not from inside an async task).
    pub fn durable_blocking(self) -> Result<T, MlsError> {
        self.durability.wait_blocking()?;
        self.value
    }

    /// The output and the durability handle, separately. The caller must not release the output before the
    /// handle resolved `Ok`.
    pub fn into_parts(self) -> (Result<T, MlsError>, Durability) {
        (self.value, self.durability)
    }

    /// Adds `other` to the state this output waits for (an operation spanning several local members).
    pub fn and_durable(self, other: Durability) -> Pending<T> {
        Pending { value: self.value, durability: self.durability.and(other) }
    }

    /// Maps the output, keeping the durability.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Pending<U> {
        Pending { value: self.value.map(f), durability: self.durability }
    }
}
