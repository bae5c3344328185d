//! Architecture checks on the source itself: no import cycles among the
//! top-level modules of the `cradle` crate, nor among the files of the
//! `cradle-raft` crate.
//!
//! The graph is built from the paths the code names: `crate::x::…` (also
//! inside `use crate::{x, y::z}` groups) and `super::super::x::…`, with line
//! comments left out. A module `a` depends on `b` when any file under `a`
//! names `crate::b`. Every cycle is reported with the file and line of each
//! edge, so the message says where to cut.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Where one module names another.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Evidence {
    file: String,
    line: usize,
}

/// Module → module it names → where (the first place found).
type Graph = BTreeMap<String, BTreeMap<String, Evidence>>;

/// The module path of a file under a crate's `src/` (`api/objects.rs` →
/// `["api", "objects"]`, `api/mod.rs` → `["api"]`, `lib.rs` → `[]`).
fn module_path(relative: &Path) -> Vec<String> {
    let mut parts: Vec<String> = relative
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    if let Some(last) = parts.pop() {
        let stem = last.trim_end_matches(".rs").to_string();
        if stem != "mod" && stem != "lib" && stem != "main" {
            parts.push(stem);
        }
    }
    parts
}

/// The line without its `//` comment (doc comments included). A `//` inside
/// a string literal is rare enough in `use` lines to be ignored.
fn code_of(line: &str) -> &str {
    match line.find("//") {
        Some(at) => &line[..at],
        None => line,
    }
}

/// Net `{` minus `}` in `code`, outside string and char literals and
/// comments (a line at a time: a string spanning lines is rare in code that
/// opens a test module).
fn brace_balance(code: &str) -> i64 {
    let chars: Vec<char> = code.chars().collect();
    let mut balance = 0;
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '/' if chars.get(i + 1) == Some(&'/') => break,
            '"' => {
                i += 1;
                while i < chars.len() && chars[i] != '"' {
                    if chars[i] == '\\' {
                        i += 1;
                    }
                    i += 1;
                }
            }
            // A char literal ('{', '\'', '\n'), not a lifetime ('a).
            '\'' if chars.get(i + 2) == Some(&'\'') => i += 2,
            '\'' if chars.get(i + 1) == Some(&'\\') => {
                i += 2;
                while i < chars.len() && chars[i] != '\'' {
                    i += 1;
                }
            }
            '{' => balance += 1,
            '}' => balance -= 1,
            _ => {}
        }
        i += 1;
    }
    balance
}

/// `source` with every `#[cfg(test)]` item blanked (lines kept, so line
/// numbers hold), and the names of modules declared test-only
/// (`#[cfg(test)] mod test_support;`): test code may use what it tests.
fn without_test_code(source: &str) -> (String, Vec<String>) {
    let lines: Vec<&str> = source.lines().collect();
    let mut keep = vec![true; lines.len()];
    let mut test_modules = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        if code_of(lines[i]).trim() != "#[cfg(test)]" {
            i += 1;
            continue;
        }
        keep[i] = false;
        let mut j = i + 1;
        while j < lines.len() && code_of(lines[j]).trim().is_empty() {
            j += 1;
        }
        let item = lines.get(j).map(|l| code_of(l).trim()).unwrap_or_default();
        let declared = item
            .trim_start_matches("pub(crate) ")
            .trim_start_matches("pub ")
            .strip_prefix("mod ")
            .and_then(|rest| rest.strip_suffix(';'));
        if let Some(name) = declared {
            test_modules.push(name.trim().to_string());
        }
        // The item runs until its braces close (or its `;` if it has none).
        let mut balance = 0;
        let mut opened = false;
        while j < lines.len() {
            keep[j] = false;
            let code = code_of(lines[j]);
            balance += brace_balance(code);
            opened |= code.contains('{');
            if (opened && balance <= 0) || (!opened && code.trim_end().ends_with(';')) {
                break;
            }
            j += 1;
        }
        i = j + 1;
    }
    let text = lines
        .iter()
        .zip(keep)
        .map(|(line, kept)| if kept { *line } else { "" })
        .collect::<Vec<_>>()
        .join("\n");
    (text, test_modules)
}

fn is_ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The first identifiers after each `crate::` in `code`: `crate::a::b` gives
/// `a`; `crate::{a::b, c}` gives `a` and `c`; `crate::{a::{b, c}}` gives `a`.
fn crate_targets(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        // `cradle_raft::crate::` never occurs; `my_crate::` is another name.
        let before = rest[..at].chars().next_back();
        rest = &rest[at + "crate::".len()..];
        if before.is_some_and(is_ident_char) {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            // One level of braces: the names at depth zero of the group.
            let mut depth = 0usize;
            let mut current = String::new();
            let mut expecting = true;
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        if !current.is_empty() {
                            out.push(std::mem::take(&mut current));
                        }
                        expecting = true;
                    }
                    c if depth == 0 && expecting && is_ident_char(c) => current.push(c),
                    _ if depth == 0 && !current.is_empty() => {
                        out.push(std::mem::take(&mut current));
                        expecting = false;
                    }
                    _ => {}
                }
            }
            if !current.is_empty() {
                out.push(current);
            }
        } else {
            let name: String = rest.chars().take_while(|c| is_ident_char(*c)).collect();
            if !name.is_empty() {
                out.push(name);
            }
        }
    }
    out
}

/// Top-level modules named through two or more `super::` from a file at
/// `depth` (its module path's length): `super::super::store` from
/// `api/objects.rs` is `store`. One `super::` is left out: from a top-level
/// file it may be its own inline `mod tests` looking at the file.
fn super_targets(code: &str, depth: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("super::") {
        let before = rest[..at].chars().next_back();
        rest = &rest[at..];
        if before.is_some_and(is_ident_char) || before == Some(':') {
            rest = &rest["super::".len()..];
            continue;
        }
        let mut ups = 0;
        while let Some(after) = rest.strip_prefix("super::") {
            ups += 1;
            rest = after;
        }
        if ups >= 2 && ups == depth {
            let name: String = rest.chars().take_while(|c| is_ident_char(*c)).collect();
            if !name.is_empty() {
                out.push(name);
            }
        }
    }
    out
}

/// Adds the edges `source`'s text gives to `graph`, for a file at module
/// path `path` (its top-level module is the first element) among the
/// crate's `modules`.
fn add_file(
    graph: &mut Graph,
    modules: &BTreeSet<String>,
    path: &[String],
    file: &str,
    source: &str,
) {
    let Some(from) = path.first() else {
        return;
    };
    graph.entry(from.clone()).or_default();
    for (number, line) in source.lines().enumerate() {
        let code = code_of(line);
        let mut targets = crate_targets(code);
        targets.extend(super_targets(code, path.len()));
        for target in targets {
            if &target == from || !modules.contains(&target) {
                continue;
            }
            graph
                .entry(from.clone())
                .or_default()
                .entry(target)
                .or_insert(Evidence {
                    file: file.to_string(),
                    line: number + 1,
                });
        }
    }
}

/// The edges a `use cradle_raft` or `cradle_raft::` gives: the whole raft
/// crate, as one node.
fn add_raft_crate_use(graph: &mut Graph, path: &[String], file: &str, source: &str) {
    let Some(from) = path.first() else {
        return;
    };
    for (number, line) in source.lines().enumerate() {
        if code_of(line).contains("cradle_raft") {
            graph
                .entry(from.clone())
                .or_default()
                .entry("cradle_raft".to_string())
                .or_insert(Evidence {
                    file: file.to_string(),
                    line: number + 1,
                });
            return;
        }
    }
}

/// Every cycle's strongly connected set of modules, each as one concrete
/// cycle `a → b → … → a`, smallest first.
fn cycles(graph: &Graph) -> Vec<Vec<String>> {
    // Reachability by depth-first search from each node: graphs here have a
    // few dozen nodes.
    let reach = |from: &str| -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut stack = vec![from.to_string()];
        while let Some(node) = stack.pop() {
            for next in graph.get(&node).into_iter().flat_map(|e| e.keys()) {
                if seen.insert(next.clone()) {
                    stack.push(next.clone());
                }
            }
        }
        seen
    };
    let reachable: BTreeMap<&String, BTreeSet<String>> =
        graph.keys().map(|k| (k, reach(k))).collect();
    let mut done = BTreeSet::new();
    let mut out = Vec::new();
    for start in graph.keys() {
        if done.contains(start) || !reachable[start].contains(start) {
            continue;
        }
        // The start's strongly connected set: what it reaches that reaches it.
        let set: BTreeSet<String> = reachable[start]
            .iter()
            .filter(|n| reachable.get(n).is_some_and(|r| r.contains(start)))
            .cloned()
            .collect();
        done.extend(set.iter().cloned());
        out.push(shortest_cycle(graph, start, &set));
    }
    out.sort_by_key(Vec::len);
    out
}

/// A shortest path from `start` back to itself within `set` (breadth-first).
fn shortest_cycle(graph: &Graph, start: &str, set: &BTreeSet<String>) -> Vec<String> {
    let mut previous: BTreeMap<String, String> = BTreeMap::new();
    let mut queue = std::collections::VecDeque::from([start.to_string()]);
    while let Some(node) = queue.pop_front() {
        for next in graph.get(&node).into_iter().flat_map(|e| e.keys()) {
            if !set.contains(next) {
                continue;
            }
            if next == start {
                let mut path = vec![node.clone()];
                let mut at = node.clone();
                while let Some(before) = previous.get(&at) {
                    path.push(before.clone());
                    at = before.clone();
                }
                path.reverse();
                if path.first().map(String::as_str) != Some(start) {
                    path.insert(0, start.to_string());
                }
                path.push(start.to_string());
                return path;
            }
            if !previous.contains_key(next) && next != start {
                previous.insert(next.clone(), node.clone());
                queue.push_back(next.clone());
            }
        }
    }
    vec![start.to_string(), start.to_string()]
}

/// A cycle as `a → b → a`, with where each edge comes from.
fn describe(graph: &Graph, cycle: &[String]) -> String {
    let mut text = cycle.join(" → ");
    for pair in cycle.windows(2) {
        if let Some(e) = graph.get(&pair[0]).and_then(|edges| edges.get(&pair[1])) {
            text.push_str(&format!(
                "\n    {} → {}: {}:{}",
                pair[0], pair[1], e.file, e.line
            ));
        }
    }
    text
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// The module graph of the crate whose sources are in `src`. Binaries
/// (`main.rs`, `bin/`) are left out: they use the library by its name.
fn crate_graph(root: &Path, src: &Path) -> Graph {
    let files: Vec<(Vec<String>, PathBuf)> = rust_files(src)
        .into_iter()
        .filter_map(|file| {
            let relative = file.strip_prefix(src).ok()?.to_path_buf();
            if relative.starts_with("bin") || relative == Path::new("main.rs") {
                return None;
            }
            Some((module_path(&relative), file))
        })
        .collect();
    // Test code and test-only modules out first.
    let mut sources = Vec::new();
    let mut test_only: Vec<Vec<String>> = Vec::new();
    for (path, file) in files {
        let text = std::fs::read_to_string(&file).expect("readable source");
        let (code, test_modules) = without_test_code(&text);
        for name in test_modules {
            let mut module = path.clone();
            module.push(name);
            test_only.push(module);
        }
        sources.push((path, file, code));
    }
    sources.retain(|(path, _, _)| !test_only.iter().any(|t| path.starts_with(t)));
    let modules: BTreeSet<String> = sources
        .iter()
        .filter_map(|(path, _, _)| path.first().cloned())
        .collect();
    let mut graph = Graph::new();
    for (path, file, code) in &sources {
        let shown = file
            .strip_prefix(root)
            .unwrap_or(file)
            .display()
            .to_string();
        add_file(&mut graph, &modules, path, &shown, code);
        add_raft_crate_use(&mut graph, path, &shown, code);
    }
    graph
}

/// Edges that close a cycle still in the tree, each with why and who cuts
/// it: a cycle through a listed edge is tolerated, any other fails. A
/// listed edge that is gone fails too, so the lists only shrink.
const KNOWN_CRADLE_EDGES: &[(&str, &str, &str)] = &[];
const KNOWN_RAFT_EDGES: &[(&str, &str, &str)] = &[(
    "network",
    "node",
    "the peer service in network.rs calls into the node; the write-path change moves it",
)];

fn check_acyclic(graph: &Graph, what: &str, known: &[(&str, &str, &str)]) {
    for (from, to, why) in known {
        assert!(
            graph.get(*from).is_some_and(|e| e.contains_key(*to)),
            "{from} → {to} is listed as a known edge ({why}) but is gone: remove it from the list"
        );
    }
    let mut problems = Vec::new();
    for cycle in cycles(graph) {
        let explained = cycle
            .windows(2)
            .any(|pair| known.iter().any(|(a, b, _)| pair[0] == *a && pair[1] == *b));
        if !explained {
            problems.push(describe(graph, &cycle));
        }
    }
    assert!(
        problems.is_empty(),
        "import cycles in {what}:\n  {}",
        problems.join("\n  ")
    );
}

#[test]
fn no_import_cycles_among_top_level_modules() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let graph = crate_graph(root, &root.join("src"));
    // The graph really was read: the modules and edges every tree has.
    for module in ["store", "cluster", "api", "cli", "model", "server"] {
        assert!(graph.contains_key(module), "no module {module} found");
    }
    assert!(
        graph["api"].contains_key("store") && graph["server"].contains_key("cradle_raft"),
        "known edges missing: the parser is broken"
    );
    check_acyclic(&graph, "the cradle crate", KNOWN_CRADLE_EDGES);
}

#[test]
fn no_import_cycles_among_raft_files() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let graph = crate_graph(root, &root.join("raft/src"));
    assert!(
        graph.contains_key("node") && graph.contains_key("network"),
        "raft files not found"
    );
    check_acyclic(&graph, "the cradle-raft crate", KNOWN_RAFT_EDGES);
}

/// The parser and the cycle search on small, made-up sources.
#[test]
fn the_checker_finds_a_synthetic_cycle() {
    let modules: BTreeSet<String> = ["a", "b", "c", "d"].map(String::from).into();
    let path = |p: &str| module_path(Path::new(p));
    let mut graph = Graph::new();
    add_file(
        &mut graph,
        &modules,
        &path("a/mod.rs"),
        "a/mod.rs",
        "use crate::{b::Thing, d};\n// crate::c is only mentioned\n",
    );
    add_file(
        &mut graph,
        &modules,
        &path("b/inner.rs"),
        "b/inner.rs",
        "fn f() { super::super::c::go() }\n",
    );
    add_file(
        &mut graph,
        &modules,
        &path("c.rs"),
        "c.rs",
        "use crate::a::{x, y};\n",
    );
    add_file(
        &mut graph,
        &modules,
        &path("d.rs"),
        "d.rs",
        "use super::*;\n",
    );
    assert_eq!(
        graph["a"].keys().collect::<Vec<_>>(),
        ["b", "d"],
        "groups are read, comments are not"
    );
    assert_eq!(graph["b"].keys().collect::<Vec<_>>(), ["c"]);
    assert!(graph["d"].is_empty());

    let found = cycles(&graph);
    assert_eq!(found, vec![vec!["a", "b", "c", "a"]]);
    let text = describe(&graph, &found[0]);
    assert!(text.contains("b → c: b/inner.rs:1"), "{text}");
    let failed = std::panic::catch_unwind(|| check_acyclic(&graph, "the made-up crate", &[]));
    assert!(failed.is_err(), "a cycle must fail the check");
    // Unless one of its edges is listed as known (to be cut).
    check_acyclic(&graph, "the made-up crate", &[("c", "a", "being cut")]);

    // Cut one edge: no cycle.
    graph.get_mut("c").unwrap().clear();
    assert!(cycles(&graph).is_empty());
    check_acyclic(&graph, "the made-up crate", &[]);
}

#[test]
fn test_code_is_left_out() {
    let source = "use crate::a;\n#[cfg(test)]\nmod tests {\n    use crate::b;\n    fn f() { let c = '{'; }\n}\nuse crate::c;\n#[cfg(test)]\nmod helpers;\n";
    let (code, test_modules) = without_test_code(source);
    assert_eq!(crate_targets(&code), ["a", "c"]);
    assert_eq!(test_modules, ["helpers"]);
    // Lines keep their numbers.
    assert_eq!(code.lines().position(|l| l.contains("crate::c")), Some(6));
    assert_eq!(brace_balance("let s = \"{\"; if x { '}' "), 1);
}

#[test]
fn paths_are_read_as_rust_names_them() {
    assert_eq!(crate_targets("use crate::store::Store;"), ["store"]);
    assert_eq!(
        crate_targets("use crate::{api::{self, AppState}, auth, model::User};"),
        ["api", "auth", "model"]
    );
    assert_eq!(
        crate_targets("let x = crate::clock::unix_now();"),
        ["clock"]
    );
    assert!(crate_targets("use my_crate::store;").is_empty());
    assert_eq!(code_of("use crate::a; // crate::b"), "use crate::a; ");
    assert_eq!(super_targets("super::super::store::x", 2), ["store"]);
    assert!(super_targets("super::store::x", 1).is_empty());
    assert!(super_targets("super::super::store::x", 3).is_empty());
    assert_eq!(module_path(Path::new("api/objects.rs")), ["api", "objects"]);
    assert_eq!(module_path(Path::new("api/mod.rs")), ["api"]);
    assert!(module_path(Path::new("lib.rs")).is_empty());
}
