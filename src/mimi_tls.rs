//! TLS for the MIMI endpoints. draft-ietf-mimi-protocol has providers authenticate each other with mutual TLS:
//! a peer presents a certificate valid for its domain, signed by a trust anchor we configured
//! (`mimi.trust_anchors`).
//!
//! * Server side: [`MimiTls`] is the TLS [`Handshake`](crate::listener::Handshake) of the daemon's listener
//!   ([`crate::listener::serve`]): the handshake runs in each connection's task (bounded by [`HANDSHAKE_TIMEOUT`],
//!   so a slow client cannot stall others) and handlers get a [`PeerInfo`] as `ConnectInfo<PeerInfo>`: the
//!   remote address and the client's verified certificate, if it sent one. A client
//!   certificate is optional at the TLS layer because native MLS clients authenticate with bearer tokens;
//!   [`require_peer`] makes it mandatory on the provider-to-provider routes and checks that it is valid for the
//!   domain the request claims (`From: mimi@DOMAIN`), with webpki's own name matching.
//! * Client side: [`MimiTls::connect`] opens TLS to a peer, presenting our certificate (the same one we serve).
//!
//! Without `mimi.tls_cert`, the daemon runs in plain-HTTP development mode on loopback only (see `config.rs`).

use axum::extract::{ConnectInfo, Request};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, ServerConfig};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// Longest a TLS handshake may take before the connection is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The TLS settings of the MIMI endpoints, both directions.
#[derive(Clone)]
pub struct MimiTls {
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
}

impl std::fmt::Debug for MimiTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MimiTls").finish_non_exhaustive()
    }
}

impl MimiTls {
    /// Loads our certificate chain and key, and the trust anchors for peers (`None`: the system store, for
    /// peers with publicly issued certificates). Errors name the setting and the file.
    pub fn load(cert: &Path, key: &Path, trust_anchors: Option<&Path>) -> Result<Self, String> {
        let chain = bridge_net::tls::load_certs(cert, "mimi.tls_cert")?;
        let key = bridge_net::tls::load_key(key, "mimi.tls_key")?;
        let roots = Arc::new(bridge_net::tls::roots(trust_anchors, "mimi.trust_anchors")?);
        let provider = bridge_net::tls::provider();
        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .allow_unauthenticated()
            .build()
            .map_err(|e| format!("mimi.trust_anchors: {e}"))?;
        let mut server = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS setup: {e}"))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(|e| format!("mimi.tls_cert / mimi.tls_key: {e}"))?;
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
        let client = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS setup: {e}"))?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(|e| format!("mimi.tls_cert / mimi.tls_key: {e}"))?;
        Ok(Self { server: Arc::new(server), client: Arc::new(client) })
    }

    /// Opens a TLS connection to a peer at `authority` (`host:port`), verifying its certificate for `host` and
    /// presenting ours.
    pub async fn connect(&self, authority: &str) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
        let host = authority.rsplit_once(':').map_or(authority, |(h, _)| h);
        let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
        let name = ServerName::try_from(host.to_owned()).map_err(|_| format!("{host:?} is not a valid TLS name"))?;
        let tcp = TcpStream::connect(authority).await.map_err(|e| format!("{authority}: {e}"))?;
        let connect = TlsConnector::from(self.client.clone()).connect(name, tcp);
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, connect).await {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => Err(format!("TLS with {authority}: {e}")),
            Err(_) => Err(format!("TLS with {authority}: handshake timed out")),
        }
    }
}

/// Who is on the other end of a TLS connection.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    /// The remote address.
    pub remote: SocketAddr,
    /// The client's end-entity certificate, verified against the trust anchors, if it presented one.
    pub certificate: Option<CertificateDer<'static>>,
}

impl PeerInfo {
    /// True if the client's certificate is valid for `domain`.
    pub fn is_valid_for(&self, domain: &str) -> bool {
        let (Some(cert), Ok(name)) = (&self.certificate, ServerName::try_from(domain)) else { return false };
        webpki::EndEntityCert::try_from(cert).is_ok_and(|c| c.verify_is_valid_for_subject_name(&name).is_ok())
    }
}

impl crate::listener::Handshake for MimiTls {
    type Io = tokio_rustls::server::TlsStream<TcpStream>;
    type Info = PeerInfo;

    /// The server side of the handshake, bounded by [`HANDSHAKE_TIMEOUT`]; runs in the connection's own task (see
    /// [`crate::listener`]), so a slow client stalls nobody else and counts under the listener's caps.
    async fn handshake(&self, tcp: TcpStream, remote: SocketAddr) -> Option<(Self::Io, PeerInfo)> {
        let accept = TlsAcceptor::from(self.server.clone()).accept(tcp);
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, accept).await {
            Ok(Ok(tls)) => {
                let certificate =
                    tls.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| c.clone().into_owned());
                Some((tls, PeerInfo { remote, certificate }))
            }
            Ok(Err(e)) => {
                tracing::debug!(%remote, error = %e, "TLS handshake failed");
                None
            }
            Err(_) => {
                tracing::debug!(%remote, "TLS handshake timed out");
                None
            }
        }
    }
}

/// Middleware for the provider-to-provider routes when TLS is on: the request must claim a domain
/// (`From: mimi@DOMAIN`) and the client's certificate must be valid for it; 403 otherwise. Over plain HTTP (no
/// [`PeerInfo`]: the loopback development mode) requests pass unchanged.
pub async fn require_peer(request: Request, next: Next) -> Response {
    let Some(ConnectInfo(peer)) = request.extensions().get::<ConnectInfo<PeerInfo>>().cloned() else {
        return next.run(request).await;
    };
    let claimed = request
        .headers()
        .get("from")
        .and_then(|v: &HeaderValue| v.to_str().ok())
        .and_then(|v| v.strip_prefix("mimi@"))
        .map(str::to_owned);
    let refuse = |why: String| {
        tracing::info!(remote = %peer.remote, "{why}");
        (StatusCode::FORBIDDEN, axum::Json(serde_json::json!({ "error": why }))).into_response()
    };
    match claimed {
        None => refuse("a peer request needs `From: mimi@DOMAIN`".into()),
        Some(_) if peer.certificate.is_none() => refuse("a peer must present a client certificate".into()),
        Some(domain) if !peer.is_valid_for(&domain) => {
            refuse(format!("the client certificate is not valid for {domain:?}"))
        }
        Some(_) => next.run(request).await,
    }
}
