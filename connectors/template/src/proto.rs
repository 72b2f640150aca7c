//! toychat wire format, sans IO: one line per message, `\n`-terminated, at most [`MAX_LINE`] bytes.

use std::fmt;

/// Longest line accepted or produced, in bytes (without the newline).
pub const MAX_LINE: usize = 4096;
/// Longest text a command may carry.
pub const MAX_TEXT: usize = 3500;

/// Why a line or value was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProtoError {
    /// Longer than [`MAX_LINE`].
    TooLong(usize),
    /// Not a known command or missing fields.
    Malformed(String),
    /// A word (nick, room, id, tag) contains a space, colon or control character, or is empty.
    BadWord(String),
}

impl fmt::Display for ProtoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtoError::TooLong(n) => write!(f, "line of {n} bytes exceeds {MAX_LINE}"),
            ProtoError::Malformed(l) => write!(f, "malformed line {l:?}"),
            ProtoError::BadWord(w) => write!(f, "invalid word {w:?}"),
        }
    }
}

impl std::error::Error for ProtoError {}

/// Checks a word: non-empty, no whitespace, no `:` at the start, no control characters.
pub fn check_word(w: &str) -> Result<(), ProtoError> {
    if w.is_empty() || w.starts_with(':') || w.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(ProtoError::BadWord(w.to_owned()));
    }
    Ok(())
}

/// Makes `text` safe as a trailing field: line breaks become " ⏎ ", other control characters are dropped, and the
/// result is cut at a character boundary to [`MAX_TEXT`] bytes. This is what keeps one network's users from
/// injecting commands into this one.
pub fn sanitize_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut lines = text.split(['\n', '\r']).filter(|l| !l.is_empty()).peekable();
    while let Some(line) = lines.next() {
        out.extend(line.chars().filter(|c| !c.is_control()));
        if lines.peek().is_some() {
            out.push_str(" ⏎ ");
        }
    }
    if out.len() > MAX_TEXT {
        let mut cut = MAX_TEXT;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
    }
    out
}

/// A tagged client command's verb and arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verb {
    /// `SAY room :text`
    Say {
        /// Room.
        room: String,
        /// Text.
        text: String,
    },
    /// `REPLY room parent :text`
    Reply {
        /// Room.
        room: String,
        /// Parent id.
        parent: String,
        /// Text.
        text: String,
    },
    /// `EDIT room target :text`
    Edit {
        /// Room.
        room: String,
        /// Edited message id.
        target: String,
        /// New text.
        text: String,
    },
    /// `DEL room target`
    Del {
        /// Room.
        room: String,
        /// Deleted message id.
        target: String,
    },
    /// `REACT room target :key`
    React {
        /// Room.
        room: String,
        /// Target message id.
        target: String,
        /// Reaction.
        key: String,
    },
    /// `UNREACT room target :key`
    Unreact {
        /// Room.
        room: String,
        /// Target message id.
        target: String,
        /// Reaction.
        key: String,
    },
}

impl Verb {
    /// The verb's keyword.
    pub fn keyword(&self) -> &'static str {
        match self {
            Verb::Say { .. } => "SAY",
            Verb::Reply { .. } => "REPLY",
            Verb::Edit { .. } => "EDIT",
            Verb::Del { .. } => "DEL",
            Verb::React { .. } => "REACT",
            Verb::Unreact { .. } => "UNREACT",
        }
    }

    /// The room the verb acts in.
    pub fn room(&self) -> &str {
        match self {
            Verb::Say { room, .. }
            | Verb::Reply { room, .. }
            | Verb::Edit { room, .. }
            | Verb::Del { room, .. }
            | Verb::React { room, .. }
            | Verb::Unreact { room, .. } => room,
        }
    }

    /// `room [target] [:text]`, as on the wire (text sanitised).
    fn args(&self) -> String {
        match self {
            Verb::Say { room, text } => format!("{room} :{}", sanitize_text(text)),
            Verb::Reply { room, parent: t, text } | Verb::Edit { room, target: t, text } => {
                format!("{room} {t} :{}", sanitize_text(text))
            }
            Verb::Del { room, target } => format!("{room} {target}"),
            Verb::React { room, target, key } | Verb::Unreact { room, target, key } => {
                format!("{room} {target} :{}", sanitize_text(key))
            }
        }
    }

    /// Parses `VERB args…` (the part after the tag, or after `EVT id nick`).
    pub fn parse(verb: &str, rest: &str) -> Result<Verb, ProtoError> {
        let (words, text) = match rest.split_once(" :") {
            Some((w, t)) => (w, Some(t.to_owned())),
            None => (rest, None),
        };
        let w: Vec<&str> = words.split(' ').filter(|s| !s.is_empty()).collect();
        for word in &w {
            check_word(word)?;
        }
        let bad = || ProtoError::Malformed(format!("{verb} {rest}"));
        let s = |i: usize| w.get(i).map(|x| x.to_string()).ok_or_else(bad);
        let v = match (verb, w.len(), text) {
            ("SAY", 1, Some(text)) => Verb::Say { room: s(0)?, text },
            ("REPLY", 2, Some(text)) => Verb::Reply { room: s(0)?, parent: s(1)?, text },
            ("EDIT", 2, Some(text)) => Verb::Edit { room: s(0)?, target: s(1)?, text },
            ("DEL", 2, None) => Verb::Del { room: s(0)?, target: s(1)? },
            ("REACT", 2, Some(key)) => Verb::React { room: s(0)?, target: s(1)?, key },
            ("UNREACT", 2, Some(key)) => Verb::Unreact { room: s(0)?, target: s(1)?, key },
            _ => return Err(bad()),
        };
        Ok(v)
    }
}

/// A line from the client to the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientLine {
    /// `HELLO nick`
    Hello(String),
    /// `JOIN room`
    Join(String),
    /// `TAG VERB …`
    Tagged {
        /// Client-chosen tag echoed in ACK/ERR.
        tag: String,
        /// The command.
        verb: Verb,
    },
}

impl ClientLine {
    /// Serialises (without the newline).
    pub fn to_line(&self) -> String {
        match self {
            ClientLine::Hello(n) => format!("HELLO {n}"),
            ClientLine::Join(r) => format!("JOIN {r}"),
            ClientLine::Tagged { tag, verb } => format!("{tag} {} {}", verb.keyword(), verb.args()),
        }
    }

    /// Parses one line (server side).
    pub fn parse(line: &str) -> Result<ClientLine, ProtoError> {
        if line.len() > MAX_LINE {
            return Err(ProtoError::TooLong(line.len()));
        }
        let (first, rest) = line.split_once(' ').ok_or_else(|| ProtoError::Malformed(line.to_owned()))?;
        match first {
            "HELLO" => check_word(rest).map(|_| ClientLine::Hello(rest.to_owned())),
            "JOIN" => check_word(rest).map(|_| ClientLine::Join(rest.to_owned())),
            tag => {
                check_word(tag)?;
                let (verb, args) = rest.split_once(' ').ok_or_else(|| ProtoError::Malformed(line.to_owned()))?;
                Ok(ClientLine::Tagged { tag: tag.to_owned(), verb: Verb::parse(verb, args)? })
            }
        }
    }
}

/// A line from the server to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerLine {
    /// Registration accepted.
    Welcome(String),
    /// A tagged command succeeded; the event got `id`.
    Ack {
        /// The tag.
        tag: String,
        /// The id.
        id: String,
    },
    /// A tagged command failed.
    Err {
        /// The tag.
        tag: String,
        /// Why.
        reason: String,
    },
    /// Something happened in a joined room.
    Evt {
        /// The event's id.
        id: String,
        /// Who did it.
        nick: String,
        /// What.
        verb: Verb,
    },
}

impl ServerLine {
    /// Serialises (without the newline).
    pub fn to_line(&self) -> String {
        match self {
            ServerLine::Welcome(n) => format!("WELCOME {n}"),
            ServerLine::Ack { tag, id } => format!("ACK {tag} {id}"),
            ServerLine::Err { tag, reason } => format!("ERR {tag} :{}", sanitize_text(reason)),
            ServerLine::Evt { id, nick, verb } => format!("EVT {id} {nick} {} {}", verb.keyword(), verb.args()),
        }
    }

    /// Parses one line (client side).
    pub fn parse(line: &str) -> Result<ServerLine, ProtoError> {
        if line.len() > MAX_LINE {
            return Err(ProtoError::TooLong(line.len()));
        }
        let bad = || ProtoError::Malformed(line.to_owned());
        let mut it = line.splitn(2, ' ');
        let cmd = it.next().ok_or_else(bad)?;
        let rest = it.next().ok_or_else(bad)?;
        match cmd {
            "WELCOME" => check_word(rest).map(|_| ServerLine::Welcome(rest.to_owned())),
            "ACK" => {
                let (tag, id) = rest.split_once(' ').ok_or_else(bad)?;
                check_word(tag)?;
                check_word(id)?;
                Ok(ServerLine::Ack { tag: tag.to_owned(), id: id.to_owned() })
            }
            "ERR" => {
                let (tag, reason) = rest.split_once(" :").ok_or_else(bad)?;
                check_word(tag)?;
                Ok(ServerLine::Err { tag: tag.to_owned(), reason: reason.to_owned() })
            }
            "EVT" => {
                let mut p = rest.splitn(4, ' ');
                let (id, nick, verb, args) = (
                    p.next().ok_or_else(bad)?,
                    p.next().ok_or_else(bad)?,
                    p.next().ok_or_else(bad)?,
                    p.next().ok_or_else(bad)?,
                );
                check_word(id)?;
                check_word(nick)?;
                Ok(ServerLine::Evt { id: id.to_owned(), nick: nick.to_owned(), verb: Verb::parse(verb, args)? })
            }
            _ => Err(bad()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let lines = [
            ClientLine::Hello("bot".into()),
            ClientLine::Join("#r".into()),
            ClientLine::Tagged { tag: "t1".into(), verb: Verb::Say { room: "#r".into(), text: "hi: there :)".into() } },
            ClientLine::Tagged {
                tag: "t2".into(),
                verb: Verb::React { room: "#r".into(), target: "m1".into(), key: "👍".into() },
            },
            ClientLine::Tagged { tag: "t3".into(), verb: Verb::Del { room: "#r".into(), target: "m1".into() } },
        ];
        for l in lines {
            assert_eq!(ClientLine::parse(&l.to_line()), Ok(l.clone()), "{}", l.to_line());
        }
        let evt = ServerLine::Evt {
            id: "m9".into(),
            nick: "al".into(),
            verb: Verb::Edit { room: "#r".into(), target: "m1".into(), text: "x".into() },
        };
        assert_eq!(ServerLine::parse(&evt.to_line()), Ok(evt));
        assert_eq!(ServerLine::parse("ACK t1 m2"), Ok(ServerLine::Ack { tag: "t1".into(), id: "m2".into() }));
    }

    #[test]
    fn text_cannot_inject_lines() {
        let v = Verb::Say { room: "#r".into(), text: "a\r\nJOIN #evil\n\u{0}b".into() };
        let line = ClientLine::Tagged { tag: "t".into(), verb: v }.to_line();
        assert_eq!(line, "t SAY #r :a ⏎ JOIN #evil ⏎ b");
        assert!(!line.contains(['\r', '\n', '\0']));
    }

    #[test]
    fn hostile_lines_are_errors_not_panics() {
        for l in [
            "",
            " ",
            "EVT",
            "EVT m1",
            "EVT m1 n SAY",
            "ACK",
            "ACK t",
            "WELCOME a b",
            "ERR t",
            "EVT m1 n DEL #r",
            "EVT m1 n BOGUS #r :x",
            "t SAY",
            "t SAY #r x",
            ":x SAY #r :y",
            "EVT m\u{1} n SAY #r :x",
        ] {
            assert!(ServerLine::parse(l).is_err() || ClientLine::parse(l).is_err(), "{l:?}");
        }
        assert!(matches!(ServerLine::parse(&"x".repeat(MAX_LINE + 1)), Err(ProtoError::TooLong(_))));
        let long = sanitize_text(&"é".repeat(MAX_TEXT));
        assert!(long.len() <= MAX_TEXT && long.is_char_boundary(long.len()));
    }
}
