//! The daemon's client API over HTTP/1.1 or HTTPS (one connection per request; see [`crate::transport`]).
//!
//! Errors are strings; those that say the server could not be reached or answered that it cannot serve now (502,
//! 503, 504) start with [`UNREACHABLE`], so a caller can wait and retry ([`is_unreachable`]). A refused TLS
//! handshake (e.g. an untrusted certificate) is not one of them.

use crate::transport::{ConnectError, Server, Stream};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use std::time::Duration;

/// The start of the errors that are worth a retry.
pub const UNREACHABLE: &str = "server unreachable";

/// True if `error` says the server could not be reached (or could not serve now).
pub fn is_unreachable(error: &str) -> bool {
    error.starts_with(UNREACHABLE)
}

/// A client-API connection target with this user's credentials.
#[derive(Clone)]
pub struct Api {
    server: Server,
    user: String,
    token: String,
}

/// Sends `req` over `stream`; the status and body, or why there is none.
async fn exchange<S>(stream: S, req: hyper::Request<Full<Bytes>>) -> Result<(u16, Vec<u8>), String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes().to_vec();
    Ok((status, body))
}

impl Api {
    /// The API of `server`, as `user` with `token` (both empty before registration).
    pub fn new(server: &Server, user: &str, token: &str) -> Self {
        Self { server: server.clone(), user: user.to_owned(), token: token.to_owned() }
    }

    async fn call(&self, method: &str, path: &str, ctype: &str, body: Vec<u8>) -> Result<(u16, Vec<u8>), String> {
        let authority = self.server.authority();
        let lost = |e: &dyn std::fmt::Display| format!("{UNREACHABLE}: {authority}: {e}");
        let mut req =
            hyper::Request::builder().method(method).uri(path).header("host", authority).header("content-type", ctype);
        if !self.user.is_empty() {
            req = req.header("mimi-user", &self.user).header("authorization", format!("Bearer {}", self.token));
        }
        let req = req.body(Full::new(Bytes::from(body))).map_err(|e| e.to_string())?;
        let fut = async {
            match self.server.connect().await {
                Ok(Stream::Plain(s)) => exchange(s, req).await.map_err(|e| lost(&e)),
                Ok(Stream::Tls(s)) => exchange(*s, req).await.map_err(|e| lost(&e)),
                Err(ConnectError::Unreachable(e)) => Err(lost(&e)),
                Err(ConnectError::Refused(e)) => Err(format!("{authority}: {e}")),
            }
        };
        tokio::time::timeout(Duration::from_secs(90), fut).await.map_err(|_| lost(&"request timed out"))?
    }

    fn check((status, body): (u16, Vec<u8>)) -> Result<Vec<u8>, String> {
        match status {
            200..=299 => Ok(body),
            502..=504 => Err(format!("{UNREACHABLE}: HTTP {status}: {}", String::from_utf8_lossy(&body))),
            _ => Err(format!("HTTP {status}: {}", String::from_utf8_lossy(&body))),
        }
    }

    /// `GET path` (2xx required).
    pub async fn get(&self, path: &str) -> Result<Vec<u8>, String> {
        Self::check(self.call("GET", path, "application/octet-stream", Vec::new()).await?)
    }

    /// `POST path` with a binary body; status and body.
    pub async fn post_raw(&self, path: &str, body: Vec<u8>) -> Result<(u16, Vec<u8>), String> {
        self.call("POST", path, "application/octet-stream", body).await
    }

    /// `POST path` with a binary body (2xx required).
    pub async fn post_raw_ok(&self, path: &str, body: Vec<u8>) -> Result<Vec<u8>, String> {
        Self::check(self.post_raw(path, body).await?)
    }

    /// `POST path` with JSON (2xx required); the JSON answer.
    pub async fn post_json(&self, path: &str, v: serde_json::Value) -> Result<serde_json::Value, String> {
        let body = Self::check(self.call("POST", path, "application/json", v.to_string().into_bytes()).await?)?;
        serde_json::from_slice(&body).map_err(|e| e.to_string())
    }
}
