//! An IRC user for the benchmark: registers, joins one channel, sends lines, and notes every marker it reads.

use crate::measure::Arrivals;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::Mutex as AsyncMutex;

/// One IRC connection in one channel.
pub struct IrcUser {
    /// The channel.
    pub channel: String,
    writer: Arc<AsyncMutex<OwnedWriteHalf>>,
    lines: Arc<Mutex<Vec<String>>>,
}

impl IrcUser {
    /// Connects as `nick`, joins `channel` and notes markers under the reader name `reader`.
    pub async fn join(addr: &str, nick: &str, channel: &str, reader: &str, arrivals: Arrivals) -> Result<Self, String> {
        let tcp = TcpStream::connect(addr).await.map_err(|e| format!("IRC {addr}: {e}"))?;
        tcp.set_nodelay(true).map_err(|e| e.to_string())?;
        let (r, w) = tcp.into_split();
        let writer = Arc::new(AsyncMutex::new(w));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (pong, lines2, reader) = (writer.clone(), lines.clone(), reader.to_owned());
        tokio::spawn(async move {
            let mut r = BufReader::new(r).lines();
            while let Ok(Some(line)) = r.next_line().await {
                if let Some(token) = line.strip_prefix("PING ") {
                    let _ = pong.lock().await.write_all(format!("PONG {token}\r\n").as_bytes()).await;
                    continue;
                }
                if line.contains(" PRIVMSG ") {
                    arrivals.saw(&reader, &line);
                }
                lines2.lock().unwrap_or_else(|e| e.into_inner()).push(line);
            }
        });
        let u = Self { channel: channel.to_owned(), writer, lines };
        u.raw(&format!("NICK {nick}\r\nUSER {nick} 0 * :{nick}\r\n")).await?;
        u.wait(|l| l.split(' ').nth(1) == Some("001"), "IRC welcome").await?;
        u.raw(&format!("JOIN {channel}\r\n")).await?;
        u.wait(|l| l.split(' ').nth(1) == Some("366"), "IRC join").await?;
        Ok(u)
    }

    async fn raw(&self, s: &str) -> Result<(), String> {
        self.writer.lock().await.write_all(s.as_bytes()).await.map_err(|e| format!("IRC send: {e}"))
    }

    /// Sends `text` to the channel.
    pub async fn say(&self, text: &str) -> Result<(), String> {
        self.raw(&format!("PRIVMSG {} :{text}\r\n", self.channel)).await
    }

    /// Leaves IRC with QUIT `reason` (the server then closes the connection).
    pub async fn quit(&self, reason: &str) -> Result<(), String> {
        self.raw(&format!("QUIT :{reason}\r\n")).await
    }

    /// Every line read so far (PINGs excepted), as it came.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Waits (30 s at most) until a line read so far satisfies `pred`.
    pub async fn wait(&self, pred: impl Fn(&str) -> bool, what: &str) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self.lines.lock().unwrap_or_else(|e| e.into_inner()).iter().any(|l| pred(l)) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("{what}: not seen within 30 s on IRC"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until `nick` is in the channel (a JOIN or the NAMES list).
    pub async fn wait_member(&self, nick: &str) -> Result<(), String> {
        let nick = nick.to_owned();
        self.wait(
            move |l| {
                let joined = l.starts_with(&format!(":{nick}!")) && l.contains(" JOIN ");
                let named = l.split(' ').nth(1) == Some("353")
                    && l.rsplit(':')
                        .next()
                        .is_some_and(|n| n.split(' ').any(|n| n.trim_start_matches(['@', '+']) == nick));
                joined || named
            },
            "the bridge joining the IRC channel",
        )
        .await
    }
}
