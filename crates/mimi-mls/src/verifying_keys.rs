//! Ed25519 public keys kept decoded, for the signatures of messages.
//!
//! Every handshake and application message is signed by its sender's leaf key, and RustCrypto decodes that key
//! from its 32 bytes at each verification: a square root in the field, about a tenth of what decrypting a
//! message costs. The same few keys sign message after message, so [`verify`] keeps the decoded keys of the last
//! [`KEPT`] signers and verifies with them exactly as RustCrypto does (`VerifyingKey::try_from`, then
//! `verify_strict`, with the same errors): a key decodes to the same value whenever it is decoded, so the result
//! cannot differ. Keys that failed to decode are not kept.

use ed25519_dalek::{SIGNATURE_LENGTH, Signature, VerifyingKey};
use openmls_traits::types::CryptoError;
use std::collections::{HashMap, VecDeque};
use std::sync::{LazyLock, Mutex};

/// Decoded keys kept (about 200 bytes each): the senders of every busy group of a large bridge.
pub const KEPT: usize = 4096;

type KeyBytes = [u8; 32];

#[derive(Default)]
struct Kept {
    keys: HashMap<KeyBytes, VerifyingKey>,
    order: VecDeque<KeyBytes>,
}

static KEYS: LazyLock<Mutex<Kept>> = LazyLock::new(Mutex::default);

fn kept() -> std::sync::MutexGuard<'static, Kept> {
    // Only decoded keys are in it, each complete: a panic elsewhere while it was locked leaves nothing half done.
    KEYS.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The decoded key of `pk`, from those kept or decoded now (and kept).
fn key(pk: &[u8]) -> Result<VerifyingKey, CryptoError> {
    let Ok(bytes) = KeyBytes::try_from(pk) else {
        // What RustCrypto answers for a key of another length.
        return Err(CryptoError::CryptoLibraryError);
    };
    if let Some(k) = kept().keys.get(&bytes) {
        return Ok(*k);
    }
    let k = VerifyingKey::try_from(pk).map_err(|_| CryptoError::CryptoLibraryError)?;
    let mut kept = kept();
    if kept.keys.insert(bytes, k).is_none() {
        kept.order.push_back(bytes);
        while kept.order.len() > KEPT {
            if let Some(old) = kept.order.pop_front() {
                kept.keys.remove(&old);
            }
        }
    }
    Ok(k)
}

/// Verifies the Ed25519 `signature` of `data` by `pk` as `openmls_rust_crypto` 0.6 does, with `pk` decoded once.
pub fn verify(data: &[u8], pk: &[u8], signature: &[u8]) -> Result<(), CryptoError> {
    let k = key(pk)?;
    let Ok(sig) = <[u8; SIGNATURE_LENGTH]>::try_from(signature) else {
        return Err(CryptoError::CryptoLibraryError);
    };
    k.verify_strict(data, &Signature::from(sig)).map_err(|_| CryptoError::InvalidSignature)
}

#[cfg(test)]
mod tests {
    use super::*;
    use openmls_rust_crypto::RustCrypto;
    use openmls_traits::crypto::OpenMlsCrypto;
    use openmls_traits::types::SignatureScheme;

    /// Whatever the input, the answer is RustCrypto's: valid, forged, truncated, a key that does not decode, a
    /// small-order key, twice each (the second time from the kept key). Then the cache stays within [`KEPT`] keys.
    /// (One test: another filling the cache beside it could evict the key between the two rounds.)
    #[test]
    fn answers_as_rust_crypto_does_and_keeps_at_most_kept_keys() {
        let crypto = RustCrypto::default();
        let (sk, pk) = crypto.signature_key_gen(SignatureScheme::ED25519).expect("key");
        let sign = |m: &[u8]| crypto.sign(SignatureScheme::ED25519, m, &sk).expect("sign");
        let sig = sign(b"hello");
        let mut forged = sig.clone();
        forged[5] ^= 1;
        let mut other_key = pk.clone();
        other_key[3] ^= 1;
        // The identity point: decodes, but of small order (verify_strict refuses it).
        let mut identity = vec![0u8; 32];
        identity[0] = 1;
        // Bytes that may not decode to a point at all.
        let mut not_a_point = vec![0u8; 32];
        not_a_point[0] = 2;
        let cases: Vec<(&[u8], &[u8], &[u8])> = vec![
            (b"hello", &pk, &sig),
            (b"hellp", &pk, &sig),
            (b"hello", &pk, &forged),
            (b"hello", &pk, &sig[..63]),
            (b"hello", &pk[..31], &sig),
            (b"hello", &other_key, &sig),
            (b"hello", &identity, &sig),
            (b"hello", &not_a_point, &sig),
        ];
        for round in 0..2 {
            if round == 1 {
                let bytes = KeyBytes::try_from(pk.as_slice()).expect("32 bytes");
                assert!(kept().keys.contains_key(&bytes), "the second round verifies with the kept key");
            }
            for (data, key, s) in &cases {
                let expected = crypto.verify_signature(SignatureScheme::ED25519, data, key, s);
                assert_eq!(verify(data, key, s), expected, "data {data:?}, key {key:?}");
            }
        }
        assert_eq!(verify(b"hello", &pk, &sig), Ok(()));

        for _ in 0..KEPT + 10 {
            let (_, pk) = crypto.signature_key_gen(SignatureScheme::ED25519).expect("key");
            let _ = key(&pk);
        }
        let kept = kept();
        assert!(kept.keys.len() <= KEPT && kept.order.len() == kept.keys.len(), "{}", kept.keys.len());
    }
}
