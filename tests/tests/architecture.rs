//! The house rules a reader can check by eye, checked by a test: no import cycle between source
//! files, no non-test source file over 700 lines, no non-test function over 120 lines, in
//! `router-userspace/src`, `router-ebpf/src` and `xtask/src`.
//!
//! The scan is text, not a Rust parser: comments and string/char literals are blanked, the rest
//! is split into identifiers and punctuation, and braces are counted. Items under `#[cfg(test)]`
//! (and files named `tests.rs`/`fuzz.rs`) are test code and left out of every rule.
//!
//! An import is any path a file names that starts with `crate::`, `super::`, `self::` or a child
//! module of the module it is written in, in a `use` or in code (`crate::a::b::f()`). It points
//! at the file that declares the deepest module on the path; a name that module itself imports
//! (`pub use object::DatapathError` in `datapath/mod.rs`) is followed to where it comes from, so
//! importing through a parent's re-export counts as importing the file that defines the thing.
//! A `pub use` of a name the file itself never names again (a module's public face) is such a
//! re-export, not a use of the file it names. A cycle is a strongly connected set of files in
//! that graph.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::Path;

const MAX_FILE_LINES: usize = 700;
const MAX_FN_LINES: usize = 120;

#[test]
fn sources_keep_the_house_rules() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits in the workspace");
    let crates = [
        read_crate(root, "router-userspace/src", &["lib.rs", "main.rs"]),
        read_crate(root, "router-ebpf/src", &["main.rs"]),
        read_crate(root, "xtask/src", &["main.rs"]),
    ];
    let violations = check(&crates);
    assert!(
        violations.is_empty(),
        "{} violation(s) of the house rules:\n{}",
        violations.len(),
        violations.join("\n")
    );
}

/// The sources of one crate: files by path relative to `dir`, '/'-separated.
struct Crate {
    dir: String,
    roots: Vec<String>,
    files: BTreeMap<String, String>,
}

fn read_crate(workspace: &Path, dir: &str, roots: &[&str]) -> Crate {
    fn walk(base: &Path, at: &Path, files: &mut BTreeMap<String, String>) {
        let mut entries: Vec<_> = std::fs::read_dir(at)
            .unwrap_or_else(|e| panic!("reading {}: {e}", at.display()))
            .map(|e| e.expect("directory entry").path())
            .collect();
        entries.sort();
        for path in entries {
            if path.is_dir() {
                walk(base, &path, files);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let rel = path.strip_prefix(base).expect("under the crate");
                let text = std::fs::read_to_string(&path)
                    .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
                files.insert(rel.to_string_lossy().replace('\\', "/"), text);
            }
        }
    }
    let mut files = BTreeMap::new();
    walk(&workspace.join(dir), &workspace.join(dir), &mut files);
    Crate {
        dir: dir.to_string(),
        roots: roots.iter().map(|r| r.to_string()).collect(),
        files,
    }
}

/// Every violation in `crates`, one line each, sorted.
fn check(crates: &[Crate]) -> Vec<String> {
    let mut violations = Vec::new();
    for krate in crates {
        let mut modules = ModuleTree::default();
        for root in &krate.roots {
            modules.add_file(krate, root, Vec::new());
        }
        for (file, scan) in &modules.scans {
            let name = format!("{}/{file}", krate.dir);
            let lines = scan.total_lines - scan.test_lines;
            if lines > MAX_FILE_LINES {
                violations.push(format!(
                    "{name}: {lines} lines of non-test code (at most {MAX_FILE_LINES})"
                ));
            }
            for f in &scan.fns {
                let len = f.end - f.start + 1;
                if len > MAX_FN_LINES {
                    violations.push(format!(
                        "{name}:{}: fn {} is {len} lines (at most {MAX_FN_LINES})",
                        f.start, f.name
                    ));
                }
            }
        }
        violations.extend(modules.cycles(&krate.dir));
    }
    violations.sort();
    violations
}

/// A module: the file it lives in and its path inside that file (inline `mod x { .. }`).
#[derive(Clone)]
struct Module {
    file: String,
    inline: Vec<String>,
}

#[derive(Default)]
struct ModuleTree {
    modules: HashMap<Vec<String>, Module>,
    /// Module path of each file.
    file_module: BTreeMap<String, Vec<String>>,
    scans: BTreeMap<String, Scan>,
}

impl ModuleTree {
    fn add_file(&mut self, krate: &Crate, file: &str, path: Vec<String>) {
        let Some(text) = krate.files.get(file) else {
            return;
        };
        let base = file.rsplit('/').next().unwrap_or(file);
        if base == "tests.rs" || base == "fuzz.rs" {
            return;
        }
        let scan = scan(text);
        if scan.test_file {
            return;
        }
        self.modules.insert(
            path.clone(),
            Module {
                file: file.to_string(),
                inline: Vec::new(),
            },
        );
        self.file_module.insert(file.to_string(), path.clone());
        // `mod x;` in `a.rs` is `a/x.rs`; in a crate root or a `mod.rs` it is a sibling.
        let dir = if krate.roots.iter().any(|r| r == file) || base == "mod.rs" {
            file.rsplit_once('/')
                .map_or(String::new(), |(d, _)| format!("{d}/"))
        } else {
            format!("{}/", file.trim_end_matches(".rs"))
        };
        let mut children = Vec::new();
        for decl in &scan.mods {
            let mut child = path.clone();
            child.extend(decl.inline.iter().cloned());
            child.push(decl.name.clone());
            if decl.has_body {
                let mut inline = decl.inline.clone();
                inline.push(decl.name.clone());
                self.modules.insert(
                    child,
                    Module {
                        file: file.to_string(),
                        inline,
                    },
                );
            } else {
                let sub = decl
                    .inline
                    .iter()
                    .map(|m| format!("{m}/"))
                    .collect::<String>();
                let flat = format!("{dir}{sub}{}.rs", decl.name);
                let nested = format!("{dir}{sub}{}/mod.rs", decl.name);
                let child_file = if krate.files.contains_key(&flat) {
                    flat
                } else {
                    nested
                };
                children.push((child_file, child));
            }
        }
        self.scans.insert(file.to_string(), scan);
        for (child_file, child) in children {
            self.add_file(krate, &child_file, child);
        }
    }

    /// The file a path written in module `scope` points at, following imports of the last
    /// module on the path; `None` for other crates and names that are no module path.
    fn resolve(&self, scope: &[String], segments: &[String], hops: usize) -> Option<String> {
        let first = segments.first()?;
        let mut abs: Vec<String> = match first.as_str() {
            "crate" => Vec::new(),
            "self" => scope.to_vec(),
            "super" => scope.to_vec(),
            name => {
                let mut child = scope.to_vec();
                child.push(name.to_string());
                if !self.modules.contains_key(&child) {
                    return None;
                }
                scope.to_vec()
            }
        };
        let mut rest = segments;
        if first == "crate" || first == "self" {
            rest = &segments[1..];
        }
        while rest.first().is_some_and(|s| s == "super") {
            abs.pop()?;
            rest = &rest[1..];
        }
        abs.extend(rest.iter().filter(|s| *s != "self").cloned());
        let depth = (0..=abs.len())
            .rev()
            .find(|&n| self.modules.contains_key(&abs[..n]))?;
        let module = &self.modules[&abs[..depth]];
        if let Some(name) = abs.get(depth)
            && hops < 8
        {
            let scan = &self.scans[&module.file];
            let imported = scan.uses.iter().find(|u| {
                u.scope == module.inline && !u.glob && u.name().is_some_and(|n| n == name)
            });
            if let Some(import) = imported {
                let mut target = import.segments.clone();
                target.extend(abs[depth + 1..].iter().cloned());
                if let Some(file) = self.resolve(&abs[..depth], &target, hops + 1) {
                    return Some(file);
                }
            }
        }
        Some(module.file.clone())
    }

    /// Imports between files: (from, to) → the first place `from` names `to`.
    fn edges(&self) -> BTreeMap<(String, String), String> {
        let mut edges = BTreeMap::new();
        for (file, scan) in &self.scans {
            let module = &self.file_module[file];
            // A `pub use` of a name the file does not otherwise name is its public face (a
            // re-export), not a use of its own: followed when others import through it, not
            // counted here.
            let reexport_only = |u: &UsePath| {
                u.public
                    && !u.glob
                    && u.name()
                        .is_some_and(|n| n != "_" && !scan.idents.contains(n))
            };
            let refs = scan
                .uses
                .iter()
                .filter(|u| !reexport_only(u))
                .map(|u| (&u.scope, &u.segments, u.line, "use"))
                .chain(
                    scan.paths
                        .iter()
                        .map(|p| (&p.scope, &p.segments, p.line, "path")),
                );
            for (inline, segments, line, kind) in refs {
                let mut scope = module.clone();
                scope.extend(inline.iter().cloned());
                if let Some(to) = self.resolve(&scope, segments, 0)
                    && to != *file
                {
                    edges
                        .entry((file.clone(), to))
                        .or_insert_with(|| format!("line {line}: {kind} {}", segments.join("::")));
                }
            }
        }
        edges
    }

    /// One violation per strongly connected set of two or more files.
    fn cycles(&self, dir: &str) -> Vec<String> {
        let edges = self.edges();
        let files: Vec<&String> = self.scans.keys().collect();
        let index: HashMap<&String, usize> =
            files.iter().enumerate().map(|(i, f)| (*f, i)).collect();
        let mut next = vec![Vec::new(); files.len()];
        for (from, to) in edges.keys() {
            next[index[from]].push(index[to]);
        }
        strongly_connected(&next)
            .into_iter()
            .filter(|c| c.len() > 1)
            .map(|component| {
                let members: BTreeSet<&String> = component.iter().map(|&i| files[i]).collect();
                let arrows: Vec<String> = edges
                    .iter()
                    .filter(|((f, t), _)| members.contains(f) && members.contains(t))
                    .map(|((f, t), at)| format!("    {dir}/{f} -> {t} ({at})"))
                    .collect();
                format!(
                    "import cycle between {}:\n{}",
                    members
                        .iter()
                        .map(|m| format!("{dir}/{m}"))
                        .collect::<Vec<_>>()
                        .join(", "),
                    arrows.join("\n")
                )
            })
            .collect()
    }
}

/// Tarjan's algorithm: the strongly connected components of a graph given as adjacency lists.
fn strongly_connected(next: &[Vec<usize>]) -> Vec<Vec<usize>> {
    struct State<'a> {
        next: &'a [Vec<usize>],
        index: Vec<Option<usize>>,
        low: Vec<usize>,
        on_stack: Vec<bool>,
        stack: Vec<usize>,
        counter: usize,
        components: Vec<Vec<usize>>,
    }
    fn visit(s: &mut State, v: usize) {
        s.index[v] = Some(s.counter);
        s.low[v] = s.counter;
        s.counter += 1;
        s.stack.push(v);
        s.on_stack[v] = true;
        for &w in &s.next[v] {
            match s.index[w] {
                None => {
                    visit(s, w);
                    s.low[v] = s.low[v].min(s.low[w]);
                }
                Some(i) if s.on_stack[w] => s.low[v] = s.low[v].min(i),
                Some(_) => {}
            }
        }
        if Some(s.low[v]) == s.index[v] {
            let mut component = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack[w] = false;
                component.push(w);
                if w == v {
                    break;
                }
            }
            s.components.push(component);
        }
    }
    let mut s = State {
        next,
        index: vec![None; next.len()],
        low: vec![0; next.len()],
        on_stack: vec![false; next.len()],
        stack: Vec::new(),
        counter: 0,
        components: Vec::new(),
    };
    for v in 0..next.len() {
        if s.index[v].is_none() {
            visit(&mut s, v);
        }
    }
    s.components
}

/// What the scan of one file found, test code left out.
#[derive(Default)]
struct Scan {
    /// `#![cfg(test)]`: the whole file is test code.
    test_file: bool,
    total_lines: usize,
    /// Lines of `#[cfg(test)]` items.
    test_lines: usize,
    mods: Vec<ModDecl>,
    uses: Vec<UsePath>,
    /// Identifiers the code names outside `use` items.
    idents: HashSet<String>,
    paths: Vec<CodePath>,
    fns: Vec<FnSpan>,
}

struct ModDecl {
    /// Inline modules around the declaration.
    inline: Vec<String>,
    name: String,
    has_body: bool,
}

/// One leaf of a `use` tree.
struct UsePath {
    scope: Vec<String>,
    segments: Vec<String>,
    alias: Option<String>,
    glob: bool,
    /// `pub use` (any visibility).
    public: bool,
    line: usize,
}

impl UsePath {
    /// The name the import brings into scope.
    fn name(&self) -> Option<&String> {
        match &self.alias {
            Some(alias) => Some(alias),
            None => self.segments.iter().rev().find(|s| *s != "self"),
        }
    }
}

/// A path `a::b::c` written in code.
struct CodePath {
    scope: Vec<String>,
    segments: Vec<String>,
    line: usize,
}

struct FnSpan {
    name: String,
    start: usize,
    end: usize,
}

#[derive(Clone, Debug, PartialEq)]
struct Token {
    text: String,
    line: usize,
}

fn scan(text: &str) -> Scan {
    let tokens = tokenize(&blank_literals(text));
    let mut out = Scan {
        total_lines: text.lines().count(),
        ..Scan::default()
    };
    let t = |i: usize| tokens.get(i).map_or("", |t: &Token| t.text.as_str());
    // Inline modules open around the current token: (name, brace depth inside it).
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut depth = 0usize;
    let mut i = 0;
    while i < tokens.len() {
        let scope: Vec<String> = inline.iter().map(|(n, _)| n.clone()).collect();
        if is_ident(t(i)) && t(i) != "use" {
            out.idents.insert(t(i).to_string());
        }
        match t(i) {
            "#" if t(i + 1) == "!" && is_cfg_test(&tokens, i + 2) => {
                out.test_file = true;
                return out;
            }
            "#" if t(i + 1) == "[" && is_cfg_test(&tokens, i + 1) => {
                let end = item_end(&tokens, i);
                let last = tokens.get(end).map_or(tokens[i].line, |t| t.line);
                out.test_lines += last - tokens[i].line + 1;
                i = end + 1;
                continue;
            }
            "{" => depth += 1,
            "}" => {
                if inline.last().is_some_and(|(_, d)| *d == depth) {
                    inline.pop();
                }
                depth = depth.saturating_sub(1);
            }
            "mod" if is_ident(t(i + 1)) && matches!(t(i + 2), ";" | "{") => {
                out.mods.push(ModDecl {
                    inline: scope,
                    name: t(i + 1).to_string(),
                    has_body: t(i + 2) == "{",
                });
                if t(i + 2) == "{" {
                    depth += 1;
                    inline.push((t(i + 1).to_string(), depth));
                }
                i += 3;
                continue;
            }
            "use" if t(i.wrapping_sub(1)) != "$" => {
                let end = (i..tokens.len())
                    .find(|&j| t(j) == ";")
                    .unwrap_or(tokens.len());
                let mut leaves = Vec::new();
                use_tree(&tokens[i + 1..end], &mut Vec::new(), &mut leaves);
                // `pub use`, `pub(crate) use`, `pub(in a::b) use`.
                let public = match t(i.wrapping_sub(1)) {
                    "pub" => true,
                    ")" => (0..i)
                        .rev()
                        .find(|&j| t(j) == "(")
                        .is_some_and(|open| t(open.wrapping_sub(1)) == "pub"),
                    _ => false,
                };
                for (segments, alias, glob) in leaves {
                    out.uses.push(UsePath {
                        scope: scope.clone(),
                        segments,
                        alias,
                        glob,
                        public,
                        line: tokens[i].line,
                    });
                }
                i = end + 1;
                continue;
            }
            "fn" if is_ident(t(i + 1)) => {
                if let Some(end) = fn_end(&tokens, i) {
                    out.fns.push(FnSpan {
                        name: t(i + 1).to_string(),
                        start: tokens[i].line,
                        end: tokens[end].line,
                    });
                }
            }
            word if is_ident(word)
                && t(i + 1) == "::"
                && !matches!(t(i.wrapping_sub(1)), "::" | "$") =>
            {
                let mut segments = vec![word.to_string()];
                let mut j = i + 1;
                while t(j) == "::" && is_ident(t(j + 1)) {
                    segments.push(t(j + 1).to_string());
                    out.idents.insert(t(j + 1).to_string());
                    j += 2;
                }
                out.paths.push(CodePath {
                    scope,
                    segments,
                    line: tokens[i].line,
                });
                i = j;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    out
}

/// Whether the attribute whose `[` is at `open` is exactly `[cfg(test)]`.
fn is_cfg_test(tokens: &[Token], open: usize) -> bool {
    let texts: Vec<&str> = tokens
        .iter()
        .skip(open)
        .take(6)
        .map(|t| t.text.as_str())
        .collect();
    texts == ["[", "cfg", "(", "test", ")", "]"]
}

/// The last token of the item whose first attribute starts at `start`: the `;` ending it, or the
/// `}` closing its body (and a `;` right after).
fn item_end(tokens: &[Token], start: usize) -> usize {
    let mut i = start;
    // Attributes on the item.
    while tokens.get(i).is_some_and(|t| t.text == "#") {
        i = matching(tokens, i + 1).map_or(tokens.len(), |e| e + 1);
    }
    let mut depth = 0usize;
    while i < tokens.len() {
        match tokens[i].text.as_str() {
            "(" | "[" | "{" => depth += 1,
            ")" | "]" => depth = depth.saturating_sub(1),
            "}" => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    let semicolon = tokens.get(i + 1).is_some_and(|t| t.text == ";");
                    return if semicolon { i + 1 } else { i };
                }
            }
            ";" if depth == 0 => return i,
            _ => {}
        }
        i += 1;
    }
    tokens.len().saturating_sub(1)
}

/// The index of the bracket closing the one at `open`.
fn matching(tokens: &[Token], open: usize) -> Option<usize> {
    let mut depth = 0usize;
    for (i, t) in tokens.iter().enumerate().skip(open) {
        match t.text.as_str() {
            "(" | "[" | "{" => depth += 1,
            ")" | "]" | "}" => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
    }
    None
}

/// The `}` closing the body of the `fn` at `at`; `None` for a declaration without a body.
fn fn_end(tokens: &[Token], at: usize) -> Option<usize> {
    let mut depth = 0usize;
    for (i, t) in tokens.iter().enumerate().skip(at) {
        match t.text.as_str() {
            "(" | "[" => depth += 1,
            ")" | "]" => depth = depth.saturating_sub(1),
            ";" if depth == 0 => return None,
            "{" if depth == 0 => return matching(tokens, i),
            _ => {}
        }
    }
    None
}

/// The leaves of a `use` tree (the tokens between `use` and `;`): (path, alias, glob).
fn use_tree(
    tokens: &[Token],
    prefix: &mut Vec<String>,
    leaves: &mut Vec<(Vec<String>, Option<String>, bool)>,
) {
    let depth = prefix.len();
    let mut i = 0;
    // `pub use`, `pub(crate) use` were consumed before; a leading `::` names another crate.
    while i < tokens.len() {
        match tokens[i].text.as_str() {
            "::" => {}
            "{" => {
                let close = matching(tokens, i).unwrap_or(tokens.len());
                let inner = &tokens[i + 1..close.min(tokens.len())];
                for part in split_top_level_commas(inner) {
                    use_tree(part, prefix, leaves);
                }
                prefix.truncate(depth);
                return;
            }
            "*" => {
                leaves.push((prefix.clone(), None, true));
                prefix.truncate(depth);
                return;
            }
            "as" => {
                let alias = tokens.get(i + 1).map(|t| t.text.clone());
                leaves.push((prefix.clone(), alias, false));
                prefix.truncate(depth);
                return;
            }
            word => prefix.push(word.to_string()),
        }
        i += 1;
    }
    if prefix.len() > depth {
        leaves.push((prefix.clone(), None, false));
    }
    prefix.truncate(depth);
}

fn split_top_level_commas(tokens: &[Token]) -> Vec<&[Token]> {
    let mut parts = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, t) in tokens.iter().enumerate() {
        match t.text.as_str() {
            "{" => depth += 1,
            "}" => depth = depth.saturating_sub(1),
            "," if depth == 0 => {
                parts.push(&tokens[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&tokens[start..]);
    parts.into_iter().filter(|p| !p.is_empty()).collect()
}

fn is_ident(s: &str) -> bool {
    s.chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Identifiers (keywords included), numbers, `::`, lifetimes and single punctuation characters.
fn tokenize(text: &str) -> Vec<Token> {
    let chars: Vec<char> = text.chars().collect();
    let mut tokens = Vec::new();
    let mut line = 1;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let start = i;
        if c == '\n' {
            line += 1;
            i += 1;
            continue;
        }
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        if c.is_ascii_alphanumeric()
            || c == '_'
            || (c == '\''
                && chars
                    .get(i + 1)
                    .is_some_and(|n| n.is_ascii_alphabetic() || *n == '_'))
        {
            i += 1;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
        } else if c == ':' && chars.get(i + 1) == Some(&':') {
            i += 2;
        } else {
            i += 1;
        }
        tokens.push(Token {
            text: chars[start..i].iter().collect(),
            line,
        });
    }
    tokens
}

/// `text` with comments and the insides of string and char literals replaced by spaces
/// (newlines kept, so line numbers hold).
fn blank_literals(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out: Vec<char> = chars.clone();
    let blank = |out: &mut Vec<char>, from: usize, to: usize| {
        for c in out.iter_mut().take(to.min(chars.len())).skip(from) {
            if *c != '\n' {
                *c = ' ';
            }
        }
    };
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            let end = (i..chars.len())
                .find(|&j| chars[j] == '\n')
                .unwrap_or(chars.len());
            blank(&mut out, i, end);
            i = end;
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            let mut j = i;
            while j < chars.len() {
                if chars[j] == '/' && chars.get(j + 1) == Some(&'*') {
                    depth += 1;
                    j += 2;
                } else if chars[j] == '*' && chars.get(j + 1) == Some(&'/') {
                    depth -= 1;
                    j += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    j += 1;
                }
            }
            blank(&mut out, i, j);
            i = j;
        } else if c == 'r'
            && (i == 0
                || !ident(chars[i - 1])
                || (chars[i - 1] == 'b' && (i < 2 || !ident(chars[i - 2]))))
            && matches!(next, Some('"') | Some('#'))
        {
            // A raw string `r#".."#` (or a raw identifier `r#name`, left alone).
            let hashes = chars[i + 1..].iter().take_while(|&&c| c == '#').count();
            if chars.get(i + 1 + hashes) != Some(&'"') {
                i += 1;
                continue;
            }
            let body = i + 2 + hashes;
            let mut j = body;
            while j < chars.len() {
                if chars[j] == '"'
                    && chars[j + 1..]
                        .iter()
                        .take(hashes)
                        .filter(|&&c| c == '#')
                        .count()
                        == hashes
                {
                    break;
                }
                j += 1;
            }
            blank(&mut out, body, j);
            i = j + 1 + hashes;
        } else if c == '"' {
            let mut j = i + 1;
            while j < chars.len() && chars[j] != '"' {
                j += if chars[j] == '\\' { 2 } else { 1 };
            }
            blank(&mut out, i + 1, j);
            i = j + 1;
        } else if c == '\'' && next == Some('\\') {
            // An escape: the character after the backslash may itself be a quote.
            let mut j = i + 3;
            while j < chars.len() && chars[j] != '\'' {
                j += 1;
            }
            blank(&mut out, i + 1, j);
            i = j + 1;
        } else if c == '\'' && chars.get(i + 2) == Some(&'\'') {
            blank(&mut out, i + 1, i + 2);
            i += 3;
        } else {
            i += 1;
        }
    }
    out.into_iter().collect()
}

#[cfg(test)]
mod checker {
    //! The checker itself, on small sources: each rule must trip.

    use super::*;

    fn krate(files: &[(&str, &str)]) -> Crate {
        Crate {
            dir: "src".into(),
            roots: vec!["lib.rs".into()],
            files: files
                .iter()
                .map(|(p, t)| (p.to_string(), t.to_string()))
                .collect(),
        }
    }

    fn violations(files: &[(&str, &str)]) -> Vec<String> {
        check(&[krate(files)])
    }

    #[test]
    fn two_files_importing_each_other_are_a_cycle() {
        let v = violations(&[
            ("lib.rs", "mod a;\nmod b;\n"),
            ("a.rs", "use crate::b::B;\npub struct A;\n"),
            ("b.rs", "pub struct B;\nfn f() { let _ = super::a::A; }\n"),
        ]);
        assert_eq!(v.len(), 1, "{v:#?}");
        assert!(v[0].contains("src/a.rs, src/b.rs"), "{v:#?}");
        assert!(v[0].contains("line 2: path super::a::A"), "{v:#?}");
    }

    #[test]
    fn a_longer_cycle_through_a_reexport_is_found() {
        let v = violations(&[
            ("lib.rs", "pub mod m;\nmod c;\n"),
            (
                "m/mod.rs",
                "mod a;\nmod b;\npub use a::A;\npub use self::b::{B as Bee};\n",
            ),
            ("m/a.rs", "use super::Bee;\npub struct A;\n"),
            ("m/b.rs", "use crate::c::C;\npub struct B;\n"),
            ("c.rs", "pub struct C(crate::m::A);\n"),
        ]);
        assert_eq!(v.len(), 1, "{v:#?}");
        assert!(
            v[0].contains("src/c.rs, src/m/a.rs, src/m/b.rs"),
            "the re-exports in mod.rs are followed: {v:#?}"
        );
    }

    #[test]
    fn one_way_imports_test_code_and_text_are_no_cycle() {
        let v = violations(&[
            ("lib.rs", "mod a;\nmod b;\n"),
            (
                "a.rs",
                "use crate::b::B;\n// crate::a is named by crate::b\n",
            ),
            (
                "b.rs",
                "pub struct B;\nconst S: &str = \"use crate::a::A; }\";\nconst C: char = '}';\n\
                 fn f<'a>(x: &'a str) -> &'a str { x }\n\
                 #[cfg(test)]\nmod tests {\n    use crate::a;\n}\n#[cfg(test)]\nmod more;\n",
            ),
            ("b/more.rs", "use crate::a;\n"),
            ("b/tests.rs", "use crate::a;\n"),
        ]);
        assert!(v.is_empty(), "{v:#?}");
    }

    #[test]
    fn a_long_file_trips_and_its_test_module_does_not_count() {
        let body = "const X: u8 = 0;\n".repeat(MAX_FILE_LINES - 1);
        let ok = format!("{body}#[cfg(test)]\nmod tests {{\n{}}}\n", "\n".repeat(100));
        assert!(violations(&[("lib.rs", &ok)]).is_empty());
        let long = format!("{body}const Y: u8 = 0;\nconst Z: u8 = 0;\n");
        let v = violations(&[("lib.rs", &long)]);
        assert_eq!(v.len(), 1, "{v:#?}");
        assert!(v[0].contains("src/lib.rs: 701 lines"), "{v:#?}");
    }

    #[test]
    fn a_long_function_trips_unless_it_is_a_test() {
        let long = format!(
            "fn big() {{\n{}}}\n",
            "    step();\n".repeat(MAX_FN_LINES - 1)
        );
        let v = violations(&[("lib.rs", &long)]);
        assert_eq!(v.len(), 1, "{v:#?}");
        assert!(v[0].contains("src/lib.rs:1: fn big is 121 lines"), "{v:#?}");
        let fits = format!(
            "fn big() {{\n{}}}\n",
            "    step();\n".repeat(MAX_FN_LINES - 2)
        );
        assert!(violations(&[("lib.rs", &fits)]).is_empty());
        let test = format!("#[cfg(test)]\nmod tests {{\n{long}}}\n");
        assert!(violations(&[("lib.rs", &test)]).is_empty());
    }

    #[test]
    fn a_reexport_is_no_use_unless_the_file_names_it_again() {
        let facade = [
            ("lib.rs", "pub mod m;\n"),
            (
                "m/mod.rs",
                "mod web;\npub use web::router;\npub struct Auth;\n",
            ),
            ("m/web.rs", "use super::Auth;\npub fn router(_: Auth) {}\n"),
        ];
        assert!(violations(&facade).is_empty(), "{:#?}", violations(&facade));
        let using = [
            ("lib.rs", "pub mod m;\n"),
            (
                "m/mod.rs",
                "mod web;\npub use web::router;\npub struct Auth;\nfn f() { router(Auth) }\n",
            ),
            ("m/web.rs", "use super::Auth;\npub fn router(_: Auth) {}\n"),
        ];
        let v = violations(&using);
        assert_eq!(v.len(), 1, "{v:#?}");
        assert!(v[0].contains("src/m/mod.rs, src/m/web.rs"), "{v:#?}");
    }

    #[test]
    fn inline_modules_resolve_super_to_their_parent() {
        let v = violations(&[
            ("lib.rs", "mod a;\nmod b;\n"),
            ("a.rs", "pub mod inner {\n    use super::super::b::B;\n}\n"),
            ("b.rs", "pub struct B;\nuse crate::a::inner;\n"),
        ]);
        assert_eq!(v.len(), 1, "{v:#?}");
    }
}
