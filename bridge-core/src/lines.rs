//! Reading a line-based network protocol without trusting the peer: lines are bounded, so a server that sends
//! garbage or a 10 MB "line" cannot exhaust memory. For connectors (IRC, line protocols); IO-generic.

use tokio::io::{AsyncBufRead, AsyncBufReadExt};

/// One read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// A line, without its `\r\n` / `\n`; invalid UTF-8 replaced (line protocols rarely declare an encoding).
    Text(String),
    /// A line longer than the limit: it was consumed and dropped (never buffered beyond the limit).
    TooLong,
}

/// Reads the next line of at most `max` bytes (without the terminator). `Ok(None)` at end of stream.
pub async fn read_bounded_line<R: AsyncBufRead + Unpin>(r: &mut R, max: usize) -> std::io::Result<Option<Line>> {
    let mut buf = Vec::new();
    let mut overlong = false;
    loop {
        let chunk = r.fill_buf().await?;
        if chunk.is_empty() {
            return Ok(None);
        }
        let (take, done) = match chunk.iter().position(|b| *b == b'\n') {
            Some(i) => (i + 1, true),
            None => (chunk.len(), false),
        };
        if !overlong {
            buf.extend_from_slice(&chunk[..take]);
            // +2 for the terminator, which does not count against the limit.
            if buf.len() > max + 2 {
                overlong = true;
                buf = Vec::new();
            }
        }
        r.consume(take);
        if done {
            if overlong {
                return Ok(Some(Line::TooLong));
            }
            while matches!(buf.last(), Some(b'\n' | b'\r')) {
                buf.pop();
            }
            return Ok(Some(Line::Text(String::from_utf8_lossy(&buf).into_owned())));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bounded_lines() {
        let big = "x".repeat(10 * 1024 * 1024);
        let mut input = format!("a\r\nbb\n{big}\nc").into_bytes();
        input.extend_from_slice(b"\xff\nlast");
        let mut r = tokio::io::BufReader::with_capacity(64, input.as_slice());
        assert_eq!(read_bounded_line(&mut r, 8).await.expect("io"), Some(Line::Text("a".into())));
        assert_eq!(read_bounded_line(&mut r, 8).await.expect("io"), Some(Line::Text("bb".into())));
        assert_eq!(read_bounded_line(&mut r, 8).await.expect("io"), Some(Line::TooLong));
        assert_eq!(read_bounded_line(&mut r, 8).await.expect("io"), Some(Line::Text("c\u{FFFD}".into())));
        // An unterminated last line is not a line.
        assert_eq!(read_bounded_line(&mut r, 8).await.expect("io"), None);
    }
}
