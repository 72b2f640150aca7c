//! Real MLS messages for the unit tests, made with OpenMLS directly (its in-memory provider): no engine and no
//! store, so that this crate's tests stay as free of tokio as the crate.

use openmls::prelude::tls_codec::Serialize as _;
use openmls::prelude::*;
use openmls_basic_credential::SignatureKeyPair;
use openmls_rust_crypto::OpenMlsRustCrypto;

const SUITE: Ciphersuite = Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519;

/// A one-member group of `mimi://a.test/u/alice`, handshakes as PublicMessages (as the bridge's engine sends them).
pub(crate) struct TestGroup {
    provider: OpenMlsRustCrypto,
    signer: SignatureKeyPair,
    group: MlsGroup,
}

/// A commit and the GroupInfo of the epoch it makes.
pub(crate) struct TestCommit {
    pub commit: Vec<u8>,
    pub group_info: Option<Vec<u8>>,
}

fn bytes(m: &MlsMessageOut) -> Vec<u8> {
    m.tls_serialize_detached().expect("serialise")
}

fn member(provider: &OpenMlsRustCrypto, uri: &str) -> (SignatureKeyPair, CredentialWithKey) {
    let signer = SignatureKeyPair::new(SUITE.signature_algorithm()).expect("keys");
    signer.store(provider.storage()).expect("store keys");
    let credential = BasicCredential::new(uri.as_bytes().to_vec()).into();
    let signature_key = signer.public().into();
    (signer, CredentialWithKey { credential, signature_key })
}

/// A creator's group with group id `gid`. (The unit value stands where the engine's tests keep a temp dir.)
pub(crate) fn group(gid: &[u8]) -> ((), TestGroup) {
    let provider = OpenMlsRustCrypto::default();
    let (signer, cwk) = member(&provider, "mimi://a.test/u/alice");
    let config = MlsGroupCreateConfig::builder()
        .ciphersuite(SUITE)
        .wire_format_policy(MIXED_PLAINTEXT_WIRE_FORMAT_POLICY)
        .use_ratchet_tree_extension(true)
        .build();
    let group = MlsGroup::new_with_group_id(&provider, &signer, &config, GroupId::from_slice(gid), cwk).expect("group");
    ((), TestGroup { provider, signer, group })
}

impl TestGroup {
    pub(crate) fn epoch(&self) -> u64 {
        self.group.epoch().as_u64()
    }

    /// One PrivateMessage carrying `plaintext`.
    pub(crate) fn encrypt(&mut self, plaintext: &[u8]) -> Result<Vec<u8>, String> {
        let m = self.group.create_message(&self.provider, &self.signer, plaintext).map_err(|e| e.to_string())?;
        Ok(bytes(&m))
    }

    /// A self-update commit, left pending (not merged).
    pub(crate) fn self_update(&mut self) -> Result<TestCommit, String> {
        let bundle = self
            .group
            .self_update(&self.provider, &self.signer, LeafNodeParameters::default())
            .map_err(|e| e.to_string())?;
        let (commit, _welcome, info) = bundle.into_messages();
        Ok(TestCommit { commit: bytes(&commit), group_info: info.as_ref().map(bytes) })
    }

    /// The current epoch's GroupInfo (MLSMessage).
    pub(crate) fn export_group_info(&self, with_ratchet_tree: bool) -> Result<Vec<u8>, String> {
        let gi = self
            .group
            .export_group_info(self.provider.crypto(), &self.signer, with_ratchet_tree)
            .map_err(|e| e.to_string())?;
        Ok(bytes(&gi))
    }
}

/// One PrivateMessage.
pub(crate) fn private_message() -> Vec<u8> {
    let (_, mut g) = group(b"mimi://a.test/r/x");
    g.encrypt(b"x").expect("encrypt")
}

/// One KeyPackage (MLSMessage) of a fresh member `uri`.
pub(crate) fn key_package(uri: &str) -> Vec<u8> {
    let provider = OpenMlsRustCrypto::default();
    let (signer, cwk) = member(&provider, uri);
    let bundle = KeyPackage::builder().build(SUITE, &provider, &signer, cwk).expect("key package");
    bytes(&MlsMessageOut::from(bundle.key_package().clone()))
}
