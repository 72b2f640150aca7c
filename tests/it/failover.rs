//! Active/standby on one PostgreSQL database (issue #20), with a real PostgreSQL cluster, a real ngIRCd and the
//! native MLS client: two daemons with the same config (their own data directory and ports, as on two machines),
//! one active, one standby.
//!
//! 1. The active one is killed with SIGKILL in the middle of a stream (1 000 lines from IRC, 100 messages from the
//!    native client). The standby takes over within 10 s. Every message the native client had accepted reaches
//!    IRC, at most one twice (IRC gives no receipt: a line written just before the kill is sent again); every IRC
//!    line the store holds reaches the native client once, nothing twice; the only IRC lines missing are those
//!    said while no daemon was in the channel (IRC keeps no history for a newcomer).
//! 2. The new active daemon is paused with SIGSTOP right after the native client sent a burst through it; the
//!    killed one, restarted as a standby, takes over and delivers what was left in the outbox; IRC lines said
//!    meanwhile land in the paused daemon's socket too. Resumed with SIGCONT, the old leader finds its lease gone,
//!    sends and records nothing, and exits with status 1: the lines it had read reach the native client once,
//!    through the new leader, and the burst reaches IRC (at most one twice).

use crate::common::client::{command, server_of};
use crate::common::{Daemon, heavy};
use harness::{Ngircd, NgircdOptions, Postgres};
use mimi_bench::irc::IrcUser;
use mimi_bench::measure::{Arrivals, marker, markers};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const ROOM: &str = "mimi://bridge.example.org/r/rust";
const CHANNEL: &str = "#failover";
/// Lines from IRC in the stream, and the one the active daemon is killed at.
const IRC_LINES: usize = 1000;
const KILL_AT: usize = 300;
/// Messages from the native client in the stream.
const ALICE_MESSAGES: usize = 100;
/// IRC lines said while the second leader is paused.
const PAUSED_LINES: usize = 20;
/// Messages the native client sends through the second leader just before it is paused.
const BURST: usize = 5;
/// Marker senders: IRC stream, native client, IRC during the pause, the native client's burst before it.
const IRC: usize = 1;
const ALICE: usize = 2;
const PAUSED: usize = 3;
const ALICE_BURST: usize = 4;

/// One daemon's config: same database and IRC account as its twin, its own data directory and ports.
fn config(dir: &Path, name: &str, url_file: &Path, irc: &str) -> PathBuf {
    let (admin, mimi) = (harness::free_port().expect("port"), harness::free_port().expect("port"));
    let text = format!(
        "[bridge]\ndomain = \"bridge.example.org\"\ndata_dir = {data:?}\nshutdown_timeout = 20\nstore = \"postgres\"\n\
         postgres_url_file = {url_file:?}\npostgres_standby = true\npostgres_lease_secs = 2\n\n\
         [mimi]\nlisten = \"127.0.0.1:{mimi}\"\n\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n\n[log]\nformat = \"text\"\n\n\
         [[portal]]\nname = \"rust\"\nlegs = [{{ account = \"irc.t\", room = \"{CHANNEL}\" }}]\n\n\
         [irc.t]\nserver = \"{irc}\"\nnick = \"bridge\"\n",
        data = dir.join(format!("data-{name}")).display().to_string(),
        url_file = url_file.display().to_string(),
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).expect("write config");
    path
}

/// Every text the native client `state` hears on `server` within about `secs` seconds of quiet.
fn drain(state: &Path, server: &str, secs: u64) -> Vec<String> {
    let out = command(state, server, &["listen", ROOM, "--json", "--count", "5000", "--timeout", &secs.to_string()])
        .output()
        .expect("mimi-bridge client runs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|m| m.get("text").and_then(|t| t.as_str()).map(str::to_owned))
        .collect()
}

/// How often each marker occurs in `texts`.
fn counts<'a>(texts: impl IntoIterator<Item = &'a String>) -> BTreeMap<String, u32> {
    let mut c = BTreeMap::new();
    for t in texts {
        for m in markers(t) {
            *c.entry(m).or_default() += 1;
        }
    }
    c
}

/// The markers of the message records in the store (`store export`, run while no daemon is active).
fn markers_in_store(cfg: &Path) -> BTreeSet<String> {
    let out = std::process::Command::new(crate::common::bin())
        .args(["store", "export", "--config"])
        .arg(cfg)
        .output()
        .expect("store export runs");
    assert!(out.status.success(), "store export: {}", String::from_utf8_lossy(&out.stderr));
    let mut found = BTreeSet::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        if v.get("tree").and_then(|t| t.as_str()) != Some("msgs") {
            continue;
        }
        let value = v.get("value").and_then(|x| x.as_str()).and_then(|h| hex::decode(h).ok()).unwrap_or_default();
        found.extend(markers(&String::from_utf8_lossy(&value)));
    }
    found
}

/// How often each marker occurs in what `ivan` read on IRC so far.
fn on_irc_now(ivan: &IrcUser) -> BTreeMap<String, u32> {
    counts(&ivan.lines())
}

/// Whether marker `m` is sender `sender`'s.
fn from(sender: usize, m: &str) -> bool {
    m.starts_with(&format!("mb{sender}x"))
}

fn signal(d: &Daemon, sig: &str) {
    let st = std::process::Command::new("kill").args([sig, &d.child.id().to_string()]).status().expect("kill");
    assert!(st.success(), "kill {sig}");
}

#[test]
fn a_standby_takes_over_from_a_killed_leader_and_a_resumed_old_leader_writes_nothing() {
    let _heavy = heavy();
    let pg = Postgres::start().expect("PostgreSQL starts (installed by ./scripts/test)");
    let url = pg.create_database("failover").expect("database");
    let irc = Ngircd::start_with(NgircdOptions { no_penalty: true, ..Default::default() }).expect("ngircd");
    let dir = tempfile::tempdir().expect("tempdir");
    let url_file = dir.path().join("postgres-url");
    std::fs::write(&url_file, &url).expect("write the connection string");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&url_file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }
    let (cfg_a, cfg_b) =
        (config(dir.path(), "a", &url_file, &irc.addr()), config(dir.path(), "b", &url_file, &irc.addr()));
    let (server_a, server_b) = (server_of(&cfg_a), server_of(&cfg_b));

    let mut a = Daemon::start(&cfg_a, &[]);
    let mut b = Daemon::start_until(&cfg_b, "standby: waiting", &[]);
    let status = |cfg: &Path| {
        let out = std::process::Command::new(crate::common::bin())
            .args(["status", "--config"])
            .arg(cfg)
            .output()
            .expect("status runs");
        (
            out.status.success(),
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
        )
    };
    let (ok, text) = status(&cfg_a);
    assert!(ok && text.contains("store postgres: active (leader lease epoch 1)"), "status of the active one: {text}");
    let (ok, text) = status(&cfg_b);
    assert!(!ok && text.contains("standby"), "status of the standby: {text}");

    let alice = dir.path().join("alice");
    let ok = |args: &[&str]| command(&alice, &server_a, args).status().expect("client runs").success();
    assert!(ok(&["register", "alice"]) && ok(&["join", ROOM]), "alice joins through the active daemon");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let arrivals = Arrivals::default();
    let ivan = rt.block_on(IrcUser::join(&irc.addr(), "ivan", CHANNEL, "irc", arrivals.clone())).expect("ivan joins");
    rt.block_on(ivan.wait_member("bridge")).expect("the bridge is in the channel");
    let mut heard = false;
    for i in 0..20 {
        rt.block_on(ivan.say(&format!("warm-up {i}"))).expect("say");
        if !drain(&alice, &server_a, 2).is_empty() {
            heard = true;
            break;
        }
    }
    assert!(heard, "the bridge relays before the stream:\n{}", a.log());
    drain(&alice, &server_a, 1);

    // The stream, and the kill in its middle.
    let said = Arc::new(AtomicUsize::new(0));
    let (mut killed_at, mut took_over, mut joined_at) = (None, None, None);
    let (irc_said, alice_sent) = std::thread::scope(|s| {
        let irc_thread = s.spawn(|| {
            let mut times = Vec::new();
            for i in 0..IRC_LINES {
                rt.block_on(ivan.say(&format!("line {}", marker(IRC, i)))).expect("say");
                times.push((marker(IRC, i), Instant::now()));
                said.store(i + 1, Ordering::Release);
                std::thread::sleep(Duration::from_millis(20));
            }
            times
        });
        let alice_thread = s.spawn(|| {
            let mut sent = Vec::new();
            for i in 0..ALICE_MESSAGES {
                let text = format!("from alice {}", marker(ALICE, i));
                let accepted = [&server_a, &server_b].iter().any(|server| {
                    command(&alice, server, &["send", ROOM, &text]).output().is_ok_and(|o| o.status.success())
                });
                sent.push((marker(ALICE, i), accepted));
                std::thread::sleep(Duration::from_millis(150));
            }
            sent
        });
        while said.load(Ordering::Acquire) < KILL_AT {
            std::thread::sleep(Duration::from_millis(5));
        }
        let t = Instant::now();
        a.kill();
        killed_at = Some(t);
        assert!(b.wait_line("bridge running", Duration::from_secs(30)), "the standby never took over:\n{}", b.log());
        took_over = Some(t.elapsed());
        // Ivan joined after the first leader, so the first JOIN of `bridge` he sees is the new leader's.
        rt.block_on(ivan.wait(|l| l.starts_with(":bridge!") && l.contains(" JOIN "), "the new leader joining"))
            .expect("the new leader joins the channel");
        joined_at = Some(Instant::now());
        (irc_thread.join().expect("irc thread"), alice_thread.join().expect("alice thread"))
    });
    let (killed_at, took_over, joined_at) =
        (killed_at.expect("killed"), took_over.expect("took over"), joined_at.expect("joined"));

    // What reached each side.
    let mut heard = Vec::new();
    loop {
        let got = drain(&alice, &server_b, 5);
        if got.is_empty() {
            break;
        }
        heard.extend(got);
    }
    let heard_counts = counts(&heard);
    let accepted_alice: Vec<String> = alice_sent.iter().filter(|(_, ok)| *ok).map(|(m, _)| m.clone()).collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !arrivals.missing("irc", &accepted_alice).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    let on_irc = counts(&ivan.lines());
    let mut problems = Vec::new();
    // IRC gives no delivery receipt: a line written just before the kill and not yet recorded is sent again by
    // the new leader. At most one such duplicate per failure (issue #19's bound), and nothing lost.
    for m in &accepted_alice {
        if !on_irc.contains_key(m) {
            problems.push(format!("alice's accepted {m} never reached IRC"));
        }
    }
    for (m, n) in &heard_counts {
        if *n > 1 {
            problems.push(format!("{m} reached the native client {n} times"));
        }
    }
    let irc_duplicates = |from_sender: usize| -> u32 {
        on_irc_now(&ivan).iter().filter(|(m, _)| from(from_sender, m)).map(|(_, n)| n.saturating_sub(1)).sum()
    };
    let first_duplicates = irc_duplicates(ALICE);
    if first_duplicates > 1 {
        problems.push(format!("{first_duplicates} of alice's messages reached IRC twice after one SIGKILL"));
    }
    let missing: Vec<&(String, Instant)> = irc_said.iter().filter(|(m, _)| !heard_counts.contains_key(m)).collect();
    // A line said while no daemon was in the channel is not accepted by anyone: the only ones allowed missing.
    // The killed daemon had read a line said just before the kill only if it had also bridged it (IRC → MLS
    // takes milliseconds): 300 ms of lines before the kill may be lost with it.
    let gap_start = killed_at - Duration::from_millis(300);
    for (m, at) in &missing {
        if *at < gap_start || *at > joined_at {
            problems.push(format!(
                "{m} (said {:?} after the kill) never reached the native client",
                at.duration_since(killed_at)
            ));
        }
    }

    // 2. Pause the new leader; the old one, restarted as a standby, takes over.
    let mut a = Daemon::start_until(&cfg_a, "standby: waiting", &[]);
    let joins = || ivan.lines().iter().filter(|l| l.contains(" JOIN ")).count();
    let joins_before = joins();
    // A burst through the second leader, paused while it delivers: what it had not recorded, the next leader
    // delivers from the outbox, and the resumed one must not send it again.
    let burst: Vec<String> = (0..BURST).map(|i| marker(ALICE_BURST, i)).collect();
    for m in &burst {
        assert!(
            command(&alice, &server_b, &["send", ROOM, &format!("burst {m}")]).status().expect("client").success(),
            "the second leader accepts {m}"
        );
    }
    signal(&b, "-STOP");
    let paused = Instant::now();
    assert!(a.wait_line("bridge running", Duration::from_secs(30)), "the restarted standby never took over");
    let second_takeover = paused.elapsed();
    // The paused leader still holds the nick `bridge`: the new one joins under another.
    let deadline = Instant::now() + Duration::from_secs(30);
    while joins() == joins_before && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(joins() > joins_before, "the third leader never joined the channel:\n{}", a.log());
    let paused_markers: Vec<String> = (0..PAUSED_LINES).map(|i| marker(PAUSED, i)).collect();
    for m in &paused_markers {
        rt.block_on(ivan.say(&format!("paused {m}"))).expect("say");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut heard2 = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while counts(&heard2).len() < PAUSED_LINES && Instant::now() < deadline {
        heard2.extend(drain(&alice, &server_a, 3));
    }
    signal(&b, "-CONT");
    let exit = b.wait_exit(Duration::from_secs(20));
    heard2.extend(drain(&alice, &server_a, 5));
    let c2 = counts(&heard2);
    for m in &paused_markers {
        let n = c2.get(m).copied().unwrap_or(0);
        if n != 1 {
            problems.push(format!("{m}, said while the old leader was paused, reached the native client {n} times"));
        }
    }
    let b_log = b.log();
    if exit != Some(1) {
        problems.push(format!("the resumed old leader exited with {exit:?}, not 1"));
    }
    let lease_lines: Vec<&str> = b_log.lines().filter(|l| l.contains("lease")).take(5).collect();
    eprintln!("the resumed old leader said:\n{}", lease_lines.join("\n"));
    if !lease_lines.iter().any(|l| ["lease lost", "no longer this daemon's", "ran out"].iter().any(|w| l.contains(w))) {
        problems.push("the resumed old leader's log does not say it lost the lease".into());
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while !arrivals.missing("irc", &burst).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(1));
    for m in arrivals.missing("irc", &burst) {
        problems.push(format!("alice's {m}, accepted by the paused leader, never reached IRC"));
    }
    let burst_duplicates = irc_duplicates(ALICE_BURST);
    if burst_duplicates > 1 {
        problems.push(format!("{burst_duplicates} of the burst reached IRC twice after one pause"));
    }
    let (ok, text) = status(&cfg_a);
    if !(ok && text.contains("leader lease epoch 3")) {
        problems.push(format!("the third leader's status: {text}"));
    }

    // Every IRC line the store holds reached the native client once.
    a.terminate(Duration::from_secs(30));
    let stored = markers_in_store(&cfg_a);
    let all_heard = counts(heard.iter().chain(&heard2));
    for m in stored.iter().filter(|m| from(IRC, m) || from(PAUSED, m)) {
        if all_heard.get(m).copied().unwrap_or(0) != 1 {
            problems.push(format!("{m} is in the store but reached the native client {:?} times", all_heard.get(m)));
        }
    }
    eprintln!(
        "failover: takeover {:.1} s after SIGKILL, {:.1} s after SIGSTOP; IRC lines {} said, {} heard, {} missing \
         (said while no daemon was in the channel); alice {} accepted of {}; IRC duplicates {} after the kill, {} \
         after the pause; {} problems",
        took_over.as_secs_f64(),
        second_takeover.as_secs_f64(),
        irc_said.len(),
        irc_said.len() - missing.len(),
        missing.len(),
        accepted_alice.len(),
        ALICE_MESSAGES,
        first_duplicates,
        burst_duplicates,
        problems.len()
    );
    assert!(took_over < Duration::from_secs(10), "the standby took {took_over:?} to take over");
    assert!(problems.is_empty(), "{} problems:\n{}\nold leader's log:\n{b_log}", problems.len(), problems.join("\n"));
}
