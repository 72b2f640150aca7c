//! Messages as people read them: `<sender> text`, `* sender action` for emotes, replies and edits marked with
//! the message they refer to (`[re alice: the first words…]`, `[edit: …]`) when it was seen, else its short id.

use std::collections::{HashMap, VecDeque};

/// How many messages a [`Transcript`] remembers for reply and edit marks.
const REMEMBERED: usize = 1000;
/// How many characters of a referred-to message a mark quotes.
const EXCERPT: usize = 30;

/// The recent messages of a room, to name what replies and edits refer to.
#[derive(Default)]
pub struct Transcript {
    seen: HashMap<String, (String, String)>,
    order: VecDeque<String>,
}

impl Transcript {
    /// Remembers message `id` by `who` saying `text` (forgetting the oldest beyond [`REMEMBERED`]).
    pub fn remember(&mut self, id: &str, who: &str, text: &str) {
        if id.is_empty() || self.seen.insert(id.to_owned(), (who.to_owned(), excerpt(text))).is_some() {
            return;
        }
        self.order.push_back(id.to_owned());
        if self.order.len() > REMEMBERED
            && let Some(old) = self.order.pop_front()
        {
            self.seen.remove(&old);
        }
    }

    /// The line for a received message (the JSON of `listen --json`); remembers it.
    pub fn line(&mut self, m: &serde_json::Value) -> String {
        let who = m["legacy_sender"]["name"].as_str().or_else(|| m["sender"].as_str()).unwrap_or("?").to_owned();
        let text = m["text"].as_str().unwrap_or("");
        let mark = if let Some(parent) = m["in_reply_to"].as_str() {
            match self.seen.get(parent) {
                Some((by, said)) => format!("[re {by}: {said}] "),
                None => format!("[re {}] ", short(parent)),
            }
        } else if let Some(old) = m["replaces"].as_str() {
            match self.seen.get(old) {
                Some((_, said)) => format!("[edit: {said}] "),
                None => format!("[edit of {}] ", short(old)),
            }
        } else {
            String::new()
        };
        self.remember(m["message_id"].as_str().unwrap_or(""), &who, text);
        match text.strip_prefix("/me ") {
            Some(action) => format!("* {who} {mark}{action}"),
            None => format!("<{who}> {mark}{text}"),
        }
    }
}

/// The first [`EXCERPT`] characters of `text` on one line, `…` if cut.
fn excerpt(text: &str) -> String {
    let flat = text.replace(['\n', '\r'], " ");
    match flat.char_indices().nth(EXCERPT) {
        Some((cut, _)) => format!("{}…", &flat[..cut]),
        None => flat,
    }
}

/// The first 8 hex digits of a message id.
fn short(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn lines_mark_emotes_replies_and_edits() {
        let mut t = Transcript::default();
        let first = json!({"sender": "mimi://a.test/u/alice", "message_id": "aa11", "text": "hello there"});
        assert_eq!(t.line(&first), "<mimi://a.test/u/alice> hello there");
        let legacy = json!({"sender": "mimi://a.test/u/bridge", "legacy_sender": {"name": "ircbob"},
            "message_id": "bb22", "text": "/me waves", "in_reply_to": "aa11"});
        assert_eq!(t.line(&legacy), "* ircbob [re mimi://a.test/u/alice: hello there] waves");
        let edit = json!({"sender": "mimi://a.test/u/alice", "message_id": "cc33", "text": "hello all",
            "replaces": "aa11"});
        assert_eq!(t.line(&edit), "<mimi://a.test/u/alice> [edit: hello there] hello all");
        let unknown = json!({"sender": "s", "message_id": "dd", "text": "x", "in_reply_to": "0123456789abcdef"});
        assert_eq!(t.line(&unknown), "<s> [re 01234567] x");
        t.remember("ee", "s", &"long line\n".repeat(10));
        let reply = json!({"sender": "s", "text": "y", "in_reply_to": "ee"});
        assert_eq!(t.line(&reply), "<s> [re s: long line long line long line …] y");
    }
}
