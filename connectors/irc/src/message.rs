//! IRC messages (RFC 1459/2812 framing with IRCv3 message tags), sans IO.
//!
//! `[@tags ]:[source ]COMMAND [params…] [:trailing]`. Parsing never panics and never allocates more than the line
//! it is given; the reader bounds lines before they get here ([`MAX_LINE`] plus [`MAX_TAGS`]).

use std::fmt;

/// Longest line without tags, including CRLF (RFC 1459).
pub const MAX_LINE: usize = 512;
/// Longest tag section a server may send (IRCv3 message-tags: 8191 bytes including `@` and the space).
pub const MAX_TAGS: usize = 8191;

/// A parse error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// The line is empty.
    Empty,
    /// No command.
    NoCommand,
    /// The line contains NUL, CR or LF.
    ForbiddenByte,
    /// The line is too long.
    TooLong(usize),
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::Empty => f.write_str("empty line"),
            ParseError::NoCommand => f.write_str("no command"),
            ParseError::ForbiddenByte => f.write_str("NUL, CR or LF inside a line"),
            ParseError::TooLong(n) => write!(f, "line of {n} bytes is too long"),
        }
    }
}

impl std::error::Error for ParseError {}

/// One IRC message.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Message {
    /// IRCv3 tags, unescaped, in order.
    pub tags: Vec<(String, Option<String>)>,
    /// `nick!user@host` or a server name.
    pub source: Option<String>,
    /// The command, uppercased (or a 3-digit numeric).
    pub command: String,
    /// Parameters; the last may contain spaces.
    pub params: Vec<String>,
}

impl Message {
    /// A message with `command` and `params`.
    pub fn new(command: &str, params: &[&str]) -> Self {
        Self { command: command.to_owned(), params: params.iter().map(|p| p.to_string()).collect(), ..Self::default() }
    }

    /// The value of tag `key`, if present.
    pub fn tag(&self, key: &str) -> Option<&str> {
        self.tags.iter().find(|(k, _)| k == key).and_then(|(_, v)| v.as_deref())
    }

    /// The nick part of the source (`nick!user@host` → `nick`).
    pub fn source_nick(&self) -> Option<&str> {
        self.source.as_deref().map(|s| s.split(['!', '@']).next().unwrap_or(s))
    }

    /// Parameter `i`.
    pub fn param(&self, i: usize) -> Option<&str> {
        self.params.get(i).map(String::as_str)
    }

    /// Parses one line (without CRLF).
    pub fn parse(line: &str) -> Result<Message, ParseError> {
        if line.bytes().any(|b| matches!(b, 0 | b'\r' | b'\n')) {
            return Err(ParseError::ForbiddenByte);
        }
        let mut rest = line.trim_start_matches(' ');
        if rest.is_empty() {
            return Err(ParseError::Empty);
        }
        let mut msg = Message::default();
        if let Some(t) = rest.strip_prefix('@') {
            let (tags, r) = t.split_once(' ').unwrap_or((t, ""));
            if tags.len() + 2 > MAX_TAGS {
                return Err(ParseError::TooLong(tags.len()));
            }
            msg.tags = tags
                .split(';')
                .filter(|s| !s.is_empty())
                .map(|kv| match kv.split_once('=') {
                    Some((k, v)) => (k.to_owned(), Some(unescape_tag(v))),
                    None => (kv.to_owned(), None),
                })
                .collect();
            rest = r.trim_start_matches(' ');
        }
        if rest.len() + 2 > MAX_LINE * 2 {
            return Err(ParseError::TooLong(rest.len()));
        }
        if let Some(s) = rest.strip_prefix(':') {
            let (src, r) = s.split_once(' ').unwrap_or((s, ""));
            msg.source = Some(src.to_owned());
            rest = r.trim_start_matches(' ');
        }
        let (cmd, mut r) = rest.split_once(' ').unwrap_or((rest, ""));
        if cmd.is_empty() {
            return Err(ParseError::NoCommand);
        }
        msg.command = cmd.to_ascii_uppercase();
        loop {
            r = r.trim_start_matches(' ');
            if r.is_empty() {
                break;
            }
            if let Some(trailing) = r.strip_prefix(':') {
                msg.params.push(trailing.to_owned());
                break;
            }
            let (p, next) = r.split_once(' ').unwrap_or((r, ""));
            msg.params.push(p.to_owned());
            r = next;
        }
        Ok(msg)
    }

    /// Serialises without CRLF. Parameters must already be free of CR/LF/NUL ([`crate::render`] guarantees
    /// that for text from other networks); any that slipped through are replaced by spaces, so no message can
    /// ever turn into two.
    pub fn to_line(&self) -> String {
        let mut out = String::new();
        if !self.tags.is_empty() {
            out.push('@');
            for (i, (k, v)) in self.tags.iter().enumerate() {
                if i > 0 {
                    out.push(';');
                }
                out.push_str(k);
                if let Some(v) = v {
                    out.push('=');
                    out.push_str(&escape_tag(v));
                }
            }
            out.push(' ');
        }
        if let Some(s) = &self.source {
            out.push(':');
            out.push_str(s);
            out.push(' ');
        }
        out.push_str(&self.command);
        let n = self.params.len();
        for (i, p) in self.params.iter().enumerate() {
            out.push(' ');
            let last = i + 1 == n;
            if last && (p.is_empty() || p.contains(' ') || p.starts_with(':')) {
                out.push(':');
            }
            out.extend(p.chars().map(|c| if matches!(c, '\0' | '\r' | '\n') { ' ' } else { c }));
        }
        out
    }
}

fn unescape_tag(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    let mut it = v.chars();
    while let Some(c) = it.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match it.next() {
            Some(':') => out.push(';'),
            Some('s') => out.push(' '),
            Some('\\') => out.push('\\'),
            Some('r') => out.push('\r'),
            Some('n') => out.push('\n'),
            Some(o) => out.push(o),
            None => {}
        }
    }
    out
}

fn escape_tag(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            ';' => out.push_str("\\:"),
            ' ' => out.push_str("\\s"),
            '\\' => out.push_str("\\\\"),
            '\r' => out.push_str("\\r"),
            '\n' => out.push_str("\\n"),
            '\0' => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_usual_shapes() {
        let m = Message::parse("@time=2026-01-01T00:00:00.000Z;msgid=abc\\sd :nick!u@h PRIVMSG #chan :hello there")
            .expect("parses");
        assert_eq!(m.tag("msgid"), Some("abc d"));
        assert_eq!(m.source_nick(), Some("nick"));
        assert_eq!(m.command, "PRIVMSG");
        assert_eq!(m.params, ["#chan", "hello there"]);
        let m = Message::parse("PING :irc.test").expect("parses");
        assert_eq!((m.command.as_str(), m.param(0)), ("PING", Some("irc.test")));
        let m = Message::parse(":irc.test 001 me :Welcome").expect("parses");
        assert_eq!(m.command, "001");
        let m = Message::parse(":irc.test CAP * LS :multi-prefix sasl=PLAIN,EXTERNAL").expect("parses");
        assert_eq!(m.params, ["*", "LS", "multi-prefix sasl=PLAIN,EXTERNAL"]);
        let m = Message::parse("privmsg #a b").expect("parses");
        assert_eq!((m.command.as_str(), m.params.len()), ("PRIVMSG", 2));
    }

    #[test]
    fn round_trips_and_never_splits() {
        for l in [
            "PRIVMSG #c :hi there",
            "@a=b\\:c;d :s!u@h NOTICE me x",
            "JOIN #c",
            "PRIVMSG #c ::)",
            "USER u 0 * :Real Name",
        ] {
            assert_eq!(Message::parse(l).expect("parses").to_line(), l);
        }
        let evil = Message::new("PRIVMSG", &["#c", "a\r\nQUIT :x\0"]).to_line();
        assert_eq!(evil, "PRIVMSG #c :a  QUIT :x ");
        assert!(!evil.contains(['\r', '\n', '\0']));
    }

    #[test]
    fn bad_lines_are_errors() {
        assert_eq!(Message::parse(""), Err(ParseError::Empty));
        assert_eq!(Message::parse("   "), Err(ParseError::Empty));
        assert_eq!(Message::parse(":src"), Err(ParseError::NoCommand));
        assert_eq!(Message::parse("@tags"), Err(ParseError::NoCommand));
        assert_eq!(Message::parse("PRIVMSG a\0b"), Err(ParseError::ForbiddenByte));
        assert!(matches!(Message::parse(&format!("@{} X", "a".repeat(9000))), Err(ParseError::TooLong(_))));
        assert!(matches!(Message::parse(&"A".repeat(5000)), Err(ParseError::TooLong(_))));
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(s in "\\PC{0,600}") {
            let _ = Message::parse(&s);
        }
    }
}
