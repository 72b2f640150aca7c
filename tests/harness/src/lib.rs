//! Dev-only test harness: starts real chat servers on free loopback ports in temp dirs.
//!
//! Connector tests use these to run against the real thing (never an in-memory fake). A missing server binary is
//! an error that says how to install it — tests fail loudly, they never skip. Each server is stopped (killed) and
//! its temp dir removed when its handle is dropped.
//!
//! Available: [`Ngircd`] (IRC), [`Prosody`] (XMPP), [`Synapse`] (Matrix), [`Postgres`] (the PostgreSQL store),
//! and [`pki`] (test CAs and certificates).

pub mod pki;
pub mod postgres;
pub mod prosody;
pub mod synapse;

pub use postgres::{Postgres, PostgresOptions};
pub use prosody::Prosody;
pub use synapse::{MatrixUser, Synapse, SynapseOptions};

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Why a server could not be started.
#[derive(Debug)]
pub struct HarnessError(pub String);

impl std::fmt::Display for HarnessError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for HarnessError {}

/// A free TCP port on 127.0.0.1, for a server a test starts next.
///
/// Ports come from below the kernel's ephemeral range (`net.ipv4.ip_local_port_range`): a port the kernel handed
/// out from that range can be taken, between this call and the server's bind, as the local port of any outgoing
/// connection on the machine — a test's HTTP client, Synapse's, a daemon's — and the server then fails to start
/// with "address in use". Below the range only another listener can take it; each port is handed out once per
/// process, from a start that differs between processes, and is checked bindable first.
pub fn free_port() -> Result<u16, HarnessError> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const LOWEST: u32 = 12_000;
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next().and_then(|l| l.parse::<u32>().ok()))
        .unwrap_or(32_768);
    let span = ephemeral_low.saturating_sub(LOWEST);
    if span < 1_000 {
        return kernel_port();
    }
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    let start = std::process::id().wrapping_mul(7_919).wrapping_add(nanos) % span;
    let _ = NEXT.compare_exchange(0, start + 1, Ordering::Relaxed, Ordering::Relaxed);
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let Ok(port) = u16::try_from(LOWEST + n % span) else { continue };
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    kernel_port()
}

/// A port the kernel picks (from the ephemeral range): the fallback of [`free_port`].
fn kernel_port() -> Result<u16, HarnessError> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| HarnessError(format!("no free port: {e}")))?;
    l.local_addr().map(|a| a.port()).map_err(|e| HarnessError(format!("no free port: {e}")))
}

/// Whether this process runs with effective uid 0 (Prosody then needs `run_as_root = true`; PostgreSQL must run
/// as another user).
fn effective_uid_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("Uid:").map(|r| r.split_whitespace().nth(1) == Some("0"))))
        .unwrap_or(false)
}

/// Finds `name` on PATH or in the usual sbin directories.
pub fn find_binary(name: &str, install_hint: &str) -> Result<PathBuf, HarnessError> {
    let mut dirs: Vec<PathBuf> =
        std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect()).unwrap_or_default();
    dirs.extend(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from));
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file()).ok_or_else(|| {
        HarnessError(format!("{name} is not installed: run ./scripts/test (it installs it) or `{install_hint}`"))
    })
}

/// Waits until something accepts connections on `port`.
fn wait_for_port(port: u16, child: &mut Child, what: &str, log: &Path) -> Result<(), HarnessError> {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            let out = std::fs::read_to_string(log).unwrap_or_default();
            return Err(HarnessError(format!("{what} exited with {status} before listening:\n{out}")));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(HarnessError(format!("{what} did not listen on port {port} within 15 s")))
}

/// Options for [`Ngircd::start_with`].
#[derive(Debug, Clone, Default)]
pub struct NgircdOptions {
    /// Disable ngIRCd's penalty delays (`[Limits] MaxPenaltyTime = 0`), for benchmarks. Tests keep the stock
    /// flood control, which a bridge must live with.
    pub no_penalty: bool,
    /// Also listen for TLS on a second free port ([`Ngircd::tls_port`]) with this certificate and key (ngIRCd's
    /// `[SSL] Ports/CertFile/KeyFile`). Debian's ngIRCd is built with GnuTLS; a build without TLS support fails
    /// to start with this set (the error says so), it never silently skips.
    pub tls: Option<NgircdTls>,
}

/// Certificate and key files for ngIRCd's TLS port (PEM).
#[derive(Debug, Clone)]
pub struct NgircdTls {
    /// Server certificate (chain), PEM.
    pub cert_file: PathBuf,
    /// Server private key, PEM (unencrypted).
    pub key_file: PathBuf,
}

/// An ngIRCd server on a free loopback port.
pub struct Ngircd {
    /// The port clients connect to.
    pub port: u16,
    /// The TLS port, when started with [`NgircdOptions::tls`].
    pub tls_port: Option<u16>,
    /// Operator name and password configured (for tests that need `OPER`).
    pub oper: (String, String),
    child: Child,
    bin: PathBuf,
    conf: PathBuf,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Ngircd {
    /// Starts ngIRCd with stock flood control.
    pub fn start() -> Result<Self, HarnessError> {
        Self::start_with(NgircdOptions::default())
    }

    /// Starts ngIRCd with `opts`.
    pub fn start_with(opts: NgircdOptions) -> Result<Self, HarnessError> {
        let bin = find_binary("ngircd", "apt-get install ngircd")?;
        let dir = tempfile::tempdir().map_err(|e| HarnessError(format!("tempdir: {e}")))?;
        let port = free_port()?;
        let motd = dir.path().join("motd");
        std::fs::write(&motd, "test server\n").map_err(|e| HarnessError(e.to_string()))?;
        let limits = if opts.no_penalty { "MaxPenaltyTime = 0\n" } else { "" };
        let (tls_port, ssl) = match &opts.tls {
            Some(t) => {
                let p = free_port()?;
                let section = format!(
                    "[SSL]\nCertFile = {}\nKeyFile = {}\nPorts = {p}\n",
                    t.cert_file.display(),
                    t.key_file.display()
                );
                (Some(p), section)
            }
            None => (None, String::new()),
        };
        let conf = format!(
            "[Global]\nName = irc.test\nInfo = mimi-bridge test server\nListen = 127.0.0.1\nPorts = {port}\n\
             MotdFile = {motd}\nPidFile = {pid}\n\
             [Limits]\nMaxConnectionsIP = 0\nMaxNickLength = 31\nPingTimeout = 120\nPongTimeout = 60\n{limits}\
             [Options]\nPAM = no\nDNS = no\nIdent = no\n\
             [Operator]\nName = oper\nPassword = operpass\n{ssl}",
            motd = motd.display(),
            pid = dir.path().join("ngircd.pid").display(),
        );
        let conf_path = dir.path().join("ngircd.conf");
        std::fs::write(&conf_path, conf).map_err(|e| HarnessError(e.to_string()))?;
        let log = dir.path().join("ngircd.log");
        if tls_port.is_some() {
            check_tls_support(&bin)?;
        }
        let child = spawn_ngircd(&bin, &conf_path, &log, port, tls_port)?;
        Ok(Self {
            port,
            tls_port,
            oper: ("oper".into(), "operpass".into()),
            child,
            bin,
            conf: conf_path,
            log,
            _dir: dir,
        })
    }

    /// Kills the server and starts it again on the same port (every client is disconnected).
    pub fn restart(&mut self) -> Result<(), HarnessError> {
        self.kill();
        self.child = spawn_ngircd(&self.bin, &self.conf, &self.log, self.port, self.tls_port)?;
        Ok(())
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Kills the server (for reconnect tests); the handle stays valid for [`Ngircd::addr`].
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Ngircd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Fails unless `ngircd -V` lists SSL among its features.
fn check_tls_support(bin: &Path) -> Result<(), HarnessError> {
    let out = Command::new(bin).arg("-V").output().map_err(|e| HarnessError(format!("ngircd -V: {e}")))?;
    let version = String::from_utf8_lossy(&out.stdout);
    if version.lines().next().is_some_and(|l| l.contains("+SSL")) {
        Ok(())
    } else {
        Err(HarnessError(format!("this ngircd is built without TLS support (`ngircd -V`: {})", version.trim())))
    }
}

fn spawn_ngircd(bin: &Path, conf: &Path, log: &Path, port: u16, tls_port: Option<u16>) -> Result<Child, HarnessError> {
    let log_file = std::fs::File::create(log).map_err(|e| HarnessError(e.to_string()))?;
    let log_err = log_file.try_clone().map_err(|e| HarnessError(e.to_string()))?;
    let mut child = Command::new(bin)
        .args(["-n", "-p", "-f"])
        .arg(conf)
        .stdin(Stdio::null())
        .stdout(log_file)
        .stderr(log_err)
        .spawn()
        .map_err(|e| HarnessError(format!("cannot start ngircd: {e}")))?;
    for p in std::iter::once(port).chain(tls_port) {
        if let Err(e) = wait_for_port(p, &mut child, "ngircd", log) {
            let _ = child.kill();
            return Err(e);
        }
    }
    Ok(child)
}

/// A minimal blocking IRC client for tests: registers, joins, sends, reads lines.
pub struct IrcClient {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl IrcClient {
    /// Connects and registers as `nick`, answering PINGs, until the welcome (001) arrives.
    pub fn connect(addr: &str, nick: &str) -> Result<Self, HarnessError> {
        let s = TcpStream::connect(addr).map_err(|e| HarnessError(format!("connect {addr}: {e}")))?;
        s.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| HarnessError(e.to_string()))?;
        let writer = s.try_clone().map_err(|e| HarnessError(e.to_string()))?;
        let mut c = Self { reader: BufReader::new(s), writer };
        c.send(&format!("NICK {nick}"))?;
        c.send(&format!("USER {nick} 0 * :{nick}"))?;
        c.read_until(|l| l.split(' ').nth(1) == Some("001"))?;
        Ok(c)
    }

    /// Sends one raw line (CRLF added).
    pub fn send(&mut self, line: &str) -> Result<(), HarnessError> {
        self.writer.write_all(format!("{line}\r\n").as_bytes()).map_err(|e| HarnessError(format!("send: {e}")))
    }

    /// Reads lines (answering PING) until `pred` matches one; returns it.
    pub fn read_until(&mut self, pred: impl Fn(&str) -> bool) -> Result<String, HarnessError> {
        loop {
            let mut line = String::new();
            let n = self.reader.read_line(&mut line).map_err(|e| HarnessError(format!("read: {e}")))?;
            if n == 0 {
                return Err(HarnessError("connection closed".into()));
            }
            let line = line.trim_end_matches(['\r', '\n']).to_owned();
            if let Some(token) = line.strip_prefix("PING ") {
                self.send(&format!("PONG {token}"))?;
                continue;
            }
            if pred(&line) {
                return Ok(line);
            }
        }
    }

    /// Joins `channel` and waits for the end of its NAMES list.
    pub fn join(&mut self, channel: &str) -> Result<(), HarnessError> {
        self.send(&format!("JOIN {channel}"))?;
        self.read_until(|l| l.split(' ').nth(1) == Some("366"))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ngircd_starts_and_relays_a_message_between_two_clients() {
        let server = Ngircd::start().expect("ngircd starts");
        let mut alice = IrcClient::connect(&server.addr(), "alice").expect("alice registers");
        let mut bob = IrcClient::connect(&server.addr(), "bob").expect("bob registers");
        alice.join("#test").expect("alice joins");
        bob.join("#test").expect("bob joins");
        alice.send("PRIVMSG #test :hello bob").expect("send");
        let got = bob.read_until(|l| l.contains("PRIVMSG #test")).expect("bob reads");
        assert!(got.starts_with(":alice!") && got.ends_with(":hello bob"), "{got}");
    }
}
