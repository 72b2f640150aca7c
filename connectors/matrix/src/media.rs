//! Matrix media ⇄ attachments (sans-IO): what an `m.image` / `m.file` / `m.video` / `m.audio` event says about its
//! file, and the content of the event that carries an attachment to Matrix.
//!
//! Inbound, an event's file becomes an [`Attachment`] whose `url` is still the event's `mxc://` URI: the IO shell
//! downloads it (authenticated media) into the daemon's media store and replaces the attachment with the store's
//! ([`is_mxc`] tells which attachments still need that). Outbound, [`content`] is the event without its `url`: the IO
//! shell uploads the bytes as the ghost and sets it (and the image size, when [`image_size`] can read it).

use bridge_api::event::Attachment;
use ruma::events::room::MediaSource;
use ruma::events::room::message::MessageType;
use serde_json::{Value, json};

/// A media event's file and caption: the attachment (its `url` the `mxc://` URI) and the caption, if the event has
/// one (Matrix v1.10: a `filename` other than `body` makes `body` a caption). `None` for other message types.
///
/// A file of an encrypted room (an `EncryptedFile`: the event in the clear carries its key) has for `url` its
/// [`encrypted_url`], which keeps the key for the download.
pub fn inbound(msgtype: &MessageType) -> Option<(Attachment, Option<String>)> {
    // The four media contents have the same fields, of different info types.
    macro_rules! file_of {
        ($m:expr) => {{
            let info = $m.info.as_deref();
            (&$m.body, &$m.filename, &$m.source, info.and_then(|i| i.mimetype.clone()), info.and_then(|i| i.size))
        }};
    }
    let (body, filename, source, mimetype, size) = match msgtype {
        MessageType::Image(m) => file_of!(m),
        MessageType::File(m) => file_of!(m),
        MessageType::Video(m) => file_of!(m),
        MessageType::Audio(m) => file_of!(m),
        _ => return None,
    };
    let url = match source {
        MediaSource::Plain(uri) => uri.to_string(),
        MediaSource::Encrypted(file) => encrypted_url(file),
    };
    let (name, caption) = match filename.as_deref() {
        Some(f) if f != body => (f, Some(body.clone())),
        _ => (body.as_str(), None),
    };
    let attachment = Attachment {
        url,
        media_type: mimetype.unwrap_or_else(|| "application/octet-stream".to_owned()),
        size: size.map(u64::from),
        filename: (!name.is_empty()).then(|| name.to_owned()),
    };
    Some((attachment, caption))
}

/// The fragment after an encrypted file's `mxc://` URI that holds the file's key and hashes (hex JSON).
const ENCRYPTED: &str = "#mimi-encrypted-file=";

/// The `url` of an attachment standing for the encrypted file `file` until it is downloaded: its `mxc://` URI with
/// the whole `EncryptedFile` (key, iv, hashes) in a fragment. It never leaves the connector: the download replaces
/// the attachment, or drops it with a note.
pub fn encrypted_url(file: &ruma::events::room::EncryptedFile) -> String {
    format!("{}{ENCRYPTED}{}", file.url, hex::encode(serde_json::to_vec(file).unwrap_or_default()))
}

/// The encrypted file an [`encrypted_url`] stands for; `None` for a plain `mxc://` URI.
pub fn encrypted_file(url: &str) -> Option<ruma::events::room::EncryptedFile> {
    let (_, fragment) = url.split_once(ENCRYPTED)?;
    serde_json::from_slice(&hex::decode(fragment).ok()?).ok()
}

/// `url` as logs and errors may show it: without the fragment of an [`encrypted_url`], which holds the file's key.
pub fn shown_url(url: &str) -> &str {
    url.split_once('#').map_or(url, |(bare, _)| bare)
}

/// Whether `url` is a Matrix content URI, not downloaded yet.
pub fn is_mxc(url: &str) -> bool {
    url.starts_with("mxc://")
}

/// The `server_name` and `media_id` of an `mxc://` URI (`None` if it is not a valid one).
pub fn mxc_parts(url: &str) -> Option<(&str, &str)> {
    let (server, id) = url.strip_prefix("mxc://")?.split_once('/')?;
    let valid = |s: &str| !s.is_empty() && !s.contains(['/', '?', '#']);
    (valid(server) && valid(id)).then_some((server, id))
}

/// The message type a file of `media_type` is sent as.
pub fn msgtype(media_type: &str) -> &'static str {
    match media_type.split('/').next().unwrap_or_default() {
        "image" => "m.image",
        "video" => "m.video",
        "audio" => "m.audio",
        _ => "m.file",
    }
}

/// The `m.room.message` content carrying `a`, without its `url`: message type from the media type, the file name as
/// `body` and `filename`, `info` with the media type and size.
pub fn content(a: &Attachment) -> Value {
    let name = a.filename.clone().unwrap_or_else(|| "attachment".to_owned());
    let mut info = json!({"mimetype": a.media_type});
    if let Some(size) = a.size {
        info["size"] = json!(size);
    }
    json!({"msgtype": msgtype(&a.media_type), "body": name, "filename": name, "info": info, "m.mentions": {}})
}

/// Completes a [`content`] with the uploaded file's `url`, its size in bytes and, for an image, its width and height
/// if known ([`image_size`]).
pub fn complete(content: &mut Value, mxc: &str, size: usize, dimensions: Option<(u32, u32)>) {
    content["url"] = json!(mxc);
    content["info"]["size"] = json!(size);
    if content["msgtype"] == "m.image"
        && let Some((w, h)) = dimensions
    {
        content["info"]["w"] = json!(w);
        content["info"]["h"] = json!(h);
    }
}

/// The width and height of a PNG, GIF or JPEG image, read from its header.
pub fn image_size(bytes: &[u8]) -> Option<(u32, u32)> {
    let be = |at: usize| bytes.get(at..at + 4).and_then(|b| b.try_into().ok()).map(u32::from_be_bytes);
    let le16 = |at: usize| bytes.get(at..at + 2).map(|b| u32::from(u16::from_le_bytes([b[0], b[1]])));
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") && bytes.get(12..16) == Some(b"IHDR") {
        return Some((be(16)?, be(20)?));
    }
    if bytes.starts_with(b"GIF87a") || bytes.starts_with(b"GIF89a") {
        return Some((le16(6)?, le16(8)?));
    }
    if bytes.starts_with(b"\xff\xd8") {
        return jpeg_size(bytes);
    }
    None
}

/// The width and height in a JPEG's start-of-frame segment, found by walking the segments before it.
fn jpeg_size(bytes: &[u8]) -> Option<(u32, u32)> {
    let be16 = |at: usize| bytes.get(at..at + 2).map(|b| u32::from(u16::from_be_bytes([b[0], b[1]])));
    let mut at = 2;
    loop {
        if *bytes.get(at)? != 0xff {
            return None;
        }
        let marker = *bytes.get(at + 1)?;
        match marker {
            0xff => at += 1,                      // fill byte
            0xd8 | 0x01 | 0xd0..=0xd7 => at += 2, // segments without a length
            // SOF0–SOF15 but DHT (c4), JPG (c8) and DAC (cc): length, precision, height, width.
            0xc0..=0xcf if !matches!(marker, 0xc4 | 0xc8 | 0xcc) => return Some((be16(at + 7)?, be16(at + 5)?)),
            0xd9 | 0xda => return None, // end of image, or scan data before any frame header
            _ => at += 2 + usize::try_from(be16(at + 2)?).ok()?,
        }
    }
}

#[cfg(test)]
#[path = "media_tests.rs"]
mod tests;
