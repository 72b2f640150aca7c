//! Documentation that cannot drift: every repository path that README.md, ARCHITECTURE.md or docs/*.md names must
//! exist. A path is a link target, or a backticked word that looks like a file or folder (`src/daemon.rs`,
//! `mls_rooms/leaves.rs`, `connectors/irc/`); one that is not rooted at the repository (`leaves.rs` inside a code
//! map entry) must be the end of some file's path.

use std::path::{Path, PathBuf};

const DOCS: &[&str] = &["README.md", "ARCHITECTURE.md"];
/// Paths that are not the repository's: the daemon's data directory, the operator's files.
const NOT_OURS: &[&str] = &["data_dir/", "DATA_DIR/", "~/", "/"];
/// Backticked words with a slash that are not paths: IRC's edit convention, systemd's watchdog interval.
const NOT_PATHS: &[&str] = &["s/old/new/", "WatchdogSec/2"];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn files(dir: &Path, out: &mut Vec<String>) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let p = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        if name == "target" || name.starts_with('.') {
            continue;
        }
        if p.is_dir() {
            files(&p, out);
        }
        out.push(p.strip_prefix(repo()).unwrap_or(&p).to_string_lossy().into_owned());
    }
}

/// Candidate paths named in `text`: link targets and backticked path-like words.
fn named_paths(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (i, part) in text.split('`').enumerate() {
        let w = part.trim();
        let pathish = !w.is_empty()
            && w.chars().all(|c| c.is_ascii_alphanumeric() || "_-./".contains(c))
            && !w.starts_with('.')
            && w.chars().any(|c| c.is_ascii_alphabetic())
            && (w.contains('/') || w.ends_with(".rs") || w.ends_with(".toml") || w.ends_with(".md"));
        if i % 2 == 1 && pathish {
            out.push(w.to_owned());
        }
    }
    for chunk in text.split("](").skip(1) {
        if let Some(end) = chunk.find(')') {
            let target = chunk[..end].split('#').next().unwrap_or("");
            if !target.is_empty() && !target.contains("://") {
                out.push(target.to_owned());
            }
        }
    }
    out
}

#[test]
fn every_path_the_docs_name_exists() {
    let mut all = Vec::new();
    files(&repo(), &mut all);
    let mut docs: Vec<String> = DOCS.iter().map(|d| (*d).to_owned()).collect();
    for f in &all {
        if f.starts_with("docs/") && f.ends_with(".md") {
            docs.push(f.clone());
        }
    }
    let mut missing = Vec::new();
    for doc in &docs {
        let text = std::fs::read_to_string(repo().join(doc)).unwrap_or_else(|e| panic!("{doc}: {e}"));
        for p in named_paths(&text) {
            if NOT_OURS.iter().any(|n| p.starts_with(n)) || NOT_PATHS.contains(&p.as_str()) {
                continue;
            }
            let rel = p.trim_end_matches('/');
            let rooted =
                repo().join(rel).exists() || Path::new(doc).parent().is_some_and(|d| repo().join(d).join(rel).exists());
            let tail = all.iter().any(|f| f.ends_with(&format!("/{rel}")));
            if !rooted && !tail {
                missing.push(format!("{doc}: `{p}`"));
            }
        }
    }
    assert!(missing.is_empty(), "paths named in the docs that do not exist:\n{}", missing.join("\n"));
}

#[test]
fn the_check_finds_a_missing_path() {
    assert_eq!(named_paths("see `src/gone.rs` and [guide](docs/nothing.md)"), ["src/gone.rs", "docs/nothing.md"]);
}
