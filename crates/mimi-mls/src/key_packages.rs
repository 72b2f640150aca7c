//! KeyPackages a local member publishes so that others can add it: ordinary one-time packages and one
//! last-resort package (RFC 9420 §16.8, the `last_resort` extension) that stays usable when the others ran out.

use super::backend::{MlsBackend, Pending};
use super::config::EngineConfig;
use super::error::MlsError;
use super::member::LocalMember;
use openmls::prelude::{KeyPackage, MlsMessageOut};
use openmls_traits::OpenMlsProvider;

/// Makes `count` KeyPackages (plus one last-resort package if `last_resort`), stores their private keys and
/// returns them as MLSMessages (`mls_key_package`), ready to publish once durable.
pub fn generate(
    provider: &MlsBackend,
    member: &LocalMember,
    config: &EngineConfig,
    count: usize,
    last_resort: bool,
) -> Pending<Vec<Vec<u8>>> {
    let result = (|| {
        let mut out = Vec::with_capacity(count + usize::from(last_resort));
        for i in 0..count + usize::from(last_resort) {
            let mut builder = KeyPackage::builder().leaf_node_capabilities(config.capabilities());
            if i == count {
                builder = builder.mark_as_last_resort();
            }
            let bundle = builder
                .build(config.ciphersuite(), provider, member.signer(), member.credential().clone())
                .map_err(|e| MlsError::Library(e.to_string()))?;
            let msg = MlsMessageOut::from(bundle.key_package().clone());
            out.push(msg.to_bytes().map_err(|e| MlsError::Library(e.to_string()))?);
        }
        Ok(out)
    })();
    Pending::from_result(result, provider.storage().submit_global())
}
