//! Downloads from other networks, safely: only `http`/`https`, only to public addresses (unless allowed for
//! tests), at most `max_bytes`, within a time limit, no redirects followed. The host is resolved once, every
//! address checked, and the connection made to a checked address (a DNS answer cannot change between check and
//! use); TLS verifies the certificate for the URL's host.

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// Why a download failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// Not an `http(s)://host/…` URL.
    #[error("not a fetchable URL: {0}")]
    BadUrl(String),
    /// The host resolves to an address that is not public (loopback, private, link-local…).
    #[error("{0} is not a public address: refused")]
    Internal(IpAddr),
    /// Larger than allowed.
    #[error("more than {0} bytes")]
    TooLarge(u64),
    /// Not answered 200.
    #[error("answered {0}")]
    Status(u16),
    /// Network, TLS or time limit.
    #[error("{0}")]
    Failed(String),
}

/// A file downloaded: its bytes and the media type the server gave.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// The bytes.
    pub bytes: Vec<u8>,
    /// `Content-Type`, if any.
    pub media_type: Option<String>,
}

/// Downloads with the limits of the module documentation.
#[derive(Clone)]
pub struct Fetcher {
    tls: tokio_rustls::TlsConnector,
    timeout: Duration,
    allow_internal: bool,
}

impl std::fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fetcher").field("allow_internal", &self.allow_internal).finish_non_exhaustive()
    }
}

/// True if `ip` is an address anyone on the internet could reach (not loopback, private, link-local, CGNAT,
/// unique-local, documentation, multicast, unspecified or broadcast; IPv4-mapped IPv6 judged as IPv4).
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || a == 0
                || (a == 100 && (64..128).contains(&b))
                || (a == 192 && b == 0)
                || (a == 198 && (18..20).contains(&b))
                || a >= 240)
        }
        IpAddr::V6(v6) => {
            let seg = v6.segments();
            let o = v6.octets();
            let v4 = |a: usize| IpAddr::V4(std::net::Ipv4Addr::new(o[a], o[a + 1], o[a + 2], o[a + 3]));
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            // Forms that carry an IPv4 address: judged by it (NAT64 64:ff9b::/96, IPv4-compatible ::/96, 6to4).
            if seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0] || seg[..6] == [0; 6] {
                return is_public(v4(12));
            }
            if seg[0] == 0x2002 {
                return is_public(v4(2));
            }
            // Otherwise only global unicast (2000::/3), less documentation (2001:db8::/32), Teredo and the IETF
            // protocol assignments (2001::/23).
            (seg[0] & 0xe000) == 0x2000 && !(seg[0] == 0x2001 && (seg[1] == 0xdb8 || seg[1] < 0x200))
        }
    }
}

/// `scheme://host[:port]/path?query` split: (tls, host, port, path-and-query).
fn split_url(url: &str) -> Result<(bool, String, u16, String), FetchError> {
    let bad = || FetchError::BadUrl(url.chars().take(200).collect());
    let (tls, rest) = match url.split_once("://") {
        Some(("https", rest)) => (true, rest),
        Some(("http", rest)) => (false, rest),
        _ => return Err(bad()),
    };
    let (authority, path) = match rest.find(['/', '?', '#']) {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let path = path.split('#').next().unwrap_or("/");
    let path = if path.starts_with('/') { path.to_owned() } else { format!("/{path}") };
    if authority.is_empty() || authority.contains('@') || path.chars().any(|c| c.is_control() || c == ' ') {
        return Err(bad());
    }
    let default = if tls { 443 } else { 80 };
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6.split_once(']').ok_or_else(bad)?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| bad())?,
            None if after.is_empty() => default,
            None => return Err(bad()),
        };
        (h.to_owned(), port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), p.parse().map_err(|_| bad())?),
            None => (authority.to_owned(), default),
        }
    };
    if host.is_empty() {
        return Err(bad());
    }
    Ok((tls, host, port, path))
}

impl Fetcher {
    /// A fetcher trusting `roots` (`bridge_net::tls::roots`), with a 30 s time limit. `allow_internal` lets it
    /// reach non-public addresses: for tests against servers on loopback only.
    pub fn new(roots: rustls::RootCertStore, allow_internal: bool) -> Result<Self, String> {
        let config = rustls::ClientConfig::builder_with_provider(bridge_net::tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Self {
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
            timeout: Duration::from_secs(30),
            allow_internal,
        })
    }

    /// Downloads `url`, at most `max_bytes`.
    pub async fn fetch(&self, url: &str, max_bytes: u64) -> Result<Fetched, FetchError> {
        tokio::time::timeout(self.timeout, self.fetch_now(url, max_bytes))
            .await
            .unwrap_or_else(|_| Err(FetchError::Failed(format!("no answer within {:?}", self.timeout))))
    }

    async fn fetch_now(&self, url: &str, max_bytes: u64) -> Result<Fetched, FetchError> {
        let (tls, host, port, path) = split_url(url)?;
        let failed = |e: &dyn std::fmt::Display| FetchError::Failed(e.to_string());
        let addrs: Vec<SocketAddr> =
            tokio::net::lookup_host((host.as_str(), port)).await.map_err(|e| failed(&e))?.collect();
        if let Some(bad) = addrs.iter().find(|a| !self.allow_internal && !is_public(a.ip())) {
            return Err(FetchError::Internal(bad.ip()));
        }
        let addr = *addrs.first().ok_or_else(|| FetchError::Failed(format!("{host} has no address")))?;
        let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| failed(&e))?;
        let bracketed = if host.contains(':') { format!("[{host}]") } else { host.clone() };
        let authority = if port == if tls { 443 } else { 80 } { bracketed } else { format!("{bracketed}:{port}") };
        let request = hyper::Request::get(path)
            .header(hyper::header::HOST, authority)
            .header(hyper::header::USER_AGENT, "mimi-bridge")
            .body(Empty::<Bytes>::new())
            .map_err(|e| failed(&e))?;
        let response = if tls {
            let name = ServerName::try_from(host.clone()).map_err(|e| failed(&e))?;
            let stream = self.tls.connect(name, tcp).await.map_err(|e| failed(&e))?;
            send(TokioIo::new(stream), request).await?
        } else {
            send(TokioIo::new(tcp), request).await?
        };
        if response.status() != hyper::StatusCode::OK {
            return Err(FetchError::Status(response.status().as_u16()));
        }
        let media_type = response
            .headers()
            .get(hyper::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or(v).trim().to_owned());
        let declared = response
            .headers()
            .get(hyper::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > max_bytes) {
            return Err(FetchError::TooLarge(max_bytes));
        }
        let mut body = response.into_body();
        let mut bytes = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| failed(&e))?;
            if let Some(chunk) = frame.data_ref() {
                if bytes.len() as u64 + chunk.len() as u64 > max_bytes {
                    return Err(FetchError::TooLarge(max_bytes));
                }
                bytes.extend_from_slice(chunk);
            }
        }
        Ok(Fetched { bytes, media_type })
    }
}

async fn send<S>(
    io: S,
    request: hyper::Request<Empty<Bytes>>,
) -> Result<hyper::Response<hyper::body::Incoming>, FetchError>
where
    S: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let failed = |e: &dyn std::fmt::Display| FetchError::Failed(e.to_string());
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.map_err(|e| failed(&e))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender.send_request(request).await.map_err(|e| failed(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_addresses_are_not_public() {
        for ip in [
            "127.0.0.1",
            "64:ff9b::a00:1",
            "64:ff9b:1::1",
            "::a00:1",
            "2002:a00:1::1",
            "fec0::1",
            "100::1",
            "2001::1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "fc00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "2001:db8::1",
            "192.0.2.1",
        ] {
            assert!(!is_public(ip.parse().expect("ip")), "{ip}");
        }
        for ip in
            ["93.184.216.34", "1.1.1.1", "2606:4700::1111", "::ffff:1.1.1.1", "64:ff9b::101:101", "2002:101:101::1"]
        {
            assert!(is_public(ip.parse().expect("ip")), "{ip}");
        }
    }

    #[test]
    fn urls_split_or_are_refused() {
        assert_eq!(
            split_url("https://example.org/a/b?c=d#frag").expect("url"),
            (true, "example.org".into(), 443, "/a/b?c=d".into())
        );
        assert_eq!(split_url("http://[::1]:8080").expect("url"), (false, "::1".into(), 8080, "/".into()));
        for bad in ["ftp://x/y", "file:///etc/passwd", "https://user@host/", "http://", "https://h:notaport/", "x"] {
            assert!(split_url(bad).is_err(), "{bad}");
        }
    }

    /// A one-shot HTTP server on loopback answering `response` to the first request; its URL.
    async fn serve_once(response: Vec<u8>) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = l.local_addr().expect("addr").port();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.expect("accept");
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            let _ = s.write_all(&response).await;
        });
        format!("http://127.0.0.1:{port}/file")
    }

    #[tokio::test]
    async fn downloads_are_capped_and_need_a_200() {
        let f = Fetcher::new(rustls::RootCertStore::empty(), true).expect("fetcher");
        let ok = b"HTTP/1.1 200 OK\r\nContent-Type: image/png; x=y\r\nContent-Length: 5\r\n\r\nhello".to_vec();
        let got = f.fetch(&serve_once(ok.clone()).await, 5).await.expect("fetched");
        assert_eq!((got.bytes.as_slice(), got.media_type.as_deref()), (&b"hello"[..], Some("image/png")));
        assert_eq!(f.fetch(&serve_once(ok).await, 4).await.expect_err("declared too large"), FetchError::TooLarge(4));
        let chunked =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n3\r\ndef\r\n0\r\n\r\n".to_vec();
        assert_eq!(f.fetch(&serve_once(chunked).await, 5).await.expect_err("too large"), FetchError::TooLarge(5));
        let moved = b"HTTP/1.1 302 Found\r\nLocation: http://169.254.169.254/\r\nContent-Length: 0\r\n\r\n".to_vec();
        assert_eq!(f.fetch(&serve_once(moved).await, 5).await.expect_err("no redirects"), FetchError::Status(302));
    }

    #[tokio::test]
    async fn loopback_is_refused_unless_allowed() {
        let f = Fetcher::new(rustls::RootCertStore::empty(), false).expect("fetcher");
        let e = f.fetch("http://127.0.0.1:9/x", 10).await.expect_err("refused");
        assert!(matches!(e, FetchError::Internal(_)), "{e}");
        let e = f.fetch("http://localhost:9/x", 10).await.expect_err("refused");
        assert!(matches!(e, FetchError::Internal(_)), "{e}");
    }
}
