//! `mimi-client`: a native MLS client of a mimi-bridge daemon's client API (see `src/mimi_http/` there), as a
//! library behind two command lines: the `mimi-client` binary and `mimi-bridge client`.
//!
//! It holds its own keys and group state in `--state DIR` (an embedded store plus `client.json`, which holds the
//! user's URI and token); the daemon only ever sees MLS messages. Commands ([`ClientCommand`]): `register USER`, `create-room NAME`,
//! `invite ROOM USER... [--batch N]`, `invites`, `join ROOM`, `send ROOM TEXT`, `listen ROOM [--json] [--count N]
//! [--timeout SECS]`, and `chat ROOM` for people. Rooms may be hosted by the client's own server or by another
//! provider it federates with (`mimi://other.example/r/NAME`); the server forwards. `--server` may be
//! `https://`: the certificate is checked against `--ca-file` (or the system's CAs) and the URL's host.
//!
//! A message decrypted while catching up (before a `send`, say) is kept in the store in the same atomic batch as
//! the ratchet step that decrypted it, and stays there until `listen` or `chat` has printed it: a crash, or a
//! `send` that fails afterwards, loses nothing. `listen` rides out a server restart: it retries until its timeout.

mod api;
mod chat;
mod cli;
mod membership;
mod messages;
mod render;
mod room;
mod session;
mod transport;

pub use cli::{ClientArgs, ClientCommand};

use messages::{ListenOptions, Outgoing};
use session::{Res, Session};
use std::time::Duration;

/// Runs one command to its end (on a runtime of its own); the error is the message for the user.
pub fn run(args: ClientArgs) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    rt.block_on(execute(args))
}

async fn execute(args: ClientArgs) -> Res<()> {
    std::fs::create_dir_all(&args.state).map_err(|e| format!("{}: {e}", args.state.display()))?;
    let dir = args.state.as_path();
    let server = transport::Server::new(&args.server, args.ca_file.as_deref())?;
    if let ClientCommand::Register { user } = &args.command {
        return membership::register(dir, &server, user).await;
    }
    let mut s = Session::open(dir, &server).await?;
    match args.command {
        ClientCommand::Register { .. } => Ok(()),
        ClientCommand::CreateRoom { name } => membership::create_room(&mut s, &name).await,
        ClientCommand::Invite { room, users, batch } => {
            membership::invite(&mut s, &room, &users, usize::from(batch)).await
        }
        ClientCommand::Invites => {
            for (room, seq) in membership::invites(&s.api).await? {
                println!("{room} {seq}");
            }
            Ok(())
        }
        ClientCommand::Join { room } => membership::join(&mut s, &room).await,
        ClientCommand::Send { room, text, reply_to, edit, attach, attach_type, upload_dir, upload_url } => {
            let room = s.room_uri(&room);
            let attachment = match (attach, upload_dir, upload_url) {
                (Some(path), Some(dir), Some(url)) => Some(messages::upload(&path, &attach_type, &dir, &url)?),
                _ => None,
            };
            let msg = Outgoing { text: &text, reply_to: reply_to.as_deref(), edit: edit.as_deref(), attachment };
            println!("{}", messages::send(&mut s, &room, msg).await?);
            Ok(())
        }
        ClientCommand::Listen { room, json, count, timeout } => {
            let room = s.room_uri(&room);
            messages::listen(&mut s, &room, ListenOptions { json, count, timeout: Duration::from_secs(timeout) }).await
        }
        ClientCommand::Chat { room } => {
            let room = s.room_uri(&room);
            chat::chat(&mut s, &room).await
        }
    }
}
