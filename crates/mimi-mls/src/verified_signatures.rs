//! Leaf and KeyPackage signatures verified once per process, and a ratchet tree's verified on all cores before a
//! join.
//!
//! Joining a group from a Welcome, OpenMLS verifies the signature of every leaf of the ratchet tree, one after the
//! other: at 10 000 members, about two fifths of the join. It offers no way to spread that over cores. And in
//! per-user mode (`mls_identity = "per-user"`) the same leaves are verified again by every local leaf: each new
//! leaf's join verifies the whole tree, each local leaf processing a commit of adds verifies every added
//! KeyPackage.
//!
//! [`MlsCrypto`] is RustCrypto with one change: a signature over a `LeafNodeTBS` or a `KeyPackageTBS` that
//! verified is remembered, as a SHA-256 digest of the algorithm, key, signature and signed content, and the same
//! verification again is answered from memory. [`preverify_tree`] verifies a tree's leaf signatures in parallel
//! ahead of OpenMLS, which then finds them remembered. Only a verification that succeeded is remembered, and only
//! for exactly the bytes that were verified, so what OpenMLS accepts does not change; a leaf whose signed content
//! this module reconstructs differently from OpenMLS is merely verified twice. The memory holds at most
//! [`REMEMBERED`] digests (oldest forgotten first) and is shared by all local members: a signature's validity
//! depends on nothing else than those four inputs.
//!
//! Messages are signed over `FramedContentTBS`; they are never verified twice and do not pass through the memory,
//! but their senders' Ed25519 keys are kept decoded ([`crate::verifying_keys`]).

use mimi_protocol::wire::{Reader, WireError, Writer};
use openmls::prelude::tls_codec::SecretVLBytes;
use openmls_rust_crypto::RustCrypto;
use openmls_traits::crypto::OpenMlsCrypto;
use openmls_traits::types::{
    AeadType, Ciphersuite, CryptoError, ExporterSecret, HashType, HpkeCiphertext, HpkeConfig, HpkeKeyPair, KemOutput,
    SignatureScheme,
};
use rayon::prelude::*;
use sha2::{Digest as _, Sha256};
use std::collections::{HashSet, VecDeque};
use std::sync::{LazyLock, Mutex};

/// Digests of verified signatures kept: a tree of 10 000 leaves and the KeyPackages of the commits around it, in
/// about 3 MiB once full (the digests twice, in the set and in their order).
pub const REMEMBERED: usize = 32_768;

/// Trees with fewer leaves are left to OpenMLS alone: below this, spreading the work costs more than it saves.
pub const PREVERIFY_FROM_LEAVES: usize = 16;

/// The labels (RFC 9420 §5.1.2, `"MLS 1.0 " + Label`) of the signatures remembered.
const LEAF_NODE_LABEL: &[u8] = b"MLS 1.0 LeafNodeTBS";
const KEY_PACKAGE_LABEL: &[u8] = b"MLS 1.0 KeyPackageTBS";

type SignatureDigest = [u8; 32];

/// The verified signatures' digests, in the order they were remembered.
#[derive(Default)]
struct Remembered {
    digests: HashSet<SignatureDigest>,
    order: VecDeque<SignatureDigest>,
}

impl Remembered {
    fn insert(&mut self, d: SignatureDigest) {
        if self.digests.contains(&d) {
            return;
        }
        while self.order.len() >= REMEMBERED {
            if let Some(old) = self.order.pop_front() {
                self.digests.remove(&old);
            }
        }
        self.digests.insert(d);
        self.order.push_back(d);
    }
}

static VERIFIED: LazyLock<Mutex<Remembered>> = LazyLock::new(Mutex::default);

thread_local! {
    /// Verifications this thread answered from memory (tests count them).
    static ANSWERED_FROM_MEMORY: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// How many verifications the calling thread has answered from memory so far.
pub fn answered_from_memory() -> u64 {
    ANSWERED_FROM_MEMORY.with(std::cell::Cell::get)
}

/// Forgets every verified signature. For measurements that stand for members in separate processes: within one
/// process, a member would otherwise find what another verified.
pub fn forget() {
    let mut r = remembered();
    r.digests.clear();
    r.order.clear();
}

fn remembered() -> std::sync::MutexGuard<'static, Remembered> {
    // The set holds digests only; a panic while it was locked cannot have left it inconsistent in a way that
    // matters (at worst a digest is in one of the two collections).
    VERIFIED.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Whether `data` is the `SignContent` of a signature worth remembering.
fn worth_remembering(data: &[u8]) -> bool {
    [LEAF_NODE_LABEL, KEY_PACKAGE_LABEL]
        .iter()
        .any(|label| data.first() == Some(&(label.len() as u8)) && data.get(1..=label.len()) == Some(label))
}

fn digest(alg: SignatureScheme, data: &[u8], pk: &[u8], signature: &[u8]) -> SignatureDigest {
    let mut h = Sha256::new();
    h.update((alg as u16).to_be_bytes());
    for part in [pk, signature] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    h.update(data);
    h.finalize().into()
}

/// The OpenMLS crypto provider of the engine: RustCrypto, with verified leaf and KeyPackage signatures remembered
/// (module docs).
#[derive(Debug, Default)]
pub struct MlsCrypto {
    inner: RustCrypto,
}

impl MlsCrypto {
    /// The RustCrypto behind it, which is also the engine's randomness.
    pub fn rust_crypto(&self) -> &RustCrypto {
        &self.inner
    }
}

impl OpenMlsCrypto for MlsCrypto {
    fn verify_signature(
        &self,
        alg: SignatureScheme,
        data: &[u8],
        pk: &[u8],
        signature: &[u8],
    ) -> Result<(), CryptoError> {
        if !worth_remembering(data) {
            return match alg {
                SignatureScheme::ED25519 => crate::verifying_keys::verify(data, pk, signature),
                _ => self.inner.verify_signature(alg, data, pk, signature),
            };
        }
        let d = digest(alg, data, pk, signature);
        if remembered().digests.contains(&d) {
            ANSWERED_FROM_MEMORY.with(|c| c.set(c.get() + 1));
            return Ok(());
        }
        self.inner.verify_signature(alg, data, pk, signature)?;
        remembered().insert(d);
        Ok(())
    }

    fn supports(&self, ciphersuite: Ciphersuite) -> Result<(), CryptoError> {
        self.inner.supports(ciphersuite)
    }

    fn supported_ciphersuites(&self) -> Vec<Ciphersuite> {
        self.inner.supported_ciphersuites()
    }

    fn hkdf_extract(&self, hash_type: HashType, salt: &[u8], ikm: &[u8]) -> Result<SecretVLBytes, CryptoError> {
        self.inner.hkdf_extract(hash_type, salt, ikm)
    }

    fn hmac(&self, hash_type: HashType, key: &[u8], message: &[u8]) -> Result<SecretVLBytes, CryptoError> {
        self.inner.hmac(hash_type, key, message)
    }

    fn hkdf_expand(
        &self,
        hash_type: HashType,
        prk: &[u8],
        info: &[u8],
        okm_len: usize,
    ) -> Result<SecretVLBytes, CryptoError> {
        self.inner.hkdf_expand(hash_type, prk, info, okm_len)
    }

    fn hash(&self, hash_type: HashType, data: &[u8]) -> Result<Vec<u8>, CryptoError> {
        self.inner.hash(hash_type, data)
    }

    fn aead_encrypt(
        &self,
        alg: AeadType,
        key: &[u8],
        data: &[u8],
        nonce: &[u8],
        aad: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        self.inner.aead_encrypt(alg, key, data, nonce, aad)
    }

    fn aead_decrypt(
        &self,
        alg: AeadType,
        key: &[u8],
        ct_tag: &[u8],
        nonce: &[u8],
        aad: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        self.inner.aead_decrypt(alg, key, ct_tag, nonce, aad)
    }

    fn signature_key_gen(&self, alg: SignatureScheme) -> Result<(Vec<u8>, Vec<u8>), CryptoError> {
        self.inner.signature_key_gen(alg)
    }

    fn sign(&self, alg: SignatureScheme, data: &[u8], key: &[u8]) -> Result<Vec<u8>, CryptoError> {
        self.inner.sign(alg, data, key)
    }

    fn hpke_seal(
        &self,
        config: HpkeConfig,
        pk_r: &[u8],
        info: &[u8],
        aad: &[u8],
        ptxt: &[u8],
    ) -> Result<HpkeCiphertext, CryptoError> {
        self.inner.hpke_seal(config, pk_r, info, aad, ptxt)
    }

    fn hpke_open(
        &self,
        config: HpkeConfig,
        input: &HpkeCiphertext,
        sk_r: &[u8],
        info: &[u8],
        aad: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        self.inner.hpke_open(config, input, sk_r, info, aad)
    }

    fn hpke_setup_sender_and_export(
        &self,
        config: HpkeConfig,
        pk_r: &[u8],
        info: &[u8],
        exporter_context: &[u8],
        exporter_length: usize,
    ) -> Result<(KemOutput, ExporterSecret), CryptoError> {
        self.inner.hpke_setup_sender_and_export(config, pk_r, info, exporter_context, exporter_length)
    }

    fn hpke_setup_receiver_and_export(
        &self,
        config: HpkeConfig,
        enc: &[u8],
        sk_r: &[u8],
        info: &[u8],
        exporter_context: &[u8],
        exporter_length: usize,
    ) -> Result<ExporterSecret, CryptoError> {
        self.inner.hpke_setup_receiver_and_export(config, enc, sk_r, info, exporter_context, exporter_length)
    }

    fn derive_hpke_keypair(&self, config: HpkeConfig, ikm: &[u8]) -> Result<HpkeKeyPair, CryptoError> {
        self.inner.derive_hpke_keypair(config, ikm)
    }
}

/// One leaf signature of a tree: what OpenMLS will hand to `verify_signature` for it.
struct LeafSignature {
    data: Vec<u8>,
    pk: Vec<u8>,
    signature: Vec<u8>,
}

/// What [`preverify_tree`] did with a tree's leaf signatures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Preverified {
    /// The tree's leaves (0 if it was not read: too small, or malformed).
    pub leaves: usize,
    /// Of those, already remembered.
    pub known: usize,
    /// Verified now, and remembered.
    pub verified: usize,
    /// A leaf's signature did not verify: the verification stopped there and nothing was remembered (OpenMLS
    /// will refuse the tree).
    pub refused: bool,
}

/// Verifies the leaf signatures of `tree` (the TLS encoding of `optional<Node> ratchet_tree<V>`) of group
/// `group_id` on all threads of the current rayon pool, and remembers them, so that OpenMLS's own verification of
/// the tree finds them. Stops at the first signature that does not verify (like OpenMLS: a forged tree costs
/// little). Does nothing for a tree of fewer than [`PREVERIFY_FROM_LEAVES`] leaves, or one it cannot read:
/// OpenMLS checks the tree in any case and refuses it if it is malformed.
pub fn preverify_tree(alg: SignatureScheme, group_id: &[u8], tree: &[u8]) -> Preverified {
    let leaves = match leaf_signatures(group_id, tree) {
        Ok(l) if l.len() >= PREVERIFY_FROM_LEAVES => l,
        _ => return Preverified::default(),
    };
    let digests: Vec<SignatureDigest> = leaves.par_iter().map(|l| digest(alg, &l.data, &l.pk, &l.signature)).collect();
    let todo: Vec<(SignatureDigest, &LeafSignature)> = {
        let known = remembered();
        digests.iter().zip(&leaves).filter(|(d, _)| !known.digests.contains(*d)).map(|(d, l)| (*d, l)).collect()
    };
    let crypto = RustCrypto::default();
    let verified: Result<Vec<SignatureDigest>, CryptoError> =
        todo.par_iter().map(|(d, l)| crypto.verify_signature(alg, &l.data, &l.pk, &l.signature).map(|()| *d)).collect();
    let mut done = Preverified { leaves: leaves.len(), known: leaves.len() - todo.len(), ..Preverified::default() };
    match verified {
        Ok(verified) => {
            let mut known = remembered();
            for d in &verified {
                known.insert(*d);
            }
            done.verified = verified.len();
        }
        Err(_) => done.refused = true,
    }
    done
}

/// The ratchet tree a join will use: the one in the GroupInfo's `ratchet_tree` extension if it has one (OpenMLS
/// then ignores the other), else `out_of_band`.
pub(crate) fn tree_of_join<'a>(
    in_group_info: Option<&openmls::prelude::RatchetTreeExtension>,
    out_of_band: Option<&'a [u8]>,
) -> Option<std::borrow::Cow<'a, [u8]>> {
    use openmls::prelude::tls_codec::Serialize as _;
    match in_group_info {
        Some(ext) => ext.ratchet_tree().tls_serialize_detached().ok().map(std::borrow::Cow::Owned),
        None => out_of_band.map(std::borrow::Cow::Borrowed),
    }
}

/// The `SignContent` (RFC 9420 §5.1.2) of every leaf of `tree`, with its key and signature.
fn leaf_signatures(group_id: &[u8], tree: &[u8]) -> Result<Vec<LeafSignature>, WireError> {
    let mut outer = Reader::new(tree);
    let nodes = outer.vl_bytes()?;
    outer.finish()?;
    let mut r = Reader::new(&nodes);
    let mut out = Vec::new();
    let mut index: u32 = 0;
    while !r.rest().is_empty() {
        let present = r.u8()?;
        if present == 1 {
            match r.u8()? {
                // leaf
                1 => out.push(leaf_signature(&mut r, group_id, index / 2)?),
                // parent: encryption_key<V>, parent_hash<V>, unmerged_leaves<V>
                2 => {
                    for _ in 0..3 {
                        r.vl_bytes()?;
                    }
                }
                _ => return Err(WireError::Invalid("unknown node type".into())),
            }
        }
        index = index.checked_add(1).ok_or_else(|| WireError::Invalid("tree too large".into()))?;
    }
    Ok(out)
}

/// One `LeafNode` (RFC 9420 §7.2), read from `r`, as the signature OpenMLS verifies for leaf `leaf_index`.
fn leaf_signature(r: &mut Reader<'_>, group_id: &[u8], leaf_index: u32) -> Result<LeafSignature, WireError> {
    let start = r.rest();
    r.vl_bytes()?; // encryption_key
    let pk = r.vl_bytes()?; // signature_key
    r.u16()?; // credential_type
    r.vl_bytes()?; // the credential's content (identity, certificates, …)
    for _ in 0..5 {
        r.vl_bytes()?; // capabilities: versions, cipher_suites, extensions, proposals, credentials
    }
    let source = r.u8()?;
    match source {
        // key_package: lifetime
        1 => {
            r.u64()?;
            r.u64()?;
        }
        // update
        2 => {}
        // commit: parent_hash<V>
        3 => {
            r.vl_bytes()?;
        }
        _ => return Err(WireError::Invalid("unknown leaf node source".into())),
    }
    r.vl_bytes()?; // extensions
    let payload = &start[..start.len() - r.rest().len()];
    let signature = r.vl_bytes()?;
    // LeafNodeTBS: the payload, and for a leaf not from a KeyPackage, the group and the leaf's place in it.
    let mut tbs = Writer::default();
    tbs.raw(payload);
    if source != 1 {
        tbs.vl_bytes(group_id)?;
        tbs.raw(&leaf_index.to_be_bytes());
    }
    let mut data = Writer::default();
    data.vl_bytes(LEAF_NODE_LABEL)?;
    data.vl_bytes(&tbs.into_bytes())?;
    Ok(LeafSignature { data: data.into_bytes(), pk, signature })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED25519: SignatureScheme = SignatureScheme::ED25519;

    /// A `SignContent` of `label` over `content`, a fresh key and its signature: (data, public key, signature).
    fn signed(label: &[u8], content: &[u8]) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
        let mut w = Writer::default();
        w.vl_bytes(label).expect("label");
        w.vl_bytes(content).expect("content");
        let data = w.into_bytes();
        let crypto = RustCrypto::default();
        let (private, public) = crypto.signature_key_gen(ED25519).expect("key");
        let signature = crypto.sign(ED25519, &data, &private).expect("sign");
        (data, public, signature)
    }

    fn flipped(bytes: &[u8]) -> Vec<u8> {
        let mut b = bytes.to_vec();
        if let Some(x) = b.last_mut() {
            *x ^= 1;
        }
        b
    }

    #[test]
    fn a_remembered_signature_answers_only_for_exactly_the_inputs_that_verified() {
        let c = MlsCrypto::default();
        for label in [LEAF_NODE_LABEL, KEY_PACKAGE_LABEL] {
            let (data, pk, sig) = signed(label, b"a leaf node");
            let start = answered_from_memory();
            c.verify_signature(ED25519, &data, &pk, &sig).expect("verifies");
            assert_eq!(answered_from_memory(), start, "the first time it is verified");
            c.verify_signature(ED25519, &data, &pk, &sig).expect("verifies again");
            assert_eq!(answered_from_memory(), start + 1, "the second time it is remembered");

            let (_, other_pk, _) = signed(label, b"another leaf node");
            assert!(c.verify_signature(ED25519, &data, &pk, &flipped(&sig)).is_err(), "another signature");
            assert!(c.verify_signature(ED25519, &data, &other_pk, &sig).is_err(), "another key");
            assert!(c.verify_signature(ED25519, &flipped(&data), &pk, &sig).is_err(), "other content");
            let ecdsa = SignatureScheme::ECDSA_SECP256R1_SHA256;
            assert!(c.verify_signature(ecdsa, &data, &pk, &sig).is_err(), "another algorithm");
            // A failure is not remembered: refused again, from the verification itself.
            assert!(c.verify_signature(ED25519, &data, &pk, &flipped(&sig)).is_err());
            assert_eq!(answered_from_memory(), start + 1);
        }
    }

    #[test]
    fn signatures_over_other_content_are_not_remembered() {
        let c = MlsCrypto::default();
        let (data, pk, sig) = signed(b"MLS 1.0 FramedContentTBS", b"an application message");
        let start = answered_from_memory();
        for _ in 0..2 {
            c.verify_signature(ED25519, &data, &pk, &sig).expect("verifies");
        }
        assert_eq!(answered_from_memory(), start);
    }

    #[test]
    fn unreadable_trees_are_left_to_openmls() {
        for tree in [&b""[..], &[0xff; 40][..], &[0x40, 0x05, 1, 1, 0][..]] {
            assert_eq!(preverify_tree(ED25519, b"g", tree), Preverified::default());
        }
    }
}
