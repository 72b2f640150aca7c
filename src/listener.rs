//! Serving an axum [`Router`] on a TCP listener with bounded resources: the daemon's one HTTP server, used by the
//! admin API, by the MIMI endpoints / client API (plain or TLS) and by Matrix appservice APIs.
//!
//! * **Connection caps.** At most [`Limits::max_connections`] connections at once, and at most
//!   [`Limits::max_connections_per_ip`] from one address (IPv6: one /64, what one host is usually given). A
//!   connection over a cap is accepted and closed at once — never left in the kernel's backlog, which would
//!   stall everyone behind it — and counted in `mimi_bridge_connections_refused_total{listener}`. The cap is
//!   taken *before* a TLS handshake, so handshakes in progress count too.
//! * **Descriptor budget.** The global cap never exceeds a share of the process's soft `RLIMIT_NOFILE`
//!   ([`Limits::within_nofile`]): the MIMI listener at most half of it, the admin listener an eighth, so at least
//!   three eighths stay for the store, outbound connections (networks, peers) and the runtime. The daemon then
//!   never runs out of descriptors because of incoming connections, and `accept` keeps working for everyone.
//! * **Timeouts.** hyper's HTTP/1 `header_read_timeout`, with tokio's timer, bounds the time to send a request
//!   head ([`Limits::header_timeout`]). hyper starts that timer whenever it waits for a request head: on a fresh
//!   connection (so one that never sends a byte is closed after it) and after each response on a keep-alive
//!   connection (so an idle keep-alive connection is closed after it too). It does not run while a handler runs,
//!   so a long poll (`messages?wait=`) is not cut. What hyper does not bound is the middle of a request:
//!   [`Limits::idle_timeout`] is how long the daemon waits for the next bytes of a request body a handler is
//!   reading, or for the client to take the next bytes of a response; then the connection is closed.
//! * **Graceful shutdown.** When `shutdown` resolves the listening socket is closed, idle connections are closed,
//!   requests in flight may finish for [`Limits::shutdown_grace`]; whatever is left then is dropped.
//!
//! Handlers see the peer as `ConnectInfo<H::Info>` ([`Handshake::Info`]): `ConnectInfo<SocketAddr>` over plain
//! TCP, `ConnectInfo<PeerInfo>` over TLS.

use crate::telemetry::{CONNECTIONS_OPEN, CONNECTIONS_REFUSED};
use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper::service::Service as _;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio::time::Sleep;

/// Connections the kernel may hold for us before `accept` (the listen backlog; capped by `net.core.somaxconn`).
/// Large, so that during a flood — which the accept loop works through, closing what is over a cap — a legitimate
/// client's connection waits in the queue instead of having its SYN dropped (a second's retransmit).
pub const BACKLOG: u32 = 4096;

/// Binds a listening socket on `addr` with [`BACKLOG`] (`SO_REUSEADDR`, as `std` and tokio set it).
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// The bounds of one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections open at once (TLS handshakes in progress included).
    pub max_connections: usize,
    /// Connections open at once from one IP address (IPv6: one /64).
    pub max_connections_per_ip: usize,
    /// Longest time to send a request head; also how long a fresh or idle keep-alive connection may send nothing.
    pub header_timeout: Duration,
    /// Longest wait for the next bytes of a request body being read, or for the client to take response bytes.
    pub idle_timeout: Duration,
    /// How long requests in flight may run on after shutdown begins.
    pub shutdown_grace: Duration,
}

impl Default for Limits {
    /// The defaults of the `[mimi]` listener.
    fn default() -> Self {
        Self {
            max_connections: 1024,
            max_connections_per_ip: 32,
            header_timeout: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(2),
        }
    }
}

impl Limits {
    /// The admin listener's fixed limits: it is for operators and monitoring, normally on loopback.
    pub const ADMIN: Limits = Limits {
        max_connections: 64,
        max_connections_per_ip: 32,
        header_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(30),
        shutdown_grace: Duration::from_secs(2),
    };

    /// These limits with `max_connections` lowered to at most `1/divisor` of the process's soft `RLIMIT_NOFILE`.
    /// If it is lowered, the per-IP cap becomes at most half of it, so that one address never takes all of it.
    /// Returns the limits and the soft limit if it lowered the cap.
    pub fn within_nofile(self, divisor: u64) -> (Limits, Option<u64>) {
        let soft = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
        self.within(soft, divisor)
    }

    fn within(mut self, soft: Option<u64>, divisor: u64) -> (Limits, Option<u64>) {
        let budget = soft.map_or(usize::MAX, |s| usize::try_from(s / divisor.max(1)).unwrap_or(usize::MAX)).max(1);
        let lowered = (budget < self.max_connections).then_some(soft).flatten();
        self.max_connections = self.max_connections.min(budget);
        let per_ip_at_most = if lowered.is_some() { self.max_connections / 2 } else { self.max_connections };
        self.max_connections_per_ip = self.max_connections_per_ip.min(per_ip_at_most).max(1);
        (self, lowered)
    }
}

/// The MIMI listener's share of `RLIMIT_NOFILE`: half ([`Limits::within_nofile`]).
pub const MIMI_NOFILE_DIVISOR: u64 = 2;
/// The admin listener's share of `RLIMIT_NOFILE`: an eighth.
pub const ADMIN_NOFILE_DIVISOR: u64 = 8;

/// What turns an accepted TCP connection into the stream HTTP is spoken on: nothing ([`Plain`]) or a TLS
/// handshake (`MimiTls`). Runs inside the connection's task, after the connection was admitted under the caps.
pub trait Handshake: Clone + Send + Sync + 'static {
    /// The stream HTTP runs on.
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// What handlers get as `ConnectInfo<Info>`.
    type Info: Clone + Send + Sync + 'static;

    /// The stream and its peer's description, or `None` to drop the connection (it logs why). Must be bounded
    /// in time.
    fn handshake(
        &self,
        tcp: TcpStream,
        remote: SocketAddr,
    ) -> impl Future<Output = Option<(Self::Io, Self::Info)>> + Send;
}

/// Plain TCP: handlers get `ConnectInfo<SocketAddr>`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Plain;

impl Handshake for Plain {
    type Io = TcpStream;
    type Info = SocketAddr;

    async fn handshake(&self, tcp: TcpStream, remote: SocketAddr) -> Option<(TcpStream, SocketAddr)> {
        Some((tcp, remote))
    }
}

/// Serves `app` on `tcp` until `shutdown` resolves, then shuts down gracefully (bounded by
/// [`Limits::shutdown_grace`]). `name` labels the metrics and logs (`mimi`, `admin`).
pub async fn serve<H: Handshake>(
    name: &'static str,
    tcp: TcpListener,
    handshake: H,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send,
) {
    let counts = Arc::new(Counts::new(name, limits));
    let graceful = GracefulShutdown::new();
    let mut conns = JoinSet::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(limits.header_timeout).keep_alive(true);
    let app = TowerToHyperService::new(app);
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            biased;
            () = &mut shutdown => break,
            a = tcp.accept() => a,
        };
        while conns.try_join_next().is_some() {}
        let (stream, remote) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and the like: the connection stays in the backlog; retry shortly, without spinning.
                tracing::warn!(listener = name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(slot) = counts.admit(remote.ip()) else {
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        // Watch from now on, so that a shutdown during a TLS handshake still waits for (or drops) it.
        let watcher = graceful.watcher();
        let (handshake, app, http) = (handshake.clone(), app.clone(), http.clone());
        conns.spawn(async move {
            let _slot = slot;
            let Some((io, info)) = handshake.handshake(stream, remote).await else { return };
            let idle = limits.idle_timeout;
            let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                let mut req = req.map(|body| axum::body::Body::new(BodyStall::new(body, idle)));
                req.extensions_mut().insert(ConnectInfo(info.clone()));
                app.call(req)
            });
            let conn = http.serve_connection(TokioIo::new(WriteStall::new(io, idle)), service);
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(listener = name, %remote, error = %e, "connection closed");
            }
        });
    }
    // Stop accepting at once: new connections are refused by the kernel, not queued.
    drop(tcp);
    if tokio::time::timeout(limits.shutdown_grace, graceful.shutdown()).await.is_err() {
        while conns.try_join_next().is_some() {}
        tracing::warn!(listener = name, open = conns.len(), grace = ?limits.shutdown_grace,
            "connections still open after the shutdown grace period: closing them");
    }
    conns.shutdown().await;
}

/// Open connections, in total and per address.
struct Counts {
    name: &'static str,
    limits: Limits,
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
    last_warned: Mutex<Option<Instant>>,
}

impl Counts {
    fn new(name: &'static str, limits: Limits) -> Self {
        metrics::gauge!(CONNECTIONS_OPEN, "listener" => name).set(0.0);
        metrics::counter!(CONNECTIONS_REFUSED, "listener" => name).increment(0);
        Self { name, limits, open: Mutex::new((0, HashMap::new())), last_warned: Mutex::new(None) }
    }

    /// A slot for a connection from `ip`, or `None` (counted, and logged at most once a minute) over a cap.
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Slot> {
        let key = ip_key(ip);
        let refused = {
            let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
            let (total, by_ip) = &mut *open;
            let from_ip = by_ip.get(&key).copied().unwrap_or(0);
            if *total >= self.limits.max_connections {
                Some("max_connections")
            } else if from_ip >= self.limits.max_connections_per_ip {
                Some("max_connections_per_ip")
            } else {
                *total += 1;
                by_ip.insert(key, from_ip + 1);
                metrics::gauge!(CONNECTIONS_OPEN, "listener" => self.name).set(*total as f64);
                None
            }
        };
        let Some(cap) = refused else { return Some(Slot { counts: self.clone(), key }) };
        metrics::counter!(CONNECTIONS_REFUSED, "listener" => self.name).increment(1);
        let mut last = self.last_warned.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
            *last = Some(Instant::now());
            tracing::warn!(listener = self.name, %ip, cap, max_connections = self.limits.max_connections,
                max_connections_per_ip = self.limits.max_connections_per_ip,
                "connection refused: limit reached (logged at most once a minute; see {CONNECTIONS_REFUSED})");
        }
        None
    }
}

/// An admitted connection's place under the caps; given back when dropped.
struct Slot {
    counts: Arc<Counts>,
    key: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.counts.open.lock().unwrap_or_else(|e| e.into_inner());
        let (total, by_ip) = &mut *open;
        *total = total.saturating_sub(1);
        if let Some(n) = by_ip.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                by_ip.remove(&self.key);
            }
        }
        metrics::gauge!(CONNECTIONS_OPEN, "listener" => self.counts.name).set(*total as f64);
    }
}

/// The per-IP key: the IPv4 address, or the IPv6 /64.
fn ip_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(v6.to_bits() & !((1u128 << 64) - 1))),
    }
}

/// Arms `timer` (if not yet) and polls it; true once it fired.
fn expired(timer: &mut Option<Pin<Box<Sleep>>>, after: Duration, cx: &mut Context<'_>) -> bool {
    timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(after))).as_mut().poll(cx).is_ready()
}

/// A request body that fails once the handler has waited [`Limits::idle_timeout`] for its next bytes.
struct BodyStall<B> {
    inner: B,
    after: Duration,
    timer: Option<Pin<Box<Sleep>>>,
}

impl<B> BodyStall<B> {
    fn new(inner: B, after: Duration) -> Self {
        Self { inner, after, timer: None }
    }
}

impl<B> HttpBody for BodyStall<B>
where
    B: HttpBody + Unpin,
    B::Error: Into<axum::BoxError>,
{
    type Data = B::Data;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.timer = None;
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending if expired(&mut this.timer, this.after, cx) => {
                Poll::Ready(Some(Err(format!("no request body bytes for {:?}", this.after).into())))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A stream whose writes fail once one has waited [`Limits::idle_timeout`] for the client to take bytes.
struct WriteStall<T> {
    inner: T,
    after: Duration,
    timer: Option<Pin<Box<Sleep>>>,
}

impl<T> WriteStall<T> {
    fn new(inner: T, after: Duration) -> Self {
        Self { inner, after, timer: None }
    }

    /// Passes `polled` on, unless it stayed pending for longer than `after`.
    fn bound<R>(&mut self, cx: &mut Context<'_>, polled: Poll<io::Result<R>>) -> Poll<io::Result<R>> {
        match polled {
            Poll::Ready(r) => {
                self.timer = None;
                Poll::Ready(r)
            }
            Poll::Pending if expired(&mut self.timer, self.after, cx) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the client took no response bytes for {:?}", self.after),
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for WriteStall<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for WriteStall<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.bound(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.bound(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.bound(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.bound(cx, polled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt as _;
    use tokio::io::AsyncWriteExt as _;

    #[test]
    fn the_global_cap_is_a_share_of_the_descriptor_limit() {
        let l = Limits { max_connections: 1024, max_connections_per_ip: 300, ..Limits::default() };
        assert_eq!(
            l.within(Some(256), MIMI_NOFILE_DIVISOR),
            (Limits { max_connections: 128, max_connections_per_ip: 64, ..l }, Some(256))
        );
        assert_eq!(l.within(Some(65536), MIMI_NOFILE_DIVISOR), (l, None), "a large limit leaves the config alone");
        assert_eq!(l.within(None, MIMI_NOFILE_DIVISOR), (l, None), "unlimited");
        let admin = Limits::ADMIN.within(Some(256), ADMIN_NOFILE_DIVISOR).0;
        assert_eq!((admin.max_connections, admin.max_connections_per_ip), (32, 16));
        assert_eq!(l.within(Some(1), ADMIN_NOFILE_DIVISOR).0.max_connections, 1, "never 0");
    }

    #[test]
    fn ipv6_addresses_count_per_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().expect("ip");
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().expect("ip");
        let c: IpAddr = "2001:db8:1:3::1".parse().expect("ip");
        assert_eq!(ip_key(a), ip_key(b));
        assert_ne!(ip_key(a), ip_key(c));
        let mapped: IpAddr = "::ffff:127.0.0.2".parse().expect("ip");
        assert_eq!(ip_key(mapped), "127.0.0.2".parse::<IpAddr>().expect("ip"));
    }

    #[tokio::test]
    async fn caps_are_taken_and_given_back() {
        let counts = Arc::new(Counts::new(
            "test",
            Limits { max_connections: 3, max_connections_per_ip: 2, ..Limits::default() },
        ));
        let (one, two) = ("127.0.0.2".parse().expect("ip"), "127.0.0.3".parse().expect("ip"));
        let a = counts.admit(one).expect("first");
        let _b = counts.admit(one).expect("second");
        assert!(counts.admit(one).is_none(), "per-IP cap");
        let _c = counts.admit(two).expect("another address");
        assert!(counts.admit("127.0.0.4".parse().expect("ip")).is_none(), "global cap");
        drop(a);
        assert!(counts.admit(one).is_some(), "a closed connection gives its slot back");
    }

    /// One frame, then nothing ever again (a client that stopped sending).
    struct Stalls(Option<hyper::body::Bytes>);

    impl HttpBody for Stalls {
        type Data = hyper::body::Bytes;
        type Error = io::Error;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
            match self.0.take() {
                Some(b) => Poll::Ready(Some(Ok(Frame::data(b)))),
                None => Poll::Pending,
            }
        }
    }

    #[tokio::test]
    async fn a_stalled_body_fails_after_the_idle_timeout() {
        let mut body = BodyStall::new(Stalls(Some("abc".into())), Duration::from_millis(300));
        let first = body.frame().await.expect("frame").expect("data");
        assert_eq!(first.into_data().expect("data"), "abc");
        let started = Instant::now();
        let err = body.frame().await.expect("an error, not the end").expect_err("stalled");
        assert!(err.to_string().contains("no request body bytes"), "{err}");
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(300) && waited < Duration::from_secs(2), "{waited:?}");
    }

    #[tokio::test]
    async fn a_client_that_reads_nothing_fails_writes_after_the_idle_timeout() {
        let (server, _client) = tokio::io::duplex(64);
        let mut server = WriteStall::new(server, Duration::from_millis(300));
        let started = Instant::now();
        let err = server.write_all(&[0; 1024]).await.expect_err("the client never reads");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(300) && waited < Duration::from_secs(2), "{waited:?}");
    }
}
