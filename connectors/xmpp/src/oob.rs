//! Sans IO: attachments as XMPP carries them. A file is a link: XEP-0066 Out of Band Data (`<x
//! xmlns='jabber:x:oob'><url/></x>`), which is also how XEP-0363 HTTP File Upload messages announce an upload
//! (the body is the URL itself, so clients without OOB show a link).
//!
//! * Inbound: each OOB URL (`http`/`https`, bounded length) becomes an attachment pointing at that URL; the
//!   account shell then has the daemon's media store fetch it (guarded, size-capped) and replaces the URL with
//!   the store's own link. A body that is only the URL is dropped (it was the upload's fallback).
//! * Outbound: each attachment (its `url` is the store's public link) becomes an OOB element and a line of the
//!   body; a message with a single attachment and no text has the URL alone as its body, which clients show
//!   inline.

use bridge_api::event::Attachment;
use minidom::Element;

/// The XEP-0066 namespace for messages.
pub const OOB: &str = "jabber:x:oob";
/// Most attachments taken from one message.
pub const MAX_ATTACHMENTS: usize = 8;
/// Longest URL taken.
pub const MAX_URL: usize = 2048;

/// The attachments `payloads` announce, and `body` without an upload's URL fallback.
pub fn inbound(payloads: &[Element], body: &str) -> (String, Vec<Attachment>) {
    let mut out: Vec<Attachment> = Vec::new();
    for x in payloads.iter().filter(|p| p.is("x", OOB)) {
        let Some(url) = x.get_child("url", OOB).map(|u| u.text().trim().to_owned()) else { continue };
        let scheme_ok = url.starts_with("https://") || url.starts_with("http://");
        if !scheme_ok || url.len() > MAX_URL || url.chars().any(char::is_whitespace) {
            continue;
        }
        if out.len() >= MAX_ATTACHMENTS || out.iter().any(|a| a.url == url) {
            continue;
        }
        let filename = file_name(&url);
        out.push(Attachment { url, media_type: "application/octet-stream".into(), size: None, filename });
    }
    let rest = if out.iter().any(|a| a.url == body.trim()) { String::new() } else { body.to_owned() };
    (rest, out)
}

/// The last path segment of `url`, if it looks like a file name.
fn file_name(url: &str) -> Option<String> {
    let path = url.split(['?', '#']).next().unwrap_or_default();
    let after_host = path.splitn(4, '/').nth(3)?;
    let name = after_host.rsplit('/').next()?;
    (!name.is_empty() && name.len() <= 255).then(|| name.to_owned())
}

/// `text` with a line for each attachment (the URL alone when there is no text and one attachment), and the
/// OOB elements to add.
pub fn outbound(text: &str, attachments: &[Attachment]) -> (String, Vec<Element>) {
    let mut body = text.to_owned();
    let mut elements = Vec::new();
    for a in attachments {
        if !body.is_empty() {
            body.push('\n');
        }
        body.push_str(&a.url);
        let mut x = Element::builder("x", OOB).append(Element::builder("url", OOB).append(a.url.as_str()));
        if let Some(name) = &a.filename {
            x = x.append(Element::builder("desc", OOB).append(name.as_str()));
        }
        elements.push(x.build());
    }
    (body, elements)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn oob(url: &str) -> Element {
        Element::builder("x", OOB).append(Element::builder("url", OOB).append(url)).build()
    }

    #[test]
    fn an_upload_becomes_an_attachment_and_its_url_body_goes() {
        let url = "https://upload.example/abc/cat%20pic.png";
        let (body, atts) = inbound(&[oob(url)], url);
        assert_eq!(body, "");
        assert_eq!(atts.len(), 1);
        assert_eq!(atts[0].url, url);
        assert_eq!(atts[0].filename.as_deref(), Some("cat%20pic.png"));
        let (body, atts) = inbound(&[oob(url)], "look at this");
        assert_eq!((body.as_str(), atts.len()), ("look at this", 1), "other text stays");
    }

    #[test]
    fn odd_urls_are_not_attachments() {
        let (_, atts) = inbound(
            &[oob("file:///etc/passwd"), oob("javascript:alert(1)"), oob(&format!("https://x/{}", "a".repeat(3000)))],
            "",
        );
        assert!(atts.is_empty());
        let many: Vec<Element> = (0..20).map(|i| oob(&format!("https://x.example/{i}"))).collect();
        assert_eq!(inbound(&many, "").1.len(), MAX_ATTACHMENTS);
        assert_eq!(inbound(&[oob("https://x.example/a"), oob("https://x.example/a")], "").1.len(), 1);
        assert_eq!(inbound(&[oob("https://x.example")], "").1[0].filename, None);
    }

    #[test]
    fn outbound_attachments_are_body_lines_and_oob_elements() {
        let a = |u: &str, n: Option<&str>| Attachment {
            url: u.into(),
            media_type: "image/png".into(),
            size: Some(3),
            filename: n.map(str::to_owned),
        };
        let (body, els) = outbound("", &[a("https://b.example/media/v1/t/cat.png", Some("cat.png"))]);
        assert_eq!(body, "https://b.example/media/v1/t/cat.png", "alone: clients show it inline");
        assert_eq!(els.len(), 1);
        assert_eq!(
            els[0].get_child("url", OOB).map(Element::text).as_deref(),
            Some("https://b.example/media/v1/t/cat.png")
        );
        assert_eq!(els[0].get_child("desc", OOB).map(Element::text).as_deref(), Some("cat.png"));
        let (body, els) = outbound("two files", &[a("https://b/1", None), a("https://b/2", None)]);
        assert_eq!(body, "two files\nhttps://b/1\nhttps://b/2");
        assert_eq!(els.len(), 2);
        // The round trip: what we send is read back as the same attachments.
        let (rest, back) = inbound(&els, &body);
        assert_eq!(rest, body);
        assert_eq!(back.iter().map(|a| a.url.as_str()).collect::<Vec<_>>(), ["https://b/1", "https://b/2"]);
    }
}
