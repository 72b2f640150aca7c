//! The server the client talks to: its URL (`http://` or `https://`) and how to reach it. For `https://`, the
//! server's certificate must chain to the trust anchors (`--ca-file`, or the system's store) and be valid for the
//! URL's host; rustls with aws-lc-rs, like the daemon.

use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use std::path::Path;
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// How long a TLS handshake may take.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// TLS towards an `https://` server: the connector and the name its certificate must be valid for.
#[derive(Clone)]
struct Tls {
    connector: TlsConnector,
    name: ServerName<'static>,
}

/// A connection could not be made: worth a retry (the server is away), or not (e.g. its certificate is refused).
#[derive(Debug)]
pub enum ConnectError {
    /// TCP failed, or the connection broke during the handshake.
    Unreachable(String),
    /// The TLS handshake failed for a reason a retry does not cure.
    Refused(String),
}

/// A parsed server URL.
#[derive(Clone)]
pub struct Server {
    /// `host:port` to connect to (and the `Host` header).
    authority: String,
    tls: Option<Tls>,
}

impl Server {
    /// Parses `url` (`http://HOST[:PORT][/]` or `https://HOST[:PORT][/]`); `ca_file`: the trust anchors for
    /// `https://` (`None`: the system's store). Errors say what is wrong with the URL or the CA file.
    pub fn new(url: &str, ca_file: Option<&Path>) -> Result<Self, String> {
        let (tls, rest) = if let Some(rest) = url.strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = url.strip_prefix("http://") {
            (false, rest)
        } else {
            return Err(format!("--server {url:?}: expected http://HOST:PORT or https://HOST[:PORT]"));
        };
        let hostport = rest.trim_end_matches('/');
        if hostport.is_empty() || hostport.contains(['/', '?', '#', '@']) {
            return Err(format!("--server {url:?}: expected a base URL without path, query or user"));
        }
        let (host, port) = split_host_port(hostport).ok_or_else(|| format!("--server {url:?}: bad host or port"))?;
        let port = port.unwrap_or(if tls { 443 } else { 80 });
        let authority = if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
        let tls = tls
            .then(|| {
                let name = ServerName::try_from(host.to_owned())
                    .map_err(|_| format!("--server {url:?}: {host:?} is not a valid TLS server name"))?;
                Ok::<_, String>(Tls { connector: connector(ca_file)?, name })
            })
            .transpose()?;
        Ok(Self { authority, tls })
    }

    /// `host:port`.
    pub fn authority(&self) -> &str {
        &self.authority
    }

    /// Connects and, for `https://`, runs the TLS handshake.
    pub async fn connect(&self) -> Result<Stream, ConnectError> {
        let tcp = TcpStream::connect(&self.authority).await.map_err(|e| ConnectError::Unreachable(e.to_string()))?;
        let Some(tls) = &self.tls else { return Ok(Stream::Plain(tcp)) };
        let handshake = tls.connector.connect(tls.name.clone(), tcp);
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
            Ok(Ok(s)) => Ok(Stream::Tls(Box::new(s))),
            Ok(Err(e)) => Err(handshake_error(&e)),
            Err(_) => Err(ConnectError::Unreachable("TLS handshake timed out".into())),
        }
    }
}

/// A connection to the server.
pub enum Stream {
    /// `http://`.
    Plain(TcpStream),
    /// `https://`.
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// `host` and `port` of `host[:port]` or `[v6][:port]`.
fn split_host_port(s: &str) -> Option<(&str, Option<u16>)> {
    let (host, port) = if let Some(v6) = s.strip_prefix('[') {
        let (host, after) = v6.split_once(']')?;
        (host, after.strip_prefix(':'))
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    let port = port.map(|p| p.parse::<u16>().ok()).map_or(Some(None), |p| p.map(Some))?;
    (!host.is_empty()).then_some((host, port))
}

/// A TLS client configuration trusting the CAs in `ca_file` (or the system's), speaking HTTP/1.1.
fn connector(ca_file: Option<&Path>) -> Result<TlsConnector, String> {
    let roots = bridge_net::tls::roots(ca_file, "--ca-file")?;
    let mut config = ClientConfig::builder_with_provider(bridge_net::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsConnector::from(Arc::new(config)))
}

/// A refusal by rustls (the certificate, the protocol) is final; anything else (the connection broke) is not.
fn handshake_error(e: &std::io::Error) -> ConnectError {
    match e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
        Some(rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)) => {
            ConnectError::Refused(format!("TLS: {e} (--ca-file names the CA certificates to trust)"))
        }
        Some(_) => ConnectError::Refused(format!("TLS: {e}")),
        None => ConnectError::Unreachable(format!("TLS: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_urls() {
        let s = Server::new("http://127.0.0.1:8448/", None).expect("plain");
        assert_eq!((s.authority(), s.tls.is_some()), ("127.0.0.1:8448", false));
        assert_eq!(Server::new("http://[::1]:9", None).expect("v6").authority(), "[::1]:9");
        assert_eq!(Server::new("http://example.org", None).expect("default port").authority(), "example.org:80");
        for bad in ["127.0.0.1:8448", "ftp://x", "http://", "http://h:port", "http://h:1/path", "http://u@h:1"] {
            assert!(Server::new(bad, None).is_err(), "{bad}");
        }
        let missing =
            Server::new("https://localhost:1", Some(Path::new("/nonexistent/ca.pem"))).err().expect("missing CA file");
        assert!(missing.contains("--ca-file /nonexistent/ca.pem"), "{missing}");
    }
}
