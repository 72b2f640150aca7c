//! Builders for the messages the bridge sends: text (plain or GFM-MIMI
//! markdown), replies, reactions, unreact/delete, edits, mentions,
//! attachments and multipart alternatives.
//!
//! ```
//! # use mimi_content::builder::ContentBuilder;
//! let msg = ContentBuilder::new("mimi://example.com/u/alice", "mimi://example.com/r/eng")
//!     .markdown("Hi **all**")
//!     .build_message()
//!     .expect("valid");
//! assert_eq!(msg.message_id().expect("id")[0], 1);
//! ```

use rand::RngCore;

use super::attachment::{Description, EncryptedBlob};
use super::error::ContentError;
use super::markdown;
use super::model::{
    Disposition, Expiration, ExtensionKey, ExtensionValue, Extensions, MIME_HTML, MIME_MARKDOWN, MIME_PLAIN,
    MessageIdBytes, MimiContent, MultiPart, NestedPart, PartBody, PartSemantics, SALT_LEN,
};
use super::{Message, validate};

pub use super::markdown::mention_link;

/// Builds a [`MimiContent`]; starts as an empty (NullPart) message from
/// `sender_uri` in `room_uri` with a fresh random salt.
#[derive(Debug, Clone)]
pub struct ContentBuilder {
    content: MimiContent,
    error: Option<ContentError>,
}

/// A fresh cryptographically random salt.
pub fn random_salt() -> [u8; SALT_LEN] {
    let mut salt = [0u8; SALT_LEN];
    rand::rng().fill_bytes(&mut salt);
    salt
}

impl ContentBuilder {
    /// A builder for a message from `sender_uri` in `room_uri`.
    pub fn new(sender_uri: &str, room_uri: &str) -> Self {
        Self {
            content: MimiContent {
                salt: random_salt(),
                replaces: None,
                topic_id: Vec::new(),
                expires: None,
                in_reply_to: None,
                extensions: Extensions::with_uris(sender_uri, room_uri),
                nested_part: NestedPart::null(Disposition::Render),
            },
            error: None,
        }
    }

    /// Uses a given salt (tests, reproducible vectors); it must be random in production.
    pub fn salt(mut self, salt: [u8; SALT_LEN]) -> Self {
        self.content.salt = salt;
        self
    }

    /// Sets the body.
    pub fn body(mut self, part: NestedPart) -> Self {
        self.content.nested_part = part;
        self
    }

    /// A `text/plain;charset=utf-8` body.
    pub fn plain_text(self, text: &str) -> Self {
        self.body(NestedPart::single(MIME_PLAIN, text.as_bytes()))
    }

    /// A `text/markdown;variant=GFM-MIMI` body; raw HTML is neutralised
    /// ([`markdown::sanitize_gfm_mimi`]).
    pub fn markdown(self, md: &str) -> Self {
        let md = markdown::sanitize_gfm_mimi(md);
        self.body(NestedPart::single(MIME_MARKDOWN, md.into_bytes()))
    }

    /// Sets the body's language (RFC 5646 tags, comma separated).
    pub fn language(mut self, language: &str) -> Self {
        self.content.nested_part.language = language.to_owned();
        self
    }

    /// Marks the message as a reply to `id`.
    pub fn reply_to(mut self, id: MessageIdBytes) -> Self {
        self.content.in_reply_to = Some(id);
        self
    }

    /// A reaction (e.g. an emoji) to message `target`.
    pub fn reaction(mut self, target: MessageIdBytes, reaction: &str) -> Self {
        self.content.in_reply_to = Some(target);
        let mut part = NestedPart::single(MIME_PLAIN, reaction.as_bytes());
        part.disposition = Disposition::Reaction;
        self.body(part)
    }

    /// Several reactions at once: a processAll MultiPart of reaction parts
    /// (§5.3: they must not be concatenated into one text part).
    pub fn reactions(mut self, target: MessageIdBytes, reactions: &[&str]) -> Self {
        if reactions.len() == 1 {
            return self.reaction(target, reactions[0]);
        }
        self.content.in_reply_to = Some(target);
        let parts = reactions
            .iter()
            .map(|r| {
                let mut p = NestedPart::single(MIME_PLAIN, r.as_bytes());
                p.disposition = Disposition::Reaction;
                p
            })
            .collect();
        self.body(NestedPart {
            disposition: Disposition::Reaction,
            language: String::new(),
            body: PartBody::Multi(MultiPart { semantics: PartSemantics::ProcessAll, parts }),
        })
    }

    /// Withdraws the reaction sent as message `reaction_id` (§5.7): replaces
    /// it with a NullPart of disposition reaction.
    pub fn unreact(mut self, reaction_id: MessageIdBytes) -> Self {
        self.content.replaces = Some(reaction_id);
        self.body(NestedPart::null(Disposition::Reaction))
    }

    /// Deletes message `id` (the first version's ID, §5.6): replaces it with
    /// a NullPart of disposition render.
    pub fn delete(mut self, id: MessageIdBytes) -> Self {
        self.content.replaces = Some(id);
        self.body(NestedPart::null(Disposition::Render))
    }

    /// Marks the message as an edit of `original_id` (the ID of the first
    /// version); set the new body with [`Self::markdown`] or [`Self::plain_text`].
    pub fn edit(mut self, original_id: MessageIdBytes) -> Self {
        self.content.replaces = Some(original_id);
        self
    }

    /// Sets the topic ID.
    pub fn topic(mut self, topic_id: &[u8]) -> Self {
        self.content.topic_id = topic_id.to_vec();
        self
    }

    /// Sets the expiry hint.
    pub fn expires(mut self, expires: Expiration) -> Self {
        self.content.expires = Some(expires);
        self
    }

    /// Adds an extension (errors surface in [`Self::build`]).
    pub fn extension(mut self, key: ExtensionKey, value: ExtensionValue) -> Self {
        if let Err(e) = self.content.extensions.insert(key, value) {
            self.error.get_or_insert(e);
        }
        self
    }

    /// An attachment body for an encrypted, uploaded blob
    /// (see [`super::attachment::encrypt`]).
    pub fn attachment(self, blob: &EncryptedBlob, description: &Description<'_>) -> Self {
        self.body(blob.to_part(description))
    }

    /// A chooseOne MultiPart of the same text as plain text, GFM-MIMI
    /// markdown (sanitised) and, if given, HTML — in the sender's order of
    /// preference markdown, html, plain.
    pub fn alternatives(self, plain: &str, md: &str, html: Option<&str>) -> Self {
        let mut parts = vec![NestedPart::single(MIME_MARKDOWN, markdown::sanitize_gfm_mimi(md).into_bytes())];
        if let Some(h) = html {
            parts.push(NestedPart::single(MIME_HTML, h.as_bytes()));
        }
        parts.push(NestedPart::single(MIME_PLAIN, plain.as_bytes()));
        self.body(NestedPart {
            disposition: Disposition::Render,
            language: String::new(),
            body: PartBody::Multi(MultiPart { semantics: PartSemantics::ChooseOne, parts }),
        })
    }

    /// Validates and returns the content.
    pub fn build(self) -> Result<MimiContent, ContentError> {
        if let Some(e) = self.error {
            return Err(e);
        }
        validate(&self.content)?;
        Ok(self.content)
    }

    /// Validates, encodes and returns the message (bytes + content).
    pub fn build_message(self) -> Result<Message, ContentError> {
        Message::encode(self.build()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{PartBody, decode, encode};

    const ALICE: &str = "mimi://example.com/u/alice-smith";
    const ROOM: &str = "mimi://example.com/r/engineering_team";

    fn h<const N: usize>(s: &str) -> [u8; N] {
        hex::decode(s).expect("hex").try_into().expect("length")
    }

    fn single(c: &MimiContent) -> (&str, &[u8]) {
        match &c.nested_part.body {
            PartBody::Single(s) => (s.content_type.as_str(), s.content.as_slice()),
            other => panic!("not single: {other:?}"),
        }
    }

    #[test]
    fn rebuilds_original_example_byte_for_byte() {
        let m = ContentBuilder::new(ALICE, ROOM)
            .salt(h("5eed9406c2545547ab6f09f20a18b003"))
            .markdown("Hi everyone, we just shipped release 2.0. __Good  work__!")
            .build_message()
            .expect("build");
        let want = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/mimi-content/original.cbor"))
            .expect("vector");
        assert_eq!(m.bytes(), want.as_slice());
        assert_eq!(
            hex::encode(m.message_id().expect("id")),
            "017ce54837404c3696e0c747b985cb172716d0ed0a3d249ca63ace7d82a096f4"
        );
    }

    /// §5.7 Unlike is in the draft text only (no vector file); its EDN and
    /// stated message ID are reproduced by the unreact builder.
    #[test]
    fn rebuilds_draft_unlike_example_and_its_message_id() {
        let m = ContentBuilder::new("mimi://example.com/u/cathy-washington", ROOM)
            .salt(h("c5ba86dc9fd272e58ca52ec805b79199"))
            .reply_to(h("017ce54837404c3696e0c747b985cb172716d0ed0a3d249ca63ace7d82a096f4"))
            .unreact(h("0158c4288911e50a8f6be3f47746b6682f10fd91bc8c05557aa589a3157aff68"))
            .build_message()
            .expect("build");
        assert_eq!(
            hex::encode(m.message_id().expect("id")),
            "013aadbb8f313253c8930f4e93c6ca54b2ed06d258185bdcec3870534c8a4ec4"
        );
    }

    #[test]
    fn plain_text_reply_and_fresh_salts() {
        let target = [1u8; 32];
        let a = ContentBuilder::new(ALICE, ROOM).plain_text("hello").reply_to(target).build().expect("a");
        let b = ContentBuilder::new(ALICE, ROOM).plain_text("hello").build().expect("b");
        assert_ne!(a.salt, b.salt);
        assert_eq!(a.in_reply_to, Some(target));
        assert_eq!(single(&a), (MIME_PLAIN, &b"hello"[..]));
        assert_eq!(decode(&encode(&a).expect("enc")).expect("dec"), a);
    }

    #[test]
    fn markdown_strips_raw_html() {
        let c = ContentBuilder::new(ALICE, ROOM).markdown("hi <script>alert(1)</script> **x**").build().expect("build");
        let (ct, body) = single(&c);
        assert_eq!(ct, MIME_MARKDOWN);
        let body = std::str::from_utf8(body).expect("utf8");
        assert!(!body.contains("<script"), "{body}");
        assert!(body.contains("&lt;script>"), "{body}");
    }

    #[test]
    fn reaction_unreact_delete_edit() {
        let target = [1u8; 32];
        let r = ContentBuilder::new(ALICE, ROOM).reaction(target, "👍").build().expect("reaction");
        assert_eq!(r.in_reply_to, Some(target));
        assert_eq!(r.nested_part.disposition, Disposition::Reaction);
        assert_eq!(single(&r), (MIME_PLAIN, "👍".as_bytes()));

        let rs = ContentBuilder::new(ALICE, ROOM).reactions(target, &["👍", "🎉"]).build().expect("reactions");
        assert!(matches!(&rs.nested_part.body, PartBody::Multi(m)
            if m.semantics == PartSemantics::ProcessAll && m.parts.len() == 2));

        let u = ContentBuilder::new(ALICE, ROOM).unreact([2u8; 32]).build().expect("unreact");
        assert_eq!(u.replaces, Some([2u8; 32]));
        assert_eq!(u.nested_part, NestedPart::null(Disposition::Reaction));

        let d = ContentBuilder::new(ALICE, ROOM).delete([3u8; 32]).build().expect("delete");
        assert_eq!(d.replaces, Some([3u8; 32]));
        assert_eq!(d.nested_part, NestedPart::null(Disposition::Render));

        let e = ContentBuilder::new(ALICE, ROOM).edit([3u8; 32]).markdown("fixed").build().expect("edit");
        assert_eq!(e.replaces, Some([3u8; 32]));
        assert_eq!(single(&e), (MIME_MARKDOWN, &b"fixed"[..]));
    }

    #[test]
    fn mention_builds_the_draft_link() {
        let md = format!("{} Have you reviewed the release notes?", mention_link("Alice Smith", ALICE));
        assert!(md.starts_with("[@Alice Smith](mimi://example.com/u/alice-smith)"));
        let c = ContentBuilder::new(ALICE, ROOM).markdown(&md).build().expect("build");
        let (_, body) = single(&c);
        let found = markdown::mentions(std::str::from_utf8(body).expect("utf8"));
        assert_eq!(found, vec![("@Alice Smith".to_owned(), ALICE.to_owned())]);
    }

    #[test]
    fn alternatives_are_choose_one() {
        let c = ContentBuilder::new(ALICE, ROOM)
            .alternatives("hi all", "hi **all**", Some("hi <b>all</b>"))
            .build()
            .expect("build");
        let PartBody::Multi(m) = &c.nested_part.body else { panic!("not multi") };
        assert_eq!(m.semantics, PartSemantics::ChooseOne);
        let types: Vec<_> = m
            .parts
            .iter()
            .map(|p| match &p.body {
                PartBody::Single(s) => s.content_type.clone(),
                _ => String::new(),
            })
            .collect();
        assert_eq!(types, [MIME_MARKDOWN, MIME_HTML, MIME_PLAIN]);
        let two = ContentBuilder::new(ALICE, ROOM).alternatives("a", "a", None).build().expect("two");
        assert!(matches!(&two.nested_part.body, PartBody::Multi(m) if m.parts.len() == 2));
    }

    #[test]
    fn attachment_topic_expiry_language_extension() {
        let blob = crate::attachment::encrypt(b"file").expect("encrypt");
        let c = ContentBuilder::new(ALICE, ROOM)
            .attachment(
                &blob,
                &Description {
                    url: "https://example.com/f",
                    content_type: "text/plain",
                    filename: "f.txt",
                    ..Description::default()
                },
            )
            .language("en")
            .topic(b"t1")
            .expires(Expiration { relative: true, time: 60 })
            .extension(ExtensionKey::Text("x-test".into()), ExtensionValue::int(-5))
            .build()
            .expect("build");
        assert_eq!(c.nested_part.disposition, Disposition::Attachment);
        assert_eq!(c.nested_part.language, "en");
        assert_eq!(decode(&encode(&c).expect("enc")).expect("dec"), c);
        let bad = ContentBuilder::new(ALICE, ROOM).extension(ExtensionKey::Int(1), ExtensionValue::int(5)).build();
        assert_eq!(bad, Err(ContentError::KnownExtensionNotText { key: 1 }));
    }
}
