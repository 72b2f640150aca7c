//! `KeyMaterialRequest` / `KeyMaterialResponse` (draft-ietf-mimi-protocol-06 §5.2): a provider claims KeyPackages
//! of another provider's user, naming the room they are for.
//!
//! The request is signed (`SignWithLabel(requesterSignatureKey, "KeyMaterialRequestTBS", …)`). A provider asks on
//! behalf of its client without holding the client's key, so it signs with its own hub key, and
//! `requesterCredential` is the provider's (`mimi://DOMAIN`, as in the GroupInfoRequests it makes itself); the
//! receiver checks the signature and that the credential names the peer the transport (mTLS) authenticated.

use super::group_info::{CredentialBytes, GroupInfoCryptoError, HubSigner, sign_with_label, verify_with_label};
use super::{MlsMessageBytes, Reader, WireError, WireMessage, Writer, invalid, read_protocol, wire_format};

/// MLS ciphersuite `MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519` (0x0001), the one this bridge speaks.
pub const CIPHERSUITE_1: u16 = 1;

/// `KeyMaterialRequest` (§5.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyMaterialRequest {
    /// The user on whose behalf the KeyPackages are claimed.
    pub requesting_user: String,
    /// The user whose KeyPackages are claimed.
    pub target_user: String,
    /// The room they are for (the target may have consented for this room only).
    pub room_id: String,
    /// `acceptableCiphersuites`.
    pub ciphersuites: Vec<u16>,
    /// `requesterSignatureKey`.
    pub requester_signature_key: Vec<u8>,
    /// `requesterCredential`.
    pub requester_credential: CredentialBytes,
    /// `key_material_request_signature`.
    pub signature: Vec<u8>,
}

/// The signature label of `KeyMaterialRequestTBS`.
const LABEL: &str = "KeyMaterialRequestTBS";

impl KeyMaterialRequest {
    /// A request for `target_user`'s KeyPackages for `room_id`, on behalf of `requesting_user`, ciphersuite 1,
    /// signed by the requesting provider's hub key `signer` (see the module documentation).
    pub fn new(
        requesting_user: &str,
        target_user: &str,
        room_id: &str,
        signer: &HubSigner,
    ) -> Result<Self, GroupInfoCryptoError> {
        let mut req = Self {
            requesting_user: requesting_user.to_owned(),
            target_user: target_user.to_owned(),
            room_id: room_id.to_owned(),
            ciphersuites: vec![CIPHERSUITE_1],
            requester_signature_key: signer.sender.signature_key.clone(),
            requester_credential: signer.sender.credential.clone(),
            signature: Vec::new(),
        };
        req.signature = sign_with_label(CIPHERSUITE_1, &signer.private_key, LABEL, &req.tbs()?)?;
        Ok(req)
    }

    /// `KeyMaterialRequestTBS`: everything but the signature.
    fn tbs(&self) -> Result<Vec<u8>, WireError> {
        let mut out = Writer::default();
        out.u8(1)?; // Protocol mls10
        write_uri(&mut out, &self.requesting_user)?;
        write_uri(&mut out, &self.target_user)?;
        write_uri(&mut out, &self.room_id)?;
        out.vl_list(&self.ciphersuites, |w, c| w.u16(*c))?;
        // RequiredCapabilities: extension_types<V>, proposal_types<V>, credential_types<V>, all empty.
        for _ in 0..3 {
            out.vl_bytes(b"")?;
        }
        out.vl_bytes(&self.requester_signature_key)?;
        self.requester_credential.write(&mut out)?;
        Ok(out.0)
    }

    /// Checks the signature against `requesterSignatureKey` (ciphersuite 1's signature scheme).
    pub fn verify(&self) -> Result<(), GroupInfoCryptoError> {
        verify_with_label(CIPHERSUITE_1, &self.requester_signature_key, LABEL, &self.tbs()?, &self.signature)
    }
}

fn write_uri(out: &mut Writer, uri: &str) -> Result<(), WireError> {
    out.vl_bytes(uri.as_bytes())
}

fn read_uri(r: &mut Reader<'_>) -> Result<String, WireError> {
    String::from_utf8(r.vl_bytes()?).map_err(|_| invalid("URI is not UTF-8"))
}

impl WireMessage for KeyMaterialRequest {
    fn write(&self, out: &mut Writer) -> Result<(), WireError> {
        out.raw(&self.tbs()?);
        out.vl_bytes(&self.signature)
    }
    fn read(r: &mut Reader<'_>) -> Result<Self, WireError> {
        read_protocol(r)?;
        let requesting_user = read_uri(r)?;
        let target_user = read_uri(r)?;
        let room_id = read_uri(r)?;
        let ciphersuites = r.vl_list(|r| r.u16())?;
        for _ in 0..3 {
            r.vl_bytes()?;
        }
        let requester_signature_key = r.vl_bytes()?;
        let requester_credential = CredentialBytes::read(r)?;
        let signature = r.vl_bytes()?;
        Ok(Self {
            requesting_user,
            target_user,
            room_id,
            ciphersuites,
            requester_signature_key,
            requester_credential,
            signature,
        })
    }
}

/// `KeyMaterialUserCode` (§5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyMaterialUserCode {
    /// `success(0)`: material for every client.
    Success,
    /// `partialSuccess(1)`: material for some clients.
    PartialSuccess,
    /// `incompatibleProtocol(2)`.
    IncompatibleProtocol,
    /// `noCompatibleMaterial(3)`: no client could supply material (also: all exhausted).
    NoCompatibleMaterial,
    /// `userUnknown(4)`.
    UserUnknown,
    /// `noConsent(5)`.
    NoConsent,
    /// `noConsentForThisRoom(6)`.
    NoConsentForThisRoom,
    /// `userDeleted(7)`.
    UserDeleted,
}

impl KeyMaterialUserCode {
    const ALL: [Self; 8] = [
        Self::Success,
        Self::PartialSuccess,
        Self::IncompatibleProtocol,
        Self::NoCompatibleMaterial,
        Self::UserUnknown,
        Self::NoConsent,
        Self::NoConsentForThisRoom,
        Self::UserDeleted,
    ];
}

/// One client's part of a `KeyMaterialResponse` (`ClientKeyMaterial`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientKeyMaterial {
    /// `clientUri`.
    pub client_uri: String,
    /// What the client supplied.
    pub material: ClientMaterial,
}

/// `KeyMaterialClientCode` and its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientMaterial {
    /// `success(0)`: a KeyPackage (held here as the MLSMessage wrapping it).
    Success(MlsMessageBytes),
    /// `keyMaterialExhausted(1)`.
    Exhausted,
    /// `nothingCompatible(2)` (the optional capabilities are never sent and skipped when received).
    NothingCompatible,
}

/// `KeyMaterialResponse` (§5.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyMaterialResponse {
    /// `userStatus`.
    pub user_status: KeyMaterialUserCode,
    /// `userUri`.
    pub user_uri: String,
    /// `clients` (empty unless the user code is success, partialSuccess or noCompatibleMaterial).
    pub clients: Vec<ClientKeyMaterial>,
}

impl KeyMaterialResponse {
    /// The first KeyPackage in the response (an MLSMessage), if any.
    pub fn first_key_package(&self) -> Option<&MlsMessageBytes> {
        self.clients.iter().find_map(|c| match &c.material {
            ClientMaterial::Success(kp) => Some(kp),
            _ => None,
        })
    }
}

impl WireMessage for KeyMaterialResponse {
    fn write(&self, out: &mut Writer) -> Result<(), WireError> {
        out.u8(1)?;
        let code = KeyMaterialUserCode::ALL.iter().position(|c| *c == self.user_status).unwrap_or(0);
        out.u8(u8::try_from(code).map_err(|e| WireError::Encode(e.to_string()))?)?;
        write_uri(out, &self.user_uri)?;
        out.vl_list(&self.clients, |w, c| {
            match &c.material {
                ClientMaterial::Success(kp) => {
                    if kp.wire_format() != wire_format::KEY_PACKAGE {
                        return Err(WireError::Encode("keyPackage is not a KeyPackage".into()));
                    }
                    w.u8(0)?;
                    write_uri(w, &c.client_uri)?;
                    w.raw(kp.inner());
                }
                ClientMaterial::Exhausted => {
                    w.u8(1)?;
                    write_uri(w, &c.client_uri)?;
                }
                ClientMaterial::NothingCompatible => {
                    w.u8(2)?;
                    write_uri(w, &c.client_uri)?;
                    w.u8(0)?; // optional<Capabilities>: absent
                }
            }
            Ok(())
        })
    }
    fn read(r: &mut Reader<'_>) -> Result<Self, WireError> {
        read_protocol(r)?;
        let code = r.u8()?;
        let user_status = *KeyMaterialUserCode::ALL
            .get(usize::from(code))
            .ok_or_else(|| invalid(format!("KeyMaterialUserCode {code}")))?;
        let user_uri = read_uri(r)?;
        let clients = r.vl_list(|r| {
            let status = r.u8()?;
            let client_uri = read_uri(r)?;
            let material = match status {
                0 => ClientMaterial::Success(r.mls_inner(wire_format::KEY_PACKAGE)?),
                1 => ClientMaterial::Exhausted,
                2 => {
                    if r.u8()? == 1 {
                        // Capabilities: versions, cipher_suites, extensions, proposals, credentials (<V> each).
                        for _ in 0..5 {
                            r.vl_bytes()?;
                        }
                    }
                    ClientMaterial::NothingCompatible
                }
                c => return Err(invalid(format!("KeyMaterialClientCode {c}"))),
            };
            Ok(ClientKeyMaterial { client_uri, material })
        })?;
        Ok(Self { user_status, user_uri, clients })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_package() -> MlsMessageBytes {
        MlsMessageBytes::new(crate::test_group::key_package("mimi://b.test/u/bob")).expect("framed")
    }

    #[test]
    fn request_round_trips_verifies_and_refuses_truncation_and_tampering() {
        let signer = HubSigner::generate(b"mimi://a.test").expect("key");
        let req =
            KeyMaterialRequest::new("mimi://a.test/u/alice", "mimi://b.test/u/bob", "mimi://a.test/r/club", &signer)
                .expect("signed");
        req.verify().expect("verifies");
        let mut other_room = req.clone();
        other_room.room_id = "mimi://a.test/r/elsewhere".into();
        assert!(other_room.verify().is_err(), "the signature covers the room");
        let enc = req.encode().expect("encode");
        assert_eq!(KeyMaterialRequest::decode(&enc).expect("decode"), req);
        for cut in 0..enc.len() {
            assert!(KeyMaterialRequest::decode(&enc[..cut]).is_err(), "cut at {cut}");
        }
        let mut long = enc;
        long.push(7);
        assert_eq!(KeyMaterialRequest::decode(&long), Err(WireError::Trailing(1)));
    }

    #[test]
    fn response_round_trips_with_a_bare_key_package_inside() {
        let kp = key_package();
        let resp = KeyMaterialResponse {
            user_status: KeyMaterialUserCode::Success,
            user_uri: "mimi://b.test/u/bob".into(),
            clients: vec![ClientKeyMaterial {
                client_uri: "mimi://b.test/u/bob".into(),
                material: ClientMaterial::Success(kp.clone()),
            }],
        };
        let enc = resp.encode().expect("encode");
        let back = KeyMaterialResponse::decode(&enc).expect("decode");
        assert_eq!(back, resp);
        assert_eq!(back.first_key_package(), Some(&kp), "the KeyPackage comes back as the same MLSMessage");
        assert!(KeyMaterialResponse::decode(&enc[..enc.len() - 1]).is_err());
        for status in [KeyMaterialUserCode::UserUnknown, KeyMaterialUserCode::NoCompatibleMaterial] {
            let r = KeyMaterialResponse {
                user_status: status,
                user_uri: "mimi://b.test/u/x".into(),
                clients: vec![ClientKeyMaterial { client_uri: "c".into(), material: ClientMaterial::Exhausted }],
            };
            let back = KeyMaterialResponse::decode(&r.encode().expect("encode")).expect("decode");
            assert_eq!(back, r);
            assert_eq!(back.first_key_package(), None);
        }
        assert!(KeyMaterialResponse::decode(&[1, 9, 0, 0]).is_err(), "unknown user code");
    }
}
