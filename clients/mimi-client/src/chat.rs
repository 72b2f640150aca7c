//! `chat`: a person's session in one room. Messages are printed as they arrive (see [`crate::render`]); every
//! line read from standard input is sent, as `send` would send it (`/me ACTION` is an emote). `/quit` or the end
//! of the input ends the session. Standard output carries only the room's messages; notes go to standard error.

use crate::api;
use crate::messages::{Outgoing, send};
use crate::render::Transcript;
use crate::room;
use crate::session::{Res, Session};
use std::io::{BufRead, Write};
use std::time::Duration;
use tokio::sync::mpsc;

/// How long one request for news may wait at the server (seconds); a typed line interrupts it.
const POLL_SECS: u64 = 25;

/// The help text of `/help`.
const HELP: &str =
    "type a line to send it; /me ACTION sends an emote; //TEXT sends /TEXT; /quit (or end of input) ends";

/// What a typed line asks for.
#[derive(Debug, PartialEq, Eq)]
enum Typed<'a> {
    /// Send this text.
    Say(&'a str),
    /// End the session.
    Quit,
    /// Print [`HELP`].
    Help,
    /// A `/command` we do not know.
    Unknown(&'a str),
}

fn parse(line: &str) -> Typed<'_> {
    let line = line.trim_end_matches(['\r', '\n']);
    match line {
        "/quit" => Typed::Quit,
        "/help" => Typed::Help,
        _ if line.starts_with("/me ") => Typed::Say(line),
        _ if line.starts_with("//") => Typed::Say(&line[1..]),
        _ if line.starts_with('/') => Typed::Unknown(line.split_whitespace().next().unwrap_or(line)),
        _ => Typed::Say(line),
    }
}

/// Chats in `room` (a URI) with standard input and output.
pub async fn chat(s: &mut Session, room: &str) -> Res<()> {
    eprintln!("{} in {room}; /help lists the commands", s.st.uri);
    converse(s, room, stdin_lines(), &mut std::io::stdout()).await
}

/// The lines of standard input, read by a thread of their own (a blocking read cannot be cancelled; the thread
/// ends with the process). The channel closes at the end of the input.
fn stdin_lines() -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel(16);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match stdin.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) if tx.blocking_send(String::from_utf8_lossy(&buf).into_owned()).is_err() => break,
                Ok(_) => {}
            }
        }
    });
    rx
}

/// The session: typed lines from `input`, the room's messages to `out`.
async fn converse(s: &mut Session, room: &str, mut input: mpsc::Receiver<String>, out: &mut impl Write) -> Res<()> {
    let mut transcript = Transcript::default();
    loop {
        let pending = s.unprinted(room)?;
        for u in &pending {
            writeln!(out, "{}", transcript.line(&u.json)).map_err(|e| format!("standard output: {e}"))?;
        }
        out.flush().map_err(|e| format!("standard output: {e}"))?;
        s.printed(room, &pending).await?;
        let (api, after) = (s.api.clone(), s.room(room)?.cursor);
        tokio::select! {
            line = input.recv() => {
                let Some(line) = line else { break };
                match parse(&line) {
                    Typed::Quit => break,
                    Typed::Help => eprintln!("{HELP}"),
                    Typed::Unknown(cmd) => eprintln!("unknown command {cmd}; /help lists the commands"),
                    Typed::Say("") => {}
                    Typed::Say(text) => match send(s, room, Outgoing { text, ..Outgoing::default() }).await {
                        Ok(id) => transcript.remember(&id, &s.st.uri, text),
                        Err(e) => eprintln!("not sent: {e}"),
                    },
                }
            }
            page = room::fetch(&api, room, after, POLL_SECS) => {
                let caught = match page {
                    Ok(page) => room::catch_up_from(s, room, page).await.map(drop),
                    Err(e) => Err(e),
                };
                match caught {
                    Ok(()) => {}
                    // The server restarts (or its hub is away): wait, ask again.
                    Err(e) if api::is_unreachable(&e) => {
                        eprintln!("{e}; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_lines() {
        assert_eq!(parse("hello\n"), Typed::Say("hello"));
        assert_eq!(parse("/me waves\r\n"), Typed::Say("/me waves"));
        assert_eq!(parse("//etc/passwd is a path"), Typed::Say("/etc/passwd is a path"));
        assert_eq!(parse("/quit\n"), Typed::Quit);
        assert_eq!(parse("/help"), Typed::Help);
        assert_eq!(parse("/nick bob"), Typed::Unknown("/nick"));
        assert_eq!(parse("\n"), Typed::Say(""));
    }
}
