//! `mimi-bridge run --config FILE --data-dir DIR --listen ADDR`: two instances from one config file, each with
//! its own store and its own MIMI/client-API address, both serve; an override is checked like the file's value.

use crate::common::Daemon;
use crate::common::client::client;
use std::net::TcpStream;

#[test]
fn two_instances_run_side_by_side_from_one_config() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = || harness::free_port().expect("free port");
    let (in_file, one, two) = (port(), port(), port());
    // The admin API on port 0, so the instances do not compete for it.
    let text = format!(
        "[bridge]\ndomain = \"bridge.example.org\"\ndata_dir = {:?}\n\n[mimi]\nlisten = \"127.0.0.1:{in_file}\"\n\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\n[log]\nformat = \"text\"\n",
        dir.path().join("data").display().to_string()
    );
    let cfg = dir.path().join("config.toml");
    std::fs::write(&cfg, text).expect("config");
    let instance = |name: &str, port: u16| {
        let data = dir.path().join(name);
        let args = ["--data-dir", data.to_str().expect("utf-8 path"), "--listen", &format!("127.0.0.1:{port}")];
        Daemon::start_with(&cfg, &args, &[])
    };
    let _one = instance("one", one);
    let _two = instance("two", two);

    for (name, port) in [("one", one), ("two", two)] {
        let server = format!("http://127.0.0.1:{port}");
        let state = dir.path().join(format!("alice-{name}"));
        assert_eq!(client(&state, &server, &["register", "alice"]).trim(), "mimi://bridge.example.org/u/alice");
        let room = client(&state, &server, &["create-room", "club"]);
        assert_eq!(room.trim(), "mimi://bridge.example.org/r/club", "a room of its own on {name}");
        assert!(dir.path().join(name).join("BACKEND").is_file(), "the store of {name} is in its --data-dir");
    }
    assert!(!dir.path().join("data").exists(), "the file's data_dir is not used");
    assert!(TcpStream::connect(("127.0.0.1", in_file)).is_err(), "the file's [mimi] listen is not used");
}

#[test]
fn overrides_are_checked_like_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cfg, _) = crate::common::write_config(dir.path(), "");
    let cfg = cfg.to_str().expect("utf-8 path");
    let (code, _, err) = crate::common::cli(&["run", "--config", cfg, "--listen", "0.0.0.0:8448"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("--listen 0.0.0.0:8448 is not a loopback address: plain HTTP is allowed only on loopback"),
        "{err}"
    );
    let (code, _, err) = crate::common::cli(&["run", "--config", cfg, "--listen", "localhost"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("invalid value 'localhost' for '--listen <ADDR>'"), "{err}");
    assert!(!dir.path().join("data").exists(), "nothing was started");
}
