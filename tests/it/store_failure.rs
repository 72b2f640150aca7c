//! Fail-stop: when the store fails a durable write (here: a full disk), the daemon writes nothing more and stops
//! with status 1, so that no state built in memory on the lost write survives; a restart continues from disk.

use crate::common::api::{group_info, register, request};
use crate::common::client::server_of;
use crate::common::{Daemon, write_config};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Mounts a tmpfs of `size` (mode 0700) at `at`; unmounted when dropped. Fails loudly unless root may mount.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Self {
        std::fs::create_dir_all(at).expect("mkdir");
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs"])
            .arg(at)
            .output()
            .expect("mount runs");
        assert!(
            out.status.success(),
            "this test mounts a small tmpfs to fill the disk (run as root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self(at.to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_stops_the_daemon_instead_of_running_ahead_of_it() {
    let _heavy = crate::common::heavy();
    let dir = tempfile::tempdir().expect("tempdir");
    let _disk = Tmpfs::mount(&dir.path().join("data"), "4m");
    let (cfg, _) = write_config(dir.path(), "");
    let mut daemon = Daemon::start(&cfg, &[]);
    let server = server_of(&cfg);
    let addr = server.trim_start_matches("http://").to_owned();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let room = "mimi://bridge.example.org/r/big";

    // alice (keys outside the small disk) makes a room and fills the daemon's disk with 900 kB messages.
    let statuses = rt.block_on(async {
        let alice = register(&addr, "alice").await;
        let (mut group, info) = group_info(&dir.path().join("alice"), &alice.0, room).await;
        let body = serde_json::json!({ "name": "big", "group_info": hex::encode(info.as_bytes()) }).to_string();
        let (status, answer) = request(&addr, "POST", "/client/v1/rooms", Some(&alice), body).await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&answer));
        let path = format!("/client/v1/submit/{}", room.trim_start_matches("mimi://"));
        let mut statuses = Vec::new();
        for _ in 0..8 {
            let m = group.encrypt(&vec![b'x'; 900_000]).durable().await.expect("encrypt");
            let (status, _) = request(&addr, "POST", &path, Some(&alice), m).await;
            statuses.push(status);
            if status != 200 {
                break;
            }
        }
        statuses
    });
    assert!(statuses.first() == Some(&200), "the first message fits: {statuses:?}");
    assert!(statuses.last().is_some_and(|s| *s >= 500), "the disk fills and a write fails: {statuses:?}");

    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = daemon.child.try_wait().expect("wait") {
            break s;
        }
        assert!(Instant::now() < deadline, "the daemon kept running after a failed write:\n{}", daemon.log());
        std::thread::sleep(Duration::from_millis(50));
    };
    let log = daemon.log();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(log.contains("a durable write failed"), "{log}");
}
