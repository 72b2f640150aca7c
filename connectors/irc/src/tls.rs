//! TLS for IRC connections: rustls with the aws-lc-rs crypto provider (the only provider in the bridge's
//! dependency graph), certificate and hostname verification by webpki, trust anchors from the system store
//! (`rustls-native-certs`) or, when `tls_ca_file` is set, from that file only; an optional client certificate
//! (`tls_client_cert_file` + `tls_client_key_file`) for SASL EXTERNAL / CertFP.
//!
//! The provider is passed explicitly ([`rustls::ClientConfig::builder_with_provider`]), so nothing depends on a
//! process-wide default provider being installed.

use crate::Config;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Everything needed to open a TLS session to the account's server.
#[derive(Clone)]
pub struct Tls {
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("name", &self.name).finish_non_exhaustive()
    }
}

/// The host part of `host:port` (IPv6 literals may be bracketed: `[::1]:6697`).
pub fn host_of(server: &str) -> &str {
    let host = server.rsplit_once(':').map_or(server, |(h, _)| h);
    host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host)
}

impl Tls {
    /// Builds the TLS settings for `config` (reads the CA and client certificate files). Errors name the key and
    /// the file at fault.
    pub fn from_config(config: &Config) -> Result<Self, String> {
        let host = host_of(&config.server);
        let name = ServerName::try_from(host.to_owned())
            .map_err(|_| format!("server host {host:?} is neither a DNS name nor an IP address (needed for TLS)"))?;
        let roots = bridge_net::tls::roots(config.tls_ca_file.as_deref(), "tls_ca_file")?;
        let provider = bridge_net::tls::provider();
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS setup: {e}"))?
            .with_root_certificates(roots);
        let client = match (&config.tls_client_cert_file, &config.tls_client_key_file) {
            (Some(cert), Some(key)) => {
                let chain = bridge_net::tls::load_certs(cert, "tls_client_cert_file")?;
                let key = bridge_net::tls::load_key(key, "tls_client_key_file")?;
                builder.with_client_auth_cert(chain, key).map_err(|e| format!("TLS client certificate: {e}"))?
            }
            (None, None) => builder.with_no_client_auth(),
            _ => return Err("tls_client_cert_file and tls_client_key_file go together".into()),
        };
        Ok(Self { config: Arc::new(client), name })
    }

    /// Runs the TLS handshake over `tcp`, verifying the server's certificate chain and name.
    pub async fn handshake(&self, tcp: TcpStream) -> Result<Box<dyn Io>, String> {
        let stream = TlsConnector::from(self.config.clone())
            .connect(self.name.clone(), tcp)
            .await
            .map_err(|e| explain(&e, &self.name))?;
        Ok(Box::new(stream))
    }
}

/// A byte stream: plain TCP or TLS over TCP.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A handshake error in words an operator can act on.
fn explain(e: &std::io::Error, name: &ServerName<'_>) -> String {
    use rustls::{CertificateError, Error};
    let server = name.to_str();
    match e.get_ref().and_then(|inner| inner.downcast_ref::<Error>()) {
        Some(Error::InvalidCertificate(CertificateError::UnknownIssuer)) => {
            format!("TLS: {server}'s certificate is not signed by a trusted CA (for a private CA, set tls_ca_file)")
        }
        Some(Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        )) => format!("TLS: the certificate presented is not valid for {server:?} (hostname mismatch)"),
        Some(Error::InvalidCertificate(CertificateError::Expired | CertificateError::ExpiredContext { .. })) => {
            format!("TLS: {server}'s certificate has expired")
        }
        Some(other) => format!("TLS handshake with {server} failed: {other}"),
        None => format!("TLS handshake with {server} failed: {e} (is this a TLS port?)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_parts() {
        assert_eq!(host_of("irc.libera.chat:6697"), "irc.libera.chat");
        assert_eq!(host_of("[::1]:6697"), "::1");
        assert_eq!(host_of("127.0.0.1:6697"), "127.0.0.1");
    }

    #[test]
    fn config_errors_name_the_key_and_file() {
        let mut c = Config::new("localhost:6697", "b");
        c.tls = true;
        c.tls_ca_file = Some("/nonexistent/ca.pem".into());
        let e = Tls::from_config(&c).expect_err("missing file");
        assert!(e.contains("tls_ca_file") && e.contains("/nonexistent/ca.pem"), "{e}");
        let dir = tempfile::tempdir().expect("tempdir");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not pem").expect("write");
        c.tls_ca_file = Some(empty);
        let e = Tls::from_config(&c).expect_err("no certificate");
        assert!(e.contains("no PEM certificate"), "{e}");
        c.tls_ca_file = None;
        c.tls_client_cert_file = Some("/x".into());
        if let Err(e) = Tls::from_config(&c) {
            // Either the system store is empty here or the half-configured client certificate is reported.
            assert!(e.contains("go together") || e.contains("system store"), "{e}");
        } else {
            panic!("a client certificate without its key must be refused");
        }
    }
}
