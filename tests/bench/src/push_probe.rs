//! An application service that only listens: it notes when the homeserver pushes it each benchmark message.
//!
//! Both Matrix bridges of the benchmark are fed by Synapse's appservice pusher, which sends a transaction only after
//! the event is persisted. A third appservice, registered beside them with a (non-exclusive) namespace of the
//! benchmark's Matrix senders, receives the same events from the same pusher: the instant its transaction arrives
//! is the earliest any appservice bridge could start relaying a message. It answers every transaction `200 {}` and
//! notes its markers (reader [`READER`]); it serves nothing else (`404`).

use crate::measure::Arrivals;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;

/// The reader name of the probe's arrivals.
pub const READER: &str = "as-push";

/// A running probe: its listener thread lives as long as the benchmark process.
pub struct PushProbe {
    port: u16,
}

impl PushProbe {
    /// Listens on a free loopback port; every connection is served by a thread of its own.
    pub fn start(arrivals: Arrivals) -> std::io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0))?;
        let port = listener.local_addr()?.port();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let arrivals = arrivals.clone();
                std::thread::spawn(move || serve(stream, &arrivals));
            }
        });
        Ok(Self { port })
    }

    /// Writes the probe's registration for Synapse: interested (not exclusively) in events of `senders`
    /// (localparts, any server name).
    pub fn write_registration(&self, path: &Path, senders: &[&str]) -> std::io::Result<()> {
        let users: String =
            senders.iter().map(|s| format!("    - exclusive: false\n      regex: \"@{s}:.*\"\n")).collect();
        // Loopback only, for the length of one benchmark run: the tokens need not be secret.
        let yaml = format!(
            "id: bench-push-probe\nurl: http://127.0.0.1:{}\nas_token: bench-probe-as-{pid}\n\
             hs_token: bench-probe-hs-{pid}\nsender_localpart: benchpushprobe\nrate_limited: false\n\
             namespaces:\n  users:\n{users}  aliases: []\n  rooms: []\n",
            self.port,
            pid = std::process::id()
        );
        std::fs::write(path, yaml)
    }
}

/// Serves the requests of one keep-alive connection until it closes or sends what this does not read.
fn serve(stream: TcpStream, arrivals: &Arrivals) {
    let Ok(mut out) = stream.try_clone() else { return };
    let mut reader = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut length = 0usize;
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap_or(0);
                } else if name.eq_ignore_ascii_case("transfer-encoding") {
                    // Synapse sends its JSON bodies with a length; anything else ends the connection.
                    return;
                }
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let is_transaction = request_line.starts_with("PUT ") && request_line.contains("/transactions/");
        let (status, body) = if is_transaction {
            arrivals.saw(READER, &String::from_utf8_lossy(&body));
            ("200 OK", "{}")
        } else {
            ("404 Not Found", r#"{"errcode":"M_NOT_FOUND","error":"a probe serves only transactions"}"#)
        };
        let answer = format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        if out.write_all(answer.as_bytes()).and_then(|()| out.flush()).is_err() {
            return;
        }
    }
}
