//! Real MLS messages for the unit tests, made with OpenMLS directly (its in-memory provider): no engine and no
//! store, so that this crate's tests stay as free of tokio as the crate.

use openmls::prelude::tls_codec::{Deserialize as _, Serialize as _};
use openmls::prelude::*;
use openmls_basic_credential::SignatureKeyPair;
use openmls_rust_crypto::OpenMlsRustCrypto;

const SUITE: Ciphersuite = Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519;

/// One MLS client (keys and an in-memory provider) with a basic credential naming its URI.
pub(crate) struct TestClient {
    provider: OpenMlsRustCrypto,
    signer: SignatureKeyPair,
    cwk: CredentialWithKey,
}

/// A group as one of its members sees it, handshakes as PublicMessages (as the bridge's engine sends them).
pub(crate) struct TestGroup {
    client: TestClient,
    group: MlsGroup,
}

/// A commit, its Welcome if it adds members, and the GroupInfo of the epoch it makes.
pub(crate) struct TestCommit {
    pub commit: Vec<u8>,
    pub welcome: Option<Vec<u8>>,
    pub group_info: Option<Vec<u8>>,
}

fn bytes(m: &MlsMessageOut) -> Vec<u8> {
    m.tls_serialize_detached().expect("serialise")
}

fn join_config() -> MlsGroupJoinConfig {
    MlsGroupJoinConfig::builder()
        .wire_format_policy(MIXED_PLAINTEXT_WIRE_FORMAT_POLICY)
        .use_ratchet_tree_extension(true)
        .build()
}

impl TestClient {
    /// A client `uri`.
    pub(crate) fn new(uri: &str) -> Self {
        let provider = OpenMlsRustCrypto::default();
        let signer = SignatureKeyPair::new(SUITE.signature_algorithm()).expect("keys");
        signer.store(provider.storage()).expect("store keys");
        let credential = BasicCredential::new(uri.as_bytes().to_vec()).into();
        let cwk = CredentialWithKey { credential, signature_key: signer.public().into() };
        Self { provider, signer, cwk }
    }

    /// A new group with group id `gid`, this client its only member.
    pub(crate) fn create(self, gid: &[u8]) -> TestGroup {
        let config = MlsGroupCreateConfig::builder()
            .ciphersuite(SUITE)
            .wire_format_policy(MIXED_PLAINTEXT_WIRE_FORMAT_POLICY)
            .use_ratchet_tree_extension(true)
            .build();
        let group = MlsGroup::new_with_group_id(
            &self.provider,
            &self.signer,
            &config,
            GroupId::from_slice(gid),
            self.cwk.clone(),
        )
        .expect("group");
        TestGroup { client: self, group }
    }

    /// One KeyPackage (MLSMessage); its private keys stay with the client.
    pub(crate) fn key_package(&self) -> Vec<u8> {
        let bundle =
            KeyPackage::builder().build(SUITE, &self.provider, &self.signer, self.cwk.clone()).expect("key package");
        bytes(&MlsMessageOut::from(bundle.key_package().clone()))
    }

    /// Joins from a Welcome (MLSMessage) for one of its KeyPackages.
    pub(crate) fn join_from_welcome(self, welcome: &[u8]) -> TestGroup {
        let MlsMessageBodyIn::Welcome(w) = MlsMessageIn::tls_deserialize_exact(welcome).expect("welcome").extract()
        else {
            panic!("not a Welcome")
        };
        let staged = StagedWelcome::new_from_welcome(&self.provider, &join_config(), w, None).expect("staged");
        let group = staged.into_group(&self.provider).expect("joined");
        TestGroup { client: self, group }
    }

    /// Joins by external commit from a GroupInfo (MLSMessage, with the ratchet tree): the group (commit merged)
    /// and the commit with the GroupInfo of the epoch it makes.
    pub(crate) fn join_by_external_commit(self, group_info: &[u8]) -> (TestGroup, TestCommit) {
        let MlsMessageBodyIn::GroupInfo(info) =
            MlsMessageIn::tls_deserialize_exact(group_info).expect("group info").extract()
        else {
            panic!("not a GroupInfo")
        };
        let (mut group, bundle) = MlsGroup::external_commit_builder()
            .with_config(join_config())
            .build_group(&self.provider, info, self.cwk.clone())
            .expect("build")
            .leaf_node_parameters(LeafNodeParameters::default())
            .load_psks(self.provider.storage())
            .expect("psks")
            .build(self.provider.rand(), self.provider.crypto(), &self.signer, |_| true)
            .expect("commit")
            .finalize(&self.provider)
            .expect("finalize");
        let commit = bytes(&bundle.into_commit());
        group.merge_pending_commit(&self.provider).expect("merge");
        let g = TestGroup { client: self, group };
        let group_info = Some(g.export_group_info(true).expect("group info"));
        (g, TestCommit { commit, welcome: None, group_info })
    }
}

/// A creator's group (`mimi://a.test/u/alice`) with group id `gid`. (The unit value stands where the engine's
/// tests keep a temp dir.)
pub(crate) fn group(gid: &[u8]) -> ((), TestGroup) {
    ((), TestClient::new("mimi://a.test/u/alice").create(gid))
}

fn commit_of(
    out: (MlsMessageOut, Option<MlsMessageOut>, Option<openmls::messages::group_info::GroupInfo>),
) -> TestCommit {
    let (commit, welcome, info) = out;
    let info = info.map(MlsMessageOut::from);
    TestCommit { commit: bytes(&commit), welcome: welcome.as_ref().map(bytes), group_info: info.as_ref().map(bytes) }
}

impl TestGroup {
    /// This member's leaf index.
    pub(crate) fn own_index(&self) -> u32 {
        self.group.own_leaf_index().u32()
    }

    /// One PrivateMessage carrying `plaintext`.
    pub(crate) fn encrypt(&mut self, plaintext: &[u8]) -> Result<Vec<u8>, String> {
        let m = self
            .group
            .create_message(&self.client.provider, &self.client.signer, plaintext)
            .map_err(|e| e.to_string())?;
        Ok(bytes(&m))
    }

    /// A self-update commit, left pending (not merged).
    pub(crate) fn self_update(&mut self) -> Result<TestCommit, String> {
        let bundle = self
            .group
            .self_update(&self.client.provider, &self.client.signer, LeafNodeParameters::default())
            .map_err(|e| e.to_string())?;
        let (commit, welcome, info) = bundle.into_messages();
        Ok(TestCommit {
            commit: bytes(&commit),
            welcome: welcome.as_ref().map(bytes),
            group_info: info.as_ref().map(bytes),
        })
    }

    /// A self-update commit whose new leaf names `uri` instead (same signature key), left pending.
    pub(crate) fn self_update_as(&mut self, uri: &str) -> Result<TestCommit, String> {
        let cwk = CredentialWithKey {
            credential: BasicCredential::new(uri.as_bytes().to_vec()).into(),
            signature_key: self.client.signer.public().into(),
        };
        let params = LeafNodeParameters::builder().with_credential_with_key(cwk).build();
        let bundle =
            self.group.self_update(&self.client.provider, &self.client.signer, params).map_err(|e| e.to_string())?;
        let (commit, welcome, info) = bundle.into_messages();
        Ok(TestCommit {
            commit: bytes(&commit),
            welcome: welcome.as_ref().map(bytes),
            group_info: info.as_ref().map(bytes),
        })
    }

    /// A proposal (PublicMessage) to add the member of `key_package` (an MLSMessage), kept in the proposal store.
    pub(crate) fn propose_add(&mut self, key_package: &[u8]) -> Vec<u8> {
        let MlsMessageBodyIn::KeyPackage(k) = MlsMessageIn::tls_deserialize_exact(key_package).expect("kp").extract()
        else {
            panic!("not a KeyPackage")
        };
        let k = k.validate(self.client.provider.crypto(), ProtocolVersion::Mls10).expect("valid");
        let (m, _) = self.group.propose_add_member(&self.client.provider, &self.client.signer, &k).expect("proposal");
        bytes(&m)
    }

    /// A proposal to update this member's leaf to one naming `uri` (same signature key).
    pub(crate) fn propose_update_as(&mut self, uri: &str) -> Vec<u8> {
        let cwk = CredentialWithKey {
            credential: BasicCredential::new(uri.as_bytes().to_vec()).into(),
            signature_key: self.client.signer.public().into(),
        };
        let params = LeafNodeParameters::builder().with_credential_with_key(cwk).build();
        let (m, _) =
            self.group.propose_self_update(&self.client.provider, &self.client.signer, params).expect("proposal");
        bytes(&m)
    }

    /// A commit adding the members of `key_packages` (MLSMessages), left pending.
    pub(crate) fn add(&mut self, key_packages: &[Vec<u8>]) -> TestCommit {
        let kps: Vec<KeyPackage> = key_packages
            .iter()
            .map(|kp| {
                let MlsMessageBodyIn::KeyPackage(k) = MlsMessageIn::tls_deserialize_exact(kp).expect("kp").extract()
                else {
                    panic!("not a KeyPackage")
                };
                k.validate(self.client.provider.crypto(), ProtocolVersion::Mls10).expect("valid")
            })
            .collect();
        let (c, w, gi) = self.group.add_members(&self.client.provider, &self.client.signer, &kps).expect("add");
        commit_of((c, Some(w), gi))
    }

    /// A commit removing the members at `leaves`, left pending.
    pub(crate) fn remove(&mut self, leaves: &[u32]) -> TestCommit {
        let idx: Vec<LeafNodeIndex> = leaves.iter().map(|l| LeafNodeIndex::new(*l)).collect();
        commit_of(self.group.remove_members(&self.client.provider, &self.client.signer, &idx).expect("remove"))
    }

    /// A proposal (PublicMessage) to remove the member at `leaf`, kept in the group's proposal store.
    pub(crate) fn propose_remove(&mut self, leaf: u32) -> Vec<u8> {
        let (m, _) = self
            .group
            .propose_remove_member(&self.client.provider, &self.client.signer, LeafNodeIndex::new(leaf))
            .expect("proposal");
        bytes(&m)
    }

    /// Drops the pending commit.
    pub(crate) fn clear(&mut self) {
        self.group.clear_pending_commit(self.client.provider.storage()).expect("clear");
    }

    /// Drops the pending proposals.
    pub(crate) fn clear_proposals(&mut self) {
        self.group.clear_pending_proposals(self.client.provider.storage()).expect("clear");
    }

    /// Merges the pending commit.
    pub(crate) fn merge(&mut self) {
        self.group.merge_pending_commit(&self.client.provider).expect("merge");
    }

    /// Processes a handshake (MLSMessage) from another member, merging a commit.
    pub(crate) fn process(&mut self, message: &[u8]) {
        let m = MlsMessageIn::tls_deserialize_exact(message).expect("message");
        let pm = m.try_into_protocol_message().expect("protocol message");
        let processed = self.group.process_message(&self.client.provider, pm).expect("processed");
        match processed.into_content() {
            ProcessedMessageContent::StagedCommitMessage(c) => {
                self.group.merge_staged_commit(&self.client.provider, *c).expect("merge")
            }
            ProcessedMessageContent::ProposalMessage(p) => {
                self.group.store_pending_proposal(self.client.provider.storage(), *p).expect("store")
            }
            _ => {}
        }
    }

    /// The current epoch's GroupInfo (MLSMessage).
    pub(crate) fn export_group_info(&self, with_ratchet_tree: bool) -> Result<Vec<u8>, String> {
        let gi = self
            .group
            .export_group_info(self.client.provider.crypto(), &self.client.signer, with_ratchet_tree)
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
    TestClient::new(uri).key_package()
}

/// A commit as a non-member forges it (issue #15): a PublicMessage of group `gid` at `epoch` from "member 0" — an
/// empty commit, with random bytes for the signature, the confirmation tag and the membership tag.
pub(crate) fn forged_commit(gid: &[u8], epoch: u64) -> Vec<u8> {
    let vl = |out: &mut Vec<u8>, b: &[u8]| {
        match u8::try_from(b.len()) {
            Ok(n) if n < 64 => out.push(n),
            _ => out.extend_from_slice(&(u16::try_from(b.len()).expect("short") | 0x4000).to_be_bytes()),
        }
        out.extend_from_slice(b);
    };
    let mut m = vec![0, 1, 0, 1]; // mls10, mls_public_message
    vl(&mut m, gid);
    m.extend_from_slice(&epoch.to_be_bytes());
    m.extend_from_slice(&[1, 0, 0, 0, 0]); // sender: member, leaf 0
    vl(&mut m, b""); // authenticated_data
    m.push(3); // commit
    vl(&mut m, b""); // no proposals
    m.push(0); // no path
    let random = |n: usize| (0..n).map(|_| rand::random::<u8>()).collect::<Vec<u8>>();
    vl(&mut m, &random(64)); // signature
    vl(&mut m, &random(32)); // confirmation tag
    vl(&mut m, &random(32)); // membership tag
    m
}
