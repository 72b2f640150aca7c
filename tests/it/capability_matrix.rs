//! docs/capabilities.md is what `mimi-bridge capabilities` prints: the table people read to know what crosses from
//! one network to another is the one the connectors declare.

use crate::common::cli;

#[test]
fn docs_capabilities_is_what_the_connectors_declare() {
    let (code, out, err) = cli(&["capabilities"]);
    assert_eq!(code, 0, "capabilities failed: {err}");
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/capabilities.md"))
        .expect("docs/capabilities.md exists");
    assert!(
        doc == out,
        "docs/capabilities.md is stale: regenerate it with `cargo run -q --bin mimi-bridge -- capabilities > docs/capabilities.md`"
    );
    for feature in ["replies", "mentions", "attachments"] {
        assert!(out.contains(&format!("### {feature}\n")), "no crossing table for {feature}");
    }
}
