//! TLS building blocks shared by everything that speaks TLS (connectors, the MIMI endpoints): PEM files, trust
//! anchors, and the crypto provider. rustls with aws-lc-rs, the only provider in the bridge's dependency graph,
//! always passed explicitly so nothing depends on a process-wide default provider.

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::sync::Arc;

/// The crypto provider every TLS configuration of the bridge uses (aws-lc-rs).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The PEM certificates in `path` (at least one). `what` names the setting in errors (`tls_ca_file`).
pub fn load_certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let iter = CertificateDer::pem_file_iter(path).map_err(|e| format!("{what} {}: {e}", path.display()))?;
    let certs = iter.collect::<Result<Vec<_>, _>>().map_err(|e| format!("{what} {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{what} {}: no PEM certificate in the file", path.display()));
    }
    Ok(certs)
}

/// The PEM private key in `path`. `what` names the setting in errors.
pub fn load_key(path: &Path, what: &str) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| format!("{what} {}: {e}", path.display()))
}

/// Trust anchors: the certificates in `ca_file` only, or the system store when `None`. `what` names the setting.
pub fn roots(ca_file: Option<&Path>, what: &str) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    match ca_file {
        Some(path) => {
            for c in load_certs(path, what)? {
                roots.add(c).map_err(|e| format!("{what} {}: {e}", path.display()))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                let errors: Vec<String> = found.errors.iter().map(|e| e.to_string()).collect();
                return Err(format!(
                    "no trusted CA certificates in the system store (install ca-certificates, or set {what} for a \
                     private CA){}",
                    if errors.is_empty() { String::new() } else { format!(": {}", errors.join("; ")) }
                ));
            }
        }
    }
    Ok(roots)
}
