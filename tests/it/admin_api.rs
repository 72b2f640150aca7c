//! The admin API and the CLI that talks to it, against the real binary.

use crate::common::{Daemon, cli, cookie, http, parse_prometheus, write_config};
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

#[test]
fn the_admin_api_needs_the_token_and_serves_health_status_and_metrics() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cfg, addr) = write_config(dir.path(), "");
    let mut d = Daemon::start(&cfg, &[]);
    let token = cookie(dir.path());
    let token_path = dir.path().join("data/admin.token");
    assert_eq!(std::fs::metadata(&token_path).expect("token").permissions().mode() & 0o777, 0o600);

    let h = http(addr, "GET", "/health", None, None).expect("health");
    assert_eq!((h.status, h.body.as_str()), (200, "ready\n"));

    for bad in [None, Some("wrong"), Some(&token[..token.len() - 1])] {
        let r = http(addr, "GET", "/v1/status", bad, None).expect("status");
        assert_eq!(r.status, 401, "token {bad:?}: {r:?}");
        assert!(r.headers.iter().any(|(k, v)| k == "www-authenticate" && v == "Bearer"));
        assert_eq!(http(addr, "GET", "/metrics", bad, None).expect("metrics").status, 401);
        let link = r##"{"portal":"lobby","account":"irc.x","room":"#x","force":true}"##;
        assert_eq!(http(addr, "POST", "/v1/link", bad, Some(link)).expect("link").status, 401);
    }

    let r = http(addr, "GET", "/v1/status", Some(&token), None).expect("status");
    assert_eq!(r.status, 200, "{r:?}");
    let status: serde_json::Value = serde_json::from_str(&r.body).expect("json");
    assert_eq!(status["ready"], true);
    let names: Vec<&str> =
        status["portals"].as_array().expect("portals").iter().filter_map(|p| p["name"].as_str()).collect();
    assert_eq!(names, ["lobby", "rust"]);
    assert_eq!(status["portals"][0]["queue_depth"], 0);

    let m = http(addr, "GET", "/metrics", Some(&token), None).expect("metrics");
    assert_eq!(m.status, 200);
    assert!(m.headers.iter().any(|(k, v)| k == "content-type" && v.starts_with("text/plain; version=0.0.4")), "{m:?}");
    let families = parse_prometheus(&m.body).unwrap_or_else(|e| panic!("{e}\n{}", m.body));
    assert_eq!(families.get("mimi_bridge_build_info").map(|f| f.kind.as_str()), Some("gauge"), "{}", m.body);
    assert_eq!(families.get("mimi_bridge_ready").map(|f| f.samples[0].2), Some(1.0), "{}", m.body);
    // Creating the two portals at start wrote the store.
    let sample = |name: &str| families.get(name).filter(|f| f.kind == "counter").map(|f| f.samples[0].2);
    let (writes, batches) = (sample("mimi_bridge_store_writes_total"), sample("mimi_bridge_store_batches_total"));
    assert!(writes.is_some_and(|w| w >= 1.0) && batches >= writes, "{writes:?} {batches:?}\n{}", m.body);
    let bytes = sample("mimi_bridge_store_bytes_written_total");
    assert!(bytes.is_some_and(|b| b > 0.0), "{bytes:?}\n{}", m.body);
    // A first start skips no sending generation.
    assert_eq!(sample("mimi_bridge_mls_skipped_generations_total"), Some(0.0), "{}", m.body);

    assert_eq!(d.terminate(Duration::from_secs(30)), Some(0));
    let logs = d.seen.join("\n");
    assert!(!logs.contains(&token), "the token was logged");
}

fn list(cfg: &str) -> String {
    let (code, out, err) = cli(&["portal", "list", "--config", cfg]);
    assert_eq!(code, 0, "{err}");
    out
}

#[test]
fn runtime_link_and_unlink_take_effect_at_once_and_persist_across_restarts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cfg_path, _) = write_config(dir.path(), "");
    let cfg = cfg_path.to_str().expect("utf-8 path");
    let mut d = Daemon::start(&cfg_path, &[]);

    let (code, _, err) = cli(&["portal", "link", "lobby", "irc.libera", "#lobby", "--config", cfg]);
    assert_eq!(code, 1, "an unconfigured account is refused without --force");
    assert!(err.contains("no account irc.libera is configured"), "{err}");
    let (code, out, err) = cli(&["portal", "link", "lobby", "irc.libera", "#lobby", "--force", "--config", cfg]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("linked irc.libera #lobby to portal lobby"), "{out}");
    let (code, _, err) = cli(&["portal", "link", "rust", "irc.libera", "#lobby", "--force", "--config", cfg]);
    assert_eq!(code, 1);
    assert!(err.contains("409") && err.contains("already linked to portal lobby"), "{err}");
    let (code, _, err) = cli(&["portal", "link", "nope", "irc.libera", "#other", "--force", "--config", cfg]);
    assert_eq!(code, 1);
    assert!(err.contains("404"), "{err}");
    assert_eq!(list(cfg), "lobby\n  irc.libera #lobby\nrust\n");
    let (code, out, err) = cli(&["status", "--config", cfg]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("ready") && out.contains("irc.libera/#lobby"), "{out}");

    assert_eq!(d.terminate(Duration::from_secs(30)), Some(0));
    drop(d);
    let (code, _, err) = cli(&["portal", "list", "--config", cfg]);
    assert_eq!(code, 1, "no daemon running");
    assert!(err.contains("cannot reach the daemon"), "{err}");

    let mut d = Daemon::start(&cfg_path, &[]);
    assert_eq!(list(cfg), "lobby\n  irc.libera #lobby\nrust\n", "the link survived the restart");
    let (code, _, err) = cli(&["portal", "unlink", "irc.libera", "#lobby", "--config", cfg]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(list(cfg), "lobby\nrust\n", "unlinked at once");
    let (code, _, err) = cli(&["portal", "unlink", "irc.libera", "#lobby", "--config", cfg]);
    assert_eq!(code, 1);
    assert!(err.contains("404"), "{err}");
    assert_eq!(d.terminate(Duration::from_secs(30)), Some(0));
    drop(d);

    let mut d = Daemon::start(&cfg_path, &[]);
    assert_eq!(list(cfg), "lobby\nrust\n", "the unlink survived the restart");
    assert_eq!(d.terminate(Duration::from_secs(30)), Some(0));
}

/// SIGTERM while clients hammer the admin API with links: the daemon exits 0 in bounded time, and every link it
/// acknowledged (200) is there after the restart. Requests after intake closed get 503 or no connection, never a
/// false 200.
#[test]
fn sigterm_under_admin_load_loses_no_acknowledged_link() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cfg_path, addr) = write_config(dir.path(), "");
    let mut d = Daemon::start(&cfg_path, &[]);
    let token = cookie(dir.path());
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let workers: Vec<_> = (0..4)
        .map(|w| {
            let token = token.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut acked = Vec::new();
                let mut refused = 0;
                for i in 0.. {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                    let room = format!("#w{w}-{i}");
                    let portal = if i % 2 == 0 { "lobby" } else { "rust" };
                    let body = format!(r#"{{"portal":"{portal}","account":"irc.load","room":"{room}","force":true}}"#);
                    match http(addr, "POST", "/v1/link", Some(&token), Some(&body)) {
                        Ok(r) if r.status == 200 => acked.push(room),
                        Ok(r) => {
                            assert_eq!(r.status, 503, "only 'shutting down' is acceptable: {r:?}");
                            refused += 1;
                        }
                        Err(_) => break,
                    }
                }
                (acked, refused)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(700));
    let code = d.terminate(Duration::from_secs(30));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(code, Some(0), "{:?}", d.seen);
    let mut acked = Vec::new();
    for w in workers {
        acked.extend(w.join().expect("worker").0);
    }
    drop(d);
    assert!(acked.len() > 20, "the load was real: only {} links acknowledged", acked.len());

    let d = Daemon::start(&cfg_path, &[]);
    let token = cookie(dir.path());
    let r = http(addr, "GET", "/v1/portals", Some(&token), None).expect("portals");
    let list: serde_json::Value = serde_json::from_str(&r.body).expect("json");
    let present: std::collections::HashSet<String> = list["portals"]
        .as_array()
        .expect("portals")
        .iter()
        .flat_map(|p| p["legs"].as_array().cloned().unwrap_or_default())
        .filter_map(|l| l["room"].as_str().map(str::to_owned))
        .collect();
    let lost: Vec<&String> = acked.iter().filter(|r| !present.contains(*r)).collect();
    assert!(lost.is_empty(), "{} of {} acknowledged links lost: {lost:?}", lost.len(), acked.len());
    drop(d);
}

#[test]
fn refuses_to_start_on_a_world_readable_data_dir_or_token_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cfg, _) = write_config(dir.path(), "");
    let data = dir.path().join("data");
    std::fs::create_dir(&data).expect("mkdir");
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let (code, _, err) = cli(&["run", "--config", cfg.to_str().expect("utf-8")]);
    assert_eq!(code, 1);
    assert!(err.contains("accessible to other users") && err.contains("0755"), "{err}");

    let token = dir.path().join("admin.token");
    std::fs::write(&token, "s3cret-token\n").expect("write");
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let text = std::fs::read_to_string(&cfg)
        .expect("read")
        .replace("[admin]\n", &format!("[admin]\ntoken_file = {:?}\n", token.display().to_string()));
    std::fs::write(&cfg, text).expect("write");
    let (code, _, err) = cli(&["run", "--config", cfg.to_str().expect("utf-8")]);
    assert_eq!(code, 1);
    assert!(err.contains("key `admin.token_file`") && err.contains("readable by other users"), "{err}");
    assert!(!err.contains("s3cret"), "{err}");
}
