//! A throw-away Prosody (XMPP server) on free loopback ports in a temp dir.
//!
//! One virtual host (`localhost`), a MUC component (`muc.localhost`, rooms persistent by default, `muc_mam` on so
//! rooms keep an archive), a second MUC component without archives (`nomam.localhost`) and an external component (XEP-0114, `bridge.localhost`) with a secret. TLS, s2s and
//! rate limits are off; clients log in with PLAIN over plain TCP. Accounts are created by writing Prosody's
//! internal storage files ([`Prosody::register`]), which Prosody reads at each login.
//!
//! Readiness is a real check: the c2s port must answer a stream header with stream features offering PLAIN, and
//! the component port must answer a component stream header (Prosody as root without `run_as_root = true` keeps a
//! half-alive process listening, so a port probe alone is fooled).

use crate::{HarnessError, find_binary, free_port};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A Prosody server on free loopback ports.
pub struct Prosody {
    /// The virtual host users live on (`localhost`).
    pub domain: String,
    /// The MUC component's domain (`muc.localhost`).
    pub muc_domain: String,
    /// A MUC component whose rooms have no archive (`nomam.localhost`): archive queries are refused.
    pub nomam_domain: String,
    /// The external component's domain (`bridge.localhost`).
    pub component_domain: String,
    /// The external component's handshake secret.
    pub component_secret: String,
    /// The c2s port.
    pub c2s_port: u16,
    /// The external component port (XEP-0114).
    pub component_port: u16,
    child: Child,
    bin: PathBuf,
    conf: PathBuf,
    log: PathBuf,
    dir: tempfile::TempDir,
}

impl Prosody {
    /// Writes a config and starts Prosody; returns once both ports answer stream headers.
    pub fn start() -> Result<Self, HarnessError> {
        let bin = find_binary("prosody", "apt-get install prosody")?;
        let dir = tempfile::tempdir().map_err(|e| HarnessError(format!("tempdir: {e}")))?;
        let c2s_port = free_port()?;
        let component_port = free_port()?;
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).map_err(|e| HarnessError(format!("data dir: {e}")))?;
        let log = dir.path().join("prosody.log");
        let secret = format!("secret-{}-{}", std::process::id(), component_port);
        let conf = config(&ConfigParams {
            dir: dir.path(),
            data: &data,
            log: &log,
            c2s_port,
            component_port,
            secret: &secret,
            as_root: super::effective_uid_is_root(),
        });
        let conf_path = dir.path().join("prosody.cfg.lua");
        std::fs::write(&conf_path, conf).map_err(|e| HarnessError(e.to_string()))?;
        let mut server = Self {
            domain: "localhost".into(),
            muc_domain: "muc.localhost".into(),
            nomam_domain: "nomam.localhost".into(),
            component_domain: "bridge.localhost".into(),
            component_secret: secret,
            c2s_port,
            component_port,
            child: spawn(&bin, &conf_path, &log)?,
            bin,
            conf: conf_path,
            log,
            dir,
        };
        server.wait_ready()?;
        Ok(server)
    }

    /// Creates (or resets the password of) the account `user@localhost`.
    pub fn register(&self, user: &str, password: &str) -> Result<(), HarnessError> {
        if user.is_empty() || !user.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') {
            return Err(HarnessError(format!("test user names are [a-z0-9_]+, not {user:?}")));
        }
        let accounts = self.dir.path().join("data").join("localhost").join("accounts");
        std::fs::create_dir_all(&accounts).map_err(|e| HarnessError(format!("accounts dir: {e}")))?;
        let escaped: String = password.chars().flat_map(|c| c.escape_default()).collect();
        std::fs::write(
            accounts.join(format!("{user}.dat")),
            format!("return {{\n\t[\"password\"] = \"{escaped}\";\n}};\n"),
        )
        .map_err(|e| HarnessError(format!("writing account {user}: {e}")))
    }

    /// `127.0.0.1:C2S_PORT`.
    pub fn c2s_addr(&self) -> String {
        format!("127.0.0.1:{}", self.c2s_port)
    }

    /// `127.0.0.1:COMPONENT_PORT`.
    pub fn component_addr(&self) -> String {
        format!("127.0.0.1:{}", self.component_port)
    }

    /// The server's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Kills the server (every stream ends); the handle stays valid for its addresses and data.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Stops the server's process (SIGSTOP): streams stay open, nothing is read or answered until [`Prosody::resume`].
    pub fn pause(&self) -> Result<(), HarnessError> {
        self.signal("-STOP")
    }

    /// Lets a paused server go on (SIGCONT): it reads what was sent to it meanwhile.
    pub fn resume(&self) -> Result<(), HarnessError> {
        self.signal("-CONT")
    }

    fn signal(&self, signal: &str) -> Result<(), HarnessError> {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .map_err(|e| HarnessError(format!("kill {signal}: {e}")))?;
        if status.success() { Ok(()) } else { Err(HarnessError(format!("kill {signal} failed: {status}"))) }
    }

    /// Kills the server and starts it again on the same ports with the same data (persistent rooms and their
    /// archives survive).
    pub fn restart(&mut self) -> Result<(), HarnessError> {
        self.kill();
        self.child = spawn(&self.bin, &self.conf, &self.log)?;
        self.wait_ready()
    }

    fn wait_ready(&mut self) -> Result<(), HarnessError> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(HarnessError(format!("prosody exited with {status}:\n{}", self.log())));
            }
            let c2s = stream_answer(
                self.c2s_port,
                &format!(
                    "<?xml version='1.0'?><stream:stream to='{}' xmlns='jabber:client' \
                     xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>",
                    self.domain
                ),
                "</stream:features>",
            );
            let component = stream_answer(
                self.component_port,
                &format!(
                    "<?xml version='1.0'?><stream:stream to='{}' xmlns='jabber:component:accept' \
                     xmlns:stream='http://etherx.jabber.org/streams'>",
                    self.component_domain
                ),
                " id=",
            );
            match (c2s, component) {
                (Ok(features), Ok(_)) if features.contains("PLAIN") => return Ok(()),
                (Ok(features), Ok(_)) => {
                    return Err(HarnessError(format!("prosody offers no PLAIN login: {features}")));
                }
                (c2s, component) if Instant::now() >= deadline => {
                    return Err(HarnessError(format!(
                        "prosody not ready within 20 s (c2s: {c2s:?}, component: {component:?}):\n{}",
                        self.log()
                    )));
                }
                _ => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }
}

impl Drop for Prosody {
    fn drop(&mut self) {
        self.kill();
    }
}

struct ConfigParams<'a> {
    dir: &'a Path,
    data: &'a Path,
    log: &'a Path,
    c2s_port: u16,
    component_port: u16,
    secret: &'a str,
    as_root: bool,
}

fn config(p: &ConfigParams<'_>) -> String {
    format!(
        r#"-- written by tests/harness (prosody.rs); throw-away
daemonize = false
run_as_root = {as_root}
pidfile = "{pid}"
data_path = "{data}"
log = {{ debug = "{log}" }}
interfaces = {{ "127.0.0.1" }}
c2s_ports = {{ {c2s} }}
c2s_interfaces = {{ "127.0.0.1" }}
component_ports = {{ {component} }}
component_interfaces = {{ "127.0.0.1" }}
http_ports = {{ }}
https_ports = {{ }}
s2s_ports = {{ }}
c2s_require_encryption = false
allow_unencrypted_plain_auth = true
authentication = "internal_plain"
storage = "internal"
modules_enabled = {{ "roster"; "saslauth"; "disco"; "ping"; "mam"; }}
modules_disabled = {{ "s2s"; "tls"; "limits"; "offline"; }}

VirtualHost "localhost"

Component "muc.localhost" "muc"
    modules_enabled = {{ "muc_mam"; }}
    muc_room_default_persistent = true
    muc_room_default_public = true
    muc_room_locking = false
    max_history_messages = 50

Component "nomam.localhost" "muc"
    muc_room_default_persistent = true
    muc_room_locking = false

Component "bridge.localhost"
    component_secret = "{secret}"
"#,
        as_root = p.as_root,
        pid = p.dir.join("prosody.pid").display(),
        data = p.data.display(),
        log = p.log.display(),
        c2s = p.c2s_port,
        component = p.component_port,
        secret = p.secret,
    )
}

fn spawn(bin: &Path, conf: &Path, log: &Path) -> Result<Child, HarnessError> {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log.with_extension("out"))
        .map_err(|e| HarnessError(e.to_string()))?;
    let err = out.try_clone().map_err(|e| HarnessError(e.to_string()))?;
    Command::new(bin)
        .arg("-F")
        .arg("--config")
        .arg(conf)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| HarnessError(format!("cannot start prosody: {e}")))
}

/// Sends `header` to `port` and reads until `until` appears (or 2 s pass); returns what was read.
fn stream_answer(port: u16, header: &str, until: &str) -> Result<String, String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(2))).map_err(|e| e.to_string())?;
    s.write_all(header.as_bytes()).map_err(|e| e.to_string())?;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains(until) {
        let n = s.read(&mut buf).map_err(|e| format!("{e} after {:?}", String::from_utf8_lossy(&got)))?;
        if n == 0 {
            return Err(format!("closed after {:?}", String::from_utf8_lossy(&got)));
        }
        got.extend_from_slice(&buf[..n]);
        if got.len() > 64 * 1024 {
            return Err("answer too long".into());
        }
    }
    let _ = s.write_all(b"</stream:stream>");
    Ok(String::from_utf8_lossy(&got).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Logs in as a registered user with SASL PLAIN over a raw socket: proves the server, the account files and
    /// the plain-text login the connector tests rely on.
    #[test]
    fn prosody_starts_and_a_registered_user_logs_in() {
        let server = Prosody::start().expect("prosody starts");
        server.register("alice", "pw\"1").expect("register");
        let plain = |user: &str, pw: &str| base64_encode(format!("\0{user}\0{pw}").as_bytes());
        let header = "<?xml version='1.0'?><stream:stream to='localhost' xmlns='jabber:client' \
                      xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>";
        let login = |auth: String| -> String {
            let mut s = TcpStream::connect(("127.0.0.1", server.c2s_port)).expect("connect");
            s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
            s.write_all(header.as_bytes()).expect("header");
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            let mut sent = false;
            loop {
                let text = String::from_utf8_lossy(&got).into_owned();
                if !sent && text.contains("</stream:features>") {
                    s.write_all(
                        format!("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{auth}</auth>")
                            .as_bytes(),
                    )
                    .expect("auth");
                    sent = true;
                }
                if text.contains("<success") || text.contains("<failure") {
                    return text;
                }
                let n = s.read(&mut buf).expect("read");
                assert!(n > 0, "closed: {text}");
                got.extend_from_slice(&buf[..n]);
            }
        };
        assert!(login(plain("alice", "pw\"1")).contains("<success"), "{}", server.log());
        assert!(login(plain("alice", "wrong")).contains("<failure"));
    }

    fn base64_encode(data: &[u8]) -> String {
        const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for chunk in data.chunks(3) {
            let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(char::from(T[((n >> (18 - 6 * i)) & 63) as usize]));
                } else {
                    out.push('=');
                }
            }
        }
        out
    }
}
