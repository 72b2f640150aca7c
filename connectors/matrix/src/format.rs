//! Matrix HTML (`formatted_body`, `org.matrix.custom.html`) ⇄ MIMI markdown.
//!
//! * Inbound, [`html_to_markdown`]: the reply fallback (`<mx-reply>`) is removed with
//!   `ruma::html::remove_html_reply_fallback`, the rest sanitised with `ruma::html::sanitize_html` in
//!   [`HtmlSanitizerMode::Strict`] (only the tags and attributes the Matrix spec lists), then the tree is written as
//!   markdown. Text is escaped so that it renders literally; user pills (`https://matrix.to/#/@user:server`) become
//!   `mimi://` user links.
//! * Outbound, [`markdown_to_html`]: `mimi_content::markdown::to_html` (raw HTML escaped, unsafe link schemes
//!   dropped), with `mimi://` user links turned into pills. Nothing from another network reaches Matrix clients
//!   as markup unescaped. No reply fallback is ever added (removed from the spec in v1.13).

use mimi_content::markdown;
use ruma::html::matrix::{AnchorUri, MatrixElement};
use ruma::html::{Html, HtmlSanitizerMode, NodeData, NodeRef, RemoveReplyFallback};
use ruma::{MatrixToUri, MatrixUri, matrix_uri::MatrixId};
use std::fmt::Write as _;

/// Converts a Matrix `formatted_body` to MIMI markdown. `user_uri` maps a mentioned Matrix user id to the MIMI
/// URI the mention links to.
pub fn html_to_markdown(html: &str, user_uri: &dyn Fn(&str) -> String) -> String {
    let without_fallback = ruma::html::remove_html_reply_fallback(html);
    let clean = ruma::html::sanitize_html(&without_fallback, HtmlSanitizerMode::Strict, RemoveReplyFallback::Yes);
    let tree = Html::parse(&clean);
    let mut w = Writer { out: String::new(), user_uri, quote: 0, lists: Vec::new() };
    for child in tree.children() {
        w.node(&child, false);
    }
    tidy(&w.out)
}

/// Renders MIMI markdown as Matrix HTML; `pill` maps a `mimi://` user URI to the Matrix user id to pill (the
/// user's own id for Matrix users, their ghost for others), `None` to leave the link as it is.
pub fn markdown_to_html(md: &str, pill: &dyn Fn(&str) -> Option<String>) -> String {
    let mut html = markdown::to_html(md);
    for (_, uri) in markdown::mentions(md) {
        if let Some(user_id) = pill(&uri) {
            html = html.replace(&format!("href=\"{uri}\""), &format!("href=\"https://matrix.to/#/{user_id}\""));
        }
    }
    html.trim_end().to_owned()
}

/// Whether `md` renders as nothing but its plain text (then a message needs no `formatted_body`).
pub fn is_plain(md: &str) -> bool {
    markdown::plain_to_markdown(&markdown::to_plain_text(md)) == md
}

struct Writer<'a> {
    out: String,
    user_uri: &'a dyn Fn(&str) -> String,
    quote: usize,
    lists: Vec<Option<i64>>,
}

impl Writer<'_> {
    /// Starts a new line, with the quote markers of the current blockquote depth.
    fn newline(&mut self) {
        self.out.push('\n');
        for _ in 0..self.quote {
            self.out.push_str("> ");
        }
    }

    /// Ends the current block with a blank line.
    fn block_break(&mut self) {
        if !self.out.is_empty() {
            self.newline();
            self.newline();
        }
    }

    fn children(&mut self, node: &NodeRef, pre: bool) {
        for child in node.children() {
            self.node(&child, pre);
        }
    }

    fn node(&mut self, node: &NodeRef, pre: bool) {
        match node.data() {
            NodeData::Text(t) => {
                let text = t.borrow();
                if pre {
                    self.out.push_str(&text);
                } else {
                    let text = text.replace(['\n', '\r', '\t'], " ");
                    // Whitespace between the items of a list, quote or table is layout, not text.
                    if !text.trim().is_empty() || !in_container(node) {
                        self.inline_text(&text);
                    }
                }
            }
            NodeData::Element(e) => self.element(node, e.to_matrix().element, pre),
            NodeData::Document | NodeData::Other => self.children(node, pre),
        }
    }

    /// Writes HTML text so that markdown renders it literally; blanks at its ends are kept as one space (HTML
    /// collapses them too), except at the start of a line.
    fn inline_text(&mut self, text: &str) {
        let core = text.trim_matches(' ');
        let at_line_start = self.out.is_empty() || self.out.ends_with('\n') || self.out.ends_with("> ");
        if core.len() < text.len() && text.starts_with(' ') && !at_line_start {
            self.out.push(' ');
        }
        self.out.push_str(&markdown::plain_to_markdown(core));
        if !core.is_empty() && text.ends_with(' ') {
            self.out.push(' ');
        }
    }

    fn wrapped(&mut self, node: &NodeRef, marker: &str, pre: bool) {
        self.out.push_str(marker);
        self.children(node, pre);
        self.out.push_str(marker);
    }

    fn element(&mut self, node: &NodeRef, element: MatrixElement, pre: bool) {
        match element {
            MatrixElement::B | MatrixElement::Strong => self.wrapped(node, "**", pre),
            MatrixElement::I | MatrixElement::Em => self.wrapped(node, "*", pre),
            MatrixElement::Del | MatrixElement::S => self.wrapped(node, "~~", pre),
            MatrixElement::Code(_) if pre => self.children(node, true),
            MatrixElement::Code(_) => {
                let code = text_of(node);
                let fence = "`".repeat(longest_run(&code, '`') + 1);
                let pad = if code.starts_with('`') || code.ends_with('`') { " " } else { "" };
                let _ = write!(self.out, "{fence}{pad}{code}{pad}{fence}");
            }
            MatrixElement::Pre => {
                self.block_break();
                let code = text_of(node);
                let lang = node
                    .children()
                    .find_map(|c| match c.as_element()?.to_matrix().element {
                        MatrixElement::Code(data) => data.language.map(|l| l.to_string()),
                        _ => None,
                    })
                    .filter(|l| l.chars().all(|c| c.is_ascii_alphanumeric() || "+-_.".contains(c)))
                    .unwrap_or_default();
                let fence = "`".repeat(longest_run(&code, '`').max(2) + 1);
                let _ = write!(self.out, "{fence}{lang}");
                for line in code.trim_end_matches('\n').split('\n') {
                    self.newline();
                    self.out.push_str(line);
                }
                self.newline();
                self.out.push_str(&fence);
                self.block_break();
            }
            MatrixElement::A(anchor) => self.anchor(node, anchor.href, pre),
            MatrixElement::P | MatrixElement::Div(_) | MatrixElement::Table | MatrixElement::Details => {
                self.block_break();
                self.children(node, pre);
                self.block_break();
            }
            MatrixElement::H(h) => {
                self.block_break();
                let _ = write!(self.out, "{} ", "#".repeat(usize::from(h.level.value())));
                self.children(node, pre);
                self.block_break();
            }
            MatrixElement::Blockquote => {
                self.block_break();
                self.quote += 1;
                self.newline();
                self.children(node, pre);
                self.quote -= 1;
                self.block_break();
            }
            MatrixElement::Ul => self.list(node, None, pre),
            MatrixElement::Ol(data) => self.list(node, Some(data.start.unwrap_or(1)), pre),
            MatrixElement::Li => {
                self.newline();
                for _ in 1..self.lists.len() {
                    self.out.push_str("   ");
                }
                match self.lists.last_mut() {
                    Some(Some(n)) => {
                        let _ = write!(self.out, "{n}. ");
                        *n += 1;
                    }
                    _ => self.out.push_str("- "),
                }
                self.children(node, pre);
            }
            MatrixElement::Br => self.out.push_str("\\\n"),
            MatrixElement::Hr => {
                self.block_break();
                self.out.push_str("---");
                self.block_break();
            }
            MatrixElement::Tr => {
                self.newline();
                self.children(node, pre);
            }
            MatrixElement::Td | MatrixElement::Th => {
                if node.prev_sibling().is_some() {
                    self.out.push_str(" | ");
                }
                self.children(node, pre);
            }
            // Sanitised away in strict mode or without a markdown form: their text only.
            _ => self.children(node, pre),
        }
    }

    fn list(&mut self, node: &NodeRef, start: Option<i64>, pre: bool) {
        if self.lists.is_empty() {
            self.block_break();
        }
        self.lists.push(start);
        self.children(node, pre);
        self.lists.pop();
        if self.lists.is_empty() {
            self.block_break();
        }
    }

    fn anchor(&mut self, node: &NodeRef, href: Option<AnchorUri>, pre: bool) {
        let user = match &href {
            Some(AnchorUri::MatrixTo(uri)) => user_of(MatrixToUri::id(uri)),
            Some(AnchorUri::Matrix(uri)) => user_of(MatrixUri::id(uri)),
            _ => None,
        };
        if let Some(user) = user {
            let text = text_of(node);
            let name = text.trim().trim_start_matches('@');
            let name = if name.is_empty() { user.as_str() } else { name };
            self.out.push_str(&markdown::mention_link(name, &(self.user_uri)(&user)));
            return;
        }
        match href {
            Some(AnchorUri::Other(url)) if markdown::is_safe_url(&url) => {
                self.out.push('[');
                self.children(node, pre);
                self.out.push_str("](");
                markdown::push_link_destination(&url, &mut self.out);
                self.out.push(')');
            }
            _ => self.children(node, pre),
        }
    }
}

/// Whether `node`'s parent is an element whose text children are only layout (`ul`, `ol`, `table`…).
fn in_container(node: &NodeRef) -> bool {
    node.parent().and_then(|p| p.as_element().map(|e| e.name.local.to_string())).is_some_and(|name| {
        matches!(name.as_str(), "ul" | "ol" | "table" | "thead" | "tbody" | "tr" | "blockquote" | "pre")
    })
}

/// The user a Matrix URI names, if it names a user.
fn user_of(id: &MatrixId) -> Option<String> {
    match id {
        MatrixId::User(u) => Some(u.to_string()),
        _ => None,
    }
}

/// The text content of a node and its descendants.
fn text_of(node: &NodeRef) -> String {
    let mut out = String::new();
    fn walk(n: &NodeRef, out: &mut String) {
        if let Some(t) = n.as_text() {
            out.push_str(&t.borrow());
        }
        for c in n.children() {
            walk(&c, out);
        }
    }
    walk(node, &mut out);
    out
}

/// The longest run of `c` in `s`.
fn longest_run(s: &str, c: char) -> usize {
    s.split(|x| x != c).map(str::len).max().unwrap_or(0)
}

/// Trims blank lines (and the quote markers on them) at the ends, and collapses runs of blank lines.
fn tidy(md: &str) -> String {
    let mut lines: Vec<&str> = Vec::new();
    for line in md.split('\n') {
        let blank = line.trim_end().trim_end_matches('>').trim().is_empty();
        let prev_blank = lines.last().is_none_or(|l| l.trim_end().trim_end_matches('>').trim().is_empty());
        if blank && prev_blank {
            continue;
        }
        // No line ends in blanks that mean something: hard breaks are written as `\`.
        lines.push(line.trim_end());
    }
    while lines.last().is_some_and(|l| l.trim_end().trim_end_matches('>').trim().is_empty()) {
        lines.pop();
    }
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uri(user: &str) -> String {
        format!("mimi://b.test/u/matrix.hs~{}", bridge_api::uri::escape(user))
    }

    fn md(html: &str) -> String {
        html_to_markdown(html, &uri)
    }

    #[test]
    fn inline_formatting_becomes_markdown() {
        assert_eq!(md("<b>bold</b> <em>it</em> <del>gone</del> <code>x`y</code>"), "**bold** *it* ~~gone~~ ``x`y``");
    }

    #[test]
    fn text_is_escaped_so_that_it_renders_literally() {
        assert_eq!(md("*not bold* &lt;b&gt;"), "\\*not bold\\* \\<b\\>");
    }

    #[test]
    fn script_and_unknown_tags_are_removed_by_the_strict_sanitizer() {
        // The sanitiser keeps the text of removed elements; it arrives as text, never as markup.
        let out = md("hi<script>alert(1)</script><img src=x onerror=alert(1)><font color=red>red</font>");
        assert_eq!(out, "hialert\\(1\\)red");
    }

    #[test]
    fn reply_fallbacks_are_stripped() {
        let html = "<mx-reply><blockquote><a href=\"https://matrix.to/#/!r:hs/$e\">In reply to</a> \
                    <a href=\"https://matrix.to/#/@bob:hs\">@bob:hs</a><br>original</blockquote></mx-reply>answer";
        assert_eq!(md(html), "answer");
    }

    #[test]
    fn pills_become_mimi_user_links_and_other_links_stay() {
        let out =
            md("hi <a href=\"https://matrix.to/#/@bob:hs.test\">Bob</a>, see <a href=\"https://x.test/a b\">this</a>");
        assert_eq!(out, format!("hi [@Bob]({})\\, see [this](https://x.test/a%20b)", uri("@bob:hs.test")));
    }

    #[test]
    fn unsafe_links_lose_their_target() {
        assert_eq!(md("<a href=\"javascript:alert(1)\">x</a>"), "x");
    }

    #[test]
    fn blocks_become_markdown_blocks() {
        assert_eq!(md("<p>one</p><p>two<br>three</p>"), "one\n\ntwo\\\nthree");
        assert_eq!(md("<blockquote>quoted</blockquote>after"), "> quoted\n\nafter");
        assert_eq!(md("<ul><li>a</li><li>b</li></ul>"), "- a\n- b");
        assert_eq!(md("<ol start=\"3\"><li>a</li><li>b</li></ol>"), "3. a\n4. b");
        assert_eq!(md("<h2>title</h2>"), "## title");
        assert_eq!(
            md("<pre><code class=\"language-rust\">fn main() {\n    x &lt; 1\n}\n</code></pre>"),
            "```rust\nfn main() {\n    x < 1\n}\n```"
        );
    }

    #[test]
    fn markdown_round_trips_through_matrix_html() {
        for text in ["**bold** and *it* and ~~gone~~ and `code`", "- a\n- b", "> quoted", "a\\\nb", "1\\. not a list"] {
            let html = markdown_to_html(text, &|_| None);
            assert_eq!(md(&html), text, "via {html}");
        }
    }

    #[test]
    fn outgoing_html_is_escaped_and_mentions_become_pills() {
        let text = format!("<b>x</b> {}", markdown::mention_link("Bob", &uri("@bob:hs.test")));
        let html = markdown_to_html(&text, &|u| (u == uri("@bob:hs.test")).then(|| "@bob:hs.test".to_owned()));
        assert_eq!(html, "<p>&lt;b&gt;x&lt;/b&gt; <a href=\"https://matrix.to/#/@bob:hs.test\">@Bob</a></p>");
    }

    #[test]
    fn plain_markdown_needs_no_formatted_body() {
        assert!(is_plain("just text\\."));
        assert!(!is_plain("**bold**"));
    }
}
