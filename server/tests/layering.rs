//! The architecture, checked: the server crate's modules import only from
//! layers below their own, and no group of modules imports itself in a
//! loop (see `src/lib.rs` and docs/architecture.md for the rule).
//!
//! It reads the sources: every `crate::…` and `super::…` path (in `use`
//! trees and inline) is an edge from the file's module to the deepest
//! module the path names. Edges between a module and its own ancestors or
//! descendants do not count (a parent declares its children; a child uses
//! its parent's types); every other edge must go down the layers, and the
//! graph of all other edges must have no cycle. Test modules at the end of
//! a file (`#[cfg(test)]`) are not part of the architecture.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top-level modules from the bottom layer up.
const LAYERS: [&str; 7] = [
    "thrift",
    "telemetry",
    "config",
    "lifecycle",
    "data",
    "control",
    "app",
];

type Module = Vec<String>;

fn rank(m: &[String]) -> Option<usize> {
    let top = m.first()?;
    LAYERS.iter().position(|l| l == top)
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// `src/a/b.rs` → `a::b`; `src/a/mod.rs` → `a`; `lib.rs`, `main.rs` → root.
fn module_of(src: &Path, file: &Path) -> Module {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut m: Module = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if matches!(m.last().map(String::as_str), Some("mod" | "lib" | "main")) {
        m.pop();
    }
    m
}

/// The code that is part of the architecture: without comments and
/// without the trailing test module.
fn code(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod ") {
        Some(i) => &text[..i],
        None => text,
    };
    text.lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Expands a `use` tree (`crate::a::{b, c::{d, e}}`) into paths.
fn expand(tree: &str, prefix: &str, out: &mut Vec<String>) {
    let tree = tree.trim();
    match tree.find('{') {
        None => out.push(format!(
            "{prefix}{}",
            tree.split(" as ").next().unwrap().trim()
        )),
        Some(open) => {
            let head = &tree[..open];
            let inner = &tree[open + 1..tree.rfind('}').unwrap()];
            let mut depth = 0;
            let mut start = 0;
            for (i, c) in inner.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        expand(&inner[start..i], &format!("{prefix}{head}"), out);
                        start = i + 1;
                    }
                    _ => {}
                }
            }
            if !inner[start..].trim().is_empty() {
                expand(&inner[start..], &format!("{prefix}{head}"), out);
            }
        }
    }
}

/// Every `crate::`/`super::` path in `code`.
fn paths(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = code;
    // `use` trees first (they may hold braces), then inline paths.
    let mut inline = String::new();
    while let Some(i) = rest.find("use ") {
        let boundary = i == 0 || !rest.as_bytes()[i - 1].is_ascii_alphanumeric();
        inline.push_str(&rest[..i]);
        let end = rest[i..].find(';').map_or(rest.len(), |e| i + e);
        let tree = &rest[i + 4..end];
        if boundary
            && (tree.trim_start().starts_with("crate") || tree.trim_start().starts_with("super"))
        {
            expand(tree, "", &mut out);
        } else {
            inline.push_str(&rest[i..end]);
        }
        rest = &rest[end..];
    }
    inline.push_str(rest);
    let bytes = inline.as_bytes();
    for start in ["crate::", "super::"] {
        let mut from = 0;
        while let Some(i) = inline[from..].find(start) {
            let i = from + i;
            from = i + start.len();
            if i > 0
                && (bytes[i - 1].is_ascii_alphanumeric()
                    || bytes[i - 1] == b'_'
                    || bytes[i - 1] == b':')
            {
                continue;
            }
            let len = inline[i..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(inline.len() - i);
            out.push(inline[i..i + len].to_string());
        }
    }
    out
}

/// The deepest known module `path` (seen from module `from`) names.
fn target(path: &str, from: &Module, known: &BTreeSet<Module>) -> Option<Module> {
    let mut segs = path.split("::").filter(|s| !s.is_empty()).peekable();
    let mut base: Module = match segs.peek().copied() {
        Some("crate") => {
            segs.next();
            Vec::new()
        }
        // Each `super` below pops one level: in `a/b.rs` and in
        // `a/b/mod.rs` (both module `a::b`) `super` is `a`.
        Some("super") => from.clone(),
        _ => return None,
    };
    while segs.peek() == Some(&"super") {
        segs.next();
        base.pop()?;
    }
    for s in segs {
        if s == "self" || s == "*" {
            break;
        }
        let mut next = base.clone();
        next.push(s.to_string());
        if !known.contains(&next) {
            break;
        }
        base = next;
    }
    Some(base)
}

/// Depth-first search for a cycle.
fn visit(
    m: &Module,
    edges: &BTreeMap<Module, BTreeSet<Module>>,
    state: &mut BTreeMap<Module, u8>,
    stack: &mut Vec<Module>,
) -> Option<Vec<Module>> {
    match state.get(m) {
        Some(1) => {
            let at = stack.iter().position(|x| x == m).unwrap();
            let mut cycle = stack[at..].to_vec();
            cycle.push(m.clone());
            return Some(cycle);
        }
        Some(_) => return None,
        None => {}
    }
    state.insert(m.clone(), 1);
    stack.push(m.clone());
    for next in edges.get(m).into_iter().flatten() {
        if let Some(c) = visit(next, edges, state, stack) {
            return Some(c);
        }
    }
    stack.pop();
    state.insert(m.clone(), 2);
    None
}

fn find_cycle(edges: &BTreeMap<Module, BTreeSet<Module>>) -> Option<Vec<Module>> {
    let mut state = BTreeMap::new();
    edges
        .keys()
        .find_map(|m| visit(m, edges, &mut state, &mut Vec::new()))
}

fn related(a: &Module, b: &Module) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

#[test]
fn modules_import_only_down_the_layers_and_without_cycles() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let known: BTreeSet<Module> = files.iter().map(|f| module_of(&src, f)).collect();
    for layer in LAYERS {
        assert!(
            known.contains(&vec![layer.to_string()]),
            "no module {layer}"
        );
    }
    let mut edges: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
    let mut upward = Vec::new();
    for f in &files {
        let from = module_of(&src, f);
        if from.is_empty() {
            continue; // lib.rs and main.rs wire everything
        }
        let text = std::fs::read_to_string(f).unwrap();
        for p in paths(&code(&text)) {
            let Some(to) = target(&p, &from, &known) else {
                continue;
            };
            if to.is_empty() || related(&from, &to) {
                continue;
            }
            if rank(&to) > rank(&from) {
                upward.push(format!("{} -> {} ({p})", from.join("::"), to.join("::")));
            }
            edges.entry(from.clone()).or_default().insert(to);
        }
    }
    assert!(
        upward.is_empty(),
        "imports running up the layers {LAYERS:?}:\n{}",
        upward.join("\n")
    );
    if let Some(cycle) = find_cycle(&edges) {
        let names: Vec<String> = cycle.iter().map(|m| m.join("::")).collect();
        panic!("import cycle: {}", names.join(" -> "));
    }
}

#[test]
fn the_checker_reads_use_trees_and_finds_cycles() {
    // The parser itself: a `use` tree with nested braces, inline paths, supers.
    let code = "use crate::data::{call::Call, dispatch::{Command, x as y}};\nfn f() { crate::config::shown(); super::super::thrift::detect(); }";
    let mut p = paths(code);
    p.sort();
    assert_eq!(
        p,
        [
            "crate::config::shown",
            "crate::data::call::Call",
            "crate::data::dispatch::Command",
            "crate::data::dispatch::x",
            "super::super::thrift::detect"
        ]
    );
    let known: BTreeSet<Module> = [vec!["data".to_string()], vec!["data".into(), "call".into()]]
        .into_iter()
        .collect();
    let from: Module = vec!["data".into(), "dispatch".into(), "calls".into()];
    assert_eq!(
        target("super::super::call::Call", &from, &known),
        Some(vec!["data".to_string(), "call".to_string()])
    );
    assert!(rank(&["control".to_string()]) > rank(&["data".to_string()]));
    // The loop this test was written against: config → listener →
    // connection → dispatch → config.
    let m = |s: &str| vec![s.to_string()];
    let mut edges: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
    for (a, b) in [
        ("config", "listener"),
        ("listener", "connection"),
        ("connection", "dispatch"),
        ("dispatch", "config"),
    ] {
        edges.entry(m(a)).or_default().insert(m(b));
    }
    assert_eq!(find_cycle(&edges).map(|c| c.len()), Some(5));
    edges.get_mut(&m("dispatch")).unwrap().clear();
    assert_eq!(find_cycle(&edges), None);
}
