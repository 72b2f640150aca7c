//! Ed25519 signatures of messages verified with their signers' keys kept decoded, and without decoding `R`.
//!
//! Every handshake and application message is signed by its sender's leaf key. RustCrypto decodes that key from
//! its 32 bytes at each verification, and `verify_strict` also decodes the signature's `R`: a square root in the
//! field each, together about a quarter of what verifying a signature costs. [`verify`] answers exactly as
//! `openmls_rust_crypto` does (`VerifyingKey::try_from`, then `verify_strict`, with the same errors), with less:
//!
//! - **The key**: the decoded keys of the last [`KEPT`] signers are kept. A key decodes to the same value
//!   whenever it is decoded, so the result cannot differ. Keys that failed to decode are not kept.
//! - **`R`**: `verify_strict` is the plain check (`[s]B − [k]A` encodes to the bytes of `R`, with `s` canonical)
//!   plus three refusals: `R` does not decode, `R` is of small order, `A` is of small order. Once the plain check
//!   has passed, the bytes of `R` are the canonical encoding of a point (the one computed), so `R` decodes, and it
//!   is of small order exactly when those bytes are one of the eight canonical encodings of the points of small
//!   order ([`SMALL_ORDER`]). So [`verify`] runs the plain check and compares bytes, and never decodes `R`.

use ed25519_dalek::{SIGNATURE_LENGTH, Signature, Verifier as _, VerifyingKey};
use openmls_traits::types::CryptoError;
use std::collections::{HashMap, VecDeque};
use std::sync::{LazyLock, Mutex};

/// Decoded keys kept (about 200 bytes each): the senders of every busy group of a large bridge.
pub const KEPT: usize = 4096;

type KeyBytes = [u8; 32];

/// The canonical encodings of the eight points of small order (the torsion subgroup of the curve, of order 8):
/// the identity, the point of order 2, two of order 4 and four of order 8. A test derives them from
/// curve25519-dalek's `EIGHT_TORSION`.
const SMALL_ORDER: [KeyBytes; 8] = [
    hex32("0100000000000000000000000000000000000000000000000000000000000000"),
    hex32("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
    hex32("0000000000000000000000000000000000000000000000000000000000000000"),
    hex32("0000000000000000000000000000000000000000000000000000000000000080"),
    hex32("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a"),
    hex32("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa"),
    hex32("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05"),
    hex32("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85"),
];

/// 32 bytes from 64 hex digits, at compile time.
const fn hex32(s: &str) -> KeyBytes {
    const fn digit(c: u8) -> u8 {
        match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => panic!("not a lowercase hex digit"),
        }
    }
    let s = s.as_bytes();
    assert!(s.len() == 64, "64 hex digits");
    let mut out = [0u8; 32];
    let mut i = 0;
    while i < 32 {
        out[i] = (digit(s[2 * i]) << 4) | digit(s[2 * i + 1]);
        i += 1;
    }
    out
}

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

/// Verifies the Ed25519 `signature` of `data` by `pk`, answering as `openmls_rust_crypto` 0.6 does (the module
/// documentation says why the answer cannot differ).
pub fn verify(data: &[u8], pk: &[u8], signature: &[u8]) -> Result<(), CryptoError> {
    let k = key(pk)?;
    let Ok(sig) = <[u8; SIGNATURE_LENGTH]>::try_from(signature) else {
        return Err(CryptoError::CryptoLibraryError);
    };
    let sig = Signature::from(sig);
    // `verify_strict`'s refusals that the plain check leaves out (every refusal is the same error).
    if k.is_weak() || SMALL_ORDER.contains(sig.r_bytes()) {
        return Err(CryptoError::InvalidSignature);
    }
    k.verify(data, &sig).map_err(|_| CryptoError::InvalidSignature)
}

#[cfg(test)]
mod tests {
    use super::*;
    use curve25519_dalek::Scalar;
    use curve25519_dalek::constants::{ED25519_BASEPOINT_POINT, EIGHT_TORSION};
    use ed25519_dalek::{Signer as _, SigningKey};
    use openmls_rust_crypto::RustCrypto;
    use openmls_traits::crypto::OpenMlsCrypto;
    use openmls_traits::types::SignatureScheme;
    use rand::Rng as _;
    use sha2::{Digest as _, Sha512};

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

    /// [`SMALL_ORDER`] is exactly the canonical encodings of curve25519-dalek's eight points of small order.
    #[test]
    fn small_order_lists_the_eight_torsion_points() {
        let mut derived: Vec<KeyBytes> = EIGHT_TORSION.iter().map(|p| p.compress().to_bytes()).collect();
        let mut listed = SMALL_ORDER.to_vec();
        derived.sort_unstable();
        listed.sort_unstable();
        derived.dedup();
        assert_eq!(derived.len(), 8, "eight distinct points");
        assert_eq!(listed, derived);
    }

    /// The signatures the plain check accepts and `verify_strict` refuses (the ones only the byte comparison of
    /// `R` and the check of the key stop), and random corruptions of a valid one: the answer is RustCrypto's.
    #[test]
    fn refuses_what_verify_strict_refuses_though_the_plain_check_accepts() {
        let crypto = RustCrypto::default();
        let same = |data: &[u8], pk: &[u8], sig: &[u8]| {
            let expected = crypto.verify_signature(SignatureScheme::ED25519, data, pk, sig);
            assert_eq!(verify(data, pk, sig), expected, "data {data:?}, key {pk:?}, signature {sig:?}");
            expected
        };
        let plain_accepts = |data: &[u8], pk: &KeyBytes, sig: &[u8; 64]| {
            VerifyingKey::from_bytes(pk).expect("decodes").verify(data, &Signature::from_bytes(sig)).is_ok()
        };
        let challenge = |r: &KeyBytes, a: &KeyBytes, m: &[u8]| {
            let digest: [u8; 64] = Sha512::new().chain_update(r).chain_update(a).chain_update(m).finalize().into();
            Scalar::from_bytes_mod_order_wide(&digest)
        };
        let signature = |r: &KeyBytes, s: &Scalar| {
            let mut sig = [0u8; 64];
            sig[..32].copy_from_slice(r);
            sig[32..].copy_from_slice(s.as_bytes());
            sig
        };

        // A key of small order (the identity), R the identity, s = 0: [0]B − [k]A is the identity.
        let identity = SMALL_ORDER[0];
        let sig = signature(&identity, &Scalar::ZERO);
        assert!(plain_accepts(b"any", &identity, &sig));
        assert_eq!(same(b"any", &identity, &sig), Err(CryptoError::InvalidSignature));

        // The same key, R = [s]B (not of small order): [s]B − [k]A is R. Only the check of the key refuses it.
        let s = Scalar::from(5u8);
        let sig = signature(&(s * ED25519_BASEPOINT_POINT).compress().to_bytes(), &s);
        assert!(plain_accepts(b"any", &identity, &sig));
        assert_eq!(same(b"any", &identity, &sig), Err(CryptoError::InvalidSignature));

        // A key of its owner, R the identity, s = k·a: [s]B − [k]A is the identity again.
        let owner = SigningKey::from_bytes(&[7; 32]);
        let a = owner.verifying_key().to_bytes();
        let m = b"hello";
        let sig = signature(&identity, &(challenge(&identity, &a, m) * owner.to_scalar()));
        assert!(plain_accepts(m, &a, &sig));
        assert_eq!(same(m, &a, &sig), Err(CryptoError::InvalidSignature));

        // The owner's key plus a point T of order 8 (not itself of small order), s = k·a: [s]B − [k]A = −[k]T,
        // which is R for about one R in eight. Messages are tried until each of the eight R has been hit.
        let t = EIGHT_TORSION[1];
        let a_t = (owner.verifying_key().to_edwards() + t).compress().to_bytes();
        assert!(!VerifyingKey::from_bytes(&a_t).expect("decodes").is_weak());
        let mut hit = [false; 8];
        for n in 0u32..2000 {
            let m = n.to_be_bytes();
            for (i, r) in SMALL_ORDER.iter().enumerate() {
                let k = challenge(r, &a_t, &m);
                if (-(k * t)).compress().to_bytes() != *r {
                    continue;
                }
                let sig = signature(r, &(k * owner.to_scalar()));
                assert!(plain_accepts(&m, &a_t, &sig), "R {i}");
                assert_eq!(same(&m, &a_t, &sig), Err(CryptoError::InvalidSignature), "R {i}");
                hit[i] = true;
            }
            if hit.iter().all(|h| *h) {
                break;
            }
        }
        assert_eq!(hit, [true; 8], "every encoding of small order was tried as R");

        // A bit flipped in a valid signature, its key or its data: refused, as RustCrypto refuses it.
        let sig = owner.sign(m).to_bytes();
        assert_eq!(same(m, &a, &sig), Ok(()));
        let mut rng = rand::rng();
        for _ in 0..300 {
            let (mut data, mut pk, mut s) = (m.to_vec(), a, sig);
            match rng.random_range(0..3) {
                0 => data[rng.random_range(0..m.len())] ^= 1 << rng.random_range(0..8),
                1 => pk[rng.random_range(0..32)] ^= 1 << rng.random_range(0..8),
                _ => s[rng.random_range(0..64)] ^= 1 << rng.random_range(0..8),
            }
            assert!(same(&data, &pk, &s).is_err(), "a corrupted signature, key or data verified");
        }
    }
}
