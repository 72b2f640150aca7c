//! A local MLS member: the bridge's own leaf, or a per-user leaf for a legacy user. Its credential is a basic
//! credential holding its MIMI URI (`mimi://DOMAIN/u/USER`); its signature key lives in the member's storage and
//! is found again after a restart through a small record of ours in the same namespace.

use super::backend::{MlsBackend, Pending};
use super::error::MlsError;
use super::storage::MlsStorageError;
use openmls::prelude::{BasicCredential, CredentialWithKey, SignatureScheme};
use openmls_basic_credential::SignatureKeyPair;
use openmls_traits::OpenMlsProvider;

/// Name of the record holding the member's URI and signature public key.
const SELF_RECORD: &[u8] = b"self";

/// A local member: URI, signature key, credential.
pub struct LocalMember {
    uri: String,
    signer: SignatureKeyPair,
    credential: CredentialWithKey,
}

impl std::fmt::Debug for LocalMember {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalMember").field("uri", &self.uri).finish_non_exhaustive()
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct SelfRecord {
    uri: String,
    public_key: Vec<u8>,
    scheme: u16,
}

impl LocalMember {
    /// Loads the member stored in `provider`'s namespace, or creates it with `uri` and a fresh key of `scheme`.
    /// A stored member with another URI is an error (one namespace per member).
    pub fn load_or_create(
        provider: &MlsBackend,
        uri: &str,
        scheme: SignatureScheme,
    ) -> Result<Pending<Self>, MlsError> {
        let storage = provider.storage();
        if let Some(rec) = storage.app_get::<SelfRecord>(SELF_RECORD)? {
            if rec.uri != uri {
                return Err(MlsError::Storage(MlsStorageError::Decode {
                    what: "member record",
                    message: format!("namespace belongs to {:?}, not {uri:?}", rec.uri),
                }));
            }
            let scheme = SignatureScheme::try_from(rec.scheme).map_err(|e| MlsError::Library(format!("{e:?}")))?;
            let signer = SignatureKeyPair::read(storage, &rec.public_key, scheme).ok_or_else(|| {
                MlsError::Storage(MlsStorageError::Decode {
                    what: "signature key pair",
                    message: "the member record names a key that is not stored".into(),
                })
            })?;
            return Ok(Pending::new(Self::with_signer(uri, signer), super::storage::Durability::ready()));
        }
        let signer = SignatureKeyPair::new(scheme).map_err(|e| MlsError::Library(format!("{e:?}")))?;
        signer.store(storage)?;
        storage.app_put(
            SELF_RECORD,
            &SelfRecord { uri: uri.to_owned(), public_key: signer.to_public_vec(), scheme: scheme as u16 },
        )?;
        let durability = storage.submit_global();
        Ok(Pending::new(Self::with_signer(uri, signer), durability))
    }

    fn with_signer(uri: &str, signer: SignatureKeyPair) -> Self {
        let credential = CredentialWithKey {
            credential: BasicCredential::new(uri.as_bytes().to_vec()).into(),
            signature_key: signer.to_public_vec().into(),
        };
        Self { uri: uri.to_owned(), signer, credential }
    }

    /// The member's MIMI URI.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// The signer (for OpenMLS calls).
    pub fn signer(&self) -> &SignatureKeyPair {
        &self.signer
    }

    /// The credential with its signature key.
    pub fn credential(&self) -> &CredentialWithKey {
        &self.credential
    }
}
