//! The hub lets a member joining by external commit remove its own old leaf (a resync, RFC 9420 §12.4.3.2) and
//! no one else's. OpenMLS only ever builds the first kind, and does not check which leaf an external commit
//! removes when it validates one; mls-rs builds either (`with_removal`), so an outsider on mls-rs could otherwise
//! join an open room and remove any member, the bridge's included.

use crate::mls_support::{Client as BridgeClient, open_store};
use mimi_protocol::hub::{HubRoom, JoinPolicy, Origin, Refusal};
use mimi_protocol::wire::{GroupInfoOption, MlsMessageBytes, RatchetTreeOption, UpdateRequest};
use mls_rs::identity::basic::{BasicCredential, BasicIdentityProvider};
use mls_rs::identity::{CredentialType, SigningIdentity};
use mls_rs::time::MlsTime;
use mls_rs::{CipherSuite, CipherSuiteProvider, Client, CryptoProvider, ExtensionList, IdentityProvider, MlsMessage};
use mls_rs_core::identity::MemberValidationContext;
use mls_rs_crypto_rustcrypto::RustCryptoProvider;

const ROOM: &str = "mimi://bridge.example.org/r/resync";
const MALLORY: &str = "mimi://other.example.net/u/mallory";

/// mls-rs's basic identities, except that any member may remove any other by external commit: what a hostile
/// client can build (mls-rs's own provider refuses to).
#[derive(Clone)]
struct AnySuccessor;

impl IdentityProvider for AnySuccessor {
    type Error = <BasicIdentityProvider as IdentityProvider>::Error;

    fn validate_member(
        &self,
        id: &SigningIdentity,
        at: Option<MlsTime>,
        context: MemberValidationContext<'_>,
    ) -> Result<(), Self::Error> {
        BasicIdentityProvider.validate_member(id, at, context)
    }

    fn validate_external_sender(
        &self,
        id: &SigningIdentity,
        at: Option<MlsTime>,
        extensions: Option<&ExtensionList>,
    ) -> Result<(), Self::Error> {
        BasicIdentityProvider.validate_external_sender(id, at, extensions)
    }

    fn identity(&self, id: &SigningIdentity, extensions: &ExtensionList) -> Result<Vec<u8>, Self::Error> {
        BasicIdentityProvider.identity(id, extensions)
    }

    fn valid_successor(
        &self,
        _: &SigningIdentity,
        _: &SigningIdentity,
        _: &ExtensionList,
    ) -> Result<bool, Self::Error> {
        Ok(true)
    }

    fn supported_types(&self) -> Vec<CredentialType> {
        BasicIdentityProvider.supported_types()
    }
}

/// An mls-rs client of `uri`, with a signature key of its own.
fn mls_rs_client(uri: &str) -> Client<impl mls_rs::client_builder::MlsConfig> {
    let crypto = RustCryptoProvider::default();
    let suite = crypto.cipher_suite_provider(CipherSuite::CURVE25519_AES128).expect("0x0001 supported by mls-rs");
    let (secret, public) = suite.signature_key_generate().expect("signature key");
    let identity = SigningIdentity::new(BasicCredential::new(uri.as_bytes().to_vec()).into_credential(), public);
    Client::builder()
        .identity_provider(AnySuccessor)
        .crypto_provider(crypto)
        .signing_identity(identity, secret, CipherSuite::CURVE25519_AES128)
        .build()
}

fn framed(bytes: Vec<u8>) -> MlsMessageBytes {
    MlsMessageBytes::new(bytes).expect("framed")
}

/// The update request of an external commit by `client` from `group_info` (with its tree), removing leaf
/// `remove` if given; and the GroupInfo of the epoch it makes.
fn external_commit(
    client: &Client<impl mls_rs::client_builder::MlsConfig>,
    group_info: &[u8],
    remove: Option<u32>,
) -> (UpdateRequest, Vec<u8>) {
    let mut builder = client.external_commit_builder().expect("builder");
    if let Some(leaf) = remove {
        builder = builder.with_removal(leaf);
    }
    let info = MlsMessage::from_bytes(group_info).expect("GroupInfo");
    let (group, commit) = builder
        .build(info)
        .unwrap_or_else(|e| panic!("mls-rs builds the external commit (removing {remove:?}): {e:?}"));
    let next = group.group_info_message_allowing_ext_commit(true).expect("GroupInfo").to_bytes().expect("encode");
    let request = UpdateRequest::Commit {
        commit: framed(commit.to_bytes().expect("encode")),
        welcome: None,
        group_info: GroupInfoOption(framed(next.clone())),
        ratchet_tree: RatchetTreeOption::DistributionService,
    };
    (request, next)
}

#[test]
fn the_hub_takes_an_external_commit_removing_the_joiners_own_leaf_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bridge = BridgeClient::new(&open_store(dir.path()), "bridge");
    let g = bridge.create(ROOM.as_bytes());
    let info = g.export_group_info(true).expect("GroupInfo");
    let mut hub = HubRoom::new(ROOM, &framed(info.clone()), None, bridge.member.uri(), JoinPolicy::Open, true)
        .expect("the hub takes the room");
    let from = Origin::Client(MALLORY.to_owned());

    // An outsider joining may not remove the bridge's leaf (leaf 0).
    let mallory = mls_rs_client(MALLORY);
    let (removing, _) = external_commit(&mallory, &info, Some(0));
    let r = hub.update(&removing, MALLORY, &from, 1);
    let refused = matches!(&r, Err(Refusal::NotAllowed(why)) if why.contains("may remove its own old leaf only"));
    assert!(refused, "an external commit removed another member: accepted = {}", r.is_ok());
    assert_eq!(hub.state().epoch, g.epoch(), "the room did not move");

    // The same join without the removal is taken: the refusal was the removal's.
    let (join, next) = external_commit(&mallory, &info, None);
    hub.update(&join, MALLORY, &from, 2).expect("an open room takes the join");
    assert!(hub.state().participants.contains(MALLORY));

    // Mallory's state is lost; she joins again with a new key, removing her old leaf (1): a resync, taken.
    let again = mls_rs_client(MALLORY);
    let (resync, _) = external_commit(&again, &next, Some(1));
    hub.update(&resync, MALLORY, &from, 3).expect("a resync removes the joiner's own old leaf");
    assert!(hub.state().participants.contains(MALLORY));
    assert!(hub.state().participants.contains(bridge.member.uri()));
}
