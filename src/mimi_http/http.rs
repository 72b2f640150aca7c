//! A minimal plain-HTTP/1.1 client for provider-to-provider requests (development mode; mTLS not yet).

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use std::time::Duration;

/// How long one request may take.
const TIMEOUT: Duration = Duration::from_secs(30);

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

/// Sends one request; returns the answer, or why there is none. `from_domain` goes into `From: mimi@DOMAIN`.
pub async fn request(
    method: &str,
    url: &str,
    from_domain: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Result<Answer, String> {
    let rest = url.strip_prefix("http://").ok_or("only http:// peers in development mode")?;
    let (authority, path) = rest.split_once('/').map(|(a, p)| (a, format!("/{p}"))).unwrap_or((rest, "/".into()));
    let fut = async {
        let stream = tokio::net::TcpStream::connect(authority).await.map_err(|e| e.to_string())?;
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
        let body = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes().to_vec();
        Ok(Answer { status, sequence, body })
    };
    tokio::time::timeout(TIMEOUT, fut).await.map_err(|_| "timed out".to_string())?
}
