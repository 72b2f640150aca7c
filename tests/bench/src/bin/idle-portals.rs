//! `idle-portals`: what idle portals cost the daemon (issue #19: "10 000 idle portals: RSS and
//! restart-to-ready time"). Run it through `scripts/bench idle-portals [N]`, which builds it in release mode.
//!
//! Writes a config with `--portals N` portals, without legs, or with `--irc-legs` one IRC leg each on an account
//! whose server is down (a free port nobody listens on: the legs and their delivery workers exist, no network
//! server takes part); starts the daemon (its first start creates every portal's MLS group and hub room), then
//! restarts it `--restarts` times after a clean stop (SIGTERM). Measured, from the spawn of the process to the first `200` of the admin API's `/health`
//! (polled every 2 ms): the first start and each restart; and the daemon's RSS after `--settle-secs` idle. With
//! `--closed-after-secs S` also the RSS of the first start's daemon S seconds after it was ready: a first start
//! opens every portal's group to make it and its room, and closes each again once it is made (before 2026-12-06,
//! after 5 idle minutes), so with S above 300 this is what a long-running daemon holds once every portal it
//! opened has gone idle again.

use mimi_bench::peers::{Proc, rss_kib};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

struct Args {
    portals: usize,
    irc_legs: bool,
    restarts: usize,
    settle: Duration,
    closed_after: Option<Duration>,
    bin: PathBuf,
}

fn args() -> Result<Args, String> {
    let mut a = Args {
        portals: 10_000,
        irc_legs: false,
        restarts: 3,
        settle: Duration::from_secs(5),
        closed_after: None,
        bin: PathBuf::from("mimi-bridge"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--portals" => a.portals = value()?.parse().map_err(|e| format!("--portals: {e}"))?,
            "--irc-legs" => a.irc_legs = true,
            "--restarts" => a.restarts = value()?.parse().map_err(|e| format!("--restarts: {e}"))?,
            "--settle-secs" => {
                a.settle = Duration::from_secs(value()?.parse().map_err(|e| format!("--settle-secs: {e}"))?)
            }
            "--closed-after-secs" => {
                let secs = value()?.parse().map_err(|e| format!("--closed-after-secs: {e}"))?;
                a.closed_after = Some(Duration::from_secs(secs))
            }
            "--bin" => a.bin = PathBuf::from(value()?),
            _ => {
                return Err(format!(
                    "unknown argument {flag} (--portals N --irc-legs --restarts K --settle-secs S \
                     --closed-after-secs S --bin BIN)"
                ));
            }
        }
    }
    if a.portals == 0 {
        return Err("--portals must be positive".into());
    }
    Ok(a)
}

fn main() {
    let code = match args().and_then(|a| run(&a)) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("idle-portals: {e}");
            1
        }
    };
    std::process::exit(code);
}

fn config(dir: &Path, admin: SocketAddr, portals: usize, irc: Option<SocketAddr>) -> String {
    let mut c = format!(
        "[bridge]\ndomain = \"bench.test\"\ndata_dir = {data:?}\n\n[mimi]\nlisten = \"127.0.0.1:0\"\n\n\
         [admin]\nlisten = \"{admin}\"\n\n[log]\nlevel = \"warn\"\n\n",
        data = dir.join("data").display().to_string(),
    );
    if let Some(irc) = irc {
        c.push_str(&format!("[irc.down]\nserver = \"{irc}\"\nnick = \"idlebridge\"\n\n"));
    }
    for i in 0..portals {
        c.push_str(&format!("[[portal]]\nname = \"idle{i:05}\"\n"));
        if irc.is_some() {
            c.push_str(&format!("legs = [{{ account = \"irc.down\", room = \"#idle{i:05}\" }}]\n"));
        }
        c.push('\n');
    }
    c
}

/// True once `GET /health` answers 200.
fn healthy(admin: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&admin, Duration::from_millis(50)) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"GET /health HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n").is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.1 200")
}

/// Starts the daemon and waits until it is ready: (process, time from spawn to ready).
fn start(a: &Args, cfg: &Path, admin: SocketAddr, log: &Path) -> Result<(Proc, Duration), String> {
    let t = Instant::now();
    let mut cmd = Command::new(&a.bin);
    cmd.args(["run", "--config"]).arg(cfg);
    let mut p = Proc::spawn(cmd, log)?;
    while !healthy(admin) {
        p.alive("mimi-bridge")?;
        if t.elapsed() > Duration::from_secs(900) {
            return Err("mimi-bridge not ready after 15 minutes".into());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok((p, t.elapsed()))
}

/// Stops the daemon cleanly (SIGTERM) and waits for it to exit.
fn stop(p: &mut Proc) -> Result<(), String> {
    let status = Command::new("kill").args(["-TERM", &p.pid().to_string()]).status().map_err(|e| e.to_string())?;
    if !status.success() {
        return Err("kill -TERM failed".into());
    }
    let t = Instant::now();
    while p.alive("mimi-bridge").is_ok() {
        if t.elapsed() > Duration::from_secs(60) {
            return Err("mimi-bridge did not stop within 60 s of SIGTERM".into());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

fn settled_rss(p: &Proc, settle: Duration) -> Result<f64, String> {
    std::thread::sleep(settle);
    rss_kib(p.pid()).map(|k| k as f64 / 1024.0).ok_or_else(|| "no RSS for mimi-bridge".into())
}

fn run(a: &Args) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let d = dir.path();
    let free = || -> Result<SocketAddr, String> {
        let port = harness::free_port().map_err(|e| e.to_string())?;
        format!("127.0.0.1:{port}").parse().map_err(|e| format!("{e}"))
    };
    let admin = free()?;
    let irc = if a.irc_legs { Some(free()?) } else { None };
    let cfg = d.join("mimi-bridge.toml");
    std::fs::write(&cfg, config(d, admin, a.portals, irc)).map_err(|e| e.to_string())?;

    let legs = if a.irc_legs { "one IRC leg each (server down)" } else { "no legs" };
    println!("| {} portals, {legs} | ready after (s) | RSS after {} s idle (MiB) |", a.portals, a.settle.as_secs());
    println!("|---|---:|---:|");
    let (mut p, took) = start(a, &cfg, admin, &d.join("start-0.log"))?;
    let rss = settled_rss(&p, a.settle)?;
    println!("| first start (creates every group and room) | {:.2} | {rss:.1} |", took.as_secs_f64());
    if let Some(after) = a.closed_after {
        let rss = settled_rss(&p, after.saturating_sub(a.settle))?;
        println!("| first start, {} s after ready (the groups it opened closed) | | {rss:.1} |", after.as_secs());
    }
    stop(&mut p)?;
    for i in 1..=a.restarts {
        let (mut p, took) = start(a, &cfg, admin, &d.join(format!("start-{i}.log")))?;
        let rss = settled_rss(&p, a.settle)?;
        println!("| restart {i} | {:.2} | {rss:.1} |", took.as_secs_f64());
        stop(&mut p)?;
    }
    let size: u64 = std::fs::read_dir(d.join("data"))
        .map_err(|e| e.to_string())?
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len())
        .sum();
    println!("\ndata dir: {:.1} MiB", size as f64 / (1024.0 * 1024.0));
    Ok(())
}
