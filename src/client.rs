//! A small HTTP/1.1 client for the admin API (the CLI's `status` and `portal` commands). Plain HTTP: the admin
//! API is meant for loopback; no TLS stack is pulled in.

use crate::secrets::Secret;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

/// Errors talking to the daemon.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens there.
    #[error("cannot reach the daemon's admin API at {addr}: {reason} (is `mimi-bridge run` running with this config?)")]
    Connect {
        /// The address.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
    /// The exchange failed or timed out.
    #[error("admin API at {addr}: {reason}")]
    Http {
        /// The address.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
}

/// An admin API client.
pub struct AdminClient {
    addr: SocketAddr,
    token: Secret,
    timeout: Duration,
}

/// An answer: status and body.
#[derive(Debug)]
pub struct Answer {
    /// HTTP status.
    pub status: StatusCode,
    /// The body.
    pub body: Bytes,
}

impl AdminClient {
    /// A client for the daemon listening on `listen` (an unspecified address means this host's loopback).
    pub fn new(listen: SocketAddr, token: Secret) -> Self {
        let ip = match listen.ip() {
            IpAddr::V4(v) if v.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(v) if v.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        Self { addr: SocketAddr::new(ip, listen.port()), token, timeout: Duration::from_secs(30) }
    }

    /// The same client, waiting up to `timeout` for each answer (30 s by default).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> Result<Answer, ClientError> {
        self.request(Method::GET, path, None).await
    }

    /// `POST path` with a JSON body.
    pub async fn post(&self, path: &str, body: &serde_json::Value) -> Result<Answer, ClientError> {
        self.request(Method::POST, path, Some(body.to_string())).await
    }

    async fn request(&self, method: Method, path: &str, body: Option<String>) -> Result<Answer, ClientError> {
        let addr = self.addr;
        let http = |reason: String| ClientError::Http { addr, reason };
        let exchange = async {
            let stream = tokio::net::TcpStream::connect(addr)
                .await
                .map_err(|e| ClientError::Connect { addr, reason: e.to_string() })?;
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| http(e.to_string()))?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            let mut req = Request::builder()
                .method(method)
                .uri(path)
                .header(hyper::header::HOST, addr.to_string())
                .header(hyper::header::AUTHORIZATION, format!("Bearer {}", self.token.expose()));
            if body.is_some() {
                req = req.header(hyper::header::CONTENT_TYPE, "application/json");
            }
            let req = req.body(Full::new(Bytes::from(body.unwrap_or_default()))).map_err(|e| http(e.to_string()))?;
            let resp = sender.send_request(req).await.map_err(|e| http(e.to_string()))?;
            let status = resp.status();
            let body = resp.into_body().collect().await.map_err(|e| http(e.to_string()))?.to_bytes();
            Ok(Answer { status, body })
        };
        tokio::time::timeout(self.timeout, exchange).await.map_err(|_| http("timed out".into()))?
    }
}
