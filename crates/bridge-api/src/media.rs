//! The daemon's media blob store as connectors see it ([`MediaStore`], in [`AccountContext::media`]).
//!
//! A connector that receives a file it can only fetch with its own credentials (Matrix authenticated media, an
//! XMPP upload behind a login) downloads it and [`MediaStore::put`]s the bytes: it gets back an [`Attachment`]
//! whose `url` is an unguessable link the daemon serves (as a download, never rendered inline), and which the core
//! can turn into an encrypted MIMI external part. A connector that must upload a file to its network
//! ([`MediaStore::get`]) gets the bytes of an attachment the daemon holds.
//!
//! [`AccountContext::media`]: crate::AccountContext::media

use crate::event::Attachment;

/// Why the media store did not take or give a file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MediaError {
    /// Larger than the store takes (`[media] max_bytes`).
    #[error("{size} bytes: at most {max} are taken")]
    TooLarge {
        /// The file's size.
        size: u64,
        /// The limit.
        max: u64,
    },
    /// The store is full (`[media] quota_bytes`) until retention frees space.
    #[error("the media store is full ({used} of {quota} bytes)")]
    Full {
        /// Bytes stored.
        used: u64,
        /// The quota.
        quota: u64,
    },
    /// Reading or writing failed.
    #[error("media store: {0}")]
    Io(String),
}

/// The daemon's media blob store.
#[async_trait::async_trait]
pub trait MediaStore: Send + Sync {
    /// Keeps `bytes` (encrypted, its key kept beside it) and describes them as an attachment served by the daemon.
    async fn put(&self, bytes: Vec<u8>, media_type: &str, filename: Option<&str>) -> Result<Attachment, MediaError>;

    /// Downloads `url` — a file another network links to — and keeps it as [`MediaStore::put`] does. The download
    /// is guarded: public addresses only, at most the store's size limit, a time limit, no redirects.
    async fn import(&self, url: &str, filename: Option<&str>) -> Result<Attachment, MediaError>;

    /// The bytes and media type of an attachment this store issued (`None` if its `url` is not one of ours, or
    /// retention removed it).
    async fn get(&self, url: &str) -> Result<Option<(Vec<u8>, String)>, MediaError>;
}
