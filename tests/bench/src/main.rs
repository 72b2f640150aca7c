//! `mimi-bench`: end-to-end latency through mimi-bridge beside heisenbridge (Matrix ⇄ IRC) and biboumi (XMPP ⇄
//! IRC), in one run, on the same real servers (ngIRCd, Synapse, Prosody from tests/harness). Run it through
//! `scripts/bench`, which installs the peers and builds everything in release mode.
//!
//! One portal links an IRC channel, a Matrix room (appservice) and an XMPP MUC (client mode; biboumi holds the Prosody
//! harness's one external component); a native MLS client in the portal's room speaks through a `mimi-bridge client
//! chat` session (no peer has that side). A second portal links only a MUC and a channel, as biboumi does: its two rows
//! are the like-for-like comparison with biboumi, where every message of the first portal also goes to Synapse and the
//! native client, on the same two cores. heisenbridge gets its own channel and room, biboumi its own channel and MUC.
//! Every direction sends `--messages` messages at `--rate` per second from a real client and times each from just
//! before the send call to its arrival at the reading client (all clients in this process, one monotonic clock).
//! Printed: a markdown table (p50, p99, max, lost, duplicated; for mimi-bridge also its store's durable writes per
//! message, from its `/metrics`) and the bridges' RSS when idle, split into anonymous memory and mapped files. With
//! `--push-probe`, a listening appservice registered beside the bridges ([`push_probe`]) notes when Synapse pushed each
//! Matrix message, and a second table splits the Matrix directions' latency into the homeserver's part and the
//! bridge's; with `--matrix-encryption-off`, our Matrix account runs with `encryption = false`.
//! `MIMI_BENCH_SMAPS=FILE` keeps a copy of the daemon's `/proc/PID/smaps` from that moment, to see which mappings
//! the RSS is made of.

use harness::{Ngircd, Prosody, Synapse, SynapseOptions};
use mimi_bench::irc::IrcUser;
use mimi_bench::matrix::MatrixClient;
use mimi_bench::measure::{Arrivals, Summary, gaps, marker, median_ms, summarize};
use mimi_bench::peers::{Proc, daemon_metric, heisenbridge_python, rss_kib, status_kib};
use mimi_bench::push_probe::{self, PushProbe};
use mimi_bench::sustained::{self, RateSearch};
use mimi_bench::xmpp::XmppUser;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

const SERVER_NAME: &str = "hs.bench";
const OUR_MUC: &str = "mimi@muc.localhost";
/// The MUC of our second portal, which links it to `#pair` only: the same two legs as biboumi's.
const PAIR_MUC: &str = "pair@muc.localhost";
/// The bridge column of that portal's rows.
const PAIR: &str = "mimi-bridge, XMPP ⇄ IRC only";
const BIBOUMI_HOST: &str = "bridge.localhost";
/// The room of record of our portal `bench` (domain `bench.test`), which the native MLS client joins.
const OUR_ROOM: &str = "mimi://bench.test/r/bench";
/// The measured directions, in the order they run: (direction, bridge). Our rows cross the portal linking all three
/// networks and the native client, except the last two ([`PAIR`]).
const DIRECTIONS: [(&str, &str); 11] = [
    ("Matrix → IRC", "mimi-bridge"),
    ("Matrix → IRC", "heisenbridge"),
    ("IRC → Matrix", "mimi-bridge"),
    ("IRC → Matrix", "heisenbridge"),
    ("XMPP → IRC", "mimi-bridge"),
    ("XMPP → IRC", "biboumi"),
    ("IRC → XMPP", "mimi-bridge"),
    ("IRC → XMPP", "biboumi"),
    ("native MLS client → IRC", "mimi-bridge"),
    ("XMPP → IRC", PAIR),
    ("IRC → XMPP", PAIR),
];

struct Args {
    messages: usize,
    rate: f64,
    wait: Duration,
    bin: PathBuf,
    /// Search each direction's highest sustained rate instead of measuring latency at `rate`.
    sustained: bool,
    /// How long each trial of that search sends.
    trial: Duration,
    /// Register a listening appservice beside the bridges and report when Synapse pushed each Matrix message.
    push_probe: bool,
    /// Our Matrix account's `encryption` (false: a registration without the encryption extensions).
    matrix_encryption: bool,
}

fn args() -> Result<Args, String> {
    let mut a = Args {
        messages: 20,
        rate: 1.0,
        wait: Duration::from_secs(30),
        bin: PathBuf::from("mimi-bridge"),
        sustained: false,
        trial: Duration::from_secs(10),
        push_probe: false,
        matrix_encryption: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--messages" => a.messages = value()?.parse().map_err(|e| format!("--messages: {e}"))?,
            "--rate" => a.rate = value()?.parse().map_err(|e| format!("--rate: {e}"))?,
            "--wait-secs" => a.wait = Duration::from_secs(value()?.parse().map_err(|e| format!("--wait-secs: {e}"))?),
            "--bin" => a.bin = PathBuf::from(value()?),
            "--sustained" => a.sustained = true,
            "--push-probe" => a.push_probe = true,
            "--matrix-encryption-off" => a.matrix_encryption = false,
            "--trial-secs" => {
                a.trial = Duration::from_secs(value()?.parse().map_err(|e| format!("--trial-secs: {e}"))?);
            }
            _ => {
                return Err(format!(
                    "unknown argument {flag} (--messages N --rate R --wait-secs S --bin MIMI_BRIDGE --push-probe | \
                     --sustained --trial-secs S; either with --matrix-encryption-off)"
                ));
            }
        }
    }
    if a.messages == 0 || a.rate <= 0.0 || !a.rate.is_finite() {
        return Err("--messages and --rate must be positive".into());
    }
    Ok(a)
}

#[tokio::main]
async fn main() {
    let code = match args() {
        Ok(a) => match run(&a).await {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("mimi-bench: {e}");
                1
            }
        },
        Err(e) => {
            eprintln!("mimi-bench: {e}");
            2
        }
    };
    std::process::exit(code);
}

/// Who sends one direction's messages.
enum From<'a> {
    Irc(&'a IrcUser),
    Matrix(&'a Arc<MatrixClient>, &'a str),
    Xmpp(&'a mut XmppUser, &'a str),
    /// A native MLS client's `chat` session: each line written to it is encrypted and sent to the hub.
    Native(&'a mut std::process::ChildStdin),
}

impl From<'_> {
    async fn say(&mut self, text: &str) -> Result<(), String> {
        match self {
            From::Irc(u) => u.say(text).await,
            From::Matrix(c, room) => {
                let (c, room, text) = (Arc::clone(c), room.to_string(), text.to_owned());
                tokio::task::spawn_blocking(move || c.say(&room, &text)).await.map_err(|e| e.to_string())?
            }
            From::Xmpp(u, room) => u.say(room, text).await,
            From::Native(stdin) => {
                use std::io::Write;
                writeln!(stdin, "{text}").and_then(|()| stdin.flush()).map_err(|e| format!("native client: {e}"))
            }
        }
    }
}

/// Every sending client, to pick the sender of a direction.
struct Sides<'a> {
    mx: &'a Arc<MatrixClient>,
    room: &'a str,
    owner: &'a Arc<MatrixClient>,
    hb_room: &'a str,
    irc_mimi: &'a IrcUser,
    irc_heis: &'a IrcUser,
    irc_bib: &'a IrcUser,
    irc_pair: &'a IrcUser,
    xuser: &'a mut XmppUser,
    xbib: &'a mut XmppUser,
    bib_muc: &'a str,
    native: &'a mut std::process::ChildStdin,
}

impl Sides<'_> {
    /// The sender of direction `i` of [`DIRECTIONS`].
    fn from(&mut self, i: usize) -> From<'_> {
        match i {
            0 => From::Matrix(self.mx, self.room),
            1 => From::Matrix(self.owner, self.hb_room),
            2 | 6 => From::Irc(self.irc_mimi),
            3 => From::Irc(self.irc_heis),
            4 => From::Xmpp(self.xuser, OUR_MUC),
            5 => From::Xmpp(self.xbib, self.bib_muc),
            7 => From::Irc(self.irc_bib),
            8 => From::Native(self.native),
            9 => From::Xmpp(self.xuser, PAIR_MUC),
            _ => From::Irc(self.irc_pair),
        }
    }
}

/// Sends `n` messages of direction `dir` at `rate`, then waits (at most `wait`) for them at `reader`; also times
/// each send call (for a Matrix sender: until the homeserver has persisted the event and answered).
async fn direction(
    arrivals: &Arrivals,
    dir: usize,
    from: &mut From<'_>,
    reader: &str,
    n: usize,
    rate: f64,
    wait: Duration,
) -> Result<Sent, String> {
    let start = tokio::time::Instant::now();
    let mut sent = Vec::with_capacity(n);
    let mut calls = Vec::with_capacity(n);
    for i in 0..n {
        let m = marker(dir, i);
        let t0 = Instant::now();
        from.say(&format!("bench {m} the quick brown fox")).await?;
        calls.push(t0.elapsed());
        sent.push((m, t0));
        tokio::time::sleep_until(start + Duration::from_secs_f64((i + 1) as f64 / rate)).await;
    }
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline && sent.iter().any(|(m, _)| arrivals.get(reader, m).is_none()) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Late duplicates show up within a moment.
    tokio::time::sleep(Duration::from_millis(500)).await;
    calls.sort();
    Ok(Sent { summary: summarize(arrivals, reader, &sent), markers: sent, calls })
}

/// What [`direction`] sent and measured.
struct Sent {
    summary: Summary,
    /// Each marker with the instant just before its send call.
    markers: Vec<(String, Instant)>,
    /// How long each send call took, sorted.
    calls: Vec<Duration>,
}

/// Searches the highest rate direction `i` sustains (see [`sustained`]): trials of `trial` at the rates the search
/// picks, each with its own markers. After a trial that failed, what is still on its way drains (at most a
/// minute) before the next one starts, so that one trial's backlog does not fail the next.
async fn highest_sustained(
    arrivals: &Arrivals,
    i: usize,
    from: &mut From<'_>,
    reader: &str,
    trial: Duration,
) -> Result<RateSearch, String> {
    let mut search = RateSearch::new(1.0, 0.25, 64.0, 4);
    let mut trial_no = 0;
    while let Some(rate) = search.next() {
        let dir = 100 + i * 32 + trial_no;
        trial_no += 1;
        let n = ((rate * trial.as_secs_f64()).ceil() as usize).max(10);
        let summary = direction(arrivals, dir, from, reader, n, rate, sustained::LATE).await?.summary;
        // A sender that could not keep the pace (a Matrix send is one HTTP request) proves nothing about the
        // rate: the trial counts as not sustained, so the answer stays at what was really offered.
        let kept_pace = summary.send_rate >= rate * 0.95;
        let ok = sustained::sustained(&summary) && kept_pace;
        eprintln!(
            "mimi-bench: {reader} at {rate} msg/s (sent at {:.1}): {} sent, {} not arrived within {} s, max {:.0} ms: {}",
            summary.send_rate,
            summary.sent,
            summary.lost,
            sustained::LATE.as_secs(),
            summary.max_ms,
            if ok {
                "sustained"
            } else if kept_pace {
                "not sustained"
            } else {
                "the sender fell behind"
            }
        );
        search.record(rate, ok);
        if !ok {
            let want: Vec<String> = (0..n).map(|m| marker(dir, m)).collect();
            let drain = Instant::now() + Duration::from_secs(60);
            while Instant::now() < drain && !arrivals.missing(reader, &want).is_empty() {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    Ok(search)
}

/// Sends one unmeasured message and waits for it (creates ghosts and puppets before the clock runs).
async fn warm_up(arrivals: &Arrivals, dir: usize, from: &mut From<'_>, reader: &str) -> Result<(), String> {
    let s = direction(arrivals, dir, from, reader, 1, 1.0, Duration::from_secs(60)).await?.summary;
    if s.lost > 0 {
        return Err(format!("warm-up message {dir} never reached {reader}"));
    }
    Ok(())
}

fn run_cli(bin: &Path, args: &[&str]) -> Result<(), String> {
    let out = Command::new(bin).args(args).output().map_err(|e| format!("{}: {e}", bin.display()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{} {args:?}: {}{}",
            bin.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// What a report's header says of our Matrix account's `encryption` (nothing for the default).
fn encryption_note(a: &Args) -> &'static str {
    if a.matrix_encryption { "" } else { "; our Matrix account with `encryption = false`" }
}

/// The daemon's durable writes so far (`mimi_bridge_store_writes_total`).
const STORE_WRITES: &str = "mimi_bridge_store_writes_total";

fn our_config(
    dir: &Path,
    encryption: bool,
    homeserver: &str,
    ports: (u16, u16, u16),
    room: &str,
    irc: &str,
    prosody: &Prosody,
) -> String {
    let (as_port, admin_port, mimi_port) = ports;
    format!(
        "[bridge]\ndomain = \"bench.test\"\ndata_dir = {data:?}\n\n[mimi]\nlisten = \"127.0.0.1:{mimi_port}\"\n\n\
         [admin]\nlisten = \"127.0.0.1:{admin_port}\"\npublic_metrics = true\n\n[log]\nlevel = \"warn\"\n\n\
         [matrix.hs]\nmode = \"appservice\"\nhomeserver_url = \"{homeserver}\"\nserver_name = \"{SERVER_NAME}\"\n\
         listen = \"127.0.0.1:{as_port}\"\nas_token_file = {as_token:?}\nhs_token_file = {hs_token:?}\n\
         registration_id = \"mimi-bench\"\nencryption = {encryption}\n\n\
         [irc.net]\nserver = \"{irc}\"\nnick = \"mimibridge\"\n\n\
         [xmpp.x]\nmode = \"client\"\nserver = \"{c2s}\"\njid = \"mimibridge@localhost\"\npassword = \"pw\"\n\
         transport = \"insecure-tcp\"\nnick = \"mimi-bridge\"\n\n\
         [[portal]]\nname = \"bench\"\nlegs = [{{ account = \"matrix.hs\", room = \"{room}\" }}, \
         {{ account = \"irc.net\", room = \"#mimi\" }}, {{ account = \"xmpp.x\", room = \"{OUR_MUC}\" }}]\n\n\
         [[portal]]\nname = \"pair\"\nlegs = [{{ account = \"irc.net\", room = \"#pair\" }}, \
         {{ account = \"xmpp.x\", room = \"{PAIR_MUC}\" }}]\n",
        data = dir.join("data").display().to_string(),
        as_token = dir.join("as.token").display().to_string(),
        hs_token = dir.join("hs.token").display().to_string(),
        c2s = prosody.c2s_addr(),
    )
}

async fn run(a: &Args) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let d = dir.path();
    let arrivals = Arrivals::default();
    let e = |e: harness::HarnessError| e.to_string();
    let ngircd = Ngircd::start().map_err(e)?;
    let prosody = Prosody::start().map_err(e)?;
    for user in ["xuser", "xbib", "mimibridge"] {
        prosody.register(user, "pw").map_err(e)?;
    }

    // Registrations first: Synapse loads them at start.
    let ports = (harness::free_port().map_err(e)?, harness::free_port().map_err(e)?, harness::free_port().map_err(e)?);
    let admin: std::net::SocketAddr = ([127, 0, 0, 1], ports.1).into();
    let cfg = d.join("mimi-bridge.toml");
    let write = |text: String| std::fs::write(&cfg, text).map_err(|e| e.to_string());
    write(our_config(d, a.matrix_encryption, "http://127.0.0.1:1", ports, "!x:hs.bench", &ngircd.addr(), &prosody))?;
    let reg = d.join("mimi-registration.yaml");
    let cfg_s = cfg.to_str().ok_or("temp path is not UTF-8")?;
    run_cli(&a.bin, &["generate-registration", "--config", cfg_s, "--out", reg.to_str().ok_or("utf-8")?])?;
    let python = heisenbridge_python()?;
    let hb_port = harness::free_port().map_err(e)?;
    let hreg = d.join("heisenbridge.yaml");
    let out = Command::new(&python)
        .args(["-m", "heisenbridge", "-c"])
        .arg(&hreg)
        .args(["--generate", "--listen-address", "127.0.0.1", "--listen-port", &hb_port.to_string()])
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!("heisenbridge --generate: {}", String::from_utf8_lossy(&out.stderr)));
    }
    // The probe first: Synapse starts its pushes in the order of its registrations, so the probe's push is the
    // earliest a bridge's push can start. The probe costs Synapse work (it stores each transaction before sending
    // it, and pushes the probe every event of the rooms its users are in): runs with it compare with each other.
    let mut registrations = Vec::new();
    if a.push_probe {
        let probe = PushProbe::start(arrivals.clone()).map_err(|e| format!("push probe: {e}"))?;
        let preg = d.join("push-probe.yaml");
        probe.write_registration(&preg, &["mxuser", "hbowner"]).map_err(|e| e.to_string())?;
        registrations.push(preg);
    }
    registrations.extend([reg, hreg.clone()]);
    let hs = Arc::new(
        Synapse::start_with(SynapseOptions {
            appservice_registrations: registrations,
            server_name: Some(SERVER_NAME.into()),
        })
        .map_err(e)?,
    );
    let mx = Arc::new(MatrixClient::register(hs.clone(), "mxuser", arrivals.clone())?);
    let owner = Arc::new(MatrixClient::register(hs.clone(), "hbowner", arrivals.clone())?);
    let room = mx.call("POST", "/_matrix/client/v3/createRoom", Some(json!({"preset": "public_chat"})))?;
    let room = room["room_id"].as_str().ok_or("no room id")?.to_owned();

    // The three bridges.
    write(our_config(d, a.matrix_encryption, &hs.url(), ports, &room, &ngircd.addr(), &prosody))?;
    let mut ours = Proc::spawn(
        {
            let mut c = Command::new(&a.bin);
            c.args(["run", "--config", cfg_s]);
            c
        },
        &d.join("mimi-bridge.log"),
    )?;
    let mut heis = Proc::spawn(
        {
            let mut c = Command::new(&python);
            c.args(["-m", "heisenbridge", "-c"]).arg(&hreg);
            c.args(["-o", &owner.user.user_id, "-l", "127.0.0.1", "-p", &hb_port.to_string(), &hs.url()]);
            c
        },
        &d.join("heisenbridge.log"),
    )?;
    let biboumi_cfg = d.join("biboumi.cfg");
    std::fs::write(
        &biboumi_cfg,
        format!(
            "hostname={BIBOUMI_HOST}\npassword={}\nxmpp_server_ip=127.0.0.1\nport={}\ndb_name={}\nidentd_port=0\n\
             policy_directory={}\nlog_level=2\nrealname_customization=true\n",
            prosody.component_secret,
            prosody.component_port,
            d.join("biboumi.sqlite").display(),
            d.display()
        ),
    )
    .map_err(|e| e.to_string())?;
    let biboumi = harness::find_binary("biboumi", "apt-get install biboumi").map_err(e)?;
    let mut bib = Proc::spawn(
        {
            let mut c = Command::new(biboumi);
            c.arg(&biboumi_cfg);
            c
        },
        &d.join("biboumi.log"),
    )?;

    // Clients.
    let irc_mimi = IrcUser::join(&ngircd.addr(), "ircmimi", "#mimi", "irc:#mimi", arrivals.clone()).await?;
    let irc_heis = IrcUser::join(&ngircd.addr(), "ircheis", "#heis", "irc:#heis", arrivals.clone()).await?;
    let irc_bib = IrcUser::join(&ngircd.addr(), "ircbib", "#bibou", "irc:#bibou", arrivals.clone()).await?;
    let irc_pair = IrcUser::join(&ngircd.addr(), "ircpair", "#pair", "irc:#pair", arrivals.clone()).await?;
    let mut xuser = XmppUser::login(&prosody.c2s_addr(), "xuser", "xuser", arrivals.clone()).await?;
    let mut xbib = XmppUser::login(&prosody.c2s_addr(), "xbib", "xbib", arrivals.clone()).await?;

    // mimi-bridge ready: in the Matrix room, the IRC channel and the MUC.
    let bot = format!("@mimi-bridge:{SERVER_NAME}");
    let (mx2, room2) = (mx.clone(), room.clone());
    tokio::task::spawn_blocking(move || mx2.wait_member(&room2, &bot)).await.map_err(|e| e.to_string())??;
    irc_mimi.wait_member("mimibridge").await?;
    xuser.join(OUR_MUC).await?;
    xuser.wait_occupant(OUR_MUC, "mimi-bridge").await?;
    irc_pair.wait_member("mimibridge").await?;
    xuser.join(PAIR_MUC).await?;
    xuser.wait_occupant(PAIR_MUC, "mimi-bridge").await?;
    ours.alive("mimi-bridge")?;
    // A native MLS client in the portal's room, talking through a `chat` session (one process, lines on stdin).
    let server = format!("http://127.0.0.1:{}", ports.2);
    let native_state = d.join("native");
    let native_dir = native_state.to_str().ok_or("temp path is not UTF-8")?;
    let client = |args: &[&str]| {
        let mut all = vec!["client", "--state", native_dir, "--server", &server];
        all.extend_from_slice(args);
        run_cli(&a.bin, &all)
    };
    client(&["register", "nativeuser"])?;
    client(&["join", OUR_ROOM])?;
    let chat_log = std::fs::File::create(d.join("native-chat.log")).map_err(|e| e.to_string())?;
    let mut chat = Command::new(&a.bin)
        .args(["client", "--state", native_dir, "--server", &server, "chat", OUR_ROOM])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(chat_log)
        .spawn()
        .map_err(|e| format!("native chat: {e}"))?;
    let mut native = chat.stdin.take().ok_or("native chat has no stdin")?;

    // heisenbridge: control room → network → channel, as its README scripts it.
    let irc_port = ngircd.addr().rsplit(':').next().unwrap_or_default().to_owned();
    let owner2 = owner.clone();
    let port2 = irc_port.clone();
    let hb_room = tokio::task::spawn_blocking(move || -> Result<String, String> {
        let control = owner2.accept_next_invite(&[])?;
        for cmd in ["ADDNETWORK bench".to_owned(), format!("ADDSERVER bench 127.0.0.1 {port2}"), "OPEN bench".into()] {
            owner2.say(&control, &cmd)?;
            std::thread::sleep(Duration::from_millis(500));
        }
        let network = owner2.accept_next_invite(std::slice::from_ref(&control))?;
        owner2.say(&network, "NICK mxbench")?;
        std::thread::sleep(Duration::from_millis(500));
        owner2.say(&network, "CONNECT")?;
        owner2.wait_body(&network, "heisenbridge connecting", |b| b.contains("Welcome"))?;
        owner2.say(&network, "JOIN #heis")?;
        owner2.accept_next_invite(&[control, network])
    })
    .await
    .map_err(|e| e.to_string())?;
    let hb_room = hb_room.map_err(|e| format!("{e}\n{}", heis.alive("heisenbridge").err().unwrap_or_default()))?;
    irc_heis.wait_member("mxbench").await?;

    // biboumi: point it at ngIRCd's port, throttle off (its strongest setting), then join through it.
    let bib_muc = format!("#bibou%127.0.0.1@{BIBOUMI_HOST}");
    xbib.ad_hoc(
        &format!("127.0.0.1@{BIBOUMI_HOST}"),
        "configure",
        &[("ports", &[irc_port.as_str()]), ("tls_ports", &[]), ("throttle_limit", &["-1"])],
    )
    .await
    .map_err(|e| format!("{e}\n{}", bib.alive("biboumi").err().unwrap_or_default()))?;
    xbib.join(&bib_muc).await?;
    irc_bib.wait_member("xbib").await?;

    // Where each direction of DIRECTIONS is read, in its order.
    let readers = [
        "irc:#mimi".to_owned(),
        "irc:#heis".to_owned(),
        format!("mx:{room}"),
        format!("mx:{hb_room}"),
        "irc:#mimi".to_owned(),
        "irc:#bibou".to_owned(),
        format!("xmpp:{OUR_MUC}"),
        format!("xmpp:{bib_muc}"),
        "irc:#mimi".to_owned(),
        "irc:#pair".to_owned(),
        format!("xmpp:{PAIR_MUC}"),
    ];
    let mut sides = Sides {
        mx: &mx,
        room: &room,
        owner: &owner,
        hb_room: &hb_room,
        irc_mimi: &irc_mimi,
        irc_heis: &irc_heis,
        irc_bib: &irc_bib,
        irc_pair: &irc_pair,
        xuser: &mut xuser,
        xbib: &mut xbib,
        bib_muc: &bib_muc,
        native: &mut native,
    };
    // Warm-up: ghosts, puppets and connections exist before the clock runs.
    for (i, reader) in readers.iter().enumerate() {
        // Markers 50 + i: apart from the measured directions' (1 + i) and the rate search's (100 and up).
        warm_up(&arrivals, 50 + i, &mut sides.from(i), reader).await?;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss = [("mimi-bridge (2 portals, 5 legs)", ours.pid()), ("heisenbridge", heis.pid()), ("biboumi", bib.pid())]
        .map(|(n, pid)| (n, [rss_kib(pid), status_kib(pid, "RssAnon"), status_kib(pid, "RssFile")]));
    if let Ok(to) = std::env::var("MIMI_BENCH_SMAPS") {
        let _ = std::fs::copy(format!("/proc/{}/smaps", ours.pid()), to);
    }

    if a.sustained {
        let mut rows = Vec::new();
        for (i, ((what, bridge), reader)) in DIRECTIONS.iter().zip(&readers).enumerate() {
            let search = highest_sustained(&arrivals, i, &mut sides.from(i), reader, a.trial).await?;
            ours.alive("mimi-bridge")?;
            rows.push((what, bridge, search));
        }
        println!(
            "Highest rate sustained: every message arrived once, none later than {} s; trials of {} s each{}\n",
            sustained::LATE.as_secs(),
            a.trial.as_secs(),
            encryption_note(a)
        );
        println!("| direction | bridge | highest sustained msg/s | trials (msg/s: ✓ sustained, ✗ not) |");
        println!("|---|---|---:|---|");
        for (what, bridge, search) in rows {
            let best = match search.result() {
                Some(r) if search.hit_ceiling() => format!("≥ {r}"),
                Some(r) => format!("{r}"),
                None => "< 0.25".into(),
            };
            let trials: Vec<String> =
                search.trials().iter().map(|(r, ok)| format!("{r} {}", if *ok { "✓" } else { "✗" })).collect();
            println!("| {what} | {bridge} | {best} | {} |", trials.join(", "));
        }
        return Ok(());
    }

    let (n, rate, wait) = (a.messages, a.rate, a.wait);
    let mut rows: Vec<(&str, &str, Summary, Option<f64>)> = Vec::new();
    let mut pushed = Vec::new();
    for (i, ((what, bridge), reader)) in DIRECTIONS.iter().zip(&readers).enumerate() {
        let before = daemon_metric(admin, STORE_WRITES);
        let sent = direction(&arrivals, i + 1, &mut sides.from(i), reader, n, rate, wait).await?;
        let writes = match (*bridge, before, daemon_metric(admin, STORE_WRITES)) {
            (b, Some(before), Some(after)) if b.starts_with("mimi-bridge") => Some((after - before) / n as f64),
            _ => None,
        };
        if a.push_probe && what.starts_with("Matrix") {
            let after_push = gaps(&arrivals, push_probe::READER, reader, &sent.markers);
            let push = summarize(&arrivals, push_probe::READER, &sent.markers);
            pushed.push((*what, *bridge, median_ms(&sent.calls), push, median_ms(&after_push), sent.summary.p50_ms));
        }
        rows.push((what, bridge, sent.summary, writes));
    }
    ours.alive("mimi-bridge")?;

    println!(
        "{n} messages at {rate} msg/s per direction (latency: send call → arrival at the reading client{})\n",
        encryption_note(a)
    );
    println!(
        "| direction | bridge | sent | p50 ms | p99 ms | max ms | not arrived | duplicated | durable writes/msg |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|");
    for (what, bridge, s, writes) in &rows {
        let writes = writes.map_or("–".to_string(), |w| format!("{w:.1}"));
        println!(
            "| {what} | {bridge} | {} | {:.1} | {:.1} | {:.1} | {} | {} | {writes} |",
            s.sent, s.p50_ms, s.p99_ms, s.max_ms, s.lost, s.duplicates
        );
    }
    if a.push_probe {
        println!(
            "\nWhere a Matrix message's time goes (p50 ms, each from the send call; \"after the push\": per message, \
             from the push to the probe to the arrival)\n"
        );
        println!(
            "| direction | bridge | homeserver answered the send | pushed to an appservice (probe) | arrived | after \
             the push | pushes not seen |"
        );
        println!("|---|---|---:|---:|---:|---:|---:|");
        for (what, bridge, call, push, after, arrived) in &pushed {
            println!(
                "| {what} | {bridge} | {call:.1} | {:.1} | {arrived:.1} | {after:.1} | {} |",
                push.p50_ms, push.lost
            );
        }
    }
    println!("\n| idle RSS after warm-up | MiB | of which anonymous | of which files (code, libraries) |");
    println!("|---|---:|---:|---:|");
    for (name, [all, anon, file]) in rss {
        let mib = |kib: Option<u64>| kib.map_or("?".to_string(), |k| format!("{:.1}", k as f64 / 1024.0));
        println!("| {name} | {} | {} | {} |", mib(all), mib(anon), mib(file));
    }
    Ok(())
}
