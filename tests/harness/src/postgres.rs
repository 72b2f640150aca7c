//! A throw-away PostgreSQL cluster (Debian's `postgresql` package): `initdb` in a temp dir, the server on a free
//! loopback port, password (SCRAM) authentication over TCP, optionally TLS. Tests create one database each
//! ([`Postgres::create_database`]), so one cluster serves a whole test binary.
//!
//! PostgreSQL refuses to run as root: when the tests do (CI), the cluster runs as the `postgres` user the Debian
//! package creates, in a temp dir handed over to it (so the temp dir must be one that user can reach: /tmp, not
//! a `TMPDIR` under /root). The server is started through a small shell that stops it when this process goes
//! away (its standard input, a pipe from us, reaches end of file), so a cluster kept in a `static` does not
//! outlive the test binary.

use super::{HarnessError, free_port, wait_for_port};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// The superuser the cluster is created with, and its password.
pub const USER: &str = "mimi";
/// The password of [`USER`] (SCRAM over TCP).
pub const PASSWORD: &str = "mimi-test-password";

/// Options for [`Postgres::start_with`].
#[derive(Debug, Clone, Default)]
pub struct PostgresOptions {
    /// Serve TLS with this certificate and key (PEM); clients may then use `sslmode=require`.
    pub tls: Option<(PathBuf, PathBuf)>,
}

/// A PostgreSQL cluster on a free loopback port.
pub struct Postgres {
    /// The TCP port.
    pub port: u16,
    child: Child,
    bin: PathBuf,
    socket_dir: PathBuf,
    log: PathBuf,
    as_user: Option<(u32, u32)>,
    _dir: tempfile::TempDir,
}

impl Postgres {
    /// Starts a cluster without TLS.
    pub fn start() -> Result<Self, HarnessError> {
        Self::start_with(PostgresOptions::default())
    }

    /// Starts a cluster with `opts`.
    pub fn start_with(opts: PostgresOptions) -> Result<Self, HarnessError> {
        let bin = bin_dir()?;
        let dir = tempfile::tempdir().map_err(|e| HarnessError(format!("tempdir: {e}")))?;
        let as_user = if super::effective_uid_is_root() { Some(postgres_user()?) } else { None };
        let data = dir.path().join("data");
        let socket_dir = dir.path().join("run");
        let pwfile = dir.path().join("pwfile");
        std::fs::create_dir(&socket_dir).map_err(|e| HarnessError(e.to_string()))?;
        std::fs::write(&pwfile, PASSWORD).map_err(|e| HarnessError(e.to_string()))?;
        let mut server_args: Vec<String> = Vec::new();
        if let Some((cert, key)) = &opts.tls {
            let (c, k) = (dir.path().join("server.crt"), dir.path().join("server.key"));
            std::fs::copy(cert, &c).map_err(|e| HarnessError(format!("{}: {e}", cert.display())))?;
            std::fs::copy(key, &k).map_err(|e| HarnessError(format!("{}: {e}", key.display())))?;
            set_mode(&k, 0o600)?;
            server_args.extend([
                "-c".into(),
                "ssl=on".into(),
                "-c".into(),
                format!("ssl_cert_file={}", c.display()),
                "-c".into(),
                format!("ssl_key_file={}", k.display()),
            ]);
        }
        let log = dir.path().join("postgres.log");
        if let Some((uid, gid)) = as_user {
            chown_all(dir.path(), uid, gid)?;
        }
        let out = command(&bin.join("initdb"), as_user)
            .arg("-D")
            .arg(&data)
            .args(["-U", USER, "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--no-sync"])
            .arg(format!("--pwfile={}", pwfile.display()))
            .output()
            .map_err(|e| HarnessError(format!("cannot run initdb: {e}")))?;
        if !out.status.success() {
            return Err(HarnessError(format!(
                "initdb failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        let port = free_port()?;
        server_args.extend([
            "-c".into(),
            "listen_addresses=127.0.0.1".into(),
            "-c".into(),
            format!("unix_socket_directories={}", socket_dir.display()),
            "-c".into(),
            "max_connections=300".into(),
        ]);
        let child = spawn(&bin, dir.path(), &data, port, &server_args, &log, as_user)?;
        let mut pg = Self { port, child, bin, socket_dir, log, as_user, _dir: dir };
        wait_for_port(port, &mut pg.child, "postgres", &pg.log)?;
        // The port answers a moment before the server accepts queries.
        for _ in 0..100 {
            if pg.psql("postgres", "SELECT 1").is_ok() {
                return Ok(pg);
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        pg.psql("postgres", "SELECT 1").map(|_| pg)
    }

    /// Creates database `name` and returns its connection string (password authentication over TCP, no TLS).
    pub fn create_database(&self, name: &str) -> Result<String, HarnessError> {
        self.psql("postgres", &format!("CREATE DATABASE \"{name}\""))?;
        Ok(self.url(name))
    }

    /// The connection string of database `name` (`sslmode=disable`).
    pub fn url(&self, name: &str) -> String {
        format!("postgresql://{USER}:{PASSWORD}@127.0.0.1:{}/{name}?sslmode=disable", self.port)
    }

    /// Runs `sql` in database `db` with `psql` over the Unix socket; returns its output (unaligned, tuples only).
    pub fn psql(&self, db: &str, sql: &str) -> Result<String, HarnessError> {
        let out = command(&self.bin.join("psql"), self.as_user)
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&self.socket_dir)
            .args(["-p", &self.port.to_string(), "-U", USER, "-d", db, "-c", sql])
            .output()
            .map_err(|e| HarnessError(format!("cannot run psql: {e}")))?;
        if !out.status.success() {
            return Err(HarnessError(format!("psql {sql:?}: {}", String::from_utf8_lossy(&out.stderr).trim())));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// The server's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // Closing the watcher's standard input stops the server (fast shutdown); the shell ends with it.
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

/// Starts `postgres` under a shell that ends with it, and stops it (then removes `dir`) when our end of its standard
/// input closes.
fn spawn(
    bin: &Path,
    dir: &Path,
    data: &Path,
    port: u16,
    args: &[String],
    log: &Path,
    as_user: Option<(u32, u32)>,
) -> Result<Child, HarnessError> {
    // The shell ends with the server, so that a server that fails to start is seen at once. A watcher reads our
    // end of its standard input: at end of file (this process gone, or the handle dropped) it stops the server
    // and then removes the cluster's temp dir, which a cluster kept in a `static` is never dropped to do.
    let script = "exec 3<&0; \"$0\" \"$@\" </dev/null & pg=$!; \
                  ( cat <&3 >/dev/null; kill -INT $pg 2>/dev/null; \
                    while kill -0 $pg 2>/dev/null; do sleep 0.1; done; rm -rf \"$MIMI_TEST_PG_DIR\" ) & \
                  wait $pg";
    let log_file = std::fs::File::create(log).map_err(|e| HarnessError(e.to_string()))?;
    if let Some((uid, gid)) = as_user {
        std::os::unix::fs::chown(log, Some(uid), Some(gid)).map_err(|e| HarnessError(e.to_string()))?;
    }
    let log_err = log_file.try_clone().map_err(|e| HarnessError(e.to_string()))?;
    let mut cmd = command(Path::new("/bin/sh"), as_user);
    cmd.args(["-c", script])
        .arg(bin.join("postgres"))
        .arg("-D")
        .arg(data)
        .args(["-p", &port.to_string()])
        .args(args)
        .env("MIMI_TEST_PG_DIR", dir)
        .stdin(Stdio::piped())
        .stdout(log_file)
        .stderr(log_err);
    cmd.spawn().map_err(|e| HarnessError(format!("cannot start postgres: {e}")))
}

/// A command run as `as_user` (uid, gid) when given.
fn command(program: &Path, as_user: Option<(u32, u32)>) -> Command {
    use std::os::unix::process::CommandExt;
    let mut c = Command::new(program);
    if let Some((uid, gid)) = as_user {
        c.uid(uid).gid(gid).env("HOME", "/tmp");
    }
    c.stdin(Stdio::null());
    c
}

/// The newest installed PostgreSQL's `bin` directory (Debian: `/usr/lib/postgresql/N/bin`).
fn bin_dir() -> Result<PathBuf, HarnessError> {
    let newest = std::fs::read_dir("/usr/lib/postgresql")
        .ok()
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|v| v.parse::<u32>().ok()).map(|v| (v, e.path())))
        .filter(|(_, p)| p.join("bin/initdb").is_file())
        .max_by_key(|(v, _)| *v);
    newest.map(|(_, p)| p.join("bin")).ok_or_else(|| {
        HarnessError(
            "PostgreSQL is not installed (no /usr/lib/postgresql/N/bin/initdb): run ./scripts/test (it installs it) \
             or `apt-get install postgresql`"
                .into(),
        )
    })
}

/// The uid and gid of the `postgres` user (PostgreSQL does not run as root).
fn postgres_user() -> Result<(u32, u32), HarnessError> {
    let passwd = std::fs::read_to_string("/etc/passwd").map_err(|e| HarnessError(format!("/etc/passwd: {e}")))?;
    passwd
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.first() == Some(&"postgres") && f.len() > 3)
                .then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
                .flatten()
        })
        .ok_or_else(|| {
            HarnessError(
                "running as root, and there is no `postgres` user to run PostgreSQL as: run ./scripts/test (it \
                 installs the postgresql package, which creates it)"
                    .into(),
            )
        })
}

fn chown_all(dir: &Path, uid: u32, gid: u32) -> Result<(), HarnessError> {
    std::os::unix::fs::chown(dir, Some(uid), Some(gid)).map_err(|e| HarnessError(format!("{}: {e}", dir.display())))?;
    for e in std::fs::read_dir(dir).map_err(|e| HarnessError(e.to_string()))?.flatten() {
        let p = e.path();
        if p.is_dir() {
            chown_all(&p, uid, gid)?;
        } else {
            std::os::unix::fs::chown(&p, Some(uid), Some(gid))
                .map_err(|e| HarnessError(format!("{}: {e}", p.display())))?;
        }
    }
    Ok(())
}

fn set_mode(path: &Path, mode: u32) -> Result<(), HarnessError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| HarnessError(format!("{}: {e}", path.display())))
}
