//! Sending and receiving messages: `send`, `listen` (and the sending half of `chat`).

use crate::api;
use crate::render::Transcript;
use crate::room::{self, Verdict, catch_up, epoch_moved};
use crate::session::{Res, Session};
use mimi_content::attachment::{self, Description};
use mimi_content::builder::ContentBuilder;
use mimi_content::model::{Disposition, ExternalPart, MultiPart, NestedPart, PartBody, PartSemantics};
use std::time::Duration;

/// What to send: a text, possibly a reply to or an edit of another message (ids in hex), possibly with a file.
#[derive(Debug, Default, Clone)]
pub struct Outgoing<'a> {
    /// The text; a text starting with `/me ` is an emote.
    pub text: &'a str,
    /// The message it replies to.
    pub reply_to: Option<&'a str>,
    /// The message of ours it replaces.
    pub edit: Option<&'a str>,
    /// An attached file, uploaded already ([`upload`]).
    pub attachment: Option<ExternalPart>,
}

/// Encrypts the file at `path` (of media type `media_type`) for a MIMI external part: the ciphertext is written to
/// `dir`, named by its SHA-256 in hex, and the part links it as `base_url/HEX`.
pub fn upload(path: &std::path::Path, media_type: &str, dir: &std::path::Path, base_url: &str) -> Res<ExternalPart> {
    let plaintext = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let blob = attachment::encrypt(&plaintext).map_err(|e| e.to_string())?;
    let name = hex::encode(blob.hash);
    std::fs::write(dir.join(&name), &blob.ciphertext).map_err(|e| format!("{}: {e}", dir.display()))?;
    let filename = path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
    let url = format!("{}/{name}", base_url.trim_end_matches('/'));
    Ok(blob.describe(&Description {
        url: &url,
        content_type: media_type,
        filename: &filename,
        ..Description::default()
    }))
}

/// Sends `msg` to `room` (a URI), catching up first (and again if the room moved on); the message id in hex.
/// Messages decrypted on the way are kept in the store (even if the sending fails) until `listen` or `chat`
/// prints them.
pub async fn send(s: &mut Session, room: &str, msg: Outgoing<'_>) -> Res<String> {
    let id_arg = |v: &str| -> Res<[u8; 32]> {
        hex::decode(v).ok().and_then(|v| v.try_into().ok()).ok_or_else(|| format!("{v:?} is not a message id"))
    };
    let mut b = ContentBuilder::new(&s.st.uri, room).plain_text(msg.text);
    if let Some(part) = msg.attachment {
        // The text, then the file, each processed (multipart processAll).
        let parts = vec![
            NestedPart::single("text/plain;charset=utf-8", msg.text.as_bytes()),
            NestedPart {
                disposition: Disposition::Attachment,
                language: String::new(),
                body: PartBody::External(Box::new(part)),
            },
        ];
        b = b.body(NestedPart {
            disposition: Disposition::Render,
            language: String::new(),
            body: PartBody::Multi(MultiPart { semantics: PartSemantics::ProcessAll, parts }),
        });
    }
    if let Some(r) = msg.reply_to {
        b = b.reply_to(id_arg(r)?);
    }
    if let Some(e) = msg.edit {
        b = b.edit(id_arg(e)?);
    }
    let content = b.build_message().map_err(|e| e.to_string())?;
    let mut tries = 0;
    loop {
        let mut group = catch_up(s, room, 0).await?;
        let ct = group.encrypt(content.bytes()).durable().await.map_err(|e| e.to_string())?;
        match room::submit(&s.api, room, ct).await? {
            Verdict::Accepted(seq) => {
                s.sent(room, seq).await?;
                break;
            }
            // The room moved on (the server caught up with it): catch up and encrypt again.
            Verdict::EpochTooOld => epoch_moved(&mut tries).await?,
        }
    }
    Ok(content.message_id_with(Some(&s.st.uri), Some(room)).map(hex::encode).unwrap_or_default())
}

/// How `listen` runs.
#[derive(Debug, Clone, Copy)]
pub struct ListenOptions {
    /// One JSON object per line instead of [`Transcript::line`]s.
    pub json: bool,
    /// Stop after this many messages.
    pub count: Option<usize>,
    /// Stop after this long.
    pub timeout: Duration,
}

/// Prints the messages of `room` not printed yet, then new ones, until the count or the timeout; rides out a
/// server that is away meanwhile.
pub async fn listen(s: &mut Session, room: &str, opts: ListenOptions) -> Res<()> {
    let deadline = tokio::time::Instant::now() + opts.timeout;
    let mut transcript = Transcript::default();
    let mut printed = 0;
    loop {
        let pending = s.unprinted(room)?;
        let take = opts.count.map_or(pending.len(), |c| c.saturating_sub(printed).min(pending.len()));
        for u in &pending[..take] {
            println!("{}", if opts.json { u.json.to_string() } else { transcript.line(&u.json) });
        }
        printed += take;
        s.printed(room, &pending[..take]).await?;
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if opts.count.is_some_and(|c| printed >= c) || left.is_zero() {
            return Ok(());
        }
        if let Err(e) = catch_up(s, room, left.as_secs().clamp(1, 25)).await {
            // The server restarts (or its hub is away): wait, ask again (what was decrypted is kept).
            if !api::is_unreachable(&e) {
                return Err(e);
            }
            eprintln!("{e}; retrying");
            tokio::time::sleep(left.min(Duration::from_millis(300))).await;
        }
    }
}
