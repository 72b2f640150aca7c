//! `mimi-bridge run` daemons in their own processes (the real binary), so a test can kill one with SIGKILL and
//! start it again on the same data directory and port.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    harness::free_port().expect("a free port")
}

/// A running (or killed) daemon: MIMI domain, data directory, MIMI port and peers fixed at the first start.
pub struct Daemon {
    child: Option<Child>,
    config: PathBuf,
    log: PathBuf,
    port: u16,
}

impl Daemon {
    /// Writes the config of a daemon for `domain` (data in `dir/DOMAIN`, MIMI endpoints on `port`, admin API on
    /// a free port, `[[mimi.peer]]` for each `(domain, url)`) and starts it; returns once it listens.
    pub fn start(dir: &Path, domain: &str, port: u16, peers: &[(&str, &str)]) -> Self {
        let mut text = format!(
            "[bridge]\ndomain = \"{domain}\"\ndata_dir = {:?}\n\n[mimi]\nlisten = \"127.0.0.1:{port}\"\n\n",
            dir.join(domain).display().to_string()
        );
        for (peer, url) in peers {
            text.push_str(&format!("[[mimi.peer]]\ndomain = \"{peer}\"\nurl = \"{url}\"\n\n"));
        }
        text.push_str("[admin]\nlisten = \"127.0.0.1:0\"\n");
        let config = dir.join(format!("{domain}.toml"));
        std::fs::write(&config, text).expect("config");
        let mut d = Self { child: None, config, log: dir.join(format!("{domain}.log")), port };
        d.restart();
        d
    }

    /// The base URL of its MIMI endpoints and client API.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Its log so far (all runs).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL: no shutdown, no flush.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it (again, after [`Daemon::kill`]); returns once it listens.
    pub fn restart(&mut self) {
        self.kill();
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_mimi-bridge"))
            .arg("run")
            .arg("--config")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("daemon starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("daemon {} exited with {status}:\n{}", self.config.display(), self.log());
            }
            assert!(Instant::now() < deadline, "daemon {} does not listen:\n{}", self.config.display(), self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}
