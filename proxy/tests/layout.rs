//! The crate's layout keeps its rule: no import circle among the modules of `proxy/src`
//! (so a file that is part of the shared state never reaches back to the state; the loops
//! that update it live in `tasks/`). Imports are read from the source: every `crate::a::b`
//! path, and `super::x` inside a folder, comments included (a doc link is a dependency a
//! reader follows too).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every module of the library (`a`, `a::b`) and its source, `main.rs` aside.
fn modules() -> BTreeMap<String, String> {
    fn walk(dir: &Path, prefix: &str, out: &mut BTreeMap<String, String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path: PathBuf = entry.unwrap().path();
            let stem = path.file_stem().unwrap().to_string_lossy().to_string();
            if path.is_dir() {
                walk(&path, &format!("{prefix}{stem}::"), out);
            } else if path.extension().is_some_and(|e| e == "rs") && stem != "main" {
                let name = match stem.as_str() {
                    "mod" | "lib" => prefix.trim_end_matches("::").to_string(),
                    _ => format!("{prefix}{stem}"),
                };
                out.insert(name, std::fs::read_to_string(&path).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        "",
        &mut out,
    );
    out
}

/// The modules `source` (of module `name`) refers to.
fn imports(name: &str, source: &str, known: &BTreeSet<String>) -> BTreeSet<String> {
    let parent = name.rsplit_once("::").map(|(p, _)| p);
    let mut out = BTreeSet::new();
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    for (marker, base) in [("crate::", None), ("super::", parent)] {
        if marker == "super::" && base.is_none() {
            continue;
        }
        for rest in source.split(marker).skip(1) {
            let first = ident(rest);
            let first = match base {
                Some(b) if !b.is_empty() => format!("{b}::{first}"),
                _ => first,
            };
            let second = rest
                .strip_prefix(&ident(rest))
                .and_then(|r| r.strip_prefix("::"))
                .map(|r| format!("{first}::{}", ident(r)));
            let target = second.filter(|s| known.contains(s)).unwrap_or(first);
            if known.contains(&target) && target != name && !target.is_empty() {
                out.insert(target);
            }
        }
    }
    out
}

#[test]
fn the_modules_of_the_crate_import_no_circle() {
    let modules = modules();
    let known: BTreeSet<String> = modules.keys().cloned().collect();
    assert!(
        known.contains("state") && known.contains("tasks::cluster_sync"),
        "{known:?}"
    );
    let graph: BTreeMap<&str, BTreeSet<String>> = modules
        .iter()
        .map(|(n, s)| (n.as_str(), imports(n, s, &known)))
        .collect();
    assert!(
        graph["tasks::cluster_sync"].contains("state"),
        "the reader sees imports"
    );

    // Depth-first search; a module met again while on the path closes a circle.
    fn visit<'a>(
        m: &'a str,
        graph: &'a BTreeMap<&'a str, BTreeSet<String>>,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|p| *p == m) {
            let mut circle: Vec<String> = path[at..].iter().map(|s| s.to_string()).collect();
            circle.push(m.to_string());
            return Some(circle);
        }
        if !done.insert(m) {
            return None;
        }
        path.push(m);
        for next in &graph[m] {
            let (key, _) = graph.get_key_value(next.as_str()).unwrap();
            if let Some(c) = visit(key, graph, path, done) {
                return Some(c);
            }
        }
        path.pop();
        None
    }
    let mut done = BTreeSet::new();
    for m in graph.keys() {
        if let Some(circle) = visit(m, &graph, &mut Vec::new(), &mut done) {
            panic!("an import circle: {}", circle.join(" → "));
        }
    }
}
