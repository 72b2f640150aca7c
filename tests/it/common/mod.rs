//! Helpers shared by the daemon's integration tests: a strict Prometheus text-format checker, a tiny HTTP
//! client (std only, independent of the daemon's own client), a way to run the real binary, and its native
//! client (`mimi-bridge client`, [`client`]).
#![allow(dead_code)]

pub mod api;
pub mod client;
pub mod three;

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

/// One metric family as parsed.
#[derive(Debug, Default)]
pub struct Family {
    /// `counter`, `gauge`, `histogram`, `summary` or `untyped`.
    pub kind: String,
    /// (sample name, labels, value).
    pub samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

fn is_name(s: &str, colon: bool) -> bool {
    let mut c = s.chars();
    matches!(c.next(), Some(ch) if ch.is_ascii_alphabetic() || ch == '_' || (colon && ch == ':'))
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || (colon && ch == ':'))
}

fn parse_value(s: &str) -> Result<f64, String> {
    match s {
        "+Inf" | "Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => s.parse::<f64>().map_err(|e| format!("bad value {s:?}: {e}")),
    }
}

/// Parses `name{a="b",c="d"} value [ts]`.
fn parse_sample(line: &str) -> Result<(String, BTreeMap<String, String>, f64), String> {
    let name_end = line.find(['{', ' ']).ok_or("sample without value")?;
    let name = &line[..name_end];
    if !is_name(name, true) {
        return Err(format!("bad metric name {name:?}"));
    }
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(r) = rest.strip_prefix('{') {
        let mut chars = r.char_indices().peekable();
        let mut end = None;
        loop {
            while chars.peek().is_some_and(|(_, c)| *c == ' ') {
                chars.next();
            }
            match chars.peek() {
                Some((i, '}')) => {
                    end = Some(*i);
                    break;
                }
                None => break,
                _ => {}
            }
            let mut lname = String::new();
            for (_, c) in chars.by_ref() {
                if c == '=' {
                    break;
                }
                lname.push(c);
            }
            if !is_name(lname.trim(), false) {
                return Err(format!("bad label name {lname:?}"));
            }
            if chars.next().map(|(_, c)| c) != Some('"') {
                return Err("label value not quoted".into());
            }
            let mut value = String::new();
            loop {
                match chars.next() {
                    Some((_, '\\')) => match chars.next() {
                        Some((_, 'n')) => value.push('\n'),
                        Some((_, '\\')) => value.push('\\'),
                        Some((_, '"')) => value.push('"'),
                        other => return Err(format!("bad escape {other:?}")),
                    },
                    Some((_, '"')) => break,
                    Some((_, c)) => value.push(c),
                    None => return Err("unterminated label value".into()),
                }
            }
            if labels.insert(lname.trim().to_owned(), value).is_some() {
                return Err("duplicate label".into());
            }
            if chars.peek().is_some_and(|(_, c)| *c == ',') {
                chars.next();
            }
        }
        let end = end.ok_or("unterminated label set")?;
        rest = &r[end + 1..];
    }
    let mut parts = rest.split_whitespace();
    let value = parse_value(parts.next().ok_or("no value")?)?;
    if let Some(ts) = parts.next() {
        ts.parse::<i64>().map_err(|_| format!("bad timestamp {ts:?}"))?;
    }
    if parts.next().is_some() {
        return Err("trailing garbage".into());
    }
    Ok((name.to_owned(), labels, value))
}

/// A series' labels other than `le`, sorted.
type Labels = Vec<(String, String)>;

/// Parses and checks Prometheus text exposition format 0.0.4; returns the families by name.
pub fn parse_prometheus(text: &str) -> Result<BTreeMap<String, Family>, String> {
    if !text.is_empty() && !text.ends_with('\n') {
        return Err("does not end with a newline".into());
    }
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    let mut series = HashSet::new();
    let mut finished: HashSet<String> = HashSet::new();
    let mut current: Option<String> = None;
    for (n, line) in text.lines().enumerate() {
        let err = |m: String| format!("line {}: {m}: {line:?}", n + 1);
        if line.trim().is_empty() {
            continue;
        }
        if let Some(c) = line.strip_prefix('#') {
            let mut w = c.trim_start().splitn(3, ' ');
            match (w.next(), w.next(), w.next()) {
                (Some("TYPE"), Some(name), Some(kind)) => {
                    if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                        return Err(err(format!("unknown type {kind}")));
                    }
                    let f = families.entry(name.to_owned()).or_default();
                    if !f.kind.is_empty() || !f.samples.is_empty() {
                        return Err(err("TYPE after samples or twice".into()));
                    }
                    f.kind = kind.to_owned();
                }
                (Some("HELP"), Some(name), _) if !is_name(name, true) => return Err(err("bad HELP name".into())),
                _ => {}
            }
            continue;
        }
        let (name, labels, value) = parse_sample(line).map_err(err)?;
        let family = ["_bucket", "_sum", "_count", "_total"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|b| families.get(*b).is_some_and(|f| !f.kind.is_empty())))
            .unwrap_or(&name)
            .to_owned();
        if current.as_deref() != Some(&family) {
            if let Some(prev) = current.take() {
                finished.insert(prev);
            }
            if finished.contains(&family) {
                return Err(err(format!("samples of {family} are not contiguous")));
            }
            current = Some(family.clone());
        }
        let key = format!("{name}{labels:?}");
        if !series.insert(key) {
            return Err(err("duplicate series".into()));
        }
        let f = families.entry(family.clone()).or_default();
        if f.kind == "counter" && value < 0.0 {
            return Err(err("negative counter".into()));
        }
        f.samples.push((name, labels, value));
    }
    for (name, f) in &families {
        if f.kind != "histogram" {
            continue;
        }
        let mut by_series: BTreeMap<Labels, Vec<(f64, f64)>> = BTreeMap::new();
        let mut counts: BTreeMap<Vec<(String, String)>, f64> = BTreeMap::new();
        for (sname, labels, v) in &f.samples {
            let mut base: Vec<(String, String)> =
                labels.iter().filter(|(k, _)| *k != "le").map(|(k, v)| (k.clone(), v.clone())).collect();
            base.sort();
            if sname.ends_with("_bucket") {
                let le = labels.get("le").ok_or(format!("{name}: bucket without le"))?;
                by_series.entry(base).or_default().push((parse_value(le)?, *v));
            } else if sname.ends_with("_count") {
                counts.insert(base, *v);
            }
        }
        for (base, buckets) in &by_series {
            let mut prev = (f64::NEG_INFINITY, 0.0);
            for b in buckets {
                if b.0 <= prev.0 || b.1 < prev.1 {
                    return Err(format!("{name}{base:?}: buckets not cumulative/ordered"));
                }
                prev = *b;
            }
            if prev.0 != f64::INFINITY {
                return Err(format!("{name}{base:?}: no +Inf bucket"));
            }
            if counts.get(base) != Some(&prev.1) {
                return Err(format!("{name}{base:?}: +Inf bucket != _count"));
            }
        }
    }
    Ok(families)
}

/// An HTTP answer.
#[derive(Debug)]
pub struct Http {
    /// Status code.
    pub status: u16,
    /// Headers, lowercased names.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: String,
}

/// One HTTP/1.1 request (Connection: close), std only.
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> std::io::Result<Http> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    let body = body.unwrap_or("");
    if !body.is_empty() {
        req.push_str("Content-Type: application/json\r\n");
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    s.write_all(req.as_bytes())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, rest) = text.split_once("\r\n\r\n").ok_or_else(|| std::io::Error::other("no header end"))?;
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other("bad status line"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':').map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned())))
        .collect();
    let chunked = headers.iter().any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked {
        let mut out = String::new();
        let mut r = rest;
        while let Some((size, tail)) = r.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).map_err(std::io::Error::other)?;
            if n == 0 {
                break;
            }
            out.push_str(&tail[..n]);
            r = &tail[n + 2..];
        }
        out
    } else {
        rest.to_owned()
    };
    Ok(Http { status, headers, body })
}

/// Serializes the tests that load the machine (floods, shutdown under load, several daemons, timings): the test
/// binary runs its tests in parallel, and on a 2-core machine two of these at once starve each other.
pub fn heavy() -> std::sync::MutexGuard<'static, ()> {
    static HEAVY: std::sync::Mutex<()> = std::sync::Mutex::new(());
    HEAVY.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The daemon binary.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_mimi-bridge")
}

/// A config in `dir` (data under `dir/data`, admin API on a free loopback port) with `extra` appended.
pub fn write_config(dir: &Path, extra: &str) -> (PathBuf, SocketAddr) {
    let port = harness::free_port().expect("free port");
    let mimi_port = harness::free_port().expect("free port");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let text = format!(
        "[bridge]\ndomain = \"bridge.example.org\"\ndata_dir = {:?}\nshutdown_timeout = 20\n\n[mimi]\nlisten = \
         \"127.0.0.1:{mimi_port}\"\n\n[admin]\nlisten = \"{addr}\"\n\n[log]\nformat = \"text\"\n\n[[portal]]\nname = \
         \"lobby\"\n\n[[portal]]\nname = \"rust\"\n{extra}",
        dir.join("data").display().to_string()
    );
    let path = dir.join("config.toml");
    std::fs::write(&path, text).expect("write config");
    (path, addr)
}

/// The lines of a child's output as they come (read by a thread of their own).
pub fn lines_of(output: impl Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(output).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    rx
}

/// A `mimi-bridge run` process with its stdout lines: the one way the tests run the daemon as a process. It can
/// be killed with SIGKILL and started again on the same config (same data directory and ports).
pub struct Daemon {
    /// The process.
    pub child: Child,
    /// Its stdout, line by line.
    pub lines: Receiver<String>,
    /// Every line seen so far.
    pub seen: Vec<String>,
    /// Its stderr, line by line (read so that a full pipe never blocks it; shown when it fails to start).
    errors: Receiver<String>,
    cmd: Vec<String>,
    env: Vec<(String, String)>,
    wrapper: Vec<String>,
}

impl Daemon {
    /// Starts `mimi-bridge run --config cfg` with extra environment and waits for "bridge running".
    pub fn start(cfg: &Path, env: &[(&str, &str)]) -> Daemon {
        Self::start_with(cfg, &[], env)
    }

    /// Starts `mimi-bridge run --config cfg args…` with extra environment and waits for "bridge running".
    pub fn start_with(cfg: &Path, args: &[&str], env: &[(&str, &str)]) -> Daemon {
        Self::start_under(&[], cfg, args, env)
    }

    /// As [`Daemon::start_with`], run through `wrapper` (a command that execs its arguments, such as `prlimit
    /// --nofile=256:256 --`), so that the process id is still the daemon's.
    pub fn start_under(wrapper: &[&str], cfg: &Path, args: &[&str], env: &[(&str, &str)]) -> Daemon {
        let mut cmd = vec!["run".to_owned(), "--config".to_owned(), cfg.display().to_string()];
        cmd.extend(args.iter().map(|a| (*a).to_owned()));
        let env: Vec<(String, String)> = env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        let wrapper: Vec<String> = wrapper.iter().map(|w| (*w).to_owned()).collect();
        let (child, lines, errors) = Self::spawn(&wrapper, &cmd, &env);
        let mut d = Daemon { child, lines, seen: Vec::new(), errors, cmd, env, wrapper };
        d.wait_started();
        d
    }

    /// Starts `mimi-bridge run --config cfg` and waits only for a stdout line containing `needle` (a standby
    /// that waits for the leader lease never says "bridge running" until it takes over).
    pub fn start_until(cfg: &Path, needle: &str, env: &[(&str, &str)]) -> Daemon {
        let cmd = vec!["run".to_owned(), "--config".to_owned(), cfg.display().to_string()];
        let env: Vec<(String, String)> = env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        let (child, lines, errors) = Self::spawn(&[], &cmd, &env);
        let mut d = Daemon { child, lines, seen: Vec::new(), errors, cmd, env, wrapper: Vec::new() };
        if !d.wait_line(needle, Duration::from_secs(30)) {
            let errors: Vec<String> = d.errors.try_iter().collect();
            panic!("daemon never said {needle:?}; stdout:\n{}\nstderr:\n{}", d.log(), errors.join("\n"));
        }
        d
    }

    fn spawn(
        wrapper: &[String],
        args: &[String],
        env: &[(String, String)],
    ) -> (Child, Receiver<String>, Receiver<String>) {
        let mut cmd = match wrapper.split_first() {
            Some((program, wrapper_args)) => {
                let mut cmd = Command::new(program);
                cmd.args(wrapper_args).arg(bin());
                cmd
            }
            None => Command::new(bin()),
        };
        cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
        cmd.env_remove("NOTIFY_SOCKET").env_remove("WATCHDOG_USEC").env_remove("JOURNAL_STREAM");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("starts");
        let lines = lines_of(child.stdout.take().expect("stdout"));
        let errors = lines_of(child.stderr.take().expect("stderr"));
        (child, lines, errors)
    }

    fn wait_started(&mut self) {
        let started = self.wait_line_after(self.seen.len(), "bridge running", Duration::from_secs(30));
        if !started {
            let status = match self.child.try_wait() {
                Ok(Some(status)) => format!("it exited with {status}"),
                _ => "it still runs after 30 s".to_owned(),
            };
            std::thread::sleep(Duration::from_millis(200));
            let errors: Vec<String> = self.errors.try_iter().collect();
            panic!("daemon did not start ({status}); stdout:\n{}\nstderr:\n{}", self.log(), errors.join("\n"));
        }
    }

    /// SIGKILL: no shutdown, no flush.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Kills it if it runs and starts it again with the same command line; returns once it runs.
    pub fn restart(&mut self) {
        self.kill();
        while let Ok(l) = self.lines.try_recv() {
            self.seen.push(l);
        }
        let (child, lines, errors) = Self::spawn(&self.wrapper, &self.cmd, &self.env);
        (self.child, self.lines, self.errors) = (child, lines, errors);
        self.wait_started();
    }

    /// Everything it printed so far (all runs).
    pub fn log(&mut self) -> String {
        while let Ok(l) = self.lines.try_recv() {
            self.seen.push(l);
        }
        self.seen.join("\n")
    }

    /// Waits for a stdout line containing `needle`.
    pub fn wait_line(&mut self, needle: &str, timeout: Duration) -> bool {
        self.wait_line_after(0, needle, timeout)
    }

    /// Waits for a stdout line containing `needle` among the lines after the first `skip`.
    fn wait_line_after(&mut self, skip: usize, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        if self.seen.iter().skip(skip).any(|l| l.contains(needle)) {
            return true;
        }
        while Instant::now() < deadline {
            if let Ok(line) = self.lines.recv_timeout(Duration::from_millis(100)) {
                let hit = line.contains(needle);
                self.seen.push(line);
                if hit {
                    return true;
                }
            }
        }
        false
    }

    /// Waits (up to `timeout`) for the process to exit by itself; its exit code, or `None` if it still runs (or
    /// was killed by a signal).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                while let Ok(l) = self.lines.recv_timeout(Duration::from_millis(200)) {
                    self.seen.push(l);
                }
                return status.code();
            }
            if let Ok(l) = self.lines.recv_timeout(Duration::from_millis(50)) {
                self.seen.push(l);
            }
        }
        None
    }

    /// Sends SIGTERM and waits (up to `timeout`) for the exit status code.
    pub fn terminate(&mut self, timeout: Duration) -> Option<i32> {
        let st = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().expect("kill");
        assert!(st.success());
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                while let Ok(l) = self.lines.recv_timeout(Duration::from_millis(200)) {
                    self.seen.push(l);
                }
                return status.code();
            }
            assert!(Instant::now() < deadline, "daemon did not stop within {timeout:?} of SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The admin token the daemon wrote into its data directory.
pub fn cookie(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("data").join("admin.token")).expect("admin.token").trim().to_owned()
}

/// Runs the CLI with `args`; returns (exit code, stdout, stderr).
pub fn cli(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin()).args(args).output().expect("runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
