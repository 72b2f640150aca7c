//! XEP-0393 Message Styling ⇄ MIMI markdown.
//!
//! Inbound ([`styled_to_markdown`]): `*strong*` → `**strong**`, `_emphasis_` → `*emphasis*`, `~strike~` →
//! `~~strike~~`, `` `mono` `` → a code span, ```` ``` ```` blocks → fenced code blocks, `> ` lines → block quotes;
//! everything else is escaped so that it renders literally (nothing an XMPP user types becomes markdown markup
//! they did not write as styling). A body without any styling stays plain text ([`has_styling`] is false).
//!
//! Outbound ([`markdown_to_styled`]): the reverse mapping; links become `text <url>`, list items `• item`,
//! headings and tables their text. A plain-text body that happens to contain styling directives is sent with the
//! XEP-0393 `<unstyled/>` hint instead (see `outbound`).

use mimi_content::markdown::plain_to_markdown;
use pulldown_cmark::{Event, Options, Parser, Tag, TagEnd};

/// One parsed piece of a line.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Span {
    Plain(String),
    Styled(char, Vec<Span>),
    Mono(String),
}

/// True if `body` contains anything XEP-0393 would render as styling.
pub fn has_styling(body: &str) -> bool {
    blocks(body).iter().any(|b| match b {
        Block::Pre(_) | Block::Quote(_) => true,
        Block::Line(l) => parse_spans(l).iter().any(|s| !matches!(s, Span::Plain(_))),
    })
}

/// Converts a XEP-0393 styled body to MIMI markdown that renders the same.
pub fn styled_to_markdown(body: &str) -> String {
    let mut out: Vec<String> = Vec::new();
    for b in blocks(body) {
        match b {
            Block::Line(l) => out.push(line_to_markdown(&l)),
            Block::Quote(lines) => {
                let inner = styled_to_markdown(&lines.join("\n"));
                out.push(inner.lines().map(|l| format!("> {l}")).collect::<Vec<_>>().join("\n"));
            }
            Block::Pre(lines) => {
                let fence = "`".repeat(3.max(longest_backtick_run(&lines.join("\n")) + 1));
                out.push(format!("{fence}\n{}\n{fence}", lines.join("\n")));
            }
        }
    }
    // Consecutive lines are joined with hard breaks; blocks stand alone.
    let mut md = String::new();
    for (i, piece) in out.iter().enumerate() {
        if i > 0 {
            let block = |p: &str| p.starts_with('>') || p.starts_with("```");
            md.push_str(if block(piece) || block(&out[i - 1]) { "\n\n" } else { "\\\n" });
        }
        md.push_str(piece);
    }
    md
}

/// Converts MIMI markdown to a XEP-0393 styled body.
pub fn markdown_to_styled(md: &str) -> String {
    let mut out = String::new();
    let mut links: Vec<String> = Vec::new();
    let mut quote_depth = 0usize;
    let mut in_code_block = false;
    let push_text = |out: &mut String, text: &str, quote_depth: usize| {
        for (i, part) in text.split('\n').enumerate() {
            if i > 0 {
                out.push('\n');
            }
            if out.is_empty() || out.ends_with('\n') {
                out.push_str(&"> ".repeat(quote_depth));
            }
            out.push_str(part);
        }
    };
    for ev in Parser::new_ext(md, Options::ENABLE_STRIKETHROUGH | Options::ENABLE_TABLES) {
        match ev {
            Event::Start(Tag::Strong) | Event::End(TagEnd::Strong) => push_text(&mut out, "*", quote_depth),
            Event::Start(Tag::Emphasis) | Event::End(TagEnd::Emphasis) => push_text(&mut out, "_", quote_depth),
            Event::Start(Tag::Strikethrough) | Event::End(TagEnd::Strikethrough) => {
                push_text(&mut out, "~", quote_depth)
            }
            Event::Code(c) => push_text(&mut out, &format!("`{c}`"), quote_depth),
            Event::Start(Tag::CodeBlock(_)) => {
                in_code_block = true;
                push_text(&mut out, "```\n", quote_depth);
            }
            Event::End(TagEnd::CodeBlock) => {
                in_code_block = false;
                if !out.ends_with('\n') {
                    out.push('\n');
                }
                push_text(&mut out, "```\n", quote_depth);
            }
            Event::Start(Tag::BlockQuote(_)) => quote_depth += 1,
            Event::End(TagEnd::BlockQuote(_)) => quote_depth = quote_depth.saturating_sub(1),
            Event::Start(Tag::Link { dest_url, .. }) => links.push(dest_url.to_string()),
            Event::End(TagEnd::Link) => {
                if let Some(url) = links.pop() {
                    push_text(&mut out, &format!(" <{url}>"), quote_depth);
                }
            }
            Event::Start(Tag::Item) => push_text(&mut out, "• ", quote_depth),
            Event::Text(t) | Event::Html(t) | Event::InlineHtml(t) => push_text(&mut out, &t, quote_depth),
            Event::SoftBreak | Event::HardBreak => out.push('\n'),
            Event::End(TagEnd::Paragraph | TagEnd::Item | TagEnd::Heading(_) | TagEnd::TableRow) if !in_code_block => {
                out.push('\n')
            }
            Event::End(TagEnd::TableCell) => out.push(' '),
            _ => {}
        }
    }
    out.trim_end_matches('\n').to_owned()
}

/// Block-level structure of a styled body (XEP-0393 §5.1).
#[derive(Debug)]
enum Block {
    Line(String),
    Quote(Vec<String>),
    Pre(Vec<String>),
}

fn blocks(body: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut lines = body.split('\n').map(|l| l.trim_end_matches('\r')).peekable();
    while let Some(line) = lines.next() {
        if line.starts_with("```") {
            let mut pre = Vec::new();
            let mut closed = false;
            for l in lines.by_ref() {
                if l == "```" {
                    closed = true;
                    break;
                }
                pre.push(l.to_owned());
            }
            if closed || !pre.is_empty() {
                out.push(Block::Pre(pre));
            } else {
                out.push(Block::Line(line.to_owned()));
            }
        } else if let Some(q) = line.strip_prefix('>') {
            let mut quote = vec![q.strip_prefix(' ').unwrap_or(q).to_owned()];
            while let Some(next) = lines.peek().and_then(|l| l.strip_prefix('>')) {
                quote.push(next.strip_prefix(' ').unwrap_or(next).to_owned());
                lines.next();
            }
            out.push(Block::Quote(quote));
        } else {
            out.push(Block::Line(line.to_owned()));
        }
    }
    out
}

const DIRECTIVES: [char; 4] = ['*', '_', '~', '`'];

/// Parses the spans of one line (XEP-0393 §5.2): an opening directive at the start, after whitespace or after
/// another opening directive, not followed by whitespace; the closing one the next same directive on the line
/// not preceded by whitespace, with text between. Preformatted spans are literal; others nest.
fn parse_spans(line: &str) -> Vec<Span> {
    let chars: Vec<char> = line.chars().collect();
    parse_range(&chars)
}

fn parse_range(chars: &[char]) -> Vec<Span> {
    let mut spans = Vec::new();
    let mut plain = String::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let can_open = DIRECTIVES.contains(&c)
            && (i == 0 || chars[i - 1].is_whitespace() || DIRECTIVES.contains(&chars[i - 1]))
            && chars.get(i + 1).is_some_and(|n| !n.is_whitespace() && *n != c);
        if can_open && let Some(end) = (i + 2..chars.len()).find(|&j| chars[j] == c && !chars[j - 1].is_whitespace()) {
            if !plain.is_empty() {
                spans.push(Span::Plain(std::mem::take(&mut plain)));
            }
            let inner = &chars[i + 1..end];
            spans.push(if c == '`' { Span::Mono(inner.iter().collect()) } else { Span::Styled(c, parse_range(inner)) });
            i = end + 1;
            continue;
        }
        plain.push(c);
        i += 1;
    }
    if !plain.is_empty() {
        spans.push(Span::Plain(plain));
    }
    spans
}

fn line_to_markdown(line: &str) -> String {
    let mut out = String::new();
    render_spans(&parse_spans(line), &mut out);
    out
}

fn render_spans(spans: &[Span], out: &mut String) {
    for s in spans {
        match s {
            Span::Plain(p) => {
                // Blanks between spans stay blanks; only the text in between is escaped.
                let core = p.trim_matches([' ', '\t']);
                if core.is_empty() {
                    out.push_str(p);
                    continue;
                }
                let lead = &p[..p.len() - p.trim_start_matches([' ', '\t']).len()];
                let trail = &p[p.trim_end_matches([' ', '\t']).len()..];
                out.push_str(lead);
                out.push_str(&plain_to_markdown(core));
                out.push_str(trail);
            }
            Span::Mono(m) => {
                let ticks = "`".repeat(longest_backtick_run(m) + 1);
                let pad = if m.starts_with('`') || m.ends_with('`') { " " } else { "" };
                out.push_str(&format!("{ticks}{pad}{m}{pad}{ticks}"));
            }
            Span::Styled(c, inner) => {
                let mark = match c {
                    '*' => "**",
                    '_' => "*",
                    _ => "~~",
                };
                out.push_str(mark);
                render_spans(inner, out);
                out.push_str(mark);
            }
        }
    }
}

fn longest_backtick_run(s: &str) -> usize {
    s.split(|c| c != '`').map(str::len).max().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mimi_content::markdown::to_plain_text;

    #[test]
    fn spans_become_markdown() {
        assert_eq!(styled_to_markdown("*bold* and _it_ ~gone~ `x*y`"), "**bold** and *it* ~~gone~~ `x*y`");
        assert_eq!(styled_to_markdown("*_both_*"), "***both***");
    }

    #[test]
    fn unstyled_text_is_plain_and_escaped() {
        assert!(!has_styling("2 * 3 = 6 and a_b_c"));
        assert!(!has_styling("<b>bold</b> & <script>"));
        assert!(has_styling("*bold*"));
        let md = styled_to_markdown("*yes* but [not](a link) <b>");
        assert_eq!(to_plain_text(&md), "yes but [not](a link) <b>");
    }

    #[test]
    fn directives_need_text_and_no_inner_whitespace_at_edges() {
        assert!(!has_styling("** and * x *"));
        assert!(!has_styling("a*b*c"));
    }

    #[test]
    fn blocks_become_code_and_quotes() {
        let md = styled_to_markdown("look:\n```\nlet *x* = 1;\n```\n> quoted *bold*\nafter");
        assert_eq!(md, "look\\:\n\n```\nlet *x* = 1;\n```\n\n> quoted **bold**\n\nafter");
    }

    #[test]
    fn markdown_becomes_styling() {
        assert_eq!(markdown_to_styled("**b** *i* ~~s~~ `c`"), "*b* _i_ ~s~ `c`");
        assert_eq!(markdown_to_styled("see [the docs](https://x.example/)"), "see the docs <https://x.example/>");
        assert_eq!(markdown_to_styled("> quoted\n\nafter"), "> quoted\nafter");
        assert_eq!(markdown_to_styled("```\ncode\n```"), "```\ncode\n```");
    }

    #[test]
    fn round_trip_keeps_the_styling() {
        for s in ["*bold* text", "_it_ and `mono`", "~strike~"] {
            assert_eq!(markdown_to_styled(&styled_to_markdown(s)), s);
        }
    }
}
