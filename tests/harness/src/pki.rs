//! Test certificates: a CA and certificates it signs, written as PEM files (rcgen, aws-lc-rs).

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use std::path::{Path, PathBuf};

/// A test CA; its certificate is in [`Ca::cert`].
pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
    dir: PathBuf,
    name: String,
    /// The CA certificate (PEM file).
    pub cert: PathBuf,
}

/// A certificate and its key (PEM files).
#[derive(Debug, Clone)]
pub struct Issued {
    /// The certificate.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
}

impl Ca {
    /// A new CA named `name`, writing its files into `dir`.
    pub fn new(dir: &Path, name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, format!("{name} test CA"));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key")).expect("CA");
        let cert = dir.join(format!("{name}-ca.pem"));
        std::fs::write(&cert, issuer.pem()).expect("write CA");
        Self { issuer, dir: dir.to_owned(), name: name.to_owned(), cert }
    }

    /// A certificate named `file` for the DNS names / IP addresses `sans`, usable for `server` and/or `client`
    /// authentication.
    pub fn issue(&self, file: &str, sans: &[&str], server: bool, client: bool) -> Issued {
        let key = KeyPair::generate().expect("key");
        let mut params =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).expect("params");
        params.distinguished_name.push(DnType::CommonName, sans.first().copied().unwrap_or(file));
        params.extended_key_usages =
            [(server, ExtendedKeyUsagePurpose::ServerAuth), (client, ExtendedKeyUsagePurpose::ClientAuth)]
                .into_iter()
                .filter_map(|(on, p)| on.then_some(p))
                .collect();
        let cert = params.signed_by(&key, &self.issuer).expect("certificate");
        let w = |suffix: &str, pem: String| {
            let p = self.dir.join(format!("{}-{file}-{suffix}", self.name));
            std::fs::write(&p, pem).expect("write pem");
            p
        };
        Issued { cert: w("cert.pem", cert.pem()), key: w("key.pem", key.serialize_pem()) }
    }
}
