//! Flood control against the two ways servers pace a fast client (`connector_irc::pace`): a stock ngIRCd, which
//! delays a client's input (the bridge with its default config must reach ≥ 90 % of the rate a plain client gets,
//! no loss, in order), and a test server that queues input at k lines/s and kills with "Excess Flood" above
//! solanum's default queue of 20 lines (the default config is never killed; a fixed rate above k is).

mod common;

use bridge_api::event::{InboundKind, MessageDraft};
use common::fake_ircd::FakeIrcd;
use common::{BRIDGE, CHANNEL, Client, Slice, slice, sustained_rate};
use connector_irc::flood::Bucket;
use connector_irc::message::Message;
use connector_irc::pace::DEFAULT_WINDOW_LINES;
use harness::Ngircd;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// The relay prefix the bridge puts before alice's text (a zero-width space keeps her name from highlighting).
const PREFIX: &str = "<a\u{200B}lice> ";

/// Message `i` as alice's body: with the prefix, `PRIVMSG #kit :<a​lice> n0007 xxx…\r\n` is 63 bytes on the wire.
fn body(i: usize) -> String {
    format!("n{i:04} {}", "x".repeat(30))
}

/// Sends `n` messages from alice through the bridge, in order, from a task of its own.
fn relay(s: &Slice, n: usize) -> tokio::task::JoinHandle<()> {
    let lb = s.lb.clone();
    tokio::spawn(async move {
        for i in 0..n {
            let kind = InboundKind::Message { draft: MessageDraft::plain(body(i)), reply_to: None };
            lb.say_with_id("#lb", "alice", &format!("f{i}"), kind).await.expect("accepted");
        }
    })
}

/// Channel PRIVMSGs from `from` as the client sees them, with their arrival times, until `n` or `timeout`.
async fn arrivals(c: &mut Client, from: &str, n: usize, timeout: Duration) -> (Vec<Instant>, Vec<String>) {
    let (mut times, mut texts) = (Vec::new(), Vec::new());
    let deadline = tokio::time::Instant::now() + timeout;
    while texts.len() < n {
        match tokio::time::timeout_at(deadline, c.lines.recv()).await {
            Ok(Some(m)) if m.command == "PRIVMSG" && m.source_nick() == Some(from) => {
                times.push(Instant::now());
                texts.push(m.param(1).unwrap_or_default().to_owned());
            }
            Ok(Some(_)) => {}
            _ => break,
        }
    }
    (times, texts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_config_keeps_up_with_what_stock_ngircd_allows_a_plain_client() {
    const N: usize = 40;
    const SKIP: usize = 4;
    let server = Ngircd::start().expect("ngircd (stock flood control)");
    let mut reader = Client::connect(server.port, "reader", CHANNEL).await.expect("reader");
    let want: Vec<String> = (0..N).map(|i| format!("{PREFIX}{}", body(i))).collect();
    assert_eq!(format!("PRIVMSG {CHANNEL} :{}\r\n", want[0]).len(), 63, "63-byte lines, prefix included");

    // What the server sustains for a plain client writing the same lines as fast as it can.
    let plain = Client::connect(server.port, "plain", CHANNEL).await.expect("plain client");
    let started = Instant::now();
    for text in &want {
        plain.say(CHANNEL, text);
    }
    let (times, got) = arrivals(&mut reader, "plain", N, Duration::from_secs(40)).await;
    assert_eq!(got, want, "the plain client's lines, all in order");
    let plain_rate = sustained_rate(&times, SKIP);
    println!("plain client: {N} lines in {:?}, sustained {plain_rate:.2} lines/s", started.elapsed());

    // The same lines through the bridge, default config.
    let s = slice(&server.addr(), |_| {}).await;
    let started = Instant::now();
    let sender = relay(&s, N);
    let (times, got) = arrivals(&mut reader, BRIDGE, N, Duration::from_secs(40)).await;
    sender.await.expect("sender");
    assert_eq!(got, want, "every message, once, in order");
    let bridge_rate = sustained_rate(&times, SKIP);
    println!(
        "bridge: {N} lines in {:?}, sustained {bridge_rate:.2} lines/s = {:.0} % of the plain client",
        started.elapsed(),
        100.0 * bridge_rate / plain_rate
    );
    assert!(bridge_rate >= 0.9 * plain_rate, "bridge {bridge_rate:.2} lines/s < 90 % of {plain_rate:.2}");
    s.router.shutdown().await;
}

/// solanum's default `client_flood_max_lines`.
const MAX_QUEUE: usize = 20;
/// The test server's pace (real servers: 1–2 lines/s; faster here to keep the test short). Our PONGs to its
/// keepalive PINGs take 2 of these lines a second.
const RATE: f64 = 20.0;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_queues_input_never_kills_the_default_config() {
    const N: usize = 240;
    let server = FakeIrcd::start(RATE, MAX_QUEUE).await;
    let s = slice(&server.addr(), |_| {}).await;
    let started = Instant::now();
    relay(&s, N).await.expect("sender");
    let deadline = Instant::now() + Duration::from_secs(60);
    while server.seen().delivered.len() < N && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seen = server.seen();
    let took = started.elapsed();
    let texts: Vec<String> = seen.delivered.iter().map(|(_, t)| t.clone()).collect();
    let want: Vec<String> = (0..N).map(|i| format!("{PREFIX}{}", body(i))).collect();
    assert_eq!(texts, want, "all {N}, once, in order");
    assert_eq!((seen.kills, seen.connections), (0, 1), "never disconnected");
    assert_eq!(*s.account.health().borrow(), bridge_api::Health::Connected);
    // The server's keepalive PINGs were answered all along (the last may still be in its queue).
    let (pings, pongs) = (seen.server_pings, seen.server_pongs);
    assert!(pings >= 10 && pongs + 1 >= pings, "{pongs} PONGs to {pings} server PINGs");
    // The server's queue stayed within the window (our PING and JOIN included), and the pace was the server's.
    assert!(seen.max_queue <= DEFAULT_WINDOW_LINES as usize, "queue reached {} lines", seen.max_queue);
    let times: Vec<Instant> = seen.delivered.iter().map(|(t, _)| *t).collect();
    let rate = sustained_rate(&times, 10);
    println!("{N} lines in {took:?}: sustained {rate:.1} lines/s (server: {RATE}), queue ≤ {}", seen.max_queue);
    assert!(rate >= 0.8 * RATE * 14.0 / 15.0, "{rate:.1} lines/s: not the server's pace");
    s.router.shutdown().await;
}

/// The old fixed pacing (a token bucket, burst 5) at twice the server's pace: the same server kills it, so the
/// test above can fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_server_kills_a_fixed_rate_above_its_pace() {
    let server = FakeIrcd::start(RATE, MAX_QUEUE).await;
    let s = TcpStream::connect(("127.0.0.1", server.port)).await.expect("connect");
    let (r, mut w) = s.into_split();
    let mut lines = BufReader::new(r).lines();
    w.write_all(b"NICK fixed\r\nUSER fixed 0 * :fixed\r\nJOIN #kit\r\n").await.expect("register");
    let writer = tokio::spawn(async move {
        let mut bucket = Bucket::new(5, 2.0 * RATE, Instant::now());
        for i in 0..400 {
            while !bucket.try_take(Instant::now()) {
                tokio::time::sleep_until(bucket.ready_at(Instant::now()).into()).await;
            }
            let line = format!("PRIVMSG {CHANNEL} :{PREFIX}{}\r\n", body(i));
            if w.write_all(line.as_bytes()).await.is_err() {
                return i;
            }
        }
        400
    });
    let mut error = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while let Ok(Ok(Some(l))) = tokio::time::timeout_at(deadline, lines.next_line()).await {
        if let Ok(m) = Message::parse(&l)
            && m.command == "ERROR"
        {
            error = m.param(0).map(str::to_owned);
            break;
        }
    }
    writer.abort();
    let error = error.expect("the server closed the link");
    assert!(error.contains("Excess Flood"), "{error}");
    let seen = server.seen();
    assert_eq!(seen.kills, 1);
    println!("killed after {} lines processed: {error}", seen.delivered.len());
}
