//! `GroupInfoRequest` / `GroupInfoResponse` (draft-ietf-mimi-protocol-06 §5.6) and their crypto, sans-IO.
//!
//! The requester signs its request with `SignWithLabel(requestingSignatureKey, "GroupInfoRequestTBS", tbs)`
//! (RFC 9420 §5.1.2) and sends a fresh HPKE public key; the hub checks the signature, encrypts the
//! `GroupInfoRatchetTreeTBE` to that key with `EncryptWithLabel(.., "GroupInfo and ratchet_tree encryption",
//! room_id, ..)` (RFC 9420 §5.1.3) and signs the response with its own key (`hub_sender`).
//!
//! Trust: [`GroupInfoResponse::open`] checks the response's signature against the key in `hub_sender`, which the
//! response itself carries. That only proves the response was not altered since the signer made it; that the
//! signer is the room's hub rests on the transport (mTLS between providers, the hub being the provider in the
//! room ID, and the client's TLS connection to its own provider).
//!
//! Deviations: `joiningCode` is `optional<opaque<V>>` in both `GroupInfoRequestTBS` and `GroupInfoRequest` (the
//! draft has `optional` in one and a bare `opaque<V>` in the other); the hub keeps the ratchet tree embedded in the
//! GroupInfo (`ratchet_tree` extension) and says so with `RatchetTreeOption::DistributionService`, while the draft
//! asks for a GroupInfo "without embedded ratchet_tree" next to the tree option.

use openmls::prelude::Credential;
use openmls::prelude::tls_codec::{Deserialize as _, Serialize as _};
use openmls_rust_crypto::OpenMlsRustCrypto;
use openmls_traits::OpenMlsProvider as _;
use openmls_traits::crypto::OpenMlsCrypto as _;
use openmls_traits::types::{Ciphersuite, HpkeCiphertext};

use super::{MLS10, MlsMessageBytes, RatchetTreeOption, Reader, WireError, WireMessage, Writer, invalid, wire_format};

/// Label of the request signature.
const REQUEST_LABEL: &str = "GroupInfoRequestTBS";
/// Label of the response signature.
const RESPONSE_LABEL: &str = "GroupInfoResponseTBS";
/// Label of the encryption.
const ENCRYPT_LABEL: &str = "GroupInfo and ratchet_tree encryption";

/// The default ciphersuite of requests (0x0001, `MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519`).
pub const DEFAULT_CIPHERSUITE: u16 = 1;

/// Why a request or response was refused by the crypto.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GroupInfoCryptoError {
    /// The ciphersuite is unknown or not supported.
    #[error("unsupported ciphersuite {0:#06x}")]
    Ciphersuite(u16),
    /// A signature did not verify.
    #[error("bad signature")]
    BadSignature,
    /// Decryption failed.
    #[error("decryption failed")]
    Decrypt,
    /// The response is not a success, or is for another room.
    #[error("unexpected response: {0}")]
    Unexpected(String),
    /// An encoding error.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// Another crypto failure.
    #[error("crypto: {0}")]
    Crypto(String),
}

fn suite(cs: u16) -> Result<Ciphersuite, GroupInfoCryptoError> {
    let s = Ciphersuite::try_from(cs).map_err(|_| GroupInfoCryptoError::Ciphersuite(cs))?;
    let crypto = OpenMlsRustCrypto::default();
    crypto.crypto().supports(s).map_err(|_| GroupInfoCryptoError::Ciphersuite(cs))?;
    Ok(s)
}

/// `opaque label<V> = "MLS 1.0 " + label; opaque content<V>;` — the `SignContent` / `EncryptContext` of RFC 9420.
fn labeled(label: &str, content: &[u8]) -> Result<Vec<u8>, WireError> {
    let mut w = Writer::default();
    w.vl_bytes(format!("MLS 1.0 {label}").as_bytes())?;
    w.vl_bytes(content)?;
    Ok(w.0)
}

/// `SignWithLabel` (RFC 9420 §5.1.2).
pub fn sign_with_label(cs: u16, key: &[u8], label: &str, content: &[u8]) -> Result<Vec<u8>, GroupInfoCryptoError> {
    let s = suite(cs)?;
    let data = labeled(label, content)?;
    OpenMlsRustCrypto::default()
        .crypto()
        .sign(s.signature_algorithm(), &data, key)
        .map_err(|e| GroupInfoCryptoError::Crypto(format!("{e:?}")))
}

/// `VerifyWithLabel` (RFC 9420 §5.1.2).
pub fn verify_with_label(
    cs: u16,
    public_key: &[u8],
    label: &str,
    content: &[u8],
    signature: &[u8],
) -> Result<(), GroupInfoCryptoError> {
    let s = suite(cs)?;
    let data = labeled(label, content)?;
    OpenMlsRustCrypto::default()
        .crypto()
        .verify_signature(s.signature_algorithm(), &data, public_key, signature)
        .map_err(|_| GroupInfoCryptoError::BadSignature)
}

/// An MLS `Credential`, kept as its encoding (checked to parse with OpenMLS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialBytes(Vec<u8>);

impl CredentialBytes {
    /// The encoding of `credential`.
    pub fn from_credential(credential: &Credential) -> Result<Self, WireError> {
        credential.tls_serialize_detached().map(Self).map_err(|e| WireError::Encode(e.to_string()))
    }
    /// The credential.
    pub fn credential(&self) -> Result<Credential, WireError> {
        Credential::tls_deserialize_exact(&self.0).map_err(|e| WireError::Mls(e.to_string()))
    }
    /// The identity of a basic credential (`None` for other types).
    pub fn basic_identity(&self) -> Option<Vec<u8>> {
        let c = self.credential().ok()?;
        openmls::prelude::BasicCredential::try_from(c).ok().map(|b| b.identity().to_vec())
    }
}

impl WireMessage for CredentialBytes {
    fn write(&self, out: &mut Writer) -> Result<(), WireError> {
        out.raw(&self.0);
        Ok(())
    }
    fn read(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let mut slice = r.0;
        Credential::tls_deserialize(&mut slice).map_err(|e| WireError::Mls(e.to_string()))?;
        let used = r.0.len() - slice.len();
        let bytes = r.0[..used].to_vec();
        r.0 = slice;
        Ok(Self(bytes))
    }
}

fn read_protocol(r: &mut Reader<'_>) -> Result<(), WireError> {
    if r.u16()? != MLS10 { Err(invalid("Protocol (only mls10)")) } else { Ok(()) }
}

/// `GroupInfoRequestTBS` (§5.6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupInfoRequestTbs {
    /// `cipher_suite`.
    pub cipher_suite: u16,
    /// `requestingSignatureKey`.
    pub requesting_signature_key: Vec<u8>,
    /// `requestingCredential`.
    pub requesting_credential: CredentialBytes,
    /// `groupInfoPublicKey` (HPKE).
    pub group_info_public_key: Vec<u8>,
    /// `joiningCode`.
    pub joining_code: Option<Vec<u8>>,
}

impl WireMessage for GroupInfoRequestTbs {
    fn write(&self, out: &mut Writer) -> Result<(), WireError> {
        out.u16(MLS10)?;
        out.u16(self.cipher_suite)?;
        out.vl_bytes(&self.requesting_signature_key)?;
        self.requesting_credential.write(out)?;
        out.vl_bytes(&self.group_info_public_key)?;
        match &self.joining_code {
            Some(c) => {
                out.u8(1)?;
                out.vl_bytes(c)
            }
            None => out.u8(0),
        }
    }
    fn read(r: &mut Reader<'_>) -> Result<Self, WireError> {
        read_protocol(r)?;
        let cipher_suite = r.u16()?;
        let requesting_signature_key = r.vl_bytes()?;
        let requesting_credential = CredentialBytes::read(r)?;
        let group_info_public_key = r.vl_bytes()?;
        let joining_code = match r.u8()? {
            0 => None,
            1 => Some(r.vl_bytes()?),
            _ => return Err(invalid("optional<joiningCode> flag")),
        };
        Ok(Self { cipher_suite, requesting_signature_key, requesting_credential, group_info_public_key, joining_code })
    }
}

/// `GroupInfoRequest` (§5.6): the TBS and its signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupInfoRequest {
    /// The signed fields.
    pub tbs: GroupInfoRequestTbs,
    /// `SignWithLabel(requestingSignatureKey, "GroupInfoRequestTBS", tbs)`.
    pub signature: Vec<u8>,
}

impl WireMessage for GroupInfoRequest {
    fn write(&self, out: &mut Writer) -> Result<(), WireError> {
        self.tbs.write(out)?;
        out.vl_bytes(&self.signature)
    }
    fn read(r: &mut Reader<'_>) -> Result<Self, WireError> {
        Ok(Self { tbs: GroupInfoRequestTbs::read(r)?, signature: r.vl_bytes()? })
    }
}

/// The requester's secret half of a request: the HPKE private key the answer is encrypted to.
pub struct GroupInfoRequestSecret {
    cipher_suite: u16,
    hpke_private: Vec<u8>,
}

impl std::fmt::Debug for GroupInfoRequestSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupInfoRequestSecret").field("cipher_suite", &self.cipher_suite).finish_non_exhaustive()
    }
}

impl GroupInfoRequest {
    /// Builds a request signed by `signer` (whose public key is `signature_public_key`) with a fresh HPKE key
    /// pair; keep the secret to open the answer.
    pub fn new(
        cipher_suite: u16,
        signer: &impl openmls_traits::signatures::Signer,
        signature_public_key: &[u8],
        credential: &Credential,
        joining_code: Option<Vec<u8>>,
    ) -> Result<(Self, GroupInfoRequestSecret), GroupInfoCryptoError> {
        let s = suite(cipher_suite)?;
        let ikm: [u8; 32] = rand::random();
        let kp = OpenMlsRustCrypto::default()
            .crypto()
            .derive_hpke_keypair(s.hpke_config(), &ikm)
            .map_err(|e| GroupInfoCryptoError::Crypto(format!("{e:?}")))?;
        let tbs = GroupInfoRequestTbs {
            cipher_suite,
            requesting_signature_key: signature_public_key.to_vec(),
            requesting_credential: CredentialBytes::from_credential(credential)?,
            group_info_public_key: kp.public,
            joining_code,
        };
        if signer.signature_scheme() != s.signature_algorithm() {
            return Err(GroupInfoCryptoError::Ciphersuite(cipher_suite));
        }
        let signature = signer
            .sign(&labeled(REQUEST_LABEL, &tbs.encode()?)?)
            .map_err(|e| GroupInfoCryptoError::Crypto(format!("{e:?}")))?;
        Ok((Self { tbs, signature }, GroupInfoRequestSecret { cipher_suite, hpke_private: kp.private.to_vec() }))
    }

    /// Checks the signature against `requestingSignatureKey`.
    pub fn verify(&self) -> Result<(), GroupInfoCryptoError> {
        verify_with_label(
            self.tbs.cipher_suite,
            &self.tbs.requesting_signature_key,
            REQUEST_LABEL,
            &self.tbs.encode()?,
            &self.signature,
        )
    }
}

/// `GroupInfoCode` (§5.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupInfoCode {
    /// `success(1)`.
    Success,
    /// `notAuthorized(2)`.
    NotAuthorized,
    /// `noSuchRoom(3)`.
    NoSuchRoom,
}

impl WireMessage for GroupInfoCode {
    fn write(&self, out: &mut Writer) -> Result<(), WireError> {
        out.u8(match self {
            Self::Success => 1,
            Self::NotAuthorized => 2,
            Self::NoSuchRoom => 3,
        })
    }
    fn read(r: &mut Reader<'_>) -> Result<Self, WireError> {
        match r.u8()? {
            1 => Ok(Self::Success),
            2 => Ok(Self::NotAuthorized),
            3 => Ok(Self::NoSuchRoom),
            c => Err(invalid(format!("GroupInfoCode {c}"))),
        }
    }
}

/// `PendingProposal` (§5.6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingProposal {
    /// The proposal (an MLSMessage).
    pub proposal: MlsMessageBytes,
    /// `hub_accepted_time`, ms since the UNIX epoch.
    pub hub_accepted_time: u64,
}

impl WireMessage for PendingProposal {
    fn write(&self, out: &mut Writer) -> Result<(), WireError> {
        out.raw(self.proposal.as_bytes());
        out.u64(self.hub_accepted_time)
    }
    fn read(r: &mut Reader<'_>) -> Result<Self, WireError> {
        Ok(Self { proposal: r.mls_message()?, hub_accepted_time: r.u64()? })
    }
}

/// `GroupInfoRatchetTreeTBE` (§5.6), the plaintext of the encrypted answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupInfoRatchetTreeTbe {
    /// The GroupInfo (kept as the MLSMessage wrapping it; encoded bare).
    pub group_info: MlsMessageBytes,
    /// How to get the ratchet tree.
    pub ratchet_tree: RatchetTreeOption,
    /// Pending proposals of the epoch.
    pub pending_proposals: Vec<PendingProposal>,
}

impl WireMessage for GroupInfoRatchetTreeTbe {
    fn write(&self, out: &mut Writer) -> Result<(), WireError> {
        if self.group_info.wire_format() != wire_format::GROUP_INFO {
            return Err(WireError::Encode("groupInfo is not a GroupInfo".into()));
        }
        out.raw(self.group_info.inner());
        self.ratchet_tree.write(out)?;
        out.vl_list(&self.pending_proposals, |w, p| p.write(w))
    }
    fn read(r: &mut Reader<'_>) -> Result<Self, WireError> {
        Ok(Self {
            group_info: r.mls_inner(wire_format::GROUP_INFO)?,
            ratchet_tree: RatchetTreeOption::read(r)?,
            pending_proposals: r.vl_list(PendingProposal::read)?,
        })
    }
}

/// `ExternalSender` (RFC 9420 §12.1.8.1): the hub's signature key and credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubSender {
    /// `signature_key`.
    pub signature_key: Vec<u8>,
    /// `credential`.
    pub credential: CredentialBytes,
}

impl WireMessage for HubSender {
    fn write(&self, out: &mut Writer) -> Result<(), WireError> {
        out.vl_bytes(&self.signature_key)?;
        self.credential.write(out)
    }
    fn read(r: &mut Reader<'_>) -> Result<Self, WireError> {
        Ok(Self { signature_key: r.vl_bytes()?, credential: CredentialBytes::read(r)? })
    }
}

/// `HPKECiphertext` (RFC 9420 §5.1.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HpkeCiphertextBytes {
    /// `kem_output`.
    pub kem_output: Vec<u8>,
    /// `ciphertext`.
    pub ciphertext: Vec<u8>,
}

impl WireMessage for HpkeCiphertextBytes {
    fn write(&self, out: &mut Writer) -> Result<(), WireError> {
        out.vl_bytes(&self.kem_output)?;
        out.vl_bytes(&self.ciphertext)
    }
    fn read(r: &mut Reader<'_>) -> Result<Self, WireError> {
        Ok(Self { kem_output: r.vl_bytes()?, ciphertext: r.vl_bytes()? })
    }
}

/// The mls10 part of a successful response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupInfoSuccess {
    /// `cipher_suite`.
    pub cipher_suite: u16,
    /// `hub_sender`.
    pub hub_sender: HubSender,
    /// `encrypted_groupinfo_and_tree`.
    pub encrypted: HpkeCiphertextBytes,
}

/// `GroupInfoResponseTBS` (§5.6): the signed fields of a successful response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupInfoResponseTbs {
    /// `room_id`.
    pub room_id: Vec<u8>,
    /// The mls10 fields (`status` is success).
    pub body: GroupInfoSuccess,
}

impl WireMessage for GroupInfoResponseTbs {
    fn write(&self, out: &mut Writer) -> Result<(), WireError> {
        out.u16(MLS10)?;
        out.vl_bytes(&self.room_id)?;
        GroupInfoCode::Success.write(out)?;
        out.u16(self.body.cipher_suite)?;
        self.body.hub_sender.write(out)?;
        self.body.encrypted.write(out)
    }
    fn read(r: &mut Reader<'_>) -> Result<Self, WireError> {
        read_protocol(r)?;
        let room_id = r.vl_bytes()?;
        if GroupInfoCode::read(r)? != GroupInfoCode::Success {
            return Err(invalid("GroupInfoResponseTBS status"));
        }
        let body = GroupInfoSuccess {
            cipher_suite: r.u16()?,
            hub_sender: HubSender::read(r)?,
            encrypted: HpkeCiphertextBytes::read(r)?,
        };
        Ok(Self { room_id, body })
    }
}

/// `GroupInfoResponse` (§5.6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupInfoResponse {
    /// `success`: the TBS and the hub's signature over it.
    Success {
        /// The signed fields.
        tbs: GroupInfoResponseTbs,
        /// `SignWithLabel(hub_sender.signature_key, "GroupInfoResponseTBS", tbs)`.
        signature: Vec<u8>,
    },
    /// Another status (`notAuthorized`, `noSuchRoom`), with no body.
    Failure {
        /// `room_id`.
        room_id: Vec<u8>,
        /// `status`.
        status: GroupInfoCode,
    },
}

impl WireMessage for GroupInfoResponse {
    fn write(&self, out: &mut Writer) -> Result<(), WireError> {
        match self {
            Self::Success { tbs, signature } => {
                tbs.write(out)?;
                out.vl_bytes(signature)
            }
            Self::Failure { room_id, status } => {
                if *status == GroupInfoCode::Success {
                    return Err(WireError::Encode("a failure with status success".into()));
                }
                out.u16(MLS10)?;
                out.vl_bytes(room_id)?;
                status.write(out)
            }
        }
    }
    fn read(r: &mut Reader<'_>) -> Result<Self, WireError> {
        read_protocol(r)?;
        let room_id = r.vl_bytes()?;
        match GroupInfoCode::read(r)? {
            GroupInfoCode::Success => {
                let body = GroupInfoSuccess {
                    cipher_suite: r.u16()?,
                    hub_sender: HubSender::read(r)?,
                    encrypted: HpkeCiphertextBytes::read(r)?,
                };
                Ok(Self::Success { tbs: GroupInfoResponseTbs { room_id, body }, signature: r.vl_bytes()? })
            }
            status => Ok(Self::Failure { room_id, status }),
        }
    }
}

/// The hub's signing identity for `GroupInfoResponse`s.
#[derive(Clone)]
pub struct HubSigner {
    /// The Ed25519 private key.
    pub private_key: Vec<u8>,
    /// `hub_sender`: the public key and the hub's credential.
    pub sender: HubSender,
}

impl std::fmt::Debug for HubSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubSigner").field("sender", &self.sender).finish_non_exhaustive()
    }
}

/// The hub key signs like any OpenMLS signer (Ed25519), so the provider can also make requests of its own.
impl openmls_traits::signatures::Signer for HubSigner {
    fn sign(&self, payload: &[u8]) -> Result<Vec<u8>, openmls_traits::signatures::SignerError> {
        OpenMlsRustCrypto::default()
            .crypto()
            .sign(openmls_traits::types::SignatureScheme::ED25519, payload, &self.private_key)
            .map_err(|_| openmls_traits::signatures::SignerError::SigningError)
    }
    fn signature_scheme(&self) -> openmls_traits::types::SignatureScheme {
        openmls_traits::types::SignatureScheme::ED25519
    }
}

/// The stored form of the hub's key (ours, not the draft's): `opaque private_key<V>; ExternalSender sender;`.
impl WireMessage for HubSigner {
    fn write(&self, out: &mut Writer) -> Result<(), WireError> {
        out.vl_bytes(&self.private_key)?;
        self.sender.write(out)
    }
    fn read(r: &mut Reader<'_>) -> Result<Self, WireError> {
        Ok(Self { private_key: r.vl_bytes()?, sender: HubSender::read(r)? })
    }
}

impl HubSigner {
    /// A new Ed25519 key with a basic credential of `identity`.
    pub fn generate(identity: &[u8]) -> Result<Self, GroupInfoCryptoError> {
        let (private_key, public) = OpenMlsRustCrypto::default()
            .crypto()
            .signature_key_gen(openmls_traits::types::SignatureScheme::ED25519)
            .map_err(|e| GroupInfoCryptoError::Crypto(format!("{e:?}")))?;
        let credential: Credential = openmls::prelude::BasicCredential::new(identity.to_vec()).into();
        Ok(Self {
            private_key,
            sender: HubSender { signature_key: public, credential: CredentialBytes::from_credential(&credential)? },
        })
    }

    /// The hub's answer to a verified `request` for `room_id`: `tbe` encrypted to the request's HPKE key, signed.
    /// The response's ciphersuite is the request's; its signature algorithm must be the hub key's (Ed25519).
    pub fn respond(
        &self,
        request: &GroupInfoRequest,
        room_id: &[u8],
        tbe: &GroupInfoRatchetTreeTbe,
    ) -> Result<GroupInfoResponse, GroupInfoCryptoError> {
        let cs = request.tbs.cipher_suite;
        let s = suite(cs)?;
        if s.signature_algorithm() != openmls_traits::types::SignatureScheme::ED25519 {
            return Err(GroupInfoCryptoError::Ciphersuite(cs));
        }
        let info = labeled(ENCRYPT_LABEL, room_id)?;
        let ct = OpenMlsRustCrypto::default()
            .crypto()
            .hpke_seal(s.hpke_config(), &request.tbs.group_info_public_key, &info, &[], &tbe.encode()?)
            .map_err(|e| GroupInfoCryptoError::Crypto(format!("{e:?}")))?;
        let tbs = GroupInfoResponseTbs {
            room_id: room_id.to_vec(),
            body: GroupInfoSuccess {
                cipher_suite: cs,
                hub_sender: self.sender.clone(),
                encrypted: HpkeCiphertextBytes {
                    kem_output: ct.kem_output.as_slice().to_vec(),
                    ciphertext: ct.ciphertext.as_slice().to_vec(),
                },
            },
        };
        let signature = sign_with_label(cs, &self.private_key, RESPONSE_LABEL, &tbs.encode()?)?;
        Ok(GroupInfoResponse::Success { tbs, signature })
    }
}

impl GroupInfoResponse {
    /// The status.
    pub fn status(&self) -> GroupInfoCode {
        match self {
            Self::Success { .. } => GroupInfoCode::Success,
            Self::Failure { status, .. } => *status,
        }
    }

    /// Requester side: checks that the response is a success for `room_id` signed by its `hub_sender` key (see the
    /// module docs on what that proves), then decrypts it with the request's secret.
    pub fn open(
        &self,
        room_id: &[u8],
        secret: &GroupInfoRequestSecret,
    ) -> Result<GroupInfoRatchetTreeTbe, GroupInfoCryptoError> {
        let Self::Success { tbs, signature } = self else {
            return Err(GroupInfoCryptoError::Unexpected(format!("status {:?}", self.status())));
        };
        if tbs.room_id != room_id {
            return Err(GroupInfoCryptoError::Unexpected("the response is for another room".into()));
        }
        let cs = tbs.body.cipher_suite;
        if cs != secret.cipher_suite {
            return Err(GroupInfoCryptoError::Unexpected("the response's ciphersuite is not the request's".into()));
        }
        verify_with_label(cs, &tbs.body.hub_sender.signature_key, RESPONSE_LABEL, &tbs.encode()?, signature)?;
        let s = suite(cs)?;
        let info = labeled(ENCRYPT_LABEL, room_id)?;
        let ct = HpkeCiphertext {
            kem_output: tbs.body.encrypted.kem_output.clone().into(),
            ciphertext: tbs.body.encrypted.ciphertext.clone().into(),
        };
        let plain = OpenMlsRustCrypto::default()
            .crypto()
            .hpke_open(s.hpke_config(), &ct, &secret.hpke_private, &info, &[])
            .map_err(|_| GroupInfoCryptoError::Decrypt)?;
        Ok(GroupInfoRatchetTreeTbe::decode(&plain)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openmls::prelude::{BasicCredential, CredentialWithKey, GroupId, MlsGroup, MlsGroupCreateConfig};
    use openmls_basic_credential::SignatureKeyPair;

    struct Member {
        keys: SignatureKeyPair,
        credential: Credential,
    }

    fn member(name: &str) -> Member {
        let (private, public) = OpenMlsRustCrypto::default()
            .crypto()
            .signature_key_gen(openmls_traits::types::SignatureScheme::ED25519)
            .expect("keys");
        let keys = SignatureKeyPair::from_raw(openmls_traits::types::SignatureScheme::ED25519, private, public);
        Member { keys, credential: BasicCredential::new(name.as_bytes().to_vec()).into() }
    }

    fn request(m: &Member) -> (GroupInfoRequest, GroupInfoRequestSecret) {
        GroupInfoRequest::new(DEFAULT_CIPHERSUITE, &m.keys, m.keys.public(), &m.credential, Some(b"code".to_vec()))
            .expect("request")
    }

    fn group_info() -> MlsMessageBytes {
        let provider = OpenMlsRustCrypto::default();
        let m = member("alice");
        m.keys.store(provider.storage()).expect("store");
        let cwk = CredentialWithKey { credential: m.credential.clone(), signature_key: m.keys.public().into() };
        let mut group = MlsGroup::new_with_group_id(
            &provider,
            &m.keys,
            &MlsGroupCreateConfig::default(),
            GroupId::from_slice(b"room"),
            cwk,
        )
        .expect("group");
        let gi = group.export_group_info(provider.crypto(), &m.keys, true).expect("gi");
        let _ = &mut group;
        MlsMessageBytes::new(gi.tls_serialize_detached().expect("ser")).expect("gi bytes")
    }

    #[test]
    fn request_round_trip_and_signature() {
        let m = member("alice");
        let (req, _) = request(&m);
        let bytes = req.encode().expect("encode");
        let back = GroupInfoRequest::decode(&bytes).expect("decode");
        assert_eq!(back, req);
        back.verify().expect("verifies");
        assert_eq!(back.tbs.requesting_credential.basic_identity().as_deref(), Some(&b"alice"[..]));
        // Someone else's key in the request: refused.
        let mut forged = back.clone();
        forged.tbs.requesting_signature_key = member("eve").keys.public().to_vec();
        assert_eq!(forged.verify(), Err(GroupInfoCryptoError::BadSignature));
        // A tampered field: refused.
        let mut tampered = back;
        tampered.tbs.joining_code = None;
        assert_eq!(tampered.verify(), Err(GroupInfoCryptoError::BadSignature));
        // Truncated and trailing bytes are refused.
        assert!(GroupInfoRequest::decode(&bytes[..bytes.len() - 1]).is_err());
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(GroupInfoRequest::decode(&longer).is_err());
    }

    #[test]
    fn response_round_trip_encrypt_decrypt() {
        let m = member("bob");
        let (req, secret) = request(&m);
        let hub = HubSigner::generate(b"mimi://hub.example").expect("hub");
        let tbe = GroupInfoRatchetTreeTbe {
            group_info: group_info(),
            ratchet_tree: RatchetTreeOption::DistributionService,
            pending_proposals: vec![],
        };
        let tbe_bytes = tbe.encode().expect("tbe");
        assert_eq!(GroupInfoRatchetTreeTbe::decode(&tbe_bytes).expect("tbe back"), tbe);
        let resp = hub.respond(&req, b"room", &tbe).expect("respond");
        let bytes = resp.encode().expect("encode");
        let back = GroupInfoResponse::decode(&bytes).expect("decode");
        assert_eq!(back, resp);
        assert_eq!(back.open(b"room", &secret).expect("open"), tbe);
        // Wrong room: refused.
        assert!(back.open(b"other", &secret).is_err());
        // Another requester's secret cannot decrypt.
        let (_, other_secret) = request(&member("carol"));
        assert_eq!(back.open(b"room", &other_secret), Err(GroupInfoCryptoError::Decrypt));
        // A tampered ciphertext: the signature check refuses it.
        let GroupInfoResponse::Success { mut tbs, signature } = back.clone() else { panic!("success") };
        if let Some(b) = tbs.body.encrypted.ciphertext.last_mut() {
            *b ^= 1;
        }
        let tampered = GroupInfoResponse::Success { tbs: tbs.clone(), signature: signature.clone() };
        assert_eq!(tampered.open(b"room", &secret), Err(GroupInfoCryptoError::BadSignature));
        // Re-signed by someone else's key as hub_sender: the signature verifies but decryption fails (tamper).
        let eve = HubSigner::generate(b"eve").expect("eve");
        tbs.body.hub_sender = eve.sender.clone();
        let sig = sign_with_label(1, &eve.private_key, RESPONSE_LABEL, &tbs.encode().expect("tbs")).expect("sig");
        let resigned = GroupInfoResponse::Success { tbs: tbs.clone(), signature: sig };
        assert_eq!(resigned.open(b"room", &secret), Err(GroupInfoCryptoError::Decrypt));
        // Signature by the wrong key for hub_sender: refused.
        let wrong = GroupInfoResponse::Success { tbs, signature };
        assert_eq!(wrong.open(b"room", &secret), Err(GroupInfoCryptoError::BadSignature));
    }

    #[test]
    fn failure_round_trip() {
        for status in [GroupInfoCode::NotAuthorized, GroupInfoCode::NoSuchRoom] {
            let r = GroupInfoResponse::Failure { room_id: b"r".to_vec(), status };
            assert_eq!(GroupInfoResponse::decode(&r.encode().expect("enc")).expect("dec"), r);
        }
        assert!(GroupInfoResponse::decode(&[0, 1, 1, b'r', 9]).is_err());
    }
}
