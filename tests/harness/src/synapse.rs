//! Synapse (the Matrix reference homeserver) on a free loopback port, for the Matrix connector's tests.
//!
//! Synapse is not packaged in Debian: `scripts/test` installs a pinned release from PyPI into a venv under
//! `${XDG_CACHE_HOME:-$HOME/.cache}/mimi-bridge-test/synapse-venv` (override with `MIMI_TEST_SYNAPSE_VENV`). A
//! missing venv is an error that says so; tests never skip.
//!
//! Each server gets a throw-away server name, an sqlite database in a temp dir, registration by shared secret,
//! rate limits raised far above what tests send, presence off, and the appservice registration files it is given.
//! Test users are registered through the shared-secret admin API ([`Synapse::register_user`]) and driven with
//! [`Synapse::request`], a small blocking HTTP/1.1 client for the client-server API.

use crate::{HarnessError, free_port};
use hmac::{KeyInit, Mac};
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The environment variable naming the venv Synapse is installed in.
pub const VENV_ENV: &str = "MIMI_TEST_SYNAPSE_VENV";

/// How long Synapse may take to answer `/versions` (it needs ~2.5 s on an idle machine; CI machines are shared).
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// Options for [`Synapse::start_with`].
#[derive(Debug, Clone, Default)]
pub struct SynapseOptions {
    /// Appservice registration files (YAML) to load (`app_service_config_files`).
    pub appservice_registrations: Vec<PathBuf>,
    /// The server name; `hsPORT.test` if unset (set it when a registration's namespace must name it).
    pub server_name: Option<String>,
}

/// A registered test user.
#[derive(Debug, Clone)]
pub struct MatrixUser {
    /// The full user id, `@localpart:server`.
    pub user_id: String,
    /// An access token for the client-server API.
    pub access_token: String,
}

/// A Synapse homeserver on a free loopback port.
pub struct Synapse {
    /// The client-server API port.
    pub port: u16,
    /// The server name (the part after `:` in user ids).
    pub server_name: String,
    shared_secret: String,
    /// The process; behind a lock so that a server shared by several clients (an `Arc`) can be restarted.
    child: Mutex<Child>,
    python: PathBuf,
    conf: PathBuf,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Synapse {
    /// Starts Synapse without appservices.
    pub fn start() -> Result<Self, HarnessError> {
        Self::start_with(SynapseOptions::default())
    }

    /// Starts Synapse with `opts` and waits until it answers `/_matrix/client/versions`.
    pub fn start_with(opts: SynapseOptions) -> Result<Self, HarnessError> {
        let python = venv_python()?;
        let dir = tempfile::tempdir().map_err(|e| HarnessError(format!("tempdir: {e}")))?;
        let port = free_port()?;
        let server_name = opts.server_name.clone().unwrap_or_else(|| format!("hs{port}.test"));
        let shared_secret = format!("test-shared-secret-{port}");
        let conf_path = dir.path().join("homeserver.yaml");
        let conf = config(dir.path(), port, &server_name, &shared_secret, &opts);
        // YAML is a superset of JSON: the config is written as JSON, so nothing is glued onto a comment.
        std::fs::write(&conf_path, conf.to_string()).map_err(|e| HarnessError(format!("write config: {e}")))?;
        let log = dir.path().join("synapse.log");
        let generate = Command::new(&python)
            .args(["-m", "synapse.app.homeserver", "--generate-keys", "-c"])
            .arg(&conf_path)
            .output()
            .map_err(|e| HarnessError(format!("cannot run synapse --generate-keys: {e}")))?;
        if !generate.status.success() {
            return Err(HarnessError(format!(
                "synapse --generate-keys failed ({}):\n{}",
                generate.status,
                String::from_utf8_lossy(&generate.stderr)
            )));
        }
        let child = spawn(&python, &conf_path, dir.path(), &log)?;
        let server = Self {
            port,
            server_name,
            shared_secret,
            child: Mutex::new(child),
            python,
            conf: conf_path,
            log,
            _dir: dir,
        };
        server.wait_ready()?;
        Ok(server)
    }

    /// Kills the server and starts it again on the same port with the same database; returns once it answers.
    pub fn restart(&self) -> Result<(), HarnessError> {
        self.kill();
        *self.process() = spawn(&self.python, &self.conf, self._dir.path(), &self.log)?;
        self.wait_ready()
    }

    /// Kills the server (for outage tests); [`Synapse::restart`] brings it back.
    pub fn kill(&self) {
        let mut child = self.process();
        let _ = child.kill();
        let _ = child.wait();
    }

    fn process(&self) -> std::sync::MutexGuard<'_, Child> {
        self.child.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// `http://127.0.0.1:PORT`, the homeserver URL clients and the bridge use.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The full user id of `localpart` on this server.
    pub fn user_id(&self, localpart: &str) -> String {
        format!("@{localpart}:{}", self.server_name)
    }

    /// Registers a non-admin user through the shared-secret admin API and returns its access token.
    pub fn register_user(&self, localpart: &str) -> Result<MatrixUser, HarnessError> {
        let (status, nonce) = self.request("GET", "/_synapse/admin/v1/register", None, None)?;
        let nonce = match (status, nonce["nonce"].as_str()) {
            (200, Some(n)) => n.to_owned(),
            _ => return Err(HarnessError(format!("no registration nonce: {status} {nonce}"))),
        };
        let password = format!("pw-{localpart}");
        let mut mac = hmac::Hmac::<sha1::Sha1>::new_from_slice(self.shared_secret.as_bytes())
            .map_err(|e| HarnessError(format!("hmac: {e}")))?;
        for (i, part) in [nonce.as_str(), localpart, &password, "notadmin"].iter().enumerate() {
            if i > 0 {
                mac.update(b"\0");
            }
            mac.update(part.as_bytes());
        }
        let mac: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
        let body = json!({"nonce": nonce, "username": localpart, "password": password, "admin": false, "mac": mac});
        let (status, resp) = self.request("POST", "/_synapse/admin/v1/register", None, Some(&body))?;
        match (status, resp["user_id"].as_str(), resp["access_token"].as_str()) {
            (200, Some(u), Some(t)) => Ok(MatrixUser { user_id: u.to_owned(), access_token: t.to_owned() }),
            _ => Err(HarnessError(format!("registering {localpart} failed: {status} {resp}"))),
        }
    }

    /// Registers `localpart` ([`Synapse::register_user`], password `pw-LOCALPART`) and logs its registration device
    /// out: an account for a bot, whose own login is then its one device.
    pub fn register_bot_account(&self, localpart: &str) -> Result<(), HarnessError> {
        let user = self.register_user(localpart)?;
        let (status, v) =
            self.request("POST", "/_matrix/client/v3/logout", Some(&user.access_token), Some(&json!({})))?;
        match status {
            200 => Ok(()),
            _ => Err(HarnessError(format!("logging {localpart}'s registration device out failed: {status} {v}"))),
        }
    }

    /// One blocking client-server API call: `method` `path` (with query) with an optional bearer `token` and JSON
    /// `body`. Returns the status and the JSON body (`null` when the body is empty or not JSON).
    pub fn request(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Result<(u16, Value), HarnessError> {
        request_to(self.port, method, path, token, body)
    }

    /// [`Synapse::request`] with a body of any media type (a media upload) and the answer's raw bytes (a media
    /// download).
    pub fn request_raw(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        content_type: &str,
        body: &[u8],
    ) -> Result<(u16, Vec<u8>), HarnessError> {
        request_raw_to(self.port, method, path, token, content_type, body)
    }

    /// The homeserver's sqlite database (for tests that look into, or tamper with, what Synapse keeps).
    pub fn database(&self) -> PathBuf {
        self._dir.path().join("homeserver.db")
    }

    /// Runs `sql` (one or more statements) on [`Synapse::database`] with the venv's python, while the server runs;
    /// returns the rows of the last statement, one a line, columns separated by `|`.
    pub fn sql(&self, sql: &str) -> Result<String, HarnessError> {
        let script = "import sqlite3, sys\n\
                      db = sqlite3.connect(sys.argv[1], timeout=30)\n\
                      cur = db.cursor()\n\
                      stmts = [s for s in sys.argv[2].split(';') if s.strip()]\n\
                      for s in stmts: cur.execute(s)\n\
                      rows = cur.fetchall()\n\
                      db.commit()\n\
                      print('\\n'.join('|'.join(str(c) for c in r) for r in rows))\n";
        let out = Command::new(&self.python)
            .args(["-c", script])
            .arg(self.database())
            .arg(sql)
            .output()
            .map_err(|e| HarnessError(format!("cannot run python for sql: {e}")))?;
        if !out.status.success() {
            return Err(HarnessError(format!("sql {sql:?} failed: {}", String::from_utf8_lossy(&out.stderr))));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// The server's log so far (for assertion messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_ready(&self) -> Result<(), HarnessError> {
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok((200, _)) = self.request("GET", "/_matrix/client/versions", None, None) {
                return Ok(());
            }
            if let Ok(Some(status)) = self.process().try_wait() {
                return Err(HarnessError(format!("synapse exited with {status} before answering:\n{}", self.log())));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(HarnessError(format!("synapse did not answer /versions within {START_TIMEOUT:?}:\n{}", self.log())))
    }
}

/// [`Synapse::request`] to the homeserver on `port`, for a client that must not keep the [`Synapse`] (and so its
/// process) alive: a sync loop on a thread of its own.
pub fn request_to(
    port: u16,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> Result<(u16, Value), HarnessError> {
    let body = body.map(Value::to_string).unwrap_or_default();
    let (status, payload) = request_raw_to(port, method, path, token, "application/json", body.as_bytes())?;
    Ok((status, serde_json::from_slice(&payload).unwrap_or(Value::Null)))
}

/// [`Synapse::request_raw`] to the homeserver on `port`.
fn request_raw_to(
    port: u16,
    method: &str,
    path: &str,
    token: Option<&str>,
    content_type: &str,
    body: &[u8],
) -> Result<(u16, Vec<u8>), HarnessError> {
    let err = |e: std::io::Error| HarnessError(format!("{method} {path}: {e}"));
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(err)?;
    s.set_read_timeout(Some(Duration::from_secs(60))).map_err(err)?;
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{auth}Content-Type: {content_type}\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).and_then(|()| s.write_all(body)).map_err(err)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(err)?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| HarnessError(format!("{method} {path}: no HTTP header in the answer")))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut payload = raw[split + 4..].to_vec();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| HarnessError(format!("{method} {path}: bad status line in {head:?}")))?;
    if head.lines().any(|l| l.to_ascii_lowercase().starts_with("transfer-encoding: chunked")) {
        payload = dechunk(&payload);
    }
    Ok((status, payload))
}

impl Drop for Synapse {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts the homeserver process with `conf`, its output appended to `log`.
fn spawn(python: &Path, conf: &Path, dir: &Path, log: &Path) -> Result<Child, HarnessError> {
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| HarnessError(format!("synapse log: {e}")))?;
    let log_err = log_file.try_clone().map_err(|e| HarnessError(e.to_string()))?;
    Command::new(python)
        .args(["-m", "synapse.app.homeserver", "-c"])
        .arg(conf)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log_file)
        .stderr(log_err)
        .spawn()
        .map_err(|e| HarnessError(format!("cannot start synapse: {e}")))
}

/// The venv's python, or an error saying how to install Synapse.
fn venv_python() -> Result<PathBuf, HarnessError> {
    let venv = match std::env::var_os(VENV_ENV) {
        Some(v) => PathBuf::from(v),
        None => {
            let cache = std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
                .ok_or_else(|| HarnessError("neither XDG_CACHE_HOME nor HOME is set".into()))?;
            cache.join("mimi-bridge-test/synapse-venv")
        }
    };
    let python = venv.join("bin/python");
    if python.is_file() && venv.join("bin/synctl").is_file() {
        Ok(python)
    } else {
        Err(HarnessError(format!(
            "Synapse is not installed in {}: run ./scripts/test (it installs it) or set {VENV_ENV} to a venv with \
             `pip install matrix-synapse`",
            venv.display()
        )))
    }
}

/// The homeserver config (as JSON, which YAML parsers read).
fn config(dir: &Path, port: u16, server_name: &str, shared_secret: &str, opts: &SynapseOptions) -> Value {
    let lots = json!({"per_second": 10000, "burst_count": 10000});
    json!({
        "server_name": server_name,
        "pid_file": dir.join("homeserver.pid"),
        "listeners": [{
            "port": port, "bind_addresses": ["127.0.0.1"], "type": "http", "tls": false, "x_forwarded": false,
            "resources": [{"names": ["client"], "compress": false}],
        }],
        "database": {"name": "sqlite3", "args": {"database": dir.join("homeserver.db")}},
        "media_store_path": dir.join("media"),
        "signing_key_path": dir.join("signing.key"),
        "registration_shared_secret": shared_secret,
        "macaroon_secret_key": format!("macaroon-{shared_secret}"),
        "form_secret": format!("form-{shared_secret}"),
        "report_stats": false,
        "trusted_key_servers": [],
        "suppress_key_server_warning": true,
        "presence": {"enabled": false},
        "enable_registration": false,
        "rc_message": lots,
        "rc_registration": lots,
        "rc_login": {"address": lots, "account": lots, "failed_attempts": lots},
        "rc_joins": {"local": lots, "remote": lots},
        "rc_joins_per_room": lots,
        "rc_invites": {"per_room": lots, "per_user": lots, "per_issuer": lots},
        "rc_admin_redaction": lots,
        "rc_3pid_validation": lots,
        "rc_presence": {"per_user": lots},
        "rc_delayed_event_mgmt": lots,
        "app_service_config_files": opts.appservice_registrations,
        "rc_key_requests": lots,
        // End-to-end encryption in appservice mode: to-device messages, device list changes and key counts in
        // transactions.
        "experimental_features": {
            "msc2409_to_device_messages_enabled": true,
            "msc3202_transaction_extensions": true,
        },
    })
}

/// A minimal blocking HTTP/1.1 JSON request to 127.0.0.1:`port` (`Connection: close`, chunked bodies decoded).
/// Decodes a chunked HTTP body (what could be decoded, on malformed input).
fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = data.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&data[..eol])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next().unwrap_or("").trim(), 16).ok());
        let Some(size) = size.filter(|&n| n > 0 && eol + 2 + n <= data.len()) else { break };
        out.extend_from_slice(&data[eol + 2..eol + 2 + size]);
        data = data.get(eol + 2 + size + 2..).unwrap_or_default();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synapse_starts_and_two_registered_users_exchange_a_message() {
        let hs = Synapse::start().expect("synapse starts");
        let alice = hs.register_user("alice").expect("alice registers");
        let bob = hs.register_user("bob").expect("bob registers");
        assert_eq!(alice.user_id, hs.user_id("alice"));
        let (status, room) = hs
            .request(
                "POST",
                "/_matrix/client/v3/createRoom",
                Some(&alice.access_token),
                Some(&json!({"invite": [bob.user_id]})),
            )
            .expect("createRoom");
        assert_eq!(status, 200, "{room}");
        let room_id = room["room_id"].as_str().expect("room id").to_owned();
        let (status, _) = hs
            .request("POST", &format!("/_matrix/client/v3/join/{room_id}"), Some(&bob.access_token), Some(&json!({})))
            .expect("join");
        assert_eq!(status, 200);
        let path = format!("/_matrix/client/v3/rooms/{room_id}/send/m.room.message/t1");
        let (status, _) = hs
            .request("PUT", &path, Some(&alice.access_token), Some(&json!({"msgtype": "m.text", "body": "hello bob"})))
            .expect("send");
        assert_eq!(status, 200);
        let (status, msgs) = hs
            .request(
                "GET",
                &format!("/_matrix/client/v3/rooms/{room_id}/messages?dir=b"),
                Some(&bob.access_token),
                None,
            )
            .expect("messages");
        assert_eq!(status, 200, "{msgs}");
        let bodies: Vec<&str> = msgs["chunk"]
            .as_array()
            .expect("chunk")
            .iter()
            .filter(|e| e["type"] == "m.room.message")
            .filter_map(|e| e["content"]["body"].as_str())
            .collect();
        assert_eq!(bodies, ["hello bob"]);
    }

    #[test]
    fn dechunk_decodes_chunked_bodies() {
        assert_eq!(dechunk(b"3\r\n{\"a\r\n4\r\n\":1}\r\n0\r\n\r\n"), b"{\"a\":1}");
    }
}
