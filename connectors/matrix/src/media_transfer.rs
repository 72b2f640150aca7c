//! Moving files between the homeserver and the daemon's media store (IO shell of [`crate::media`]).
//!
//! Inbound: each `mxc://` attachment of a translated message is downloaded through authenticated media and kept in
//! the store, which gives the link the core turns into a MIMI external part. A file that cannot be had for good
//! (gone, too large, no store) leaves a visible note in the text instead. Only our own homeserver being down is
//! temporary for a file of its own server (the transaction is answered 500 and the homeserver retries it); a file
//! of another server that cannot be fetched now (the homeserver answers 502 for a dead remote, or times out)
//! becomes a note too, or one dead remote file would hold up every later event of the appservice.
//!
//! Outbound: the bytes of an attachment the store holds are uploaded as the ghost and the event content completed.

use crate::homeserver::{Homeserver, HsError};
use crate::media;
use bridge_api::MediaStore;
use bridge_api::event::MessageDraft;
use bridge_api::media::MediaError;
use serde_json::Value;
use std::sync::Arc;

/// The largest file downloaded from the homeserver (the media store may take less: `[media] max_bytes`).
const MAX_DOWNLOAD_BYTES: u64 = 256 << 20;

/// Where an account downloads `mxc://` files from.
#[async_trait::async_trait]
pub trait Fetch: Send + Sync {
    /// The file at `mxc`: the media type it is served with and its bytes, at most `max` of them.
    async fn fetch(&self, mxc: &str, max: u64) -> Result<(String, Vec<u8>), HsError>;
}

/// The appservice's downloads: through authenticated media as the user `reader`.
pub struct AsUser<'a> {
    /// The homeserver.
    pub hs: &'a Homeserver,
    /// The user the download is made as.
    pub reader: &'a str,
}

#[async_trait::async_trait]
impl Fetch for AsUser<'_> {
    async fn fetch(&self, mxc: &str, max: u64) -> Result<(String, Vec<u8>), HsError> {
        let Some(file) = media::encrypted_file(mxc) else {
            return self.hs.download(mxc, self.reader, max).await;
        };
        // A file of an encrypted room: downloaded as it is stored (encrypted), decrypted with the key its event
        // carries, its hash checked.
        let (_, bytes) = self.hs.download(file.url.as_str(), self.reader, max).await?;
        let clear =
            decrypt(file, bytes).map_err(|error| HsError::Refused { status: 0, errcode: String::new(), error })?;
        Ok(("application/octet-stream".into(), clear))
    }
}

/// The bytes of the encrypted file `file` whose stored (encrypted) bytes are `stored`; `Err` if its hash or
/// key does not match.
pub fn decrypt(file: ruma::events::room::EncryptedFile, stored: Vec<u8>) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let mut cursor = std::io::Cursor::new(stored);
    let mut decryptor = matrix_sdk_crypto::AttachmentDecryptor::new(&mut cursor, file.into())
        .map_err(|e| format!("the file does not decrypt: {e}"))?;
    let mut clear = Vec::new();
    decryptor.read_to_end(&mut clear).map_err(|e| format!("the file does not decrypt: {e}"))?;
    Ok(clear)
}

/// Replaces the `mxc://` attachments of `draft` with files kept in `store`, downloaded from `fetch`. `Err` when it
/// is worth trying again later (the homeserver of `server_name` unavailable for one of its own files, store
/// failing).
pub async fn download_all(
    fetch: &dyn Fetch,
    store: Option<&Arc<dyn MediaStore>>,
    server_name: &str,
    draft: &mut MessageDraft,
) -> Result<(), String> {
    let mut notes = Vec::new();
    for a in &mut draft.attachments {
        if !media::is_mxc(&a.url) {
            continue;
        }
        let name = a.filename.clone().unwrap_or_else(|| a.media_type.clone());
        // What logs and errors may show: an encrypted file's key stays out of them.
        let shown = media::shown_url(&a.url).to_owned();
        let kept = match store {
            None => Err("this bridge keeps no media store".to_owned()),
            // Refused before a byte is read when the event says it is too large (a download is held in memory).
            Some(_) if a.size.is_some_and(|n| n > MAX_DOWNLOAD_BYTES) => {
                Err(format!("{} bytes, more than {MAX_DOWNLOAD_BYTES}", a.size.unwrap_or_default()))
            }
            Some(store) => match fetch.fetch(&a.url, MAX_DOWNLOAD_BYTES).await {
                Err(HsError::Unavailable(e)) if media::mxc_parts(&shown).is_some_and(|(s, _)| s == server_name) => {
                    return Err(format!("downloading {shown}: {e}"));
                }
                Err(e) => Err(e.to_string()),
                Ok((served_type, bytes)) => {
                    let media_type =
                        if a.media_type == "application/octet-stream" { &served_type } else { &a.media_type };
                    match store.put(bytes, media_type, a.filename.as_deref()).await {
                        Err(MediaError::Io(e)) => return Err(format!("keeping {shown}: {e}")),
                        other => other.map_err(|e| e.to_string()),
                    }
                }
            },
        };
        match kept {
            Ok(stored) => *a = stored,
            Err(why) => {
                tracing::warn!(file = %shown, error = %why, "a Matrix file is not bridged");
                notes.push(format!("[attachment {name} not bridged: {why}]"));
                a.url.clear();
            }
        }
    }
    draft.attachments.retain(|a| !a.url.is_empty());
    for note in notes {
        if !draft.body.is_empty() {
            draft.body.push('\n');
        }
        draft.body.push_str(&note);
    }
    Ok(())
}

/// Uploads the file of `url` (a link of `store`) as `user_id` and completes `content` with it; for an encrypted
/// room (`encrypted`), the file is encrypted first and `content` carries it as an `EncryptedFile`.
pub async fn upload(
    hs: &Homeserver,
    store: Option<&Arc<dyn MediaStore>>,
    url: &str,
    mut content: Value,
    (user_id, encrypted): (&str, bool),
) -> Result<Value, HsError> {
    let refused = |error: String| HsError::Refused { status: 0, errcode: "M_NOT_FOUND".into(), error };
    let store = store.ok_or_else(|| refused("this bridge keeps no media store".into()))?;
    let (bytes, media_type) = match store.get(url).await {
        Ok(Some(file)) => file,
        Ok(None) => return Err(refused(format!("the file {url} is no longer kept"))),
        Err(e) => return Err(HsError::Unavailable(e.to_string())),
    };
    let filename = content["filename"].as_str().map(str::to_owned);
    let (size, dimensions) = (bytes.len(), media::image_size(&bytes));
    if !encrypted {
        let mxc = hs.upload(bytes, &media_type, filename.as_deref(), user_id).await?;
        media::complete(&mut content, &mxc, size, dimensions);
        return Ok(content);
    }
    let (stored, info) = encrypt(&bytes);
    let mxc = hs.upload(stored, "application/octet-stream", None, user_id).await?;
    media::complete(&mut content, &mxc, size, dimensions);
    let file = ruma::events::room::EncryptedFile::new(mxc.as_str().into(), info.encryption_info, info.hashes);
    if let Some(c) = content.as_object_mut() {
        c.remove("url");
        c.insert("file".into(), serde_json::to_value(&file).unwrap_or_default());
    }
    Ok(content)
}

/// `clear` encrypted as a file of an encrypted room (AES-CTR with a fresh key, SHA-256 of what is stored): the
/// bytes to store and what decrypts them.
pub fn encrypt(clear: &[u8]) -> (Vec<u8>, matrix_sdk_crypto::MediaEncryptionInfo) {
    use std::io::Read;
    let mut reader = clear;
    let mut encryptor = matrix_sdk_crypto::AttachmentEncryptor::new(&mut reader);
    let mut stored = Vec::with_capacity(clear.len());
    // Reading from a slice cannot fail.
    let _ = encryptor.read_to_end(&mut stored);
    (stored, encryptor.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_encrypted_for_an_encrypted_room_decrypts_and_a_tampered_one_does_not() {
        let clear = b"a picture, say".to_vec();
        let (stored, info) = encrypt(&clear);
        assert_ne!(stored, clear);
        let file = ruma::events::room::EncryptedFile::new("mxc://hs.test/f".into(), info.encryption_info, info.hashes);
        assert_eq!(decrypt(file.clone(), stored.clone()).expect("decrypts"), clear);
        let mut tampered = stored;
        tampered[0] ^= 1;
        assert!(decrypt(file, tampered).is_err(), "the hash is checked");
    }
}
