//! The shared markdown helper: GFM-MIMI sanitising, plain text, safe HTML,
//! plain → markdown escaping, mentions.

use mimi_content::markdown::{
    is_safe_url, mention_link, mentions, plain_to_markdown, sanitize_gfm_mimi, to_html, to_plain_text,
};
use proptest::prelude::*;

#[test]
fn plain_text_rendering() {
    assert_eq!(
        to_plain_text("Hi everyone, we just shipped release 2.0. __Good  work__!"),
        "Hi everyone, we just shipped release 2.0. Good  work!"
    );
    assert_eq!(
        to_plain_text("[@Alice Smith](mimi://example.com/u/alice-smith) Have you reviewed?"),
        "@Alice Smith Have you reviewed?"
    );
    assert_eq!(
        to_plain_text("see [the docs](https://example.com/d) and <https://example.com/x>"),
        "see the docs <https://example.com/d> and https://example.com/x"
    );
    assert_eq!(
        to_plain_text("# Title\n\npara one\nline two\n\n- a\n- [x] b\n\n1. one\n2. two"),
        "Title\npara one\nline two\n- a\n- [x] b\n1. one\n2. two"
    );
    assert_eq!(to_plain_text("> quoted\n> more"), "> quoted\n> more");
    assert_eq!(to_plain_text("`code` and ~~gone~~"), "code and gone");
    assert_eq!(to_plain_text("```\nfn x() {}\n```"), "fn x() {}");
    assert_eq!(to_plain_text("| a | b |\n|---|---|\n| 1 | 2 |"), "a | b\n1 | 2");
    assert_eq!(to_plain_text("x <b>bold</b> &amp; y"), "x <b>bold</b> & y");
    assert_eq!(to_plain_text("a\n\n---\n\nb"), "a\n---\nb");
}

#[test]
fn html_is_safe() {
    assert_eq!(to_html("**hi**"), "<p><strong>hi</strong></p>\n");
    let h = to_html("<script>alert(1)</script>");
    assert!(!h.contains("<script"), "{h}");
    assert!(h.contains("&lt;script&gt;"), "{h}");
    let h = to_html("x <img src=x onerror=alert(1)> y");
    assert!(!h.contains("<img"), "{h}");
    let h = to_html("[click](javascript:alert(1))");
    assert!(!h.contains("href"), "{h}");
    assert!(h.contains("click"), "{h}");
    let h = to_html("[a](JaVaScRiPt:alert(1)) [b](data:text/html,x) [c](vbscript:x)");
    assert!(!h.contains("href"), "{h}");
    let h = to_html("![tracker](https://evil.example/p.png)");
    assert!(!h.contains("<img"), "{h}");
    assert!(h.contains("<a href=\"https://evil.example/p.png\">tracker</a>"), "{h}");
    let h = to_html("[x](https://e.example/\"onmouseover=\"alert(1))");
    assert!(!h.contains("\"onmouseover"), "{h}");
    let h = to_html("[m](mimi://example.com/u/alice) [r](/relative/path)");
    assert!(h.contains("href=\"mimi://example.com/u/alice\""), "{h}");
    assert!(h.contains("href=\"/relative/path\""), "{h}");
}

#[test]
fn url_schemes() {
    for ok in ["https://a", "HTTP://a", "mailto:a@b", "mimi://a/u/b", "/x:y", "x?a:b", "rel"] {
        assert!(is_safe_url(ok), "{ok}");
    }
    for bad in ["javascript:x", " javascript:x", "data:x", "vbscript:x", "file:///etc"] {
        assert!(!is_safe_url(bad), "{bad}");
    }
}

#[test]
fn sanitize_neutralises_every_html_kind() {
    for raw in [
        "<div>\nblock\n</div>",
        "inline <span>x</span>",
        "<!-- comment -->",
        "<?php x ?>",
        "<!DOCTYPE html>",
        "<![CDATA[x]]>",
        "> <b>quoted</b>",
        "- <i>item</i>",
    ] {
        let s = sanitize_gfm_mimi(raw);
        assert!(!to_html(&s).contains('<') || !has_raw_html(&s), "{raw} -> {s}");
        assert!(!has_raw_html(&s), "{raw} -> {s}");
    }
    // code spans/blocks and autolinks are not HTML and stay untouched
    assert_eq!(sanitize_gfm_mimi("`<b>` x"), "`<b>` x");
    assert_eq!(sanitize_gfm_mimi("<https://a.example>"), "<https://a.example>");
    assert_eq!(sanitize_gfm_mimi("a <b>c</b>"), "a &lt;b>c&lt;/b>");
}

fn has_raw_html(md: &str) -> bool {
    use pulldown_cmark::{Event, Options, Parser};
    let o = Options::ENABLE_TABLES | Options::ENABLE_TASKLISTS | Options::ENABLE_STRIKETHROUGH;
    Parser::new_ext(md, o).any(|e| matches!(e, Event::Html(_) | Event::InlineHtml(_)))
}

#[test]
fn plain_to_markdown_escapes() {
    assert_eq!(plain_to_markdown("*not bold*"), "\\*not bold\\*");
    assert_eq!(to_plain_text(&plain_to_markdown("# no heading")), "# no heading");
    assert_eq!(to_plain_text(&plain_to_markdown("1. x\n- y\n    z")), "1. x\n- y\n    z");
    assert_eq!(to_plain_text(&plain_to_markdown("<b>&amp;</b>")), "<b>&amp;</b>");
    assert!(!to_html(&plain_to_markdown("<script>x</script>")).contains("<script"));
    assert_eq!(plain_to_markdown("a\r\nb"), "a\\\nb");
}

#[test]
fn mention_links() {
    assert_eq!(
        mention_link("Alice Smith", "mimi://example.com/u/alice-smith"),
        "[@Alice Smith](mimi://example.com/u/alice-smith)"
    );
    let tricky = mention_link("Bob](javascript:x) [", "mimi://e.example/u/b (x)");
    let found = mentions(&tricky);
    assert_eq!(found, vec![("@Bob](javascript:x) [".to_owned(), "mimi://e.example/u/b%20%28x%29".to_owned())]);
    assert!(mentions("[x](https://a/u/b) [y](mimi://a/r/room)").is_empty());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, failure_persistence: None, ..ProptestConfig::default() })]

    /// Plain text survives plain → markdown → plain (blank lines at the very
    /// start or end are dropped by design).
    #[test]
    fn plain_round_trips_through_markdown(s in "[a-zA-Z0-9 \t\n!-/:-@\\[-`{-~äé€😀]{0,60}") {
        let s = s.trim_matches('\n').to_owned();
        prop_assert_eq!(to_plain_text(&plain_to_markdown(&s)), s);
    }

    /// Sanitised markdown never contains raw HTML, and rendering any markdown
    /// never emits a tag outside pulldown-cmark's own vocabulary.
    #[test]
    fn no_html_injection(s in "([<>/a-z\"'=&!?\\[\\]():* \n-]|<script>|<img src=x onerror=y>|javascript:|<!--|<!\\[CDATA\\[){0,30}") {
        prop_assert!(!has_raw_html(&sanitize_gfm_mimi(&s)));
        let h = to_html(&s);
        let allowed = ["p", "em", "strong", "del", "a", "code", "pre", "h1", "h2", "h3", "h4",
            "h5", "h6", "ul", "ol", "li", "blockquote", "hr", "br", "table", "thead", "tbody",
            "tr", "th", "td", "input"];
        for (i, _) in h.match_indices('<') {
            let rest = h[i + 1..].trim_start_matches('/');
            let name: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric()).collect();
            prop_assert!(allowed.contains(&name.as_str()), "tag {} in {}", name, h);
        }
        prop_assert!(!h.to_ascii_lowercase().contains("href=\"javascript"), "{}", h);
    }
}
