//! mimi-content's integration tests: one test binary, so the crate links its tests once.

mod content_json;
mod content_markdown;
mod content_props;
mod content_validation;
mod content_vectors;
