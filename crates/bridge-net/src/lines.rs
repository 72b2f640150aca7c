//! Reading a line-based network protocol without trusting the peer: lines are bounded, so a server that sends
//! garbage or a 10 MB "line" cannot exhaust memory. For connectors of line protocols (IRC, the template's toychat).

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

/// One read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineRead {
    /// A line, without its `\r\n` / `\n`; invalid UTF-8 replaced (line protocols rarely declare an encoding).
    Text(String),
    /// A line longer than the limit: it was consumed and dropped (never buffered beyond the limit).
    TooLong,
}

/// A bounded line reader. [`LineReader::next`] is cancel-safe: a partial line stays in the reader across calls,
/// so it can sit in a `tokio::select!` beside other branches without losing data when another branch wins.
pub struct LineReader<R> {
    inner: BufReader<R>,
    buf: Vec<u8>,
    overlong: bool,
    max: usize,
}

impl<R: AsyncRead + Unpin> LineReader<R> {
    /// Reads lines of at most `max` bytes (without the terminator) from `inner`.
    pub fn new(inner: R, max: usize) -> Self {
        Self { inner: BufReader::with_capacity(16 * 1024, inner), buf: Vec::new(), overlong: false, max }
    }

    /// The next line; `Ok(None)` at the end of the stream (an unterminated last line is not a line).
    pub async fn next(&mut self) -> std::io::Result<Option<LineRead>> {
        loop {
            let chunk = self.inner.fill_buf().await?;
            if chunk.is_empty() {
                return Ok(None);
            }
            let (take, done) = match chunk.iter().position(|b| *b == b'\n') {
                Some(i) => (i + 1, true),
                None => (chunk.len(), false),
            };
            if !self.overlong {
                self.buf.extend_from_slice(&chunk[..take]);
                // +2 for the terminator, which does not count against the limit.
                if self.buf.len() > self.max + 2 {
                    self.overlong = true;
                    self.buf = Vec::new();
                }
            }
            self.inner.consume(take);
            if done {
                if std::mem::take(&mut self.overlong) {
                    return Ok(Some(LineRead::TooLong));
                }
                let mut line = std::mem::take(&mut self.buf);
                while matches!(line.last(), Some(b'\n' | b'\r')) {
                    line.pop();
                }
                return Ok(Some(LineRead::Text(String::from_utf8_lossy(&line).into_owned())));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn bounded_lines() {
        let big = "x".repeat(10 * 1024 * 1024);
        let mut input = format!("a\r\nbb\n{big}\nc").into_bytes();
        input.extend_from_slice(b"\xff\nlast");
        let mut r = LineReader::new(input.as_slice(), 8);
        assert_eq!(r.next().await.expect("io"), Some(LineRead::Text("a".into())));
        assert_eq!(r.next().await.expect("io"), Some(LineRead::Text("bb".into())));
        assert_eq!(r.next().await.expect("io"), Some(LineRead::TooLong));
        assert_eq!(r.next().await.expect("io"), Some(LineRead::Text("c\u{FFFD}".into())));
        assert_eq!(r.next().await.expect("io"), None);
    }

    #[tokio::test]
    async fn a_cancelled_read_keeps_the_partial_line() {
        let (mut tx, rx) = tokio::io::duplex(64);
        let mut r = LineReader::new(rx, 100);
        tx.write_all(b"hel").await.expect("write");
        // The read is cancelled while half a line is buffered…
        let cancelled = tokio::time::timeout(std::time::Duration::from_millis(50), r.next()).await;
        assert!(cancelled.is_err());
        // …and the rest completes the same line.
        tx.write_all(b"lo\n").await.expect("write");
        assert_eq!(r.next().await.expect("io"), Some(LineRead::Text("hello".into())));
    }
}
