//! The HTTP/1.1 client for provider-to-provider requests, and the configured peers it talks to. With TLS
//! configured (`[mimi] tls_cert`), peers are reached over `https://` with mutual TLS (we present our certificate;
//! theirs must chain to `mimi.trust_anchors` and be valid for the URL's host); without it, only `http://` peers
//! are reached (the loopback development mode). An answer body over [`MAX_ANSWER`] bytes fails the request.

use crate::mimi_tls::MimiTls;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use std::collections::HashMap;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};

/// How long one request may take.
const TIMEOUT: Duration = Duration::from_secs(30);
/// Largest answer body read from a peer; a longer one fails the request. Well above the largest log page a hub
/// serves ([`super::MAX_PAGE_BYTES`] plus one entry).
pub const MAX_ANSWER: usize = 16 << 20;

/// A peer's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// Our `Mimi-Sequence` header, if the answer has a valid one (the hub's sequence number of an accepted
    /// message).
    pub sequence: Option<u64>,
    /// The body.
    pub body: Vec<u8>,
}

/// The configured peers (`[[mimi.peer]]`: domain → base URL) and how to reach them.
#[derive(Debug, Default)]
pub struct Peers {
    urls: HashMap<String, String>,
    tls: Option<MimiTls>,
}

impl Peers {
    /// Peers `urls` (domain → base URL), reached with `tls` (mutual TLS) or over plain HTTP when `None`.
    pub fn new(urls: HashMap<String, String>, tls: Option<MimiTls>) -> Self {
        Self { urls, tls }
    }

    /// The base URL of peer `domain`, if configured.
    pub fn get(&self, domain: &str) -> Option<&String> {
        self.urls.get(domain)
    }

    /// True if `domain` is a configured peer.
    pub fn contains_key(&self, domain: &str) -> bool {
        self.urls.contains_key(domain)
    }

    /// Sends one request; returns the answer, or why there is none. `from_domain` goes into `From: mimi@DOMAIN`.
    pub async fn request(
        &self,
        method: &str,
        url: &str,
        from_domain: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Result<Answer, String> {
        let (tls, rest) = match (url.split_once("://"), &self.tls) {
            (Some(("https", rest)), Some(tls)) => (Some(tls), rest),
            (Some(("https", _)), None) => {
                return Err(format!("{url}: https:// peers need [mimi] tls_cert and tls_key"));
            }
            (Some(("http", _)), Some(_)) => {
                return Err(format!("{url}: with TLS configured, peers are reached over https:// only"));
            }
            (Some(("http", rest)), None) => (None, rest),
            _ => return Err(format!("{url}: not an http(s):// URL")),
        };
        let (authority, path) = rest.split_once('/').map(|(a, p)| (a, format!("/{p}"))).unwrap_or((rest, "/".into()));
        let fut = async {
            match tls {
                Some(tls) => {
                    let stream = tls.connect(authority).await?;
                    exchange(stream, method, authority, &path, from_domain, headers, body, MAX_ANSWER).await
                }
                None => {
                    let tcp =
                        tokio::net::TcpStream::connect(authority).await.map_err(|e| format!("{authority}: {e}"))?;
                    exchange(tcp, method, authority, &path, from_domain, headers, body, MAX_ANSWER).await
                }
            }
        };
        tokio::time::timeout(TIMEOUT, fut).await.map_err(|_| "timed out".to_string())?
    }
}

/// One plain-HTTP request (no peers configured, no TLS): for tools and tests on loopback.
pub async fn request(
    method: &str,
    url: &str,
    from_domain: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Result<Answer, String> {
    Peers::default().request(method, url, from_domain, headers, body).await
}

/// One request and its answer over an open connection; an answer body over `limit` bytes is an error.
#[allow(clippy::too_many_arguments)]
async fn exchange(
    stream: impl AsyncRead + AsyncWrite + Unpin + Send + 'static,
    method: &str,
    authority: &str,
    path: &str,
    from_domain: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
    limit: usize,
) -> Result<Answer, String> {
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", authority)
        .header("from", format!("mimi@{from_domain}"))
        .header("content-type", "application/mimi-protocol");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(Bytes::from(body))).map_err(|e| e.to_string())?;
    let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let sequence = resp.headers().get("mimi-sequence").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
    let body = Limited::new(resp.into_body(), limit)
        .collect()
        .await
        .map_err(|e| format!("{authority}: answer unreadable or over {limit} bytes: {e}"))?
        .to_bytes()
        .to_vec();
    Ok(Answer { status, sequence, body })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A peer answering `body` (as announced by Content-Length, or chunked) over an in-memory connection.
    async fn answer(body: Vec<u8>, chunked: bool, limit: usize) -> Result<Answer, String> {
        let (client, mut server) = tokio::io::duplex(1 << 16);
        tokio::spawn(async move {
            let mut req = vec![0u8; 4096];
            let _ = server.read(&mut req).await;
            let head = if chunked {
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_owned()
            } else {
                format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len())
            };
            let _ = server.write_all(head.as_bytes()).await;
            if chunked {
                for c in body.chunks(1000) {
                    let _ = server.write_all(format!("{:x}\r\n", c.len()).as_bytes()).await;
                    let _ = server.write_all(c).await;
                    let _ = server.write_all(b"\r\n").await;
                }
                let _ = server.write_all(b"0\r\n\r\n").await;
            } else {
                let _ = server.write_all(&body).await;
            }
        });
        exchange(client, "GET", "peer.test", "/v1/log/x", "us.test", &[], Vec::new(), limit).await
    }

    #[tokio::test]
    async fn answers_over_the_limit_fail_whole_ones_under_it_are_read() {
        let a = answer(vec![7; 5000], false, 5000).await.expect("at the limit");
        assert_eq!((a.status, a.body.len()), (200, 5000));
        assert!(answer(vec![7; 5001], false, 5000).await.is_err(), "announced over the limit");
        assert!(answer(vec![7; 50_000], true, 5000).await.is_err(), "streamed over the limit");
        assert_eq!(answer(vec![7; 4000], true, 5000).await.expect("chunked").body.len(), 4000);
    }
}
