//! Bounded listeners, against the real binary: a flood of half-sent requests from one address, with the daemon's
//! descriptors limited to 256, does not keep anyone else out of either listener; connections that send nothing or
//! stop half-way are closed within the configured timeouts, while a long poll outlasts the header timeout; bad
//! limits in the config are refused with their location. Everything runs on 127.0.0.0/8.

use crate::common::{Daemon, cli, cookie, parse_prometheus, write_config};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A config in `dir` with `mimi_keys` added to its `[mimi]` table; (config, admin address, MIMI address).
fn config(dir: &Path, mimi_keys: &str) -> (PathBuf, SocketAddr, SocketAddr) {
    let (path, admin) = write_config(dir, "");
    let text = std::fs::read_to_string(&path).expect("config");
    let text = text.replacen("[mimi]\n", &format!("[mimi]\n{mimi_keys}"), 1);
    std::fs::write(&path, &text).expect("write config");
    let mimi = text
        .split("[mimi]")
        .nth(1)
        .and_then(|t| t.lines().find_map(|l| l.strip_prefix("listen = \"")))
        .and_then(|l| l.trim_end_matches('"').parse().ok())
        .expect("mimi.listen");
    (path, admin, mimi)
}

/// GET `path` with `Connection: close`, everything within `within`: (status, elapsed) or what went wrong.
fn get_within(addr: SocketAddr, path: &str, within: Duration) -> Result<(u16, Duration), String> {
    let started = Instant::now();
    let mut s = TcpStream::connect_timeout(&addr, within).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(within)).map_err(|e| e.to_string())?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head).map_err(|e| format!("read after {:?}: {e}", started.elapsed()))?;
    let status = String::from_utf8_lossy(&head[9..12]).parse().map_err(|e| format!("status: {e}"))?;
    Ok((status, started.elapsed()))
}

/// Opens `n` connections to `to` from 127.0.0.2, each sending half a request head and then nothing. Returns the
/// sockets (the caller keeps them open) and how many connected at all.
async fn flood(to: SocketAddr, n: usize) -> (Vec<tokio::net::TcpStream>, usize) {
    use tokio::io::AsyncWriteExt as _;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..n {
        tasks.spawn(async move {
            let socket = tokio::net::TcpSocket::new_v4().ok()?;
            socket.bind("127.0.0.2:0".parse().expect("addr")).ok()?;
            let mut s = tokio::time::timeout(Duration::from_secs(3), socket.connect(to)).await.ok()?.ok()?;
            // The daemon may already have closed it (over a cap): that is fine.
            let _ = s.write_all(b"GET /health HTTP/1.1\r\nHost: flood\r\n").await;
            Some(s)
        });
    }
    let mut open = Vec::new();
    while let Some(r) = tasks.join_next().await {
        if let Ok(Some(s)) = r {
            open.push(s);
        }
    }
    let connected = open.len();
    (open, connected)
}

/// Waits (up to `limit`) until at least `n` of `sockets` were closed by the daemon; how many were.
async fn closed_by_daemon(sockets: &[tokio::net::TcpStream], n: usize, limit: Duration) -> usize {
    let deadline = Instant::now() + limit;
    loop {
        let mut buf = [0u8; 64];
        let closed = sockets
            .iter()
            .filter(|s| !matches!(s.try_read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock))
            .count();
        if closed >= n || Instant::now() >= deadline {
            return closed;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn a_flood_of_half_sent_requests_from_one_address_keeps_nobody_else_out() {
    let _heavy = crate::common::heavy();
    let out = std::process::Command::new("prlimit").arg("--version").output();
    assert!(out.is_ok_and(|o| o.status.success()), "prlimit (util-linux) is needed: scripts/test installs it");
    let dir = tempfile::tempdir().expect("tempdir");
    let (cfg, admin, mimi) = config(dir.path(), "");
    let mut daemon = Daemon::start_under(&["prlimit", "--nofile=256:256", "--"], &cfg, &[], &[]);

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let started = Instant::now();
    let (held, connected) = rt.block_on(async {
        let (mut a, na) = flood(mimi, 1000).await;
        let (b, nb) = flood(admin, 1000).await;
        a.extend(b);
        (a, [("mimi", na, 32.0), ("admin", nb, 16.0)])
    });
    eprintln!("flood: {connected:?} of 1000 connections each from 127.0.0.2 connected in {:?}", started.elapsed());
    // The daemon works through its accept queue, closing what is over the per-IP caps; a loaded machine may take
    // a while. The flood's admitted connections stay open and half-sent.
    let over_caps = connected.iter().map(|(_, n, cap)| n.saturating_sub(*cap as usize)).sum::<usize>();
    let closed = rt.block_on(closed_by_daemon(&held, over_caps, Duration::from_secs(30)));
    eprintln!("{closed} of the flood's connections closed by the daemon after {:?}", started.elapsed());
    assert!(closed >= over_caps, "the daemon closed {closed} connections over its caps, expected {over_caps}");

    // The flood is still open (the daemon's header timeouts, 20 s and 10 s, have not fired): others get answers.
    let health = get_within(admin, "/health", Duration::from_secs(1));
    let directory = get_within(mimi, "/.well-known/mimi-protocol-directory", Duration::from_secs(1));
    eprintln!("from 127.0.0.1 during the flood: /health {health:?}, directory {directory:?}");
    assert!(matches!(health, Ok((200, t)) if t < Duration::from_secs(1)), "/health: {health:?}\n{}", daemon.log());
    assert!(
        matches!(directory, Ok((200, t)) if t < Duration::from_secs(1)),
        "MIMI directory: {directory:?}\n{}",
        daemon.log()
    );

    assert!(
        daemon.log().contains("connection cap lowered to 1/2 of RLIMIT_NOFILE"),
        "the MIMI listener's cap follows RLIMIT_NOFILE: {}",
        daemon.log()
    );

    // Over the per-IP caps (32 for MIMI, 16 for admin: half of its cap, lowered to 32 by RLIMIT_NOFILE), the rest was accepted and closed at once, and counted.
    // (The kernel may still hold a few in the backlog: wait until the daemon has taken every one.)
    let token = cookie(dir.path());
    let sample = |listener: &str| {
        let metrics = crate::common::http(admin, "GET", "/metrics", Some(&token), None).expect("metrics");
        let families = parse_prometheus(&metrics.body).expect("Prometheus text");
        let get = |family: &str| {
            let f = families.get(family).expect(family);
            let s = f.samples.iter().find(|(_, l, _)| l.get("listener").map(String::as_str) == Some(listener));
            s.map(|s| s.2).expect(family)
        };
        (get("mimi_bridge_connections_refused_total"), get("mimi_bridge_connections_open"))
    };
    for (listener, connected, per_ip) in connected {
        let deadline = Instant::now() + Duration::from_secs(5);
        let (mut refused, mut open) = sample(listener);
        while refused < connected as f64 - per_ip && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
            (refused, open) = sample(listener);
        }
        eprintln!("{listener}: refused {refused}, open {open} (the /metrics request included)");
        assert_eq!(refused, connected as f64 - per_ip, "{listener}");
        assert!(open <= per_ip + 1.0, "{listener}: open {open}");
    }
    drop(held);
    assert_eq!(daemon.terminate(Duration::from_secs(15)), Some(0), "{}", daemon.log());
}

/// Reads until the daemon closes the connection (or `limit`); how long that took.
fn closed_after(mut s: TcpStream, limit: Duration) -> Result<Duration, String> {
    let started = Instant::now();
    s.set_read_timeout(Some(limit)).map_err(|e| e.to_string())?;
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Ok(started.elapsed()),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(started.elapsed()),
            Err(e) => return Err(format!("still open after {:?}: {e}", started.elapsed())),
        }
    }
}

#[test]
fn silent_and_stalled_connections_are_closed_within_the_timeouts() {
    let _heavy = crate::common::heavy();
    let dir = tempfile::tempdir().expect("tempdir");
    let (cfg, admin, mimi) = config(dir.path(), "header_timeout_secs = 2\nidle_timeout_secs = 3\n");
    let mut daemon = Daemon::start(&cfg, &[]);
    let connect = |addr: SocketAddr, send: &[u8]| {
        let mut s = TcpStream::connect(addr).expect("connect");
        s.write_all(send).expect("send");
        s
    };
    let keep_alive = |addr: SocketAddr| {
        let mut s = connect(addr, format!("GET /health HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes());
        let mut head = [0u8; 12];
        s.read_exact(&mut head).expect("answered");
        s
    };
    let body = "POST /client/v1/register HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: \
                100\r\n\r\n{\"user\":";
    // (what, connection, least, most): the daemon must close each between least and most.
    let cases = vec![
        ("mimi: never sends a byte", connect(mimi, b""), 2, 4),
        ("mimi: half a request head", connect(mimi, b"GET /.well-known/mimi-protocol-directory HTTP/1.1\r\n"), 2, 4),
        ("mimi: idle keep-alive after an answer", keep_alive(mimi), 2, 4),
        ("mimi: a body that stops half-way", connect(mimi, body.as_bytes()), 3, 5),
        ("admin: never sends a byte (fixed 10 s)", connect(admin, b""), 10, 12),
    ];
    let threads: Vec<_> = cases
        .into_iter()
        .map(|(what, s, least, most)| {
            std::thread::spawn(move || (what, closed_after(s, Duration::from_secs(most + 5)), least, most))
        })
        .collect();
    for t in threads {
        let (what, closed, least, most) = t.join().expect("thread");
        eprintln!("{what}: closed after {closed:?}");
        let closed = closed.unwrap_or_else(|e| panic!("{what}: {e}"));
        // The timer starts at the daemon's accept, a little before ours: 200 ms of slack below.
        assert!(closed + Duration::from_millis(200) >= Duration::from_secs(least), "{what}: closed after {closed:?}");
        assert!(closed <= Duration::from_secs(most), "{what}: closed after {closed:?}");
    }
    assert_eq!(daemon.terminate(Duration::from_secs(15)), Some(0), "{}", daemon.log());
}

#[test]
fn a_long_poll_outlasts_the_header_timeout() {
    let _heavy = crate::common::heavy();
    let dir = tempfile::tempdir().expect("tempdir");
    let (cfg, _, mimi) = config(dir.path(), "header_timeout_secs = 1\nidle_timeout_secs = 1\n");
    let mut daemon = Daemon::start(&cfg, &[]);
    let registered =
        crate::common::http(mimi, "POST", "/client/v1/register", None, Some(r#"{"user":"alice"}"#)).expect("register");
    assert_eq!(registered.status, 200, "{}", registered.body);
    let v: serde_json::Value = serde_json::from_str(&registered.body).expect("json");
    let (uri, token) = (v["uri"].as_str().expect("uri"), v["token"].as_str().expect("token"));

    let started = Instant::now();
    let mut s = TcpStream::connect(mimi).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let req = format!(
        "GET /client/v1/messages/bridge.example.org/r/lobby?after=1000&wait=3 HTTP/1.1\r\nHost: {mimi}\r\n\
         Authorization: Bearer {token}\r\nMimi-User: {uri}\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).expect("send");
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).expect("answer");
    let waited = started.elapsed();
    let answer = String::from_utf8_lossy(&answer);
    eprintln!("long poll (wait=3, header timeout 1 s, idle timeout 1 s) answered after {waited:?}");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(waited >= Duration::from_millis(2900) && waited < Duration::from_secs(6), "{waited:?}");
    assert_eq!(daemon.terminate(Duration::from_secs(15)), Some(0), "{}", daemon.log());
}

#[test]
fn bad_connection_limits_are_refused_with_their_location() {
    let _heavy = crate::common::heavy();
    let dir = tempfile::tempdir().expect("tempdir");
    let cases = [
        ("max_connections = 0\n", "mimi.max_connections", "between 1 and 1000000"),
        ("max_connections = 5000000\n", "mimi.max_connections", "between 1 and 1000000"),
        (
            "max_connections = 10\nmax_connections_per_ip = 11\n",
            "mimi.max_connections_per_ip",
            "mimi.max_connections (10)",
        ),
        ("max_connections_per_ip = 0\n", "mimi.max_connections_per_ip", "between 1 and"),
        ("header_timeout_secs = 0\n", "mimi.header_timeout_secs", "between 1 and 300 seconds"),
        ("header_timeout_secs = 86400\n", "mimi.header_timeout_secs", "between 1 and 300 seconds"),
        ("idle_timeout_secs = 0\n", "mimi.idle_timeout_secs", "between 1 and 3600 seconds"),
        ("idle_timeout_secs = -1\n", "mimi.idle_timeout_secs", ""),
    ];
    for (keys, key, message) in cases {
        let (cfg, _, _) = config(dir.path(), keys);
        let text = std::fs::read_to_string(&cfg).expect("config");
        let name = key.trim_start_matches("mimi.");
        let line = text.lines().position(|l| l.starts_with(&format!("{name} ="))).expect("line") + 1;
        let column = name.len() + 4;
        let (code, _, err) = cli(&["check-config", cfg.to_str().expect("utf-8")]);
        assert_eq!(code, 1, "{keys}: {err}");
        assert!(err.contains(&format!("config.toml:{line}:{column}: key `{key}`")), "{keys}: {err}");
        assert!(err.contains(message), "{keys}: {err}");
    }
}
