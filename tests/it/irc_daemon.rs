//! The daemon binary with a real IRC account: two channels of an ngIRCd linked into one portal, messages and
//! replies across, a polite QUIT on SIGTERM, and the store tools on the data it left.

use crate::common::{Daemon, cli, write_config};
use harness::{IrcClient, Ngircd};
use std::time::Duration;

#[test]
fn two_irc_channels_bridged_through_one_portal_by_the_real_daemon() {
    let server = Ngircd::start().expect("ngircd starts (installed by ./scripts/test)");
    let dir = tempfile::tempdir().expect("tempdir");
    let extra = format!(
        "legs = [{{ account = \"irc.t\", room = \"#a\" }}, {{ account = \"irc.t\", room = \"#b\" }}]\n\n\
         [irc.t]\nserver = \"{}\"\nnick = \"bridge\"\n",
        server.addr()
    );
    let (cfg, _) = write_config(dir.path(), &extra);
    let cfg_s = cfg.to_str().expect("utf-8");
    let (code, out, err) = cli(&["check-config", cfg_s]);
    assert_eq!(code, 0, "{out}{err}");

    let mut d = Daemon::start(&cfg, &[]);
    assert!(d.wait_line("channel=#a", Duration::from_secs(30)), "bridge joined #a: {:?}", d.seen);
    assert!(d.wait_line("channel=#b", Duration::from_secs(30)), "bridge joined #b: {:?}", d.seen);

    let mut alice = IrcClient::connect(&server.addr(), "alice").expect("alice");
    alice.join("#a").expect("alice joins #a");
    let mut bob = IrcClient::connect(&server.addr(), "bob").expect("bob");
    bob.join("#b").expect("bob joins #b");

    alice.send("PRIVMSG #a :hello from a").expect("send");
    let got = bob.read_until(|l| l.contains("PRIVMSG #b")).expect("bob sees the bridged line");
    assert!(got.starts_with(":bridge!") && got.ends_with(":<a\u{200B}lice> hello from a"), "{got}");

    // IRC's reply convention: `alice: …` becomes a reply to alice's message, shown in #a as a reply to her.
    bob.send("PRIVMSG #b :alice: hi back").expect("send");
    let got = alice.read_until(|l| l.contains("PRIVMSG #a")).expect("alice sees the reply");
    assert!(got.ends_with(":<b\u{200B}ob> alice: hi back"), "{got}");

    // Hostile text from one channel stays text in the other.
    alice.send("PRIVMSG #a :x\u{1}ACTION y").expect("send");
    let got = bob.read_until(|l| l.contains("PRIVMSG #b")).expect("bob sees it");
    assert!(got.starts_with(":bridge!"), "{got}");

    // `status` shows each portal's MLS group epoch (the portal's group exists from the start).
    let (code, out, err) = cli(&["status", "--config", cfg_s, "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    let status: serde_json::Value = serde_json::from_str(&out).expect("status JSON");
    let lobby = status["portals"].as_array().expect("portals").iter().find(|p| p["name"] == "rust").expect("portal");
    assert!(lobby["mls_epoch"].is_u64(), "{status}");

    assert_eq!(d.terminate(Duration::from_secs(30)), Some(0));
    let quit = alice.read_until(|l| l.contains("QUIT")).expect("the bridge says goodbye");
    assert!(quit.starts_with(":bridge!"), "{quit}");

    // The store tools on what the daemon left.
    let data = dir.path().join("data");
    let data_s = data.to_str().expect("utf-8");
    let (code, out, err) = cli(&["store", "check", "--data-dir", data_s]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, dump, err) = cli(&["store", "export", "--data-dir", data_s]);
    assert_eq!(code, 0, "{err}");
    assert!(dump.lines().count() > 5, "{dump}");
    let dump_file = dir.path().join("dump.jsonl");
    std::fs::write(&dump_file, &dump).expect("write dump");
    let copy = dir.path().join("copy");
    let copy_s = copy.to_str().expect("utf-8");
    let (code, out, err) =
        cli(&["store", "import", dump_file.to_str().expect("utf-8"), "--data-dir", copy_s, "--backend", "sled"]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = cli(&["store", "check", "--data-dir", copy_s]);
    assert_eq!(code, 0, "{out}{err}");
    let (_, dump2, _) = cli(&["store", "export", "--data-dir", copy_s]);
    let body = |d: &str| d.lines().skip(1).map(str::to_owned).collect::<Vec<_>>();
    assert_eq!(body(&dump), body(&dump2), "the sled copy holds exactly what the redb store held");
}

#[test]
fn irc_account_errors_name_line_key_and_suggestion() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cfg, _) =
        write_config(dir.path(), "\n[irc.t]\nserver = \"127.0.0.1:6667\"\nnick = \"bridge\"\nflood_rat = 3.0\n");
    let text = std::fs::read_to_string(&cfg).expect("config");
    let line = text.lines().position(|l| l.starts_with("flood_rat")).expect("line") + 1;
    let (code, _, err) = cli(&["check-config", cfg.to_str().expect("utf-8")]);
    assert_eq!(code, 1);
    assert!(err.contains(&format!(":{line}:1: key `irc.t.flood_rat`")), "{err}");
    assert!(err.contains("did you mean `flood_rate`?"), "{err}");
    let (cfg, _) = write_config(dir.path(), "\n[irc.t]\nserver = \"127.0.0.1:6667\"\nnick = \"bad nick\"\n");
    let (code, _, err) = cli(&["check-config", cfg.to_str().expect("utf-8")]);
    assert_eq!(code, 1);
    assert!(err.contains("key `irc.t`") && err.contains("not a valid IRC nick"), "{err}");
}

/// Flood control keys (issue #19): an old config with a fixed `flood_rate` still loads (the rate is now a cap), and
/// a bad value names its file, line and key.
#[test]
fn irc_flood_keys_keep_old_configs_and_name_bad_values() {
    let dir = tempfile::tempdir().expect("tempdir");
    let account = "\n[irc.t]\nserver = \"127.0.0.1:6667\"\nnick = \"bridge\"\n";
    let (cfg, _) = write_config(dir.path(), &format!("{account}flood_burst = 5\nflood_rate = 2.0\n"));
    let (code, out, err) = cli(&["check-config", cfg.to_str().expect("utf-8")]);
    assert_eq!(code, 0, "the old defaults, written out, still load: {out}{err}");
    for (bad, key) in [("flood_rate = 0.0", "flood_rate"), ("flood_burst = 0", "flood_burst")] {
        let (cfg, _) = write_config(dir.path(), &format!("{account}{bad}\n"));
        let text = std::fs::read_to_string(&cfg).expect("config");
        let line = text.lines().position(|l| l == bad).expect("line") + 1;
        let (code, _, err) = cli(&["check-config", cfg.to_str().expect("utf-8")]);
        assert_eq!(code, 1, "{bad}");
        assert!(err.contains("config.toml"), "{err}");
        assert!(err.contains(&format!(":{line}:1: key `irc.t.{key}`")), "{bad}: {err}");
    }
}
