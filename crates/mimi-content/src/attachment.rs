//! Attachments as ExternalParts (§4.5): encrypt a blob with AES-128-GCM under
//! a fresh random key and nonce, hash the ciphertext (the "content at the
//! target url"), describe it; on receipt verify size and hash, then decrypt.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes128Gcm, Aes256Gcm};
use rand::RngCore;
use sha2::{Digest, Sha256, Sha384, Sha512};

use super::error::ContentError;
use super::model::{Disposition, EncAlg, ExternalPart, HashAlg, NestedPart, PartBody};

/// An encrypted blob ready for upload, with what is needed to describe it.
#[derive(Clone)]
pub struct EncryptedBlob {
    /// The bytes to upload (ciphertext followed by the 16-byte GCM tag).
    pub ciphertext: Vec<u8>,
    /// The fresh AES-128 key.
    pub key: [u8; 16],
    /// The fresh 96-bit nonce.
    pub nonce: [u8; 12],
    /// SHA-256 of `ciphertext`.
    pub hash: [u8; 32],
}

impl std::fmt::Debug for EncryptedBlob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncryptedBlob")
            .field("len", &self.ciphertext.len())
            .field("hash", &hex::encode(self.hash))
            .finish_non_exhaustive()
    }
}

/// What the sender tells about an attachment.
#[derive(Debug, Clone, Default)]
pub struct Description<'a> {
    /// Where the ciphertext was uploaded.
    pub url: &'a str,
    /// Media type of the plaintext.
    pub content_type: &'a str,
    /// Suggested file name (may be empty).
    pub filename: &'a str,
    /// Text description (may be empty).
    pub description: &'a str,
    /// Seconds since the epoch after which the URL is invalid; 0 = never.
    pub expires: u32,
}

/// Encrypts `plaintext` with AES-128-GCM under a fresh random key and nonce
/// (empty aad, the draft's default) and hashes the result with SHA-256.
pub fn encrypt(plaintext: &[u8]) -> Result<EncryptedBlob, ContentError> {
    let mut key = [0u8; 16];
    let mut nonce = [0u8; 12];
    let mut rng = rand::rng();
    rng.fill_bytes(&mut key);
    rng.fill_bytes(&mut nonce);
    let ciphertext = aead_encrypt(EncAlg::AES_128_GCM, &key, &nonce, &[], plaintext)?;
    let hash: [u8; 32] = Sha256::digest(&ciphertext).into();
    Ok(EncryptedBlob { ciphertext, key, nonce, hash })
}

impl EncryptedBlob {
    /// The ExternalPart describing this blob. `size` is the uploaded
    /// (ciphertext) size, like the hash it describes the content at the URL.
    pub fn describe(&self, d: &Description<'_>) -> ExternalPart {
        ExternalPart {
            content_type: d.content_type.to_owned(),
            url: d.url.to_owned(),
            expires: d.expires,
            size: self.ciphertext.len() as u64,
            enc_alg: EncAlg::AES_128_GCM,
            key: self.key.to_vec(),
            nonce: self.nonce.to_vec(),
            aad: Vec::new(),
            hash_alg: HashAlg::Sha256,
            content_hash: self.hash.to_vec(),
            description: d.description.to_owned(),
            filename: d.filename.to_owned(),
        }
    }

    /// A NestedPart with disposition attachment for this blob.
    pub fn to_part(&self, d: &Description<'_>) -> NestedPart {
        NestedPart {
            disposition: Disposition::Attachment,
            language: String::new(),
            body: PartBody::External(Box::new(self.describe(d))),
        }
    }
}

/// Verifies downloaded bytes against `part` (size if non-zero, hash unless
/// hashAlg is none) and decrypts them (unless encAlg is 0).
pub fn verify_and_decrypt(part: &ExternalPart, downloaded: &[u8]) -> Result<Vec<u8>, ContentError> {
    if part.size != 0 && part.size != downloaded.len() as u64 {
        return Err(ContentError::AttachmentSizeMismatch { expected: part.size, found: downloaded.len() as u64 });
    }
    if part.hash_alg != HashAlg::None {
        let h = hash(part.hash_alg, downloaded)?;
        if h != part.content_hash {
            return Err(ContentError::AttachmentHashMismatch);
        }
    }
    if part.enc_alg == EncAlg::NONE {
        return Ok(downloaded.to_vec());
    }
    aead_decrypt(part.enc_alg, &part.key, &part.nonce, &part.aad, downloaded)
}

/// Like [`verify_and_decrypt`] for a NestedPart, which must be an ExternalPart.
pub fn verify_and_decrypt_part(part: &NestedPart, downloaded: &[u8]) -> Result<Vec<u8>, ContentError> {
    match &part.body {
        PartBody::External(x) => verify_and_decrypt(x, downloaded),
        _ => Err(ContentError::NotExternal),
    }
}

/// Hashes `data` with a Named Information hash algorithm (the SHA-2 family;
/// SHA-3 is not supported).
pub fn hash(alg: HashAlg, data: &[u8]) -> Result<Vec<u8>, ContentError> {
    let full = match alg {
        HashAlg::Sha256
        | HashAlg::Sha256_128
        | HashAlg::Sha256_120
        | HashAlg::Sha256_96
        | HashAlg::Sha256_64
        | HashAlg::Sha256_32 => Sha256::digest(data).to_vec(),
        HashAlg::Sha384 => Sha384::digest(data).to_vec(),
        HashAlg::Sha512 => Sha512::digest(data).to_vec(),
        other => {
            return Err(ContentError::UnsupportedAlgorithm { what: "hash", alg: u16::from(other.to_u8()) });
        }
    };
    Ok(full[..alg.digest_len()].to_vec())
}

fn unsupported(alg: EncAlg) -> ContentError {
    ContentError::UnsupportedAlgorithm { what: "encryption", alg: alg.0 }
}

fn aead_encrypt(alg: EncAlg, key: &[u8], nonce: &[u8], aad: &[u8], msg: &[u8]) -> Result<Vec<u8>, ContentError> {
    let payload = Payload { msg, aad };
    let nonce = nonce.try_into().map_err(|_| unsupported(alg))?;
    let out = match alg {
        EncAlg::AES_128_GCM => Aes128Gcm::new_from_slice(key).map_err(|_| unsupported(alg))?.encrypt(nonce, payload),
        EncAlg::AES_256_GCM => Aes256Gcm::new_from_slice(key).map_err(|_| unsupported(alg))?.encrypt(nonce, payload),
        _ => return Err(unsupported(alg)),
    };
    out.map_err(|_| unsupported(alg))
}

fn aead_decrypt(alg: EncAlg, key: &[u8], nonce: &[u8], aad: &[u8], msg: &[u8]) -> Result<Vec<u8>, ContentError> {
    let payload = Payload { msg, aad };
    let nonce = nonce.try_into().map_err(|_| ContentError::AeadParamLength {
        enc_alg: alg.0,
        key_len: key.len(),
        nonce_len: nonce.len(),
    })?;
    let bad_key = |_| ContentError::AeadParamLength { enc_alg: alg.0, key_len: key.len(), nonce_len: 12 };
    let out = match alg {
        EncAlg::AES_128_GCM => Aes128Gcm::new_from_slice(key).map_err(bad_key)?.decrypt(nonce, payload),
        EncAlg::AES_256_GCM => Aes256Gcm::new_from_slice(key).map_err(bad_key)?.decrypt(nonce, payload),
        _ => return Err(unsupported(alg)),
    };
    out.map_err(|_| ContentError::AttachmentDecryptFailed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc() -> Description<'static> {
        Description {
            url: "https://example.com/storage/x.bin",
            content_type: "application/octet-stream",
            filename: "x.bin",
            description: "test blob",
            expires: 0,
        }
    }

    #[test]
    fn round_trip_encrypt_describe_download_verify_decrypt() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let blob = encrypt(&data).expect("encrypt");
        assert_ne!(blob.ciphertext[..16], data[..16]);
        let part = blob.to_part(&desc());
        // travels inside a message
        let mut c =
            crate::builder::ContentBuilder::new("mimi://a/u/x", "mimi://a/r/y").body(part).build().expect("build");
        let bytes = crate::encode(&c).expect("encode");
        c = crate::decode(&bytes).expect("decode");
        let downloaded = blob.ciphertext.clone();
        let plain = verify_and_decrypt_part(&c.nested_part, &downloaded).expect("decrypt");
        assert_eq!(plain, data);
    }

    #[test]
    fn fresh_key_and_nonce_each_time() {
        let a = encrypt(b"same").expect("a");
        let b = encrypt(b"same").expect("b");
        assert_ne!(a.key, b.key);
        assert_ne!(a.nonce, b.nonce);
        assert_ne!(a.ciphertext, b.ciphertext);
    }

    #[test]
    fn tampered_blob_is_rejected_by_hash() {
        let blob = encrypt(b"hello attachment").expect("encrypt");
        let part = blob.describe(&desc());
        let mut bad = blob.ciphertext.clone();
        bad[3] ^= 1;
        assert_eq!(verify_and_decrypt(&part, &bad), Err(ContentError::AttachmentHashMismatch));
    }

    #[test]
    fn tampered_blob_is_rejected_by_aead_without_hash() {
        let blob = encrypt(b"hello attachment").expect("encrypt");
        let mut part = blob.describe(&desc());
        part.hash_alg = HashAlg::None;
        part.content_hash.clear();
        let mut bad = blob.ciphertext.clone();
        bad[0] ^= 0x80;
        assert_eq!(verify_and_decrypt(&part, &bad), Err(ContentError::AttachmentDecryptFailed));
        assert_eq!(verify_and_decrypt(&part, &blob.ciphertext).expect("ok"), b"hello attachment");
    }

    #[test]
    fn truncated_blob_is_rejected_by_size() {
        let blob = encrypt(b"hello attachment").expect("encrypt");
        let part = blob.describe(&desc());
        let short = &blob.ciphertext[..blob.ciphertext.len() - 1];
        assert!(matches!(verify_and_decrypt(&part, short), Err(ContentError::AttachmentSizeMismatch { .. })));
    }

    #[test]
    fn wrong_key_fails_decryption() {
        let blob = encrypt(b"secret").expect("encrypt");
        let mut part = blob.describe(&desc());
        part.key[0] ^= 1;
        assert_eq!(verify_and_decrypt(&part, &blob.ciphertext), Err(ContentError::AttachmentDecryptFailed));
    }

    #[test]
    fn unencrypted_external_part_and_other_hashes() {
        let data = b"public content";
        for alg in [HashAlg::Sha256_128, HashAlg::Sha384, HashAlg::Sha512] {
            let h = hash(alg, data).expect("hash");
            assert_eq!(h.len(), alg.digest_len());
            let part = ExternalPart {
                content_type: "text/plain".into(),
                url: "https://example.com/p".into(),
                expires: 0,
                size: 0,
                enc_alg: EncAlg::NONE,
                key: vec![],
                nonce: vec![],
                aad: vec![],
                hash_alg: alg,
                content_hash: h,
                description: String::new(),
                filename: String::new(),
            };
            assert_eq!(verify_and_decrypt(&part, data).expect("ok"), data);
        }
        assert!(matches!(hash(HashAlg::Sha3_256, data), Err(ContentError::UnsupportedAlgorithm { what: "hash", .. })));
    }

    #[test]
    fn aes_256_gcm_with_aad_decrypts() {
        let key = [7u8; 32];
        let nonce = [9u8; 12];
        let ct = aead_encrypt(EncAlg::AES_256_GCM, &key, &nonce, b"aad", b"msg").expect("enc");
        let part = ExternalPart {
            content_type: "text/plain".into(),
            url: "https://example.com/p".into(),
            expires: 0,
            size: ct.len() as u64,
            enc_alg: EncAlg::AES_256_GCM,
            key: key.to_vec(),
            nonce: nonce.to_vec(),
            aad: b"aad".to_vec(),
            hash_alg: HashAlg::None,
            content_hash: vec![],
            description: String::new(),
            filename: String::new(),
        };
        assert_eq!(verify_and_decrypt(&part, &ct).expect("ok"), b"msg");
        let mut other = part.clone();
        other.enc_alg = EncAlg(99);
        assert!(matches!(verify_and_decrypt(&other, &ct), Err(ContentError::UnsupportedAlgorithm { .. })));
    }
}
