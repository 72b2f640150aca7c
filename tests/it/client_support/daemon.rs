//! Daemons of a federation scenario: one config per provider domain, run as processes by [`Daemon`].

use crate::common::Daemon;
use std::path::Path;

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    harness::free_port().expect("a free port")
}

/// Writes the config of a daemon for `domain` (data in `dir/DOMAIN`, MIMI endpoints on `port`, admin API on a free
/// port, `[[mimi.peer]]` for each `(domain, url)`) and starts it; returns once it runs.
pub fn start(dir: &Path, domain: &str, port: u16, peers: &[(&str, &str)]) -> Daemon {
    let mut text = format!(
        "[bridge]\ndomain = \"{domain}\"\ndata_dir = {:?}\n\n[mimi]\nlisten = \"127.0.0.1:{port}\"\n\n",
        dir.join(domain).display().to_string()
    );
    for (peer, url) in peers {
        text.push_str(&format!("[[mimi.peer]]\ndomain = \"{peer}\"\nurl = \"{url}\"\n\n"));
    }
    text.push_str("[admin]\nlisten = \"127.0.0.1:0\"\n\n[log]\nformat = \"text\"\n");
    let config = dir.join(format!("{domain}.toml"));
    std::fs::write(&config, text).expect("config");
    Daemon::start(&config, &[])
}

/// The base URL of the MIMI endpoints and client API of a daemon on `port`.
pub fn url(port: u16) -> String {
    format!("http://127.0.0.1:{port}")
}
