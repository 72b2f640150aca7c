//! [`FileMediaStore`]: files under `DATA_DIR/media`, one pair per file:
//!
//! ```text
//! TOKEN.bin   the content, AES-128-GCM under a key of its own (ciphertext ‖ tag), as a MIMI external part
//!             carries it (§4.5 of draft-ietf-mimi-content)
//! TOKEN.json  its record: key, nonce, SHA-256 of TOKEN.bin, media type, file name, size, when it was stored
//! ```
//!
//! `TOKEN` is 16 random bytes in hex: the links are unguessable, and they are the only way to a file. The daemon
//! serves `PUBLIC_URL/media/v1/TOKEN/NAME` decrypted, as a download (for networks without end-to-end encrypted
//! files), and `PUBLIC_URL/media/v1/TOKEN` as stored (the ciphertext a MIMI external part points at: MLS members
//! hold its key). Both files are written to a temporary name,
//! synced and renamed, the record last: a crash leaves no record without its content. Files are private to the
//! daemon's user (its umask). At most [`MediaConfig::max_bytes`] per file and [`MediaConfig::quota_bytes`] in
//! all; [`FileMediaStore::prune`] removes what is older than [`MediaConfig::retention`].

use crate::fetch::Fetcher;
use bridge_api::event::Attachment;
use bridge_api::media::{MediaError, MediaStore};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// How the store is set up (the daemon's `[media]` table).
#[derive(Debug, Clone)]
pub struct MediaConfig {
    /// Where the files go (`DATA_DIR/media`).
    pub dir: PathBuf,
    /// The daemon's public base URL (`[mimi] public_url`); links are `PUBLIC_URL/media/v1/TOKEN/NAME`.
    pub public_url: String,
    /// Largest file taken.
    pub max_bytes: u64,
    /// Most bytes stored in all.
    pub quota_bytes: u64,
    /// How long a file is kept (`None`: forever).
    pub retention: Option<Duration>,
}

/// A stored file's record (`TOKEN.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    key: String,
    nonce: String,
    sha256: String,
    media_type: String,
    filename: Option<String>,
    size: u64,
    stored_at_ms: u64,
}

impl Record {
    /// The MIMI external part describing this file's ciphertext (`size` bytes) at `url`.
    fn part(&self, url: String, size: u64) -> Result<mimi_content::model::ExternalPart, MediaError> {
        Ok(mimi_content::model::ExternalPart {
            content_type: self.media_type.clone(),
            url,
            expires: 0,
            size,
            enc_alg: mimi_content::model::EncAlg::AES_128_GCM,
            key: hex::decode(&self.key).map_err(io)?,
            nonce: hex::decode(&self.nonce).map_err(io)?,
            aad: Vec::new(),
            hash_alg: mimi_content::model::HashAlg::Sha256,
            content_hash: hex::decode(&self.sha256).map_err(io)?,
            description: String::new(),
            filename: self.filename.clone().unwrap_or_default(),
        })
    }
}

/// A file the store holds, decrypted.
#[derive(Debug, Clone)]
pub struct Media {
    /// The content.
    pub bytes: Vec<u8>,
    /// Its media type.
    pub media_type: String,
    /// Its file name, if it has one.
    pub filename: Option<String>,
}

/// The daemon's media store on the file system (see the module documentation).
#[derive(Debug)]
pub struct FileMediaStore {
    config: MediaConfig,
    used: AtomicU64,
    fetcher: Fetcher,
    /// Files read into memory at once (each up to `max_bytes`, twice while decrypting): a public link fetched by
    /// many at once queues instead of exhausting memory.
    reading: tokio::sync::Semaphore,
}

/// Most files read at once ([`FileMediaStore`]'s `reading`).
const READING: usize = 4;

fn io(e: impl std::fmt::Display) -> MediaError {
    MediaError::Io(e.to_string())
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// True if `token` is one of ours in shape (32 lowercase hex digits): nothing else reaches the file system.
fn is_token(token: &str) -> bool {
    token.len() == 32 && token.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A file name safe in a URL path and a `Content-Disposition` header: `A-Z a-z 0-9 . _ -`, others become `_`, at
/// most 100 characters, never empty or starting with a dot.
pub fn safe_name(name: Option<&str>) -> String {
    let mut s: String = name
        .unwrap_or("")
        .chars()
        .take(100)
        .map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '_' })
        .collect();
    if s.is_empty() || s.starts_with('.') {
        s.insert_str(0, "file");
    }
    s
}

/// Writes `bytes` to `path` through a temporary file: written, synced, renamed.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

impl FileMediaStore {
    /// Opens (creating) the store in `config.dir`; counts what it holds, and removes temporary files a crash left.
    pub fn open(config: MediaConfig, fetcher: Fetcher) -> Result<Self, MediaError> {
        std::fs::create_dir_all(&config.dir).map_err(io)?;
        let mut used = 0;
        for entry in std::fs::read_dir(&config.dir).map_err(io)? {
            let entry = entry.map_err(io)?;
            let path = entry.path();
            match path.extension().and_then(|e| e.to_str()) {
                Some("tmp") => std::fs::remove_file(&path).map_err(io)?,
                // Content without its record (a crash between the two writes) is unreachable: removed.
                Some("bin") if !path.with_extension("json").exists() => std::fs::remove_file(&path).map_err(io)?,
                Some("bin") => used += entry.metadata().map_err(io)?.len(),
                _ => {}
            }
        }
        Ok(Self { config, used: AtomicU64::new(used), fetcher, reading: tokio::sync::Semaphore::new(READING) })
    }

    /// Bytes stored.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// The link of a file.
    fn link(&self, token: &str, filename: Option<&str>) -> String {
        format!("{}/media/v1/{token}/{}", self.config.public_url.trim_end_matches('/'), safe_name(filename))
    }

    /// The link of a file's ciphertext (a MIMI external part's `url`).
    fn cipher_link(&self, token: &str) -> String {
        format!("{}/media/v1/{token}", self.config.public_url.trim_end_matches('/'))
    }

    fn record(&self, token: &str) -> Result<Option<Record>, MediaError> {
        match std::fs::read(self.config.dir.join(format!("{token}.json"))) {
            Ok(v) => serde_json::from_slice(&v).map(Some).map_err(io),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(e)),
        }
    }

    /// The MIMI external part of a file this store holds, by either of its links (`None` if it is not ours or
    /// is gone): the ciphertext link with the key, nonce and hash members need to fetch, check and decrypt it.
    pub fn external_part(&self, url: &str) -> Option<mimi_content::model::ExternalPart> {
        let token = self.token_of(url)?;
        let r = self.record(token).ok()??;
        let size = std::fs::metadata(self.config.dir.join(format!("{token}.bin"))).ok()?.len();
        r.part(self.cipher_link(token), size).ok()
    }

    /// The stored ciphertext behind `token` (`None` if there is none).
    pub async fn ciphertext(&self, token: &str) -> Result<Option<Vec<u8>>, MediaError> {
        if !is_token(token) {
            return Ok(None);
        }
        let _permit = self.reading.acquire().await.map_err(io)?;
        match tokio::fs::read(self.config.dir.join(format!("{token}.bin"))).await {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(e)),
        }
    }

    /// Takes a file a MIMI member sent as an external part: fetched (from this store if the link is ours, else
    /// with the [`Fetcher`]'s guards), checked against its size and hash, decrypted, and kept as a new file — an
    /// attachment other networks can open.
    pub async fn import_part(&self, part: &mimi_content::model::ExternalPart) -> Result<Attachment, MediaError> {
        // The ciphertext is the content plus a 16-byte tag at most; a part claiming more is refused before fetching.
        let limit = self.config.max_bytes + 16;
        let ciphertext = match self.token_of(&part.url) {
            Some(token) => self.ciphertext(token).await?.ok_or_else(|| io("the linked file is gone"))?,
            None => {
                self.fetcher
                    .fetch(&part.url, limit)
                    .await
                    .map_err(|e| io(format!("fetching the attachment: {e}")))?
                    .bytes
            }
        };
        let plaintext = mimi_content::attachment::verify_and_decrypt(part, &ciphertext).map_err(io)?;
        let name = (!part.filename.is_empty()).then_some(part.filename.as_str());
        self.put(plaintext, &part.content_type, name).await
    }

    /// The token of one of our links.
    fn token_of<'a>(&self, url: &'a str) -> Option<&'a str> {
        let prefix = format!("{}/media/v1/", self.config.public_url.trim_end_matches('/'));
        url.strip_prefix(&prefix).and_then(|rest| rest.split('/').next()).filter(|t| is_token(t))
    }

    /// The file behind `token`, decrypted and checked against its hash (`None` if there is none).
    pub async fn open_token(&self, token: &str) -> Result<Option<Media>, MediaError> {
        if !is_token(token) {
            return Ok(None);
        }
        let _permit = self.reading.acquire().await.map_err(io)?;
        let (meta, bin) = (self.config.dir.join(format!("{token}.json")), self.config.dir.join(format!("{token}.bin")));
        tokio::task::spawn_blocking(move || {
            let record: Record = match std::fs::read(&meta) {
                Ok(v) => serde_json::from_slice(&v).map_err(io)?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(io(e)),
            };
            let ciphertext = std::fs::read(&bin).map_err(io)?;
            let part = record.part(String::new(), ciphertext.len() as u64)?;
            let bytes = mimi_content::attachment::verify_and_decrypt(&part, &ciphertext).map_err(io)?;
            Ok(Some(Media { bytes, media_type: record.media_type, filename: record.filename }))
        })
        .await
        .map_err(io)?
    }

    /// Removes the files stored before `before_ms`; how many.
    pub async fn prune_before(&self, before_ms: u64) -> Result<u64, MediaError> {
        let dir = self.config.dir.clone();
        let (removed, freed) = tokio::task::spawn_blocking(move || {
            let (mut removed, mut freed) = (0u64, 0u64);
            for entry in std::fs::read_dir(&dir).map_err(io)? {
                let path = entry.map_err(io)?.path();
                if path.extension().and_then(|e| e.to_str()) != Some("json") {
                    continue;
                }
                let Ok(record) = std::fs::read(&path).map(|v| serde_json::from_slice::<Record>(&v)) else { continue };
                // An unreadable record is kept: an operator should see it, not lose it silently.
                let Ok(record) = record else { continue };
                if record.stored_at_ms < before_ms {
                    let bin = path.with_extension("bin");
                    freed += std::fs::metadata(&bin).map(|m| m.len()).unwrap_or(0);
                    std::fs::remove_file(&path).map_err(io)?;
                    let _ = std::fs::remove_file(&bin);
                    removed += 1;
                }
            }
            Ok::<_, MediaError>((removed, freed))
        })
        .await
        .map_err(io)??;
        self.used.fetch_sub(freed.min(self.used()), Ordering::Relaxed);
        Ok(removed)
    }

    /// [`FileMediaStore::prune_before`] the store's retention, at `now_ms` (nothing if it keeps forever).
    pub async fn prune(&self, now_ms: u64) -> Result<u64, MediaError> {
        match self.config.retention {
            Some(keep) => self.prune_before(now_ms.saturating_sub(keep.as_millis() as u64)).await,
            None => Ok(0),
        }
    }
}

#[async_trait::async_trait]
impl MediaStore for FileMediaStore {
    async fn put(&self, bytes: Vec<u8>, media_type: &str, filename: Option<&str>) -> Result<Attachment, MediaError> {
        let size = bytes.len() as u64;
        if size > self.config.max_bytes {
            return Err(MediaError::TooLarge { size, max: self.config.max_bytes });
        }
        let blob = mimi_content::attachment::encrypt(&bytes).map_err(io)?;
        let stored = blob.ciphertext.len() as u64;
        // Reserve the space first, so that parallel puts cannot pass the quota together.
        let used = self.used.fetch_add(stored, Ordering::Relaxed);
        if used + stored > self.config.quota_bytes {
            self.used.fetch_sub(stored, Ordering::Relaxed);
            return Err(MediaError::Full { used, quota: self.config.quota_bytes });
        }
        let token = hex::encode(rand::random::<[u8; 16]>());
        let record = Record {
            key: hex::encode(blob.key),
            nonce: hex::encode(blob.nonce),
            sha256: hex::encode(blob.hash),
            media_type: media_type.to_owned(),
            filename: filename.map(str::to_owned),
            size,
            stored_at_ms: now_ms(),
        };
        let dir = self.config.dir.clone();
        let t = token.clone();
        let written = tokio::task::spawn_blocking(move || {
            write_atomically(&dir.join(format!("{t}.bin")), &blob.ciphertext)?;
            write_atomically(&dir.join(format!("{t}.json")), &serde_json::to_vec(&record).unwrap_or_default())?;
            std::fs::File::open(&dir)?.sync_all()
        })
        .await
        .map_err(io)?;
        if let Err(e) = written {
            self.used.fetch_sub(stored, Ordering::Relaxed);
            return Err(io(e));
        }
        Ok(Attachment {
            url: self.link(&token, filename),
            media_type: media_type.to_owned(),
            size: Some(size),
            filename: filename.map(str::to_owned),
        })
    }

    async fn import(&self, url: &str, filename: Option<&str>) -> Result<Attachment, MediaError> {
        let fetched = self.fetcher.fetch(url, self.config.max_bytes).await.map_err(|e| match e {
            crate::fetch::FetchError::TooLarge(max) => MediaError::TooLarge { size: max + 1, max },
            other => MediaError::Io(format!("fetching {}: {other}", url.chars().take(200).collect::<String>())),
        })?;
        let media_type = fetched.media_type.unwrap_or_else(|| "application/octet-stream".into());
        self.put(fetched.bytes, &media_type, filename).await
    }

    async fn get(&self, url: &str) -> Result<Option<(Vec<u8>, String)>, MediaError> {
        let Some(token) = self.token_of(url) else { return Ok(None) };
        Ok(self.open_token(token).await?.map(|m| (m.bytes, m.media_type)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(dir: &Path, max: u64, quota: u64) -> FileMediaStore {
        let config = MediaConfig {
            dir: dir.join("media"),
            public_url: "https://bridge.example.org/".into(),
            max_bytes: max,
            quota_bytes: quota,
            retention: Some(Duration::from_secs(3600)),
        };
        FileMediaStore::open(config, Fetcher::new(rustls::RootCertStore::empty(), false).expect("fetcher"))
            .expect("store")
    }

    #[tokio::test]
    async fn files_come_back_from_their_links_encrypted_at_rest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = store(dir.path(), 1000, 10_000);
        let a = s.put(b"a picture".to_vec(), "image/png", Some("cat photo.png")).await.expect("put");
        assert!(a.url.starts_with("https://bridge.example.org/media/v1/"), "{}", a.url);
        assert!(a.url.ends_with("/cat_photo.png"), "a safe name: {}", a.url);
        assert_eq!((a.size, a.media_type.as_str()), (Some(9), "image/png"));
        assert_eq!(s.get(&a.url).await.expect("get"), Some((b"a picture".to_vec(), "image/png".into())));
        // At rest: nothing of the plaintext.
        for entry in std::fs::read_dir(dir.path().join("media")).expect("dir") {
            let bytes = std::fs::read(entry.expect("entry").path()).expect("read");
            assert!(!bytes.windows(9).any(|w| w == b"a picture"), "plaintext at rest");
        }
        // Not ours, or not a token: nothing, and no file system access with it.
        assert_eq!(s.get("https://elsewhere.org/media/v1/x").await.expect("get"), None);
        let traversal = "https://bridge.example.org/media/v1/../../etc/passwd";
        assert_eq!(s.get(traversal).await.expect("get"), None);
        assert!(s.open_token("0123456789abcdef0123456789abcdef").await.expect("open").is_none());
    }

    #[tokio::test]
    async fn size_quota_and_retention() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = store(dir.path(), 100, 150);
        assert_eq!(
            s.put(vec![0; 101], "application/octet-stream", None).await,
            Err(MediaError::TooLarge { size: 101, max: 100 })
        );
        let first = s.put(vec![1; 100], "application/octet-stream", None).await.expect("fits");
        assert!(matches!(s.put(vec![2; 100], "application/octet-stream", None).await, Err(MediaError::Full { .. })));
        assert_eq!(s.used(), 116, "ciphertext and tag");
        // A reopened store counts what it holds, and drops content a crash left without its record.
        std::fs::write(dir.path().join("media/0123456789abcdef0123456789abcdef.bin"), [0u8; 50]).expect("orphan");
        drop(s);
        let s = store(dir.path(), 100, 150);
        assert_eq!(s.used(), 116);
        assert_eq!(s.prune(now_ms()).await.expect("prune"), 0, "younger than the retention");
        assert_eq!(s.prune(now_ms() + 3_600_001).await.expect("prune"), 1);
        assert_eq!((s.used(), s.get(&first.url).await.expect("get")), (0, None));
        s.put(vec![2; 100], "application/octet-stream", None).await.expect("room again");
    }

    #[test]
    fn names_are_made_safe() {
        assert_eq!(safe_name(Some("../../etc/passwd")), "file.._.._etc_passwd");
        assert_eq!(safe_name(Some("r\u{e9}sum\u{e9} \"1\".pdf")), "r_sum___1_.pdf");
        assert_eq!(safe_name(None), "file");
        assert_eq!(safe_name(Some(".htaccess")), "file.htaccess");
    }
}
