//! A small shared helper for MIMI markdown (`text/markdown;variant=GFM-MIMI`,
//! §7.1.1: GFM with tables, task lists and strikethrough, no autolink
//! extension, no raw HTML), built on `pulldown-cmark`.
//!
//! * [`sanitize_gfm_mimi`]: makes outgoing markdown GFM-MIMI ("nohtml": the
//!   `<` of every HTML tag becomes `&lt;`).
//! * [`to_plain_text`]: for IRC and other plain-text networks.
//! * [`to_html`]: safe HTML (raw HTML is escaped, only safe link schemes).
//! * [`plain_to_markdown`]: escapes plain text so it renders literally.
//! * [`mention_link`] / [`mentions`]: `[@Name](mimi://…/u/…)` links; [`push_link_destination`] for other links.

use pulldown_cmark::{CowStr, Event, LinkType, Options, Parser, Tag, TagEnd, html};

/// The GFM extensions GFM-MIMI allows.
fn options() -> Options {
    Options::ENABLE_TABLES | Options::ENABLE_TASKLISTS | Options::ENABLE_STRIKETHROUGH
}

/// Rewrites markdown so that it contains no raw HTML: the opening `<` of
/// every HTML construct is replaced by `&lt;` (the draft's "nohtml").
pub fn sanitize_gfm_mimi(md: &str) -> String {
    let mut cur = md.to_owned();
    // One pass suffices in practice; a few more guard against any construct
    // whose rewrite could expose a new one.
    for _ in 0..4 {
        let mut ranges: Vec<std::ops::Range<usize>> = Parser::new_ext(&cur, options())
            .into_offset_iter()
            .filter(|(e, _)| matches!(e, Event::Html(_) | Event::InlineHtml(_)))
            .map(|(_, r)| r)
            .collect();
        if ranges.is_empty() {
            return cur;
        }
        ranges.sort_by_key(|r| r.start);
        let mut out = String::with_capacity(cur.len() + 16);
        let mut last = 0;
        for r in ranges {
            if r.start < last {
                continue;
            }
            out.push_str(&cur[last..r.start]);
            out.push_str(&cur[r.start..r.end].replace('<', "&lt;"));
            last = r.end;
        }
        out.push_str(&cur[last..]);
        cur = out;
    }
    cur
}

/// Link schemes that [`to_html`] keeps as links.
const SAFE_SCHEMES: &[&str] = &["http", "https", "mailto", "mimi", "xmpp", "irc", "ircs", "matrix", "cid", "tel"];

/// Whether a link destination is safe to emit as `href`/`src`.
pub fn is_safe_url(url: &str) -> bool {
    let url = url.trim();
    match url.find(':') {
        Some(i) => {
            let scheme = &url[..i];
            let looks_like_scheme =
                !scheme.is_empty() && scheme.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
            if !looks_like_scheme {
                // a ':' after a '/', '?' or '#' (relative URL), or garbage
                return url[..i].contains(['/', '?', '#']);
            }
            SAFE_SCHEMES.iter().any(|s| s.eq_ignore_ascii_case(scheme))
        }
        None => true,
    }
}

/// Renders markdown as HTML safe to embed: raw HTML is shown as text,
/// links with unsafe schemes (e.g. `javascript:`) lose their link, and images
/// become plain links (no automatic remote loads).
pub fn to_html(md: &str) -> String {
    let mut stack: Vec<bool> = Vec::new();
    let events = Parser::new_ext(md, options()).filter_map(|ev| match ev {
        Event::Html(s) | Event::InlineHtml(s) => Some(Event::Text(s)),
        Event::Start(Tag::Link { link_type, dest_url, title, id })
        | Event::Start(Tag::Image { link_type, dest_url, title, id }) => {
            let keep = is_safe_url(&dest_url);
            stack.push(keep);
            keep.then_some(Event::Start(Tag::Link { link_type, dest_url, title, id }))
        }
        Event::End(TagEnd::Link) | Event::End(TagEnd::Image) => {
            let keep = stack.pop().unwrap_or(false);
            keep.then_some(Event::End(TagEnd::Link))
        }
        other => Some(other),
    });
    let mut out = String::with_capacity(md.len() * 3 / 2 + 16);
    html::push_html(&mut out, events);
    out
}

/// Renders markdown as plain text: formatting markers are removed, list
/// items get `- `/`N. `, quotes `> `, links show their target after the text
/// (except mentions and links whose text is the URL), raw HTML stays as text.
pub fn to_plain_text(md: &str) -> String {
    let mut out = String::with_capacity(md.len());
    let mut lists: Vec<Option<u64>> = Vec::new();
    let mut quote = 0usize;
    let mut links: Vec<(String, usize)> = Vec::new();
    let mut cell = 0usize;
    let new_block = |out: &mut String, quote: usize| {
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        for _ in 0..quote {
            out.push_str("> ");
        }
    };
    for ev in Parser::new_ext(md, options()) {
        match ev {
            Event::Start(Tag::Paragraph | Tag::Heading { .. } | Tag::CodeBlock(_))
                if !out.ends_with("- ") && !out.ends_with(". ") && !out.ends_with("] ") =>
            {
                new_block(&mut out, quote);
            }
            Event::Start(Tag::BlockQuote(_)) => quote += 1,
            Event::End(TagEnd::BlockQuote(_)) => quote = quote.saturating_sub(1),
            Event::Start(Tag::List(start)) => lists.push(start),
            Event::End(TagEnd::List(_)) => {
                lists.pop();
            }
            Event::Start(Tag::Item) => {
                new_block(&mut out, quote);
                for _ in 1..lists.len() {
                    out.push_str("  ");
                }
                match lists.last_mut() {
                    Some(Some(n)) => {
                        out.push_str(&format!("{n}. "));
                        *n += 1;
                    }
                    _ => out.push_str("- "),
                }
            }
            Event::TaskListMarker(done) => out.push_str(if done { "[x] " } else { "[ ] " }),
            Event::Start(Tag::TableRow | Tag::TableHead) => {
                new_block(&mut out, quote);
                cell = 0;
            }
            Event::Start(Tag::TableCell) => {
                if cell > 0 {
                    out.push_str(" | ");
                }
                cell += 1;
            }
            Event::Start(Tag::Link { dest_url, .. } | Tag::Image { dest_url, .. }) => {
                links.push((dest_url.into_string(), out.len()));
            }
            Event::End(TagEnd::Link | TagEnd::Image) => {
                if let Some((url, start)) = links.pop() {
                    let text = out[start..].to_owned();
                    let mention = url.starts_with("mimi:");
                    let same = text == url || text == url.trim_start_matches("mailto:");
                    if !mention && !same && !url.is_empty() {
                        out.push_str(" <");
                        out.push_str(&url);
                        out.push('>');
                    }
                }
            }
            Event::End(TagEnd::CodeBlock) => {
                while out.ends_with('\n') {
                    out.pop();
                }
            }
            Event::Text(t) | Event::Code(t) | Event::Html(t) | Event::InlineHtml(t) => push_quoted(&mut out, &t, quote),
            Event::SoftBreak | Event::HardBreak => new_line(&mut out, quote),
            Event::Rule => {
                new_block(&mut out, quote);
                out.push_str("---");
            }
            _ => {}
        }
    }
    while out.ends_with('\n') {
        out.pop();
    }
    out
}

fn new_line(out: &mut String, quote: usize) {
    out.push('\n');
    for _ in 0..quote {
        out.push_str("> ");
    }
}

fn push_quoted(out: &mut String, t: &CowStr<'_>, quote: usize) {
    if quote == 0 || !t.contains('\n') {
        out.push_str(t);
        return;
    }
    let mut lines = t.split('\n').peekable();
    while let Some(l) = lines.next() {
        out.push_str(l);
        if lines.peek().is_some_and(|n| !n.is_empty()) {
            new_line(out, quote);
        } else if lines.peek().is_some() {
            out.push('\n');
        }
    }
}

/// Escapes one line's inline text so markdown renders it literally.
fn escape_inline(s: &str, out: &mut String) {
    for c in s.chars() {
        if c.is_ascii_punctuation() {
            out.push('\\');
        }
        out.push(c);
    }
}

/// Converts plain text (e.g. from IRC) to markdown that renders as exactly
/// that text: ASCII punctuation is backslash-escaped, line breaks become hard
/// breaks, and leading/trailing blanks of a line become character references
/// so they are not eaten. Leading and trailing empty lines are dropped.
pub fn plain_to_markdown(text: &str) -> String {
    let text = text.replace("\r\n", "\n").replace('\r', "\n");
    let text = text.trim_matches('\n');
    let mut out = String::with_capacity(text.len() + text.len() / 4 + 8);
    for (i, line) in text.split('\n').enumerate() {
        if i > 0 {
            out.push_str("\\\n");
        }
        let body = line.trim_start_matches([' ', '\t']);
        let lead = &line[..line.len() - body.len()];
        let core = body.trim_end_matches([' ', '\t']);
        let trail = &body[core.len()..];
        push_blanks(lead, &mut out);
        escape_inline(core, &mut out);
        push_blanks(trail, &mut out);
    }
    out
}

fn push_blanks(s: &str, out: &mut String) {
    for c in s.chars() {
        out.push_str(if c == '\t' { "&#9;" } else { "&#32;" });
    }
}

/// A markdown mention link `[@display](uri)` as in the draft's §5.4.
pub fn mention_link(display: &str, user_uri: &str) -> String {
    let mut out = String::from("[@");
    escape_inline(&display.replace(['\n', '\r'], " "), &mut out);
    out.push_str("](");
    push_link_destination(user_uri, &mut out);
    out.push(')');
    out
}

/// Writes `url` as an inline link destination that markdown reads back as `url`: the characters that would end
/// or change it (blank, parentheses, angle brackets, backslash) are percent-encoded, control characters dropped.
pub fn push_link_destination(url: &str, out: &mut String) {
    for c in url.chars() {
        match c {
            ' ' => out.push_str("%20"),
            '(' => out.push_str("%28"),
            ')' => out.push_str("%29"),
            '<' => out.push_str("%3C"),
            '>' => out.push_str("%3E"),
            '\\' => out.push_str("%5C"),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
}

/// The mentions in a markdown text: (link text, target URI) for every link
/// whose target is a `mimi:` URI with a `/u/` path.
pub fn mentions(md: &str) -> Vec<(String, String)> {
    let mut found = Vec::new();
    let mut cur: Option<(String, String)> = None;
    for ev in Parser::new_ext(md, options()) {
        match ev {
            Event::Start(Tag::Link {
                link_type: LinkType::Inline | LinkType::Reference | LinkType::Shortcut,
                dest_url,
                ..
            }) if dest_url.starts_with("mimi:") && dest_url.contains("/u/") => {
                cur = Some((String::new(), dest_url.into_string()));
            }
            Event::Text(t) | Event::Code(t) => {
                if let Some((text, _)) = cur.as_mut() {
                    text.push_str(&t);
                }
            }
            Event::End(TagEnd::Link) => {
                if let Some(m) = cur.take() {
                    found.push(m);
                }
            }
            _ => {}
        }
    }
    found
}
