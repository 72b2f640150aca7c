//! # bridge-media
//!
//! The daemon's media blob store, one for every connector (`bridge_api::media::MediaStore`):
//!
//! * [`store`] — [`FileMediaStore`]: each file kept under `DATA_DIR/media` encrypted with AES-128-GCM under a key
//!   of its own (a MIMI external part's encryption, so the same ciphertext can serve MLS members), described by a
//!   small record next to it; a plain copy is served decrypted at an unguessable link, as a download. Size limit
//!   per file, a quota for the store, and a retention the daemon's pruner applies;
//! * [`fetch`] — [`fetch::Fetcher`]: downloads a URL from another network with a size cap, a time limit and a guard
//!   against internal addresses (the address is checked, then connected to: no DNS rebinding).

pub mod fetch;
pub mod store;

pub use store::{FileMediaStore, MediaConfig};
