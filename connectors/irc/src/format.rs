//! IRC formatting codes ⇄ MIMI markdown.
//!
//! Outbound, markdown becomes IRC codes: `**bold**` → `\x02`, `_italic_` → `\x1D`, `` `code` `` → `\x11`
//! (monospace), links → `text <url>`; everything else is shown as its plain text. Inbound, bold/italic/monospace
//! codes become markdown with the text around them escaped; colours, underline, reverse and strike are dropped.

use pulldown_cmark::{Event, Options, Parser, Tag, TagEnd};

const BOLD: char = '\x02';
const ITALIC: char = '\x1D';
const MONO: char = '\x11';
const RESET: char = '\x0F';

/// Markdown → IRC text with formatting codes (may contain `\n` between paragraphs and lines).
pub fn markdown_to_irc(md: &str) -> String {
    let mut out = String::new();
    let mut link: Vec<String> = Vec::new();
    for ev in Parser::new_ext(md, Options::ENABLE_STRIKETHROUGH) {
        match ev {
            Event::Start(Tag::Strong) | Event::End(TagEnd::Strong) => out.push(BOLD),
            Event::Start(Tag::Emphasis) | Event::End(TagEnd::Emphasis) => out.push(ITALIC),
            Event::Code(c) => {
                out.push(MONO);
                out.push_str(&c);
                out.push(MONO);
            }
            Event::Start(Tag::Link { dest_url, .. }) => link.push(dest_url.to_string()),
            Event::End(TagEnd::Link) => {
                if let Some(url) = link.pop() {
                    out.push_str(&format!(" <{url}>"));
                }
            }
            Event::Start(Tag::Item) => out.push_str("• "),
            Event::Start(Tag::CodeBlock(_)) | Event::End(TagEnd::CodeBlock) => {}
            Event::Text(t) | Event::Html(t) | Event::InlineHtml(t) => out.push_str(&t),
            Event::SoftBreak | Event::HardBreak => out.push('\n'),
            Event::End(TagEnd::Paragraph | TagEnd::Item | TagEnd::Heading(_) | TagEnd::BlockQuote(_)) => out.push('\n'),
            _ => {}
        }
    }
    out.trim_end_matches('\n').to_owned()
}

/// Escapes markdown's inline specials in a piece of plain text (spaces are kept as they are, unlike
/// `mimi_content::markdown::plain_to_markdown`, which works on whole messages).
fn escape_inline(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '\\' | '`' | '*' | '_' | '[' | ']' | '<' | '>' | '|' | '~' | '#' | '!') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// True if `text` carries IRC formatting codes.
pub fn has_codes(text: &str) -> bool {
    text.chars().any(|c| matches!(c, '\x02' | '\x1D' | '\x11' | '\x1F' | '\x16' | '\x1E' | '\x0F' | '\x03' | '\x04'))
}

/// IRC text → (text, is_markdown). Text without codes stays plain; with codes it becomes markdown.
pub fn irc_to_markdown(text: &str) -> (String, bool) {
    if !has_codes(text) {
        return (text.to_owned(), false);
    }
    let mut out = String::new();
    let mut plain = String::new();
    let (mut bold, mut italic, mut mono) = (false, false, false);
    let flush = |plain: &mut String, out: &mut String, mono: bool| {
        if mono {
            out.push_str(plain);
        } else {
            out.push_str(&escape_inline(plain));
        }
        plain.clear();
    };
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            BOLD => {
                flush(&mut plain, &mut out, mono);
                out.push_str("**");
                bold = !bold;
            }
            ITALIC => {
                flush(&mut plain, &mut out, mono);
                out.push('_');
                italic = !italic;
            }
            MONO => {
                flush(&mut plain, &mut out, mono);
                out.push('`');
                mono = !mono;
            }
            RESET => {
                flush(&mut plain, &mut out, mono);
                for (on, m) in [(mono, "`"), (italic, "_"), (bold, "**")] {
                    if on {
                        out.push_str(m);
                    }
                }
                (bold, italic, mono) = (false, false, false);
            }
            '\x03' | '\x04' => {
                // Colour: \x03[fg[,bg]] with 1–2 digits each (\x04: 6 hex digits).
                let digits = if c == '\x03' { 2 } else { 6 };
                let is_digit = |ch: &char| if c == '\x03' { ch.is_ascii_digit() } else { ch.is_ascii_hexdigit() };
                for _ in 0..digits {
                    if chars.next_if(is_digit).is_none() {
                        break;
                    }
                }
                if chars.peek() == Some(&',') {
                    let mut look = chars.clone();
                    look.next();
                    if look.peek().is_some_and(is_digit) {
                        chars.next();
                        for _ in 0..digits {
                            if chars.next_if(is_digit).is_none() {
                                break;
                            }
                        }
                    }
                }
            }
            '\x1F' | '\x16' | '\x1E' => {}
            c => plain.push(c),
        }
    }
    flush(&mut plain, &mut out, mono);
    for (on, m) in [(mono, "`"), (italic, "_"), (bold, "**")] {
        if on {
            out.push_str(m);
        }
    }
    (out, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_becomes_codes() {
        assert_eq!(markdown_to_irc("**bold** and _it_ `x`"), "\x02bold\x02 and \x1Dit\x1D \x11x\x11");
        assert_eq!(markdown_to_irc("see [docs](https://x.org)"), "see docs <https://x.org>");
        assert_eq!(markdown_to_irc("a\nb\n\nc"), "a\nb\nc");
        assert_eq!(markdown_to_irc("<b>raw</b>"), "<b>raw</b>");
    }

    #[test]
    fn codes_become_markdown_and_colours_vanish() {
        assert_eq!(irc_to_markdown("plain *text*"), ("plain *text*".into(), false));
        let (md, is) = irc_to_markdown("\x02bold\x02 \x0304,12red\x03 *x*");
        assert!(is);
        assert_eq!(md, "**bold** red \\*x\\*");
        assert_eq!(irc_to_markdown("\x1Dopen").0, "_open_");
        assert_eq!(irc_to_markdown("\x02a\x0Fb").0, "**a**b");
    }
}
