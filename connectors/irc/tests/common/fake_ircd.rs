//! A small IRC server standing for the servers that queue a fast client's input and process it at their own pace
//! ("fake lag": solanum, ircd-hybrid, InspIRCd, UnrealIRCd): it reads everything at once, processes at most `rate`
//! lines/s after a burst of 5 (PINGs answered in order with the other lines), and closes the link with
//! `ERROR :Closing Link: 127.0.0.1 (Excess Flood)` when more than `max_queue` lines wait — solanum's default is
//! 20 lines (`client_flood_max_lines`). It PINGs its clients every 500 ms and counts their PONGs. No CAP, no
//! channels beyond JOIN echoes: registration is NICK + USER.

use connector_irc::message::Message;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// What the server saw, over all connections.
#[derive(Debug, Clone, Default)]
pub struct Seen {
    /// PRIVMSG texts in the order processed, with the time processed.
    pub delivered: Vec<(Instant, String)>,
    /// Connections accepted.
    pub connections: usize,
    /// Connections closed for Excess Flood.
    pub kills: usize,
    /// Most lines ever waiting in one connection's queue.
    pub max_queue: usize,
    /// PINGs the server sent its clients (every 500 ms, as keepalives), and PONGs it got back for them.
    pub server_pings: usize,
    /// See `server_pings`.
    pub server_pongs: usize,
}

/// The server, on a free loopback port; stops when dropped.
pub struct FakeIrcd {
    /// Its port.
    pub port: u16,
    seen: Arc<Mutex<Seen>>,
    task: JoinHandle<()>,
}

impl FakeIrcd {
    /// Starts a server processing `rate` lines/s per client, killing a client with more than `max_queue` waiting.
    pub async fn start(rate: f64, max_queue: usize) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let shared = seen.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                shared.lock().expect("lock").connections += 1;
                tokio::spawn(serve(stream, rate, max_queue, shared.clone()));
            }
        });
        Self { port, seen, task }
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// What it saw so far.
    pub fn seen(&self) -> Seen {
        self.seen.lock().expect("lock").clone()
    }
}

impl Drop for FakeIrcd {
    fn drop(&mut self) {
        self.task.abort();
    }
}

const NAME: &str = "fake.test";

async fn serve(stream: TcpStream, rate: f64, max_queue: usize, seen: Arc<Mutex<Seen>>) {
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r).lines();
    let mut queue: VecDeque<String> = VecDeque::new();
    let mut client = Client::default();
    let (mut budget, mut at) = (5.0_f64, Instant::now());
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let mut keepalive = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            biased;
            // Everything the client sends is read at once and queued (its recvq)…
            line = lines.next_line() => {
                let Ok(Some(line)) = line else { return };
                queue.push_back(line);
                let flood = {
                    let mut s = seen.lock().expect("lock");
                    s.max_queue = s.max_queue.max(queue.len());
                    s.kills += usize::from(queue.len() > max_queue);
                    queue.len() > max_queue
                };
                if flood {
                    let _ = w.write_all(b"ERROR :Closing Link: 127.0.0.1 (Excess Flood)\r\n").await;
                    return;
                }
            }
            // The server's own PINGs, which the client must answer (in its queue, like any line).
            _ = keepalive.tick(), if client.registered => {
                let n = {
                    let mut s = seen.lock().expect("lock");
                    s.server_pings += 1;
                    s.server_pings
                };
                if w.write_all(format!("PING :{NAME}-{n}\r\n").as_bytes()).await.is_err() {
                    return;
                }
            }
            // …and processed at the server's pace.
            _ = tick.tick() => {
                let now = Instant::now();
                budget = (budget + (now - at).as_secs_f64() * rate).min(5.0);
                at = now;
                while budget >= 1.0 {
                    let Some(line) = queue.pop_front() else { break };
                    budget -= 1.0;
                    let Ok(m) = Message::parse(&line) else { continue };
                    let Some(reply) = client.process(&m, &seen) else { return };
                    if w.write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}

#[derive(Default)]
struct Client {
    nick: String,
    user: bool,
    registered: bool,
}

impl Client {
    /// The lines to send back (possibly none); `None` to close the link.
    fn process(&mut self, m: &Message, seen: &Mutex<Seen>) -> Option<String> {
        let p0 = m.param(0).unwrap_or_default().to_owned();
        let mut out = String::new();
        match m.command.as_str() {
            "NICK" => self.nick = p0,
            "USER" => self.user = true,
            "JOIN" => out = format!(":{}!u@127.0.0.1 JOIN {p0}\r\n", self.nick),
            "PING" => out = format!(":{NAME} PONG {NAME} :{p0}\r\n"),
            "PONG" if m.params.iter().any(|p| p.starts_with(NAME)) => seen.lock().expect("lock").server_pongs += 1,
            "PRIVMSG" => {
                let text = m.param(1).unwrap_or_default().to_owned();
                seen.lock().expect("lock").delivered.push((Instant::now(), text));
            }
            "QUIT" => return None,
            _ => {}
        }
        if !self.registered && self.user && !self.nick.is_empty() {
            self.registered = true;
            out.push_str(&format!(":{NAME} 001 {} :Welcome\r\n", self.nick));
        }
        Some(out)
    }
}
