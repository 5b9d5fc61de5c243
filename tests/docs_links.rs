//! The README and `docs/` stand alone: they never send a reader outside the
//! repository (no `../shared`, no SPEC.md or REFERENCE.md, which a clone
//! does not have), and every relative link and `#anchor` they use exists.

use std::path::{Path, PathBuf};

fn documents() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec![root.join("README.md")];
    for entry in std::fs::read_dir(root.join("docs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            files.push(path);
        }
    }
    files.sort();
    files
}

#[test]
fn no_document_points_outside_the_repository() {
    for file in documents() {
        let text = std::fs::read_to_string(&file).unwrap();
        for word in ["../shared", "SPEC.md", "REFERENCE.md", "SPEC section"] {
            assert!(!text.contains(word), "{} mentions {word:?}", file.display());
        }
    }
}

#[test]
fn every_relative_link_and_anchor_exists() {
    let mut checked = 0;
    for file in documents() {
        let text = std::fs::read_to_string(&file).unwrap();
        for target in links(&text) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            let (path, anchor) = target.split_once('#').unwrap_or((&target, ""));
            let resolved = if path.is_empty() {
                file.clone()
            } else {
                file.parent().unwrap().join(path)
            };
            assert!(
                resolved.exists(),
                "{}: {target} does not exist",
                file.display()
            );
            if !anchor.is_empty() {
                let heads = anchors(&std::fs::read_to_string(&resolved).unwrap());
                assert!(
                    heads.iter().any(|h| h == anchor),
                    "{}: no heading for #{anchor} in {}",
                    file.display(),
                    resolved.display()
                );
            }
            checked += 1;
        }
    }
    assert!(
        checked > 20,
        "only {checked} links found: the reader is broken"
    );
}

/// The targets of `[text](target)` links.
fn links(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("](") {
        rest = &rest[i + 2..];
        if let Some(end) = rest.find(')') {
            let target = &rest[..end];
            if !target.contains(char::is_whitespace) {
                out.push(target.to_owned());
            }
        }
    }
    out
}

/// GitHub's anchors for the headings of a Markdown text.
fn anchors(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| l.starts_with('#'))
        .map(|l| {
            l.trim_start_matches('#')
                .trim()
                .to_lowercase()
                .chars()
                .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
                .map(|c| if c == ' ' { '-' } else { c })
                .collect()
        })
        .collect()
}
