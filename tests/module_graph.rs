//! The layering rule of `docs/architecture.md`: no top-level module of
//! `src/` uses a module that uses it back, so the request path only ever
//! calls downwards. Reads every `src/**/*.rs`, collects the `crate::` paths
//! (grouped `use crate::{a, b::c}` included, and `super::super::` that
//! climbs to the crate root), builds the graph between top-level modules and
//! fails on any cycle, printing it with the lines that make each edge.
//!
//! `cargo test --test module_graph -- --nocapture` prints the whole graph.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// module → module it uses → where (`file:line`).
type Graph = BTreeMap<String, BTreeMap<String, Vec<String>>>;

#[test]
fn no_top_level_module_uses_a_module_that_uses_it_back() {
    let graph = graph(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    for (from, to) in &graph {
        let names: Vec<&str> = to.keys().map(String::as_str).collect();
        println!("{from} → {}", names.join(", "));
    }
    let cycles = cycles(&graph);
    let mut report = String::new();
    for cycle in &cycles {
        report.push_str(&format!("cycle: {}\n", cycle.join(" → ")));
        for pair in cycle.windows(2) {
            let at = &graph[&pair[0]][&pair[1]];
            report.push_str(&format!("  {} → {}: {}\n", pair[0], pair[1], at.join(", ")));
        }
    }
    assert!(
        cycles.is_empty(),
        "modules that import each other:\n{report}"
    );
}

#[test]
fn the_reader_sees_grouped_imports_and_ignores_comments() {
    let source = "//! uses crate::nothing\nuse crate::{a::B, c};\nuse super::super::d::E;\n\
                  fn f() { crate::e::f(); } // crate::g\n";
    let found = paths(source);
    let tops: BTreeSet<&str> = found.iter().map(|(_, p)| p[0].as_str()).collect();
    assert_eq!(tops, BTreeSet::from(["a", "c", "e", "super"]));
}

#[test]
fn a_cycle_is_found_and_named() {
    let mut graph = Graph::new();
    for (a, b) in [("app", "proxy"), ("proxy", "app"), ("proxy", "body")] {
        graph
            .entry(a.into())
            .or_default()
            .insert(b.into(), vec!["x.rs:1".into()]);
    }
    assert_eq!(cycles(&graph), vec![vec!["app", "proxy", "app"]]);
}

fn graph(src: &Path) -> Graph {
    let mut graph = Graph::new();
    for file in rust_files(src) {
        let relative = file.strip_prefix(src).unwrap();
        let module: Vec<String> = relative
            .with_extension("")
            .iter()
            .map(|s| s.to_string_lossy().into_owned())
            .collect();
        if matches!(module[0].as_str(), "lib" | "main") {
            continue; // the crate root declares modules; the binary sits on top.
        }
        let text = std::fs::read_to_string(&file).unwrap();
        for (line, path) in paths(&text) {
            // `super::` climbs one module: from `a/b.rs` twice reaches the
            // crate root; inside an inline `mod tests { … }` once more.
            let mut depth = module.len() + inline_mods_before(&text, line);
            let mut rest = path.as_slice();
            if rest[0] != "super" {
                depth = 0;
            }
            while rest.first().is_some_and(|s| s == "super") {
                depth = depth.saturating_sub(1);
                rest = &rest[1..];
            }
            let Some(first) = rest.first() else { continue };
            let top = if depth == 0 { first } else { &module[0] };
            if *top != module[0] {
                let at = format!("{}:{line}", relative.display());
                let lines = graph
                    .entry(module[0].clone())
                    .or_default()
                    .entry(top.clone())
                    .or_default();
                if !lines.contains(&at) {
                    lines.push(at);
                }
            }
        }
    }
    graph
}

/// Inline modules opened before `line`. chatgate's only inline modules are
/// `#[cfg(test)] mod tests { … }` at the end of a file, so an opening is
/// taken to last to the end of the file.
fn inline_mods_before(text: &str, line: usize) -> usize {
    text.lines()
        .take(line.saturating_sub(1))
        .filter(|l| {
            let l = l.trim_start().trim_start_matches("pub ");
            l.starts_with("mod ") && l.trim_end().ends_with('{')
        })
        .count()
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files.sort();
    files
}

/// The module paths named after `crate::` (or a leading `super::`), with the
/// line they are on; comments are skipped.
fn paths(source: &str) -> Vec<(usize, Vec<String>)> {
    let mut found = Vec::new();
    let code: String = source
        .lines()
        .map(|l| l.find("//").map_or(l, |i| &l[..i]))
        .collect::<Vec<_>>()
        .join("\n");
    let line_of = |i: usize| code[..i].matches('\n').count() + 1;
    for root in ["crate::", "super::"] {
        let mut from = 0;
        while let Some(i) = code[from..].find(root).map(|i| i + from) {
            from = i + root.len();
            let before = code[..i].chars().next_back();
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                continue; // part of a longer path (`super::super::`, `x::crate::`)
            }
            let (prefix, end) = segments(&code, from);
            let mut path: Vec<String> = if root == "super::" {
                vec!["super".into()]
            } else {
                Vec::new()
            };
            path.extend(prefix);
            if code[end..].starts_with('{') {
                for item in group(&code, end + 1) {
                    let mut full = path.clone();
                    full.extend(segments(&item, 0).0);
                    if full.len() > usize::from(root == "super::") {
                        found.push((line_of(i), full));
                    }
                }
            } else if path.len() > usize::from(root == "super::") {
                found.push((line_of(i), path));
            }
        }
    }
    found
}

/// `a::b::c` from `at`: the segments and where they end (after a trailing `::`).
fn segments(code: &str, at: usize) -> (Vec<String>, usize) {
    let mut out = Vec::new();
    let mut i = at;
    loop {
        let rest = &code[i..];
        let trimmed = rest.trim_start();
        i += rest.len() - trimmed.len();
        let len = trimmed
            .find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap_or(trimmed.len());
        if len == 0 {
            return (out, i);
        }
        out.push(trimmed[..len].to_owned());
        i += len;
        if code[i..].starts_with("::") {
            i += 2;
        } else {
            return (out, i);
        }
    }
}

/// The items of a `{…}` group starting after its `{`, split at top-level commas.
fn group(code: &str, at: usize) -> Vec<String> {
    let mut items = vec![String::new()];
    let mut depth = 0;
    for c in code[at..].chars() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(String::new());
                continue;
            }
            _ => {}
        }
        items.last_mut().unwrap().push(c);
    }
    items
        .into_iter()
        .filter(|s| !s.trim().is_empty() && s.trim() != "self")
        .collect()
}

/// One cycle per strongly connected part of the graph, each closed (first
/// module repeated last); found by a walk from every module in name order.
fn cycles(graph: &Graph) -> Vec<Vec<String>> {
    let mut seen_in_cycle = BTreeSet::new();
    let mut cycles = Vec::new();
    for start in graph.keys() {
        if seen_in_cycle.contains(start) {
            continue;
        }
        if let Some(mut path) = path_back(graph, start) {
            path.push(start.clone());
            seen_in_cycle.extend(path.iter().cloned());
            cycles.push(path);
        }
    }
    cycles
}

/// The shortest path from `start` back to itself, if any (breadth first).
fn path_back(graph: &Graph, start: &str) -> Option<Vec<String>> {
    let mut previous: BTreeMap<&str, &str> = BTreeMap::new();
    let mut queue = std::collections::VecDeque::from([start]);
    while let Some(at) = queue.pop_front() {
        for next in graph.get(at).into_iter().flat_map(|m| m.keys()) {
            if next == start {
                let mut path = vec![at.to_owned()];
                let mut walk = at;
                while walk != start {
                    walk = previous[walk];
                    path.push(walk.to_owned());
                }
                path.reverse();
                return Some(path);
            }
            if !previous.contains_key(next.as_str()) {
                previous.insert(next, at);
                queue.push_back(next);
            }
        }
    }
    None
}
