//! The bridges under test as child processes: mimi-bridge (this workspace's release binary), heisenbridge (PyPI,
//! in a venv) and biboumi (Debian). Each is killed when its handle drops; their logs stay in the run's temp dir.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// A child process killed on drop.
pub struct Proc {
    child: Child,
    /// Its combined stdout/stderr log.
    pub log: PathBuf,
}

impl Proc {
    /// Starts `cmd` with its output in `log`.
    pub fn spawn(mut cmd: Command, log: &Path) -> Result<Self, String> {
        let out = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("cannot start {:?}: {e}", cmd.get_program()))?;
        Ok(Self { child, log: log.to_owned() })
    }

    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// An error if the process has exited (with the tail of its log).
    pub fn alive(&mut self, what: &str) -> Result<(), String> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            _ => {
                let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                let tail: String =
                    log.lines().rev().take(30).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
                Err(format!("{what} exited:\n{tail}"))
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The resident set size of `pid` in KiB (from /proc).
pub fn rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmRSS")
}

/// One resident set figure of `pid` in KiB from /proc/PID/status: `VmRSS` (all), `RssAnon` (heap and stacks),
/// `RssFile` (mapped files: the program's code and libraries).
pub fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
}

/// The value of the un-labelled metric `name` in the daemon's `GET /metrics` on `admin` (served without a token:
/// `admin.public_metrics`).
pub fn daemon_metric(admin: std::net::SocketAddr, name: &str) -> Option<f64> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&admin, std::time::Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(5))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// The heisenbridge venv's python (`MIMI_BENCH_HEISENBRIDGE_VENV` or the cache dir `scripts/bench` installs into).
pub fn heisenbridge_python() -> Result<PathBuf, String> {
    let venv = match std::env::var_os("MIMI_BENCH_HEISENBRIDGE_VENV") {
        Some(v) => PathBuf::from(v),
        None => {
            let cache = std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
                .ok_or("neither XDG_CACHE_HOME nor HOME is set")?;
            cache.join("mimi-bridge-test/heisenbridge-venv")
        }
    };
    let python = venv.join("bin/python");
    if python.is_file() {
        Ok(python)
    } else {
        Err(format!("heisenbridge is not installed in {}: run scripts/bench (it installs it)", venv.display()))
    }
}
